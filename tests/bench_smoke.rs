//! `launcher bench NAME --quick` for every preset: the commands of
//! BENCHMARKS.md start their clusters, drive their loads, stop everything
//! and report every figure (as a table and as JSON). The figures of a quick
//! run mean nothing, so nothing here looks at them: no timing assertions.
//! The presets run one at a time (they each start up to 10 servers).

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::{Proc, Scratch, bin};

/// One preset at a time: each starts its own cluster on a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Upper bound of one quick preset (cpu under valgrind with a debug build is
/// the slowest).
const LIMIT: Duration = Duration::from_secs(600);

struct Run {
    stdout: String,
    report: serde_json::Value,
}

fn bench(name: &str) -> Run {
    bench_with(name, &[])
}

/// `launcher bench NAME --quick` with `extra` arguments.
fn bench_with(name: &str, extra: &[&str]) -> Run {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new(&format!("bench-{name}"));
    let json = dir.path().join("report.json");
    let mut cmd = Command::new(bin("launcher"));
    cmd.args(["bench", name, "--quick", "-q", "--json"])
        .arg(&json)
        .args(extra);
    let mut p = Proc::spawn(&format!("launcher bench {name}"), cmd);
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(st) = p.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "launcher bench {name} --quick took over {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The readers see end-of-file once the process is gone.
    let lines = |rx: &Option<std::sync::mpsc::Receiver<String>>| {
        let mut v = Vec::new();
        if let Some(rx) = rx {
            while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
                v.push(l);
            }
        }
        v.join("\n")
    };
    let stdout = lines(&p.stdout_lines);
    let stderr = lines(&p.stderr_lines);
    assert!(
        status.success(),
        "launcher bench {name} --quick failed ({status}):\n{stdout}\n--- stderr ---\n{stderr}"
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(report["machine"]["nproc"].as_u64().unwrap() >= 1);
    // How idle CPUs wait decides what a wake-up costs: the report says it
    // wherever the kernel does.
    if let Ok(driver) = std::fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver") {
        assert_eq!(
            report["machine"]["idle"]["driver"].as_str(),
            Some(driver.trim()),
            "{:#}",
            report["machine"]
        );
        assert!(
            stderr.contains(&format!("idle CPUs: {}/", driver.trim()))
                || stdout.contains(&format!("idle CPUs: {}/", driver.trim())),
            "the machine line names the idle driver:\n{stdout}\n{stderr}"
        );
    }
    Run { stdout, report }
}

/// The rows of bench `name` in the report, after checking the report's
/// shape.
fn rows<'a>(run: &'a Run, name: &str) -> &'a Vec<serde_json::Value> {
    let benches = run.report["benches"].as_array().expect("benches");
    assert_eq!(benches.len(), 1, "{:#}", run.report);
    let b = &benches[0];
    assert_eq!(b["bench"], name);
    assert_eq!(b["quick"], true);
    assert_eq!(b["ok"], true, "{b:#}");
    assert!(run.stdout.contains("result: OK"), "{}", run.stdout);
    assert!(
        run.stdout.contains("[--quick: figures not meaningful]"),
        "{}",
        run.stdout
    );
    // How busy the machine was, and what the hypervisor took, beside
    // every benchmark's figures.
    let load = &b["cpu_load"];
    let (busy, steal) = (load["busy_pct"].as_f64(), load["steal_pct"].as_f64());
    assert!(
        busy.is_some_and(|b| (0.0..=100.0).contains(&b))
            && steal.is_some_and(|s| (0.0..=100.0).contains(&s)),
        "{b:#}"
    );
    assert!(
        run.stdout
            .contains("note: machine during this benchmark: CPUs busy "),
        "{}",
        run.stdout
    );
    let rows = b["rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    rows
}

