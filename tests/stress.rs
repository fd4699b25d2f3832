//! `launcher stress` end to end: it starts real `chatserver`s (and its
//! in-process proxy), drives clients, and checks the delivery logs. Kept small
//! so that it runs quickly on two cores.

mod support;

use std::path::Path;
use std::process::{Command, ExitStatus};
use support::{Proc, Scratch, bin, legacy_config, start_server};

struct Outcome {
    status: ExitStatus,
    stdout: Vec<String>,
}

impl Outcome {
    fn text(&self) -> String {
        self.stdout.join("\n")
    }
}

/// Runs `launcher stress CONFIG ARGS` to completion (bounded by `WAIT`).
fn stress(config: &Path, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(bin("launcher"));
    cmd.arg("stress")
        .arg(config)
        .args(args)
        .args(["--timeout", "60"]);
    let mut p = Proc::spawn("launcher stress", cmd);
    // The last line of the report; the tool exits right after printing it.
    let stdout = p.wait_stdout("result:");
    let status = p.wait_exit();
    Outcome { status, stdout }
}

fn three_servers(tag: &str) -> (Scratch, std::path::PathBuf) {
    let dir = Scratch::new(tag);
    let (text, _, _) = legacy_config(3, false);
    let cfg = dir.write("servers.txt", &text);
    (dir, cfg)
}

