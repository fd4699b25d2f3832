//! Relay of a departed server's messages among the survivors (the flush of
//! a view change, for `unordered`, `fifo`, `causal` and `total`).
//!
//! When server X's incarnation leaves (it is excluded, or turns out to have
//! restarted), some of the messages it sent may have reached only some of
//! the survivors. Virtual synchrony asks that such a message be delivered by
//! all survivors or by none; this module makes it "all" whenever any
//! survivor has it:
//!
//! - Every server keeps the latest messages it received from each origin,
//!   as their payloads (at most the admission window of them: no server is
//!   ever further behind an origin than that, see the replica).
//! - X's messages travel to each server over one FIFO link, in X's order,
//!   so what a server received of them is a prefix of X's sequence, named
//!   by the highest counter received.
//! - On X's departure every survivor tells the others that counter
//!   ([`RelayMessage::Report`]); each survivor answers a report with every
//!   message of X it holds above the reported counter, in X's order
//!   ([`RelayMessage::Relay`]). A relay is taken only if it extends the
//!   receiver's prefix, so several relayers cost duplicates on the wire,
//!   never duplicate deliveries, and the receiver's prefix stays in X's
//!   order. Every survivor ends with the union of what the survivors held.
//! - A report for an incarnation this server still counts as live waits
//!   until this server sees the departure too: only then is what it holds
//!   of X final.
//!
//! A survivor that received nothing from X's incarnation (or never heard
//! of it: then it reports incarnation 0, "whichever departed") reports 0,
//! and is sent all that is held if its own incarnation is not newer than
//! X's: then X had it as a peer from its start and sent it every message.
//! A newer one (restarted or rejoined since X started) is sent nothing: X
//! sent it only what came after it learned of it, and handing it older
//! messages could repeat what its previous incarnation gave the same
//! clients. Not covered: a server started after X (incarnations are start
//! times) that received nothing at all of X's before X departed.
//!
//! A relayed message a survivor takes joins what it holds of X, and goes on
//! to every peer whose report it answered with less: a survivor that held
//! a message alone may come back as a new incarnation (and forget it)
//! before it answers everybody, and then whoever took it from its relays
//! is the only one left to pass it on.
//!
//! A server that never heard X's incarnation at all joins its flush when
//! it learns of it: from X's departure here (incarnation 0, "whichever"),
//! from a survivor's report, or from a message that depends on one of X's
//! ([`DepartedRelay::learn_departed`]).
//!
//! The flush at a server is complete when every other peer answered its
//! report ([`RelayMessage::Answered`]) or left (one not heard yet is
//! waited for: it may hold what we lack). Until then a
//! new incarnation of X waits ([`DepartedRelay::stash`]), so nothing of it
//! is delivered before a relayed message of the old one.

use super::kind;
use super::stream::{ChatMessage, StreamMessage};
use crate::wire::{Reader, WireError, Writer};
use crate::{Dest, Outbox, ServerId};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// The flush messages shared by `unordered`, `fifo` and `causal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayMessage {
    /// "Of `origin`'s incarnation `incarnation`, I received everything up
    /// to counter `received`": sent to all when that incarnation leaves.
    Report {
        /// The departed server.
        origin: ServerId,
        /// Its departed incarnation.
        incarnation: u64,
        /// The highest of its message counters the sender received.
        received: u64,
    },
    /// One of `origin`'s messages, its payload as `origin` sent it.
    Relay {
        /// The departed server.
        origin: ServerId,
        /// Its departed incarnation.
        incarnation: u64,
        /// The payload `origin` sent (a chat message of the strategy).
        payload: Bytes,
    },
    /// "That was all I hold of `origin`'s incarnation above your report":
    /// ends the answer to a report.
    Answered {
        /// The departed server.
        origin: ServerId,
        /// Its departed incarnation.
        incarnation: u64,
    },
}

impl RelayMessage {
    /// Whether `payload` is a flush message (by its kind byte).
    pub(super) fn is_relay_kind(payload: &[u8]) -> bool {
        matches!(
            payload.first(),
            Some(&kind::FLUSH_REPORT) | Some(&kind::FLUSH_RELAY) | Some(&kind::FLUSH_ANSWERED)
        )
    }

    /// The payload for a peer.
    pub fn encode(&self) -> Bytes {
        let mut w;
        match self {
            RelayMessage::Report {
                origin,
                incarnation,
                received,
            } => {
                w = Writer::with_capacity(24);
                w.u8(kind::FLUSH_REPORT)
                    .varint(u64::from(origin.0))
                    .varint(*incarnation)
                    .varint(*received);
            }
            RelayMessage::Relay {
                origin,
                incarnation,
                payload,
            } => {
                w = Writer::with_capacity(payload.len() + 24);
                w.u8(kind::FLUSH_RELAY)
                    .varint(u64::from(origin.0))
                    .varint(*incarnation)
                    .bytes(payload);
            }
            RelayMessage::Answered {
                origin,
                incarnation,
            } => {
                w = Writer::with_capacity(16);
                w.u8(kind::FLUSH_ANSWERED)
                    .varint(u64::from(origin.0))
                    .varint(*incarnation);
            }
        }
        w.into_bytes()
    }

