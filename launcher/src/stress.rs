//! `launcher stress`: drive clients and verify the ordering guarantees.
//!
//! Unless `--attach`, the tool brings the cluster up itself (one `chatserver`
//! per server of FILE with `-o MODE`, and the proxy in front of them when a
//! fault option is given or FILE has separate forwarding addresses), runs the
//! workload of [`crate::stress_load`], stops everything it started, checks
//! the delivery logs with [`testkit::check`] against the properties the
//! mode claims (plus `--check`), and reports throughput, latency, kernel
//! receive-buffer drops and violations. Exit code 0 only when every check
//! passed.

use crate::cluster::settings::{self, ClusterFile, FaultConfig};
use crate::proxy::{self, ProxyCounts, faults_active};
use crate::stress_cluster::{Cluster, ClusterSpec, default_chatserver, on_fresh_ports};
use crate::stress_load::{LoadPlan, LoadResult, run_load};
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use testkit::check::{Properties, Report};

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
    pub faults: crate::proxy::FaultArgs,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
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
}

/// Latency figures in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// The report (`--json` writes it).
#[derive(Debug, Clone, Serialize)]
pub struct StressReport {
    pub ok: bool,
    pub mode: String,
    pub properties: Properties,
    pub servers: usize,
    pub clients: usize,
    pub rooms: u32,
    pub messages_per_client: u32,
    pub rate: f64,
    pub window: u32,
    pub size: usize,
    pub attached: bool,
    pub faults: Option<FaultSummary>,
    pub stop_reason: String,
    pub sent: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub distinct_deliveries: u64,
    pub setup_s: f64,
    pub send_duration_s: f64,
    pub run_duration_s: f64,
    pub messages_per_s: f64,
    pub deliveries_per_s: f64,
    pub latency: Latency,
    /// Increase of the kernel's `Udp RcvbufErrors` during the run (all
    /// sockets of the machine).
    pub kernel_rcvbuf_errors: Option<u64>,
    pub proxy: Option<ProxyCounts>,
    /// Counters of the servers this run started, summed (empty with --attach).
    pub server_counters: std::collections::BTreeMap<String, u64>,
    pub clients_per_server: Vec<usize>,
    pub other_replies: u64,
    pub other_examples: Vec<String>,
    pub garbled: u64,
    pub garbled_examples: Vec<String>,
    pub server_problems: Vec<String>,
    /// Address-confirmation requests answered (issue 13).
    pub confirmations: u64,
    pub flood: Option<FloodSummary>,
    /// Peak RSS (VmHWM) of each server this run started, in KiB; empty
    /// with --attach (not known).
    pub server_peak_rss_kib: Vec<Option<u64>>,
    /// How long the checker took.
    pub check_s: f64,
    pub check: Report,
}

/// What the flooding clients did.
#[derive(Debug, Clone, Serialize)]
pub struct FloodSummary {
    pub clients: usize,
    pub sent: u64,
    /// Flood messages that reached the room (at least one member).
    pub delivered: u64,
    /// Deliveries of flood messages (datagrams, all members).
    pub deliveries: u64,
    /// `-ERR` replies the flooding clients got.
    pub refused_replies: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultSummary {
    pub delay_min_ms: f64,
    pub delay_max_ms: f64,
    pub loss: f64,
    pub duplicate: f64,
    pub seed: u64,
}

impl From<&FaultConfig> for FaultSummary {
    fn from(f: &FaultConfig) -> Self {
        FaultSummary {
            delay_min_ms: f.delay_min_ms,
            delay_max_ms: f.delay_max_ms,
            loss: f.loss,
            duplicate: f.duplicate,
            seed: f.seed,
        }
    }
}

/// `RcvbufErrors` of the `Udp:` lines of /proc/net/snmp.
pub fn kernel_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|w| w == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
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
    let deadline = Duration::from_secs(a.timeout.max(1));
    let started = std::time::Instant::now();

