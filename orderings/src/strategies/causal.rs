//! `causal`: causal order per room with vector clocks over servers.
//!
//! Entry `k` of a room's clock at a server counts the messages from server
//! `k` delivered there in that room. A server delivers a message to all its
//! members at once, so "a member saw `a` before sending `b`" implies "`b`'s
//! origin server had delivered `a` before it stamped `b`": a clock per server
//! (not per client) captures every causal dependency, stays `servers` long,
//! and needs no clean-up when clients leave. It also keeps per-sender FIFO
//! (entry `origin` must be exactly one more than delivered).

use super::kind;
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::{Reader, WireError, Writer};
use crate::{Dest, MsgId, Ordering, Outbox, Post, RoomId, ServerId, StrategyContext, StrategyStats, Time};
use bytes::Bytes;
use std::collections::HashMap;

#[derive(Debug, Clone)]
struct Stamped {
    id: MsgId,
    clock: Vec<u64>,
    line: Bytes,
}

#[derive(Debug)]
struct CausalRoom {
    delivered: Vec<u64>,
    held: Vec<Stamped>,
}

pub struct Causal {
    me: ServerId,
    servers: usize,
    rooms: HashMap<RoomId, CausalRoom>,
}

impl Causal {
    pub fn new(ctx: &StrategyContext) -> Self {
        Self {
            me: ctx.me,
            servers: ctx.servers,
            rooms: HashMap::new(),
        }
    }

    fn room(&mut self, room: RoomId) -> &mut CausalRoom {
        let n = self.servers;
        self.rooms.entry(room).or_insert_with(|| CausalRoom {
            delivered: vec![0; n],
            held: Vec::new(),
        })
    }
}

fn deliverable(delivered: &[u64], m: &Stamped) -> bool {
    let o = m.id.origin.index();
    m.clock.iter().enumerate().all(|(k, &c)| {
        if k == o {
            c == delivered[k] + 1
        } else {
            c <= delivered[k]
        }
    })
}

impl Ordering for Causal {
    fn handle_post(&mut self, _now: Time, post: Post, out: &mut Outbox) {
        let me = self.me.index();
        let r = self.room(post.room);
        r.delivered[me] += 1;
        let mut w = Writer::with_capacity(post.line.len() + 16 + 4 * r.delivered.len());
        w.u8(kind::CAUSAL_MSG).varint(post.id.counter).varint(u64::from(post.room));
        w.varint(r.delivered.len() as u64);
        for &c in &r.delivered {
            w.varint(c);
        }
        w.bytes(&post.line);
        out.send(Dest::AllPeers, w.into_bytes());
        out.deliver(post);
    }

    fn handle_peer(&mut self, _now: Time, from: ServerId, payload: &[u8], out: &mut Outbox) -> Result<(), WireError> {
        let mut r = Reader::new(payload);
        let k = r.u8()?;
        if k != kind::CAUSAL_MSG {
            return Err(WireError::UnknownKind(k));
        }
        let counter = r.varint()?;
        let room = r.varint_u32("room")?;
        let len = r.varint()?;
        if len != self.servers as u64 {
            return Err(WireError::OutOfRange("clock length"));
        }
        let mut clock = Vec::with_capacity(self.servers);
        for _ in 0..len {
            clock.push(r.varint()?);
        }
        let line = Bytes::copy_from_slice(r.bytes()?);
        r.finish()?;
        let id = MsgId { origin: from, counter };
        let cr = self.room(room);
        if clock[from.index()] <= cr.delivered[from.index()] {
            return Ok(()); // already delivered
        }
        cr.held.push(Stamped { id, clock, line });
        // Deliver everything that became deliverable, repeatedly.
        loop {
            let Some(i) = cr.held.iter().position(|m| deliverable(&cr.delivered, m)) else {
                break;
            };
            let m = cr.held.swap_remove(i);
            cr.delivered[m.id.origin.index()] += 1;
            out.deliver(Post {
                id: m.id,
                room,
                line: m.line,
            });
        }
        Ok(())
    }

    fn handle_peer_restart(&mut self, _now: Time, peer: ServerId, _out: &mut Outbox) {
        // The new incarnation counts its messages from 1 again.
        for r in self.rooms.values_mut() {
            r.delivered[peer.index()] = 0;
            r.held.retain(|m| m.id.origin != peer);
        }
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
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
