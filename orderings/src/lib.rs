//! Ordering strategies for the replicated chat server, sans-IO: the protocol
//! the server links, and nothing else (the test tools live in `testkit`).
//!
//! A strategy ([`Ordering`]) is a state machine: it is fed `(now, event)` and
//! writes what should happen (packets for peers, deliveries to local room
//! members) into an [`Outbox`]. It never touches sockets, clocks, threads or
//! global randomness, so the same code runs in the tokio server, in the
//! deterministic simulator and in property tests.
//!
//! Layout (every module is private; this file re-exports the public API):
//! - this file: the vocabulary shared by everything ([`Time`], [`ServerId`],
//!   [`MsgId`], [`Post`], [`Outbox`]) and the [`Ordering`] trait.
//! - `registry`: [`StrategySpec`], the `inventory` registry every strategy
//!   submits to (built-in or plugin), and [`lookup`] by name.
//! - `strategies`: the built-in strategies (`unordered`, `fifo`, `total`,
//!   `causal`); only their peer message formats are public
//!   ([`StreamMessage`], [`TotalMessage`], [`CausalMessage`]), for fuzzing.
//! - `replica`: [`Replica`], a strategy plus one reliable link per peer: a
//!   strategy can rely on every payload it sends reaching each live peer
//!   exactly once and in order, so it only has to solve ordering, not loss.
//! - `link`: the datagram codec and MAC ([`Datagram`], [`seal_datagram`],
//!   [`open_datagram`]) apart from the per-peer link state machine.
//! - `wire`: field encoding ([`Writer`], [`Reader`]), NUL stuffing, and
//!   [`WireError`], the error of every decoder.
//!
//! Users: `node` drives a [`Replica`]; plugin strategies (see `examples/`)
//! implement [`Ordering`] with [`Writer`]/[`Reader`] and register a
//! [`StrategySpec`]; `testkit` simulates replicas; the launcher looks
//! strategies up for their [`Guarantees`]; the fuzz targets and the
//! hostile-peer tests build and decode datagrams and strategy messages.

mod link;
mod membership;
mod registry;
mod replica;
mod strategies;
mod wire;

use bytes::Bytes;
use std::fmt;

pub use link::{
    Datagram, LinkConfig, LinkStats, MAC_LEN, MAGIC, VERSION, open_datagram, seal_datagram,
    sender_of, stamp_sender,
};
pub use membership::{MembershipConfig, View, ViewChange};
pub use registry::{
    Guarantees, StrategySpec, UnknownStrategy, duplicate_names, help_text, lookup, registered,
};
pub use replica::{
    DEFAULT_WINDOW, MEMBERSHIP_KIND, PostError, Replica, ReplicaConfig, ReplicaEvent, ReplicaStats,
    StrategyBuilder, Transmit,
};
pub use strategies::{
    CausalMessage, ChatMessage, ClockEntry, KnownFinal, MAX_CLOCK, MAX_PRIORITY, Priority,
    RelayMessage, Stamp, StampedMessage, StreamMessage, StreamStart, TotalMessage,
};
pub use wire::{Reader, WireError, Writer, stuff_into, unstuff};

/// Virtual or real time in microseconds since an arbitrary origin (the
/// node's start, or the simulation's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);
    /// `us` microseconds after the origin.
    pub fn from_micros(us: u64) -> Self {
        Time(us)
    }
    /// `ms` milliseconds after the origin.
    pub fn from_millis(ms: u64) -> Self {
        Time(ms * 1000)
    }
    /// Microseconds since the origin.
    pub fn as_micros(self) -> u64 {
        self.0
    }
    /// `us` microseconds later (saturating).
    pub fn plus_micros(self, us: u64) -> Self {
        Time(self.0.saturating_add(us))
    }
    /// Microseconds from `earlier` to `self`; 0 if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A server of the cluster, zero-based (server 1 of the config file is
/// `ServerId(0)`). Displayed one-based, as the spec numbers servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServerId(pub u16);

impl ServerId {
    /// The zero-based index, for per-server tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
    /// The spec's one-based server number.
    fn number(self) -> usize {
        self.index() + 1
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{:02}", self.number())
    }
}

/// A chat room number (1..=rooms).
pub type RoomId = u32;

/// Identity of a chat message: the server its client posted it to, and that
/// server's counter. Never the text: the same text may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId {
    /// The server the message was posted to.
    pub origin: ServerId,
    /// That server's counter (starts at its incarnation, grows by one).
    pub counter: u64,
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.origin, self.counter)
    }
}

/// A chat message posted by a local client, as handed to the strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// The message's identity.
    pub id: MsgId,
    /// The room it was posted to.
    pub room: RoomId,
    /// The exact line every member receives: `<nick> text`.
    pub line: Bytes,
}

/// A message the strategy has decided to hand to the local members of
/// `room`, in this order.
pub type Delivery = Post;

/// Where a strategy packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// One peer.
    Peer(ServerId),
    /// Every other server of the cluster.
    AllPeers,
}

/// What a strategy wants done, written by its handlers.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Payloads for peers, in the order written.
    pub sends: Vec<(Dest, Bytes)>,
    /// Messages for the local members, in delivery order.
    pub deliveries: Vec<Delivery>,
    /// "Server X runs incarnation N or later", learned from a third party:
    /// the replica then treats X's older incarnation as dead at once.
    pub incarnation_hints: Vec<(ServerId, u64)>,
    /// The strategy found out that `server`'s view no longer includes this
    /// server (an `isis` final it had no say in): the replica rejoins.
    pub excluded_by: Option<ServerId>,
    /// Own messages posted again after a rejoin that turned out to be
    /// delivered already (by the survivors, from the previous incarnation):
    /// given up, never sent.
    pub discarded: Vec<MsgId>,
}

