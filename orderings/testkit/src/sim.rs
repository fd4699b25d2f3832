//! A deterministic simulator: N servers running a strategy, a virtual clock,
//! a seeded network that delays, reorders, loses and duplicates datagrams,
//! clients posting to rooms, optional crash-and-restart of a server, and
//! membership faults ([`Fault`]: a server killed for good, a server paused
//! and maybe resumed, a partition and maybe its heal). One
//! seed reproduces a run exactly (VOPR style); a failing run prints its seed
//! and the tail of a readable event trace.
//!
//! Two network modes:
//! - [`Network::Links`]: full replicas (strategy + reliable links) over a
//!   lossy, duplicating, reordering network; what runs in production.
//! - [`Network::Raw`]: strategies wired directly to each other over a
//!   network that reorders but never loses (no link layer), which shows a
//!   strategy's own logic does not lean on FIFO channels.

use crate::SimRng;
use crate::check::{History, MemberOpts, MessageId, Properties, Report};
use bytes::Bytes;
use orderings::{
    Dest, MembershipConfig, MsgId, Ordering, Outbox, Post, Replica, ReplicaConfig, ReplicaEvent,
    RoomId, ServerId, StrategyContext, StrategySpec, Time,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Which network the servers talk over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Full replicas over a lossy, duplicating, reordering network.
    Links,
    /// Strategies wired to each other over a reordering, lossless network.
    Raw,
}

/// A crash of one server at a virtual time, restarted after `down_us`.
#[derive(Debug, Clone, Copy)]
pub struct Crash {
    /// The server that crashes.
    pub server: ServerId,
    /// When.
    pub at: Time,
    /// How long it stays down before restarting as a new incarnation.
    pub down_us: u64,
}

/// A fault the membership layer must survive.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The server stops at `at` and never comes back.
    Kill {
        /// The server.
        server: ServerId,
        /// When.
        at: Time,
    },
    /// The server freezes at `at` (SIGSTOP: it neither runs nor reads;
    /// what arrives waits), and resumes `for_us` later, or never.
    Pause {
        /// The server.
        server: ServerId,
        /// When.
        at: Time,
        /// How long; `None` = never resumed.
        for_us: Option<u64>,
    },
    /// From `at`, nothing passes between `side` and the other servers; the
    /// partition heals `for_us` later, or never.
    Partition {
        /// One side (the rest is the other).
        side: Vec<ServerId>,
        /// When.
        at: Time,
        /// How long; `None` = never healed.
        for_us: Option<u64>,
    },
}

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// Servers in the cluster.
    pub servers: usize,
    /// Rooms the clients spread over.
    pub rooms: u32,
    /// Clients, spread over the servers.
    pub clients: usize,
    /// Posts per client.
    pub messages_per_client: usize,
    /// One-way delay range of a datagram, microseconds.
    pub delay_us: (u64, u64),
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Which network the servers talk over.
    pub network: Network,
    /// Mean gap between a client's posts.
    pub post_gap_us: u64,
    /// A server crash and restart, if any.
    pub crash: Option<Crash>,
    /// Membership faults.
    pub faults: Vec<Fault>,
    /// Failure detection and quorum of the replicas (default: theirs).
    pub membership: Option<MembershipConfig>,
    /// Virtual time after which the run stops (and missing deliveries count).
    pub time_limit: Time,
    /// The replicas' admission window (default: the replica's default).
    pub window: Option<usize>,
    /// The first `flooders` clients post `flood_messages` each, every few
    /// microseconds: far faster than the cluster orders them.
    pub flooders: usize,
    /// Posts per flooding client.
    pub flood_messages: usize,
    /// A slow server: every datagram to it takes this much longer (its
    /// acknowledgements, proposals and delivery reports lag behind).
    pub slow: Option<(ServerId, u64)>,
    /// The survivors must agree on what a server that crashed or left the
    /// view sent: all of them deliver each of its messages, or none does
    /// (the built-in strategies flush; a plugin may not promise it).
    pub agree_on_departed: bool,
}