    /// Decodes a whole payload; any malformed or trailing byte is an error.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let message = match r.u8()? {
            kind::FLUSH_REPORT => RelayMessage::Report {
                origin: ServerId(r.varint_u16("origin")?),
                incarnation: r.varint()?,
                received: r.varint()?,
            },
            kind::FLUSH_RELAY => RelayMessage::Relay {
                origin: ServerId(r.varint_u16("origin")?),
                incarnation: r.varint()?,
                payload: Bytes::copy_from_slice(r.bytes()?),
            },
            kind::FLUSH_ANSWERED => RelayMessage::Answered {
                origin: ServerId(r.varint_u16("origin")?),
                incarnation: r.varint()?,
            },
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(message)
    }
}

/// A message kept for relaying: it gives back the payload its origin sent.
/// `fifo` and `unordered` keep the decoded message (its line is shared
/// with the delivery, so keeping it copies nothing); `causal` the payload.
pub(super) trait Retained: Clone {
    /// The payload as the origin sent it.
    fn payload(&self) -> Bytes;
}

impl Retained for Bytes {
    fn payload(&self) -> Bytes {
        self.clone()
    }
}

impl Retained for ChatMessage {
    fn payload(&self) -> Bytes {
        StreamMessage::Chat(self.clone()).encode()
    }
}

impl DepartedRelay<Bytes> {
    /// [`DepartedRelay::note_received`] of a copy of `payload`: a compact
    /// copy, since a slice would keep the whole datagram it came in alive
    /// for as long as the relay keeps it (a window's worth per origin).
    pub(super) fn note_received_copy(&mut self, from: ServerId, counter: u64, payload: &[u8]) {
        let Some(Some(h)) = self.live.get_mut(from.index()) else {
            return;
        };
        if counter <= h.received {
            return;
        }
        let copy = h.copy(payload);
        self.note_received(from, counter, copy);
    }
}

/// What this server holds of one incarnation of an origin.
#[derive(Debug)]
struct Held<M> {
    incarnation: u64,
    /// `(counter, message)`, oldest first, at most `keep` of them.
    recent: VecDeque<(u64, M)>,
    /// The highest counter received (0: nothing yet).
    received: u64,
    /// Departed only: the peers whose answer to our report has not come.
    awaiting: Vec<ServerId>,
    /// Incarnation 0 ("never heard which") only: relays are taken for an
    /// incarnation below this (0: any), as one at or above it is live here.
    below: u64,
    /// Live only: its messages up to this counter came from relays before
    /// it turned out to be live (it resends them from its start).
    relayed_upto: u64,
    /// Departed only: the peers whose reports we answered, with the
    /// counter each reported, raised by what we relayed to it since.
    answered: Vec<(ServerId, u64)>,
    /// Where copies of this origin's payloads are carved from (see
    /// [`COPY_CHUNK`]); empty until the first copy.
    copies: BytesMut,
}

/// Copies of an origin's payloads ([`DepartedRelay::note_received_copy`])
/// are carved out of chunks of this many bytes: one allocation per chunk
/// instead of one per message (and per drop), which were about 3% of a
/// server's samples at full speed (the drops: cold memory). One origin's copies share a
/// chunk and leave `recent` oldest first, so a chunk is freed soon after
/// its last copy is dropped: at most one chunk more per origin is held
/// than the copies themselves need.
const COPY_CHUNK: usize = 8 * 1024;

impl<M> Held<M> {
    fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            recent: VecDeque::new(),
            received: 0,
            awaiting: Vec::new(),
            below: 0,
            relayed_upto: 0,
            answered: Vec::new(),
            copies: BytesMut::new(),
        }
    }

    /// A copy of `payload`, from this origin's current chunk.
    fn copy(&mut self, payload: &[u8]) -> Bytes {
        if payload.len() > COPY_CHUNK / 4 {
            return Bytes::copy_from_slice(payload);
        }
        // After a split the chunk's view is empty and its capacity is what
        // is left of the chunk.
        if self.copies.capacity() < payload.len() {
            self.copies = BytesMut::with_capacity(COPY_CHUNK);
        }
        self.copies.extend_from_slice(payload);
        self.copies.split().freeze()
    }

    /// Whether relays of `incarnation` extend this departed record.
    fn takes(&self, incarnation: u64) -> bool {
        if self.below != 0 {
            return incarnation < self.below
                && (self.incarnation == 0 || self.incarnation == incarnation);
        }
        self.incarnation == incarnation || self.incarnation == 0
    }
}

