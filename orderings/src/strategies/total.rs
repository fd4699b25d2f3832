//! `total`: leaderless total order from stamps (Lamport clocks) and
//! acknowledgements among all servers; it also keeps each sender's FIFO
//! order and causal order.
//!
//! # Protocol
//!
//! Every server keeps a clock and stamps each message it multicasts with
//! `(clock, server)` after advancing it past everything it has sent or
//! received, so one server's stamps grow along its stream.
//!
//! - A post is stamped and multicast; every server, the origin included,
//!   holds it in one queue ordered by stamp.
//! - A server that received a stamp above the last one it multicast sends
//!   every peer an acknowledgement (a stamp alone): "everything I send from
//!   now on is later". Acknowledgements are coalesced: one per datagram
//!   handled, and none when a message of its own went out meanwhile.
//! - Each link is FIFO, so once a server has received from every member a
//!   stamp of at least `c`, nothing stamped at most `c` can still come: it
//!   delivers its queue up to there, in stamp order.
//!
//! A remote delivery is four one-way delays in a row (client, message,
//! acknowledgements, client), against five with the origin collecting
//! proposals (`isis`). The price is acknowledgements from every server to
//! every other, coalesced per datagram: at high load other servers'
//! messages are the acknowledgements. The order does not depend on the
//! view: it is the stamps' order, so no two servers, live or crashed,
//! deliver two messages in different orders, whatever the failures.
//!
//! # Membership (the flush)
//!
//! A member that leaves (or restarts) stops holding the others up, but a
//! message of it may have reached only some survivors. Those relay it
//! ([`super::relay`]): until the flush of that incarnation is complete
//! here, nothing is delivered beyond the latest stamp received from it (a
//! relayed message lies above it), and its next incarnation is not heard.
//! So a departed server's message is delivered by every survivor or none,
//! in the same place.
//!
//! # Meeting an incarnation
//!
//! A server stamps no post until it has heard from every member since it
//! started (posts made meanwhile wait, in order), so its stamps exceed
//! everything any member delivered before it. Each server sends a
//! [`StampedMessage::Hello`] to every incarnation it meets, once it has
//! completed the flush of that server's previous incarnation; it tells
//! the sequence number its multicasts to the newcomer start at, and the
//! last message of the newcomer's previous incarnation it holds.
//!
//! A server that rejoins after being excluded posts its clients' messages
//! that it had not delivered yet again, except those the survivors hold
//! (the hellos tell it): those the survivors deliver from the flush, at
//! their first stamp, and delivering them again would repeat them.
//!
//! # Without the links
//!
//! Multicasts carry a sequence number per sender, and a receiver handles
//! them in that order starting where the sender's hello says, so the
//! strategy also runs on a reordering network without the replica's links
//! (the simulator's raw mode), as every built-in strategy does.

use super::kind;
use super::relay::{DepartedRelay, RelayMessage};
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::{Reader, WireError, Writer};
use crate::{
    Dest, MsgId, Ordering, Outbox, Post, RoomId, ServerId, StrategyContext, StrategyStats, Time,
};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

/// Largest clock accepted from a peer: no real cluster gets near it, and
/// the headroom keeps the clock from overflowing.
pub const MAX_CLOCK: u64 = 1 << 62;

/// Multicasts from one peer held for an earlier one (a reordering network
/// without links, the wait for a hello, or a hostile peer) at most this
/// many admission windows' worth; beyond, they are refused.
const REORDERED_WINDOWS: usize = 4;

/// A position in the order: unique, since a server never stamps twice with
/// one clock value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// The stamping server's clock.
    pub clock: u64,
    /// The stamping server (zero-based).
    pub server: u16,
}