impl SimConfig {
    /// A small random scenario derived from `seed`.
    pub fn random(seed: u64, network: Network) -> Self {
        let mut rng = SimRng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let servers = rng.range(2, 5) as usize;
        let lossy = network == Network::Links;
        SimConfig {
            seed,
            servers,
            rooms: rng.range(1, 3) as u32,
            clients: rng.range(servers as u64, 8) as usize,
            messages_per_client: rng.range(1, 12) as usize,
            delay_us: (rng.range(10, 200), rng.range(500, 20_000)),
            loss: if lossy {
                rng.range(0, 20) as f64 / 100.0
            } else {
                0.0
            },
            duplicate: if lossy {
                rng.range(0, 10) as f64 / 100.0
            } else {
                0.0
            },
            network,
            post_gap_us: rng.range(50, 5_000),
            crash: None,
            faults: Vec::new(),
            membership: None,
            time_limit: Time::from_millis(120_000),
            window: None,
            flooders: 0,
            flood_messages: 0,
            slow: None,
            agree_on_departed: true,
        }
    }

    /// A membership fault on top of a random scenario of `seed` over links:
    /// 3 to 5 servers, clients posting for a while, and one of: a server
    /// killed for good, a server paused (resumed after 0.1 to 3 s, or
    /// never), a partition (healed after 0.1 to 3 s, or never).
    pub fn membership(seed: u64) -> Self {
        let mut cfg = Self::random(seed, Network::Links);
        let mut rng = SimRng::new(seed ^ 0x3E3B_E125);
        cfg.servers = rng.range(3, 6) as usize;
        cfg.clients = rng.range(cfg.servers as u64, 10) as usize;
        cfg.messages_per_client = rng.range(5, 30) as usize;
        cfg.post_gap_us = rng.range(2_000, 40_000);
        // Faults land while clients are still posting.
        let at = Time(rng.range(1_000, 300_000));
        let server = ServerId(rng.below(cfg.servers as u64) as u16);
        let lasts = |rng: &mut SimRng| {
            if rng.chance(0.3) {
                None
            } else {
                Some(rng.range(100_000, 3_000_000))
            }
        };
        let fault = match rng.below(3) {
            0 => Fault::Kill { server, at },
            1 => Fault::Pause {
                server,
                at,
                for_us: lasts(&mut rng),
            },
            _ => {
                let k = rng.range(1, cfg.servers as u64) as usize;
                let mut all: Vec<ServerId> = (0..cfg.servers as u16).map(ServerId).collect();
                let mut side = Vec::new();
                for _ in 0..k {
                    let i = rng.below(all.len() as u64) as usize;
                    side.push(all.swap_remove(i));
                }
                side.sort_unstable();
                Fault::Partition {
                    side,
                    at,
                    for_us: lasts(&mut rng),
                }
            }
        };
        cfg.faults = vec![fault];
        cfg
    }

    /// A flooding client and a slow server on top of the random scenario of
    /// `seed`, with a small admission window so that it fills up often.
    pub fn flood(seed: u64) -> Self {
        let mut cfg = Self::random(seed, Network::Links);
        let mut rng = SimRng::new(seed ^ 0xF100D);
        cfg.window = Some(rng.range(12, 64) as usize);
        cfg.flooders = 1;
        cfg.flood_messages = rng.range(100, 600) as usize;
        cfg.servers = cfg.servers.max(3);
        cfg.clients = cfg.clients.max(cfg.servers + 1);
        cfg.slow = Some((
            ServerId(1 + rng.below(cfg.servers as u64 - 1) as u16),
            rng.range(1_000, 30_000),
        ));
        cfg
    }

