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
