//! Throughput of every registered strategy's state machine, without sockets.
//!
//! `cargo bench -p orderings --bench strategies [-- NAME...]`
//!
//! Three servers in one process, every message posted to room 1 (a member on
//! every server), 100-byte lines, origins taken round robin. Each figure is
//! messages per second for which *every* server delivered the message (one
//! post -> three deliveries), on one core:
//!
//! - `raw`: the strategies alone, their payloads handed to each other through
//!   an in-memory FIFO queue (no link layer, no encoding of datagrams);
//! - `replica`: [`Replica`]s (strategy + reliable links: framing, batching,
//!   acknowledgements), datagrams passed in memory, a virtual clock advancing
//!   10 µs per message so delayed acknowledgements go out as in production;
//! - `replica+mac`: the same with a cluster secret (every datagram sealed
//!   and checked with a keyed BLAKE3 tag), as `chatserver` runs by default.
//!
//! Two ways of feeding them:
//! - `1-by-1`: post one message, run until every server delivered it, next
//!   (the latency-bound case: nothing to batch);
//! - `burst 32`: post 32 messages (origins round robin), then run until all
//!   are delivered everywhere (links batch frames into datagrams).
//!
//! Every cell runs for at most `CELL_TIME` (or `MAX_MESSAGES`), so the whole
//! table takes well under 30 s in release. Without `--bench` (e.g. built
//! and run by `cargo test --benches`), it runs a few hundred messages per cell
//! as a smoke test. Any lost or extra delivery aborts with an error.

use bytes::Bytes;
use orderings::{
    Dest, MsgId, Ordering, Outbox, Post, Replica, ReplicaConfig, ServerId, StrategyContext,
    StrategySpec, Time,
};
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

const SERVERS: usize = 3;
const ROOM: u32 = 1;
const LINE_BYTES: usize = 100;
const CELL_TIME: Duration = Duration::from_millis(700);
const MAX_MESSAGES: u64 = 2_000_000;
const SMOKE_MESSAGES: u64 = 300;
const BURST: usize = 32;
/// Virtual time per message in the replica runs (100,000 messages/s).
const STEP_US: u64 = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Net {
    Raw,
    Replica,
    ReplicaMac,
}

impl Net {
    fn name(self) -> &'static str {
        match self {
            Net::Raw => "raw",
            Net::Replica => "replica",
            Net::ReplicaMac => "replica+mac",
        }
    }
}

/// What one cell measured.
struct Figures {
    messages: u64,
    elapsed: Duration,
    deliveries: u64,
    /// Strategy payloads (raw) or datagrams (replica) passed between servers.
    packets: u64,
}

impl Figures {
    fn per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn ns_per_msg(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.messages.max(1) as f64
    }
    fn packets_per_msg(&self) -> f64 {
        self.packets as f64 / self.messages.max(1) as f64
    }
}

fn line() -> Bytes {
    let mut s = String::from("<c0> c0-s1-r1-000001");
    while s.len() < LINE_BYTES {
        s.push('.');
    }
    Bytes::from(s)
}

/// The harness both networks implement.
trait Cluster {
    /// Posts one message at `origin` (does not run the network).
    fn post(&mut self, origin: usize);
    /// Runs the network until nothing is left to do.
    fn drain(&mut self);
    fn deliveries(&self) -> u64;
    fn packets(&self) -> u64;
}

/// Strategies wired to each other directly.
struct RawCluster {
    nodes: Vec<Box<dyn Ordering>>,
    queue: VecDeque<(usize, ServerId, Bytes)>,
    out: Outbox,
    counters: Vec<u64>,
    line: Bytes,
    deliveries: u64,
    packets: u64,
}