    fn messages_of(&self, client: usize) -> usize {
        if client < self.flooders {
            self.flood_messages
        } else {
            self.messages_per_client
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct SimOutcome {
    /// The scenario that ran.
    pub config: SimConfig,
    /// The checker's verdict on the deliveries.
    pub report: Report,
    /// Properties that were checked.
    pub properties: Properties,
    /// The last lines of the event trace (for failures).
    pub trace: Vec<String>,
    /// Datagrams sent over the network.
    pub datagrams: u64,
    /// Datagrams the network lost.
    pub dropped: u64,
    /// Datagrams the network duplicated.
    pub duplicated: u64,
    /// Virtual time at which the run ended.
    pub end: Time,
    /// Messages a server dropped at a holdback limit (must stay 0 for honest
    /// servers: a dropped message breaks agreement).
    pub holdback_refused: u64,
    /// Messages of departed servers that survivors took from relays (a
    /// rejoin restarts a server's count: a lower bound).
    pub relayed: u64,
    /// The most messages any server held back at once (tracked in flood
    /// runs only).
    pub peak_held: usize,
    /// Posts refused by admission (the clients tried again later).
    pub refused_posts: u64,
}

impl SimOutcome {
    /// The checked properties held.
    pub fn passed(&self) -> bool {
        self.report.ok()
    }

    /// A readable failure text: seed, scenario, violations, trace tail.
    pub fn explain(&self) -> String {
        let mut s = format!(
            "simulation failed: seed {} ({:?})\n{}\n--- last {} trace lines ---\n",
            self.config.seed,
            self.config,
            self.report,
            self.trace.len()
        );
        for l in &self.trace {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

enum Node {
    Replica(Box<Replica>),
    Raw(Box<dyn Ordering>),
    Down,
}

enum Event {
    /// A datagram (Links) or strategy payload (Raw) arrives.
    Arrive {
        to: ServerId,
        from: ServerId,
        data: Vec<u8>,
        incarnation: u64,
    },
    Post {
        client: usize,
    },
    Timer {
        server: ServerId,
    },
    Crash {
        server: ServerId,
    },
    Restart {
        server: ServerId,
    },
    Kill {
        server: ServerId,
    },
    Pause {
        server: ServerId,
        until: Option<Time>,
    },
    Resume {
        server: ServerId,
    },
    PartitionStart {
        index: usize,
    },
    PartitionEnd {
        index: usize,
    },
}

struct Client {
    server: ServerId,
    room: RoomId,
    sent: usize,
    /// Dropped from the checks once its server crashed (its session is gone).
    alive: bool,
    /// Its server was paused, cut off or excluded: what it sent need not
    /// arrive and it may miss deliveries; what it gets must still be in
    /// order.
    affected: bool,
}

const TRACE_KEEP: usize = 400000;

struct Sim {
    cfg: SimConfig,
    spec: &'static StrategySpec,
    rng: SimRng,
    now: Time,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: std::collections::HashMap<u64, Event>,
    next_event: u64,
    nodes: Vec<Node>,
    incarnations: Vec<u64>,
    clients: Vec<Client>,
    history: History,
    /// Per client, per sender: deliveries so far.
    delivered: Vec<Vec<usize>>,
    /// Per member and sender: the sum of the sequence numbers delivered
    /// (with the count, tells apart two members holding different sets).
    delivered_seqs: Vec<Vec<u64>>,
    /// Per client: messages sent.
    sent_count: Vec<usize>,
    /// Per message sent: (sender client, room).
    sent: Vec<(usize, RoomId)>,
    properties: Properties,
    trace: VecDeque<String>,
    datagrams: u64,
    dropped: u64,
    duplicated: u64,
    timer_at: Vec<Option<Time>>,
    holdback_refused: u64,
    relayed: u64,
    peak_held: usize,
    refused_posts: u64,
    /// Per server: frozen until (`Some(None)`: for good).
    frozen: Vec<Option<Option<Time>>>,
    /// Active partitions: per server, which side it is on.
    partitions: Vec<Option<Vec<bool>>>,
    cut_datagrams: u64,
}

/// Runs one simulation of strategy `spec`, checking what it guarantees.
pub fn run(spec: &'static StrategySpec, cfg: SimConfig) -> SimOutcome {
    run_checking(spec, cfg, None)
}

/// Runs one simulation, checking `props` (default: what `spec` guarantees).
pub fn run_checking(
    spec: &'static StrategySpec,
    cfg: SimConfig,
    props_override: Option<Properties>,
) -> SimOutcome {
    let mut rng = SimRng::new(cfg.seed);
    let clients: Vec<Client> = (0..cfg.clients)
        .map(|i| Client {
            // Every server gets a client before any gets two.
            server: ServerId(if i < cfg.servers {
                i
            } else {
                rng.below(cfg.servers as u64) as usize
            } as u16),
            room: 1 + rng.below(u64::from(cfg.rooms)) as u32,
            sent: 0,
            alive: true,
            affected: false,
        })
        .collect();
    let mut history = History::new();
    for (i, c) in clients.iter().enumerate() {
        history.add_member(format!("c{i}@{}", c.server), c.room);
    }
    let properties = props_override.unwrap_or_else(|| Properties::from_guarantees(spec.guarantees));
    let delivered = vec![vec![0; clients.len()]; clients.len()];
    let sent_count = vec![0; clients.len()];
    let mut sim = Sim {
        spec,
        rng,
        now: Time::ZERO,
        queue: BinaryHeap::new(),
        events: std::collections::HashMap::new(),
        next_event: 0,
        nodes: Vec::new(),
        incarnations: vec![1; cfg.servers],
        clients,
        history,
        delivered_seqs: vec![vec![0; delivered.len()]; delivered.len()],
        delivered,
        sent_count,
        sent: Vec::new(),
        properties,
        trace: VecDeque::new(),
        datagrams: 0,
        dropped: 0,
        duplicated: 0,
        timer_at: vec![None; cfg.servers],
        holdback_refused: 0,
        relayed: 0,
        peak_held: 0,
        refused_posts: 0,
        frozen: vec![None; cfg.servers],
        partitions: vec![None; cfg.faults.len()],
        cut_datagrams: 0,
        cfg,
    };
    sim.nodes = (0..sim.cfg.servers)
        .map(|i| sim.build_node(ServerId(i as u16)))
        .collect();
    for i in 0..sim.cfg.servers {
        sim.introduce_raw(ServerId(i as u16));
    }
    for c in 0..sim.clients.len() {
        let t = Time(sim.rng.below(sim.cfg.post_gap_us.max(1)));
        sim.schedule(t, Event::Post { client: c });
    }
    if let Some(cr) = sim.cfg.crash {
        sim.schedule(cr.at, Event::Crash { server: cr.server });
        sim.schedule(
            cr.at.plus_micros(cr.down_us),
            Event::Restart { server: cr.server },
        );
    }
    for (index, fault) in sim.cfg.faults.clone().into_iter().enumerate() {
        match fault {
            Fault::Kill { server, at } => sim.schedule(at, Event::Kill { server }),
            Fault::Pause { server, at, for_us } => {
                let until = for_us.map(|d| at.plus_micros(d));
                sim.schedule(at, Event::Pause { server, until });
                if let Some(u) = until {
                    sim.schedule(u, Event::Resume { server });
                }
            }
            Fault::Partition { at, for_us, .. } => {
                sim.schedule(at, Event::PartitionStart { index });
                if let Some(d) = for_us {
                    sim.schedule(at.plus_micros(d), Event::PartitionEnd { index });
                }
            }
        }
    }
    for i in 0..sim.cfg.servers {
        sim.after_step(ServerId(i as u16));
    }
    sim.run_loop();
    sim.finish()
}

impl Sim {
    fn build_node(&self, me: ServerId) -> Node {
        let ctx = StrategyContext {
            me,
            servers: self.cfg.servers,
            incarnation: self.incarnations[me.index()],
            window: self.cfg.window.unwrap_or(orderings::DEFAULT_WINDOW),
        };
        match self.cfg.network {
            // The peers are introduced once all nodes exist
            // (`introduce_raw`).
            Network::Raw => Node::Raw((self.spec.build)(&ctx)),
            Network::Links => {
                let mut rc =
                    ReplicaConfig::new(me, self.cfg.servers, self.incarnations[me.index()]);
                // Simulated incarnations jump by 2^40 on a restart (room for
                // every counter of the old one), not by the clock: the
                // clock-skew bound is tested with the links, not here.
                rc.link.max_incarnation_ahead_us = u64::MAX / 4;
                if let Some(w) = self.cfg.window {
                    rc.window = w;
                }
                if let Some(m) = &self.cfg.membership {
                    rc.membership = m.clone();
                }
                Node::Replica(Box::new(Replica::with_builder(rc, self.spec.build)))
            }
        }
    }

    fn schedule(&mut self, at: Time, ev: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((at, id)));
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_KEEP {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>10}us {line}", self.now.0));
    }

    fn all_posted(&self) -> bool {
        self.clients
            .iter()
            .enumerate()
            .all(|(i, c)| !c.alive || c.affected || c.sent >= self.cfg.messages_of(i))
    }

    fn all_delivered(&self) -> bool {
        // Every live member has every message sent to its room by a sender
        // whose messages must arrive (see `check`): a cheap count check.
        // Every live member has every message of its room from every live
        // sender (the crashed server's clients' messages may be lost).
        let complete = |c: &Client| c.alive && !c.affected;
        let required = self.clients.iter().enumerate().all(|(i, c)| {
            !complete(c)
                || self.clients.iter().enumerate().all(|(s, sc)| {
                    !complete(sc) || sc.room != c.room || self.delivered[i][s] >= self.sent_count[s]
                })
        });
        // The others' messages are agreed on (see `finish`): every complete
        // member of the room has the same ones (same count and sum).
        let agreed = !self.cfg.agree_on_departed
            || self.clients.iter().enumerate().all(|(s, sc)| {
                let mut counts = self
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| complete(c) && c.room == sc.room)
                    .map(|(i, _)| (self.delivered[i][s], self.delivered_seqs[i][s]));
                complete(sc) || counts.next().is_none_or(|first| counts.all(|n| n == first))
            });
        required && agreed
    }

    fn run_loop(&mut self) {
        while let Some(Reverse((at, id))) = self.queue.pop() {
            if at > self.cfg.time_limit {
                self.note("time limit reached".into());
                break;
            }
            self.now = at;
            let Some(ev) = self.events.remove(&id) else {
                continue;
            };
            // A frozen server does nothing: what reaches it waits (in order)
            // until it resumes, or is lost with it.
            let target = match &ev {
                Event::Arrive { to, .. } => Some(*to),
                Event::Timer { server } => Some(*server),
                Event::Post { client } => Some(self.clients[*client].server),
                _ => None,
            };
            if let Some(t) = target
                && let Some(until) = self.frozen[t.index()]
            {
                if let Some(u) = until {
                    if let Event::Timer { server } = &ev {
                        self.timer_at[server.index()] = None;
                        self.schedule(u, Event::Timer { server: *server });
                        self.timer_at[server.index()] = Some(u);
                    } else {
                        self.schedule(u, ev);
                    }
                }
                continue;
            }
            match ev {
                Event::Post { client } => self.post(client),
                Event::Arrive {
                    to,
                    from,
                    data,
                    incarnation,
                } => self.arrive(to, from, data, incarnation),
                Event::Timer { server } => {
                    if self.timer_at[server.index()] == Some(at) {
                        self.timer_at[server.index()] = None;
                        if let Node::Replica(r) = &mut self.nodes[server.index()] {
                            r.handle_timeout(at);
                        } else if let Node::Raw(s) = &mut self.nodes[server.index()] {
                            let mut out = Outbox::default();
                            s.handle_timeout(at, &mut out);
                            self.raw_outbox(server, out);
                        }
                        self.after_step(server);
                    }
                }
                Event::Crash { server } => {
                    self.note(format!("{server} CRASHES"));
                    self.count_strategy(server);
                    self.nodes[server.index()] = Node::Down;
                    self.timer_at[server.index()] = None;
                    for c in self.clients.iter_mut().filter(|c| c.server == server) {
                        c.alive = false;
                    }
                }
                Event::Kill { server } => {
                    self.note(format!("{server} KILLED (for good)"));
                    self.count_strategy(server);
                    self.nodes[server.index()] = Node::Down;
                    self.timer_at[server.index()] = None;
                    for c in self.clients.iter_mut().filter(|c| c.server == server) {
                        c.alive = false;
                    }
                }
                Event::Pause { server, until } => {
                    self.note(format!("{server} PAUSED until {until:?}"));
                    self.frozen[server.index()] = Some(until);
                    for c in self.clients.iter_mut().filter(|c| c.server == server) {
                        c.affected = true;
                        if until.is_none() {
                            c.alive = false;
                        }
                    }
                }
                Event::Resume { server } => {
                    self.note(format!("{server} RESUMES"));
                    self.frozen[server.index()] = None;
                }
                Event::PartitionStart { index } => {
                    if let Some(Fault::Partition { side, .. }) = self.cfg.faults.get(index).cloned()
                    {
                        let mut on_side = vec![false; self.cfg.servers];
                        for s in &side {
                            if let Some(x) = on_side.get_mut(s.index()) {
                                *x = true;
                            }
                        }
                        let n = on_side.iter().filter(|x| **x).count();
                        self.note(format!("PARTITION {side:?} | rest"));
                        // The side without a majority is cut off; with no
                        // majority anywhere, both are.
                        for c in self.clients.iter_mut() {
                            let inside = on_side[c.server.index()];
                            let side_size = if inside { n } else { self.cfg.servers - n };
                            if 2 * side_size <= self.cfg.servers {
                                c.affected = true;
                            }
                        }
                        self.partitions[index] = Some(on_side);
                    }
                }
                Event::PartitionEnd { index } => {
                    self.note("PARTITION HEALS".into());
                    self.partitions[index] = None;
                }
                Event::Restart { server } => {
                    // Counters start at the incarnation: leave room for
                    // every message the old one could have posted.
                    self.incarnations[server.index()] += 1 << 40;
                    self.note(format!(
                        "{server} RESTARTS as incarnation {}",
                        self.incarnations[server.index()]
                    ));
                    self.nodes[server.index()] = self.build_node(server);
                    self.after_step(server);
                }
            }
            if self.all_posted() && self.all_delivered() {
                self.note("all posted and delivered".into());
                break;
            }
        }
    }

    fn post(&mut self, client: usize) {
        let c = &self.clients[client];
        if !c.alive || c.sent >= self.cfg.messages_of(client) {
            return;
        }
        let (server, room, seq) = (c.server, c.room, c.sent as u64 + 1);
        let body = format!("c{client}-{seq}");
        let line = Bytes::from(format!("<c{client}> {body}"));
        let accepted = match &mut self.nodes[server.index()] {
            Node::Replica(r) => r.post(self.now, room, line).is_ok(),
            Node::Raw(s) => {
                let mut out = Outbox::default();
                // Raw mode: the harness numbers messages like a replica would.
                let id = MsgId {
                    origin: server,
                    counter: self.sent.len() as u64 + 1,
                };
                s.handle_post(self.now, Post { id, room, line }, &mut out);
                self.raw_outbox(server, out);
                true
            }
            Node::Down => false,
        };
        let next_gap = if client < self.cfg.flooders {
            1 + self.rng.below(4)
        } else {
            1 + self.rng.below(2 * self.cfg.post_gap_us.max(1))
        };
        if !accepted {
            self.refused_posts += 1;
            // Back-pressure: try again later (a refused flooder backs off
            // like a normal client, or the run is all retries).
            let retry = 1 + self.rng.below(2 * self.cfg.post_gap_us.max(1));
            self.schedule(self.now.plus_micros(retry), Event::Post { client });
            return;
        }
        self.note(format!("c{client}@{server} posts {body} to room {room}"));
        self.clients[client].sent += 1;
        self.history.sent(client as u32, seq, self.now.0);
        self.sent.push((client, room));
        self.sent_count[client] += 1;
        self.after_step(server);
        self.schedule(self.now.plus_micros(next_gap), Event::Post { client });
    }

    fn arrive(&mut self, to: ServerId, from: ServerId, data: Vec<u8>, incarnation: u64) {
        match &mut self.nodes[to.index()] {
            Node::Down => {}
            Node::Replica(r) => {
                if let Err(e) = r.handle_datagram(self.now, from, &data) {
                    panic!(
                        "seed {}: a well-formed datagram failed to decode: {e}",
                        self.cfg.seed
                    );
                }
                self.after_step(to);
            }
            Node::Raw(s) => {
                if incarnation != self.incarnations[to.index()] {
                    return;
                }
                let mut out = Outbox::default();
                if let Err(e) = s.handle_peer(self.now, from, &data, &mut out) {
                    panic!(
                        "seed {}: a strategy payload failed to decode: {e}",
                        self.cfg.seed
                    );
                }
                self.raw_outbox(to, out);
                self.after_step(to);
            }
        }
    }

    fn send_datagram(&mut self, from: ServerId, to: ServerId, data: Vec<u8>) {
        self.datagrams += 1;
        let cut = self
            .partitions
            .iter()
            .flatten()
            .any(|side| side[from.index()] != side[to.index()]);
        if cut {
            self.cut_datagrams += 1;
            return;
        }
        if self.rng.chance(self.cfg.loss) {
            self.dropped += 1;
            self.note(format!("{from}->{to} {}B LOST", data.len()));
            return;
        }
        let copies = if self.rng.chance(self.cfg.duplicate) {
            self.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.range(self.cfg.delay_us.0, self.cfg.delay_us.1);
            if let Some((slow, extra)) = self.cfg.slow
                && slow == to
            {
                delay += extra;
            }
            let incarnation = self.incarnations[to.index()];
            self.schedule(
                self.now.plus_micros(delay),
                Event::Arrive {
                    to,
                    from,
                    data: data.clone(),
                    incarnation,
                },
            );
        }
    }

    /// Raw mode: no links introduce the peers, so the harness does, and
    /// sends what the strategy writes in answer (a greeting, say).
    fn introduce_raw(&mut self, me: ServerId) {
        let Node::Raw(strategy) = &mut self.nodes[me.index()] else {
            return;
        };
        let mut out = Outbox::default();
        for p in 0..self.cfg.servers {
            if p != me.index() {
                strategy.handle_peer_incarnation(
                    Time::ZERO,
                    ServerId(p as u16),
                    self.incarnations[p],
                    false,
                    &mut out,
                );
            }
        }
        self.raw_outbox(me, out);
        self.after_step(me);
    }

    fn raw_outbox(&mut self, me: ServerId, out: Outbox) {
        for (dest, payload) in out.sends {
            let targets: Vec<ServerId> = match dest {
                Dest::Peer(p) => vec![p],
                Dest::AllPeers => (0..self.cfg.servers as u16)
                    .map(ServerId)
                    .filter(|&s| s != me)
                    .collect(),
            };
            for t in targets {
                self.send_datagram(me, t, payload.to_vec());
            }
        }
        for d in out.deliveries {
            self.deliver(me, d);
        }
    }

    fn deliver(&mut self, at: ServerId, d: Post) {
        // `<cN> cN-SEQ`
        let text = String::from_utf8_lossy(&d.line).into_owned();
        let parsed = text
            .split_once("> ")
            .and_then(|(_, body)| body.strip_prefix('c'))
            .and_then(|b| b.split_once('-'))
            .and_then(|(c, s)| Some((c.parse::<u32>().ok()?, s.parse::<u64>().ok()?)));
        let Some((sender, seq)) = parsed else {
            panic!(
                "seed {}: delivered a line the simulator never sent: {text:?}",
                self.cfg.seed
            );
        };
        self.note(format!(
            "{at} delivers {} ({text}) in room {}",
            d.id, d.room
        ));
        for (i, c) in self.clients.iter().enumerate() {
            if c.server == at && c.alive && c.room == d.room {
                self.history
                    .delivered(i as u32, MessageId { sender, seq }, self.now.0);
                self.delivered[i][sender as usize] += 1;
                self.delivered_seqs[i][sender as usize] += seq;
            }
        }
    }

    /// Drains what server `s` wants sent and delivered; re-arms its timer.
    fn after_step(&mut self, s: ServerId) {
        let now = self.now;
        let mut transmits = Vec::new();
        let mut deliveries = Vec::new();
        let mut timer = None;
        let mut events = Vec::new();
        if let Node::Replica(r) = &mut self.nodes[s.index()] {
            while let Some(t) = r.poll_transmit(now) {
                transmits.push(t);
            }
            while let Some(d) = r.poll_delivery() {
                deliveries.push(d);
            }
            while let Some(e) = r.poll_event() {
                events.push(e);
            }
            timer = r.poll_timeout();
            if self.cfg.flooders > 0 {
                self.peak_held = self.peak_held.max(r.held_back());
            }
        } else if let Node::Raw(st) = &self.nodes[s.index()] {
            timer = st.poll_timeout();
        }
        for e in events {
            if let ReplicaEvent::Rejoined { .. } = e {
                // It left the view for a while: its clients missed what was
                // said meanwhile, and what it had delivered alone may be
                // missing elsewhere.
                for c in self.clients.iter_mut().filter(|c| c.server == s) {
                    c.affected = true;
                }
            }
            self.note(format!("{s} {e:?}"));
        }
        for t in transmits {
            self.send_datagram(s, t.to, t.payload);
        }
        for d in deliveries {
            self.deliver(s, d);
        }
        if let Some(t) = timer {
            let t = t.max(now.plus_micros(1));
            if self.timer_at[s.index()].is_none_or(|cur| t < cur) {
                self.timer_at[s.index()] = Some(t);
                self.schedule(t, Event::Timer { server: s });
            }
        }
    }

    /// Adds server `s`'s strategy counters (before it goes): what it
    /// dropped at holdback limits, and took from relays.
    fn count_strategy(&mut self, s: ServerId) {
        let stats = match &self.nodes[s.index()] {
            Node::Replica(r) => r.stats().strategy,
            Node::Raw(st) => st.stats(),
            Node::Down => return,
        };
        self.holdback_refused += stats.refused;
        self.relayed += stats.relayed;
    }

    fn finish(mut self) -> SimOutcome {
        for i in 0..self.cfg.servers {
            self.count_strategy(ServerId(i as u16));
            if let Node::Replica(r) = &self.nodes[i] {
                let st = r.stats();
                let line = format!(
                    "S{:02} at the end: view {:?}, {:?}, outstanding {}",
                    i + 1,
                    r.view_members(),
                    st.strategy,
                    st.outstanding
                );
                self.note(line);
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            if !c.alive || c.affected {
                // Its server crashed or left the view: it saw only part,
                // and what it sent may be lost with the server, but then by
                // every survivor (they flush what reached any of them).
                self.history.set_opts(
                    i as u32,
                    MemberOpts {
                        partial: true,
                        optional_sends: true,
                        agreed_sends: self.cfg.agree_on_departed,
                    },
                );
            }
        }
        let report = self.history.check(self.properties);
        SimOutcome {
            config: self.cfg,
            report,
            properties: self.properties,
            trace: self.trace.into_iter().collect(),
            datagrams: self.datagrams,
            dropped: self.dropped,
            duplicated: self.duplicated,
            end: self.now,
            holdback_refused: self.holdback_refused,
            relayed: self.relayed,
            peak_held: self.peak_held,
            refused_posts: self.refused_posts,
        }
    }
}
