//! `launcher up/check/status/down` with real processes: chat through a
//! supervised cluster, restarts, giving up, clean shutdown, death of the
//! launcher. Only 127.0.0.1, ports from the kernel, deadlines not sleeps,
//! and only processes these tests started (or the launcher started for
//! them) are signalled, by pid.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::{Client, Proc, Scratch, bin, free_ports};

/// A TOML cluster of `n` nodes in `dir`, state inside `dir/state`.
fn toml_cluster(dir: &Scratch, n: usize, extra: &str) -> (PathBuf, Vec<SocketAddr>) {
    let ports = free_ports(n);
    let mut text = format!(
        "[cluster]\nname = \"t\"\nordering = \"total\"\nstate_dir = \"{}\"\n{extra}\n",
        dir.path().join("state").display()
    );
    let mut binds = Vec::new();
    for p in &ports {
        text.push_str(&format!("[[node]]\nbind = \"127.0.0.1:{p}\"\n"));
        binds.push(format!("127.0.0.1:{p}").parse().unwrap());
    }
    // Quick restarts and stops keep the tests fast.
    text.push_str(
        "[supervise]\nbackoff_initial_ms = 50\nbackoff_max_ms = 400\nstop_timeout_ms = 2000\n",
    );
    (dir.write("cluster.toml", &text), binds)
}

fn launcher(args: &[&str], file: &Path) -> Command {
    let mut cmd = Command::new(bin("launcher"));
    cmd.args(args).arg(file).env("NO_COLOR", "1");
    cmd
}

/// `launcher up FILE`, waiting until all `n` nodes are up.
fn up(file: &Path, n: usize) -> Proc {
    let mut p = Proc::spawn("launcher up", launcher(&["up"], file));
    for _ in 0..n {
        p.wait_stdout("launcher: up (pid");
    }
    p
}

/// Runs a launcher subcommand to completion.
fn run(args: &[&str], file: &Path) -> Output {
    launcher(args, file).output().expect("run launcher")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn state_path(dir: &Scratch) -> PathBuf {
    dir.path().join("state").join("launcher.json")
}

fn read_state(dir: &Scratch) -> launcher::cluster::state::StateFile {
    launcher::cluster::state::read(&state_path(dir))
        .expect("read state file")
        .expect("state file exists")
}

/// (pid, start time) of every node that has a process.
fn node_pids(dir: &Scratch) -> Vec<(i32, u64)> {
    read_state(dir)
        .nodes
        .iter()
        .map(|n| {
            (
                n.pid.expect("node pid"),
                n.start_time.expect("node start time"),
            )
        })
        .collect()
}

fn is_alive(pid: i32, start: u64) -> bool {
    launcher::cluster::procfs::is_same_process(pid, start)
}

/// Polls `cond` until it holds; panics after `within`.
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigint(p: &Proc) {
    kill(Pid::from_raw(p.pid()), Signal::SIGINT).expect("SIGINT launcher");
}

fn join_all(clients: &[&Client], room: u32) {
    for c in clients {
        c.expect_reply(
            &format!("/join {room}"),
            &format!("+OK You are now in chat room #{room}"),
        );
    }
}

/// `from` says `msg`; every client in `all` (including `from`) gets it.
fn chat(from: &Client, all: &[&Client], msg: &str) {
    from.send(msg);
    let want = format!("<{}> {msg}", from.addr());
    for c in all {
        assert_eq!(
            String::from_utf8_lossy(&c.recv()),
            want,
            "delivery to {}",
            c.addr()
        );
    }
}

#[test]
fn up_chats_across_nodes_and_sigint_stops_everything() {
    let dir = Scratch::new("lup-chat");
    let (file, binds) = toml_cluster(&dir, 3, "");
    let mut l = up(&file, 3);
    let pids = node_pids(&dir);
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&(p, t)| is_alive(p, t)));
    // Generated secret, private.
    let secret = dir.path().join("state").join("secret");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let clients: Vec<Client> = binds.iter().map(|b| Client::new(*b)).collect();
    let all: Vec<&Client> = clients.iter().collect();
    join_all(&all, 1);
    chat(&clients[0], &all, "hello from s1");
    chat(&clients[2], &all, "hello from s3");

    sigint(&l);
    let st = l.wait_exit();
    assert_eq!(st.code(), Some(0), "launcher exit status");
    for (p, t) in pids {
        assert!(!is_alive(p, t), "node pid {p} still alive");
    }
    for b in &binds {
        UdpSocket::bind(b).unwrap_or_else(|e| panic!("port {b} not free after shutdown: {e}"));
    }
    assert!(
        !state_path(&dir).exists(),
        "state file removed on clean exit"
    );
    let log = std::fs::read_to_string(dir.path().join("state/logs/s2.log")).unwrap();
    assert!(log.contains("ready"), "s2.log: {log}");
}

