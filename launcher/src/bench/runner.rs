//! What every benchmark does: start a cluster on fresh ports, drive the
//! stress workload against it, stop it, and turn the result into figures.

use super::latency::Percentiles;
use super::report::fmt_num;
use crate::cluster::local::{ClusterSpec, LocalCluster, loopback_config, sum_counters};
use crate::cluster::settings::FaultConfig;
use crate::load::{LoadPlan, LoadResult, run_load};
use crate::net::kernel_rcvbuf_errors;
use node::stats::ServerCounters;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::check::Properties;

/// Settings shared by every benchmark of one invocation.
pub struct Env {
    pub chatserver: PathBuf,
    /// The mode of the total-order runs (`--ordering`).
    pub total: String,
    pub quick: bool,
    pub scale: f64,
    /// `--window`, if given.
    pub window: Option<u32>,
    pub secret_file: Option<PathBuf>,
    /// The servers' `--busy-poll-us`, if given.
    pub busy_poll_us: Option<u64>,
    pub spin: Duration,
    /// The load's clients read runs of deliveries whole (not `--no-gro`).
    pub gro: bool,
    pub progress: bool,
    pub(super) scratch: PathBuf,
}

impl Env {
    /// `full` scaled by `--scale`, or `quick` with `--quick`; at least 1.
    pub fn count(&self, full: f64, quick: f64) -> u32 {
        let n = if self.quick { quick } else { full * self.scale };
        n.round().max(1.0) as u32
    }

    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    pub fn say(&self, text: impl AsRef<str>) {
        if self.progress {
            eprintln!("bench: {}", text.as_ref());
        }
    }
}

/// A cluster started for a benchmark, with its servers' pids.
pub struct BenchCluster {
    pub cluster: LocalCluster,
    pub binds: Vec<SocketAddr>,
    pub pids: Vec<Option<i32>>,
}

impl BenchCluster {
    /// Stops the servers gracefully (SIGKILL after `grace`) and returns the
    /// counters each printed when it stopped, and the servers that had
    /// exited before.
    pub fn stop(mut self, grace: Duration) -> (Vec<Option<ServerCounters>>, Vec<String>) {
        // Problems first: after `stop` every server counts as exited.
        let problems = self.cluster.dead_servers();
        self.cluster.stop(grace);
        (self.cluster.counters(), problems)
    }
}

/// Starts `servers` chatservers in `mode` (`chatserver` overrides the binary,
/// e.g. a wrapper script).
pub fn start_cluster(
    env: &Env,
    servers: usize,
    mode: &str,
    rooms: u32,
    chatserver: Option<&Path>,
    ready_timeout: Duration,
) -> anyhow::Result<BenchCluster> {
    start_cluster_behind(env, servers, mode, rooms, chatserver, ready_timeout, None)
}

/// [`start_cluster`], with the servers' traffic through the fault proxy
/// when `faults` is given.
/// `servers` servers of the run's total-order mode (`--ordering`), 10
/// rooms; `chatserver` replaces the binary (a wrapper script).
pub fn start_total_cluster(
    env: &Env,
    servers: usize,
    chatserver: Option<&Path>,
    ready_timeout: Duration,
) -> anyhow::Result<BenchCluster> {
    start_cluster(
        env,
        servers,
        env.total.as_str(),
        10,
        chatserver,
        ready_timeout,
    )
}

pub fn start_cluster_behind(
    env: &Env,
    servers: usize,
    mode: &str,
    rooms: u32,
    chatserver: Option<&Path>,
    ready_timeout: Duration,
    faults: Option<FaultConfig>,
) -> anyhow::Result<BenchCluster> {
    let cfg = loopback_config(servers)?;
    let mut extra_args = Vec::new();
    if let Some(p) = &env.secret_file {
        extra_args.push("--secret-file".to_string());
        extra_args.push(p.to_string_lossy().into_owned());
    }
    if let Some(us) = env.busy_poll_us {
        extra_args.push("--busy-poll-us".to_string());
        extra_args.push(us.to_string());
    }
    let spec = ClusterSpec {
        cfg,
        mode: mode.to_string(),
        rooms: rooms.max(1),
        faults,
        chatserver: chatserver
            .map(Path::to_path_buf)
            .unwrap_or_else(|| env.chatserver.clone()),
        extra_args,
        ready_timeout,
    };
    env.say(format!("starting {servers} servers ({mode})"));
    let mut cluster = LocalCluster::start(&spec)?;
    let binds = cluster.binds.clone();
    let pids = cluster.pids();
    Ok(BenchCluster {
        cluster,
        binds,
        pids,
    })
}

