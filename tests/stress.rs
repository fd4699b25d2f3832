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

/// Runs `launcher stress` on three fresh servers with a small rate-limited
/// load (6 clients × 50 messages at 300 msg/s: about a second of sending)
/// plus `extra`, and returns the outcome and its JSON report.
fn stress_with_fault(tag: &str, mode: &str, extra: &[&str]) -> (Outcome, serde_json::Value) {
    let (dir, cfg) = three_servers(tag);
    let json = dir.path().join("report.json");
    let mut args = vec![
        "--ordering",
        mode,
        "--clients",
        "6",
        "--rooms",
        "2",
        "--messages",
        "50",
        "--rate",
        "300",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = stress(&cfg, &args);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}", out.text()));
    let report = serde_json::from_str(&text).expect("the JSON report parses");
    (out, report)
}

fn ms(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number of ms, got {v}"))
}

/// Issue 15: `kill -9` of server 3 in the middle of the sending, no
/// restart, clients on servers 1 and 2: they go on and get everything, and
/// the report carries the fault and the pause figures.
fn survives_a_killed_server(mode: &str) {
    let (out, r) = stress_with_fault(
        &format!("stress-kill-{mode}"),
        mode,
        &[
            "--client-servers",
            "1,2",
            "--kill-server",
            "3",
            "--at",
            "500ms",
        ],
    );
    let text = out.text();
    assert!(out.status.success(), "{mode}:\n{text}");
    assert!(text.contains("result: PASS"), "{text}");
    assert!(
        text.contains("kill server 3 at 500 ms: signalled at "),
        "{text}"
    );
    assert!(text.contains("longest pause in deliveries"), "{text}");
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["servers"], 3, "{r:#}");
    assert_eq!(r["client_servers"], serde_json::json!([1, 2]), "{r:#}");
    // The kill came while the clients were still sending, and they got
    // everything all the same.
    assert!(ms(&r["send_duration_s"]) > 0.5, "{r:#}");
    assert_eq!(r["sent"], 300, "{r:#}");
    assert_eq!(r["distinct_deliveries"], r["expected_deliveries"], "{r:#}");
    assert_eq!(r["stop_reason"], "complete", "{r:#}");
    let faults = r["server_faults"].as_array().expect("server_faults");
    assert_eq!(faults.len(), 1, "{r:#}");
    let f = &faults[0];
    assert_eq!(f["kind"], "kill", "{r:#}");
    assert_eq!(f["server"], 3, "{r:#}");
    assert_eq!(f["at_ms"], 500, "{r:#}");
    assert!(f["for_ms"].is_null(), "{r:#}");
    assert!(ms(&f["done_at_ms"]) >= 500.0, "{r:#}");
    // Deliveries went on after the kill.
    assert!(ms(&f["first_delivery_after_ms"]) >= 0.0, "{r:#}");
    assert!(ms(&r["longest_pause_ms"]) >= 0.0, "{r:#}");
    assert_eq!(r["longest_pause_open"], false, "{r:#}");
    // Server 3 is really gone (its memory could not be read at the end),
    // and died of the SIGKILL (another death would be a server problem).
    let rss = r["server_peak_rss_kib"].as_array().expect("peak RSS");
    assert!(rss[2].is_null(), "{r:#}");
    assert!(
        rss[0].as_u64().is_some() && rss[1].as_u64().is_some(),
        "{r:#}"
    );
    assert_eq!(r["server_problems"], serde_json::json!([]), "{r:#}");
}

#[test]
fn unordered_survives_a_killed_server() {
    survives_a_killed_server("unordered");
}

#[test]
fn fifo_survives_a_killed_server() {
    survives_a_killed_server("fifo");
}

/// SIGSTOP of server 2 for half a second in `total`, shorter than the
/// suspicion time (700 ms): server 2 stays in the view, so total order
/// waits for it everywhere while it is stopped and resumes after SIGCONT;
/// the run passes, every message reaches every member (server 2's clients
/// too), and the longest pause shows the stop. (Longer stops exclude the
/// server: tests/membership.rs.)
#[test]
fn total_pauses_while_a_server_is_stopped() {
    let (out, r) = stress_with_fault(
        "stress-stop-total",
        "total",
        &["--stop-server", "2", "--at", "500ms", "--for", "500ms"],
    );
    let text = out.text();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("result: PASS"), "{text}");
    assert_eq!(r["ok"], true, "{r:#}");
    // Clients on every server by default: a stopped server comes back.
    assert_eq!(r["client_servers"], serde_json::json!([1, 2, 3]), "{r:#}");
    assert_eq!(r["sent"], 300, "{r:#}");
    assert_eq!(r["distinct_deliveries"], r["expected_deliveries"], "{r:#}");
    let f = &r["server_faults"][0];
    assert_eq!(f["kind"], "stop", "{r:#}");
    assert_eq!(f["server"], 2, "{r:#}");
    assert_eq!(f["for_ms"], 500, "{r:#}");
    let stopped = ms(&f["done_at_ms"]);
    let resumed = ms(&f["resumed_at_ms"]);
    assert!(stopped >= 500.0 && resumed >= stopped + 500.0, "{r:#}");
    assert_eq!(f["continued_at_end"], false, "{r:#}");
    // Nothing was delivered while server 2 was stopped.
    let pause = ms(&r["longest_pause_ms"]);
    // (Messages already ordered may still be delivered just after the stop:
    // the pause, not the first delivery, shows it.)
    assert!(pause >= 400.0, "longest pause {pause} ms\n{text}");
    let start = ms(&r["longest_pause_start_ms"]);
    assert!(
        (stopped - 100.0..resumed).contains(&start),
        "the pause began at {start} ms, not at the stop\n{text}"
    );
    assert_eq!(r["longest_pause_open"], false, "{r:#}");
}