#[test]
fn killed_node_is_restarted_and_serves_again() {
    let dir = Scratch::new("lup-restart");
    let (file, binds) = toml_cluster(&dir, 3, "");
    let mut l = up(&file, 3);
    let clients: Vec<Client> = binds.iter().map(|b| Client::new(*b)).collect();
    let all: Vec<&Client> = clients.iter().collect();
    join_all(&all, 1);
    chat(&clients[0], &all, "before");

    let s2 = &read_state(&dir).nodes[1];
    let (pid, start) = (s2.pid.unwrap(), s2.start_time.unwrap());
    assert!(is_alive(pid, start));
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9 s2");
    l.wait_stdout("s2 | launcher: exited with signal 9 (SIGKILL); restarting in");
    let lines = l.wait_stdout("s2 | launcher: up (pid");
    let new_pid: i32 = lines
        .last()
        .and_then(|l| l.split("(pid ").nth(1))
        .and_then(|s| s.trim_end_matches(')').parse().ok())
        .expect("pid in the up line");
    assert_ne!(new_pid, pid);
    let st = read_state(&dir);
    assert_eq!(st.nodes[1].pid, Some(new_pid));
    assert_eq!(st.nodes[1].restarts, 1);
    assert_eq!(st.nodes[1].status, launcher::cluster::state::NodeStatus::Up);

    // The new s2 forgot its clients: join again, then chat both ways.
    clients[1].expect_reply("/join 1", "+OK You are now in chat room #1");
    chat(&clients[1], &all, "after from s2");
    chat(&clients[0], &all, "after from s1");

    sigint(&l);
    assert_eq!(l.wait_exit().code(), Some(0));
}