/// A relay the caller should hand to its strategy logic.
#[derive(Debug)]
pub(super) struct Relayed {
    pub(super) origin: ServerId,
    /// The departed incarnation the message belongs to.
    pub(super) incarnation: u64,
    pub(super) payload: Bytes,
}

/// See the module docs. Per server: what it holds of the live incarnation
/// of every origin, and of each origin's last departed incarnation.
#[derive(Debug)]
pub(super) struct DepartedRelay<M> {
    me: ServerId,
    keep: usize,
    live: Vec<Option<Held<M>>>,
    departed: Vec<Option<Held<M>>>,
    /// Per server: it left (its incarnation departed) and no new one was
    /// heard since. The others are awaited by a flush, heard or not yet.
    left: Vec<bool>,
    /// Reports about an incarnation that is still live here: `(from,
    /// incarnation, received)`, answered when it departs here too.
    pending: Vec<Vec<(ServerId, u64, u64)>>,
    /// Per origin: payloads of its new incarnation that wait until the
    /// flush of its departed one is complete (so nothing of the new one is
    /// delivered before a relayed message of the old one: sender FIFO).
    stashed: Vec<VecDeque<Bytes>>,
    /// Stashed payloads whose flush completed: the strategy handles them
    /// now, in order ([`DepartedRelay::take_released`]).
    released: VecDeque<(ServerId, Bytes)>,
    /// Messages taken from relays.
    pub(super) relayed: u64,
}

impl<M: Retained> DepartedRelay<M> {
    /// For server `me` of `servers`, keeping `keep` messages per origin.
    pub(super) fn new(me: ServerId, servers: usize, keep: usize) -> Self {
        Self {
            me,
            keep: keep.max(1),
            live: (0..servers).map(|_| None).collect(),
            departed: (0..servers).map(|_| None).collect(),
            left: vec![false; servers],
            pending: vec![Vec::new(); servers],
            stashed: vec![VecDeque::new(); servers],
            released: VecDeque::new(),
            relayed: 0,
        }
    }

    /// `peer` runs `incarnation` from now on. A live older incarnation
    /// departs first (a restart noticed before any exclusion).
    pub(super) fn note_incarnation(&mut self, peer: ServerId, incarnation: u64, out: &mut Outbox) {
        let k = peer.index();
        if k >= self.live.len() || peer == self.me {
            return;
        }
        match &self.live[k] {
            Some(h) if h.incarnation >= incarnation => return,
            Some(_) => {
                self.depart(peer, out);
            }
            None => {
                // A departure of an incarnation we never heard of may have
                // been this very one (the others still count it as live and
                // will not answer): stop waiting; late relays still count.
                if let Some(h) = self.departed[k].as_mut()
                    && h.below == 0
                    && (h.incarnation == 0 || h.incarnation == incarnation)
                {
                    h.below = incarnation;
                    self.complete(peer);
                }
            }
        }
        self.left[k] = false;
        // The departure we never knew the incarnation of was this one, and
        // relays of it were taken: they are its first messages.
        let adopted =
            self.departed[k].take_if(|h| h.below == incarnation && h.incarnation == incarnation);
        self.live[k] = Some(match adopted {
            Some(h) => Held {
                relayed_upto: h.received,
                below: 0,
                awaiting: Vec::new(),
                answered: Vec::new(),
                ..h
            },
            None => Held::new(incarnation),
        });
    }

    /// A chat message from `from`'s live incarnation, with its counter.
    pub(super) fn note_received(&mut self, from: ServerId, counter: u64, message: M) {
        let Some(Some(h)) = self.live.get_mut(from.index()) else {
            return;
        };
        if counter <= h.received {
            return;
        }
        h.received = counter;
        if h.recent.len() == self.keep {
            h.recent.pop_front();
        }
        h.recent.push_back((counter, message));
    }

    /// Whether `from`'s message `counter` was already taken from a relay:
    /// a departure of an incarnation we had never heard of turned out to
    /// be its live one, which resends from its start.
    pub(super) fn already_relayed(&self, from: ServerId, counter: u64) -> bool {
        self.live
            .get(from.index())
            .and_then(|l| l.as_ref())
            .is_some_and(|h| counter <= h.relayed_upto)
    }

    /// Keeps a strategy payload of `from` for later when the flush of its
    /// departed incarnation is not complete yet; `false`: handle it now.
    pub(super) fn stash(&mut self, from: ServerId, payload: &[u8]) -> bool {
        let k = from.index();
        let flushing = self.flushing(from);
        if flushing {
            self.stashed[k].push_back(Bytes::copy_from_slice(payload));
        }
        flushing
    }

