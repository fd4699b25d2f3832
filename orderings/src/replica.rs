//! A replica: one ordering strategy plus a reliable link to every peer,
//! driven sans-IO in the style of quinn-proto: `handle_*` feeds it input,
//! `poll_*` drains what it wants done.
//!
//! Admission window: every datagram a peer sends us says how many of our
//! messages (of this incarnation) it has delivered. A post is admitted only
//! while every server (we included, and a peer not heard from yet) has
//! fewer than [`ReplicaConfig::window`] of our messages not yet delivered,
//! so what a peer holds back for us is bounded
//! by the window, and a peer never has to drop a message we accepted (a
//! holdback limit that drops breaks agreement). A slow peer slows admission
//! at the origin instead: back-pressure reaches the clients, who are refused
//! at the edge, fairly (see the server's admission).

use crate::link::{self, Datagram, LinkConfig, LinkStats, PeerLink};
use crate::{
    Delivery, Dest, MsgId, Ordering, Outbox, Post, RoomId, ServerId, StrategyStats, Time, WireError,
};
use bytes::Bytes;
use std::collections::VecDeque;

/// How a replica is set up.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This server.
    pub me: ServerId,
    /// Servers in the cluster, this one included.
    pub servers: usize,
    /// Grows with every start of this server; datagrams name it
    /// ([`Datagram::src_incarnation`]).
    pub incarnation: u64,
    /// Tunables of every peer link.
    pub link: LinkConfig,
    /// Cluster secret: every datagram is authenticated with it when set.
    pub key: Option<[u8; 32]>,
    /// Posts are refused while any peer link holds more frames than this.
    pub max_backlog: usize,
    /// Posts are refused while any server has this many of our messages
    /// not yet delivered (see the module docs).
    pub window: usize,
    /// The incarnation clock's reading at `Time::ZERO`: incarnations are
    /// start times in microseconds, so a peer's incarnation can be checked
    /// against the clock-skew bound. In the server it is this start's
    /// incarnation (the clock starts with the server).
    pub clock_at_zero: u64,
}

impl ReplicaConfig {
    /// The defaults for server `me` of `servers`, started as `incarnation`.
    pub fn new(me: ServerId, servers: usize, incarnation: u64) -> Self {
        Self {
            me,
            servers,
            incarnation,
            link: LinkConfig::default(),
            key: None,
            max_backlog: 64 * 1024,
            window: DEFAULT_WINDOW,
            clock_at_zero: incarnation,
        }
    }
}

/// Default admission window: at about 100,000 deliveries a second and a few
/// milliseconds until a delivery is reported, a window of 8,192 never limits
/// throughput, and it bounds what a peer holds for one origin to a few MB.
pub const DEFAULT_WINDOW: usize = 8192;

/// A datagram for a peer, ready for the socket (stuffed, sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The peer.
    pub to: ServerId,
    /// The datagram's bytes.
    pub payload: Vec<u8>,
}

/// Why a post was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// A peer link holds [`ReplicaConfig::max_backlog`] frames or more.
    #[error("the cluster is congested (a server is slow or down); message not sent")]
    Congested,
    /// A server has [`ReplicaConfig::window`] of our messages or more undelivered.
    #[error("the cluster is busy ordering earlier messages; message not sent")]
    WindowFull,
}

/// Counters of a replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Posts admitted.
    pub posts: u64,
    /// Messages delivered locally.
    pub deliveries: u64,
    /// Datagrams refused: undecodable, unauthenticated, or not from a peer.
    pub bad_datagrams: u64,
    /// Strategy payloads its decoder refused.
    pub bad_payloads: u64,
    /// Per peer link, in server order (ours left out).
    pub links: Vec<LinkStats>,
    /// The strategy's counters.
    pub strategy: StrategyStats,
    /// The largest backlog of a peer link (frames not yet acknowledged).
    pub max_backlog: usize,
    /// Our messages not yet delivered by the slowest server.
    pub outstanding: usize,
    /// The largest `outstanding` seen.
    pub peak_outstanding: usize,
    /// The admission window.
    pub window: usize,
}