#[test]
fn node_that_exits_at_once_fails_and_launcher_exits_non_zero() {
    let dir = Scratch::new("lup-false");
    let ports = free_ports(2);
    let file = dir.write(
        "cluster.toml",
        &format!(
            "[cluster]\nchatserver = \"/bin/false\"\nstate_dir = \"{}\"\n\
             [[node]]\nbind = \"127.0.0.1:{}\"\n[[node]]\nbind = \"127.0.0.1:{}\"\n\
             [supervise]\nbackoff_initial_ms = 10\nbackoff_max_ms = 25\nmax_restarts = 3\n",
            dir.path().join("state").display(),
            ports[0],
            ports[1]
        ),
    );
    let mut l = Proc::spawn("launcher up", launcher(&["up"], &file));
    let mut seen = l.wait_stdout("s1 | launcher: exited with status 1; restarting in 10 ms");
    seen.extend(l.wait_stdout("s1 | launcher: exited with status 1; restarting in 20 ms"));
    seen.extend(l.wait_stdout("s1 | launcher: exited with status 1; restarting in 25 ms"));
    seen.extend(l.wait_stdout("s1 | launcher: exited with status 1; gave up after 3 restarts"));
    seen.extend(l.wait_stdout("failed; exiting with status 1"));
    let st = l.wait_exit();
    assert_eq!(st.code(), Some(1), "output: {seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("s2 | launcher:") && l.contains("gave up")),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("launcher: up (pid")),
        "{seen:#?}"
    );
    assert!(!state_path(&dir).exists());
}

#[test]
fn sigkill_of_the_launcher_takes_the_nodes_down() {
    let dir = Scratch::new("lup-kill");
    let (file, _) = toml_cluster(&dir, 3, "");
    let mut l = up(&file, 3);
    let pids = node_pids(&dir);
    kill(Pid::from_raw(l.pid()), Signal::SIGKILL).expect("kill -9 launcher");
    l.wait_exit();
    wait_for(
        "every node to die with its launcher",
        Duration::from_secs(3),
        || pids.iter().all(|&(p, t)| !is_alive(p, t)),
    );
    // The state file is stale now: status says so, down cleans it up.
    let s = run(&["status"], &file);
    assert_eq!(s.status.code(), Some(3), "{}", text(&s));
    assert!(text(&s).contains("NOT running"), "{}", text(&s));
    let d = run(&["down"], &file);
    assert!(d.status.success(), "{}", text(&d));
    assert!(text(&d).contains("was not running"), "{}", text(&d));
    assert!(!state_path(&dir).exists());
}

#[test]
fn status_and_down_from_another_process() {
    let dir = Scratch::new("lup-status");
    let (file, binds) = toml_cluster(&dir, 3, "");
    let mut l = up(&file, 3);
    let st = read_state(&dir);
    assert_eq!(st.launcher_pid, l.pid());

    let s = run(&["status"], &file);
    let out = text(&s);
    assert!(s.status.success(), "{out}");
    assert!(
        out.contains(&format!("launcher pid {} running", l.pid())),
        "{out}"
    );
    for (n, b) in st.nodes.iter().zip(&binds) {
        let row = out
            .lines()
            .find(|r| r.starts_with(&format!("{} ", n.name)))
            .unwrap_or_else(|| panic!("no row for {}: {out}", n.name));
        assert!(row.contains(&n.pid.unwrap().to_string()), "{row}");
        assert!(row.contains(" up ") && row.contains(" yes "), "{row}");
        assert!(row.contains(&b.to_string()), "{row}");
    }

    // Checking a running cluster: the file is valid, and it says that the
    // cluster runs and who has its ports (issue 18: it used to fail).
    let c = run(&["check"], &file);
    assert!(c.status.success(), "{}", text(&c));
    assert!(
        text(&c).contains(&format!(
            "ok: the file is valid; cluster {} is already running under launcher pid {}",
            "t",
            l.pid()
        )),
        "{}",
        text(&c)
    );

    // A second `up` refuses.
    let again = run(&["up"], &file);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("already running"), "{}", text(&again));

    let d = run(&["down"], &file);
    assert!(d.status.success(), "{}", text(&d));
    assert_eq!(l.wait_exit().code(), Some(0));
    assert!(
        st.nodes
            .iter()
            .all(|n| !is_alive(n.pid.unwrap(), n.start_time.unwrap()))
    );
    assert!(!state_path(&dir).exists());

    let s = run(&["status"], &file);
    assert_eq!(s.status.code(), Some(3), "{}", text(&s));
    assert!(text(&s).contains("not running"));
    let d = run(&["down"], &file);
    assert!(d.status.success(), "{}", text(&d));
}

#[test]
fn legacy_file_up_defaults_to_unordered() {
    let dir = Scratch::new("lup-legacy");
    let (cfg, binds, _) = support::legacy_config(2, false);
    let file = dir.write("servers.txt", &cfg);
    let mut cmd = launcher(&["up"], &file);
    cmd.current_dir(dir.path());
    let mut l = Proc::spawn("launcher up legacy", cmd);
    let lines = l.wait_stdout("launcher: up (pid");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ordering unordered (the default for legacy files")),
        "{lines:#?}"
    );
    l.wait_stdout("launcher: up (pid");
    // The default state dir: ./.state/<file stem>, here in the scratch dir.
    assert!(dir.path().join(".state/servers/launcher.json").exists());
    let a = Client::new(binds[0]);
    let b = Client::new(binds[1]);
    join_all(&[&a, &b], 2);
    chat(&b, &[&a, &b], "legacy");
    sigint(&l);
    assert_eq!(l.wait_exit().code(), Some(0));
}