    /// Stashed payloads to handle now, in order.
    pub(super) fn take_released(&mut self) -> Option<(ServerId, Bytes)> {
        self.released.pop_front()
    }

    /// `origin`'s flush is complete (or abandoned): its stash is released.
    fn complete(&mut self, origin: ServerId) {
        let k = origin.index();
        if let Some(h) = self.departed[k].as_mut() {
            h.awaiting.clear();
        }
        let stashed = std::mem::take(&mut self.stashed[k]);
        self.released
            .extend(stashed.into_iter().map(|p| (origin, p)));
    }

    /// `peer` answered, or left: no flush waits for it any more.
    fn not_awaited(&mut self, peer: ServerId) {
        for k in 0..self.departed.len() {
            let Some(h) = self.departed[k].as_mut() else {
                continue;
            };
            let before = h.awaiting.len();
            h.awaiting.retain(|&p| p != peer);
            if before > 0 && h.awaiting.is_empty() {
                self.complete(ServerId(k as u16));
            }
        }
    }

    /// `peer`'s live incarnation left: tell the others what we received of
    /// it, and answer the reports that waited for this. Returns the
    /// departed incarnation when relays of it may follow; `None` when there
    /// was none, or this server takes no part (see the module docs).
    ///
    /// The caller first handles what [`DepartedRelay::release_for`]
    /// returns: a previous flush of `peer` ends here.
    pub(super) fn depart(&mut self, peer: ServerId, out: &mut Outbox) -> Option<u64> {
        let k = peer.index();
        if k >= self.live.len() || peer == self.me {
            return None;
        }
        self.not_awaited(peer);
        self.left[k] = true;
        let h = match self.live[k].take() {
            Some(h) => h,
            // Never heard of any incarnation of it: what it sent us was all
            // lost. Incarnation 0 stands for "whichever departed"; the
            // first relay names it.
            None if self.departed[k].is_none() => Held::new(0),
            None => return None,
        };
        let incarnation = h.incarnation;
        let pending = std::mem::take(&mut self.pending[k]);
        let mut h = h;
        for (from, inc, received) in pending {
            if inc == incarnation || inc == 0 {
                let upto = self.answer_from(&h, from, peer, received, out);
                note_answered(&mut h.answered, from, upto);
            }
        }
        self.open_flush(peer, h, out);
        Some(incarnation)
    }

    /// `origin`'s `incarnation` departed, we learn from a peer (its report,
    /// or a message that depends on one of its messages), though we never
    /// heard it: what it sent us was all lost (it restarted before we
    /// heard it), so we take part in its flush, with nothing received.
    pub(super) fn learn_departed(&mut self, origin: ServerId, incarnation: u64, out: &mut Outbox) {
        let k = origin.index();
        if k >= self.live.len() || origin == self.me || incarnation == 0 {
            return;
        }
        let live_newer = self.live[k]
            .as_ref()
            .is_none_or(|l| l.incarnation > incarnation);
        let record_older = self.departed[k]
            .as_ref()
            .is_none_or(|h| h.incarnation != 0 && h.incarnation < incarnation);
        if live_newer && record_older {
            self.open_flush(origin, Held::new(incarnation), out);
        }
    }

    /// `h`, what we hold of `peer`'s departed incarnation, becomes its
    /// record: the others hear what we received of it, and the flush waits
    /// for every live peer's answer.
    fn open_flush(&mut self, peer: ServerId, h: Held<M>, out: &mut Outbox) {
        out.send(
            Dest::AllPeers,
            RelayMessage::Report {
                origin: peer,
                incarnation: h.incarnation,
                received: h.received,
            }
            .encode(),
        );
        let awaiting = (0..self.live.len())
            .map(|i| ServerId(i as u16))
            .filter(|&p| p != self.me && p != peer && !self.left[p.index()])
            .collect();
        self.departed[peer.index()] = Some(Held { awaiting, ..h });
        if !self.flushing(peer) {
            self.complete(peer);
        }
    }

    /// Before `peer`'s live incarnation departs: a flush of its previous
    /// incarnation that is still open ends here, and the live one's
    /// stashed payloads are released, for the caller to handle before the
    /// departure. Nothing happens while no incarnation of it is live (its
    /// next one only arrives).
    pub(super) fn release_for(&mut self, peer: ServerId) {
        if self.live.get(peer.index()).is_some_and(Option::is_some) {
            self.complete(peer);
        }
    }

