//! `launcher bench cpu`: what one message costs a node, in three runs of
//! the same load (3 servers, total order, a client on each, all in room 1,
//! a fixed number of 100-byte messages as fast as a window allows), so that
//! every node handles every message:
//!
//! 1. natively: CPU time of each node (on-CPU nanoseconds from
//!    /proc/PID/schedstat, user/system split from /proc/PID/stat) and its
//!    datagram counters (from the line it prints when it stops);
//! 2. server 1 under `strace -c -f -p PID` (if strace is installed): system
//!    calls per message, by call;
//! 3. server 1 under `valgrind --tool=callgrind` (if valgrind is installed):
//!    instructions per message, counted after the node is up (the counters
//!    are zeroed with `callgrind_control -z` when it works, else startup is
//!    included and the report says so).
//!
//! "Per message" divides by the messages the node delivered (its
//! `deliveries` counter), which is every message of the run. A missing tool
//! gives a note, not a failure.

use super::machine::which;
use super::report::{PresetReport, Row};
use super::runner::{Env, LoadFigures, LoadSpec, drive, figures, start_total_cluster};
use crate::cluster::plan::shell_quote;
use crate::cluster::process::{self, StopEnd};
use crate::cluster::procfs::{self, CpuTime};
use crate::load::LoadResult;
use anyhow::Context;
use nix::sys::signal::Signal;
use node::stats::ServerCounters;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::check::Properties;

/// One system call's share, from `strace -c`.
#[derive(Debug, Clone, Serialize)]
pub struct Syscall {
    pub name: String,
    pub calls: u64,
    pub errors: u64,
}

/// Parses the table `strace -c` writes: `% time seconds usecs/call calls
/// [errors] syscall`; returns the rows (without `total`) and the total.
pub fn parse_strace_summary(text: &str) -> (Vec<Syscall>, Option<u64>) {
    let mut rows = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 5 || t[0].parse::<f64>().is_err() {
            continue;
        }
        let Ok(calls) = t[3].parse::<u64>() else {
            continue;
        };
        let name = t[t.len() - 1].to_string();
        let errors = if t.len() >= 6 {
            t[4].parse().unwrap_or(0)
        } else {
            0
        };
        if name == "total" {
            total = Some(calls);
        } else {
            rows.push(Syscall {
                name,
                calls,
                errors,
            });
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.calls));
    if total.is_none() && !rows.is_empty() {
        total = Some(rows.iter().map(|r| r.calls).sum());
    }
    (rows, total)
}

/// The instruction count (first event, `Ir`) of a callgrind output file:
/// its `summary:` line, else `totals:`.
pub fn parse_callgrind_total(text: &str) -> Option<u64> {
    let find = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    find("summary:").or_else(|| find("totals:"))
}

/// The count of `event` in `perf stat -x ,` output (`COUNT,UNIT,EVENT,...`).
pub fn parse_perf_count(text: &str, event: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(',').collect();
        (f.len() >= 3 && f[2] == event)
            .then(|| f[0].trim().parse().ok())
            .flatten()
    })
}

/// Waits for a measuring tool (perf, strace) up to `wait`, then stops it
/// with SIGINT, on which it writes its figures, and SIGKILL after a grace
/// period.
fn reap(child: &mut Child, wait: Duration) {
    if process::wait_until(Instant::now() + wait, || {
        !matches!(child.try_wait(), Ok(None))
    }) {
        return;
    }
    let pid = child.id();
    let end = process::stop_gracefully(
        Signal::SIGINT,
        Duration::from_millis(500),
        |sig| {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        },
        || !matches!(child.try_wait(), Ok(None)),
    );
    if end == StopEnd::StillRunning {
        let _ = child.wait();
    }
}

/// `tool ARGS -o OUT -p PID`: a measuring tool attached to a running
/// server, writing its figures to `out`; the caller chooses stderr.
fn attach(tool: &Path, args: &[&str], out: &Path, pid: i32) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .arg("-o")
        .arg(out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// True once process `pid` holds a perf event open (perf stat is counting).
fn has_perf_event(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[perf_event]")
    })
}