/// The peer messages of `total`: one kind byte, then fields. Every encoding
/// and decoding of them is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampedMessage {
    /// A chat message, multicast by its origin.
    Chat {
        /// The sender's multicast sequence number.
        seq: u64,
        /// The stamp's clock (the stamping server is the sender).
        clock: u64,
        /// The origin's message counter.
        counter: u64,
        /// The room.
        room: RoomId,
        /// The line every member receives.
        line: Bytes,
    },
    /// "Everything I send from now on is stamped above `clock`."
    Ack {
        /// The sender's multicast sequence number.
        seq: u64,
        /// The stamp's clock.
        clock: u64,
    },
    /// One of the sender's own messages not delivered yet, multicast
    /// before the receiver's incarnation was met (so the receiver never got
    /// it): sent to it just before the hello.
    Resent {
        /// The stamp's clock.
        clock: u64,
        /// The origin's message counter.
        counter: u64,
        /// The room.
        room: RoomId,
        /// The line every member receives.
        line: Bytes,
    },
    /// To an incarnation met for the first time.
    Hello {
        /// The sender's clock (everything it delivered is at most this).
        clock: u64,
        /// The sequence number of the sender's first multicast that the
        /// receiver gets.
        first_seq: u64,
        /// The highest counter the sender holds of the receiver's previous
        /// incarnation, after their flush: those messages are delivered.
        held: Option<u64>,
    },
}

impl StampedMessage {
    /// The payload for a peer.
    pub fn encode(&self) -> Bytes {
        let mut w;
        match self {
            StampedMessage::Chat {
                seq,
                clock,
                counter,
                room,
                line,
            } => {
                w = Writer::with_capacity(line.len() + 32);
                w.u8(kind::STAMPED_CHAT)
                    .varint(*seq)
                    .varint(*clock)
                    .varint(*counter)
                    .varint(u64::from(*room))
                    .bytes(line);
            }
            StampedMessage::Ack { seq, clock } => {
                w = Writer::with_capacity(20);
                w.u8(kind::STAMPED_ACK).varint(*seq).varint(*clock);
            }
            StampedMessage::Resent {
                clock,
                counter,
                room,
                line,
            } => {
                w = Writer::with_capacity(line.len() + 24);
                w.u8(kind::STAMPED_RESENT)
                    .varint(*clock)
                    .varint(*counter)
                    .varint(u64::from(*room))
                    .bytes(line);
            }
            StampedMessage::Hello {
                clock,
                first_seq,
                held,
            } => {
                w = Writer::with_capacity(32);
                w.u8(kind::STAMPED_HELLO).varint(*clock).varint(*first_seq);
                match held {
                    Some(c) => w.u8(1).varint(*c),
                    None => w.u8(0),
                };
            }
        }
        w.into_bytes()
    }

    /// Decodes a payload; anything malformed is an error, never a panic.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        Self::decode_with(payload, Bytes::copy_from_slice)
    }

    /// Decodes a payload the caller keeps anyway: the line shares its bytes
    /// (one copy per message, not two).
    fn decode_shared(payload: &Bytes) -> Result<Self, WireError> {
        Self::decode_with(payload, |line| payload.slice_ref(line))
    }

    fn decode_with(payload: &[u8], line_of: impl Fn(&[u8]) -> Bytes) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let clock_of = |r: &mut Reader<'_>| -> Result<u64, WireError> {
            let c = r.varint()?;
            if c > MAX_CLOCK {
                return Err(WireError::OutOfRange("stamp clock"));
            }
            Ok(c)
        };
        let message = match r.u8()? {
            kind::STAMPED_CHAT => {
                let seq = r.varint()?;
                let clock = clock_of(&mut r)?;
                StampedMessage::Chat {
                    seq,
                    clock,
                    counter: r.varint()?,
                    room: r.varint_u32("room")?,
                    line: line_of(r.bytes()?),
                }
            }
            kind::STAMPED_ACK => {
                let seq = r.varint()?;
                StampedMessage::Ack {
                    seq,
                    clock: clock_of(&mut r)?,
                }
            }
            kind::STAMPED_RESENT => {
                let clock = clock_of(&mut r)?;
                StampedMessage::Resent {
                    clock,
                    counter: r.varint()?,
                    room: r.varint_u32("room")?,
                    line: line_of(r.bytes()?),
                }
            }
            kind::STAMPED_HELLO => {
                let clock = clock_of(&mut r)?;
                let first_seq = r.varint()?;
                let held = match r.u8()? {
                    0 => None,
                    1 => Some(r.varint()?),
                    _ => return Err(WireError::OutOfRange("hello flag")),
                };
                StampedMessage::Hello {
                    clock,
                    first_seq,
                    held,
                }
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(message)
    }
}

