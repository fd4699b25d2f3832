//! `launcher bench NAME`: the named benchmarks of BENCHMARKS.md, each on a
//! cluster of its own (fresh 127.0.0.1 ports, the `chatserver` next to the
//! launcher), each figure printed next to its target.
//!
//! | name | what |
//! | --- | --- |
//! | `w1` | 3 servers, a client on each, one room: messages/s as fast as a window of un-echoed messages lets them go (total 100 B; also total 1000 B, fifo, unordered) |
//! | `w2` (`latency`) | 3 servers, 3 clients at 1,000 messages/s each, total: send -> delivery p50/p90/p99/p999/max at every member (`latency.rs`) |
//! | `w3` | 10 servers, 250 clients, 10 rooms of 25, total, 5,000 messages/s: sustained rate and p99 |
//! | `w3-one-room` | 10 servers, 250 clients in one room, total, 1,000 messages/s |
//! | `w4` | 10 servers, a client on each, one room, total: messages/s as fast as it goes |
//! | `memory` | peak RSS (VmHWM) of every node after a W3 run of 60 s, and RSS every second (flat?) |
//! | `cpu` | per message: CPU time, system calls (strace) and instructions (callgrind) of a node (`cpu.rs`) |
//! | `all` | every one of them, in that order |
//!
//! `--quick` runs a tiny version of each (seconds, not minutes) to prove the
//! command works; its figures mean nothing. `--repeat N` runs each N times
//! and sums each figure up over the runs (`report::Summary`). Every run is bounded in messages
//! and in time, and stops every process it started, by pid. The exit code is
//! non-zero when a run lost messages, broke its ordering guarantee or could
//! not run, never because a target was missed.

mod args;
mod cpu;
mod faults;
mod latency;
mod machine;
mod presets;
mod relay_floor;
mod report;
mod runner;

pub use args::{BenchArgs, Preset};

use crate::cluster::ScratchDir;
use anyhow::Context;
use report::BenchReport;
use runner::Env;
use std::process::ExitCode;
use std::time::Duration;

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if !(a.scale > 0.0 && a.scale.is_finite()) {
        anyhow::bail!("--scale must be a positive number");
    }
    let chatserver = crate::cluster::chatserver(a.chatserver.as_deref())?;
    if !chatserver.exists() {
        anyhow::bail!(
            "chatserver binary {} not found (build it: cargo build --release -p node)",
            chatserver.display()
        );
    }
    let scratch = ScratchDir::new("bench")?;
    let secret_file = if a.secret {
        let p = scratch.path().join("secret");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::fs::write(&p, format!("bench-{}-{nanos}\n", std::process::id()))
            .with_context(|| format!("writing {}", p.display()))?;
        Some(p)
    } else {
        None
    };
    let env = Env {
        chatserver,
        total: a.ordering.clone(),
        quick: a.quick,
        scale: a.scale,
        window: a.window.map(|w| w.max(1)),
        secret_file,
        busy_poll_us: a.busy_poll_us,
        spin: Duration::from_micros(a.spin_us),
        gro: !a.no_gro,
        progress: !a.quiet,
        scratch: scratch.path().to_path_buf(),
    };
    // An unknown mode fails here, with the list, not after a cluster start.
    let total_spec = orderings::lookup(&env.total)?;
    if !total_spec.guarantees.total {
        crate::outln!(
            "bench: note: {} does not promise total order; the total-order runs use it anyway and check what it promises",
            env.total
        );
    }
    let machine = machine::machine();
    crate::outln!(
        "bench: {machine}; chatserver {}{}; server links {}; load clients read {}",
        env.chatserver.display(),
        match env.busy_poll_us {
            Some(us) => format!(" --busy-poll-us {us}"),
            None => String::new(),
        },
        if env.secret_file.is_some() {
            "authenticated (--secret)"
        } else {
            "not authenticated"
        },
        if env.gro {
            "runs of deliveries whole (UDP_GRO)"
        } else {
            "one datagram per read (--no-gro)"
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
            Preset::Faults,
        ]
    } else {
        vec![a.name]
    };
    let mut reports = Vec::new();
    let mut summaries = Vec::new();
    let mut ok = true;
    for p in presets {
        let mut runs = Vec::new();
        for run in 1..=a.repeat {
            if a.repeat > 1 {
                env.say(format!("{}: run {run} of {}", p.name(), a.repeat));
            }
            let before = machine::CpuTimes::now();
            match presets::run_one(&env, p) {
                Ok(mut r) => {
                    r.cpu_load = before
                        .zip(machine::CpuTimes::now())
                        .and_then(|(b, a)| machine::CpuLoad::between(b, a));
                    if let Some(load) = r.cpu_load {
                        r.notes.push(format!(
                            "machine during this benchmark: {load}; figures taken with much steal are not comparable with others"
                        ));
                    }
                    report::print(&r);
                    ok &= r.ok;
                    runs.push(r);
                }
                Err(e) => {
                    crate::outln!("\n== {}: could not run: {e:#}", p.name());
                    ok = false;
                }
            }
        }
        if a.repeat > 1 && !runs.is_empty() {
            let s = report::Summary::of(&runs);
            report::print_summary(&s);
            summaries.push(s);
        }
        reports.extend(runs);
    }
    drop(scratch);
    if let Some(path) = &a.json {
        let report = BenchReport {
            machine,
            command: std::env::args().collect(),
            secret: a.secret,
            ok,
            benches: reports,
            summaries,
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
