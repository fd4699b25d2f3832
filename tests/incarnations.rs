//! Issue 13, case 3: forged heartbeats cannot poison a peer's incarnation.
//!
//! A 17-byte datagram claiming to come from server 2 with incarnation 2^62
//! used to stop total order for good and cut fifo between servers 1 and 2.
//! Here three servers without a cluster secret (the worst case: nothing is
//! authenticated) get forged heartbeats from server 2's address — one from
//! the far future, one "restart" within the clock-skew bound but without
//! proof, one addressed to a wrong incarnation — and must go on ordering
//! messages between clients of servers 1 and 2 as if nothing happened; the
//! forgeries are counted.
//!
//! Forging a source address needs a raw socket: this test needs root (CI runs
//! as root). Without it, it fails and says so.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node::stats::ServerCounters;
use orderings::{Datagram, seal_datagram};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;
use support::{Client, Proc, Scratch, legacy_config, start_server};

/// Sends one UDP datagram with a forged source address (raw IPv4 socket,
/// header built here; the UDP checksum 0 means "none" in IPv4).
fn send_forged(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
    // SAFETY: plain socket(2)/sendto(2)/close(2) calls on a fresh fd with
    // pointers to live, correctly sized buffers.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(
            fd >= 0,
            "this test forges source addresses with a raw socket and needs root \
             (CI runs it as root): socket(SOCK_RAW) failed: {}",
            std::io::Error::last_os_error()
        );
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        p.extend_from_slice(&src.ip().octets());
        p.extend_from_slice(&dst.ip().octets());
        let udp_len = 8 + payload.len();
        p.extend_from_slice(&src.port().to_be_bytes());
        p.extend_from_slice(&dst.port().to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: dst.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            p.as_ptr().cast(),
            p.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n as usize, p.len(), "sendto on the raw socket: {err}");
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(v) => v,
        SocketAddr::V6(_) => panic!("test addresses are IPv4"),
    }
}

fn heartbeat(src_incarnation: u64, dst_incarnation: u64) -> Vec<u8> {
    let d = Datagram {
        src_incarnation,
        dst_incarnation,
        ack: 0,
        delivered: 0,
        report_wanted: false,
        excluded: false,
        gaps: vec![],
        frames: vec![],
    };
    seal_datagram(&d.encode_raw(false), None)
}

/// SIGTERM, then the counters of the `stopped:` line.
fn stop(p: &mut Proc, bind: SocketAddr) -> ServerCounters {
    // A round trip first: the handler is installed once the loop runs.
    Client::new(bind).expect_reply_prefix("/part", "-ERR ");
    kill(Pid::from_raw(p.pid()), Signal::SIGTERM).expect("SIGTERM");
    let lines = p.wait_stderr(" stopped: ");
    assert!(p.wait_exit().success());
    lines
        .last()
        .and_then(|l| ServerCounters::from_stopped_line(l))
        .expect("counters")
}

/// Both clients get `lines` in one identical order.
fn chat_round(a: &Client, b: &Client, tag: &str) {
    a.send(format!("{tag}-a"));
    b.send(format!("{tag}-b"));
    let got_a: Vec<String> = a
        .recv_n(2)
        .into_iter()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .collect();
    let got_b: Vec<String> = b
        .recv_n(2)
        .into_iter()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .collect();
    assert_eq!(got_a, got_b, "total order: one order for both");
    let mut sorted = got_a.clone();
    sorted.sort();
    assert_eq!(sorted, vec![format!("<A> {tag}-a"), format!("<B> {tag}-b")]);
}

#[test]
fn forged_incarnations_neither_stop_total_order_nor_cut_links() {
    let dir = Scratch::new("incarnations");
    let (text, binds, _) = legacy_config(3, false);
    let cfg = dir.write("servers.txt", &text);
    let mut servers: Vec<Proc> = (1..=3)
        .map(|i| start_server(&cfg, i, &["-o", "total"]))
        .collect();
    let a = Client::new(binds[0]);
    let b = Client::new(binds[1]);
    a.expect_reply("/nick A", "+OK Nickname set to 'A'");
    b.expect_reply("/nick B", "+OK Nickname set to 'B'");
    a.expect_reply("/join 1", "+OK You are now in chat room #1");
    b.expect_reply("/join 1", "+OK You are now in chat room #1");
    chat_round(&a, &b, "before");

    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64;
    let (s1, s2) = (v4(binds[0]), v4(binds[1]));
    // From the far future (the 17-byte heartbeat), to servers 1 and 3.
    for to in [s1, v4(binds[2])] {
        send_forged(s2, to, &heartbeat(1 << 62, 0));
    }
    // A "restart" within the skew bound, but without proof (it does not
    // know server 1's incarnation), and one to a made-up incarnation.
    send_forged(s2, s1, &heartbeat(now_us + 1_000_000, 0));
    send_forged(s2, s1, &heartbeat(now_us + 2_000_000, 12345));

    for round in 0..5 {
        chat_round(&a, &b, &format!("after{round}"));
    }
    // Also after a heartbeat interval: nothing was adopted later either.
    std::thread::sleep(Duration::from_millis(600));
    chat_round(&a, &b, "later");

    let c1 = stop(&mut servers[0], binds[0]);
    assert!(c1.future_incarnations >= 1, "{c1:?}");
    assert!(c1.unproven_incarnation_claims >= 1, "{c1:?}");
    assert_eq!(c1.peer_restarts, 0, "no restart was believed: {c1:?}");
    let c3 = stop(&mut servers[2], binds[2]);
    assert!(c3.future_incarnations >= 1, "{c3:?}");
    assert_eq!(c3.peer_restarts, 0, "{c3:?}");
}