#[derive(Debug, Clone)]
struct Held {
    id: MsgId,
    room: RoomId,
    line: Bytes,
}

/// A post that waits until this server may stamp (see the module docs).
#[derive(Debug)]
struct Waiting {
    post: Post,
    /// Posted again after a rejoin: its id in the incarnation it was first
    /// sent by.
    first_id: Option<MsgId>,
}

/// What this server knows of one peer.
#[derive(Debug, Default)]
struct PeerState {
    /// In the view, as the replica told us (every peer starts as one).
    member: bool,
    /// The latest stamp clock received from its current incarnation.
    latest: Option<u64>,
    /// While the flush of its departed incarnation runs: the latest stamp
    /// clock received from that one (`None`: nothing).
    departed_latest: Option<u64>,
    /// The sequence number of its next multicast to handle; `None` until
    /// its hello says where they start.
    expected: Option<u64>,
    /// Its multicasts that came before an earlier one (or before its hello).
    reordered: BTreeMap<u64, Bytes>,
    /// A hello is owed to its current incarnation, starting at this
    /// sequence number; sent once the flush of its previous one completed.
    hello_due: Option<u64>,
    /// Our own messages that were waiting when we met its new incarnation:
    /// it never got them (the link started afresh), so they go just before
    /// the hello.
    resend: Vec<(u64, Held)>,
}

/// The strategy's state (see the module docs).
pub(super) struct Total {
    me: ServerId,
    clock: u64,
    /// Sequence number of our next multicast.
    next_seq: u64,
    peers: Vec<PeerState>,
    queue: BTreeMap<Stamp, Held>,
    /// The last stamp delivered: nothing at or below it is taken any more.
    delivered_upto: Option<Stamp>,
    /// The clock of our latest multicast stamp.
    announced: u64,
    /// The highest stamp clock received that calls for an acknowledgement.
    to_cover: u64,
    /// Heard from every member since we started: we may stamp.
    ready: bool,
    waiting: VecDeque<Waiting>,
    /// Our own messages in `queue`.
    own_queued: usize,
    /// The highest counter of our previous incarnation some survivor holds.
    previous_held: Option<u64>,
    relay: DepartedRelay<Bytes>,
    refused: u64,
    last_now: Time,
    /// Bound of each peer's `reordered`.
    max_reordered: usize,
}

