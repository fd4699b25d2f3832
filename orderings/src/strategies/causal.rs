//! `causal`: causal order per room with vector clocks over servers.
//!
//! Entry `k` of a room's clock at a server counts the messages from server
//! `k` delivered there in that room. A server delivers a message to all its
//! members at once, so "a member saw `a` before sending `b`" implies "`b`'s
//! origin server had delivered `a` before it stamped `b`": a clock per server
//! (not per client) captures every causal dependency, stays `servers` long,
//! and needs no clean-up when clients leave. It also keeps per-sender FIFO
//! (entry `origin` must be exactly one more than delivered).
//!
//! Restarts: each entry also names the incarnation of server `k` it counts.
//! A new incarnation counts from 1 again; a dependency on messages of a
//! crashed incarnation is released (those that never arrived are lost with
//! the crashed server's clients), and its undelivered messages are dropped.
//! The restarted server has delivered nothing, while the survivors' counts
//! go on: each survivor tells it where its count stands in every room
//! ([`CausalMessage::Start`], the first payload on the fresh link), so that
//! what the survivors send from then on is deliverable there.
//!
//! Departures: the survivors relay a departed incarnation's messages among
//! themselves ([`super::relay`]). While this server holds a departed
//! incarnation's record, dependencies on it wait for its relayed messages
//! instead of being released, and its held messages stay (counted in
//! [`CausalRoom::departed`]); every survivor that depends on such a message
//! delivered it, so it relays it to whoever lacks it.

use super::kind;
use super::relay::{DepartedRelay, RelayMessage};
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::{Reader, WireError, Writer};
use crate::{
    Dest, MsgId, Ordering, Outbox, Post, RoomId, ServerId, StrategyContext, StrategyStats, Time,
};
use bytes::Bytes;
use std::collections::HashMap;

/// One vector clock entry: `count` messages of incarnation `incarnation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockEntry {
    /// The server's incarnation the count is of; not on the wire when
    /// `count` is 0, and then 0.
    pub incarnation: u64,
    /// Messages of that incarnation delivered, in the message's room.
    pub count: u64,
}

/// The peer messages of `causal`: one kind byte, then fields. Every
/// encoding and decoding of them is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CausalMessage {
    /// A chat message stamped with its origin's clock for the room.
    Chat {
        /// The origin's message counter.
        counter: u64,
        /// The room the message was posted to.
        room: RoomId,
        /// One entry per server (the receiver checks the length).
        clock: Vec<ClockEntry>,
        /// The line every member receives.
        line: Bytes,
    },
    /// The sender's count of its own messages delivered in `room`: the
    /// first payload to a restarted peer.
    Start {
        /// The room.
        room: RoomId,
        /// The sender's own messages it delivered in `room`.
        count: u64,
    },
}

impl CausalMessage {
    /// The payload for a peer.
    pub fn encode(&self) -> Bytes {
        let mut w;
        match self {
            CausalMessage::Chat {
                counter,
                room,
                clock,
                line,
            } => {
                w = Writer::with_capacity(line.len() + 16 + 10 * clock.len());
                w.u8(kind::CAUSAL_MSG)
                    .varint(*counter)
                    .varint(u64::from(*room))
                    .varint(clock.len() as u64);
                for e in clock {
                    w.varint(e.count);
                    if e.count > 0 {
                        w.varint(e.incarnation);
                    }
                }
                w.bytes(line);
            }
            CausalMessage::Start { room, count } => {
                w = Writer::with_capacity(12);
                w.u8(kind::CAUSAL_START)
                    .varint(u64::from(*room))
                    .varint(*count);
            }
        }
        w.into_bytes()
    }

    /// Decodes a whole payload; any malformed or trailing byte is an error.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let message = match r.u8()? {
            kind::CAUSAL_START => CausalMessage::Start {
                room: r.varint_u32("room")?,
                count: r.varint()?,
            },
            kind::CAUSAL_MSG => {
                let counter = r.varint()?;
                let room = r.varint_u32("room")?;
                let len = r.varint()?;
                // Each entry takes a byte at least: bounds the allocation.
                if len > r.remaining() as u64 {
                    return Err(WireError::OutOfRange("clock length"));
                }
                let mut clock = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    let count = r.varint()?;
                    let incarnation = if count > 0 { r.varint()? } else { 0 };
                    clock.push(ClockEntry { incarnation, count });
                }
                let line = Bytes::copy_from_slice(r.bytes()?);
                CausalMessage::Chat {
                    counter,
                    room,
                    clock,
                    line,
                }
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(message)
    }
}