/// The row whose figure starts with `prefix`.
fn row<'a>(rows: &'a [serde_json::Value], prefix: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["figure"].as_str().is_some_and(|f| f.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no row {prefix:?} in {rows:#?}"))
}

/// A measured figure with a target: a number and a verdict.
fn measured_with_target(r: &serde_json::Value) {
    assert!(r["value"].is_number(), "{r:#}");
    assert!(r["target"].is_object(), "{r:#}");
    assert!(r["met"].is_boolean(), "{r:#}");
}

#[test]
fn w1_throughput_runs() {
    let run = bench("w1");
    let rows = rows(&run, "w1");
    measured_with_target(row(rows, "total, 100 B: messages/s"));
    for p in ["total, 1000 B", "fifo, 100 B", "unordered, 100 B"] {
        assert!(row(rows, p)["value"].as_f64().unwrap() > 0.0);
    }
    assert!(run.stdout.contains(">= 50,000 msg/s"), "{}", run.stdout);
    let sweep = run.report["benches"][0]["details"]["sweep"]
        .as_array()
        .unwrap();
    assert!(!sweep.is_empty());
    for f in sweep {
        assert_eq!(f["complete"], true, "{f:#}");
        assert_eq!(f["check_ok"], true, "{f:#}");
    }
}

#[test]
fn w2_latency_runs_under_its_alias() {
    let run = bench("latency");
    let rows = rows(&run, "w2");
    measured_with_target(row(rows, "p50"));
    measured_with_target(row(rows, "p99"));
    for p in ["p90", "p999", "max"] {
        assert!(row(rows, p)["value"].is_number());
    }
    // Every message of the three clients reached all three members once.
    let d = row(rows, "deliveries");
    assert_eq!(d["met"], true, "{d:#}");
    let details = &run.report["benches"][0]["details"]["run"];
    assert_eq!(details["deliveries"], details["expected_deliveries"]);
    assert_eq!(details["duplicates"], 0);
    assert_eq!(details["check_ok"], true);
    assert_eq!(details["latency"]["count"], details["expected_deliveries"]);
    // The relay floor ran the same clients: every line to every member,
    // once (it orders nothing, so that is all it is checked for).
    let floor = &run.report["benches"][0]["details"]["relay_floor"];
    assert_eq!(floor["expected_deliveries"], details["expected_deliveries"]);
    assert_eq!(
        floor["deliveries"], floor["expected_deliveries"],
        "{floor:#}"
    );
    assert_eq!(floor["duplicates"], 0);
    assert_eq!(floor["check_ok"], true, "{floor:#}");
    assert!(row(rows, "relay floor")["value"].is_number());
    servers_cpu_under(
        rows,
        &format!(
            "--busy-poll-us {} (default)",
            node::cli::DEFAULT_BUSY_POLL_US
        ),
    );
}

/// W2's row of what the servers spent: a figure, with the polling setting
/// it was spent under.
fn servers_cpu_under(rows: &[serde_json::Value], setting: &str) {
    let cpu = row(rows, "servers' CPU per message");
    assert!(cpu["value"].as_f64().is_some_and(|v| v > 0.0), "{cpu:#}");
    assert!(
        cpu["note"].as_str().is_some_and(|n| n.ends_with(setting)),
        "{cpu:#}"
    );
}

/// `--busy-poll-us` reaches the servers of a run, and the report says
/// which setting its figures were taken under.
#[test]
fn w2_takes_the_servers_polling_time() {
    let run = bench_with("w2", &["--busy-poll-us", "400"]);
    let rows = rows(&run, "w2");
    servers_cpu_under(rows, "--busy-poll-us 400");
    let d = row(rows, "deliveries");
    assert_eq!(d["met"], true, "{d:#}");
}

#[test]
fn w3_scale_runs() {
    let run = bench("w3");
    let rows = rows(&run, "w3");
    measured_with_target(row(rows, "sustained messages/s"));
    measured_with_target(row(rows, "p99"));
    let d = &run.report["benches"][0]["details"];
    assert_eq!(d["servers"], 10);
    assert_eq!(d["clients"], 250);
    assert_eq!(d["rooms"], 10);
    assert_eq!(d["complete"], true);
}

#[test]
fn w3_one_room_runs() {
    let run = bench("w3-one-room");
    let rows = rows(&run, "w3-one-room");
    measured_with_target(row(rows, "sustained messages/s"));
    let d = &run.report["benches"][0]["details"];
    assert_eq!(d["clients"], 250);
    assert_eq!(d["rooms"], 1);
    assert_eq!(d["complete"], true);
}

#[test]
fn w4_ten_servers_runs() {
    let run = bench("w4");
    let rows = rows(&run, "w4");
    measured_with_target(row(rows, "messages/s"));
    let best = &run.report["benches"][0]["details"]["sweep"][0];
    assert_eq!(best["servers"], 10);
    assert_eq!(best["complete"], true);
}

#[test]
fn memory_runs() {
    let run = bench("memory");
    let rows = rows(&run, "memory");
    measured_with_target(row(rows, "peak RSS"));
    measured_with_target(row(rows, "RSS growth"));
    let d = &run.report["benches"][0]["details"];
    let end = d["end"].as_array().unwrap();
    assert_eq!(end.len(), 10, "one figure per node");
    for m in end {
        assert!(m["hwm_kib"].as_u64().unwrap() > 0, "{m:#}");
    }
    assert!(d["samples"].as_array().unwrap().len() >= 2);
}

#[test]
fn cpu_runs_and_says_what_it_could_not_measure() {
    let run = bench("cpu");
    let rows = rows(&run, "cpu");
    assert!(row(rows, "CPU time per message, S01")["value"].is_number());
    // strace and valgrind may be missing (or ptrace forbidden): then the row
    // has no value and says why.
    for p in ["system calls per message", "instructions per message"] {
        let r = row(rows, p);
        assert!(
            r["value"].is_number() || !r["note"].as_str().unwrap_or("").is_empty(),
            "{r:#}"
        );
    }
}

/// `--ordering isis` runs the total-order figures with agreement through the
/// origin, to compare with `total` on the same preset.
#[test]
fn the_total_order_runs_take_another_mode() {
    let run = bench_with("faults", &["--ordering", "isis"]);
    assert!(
        run.stdout.contains("Latency under faults: isis,"),
        "{}",
        run.stdout
    );
    let out = Command::new(bin("launcher"))
        .args(["bench", "faults", "--quick", "--ordering", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("isis"), "{err}");
}

#[test]
fn unknown_names_are_refused() {
    let out = Command::new(bin("launcher"))
        .args(["bench", "w9", "--quick"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("w3-one-room") && err.contains("memory"),
        "{err}"
    );
}

/// `--repeat N` runs a benchmark N times and sums each figure up: its
/// range over the runs and in how many it met its target.
#[test]
fn repeated_runs_are_summed_up_figure_by_figure() {
    let run = bench_with("w2", &["--repeat", "2"]);
    let benches = run.report["benches"].as_array().expect("benches");
    assert_eq!(benches.len(), 2, "both runs reported");
    let summaries = run.report["summaries"].as_array().expect("summaries");
    assert_eq!(summaries.len(), 1);
    let s = &summaries[0];
    assert_eq!(s["bench"], "w2");
    assert_eq!(s["runs"], 2);
    assert_eq!(s["steal_pct"].as_array().unwrap().len(), 2);
    let p50 = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["figure"].as_str().is_some_and(|f| f.starts_with("p50")))
        .expect("the p50 row");
    assert_eq!(p50["measured"], 2);
    let (min, median, max) = (
        p50["min"].as_f64().unwrap(),
        p50["median"].as_f64().unwrap(),
        p50["max"].as_f64().unwrap(),
    );
    assert!(min <= median && median <= max, "{p50:#}");
    assert!(p50["met"].as_u64().unwrap() <= 2);
    assert!(run.stdout.contains(" over 2 runs"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("note: CPU time stolen by the hypervisor, run by run: "),
        "{}",
        run.stdout
    );
}