impl Total {
    fn new(ctx: &StrategyContext) -> Self {
        let peers = (0..ctx.servers)
            .map(|i| PeerState {
                member: i != ctx.me.index(),
                hello_due: (i != ctx.me.index()).then_some(1),
                ..PeerState::default()
            })
            .collect();
        Self {
            me: ctx.me,
            clock: 0,
            next_seq: 1,
            peers,
            queue: BTreeMap::new(),
            delivered_upto: None,
            announced: 0,
            to_cover: 0,
            ready: ctx.servers <= 1,
            waiting: VecDeque::new(),
            own_queued: 0,
            previous_held: None,
            relay: DepartedRelay::new(ctx.me, ctx.servers, ctx.window),
            refused: 0,
            last_now: Time::ZERO,
            max_reordered: ctx.window.saturating_mul(REORDERED_WINDOWS).max(1 << 16),
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Stamps and multicasts a post, and queues it here.
    fn multicast(&mut self, post: Post, out: &mut Outbox) {
        let clock = self.tick();
        let seq = self.take_seq();
        let chat = StampedMessage::Chat {
            seq,
            clock,
            counter: post.id.counter,
            room: post.room,
            line: post.line.clone(),
        };
        out.send(Dest::AllPeers, chat.encode());
        self.announced = clock;
        self.own_queued += 1;
        self.queue.insert(
            Stamp {
                clock,
                server: self.me.0,
            },
            Held {
                id: post.id,
                room: post.room,
                line: post.line,
            },
        );
    }

    /// Queues `origin`'s chat message (received, resent or relayed) at its
    /// stamp, unless the order has passed it (a hostile or broken peer:
    /// refused). Like any chat, it calls for an acknowledgement: the others
    /// wait for our stamps to pass it.
    fn hold(&mut self, origin: ServerId, clock: u64, counter: u64, room: RoomId, line: Bytes) {
        self.clock = self.clock.max(clock);
        self.to_cover = self.to_cover.max(clock);
        let stamp = Stamp {
            clock,
            server: origin.0,
        };
        if self.delivered_upto.is_some_and(|d| stamp <= d) || self.queue.contains_key(&stamp) {
            self.refused += 1;
            return;
        }
        let id = MsgId { origin, counter };
        self.queue.insert(stamp, Held { id, room, line });
    }

    /// Records a stamp from `from`'s current incarnation: stamps grow along
    /// a link.
    fn observe(&mut self, from: ServerId, clock: u64) -> Result<(), WireError> {
        let st = &mut self.peers[from.index()];
        if st.latest.is_some_and(|prev| clock <= prev) {
            return Err(WireError::OutOfRange("stamp did not grow"));
        }
        st.latest = Some(clock);
        self.clock = self.clock.max(clock);
        Ok(())
    }

    fn peer_index(&self, from: ServerId) -> Result<usize, WireError> {
        let k = from.index();
        if k >= self.peers.len() || from == self.me {
            return Err(WireError::OutOfRange("server"));
        }
        Ok(k)
    }

    /// A payload of `from`, in bytes the relay may keep and the line shares.
    fn handle_payload(
        &mut self,
        from: ServerId,
        payload: &Bytes,
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        let k = self.peer_index(from)?;
        if RelayMessage::is_relay_kind(payload) {
            return self.handle_relay(from, payload, out);
        }
        let message = StampedMessage::decode_shared(payload)?;
        if self.relay.stash(from, payload) {
            return Ok(());
        }
        let seq = match &message {
            StampedMessage::Hello {
                clock,
                first_seq,
                held,
            } => {
                let st = &mut self.peers[k];
                if st.expected.is_none() {
                    st.expected = Some(*first_seq);
                    st.reordered = st.reordered.split_off(first_seq);
                }
                if let Some(h) = held {
                    self.previous_held = Some(self.previous_held.map_or(*h, |p| p.max(*h)));
                }
                let clock = *clock;
                // What was multicast before the hello goes first.
                self.handle_in_order(from)?;
                let st = &mut self.peers[k];
                st.latest = Some(st.latest.map_or(clock, |l| l.max(clock)));
                self.clock = self.clock.max(clock);
                self.to_cover = self.to_cover.max(clock);
                return Ok(());
            }
            StampedMessage::Resent {
                clock,
                counter,
                room,
                line,
            } => {
                // Before the hello, so nothing is delivered here yet that
                // it could come after.
                self.relay.note_received_copy(from, *counter, payload);
                self.hold(from, *clock, *counter, *room, line.clone());
                return Ok(());
            }
            StampedMessage::Chat { seq, .. } | StampedMessage::Ack { seq, .. } => *seq,
        };
        let st = &mut self.peers[k];
        if st.expected.is_some_and(|e| seq < e) || st.reordered.contains_key(&seq) {
            return Ok(()); // before the hello's start, or twice: not ours
        }
        if st.expected == Some(seq) && st.reordered.is_empty() {
            // The usual case over the links: next in line, nothing waits.
            st.expected = Some(seq + 1);
            return self.handle_multicast(from, message, payload);
        }
        if st.reordered.len() >= self.max_reordered {
            self.refused += 1;
            return Ok(());
        }
        st.reordered.insert(seq, payload.clone());
        self.handle_in_order(from)
    }

    /// Handles `from`'s multicasts that are next in its sequence.
    fn handle_in_order(&mut self, from: ServerId) -> Result<(), WireError> {
        let k = from.index();
        loop {
            let st = &mut self.peers[k];
            let Some(expected) = st.expected else {
                return Ok(());
            };
            let Some(payload) = st.reordered.remove(&expected) else {
                return Ok(());
            };
            st.expected = Some(expected + 1);
            let message = StampedMessage::decode_shared(&payload)?;
            self.handle_multicast(from, message, &payload)?;
        }
    }

    /// A chat or acknowledgement of `from`, in its sequence.
    fn handle_multicast(
        &mut self,
        from: ServerId,
        message: StampedMessage,
        payload: &Bytes,
    ) -> Result<(), WireError> {
        match message {
            StampedMessage::Chat {
                clock,
                counter,
                room,
                line,
                ..
            } => {
                self.observe(from, clock)?;
                self.relay.note_received_copy(from, counter, payload);
                self.hold(from, clock, counter, room, line);
            }
            StampedMessage::Ack { clock, .. } => {
                self.observe(from, clock)?;
            }
            StampedMessage::Hello { .. } | StampedMessage::Resent { .. } => {
                return Err(WireError::OutOfRange("not a multicast"));
            }
        }
        Ok(())
    }

    fn handle_relay(
        &mut self,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        let Some(r) = self
            .relay
            .handle(from, RelayMessage::decode(payload)?, out)?
        else {
            return Ok(());
        };
        // What is kept for relaying is a chat as multicast, or as resent to
        // this server when it met the origin late.
        let (clock, counter, room, line) = match StampedMessage::decode(&r.payload)? {
            StampedMessage::Chat {
                clock,
                counter,
                room,
                line,
                ..
            }
            | StampedMessage::Resent {
                clock,
                counter,
                room,
                line,
            } => (clock, counter, room, line),
            _ => return Err(WireError::OutOfRange("relayed payload")),
        };
        if self.relay.take(&r, counter, r.payload.clone(), out) {
            self.hold(r.origin, clock, counter, room, line);
        }
        Ok(())
    }

    /// Everything that may follow any handler: payloads released by a
    /// completed flush, hellos owed, posts that waited, deliveries.
    fn settle(&mut self, out: &mut Outbox) {
        while let Some((from, payload)) = self.relay.take_released() {
            // It decoded when it arrived.
            let _ = self.handle_payload(from, &payload, out);
        }
        for k in 0..self.peers.len() {
            let p = ServerId(k as u16);
            let st = &self.peers[k];
            let Some(first_seq) = st.hello_due else {
                continue;
            };
            if !st.member || self.relay.flushing(p) {
                continue;
            }
            self.peers[k].hello_due = None;
            for (clock, held) in std::mem::take(&mut self.peers[k].resend) {
                let resent = StampedMessage::Resent {
                    clock,
                    counter: held.id.counter,
                    room: held.room,
                    line: held.line,
                };
                out.send(Dest::Peer(p), resent.encode());
            }
            let hello = StampedMessage::Hello {
                clock: self.tick(),
                first_seq,
                held: self.relay.departed_received(p),
            };
            out.send(Dest::Peer(p), hello.encode());
        }
        self.check_ready(out);
        self.deliver(out);
    }

    /// Once every member was heard from, stamps the posts that waited;
    /// a post again of one the survivors hold is given up (see the module
    /// docs).
    fn check_ready(&mut self, out: &mut Outbox) {
        if !self.ready {
            if self.peers.iter().any(|p| p.member && p.latest.is_none()) {
                return;
            }
            self.ready = true;
        }
        while let Some(w) = self.waiting.pop_front() {
            if let Some(first) = w.first_id
                && self.previous_held.is_some_and(|h| first.counter <= h)
            {
                out.discard(w.post.id);
                continue;
            }
            self.multicast(w.post, out);
        }
    }

    /// Delivers, in stamp order, every queued message that nothing can
    /// still precede.
    fn deliver(&mut self, out: &mut Outbox) {
        let mut frontier = u64::MAX;
        for (k, st) in self.peers.iter().enumerate() {
            if k == self.me.index() {
                continue;
            }
            if st.member {
                match st.latest {
                    Some(c) => frontier = frontier.min(c),
                    None => return,
                }
            }
            if self.relay.flushing(ServerId(k as u16)) {
                match st.departed_latest {
                    Some(c) => frontier = frontier.min(c),
                    None => return,
                }
            }
        }
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().clock > frontier {
                break;
            }
            let stamp = *entry.key();
            let held = entry.remove();
            if held.id.origin == self.me {
                self.own_queued -= 1;
            }
            self.delivered_upto = Some(stamp);
            out.deliver(Post {
                id: held.id,
                room: held.room,
                line: held.line,
            });
        }
    }

    /// `peer`'s current incarnation is over: its stamps hold us up only
    /// until its flush completes.
    fn depart(&mut self, peer: ServerId, out: &mut Outbox) {
        self.relay.release_for(peer);
        self.settle(out);
        let st = &mut self.peers[peer.index()];
        st.departed_latest = st.latest.take();
        st.expected = None;
        st.reordered.clear();
        st.hello_due = None;
        st.resend.clear();
    }
}

impl Ordering for Total {
    fn handle_post(&mut self, now: Time, post: Post, out: &mut Outbox) {
        self.last_now = now;
        self.waiting.push_back(Waiting {
            post,
            first_id: None,
        });
        self.settle(out);
    }

