//! The cluster on separate hosts: one `chatserver` per network namespace
//! (see `support::hosts`), clients on another host, real UDP across a bridge.
//! Needs root and iproute2 (CI has both); without them every test here fails
//! and says why.

mod support;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use support::hosts::TestNet;
use support::{Proc, Scratch, WAIT, bin};

/// The port every server listens on, on its own host.
const PORT: u16 = 5000;

/// A legacy cluster file naming hosts 1..=n.
fn cluster_file(dir: &Scratch, n: usize) -> PathBuf {
    let text: String = (1..=n)
        .map(|i| format!("{}:{PORT}\n", TestNet::addr_of(i)))
        .collect();
    dir.write("servers.txt", &text)
}

/// Starts server `i` on host `i` and waits for its `ready` line.
fn start_on_host(net: &TestNet, cfg: &Path, i: usize, mode: &str) -> Proc {
    let mut cmd = net.command(i, bin("chatserver"));
    cmd.arg(cfg).arg(i.to_string()).args(["-o", mode]);
    let mut p = Proc::spawn(&format!("chatserver {i} on host {i}"), cmd);
    p.wait_stderr("ready");
    p
}

struct StressRun {
    proc: Proc,
    json: PathBuf,
}

/// `launcher stress --attach` from host `client_host`.
fn start_stress(
    net: &TestNet,
    client_host: usize,
    dir: &Scratch,
    cfg: &Path,
    args: &[&str],
) -> StressRun {
    let json = dir.path().join("report.json");
    let mut cmd = net.command(client_host, bin("launcher"));
    cmd.arg("stress")
        .arg(cfg)
        .arg("--attach")
        .args(["--timeout", "60", "--json"])
        .arg(&json)
        .args(args);
    StressRun {
        proc: Proc::spawn("launcher stress", cmd),
        json,
    }
}

impl StressRun {
    /// Waits until the clients have joined and the first deliveries are
    /// counted: traffic flows.
    fn wait_for_traffic(&mut self) {
        self.proc.wait_stderr("clients joined");
        self.proc.wait_stderr(" delivered ");
    }

    /// Waits for the report; returns the exit status, stdout and the JSON.
    fn finish(mut self) -> (ExitStatus, String, serde_json::Value) {
        let lines = self.proc.wait_stdout("result:");
        let status = self.proc.wait_exit();
        let text = lines.join("\n");
        let report = std::fs::read_to_string(&self.json)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_else(|| panic!("no JSON report; stdout:\n{text}"));
        (status, text, report)
    }
}

fn every_mode_on_five_hosts(mode: &str) {
    // Hosts 1-5 run the servers, host 6 the clients.
    let net = TestNet::new(6);
    let dir = Scratch::new(&format!("hosts-{mode}"));
    let cfg = cluster_file(&dir, 5);
    let _servers: Vec<Proc> = (1..=5)
        .map(|i| start_on_host(&net, &cfg, i, mode))
        .collect();
    let run = start_stress(
        &net,
        6,
        &dir,
        &cfg,
        &[
            "-o",
            mode,
            "--clients",
            "10",
            "--rooms",
            "2",
            "--messages",
            "30",
        ],
    );
    let (status, text, report) = run.finish();
    assert!(status.success(), "{mode} on 5 hosts failed:\n{text}");
    assert_eq!(report["ok"], true, "{text}");
    assert_eq!(report["sent"], 300, "{text}");
    assert_eq!(report["stop_reason"], "complete", "{text}");
    assert_eq!(
        report["expected_deliveries"], report["distinct_deliveries"],
        "{text}"
    );
}

#[test]
fn unordered_on_five_hosts() {
    every_mode_on_five_hosts("unordered");
}

#[test]
fn fifo_on_five_hosts() {
    every_mode_on_five_hosts("fifo");
}

#[test]
fn total_on_five_hosts() {
    every_mode_on_five_hosts("total");
}

#[test]
fn causal_on_five_hosts() {
    every_mode_on_five_hosts("causal");
}

/// A chat line typed on one host reaches a member on another, byte for
/// byte, through servers on two more hosts.
#[test]
fn a_line_crosses_hosts() {
    let net = TestNet::new(4);
    let dir = Scratch::new("hosts-line");
    let cfg = cluster_file(&dir, 2);
    let _s1 = start_on_host(&net, &cfg, 1, "total");
    let _s2 = start_on_host(&net, &cfg, 2, "total");
    let s1 = server_addr(1);
    let s2 = server_addr(2);
    let alice = net.udp_socket(3);
    let bob = net.udp_socket(4);
    exchange(&alice, s1, "/nick alice", "+OK Nickname set to 'alice'");
    exchange(&alice, s1, "/join 1", "+OK You are now in chat room #1");
    exchange(&bob, s2, "/join 1", "+OK You are now in chat room #1");
    alice.send_to(b"hello across hosts", s1).expect("send");
    assert_eq!(recv(&alice), "<alice> hello across hosts");
    assert_eq!(recv(&bob), "<alice> hello across hosts");
}

