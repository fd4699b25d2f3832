//! The plugin extension point (issue #7): the `lamport` strategy defined in
//! `examples/lamport/mod.rs`, outside the `orderings` crate.
//!
//! - the deterministic simulator over many seeds, on lossy, duplicating,
//!   reordering links, with and without a crash and restart
//!   (`SIM_SEEDS=N` changes the count, `SIM_SEED=S` runs one seed);
//! - a small model of FIFO links in which restarted servers get new clients
//!   that post at once (the simulator gives them none);
//! - the example binary `lamport_server` lists it next to the built-in modes;
//! - a real 3-server cluster of that binary running `-o lamport`, checked by
//!   hand and by `launcher stress --attach`.

mod support;

#[path = "../examples/lamport/mod.rs"]
mod lamport;

use bytes::Bytes;
use lamport::Lamport;
use orderings::{Dest, MsgId, Ordering, Outbox, Post, ServerId, StrategyContext, Time};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::{Client, Proc, Scratch, WAIT, legacy_config};
use testkit::SimRng;
use testkit::sim::{self, Crash, Network, SimConfig};

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.parse().expect("SIM_SEED must be a number")];
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

fn spec() -> &'static orderings::StrategySpec {
    orderings::lookup(lamport::link()).expect("the lamport strategy is registered")
}

#[test]
fn lamport_is_registered_once_next_to_the_builtins() {
    let names: Vec<&str> = orderings::registered().iter().map(|s| s.name).collect();
    for want in ["lamport", "unordered", "fifo", "total", "causal"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(orderings::duplicate_names().is_empty(), "{names:?}");
    let g = spec().guarantees;
    assert!(g.fifo && g.total && g.causal, "{g}");
}

fn simulate(default_seeds: u64, crash: bool) {
    let started = Instant::now();
    let seeds = seeds(default_seeds);
    let (mut datagrams, mut dropped, mut virtual_us) = (0u64, 0u64, 0u64);
    for &seed in &seeds {
        let mut cfg = SimConfig::random(seed, Network::Links);
        // Lamport does not relay a crashed server's messages among the
        // survivors: what reached only some of them stays there.
        cfg.agree_on_departed = false;
        if crash {
            let mut rng = SimRng::new(seed ^ 0xC4A5);
            cfg.crash = Some(Crash {
                server: ServerId(rng.below(cfg.servers as u64) as u16),
                at: Time(rng.range(0, 30_000)),
                down_us: rng.range(1_000, 200_000),
            });
        }
        let out = sim::run(spec(), cfg);
        assert!(
            out.passed(),
            "lamport failed.\nre-run: SIM_SEED={seed} cargo test --test plugin {} -- --nocapture\n{}",
            if crash { "crash" } else { "links" },
            out.explain()
        );
        datagrams += out.datagrams;
        dropped += out.dropped;
        virtual_us += out.end.as_micros();
    }
    eprintln!(
        "lamport: {} simulations (links, crash: {crash}) passed in {:?}: {datagrams} datagrams, {dropped} lost, {:.1}s virtual",
        seeds.len(),
        started.elapsed(),
        virtual_us as f64 / 1e6
    );
}

/// Exactly once, FIFO, one order per room, causal: what `lamport` claims,
/// over links with loss (up to 20%), duplication and reordering.
#[test]
fn simulator_links_with_loss_duplication_and_reordering() {
    simulate(400, false);
}

/// One server crashes and comes back as a new incarnation.
#[test]
fn simulator_crash_and_restart() {
    simulate(300, true);
}

// ---------------------------------------------------------------------------
// The example binary.

/// `target/<profile>/examples/lamport_server`, built once per test process
/// (`cargo test --test plugin` alone does not build examples).
fn example_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // target/<profile>/deps/plugin-xxxx -> target/<profile>
            let exe = std::env::current_exe().expect("current_exe");
            let profile_dir = exe
                .parent()
                .and_then(|d| d.parent())
                .expect("test binary lives in target/<profile>/deps")
                .to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "chatroom",
                "--example",
                "lamport_server",
            ]);
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cannot run cargo to build the example");
            assert!(
                status.success(),
                "building the lamport_server example failed"
            );
            let p = profile_dir.join("examples").join("lamport_server");
            assert!(p.exists(), "{} not found after the build", p.display());
            p
        })
        .clone()
}

#[test]
fn example_help_lists_lamport_and_the_builtin_modes() {
    let out = Command::new(example_bin())
        .arg("--help")
        .output()
        .expect("run lamport_server --help");
    assert!(out.status.success(), "--help failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let modes: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Ordering modes:"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for want in ["lamport", "unordered", "fifo", "total", "causal"] {
        assert!(
            modes.contains(&want),
            "mode {want} not listed in --help: {modes:?}\n{text}"
        );
    }
    let lamport_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("lamport "))
        .unwrap();
    assert!(lamport_line.contains("fifo+causal+total"), "{lamport_line}");
}