    fn handle_repost(&mut self, now: Time, post: Post, first_id: MsgId, out: &mut Outbox) {
        self.last_now = now;
        self.waiting.push_back(Waiting {
            post,
            first_id: Some(first_id),
        });
        self.settle(out);
    }

    fn handle_peer(
        &mut self,
        now: Time,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        self.handle_peer_shared(now, from, &Bytes::copy_from_slice(payload), out)
    }

    fn handle_peer_shared(
        &mut self,
        now: Time,
        from: ServerId,
        payload: &Bytes,
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        self.last_now = now;
        let result = self.handle_payload(from, payload, out);
        self.settle(out);
        result
    }

    fn handle_peer_incarnation(
        &mut self,
        now: Time,
        peer: ServerId,
        incarnation: u64,
        restarted: bool,
        out: &mut Outbox,
    ) {
        self.last_now = now;
        if peer == self.me || peer.index() >= self.peers.len() {
            return;
        }
        // The link to a new incarnation starts afresh: our multicasts reach
        // it from this one on (even those sent before the hello).
        let first_seq = self.next_seq;
        if restarted {
            self.depart(peer, out);
        }
        self.relay.note_incarnation(peer, incarnation, out);
        let own: Vec<(u64, Held)> = if restarted {
            self.queue
                .iter()
                .filter(|(_, h)| h.id.origin == self.me)
                .map(|(s, h)| (s.clock, h.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let st = &mut self.peers[peer.index()];
        st.member = true;
        if restarted {
            st.hello_due = Some(first_seq);
            st.resend = own;
        }
        self.settle(out);
    }

    fn handle_member_left(
        &mut self,
        now: Time,
        peer: ServerId,
        _dead_below: u64,
        out: &mut Outbox,
    ) {
        self.last_now = now;
        if peer == self.me || peer.index() >= self.peers.len() {
            return;
        }
        self.depart(peer, out);
        self.peers[peer.index()].member = false;
        self.relay.depart(peer, out);
        self.settle(out);
    }

    fn unsettled_posts(&self) -> Vec<Post> {
        let own = self
            .queue
            .values()
            .filter(|h| h.id.origin == self.me)
            .map(|h| Post {
                id: h.id,
                room: h.room,
                line: h.line.clone(),
            });
        // A post that waits again keeps the id it was first sent under:
        // that is what the survivors may hold.
        let waiting = self.waiting.iter().map(|w| Post {
            id: w.first_id.unwrap_or(w.post.id),
            room: w.post.room,
            line: w.post.line.clone(),
        });
        own.chain(waiting).collect()
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Outbox) {
        self.last_now = now;
        self.settle(out);
        if self.to_cover > self.announced {
            let clock = self.tick();
            let seq = self.take_seq();
            out.send(Dest::AllPeers, StampedMessage::Ack { seq, clock }.encode());
            self.announced = clock;
        }
    }

    /// An acknowledgement waits for the end of the datagram being handled
    /// (the replica runs due timers then), so one covers all it carried.
    fn poll_timeout(&self) -> Option<Time> {
        (self.to_cover > self.announced).then_some(self.last_now)
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            refused: self.refused,
            held_back: self.queue.len() - self.own_queued
                + self.peers.iter().map(|p| p.reordered.len()).sum::<usize>(),
            in_flight: self.own_queued + self.waiting.len(),
            relayed: self.relay.relayed,
        }
    }
}

fn build(ctx: &StrategyContext) -> Box<dyn Ordering> {
    Box::new(Total::new(ctx))
}

inventory::submit! {
    StrategySpec {
        name: "total",
        summary: "one identical order for all members (stamps and acknowledgements among all servers, leaderless: four one-way delays), keeping each sender's order and causal order",
        guarantees: Guarantees { fifo: true, total: true, causal: true },
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(me: u16, servers: usize) -> StrategyContext {
        StrategyContext {
            me: ServerId(me),
            servers,
            incarnation: 1,
            window: 64,
        }
    }

    /// Three servers wired by hand (FIFO, nothing lost): payloads are
    /// handed over one hop at a time, so a test can count hops.
    struct Trio {
        nodes: Vec<Total>,
        /// `(from, to, payload)` sent but not yet handed over.
        wire: Vec<(usize, usize, Bytes)>,
        delivered: Vec<Vec<MsgId>>,
    }

    impl Trio {
        fn new() -> Self {
            let mut t = Trio {
                nodes: (0..3).map(|i| Total::new(&ctx(i, 3))).collect(),
                wire: Vec::new(),
                delivered: vec![Vec::new(); 3],
            };
            for i in 0..3 {
                for p in (0..3).filter(|&p| p != i) {
                    let mut out = Outbox::default();
                    t.nodes[i].handle_peer_incarnation(
                        Time::ZERO,
                        ServerId(p as u16),
                        1,
                        false,
                        &mut out,
                    );
                    t.take(i, out);
                }
            }
            while !t.wire.is_empty() {
                t.hop();
            }
            t
        }

        fn take(&mut self, from: usize, out: Outbox) {
            for (dest, payload) in out.sends {
                match dest {
                    Dest::Peer(p) => self.wire.push((from, p.index(), payload)),
                    Dest::AllPeers => {
                        for to in (0..3).filter(|&to| to != from) {
                            self.wire.push((from, to, payload.clone()));
                        }
                    }
                }
            }
            for d in out.deliveries {
                self.delivered[from].push(d.id);
            }
        }

        /// Hands over everything on the wire now (one one-way delay), each
        /// receiver ending the "datagram" with its timer like the replica.
        fn hop(&mut self) {
            for (from, to, payload) in std::mem::take(&mut self.wire) {
                let mut out = Outbox::default();
                let node = &mut self.nodes[to];
                node.handle_peer(Time::ZERO, ServerId(from as u16), &payload, &mut out)
                    .expect("valid payload");
                if node.poll_timeout().is_some() {
                    node.handle_timeout(Time::ZERO, &mut out);
                }
                self.take(to, out);
            }
        }

        fn post(&mut self, at: usize, counter: u64) -> MsgId {
            let id = MsgId {
                origin: ServerId(at as u16),
                counter,
            };
            let mut out = Outbox::default();
            self.nodes[at].handle_post(
                Time::ZERO,
                Post {
                    id,
                    room: 1,
                    line: Bytes::from_static(b"<a> hi"),
                },
                &mut out,
            );
            self.take(at, out);
            id
        }
    }

    /// A remote server delivers after two one-way delays (the message, then
    /// the third server's acknowledgement), the origin after two as well:
    /// with the client's two hops, four in all, one fewer than `isis`.
    #[test]
    fn a_message_is_delivered_everywhere_after_two_one_way_delays() {
        let mut t = Trio::new();
        let id = t.post(0, 10);
        t.hop(); // the message reaches servers 1 and 2, which acknowledge
        assert!(t.delivered.iter().all(Vec::is_empty), "{:?}", t.delivered);
        t.hop(); // the acknowledgements arrive
        for (i, d) in t.delivered.iter().enumerate() {
            assert_eq!(d, &vec![id], "server {i}");
        }
    }

    /// Concurrent posts at every server end in one order everywhere.
    #[test]
    fn concurrent_posts_are_delivered_in_one_order() {
        let mut t = Trio::new();
        let mut counter = 100;
        for round in 0..5 {
            for at in 0..3 {
                counter += 1;
                t.post(at, counter);
            }
            if round % 2 == 0 {
                t.hop();
            }
        }
        for _ in 0..6 {
            t.hop();
        }
        assert_eq!(t.delivered[0].len(), 15);
        assert_eq!(t.delivered[0], t.delivered[1]);
        assert_eq!(t.delivered[0], t.delivered[2]);
    }

    /// Acknowledgements are coalesced: a burst of messages from one server
    /// costs each other server one acknowledgement, not one per message.
    #[test]
    fn one_acknowledgement_covers_a_burst() {
        let mut t = Trio::new();
        let mut burst = Vec::new();
        for c in 0..20 {
            let mut out = Outbox::default();
            t.nodes[0].handle_post(
                Time::ZERO,
                Post {
                    id: MsgId {
                        origin: ServerId(0),
                        counter: 200 + c,
                    },
                    room: 1,
                    line: Bytes::from_static(b"<a> x"),
                },
                &mut out,
            );
            burst.extend(out.sends.into_iter().map(|(_, p)| p));
        }
        // All twenty in one "datagram" to server 1.
        let mut out = Outbox::default();
        for p in &burst {
            t.nodes[1]
                .handle_peer(Time::ZERO, ServerId(0), p, &mut out)
                .expect("valid");
        }
        assert!(t.nodes[1].poll_timeout().is_some());
        t.nodes[1].handle_timeout(Time::ZERO, &mut out);
        let acks = out
            .sends
            .iter()
            .filter(|(_, p)| p.first() == Some(&kind::STAMPED_ACK))
            .count();
        assert_eq!(acks, 1);
        assert_eq!(t.nodes[1].poll_timeout(), None);
    }

    #[test]
    fn a_clock_beyond_the_limit_or_a_stamp_that_did_not_grow_is_refused() {
        let mut w = Writer::new();
        w.u8(kind::STAMPED_ACK).varint(1).varint(MAX_CLOCK + 1);
        assert!(StampedMessage::decode(&w.finish()).is_err());
        let mut t = Trio::new();
        let mut out = Outbox::default();
        let latest = t.nodes[1].peers[0].latest.expect("heard server 0");
        let seq = t.nodes[1].peers[0].expected.expect("hello came");
        let stale = StampedMessage::Ack { seq, clock: latest }.encode();
        assert!(
            t.nodes[1]
                .handle_peer(Time::ZERO, ServerId(0), &stale, &mut out)
                .is_err()
        );
    }
}