/// See the module docs.
pub struct Replica {
    cfg: ReplicaConfig,
    strategy: Box<dyn Ordering>,
    /// Indexed by server; `None` at our own index.
    links: Vec<Option<PeerLink>>,
    next_counter: u64,
    scratch: Outbox,
    deliveries: VecDeque<Delivery>,
    /// Round-robin start for `poll_transmit`, so no peer starves.
    next_peer: usize,
    posts: u64,
    delivered: u64,
    bad_datagrams: u64,
    bad_payloads: u64,
    /// Time of the latest input (for work triggered while flushing).
    last_now: Time,
    /// Per server: its messages (of its current incarnation) delivered here;
    /// at our own index, our own messages.
    delivered_from: Vec<u64>,
    /// Per server: how many of ours it says it delivered.
    peer_confirmed: Vec<u64>,
    /// Per server: our posts before its current incarnation (it will never
    /// deliver those: they are not outstanding at it).
    peer_base: Vec<u64>,
    peak_outstanding: usize,
}

impl Replica {
    /// A replica running `strategy`, with a link to every peer.
    pub fn new(mut cfg: ReplicaConfig, strategy: Box<dyn Ordering>) -> Self {
        let next_counter = cfg.incarnation.max(1);
        let n = cfg.servers;
        // Report deliveries well before the origin's window runs out.
        cfg.link.delivered_report_every = cfg
            .link
            .delivered_report_every
            .min((cfg.window as u64 / 4).max(1));
        if cfg.key.is_some() {
            // Room for the sender's index stamped into every datagram.
            cfg.link.max_datagram = cfg
                .link
                .max_datagram
                .saturating_sub(link::SENDER_MAX_STUFFED);
        }
        let links = (0..cfg.servers)
            .map(|i| {
                (i != cfg.me.index()).then(|| PeerLink::new(cfg.incarnation, cfg.link.clone()))
            })
            .collect();
        Self {
            cfg,
            strategy,
            links,
            // Counters start at the incarnation, so ids never repeat across
            // restarts (a server cannot post more than one message per
            // microsecond of its previous life).
            next_counter,
            scratch: Outbox::default(),
            deliveries: VecDeque::new(),
            next_peer: 0,
            posts: 0,
            delivered: 0,
            bad_datagrams: 0,
            bad_payloads: 0,
            last_now: Time::ZERO,
            delivered_from: vec![0; n],
            peer_confirmed: vec![0; n],
            peer_base: vec![0; n],
            peak_outstanding: 0,
        }
    }

    /// This server.
    pub fn me(&self) -> ServerId {
        self.cfg.me
    }

    fn admission(&self) -> Result<(), PostError> {
        if self.max_backlog() >= self.cfg.max_backlog {
            return Err(PostError::Congested);
        }
        if self.outstanding() >= self.cfg.window {
            return Err(PostError::WindowFull);
        }
        Ok(())
    }

    /// Messages the strategy holds back (received, not yet delivered).
    pub fn held_back(&self) -> usize {
        self.strategy.stats().held_back
    }

    /// The admission window (see the module docs).
    pub fn window(&self) -> usize {
        self.cfg.window
    }