impl RawCluster {
    fn new(spec: &StrategySpec) -> Self {
        let mut nodes = Vec::new();
        let mut out = Outbox::default();
        for me in 0..SERVERS {
            let ctx = StrategyContext {
                me: ServerId(me as u16),
                servers: SERVERS,
                incarnation: 1,
                window: orderings::DEFAULT_WINDOW,
            };
            let mut s = (spec.build)(&ctx);
            for p in (0..SERVERS).filter(|&p| p != me) {
                s.handle_peer_incarnation(Time::ZERO, ServerId(p as u16), 1, false, &mut out);
            }
            nodes.push(s);
        }
        let mut c = RawCluster {
            nodes,
            queue: VecDeque::new(),
            out: Outbox::default(),
            counters: vec![1; SERVERS],
            line: line(),
            deliveries: 0,
            packets: 0,
        };
        // Whatever the introductions produced (nothing, for the built-ins).
        c.out = out;
        c.route(0);
        c.out = Outbox::default();
        c
    }

    fn route(&mut self, from: usize) {
        let me = ServerId(from as u16);
        for (dest, payload) in self.out.sends.drain(..) {
            match dest {
                Dest::Peer(p) => self.queue.push_back((p.index(), me, payload)),
                Dest::AllPeers => {
                    for p in (0..SERVERS).filter(|&p| p != from) {
                        self.queue.push_back((p, me, payload.clone()));
                    }
                }
            }
        }
        self.deliveries += self.out.deliveries.len() as u64;
        black_box(&self.out.deliveries);
        self.out.deliveries.clear();
        self.out.incarnation_hints.clear();
    }
}

impl Cluster for RawCluster {
    fn post(&mut self, origin: usize) {
        let id = MsgId {
            origin: ServerId(origin as u16),
            counter: self.counters[origin],
        };
        self.counters[origin] += 1;
        let post = Post {
            id,
            room: ROOM,
            line: self.line.clone(),
        };
        self.nodes[origin].handle_post(Time::ZERO, post, &mut self.out);
        self.route(origin);
    }

    fn drain(&mut self) {
        while let Some((to, from, data)) = self.queue.pop_front() {
            self.packets += 1;
            self.nodes[to]
                .handle_peer(Time::ZERO, from, &data, &mut self.out)
                .expect("a strategy payload failed to decode");
            self.route(to);
        }
    }

    fn deliveries(&self) -> u64 {
        self.deliveries
    }
    fn packets(&self) -> u64 {
        self.packets
    }
}

/// Full replicas, datagrams passed in memory.
struct ReplicaCluster {
    nodes: Vec<Replica>,
    now: Time,
    line: Bytes,
    deliveries: u64,
    packets: u64,
    pending: Vec<(usize, usize, Vec<u8>)>,
}

impl ReplicaCluster {
    fn new(spec: &StrategySpec, mac: bool) -> Self {
        let nodes = (0..SERVERS)
            .map(|me| {
                let mut cfg = ReplicaConfig::new(ServerId(me as u16), SERVERS, 1);
                if mac {
                    cfg.key = Some(*b"benchmark secret, 32 bytes long!");
                }
                let ctx = StrategyContext {
                    me: ServerId(me as u16),
                    servers: SERVERS,
                    incarnation: 1,
                    window: orderings::DEFAULT_WINDOW,
                };
                Replica::new(cfg, (spec.build)(&ctx))
            })
            .collect();
        let mut c = ReplicaCluster {
            nodes,
            now: Time::from_micros(1),
            line: line(),
            deliveries: 0,
            packets: 0,
            pending: Vec::new(),
        };
        // Heartbeats introduce the incarnations before any frame may flow.
        c.drain();
        c.packets = 0;
        c
    }

    fn tick(&mut self) {
        self.now = self.now.plus_micros(STEP_US);
        let now = self.now;
        for r in &mut self.nodes {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
            }
        }
    }
}

impl Cluster for ReplicaCluster {
    fn post(&mut self, origin: usize) {
        self.tick();
        let now = self.now;
        self.nodes[origin]
            .post(now, ROOM, self.line.clone())
            .expect("post refused (congested)");
    }

