//! `launcher proxy` end to end: fake servers are plain UDP sockets on the
//! bind addresses of a legacy config; the proxy sits on the forwarding
//! addresses.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Proc, Scratch, WAIT, bin, free_ports, legacy_config};

/// A fake server bound to its bind address, with a receive buffer large
/// enough for a burst of a few thousand small datagrams.
fn fake_server(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind fake server {addr}: {e}"));
    set_rcvbuf(&s, 4 << 20);
    s
}

/// A legacy config of two servers behind the proxy and a fake server on
/// each bind address. The fakes bind first, on ports the kernel picks, so a
/// test running in parallel cannot take a bind port between its choice and
/// the bind. Returns the config text, the fakes and the forwarding
/// addresses.
fn fake_pair() -> (String, UdpSocket, UdpSocket, Vec<SocketAddr>) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (a, b) = (fake_server(any), fake_server(any));
    let fwds: Vec<SocketAddr> = free_ports(2)
        .into_iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let text = format!(
        "{},{}\n{},{}\n",
        fwds[0],
        a.local_addr().unwrap(),
        fwds[1],
        b.local_addr().unwrap()
    );
    (text, a, b, fwds)
}

fn set_rcvbuf(s: &UdpSocket, size: i32) {
    use std::os::fd::AsRawFd;
    for opt in [libc::SO_RCVBUF, libc::SO_RCVBUFFORCE] {
        // SAFETY: setsockopt with a c_int on a socket we own.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &size as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}

fn recv_within(s: &UdpSocket, t: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    s.set_read_timeout(Some(t.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = vec![0u8; 70_000];
    match s.recv_from(&mut buf) {
        Ok((n, src)) => Some((buf[..n].to_vec(), src)),
        Err(_) => None,
    }
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    recv_within(s, WAIT).expect("nothing arrived in time")
}

/// Everything already queued on `s`, without waiting.
fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
    s.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 70_000];
    let mut out = Vec::new();
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, _)) => out.push(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("drain: {e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
    out
}

fn start_proxy(config: &std::path::Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("launcher"));
    cmd.arg("proxy").arg(config).args(args);
    let mut p = Proc::spawn("launcher proxy", cmd);
    p.wait_stderr("ready");
    p
}

fn signal(p: &Proc, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid()), sig).expect("signal proxy");
}