/// A server stopped without `--for` stays stopped for the rest of the load,
/// gets no clients by default (said in the output), and is continued when
/// the load ends so that nothing is left stopped.
#[test]
fn a_server_stopped_for_good_is_continued_at_the_end() {
    let (out, r) = stress_with_fault(
        "stress-stop-forever",
        "unordered",
        &["--stop-server", "3", "--at", "300ms"],
    );
    let text = out.text();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("no clients on server 3"), "{text}");
    assert_eq!(r["client_servers"], serde_json::json!([1, 2]), "{r:#}");
    let f = &r["server_faults"][0];
    assert!(f["resumed_at_ms"].is_null(), "{r:#}");
    assert_eq!(f["continued_at_end"], true, "{r:#}");
    assert_eq!(r["distinct_deliveries"], r["expected_deliveries"], "{r:#}");
    assert_eq!(r["server_problems"], serde_json::json!([]), "{r:#}");
}

#[test]
fn bad_server_fault_options_are_refused() {
    let (_dir, cfg) = three_servers("stress-fault-options");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--kill-server", "3", "--at", "x"],
            "'x' is not a duration",
        ),
        (&["--kill-server", "0", "--at", "1s"], "numbered from 1"),
        (
            &["--stop-server", "4", "--at", "1s"],
            "no server 4 (the cluster has 3)",
        ),
        (&["--kill-server", "3"], "--kill-server 3 needs --at"),
        (
            &["--kill-server", "3", "--at", "1s", "--for", "1s"],
            "--for 1s must follow --stop-server",
        ),
        (
            &["--attach", "--kill-server", "3", "--at", "1s"],
            "--attach",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(bin("launcher"))
            .arg("stress")
            .arg(&cfg)
            .args(["--ordering", "fifo"])
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(err.contains(want), "{args:?}: {err}");
        // Refused before anything ran.
        assert!(
            out.stdout.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The load's clients read runs of deliveries whole (`UDP_GRO`): at full
/// speed, some reads hold several deliveries, and every delivery is still
/// checked on its own (exactly once, in order). With `--no-gro` each read
/// is one datagram, as for a client of the spec, and the run passes the
/// same checks.
#[test]
fn clients_read_runs_of_deliveries_whole_unless_told_not_to() {
    let (dir, cfg) = three_servers("stress-gro");
    for gro in [true, false] {
        let json = dir.path().join(format!("report-{gro}.json"));
        let mut args = vec![
            "--ordering",
            "total",
            "--clients",
            "3",
            "--rooms",
            "1",
            "--messages",
            "2000",
            "--size",
            "100",
            "--json",
            json.to_str().unwrap(),
        ];
        if !gro {
            args.push("--no-gro");
        }
        let out = stress(&cfg, &args);
        let text = out.text();
        assert!(out.status.success(), "gro {gro}: {text}");
        assert!(text.contains("result: PASS"), "gro {gro}: {text}");
        assert!(text.contains("clients' socket reads: "), "{text}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["distinct_deliveries"], 18_000, "{report:#}");
        let reads = report["client_reads"].as_u64().unwrap();
        let runs = report["coalesced_reads"].as_u64().unwrap();
        // Every delivery is also timed to its arrival by the kernel's stamp,
        // which comes before the read: never later at any percentile.
        let read = &report["latency"];
        let arrival = &report["arrival_latency"];
        assert_eq!(arrival["count"], read["count"], "{report:#}");
        assert_eq!(arrival["count"], 18_000, "{report:#}");
        for q in ["p50_us", "p90_us", "p99_us", "max_us"] {
            let (a, r) = (arrival[q].as_u64().unwrap(), read[q].as_u64().unwrap());
            assert!(a >= 1 && a <= r, "{q}: arrival {a} µs, read {r} µs");
        }
        assert!(text.contains("latency send->arrival"), "{text}");
        if gro {
            assert!(runs > 0, "no read held a run: {report:#}");
            assert!(reads < 18_000, "{reads} reads for 18,000 deliveries");
        } else {
            assert_eq!(runs, 0, "{report:#}");
            assert!(reads >= 18_000, "{reads} reads for 18,000 deliveries");
        }
    }
}