/// Figures of the native run.
#[derive(Debug, Clone, Serialize)]
struct NativeRun {
    load: LoadFigures,
    /// Per node: CPU used during the load.
    cpu: Vec<Option<CpuTime>>,
    /// Per node: the counters it printed when it stopped.
    counters: Vec<Option<ServerCounters>>,
    /// Server 1's system calls during the load, counted by `perf stat -e
    /// raw_syscalls:sys_enter` (a kernel counter: the node runs at full
    /// speed), or why not.
    perf_syscalls: Result<u64, String>,
}

#[derive(Debug, Clone, Serialize)]
struct StraceRun {
    load: LoadFigures,
    handled: u64,
    total_calls: Option<u64>,
    syscalls: Vec<Syscall>,
}

#[derive(Debug, Clone, Serialize)]
struct CallgrindRun {
    load: LoadFigures,
    handled: u64,
    instructions: Option<u64>,
    zeroed_after_start: bool,
}

/// The messages node `node` delivered (`fallback` when it did not say).
fn handled(counters: &[Option<ServerCounters>], node: usize, fallback: u64) -> u64 {
    counters
        .get(node)
        .and_then(|c| c.as_ref())
        .map(|c| c.deliveries)
        .filter(|&d| d > 0)
        .unwrap_or(fallback)
}

/// A run's figures, checked for everything the mode promises.
fn measured(
    env: &Env,
    spec: &LoadSpec,
    load: &LoadResult,
    drops: Option<u64>,
    problems: Vec<String>,
) -> anyhow::Result<LoadFigures> {
    let props = Properties::from_guarantees(orderings::lookup(&env.total)?.guarantees);
    Ok(figures(
        env.total.as_str(),
        3,
        spec,
        load,
        drops,
        Some(props),
        problems,
    ))
}

fn native(env: &Env, spec: &LoadSpec) -> anyhow::Result<NativeRun> {
    env.say("cpu: native run");
    let running = start_total_cluster(env, 3, None, Duration::from_secs(20))?;
    let pids = running.pids.clone();
    let perf_out = env.scratch().join("perf-syscalls.txt");
    let mut perf = match (which("perf"), pids[0]) {
        (Some(perf), Some(pid)) => attach(
            &perf,
            &["stat", "-x", ",", "-e", "raw_syscalls:sys_enter"],
            &perf_out,
            pid,
        )
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting perf: {e}")),
        (None, _) => Err("perf is not installed (apt-get install -y linux-perf)".to_string()),
        (_, None) => Err("server 1 is not running".to_string()),
    };
    if let Ok(p) = &perf {
        // perf prints nothing when it is attached; it has opened its
        // counter then.
        let pid = p.id();
        process::wait_until(Instant::now() + Duration::from_secs(5), || {
            has_perf_event(pid)
        });
    }
    let before: Vec<Option<CpuTime>> = pids.iter().map(|p| p.and_then(procfs::cpu_time)).collect();
    let result = drive(env, &running.binds, spec);
    let after: Vec<Option<CpuTime>> = pids.iter().map(|p| p.and_then(procfs::cpu_time)).collect();
    let perf_syscalls = match &mut perf {
        Ok(child) => {
            // SIGINT makes perf stat print its counts and exit.
            reap(child, Duration::ZERO);
            let text = std::fs::read_to_string(&perf_out).unwrap_or_default();
            parse_perf_count(&text, "raw_syscalls:sys_enter").ok_or_else(|| {
                format!("perf counted nothing: {}", text.trim().replace('\n', " | "))
            })
        }
        Err(e) => Err(e.clone()),
    };
    let (counters, problems) = running.stop(Duration::from_secs(3));
    let (load, drops) = result?;
    let load = measured(env, spec, &load, drops, problems)?;
    env.say(load.summary());
    let cpu = before
        .iter()
        .zip(&after)
        .map(|(b, a)| b.zip(*a).map(|(b, a)| a.since(&b)))
        .collect();
    Ok(NativeRun {
        load,
        cpu,
        counters,
        perf_syscalls,
    })
}

