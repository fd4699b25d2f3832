//! `launcher bench NAME`: the named benchmarks of BENCHMARKS.md, each on a
//! cluster of its own (fresh 127.0.0.1 ports, the `chatserver` next to the
//! launcher), each figure printed next to its target.
//!
//! | name | what |
//! | --- | --- |
//! | `w1` | 3 servers, a client on each, one room: messages/s as fast as a window of un-echoed messages lets them go (total 100 B; also total 1000 B, fifo, unordered) |
//! | `w2` (`latency`) | 3 servers, 3 clients at 1,000 messages/s each, total: send -> delivery p50/p90/p99/p999/max at every member ([`crate::bench_latency`]) |
//! | `w3` | 10 servers, 250 clients, 10 rooms of 25, total, 5,000 messages/s: sustained rate and p99 |
//! | `w3-one-room` | 10 servers, 250 clients in one room, total, 1,000 messages/s |
//! | `w4` | 10 servers, a client on each, one room, total: messages/s as fast as it goes |
//! | `memory` | peak RSS (VmHWM) of every node after a W3 run of 60 s, and RSS every second (flat?) |
//! | `cpu` | per message: CPU time, system calls (strace) and instructions (callgrind) of a node ([`crate::bench_cpu`]) |
//! | `all` | every one of them, in that order |
//!
//! `--quick` runs a tiny version of each (seconds, not minutes) to prove the
//! command works; its figures mean nothing. Every run is bounded in messages
//! and in time, and stops every process it started, by pid. The exit code is
//! non-zero when a run lost messages, broke its ordering guarantee or could
//! not run, never because a target was missed.

use crate::bench_latency::{self, LatencyPlan, Percentiles};
use crate::bench_proc::{self, Machine};
use crate::stress::kernel_rcvbuf_errors;
use crate::stress_cluster::{Cluster, ClusterSpec};
use crate::stress_load::{LoadPlan, LoadResult, run_load};
use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use testkit::check::Properties;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    W1,
    #[value(alias = "latency")]
    W2,
    W3,
    #[value(name = "w3-one-room")]
    W3OneRoom,
    W4,
    Memory,
    Cpu,
    All,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::W1 => "w1",
            Preset::W2 => "w2",
            Preset::W3 => "w3",
            Preset::W3OneRoom => "w3-one-room",
            Preset::W4 => "w4",
            Preset::Memory => "memory",
            Preset::Cpu => "cpu",
            Preset::All => "all",
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark: w1, w2 (or latency), w3, w3-one-room, w4, memory,
    /// cpu, or all.
    #[arg(value_enum)]
    pub name: Preset,
    /// A tiny run that only proves the benchmark works (figures meaningless).
    #[arg(long)]
    pub quick: bool,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// The chatserver binary (default: next to the launcher).
    #[arg(long, value_name = "PATH")]
    pub chatserver: Option<PathBuf>,
    /// Multiply message counts and durations by this (e.g. 0.2 for a shorter
    /// run, 3 for a longer one).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub scale: f64,
    /// Most un-echoed messages per client in the as-fast-as-possible runs
    /// (w1, w4, cpu). Default: w1 and w4 try several windows and report the
    /// best run that lost nothing; cpu uses 64.
    #[arg(long, value_name = "N")]
    pub window: Option<u32>,
    /// Authenticate server-to-server packets with a generated cluster secret
    /// (as `launcher up` does by default); off by default, like a plain
    /// `chatserver` start.
    #[arg(long)]
    pub secret: bool,
    /// w2: how long before each send deadline the sender busy-waits (µs).
    #[arg(long, default_value_t = 100, value_name = "US")]
    pub spin_us: u64,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    AtLeast,
    AtMost,
    Below,
    Equal,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    pub op: Op,
    pub value: f64,
}