    /// Whether the flush of `origin`'s departed incarnation still waits for
    /// answers (more of its messages may be relayed).
    pub(super) fn flushing(&self, origin: ServerId) -> bool {
        self.departed
            .get(origin.index())
            .is_some_and(|d| d.as_ref().is_some_and(|h| !h.awaiting.is_empty()))
    }

    /// The departed incarnation of `origin` whose relays are still taken.
    pub(super) fn departed_incarnation(&self, origin: ServerId) -> Option<u64> {
        self.departed
            .get(origin.index())?
            .as_ref()
            .map(|h| h.incarnation)
    }

    /// The highest counter held of `origin`'s last departed incarnation
    /// (what the flush made every survivor hold), if one departed.
    pub(super) fn departed_received(&self, origin: ServerId) -> Option<u64> {
        self.departed
            .get(origin.index())?
            .as_ref()
            .map(|h| h.received)
    }

    /// Handles a flush message from `from`. A relay that extends what we
    /// hold is returned for the strategy to deliver (or hold back).
    pub(super) fn handle(
        &mut self,
        from: ServerId,
        message: RelayMessage,
        out: &mut Outbox,
    ) -> Result<Option<Relayed>, WireError> {
        let origin = match &message {
            RelayMessage::Report { origin, .. }
            | RelayMessage::Relay { origin, .. }
            | RelayMessage::Answered { origin, .. } => *origin,
        };
        let k = origin.index();
        if k >= self.live.len() {
            return Err(WireError::OutOfRange("origin"));
        }
        match message {
            RelayMessage::Report {
                incarnation,
                received,
                ..
            } => {
                if origin == self.me {
                    return Ok(None);
                }
                let matches = |h: &Held<M>| {
                    h.incarnation == incarnation || incarnation == 0 || h.incarnation == 0
                };
                if let Some(h) = self.departed[k].as_ref().filter(|h| matches(h)) {
                    let upto = self.answer_from(h, from, origin, received, out);
                    if let Some(h) = self.departed[k].as_mut() {
                        note_answered(&mut h.answered, from, upto);
                    }
                    return Ok(None);
                }
                let live = self.live[k].as_ref().map(|h| h.incarnation);
                if live.is_some() && (live == Some(incarnation) || incarnation == 0) {
                    // Not final here yet: answered when it departs here.
                    let pending = &mut self.pending[k];
                    pending.retain(|(f, _, _)| *f != from);
                    pending.push((from, incarnation, received));
                    return Ok(None);
                }
                out.send(Dest::Peer(from), answered(origin, incarnation));
                self.learn_departed(origin, incarnation, out);
                Ok(None)
            }
            RelayMessage::Relay {
                incarnation,
                payload,
                ..
            } => Ok(self.departed[k]
                .as_ref()
                .is_some_and(|h| h.takes(incarnation))
                .then_some(Relayed {
                    origin,
                    incarnation,
                    payload,
                })),
            RelayMessage::Answered { incarnation, .. } => {
                if let Some(h) = self.departed[k].as_mut()
                    && (h.incarnation == incarnation || h.incarnation == 0 || incarnation == 0)
                {
                    h.awaiting.retain(|&p| p != from);
                    if h.awaiting.is_empty() {
                        self.complete(origin);
                    }
                }
                Ok(None)
            }
        }
    }

    /// The strategy decoded a relayed message's counter: whether it
    /// extends our prefix of the departed incarnation (then it is taken,
    /// kept with what we hold, and relayed on to the peers we answered
    /// with less).
    pub(super) fn take(
        &mut self,
        relayed: &Relayed,
        counter: u64,
        message: M,
        out: &mut Outbox,
    ) -> bool {
        let keep = self.keep;
        let Some(Some(h)) = self.departed.get_mut(relayed.origin.index()) else {
            return false;
        };
        if !h.takes(relayed.incarnation) || counter <= h.received {
            return false;
        }
        // We never heard which incarnation departed: the relayer knows.
        h.incarnation = relayed.incarnation;
        h.received = counter;
        for (peer, upto) in &mut h.answered {
            if *upto < counter {
                *upto = counter;
                let relay = RelayMessage::Relay {
                    origin: relayed.origin,
                    incarnation: relayed.incarnation,
                    payload: relayed.payload.clone(),
                };
                out.send(Dest::Peer(*peer), relay.encode());
            }
        }
        if h.recent.len() == keep {
            h.recent.pop_front();
        }
        h.recent.push_back((counter, message));
        self.relayed += 1;
        true
    }