#[test]
fn check_prints_the_plan_and_refuses_busy_ports() {
    let dir = Scratch::new("lup-check");
    let (file, binds) = toml_cluster(&dir, 3, "node_args = [\"-v\"]");
    let c = run(&["check"], &file);
    let out = text(&c);
    assert!(c.status.success(), "{out}");
    for (i, b) in binds.iter().enumerate() {
        assert!(
            out.contains(&format!("node {} s{}  bind {b}  forward {b}", i + 1, i + 1)),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "{} {} -o total --rooms 10 --secret-file",
                file.display(),
                i + 1
            )),
            "{out}"
        );
    }
    assert!(
        out.contains("ordering total (from the cluster file)"),
        "{out}"
    );
    assert!(out.contains(" -v\n"), "{out}");

    // -o overrides the file; unknown modes are refused.
    let c = run(&["check", "-o", "fifo"], &file);
    assert!(text(&c).contains("ordering fifo (from -o)"), "{}", text(&c));
    let c = run(&["check", "-o", "chaos"], &file);
    assert!(!c.status.success());
    assert!(
        text(&c).contains("unknown ordering mode 'chaos'"),
        "{}",
        text(&c)
    );

    // A busy port is refused, naming the node and the address.
    let _busy = UdpSocket::bind(binds[1]).expect("bind s2's port");
    let c = run(&["check"], &file);
    assert!(!c.status.success());
    let err = text(&c);
    assert!(
        err.contains(&format!(
            "node 2 (s2): bind address {} is not available",
            binds[1]
        )),
        "{err}"
    );
    let u = run(&["up"], &file);
    assert!(!u.status.success());
    assert!(text(&u).contains("(s2)"), "{}", text(&u));
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = Scratch::new("lup-bad");
    let bad = dir.write(
        "bad.toml",
        "[cluster]\nrooms = 3\n\n[nodes]\ncount = 2\nbase_port = 5000\nbogus = 1\n",
    );
    for cmd in ["check", "up", "status", "down"] {
        let o = run(&[cmd], &bad);
        assert!(!o.status.success(), "{cmd}");
        let t = text(&o);
        assert!(
            t.contains(&format!("{}:7: nodes.bogus: unknown key", bad.display())),
            "{cmd}: {t}"
        );
    }
    let dup = dir.write("dup.txt", "127.0.0.1:5000\n127.0.0.1:5000\n");
    let o = run(&["check"], &dup);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!("{}:2: duplicate address", dup.display())),
        "{}",
        text(&o)
    );
}