fn strace_run(env: &Env, spec: &LoadSpec, strace: &Path) -> anyhow::Result<StraceRun> {
    env.say("cpu: server 1 under strace -c");
    let running = start_total_cluster(env, 3, None, Duration::from_secs(20))?;
    let pid = running.pids[0].context("server 1 is not running")?;
    let out = env.scratch().join("strace.txt");
    let mut child = attach(strace, &["-c", "-f"], &out, pid)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", strace.display()))?;
    // Wait until it is attached (its "Process N attached" line).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().context("strace's stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut strace_said = Vec::new();
    let attached = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l.contains("attached") => break true,
            Ok(l) => strace_said.push(l),
            Err(_) => break false,
        }
    };
    if !attached {
        reap(&mut child, Duration::ZERO);
        running.stop(Duration::from_secs(3));
        anyhow::bail!(
            "strace did not attach to server 1: {}",
            strace_said.join(" | ")
        );
    }
    let result = drive(env, &running.binds, spec);
    // Server 1 exits on SIGTERM; strace then writes its table and exits.
    let (counters, problems) = running.stop(Duration::from_secs(5));
    reap(&mut child, Duration::from_secs(10));
    let (load, drops) = result?;
    let load = measured(env, spec, &load, drops, problems)?;
    env.say(load.summary());
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let (syscalls, total_calls) = parse_strace_summary(&text);
    Ok(StraceRun {
        handled: handled(&counters, 0, load.sent),
        load,
        total_calls,
        syscalls,
    })
}