/// A stress-style load (see [`crate::load`]).
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub clients: usize,
    pub rooms: u32,
    /// Messages per client.
    pub messages: u32,
    /// Total messages/s; 0 = as fast as the window allows.
    pub rate: f64,
    pub window: u32,
    pub size: usize,
    pub timeout: Duration,
    pub quiet: Duration,
}

/// The figures of one stress-style run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigures {
    pub mode: String,
    pub servers: usize,
    pub clients: usize,
    pub rooms: u32,
    pub messages_per_client: u32,
    pub rate: f64,
    pub window: u32,
    pub size: usize,
    pub sent: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub datagrams: u64,
    /// Sent messages over first send -> last delivery.
    pub messages_per_s: f64,
    /// Sent messages over first send -> last send (for a paced run, the
    /// rate the clients kept up).
    pub send_rate: f64,
    pub deliveries_per_s: f64,
    pub run_s: f64,
    pub stop_reason: String,
    pub complete: bool,
    pub latency: Percentiles,
    /// Send -> the kernel's arrival stamp on the member's socket: without
    /// the load tool's own wait to read (`None` without stamps).
    pub arrival: Option<Percentiles>,
    pub kernel_rcvbuf_drops: Option<u64>,
    /// Sums over the servers of the counters they print when they stop
    /// (`retransmissions`, `refused_posts`, ...); empty when not found.
    pub server_totals: BTreeMap<String, u64>,
    pub check_ok: bool,
    pub check: String,
    pub server_problems: Vec<String>,
}

impl LoadFigures {
    pub fn ok(&self) -> bool {
        self.complete && self.check_ok && self.server_problems.is_empty()
    }

    /// A sustained rate for paced runs: the send rate when everything
    /// arrived, else what was delivered over the whole run.
    pub fn sustained_rate(&self) -> f64 {
        if self.complete {
            self.send_rate
        } else {
            self.messages_per_s * self.deliveries as f64 / self.expected_deliveries.max(1) as f64
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} {} servers, {} clients, {} rooms, {} B: sent {}, delivered {}/{} ({}), {:.0} msg/s, \
             latency p50 {:.3} ms p99 {:.3} ms max {:.3} ms, check {}",
            self.mode,
            self.servers,
            self.clients,
            self.rooms,
            self.size,
            self.sent,
            self.deliveries,
            self.expected_deliveries,
            self.stop_reason,
            self.messages_per_s,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            if self.check_ok { "OK" } else { "FAILED" }
        )
    }
}

/// Drives `spec` against `binds` with the stress workload; `check` the
/// delivery logs against `props` (skip for very large runs).
pub fn drive(
    env: &Env,
    binds: &[SocketAddr],
    spec: &LoadSpec,
) -> anyhow::Result<(LoadResult, Option<u64>)> {
    let plan = LoadPlan {
        servers: binds.to_vec(),
        clients: spec.clients,
        rooms: spec.rooms,
        messages: spec.messages,
        rate: spec.rate,
        window: spec.window.max(1),
        size: spec.size,
        quiet: spec.quiet,
        deadline: spec.timeout,
        linger: Duration::from_millis(100),
        progress: env.progress,
        flood_clients: 0,
        excused: Vec::new(),
        hooks: None,
        gro: env.gro,
    };
    let before = kernel_rcvbuf_errors();
    let load = run_load(&plan)?;
    let drops = before
        .zip(kernel_rcvbuf_errors())
        .map(|(b, a)| a.saturating_sub(b));
    Ok((load, drops))
}

