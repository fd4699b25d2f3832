//! `total`: leaderless total order per room by ISIS/Skeen agreement, which
//! also keeps each sender's FIFO order.
//!
//! The origin multicasts a message; every server (the origin included)
//! proposes a priority `(n, server)` larger than any it proposed or saw
//! agreed in that room, holds the message back under it, and answers the
//! origin; the origin takes the largest proposal as final and multicasts it.
//! A server delivers the head of a room's holdback queue once its priority is
//! final: every other message will get a larger one.
//!
//! FIFO per sender comes free: every server proposes for one origin's
//! messages of a room in their stream order (the [`StreamHoldback`] in front
//! of the proposal step), so each server's proposals grow along the stream,
//! and so does their maximum.

use super::kind;
use super::stream::{StreamCounters, StreamHoldback, StreamMsg, decode_stream_start, encode_stream_start};
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::{Reader, WireError, Writer};
use crate::{Dest, MsgId, Ordering, Outbox, Post, RoomId, ServerId, StrategyContext, StrategyStats, Time};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};

/// A proposed or final position in a room's order; ties broken by server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority {
    pub n: u64,
    pub server: u16,
}

#[derive(Debug)]
struct Held {
    id: MsgId,
    line: Bytes,
    is_final: bool,
}

/// One room's holdback queue, ordered by priority.
#[derive(Debug, Default)]
struct RoomQueue {
    /// Largest priority number proposed here or agreed, in this room.
    highest: u64,
    queue: BTreeMap<Priority, Held>,
    position: HashMap<MsgId, Priority>,
}

/// The origin's collection of proposals for one of its messages.
#[derive(Debug)]
struct ProposalRound {
    room: RoomId,
    line: Bytes,
    proposals: Vec<Option<Priority>>,
}

const FLAG_RESENT: u8 = 1;

pub struct Total {
    me: ServerId,
    servers: usize,
    counters: StreamCounters,
    streams: StreamHoldback,
    rooms: HashMap<RoomId, RoomQueue>,
    rounds: BTreeMap<MsgId, ProposalRound>,
    /// Payloads that named messages we do not know (stale or hostile).
    pub ignored: u64,
}

impl Total {
    pub fn new(ctx: &StrategyContext) -> Self {
        Self {
            me: ctx.me,
            servers: ctx.servers,
            counters: StreamCounters::default(),
            streams: StreamHoldback::default(),
            rooms: HashMap::new(),
            rounds: BTreeMap::new(),
            ignored: 0,
        }
    }

    /// Proposal step: hold the message back under a fresh priority.
    fn propose(&mut self, msg: StreamMsg, out: &mut Outbox) {
        let rq = self.rooms.entry(msg.room).or_default();
        if rq.position.contains_key(&msg.id) {
            self.ignored += 1;
            return;
        }
        rq.highest += 1;
        let p = Priority {
            n: rq.highest,
            server: self.me.0,
        };
        rq.queue.insert(
            p,
            Held {
                id: msg.id,
                line: msg.line,
                is_final: false,
            },
        );
        rq.position.insert(msg.id, p);
        if msg.id.origin == self.me {
            self.record_proposal(msg.id, self.me, p, out);
        } else {
            let mut w = Writer::with_capacity(16);
            w.u8(kind::TOTAL_PROPOSE).varint(msg.id.counter).varint(p.n);
            out.send(Dest::Peer(msg.id.origin), w.into_bytes());
        }
    }

    fn record_proposal(&mut self, id: MsgId, from: ServerId, p: Priority, out: &mut Outbox) {
        let Some(round) = self.rounds.get_mut(&id) else {
            self.ignored += 1;
            return;
        };
        let Some(slot) = round.proposals.get_mut(from.index()) else {
            self.ignored += 1;
            return;
        };
        *slot = Some(p);
        if round.proposals.iter().any(Option::is_none) {
            return;
        }
        let final_p = round.proposals.iter().flatten().copied().max().expect("all proposals present");
        let room = round.room;
        self.rounds.remove(&id);
        let mut w = Writer::with_capacity(20);
        w.u8(kind::TOTAL_FINAL)
            .varint(id.counter)
            .varint(u64::from(room))
            .varint(final_p.n)
            .varint(u64::from(final_p.server));
        out.send(Dest::AllPeers, w.into_bytes());
        self.apply_final(id, room, final_p, out);
    }

