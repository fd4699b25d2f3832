//! `launcher stress`: drive clients and verify the ordering guarantees.
//!
//! Unless `--attach`, the tool brings the cluster up itself (one `chatserver`
//! per server of FILE with `-o MODE`, and the proxy in front of them when a
//! fault option is given or FILE has separate forwarding addresses), runs the
//! workload of [`crate::load`], stops everything it started, checks
//! the delivery logs with [`testkit::check`] against the properties the
//! mode claims (plus `--check`), and reports throughput, latency, kernel
//! receive-buffer drops and violations. Exit code 0 only when every check
//! passed.
//!
//! `--kill-server`/`--stop-server` (`faults`) signal servers of that
//! cluster during the load; their clients are then checked as partial, and
//! the report says how long deliveries paused (`pause`).

mod faults;
mod html;
mod pause;
mod report;

use crate::cluster::fault_proxy::{self, FaultArgs, faults_active};
use crate::cluster::local::{ClusterSpec, LocalCluster, on_fresh_ports};
use crate::cluster::settings::{self, ClusterFile, FaultConfig};
use crate::load::{LoadEvent, LoadHooks, LoadPlan, run_load};
use crate::net::kernel_rcvbuf_errors;
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use testkit::check::Properties;

#[derive(Debug, Args)]
pub struct StressArgs {
    /// Cluster file (legacy lines or TOML).
    pub file: PathBuf,
    /// Ordering mode the servers run (default: the file's).
    #[arg(short = 'o', long = "ordering", value_name = "MODE")]
    pub ordering: Option<String>,
    /// Number of clients, spread evenly over the servers.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Number of chat rooms used (each spans several servers).
    #[arg(long, default_value_t = 2)]
    pub rooms: u32,
    /// Messages per client.
    #[arg(long, default_value_t = 20)]
    pub messages: u32,
    /// Total send rate in messages/s over all clients; 0 = as fast as the
    /// window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Most messages per client sent but not yet echoed back.
    #[arg(long, default_value_t = 8)]
    pub window: u32,
    /// Pad each message body to this many bytes (at most 1000).
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    #[command(flatten)]
    pub faults: FaultArgs,
    #[command(flatten)]
    pub server_faults: faults::ServerFaultArgs,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML file (results, a
    /// latency histogram and a timeline of sends and deliveries, inline SVG).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Check these properties too (comma list of exactly-once, fifo, total,
    /// causal, all), beyond what the mode claims.
    #[arg(long, value_name = "PROPS", value_parser = Properties::parse)]
    pub check: Option<Properties>,
    /// Use a cluster that is already running (e.g. `launcher up`) instead of
    /// starting one.
    #[arg(long)]
    pub attach: bool,
    /// Stop collecting after this long without any progress (ms).
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    pub quiet_ms: u64,
    /// Put clients only on these servers (1-based, comma list), e.g. to
    /// crash another server during the run and check the survivors.
    /// Default: every server, except those --kill-server or --stop-server
    /// (without --for) take away for good.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub client_servers: Vec<usize>,
    /// Upper bound on the whole run, setup included (s).
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub timeout: u64,
    /// The chatserver binary (default: the file's, else next to launcher).
    #[arg(long, value_name = "PATH")]
    pub chatserver: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Also run N flooding clients in room 1 that send small messages
    /// (`F1-000123`) as fast as they can while the others send. The server
    /// may refuse their posts (not a failure); what it delivers of theirs
    /// is checked like every message, and every normal message must arrive.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub flood_clients: usize,
    /// Clients read one datagram per read, as a client of the spec does,
    /// instead of whole runs of deliveries (`UDP_GRO`): the servers' cost
    /// per message with clients that do not coalesce.
    #[arg(long)]
    pub no_gro: bool,
}

pub fn run(a: StressArgs) -> anyhow::Result<ExitCode> {
    let ClusterFile { cfg, settings } = settings::load(&a.file)?;
    let mode = a
        .ordering
        .clone()
        .or_else(|| cfg.ordering.clone())
        .context("no ordering mode: give --ordering MODE (the file names none)")?;
    let mode_context = || match &a.ordering {
        Some(m) => format!("-o {m}"),
        None => format!("{}: ordering {mode}", a.file.display()),
    };
    // A mode this launcher does not know (a plugin in another chatserver
    // build) is fine with --attach or --chatserver: --check says what to check.
    let (claimed, mode) = match orderings::lookup(&mode) {
        Ok(spec) => (
            Properties::from_guarantees(spec.guarantees),
            spec.name.to_string(),
        ),
        Err(_) if a.attach || a.chatserver.is_some() => {
            if a.check.is_none() {
                eprintln!(
                    "stress: mode '{mode}' is not registered in this launcher; checking exactly-once only (add --check to check more)"
                );
            }
            (
                Properties::from_guarantees(orderings::Guarantees::NONE),
                mode,
            )
        }
        Err(e) => return Err(anyhow::Error::new(e).context(mode_context())),
    };
    let props = claimed.union(a.check.unwrap_or(Properties::NONE));
    if a.clients == 0 || a.rooms == 0 {
        bail!("--clients and --rooms must be at least 1");
    }
    if a.size > 1000 {
        bail!(
            "--size {} is over the spec's 1000-byte message limit",
            a.size
        );
    }
    if a.window == 0 {
        bail!("--window must be at least 1");
    }
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        bail!("--rate must be a number >= 0");
    }
    let fault_given = a.faults.any();
    let server_faults = &a.server_faults.faults;
    if !server_faults.is_empty() {
        if a.attach {
            // A running `launcher up` would restart a killed server (this is
            // no kill without restart), and a pid read from its state file
            // could belong to another process by now.
            bail!(
                "--attach uses the running cluster as it is: --kill-server/--stop-server \
                 only apply to servers this run starts (drop --attach)"
            );
        }
        faults::validate(server_faults, cfg.servers.len()).map_err(anyhow::Error::msg)?;
    }
    let deadline = Duration::from_secs(a.timeout.max(1));
    let started = std::time::Instant::now();