fn callgrind_run(env: &Env, spec: &LoadSpec, valgrind: &Path) -> anyhow::Result<CallgrindRun> {
    env.say("cpu: server 1 under valgrind --tool=callgrind");
    let out = env.scratch().join("callgrind.out");
    let wrapper = env.scratch().join("callgrind-wrapper.sh");
    // Under valgrind server 1 starts and runs tens of times slower: a
    // long suspicion time keeps the others from excluding it for a silence
    // that is the measuring tool's (this run is about instructions, not
    // failure detection).
    let script = format!(
        "#!/bin/sh\n# launcher bench cpu: server 1 under callgrind, the others as they are.\n\
         if [ \"$2\" = \"1\" ]; then\n  exec {vg} --tool=callgrind --callgrind-out-file={out} -q {cs} \"$@\" --suspect-ms 30000\nfi\n\
         exec {cs} \"$@\" --suspect-ms 30000\n",
        vg = shell_quote(&valgrind.to_string_lossy()),
        out = shell_quote(&out.to_string_lossy()),
        cs = shell_quote(&env.chatserver.to_string_lossy()),
    );
    std::fs::write(&wrapper, script).with_context(|| format!("writing {}", wrapper.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    }
    let running = start_total_cluster(env, 3, Some(&wrapper), Duration::from_secs(120))?;
    let zeroed = match (running.pids[0], which("callgrind_control")) {
        (Some(pid), Some(ctl)) => {
            let mut c = Command::new(ctl)
                .args(["-z", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting callgrind_control")?;
            let mut status = None;
            process::wait_until(Instant::now() + Duration::from_secs(15), || {
                status = c.try_wait().ok().flatten();
                status.is_some()
            });
            if status.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
            status.is_some_and(|st| st.success())
        }
        _ => false,
    };
    let result = drive(env, &running.binds, spec);
    // Callgrind writes its output when the server exits: give it time.
    let (counters, problems) = running.stop(Duration::from_secs(60));
    let (load, drops) = result?;
    let load = measured(env, spec, &load, drops, problems)?;
    env.say(load.summary());
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    Ok(CallgrindRun {
        handled: handled(&counters, 0, load.sent),
        load,
        instructions: parse_callgrind_total(&text),
        zeroed_after_start: zeroed,
    })
}

pub fn run(env: &Env) -> anyhow::Result<PresetReport> {
    let total = env.count(20_000.0, 2_000.0);
    let messages = total.div_ceil(3);
    let spec = |secs_per_msg: f64| LoadSpec {
        clients: 3,
        rooms: 1,
        messages,
        rate: 0.0,
        window: env.window.unwrap_or(64),
        size: 100,
        timeout: Duration::from_secs_f64(
            (f64::from(messages) * 3.0 * secs_per_msg * 3.0 + 60.0).min(1800.0),
        ),
        quiet: Duration::from_secs(10),
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut ok = true;

    let n = native(env, &spec(0.0002))?;
    ok &= n.load.ok();
    let per_msg_us = |node: usize| -> Option<f64> {
        let cpu = n.cpu.get(node).copied().flatten()?;
        let h = handled(&n.counters, node, n.load.sent);
        Some((cpu.total_ns() as f64 / h.max(1) as f64 / 1000.0 * 100.0).round() / 100.0)
    };
    rows.push(Row::new(
        "CPU time per message, S01",
        per_msg_us(0),
        "us",
        None,
    ));
    let all: Vec<f64> = (0..3).filter_map(per_msg_us).collect();
    rows.push(Row::new(
        "CPU time per message, mean of 3 nodes",
        (!all.is_empty())
            .then(|| (all.iter().sum::<f64>() / all.len() as f64 * 100.0).round() / 100.0),
        "us",
        None,
    ));
    let (user, sys) = n
        .cpu
        .iter()
        .flatten()
        .fold((0u64, 0u64), |(u, s), c| (u + c.user_ns, s + c.system_ns));
    rows.push(Row::new(
        "of which in the kernel (system time)",
        (user + sys > 0).then(|| (100.0 * sys as f64 / (user + sys) as f64).round()),
        "%",
        None,
    ));
    if let Some(c) = n.counters.first().and_then(|c| c.as_ref()) {
        let h = handled(&n.counters, 0, n.load.sent).max(1) as f64;
        let received = (c.client_datagrams + c.peer_datagrams) as f64;
        rows.push(Row::new(
            "datagrams received per message, S01",
            Some((received / h * 100.0).round() / 100.0),
            "",
            None,
        ));
        rows.push(Row::new(
            "server datagrams sent per message, S01",
            Some((c.link_datagrams_sent as f64 / h * 100.0).round() / 100.0),
            "",
            None,
        ));
        // Deliveries and server datagrams that went out in segmented runs
        // (one pass through the kernel's stack per run).
        rows.push(Row::new(
            "datagrams sent segmented, share, S01",
            Some(
                (c.segmented_sends as f64 / (c.deliveries + c.link_datagrams_sent).max(1) as f64
                    * 100.0)
                    .round(),
            ),
            "%",
            None,
        ));
    } else {
        notes.push("server 1's counters (its `stopped:` line) were not found".into());
    }
    notes.push(format!("native run: {}", n.load.summary()));

    {
        let h = handled(&n.counters, 0, n.load.sent).max(1) as f64;
        let row = Row::new(
            "system calls per message, S01 (perf, full speed)",
            n.perf_syscalls
                .as_ref()
                .ok()
                .map(|&c| (c as f64 / h * 1000.0).round() / 1000.0),
            "",
            None,
        );
        rows.push(match &n.perf_syscalls {
            Ok(c) => row.note(format!(
                "{c} calls (raw_syscalls:sys_enter) during the native run"
            )),
            Err(e) => row.note(e.clone()),
        });
    }
    let mut strace_details = serde_json::Value::Null;
    match which("strace") {
        Some(strace) => match strace_run(env, &spec(0.001), &strace) {
            Ok(s) => {
                ok &= s.load.ok();
                rows.push(
                    Row::new(
                        "system calls per message, S01 (strace -c)",
                        s.total_calls
                            .map(|t| (t as f64 / s.handled.max(1) as f64 * 100.0).round() / 100.0),
                        "",
                        None,
                    )
                    .note(
                        s.syscalls
                            .iter()
                            .take(5)
                            .map(|c| {
                                format!(
                                    "{} {:.2}",
                                    c.name,
                                    c.calls as f64 / s.handled.max(1) as f64
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                );
                notes.push(
                    "strace stops the traced node at every call, so it falls behind and batches more: its calls per \
                     message are lower than at full speed (the perf row); it is here for the breakdown by call"
                        .into(),
                );
                strace_details = serde_json::to_value(&s)?;
            }
            Err(e) => {
                rows.push(
                    Row::new("system calls per message, S01 (strace -c)", None, "", None)
                        .note(format!("{e:#}")),
                );
            }
        },
        None => {
            rows.push(
                Row::new("system calls per message, S01 (strace -c)", None, "", None)
                    .note("strace is not installed (apt-get install -y strace)"),
            );
        }
    }

    let mut callgrind_details = serde_json::Value::Null;
    match which("valgrind") {
        Some(vg) => {
            match callgrind_run(env, &spec(0.005), &vg) {
                Ok(c) => {
                    ok &= c.load.ok();
                    rows.push(
                    Row::new(
                        "instructions per message, S01 (callgrind Ir)",
                        c.instructions.map(|i| (i as f64 / c.handled.max(1) as f64).round()),
                        "",
                        None,
                    )
                    .note(if c.instructions.is_none() {
                        "no callgrind output was found".to_string()
                    } else if c.zeroed_after_start {
                        format!("{} messages; counted from after start-up", c.handled)
                    } else {
                        format!("{} messages; includes start-up (callgrind_control -z did not work)", c.handled)
                    }),
                );
                    callgrind_details = serde_json::to_value(&c)?;
                }
                Err(e) => {
                    rows.push(
                        Row::new(
                            "instructions per message, S01 (callgrind Ir)",
                            None,
                            "",
                            None,
                        )
                        .note(format!("{e:#}")),
                    );
                }
            }
        }
        None => {
            rows.push(
                Row::new(
                    "instructions per message, S01 (callgrind Ir)",
                    None,
                    "",
                    None,
                )
                .note("valgrind is not installed (apt-get install -y valgrind)"),
            );
        }
    }
    if !n.load.check_ok {
        notes.push(n.load.check.clone());
    }
    notes.extend(n.load.server_problems.iter().cloned());
    Ok(PresetReport {
        bench: "cpu".into(),
        title: format!(
            "CPU cost per message: 3 servers, total, a client on each in room 1, {} messages of 100 B, window {}",
            messages * 3,
            env.window.unwrap_or(64)
        ),
        quick: env.quick,
        ok,
        rows,
        notes,
        details: serde_json::json!({
            "native": n,
            "strace": strace_details,
            "callgrind": callgrind_details,
        }),
        duration_s: 0.0,
        cpu_load: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_table_parses() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
                    ------ ----------- ----------- --------- --------- ----------------\n\
                     53.23    0.000033          16       200           sendmmsg\n\
                     40.00    0.000029          29       300        12 recvmmsg\n\
                      6.77    0.000004           4        10           epoll_wait\n\
                    ------ ----------- ----------- --------- --------- ----------------\n\
                    100.00    0.000062          20       510        12 total\n";
        let (rows, total) = parse_strace_summary(text);
        assert_eq!(total, Some(510));
        assert_eq!(rows[0].name, "recvmmsg");
        assert_eq!(rows[0].calls, 300);
        assert_eq!(rows[0].errors, 12);
        assert_eq!(rows[1].name, "sendmmsg");
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn perf_counts_parse() {
        let text = "# started on Mon\n\n12345,,raw_syscalls:sys_enter,2003,100.00,,\n";
        assert_eq!(
            parse_perf_count(text, "raw_syscalls:sys_enter"),
            Some(12345)
        );
        assert_eq!(
            parse_perf_count(
                "<not counted>,,raw_syscalls:sys_enter,0,0,,",
                "raw_syscalls:sys_enter"
            ),
            None
        );
    }

    #[test]
    fn callgrind_totals_parse() {
        assert_eq!(
            parse_callgrind_total("events: Ir\nfoo\nsummary: 123456\n"),
            Some(123456)
        );
        assert_eq!(parse_callgrind_total("events: Ir\ntotals: 99\n"), Some(99));
        assert_eq!(parse_callgrind_total("nothing"), None);
    }
}