#[derive(Debug, Clone)]
struct Stamped {
    id: MsgId,
    clock: Vec<ClockEntry>,
    line: Bytes,
}

#[derive(Debug)]
struct CausalRoom {
    /// Per server: messages of its current incarnation delivered here.
    delivered: Vec<u64>,
    /// Per server: messages of its departed incarnation (the one
    /// [`Causal::departed`] names) delivered here.
    departed: Vec<u64>,
    held: Vec<Stamped>,
}

/// Most messages held back per (origin, room). An honest origin cannot get
/// this far ahead of us: it refuses posts once its link to us holds 65,536
/// unacknowledged payloads. Beyond it, a broken or hostile peer's messages
/// are dropped and counted.
pub(super) const MAX_HELD_PER_ORIGIN: usize = 1 << 17;

pub(super) struct Causal {
    /// Messages dropped by the holdback limit.
    pub refused: u64,
    me: ServerId,
    servers: usize,
    /// Current incarnation of every server (0 = not heard from yet).
    incarnations: Vec<u64>,
    /// Per server: the departed incarnation whose messages may still be
    /// relayed (mirrors the relay's record).
    departed: Vec<Option<u64>>,
    rooms: HashMap<RoomId, CausalRoom>,
    relay: DepartedRelay<Bytes>,
}

impl Causal {
    pub(super) fn new(ctx: &StrategyContext) -> Self {
        let mut incarnations = vec![0; ctx.servers];
        incarnations[ctx.me.index()] = ctx.incarnation;
        Self {
            refused: 0,
            me: ctx.me,
            servers: ctx.servers,
            incarnations,
            departed: vec![None; ctx.servers],
            rooms: HashMap::new(),
            relay: DepartedRelay::new(ctx.me, ctx.servers, ctx.window),
        }
    }

    fn room_entry(
        rooms: &mut HashMap<RoomId, CausalRoom>,
        n: usize,
        room: RoomId,
    ) -> &mut CausalRoom {
        rooms.entry(room).or_insert_with(|| CausalRoom {
            delivered: vec![0; n],
            departed: vec![0; n],
            held: Vec::new(),
        })
    }