    let mut faults_used: Option<FaultConfig> = None;
    let mut cluster: Option<Cluster> = None;
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
        cfg.servers.iter().map(|s| s.bind).collect::<Vec<_>>()
    } else {
        let faults = if fault_given || settings.faults.is_some() {
            Some(proxy::faults_from_args(
                settings.faults.as_ref(),
                a.faults.delay,
                a.faults.loss,
                a.faults.duplicate,
                a.faults.seed,
            ))
        } else {
            None
        };
        let chatserver = match &a.chatserver {
            Some(p) => p.clone(),
            None => default_chatserver(settings.chatserver.as_deref())?,
        };
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
                        format!(" behind the proxy: {}", proxy::describe_faults(f)),
                    Some(_) => " behind the proxy (no faults)".to_string(),
                    None if cfg.servers.iter().any(|s| s.forward != s.bind) => {
                        " behind the proxy (no faults)".to_string()
                    }
                    None => String::new(),
                }
            );
        }
        let c = Cluster::start(&cspec)?;
        if c.has_proxy() {
            faults_used = Some(faults.unwrap_or_default());
        }
        let binds = c.binds.clone();
        cluster = Some(c);
        binds
    };

    let servers: Vec<std::net::SocketAddr> = if a.client_servers.is_empty() {
        servers
    } else {
        let mut chosen = Vec::new();
        for &i in &a.client_servers {
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
    };
    let drops_before = kernel_rcvbuf_errors();
    let load = run_load(&plan);
    let drops_after = kernel_rcvbuf_errors();
    let mut server_problems = Vec::new();
    let mut proxy_counts = None;
    let mut server_counters = std::collections::BTreeMap::new();
    let mut peak_rss = Vec::new();
    if let Some(mut c) = cluster.take() {
        peak_rss = c.peak_rss_kib();
        server_problems = c.dead_servers();
        proxy_counts = c.stop(Duration::from_secs(3));
        server_counters = c.server_counters();
    }
    let load = load?;
    let check_started = std::time::Instant::now();
    let check = load.history.check(props);
    let check_s = check_started.elapsed().as_secs_f64();
    let report = build_report(
        &a,
        &mode,
        props,
        servers.len(),
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
    );
    print_report(&report);
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    a: &StressArgs,
    mode: &str,
    props: Properties,
    servers: usize,
    faults: Option<&FaultConfig>,
    load: LoadResult,
    check: Report,
    kernel_rcvbuf_errors: Option<u64>,
    proxy: Option<ProxyCounts>,
    server_counters: std::collections::BTreeMap<String, u64>,
    server_problems: Vec<String>,
    check_s: f64,
    server_peak_rss_kib: Vec<Option<u64>>,
) -> StressReport {
    let h = &load.latency;
    let latency = Latency {
        count: h.len(),
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        mean_us: if h.is_empty() { 0.0 } else { h.mean() },
    };
    let secs = load.run_duration.as_secs_f64();
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let ok = check.ok() && load.garbled == 0 && server_problems.is_empty();
    StressReport {
        ok,
        mode: mode.to_string(),
        properties: props,
        servers,
        clients: a.clients,
        rooms: a.rooms,
        messages_per_client: a.messages,
        rate: a.rate,
        window: a.window,
        size: a.size,
        attached: a.attach,
        faults: faults.map(FaultSummary::from),
        stop_reason: load.stop_reason.to_string(),
        sent: load.sent,
        expected_deliveries: load.expected,
        deliveries: load.deliveries,
        distinct_deliveries: load.distinct,
        setup_s: load.setup.as_secs_f64(),
        send_duration_s: load.send_duration.as_secs_f64(),
        run_duration_s: secs,
        messages_per_s: per_s(load.sent),
        deliveries_per_s: per_s(load.distinct),
        latency,
        kernel_rcvbuf_errors,
        proxy,
        server_counters,
        clients_per_server: load.clients_per_server,
        other_replies: load.other,
        other_examples: load.other_examples,
        garbled: load.garbled,
        garbled_examples: load.garbled_examples,
        server_problems,
        confirmations: load.confirmations,
        flood: (a.flood_clients > 0).then_some(FloodSummary {
            clients: a.flood_clients,
            sent: load.flood_sent,
            delivered: load.flood_delivered,
            deliveries: load.flood_deliveries,
            refused_replies: load.flood_refused,
        }),
        server_peak_rss_kib,
        check_s,
        check,
    }
}

/// The checker's verdict for the report: every violation is counted (the
/// counts are exact), only the examples are capped.
pub fn check_text(r: &Report) -> String {
    let head = format!(
        "checked {} over {} members, {} rooms, {} messages, {} deliveries: ",
        r.checked, r.members, r.rooms, r.messages, r.deliveries
    );
    if r.ok() {
        return head + "OK";
    }
    let by_kind: Vec<String> = r
        .counts
        .iter()
        .filter(|(_, c)| **c > 0)
        .map(|(k, c)| format!("{c} {k}"))
        .collect();
    let mut s = format!(
        "{head}FAILED: {} violations in all ({}; every violation is counted), the first {} of each kind shown:",
        r.total_violations(),
        by_kind.join(", "),
        testkit::check::DEFAULT_EXAMPLES
    );
    for e in &r.examples {
        s.push_str(&format!("\n  {}: {}", e.violation.kind(), e.text));
    }
    s
}