impl Target {
    pub fn at_least(value: f64) -> Option<Target> {
        Some(Target {
            op: Op::AtLeast,
            value,
        })
    }
    pub fn at_most(value: f64) -> Option<Target> {
        Some(Target {
            op: Op::AtMost,
            value,
        })
    }
    pub fn below(value: f64) -> Option<Target> {
        Some(Target {
            op: Op::Below,
            value,
        })
    }
    pub fn equal(value: f64) -> Option<Target> {
        Some(Target {
            op: Op::Equal,
            value,
        })
    }
    fn met(&self, v: f64) -> bool {
        match self.op {
            Op::AtLeast => v >= self.value,
            Op::AtMost => v <= self.value,
            Op::Below => v < self.value,
            Op::Equal => v == self.value,
        }
    }
    fn text(&self, unit: &str) -> String {
        let op = match self.op {
            Op::AtLeast => ">=",
            Op::AtMost => "<=",
            Op::Below => "<",
            Op::Equal => "=",
        };
        format!("{op} {} {unit}", fmt_num(self.value))
            .trim_end()
            .to_string()
    }
}

/// One line of a benchmark's table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: String,
    /// `None`: could not be measured here (see `note`).
    pub value: Option<f64>,
    pub unit: String,
    pub target: Option<Target>,
    /// `None` without a target or a value.
    pub met: Option<bool>,
    pub note: String,
}

impl Row {
    pub fn new(
        figure: impl Into<String>,
        value: Option<f64>,
        unit: &str,
        target: Option<Target>,
    ) -> Row {
        let met = target.zip(value).map(|(t, v)| t.met(v));
        Row {
            figure: figure.into(),
            value,
            unit: unit.to_string(),
            target,
            met,
            note: String::new(),
        }
    }
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }
}

/// The report of one benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct PresetReport {
    pub bench: String,
    pub title: String,
    pub quick: bool,
    /// Every run delivered everything, in order, without server trouble.
    pub ok: bool,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub details: serde_json::Value,
    pub duration_s: f64,
}

/// What `--json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub command: Vec<String>,
    /// Server-to-server packets were authenticated (`--secret`).
    pub secret: bool,
    pub ok: bool,
    pub benches: Vec<PresetReport>,
}

