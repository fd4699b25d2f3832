//! Command-line tools that fit pipes and running clusters (issue 18):
//! closed stdout, `launcher stress` beside a running cluster, `launcher
//! check` on a running cluster is in launcher_up.rs; `chatserver -v`
//! without heartbeat chatter and with client text as typed; `--help`
//! without benchmark figures; case-insensitive mode names; error context.
//! Real processes on 127.0.0.1, deadlines, no sleeps.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::{Command, Stdio};
use std::time::Instant;
use support::{Client, Proc, Scratch, WAIT, bin, legacy_config, start_server};

/// Runs a command whose stdout is closed before it writes (`| head -0`);
/// returns (status, stderr).
fn with_closed_stdout(mut cmd: Command) -> (std::process::ExitStatus, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    drop(child.stdout.take());
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { err }, &mut s);
        s
    });
    let deadline = Instant::now() + WAIT * 3;
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not exit in time");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    (st, reader.join().unwrap())
}

#[test]
fn launcher_check_and_stress_survive_a_closed_stdout() {
    let dir = Scratch::new("tools-pipe");
    let (text, _, _) = legacy_config(2, false);
    let cfg = dir.write("servers.txt", &text);
    let mut check = Command::new(bin("launcher"));
    check.arg("check").arg(&cfg);
    let (st, err) = with_closed_stdout(check);
    assert!(st.success(), "{st}: {err}");
    assert!(!err.contains("panicked"), "{err}");

    let json = dir.path().join("r.json");
    let mut stress = Command::new(bin("launcher"));
    stress
        .arg("stress")
        .arg(&cfg)
        .args(["-o", "fifo", "--clients", "2", "--messages", "5", "-q"])
        .arg("--json")
        .arg(&json);
    let (st, err) = with_closed_stdout(stress);
    assert!(st.success(), "{st}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
}

/// Issue 18 point 2: stress without --attach beside a cluster running on
/// the file's ports runs on ports of its own and never talks to it.
#[test]
fn stress_beside_a_running_cluster_uses_its_own_ports() {
    let dir = Scratch::new("tools-beside");
    let (text, binds, _) = legacy_config(2, false);
    let cfg = dir.write("servers.txt", &text);
    let mut live: Vec<Proc> = (1..=2)
        .map(|i| start_server(&cfg, i, &["-o", "fifo"]))
        .collect();
    let out = Command::new(bin("launcher"))
        .arg("stress")
        .arg(&cfg)
        .args([
            "-o",
            "fifo",
            "--clients",
            "4",
            "--messages",
            "10",
            "--timeout",
            "60",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("result: PASS"), "{stdout}");
    assert!(stderr.contains("on free ports of their own"), "{stderr}");
    // The live servers still serve, and saw no client at all.
    let c = Client::new(binds[0]);
    c.expect_reply("/join 1", "+OK You are now in chat room #1");
    for s in &mut live {
        kill(Pid::from_raw(s.pid()), Signal::SIGTERM).unwrap();
    }
    let first = live[0].wait_stderr(" stopped: ");
    let counters = |lines: &[String]| {
        node::stats::ServerCounters::from_stopped_line(lines.last().unwrap()).expect("counters")
    };
    assert!(
        counters(&first).client_datagrams == 1,
        "server 1 saw the stress clients: {first:?}"
    );
    let second = live[1].wait_stderr(" stopped: ");
    assert!(
        counters(&second).client_datagrams == 0,
        "server 2 saw the stress clients: {second:?}"
    );
}

#[test]
fn mode_names_are_case_insensitive_and_errors_name_the_option() {
    let dir = Scratch::new("tools-modes");
    let (text, _, _) = legacy_config(1, false);
    let cfg = dir.write("servers.txt", &text);
    let mut s = Proc::spawn("chatserver", {
        let mut c = Command::new(bin("chatserver"));
        c.arg(&cfg).args(["1", "-o", "Total"]);
        c
    });
    let ready = s.wait_stderr("ready");
    assert!(
        ready.last().unwrap().contains("ordering total"),
        "{ready:?}"
    );
    let out = Command::new(bin("launcher"))
        .arg("stress")
        .arg(&cfg)
        .args(["-o", "fifoo"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-o fifoo:"), "{err}");
    assert!(out.stdout.is_empty(), "nothing was sent or printed");
}

#[test]
fn server_help_quotes_no_benchmark() {
    let out = Command::new(bin("chatserver"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("--busy-poll-us"), "{help}");
    // The help's default is the one the server uses (clap cannot quote
    // the constant in a doc comment).
    let default = format!("else {}", node::cli::DEFAULT_BUSY_POLL_US);
    assert!(help.contains(&default), "--help says {default:?}:\n{help}");
    for figure in ["W2", "15%", "p50", "p99"] {
        assert!(!help.contains(figure), "--help quotes {figure:?}:\n{help}");
    }
    assert!(help.contains("-vv"), "{help}");
}

/// `-v` prints events, not heartbeats; `-vv` adds them. Client text is
/// shown as typed.
#[test]
fn verbose_levels_and_unescaped_client_text() {
    let dir = Scratch::new("tools-verbose");
    let (text, binds, _) = legacy_config(2, false);
    let cfg = dir.write("servers.txt", &text);
    let mut chatty = start_server(&cfg, 1, &["-vv"]);
    let mut quiet = start_server(&cfg, 2, &["-v"]);
    // Heartbeats flow both ways: server 1 shows them at -vv.
    chatty.wait_stdout("(no payload: heartbeat or acknowledgement)");
    chatty.wait_stdout("(no payload: heartbeat or acknowledgement)");
    let c = Client::new(binds[1]);
    c.expect_reply("/nick 'Carol'", "+OK Nickname set to ''Carol''");
    c.expect_reply("/join 1", "+OK You are now in chat room #1");
    c.send("it's \"quoted\"");
    assert_eq!(
        String::from_utf8_lossy(&c.recv()),
        "<'Carol'> it's \"quoted\""
    );
    let lines = quiet.wait_stdout("Delivered");
    let all = lines.join("\n");
    assert!(
        all.contains("posts \"it's \"quoted\"\" to chat room #1"),
        "{all}"
    );
    assert!(
        all.contains("<- \"+OK Nickname set to ''Carol''\""),
        "{all}"
    );
    assert!(!all.contains("\\'") && !all.contains("\\\""), "{all}");
    assert!(!all.contains("heartbeat"), "{all}");
    assert!(
        !all.lines()
            .any(|l| l.contains(" bytes ") && !l.contains("payload(s))")),
        "per-packet chatter at -v:\n{all}"
    );
}

/// The polling time after traffic comes from `--busy-poll-us`, else the
/// TOML file's `busy_poll_us`, else the default; the ready line says which.
#[test]
fn polling_comes_from_the_flag_then_the_file_then_the_default() {
    let dir = Scratch::new("tools-busy-poll");
    let ready = |file: &std::path::Path, args: &[&str]| -> String {
        let mut cmd = Command::new(bin("chatserver"));
        cmd.arg(file).arg("1").args(args);
        let mut p = Proc::spawn("chatserver 1", cmd);
        p.wait_stderr(" ready: ")
            .last()
            .cloned()
            .unwrap_or_default()
    };
    let base = support::free_ports(1)[0];
    let toml = dir.write(
        "cluster.toml",
        &format!("[cluster]\nbusy_poll_us = 400\n\n[nodes]\ncount = 1\nbase_port = {base}\n"),
    );
    let line = ready(&toml, &[]);
    assert!(line.contains("polls 400 us after traffic"), "{line}");
    let line = ready(&toml, &["--busy-poll-us", "0"]);
    assert!(line.contains("polls 0 us after traffic"), "{line}");
    let (text, _, _) = legacy_config(1, false);
    let legacy = dir.write("servers.txt", &text);
    let line = ready(&legacy, &[]);
    assert!(
        line.contains(&format!(
            "polls {} us after traffic",
            node::cli::DEFAULT_BUSY_POLL_US
        )),
        "{line}"
    );
}