impl Outbox {
    /// Sends `payload` to `dest` (reliably, in order per peer).
    pub fn send(&mut self, dest: Dest, payload: Bytes) {
        self.sends.push((dest, payload));
    }
    /// Hands `d` to the local members of its room.
    pub fn deliver(&mut self, d: Delivery) {
        self.deliveries.push(d);
    }
    /// Reports that `peer` runs `incarnation` or later.
    pub fn hint_incarnation(&mut self, peer: ServerId, incarnation: u64) {
        self.incarnation_hints.push((peer, incarnation));
    }
    /// Gives up own message `id` (see [`Outbox::discarded`]).
    pub fn discard(&mut self, id: MsgId) {
        self.discarded.push(id);
    }
    /// Nothing written.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
            && self.deliveries.is_empty()
            && self.incarnation_hints.is_empty()
            && self.excluded_by.is_none()
            && self.discarded.is_empty()
    }
}

/// What a strategy knows about the cluster when it is built.
#[derive(Debug, Clone)]
pub struct StrategyContext {
    /// This server.
    pub me: ServerId,
    /// Servers in the cluster, this one included.
    pub servers: usize,
    /// This start's incarnation (grows across restarts; message counters
    /// start here, so ids never repeat across restarts).
    pub incarnation: u64,
    /// The admission window ([`DEFAULT_WINDOW`] unless configured): no
    /// server is ever more than this many of an origin's messages behind
    /// it, so a strategy that relays a departed server's messages keeps
    /// this many per origin.
    pub window: usize,
}

/// Counters a strategy reports (for `-v`, the stress tool and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrategyStats {
    /// Messages received but not yet delivered locally.
    pub held_back: usize,
    /// Messages this server originated whose ordering is not yet settled.
    pub in_flight: usize,
    /// Peer messages dropped by a holdback limit (a broken or hostile peer).
    pub refused: u64,
    /// Messages of departed servers delivered here through a survivor's
    /// relay (they had not reached this server before the departure).
    pub relayed: u64,
}

/// An ordering strategy: a sans-IO state machine.
///
/// The replica guarantees that payloads from a live peer arrive exactly once
/// and in the order that peer sent them (per peer FIFO), and that a strategy
/// sees its own posts through [`Ordering::handle_post`] only. Payloads
/// starting with [`MEMBERSHIP_KIND`] are the replica's own.
///
/// Membership: a peer that leaves the view is announced with
/// [`Ordering::handle_member_left`]; when it comes back it is a new
/// incarnation ([`Ordering::handle_peer_incarnation`] with `restarted`).
/// Payloads for a server outside the view are not sent.
pub trait Ordering: Send {
    /// A local client posted a message.
    fn handle_post(&mut self, now: Time, post: Post, out: &mut Outbox);

    /// A payload from peer `from`. A payload that does not decode is an error
    /// (counted and dropped by the caller), never a panic.
    fn handle_peer(
        &mut self,
        now: Time,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError>;

    /// [`handle_peer`](Self::handle_peer) for a payload in shared bytes
    /// (what the replica passes): a strategy that keeps payloads or lines
    /// can take slices of it (a reference count) instead of copies. By
    /// default, `handle_peer`.
    fn handle_peer_shared(
        &mut self,
        now: Time,
        from: ServerId,
        payload: &Bytes,
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        self.handle_peer(now, from, payload, out)
    }

    /// Peer `peer` is running `incarnation`: called when it is first heard
    /// from (`restarted == false`) and whenever it turns out to have
    /// restarted (`restarted == true`): then everything the old incarnation
    /// knew is gone, and the link to it starts afresh.
    fn handle_peer_incarnation(
        &mut self,
        now: Time,
        peer: ServerId,
        incarnation: u64,
        restarted: bool,
        out: &mut Outbox,
    ) {
        let _ = (now, peer, incarnation, restarted, out);
    }

    /// Peer `peer` left the view: its incarnations before `dead_below` will
    /// never be heard from again, and nothing sent to it arrives. By
    /// default this is handled like a restart of the peer.
    fn handle_member_left(&mut self, now: Time, peer: ServerId, dead_below: u64, out: &mut Outbox) {
        self.handle_peer_incarnation(now, peer, dead_below, true, out);
    }

    /// This server's own posts not delivered here yet, under the ids they
    /// were sent with: posted again when the server rejoins after an
    /// exclusion ([`Ordering::handle_repost`]). Strategies that deliver own
    /// posts at once have none.
    fn unsettled_posts(&self) -> Vec<Post> {
        Vec::new()
    }

    /// After a rejoin: `post` (a new id) is one of the previous
    /// incarnation's [`Ordering::unsettled_posts`], sent as `first_id`. A
    /// strategy that can tell that the others delivered it already gives it
    /// up with [`Outbox::discard`]; by default it is posted anew.
    fn handle_repost(&mut self, now: Time, post: Post, first_id: MsgId, out: &mut Outbox) {
        let _ = first_id;
        self.handle_post(now, post, out);
    }

    /// A timer this strategy asked for (via [`Ordering::poll_timeout`]) fired.
    fn handle_timeout(&mut self, now: Time, out: &mut Outbox) {
        let _ = (now, out);
    }

    /// When the strategy next wants [`Ordering::handle_timeout`] called.
    fn poll_timeout(&self) -> Option<Time> {
        None
    }

    /// Current counters.
    fn stats(&self) -> StrategyStats;
}