    let mut faults_used: Option<FaultConfig> = None;
    let mut cluster: Option<LocalCluster> = None;
    let servers = if a.attach {
        if fault_given {
            bail!(
                "--attach uses the running cluster as it is: --delay/--loss/--duplicate/--seed cannot apply"
            );
        }
        if a.rooms > cfg.rooms {
            bail!(
                "--rooms {} is more than the cluster's {} rooms",
                a.rooms,
                cfg.rooms
            );
        }
        if let Some(s) = cfg.servers.iter().find(|s| !s.forward_resolved()) {
            bail!(
                "{}:{}: the address of {} ({}) does not resolve here",
                a.file.display(),
                s.line,
                s.name,
                s.advertised()
            );
        }
        // Clients talk to a server where it listens; a wildcard bind says
        // nothing about where that is, its advertised address does.
        cfg.servers
            .iter()
            .map(|s| {
                if s.bind.ip().is_unspecified() {
                    s.forward
                } else {
                    s.bind
                }
            })
            .collect::<Vec<_>>()
    } else {
        let faults = if fault_given || settings.faults.is_some() {
            Some(a.faults.over(settings.faults.as_ref()))
        } else {
            None
        };
        let chatserver =
            crate::cluster::chatserver(a.chatserver.as_deref().or(settings.chatserver.as_deref()))?;
        // Never the file's ports: a cluster may be running there (then
        // our servers could not bind and our clients would chat into it).
        let cfg = on_fresh_ports(&cfg)?;
        let rooms = a.rooms.max(cfg.rooms);
        let cspec = ClusterSpec {
            cfg: cfg.clone(),
            mode: mode.clone(),
            rooms,
            faults: faults.clone(),
            chatserver,
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(20).min(deadline),
        };
        if !a.quiet {
            eprintln!(
                "stress: starting {} servers ({mode}) on free ports of their own{}",
                cfg.servers.len(),
                match &faults {
                    Some(f) if faults_active(f) =>
                        format!(" behind the proxy: {}", fault_proxy::describe_faults(f)),
                    Some(_) => " behind the proxy (no faults)".to_string(),
                    None if cfg.servers.iter().any(|s| s.forward != s.bind) => {
                        " behind the proxy (no faults)".to_string()
                    }
                    None => String::new(),
                }
            );
        }
        let c = LocalCluster::start(&cspec)?;
        if c.has_proxy() {
            faults_used = Some(faults.unwrap_or_default());
        }
        let binds = c.binds.clone();
        cluster = Some(c);
        binds
    };