    /// Answers `to`'s report about `origin` (it received up to
    /// `received`) from `h`: every message above that, in order, then
    /// [`RelayMessage::Answered`]. A reporter that received nothing is sent
    /// everything only if it is not newer than the departed incarnation
    /// (see the module docs). Returns the highest counter `to` holds now.
    fn answer_from(
        &self,
        h: &Held<M>,
        to: ServerId,
        origin: ServerId,
        received: u64,
        out: &mut Outbox,
    ) -> u64 {
        let reporter = self
            .live
            .get(to.index())
            .and_then(|l| l.as_ref())
            .map_or(u64::MAX, |l| l.incarnation);
        let mut upto = received;
        if received > 0 || reporter <= h.incarnation {
            for (counter, message) in &h.recent {
                if *counter > received {
                    let relay = RelayMessage::Relay {
                        origin,
                        incarnation: h.incarnation,
                        payload: message.payload(),
                    };
                    out.send(Dest::Peer(to), relay.encode());
                    upto = *counter;
                }
            }
        } else {
            // Sent nothing: it must not be sent later relays either.
            upto = u64::MAX;
        }
        out.send(Dest::Peer(to), answered(origin, h.incarnation));
        upto
    }
}

impl DepartedRelay<ChatMessage> {
    /// For `unordered` and `fifo`: handles flush message `payload` of
    /// `from`. A relayed chat that extends our prefix is delivered at once:
    /// relays come in the departed stream's order.
    pub(super) fn handle_stream(
        &mut self,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        let Some(r) = self.handle(from, RelayMessage::decode(payload)?, out)? else {
            return Ok(());
        };
        let StreamMessage::Chat(m) = StreamMessage::decode(&r.payload)? else {
            return Err(WireError::OutOfRange("relayed payload"));
        };
        if self.take(&r, m.counter, m.clone(), out) {
            out.deliver(m.into_stream_msg(r.origin).into());
        }
        Ok(())
    }
}

/// Records that `peer` was answered and holds up to `upto`.
fn note_answered(answered: &mut Vec<(ServerId, u64)>, peer: ServerId, upto: u64) {
    match answered.iter_mut().find(|(p, _)| *p == peer) {
        Some(entry) => entry.1 = upto,
        None => answered.push((peer, upto)),
    }
}

