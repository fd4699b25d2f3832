//! `chatserver --metrics` end to end: a real server, real clients on
//! 127.0.0.1, its `/metrics` scraped over HTTP and read with a Prometheus
//! text parser (`launcher::cluster::metrics`, on `prometheus-parse`); the
//! TOML keys that turn it on. Ports from the kernel, deadlines not sleeps.

mod support;

use launcher::cluster::metrics::{NodeSample, scrape};
use node::stats::ServerCounters;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Client, Proc, Scratch, WAIT, bin, free_ports, legacy_config};

const SCRAPE: Duration = Duration::from_secs(5);

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_tcp_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp 0"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// Starts `chatserver CONFIG INDEX ARGS`; returns it with the metrics
/// address its ready line names.
fn start(config: &std::path::Path, index: usize, args: &[&str]) -> (Proc, Option<SocketAddr>) {
    let mut cmd = Command::new(bin("chatserver"));
    cmd.arg(config).arg(index.to_string()).args(args);
    let mut p = Proc::spawn(&format!("chatserver {index}"), cmd);
    let lines = p.wait_stderr(" ready: ");
    let ready = lines.last().cloned().unwrap_or_default();
    (p, node::metrics::addr_in_ready_line(&ready))
}

/// Scrapes until `cond` holds on a sample (the loop publishes every 250 ms
/// and on request); panics after `WAIT`.
fn scrape_until(addr: SocketAddr, what: &str, cond: impl Fn(&NodeSample) -> bool) -> NodeSample {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(addr, SCRAPE);
        if let Ok(s) = &s
            && cond(s)
        {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn served_figures_follow_the_traffic_and_equal_the_stopped_line() {
    let dir = Scratch::new("metrics-serve");
    let (text, binds, _) = legacy_config(1, false);
    let cfg = dir.write("servers.txt", &text);
    let (mut server, addr) = start(&cfg, 1, &["-o", "total", "--metrics", "127.0.0.1:0"]);
    let addr = addr.expect("the ready line names the metrics address");
    assert_ne!(addr.port(), 0, "port 0 is resolved to the bound port");

    let before = scrape(addr, SCRAPE).expect("scrape an idle server");
    assert_eq!(
        (before.posts(), before.deliveries(), before.clients()),
        (0, 0, 0)
    );
    assert!(before.rss_bytes().is_some_and(|b| b > 0), "{before:?}");
    assert_eq!(before.view(), None);

    let (a, b, c) = (
        Client::new(binds[0]),
        Client::new(binds[0]),
        Client::new(binds[0]),
    );
    a.expect_reply("/join 2", "+OK You are now in chat room #2");
    b.expect_reply("/join 2", "+OK You are now in chat room #2");
    c.expect_reply("/join 3", "+OK You are now in chat room #3");
    const LINES: u64 = 7;
    for i in 0..LINES {
        a.send(format!("line {i}"));
        for m in [&a, &b] {
            assert_eq!(
                String::from_utf8_lossy(&m.recv()),
                format!("<{}> line {i}", a.addr())
            );
        }
    }
    // Refused: c is in a room but sends more than 1000 bytes (a client
    // datagram, no post).
    c.expect_reply_prefix(&"x".repeat(1200), "-ERR Message too long");

    let s = scrape_until(addr, "7 posts", |s| s.posts() == LINES);
    assert_eq!(
        s.deliveries(),
        LINES,
        "one delivery per message at this server"
    );
    assert_eq!(s.clients(), 3);
    assert_eq!(s.room_members.get(&2), Some(&2));
    assert_eq!(s.room_members.get(&3), Some(&1));
    assert_eq!(s.room_members.get(&1), Some(&0));
    assert_eq!(s.room_members.len(), 10, "every room is listed");
    // 3 joins, 7 lines, 1 too long.
    assert_eq!(s.field("client_datagrams"), Some(3 + LINES + 1));
    assert_eq!(s.field("peer_datagrams"), Some(0));
    assert_eq!(s.refusals.get("post"), Some(&0));
    assert!(s.rss_bytes().is_some_and(|b| b > 1024 * 1024), "{s:?}");
    let later = scrape(addr, SCRAPE).expect("scrape again");
    let r = later.rates_since(&before);
    assert!(r.posts > 0.0 && r.deliveries > 0.0, "{r:?}");

    // Nothing moves any more (one server: no peer traffic): the last
    // scrape is what the server prints when it stops, field by field.
    let last = scrape(addr, SCRAPE).expect("last scrape");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the server");
    let lines = server.wait_stderr(" stopped: ");
    let stopped = lines
        .iter()
        .find_map(|l| ServerCounters::from_stopped_line(l))
        .expect("a stopped line with counters");
    let printed: BTreeMap<String, u64> = node::metrics::counter_fields(&stopped)
        .into_iter()
        .collect();
    assert_eq!(
        printed.len(),
        stopped.entries().count(),
        "every field is served"
    );
    assert_eq!(last.counters(), printed);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn http_side_answers_only_metrics() {
    let dir = Scratch::new("metrics-http");
    let (text, _, _) = legacy_config(1, false);
    let cfg = dir.write("servers.txt", &text);
    let (_server, addr) = start(&cfg, 1, &["--metrics", "127.0.0.1:0"]);
    let addr = addr.expect("metrics address");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(SCRAPE))
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .get(&format!("http://{addr}/nothing"))
        .call()
        .expect("GET /nothing");
    assert_eq!(r.status().as_u16(), 404);
    let r = agent
        .post(&format!("http://{addr}/metrics"))
        .send("x")
        .expect("POST /metrics");
    assert_eq!(r.status().as_u16(), 405);
    let mut r = agent
        .get(&format!("http://{addr}/metrics"))
        .call()
        .expect("GET /metrics");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let body = r.body_mut().read_to_string().expect("body");
    // Prometheus' own parser conventions: one TYPE per family, counters
    // end in _total, the text ends with # EOF.
    assert!(body.contains("# TYPE chatserver_posts counter\n"), "{body}");
    assert!(body.contains("\nchatserver_posts_total 0\n"), "{body}");
    assert!(
        body.contains("# TYPE chatserver_held_back gauge\n"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
}

#[test]
fn toml_turns_metrics_on_for_every_node_and_the_flag_overrides() {
    let dir = Scratch::new("metrics-toml");
    let base = free_ports(2)[0];
    // Two consecutive TCP ports that are free: try until a pair is.
    let metrics_base = (0..50)
        .map(|_| free_tcp_ports(1)[0])
        .find(|&p| p < 65535 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
        .expect("two consecutive free TCP ports");
    let file = dir.write(
        "cluster.toml",
        &format!(
            "[cluster]\nordering = \"fifo\"\n\n[nodes]\ncount = 2\nbase_port = {base}\nmetrics_base_port = {metrics_base}\n"
        ),
    );
    let (_s2, addr) = start(&file, 2, &[]);
    assert_eq!(
        addr,
        Some(SocketAddr::from(([127, 0, 0, 1], metrics_base + 1))),
        "node 2 serves on metrics_base_port + 1"
    );
    let s = scrape(addr.expect("addr"), SCRAPE).expect("scrape node 2");
    assert_eq!(s.clients(), 0);

    // --metrics overrides the file.
    let (_s1, addr) = start(&file, 1, &["--metrics", "127.0.0.1:0"]);
    let addr = addr.expect("addr");
    assert_ne!(addr.port(), metrics_base);
    scrape(addr, SCRAPE).expect("scrape node 1");
}

#[test]
fn bad_metrics_keys_name_file_and_line() {
    let dir = Scratch::new("metrics-bad");
    let cases = [
        (
            "[nodes]\ncount = 2\nbase_port = 5000\nmetrics_base_port = 65535\n",
            4,
            "nodes.metrics_base_port",
        ),
        (
            "[[node]]\nbind = \"127.0.0.1:5000\"\n\n[[node]]\nbind = \"127.0.0.1:5001\"\nmetrics = \"127.0.0.1:nope\"\n",
            6,
            "node[2].metrics",
        ),
        (
            "[nodes]\ncount = 1\nbase_port = 5000\nmetric_base_port = 9100\n",
            4,
            "nodes.metric_base_port",
        ),
    ];
    for (i, (text, line, key)) in cases.iter().enumerate() {
        let file = dir.write(&format!("bad{i}.toml"), text);
        let out = Command::new(bin("chatserver"))
            .arg(&file)
            .arg("1")
            .output()
            .expect("run chatserver");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: {err}");
        let want = format!("{}:{line}: ", file.display());
        assert!(err.contains(&want), "{err:?} should contain {want:?}");
        assert!(err.contains(key), "{err:?} should name {key}");
    }
    // A taken metrics port fails the start, before `ready`.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (text, _, _) = legacy_config(1, false);
    let cfg = dir.write("servers.txt", &text);
    let out = Command::new(bin("chatserver"))
        .arg(&cfg)
        .arg("1")
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run chatserver");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("binding the metrics address"), "{err}");
    assert!(!err.contains(" ready: "), "{err}");
}
