//! Hostile traffic against real `chatserver` processes.
//!
//! 1. With a cluster secret, packets sent *from a server's forwarding
//!    address* (so the receiver takes them for that server's) that are
//!    replayed, truncated, bit-flipped or forged with a wrong key are dropped
//!    and counted, and the clients' chat is unaffected.
//! 2. A flood of garbage datagrams from many client sockets while clients
//!    chat (and while `launcher stress --attach` runs): no crash, no wrong
//!    delivery, every garbage datagram gets `-ERR` (or nothing for `/quit`).
//! 3. Client limits: `--max-clients`, nicknames, 1001-byte datagrams,
//!    invalid UTF-8 passed through byte for byte.
//! 4. A node without a secret in a multi-server cluster says so once;
//!    servers with different secrets do not talk.
//!
//! Test 1 needs to send from forwarding addresses, so the cluster uses
//! separate forwarding ports and the test runs its own relay on them (the
//! delay proxy's job, without delay): it carries server i's packets for
//! server j to j's bind address from i's forwarding socket, records them,
//! and can inject packets from any forwarding socket.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node::stats::ServerCounters;
use orderings::{Datagram, Writer, open_datagram, seal_datagram};
use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::{Client, Proc, Scratch, WAIT, bin, legacy_config};

/// A short quiet period, to assert that something does *not* arrive.
const QUIET: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------
// Helpers.

/// Starts `chatserver CONFIG INDEX ARGS`; returns it and its stderr lines up
/// to and including the `ready` line.
fn server(config: &Path, index: usize, args: &[&str]) -> (Proc, Vec<String>) {
    let mut cmd = Command::new(bin("chatserver"));
    cmd.arg(config).arg(index.to_string()).args(args);
    let mut p = Proc::spawn(&format!("chatserver {index}"), cmd);
    let lines = p.wait_stderr("ready");
    (p, lines)
}

/// Stops the server listening on `bind` with SIGTERM; returns its counters
/// from the `stopped:` line and every stderr line read on the way.
///
/// A round trip first: `chatserver` installs its SIGTERM handler only once
/// its event loop runs, which is after it prints `ready`; a SIGTERM in
/// between kills it without the `stopped:` line (see the report).
fn stop(p: &mut Proc, bind: SocketAddr) -> (ServerCounters, Vec<String>) {
    Client::new(bind).expect_reply_prefix("/part", "-ERR ");
    kill(Pid::from_raw(p.pid()), Signal::SIGTERM).expect("SIGTERM");
    let lines = p.wait_stderr(" stopped: ");
    let status = p.wait_exit();
    assert!(status.success(), "{} exited with {status}", p.name);
    eprintln!("{}: {}", p.name, lines.last().unwrap());
    let last = lines.last().expect("stopped line");
    let stats = ServerCounters::from_stopped_line(last).expect("counters");
    (stats, lines)
}

fn secret_file(dir: &Scratch, name: &str, secret: &str) -> PathBuf {
    dir.write(name, &format!("{secret}\n"))
}

fn text(d: &[u8]) -> String {
    String::from_utf8_lossy(d).into_owned()
}

/// Every client got exactly `expected` (as a set, each once) and all of
/// them in one identical order; nothing more arrives afterwards.
fn check_total(clients: &[&Client], expected: &BTreeSet<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut first: Option<Vec<Vec<u8>>> = None;
    for c in clients {
        let got = c.recv_n(expected.len());
        let set: BTreeSet<Vec<u8>> = got.iter().cloned().collect();
        assert_eq!(
            set.len(),
            got.len(),
            "{}: a message arrived twice",
            c.addr()
        );
        assert_eq!(
            &set,
            expected,
            "{}: wrong messages; got {:?}",
            c.addr(),
            got.iter().map(|g| text(g)).collect::<Vec<_>>()
        );
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "{}: a different order", c.addr()),
        }
    }
    for c in clients {
        c.expect_silence(QUIET);
    }
    first.unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The relay on the forwarding addresses.

/// A packet the relay carried: (from server, to server, bytes).
type Packet = (usize, usize, Vec<u8>);

