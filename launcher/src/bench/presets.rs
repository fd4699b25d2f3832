//! The named benchmarks of BENCHMARKS.md (W1..W4, memory; cpu has a file
//! of its own), each returning its report.

use super::args::Preset;
use super::latency::{self, LatencyPlan};
use super::report::{PresetReport, Row, Target};
use super::runner::{
    Env, LoadFigures, LoadSpec, bound, cluster_run, drive, figures, start_total_cluster, sweep,
    sweep_note,
};
use crate::cluster::procfs;
use anyhow::Context;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use testkit::check::Properties;

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
    let (sweep_runs, best) = sweep(env, 3, env.total.as_str(), &base(100), windows)?;
    let window = sweep_runs[best].window;
    let head = &sweep_runs[best];
    let mut ok = sweep_runs.iter().all(LoadFigures::ok);
    let mut rows = vec![
        Row::new(
            format!("{}, 100 B: messages/s (window {window})", env.total),
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
    for (mode, size) in [
        (env.total.as_str(), 1000),
        ("fifo", 100),
        ("unordered", 100),
    ] {
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
        cpu_load: None,
    })
}

fn w2(env: &Env) -> anyhow::Result<PresetReport> {
    let mode = env.total.as_str();
    let messages = env.count(10_000.0, 300.0);
    let running = start_total_cluster(env, 3, None, Duration::from_secs(20))?;
    let plan = LatencyPlan {
        servers: running.binds.clone(),
        room: 1,
        rate_per_client: 1000.0,
        messages,
        size: 100,
        spin: env.spin,
        quiet: Duration::from_secs(3),
        deadline: bound(f64::from(messages) / 1000.0),
        properties: Properties::from_guarantees(orderings::lookup(&env.total)?.guarantees),
    };
    env.say(format!(
        "3 clients at 1,000 messages/s each, {messages} messages each"
    ));
    // What the servers spend for this latency (polling costs CPU while it
    // saves wake-ups): their CPU time over the run, per message sent.
    let cpu_of = |pids: &[Option<i32>]| -> Option<u64> {
        pids.iter()
            .map(|p| {
                p.and_then(crate::cluster::procfs::cpu_time)
                    .map(|c| c.total_ns())
            })
            .sum()
    };
    let cpu_before = cpu_of(&running.pids);
    let started = std::time::Instant::now();
    let result = latency::run(&plan);
    let cpu_used = cpu_of(&running.pids)
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let wall = started.elapsed().as_secs_f64();
    let (_, problems) = running.stop(Duration::from_secs(3));
    let r = result?;
    // The same clients against the relay floor (see `relay_floor`): it
    // orders nothing, so only exactly-once is checked.
    env.say("the same clients against the relay floor (4 hops, nothing else)");
    let floor = {
        let relay = super::relay_floor::RelayFloor::start(3).context("starting the relay floor")?;
        latency::run(&LatencyPlan {
            servers: relay.binds().to_vec(),
            properties: Properties::from_guarantees(orderings::Guarantees::NONE),
            ..plan.clone()
        })?
    };
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
            "relay floor: p50 / p99 (the same 4 hops, nothing else)",
            Some(floor.latency.p50_ms),
            "ms",
            None,
        )
        .note(format!(
            "p99 {:.3} ms; {} of {} deliveries; pacing lag p99 {:.1} us",
            floor.latency.p99_ms,
            floor.deliveries,
            floor.expected_deliveries,
            floor.pacing.lag_p99_us
        )),
        Row::new(
            "servers' CPU per message (3 servers summed)",
            cpu_used.map(|ns| ns as f64 / 1_000.0 / r.sent.max(1) as f64),
            "us",
            None,
        )
        .note(match cpu_used {
            Some(ns) => format!(
                "{:.0}% of a core per server over the run ({:.1} s); --busy-poll-us {}",
                100.0 * ns as f64 / 1e9 / wall.max(1e-9) / 3.0,
                wall,
                env.busy_poll_us.map_or(
                    format!("{} (default)", node::cli::DEFAULT_BUSY_POLL_US),
                    |us| us.to_string()
                )
            ),
            None => "no /proc/PID/schedstat".to_string(),
        }),
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
    if super::machine::IdleWait::read(std::path::Path::new("/")).is_some_and(|w| w.halts_at_once())
    {
        notes.push(
            "this virtual machine's idle CPUs halt at once (guest halt polling off: \
             /sys/module/haltpoll/parameters/guest_halt_poll_ns is 0), so every hop to a \
             process that sleeps waits for the hypervisor to wake a CPU; the relay floor \
             pays it too (BENCHMARKS.md, \"Idle CPUs that wake fast\")"
                .to_string(),
        );
    }
    notes.extend(problems);
    if !r.check_ok {
        notes.push(r.check.clone());
    }
    Ok(PresetReport {
        bench: "w2".into(),
        title: format!(
            "W2 latency: 3 servers, {mode}, 3 clients at 1,000 messages/s each (3,000/s), {messages} messages each, 100 B"
        ),
        quick: env.quick,
        ok,
        rows,
        notes,
        details: serde_json::json!({ "run": r, "relay_floor": floor }),
        duration_s: 0.0,
        cpu_load: None,
    })
}