fn print_report(r: &StressReport) {
    let ms = |us: u64| us as f64 / 1000.0;
    crate::outln!(
        "stress: mode {} ({} servers, {} clients, {} rooms, {} messages each{}), checking {}",
        r.mode,
        r.servers,
        r.clients,
        r.rooms,
        r.messages_per_client,
        match &r.faults {
            Some(f) => format!(
                ", proxy delay {}..{} ms loss {} duplicate {} seed {}",
                f.delay_min_ms, f.delay_max_ms, f.loss, f.duplicate, f.seed
            ),
            None => String::new(),
        },
        r.properties
    );
    crate::outln!(
        "  sent {} messages, {}/{} deliveries ({} datagrams) in {:.3}s, stopped: {}",
        r.sent,
        r.distinct_deliveries,
        r.expected_deliveries,
        r.deliveries,
        r.run_duration_s,
        r.stop_reason
    );
    crate::outln!(
        "  throughput {:.0} messages/s, {:.0} deliveries/s",
        r.messages_per_s,
        r.deliveries_per_s
    );
    crate::outln!(
        "  latency send->delivery: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        ms(r.latency.p50_us),
        ms(r.latency.p90_us),
        ms(r.latency.p99_us),
        ms(r.latency.max_us),
        r.latency.count
    );
    if let Some(f) = &r.flood {
        crate::outln!(
            "  flood: {} client{} in room 1 sent {} messages; {} reached the room ({} deliveries), {} -ERR replies (refusals are answered at most every 250 ms)",
            f.clients,
            if f.clients == 1 { "" } else { "s" },
            f.sent,
            f.delivered,
            f.deliveries,
            f.refused_replies
        );
        crate::outln!(
            "  normal clients' latency during the flood: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(r.latency.p50_us),
            ms(r.latency.p99_us),
            ms(r.latency.max_us)
        );
    }
    if r.attached {
        crate::outln!("  servers' peak RSS: not known (attached to a running cluster)");
    } else if !r.server_peak_rss_kib.is_empty() {
        let each: Vec<String> = r
            .server_peak_rss_kib
            .iter()
            .enumerate()
            .map(|(i, k)| match k {
                Some(k) => format!("s{} {:.1} MiB", i + 1, *k as f64 / 1024.0),
                None => format!("s{} unknown", i + 1),
            })
            .collect();
        crate::outln!("  servers' peak RSS (VmHWM): {}", each.join(", "));
    }
    if r.confirmations > 0 {
        crate::outln!(
            "  {} address-confirmation requests answered",
            r.confirmations
        );
    }
    match r.kernel_rcvbuf_errors {
        Some(n) => crate::outln!("  kernel UDP receive-buffer drops during the run: {n}"),
        None => crate::outln!("  kernel UDP receive-buffer drops: unknown (no /proc/net/snmp)"),
    }
    if let Some(p) = &r.proxy {
        crate::outln!("  proxy: {p}");
    }
    if !r.server_counters.is_empty() {
        let c = |k: &str| r.server_counters.get(k).copied().unwrap_or(0);
        crate::outln!(
            "  servers (summed): {} server datagrams sent, {} retransmitted payloads, {} duplicate payloads dropped, {} bad peer datagrams, {} posts refused",
            c("link_datagrams_sent"),
            c("retransmissions"),
            c("duplicates"),
            c("bad_peer_datagrams"),
            c("refused_posts")
        );
        let lost = r.proxy.as_ref().map_or(0, |p| p.dropped);
        if c("retransmissions") > 0 && lost == 0 && r.faults.is_some() {
            crate::outln!(
                "    (no datagram was lost: these resends were spurious. The proxy's delay reorders \
                 datagrams; a link takes a datagram overtaken by later ones for a lost one, reports \
                 the gap and the sender resends it after about one round trip; the late original \
                 arrives too, and one of the two is dropped as a duplicate)"
            );
        }
    }
    if r.other_replies > 0 {
        crate::outln!(
            "  {} other datagrams (not deliveries), e.g. {:?}",
            r.other_replies,
            r.other_examples
        );
    }
    if r.garbled > 0 {
        crate::outln!(
            "  {} garbled deliveries, e.g. {:?}",
            r.garbled,
            r.garbled_examples
        );
    }
    for p in &r.server_problems {
        crate::outln!("  {p}");
    }
    crate::outln!("  {}", check_text(&r.check).replace('\n', "\n  "));
    crate::outln!("  checker took {:.3}s", r.check_s);
    crate::outln!("  result: {}", if r.ok { "PASS" } else { "FAIL" });
}