pub fn figures(
    mode: &str,
    servers: usize,
    spec: &LoadSpec,
    load: &LoadResult,
    drops: Option<u64>,
    props: Option<Properties>,
    server_problems: Vec<String>,
) -> LoadFigures {
    let (check_ok, check) = match props {
        Some(p) => {
            let r = load.history.check(p);
            (r.ok() && load.garbled == 0, r.to_string())
        }
        None => (load.garbled == 0, "not checked (counts only)".to_string()),
    };
    let run_s = load.run_duration.as_secs_f64();
    let send_s = load.send_duration.as_secs_f64();
    let per = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    LoadFigures {
        mode: mode.to_string(),
        servers,
        clients: spec.clients,
        rooms: spec.rooms,
        messages_per_client: spec.messages,
        rate: spec.rate,
        window: spec.window,
        size: spec.size,
        sent: load.sent,
        expected_deliveries: load.expected,
        deliveries: load.distinct,
        datagrams: load.deliveries,
        messages_per_s: per(load.sent, run_s),
        send_rate: per(load.sent, send_s),
        deliveries_per_s: per(load.distinct, run_s),
        run_s,
        stop_reason: load.stop_reason.to_string(),
        complete: load.stop_reason == "complete"
            && load.distinct == load.expected
            && load.sent == spec.clients as u64 * u64::from(spec.messages),
        latency: Percentiles::from_us(&load.latency),
        arrival: load.arrival_latency.as_ref().map(Percentiles::from_us),
        kernel_rcvbuf_drops: drops,
        server_totals: BTreeMap::new(),
        check_ok,
        check,
        server_problems,
    }
}

/// Starts a cluster, drives one load, stops the cluster, checks.
pub fn cluster_run(
    env: &Env,
    servers: usize,
    mode: &str,
    spec: &LoadSpec,
    check: bool,
) -> anyhow::Result<LoadFigures> {
    let running = start_cluster(
        env,
        servers,
        mode,
        spec.rooms.max(10),
        None,
        Duration::from_secs(20),
    )?;
    let binds = running.binds.clone();
    let result = drive(env, &binds, spec);
    let (counters, problems) = running.stop(Duration::from_secs(3));
    let (load, drops) = result?;
    let props = check
        .then(|| orderings::lookup(mode).map(|s| Properties::from_guarantees(s.guarantees)))
        .transpose()?;
    let mut f = figures(mode, servers, spec, &load, drops, props, problems);
    f.server_totals = sum_counters(&counters);
    env.say(f.summary());
    Ok(f)
}

/// Runs `spec` once per window (or once at `--window`) and returns every
/// run and the index of the fastest one that lost nothing on the way
/// (every message delivered to every member exactly once and in order).
/// Retransmissions between servers (a datagram lost in a kernel buffer, or
/// a timeout that fired early under load) are recovered by the links and
/// shown in the note, and do not disqualify a run.
pub(super) fn sweep(
    env: &Env,
    servers: usize,
    mode: &str,
    spec: &LoadSpec,
    windows: &[u32],
) -> anyhow::Result<(Vec<LoadFigures>, usize)> {
    let windows: Vec<u32> = match env.window {
        Some(w) => vec![w],
        None => windows.to_vec(),
    };
    let mut runs = Vec::new();
    for w in windows {
        let spec = LoadSpec {
            window: w,
            ..spec.clone()
        };
        runs.push(cluster_run(env, servers, mode, &spec, true)?);
    }
    let i = runs
        .iter()
        .enumerate()
        .filter(|(_, f)| f.ok())
        .max_by(|a, b| a.1.messages_per_s.total_cmp(&b.1.messages_per_s))
        .map_or(0, |(i, _)| i);
    Ok((runs, i))
}

pub(super) fn sweep_note(runs: &[LoadFigures], best: usize) -> String {
    let parts: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "{}{}: {} msg/s{}{}{}",
                if i == best { "*" } else { "" },
                f.window,
                fmt_num(f.messages_per_s.round()),
                match f.server_totals.get("retransmissions") {
                    Some(&r) if r > 0 => format!(" ({r} retransmissions)"),
                    _ => String::new(),
                },
                match f.kernel_rcvbuf_drops {
                    Some(d) if d > 0 => format!(" ({d} kernel drops)"),
                    _ => String::new(),
                },
                if f.ok() {
                    String::new()
                } else {
                    format!(" [FAILED: {}]", f.stop_reason)
                }
            )
        })
        .collect();
    format!(
        "window sweep (un-echoed messages per client; * = reported): {}",
        parts.join(", ")
    )
}

/// A time bound for a load expected to take `secs`.
pub(super) fn bound(secs: f64) -> Duration {
    Duration::from_secs_f64((secs * 3.0 + 30.0).min(900.0))
}