fn w3(env: &Env, one_room: bool) -> anyhow::Result<PresetReport> {
    let mode = env.total.as_str();
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
    let f = cluster_run(env, 10, env.total.as_str(), &spec, true)?;
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
            "p99 send -> arrival",
            f.arrival.as_ref().map(|a| a.p99_ms),
            "ms",
            None,
        )
        .note("by the kernel's stamp on the client's socket, before the load tool read it"),
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
                "W3 one room: 10 servers, 250 clients all in room 1, {mode}, {rate:.0} messages/s, {messages} per client"
            ),
        )
    } else {
        (
            "w3",
            format!(
                "W3 scale: 10 servers, 250 clients, 10 rooms of 25 spanning servers, {mode}, {rate:.0} messages/s, {messages} per client"
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
        cpu_load: None,
    })
}

fn w4(env: &Env) -> anyhow::Result<PresetReport> {
    let mode = env.total.as_str();
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
    let (runs, best) = sweep(env, 10, env.total.as_str(), &spec, windows)?;
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
            "W4 ten servers: 10 servers, one client on each, one room, {mode}, 100 B, {messages} messages per client, \
             as fast as a window of un-echoed messages per client allows"
        ),
        quick: env.quick,
        ok: runs.iter().all(LoadFigures::ok),
        rows,
        notes,
        details: serde_json::json!({ "sweep": runs, "best": best }),
        duration_s: 0.0,
        cpu_load: None,
    })
}

#[derive(Debug, Clone, Serialize)]
struct RssSample {
    t_s: f64,
    /// Per node, KiB (0: unreadable).
    rss_kib: Vec<u64>,
}

fn memory(env: &Env) -> anyhow::Result<PresetReport> {
    let mode = env.total.as_str();
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
    let running = start_total_cluster(env, 10, None, Duration::from_secs(20))?;
    let pids = running.pids.clone();
    let at_start: Vec<u64> = pids
        .iter()
        .map(|p| p.and_then(procfs::memory).map_or(0, |m| m.rss_kib))
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
                                .map(|p| p.and_then(procfs::memory).map_or(0, |m| m.rss_kib))
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
    let at_end: Vec<procfs::Memory> = pids
        .iter()
        .map(|p| p.and_then(procfs::memory).unwrap_or_default())
        .collect();
    samples.push(RssSample {
        t_s: samples.last().map_or(0.0, |s| s.t_s + 0.001),
        rss_kib: at_end.iter().map(|m| m.rss_kib).collect(),
    });
    let (_, problems) = running.stop(Duration::from_secs(3));
    let (load, drops) = result?;
    // Counts only: the checker would double the run's memory for nothing here.
    let f = figures(env.total.as_str(), 10, &spec, &load, drops, None, problems);
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
            "Memory: the W3 setup (10 servers, 250 clients, 10 rooms, {mode}, {rate:.0} messages/s) for {secs:.0} s, RSS sampled every second"
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
        cpu_load: None,
    })
}

pub(super) fn run_one(env: &Env, p: Preset) -> anyhow::Result<PresetReport> {
    let started = Instant::now();
    let mut r = match p {
        Preset::W1 => w1(env),
        Preset::W2 => w2(env),
        Preset::W3 => w3(env, false),
        Preset::W3OneRoom => w3(env, true),
        Preset::W4 => w4(env),
        Preset::Memory => memory(env),
        Preset::Cpu => super::cpu::run(env),
        Preset::Faults => super::faults::run(env),
        Preset::All => unreachable!("expanded by the caller"),
    }
    .with_context(|| format!("bench {}", p.name()))?;
    r.duration_s = started.elapsed().as_secs_f64();
    Ok(r)
}