/// A running cluster of `lamport_server -o lamport`.
struct Cluster {
    dir: Scratch,
    config: PathBuf,
    _servers: Vec<Proc>,
    binds: Vec<SocketAddr>,
}

fn lamport_cluster(n: usize) -> Cluster {
    let dir = Scratch::new("plugin");
    let (text, binds, _) = legacy_config(n, false);
    let config = dir.write("servers.txt", &text);
    let servers = (1..=n)
        .map(|i| {
            let mut cmd = Command::new(example_bin());
            cmd.arg(&config).arg(i.to_string()).args(["-o", "lamport"]);
            let mut p = Proc::spawn(&format!("lamport_server {i}"), cmd);
            let lines = p.wait_stderr("ready");
            assert!(
                lines.last().is_some_and(|l| l.contains("ordering lamport")),
                "server {i} did not start in mode lamport: {lines:?}"
            );
            p
        })
        .collect();
    Cluster {
        dir,
        config,
        _servers: servers,
        binds,
    }
}

/// `<cK> cK-SEQ` -> (K, SEQ).
fn parse_delivery(d: &[u8]) -> (usize, u32) {
    let text = String::from_utf8_lossy(d);
    let parsed = text
        .strip_prefix("<c")
        .and_then(|t| t.split_once("> c"))
        .and_then(|(k, body)| {
            let (k2, seq) = body.split_once('-')?;
            (k == k2).then_some(())?;
            Some((k.parse().ok()?, seq.parse().ok()?))
        });
    parsed.unwrap_or_else(|| panic!("unexpected datagram {text:?}"))
}

/// Six clients on three servers in one room, all sending at once: each gets
/// every message once, all in one order, each sender's in its order; a
/// client in another room gets none of them.
#[test]
fn three_servers_running_lamport_deliver_one_order() {
    const PER_CLIENT: u32 = 25;
    let c = lamport_cluster(3);
    let clients: Vec<Client> = (0..6).map(|k| Client::new(c.binds[k % 3])).collect();
    for (k, cl) in clients.iter().enumerate() {
        cl.expect_reply(
            &format!("/nick c{k}"),
            &format!("+OK Nickname set to 'c{k}'"),
        );
        cl.expect_reply("/join 4", "+OK You are now in chat room #4");
    }
    let outsider = Client::new(c.binds[1]);
    outsider.expect_reply("/join 5", "+OK You are now in chat room #5");

    for seq in 1..=PER_CLIENT {
        for (k, cl) in clients.iter().enumerate() {
            cl.send(format!("c{k}-{seq}"));
        }
    }
    let total = clients.len() * PER_CLIENT as usize;
    let orders: Vec<Vec<(usize, u32)>> = clients
        .iter()
        .map(|cl| cl.recv_n(total).iter().map(|d| parse_delivery(d)).collect())
        .collect();
    for (k, order) in orders.iter().enumerate() {
        let unique: HashSet<_> = order.iter().collect();
        assert_eq!(
            unique.len(),
            total,
            "client c{k} got a duplicate: {order:?}"
        );
        let mut next = vec![1u32; clients.len()];
        for &(sender, seq) in order {
            assert_eq!(
                seq, next[sender],
                "client c{k}: c{sender}'s messages out of order: {order:?}"
            );
            next[sender] += 1;
        }
        assert_eq!(
            order, &orders[0],
            "clients c{k} and c0 saw different orders"
        );
    }
    for cl in &clients {
        cl.expect_silence(Duration::from_millis(100));
    }
    outsider.expect_silence(Duration::from_millis(100));
}

/// `launcher stress --attach` against the running lamport cluster. The
/// launcher does not link the plugin, so it cannot know what `lamport`
/// claims: `--check all` asks for every property (exactly once, FIFO, total
/// and causal order).
#[test]
fn launcher_stress_checks_a_lamport_cluster() {
    let c = lamport_cluster(3);
    let json = c.dir.path().join("report.json");
    let mut cmd = Command::new(support::bin("launcher"));
    cmd.arg("stress")
        .arg(&c.config)
        .args(["--attach", "-o", "lamport", "--check", "all"])
        .args([
            "--clients",
            "9",
            "--rooms",
            "3",
            "--messages",
            "40",
            "--quiet",
        ])
        .args(["--timeout", &WAIT.as_secs().to_string()])
        .arg("--json")
        .arg(&json);
    let out = cmd.output().expect("run launcher stress");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stress failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("stress wrote its report"))
            .expect("report is JSON");
    assert_eq!(report["ok"], serde_json::Value::Bool(true), "{report:#}");
}