/// Settings shared by every benchmark of one invocation.
pub struct Env {
    pub chatserver: PathBuf,
    pub quick: bool,
    pub scale: f64,
    /// `--window`, if given.
    pub window: Option<u32>,
    pub secret_file: Option<PathBuf>,
    pub spin: Duration,
    pub progress: bool,
    scratch: PathBuf,
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
pub struct Running {
    pub cluster: Cluster,
    pub binds: Vec<SocketAddr>,
    pub pids: Vec<Option<i32>>,
}

impl Running {
    /// Stops the servers (SIGTERM by pid, SIGKILL after `grace`) and returns
    /// the counters each printed when it stopped.
    pub fn stop(mut self, grace: Duration) -> (Vec<Option<BTreeMap<String, u64>>>, Vec<String>) {
        let n = self.binds.len();
        // Problems first: after `stop` every server counts as exited.
        let problems = self.cluster.dead_servers();
        self.cluster.stop(grace);
        let counters = bench_proc::stopped_counters(&mut self.cluster, n, Duration::from_secs(2));
        (counters, problems)
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
) -> anyhow::Result<Running> {
    let cfg = bench_proc::local_cluster_config(servers)?;
    let mut extra_args = Vec::new();
    if let Some(p) = &env.secret_file {
        extra_args.push("--secret-file".to_string());
        extra_args.push(p.to_string_lossy().into_owned());
    }
    let spec = ClusterSpec {
        cfg,
        mode: mode.to_string(),
        rooms: rooms.max(1),
        faults: None,
        chatserver: chatserver
            .map(Path::to_path_buf)
            .unwrap_or_else(|| env.chatserver.clone()),
        extra_args,
        ready_timeout,
    };
    env.say(format!("starting {servers} servers ({mode})"));
    let cluster = Cluster::start(&spec)?;
    let binds = cluster.binds.clone();
    let pids = bench_proc::server_pids(&cluster, servers);
    Ok(Running {
        cluster,
        binds,
        pids,
    })
}

/// A stress-style load (see [`crate::stress_load`]).
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

/// Sums the servers' counters.
pub fn sum_counters(counters: &[Option<BTreeMap<String, u64>>]) -> BTreeMap<String, u64> {
    let mut sum = BTreeMap::new();
    for c in counters.iter().flatten() {
        for (k, v) in c {
            *sum.entry(k.clone()).or_insert(0) += v;
        }
    }
    sum
}

/// Runs `spec` once per window (or once at `--window`) and returns every
/// run and the index of the fastest one that lost nothing on the way
/// (every message delivered to every member exactly once and in order).
/// Retransmissions between servers (a datagram lost in a kernel buffer, or
/// a timeout that fired early under load) are recovered by the links and
/// shown in the note, and do not disqualify a run.
fn sweep(
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

fn sweep_note(runs: &[LoadFigures], best: usize) -> String {
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
fn bound(secs: f64) -> Duration {
    Duration::from_secs_f64((secs * 3.0 + 30.0).min(900.0))
}

fn w1(env: &Env) -> anyhow::Result<PresetReport> {
    let messages = env.count(40_000.0, 300.0);
    let base = |size: usize| LoadSpec {
        clients: 3,
        rooms: 1,
        messages,
        rate: 0.0,
        window: 0,
        size,
        timeout: bound(3.0 * f64::from(messages) / 5_000.0),
        quiet: Duration::from_secs(3),
    };
    let windows: &[u32] = if env.quick {
        &[16, 64]
    } else {
        &[16, 32, 64, 128, 256]
    };
    let (sweep_runs, best) = sweep(env, 3, "total", &base(100), windows)?;
    let window = sweep_runs[best].window;
    let head = &sweep_runs[best];
    let mut ok = sweep_runs.iter().all(LoadFigures::ok);
    let mut rows = vec![
        Row::new(
            format!("total, 100 B: messages/s (window {window})"),
            Some(head.messages_per_s.round()),
            "msg/s",
            Target::at_least(50_000.0),
        )
        .note(format!(
            "p50 {:.3} ms, p99 {:.3} ms",
            head.latency.p50_ms, head.latency.p99_ms
        )),
    ];
    let mut runs = Vec::new();
    for (mode, size) in [("total", 1000), ("fifo", 100), ("unordered", 100)] {
        let f = cluster_run(
            env,
            3,
            mode,
            &LoadSpec {
                window,
                ..base(size)
            },
            true,
        )?;
        ok &= f.ok();
        rows.push(
            Row::new(
                format!("{mode}, {size} B: messages/s (window {window})"),
                Some(f.messages_per_s.round()),
                "msg/s",
                None,
            )
            .note(format!(
                "p50 {:.3} ms, p99 {:.3} ms{}",
                f.latency.p50_ms,
                f.latency.p99_ms,
                if f.ok() {
                    String::new()
                } else {
                    format!("; RUN FAILED: {}", f.stop_reason)
                }
            )),
        );
        runs.push(f);
    }
    let mut notes = vec![
        "messages/s = messages sent / (first send -> last delivery); every message reaches all 3 members".to_string(),
        sweep_note(&sweep_runs, best),
    ];
    for f in sweep_runs.iter().chain(&runs).filter(|f| !f.ok()) {
        notes.push(format!("failed run: {}", f.summary()));
        notes.extend(f.server_problems.iter().cloned());
    }
    Ok(PresetReport {
        bench: "w1".into(),
        title: format!(
            "W1 throughput: 3 servers, one client on each, all in room 1, {messages} messages per client, \
             as fast as a window of un-echoed messages per client allows"
        ),
        quick: env.quick,
        ok,
        rows,
        notes,
        details: serde_json::json!({ "sweep": sweep_runs, "best": best, "variants": runs }),
        duration_s: 0.0,
    })
}

fn w2(env: &Env) -> anyhow::Result<PresetReport> {
    let messages = env.count(10_000.0, 300.0);
    let running = start_cluster(env, 3, "total", 10, None, Duration::from_secs(20))?;
    let plan = LatencyPlan {
        servers: running.binds.clone(),
        room: 1,
        rate_per_client: 1000.0,
        messages,
        size: 100,
        spin: env.spin,
        quiet: Duration::from_secs(3),
        deadline: bound(f64::from(messages) / 1000.0),
        properties: Properties::from_guarantees(orderings::lookup("total")?.guarantees),
    };
    env.say(format!(
        "3 clients at 1,000 messages/s each, {messages} messages each"
    ));
    let result = bench_latency::run(&plan);
    let (_, problems) = running.stop(Duration::from_secs(3));
    let r = result?;
    let ok = r.check_ok
        && r.stop_reason == "complete"
        && r.deliveries == r.expected_deliveries
        && problems.is_empty();
    let l = &r.latency;
    let rows = vec![
        Row::new(
            "p50 send -> delivery",
            Some(l.p50_ms),
            "ms",
            Target::at_most(0.10),
        ),
        Row::new("p90", Some(l.p90_ms), "ms", None),
        Row::new("p99", Some(l.p99_ms), "ms", Target::at_most(0.20)),
        Row::new("p999", Some(l.p999_ms), "ms", None),
        Row::new("max", Some(l.max_ms), "ms", None),
        Row::new(
            "deliveries (3 x messages sent)",
            Some(r.deliveries as f64),
            "",
            // Every message of the 3 clients reaches all 3 members.
            Target::equal(9.0 * f64::from(messages)),
        )
        .note(format!(
            "sent {}, duplicates {}, stop: {}, check: {}",
            r.sent,
            r.duplicates,
            r.stop_reason,
            if r.check_ok { "OK" } else { "FAILED" }
        )),
        Row::new(
            "achieved send rate",
            Some(r.send_rate.round()),
            "msg/s",
            None,
        )
        .note(format!(
            "pacing lag p50 {:.1} us, p99 {:.1} us, max {:.1} us, {} sends > 50 us late",
            r.pacing.lag_p50_us, r.pacing.lag_p99_us, r.pacing.lag_max_us, r.pacing.late_sends
        )),
    ];
    let mut notes = vec![format!(
        "{} senders on their own threads (sleep, then spin the last {} us), send times shared by (client, seq)",
        r.clients,
        env.spin.as_micros()
    )];
    notes.extend(problems);
    if !r.check_ok {
        notes.push(r.check.clone());
    }
    Ok(PresetReport {
        bench: "w2".into(),
        title: format!(
            "W2 latency: 3 servers, total, 3 clients at 1,000 messages/s each (3,000/s), {messages} messages each, 100 B"
        ),
        quick: env.quick,
        ok,
        rows,
        notes,
        details: serde_json::to_value(&r)?,
        duration_s: 0.0,
    })
}

fn w3(env: &Env, one_room: bool) -> anyhow::Result<PresetReport> {
    let (rooms, rate, secs) = if one_room {
        (1u32, 1_000.0, 10.0)
    } else {
        (10u32, 5_000.0, 10.0)
    };
    let clients = 250usize;
    let total = env.count(rate * secs, if one_room { 250.0 } else { 1_000.0 });
    let messages = (total as usize).div_ceil(clients) as u32;
    let spec = LoadSpec {
        clients,
        rooms,
        messages,
        rate,
        window: 16,
        size: 0,
        timeout: bound(f64::from(messages) * clients as f64 / rate),
        quiet: Duration::from_secs(3),
    };
    let f = cluster_run(env, 10, "total", &spec, true)?;
    let sustained = f.sustained_rate().round();
    let mut rows = vec![
        Row::new(
            "sustained messages/s",
            Some(sustained),
            "msg/s",
            Target::at_least(rate),
        )
        .note(format!(
            "offered {rate:.0}/s; sent {}, delivered {}/{} ({})",
            f.sent, f.deliveries, f.expected_deliveries, f.stop_reason
        )),
        Row::new("p50 send -> delivery", Some(f.latency.p50_ms), "ms", None),
        Row::new(
            "p99 send -> delivery",
            Some(f.latency.p99_ms),
            "ms",
            if one_room { None } else { Target::below(5.0) },
        ),
        Row::new("max", Some(f.latency.max_ms), "ms", None),
        Row::new(
            "deliveries/s to clients",
            Some(f.deliveries_per_s.round()),
            "/s",
            None,
        ),
    ];
    if let Some(d) = f.kernel_rcvbuf_drops {
        rows.push(Row::new(
            "kernel UDP receive-buffer drops",
            Some(d as f64),
            "",
            None,
        ));
    }
    let (bench, title) = if one_room {
        (
            "w3-one-room",
            format!(
                "W3 one room: 10 servers, 250 clients all in room 1, total, {rate:.0} messages/s, {messages} per client"
            ),
        )
    } else {
        (
            "w3",
            format!(
                "W3 scale: 10 servers, 250 clients, 10 rooms of 25 spanning servers, total, {rate:.0} messages/s, {messages} per client"
            ),
        )
    };
    let mut notes = vec![
        "clients: one tokio thread (the stress workload), paced by 1 ms timers: sends go in small bursts".to_string(),
    ];
    if !f.check_ok {
        notes.push(f.check.clone());
    }
    notes.extend(f.server_problems.iter().cloned());
    Ok(PresetReport {
        bench: bench.into(),
        title,
        quick: env.quick,
        ok: f.ok(),
        rows,
        notes,
        details: serde_json::to_value(&f)?,
        duration_s: 0.0,
    })
}

fn w4(env: &Env) -> anyhow::Result<PresetReport> {
    let messages = env.count(4_000.0, 100.0);
    let spec = LoadSpec {
        clients: 10,
        rooms: 1,
        messages,
        rate: 0.0,
        window: 0,
        size: 100,
        timeout: bound(10.0 * f64::from(messages) / 2_000.0),
        quiet: Duration::from_secs(3),
    };
    let windows: &[u32] = if env.quick {
        &[16]
    } else {
        &[8, 16, 32, 64, 128]
    };
    let (runs, best) = sweep(env, 10, "total", &spec, windows)?;
    let f = &runs[best];
    let rows = vec![
        Row::new(
            format!("messages/s (window {})", f.window),
            Some(f.messages_per_s.round()),
            "msg/s",
            Target::at_least(10_000.0),
        )
        .note(format!(
            "sent {}, delivered {}/{} ({})",
            f.sent, f.deliveries, f.expected_deliveries, f.stop_reason
        )),
        Row::new(
            "deliveries/s to clients",
            Some(f.deliveries_per_s.round()),
            "/s",
            None,
        ),
        Row::new("p50 send -> delivery", Some(f.latency.p50_ms), "ms", None),
        Row::new("p99 send -> delivery", Some(f.latency.p99_ms), "ms", None),
    ];
    let mut notes = vec![sweep_note(&runs, best)];
    for f in runs.iter().filter(|f| !f.ok()) {
        notes.push(format!("failed run: {}", f.summary()));
        if !f.check_ok {
            notes.push(f.check.clone());
        }
        notes.extend(f.server_problems.iter().cloned());
    }
    Ok(PresetReport {
        bench: "w4".into(),
        title: format!(
            "W4 ten servers: 10 servers, one client on each, one room, total, 100 B, {messages} messages per client, \
             as fast as a window of un-echoed messages per client allows"
        ),
        quick: env.quick,
        ok: runs.iter().all(LoadFigures::ok),
        rows,
        notes,
        details: serde_json::json!({ "sweep": runs, "best": best }),
        duration_s: 0.0,
    })
}

#[derive(Debug, Clone, Serialize)]
struct RssSample {
    t_s: f64,
    /// Per node, KiB (0: unreadable).
    rss_kib: Vec<u64>,
}

fn memory(env: &Env) -> anyhow::Result<PresetReport> {
    let (secs, rate) = if env.quick {
        (3.0, 2_000.0)
    } else {
        (60.0 * env.scale, 5_000.0)
    };
    let clients = 250usize;
    let messages = ((rate * secs) / clients as f64).round().max(1.0) as u32;
    let spec = LoadSpec {
        clients,
        rooms: 10,
        messages,
        rate,
        window: 16,
        size: 0,
        timeout: bound(secs),
        quiet: Duration::from_secs(3),
    };
    let running = start_cluster(env, 10, "total", 10, None, Duration::from_secs(20))?;
    let pids = running.pids.clone();
    let at_start: Vec<u64> = pids
        .iter()
        .map(|p| p.and_then(bench_proc::memory).map_or(0, |m| m.rss_kib))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let pids = pids.clone();
        std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let t0 = Instant::now();
                let mut samples = Vec::new();
                let mut next = t0;
                while !stop.load(Relaxed) {
                    if Instant::now() >= next {
                        samples.push(RssSample {
                            t_s: t0.elapsed().as_secs_f64(),
                            rss_kib: pids
                                .iter()
                                .map(|p| p.and_then(bench_proc::memory).map_or(0, |m| m.rss_kib))
                                .collect(),
                        });
                        next += Duration::from_secs(1);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                samples
            })
            .context("spawning the RSS sampler")?
    };
    let result = drive(env, &running.binds, &spec);
    stop.store(true, Relaxed);
    let mut samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the RSS sampler panicked"))?;
    let at_end: Vec<bench_proc::Memory> = pids
        .iter()
        .map(|p| p.and_then(bench_proc::memory).unwrap_or_default())
        .collect();
    samples.push(RssSample {
        t_s: samples.last().map_or(0.0, |s| s.t_s + 0.001),
        rss_kib: at_end.iter().map(|m| m.rss_kib).collect(),
    });
    let (_, problems) = running.stop(Duration::from_secs(3));
    let (load, drops) = result?;
    // Counts only: the checker would double the run's memory for nothing here.
    let f = figures("total", 10, &spec, &load, drops, None, problems);
    env.say(f.summary());

    let mib = |kib: u64| kib as f64 / 1024.0;
    let known = pids.iter().filter(|p| p.is_some()).count();
    let peak = at_end.iter().map(|m| m.hwm_kib).max().unwrap_or(0);
    let peak_node = at_end
        .iter()
        .position(|m| m.hwm_kib == peak)
        .map_or(0, |i| i + 1);
    // Drift: RSS at the end minus RSS half way through the run (after the
    // bounded caches have filled up).
    let half = samples
        .iter()
        .find(|s| s.t_s >= samples.last().map_or(0.0, |l| l.t_s) / 2.0)
        .cloned()
        .unwrap_or_else(|| samples[0].clone());
    let drift: Vec<i64> = at_end
        .iter()
        .zip(&half.rss_kib)
        .map(|(e, q)| e.rss_kib as i64 - *q as i64)
        .collect();
    let max_drift = drift.iter().copied().max().unwrap_or(0);
    let mean_end =
        at_end.iter().map(|m| m.rss_kib).sum::<u64>() as f64 / at_end.len().max(1) as f64;
    let rows = vec![
        Row::new(
            format!("peak RSS (VmHWM) of the largest node (S{peak_node:02})"),
            (known > 0).then(|| (mib(peak) * 100.0).round() / 100.0),
            "MiB",
            Target::below(20.0),
        ),
        Row::new(
            format!("RSS growth from t={:.0}s to the end, worst node", half.t_s),
            (known > 0).then(|| (max_drift as f64 / 1024.0 * 100.0).round() / 100.0),
            "MiB",
            Target::at_most(1.0),
        )
        .note("flat = at most 1 MiB of growth over the second half of the run"),
        Row::new(
            "mean RSS at the end",
            (known > 0).then(|| (mib(mean_end as u64) * 100.0).round() / 100.0),
            "MiB",
            None,
        ),
        Row::new(
            "sustained messages/s",
            Some(f.sustained_rate().round()),
            "msg/s",
            None,
        )
        .note(format!(
            "offered {rate:.0}/s; delivered {}/{} ({})",
            f.deliveries, f.expected_deliveries, f.stop_reason
        )),
    ];
    let mut notes = vec![format!(
        "RSS per node at start (KiB): {:?}; at end: {:?}; VmHWM: {:?}",
        at_start,
        at_end.iter().map(|m| m.rss_kib).collect::<Vec<_>>(),
        at_end.iter().map(|m| m.hwm_kib).collect::<Vec<_>>()
    )];
    let step = (samples.len() / 12).max(1);
    let series: Vec<String> = samples
        .iter()
        .step_by(step)
        .map(|s| {
            let max = s.rss_kib.iter().max().copied().unwrap_or(0);
            format!("{:.0}s {:.1}", s.t_s, mib(max))
        })
        .collect();
    notes.push(format!(
        "largest node's RSS over time (MiB): {}",
        series.join(", ")
    ));
    if known < pids.len() {
        notes.push(format!(
            "only {known} of {} server pids found in /proc",
            pids.len()
        ));
    }
    notes.extend(f.server_problems.iter().cloned());
    Ok(PresetReport {
        bench: "memory".into(),
        title: format!(
            "Memory: the W3 setup (10 servers, 250 clients, 10 rooms, total, {rate:.0} messages/s) for {secs:.0} s, RSS sampled every second"
        ),
        quick: env.quick,
        ok: f.complete && f.check_ok && f.server_problems.is_empty() && known == pids.len(),
        rows,
        notes,
        details: serde_json::json!({
            "load": f,
            "rss_start_kib": at_start,
            "end": at_end,
            "drift_kib": drift,
            "samples": samples,
        }),
        duration_s: 0.0,
    })
}

/// Numbers with thousands separators (integers) or up to 3 decimals.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let s = format!("{}", v.abs() as u64);
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn print_report(r: &PresetReport) {
    crate::outln!();
    crate::outln!(
        "== {}{}",
        r.title,
        if r.quick {
            " [--quick: figures not meaningful]"
        } else {
            ""
        }
    );
    let w = r
        .rows
        .iter()
        .map(|x| x.figure.len())
        .max()
        .unwrap_or(6)
        .max(6);
    crate::outln!(
        "  {:<w$}  {:>14}  {:>16}  {:<4}  note",
        "figure",
        "value",
        "target",
        "met"
    );
    for x in &r.rows {
        let value = match x.value {
            Some(v) => format!("{} {}", fmt_num(v), x.unit).trim_end().to_string(),
            None => "n/a".into(),
        };
        let target = x
            .target
            .map(|t| t.text(&x.unit))
            .unwrap_or_else(|| "-".into());
        let met = match x.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        crate::outln!(
            "  {:<w$}  {:>14}  {:>16}  {:<4}  {}",
            x.figure,
            value,
            target,
            met,
            x.note
        );
    }
    for n in &r.notes {
        crate::outln!("  note: {}", n.replace('\n', "\n        "));
    }
    crate::outln!(
        "  result: {} ({:.1}s)",
        if r.ok { "OK" } else { "RUN FAILED" },
        r.duration_s
    );
}

fn run_one(env: &Env, p: Preset) -> anyhow::Result<PresetReport> {
    let started = Instant::now();
    let mut r = match p {
        Preset::W1 => w1(env),
        Preset::W2 => w2(env),
        Preset::W3 => w3(env, false),
        Preset::W3OneRoom => w3(env, true),
        Preset::W4 => w4(env),
        Preset::Memory => memory(env),
        Preset::Cpu => crate::bench_cpu::run(env),
        Preset::All => unreachable!("expanded by the caller"),
    }
    .with_context(|| format!("bench {}", p.name()))?;
    r.duration_s = started.elapsed().as_secs_f64();
    Ok(r)
}

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if !(a.scale > 0.0 && a.scale.is_finite()) {
        anyhow::bail!("--scale must be a positive number");
    }
    let chatserver = match &a.chatserver {
        Some(p) => p.clone(),
        None => {
            let exe = std::env::current_exe().context("locating the launcher executable")?;
            exe.parent()
                .context("the launcher executable has no directory")?
                .join("chatserver")
        }
    };
    if !chatserver.exists() {
        anyhow::bail!(
            "chatserver binary {} not found (build it: cargo build --release -p node)",
            chatserver.display()
        );
    }
    let scratch = bench_proc::scratch("run")?;
    let secret_file = if a.secret {
        let p = scratch.join("secret");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::fs::write(&p, format!("bench-{}-{nanos}\n", std::process::id()))?;
        Some(p)
    } else {
        None
    };
    let env = Env {
        chatserver,
        quick: a.quick,
        scale: a.scale,
        window: a.window.map(|w| w.max(1)),
        secret_file,
        spin: Duration::from_micros(a.spin_us),
        progress: !a.quiet,
        scratch: scratch.clone(),
    };
    let machine = bench_proc::machine();
    crate::outln!(
        "bench: {machine}; chatserver {}; server links {}",
        env.chatserver.display(),
        if env.secret_file.is_some() {
            "authenticated (--secret)"
        } else {
            "not authenticated"
        }
    );
    if env
        .chatserver
        .components()
        .any(|c| c.as_os_str() == "debug")
    {
        crate::outln!(
            "bench: note: this chatserver looks like a debug build; figures want --release"
        );
    }
    let presets: Vec<Preset> = if a.name == Preset::All {
        vec![
            Preset::W1,
            Preset::W2,
            Preset::W3,
            Preset::W3OneRoom,
            Preset::W4,
            Preset::Memory,
            Preset::Cpu,
        ]
    } else {
        vec![a.name]
    };
    let mut reports = Vec::new();
    let mut ok = true;
    for p in presets {
        match run_one(&env, p) {
            Ok(r) => {
                print_report(&r);
                ok &= r.ok;
                reports.push(r);
            }
            Err(e) => {
                crate::outln!("\n== {}: could not run: {e:#}", p.name());
                ok = false;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if let Some(path) = &a.json {
        let report = BenchReport {
            machine,
            command: std::env::args().collect(),
            secret: a.secret,
            ok,
            benches: reports,
        };
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_readably() {
        assert_eq!(fmt_num(50_000.0), "50,000");
        assert_eq!(fmt_num(1_234_567.0), "1,234,567");
        assert_eq!(fmt_num(0.1), "0.1");
        assert_eq!(fmt_num(0.125), "0.125");
        assert_eq!(fmt_num(12.0), "12");
        assert_eq!(fmt_num(-1024.0), "-1,024");
    }

    #[test]
    fn targets_compare() {
        assert_eq!(
            Row::new("x", Some(0.1), "ms", Target::at_most(0.10)).met,
            Some(true)
        );
        assert_eq!(
            Row::new("x", Some(5.0), "ms", Target::below(5.0)).met,
            Some(false)
        );
        assert_eq!(
            Row::new("x", Some(49_999.0), "msg/s", Target::at_least(50_000.0)).met,
            Some(false)
        );
        assert_eq!(
            Row::new("x", None, "msg/s", Target::at_least(1.0)).met,
            None
        );
        assert_eq!(Row::new("x", Some(3.0), "", None).met, None);
    }
}