    /// Our messages not yet delivered by the slowest peer, or by us: our
    /// own delivery can lag behind a peer's too (in `total`, behind another
    /// origin's message whose final reached the peers first). A peer we
    /// have not heard from yet counts too: the link keeps our messages for
    /// it and it receives them all at once when it comes up.
    pub fn outstanding(&self) -> usize {
        let own = self
            .posts
            .saturating_sub(self.delivered_from[self.cfg.me.index()]) as usize;
        self.links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_some())
            .map(|(i, _)| self.outstanding_at(i))
            .max()
            .unwrap_or(0)
            .max(own)
    }

    /// Our messages not yet delivered by server `i`, as far as it told us.
    fn outstanding_at(&self, i: usize) -> usize {
        self.posts
            .saturating_sub(self.peer_base[i] + self.peer_confirmed[i]) as usize
    }

    /// Asks the peers with at least `at_least` of our messages outstanding
    /// (those that make us refuse posts) for a delivery report: one may
    /// have been lost, and while we refuse, nothing else of ours would make
    /// them send one.
    pub fn request_reports(&mut self, now: Time, at_least: usize) {
        for i in 0..self.links.len() {
            let behind = self.outstanding_at(i) >= at_least;
            if let Some(link) = self.links[i].as_mut()
                && behind
            {
                link.request_report(now);
            }
        }
    }

    /// Peer `peer` is a new incarnation: it holds none of our messages.
    fn peer_restarted(&mut self, peer: ServerId) {
        let i = peer.index();
        self.peer_base[i] = self.posts;
        self.peer_confirmed[i] = 0;
        self.delivered_from[i] = 0;
    }

    fn max_backlog(&self) -> usize {
        self.links
            .iter()
            .flatten()
            .map(|l| l.backlog())
            .max()
            .unwrap_or(0)
    }

    /// A local client posted `line` (already formatted as `<nick> text`) to
    /// `room`.
    pub fn post(&mut self, now: Time, room: RoomId, line: Bytes) -> Result<MsgId, PostError> {
        if let Err(e) = self.admission() {
            if e == PostError::WindowFull {
                self.request_reports(now, self.cfg.window);
            }
            return Err(e);
        }
        self.last_now = now;
        let id = MsgId {
            origin: self.cfg.me,
            counter: self.next_counter,
        };
        self.next_counter += 1;
        self.posts += 1;
        self.strategy
            .handle_post(now, Post { id, room, line }, &mut self.scratch);
        self.flush_outbox();
        self.peak_outstanding = self.peak_outstanding.max(self.outstanding());
        Ok(id)
    }

    /// A datagram arrived from the forwarding address of server `from`.
    pub fn handle_datagram(
        &mut self,
        now: Time,
        from: ServerId,
        wire: &[u8],
    ) -> Result<(), WireError> {
        let result = self.handle_datagram_inner(now, from, wire);
        if result.is_err() {
            self.bad_datagrams += 1;
        }
        result
    }

    /// With a cluster secret: a datagram that authenticates and names a
    /// peer's server index (inside the MAC) is that peer's, whatever its
    /// source address: it is handled and the peer returned, with the
    /// result. `None` when it does not authenticate or names no peer
    /// (nothing is counted or changed: the caller decides what it is), and
    /// always without a secret (an index claim could not be trusted).
    pub fn handle_authenticated_datagram(
        &mut self,
        now: Time,
        wire: &[u8],
    ) -> Option<(ServerId, Result<(), WireError>)> {
        let key = self.cfg.key.as_ref()?;
        let raw = link::open_datagram(wire, Some(key)).ok()?;
        let from = ServerId(link::sender_of(&raw).ok()??);
        if from == self.cfg.me || from.index() >= self.cfg.servers {
            return None;
        }
        let result = self.handle_raw(now, from, &raw);
        if result.is_err() {
            self.bad_datagrams += 1;
        }
        Some((from, result))
    }

    fn handle_datagram_inner(
        &mut self,
        now: Time,
        from: ServerId,
        wire: &[u8],
    ) -> Result<(), WireError> {
        let raw = link::open_datagram(wire, self.cfg.key.as_ref())?;
        // An authenticated index that names another server is not `from`'s.
        if self.cfg.key.is_some() && link::sender_of(&raw)?.is_some_and(|s| s != from.0) {
            return Err(WireError::OutOfRange("sender"));
        }
        self.handle_raw(now, from, &raw)
    }

    /// An opened (authenticated) datagram of `from`.
    fn handle_raw(&mut self, now: Time, from: ServerId, raw: &[u8]) -> Result<(), WireError> {
        self.last_now = now;
        let Some(Some(link)) = self.links.get_mut(from.index()) else {
            return Err(WireError::OutOfRange("sender"));
        };
        let (d, _) = Datagram::decode_raw(raw)?;
        let received = link.receive(now, self.cfg.clock_at_zero, &d);
        if received.peer_restarted {
            tracing::info!("{from} restarted (incarnation {})", d.src_incarnation);
            self.peer_restarted(from);
        }
        if let Some(n) = received.peer_delivered {
            let c = &mut self.peer_confirmed[from.index()];
            *c = (*c).max(n);
        }
        if received.peer_restarted || received.first_contact {
            self.strategy.handle_peer_incarnation(
                now,
                from,
                d.src_incarnation,
                received.peer_restarted,
                &mut self.scratch,
            );
        }
        for payload in received.payloads {
            if let Err(e) = self
                .strategy
                .handle_peer(now, from, &payload, &mut self.scratch)
            {
                self.bad_payloads += 1;
                tracing::warn!("dropped a bad payload from {from}: {e}");
            }
        }
        self.flush_outbox();
        Ok(())
    }

    /// Timers are due.
    pub fn handle_timeout(&mut self, now: Time) {
        self.last_now = now;
        for link in self.links.iter_mut().flatten() {
            link.handle_timeout(now);
        }
        if self.strategy.poll_timeout().is_some_and(|t| t <= now) {
            self.strategy.handle_timeout(now, &mut self.scratch);
            self.flush_outbox();
        }
    }

    /// The earliest time at which [`Replica::handle_timeout`] or
    /// [`Replica::poll_transmit`] has something to do.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.links
            .iter()
            .flatten()
            .filter_map(|l| l.poll_timeout())
            .chain(self.strategy.poll_timeout())
            .min()
    }

    /// The next datagram to send, if any is due at `now`.
    pub fn poll_transmit(&mut self, now: Time) -> Option<Transmit> {
        let n = self.links.len();
        for k in 0..n {
            let i = (self.next_peer + k) % n;
            let Some(link) = self.links[i].as_mut() else {
                continue;
            };
            if let Some(mut raw) =
                link.poll_datagram(now, self.cfg.key.is_some(), self.delivered_from[i])
            {
                if self.cfg.key.is_some() {
                    link::stamp_sender(&mut raw, self.cfg.me.0);
                }
                self.next_peer = (i + 1) % n;
                return Some(Transmit {
                    to: ServerId(i as u16),
                    payload: link::seal_datagram(&raw, self.cfg.key.as_ref()),
                });
            }
        }
        None
    }

    /// The next message to hand to the local members of its room.
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.pop_front()
    }

    /// Current counters.
    pub fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            posts: self.posts,
            deliveries: self.delivered,
            bad_datagrams: self.bad_datagrams,
            bad_payloads: self.bad_payloads,
            links: self
                .links
                .iter()
                .map(|l| l.as_ref().map(|l| l.stats.clone()).unwrap_or_default())
                .collect(),
            strategy: self.strategy.stats(),
            max_backlog: self.max_backlog(),
            outstanding: self.outstanding(),
            peak_outstanding: self.peak_outstanding,
            window: self.cfg.window,
        }
    }

    fn flush_outbox(&mut self) {
        // Hints may make the strategy write more (including more hints).
        while let Some((peer, inc)) = self.scratch.incarnation_hints.pop() {
            let Some(Some(link)) = self.links.get_mut(peer.index()) else {
                continue;
            };
            if let Some(restarted) =
                link.learn_incarnation(self.last_now, self.cfg.clock_at_zero, inc)
            {
                tracing::info!("{peer} runs incarnation {inc} (learned from a peer)");
                if restarted {
                    self.peer_restarted(peer);
                }
                self.strategy.handle_peer_incarnation(
                    self.last_now,
                    peer,
                    inc,
                    restarted,
                    &mut self.scratch,
                );
            }
        }
        for (dest, payload) in self.scratch.sends.drain(..) {
            match dest {
                Dest::Peer(p) => {
                    if let Some(Some(link)) = self.links.get_mut(p.index()) {
                        link.push(payload);
                    }
                }
                Dest::AllPeers => {
                    for link in self.links.iter_mut().flatten() {
                        link.push(payload.clone());
                    }
                }
            }
        }
        self.delivered += self.scratch.deliveries.len() as u64;
        for d in &self.scratch.deliveries {
            let origin = d.id.origin.index();
            if d.id.origin == self.cfg.me {
                if d.id.counter >= self.cfg.incarnation {
                    self.delivered_from[origin] += 1;
                }
            } else if let Some(Some(link)) = self.links.get_mut(origin)
                && d.id.counter >= link.peer_incarnation()
            {
                // Counters start at the incarnation: this is a message of
                // the origin's current incarnation.
                self.delivered_from[origin] += 1;
                link.note_delivered(self.last_now, self.delivered_from[origin]);
            }
        }
        self.deliveries.extend(self.scratch.deliveries.drain(..));
    }
}
