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
//!
//! Membership ([`crate::membership`]): the replica detects silent peers,
//! excludes them from its view (quorum permitting), tells the other members,
//! sends nothing more to an excluded incarnation and accepts nothing from
//! it, and admits a server again when a new incarnation of it shows up. An
//! excluded server learns of it from its peers' datagrams (they address
//! the incarnation after its own) or from a `total` final it had no say in,
//! and *rejoins*: it starts its strategy afresh as a new incarnation, like a
//! restart that keeps the clients, and posts its own unsettled messages
//! again ([`ReplicaEvent::Reposted`]).

use crate::link::{self, Datagram, LinkConfig, LinkStats, PeerLink};
use crate::membership::{Membership, MembershipConfig, ViewChange};
use crate::wire::{Reader, Writer};
use crate::{
    Delivery, Dest, MsgId, Ordering, Outbox, Post, RoomId, ServerId, StrategyContext,
    StrategyStats, Time, WireError,
};
use bytes::Bytes;
use std::collections::VecDeque;

/// First byte of the replica's own payloads (membership), which never
/// reach the strategy; strategies' payloads must not start with it.
pub const MEMBERSHIP_KIND: u8 = 0xFF;
/// Membership payload: "I excluded `server`'s incarnation `incarnation`"
/// (then, from version 3.1, when: the sender's incarnation clock).
const EXCLUDE: u8 = 1;

/// Builds a strategy for a (re)start (a registered strategy's `build`).
pub type StrategyBuilder = fn(&StrategyContext) -> Box<dyn Ordering>;

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
    /// Failure detection and quorum.
    pub membership: MembershipConfig,
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
            membership: MembershipConfig::default(),
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
    /// This server hears too few servers to order messages, and already
    /// keeps [`MembershipConfig::cut_off_backlog`] of its clients' messages
    /// waiting for the rest of the cluster.
    #[error(
        "this server is cut off from most of the cluster; earlier messages wait for it to rejoin, this one was not sent"
    )]
    CutOff,
}

/// What the replica did on its own, for logs and for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// `server` was silent for the suspicion time, or another member
    /// excluded it: it left this server's view.
    Excluded {
        /// The server that left.
        server: ServerId,
        /// The view's members after the change.
        members: usize,
        /// Who said so: `None` when this server noticed the silence itself.
        by: Option<ServerId>,
    },
    /// A new incarnation of `server` joined the view.
    Admitted {
        /// The server that joined.
        server: ServerId,
        /// The view's members after the change.
        members: usize,
    },
    /// This server was excluded by `by` and rejoined as a new incarnation.
    Rejoined {
        /// The member that excluded us.
        by: ServerId,
        /// The new incarnation.
        incarnation: u64,
    },
    /// This server hears fewer than a quorum of its view's members: its
    /// `total` messages wait and it excludes nobody.
    CutOff {
        /// Members heard within the suspicion time, this server included.
        heard: usize,
        /// Members needed.
        quorum: usize,
    },
    /// This server hears a quorum again; silent members get a full
    /// suspicion time from now.
    QuorumRegained {
        /// Members heard within the suspicion time, this server included.
        heard: usize,
    },
    /// An own message posted again after a rejoin turned out to be
    /// delivered already by the others (from the previous incarnation, at
    /// its first place): given up.
    Discarded {
        /// Its id in this incarnation.
        id: MsgId,
    },
    /// An own message that was not yet ordered when this server rejoined
    /// was posted again under a new id.
    Reposted {
        /// Its id before.
        old: MsgId,
        /// Its id now.
        new: MsgId,
    },
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
    /// View changes this server made (exclusions, admissions, rejoins).
    pub views_installed: u64,
    /// Members of the current view, this server included.
    pub view_members: usize,
    /// Times this server was excluded and rejoined as a new incarnation.
    pub rejoins: u64,
    /// Own messages posted again after a rejoin.
    pub reposted: u64,
    /// After a rejoin: messages handed over again that the previous
    /// incarnation had delivered already (not delivered twice).
    pub repeats_dropped: u64,
    /// This server hears too few members to make up the quorum.
    pub cut_off: bool,
    /// Members a view needs to order `total` messages.
    pub quorum: usize,
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
    membership: Membership,
    /// Rebuilds the strategy when this server rejoins; without it a rejoin
    /// is impossible and an exclusion is only counted.
    builder: Option<StrategyBuilder>,
    events: VecDeque<ReplicaEvent>,
    rejoins: u64,
    reposted: u64,
    /// Exclusions of this server that could not be acted on (no builder).
    excluded_unhandled: u64,
    /// Per origin: the highest message counter delivered here.
    delivered_max: Vec<u64>,
    /// After a rejoin: `delivered_max` as the previous incarnation left it.
    /// The new one may be handed a message the old one delivered (a peer
    /// resends what it thinks we never got); the clients are the same, so
    /// it is not delivered again. Per origin, deliveries come in counter
    /// order in every built-in mode, so "at or below" is "already seen".
    delivered_before_rejoin: Option<Vec<u64>>,
    /// Deliveries dropped by the rule above.
    repeats_dropped: u64,
}