struct Relay {
    socks: Vec<Arc<UdpSocket>>,
    binds: Vec<SocketAddr>,
    /// (from server, to server, bytes) of every packet carried.
    captured: Arc<Mutex<Vec<Packet>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(binds: &[SocketAddr], fwds: &[SocketAddr]) -> Relay {
        let socks: Vec<Arc<UdpSocket>> = fwds
            .iter()
            .map(|f| {
                let s = UdpSocket::bind(f).expect("bind forwarding address");
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                Arc::new(s)
            })
            .collect();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..socks.len())
            .map(|j| {
                let socks = socks.clone();
                let binds = binds.to_vec();
                let captured = captured.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 70_000];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, src)) = socks[j].recv_from(&mut buf) else {
                            continue;
                        };
                        // Only packets from a server's socket are carried.
                        let Some(i) = binds.iter().position(|b| *b == src) else {
                            continue;
                        };
                        captured.lock().unwrap().push((i, j, buf[..n].to_vec()));
                        let _ = socks[i].send_to(&buf[..n], binds[j]);
                    }
                })
            })
            .collect();
        Relay {
            socks,
            binds: binds.to_vec(),
            captured,
            stop,
            threads,
        }
    }

    /// Sends `bytes` to server `to` from server `from`'s forwarding address.
    fn inject(&self, from: usize, to: usize, bytes: &[u8]) {
        self.socks[from]
            .send_to(bytes, self.binds[to])
            .expect("inject");
    }

    fn captured(&self) -> Vec<Packet> {
        self.captured.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A `total` strategy message, as a forger would write it.
fn total_msg_payload(counter: u64, room: u64, seq: u64, line: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(3)
        .u8(0)
        .varint(counter)
        .varint(room)
        .varint(seq)
        .bytes(line);
    w.finish()
}

// ---------------------------------------------------------------------------
// 1. Replayed, truncated, bit-flipped and forged peer packets.

#[test]
fn replayed_damaged_and_forged_peer_packets_are_dropped_and_counted() {
    let dir = Scratch::new("hostile-peer");
    let secret = "correct horse battery staple";
    let secret_path = secret_file(&dir, "secret.txt", secret);
    let key = node::cli::key_from_secret(secret.as_bytes());
    let wrong_key = node::cli::key_from_secret(b"not the cluster secret");
    let (cfg_text, binds, fwds) = legacy_config(3, true);
    let cfg = dir.write("servers.txt", &cfg_text);
    let relay = Relay::start(&binds, &fwds);
    let sp = secret_path.to_str().unwrap();
    let mut servers: Vec<Proc> = (1..=3)
        .map(|i| server(&cfg, i, &["-o", "total", "--secret-file", sp]).0)
        .collect();

    let clients: Vec<Client> = binds.iter().map(|b| Client::new(*b)).collect();
    for (k, c) in clients.iter().enumerate() {
        c.expect_reply(
            &format!("/nick c{k}"),
            &format!("+OK Nickname set to 'c{k}'"),
        );
        c.expect_reply("/join 1", "+OK You are now in chat room #1");
    }
    let all: Vec<&Client> = clients.iter().collect();
    let mut posted = 0u64;
    let mut post_round = |round: &str, expected: &mut BTreeSet<Vec<u8>>| {
        for (k, c) in clients.iter().enumerate() {
            for m in 0..3 {
                let t = format!("{round}-c{k}-{m}");
                c.send(&t);
                expected.insert(format!("<c{k}> {t}").into_bytes());
                posted += 1;
            }
        }
    };

    // Phase 1: the cluster works through the relay.
    let mut expected = BTreeSet::new();
    post_round("before", &mut expected);
    check_total(&all, &expected);

    // The relay saw authenticated datagrams carrying frames.
    let captured = relay.captured();
    let with_frames: Vec<&Packet> = captured
        .iter()
        .filter(|(_, _, w)| {
            let raw = open_datagram(w, Some(&key))
                .expect("a real peer packet opens with the cluster key");
            !Datagram::decode_raw(&raw)
                .expect("decodes")
                .0
                .frames
                .is_empty()
        })
        .collect();
    assert!(!with_frames.is_empty(), "no frames went through the relay");
    assert!(
        captured.iter().all(|(_, _, w)| !w.contains(&0)),
        "a peer packet contains NUL"
    );

    // Phase 2: attack every server while the clients chat.
    let mut bad = [0u64; 3];
    let mut replayed_frames = [0u64; 3];
    let mut expected = BTreeSet::new();
    post_round("during", &mut expected);
    for (n, (from, to, wire)) in captured.iter().take(60).enumerate() {
        let (from, to) = (*from, *to);
        let raw = open_datagram(wire, Some(&key)).unwrap();
        let (d, _) = Datagram::decode_raw(&raw).unwrap();
        // Replays: accepted as authentic, their frames are old.
        relay.inject(from, to, wire);
        relay.inject(from, to, wire);
        replayed_frames[to] += 2 * d.frames.len() as u64;
        // Truncated.
        relay.inject(from, to, &wire[..wire.len() / 2]);
        relay.inject(from, to, &wire[..wire.len() - 1]);
        bad[to] += 2;
        // One bit flipped, somewhere.
        let mut flipped = wire.clone();
        let at = (n * 7919) % flipped.len();
        flipped[at] ^= 1 << (n % 8);
        relay.inject(from, to, &flipped);
        bad[to] += 1;
        // Forged: a new chat message with the next sequence numbers, sealed
        // with a wrong key, and without any MAC.
        let evil = format!("<evil> forged {n}");
        let payload = total_msg_payload(1_000_000 + n as u64, 1, 1_000, evil.as_bytes());
        let next = d.frames.last().map_or(1, |f| f.0 + 1);
        let forged = Datagram {
            src_incarnation: d.src_incarnation,
            dst_incarnation: d.dst_incarnation,
            ack: d.ack,
            delivered: d.delivered,
            report_wanted: false,
            excluded: false,
            gaps: vec![],
            frames: (0..4).map(|k| (next + k, &payload[..])).collect(),
        };
        relay.inject(
            from,
            to,
            &seal_datagram(&forged.encode_raw(true), Some(&wrong_key)),
        );
        relay.inject(from, to, &seal_datagram(&forged.encode_raw(false), None));
        // Garbage and a packet that claims a MAC but carries none.
        relay.inject(from, to, &[0xC5, 1, 1, 2, 3]);
        relay.inject(from, to, b"hello, I am a server");
        bad[to] += 4;
    }
    let replays_sent: u64 = replayed_frames.iter().sum();
    eprintln!(
        "relay: {} packets captured ({} with frames); injected bad {bad:?}, replayed frames {replayed_frames:?}",
        captured.len(),
        with_frames.len()
    );
    assert!(replays_sent > 0);
    check_total(&all, &expected);

    // Phase 3: still fine afterwards.
    let mut expected = BTreeSet::new();
    post_round("after", &mut expected);
    check_total(&all, &expected);

    drop(relay);
    for (j, p) in servers.iter_mut().enumerate() {
        let (stats, _) = stop(p, binds[j]);
        assert_eq!(
            stats.bad_peer_datagrams,
            bad[j],
            "server {}: {stats:?}",
            j + 1
        );
        assert!(
            stats.duplicates + stats.stale >= replayed_frames[j],
            "server {}: {} replayed frames, duplicates+stale {}: {stats:?}",
            j + 1,
            replayed_frames[j],
            stats.duplicates + stats.stale
        );
        // Every message was delivered once on every server: no replay, no forgery.
        assert_eq!(stats.deliveries, posted, "server {}: {stats:?}", j + 1);
        assert_eq!(stats.posts, posted / 3, "server {}: {stats:?}", j + 1);
        assert_eq!(stats.bad_payloads, 0, "server {}: {stats:?}", j + 1);
        assert_eq!(stats.peer_restarts, 0, "server {}: {stats:?}", j + 1);
        assert_eq!(
            stats.held_back + stats.in_flight,
            0,
            "server {}: {stats:?}",
            j + 1
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Garbage floods.

/// A deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One garbage datagram, and whether the server answers it (`/quit` is
/// silent). Never a valid command, so the sender never becomes a member.
fn garbage(rng: &mut Rng, server_packet: &[u8]) -> (Vec<u8>, bool) {
    match rng.below(12) {
        0 => {
            // Random bytes, not starting with '/'.
            let n = 1 + rng.below(1000) as usize;
            let mut b = rng.bytes(n);
            if b[0] == b'/' {
                b[0] = b'x';
            }
            // Issue 13: text that looks like server output (`+OK`, `-ERR`,
            // `<`) from outside a room gets no reply (no ping-pong).
            let answered = !node::session::looks_like_server_output(&b);
            (b, answered)
        }
        1 => {
            let mut b = vec![0xC5, 1, rng.below(2) as u8];
            let n = rng.below(200) as usize;
            b.extend(rng.bytes(n));
            (b, true)
        }
        2 => (server_packet.to_vec(), true),
        3 => (vec![0u8; 1 + rng.below(1000) as usize], true),
        4 => (Vec::new(), true),
        5 => {
            // Too long: 1001 bytes, or (rarely) about 64 KB.
            let n = if rng.below(20) == 0 {
                65_000
            } else {
                1001 + rng.below(3000) as usize
            };
            (vec![b'x'; n], true)
        }
        6 => {
            let mut b = b"/join ".to_vec();
            b.extend(
                [
                    &b"\xff\xfe"[..],
                    b"0",
                    b"11",
                    b"-1",
                    b"99999999999999999999",
                    b"1 2",
                    b"abc",
                    b"\x00",
                ][rng.below(8) as usize],
            );
            (b, true)
        }
        7 => {
            let mut b = b"/nick ".to_vec();
            b.extend(
                [
                    &b"<evil>"[..],
                    b"a\x01b",
                    b"\x7f",
                    &[b'n'; 33][..],
                    b"tab\there",
                    b"a>b",
                ][rng.below(6) as usize],
            );
            (b, true)
        }
        8 => (
            [
                &b"/part now"[..],
                b"/frobnicate",
                b"/JOIN 1",
                b"/",
                b"//",
                b"/join",
                b"/nick",
            ][rng.below(7) as usize]
                .to_vec(),
            true,
        ),
        9 => (
            [&b"/quit"[..], b"/quit bye", b"/quit\n"][rng.below(3) as usize].to_vec(),
            false,
        ),
        10 => {
            let mut b = b"/".to_vec();
            let n = rng.below(100) as usize;
            b.extend(rng.bytes(n));
            // A random command could be `/quit`; make it unknown.
            b.insert(1, b'~');
            (b, true)
        }
        _ => {
            let mut b = b"Hello \xff\xfe from nowhere ".to_vec();
            let n = rng.below(50) as usize;
            b.extend(rng.bytes(n));
            (b, true)
        }
    }
}

/// Servers under the garbage floods answer every garbage datagram: these
/// tests check that each one gets exactly one `-ERR`, so the `-ERR` rate
/// limits (issue 13; tested in `tests/abuse.rs`) are lifted here.
const FLOOD_ARGS: [&str; 8] = [
    "-o",
    "total",
    "--error-rate",
    "100000000",
    "--error-burst",
    "100000000",
    "--error-rate-total",
    "100000000",
];

/// Floods `target` from `senders` sockets in bursts, checking after each
/// burst that every answered datagram got exactly one `-ERR`. Runs until
/// `halt` is set or `max` datagrams went out; returns how many were sent.
fn flood(target: SocketAddr, senders: usize, seed: u64, max: usize, halt: &AtomicBool) -> usize {
    let socks: Vec<UdpSocket> = (0..senders)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind garbage sender"))
        .collect();
    let mut rng = Rng(seed | 1);
    // Something that looks exactly like a server packet (valid encoding).
    let payload = total_msg_payload(1, 1, 1, b"<evil> from a client socket");
    let server_packet = seal_datagram(
        &Datagram {
            src_incarnation: 1,
            dst_incarnation: 1,
            ack: 0,
            delivered: 0,
            report_wanted: false,
            excluded: false,
            gaps: vec![],
            frames: vec![(1, &payload[..])],
        }
        .encode_raw(false),
        None,
    );
    let mut sent = 0;
    let mut buf = vec![0u8; 70_000];
    while sent < max && !halt.load(Ordering::Relaxed) {
        let mut expect = vec![0usize; senders];
        for _ in 0..40 {
            let s = rng.below(senders as u64) as usize;
            let (d, answered) = garbage(&mut rng, &server_packet);
            socks[s].send_to(&d, target).expect("send garbage");
            expect[s] += usize::from(answered);
            sent += 1;
        }
        for (s, n) in expect.iter().enumerate() {
            for _ in 0..*n {
                socks[s].set_read_timeout(Some(WAIT)).unwrap();
                let (len, from) = socks[s]
                    .recv_from(&mut buf)
                    .expect("a reply to garbage in time");
                assert_eq!(from, target);
                assert!(
                    buf[..len].starts_with(b"-ERR "),
                    "garbage answered with {:?}",
                    text(&buf[..len])
                );
            }
        }
        // And nothing else (a second reply, or a delivery).
        for s in &socks {
            s.set_nonblocking(true).unwrap();
            if let Ok((len, _)) = s.recv_from(&mut buf) {
                panic!(
                    "unexpected datagram to a garbage sender: {:?}",
                    text(&buf[..len])
                );
            }
            s.set_nonblocking(false).unwrap();
        }
    }
    sent
}

#[test]
fn garbage_flood_does_not_disturb_chatting_clients() {
    let dir = Scratch::new("hostile-flood");
    let (cfg_text, binds, _) = legacy_config(3, false);
    let cfg = dir.write("servers.txt", &cfg_text);
    let mut servers: Vec<Proc> = (1..=3).map(|i| server(&cfg, i, &FLOOD_ARGS).0).collect();

    // Two members on the flooded server 1, one on each of the others, and
    // an "imposter" on server 1 that sends bytes of a server packet as chat.
    let members: Vec<Client> = [0, 0, 1, 2]
        .iter()
        .map(|&s| Client::new(binds[s]))
        .collect();
    for (k, c) in members.iter().enumerate() {
        c.expect_reply(
            &format!("/nick m{k}"),
            &format!("+OK Nickname set to 'm{k}'"),
        );
        c.expect_reply("/join 2", "+OK You are now in chat room #2");
    }
    let imposter = Client::new(binds[0]);
    imposter.expect_reply("/nick imp", "+OK Nickname set to 'imp'");
    imposter.expect_reply("/join 2", "+OK You are now in chat room #2");
    let outsider = Client::new(binds[0]);
    outsider.expect_reply("/join 3", "+OK You are now in chat room #3");

    let halt = Arc::new(AtomicBool::new(false));
    let flooder = {
        let halt = halt.clone();
        let target = binds[0];
        std::thread::spawn(move || flood(target, 24, 0x5EED, 50_000, &halt))
    };

    let payload = total_msg_payload(7, 2, 1, b"<imp> not really from a server");
    let fake = seal_datagram(
        &Datagram {
            src_incarnation: 5,
            dst_incarnation: 6,
            ack: 0,
            delivered: 0,
            report_wanted: false,
            excluded: false,
            gaps: vec![(1, 2)],
            frames: vec![(1, &payload[..])],
        }
        .encode_raw(false),
        None,
    );
    let mut expected = BTreeSet::new();
    for round in 0..10 {
        for (k, c) in members.iter().enumerate() {
            let t = format!("M{k}-{round:03}");
            c.send(&t);
            expected.insert(format!("<m{k}> {t}").into_bytes());
        }
    }
    imposter.send(&fake);
    let mut line = b"<imp> ".to_vec();
    line.extend_from_slice(&fake);
    expected.insert(line);
    imposter.send(b"\xC5\x01\x00\xff\xfe nul-free raw bytes");
    expected.insert(b"<imp> \xC5\x01\x00\xff\xfe nul-free raw bytes".to_vec());

    let mut everyone: Vec<&Client> = members.iter().collect();
    everyone.push(&imposter);
    check_total(&everyone, &expected);
    outsider.expect_silence(QUIET);

    halt.store(true, Ordering::Relaxed);
    let sent = flooder.join().expect("flood thread");
    eprintln!("flood: {sent} garbage datagrams while the clients chatted");
    assert!(sent >= 40, "the flood sent {sent} datagrams");

    // The flooded server still serves newcomers.
    let late = Client::new(binds[0]);
    late.expect_reply("/join 2", "+OK You are now in chat room #2");
    late.send("still alive");
    let want = format!("<{}> still alive", late.addr()).into_bytes();
    for c in everyone.iter().chain([&&late]) {
        assert_eq!(text(&c.recv()), text(&want));
    }

    let (s1, _) = stop(&mut servers[0], binds[0]);
    assert_eq!(
        s1.bad_peer_datagrams, 0,
        "client garbage is never peer traffic: {s1:?}"
    );
    assert!(s1.client_datagrams >= sent as u64, "{s1:?}");
    for (p, &bind) in servers[1..].iter_mut().zip(&binds[1..]) {
        let (s, _) = stop(p, bind);
        assert_eq!(s.bad_peer_datagrams, 0, "{s:?}");
    }
}

#[test]
fn garbage_flood_during_a_stress_run() {
    let dir = Scratch::new("hostile-stress");
    let (cfg_text, binds, _) = legacy_config(3, false);
    let cfg = dir.write("servers.txt", &cfg_text);
    let mut servers: Vec<Proc> = (1..=3).map(|i| server(&cfg, i, &FLOOD_ARGS).0).collect();

    let halt = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = binds
        .iter()
        .enumerate()
        .map(|(i, &target)| {
            let halt = halt.clone();
            std::thread::spawn(move || flood(target, 8, 0xF00D + i as u64, 100_000, &halt))
        })
        .collect();
    let mut cmd = Command::new(bin("launcher"));
    cmd.arg("stress").arg(&cfg).args([
        "--attach",
        "--ordering",
        "total",
        "--clients",
        "6",
        "--rooms",
        "2",
        "--messages",
        "30",
        "--timeout",
        "60",
    ]);
    let mut p = Proc::spawn("launcher stress", cmd);
    let out = p.wait_stdout("result:");
    let status = p.wait_exit();
    halt.store(true, Ordering::Relaxed);
    let sent: usize = flooders
        .into_iter()
        .map(|f| f.join().expect("flood thread"))
        .sum();
    eprintln!("flood: {sent} garbage datagrams during the stress run");
    assert!(
        status.success(),
        "stress failed under a garbage flood:\n{}",
        out.join("\n")
    );
    assert!(
        out.iter().any(|l| l.contains("result: PASS")),
        "{}",
        out.join("\n")
    );
    assert!(sent >= 3 * 40, "the flood sent {sent} datagrams");
    for (p, &bind) in servers.iter_mut().zip(&binds) {
        let (s, _) = stop(p, bind);
        assert_eq!(s.bad_peer_datagrams, 0, "{s:?}");
        assert_eq!(s.held_back + s.in_flight, 0, "{s:?}");
    }
}

// ---------------------------------------------------------------------------
// 3. Limits.

#[test]
fn client_limits_hold() {
    let dir = Scratch::new("hostile-limits");
    let (cfg_text, binds, _) = legacy_config(2, false);
    let cfg = dir.write("servers.txt", &cfg_text);
    let _s1 = server(&cfg, 1, &["-o", "fifo", "--max-clients", "3"]).0;
    let _s2 = server(&cfg, 2, &["-o", "fifo"]).0;

    // --max-clients 3: the 4th client is refused, until one quits.
    let c: Vec<Client> = (0..4).map(|_| Client::new(binds[0])).collect();
    for x in &c[..3] {
        x.expect_reply("/join 1", "+OK You are now in chat room #1");
    }
    c[3].expect_reply_prefix("/join 1", "-ERR Server is full");
    c[3].expect_reply_prefix("/nick late", "-ERR Server is full");
    c[3].expect_reply_prefix("hello?", "-ERR ");
    c[2].send("/quit");
    c[3].expect_reply("/join 1", "+OK You are now in chat room #1");
    let far = Client::new(binds[1]);
    far.expect_reply("/join 1", "+OK You are now in chat room #1");
    let room: Vec<&Client> = vec![&c[0], &c[1], &c[3], &far];

    // Nicknames: control characters, '<', '>', more than 32 bytes.
    for bad in [
        b"/nick a\x01b".to_vec(),
        b"/nick a\x7fb".to_vec(),
        b"/nick a<b".to_vec(),
        b"/nick <admin>".to_vec(),
        b"/nick a>b".to_vec(),
        [b"/nick ".as_slice(), &[b'n'; 33]].concat(),
        b"/nick x\x1b[31m".to_vec(),
    ] {
        c[0].send(&bad);
        let r = text(&c[0].recv());
        assert!(
            r.starts_with("-ERR Invalid nickname"),
            "{:?} -> {r:?}",
            text(&bad)
        );
    }
    let nick32 = "n".repeat(32);
    c[0].expect_reply(
        &format!("/nick {nick32}"),
        &format!("+OK Nickname set to '{nick32}'"),
    );

    // 1001 bytes are refused; 1000 bytes are delivered whole.
    c[0].send(vec![b'y'; 1001]);
    let r = text(&c[0].recv());
    assert!(r.starts_with("-ERR ") && r.contains("1001"), "{r:?}");
    c[0].send(vec![b'z'; 1000]);
    let mut want = format!("<{nick32}> ").into_bytes();
    want.extend(vec![b'z'; 1000]);
    for m in &room {
        assert_eq!(m.recv(), want);
    }

    // Invalid UTF-8 and other odd bytes pass through byte for byte.
    let odd: &[u8] = b"\xff\xfe\x80 half \xc3 \xed\xa0\x80 \x01\x1b[2J tab\t end\r";
    c[1].send(odd);
    let mut want = format!("<{}> ", c[1].addr()).into_bytes();
    want.extend_from_slice(odd);
    for m in &room {
        assert_eq!(m.recv(), want);
    }
    for m in &room {
        m.expect_silence(QUIET);
    }
}

// ---------------------------------------------------------------------------
// 4. Secrets.

#[test]
fn missing_secret_is_noted_once_and_mismatched_secrets_do_not_talk() {
    let dir = Scratch::new("hostile-secret");

    // One server alone needs no secret: no note.
    let (one, one_bind, _) = legacy_config(1, false);
    let one = dir.write("one.txt", &one);
    let (mut alone, lines) = server(&one, 1, &[]);
    let (_, more) = stop(&mut alone, one_bind[0]);
    assert!(
        !lines
            .iter()
            .chain(&more)
            .any(|l| l.contains("no cluster secret")),
        "{lines:?} {more:?}"
    );

    // Server 1 has secret A, server 2 secret B, server 3 none.
    let (cfg_text, binds, _) = legacy_config(3, false);
    let cfg = dir.write("servers.txt", &cfg_text);
    let a = secret_file(&dir, "a.txt", "secret A");
    let b = secret_file(&dir, "b.txt", "secret B");
    let (mut s1, l1) = server(
        &cfg,
        1,
        &["-o", "fifo", "--secret-file", a.to_str().unwrap()],
    );
    let (mut s2, l2) = server(
        &cfg,
        2,
        &["-o", "fifo", "--secret-file", b.to_str().unwrap()],
    );
    let (mut s3, l3) = server(&cfg, 3, &["-o", "fifo"]);
    assert!(
        !l1.iter()
            .chain(&l2)
            .any(|l| l.contains("no cluster secret")),
        "{l1:?} {l2:?}"
    );
    assert_eq!(
        l3.iter()
            .filter(|l| l.contains("no cluster secret"))
            .count(),
        1,
        "{l3:?}"
    );

    let c: Vec<Client> = binds.iter().map(|b| Client::new(*b)).collect();
    for x in &c {
        x.expect_reply("/join 1", "+OK You are now in chat room #1");
    }
    // Each server echoes its own client's message, and no other server
    // delivers it: not within a quiet period that spans several
    // retransmission timeouts and heartbeats.
    for (k, x) in c.iter().enumerate() {
        x.send(format!("from s{}", k + 1));
        assert_eq!(text(&x.recv()), format!("<{}> from s{}", x.addr(), k + 1));
    }
    let deadline = Instant::now() + Duration::from_millis(1_500);
    for x in &c {
        x.expect_silence(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
    }

    let (st1, _) = stop(&mut s1, binds[0]);
    let (st2, _) = stop(&mut s2, binds[1]);
    let (st3, more3) = stop(&mut s3, binds[2]);
    assert_eq!(
        more3
            .iter()
            .filter(|l| l.contains("no cluster secret"))
            .count(),
        0,
        "the note is printed once: {more3:?}"
    );
    for (n, st) in [(1, &st1), (2, &st2), (3, &st3)] {
        assert!(
            st.bad_peer_datagrams > 0,
            "server {n} counted no bad peer packets: {st:?}"
        );
        assert_eq!(
            st.link_datagrams_received, 0,
            "server {n} accepted a peer packet: {st:?}"
        );
        assert_eq!(st.deliveries, 1, "server {n}: {st:?}");
    }
}

/// `chatserver` prints `ready` before its SIGTERM handler is installed (the
/// handler is registered when `shutdown_signal()` is first polled, inside
/// the event loop), so a SIGTERM that follows `ready` at once kills it with
/// the default action: no `stopped:` counters, exit by signal. A launcher
/// that stops a node right after starting it sees the same. Fix: register
/// the signal streams before printing `ready`.
#[test]
fn sigterm_right_after_ready_still_prints_the_counters() {
    let dir = Scratch::new("hostile-sigterm");
    let (one, _, _) = legacy_config(1, false);
    let one = dir.write("one.txt", &one);
    for _ in 0..5 {
        let (mut p, _) = server(&one, 1, &[]);
        kill(Pid::from_raw(p.pid()), Signal::SIGTERM).expect("SIGTERM");
        let lines = p.wait_stderr(" stopped: ");
        assert!(p.wait_exit().success());
        assert!(ServerCounters::from_stopped_line(lines.last().unwrap()).is_some());
    }
}