    fn apply_final(&mut self, id: MsgId, room: RoomId, p: Priority, out: &mut Outbox) {
        let Some(rq) = self.rooms.get_mut(&room) else {
            self.ignored += 1;
            return;
        };
        let Some(old) = rq.position.remove(&id) else {
            self.ignored += 1;
            return;
        };
        let Some(mut held) = rq.queue.remove(&old) else {
            self.ignored += 1;
            return;
        };
        held.is_final = true;
        rq.highest = rq.highest.max(p.n);
        rq.queue.insert(p, held);
        rq.position.insert(id, p);
        while let Some(entry) = rq.queue.first_entry() {
            if !entry.get().is_final {
                break;
            }
            let held = entry.remove();
            rq.position.remove(&held.id);
            out.deliver(Post {
                id: held.id,
                room,
                line: held.line,
            });
        }
    }

    fn encode_msg(msg: &StreamMsg, flags: u8) -> Bytes {
        let body = msg.encode(kind::TOTAL_MSG);
        // kind, flags, then the stream message fields.
        let mut w = Writer::with_capacity(body.len() + 1);
        w.u8(kind::TOTAL_MSG).u8(flags).raw(&body[1..]);
        w.into_bytes()
    }
}

impl Ordering for Total {
    fn handle_post(&mut self, _now: Time, post: Post, out: &mut Outbox) {
        let msg = StreamMsg {
            id: post.id,
            room: post.room,
            seq: self.counters.next(post.room),
            line: post.line,
        };
        self.rounds.insert(
            msg.id,
            ProposalRound {
                room: msg.room,
                line: msg.line.clone(),
                proposals: vec![None; self.servers],
            },
        );
        out.send(Dest::AllPeers, Self::encode_msg(&msg, 0));
        self.propose(msg, out);
    }

    fn handle_peer(&mut self, _now: Time, from: ServerId, payload: &[u8], out: &mut Outbox) -> Result<(), WireError> {
        let mut r = Reader::new(payload);
        match r.u8()? {
            kind::TOTAL_MSG => {
                let flags = r.u8()?;
                let m = StreamMsg::decode(from, &mut r)?;
                r.finish()?;
                if flags & FLAG_RESENT != 0 {
                    // Re-sent after our restart, in stream order over the link.
                    self.propose(m, out);
                } else {
                    for m in self.streams.accept(m) {
                        self.propose(m, out);
                    }
                }
            }
            kind::TOTAL_PROPOSE => {
                let counter = r.varint()?;
                let n = r.varint()?;
                r.finish()?;
                let id = MsgId {
                    origin: self.me,
                    counter,
                };
                self.record_proposal(id, from, Priority { n, server: from.0 }, out);
            }
            kind::TOTAL_FINAL => {
                let counter = r.varint()?;
                let room = r.varint_u32("room")?;
                let n = r.varint()?;
                let server = r.varint_u16("server")?;
                r.finish()?;
                let id = MsgId { origin: from, counter };
                self.apply_final(id, room, Priority { n, server }, out);
            }
            kind::STREAM_START => {
                let (room, next) = decode_stream_start(&mut r)?;
                for m in self.streams.restart_at(from, room, next) {
                    self.propose(m, out);
                }
            }
            k => return Err(WireError::UnknownKind(k)),
        }
        Ok(())
    }

    fn handle_peer_restart(&mut self, _now: Time, peer: ServerId, out: &mut Outbox) {
        self.streams.forget_origin(peer);
        // The new incarnation knows none of our open rounds: tell it where
        // our streams continue, then send them again; its old proposals are
        // void (a proposal must come from a server that holds the message).
        for (room, next) in self.counters.positions() {
            out.send(Dest::Peer(peer), encode_stream_start(room, next));
        }
        let mut resend = Vec::new();
        for (&id, round) in self.rounds.iter_mut() {
            if let Some(slot) = round.proposals.get_mut(peer.index()) {
                *slot = None;
            }
            resend.push(StreamMsg {
                id,
                room: round.room,
                seq: 0,
                line: round.line.clone(),
            });
        }
        for m in resend {
            out.send(Dest::Peer(peer), Self::encode_msg(&m, FLAG_RESENT));
        }
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            held_back: self.streams.held() + self.rooms.values().map(|r| r.queue.len()).sum::<usize>(),
            in_flight: self.rounds.len(),
        }
    }
}

fn build(ctx: &StrategyContext) -> Box<dyn Ordering> {
    Box::new(Total::new(ctx))
}

inventory::submit! {
    StrategySpec {
        name: "total",
        summary: "one identical order per room for all members (ISIS/Skeen agreement, leaderless), keeping each sender's order",
        guarantees: Guarantees { fifo: true, total: true, causal: false },
        build,
    }
}