impl Replica {
    /// A replica running the strategy `builder` makes, with a link to
    /// every peer; it can rejoin after an exclusion.
    pub fn with_builder(cfg: ReplicaConfig, builder: StrategyBuilder) -> Self {
        let strategy = builder(&StrategyContext {
            me: cfg.me,
            servers: cfg.servers,
            incarnation: cfg.incarnation,
            window: cfg.window,
        });
        let mut r = Self::new(cfg, strategy);
        r.builder = Some(builder);
        r
    }

    /// A replica running `strategy`, with a link to every peer. Without a
    /// builder it cannot rejoin after an exclusion (see
    /// [`Replica::with_builder`]).
    pub fn new(mut cfg: ReplicaConfig, strategy: Box<dyn Ordering>) -> Self {
        let next_counter = cfg.incarnation.max(1);
        let n = cfg.servers;
        cfg.link.heartbeat_us = cfg
            .link
            .heartbeat_us
            .min(cfg.membership.heartbeat_us.max(1));
        let membership = Membership::new(cfg.me, n, cfg.membership.clone());
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
            membership,
            builder: None,
            events: VecDeque::new(),
            rejoins: 0,
            reposted: 0,
            excluded_unhandled: 0,
            delivered_max: vec![0; n],
            delivered_before_rejoin: None,
            repeats_dropped: 0,
        }
    }

    /// This server.
    pub fn me(&self) -> ServerId {
        self.cfg.me
    }

    fn admission(&self) -> Result<(), PostError> {
        if self.membership.cut_off()
            && self.strategy.stats().in_flight >= self.membership.config().cut_off_backlog
        {
            return Err(PostError::CutOff);
        }
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
    /// it and it receives them all at once when it comes up. A server
    /// outside the view does not: it gets none of them.
    pub fn outstanding(&self) -> usize {
        let own = self
            .posts
            .saturating_sub(self.delivered_from[self.cfg.me.index()]) as usize;
        self.links
            .iter()
            .enumerate()
            .filter(|(i, l)| l.is_some() && self.membership.is_member(ServerId(*i as u16)))
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
            let behind =
                self.outstanding_at(i) >= at_least && self.membership.is_member(ServerId(i as u16));
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
        let raw = Bytes::from(link::open_datagram(wire, Some(key)).ok()?);
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
        let raw = Bytes::from(link::open_datagram(wire, self.cfg.key.as_ref())?);
        // An authenticated index that names another server is not `from`'s.
        if self.cfg.key.is_some() && link::sender_of(&raw)?.is_some_and(|s| s != from.0) {
            return Err(WireError::OutOfRange("sender"));
        }
        self.handle_raw(now, from, &raw)
    }

    /// An opened (authenticated) datagram of `from`. Its payloads share
    /// `raw`'s bytes: one allocation per datagram, not one per payload.
    fn handle_raw(&mut self, now: Time, from: ServerId, raw: &Bytes) -> Result<(), WireError> {
        self.last_now = now;
        let Some(Some(link)) = self.links.get_mut(from.index()) else {
            return Err(WireError::OutOfRange("sender"));
        };
        let (d, _) = Datagram::decode_raw(raw)?;
        let received = link.receive_sharing(now, self.cfg.clock_at_zero, &d, raw);
        // Excluded by a server we excluded too: the higher one comes back
        // (as a new incarnation, which the lower one admits).
        if received.excluded_us || (received.excluded_mutually && self.cfg.me > from) {
            self.rejoin(now, from);
            return Ok(());
        }
        if received.current {
            self.membership.heard(now, from);
        }
        if received.peer_restarted {
            tracing::info!("{from} restarted (incarnation {})", d.src_incarnation);
            self.peer_restarted(from);
        }
        if let Some(n) = received.peer_delivered {
            let c = &mut self.peer_confirmed[from.index()];
            *c = (*c).max(n);
        }
        let rejoining = received.current && !self.membership.is_member(from);
        if rejoining {
            if let Some(change) = self.membership.admit(now, from) {
                self.note_change(change, None);
            }
            // Whatever it ran before, it starts from nothing with us.
            if !received.peer_restarted {
                self.peer_restarted(from);
            }
        }
        if received.peer_restarted || received.first_contact || rejoining {
            self.strategy.handle_peer_incarnation(
                now,
                from,
                d.src_incarnation,
                received.peer_restarted || rejoining,
                &mut self.scratch,
            );
        }
        for payload in received.payloads {
            if payload.first() == Some(&MEMBERSHIP_KIND) {
                if let Err(e) = self.handle_membership_payload(now, from, &payload) {
                    self.bad_payloads += 1;
                    tracing::warn!("dropped a bad membership payload from {from}: {e}");
                }
                continue;
            }
            if let Err(e) = self
                .strategy
                .handle_peer_shared(now, from, &payload, &mut self.scratch)
            {
                self.bad_payloads += 1;
                tracing::warn!("dropped a bad payload from {from}: {e}");
            }
            if let Some(by) = self.scratch.excluded_by.take() {
                // A final we had no say in: the origin's view left us out.
                // What was decided before it stands.
                self.flush_outbox();
                self.rejoin(now, by);
                return Ok(());
            }
        }
        // What a strategy left for the end of the datagram (`total`'s
        // acknowledgements: one covers everything the datagram carried).
        if self.strategy.poll_timeout().is_some_and(|t| t <= now) {
            self.strategy.handle_timeout(now, &mut self.scratch);
        }
        self.flush_outbox();
        Ok(())
    }

    /// A membership payload from member `from`.
    fn handle_membership_payload(
        &mut self,
        now: Time,
        from: ServerId,
        payload: &[u8],
    ) -> Result<(), WireError> {
        let mut r = Reader::new(payload);
        let _kind = r.u8()?;
        match r.u8()? {
            EXCLUDE => {
                let server = ServerId(r.varint_u16("server")?);
                let incarnation = r.varint()?;
                // Absent from an older sender: as if excluded just now.
                let at = if r.remaining() > 0 {
                    r.varint()?
                } else {
                    self.cfg.clock_at_zero.saturating_add(now.as_micros())
                };
                r.finish()?;
                if server.index() >= self.cfg.servers {
                    return Err(WireError::OutOfRange("server"));
                }
                if server == self.cfg.me {
                    // Our peers' datagrams tell us too; this one is early.
                    if incarnation == self.cfg.incarnation {
                        self.rejoin(now, from);
                    }
                    return Ok(());
                }
                // Incarnation 0: the member excluded it without ever hearing
                // it. The incarnation we know is then the one it excluded,
                // if it had started by then (incarnations are start times):
                // we follow, so that the views agree (left alone, that
                // member would miss what the server sends the others, and
                // the server would never learn it).
                let current = self.links[server.index()].as_ref().is_some_and(|l| {
                    let known = l.peer_incarnation();
                    known == incarnation || (incarnation == 0 && known != 0 && known < at)
                });
                if current {
                    self.exclude_peer(now, server, Some(from));
                }
                Ok(())
            }
            k => Err(WireError::UnknownKind(k)),
        }
    }

    /// `peer`'s current incarnation leaves the view, if the quorum allows:
    /// its link goes dead, the strategy settles what it left behind, and
    /// the other members are told.
    fn exclude_peer(&mut self, now: Time, peer: ServerId, by: Option<ServerId>) -> bool {
        let Some(change) = self.membership.exclude(peer) else {
            return false;
        };
        let Some(Some(link)) = self.links.get_mut(peer.index()) else {
            return false;
        };
        let incarnation = link.exclude();
        self.peer_restarted(peer);
        self.note_change(change, by);
        let mut w = Writer::with_capacity(24);
        w.u8(MEMBERSHIP_KIND)
            .u8(EXCLUDE)
            .varint(u64::from(peer.0))
            .varint(incarnation)
            .varint(self.cfg.clock_at_zero.saturating_add(now.as_micros()));
        let notice = w.into_bytes();
        for (i, link) in self.links.iter_mut().enumerate() {
            if let Some(link) = link
                && self.membership.is_member(ServerId(i as u16))
            {
                link.push(notice.clone());
            }
        }
        self.strategy.handle_member_left(
            now,
            peer,
            incarnation.saturating_add(1),
            &mut self.scratch,
        );
        true
    }

    fn note_change(&mut self, change: ViewChange, by: Option<ServerId>) {
        let members = self.membership.view().len();
        let event = match change {
            ViewChange::Excluded(server) => ReplicaEvent::Excluded {
                server,
                members,
                by,
            },
            ViewChange::Admitted(server) => ReplicaEvent::Admitted { server, members },
        };
        self.events.push_back(event);
        self.note_cut_off_change(self.last_now);
    }

    /// Tells whether this server was cut off or hears a quorum again, if
    /// that changed.
    fn note_cut_off_change(&mut self, now: Time) {
        let Some(cut_off) = self.membership.take_cut_off_change() else {
            return;
        };
        let heard = self.membership.reachable(now);
        self.events.push_back(if cut_off {
            ReplicaEvent::CutOff {
                heard,
                quorum: self.membership.quorum(),
            }
        } else {
            ReplicaEvent::QuorumRegained { heard }
        });
    }

    /// Member `by` excluded this incarnation: start again as a new one,
    /// keeping the clients (the server's sessions) and posting our own
    /// unsettled messages again. Deliveries already made stay made.
    fn rejoin(&mut self, now: Time, by: ServerId) {
        let Some(builder) = self.builder else {
            self.excluded_unhandled += 1;
            return;
        };
        let incarnation = self
            .cfg
            .clock_at_zero
            .saturating_add(now.as_micros())
            .max(self.cfg.incarnation.saturating_add(1));
        let unsettled = self.strategy.unsettled_posts();
        self.cfg.incarnation = incarnation;
        self.strategy = builder(&StrategyContext {
            me: self.cfg.me,
            servers: self.cfg.servers,
            incarnation,
            window: self.cfg.window,
        });
        self.scratch = Outbox::default();
        for (i, slot) in self.links.iter_mut().enumerate() {
            if let Some(link) = slot {
                // Keep what we know of a member, so our first datagrams prove
                // the new incarnation at once. A server we had excluded comes
                // back as a new incarnation: ask anew.
                let peer_incarnation = if self.membership.is_member(ServerId(i as u16)) {
                    link.peer_incarnation()
                } else {
                    0
                };
                let mut fresh = PeerLink::new(incarnation, self.cfg.link.clone());
                fresh.adopt(peer_incarnation);
                *link = fresh;
            }
            self.peer_base[i] = self.posts;
            self.peer_confirmed[i] = 0;
            self.delivered_from[i] = 0;
        }
        self.membership.restart(now);
        self.delivered_before_rejoin = Some(self.delivered_max.clone());
        self.next_counter = self.next_counter.max(incarnation);
        self.rejoins += 1;
        self.events
            .push_back(ReplicaEvent::Rejoined { by, incarnation });
        for post in unsettled {
            let id = MsgId {
                origin: self.cfg.me,
                counter: self.next_counter,
            };
            self.next_counter += 1;
            self.posts += 1;
            self.reposted += 1;
            self.events.push_back(ReplicaEvent::Reposted {
                old: post.id,
                new: id,
            });
            self.strategy.handle_repost(
                now,
                Post {
                    id,
                    room: post.room,
                    line: post.line,
                },
                post.id,
                &mut self.scratch,
            );
        }
        self.flush_outbox();
    }

    /// What the replica did on its own since the last call (view changes,
    /// rejoins, reposted messages).
    pub fn poll_event(&mut self) -> Option<ReplicaEvent> {
        self.events.pop_front()
    }

    /// Members of this server's current view, in server order.
    pub fn view_members(&self) -> Vec<ServerId> {
        self.membership.view().iter().collect()
    }

    /// This server's incarnation (it changes when the server rejoins).
    pub fn incarnation(&self) -> u64 {
        self.cfg.incarnation
    }

    /// Timers are due.
    pub fn handle_timeout(&mut self, now: Time) {
        self.last_now = now;
        if self.membership.next_tick() <= now {
            let silent = self.membership.tick(now);
            self.note_cut_off_change(now);
            // Only a server that hears a quorum shrinks its view: on the
            // minority side of a partition, everybody waits (and nothing
            // it could send would exclude a member of the majority).
            if !silent.is_empty()
                && !self.membership.cut_off()
                && self.membership.hears_quorum_lately(now)
            {
                for peer in silent {
                    self.exclude_peer(now, peer, None);
                }
            }
            self.flush_outbox();
        }
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
            .chain(Some(self.membership.next_tick()))
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
            views_installed: self.membership.changes,
            view_members: self.membership.view().len(),
            rejoins: self.rejoins,
            reposted: self.reposted,
            repeats_dropped: self.repeats_dropped,
            cut_off: self.membership.cut_off(),
            quorum: self.membership.quorum(),
        }
    }

    fn flush_outbox(&mut self) {
        // Hints may make the strategy write more (including more hints).
        while let Some((peer, inc)) = self.scratch.incarnation_hints.pop() {
            let Some(Some(link)) = self.links.get_mut(peer.index()) else {
                continue;
            };
            if !self.membership.is_member(peer) {
                // Out of the view already: its next incarnation proves
                // itself when it shows up.
                continue;
            }
            if link.peer_incarnation() != 0 && inc > link.peer_incarnation() {
                // A member says the incarnation we know is over (it crashed
                // and restarted, or that member excluded it): so do we.
                if self.exclude_peer(self.last_now, peer, None) {
                    continue;
                }
            }
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
        // Nothing goes to a server outside the view: it will come back as
        // a new incarnation that knows none of it.
        for (dest, payload) in self.scratch.sends.drain(..) {
            match dest {
                Dest::Peer(p) => {
                    if let Some(Some(link)) = self.links.get_mut(p.index())
                        && self.membership.is_member(p)
                    {
                        link.push(payload);
                    }
                }
                Dest::AllPeers => {
                    for (i, link) in self.links.iter_mut().enumerate() {
                        if let Some(link) = link
                            && self.membership.is_member(ServerId(i as u16))
                        {
                            link.push(payload.clone());
                        }
                    }
                }
            }
        }
        for id in std::mem::take(&mut self.scratch.discarded) {
            // Never sent: it does not count against the window either.
            self.posts = self.posts.saturating_sub(1);
            self.events.push_back(ReplicaEvent::Discarded { id });
        }
        if let Some(before) = &self.delivered_before_rejoin {
            let n = self.scratch.deliveries.len();
            self.scratch.deliveries.retain(|d| {
                before
                    .get(d.id.origin.index())
                    .is_none_or(|&c| d.id.counter > c)
            });
            self.repeats_dropped += (n - self.scratch.deliveries.len()) as u64;
        }
        self.delivered += self.scratch.deliveries.len() as u64;
        for d in &self.scratch.deliveries {
            let origin = d.id.origin.index();
            if let Some(m) = self.delivered_max.get_mut(origin) {
                *m = (*m).max(d.id.counter);
            }
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