fn answered(origin: ServerId, incarnation: u64) -> Bytes {
    RelayMessage::Answered {
        origin,
        incarnation,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(counter: u64) -> Bytes {
        Bytes::from(vec![kind::CHAT, counter as u8])
    }

    /// Servers 1-3, each holding the first `held[i]` messages of server 0's
    /// incarnation 10 and knowing server j by `incarnation_of(j)`.
    fn survivors(held: [u64; 3], incarnation_of: impl Fn(u16) -> u64) -> Vec<DepartedRelay<Bytes>> {
        let x = ServerId(0);
        let mut nodes: Vec<DepartedRelay<Bytes>> = (1..4)
            .map(|i| DepartedRelay::new(ServerId(i), 4, 100))
            .collect();
        let mut scratch = Outbox::default();
        for (i, (n, &upto)) in nodes.iter_mut().zip(&held).enumerate() {
            n.note_incarnation(x, 10, &mut scratch);
            for j in (1..4u16).filter(|&j| usize::from(j) != i + 1) {
                n.note_incarnation(ServerId(j), incarnation_of(j), &mut scratch);
            }
            for c in 1..=upto {
                n.note_received(x, c, chat(c));
            }
        }
        assert!(scratch.is_empty());
        nodes
    }

    /// Three survivors of server 0 (incarnation 10) that received
    /// different prefixes end with the same prefix, each taking every
    /// message once.
    #[test]
    fn survivors_end_with_the_union_of_what_they_held() {
        let x = ServerId(0);
        // Peers 1 and 2 started before 0's incarnation 10, 3 after it.
        let mut nodes = survivors([3, 5, 0], |j| if j == 3 { 31 } else { 1 });
        // Departure everywhere; deliver every payload (FIFO per link) until
        // quiet, recording what each node takes.
        let mut queue: VecDeque<(usize, usize, Bytes)> = VecDeque::new();
        let mut taken: Vec<Vec<u64>> = vec![Vec::new(); 3];
        for (i, n) in nodes.iter_mut().enumerate() {
            let mut out = Outbox::default();
            n.depart(x, &mut out);
            route(i, out, &mut queue);
        }
        while let Some((from, to, payload)) = queue.pop_front() {
            let mut out = Outbox::default();
            let msg = RelayMessage::decode(&payload).expect("decodes");
            let from_id = ServerId(from as u16 + 1);
            if let Some(r) = nodes[to].handle(from_id, msg, &mut out).expect("valid") {
                let counter = u64::from(r.payload[1]);
                if nodes[to].take(&r, counter, r.payload.clone(), &mut out) {
                    taken[to].push(counter);
                }
            }
            route(to, out, &mut queue);
        }
        assert_eq!(taken[0], vec![4, 5], "the one at 3 gets 4 and 5, once");
        assert!(taken[1].is_empty(), "the most advanced gets nothing");
        assert!(
            taken[2].is_empty(),
            "one started after 0 that received nothing takes no part"
        );
        assert_eq!(nodes[0].relayed, 2);
        // Started no later than the departed incarnation: it was sent
        // everything, so it is given everything.
        let mut early = DepartedRelay::<Bytes>::new(ServerId(3), 4, 100);
        let mut out = Outbox::default();
        early.note_incarnation(x, 10, &mut out);
        assert_eq!(early.depart(x, &mut out), Some(10));
        let mut answer = Outbox::default();
        let (_, report) = out.sends.pop().expect("a report");
        let mut holder = DepartedRelay::<Bytes>::new(ServerId(2), 4, 100);
        holder.note_incarnation(x, 10, &mut answer);
        holder.note_incarnation(ServerId(3), 5, &mut answer);
        for c in 1..=5 {
            holder.note_received(x, c, chat(c));
        }
        let answer = answer_after_departure(&mut holder, x, &report);
        assert_eq!(relays(&answer), 5, "all five held messages");
    }

    /// Copies carved from shared chunks (small payloads) or made alone
    /// (large ones) give back each payload byte for byte, also after the
    /// chunks they came from were replaced and the oldest copies dropped.
    #[test]
    fn kept_copies_are_the_payloads_whatever_their_size() {
        let x = ServerId(0);
        let payload = |c: u64| -> Vec<u8> {
            let len = [1, 100, COPY_CHUNK / 4 + 1, COPY_CHUNK / 4, 3000][c as usize % 5];
            let mut p: Vec<u8> = (0..len).map(|i| (c as usize * 31 + i) as u8).collect();
            p[0] = kind::CHAT;
            p
        };
        let keep = 50;
        let mut early = DepartedRelay::<Bytes>::new(ServerId(3), 4, keep);
        let mut out = Outbox::default();
        early.note_incarnation(x, 10, &mut out);
        early.depart(x, &mut out);
        let (_, report) = out.sends.pop().expect("a report");
        let mut holder = DepartedRelay::<Bytes>::new(ServerId(2), 4, keep);
        let mut answer = Outbox::default();
        holder.note_incarnation(x, 10, &mut answer);
        holder.note_incarnation(ServerId(3), 5, &mut answer);
        for c in 1..=400 {
            holder.note_received_copy(x, c, &payload(c));
            // Twice, or from before: not kept again.
            holder.note_received_copy(x, c, &payload(c + 1));
        }
        let answer = answer_after_departure(&mut holder, x, &report);
        let relayed: Vec<Bytes> = answer
            .sends
            .iter()
            .filter(|(_, p)| p[0] == kind::FLUSH_RELAY)
            .map(|(_, p)| match RelayMessage::decode(p).expect("decodes") {
                RelayMessage::Relay { payload, .. } => payload,
                other => panic!("not a relay: {other:?}"),
            })
            .collect();
        assert_eq!(relayed.len(), keep, "the last {keep} messages");
        for (got, c) in relayed.iter().zip(351..=400u64) {
            assert_eq!(got[..], payload(c)[..], "message {c}");
        }
    }

    /// Survivor 1 alone held messages 4 and 5 of the departed server; it
    /// relays them to survivor 2 and then comes back as a new incarnation
    /// (forgetting them) before it answers survivor 3. Survivor 2 had
    /// already answered 3 with nothing: it passes 4 and 5 on when it takes
    /// them, so 3 ends with them too.
    #[test]
    fn taken_relays_go_on_to_the_peers_answered_with_less() {
        let x = ServerId(0);
        let mut nodes = survivors([5, 3, 3], |_| 1);
        let report_of = |n: &mut DepartedRelay<Bytes>| {
            let mut out = Outbox::default();
            n.depart(x, &mut out);
            let (_, report) = out.sends.pop().expect("a report");
            RelayMessage::decode(&report).expect("decodes")
        };
        let (r1, r2, r3) = (
            report_of(&mut nodes[0]),
            report_of(&mut nodes[1]),
            report_of(&mut nodes[2]),
        );
        let _ = (r1, r3.clone());
        // 2 answers 3: nothing above 3.
        let mut out = Outbox::default();
        assert!(
            nodes[1]
                .handle(ServerId(3), r3, &mut out)
                .expect("ok")
                .is_none()
        );
        assert_eq!(relays(&out), 0);
        // 1 answers 2 with 4 and 5; 2 takes them and passes them on to 3.
        let mut answer = Outbox::default();
        nodes[0].handle(ServerId(2), r2, &mut answer).expect("ok");
        assert_eq!(relays(&answer), 2);
        let mut onward = Outbox::default();
        for (_, payload) in answer.sends {
            let msg = RelayMessage::decode(&payload).expect("decodes");
            if let Some(r) = nodes[1].handle(ServerId(1), msg, &mut onward).expect("ok") {
                let counter = u64::from(r.payload[1]);
                assert!(nodes[1].take(&r, counter, r.payload.clone(), &mut onward));
            }
        }
        let mut taken = Vec::new();
        for (dest, payload) in onward.sends {
            assert_eq!(dest, Dest::Peer(ServerId(3)));
            let msg = RelayMessage::decode(&payload).expect("decodes");
            let mut out = Outbox::default();
            if let Some(r) = nodes[2].handle(ServerId(2), msg, &mut out).expect("ok") {
                let counter = u64::from(r.payload[1]);
                if nodes[2].take(&r, counter, r.payload.clone(), &mut out) {
                    taken.push(counter);
                }
            }
        }
        assert_eq!(taken, vec![4, 5]);
        // And a report that comes after the take is answered with them.
        let mut late = Outbox::default();
        let report = RelayMessage::Report {
            origin: x,
            incarnation: 10,
            received: 3,
        };
        nodes[1].handle(ServerId(3), report, &mut late).expect("ok");
        assert_eq!(relays(&late), 2);
    }

    fn route(from: usize, out: Outbox, queue: &mut VecDeque<(usize, usize, Bytes)>) {
        for (dest, payload) in out.sends {
            match dest {
                Dest::Peer(p) => queue.push_back((from, p.index() - 1, payload)),
                Dest::AllPeers => {
                    for to in (0..3).filter(|&t| t != from) {
                        queue.push_back((from, to, payload.clone()));
                    }
                }
            }
        }
    }

    #[test]
    fn a_report_for_a_live_incarnation_waits_for_the_departure() {
        let x = ServerId(0);
        let mut n = DepartedRelay::<Bytes>::new(ServerId(1), 3, 100);
        let mut out = Outbox::default();
        n.note_incarnation(x, 10, &mut out);
        for c in 1..=4 {
            n.note_received(x, c, chat(c));
        }
        let report = RelayMessage::Report {
            origin: x,
            incarnation: 10,
            received: 2,
        };
        assert!(
            n.handle(ServerId(2), report, &mut out)
                .expect("ok")
                .is_none()
        );
        assert!(
            out.sends.is_empty(),
            "nothing is final while 0 is live here"
        );
        n.depart(x, &mut out);
        assert_eq!(relays(&out), 2, "3 and 4 go to the waiting reporter");
        assert!(
            out.sends
                .iter()
                .all(|(d, p)| p[0] == kind::FLUSH_REPORT || *d == Dest::Peer(ServerId(2))),
            "relays and the answer go to the reporter"
        );
    }

    #[test]
    fn keeps_at_most_the_window_per_origin() {
        let x = ServerId(0);
        let mut n = DepartedRelay::<Bytes>::new(ServerId(1), 3, 2);
        let mut out = Outbox::default();
        n.note_incarnation(x, 10, &mut out);
        for c in 1..=5 {
            n.note_received(x, c, chat(c));
        }
        n.depart(x, &mut out);
        out.sends.clear();
        let report = RelayMessage::Report {
            origin: x,
            incarnation: 10,
            received: 1,
        };
        n.handle(ServerId(2), report, &mut out).expect("ok");
        assert_eq!(relays(&out), 2, "only the last two are kept");
    }

    /// `holder` sees `x` depart, then answers server 3's `report` about
    /// it: what it sends for that answer.
    fn answer_after_departure(
        holder: &mut DepartedRelay<Bytes>,
        x: ServerId,
        report: &[u8],
    ) -> Outbox {
        let mut answer = Outbox::default();
        holder.depart(x, &mut answer);
        answer.sends.clear();
        holder
            .handle(
                ServerId(3),
                RelayMessage::decode(report).expect("ok"),
                &mut answer,
            )
            .expect("ok");
        answer
    }

    fn relays(out: &Outbox) -> usize {
        out.sends
            .iter()
            .filter(|(_, p)| p[0] == kind::FLUSH_RELAY)
            .count()
    }

    #[test]
    fn round_trips() {
        for m in [
            RelayMessage::Report {
                origin: ServerId(3),
                incarnation: 1 << 40,
                received: 77,
            },
            RelayMessage::Relay {
                origin: ServerId(0),
                incarnation: 5,
                payload: Bytes::from_static(b"\x01abc"),
            },
            RelayMessage::Answered {
                origin: ServerId(2),
                incarnation: 9,
            },
        ] {
            assert_eq!(RelayMessage::decode(&m.encode()), Ok(m));
        }
        assert!(RelayMessage::decode(&[kind::FLUSH_RELAY, 1]).is_err());
    }
}