// ---------------------------------------------------------------------------
// Restarts with new clients. The simulator's restarted server gets no clients
// (its old ones died with it), so it never posts; this model does: per-peer
// FIFO channels that lose what was addressed to a dead incarnation (as the
// links do), heartbeats that introduce incarnations, servers that crash and
// come back at random moments, and posts from clients of every incarnation.

/// A frame on the channel `from -> to`: `None` is a heartbeat.
struct Frame {
    src_inc: u64,
    /// The receiver's incarnation as the sender knew it (0: not yet known).
    dst_inc: u64,
    payload: Option<Bytes>,
}

struct Model {
    rng: SimRng,
    n: usize,
    nodes: Vec<Lamport>,
    inc: Vec<u64>,
    /// `known[to][from]`: the incarnation of `from` that `to` talks to.
    known: Vec<Vec<u64>>,
    chans: Vec<Vec<VecDeque<Frame>>>,
    /// Delivery log of every incarnation: `(server, incarnation)` -> ids.
    logs: HashMap<(usize, u64), Vec<MsgId>>,
    /// Per client (`server`, `incarnation`): its messages in send order.
    sent: HashMap<(usize, u64), Vec<MsgId>>,
    next_counter: u64,
}

impl Model {
    fn new(seed: u64, n: usize) -> Model {
        let mut m = Model {
            rng: SimRng::new(seed),
            n,
            nodes: Vec::new(),
            inc: vec![1; n],
            known: vec![vec![0; n]; n],
            chans: (0..n)
                .map(|_| (0..n).map(|_| VecDeque::new()).collect())
                .collect(),
            logs: HashMap::new(),
            sent: HashMap::new(),
            next_counter: 1,
        };
        m.nodes = (0..n).map(|s| m.build(s)).collect();
        for s in 0..n {
            m.announce(s);
        }
        m
    }

    fn build(&self, s: usize) -> Lamport {
        Lamport::new(&StrategyContext {
            me: ServerId(s as u16),
            servers: self.n,
            incarnation: self.inc[s],
            window: orderings::DEFAULT_WINDOW,
        })
    }

    /// A (re)started server's links send heartbeats at once.
    fn announce(&mut self, s: usize) {
        for p in (0..self.n).filter(|&p| p != s) {
            let f = Frame {
                src_inc: self.inc[s],
                dst_inc: 0,
                payload: None,
            };
            self.chans[s][p].push_back(f);
        }
    }

    fn apply(&mut self, s: usize, out: Outbox) {
        for (dest, payload) in out.sends {
            let targets: Vec<usize> = match dest {
                Dest::Peer(p) => vec![p.index()],
                Dest::AllPeers => (0..self.n).filter(|&p| p != s).collect(),
            };
            for p in targets {
                let f = Frame {
                    src_inc: self.inc[s],
                    dst_inc: self.known[s][p],
                    payload: Some(payload.clone()),
                };
                self.chans[s][p].push_back(f);
            }
        }
        let log = self.logs.entry((s, self.inc[s])).or_default();
        log.extend(out.deliveries.iter().map(|d| d.id));
    }

    fn post(&mut self, s: usize) {
        let id = MsgId {
            origin: ServerId(s as u16),
            counter: self.next_counter,
        };
        self.next_counter += 1;
        let client = self.sent.entry((s, self.inc[s])).or_default();
        client.push(id);
        let mut out = Outbox::default();
        let post = Post {
            id,
            room: 1 + (id.counter % 2) as u32,
            line: Bytes::from(format!("<s{s}> {}", id.counter)),
        };
        self.nodes[s].handle_post(Time::ZERO, post, &mut out);
        self.apply(s, out);
    }

    fn crash(&mut self, s: usize) {
        self.inc[s] += 1;
        self.nodes[s] = self.build(s);
        self.known[s] = vec![0; self.n];
        // What the dead incarnation had not yet received is gone with it;
        // what it sent may still arrive.
        for from in 0..self.n {
            self.chans[from][s].clear();
        }
        self.announce(s);
    }

