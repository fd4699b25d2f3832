//! Reliable server links end to end: `launcher stress` through the
//! fault-injecting proxy (10% loss, 5% duplication, up to 20 ms delay) with 3
//! and 10 servers, an overload run, and a `kill -9` of a node under
//! `launcher up` in the middle of a total-order stress run.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Scratch, bin, free_ports, legacy_config};

/// A generous bound: these runs retransmit a lot on a 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(180);

struct Run {
    ok: bool,
    report: String,
}

/// Runs `launcher stress` to completion and returns its verdict and report.
fn stress(config: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin("launcher"))
        .arg("stress")
        .arg(config)
        .args(args)
        .args(["--timeout", &RUN_LIMIT.as_secs().to_string(), "-q"])
        .stdin(Stdio::null())
        .output()
        .expect("run launcher stress");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        ok: out.status.success() && report.contains("result: PASS"),
        report,
    }
}

fn lossy(servers: usize, mode: &str, clients: &str, messages: &str) {
    let dir = Scratch::new(&format!("lossy-{mode}-{servers}"));
    let (text, _, _) = legacy_config(servers, true);
    let cfg = dir.write("servers.txt", &text);
    let run = stress(
        &cfg,
        &[
            "--ordering",
            mode,
            "--clients",
            clients,
            "--rooms",
            "2",
            "--messages",
            messages,
            "--delay",
            "0..20",
            "--loss",
            "0.1",
            "--duplicate",
            "0.05",
            "--seed",
            "11",
        ],
    );
    assert!(
        run.ok,
        "{mode} on {servers} servers through a lossy proxy:\n{}",
        run.report
    );
    assert!(
        run.report.contains("kernel UDP receive-buffer drops") && run.report.contains("OK"),
        "{}",
        run.report
    );
}

#[test]
fn fifo_survives_a_lossy_duplicating_reordering_network_3_servers() {
    lossy(3, "fifo", "6", "30");
}

#[test]
fn total_survives_a_lossy_duplicating_reordering_network_3_servers() {
    lossy(3, "total", "6", "30");
}

#[test]
fn causal_survives_a_lossy_duplicating_reordering_network_3_servers() {
    lossy(3, "causal", "6", "30");
}

#[test]
fn fifo_survives_a_lossy_duplicating_reordering_network_10_servers() {
    lossy(10, "fifo", "20", "10");
}

#[test]
fn total_survives_a_lossy_duplicating_reordering_network_10_servers() {
    lossy(10, "total", "20", "10");
}

#[test]
fn causal_survives_a_lossy_duplicating_reordering_network_10_servers() {
    lossy(10, "causal", "20", "10");
}

/// Clients send as fast as the cluster takes them (a deep window) for a
/// few seconds: no stall, nothing accepted is lost, total order holds.
#[test]
fn total_order_holds_under_overload() {
    let dir = Scratch::new("overload");
    let (text, _, _) = legacy_config(3, false);
    let cfg = dir.write("servers.txt", &text);
    // Each of the 6 members receives 6x what it sends, beyond the
    // amplification cap of an unconfirmed address (3x + 256 KiB, issue 13)
    // once it has had 256 KiB more than 3x. Until `launcher stress` confirms
    // its clients' addresses itself, the servers run without the cap here
    // and the stress run attaches to them.
    let _servers: Vec<support::Proc> = (1..=3)
        .map(|i| support::start_server(&cfg, i, &["-o", "total", "--unconfirmed-allowance", "0"]))
        .collect();
    let run = stress(
        &cfg,
        &[
            "--attach",
            "--ordering",
            "total",
            "--clients",
            "6",
            "--rooms",
            "1",
            "--messages",
            "4000",
            "--window",
            "256",
            "--size",
            "200",
        ],
    );
    assert!(run.ok, "overload:\n{}", run.report);
}

