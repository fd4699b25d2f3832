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

use super::kind;
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
    delivered: Vec<u64>,
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
    rooms: HashMap<RoomId, CausalRoom>,
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
            rooms: HashMap::new(),
        }
    }

    fn room_entry(
        rooms: &mut HashMap<RoomId, CausalRoom>,
        n: usize,
        room: RoomId,
    ) -> &mut CausalRoom {
        rooms.entry(room).or_insert_with(|| CausalRoom {
            delivered: vec![0; n],
            held: Vec::new(),
        })
    }

    /// Delivers every held message of `room` that became deliverable.
    fn drain(&mut self, room: RoomId, out: &mut Outbox) {
        let incs = &self.incarnations;
        let Some(cr) = self.rooms.get_mut(&room) else {
            return;
        };
        while let Some(i) = cr
            .held
            .iter()
            .position(|m| deliverable(incs, &cr.delivered, m))
        {
            let m = cr.held.swap_remove(i);
            cr.delivered[m.id.origin.index()] += 1;
            out.deliver(Post {
                id: m.id,
                room,
                line: m.line,
            });
        }
    }
}

fn deliverable(incarnations: &[u64], delivered: &[u64], m: &Stamped) -> bool {
    let o = m.id.origin.index();
    m.clock.iter().enumerate().all(|(k, e)| {
        if k == o {
            e.incarnation == incarnations[k] && e.count == delivered[k] + 1
        } else if e.count == 0 || e.incarnation < incarnations[k] {
            true
        } else {
            e.incarnation == incarnations[k] && e.count <= delivered[k]
        }
    })
}

impl Ordering for Causal {
    fn handle_post(&mut self, _now: Time, post: Post, out: &mut Outbox) {
        let me = self.me.index();
        let r = Self::room_entry(&mut self.rooms, self.servers, post.room);
        r.delivered[me] += 1;
        let clock = r
            .delivered
            .iter()
            .zip(&self.incarnations)
            .map(|(&count, &incarnation)| ClockEntry {
                incarnation: if count > 0 { incarnation } else { 0 },
                count,
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
        let (counter, room, clock, line) = match CausalMessage::decode(payload)? {
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
            }
        }
        let id = MsgId {
            origin: from,
            counter,
        };
        let o = from.index();
        let cr = Self::room_entry(&mut self.rooms, self.servers, room);
        if clock[o].incarnation == self.incarnations[o] && clock[o].count <= cr.delivered[o] {
            return Ok(()); // already delivered
        }
        if cr.held.iter().filter(|m| m.id.origin == from).count() >= MAX_HELD_PER_ORIGIN {
            self.refused += 1;
            return Ok(());
        }
        cr.held.push(Stamped { id, clock, line });
        self.drain(room, out);
        Ok(())
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
        self.incarnations[k] = incarnation;
        let mut rooms: Vec<RoomId> = self.rooms.keys().copied().collect();
        rooms.sort_unstable();
        for room in rooms {
            let mine = self
                .rooms
                .get(&room)
                .map_or(0, |r| r.delivered[self.me.index()]);
            if restarted && mine > 0 {
                let start = CausalMessage::Start { room, count: mine };
                out.send(Dest::Peer(peer), start.encode());
            }
            if restarted && let Some(r) = self.rooms.get_mut(&room) {
                r.delivered[k] = 0;
                r.held
                    .retain(|m| m.id.origin != peer || m.clock[k].incarnation >= incarnation);
            }
            // Messages waiting to learn this incarnation, or depending on
            // the crashed one, may go now.
            self.drain(room, out);
        }
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            refused: self.refused,
            held_back: self.rooms.values().map(|r| r.held.len()).sum(),
            in_flight: 0,
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