    fn drain(&mut self) {
        let now = self.now;
        loop {
            for (i, r) in self.nodes.iter_mut().enumerate() {
                while let Some(t) = r.poll_transmit(now) {
                    self.pending.push((i, t.to.index(), t.payload));
                }
                while let Some(d) = r.poll_delivery() {
                    black_box(&d);
                    self.deliveries += 1;
                }
            }
            if self.pending.is_empty() {
                break;
            }
            for (from, to, data) in self.pending.drain(..) {
                self.packets += 1;
                self.nodes[to]
                    .handle_datagram(now, ServerId(from as u16), &data)
                    .expect("a datagram failed to decode");
            }
        }
    }

    fn deliveries(&self) -> u64 {
        self.deliveries
    }
    fn packets(&self) -> u64 {
        self.packets
    }
}

fn measure(c: &mut dyn Cluster, burst: usize, max: u64, cap: Duration) -> Result<Figures, String> {
    let start = Instant::now();
    let mut posted = 0u64;
    let mut origin = 0usize;
    while posted < max {
        for _ in 0..burst {
            c.post(origin);
            origin = (origin + 1) % SERVERS;
        }
        posted += burst as u64;
        c.drain();
        if posted % 256 < burst as u64 && start.elapsed() >= cap {
            break;
        }
    }
    let elapsed = start.elapsed();
    let expected = posted * SERVERS as u64;
    if c.deliveries() != expected {
        return Err(format!(
            "{} deliveries for {posted} messages, expected {expected}",
            c.deliveries()
        ));
    }
    Ok(Figures {
        messages: posted,
        elapsed,
        deliveries: c.deliveries(),
        packets: c.packets(),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let (max, cap) = if bench {
        (MAX_MESSAGES, CELL_TIME)
    } else {
        (SMOKE_MESSAGES, Duration::from_secs(5))
    };
    let specs: Vec<&'static StrategySpec> = orderings::registered()
        .into_iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
        .collect();
    println!(
        "strategies: {SERVERS} servers in memory, one room with a member on each, {LINE_BYTES}-byte lines, \
         one core{}",
        if bench {
            ""
        } else {
            " (smoke run: pass --bench for figures)"
        }
    );
    println!(
        "{:<10} {:<12} {:<9} {:>12} {:>10} {:>11} {:>10}",
        "strategy", "network", "feed", "messages/s", "ns/msg", "pkts/msg", "messages"
    );
    let started = Instant::now();
    let mut failed = false;
    for spec in specs {
        for net in [Net::Raw, Net::Replica, Net::ReplicaMac] {
            for burst in [1usize, BURST] {
                let mut cluster: Box<dyn Cluster> = match net {
                    Net::Raw => Box::new(RawCluster::new(spec)),
                    Net::Replica => Box::new(ReplicaCluster::new(spec, false)),
                    Net::ReplicaMac => Box::new(ReplicaCluster::new(spec, true)),
                };
                let feed = if burst == 1 {
                    "1-by-1".to_string()
                } else {
                    format!("burst {burst}")
                };
                match measure(cluster.as_mut(), burst, max, cap) {
                    Ok(f) => {
                        debug_assert_eq!(f.deliveries, f.messages * SERVERS as u64);
                        println!(
                            "{:<10} {:<12} {:<9} {:>12.0} {:>10.0} {:>11.2} {:>10}",
                            spec.name,
                            net.name(),
                            feed,
                            f.per_s(),
                            f.ns_per_msg(),
                            f.packets_per_msg(),
                            f.messages
                        );
                    }
                    Err(e) => {
                        failed = true;
                        println!(
                            "{:<10} {:<12} {:<9} FAILED: {e}",
                            spec.name,
                            net.name(),
                            feed
                        );
                    }
                }
            }
        }
    }
    println!(
        "(pkts/msg: strategy payloads between servers for raw, datagrams for replica; took {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    if failed {
        std::process::exit(1);
    }
}