/// Stops the proxy with `sig`, checks it exits 0, returns its final counts.
fn stop_proxy(mut p: Proc, sig: nix::sys::signal::Signal) -> BTreeMap<String, u64> {
    signal(&p, sig);
    let st = p.wait_exit();
    assert!(st.success(), "proxy exited with {st}");
    let lines = p.wait_stderr("proxy stopped");
    let last = lines.last().unwrap();
    last.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

#[test]
fn forwards_byte_exact_from_the_senders_forwarding_address() {
    let dir = Scratch::new("proxy-exact");
    let (text, a, b, fwds) = fake_pair();
    let cfg = dir.write("servers.txt", &text);
    let p = start_proxy(&cfg, &[]);

    // A stranger's packet is dropped and counted, not forwarded.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"from nowhere", fwds[1]).unwrap();

    let mut all_bytes: Vec<u8> = (0..=255u8).collect();
    all_bytes.extend_from_slice(b"\0\0tail\0");
    let big: Vec<u8> = (0..65_507u32).map(|i| (i % 251) as u8).collect();
    let payloads: Vec<Vec<u8>> = vec![b"hello".to_vec(), all_bytes, vec![0u8; 1], big];
    for pl in &payloads {
        a.send_to(pl, fwds[1]).unwrap();
        let (got, src) = recv(&b);
        assert_eq!(
            src, fwds[0],
            "B must see the packet come from A's forwarding address"
        );
        assert_eq!(got.len(), pl.len());
        assert!(got == *pl, "payload of {} bytes changed", pl.len());
    }
    // B answers the source it saw: the reply reaches A from B's forwarding
    // address.
    b.send_to(b"reply\0!", fwds[0]).unwrap();
    let (got, src) = recv(&a);
    assert_eq!(got, b"reply\0!");
    assert_eq!(src, fwds[1]);
    // A server may also send to its own forwarding address.
    a.send_to(b"self", fwds[0]).unwrap();
    let (got, src) = recv(&a);
    assert_eq!((got.as_slice(), src), (&b"self"[..], fwds[0]));

    let counts = stop_proxy(p, nix::sys::signal::Signal::SIGINT);
    assert_eq!(counts["unknown_source"], 1, "{counts:?}");
    assert_eq!(counts["received"], 7, "{counts:?}");
    assert_eq!(counts["forwarded"], 6, "{counts:?}");
    assert_eq!(counts["dropped"], 0, "{counts:?}");
    assert!(
        drain(&b).is_empty(),
        "the stranger's packet must not be forwarded"
    );
}

#[test]
fn delay_reorders_packets_and_loses_none() {
    let dir = Scratch::new("proxy-delay");
    let (text, a, b, fwds) = fake_pair();
    let cfg = dir.write("servers.txt", &text);
    let p = start_proxy(&cfg, &["--delay", "0..20", "--seed", "3"]);
    let n = 200u32;
    let started = Instant::now();
    for i in 0..n {
        a.send_to(format!("{i}").as_bytes(), fwds[1]).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < n as usize {
        let (d, src) = recv(&b);
        assert_eq!(src, fwds[0]);
        got.push(String::from_utf8(d).unwrap().parse::<u32>().unwrap());
    }
    let took = started.elapsed();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..n).collect::<Vec<_>>(),
        "every packet exactly once"
    );
    let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(
        inversions > 10,
        "a 0..20 ms delay must reorder a burst; inversions: {inversions}"
    );
    assert!(
        took >= Duration::from_millis(5),
        "packets were not delayed ({took:?})"
    );
    let counts = stop_proxy(p, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(counts["forwarded"], u64::from(n), "{counts:?}");
}

/// Sends `n` numbered packets from server 1 to server 2 through a proxy with
/// `args`, stops the proxy (which flushes what it holds) and returns how many
/// copies of each packet arrived, plus the proxy's counts.
fn run_numbered(args: &[&str], n: u32) -> (Vec<u32>, BTreeMap<String, u64>) {
    let dir = Scratch::new("proxy-numbered");
    let (text, a, b, fwds) = fake_pair();
    let cfg = dir.write("servers.txt", &text);
    let p = start_proxy(&cfg, args);
    let mut copies = vec![0u32; n as usize];
    for i in 0..n {
        a.send_to(format!("{i:06}").as_bytes(), fwds[1]).unwrap();
        // Read what has already arrived, so that B's buffer never fills.
        for d in drain(&b) {
            copies[String::from_utf8(d).unwrap().parse::<usize>().unwrap()] += 1;
        }
    }
    // On loopback a send completes once the datagram is queued at the
    // receiver, so the proxy has all of them; stopping it flushes held ones,
    // and once it has exited everything it sent is queued at B.
    let counts = stop_proxy(p, nix::sys::signal::Signal::SIGTERM);
    for d in drain(&b) {
        copies[String::from_utf8(d).unwrap().parse::<usize>().unwrap()] += 1;
    }
    (copies, counts)
}

#[test]
fn loss_and_duplicate_rates_and_same_seed_same_decisions() {
    let n = 2000u32;
    let args = [
        "--delay",
        "0..3",
        "--loss",
        "0.2",
        "--duplicate",
        "0.1",
        "--seed",
        "42",
    ];
    let (first, counts) = run_numbered(&args, n);
    let dropped: Vec<usize> = (0..n as usize).filter(|&i| first[i] == 0).collect();
    let duplicated: Vec<usize> = (0..n as usize).filter(|&i| first[i] == 2).collect();
    assert!(
        first.iter().all(|&c| c <= 2),
        "at most one extra copy per packet"
    );
    // The proxy's own counts agree with what arrived.
    assert_eq!(counts["received"], u64::from(n), "{counts:?}");
    assert_eq!(counts["dropped"], dropped.len() as u64, "{counts:?}");
    assert_eq!(counts["duplicated"], duplicated.len() as u64, "{counts:?}");
    assert_eq!(
        counts["forwarded"],
        u64::from(first.iter().sum::<u32>()),
        "{counts:?}"
    );
    // Rates within 4 standard deviations.
    let loss_rate = dropped.len() as f64 / f64::from(n);
    assert!(
        (0.155..=0.245).contains(&loss_rate),
        "loss rate {loss_rate}"
    );
    let dup_rate = duplicated.len() as f64 / (f64::from(n) - dropped.len() as f64);
    assert!(
        (0.065..=0.135).contains(&dup_rate),
        "duplicate rate {dup_rate}"
    );

    // Same seed: the same packets are dropped and duplicated.
    let (second, _) = run_numbered(&args, n);
    assert_eq!(first, second, "same seed must give the same decisions");
    // Another seed: different ones.
    let other = [
        "--delay",
        "0..3",
        "--loss",
        "0.2",
        "--duplicate",
        "0.1",
        "--seed",
        "43",
    ];
    let (third, _) = run_numbered(&other, n);
    assert_ne!(first, third);
}

#[test]
fn refuses_a_config_without_forwarding_addresses() {
    let dir = Scratch::new("proxy-noforward");
    let (text, _, _) = legacy_config(2, false);
    let cfg = dir.write("servers.txt", &text);
    let out = Command::new(bin("launcher"))
        .arg("proxy")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("forwarding address"), "{err}");
}

/// Issue 18 point 7: a TOML cluster without forwarding addresses gets a
/// suggestion in TOML terms.
#[test]
fn proxy_on_a_toml_file_without_forwarding_addresses_suggests_toml() {
    let dir = support::Scratch::new("proxy-toml-hint");
    let port = support::free_ports(1)[0];
    let file = dir.write(
        "c.toml",
        &format!("[cluster]\nname = \"p\"\n\n[nodes]\ncount = 2\nhost = \"127.0.0.1\"\nbase_port = {port}\n"),
    );
    let out = std::process::Command::new(support::bin("launcher"))
        .arg("proxy")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("forward_base_port"), "{err}");
    assert!(!err.contains("FWD_IP:PORT,BIND_IP:PORT"), "{err}");
}