#[test]
fn node_ignoring_sigterm_is_killed_after_stop_timeout() {
    let dir = Scratch::new("lup-stubborn");
    let script = dir.write(
        "stubborn.sh",
        "#!/bin/sh\ntrap '' TERM\necho \"S01 ready: fake\" >&2\nwhile :; do sleep 1; done\n",
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = free_ports(1)[0];
    let file = dir.write(
        "cluster.toml",
        &format!(
            "[cluster]\nchatserver = \"stubborn.sh\"\nstate_dir = \"state\"\nsecret = \"off\"\n\
             [[node]]\nbind = \"127.0.0.1:{port}\"\n[supervise]\nstop_timeout_ms = 200\n"
        ),
    );
    let mut l = up(&file, 1);
    let pids = node_pids(&dir);
    sigint(&l);
    l.wait_stdout("s1 | launcher: still running 200 ms after SIGTERM; sending SIGKILL");
    l.wait_stdout("s1 | launcher: stopped (exited with signal 9 (SIGKILL))");
    assert_eq!(l.wait_exit().code(), Some(0));
    assert!(pids.iter().all(|&(p, t)| !is_alive(p, t)));
}

#[test]
fn status_watch_shows_each_nodes_live_figures() {
    let dir = Scratch::new("lup-watch");
    let (file, binds) = toml_cluster(&dir, 2, "");
    let _l = up(&file, 2);
    // `up` recorded where each node serves /metrics (a free port each).
    let st = read_state(&dir);
    for n in &st.nodes {
        let a: SocketAddr = n
            .metrics
            .as_deref()
            .unwrap_or_else(|| panic!("no metrics address for {}", n.name))
            .parse()
            .expect("a socket address");
        assert_ne!(a.port(), 0);
    }
    let a = Client::new(binds[0]);
    let b = Client::new(binds[1]);
    let b2 = Client::new(binds[1]);
    join_all(&[&a, &b, &b2], 4);

    // Chat between the first table and the second: the second shows rates.
    let mut w = Proc::spawn(
        "launcher status --watch",
        launcher(&["status", "--watch", "--count", "2"], &file),
    );
    let mut lines = w.wait_stdout("s2 ");
    for i in 0..5 {
        chat(&a, &[&a, &b, &b2], &format!("watched {i}"));
    }
    let code = w.wait_exit();
    // The rest of stdout, until the pipe closes.
    if let Some(rx) = &w.stdout_lines {
        while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
            lines.push(l);
        }
    }
    let out = lines.join("\n");
    assert!(code.success(), "{out}");
    // Not a terminal: plain lines, two tables one after the other, no
    // escape sequences.
    assert!(!out.contains('\x1b'), "{out:?}");
    let headers: Vec<&str> = out.lines().filter(|l| l.starts_with("NAME ")).collect();
    assert_eq!(headers.len(), 2, "{out}");
    for h in [
        "STATE", "RESTARTS", "CLIENTS", "POSTS/S", "DELIV/S", "RETX/S", "HOLDBACK", "VIEW", "RSS",
    ] {
        assert!(headers[0].contains(h), "{h} missing: {}", headers[0]);
    }
    let rows = |name: &str| -> Vec<Vec<String>> {
        out.lines()
            .filter(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    };
    for (name, clients) in [("s1", "1"), ("s2", "2")] {
        let r = rows(name);
        assert_eq!(r.len(), 2, "two rows for {name}: {out}");
        for row in &r {
            // NAME STATE RESTARTS CLIENTS POSTS/S DELIV/S RETX/S HOLDBACK VIEW RSS MiB
            assert_eq!(row.len(), 11, "{row:?}");
            assert_eq!(row[1], "up", "{row:?}");
            assert_eq!(row[2], "0", "{row:?}");
            assert_eq!(row[3], clients, "{row:?}");
            assert_eq!(row[7], "0", "holdback: {row:?}");
            assert_eq!(row[8], "-", "no view counter yet: {row:?}");
            assert_eq!(row[10], "MiB", "{row:?}");
            let rss: f64 = row[9].parse().expect("RSS in MiB");
            assert!(rss > 0.0, "{row:?}");
        }
        // Rates from the second table on: 5 posts at s1, delivered at both.
        assert_eq!(r[0][4], "-", "{:?}", r[0]);
        let rate = |i: usize| -> f64 { r[1][i].parse().expect("a rate") };
        assert!(rate(5) > 0.0, "deliveries/s of {name}: {:?}", r[1]);
        if name == "s1" {
            assert!(rate(4) > 0.0, "posts/s of s1: {:?}", r[1]);
        } else {
            assert_eq!(rate(4), 0.0, "posts/s of s2: {:?}", r[1]);
        }
    }

    // --count without --watch is refused.
    let bad = run(&["status", "--count", "2"], &file);
    assert!(!bad.status.success(), "{}", text(&bad));
}

#[test]
fn status_watch_of_a_stopped_cluster_says_not_running() {
    let dir = Scratch::new("lup-watch-none");
    let (file, _) = toml_cluster(&dir, 1, "");
    let w = run(&["status", "--watch", "--count", "1"], &file);
    assert_eq!(w.status.code(), Some(3), "{}", text(&w));
    assert!(text(&w).contains("not running"), "{}", text(&w));
}