/// A host's cable is cut for two seconds in the middle of a `total` run
/// with clients on the other hosts: the run stalls while the host is away
/// and completes after the cable is mended, every message delivered once in
/// one order.
#[test]
fn a_host_cut_off_and_back_during_a_total_run() {
    let net = TestNet::new(4);
    let dir = Scratch::new("hosts-cut");
    let cfg = cluster_file(&dir, 3);
    let _servers: Vec<Proc> = (1..=3)
        .map(|i| start_on_host(&net, &cfg, i, "total"))
        .collect();
    let mut run = start_stress(
        &net,
        4,
        &dir,
        &cfg,
        &[
            "-o",
            "total",
            "--clients",
            "6",
            "--rooms",
            "2",
            "--messages",
            "200",
            "--rate",
            "300",
            "--client-servers",
            "1,2",
            "--quiet-ms",
            "15000",
        ],
    );
    // Cut host 3 once traffic flows; the outage lasts two seconds.
    run.wait_for_traffic();
    net.cut(3);
    std::thread::sleep(Duration::from_secs(2));
    net.mend(3);
    let (status, text, report) = run.finish();
    assert!(status.success(), "run across the cut failed:\n{text}");
    // The cut was real: total order waited for the cut-off host.
    let max_us = report["latency"]["max_us"]
        .as_u64()
        .expect("latency.max_us");
    assert!(
        max_us >= 1_500_000,
        "no stall during the cut (max {max_us} us):\n{text}"
    );
    assert_eq!(report["ok"], true, "{text}");
    assert_eq!(report["sent"], 1200, "{text}");
    assert_eq!(report["stop_reason"], "complete", "{text}");
    assert_eq!(
        report["expected_deliveries"], report["distinct_deliveries"],
        "{text}"
    );
}

/// Server 2 is killed on its host during a run and started again there;
/// the run completes for the clients of the other servers.
#[test]
fn a_server_restarted_on_its_host() {
    let net = TestNet::new(4);
    let dir = Scratch::new("hosts-restart");
    let cfg = cluster_file(&dir, 3);
    let mut servers: Vec<Proc> = (1..=3)
        .map(|i| start_on_host(&net, &cfg, i, "total"))
        .collect();
    let mut run = start_stress(
        &net,
        4,
        &dir,
        &cfg,
        &[
            "-o",
            "total",
            "--clients",
            "6",
            "--rooms",
            "2",
            "--messages",
            "200",
            "--rate",
            "300",
            "--client-servers",
            "1,3",
            "--quiet-ms",
            "15000",
        ],
    );
    run.wait_for_traffic();
    let killed = servers.remove(1);
    drop(killed); // SIGKILL by PID, then reaped
    servers.push(start_on_host(&net, &cfg, 2, "total"));
    let (status, text, report) = run.finish();
    assert!(status.success(), "run across the restart failed:\n{text}");
    assert_eq!(report["ok"], true, "{text}");
    assert_eq!(report["stop_reason"], "complete", "{text}");
    assert_eq!(
        report["expected_deliveries"], report["distinct_deliveries"],
        "{text}"
    );
}

/// The harness removes what it made, namespaces and the processes in them.
#[test]
fn test_hosts_are_removed_on_drop() {
    let names: Vec<String>;
    let pid;
    {
        let net = TestNet::new(2);
        names = (1..=2).map(|i| net.ns(i).to_string()).collect();
        let dir = Scratch::new("hosts-drop");
        let cfg = cluster_file(&dir, 1);
        let p = start_on_host(&net, &cfg, 1, "fifo");
        pid = p.pid();
        // Leave the server running: the harness must end it.
        std::mem::forget(p);
    }
    let listed = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .into_owned();
    for n in &names {
        assert!(!listed.contains(n.as_str()), "{n} still exists:\n{listed}");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        // Reap it if it is our zombie; then it must be gone.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "server {pid} outlived its host");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn server_addr(i: usize) -> std::net::SocketAddr {
    std::net::SocketAddr::from((TestNet::addr_of(i), PORT))
}

fn exchange(sock: &std::net::UdpSocket, to: std::net::SocketAddr, line: &str, reply: &str) {
    sock.send_to(line.as_bytes(), to).expect("send");
    assert_eq!(recv(sock), reply, "reply to {line:?}");
}

fn recv(sock: &std::net::UdpSocket) -> String {
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = vec![0u8; 70000];
    let (n, _) = sock.recv_from(&mut buf).expect("a datagram in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