    /// Delivers every held message of `room` that became deliverable.
    fn drain(&mut self, room: RoomId, out: &mut Outbox) {
        let incs = &self.incarnations;
        let gone = &self.departed;
        let relay = &self.relay;
        let Some(cr) = self.rooms.get_mut(&room) else {
            return;
        };
        // Departures are rare: without one, none of their bookkeeping runs.
        let departures = gone.iter().any(Option::is_some);
        loop {
            // A new incarnation's messages wait for the old one's (sender
            // FIFO across a departure: its clock does not say so).
            let old_held: Vec<bool> = if departures {
                (0..incs.len())
                    .map(|k| {
                        gone[k].is_some()
                            && cr.held.iter().any(|m| {
                                m.id.origin.index() == k && Some(m.clock[k].incarnation) == gone[k]
                            })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let Some(i) = cr.held.iter().position(|m| {
                !old_held_blocks(&old_held, incs, m) && deliverable(incs, gone, cr, m)
            }) else {
                if !departures || !prune_dead(gone, relay, cr) {
                    break;
                }
                continue;
            };
            let m = cr.held.swap_remove(i);
            let o = m.id.origin.index();
            if m.clock[o].incarnation == incs[o] {
                cr.delivered[o] += 1;
            } else {
                cr.departed[o] += 1;
            }
            out.deliver(Post {
                id: m.id,
                room,
                line: m.line,
            });
        }
    }

    /// Delivers what became deliverable in every room, in room order.
    fn drain_all(&mut self, out: &mut Outbox) {
        let mut rooms: Vec<RoomId> = self.rooms.keys().copied().collect();
        rooms.sort_unstable();
        for room in rooms {
            self.drain(room, out);
        }
    }

    /// `peer`'s incarnations before `incarnation` are over: its live one
    /// departs (the survivors relay what it left), its counts start again,
    /// and what it left that no relay can complete is dropped.
    fn retire(&mut self, peer: ServerId, incarnation: u64, out: &mut Outbox) {
        let k = peer.index();
        // A flush of its previous incarnation still open ends here.
        self.relay.release_for(peer);
        self.handle_released(out);
        let was = self.incarnations[k];
        let record = self.relay.depart(peer, out);
        self.incarnations[k] = incarnation;
        self.departed[k] = self.relay.departed_incarnation(peer);
        let gone = self.departed[k];
        for r in self.rooms.values_mut() {
            if record.is_some() && record == Some(was) {
                r.departed[k] = r.delivered[k];
            }
            r.delivered[k] = 0;
            r.held.retain(|m| {
                let inc = m.clock[k].incarnation;
                m.id.origin != peer || inc >= incarnation || Some(inc) == gone
            });
        }
    }

    fn handle_payload(
        &mut self,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        if RelayMessage::is_relay_kind(payload) {
            let handled = self
                .relay
                .handle(from, RelayMessage::decode(payload)?, out)?;
            self.follow_relay_records();
            let Some(r) = handled else {
                // A flush may have completed: what it left may be dead now.
                self.drain_all(out);
                return Ok(());
            };
            let CausalMessage::Chat {
                counter,
                room,
                clock,
                line,
            } = CausalMessage::decode(&r.payload)?
            else {
                return Err(WireError::OutOfRange("relayed payload"));
            };
            let o = r.origin.index();
            if clock.len() != self.servers || clock[o].incarnation != r.incarnation {
                return Err(WireError::OutOfRange("relayed clock"));
            }
            if self.relay.take(&r, counter, r.payload.clone(), out) {
                // A departure of an incarnation we never heard of learns
                // which it was from its first relay.
                self.follow_relay_records();
                self.accept(r.origin, counter, room, clock, line, out);
            }
            return Ok(());
        }
        let message = CausalMessage::decode(payload)?;
        if self.relay.stash(from, payload) {
            return Ok(());
        }
        let (counter, room, clock, line) = match message {
            CausalMessage::Start { room, count } => {
                let cr = Self::room_entry(&mut self.rooms, self.servers, room);
                let o = from.index();
                // Sent once, on a fresh link, before anything else: everything
                // of `from` up to `count` went to our previous incarnation.
                cr.delivered[o] = cr.delivered[o].max(count);
                self.drain(room, out);
                return Ok(());
            }
            CausalMessage::Chat {
                counter,
                room,
                clock,
                line,
            } => (counter, room, clock, line),
        };
        if clock.len() != self.servers {
            return Err(WireError::OutOfRange("clock length"));
        }
        for (k, e) in clock.iter().enumerate() {
            if e.count > 0 && e.incarnation > self.incarnations[k] {
                // The sender knows a newer incarnation of k than we do.
                out.hint_incarnation(ServerId(k as u16), e.incarnation);
            } else if e.count > 0
                && e.incarnation < self.incarnations[k]
                && self.departed[k] != Some(e.incarnation)
            {
                // It depends on an incarnation of k that is over and that
                // we never heard: its messages may yet be relayed to us.
                self.relay
                    .learn_departed(ServerId(k as u16), e.incarnation, out);
                self.follow_relay_records();
            }
        }
        let o = from.index();
        let cr = Self::room_entry(&mut self.rooms, self.servers, room);
        if clock[o].incarnation == self.incarnations[o] && clock[o].count <= cr.delivered[o] {
            return Ok(()); // already delivered
        }
        if Some(clock[o].incarnation) == self.departed[o] && clock[o].count <= cr.departed[o] {
            return Ok(()); // already delivered, from a relay
        }
        self.relay.note_received_copy(from, counter, payload);
        self.accept(from, counter, room, clock, line, out);
        Ok(())
    }

    /// Follows the relay's departed records where they changed without a
    /// departure here (a record that learned its incarnation from a relay,
    /// or one opened on another's report): counts and held messages of the
    /// record they replace go, and the departed incarnation is never taken
    /// for a current one.
    fn follow_relay_records(&mut self) {
        for k in 0..self.servers {
            let now = self.relay.departed_incarnation(ServerId(k as u16));
            if now == self.departed[k] {
                continue;
            }
            let before = self.departed[k];
            self.departed[k] = now;
            for r in self.rooms.values_mut() {
                r.departed[k] = 0;
                r.held
                    .retain(|m| m.id.origin.index() != k || Some(m.clock[k].incarnation) != before);
            }
            if let Some(gone) = now
                && self.incarnations[k] <= gone
            {
                self.incarnations[k] = gone + 1;
                for r in self.rooms.values_mut() {
                    r.delivered[k] = 0;
                }
            }
        }
    }

    /// Payloads of a new incarnation that waited for its old one's flush.
    fn handle_released(&mut self, out: &mut Outbox) {
        while let Some((from, payload)) = self.relay.take_released() {
            // It decoded when it arrived.
            let _ = self.handle_payload(from, &payload, out);
        }
    }

    /// A chat message of `origin` (direct, or relayed for its departed
    /// incarnation): held until deliverable.
    fn accept(
        &mut self,
        origin: ServerId,
        counter: u64,
        room: RoomId,
        clock: Vec<ClockEntry>,
        line: Bytes,
        out: &mut Outbox,
    ) {
        let cr = Self::room_entry(&mut self.rooms, self.servers, room);
        if cr.held.iter().filter(|m| m.id.origin == origin).count() >= MAX_HELD_PER_ORIGIN {
            self.refused += 1;
            return;
        }
        let id = MsgId { origin, counter };
        cr.held.push(Stamped { id, clock, line });
        self.drain(room, out);
    }
}

/// Whether `m`, a message of its origin's current incarnation, must wait
/// for held messages of the origin's departed one (`old_held`, per origin;
/// empty when there is no departed incarnation).
fn old_held_blocks(old_held: &[bool], incarnations: &[u64], m: &Stamped) -> bool {
    let o = m.id.origin.index();
    old_held.get(o).is_some_and(|&b| b) && m.clock[o].incarnation == incarnations[o]
}

/// Drops held messages of departed incarnations that can never be
/// delivered: once a departed incarnation's flush is complete, no relay
/// brings more of it, so a departed server's message needing one of its
/// messages that is neither delivered nor held here is dead (as are, in
/// turn, those needing a dead one). Whether any was dropped.
fn prune_dead(gone: &[Option<u64>], relay: &DepartedRelay<Bytes>, cr: &mut CausalRoom) -> bool {
    let settled: Vec<bool> = (0..gone.len())
        .map(|k| gone[k].is_some() && !relay.flushing(ServerId(k as u16)))
        .collect();
    if !settled.iter().any(|&s| s) {
        return false;
    }
    let mut dropped = false;
    loop {
        let available = |k: usize, upto: u64, cr: &CausalRoom| -> bool {
            (cr.departed[k] + 1..=upto).all(|c| {
                cr.held.iter().any(|h| {
                    h.id.origin.index() == k
                        && Some(h.clock[k].incarnation) == gone[k]
                        && h.clock[k].count == c
                })
            })
        };
        let dead = cr.held.iter().position(|m| {
            let o = m.id.origin.index();
            // Only a departed incarnation's message can be dead: a live
            // server delivered what its message depends on, and relays it
            // to whoever lacks it.
            let departed_origin = Some(m.clock[o].incarnation) == gone[o];
            departed_origin
                && m.clock.iter().enumerate().any(|(k, e)| {
                    if !settled[k] || e.count == 0 || Some(e.incarnation) != gone[k] {
                        return false;
                    }
                    let upto = if k == o { e.count - 1 } else { e.count };
                    upto > cr.departed[k] && !available(k, upto, cr)
                })
        });
        match dead {
            Some(i) => {
                cr.held.swap_remove(i);
                dropped = true;
            }
            None => return dropped,
        }
    }
}

/// Whether `m` may be delivered in room `cr`: its origin's previous
/// message there was delivered, and so was everything it depends on. A
/// dependency on an incarnation that is over is released, unless it is the
/// departed one whose messages may still be relayed.
fn deliverable(incarnations: &[u64], gone: &[Option<u64>], cr: &CausalRoom, m: &Stamped) -> bool {
    let o = m.id.origin.index();
    m.clock.iter().enumerate().all(|(k, e)| {
        let current = e.incarnation == incarnations[k];
        let departed = e.count > 0 && gone[k] == Some(e.incarnation);
        if k == o {
            if current {
                e.count == cr.delivered[k] + 1
            } else {
                departed && e.count == cr.departed[k] + 1
            }
        } else if e.count == 0 {
            true
        } else if current {
            e.count <= cr.delivered[k]
        } else if departed {
            e.count <= cr.departed[k]
        } else {
            e.incarnation < incarnations[k]
        }
    })
}

impl Ordering for Causal {
    fn handle_post(&mut self, _now: Time, post: Post, out: &mut Outbox) {
        let me = self.me.index();
        let r = Self::room_entry(&mut self.rooms, self.servers, post.room);
        r.delivered[me] += 1;
        // Until a server's new incarnation has a message here, what we
        // delivered of its departed one (some of it relayed) is what this
        // message depends on.
        let clock = (0..self.servers)
            .map(|k| match (r.delivered[k], self.departed[k]) {
                (0, Some(gone)) if r.departed[k] > 0 => ClockEntry {
                    incarnation: gone,
                    count: r.departed[k],
                },
                (0, _) => ClockEntry {
                    incarnation: 0,
                    count: 0,
                },
                (count, _) => ClockEntry {
                    incarnation: self.incarnations[k],
                    count,
                },
            })
            .collect();
        let chat = CausalMessage::Chat {
            counter: post.id.counter,
            room: post.room,
            clock,
            line: post.line.clone(),
        };
        out.send(Dest::AllPeers, chat.encode());
        out.deliver(post);
    }

    fn handle_peer(
        &mut self,
        _now: Time,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        let result = self.handle_payload(from, payload, out);
        self.handle_released(out);
        result
    }

    fn handle_peer_incarnation(
        &mut self,
        _now: Time,
        peer: ServerId,
        incarnation: u64,
        restarted: bool,
        out: &mut Outbox,
    ) {
        let k = peer.index();
        if incarnation <= self.incarnations[k] {
            return;
        }
        if restarted {
            self.retire(peer, incarnation, out);
            let mut rooms: Vec<RoomId> = self.rooms.keys().copied().collect();
            rooms.sort_unstable();
            for room in rooms {
                let mine = self
                    .rooms
                    .get(&room)
                    .map_or(0, |r| r.delivered[self.me.index()]);
                if mine > 0 {
                    let start = CausalMessage::Start { room, count: mine };
                    out.send(Dest::Peer(peer), start.encode());
                }
            }
        } else {
            self.incarnations[k] = incarnation;
        }
        self.relay.note_incarnation(peer, incarnation, out);
        self.handle_released(out);
        // Messages waiting to learn this incarnation, or depending on the
        // crashed one, may go now.
        self.drain_all(out);
    }

    fn handle_member_left(
        &mut self,
        _now: Time,
        peer: ServerId,
        dead_below: u64,
        out: &mut Outbox,
    ) {
        if dead_below > self.incarnations[peer.index()] {
            self.retire(peer, dead_below, out);
            self.handle_released(out);
            self.drain_all(out);
        }
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            refused: self.refused,
            held_back: self.rooms.values().map(|r| r.held.len()).sum(),
            in_flight: 0,
            relayed: self.relay.relayed,
        }
    }
}

fn build(ctx: &StrategyContext) -> Box<dyn Ordering> {
    Box::new(Causal::new(ctx))
}

inventory::submit! {
    StrategySpec {
        name: "causal",
        summary: "if a member saw a before sending b, every member sees a before b (vector clocks per room)",
        guarantees: Guarantees { fifo: true, total: false, causal: true },
        build,
    }
}