/// Lines of a child's stdout, read on a thread.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(
    rx: &mpsc::Receiver<String>,
    what: impl Fn(&str) -> bool,
    seen: &mut Vec<String>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = what(&l);
                seen.push(l);
                if hit {
                    return;
                }
            }
            Err(_) => panic!(
                "condition not met in time; output so far:\n{}",
                seen.join("\n")
            ),
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `kill -9` of one of three nodes during a total-order stress run under
/// `launcher up`: the launcher restarts it, the run completes (total order
/// waits while the node is down, then resumes), and every check passes for
/// the clients of the other nodes.
#[test]
fn total_order_recovers_when_a_node_is_killed_mid_run() {
    let dir = Scratch::new("crash");
    let ports = free_ports(3);
    let toml = format!(
        "[cluster]\nname = \"crash\"\nordering = \"total\"\nchatserver = \"{}\"\nstate_dir = \"{}\"\n\n\
         [[node]]\nbind = \"127.0.0.1:{}\"\n[[node]]\nbind = \"127.0.0.1:{}\"\n[[node]]\nbind = \"127.0.0.1:{}\"\n\n\
         [supervise]\nrestart = \"always\"\nbackoff_initial_ms = 100\n",
        bin("chatserver").display(),
        dir.path().join("state").display(),
        ports[0],
        ports[1],
        ports[2]
    );
    let cfg = dir.write("cluster.toml", &toml);
    let mut up = KillOnDrop(
        Command::new(bin("launcher"))
            .arg("up")
            .arg(&cfg)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("launcher up"),
    );
    let up_lines = lines(&mut up.0);
    let mut seen = Vec::new();
    // The nodes come up in any order.
    let mut up_count = 0;
    for _ in 0..3 {
        wait_for(
            &up_lines,
            |l| l.contains("launcher: up"),
            &mut seen,
            Duration::from_secs(90),
        );
        up_count += 1;
    }
    for node in ["s1", "s2", "s3"] {
        assert!(
            seen.iter()
                .any(|l| l.starts_with(node) && l.contains("launcher: up")),
            "{node} not up after {up_count} up lines:\n{}",
            seen.join("\n")
        );
    }

    // Clients only on s1 and s2; s3 will be killed.
    let mut stress = Command::new(bin("launcher"))
        .arg("stress")
        .arg(&cfg)
        .args([
            "--attach",
            "--ordering",
            "total",
            "--client-servers",
            "1,2",
            "--clients",
            "6",
            "--rooms",
            "2",
            "--messages",
            "300",
            "--rate",
            "600",
            "--quiet-ms",
            "10000",
            "--timeout",
            "120",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("launcher stress");
    let progress = {
        let (tx, rx) = mpsc::channel();
        let err = stress.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        rx
    };
    // Kill s3 once deliveries are flowing.
    let mut stress_seen = Vec::new();
    wait_for(
        &progress,
        |l| {
            l.split_whitespace()
                .skip_while(|w| *w != "delivered")
                .nth(1)
                .and_then(|d| d.split('/').next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 200)
        },
        &mut stress_seen,
        Duration::from_secs(120),
    );
    let state =
        std::fs::read_to_string(dir.path().join("state/launcher.json")).expect("state file");
    let state: serde_json::Value = serde_json::from_str(&state).expect("state json");
    let pid = state["nodes"][2]["pid"].as_i64().expect("s3 pid") as i32;
    // SAFETY: s3 was started by our launcher; its pid comes from the state file.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_for(
        &up_lines,
        |l| l.starts_with("s3") && l.contains("launcher: up"),
        &mut seen,
        Duration::from_secs(90),
    );
    let out = stress.wait_with_output().expect("stress finishes");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("result: PASS"),
        "stress after kill -9:\n{report}\nlauncher:\n{}",
        seen.join("\n")
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("s3") && l.contains("signal 9")),
        "{}",
        seen.join("\n")
    );
}

/// Every mode on ten servers behind the delay proxy (up to 20 ms, no loss):
/// each mode's guarantees hold, and total keeps per-sender FIFO.
#[test]
fn every_mode_on_ten_servers_behind_a_delay_proxy() {
    for mode in ["unordered", "fifo", "total", "causal"] {
        let dir = Scratch::new(&format!("ten-{mode}"));
        let (text, _, _) = legacy_config(10, true);
        let cfg = dir.write("servers.txt", &text);
        let run = stress(
            &cfg,
            &[
                "--ordering",
                mode,
                "--clients",
                "20",
                "--rooms",
                "3",
                "--messages",
                "10",
                "--delay",
                "0..20",
                "--seed",
                "5",
            ],
        );
        assert!(
            run.ok,
            "{mode} on 10 servers behind a delay proxy:\n{}",
            run.report
        );
        if mode == "total" {
            assert!(
                run.report.contains("exactly-once+fifo+causal+total"),
                "{}",
                run.report
            );
        }
    }
}