    // Which servers (1-based) get clients.
    let mut client_note = None;
    let client_servers: Vec<usize> = if !a.client_servers.is_empty() {
        a.client_servers.clone()
    } else {
        let lost: Vec<usize> = (1..=servers.len())
            .filter(|s| server_faults.iter().any(|f| f.server == *s && f.for_good()))
            .collect();
        if !lost.is_empty() {
            // Clients of a server that never comes back could only show
            // that their messages are lost: check the survivors instead.
            client_note = Some(format!(
                "no clients on server{} {} (killed or stopped for good during the run; \
                 --client-servers places clients anywhere)",
                if lost.len() == 1 { "" } else { "s" },
                join(&lost)
            ));
        }
        (1..=servers.len()).filter(|s| !lost.contains(s)).collect()
    };
    let servers: Vec<std::net::SocketAddr> = {
        let mut chosen = Vec::new();
        for &i in &client_servers {
            let addr = servers.get(i.wrapping_sub(1)).with_context(|| {
                format!(
                    "--client-servers: no server {i} (the cluster has {})",
                    servers.len()
                )
            })?;
            chosen.push(*addr);
        }
        chosen
    };
    if let Some(note) = &client_note
        && !a.quiet
    {
        eprintln!("stress: {note}");
    }
    // A client of a server a fault hits is checked as partial, with
    // optional sends; the run waits only for everybody else.
    let excused: Vec<bool> = client_servers
        .iter()
        .map(|s| server_faults.iter().any(|f| f.server == *s))
        .collect();
    let (events_tx, events_rx) = std::sync::mpsc::channel::<LoadEvent>();
    let gone: std::sync::Arc<Vec<std::sync::atomic::AtomicBool>> = std::sync::Arc::new(
        client_servers
            .iter()
            .map(|_| std::sync::atomic::AtomicBool::new(false))
            .collect(),
    );
    let hooks = (!server_faults.is_empty()).then(|| LoadHooks {
        events: events_tx.clone(),
        gone: gone.clone(),
        quiet_not_before: server_faults
            .iter()
            .map(faults::ServerFault::last_action)
            .max()
            .unwrap_or_default(),
    });
    let plan = LoadPlan {
        servers: servers.clone(),
        clients: a.clients,
        rooms: a.rooms,
        messages: a.messages,
        rate: a.rate,
        window: a.window,
        size: a.size,
        quiet: Duration::from_millis(a.quiet_ms.max(100)),
        deadline: deadline
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1)),
        linger: Duration::from_millis(200),
        progress: !a.quiet,
        flood_clients: a.flood_clients,
        excused,
        hooks,
        gro: !a.no_gro,
    };
    let mut schedule = None;
    if let Some(c) = cluster.as_mut()
        && !server_faults.is_empty()
    {
        for f in server_faults {
            if f.kind == faults::FaultKind::Kill {
                c.expect_killed(f.server);
            }
        }
        let pids = c
            .pids()
            .into_iter()
            .map(|p| p.and_then(|p| u32::try_from(p).ok()))
            .collect();
        let gone_slots = (1..=cfg.servers.len())
            .map(|s| {
                (0..client_servers.len())
                    .filter(|&slot| client_servers[slot] == s)
                    .collect()
            })
            .collect();
        schedule = Some(faults::Schedule {
            faults: server_faults,
            pids,
            gone,
            gone_slots,
        });
    }
    let drops_before = kernel_rcvbuf_errors();
    // The schedule runs beside the load and is over (every server it
    // stopped continued) before anything below reaps or stops a server.
    // Moved in: should the load panic, its copies of the event sender are
    // dropped while unwinding, so the schedule ends instead of waiting.
    let (load, outcomes) = std::thread::scope(move |scope| {
        let runner = schedule.map(|s| scope.spawn(move || faults::run(s, events_rx)));
        let load = run_load(&plan);
        let _ = events_tx.send(LoadEvent::Ended);
        let outcomes = match runner {
            Some(r) => r
                .join()
                .map_err(|_| anyhow::anyhow!("the fault schedule panicked")),
            None => Ok(Vec::new()),
        };
        (load, outcomes)
    });
    let outcomes = outcomes?;
    let drops_after = kernel_rcvbuf_errors();
    let mut server_problems = Vec::new();
    let mut proxy_counts = None;
    let mut server_counters = std::collections::BTreeMap::new();
    let mut peak_rss = Vec::new();
    if let Some(mut c) = cluster.take() {
        peak_rss = c.peak_rss_kib();
        server_problems = c.dead_servers();
        proxy_counts = c.stop(Duration::from_secs(3));
        server_counters = c.summed_counters();
    }
    let mut load = load?;
    // Kept for the HTML report, which `report::build` does not need.
    let timeline = std::mem::take(&mut load.timeline);
    let latency = a.report.as_ref().map(|_| load.latency.clone());
    let check_started = std::time::Instant::now();
    let check = load.history.check(props);
    let check_s = check_started.elapsed().as_secs_f64();
    let pauses = pause::analyse(&load.history, load.end_us);
    let fault_part = report::fault_part(
        server_faults,
        &outcomes,
        &pauses,
        load.load_start_us,
        client_servers,
        client_note,
    );
    let report = report::build(
        &a,
        &mode,
        props,
        cfg.servers.len(),
        faults_used.as_ref(),
        load,
        check,
        drops_before
            .zip(drops_after)
            .map(|(b, a)| a.saturating_sub(b)),
        proxy_counts,
        server_counters,
        server_problems,
        check_s,
        peak_rss,
        fault_part,
    );
    report::print(&report);
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(latency)) = (&a.report, &latency) {
        std::fs::write(path, html::page(&report, latency, &timeline))
            .with_context(|| format!("writing {}", path.display()))?;
        if !a.quiet {
            eprintln!("stress: report written to {}", path.display());
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `1, 2 and 3`.
fn join(v: &[usize]) -> String {
    let s: Vec<String> = v.iter().map(ToString::to_string).collect();
    match s.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => s.join(""),
    }
}