    /// The head of channel `from -> to` arrives.
    fn arrive(&mut self, from: usize, to: usize) {
        let Some(f) = self.chans[from][to].pop_front() else {
            return;
        };
        if f.dst_inc != 0 && f.dst_inc != self.inc[to] || f.src_inc < self.known[to][from] {
            return; // stale
        }
        let mut out = Outbox::default();
        if f.src_inc > self.known[to][from] {
            let restarted = self.known[to][from] != 0;
            self.known[to][from] = f.src_inc;
            if restarted {
                // The link starts afresh: frames for the old incarnation are lost.
                self.chans[to][from].retain(|g| g.payload.is_none());
            } else {
                for g in &mut self.chans[to][from] {
                    if g.dst_inc == 0 {
                        g.dst_inc = f.src_inc;
                    }
                }
            }
            // The link answers at once, so the peer learns us too.
            let hb = Frame {
                src_inc: self.inc[to],
                dst_inc: f.src_inc,
                payload: None,
            };
            self.chans[to][from].push_back(hb);
            self.nodes[to].handle_peer_incarnation(
                Time::ZERO,
                ServerId(from as u16),
                f.src_inc,
                restarted,
                &mut out,
            );
        }
        if let Some(p) = f.payload {
            self.nodes[to]
                .handle_peer(Time::ZERO, ServerId(from as u16), &p, &mut out)
                .expect("well-formed payload over FIFO links");
        }
        self.apply(to, out);
    }

    fn busy_channels(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for f in 0..self.n {
            for t in 0..self.n {
                if !self.chans[f][t].is_empty() {
                    v.push((f, t));
                }
            }
        }
        v
    }

    /// Random posts, arrivals and crashes, then runs until quiet.
    fn run(&mut self, posts: usize, crashes: usize) {
        let (mut posted, mut crashed) = (0, 0);
        loop {
            let busy = self.busy_channels();
            let r = self.rng.below(100);
            if posted < posts && (r < 25 || busy.is_empty()) {
                let s = self.rng.below(self.n as u64) as usize;
                self.post(s);
                posted += 1;
            } else if crashed < crashes && r < 28 && posted > 0 {
                let s = self.rng.below(self.n as u64) as usize;
                self.crash(s);
                crashed += 1;
            } else if let Some(&(f, t)) = busy.get(self.rng.below(busy.len() as u64) as usize) {
                self.arrive(f, t);
            } else {
                break;
            }
        }
    }

    /// One order, exactly once, FIFO per client; every never-crashed server
    /// delivered every message of every client whose server never crashed.
    fn check(&self) -> Result<(), String> {
        let mut logs: Vec<(&(usize, u64), &Vec<MsgId>)> = self.logs.iter().collect();
        logs.sort();
        let pos: Vec<HashMap<MsgId, usize>> = logs
            .iter()
            .map(|(_, l)| l.iter().enumerate().map(|(i, &m)| (m, i)).collect())
            .collect();
        for (k, (who, log)) in logs.iter().enumerate() {
            if pos[k].len() != log.len() {
                return Err(format!("{who:?} delivered a message twice: {log:?}"));
            }
            for (client, msgs) in &self.sent {
                let at: Vec<usize> = msgs.iter().filter_map(|m| pos[k].get(m).copied()).collect();
                if at.windows(2).any(|w| w[0] > w[1]) {
                    return Err(format!("{who:?} broke the FIFO order of client {client:?}"));
                }
            }
            for (j, (other, olog)) in logs.iter().enumerate().skip(k + 1) {
                let common_a: Vec<MsgId> = log
                    .iter()
                    .filter(|m| pos[j].contains_key(m))
                    .copied()
                    .collect();
                let common_b: Vec<MsgId> = olog
                    .iter()
                    .filter(|m| pos[k].contains_key(m))
                    .copied()
                    .collect();
                if common_a != common_b {
                    return Err(format!(
                        "{who:?} and {other:?} disagree:\n{common_a:?}\n{common_b:?}"
                    ));
                }
            }
        }
        let stable: Vec<usize> = (0..self.n).filter(|&s| self.inc[s] == 1).collect();
        for &s in &stable {
            let k = logs.iter().position(|(w, _)| **w == (s, 1));
            for &c in &stable {
                for m in self.sent.get(&(c, 1)).into_iter().flatten() {
                    if !k.is_some_and(|k| pos[k].contains_key(m)) {
                        return Err(format!(
                            "server {s} never delivered {m} from stable server {c}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A restarted server's new clients post at once; their messages must not
/// be ordered before what other servers already delivered (the `HELLO`
/// handshake), and the survivors must keep one order.
#[test]
fn restarted_server_with_new_clients_keeps_one_order() {
    let started = Instant::now();
    let seeds = seeds(600);
    for &seed in &seeds {
        let mut rng = SimRng::new(seed ^ 0x1A3B);
        let n = rng.range(2, 4) as usize;
        let posts = rng.range(5, 60) as usize;
        let crashes = rng.range(1, 3) as usize;
        let mut m = Model::new(seed, n);
        m.run(posts, crashes);
        if let Err(e) = m.check() {
            panic!(
                "seed {seed} ({n} servers, {posts} posts, {crashes} crashes): {e}\nre-run: SIM_SEED={seed} cargo test --test plugin restarted -- --nocapture"
            );
        }
    }
    eprintln!(
        "lamport restart model: {} seeds in {:?}",
        seeds.len(),
        started.elapsed()
    );
}