fn passes_with_delays(mode: &str) {
    let (dir, cfg) = three_servers(&format!("stress-{mode}"));
    let json = dir.path().join("report.json");
    let out = stress(
        &cfg,
        &[
            "--ordering",
            mode,
            "--clients",
            "6",
            "--rooms",
            "2",
            "--messages",
            "20",
            "--delay",
            "0..5",
            "--seed",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{mode} failed:\n{}", out.text());
    assert!(out.text().contains("result: PASS"), "{}", out.text());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["mode"], mode);
    assert_eq!(report["sent"], 120);
    // 2 rooms of 3 members: every message reaches 3 members.
    assert_eq!(report["expected_deliveries"], 360);
    assert_eq!(report["distinct_deliveries"], 360);
    assert_eq!(report["stop_reason"], "complete");
    assert_eq!(report["latency"]["count"], 360);
    assert!(
        report["proxy"]["forwarded"].as_u64().unwrap() > 0,
        "the proxy carried the traffic"
    );
}

#[test]
fn unordered_passes_with_delays() {
    passes_with_delays("unordered");
}

#[test]
fn fifo_passes_with_delays() {
    passes_with_delays("fifo");
}

#[test]
fn total_passes_with_delays() {
    passes_with_delays("total");
}

#[test]
fn causal_passes_with_delays() {
    passes_with_delays("causal");
}

#[test]
fn unordered_fails_a_total_order_check_under_delay() {
    let (dir, cfg) = three_servers("stress-unordered-total");
    let json = dir.path().join("report.json");
    // Every server echoes its own clients' messages at once and gets the
    // others' 2..20 ms later, so members on different servers see different
    // orders.
    let out = stress(
        &cfg,
        &[
            "--ordering",
            "unordered",
            "--check",
            "total",
            "--clients",
            "6",
            "--rooms",
            "1",
            "--messages",
            "30",
            "--delay",
            "2..20",
            "--seed",
            "7",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "must fail:\n{}", out.text());
    assert!(out.text().contains("result: FAIL"), "{}", out.text());
    assert!(
        out.text().contains("total:"),
        "violations must be reported:\n{}",
        out.text()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["check"]["counts"]["total"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert!(
        report["check"]["examples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["violation"]["kind"] == "total"),
        "{report:#}"
    );
    // Nothing was lost: only the order differs.
    assert!(
        report["check"]["counts"].get("missing").is_none(),
        "{report:#}"
    );
    assert_eq!(report["distinct_deliveries"], report["expected_deliveries"]);
}

#[test]
fn total_survives_loss_and_duplicates_between_servers() {
    let (_dir, cfg) = three_servers("stress-total-lossy");
    let out = stress(
        &cfg,
        &[
            "--ordering",
            "total",
            "--clients",
            "6",
            "--rooms",
            "2",
            "--messages",
            "20",
            "--delay",
            "0..3",
            "--loss",
            "0.1",
            "--duplicate",
            "0.1",
            "--seed",
            "5",
        ],
    );
    assert!(out.status.success(), "{}", out.text());
    let text = out.text();
    let proxy = text
        .lines()
        .find(|l| l.contains("proxy: received="))
        .expect("proxy line");
    assert!(
        !proxy.contains("dropped=0 "),
        "the proxy must have dropped something: {proxy}"
    );
}

#[test]
fn attaches_to_a_running_cluster() {
    let dir = Scratch::new("stress-attach");
    let (text, _, _) = legacy_config(2, false);
    let cfg = dir.write("servers.txt", &text);
    let _s1 = start_server(&cfg, 1, &["-o", "fifo"]);
    let _s2 = start_server(&cfg, 2, &["-o", "fifo"]);
    let out = stress(
        &cfg,
        &[
            "--attach",
            "--ordering",
            "fifo",
            "--clients",
            "4",
            "--rooms",
            "2",
            "--messages",
            "10",
            "--rate",
            "2000",
        ],
    );
    assert!(out.status.success(), "{}", out.text());
    assert!(
        out.text().contains("sent 40 messages, 80/80 deliveries"),
        "{}",
        out.text()
    );
}

#[test]
fn attach_refuses_fault_options() {
    let dir = Scratch::new("stress-attach-faults");
    let (text, _, _) = legacy_config(2, false);
    let cfg = dir.write("servers.txt", &text);
    let out = Command::new(bin("launcher"))
        .arg("stress")
        .arg(&cfg)
        .args(["--attach", "--ordering", "fifo", "--delay", "0..5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--attach"));
}

/// Issue 13, case 1: one client floods room 1 as fast as it can while six
/// normal clients chat at 60 msg/s in all, in room 1 and room 2, on three
/// servers in `total`. Every normal message is delivered once, in one order
/// (the checker), whatever of the flood got through reached every member in
/// that order too (the servers converge), the normal clients' p99 latency
/// during the flood stays under a second, and no server's peak RSS reaches
/// 64 MiB.
#[test]
fn total_survives_a_flooding_client() {
    let (dir, cfg) = three_servers("stress-flood");
    let json = dir.path().join("report.json");
    let out = stress(
        &cfg,
        &[
            "--ordering",
            "total",
            "--clients",
            "6",
            "--rooms",
            "2",
            "--messages",
            "30",
            "--rate",
            "60",
            "--flood-clients",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let text = out.text();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("result: PASS"), "{text}");
    assert!(text.contains("flood: 1 client in room 1 sent "), "{text}");
    assert!(
        text.contains("normal clients' latency during the flood: p50 "),
        "{text}"
    );
    assert!(text.contains("servers' peak RSS (VmHWM): s1 "), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["sent"], 180);
    // Every normal message reached every normal member (the flooding
    // client, a member of room 1, also gets room 1's normal messages).
    assert!(
        report["distinct_deliveries"].as_u64() >= report["expected_deliveries"].as_u64(),
        "{report:#}"
    );
    assert!(report["flood"]["sent"].as_u64().unwrap() > 0, "{report:#}");
    let p99_us = report["latency"]["p99_us"].as_u64().unwrap();
    assert!(
        p99_us < 1_000_000,
        "normal clients' p99 {p99_us} us during the flood\n{text}"
    );
    let rss = report["server_peak_rss_kib"].as_array().unwrap();
    assert_eq!(rss.len(), 3);
    for (i, r) in rss.iter().enumerate() {
        let kib = r
            .as_u64()
            .expect("peak RSS known for servers the run started");
        assert!(
            kib < 64 * 1024,
            "server {} peak RSS {kib} KiB\n{text}",
            i + 1
        );
    }
}

/// The flood's report lines and counters, whatever today's server makes of
/// the flood (a short, light run that passes on it or not).
#[test]
fn flood_clients_are_reported_separately() {
    let (dir, cfg) = three_servers("stress-flood-report");
    let json = dir.path().join("report.json");
    let out = stress(
        &cfg,
        &[
            "--ordering",
            "fifo",
            "--clients",
            "3",
            "--rooms",
            "1",
            "--messages",
            "5",
            "--flood-clients",
            "1",
            "--quiet-ms",
            "1000",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let text = out.text();
    assert!(text.contains("flood: 1 client in room 1 sent "), "{text}");
    assert!(
        text.contains("normal clients' latency during the flood: p50 "),
        "{text}"
    );
    assert!(text.contains("servers' peak RSS (VmHWM): s1 "), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let flood = &report["flood"];
    assert!(flood["sent"].as_u64().unwrap() > 0, "{report:#}");
    assert!(flood["delivered"].as_u64().unwrap() <= flood["sent"].as_u64().unwrap());
    for kib in report["server_peak_rss_kib"].as_array().unwrap() {
        assert!(kib.as_u64().unwrap() > 0, "{report:#}");
    }
    // Flood lines are neither garbled deliveries nor odd replies.
    assert_eq!(report["garbled"], 0, "{report:#}");
}

/// Address confirmation (issue 13) in the stress clients, against a fake
/// server: it answers /join and /nick, asks each client once to confirm,
/// then echoes every message back as a delivery. The run must pass with
/// every client having confirmed, and the requests and answers must not
/// count as deliveries or odd replies.
#[test]
fn stress_clients_confirm_their_address() {
    use std::collections::HashMap;
    use std::net::{SocketAddr, UdpSocket};
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let dir = Scratch::new("stress-confirm");
    let cfg = dir.write("servers.txt", &format!("{addr}\n"));
    server
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let fake = std::thread::spawn(move || {
        let mut nick: HashMap<SocketAddr, String> = HashMap::new();
        let mut asked: HashMap<SocketAddr, String> = HashMap::new();
        let mut confirmed = 0;
        let mut buf = [0u8; 2000];
        let deadline = std::time::Instant::now() + support::WAIT * 3;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed)
            && std::time::Instant::now() < deadline
        {
            let Ok((n, from)) = server.recv_from(&mut buf) else {
                continue;
            };
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(room) = line.strip_prefix("/join ") {
                let token = format!("{:016x}", 0xabc0_0000_0000_0000u64 + asked.len() as u64);
                server
                    .send_to(
                        format!("+OK You are now in chat room #{room}").as_bytes(),
                        from,
                    )
                    .unwrap();
                server
                    .send_to(
                        format!("+OK Confirm your address to keep receiving messages: send /confirm {token}").as_bytes(),
                        from,
                    )
                    .unwrap();
                asked.insert(from, token);
            } else if let Some(name) = line.strip_prefix("/nick ") {
                nick.insert(from, name.to_string());
                server
                    .send_to(format!("+OK Nickname set to '{name}'").as_bytes(), from)
                    .unwrap();
            } else if let Some(token) = line.strip_prefix("/confirm ") {
                assert_eq!(asked.get(&from), Some(&token.to_string()), "wrong token");
                confirmed += 1;
                server.send_to(b"+OK Address confirmed", from).unwrap();
            } else if !line.starts_with('/') {
                let who = nick.get(&from).cloned().unwrap_or_default();
                server
                    .send_to(format!("<{who}> {line}").as_bytes(), from)
                    .unwrap();
            }
        }
        confirmed
    });
    let json = dir.path().join("report.json");
    let out = stress(
        &cfg,
        &[
            "--attach",
            "--ordering",
            "fifo",
            "--clients",
            "3",
            "--rooms",
            "3",
            "--messages",
            "10",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let confirmed = fake.join().expect("the fake server's checks");
    assert!(out.status.success(), "{}", out.text());
    assert_eq!(confirmed, 3, "every client confirmed once");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["deliveries"], 30, "{report:#}");
    assert_eq!(report["other_replies"], 0, "{report:#}");
    assert_eq!(report["garbled"], 0, "{report:#}");
    assert_eq!(report["servers"], 1);
}
