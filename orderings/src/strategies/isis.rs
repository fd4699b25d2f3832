//! `isis`: leaderless total order per room by ISIS/Skeen agreement, which
//! also keeps each sender's FIFO order. The origin collects the proposals,
//! so it costs 2(N-1) small packets per message whatever the load, against
//! `total`'s acknowledgements from every server to every server (coalesced
//! per datagram), at one more one-way delay per delivery: the choice for
//! clusters where bandwidth, not latency, is what limits.
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
//!
//! Crash of an origin: when server `k` comes back as a new incarnation, its
//! old incarnation's messages that are still tentative here can never be
//! finalized by it. Each survivor asks every other survivor what it knows
//! ([`TotalMessage::Query`]); a survivor that saw the final priority answers
//! with it (it remembers recent finals), the others answer "unknown" and,
//! having marked the old incarnation dead, can never learn it later. So one
//! known final settles the message everywhere, and "unknown" from all means
//! nobody delivered it: every survivor drops it. Rounds of ours that waited
//! for `k` are sent again to its new incarnation.
//!
//! Membership: a round waits for the proposals of the members of the
//! origin's view only, and the final names who is *not* in it. A server
//! delivers a message only if its own proposal counted: that is what makes
//! the ISIS argument hold between any two servers that both deliver two
//! messages, whatever their views. A server that receives a final (or a
//! recovery answer) it had no say in learns that the origin's view left it
//! out, and rejoins as a new incarnation. When a member leaves, the rounds
//! that waited for it complete without it and its tentative messages are
//! settled by the recovery above, as if it had crashed.

use super::kind;
use super::stream::{ChatMessage, StreamCounters, StreamHoldback, StreamMsg, StreamStart};
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::{Reader, WireError, Writer};
use crate::{
    Dest, MsgId, Ordering, Outbox, Post, RoomId, ServerId, StrategyContext, StrategyStats, Time,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A proposed or final position in a room's order; ties broken by server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority {
    /// The number; at most [`MAX_PRIORITY`] from a peer.
    pub n: u64,
    /// The proposing server (zero-based).
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

/// Finals remembered per origin, to answer recovery queries.
const RECENT_FINALS: usize = 8 * 1024;

/// Largest priority number accepted from a peer: no real cluster gets near
/// it, and the headroom keeps `highest + 1` from overflowing.
pub const MAX_PRIORITY: u64 = u64::MAX / 2;

fn priority_number(r: &mut Reader<'_>) -> Result<u64, WireError> {
    let n = r.varint()?;
    if n > MAX_PRIORITY {
        return Err(WireError::OutOfRange("priority"));
    }
    Ok(n)
}

/// A final priority and the servers whose proposals did not count.
pub type KnownFinal = (Priority, Vec<u16>);

/// The peer messages of `total`: one kind byte, then fields. Every
/// encoding and decoding of them is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TotalMessage {
    /// The origin multicasts a message (`resent`: again, to a restarted
    /// peer, in stream order over the fresh link, so not held for order).
    Chat {
        /// Re-sent after the receiver restarted.
        resent: bool,
        /// The message.
        chat: ChatMessage,
    },
    /// A server proposes `priority` (with its own server number) for the
    /// receiver's message `counter`.
    Propose {
        /// The origin's message counter.
        counter: u64,
        /// The proposed priority number; the proposer is the sender.
        priority: u64,
    },
    /// The origin announces the final priority of its message `counter`.
    Final {
        /// The origin's message counter.
        counter: u64,
        /// The message's room.
        room: RoomId,
        /// The agreed priority.
        priority: Priority,
        /// Servers whose proposals did not count (outside the origin's
        /// view): they must not deliver the message.
        excluded: Vec<u16>,
    },
    /// Where the sender's stream for a room continues (after a restart).
    StreamStart(StreamStart),
    /// Recovery: what does the receiver know of these messages of
    /// `origin`, whose incarnation before `incarnation` crashed?
    Query {
        /// The crashed origin.
        origin: ServerId,
        /// The origin's incarnation that replaced the crashed one.
        incarnation: u64,
        /// The origin's message counters asked about.
        counters: Vec<u64>,
    },
    /// Recovery: the final priority of each message asked about, if known.
    Answer {
        /// The crashed origin.
        origin: ServerId,
        /// `(counter, final priority and its excluded servers if known)` per
        /// message asked about.
        answers: Vec<(u64, Option<KnownFinal>)>,
    },
}

const FLAG_RESENT: u8 = 1;

impl TotalMessage {
    /// The payload for a peer.
    pub fn encode(&self) -> Bytes {
        let mut w;
        match self {
            TotalMessage::Chat { resent, chat } => {
                w = Writer::with_capacity(chat.line.len() + 25);
                w.u8(kind::TOTAL_MSG)
                    .u8(if *resent { FLAG_RESENT } else { 0 });
                chat.write(&mut w);
            }
            TotalMessage::Propose { counter, priority } => {
                w = Writer::with_capacity(16);
                w.u8(kind::TOTAL_PROPOSE).varint(*counter).varint(*priority);
            }
            TotalMessage::Final {
                counter,
                room,
                priority,
                excluded,
            } => {
                w = Writer::with_capacity(21 + 3 * excluded.len());
                w.u8(kind::TOTAL_FINAL)
                    .varint(*counter)
                    .varint(u64::from(*room))
                    .varint(priority.n)
                    .varint(u64::from(priority.server));
                write_servers(&mut w, excluded);
            }
            TotalMessage::StreamStart(start) => {
                w = Writer::with_capacity(12);
                w.u8(kind::STREAM_START);
                start.write(&mut w);
            }
            TotalMessage::Query {
                origin,
                incarnation,
                counters,
            } => {
                w = Writer::with_capacity(16 + 9 * counters.len());
                w.u8(kind::TOTAL_QUERY)
                    .varint(u64::from(origin.0))
                    .varint(*incarnation)
                    .varint(counters.len() as u64);
                for &c in counters {
                    w.varint(c);
                }
            }
            TotalMessage::Answer { origin, answers } => {
                w = Writer::with_capacity(16 + 12 * answers.len());
                w.u8(kind::TOTAL_ANSWER)
                    .varint(u64::from(origin.0))
                    .varint(answers.len() as u64);
                for (c, answer) in answers {
                    w.varint(*c);
                    match answer {
                        Some((p, excluded)) => {
                            w.u8(1).varint(p.n).varint(u64::from(p.server));
                            write_servers(&mut w, excluded);
                        }
                        None => {
                            w.u8(0);
                        }
                    };
                }
            }
        }
        w.into_bytes()
    }

    /// Decodes a whole payload; any malformed or trailing byte is an error.
    /// Priority numbers above [`MAX_PRIORITY`] are refused.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let message = match r.u8()? {
            kind::TOTAL_MSG => {
                // Flag bits other than "resent" are ignored.
                let flags = r.u8()?;
                TotalMessage::Chat {
                    resent: flags & FLAG_RESENT != 0,
                    chat: ChatMessage::read(&mut r)?,
                }
            }
            kind::TOTAL_PROPOSE => TotalMessage::Propose {
                counter: r.varint()?,
                priority: priority_number(&mut r)?,
            },
            kind::TOTAL_FINAL => TotalMessage::Final {
                counter: r.varint()?,
                room: r.varint_u32("room")?,
                priority: Priority {
                    n: priority_number(&mut r)?,
                    server: r.varint_u16("server")?,
                },
                excluded: read_servers(&mut r)?,
            },
            kind::STREAM_START => TotalMessage::StreamStart(StreamStart::read(&mut r)?),
            kind::TOTAL_QUERY => {
                let origin = ServerId(r.varint_u16("server")?);
                let incarnation = r.varint()?;
                let n = r.varint()?;
                // Each counter takes a byte at least: bounds the allocation.
                if n > r.remaining() as u64 {
                    return Err(WireError::OutOfRange("query"));
                }
                let counters = (0..n).map(|_| r.varint()).collect::<Result<_, _>>()?;
                TotalMessage::Query {
                    origin,
                    incarnation,
                    counters,
                }
            }
            kind::TOTAL_ANSWER => {
                let origin = ServerId(r.varint_u16("server")?);
                let n = r.varint()?;
                if n > r.remaining() as u64 {
                    return Err(WireError::Truncated);
                }
                let mut answers = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let counter = r.varint()?;
                    let answer = match r.u8()? {
                        0 => None,
                        1 => Some((
                            Priority {
                                n: priority_number(&mut r)?,
                                server: r.varint_u16("server")?,
                            },
                            read_servers(&mut r)?,
                        )),
                        _ => return Err(WireError::OutOfRange("answer")),
                    };
                    answers.push((counter, answer));
                }
                TotalMessage::Answer { origin, answers }
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(message)
    }
}

/// A list of server numbers: a count, then each.
fn write_servers(w: &mut Writer, servers: &[u16]) {
    w.varint(servers.len() as u64);
    for &s in servers {
        w.varint(u64::from(s));
    }
}

fn read_servers(r: &mut Reader<'_>) -> Result<Vec<u16>, WireError> {
    let n = r.varint()?;
    // Each number takes a byte at least: bounds the allocation.
    if n > r.remaining() as u64 {
        return Err(WireError::OutOfRange("servers"));
    }
    (0..n).map(|_| r.varint_u16("server")).collect()
}

/// Most messages held back per origin. An honest origin never gets near it:
/// it refuses posts once its link to us holds 65,536 unacknowledged
/// payloads. Beyond it, a broken or hostile peer's messages are dropped and
/// counted rather than allowed to exhaust memory.
pub(super) const MAX_HELD_PER_ORIGIN: usize = 1 << 17;

fn release(held: &mut HashMap<ServerId, usize>, origin: ServerId) {
    if let Some(n) = held.get_mut(&origin) {
        *n = n.saturating_sub(1);
    }
}

/// Settling a crashed origin's tentative message (see the module docs).
#[derive(Debug)]
struct Recovery {
    room: RoomId,
    /// Per server: `None` = no answer yet; `Some(None)` = does not know.
    answers: Vec<Option<Option<KnownFinal>>>,
}

#[derive(Debug, Default)]
struct RecentFinals {
    order: std::collections::VecDeque<u64>,
    by_counter: HashMap<u64, KnownFinal>,
}

impl RecentFinals {
    fn remember(&mut self, counter: u64, p: Priority, excluded: Vec<u16>) {
        if self.by_counter.insert(counter, (p, excluded)).is_none() {
            self.order.push_back(counter);
            if self.order.len() > RECENT_FINALS
                && let Some(old) = self.order.pop_front()
            {
                self.by_counter.remove(&old);
            }
        }
    }
}

pub(super) struct Total {
    /// Priorities of this incarnation start here (its start time in
    /// microseconds): above every number an earlier incarnation of this
    /// server can have proposed, so a restarted server's proposals never
    /// collide with its old ones still held elsewhere.
    priority_base: u64,
    me: ServerId,
    servers: usize,
    counters: StreamCounters,
    streams: StreamHoldback,
    rooms: HashMap<RoomId, RoomQueue>,
    rounds: BTreeMap<MsgId, ProposalRound>,
    /// Per room: the counters of our open rounds, so that they are
    /// finalized in stream order.
    open_by_room: HashMap<RoomId, BTreeSet<u64>>,
    /// Per room: the final of our latest finalized message. A later one's
    /// final must be above it (FIFO), which the proposals alone no longer
    /// guarantee once a member that proposed for the earlier one has left.
    own_last_final: HashMap<RoomId, Priority>,
    recent_finals: HashMap<ServerId, RecentFinals>,
    recoveries: BTreeMap<MsgId, Recovery>,
    /// Held messages per origin, for the holdback limit.
    held_by_origin: HashMap<ServerId, usize>,
    /// Per server: in this server's view (rounds wait for its proposal).
    members: Vec<bool>,
    /// Payloads that named messages we do not know (stale or hostile).
    pub ignored: u64,
    /// Messages dropped by the holdback limit.
    pub refused: u64,
    /// Crashed origins' messages settled by recovery: (finalized, dropped).
    pub recovered: (u64, u64),
}

impl Total {
    pub(super) fn new(ctx: &StrategyContext) -> Self {
        Self {
            priority_base: ctx.incarnation,
            me: ctx.me,
            servers: ctx.servers,
            counters: StreamCounters::default(),
            streams: StreamHoldback::default(),
            rooms: HashMap::new(),
            rounds: BTreeMap::new(),
            open_by_room: HashMap::new(),
            own_last_final: HashMap::new(),
            recent_finals: HashMap::new(),
            recoveries: BTreeMap::new(),
            held_by_origin: HashMap::new(),
            members: vec![true; ctx.servers],
            ignored: 0,
            refused: 0,
            recovered: (0, 0),
        }
    }

    /// Proposal step: hold the message back under a fresh priority.
    fn propose(&mut self, msg: StreamMsg, out: &mut Outbox) {
        let held = self.held_by_origin.entry(msg.id.origin).or_default();
        if msg.id.origin != self.me && *held >= MAX_HELD_PER_ORIGIN {
            self.refused += 1;
            return;
        }
        let base = self.priority_base;
        let rq = self.rooms.entry(msg.room).or_insert_with(|| RoomQueue {
            highest: base,
            ..RoomQueue::default()
        });
        if rq.position.contains_key(&msg.id) {
            self.ignored += 1;
            return;
        }
        *held += 1;
        rq.highest += 1;
        let p = Priority {
            n: rq.highest,
            server: self.me.0,
        };
        let clash = rq.queue.insert(
            p,
            Held {
                id: msg.id,
                line: msg.line,
                is_final: false,
            },
        );
        debug_assert!(
            clash.is_none(),
            "{} proposed a priority already in use: {p:?}",
            self.me
        );
        rq.position.insert(msg.id, p);
        if msg.id.origin == self.me {
            self.record_proposal(msg.id, self.me, p, out);
        } else {
            let proposal = TotalMessage::Propose {
                counter: msg.id.counter,
                priority: p.n,
            };
            out.send(Dest::Peer(msg.id.origin), proposal.encode());
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
        self.try_finish_round(id, out);
    }

    /// Finalizes our message `id` once every member of our view proposed
    /// and our earlier messages of the room are final; then the next one.
    fn try_finish_round(&mut self, id: MsgId, out: &mut Outbox) {
        let mut next = Some(id);
        while let Some(id) = next.take() {
            let Some(room) = self.finish_round(id, out) else {
                return;
            };
            next = self
                .open_by_room
                .get(&room)
                .and_then(|open| open.first())
                .map(|&counter| MsgId {
                    origin: self.me,
                    counter,
                });
        }
    }

    /// [`Total::try_finish_round`] for one round; returns its room if it
    /// was finalized.
    fn finish_round(&mut self, id: MsgId, out: &mut Outbox) -> Option<RoomId> {
        let round = self.rounds.get(&id)?;
        let first_open = self
            .open_by_room
            .get(&round.room)
            .and_then(|open| open.first().copied());
        if first_open != Some(id.counter) {
            return None;
        }
        let mut final_p: Option<Priority> = None;
        let mut excluded = Vec::new();
        for (i, proposal) in round.proposals.iter().enumerate() {
            if !self.members[i] {
                excluded.push(i as u16);
                continue;
            }
            match proposal {
                Some(p) => final_p = final_p.max(Some(*p)),
                None => return None,
            }
        }
        let mut final_p = final_p?;
        let room = round.room;
        if let Some(last) = self.own_last_final.get(&room)
            && final_p <= *last
            && let Some(rq) = self.rooms.get_mut(&room)
        {
            // A fresh priority of ours: above everything agreed here, and
            // so above `last` and every proposal counted.
            rq.highest += 1;
            final_p = Priority {
                n: rq.highest,
                server: self.me.0,
            };
        }
        self.own_last_final.insert(room, final_p);
        self.rounds.remove(&id);
        if let Some(open) = self.open_by_room.get_mut(&room) {
            open.remove(&id.counter);
        }
        let announcement = TotalMessage::Final {
            counter: id.counter,
            room,
            priority: final_p,
            excluded: excluded.clone(),
        };
        out.send(Dest::AllPeers, announcement.encode());
        self.apply_final(id, room, final_p, excluded, out);
        Some(room)
    }

    fn apply_final(
        &mut self,
        id: MsgId,
        room: RoomId,
        p: Priority,
        excluded: Vec<u16>,
        out: &mut Outbox,
    ) {
        if excluded.contains(&self.me.0) {
            // Our proposal did not count: delivering could invert the order
            // against the servers whose did. The origin's view has left us.
            if out.excluded_by.is_none() {
                out.excluded_by = Some(id.origin);
            }
            return;
        }
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
        if rq.queue.contains_key(&p) {
            // Two messages cannot share a final priority; only a broken or
            // hostile peer sends this. Keep the held message where it was.
            rq.queue.insert(old, held);
            rq.position.insert(id, old);
            self.ignored += 1;
            return;
        }
        held.is_final = true;
        rq.highest = rq.highest.max(p.n);
        rq.queue.insert(p, held);
        rq.position.insert(id, p);
        if id.origin != self.me {
            self.recent_finals
                .entry(id.origin)
                .or_default()
                .remember(id.counter, p, excluded);
        }
        self.drain_room(room, out);
    }

    /// Delivers the final messages at the head of a room's queue.
    fn drain_room(&mut self, room: RoomId, out: &mut Outbox) {
        let Some(rq) = self.rooms.get_mut(&room) else {
            return;
        };
        while let Some(entry) = rq.queue.first_entry() {
            if !entry.get().is_final {
                break;
            }
            let held = entry.remove();
            rq.position.remove(&held.id);
            release(&mut self.held_by_origin, held.id.origin);
            out.deliver(Post {
                id: held.id,
                room,
                line: held.line,
            });
        }
    }

    /// Asks `to` what it knows of the listed messages of `origin`.
    fn send_query(
        &self,
        to: Dest,
        origin: ServerId,
        incarnation: u64,
        counters: &[u64],
        out: &mut Outbox,
    ) {
        let query = TotalMessage::Query {
            origin,
            incarnation,
            counters: counters.to_vec(),
        };
        out.send(to, query.encode());
    }

    fn handle_query(
        &mut self,
        from: ServerId,
        origin: ServerId,
        incarnation: u64,
        counters: Vec<u64>,
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        if origin.index() >= self.servers {
            return Err(WireError::OutOfRange("query"));
        }
        // Mark the old incarnation dead before answering: from now on we
        // never accept a final from it, so "unknown" stays true.
        out.hint_incarnation(origin, incarnation);
        let known = self.recent_finals.get(&origin);
        let answers = counters
            .into_iter()
            .map(|c| (c, known.and_then(|k| k.by_counter.get(&c)).cloned()))
            .collect();
        out.send(
            Dest::Peer(from),
            TotalMessage::Answer { origin, answers }.encode(),
        );
        Ok(())
    }

    fn handle_answer(
        &mut self,
        from: ServerId,
        origin: ServerId,
        answers: Vec<(u64, Option<KnownFinal>)>,
        out: &mut Outbox,
    ) {
        for (counter, answer) in answers {
            let id = MsgId { origin, counter };
            let Some(rec) = self.recoveries.get_mut(&id) else {
                continue;
            };
            if let Some(slot) = rec.answers.get_mut(from.index()) {
                *slot = Some(answer);
            }
            self.try_settle(id, out);
        }
    }

    /// Settles a recovery once one survivor knows the final, or all say no.
    fn try_settle(&mut self, id: MsgId, out: &mut Outbox) {
        let Some(rec) = self.recoveries.get(&id) else {
            return;
        };
        let known = rec.answers.iter().flatten().flatten().next().cloned();
        let all_answered = rec.answers.iter().all(Option::is_some);
        let room = rec.room;
        if let Some((p, excluded)) = known {
            self.recoveries.remove(&id);
            self.recovered.0 += 1;
            self.apply_final(id, room, p, excluded, out);
        } else if all_answered {
            self.recoveries.remove(&id);
            self.recovered.1 += 1;
            if let Some(rq) = self.rooms.get_mut(&room)
                && let Some(pos) = rq.position.remove(&id)
            {
                rq.queue.remove(&pos);
                release(&mut self.held_by_origin, id.origin);
            }
            self.drain_room(room, out);
        }
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
        self.open_by_room
            .entry(msg.room)
            .or_default()
            .insert(msg.id.counter);
        self.rounds.insert(
            msg.id,
            ProposalRound {
                room: msg.room,
                line: msg.line.clone(),
                proposals: vec![None; self.servers],
            },
        );
        let chat = TotalMessage::Chat {
            resent: false,
            chat: msg.to_chat(),
        };
        out.send(Dest::AllPeers, chat.encode());
        self.propose(msg, out);
    }

    fn handle_peer(
        &mut self,
        _now: Time,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        match TotalMessage::decode(payload)? {
            TotalMessage::Chat { resent, chat } => {
                let m = chat.into_stream_msg(from);
                if resent {
                    // Re-sent after our restart, in stream order over the link.
                    self.propose(m, out);
                } else {
                    for m in self.streams.accept(m) {
                        self.propose(m, out);
                    }
                }
            }
            TotalMessage::Propose { counter, priority } => {
                let id = MsgId {
                    origin: self.me,
                    counter,
                };
                let p = Priority {
                    n: priority,
                    server: from.0,
                };
                self.record_proposal(id, from, p, out);
            }
            TotalMessage::Final {
                counter,
                room,
                priority,
                excluded,
            } => {
                let id = MsgId {
                    origin: from,
                    counter,
                };
                self.apply_final(id, room, priority, excluded, out);
            }
            TotalMessage::StreamStart(start) => {
                for m in self.streams.restart_at(from, start.room, start.next) {
                    self.propose(m, out);
                }
            }
            TotalMessage::Query {
                origin,
                incarnation,
                counters,
            } => self.handle_query(from, origin, incarnation, counters, out)?,
            TotalMessage::Answer { origin, answers } => {
                self.handle_answer(from, origin, answers, out);
            }
        }
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
        if !restarted {
            return;
        }
        let was_member = self.members.get(peer.index()).copied().unwrap_or(false);
        if let Some(m) = self.members.get_mut(peer.index()) {
            *m = true;
        }
        if was_member {
            // Counters start at the incarnation: the old one's are below.
            self.settle_departed(peer, incarnation, incarnation, out);
        }

        // The new incarnation knows none of our open rounds: tell it where
        // our streams continue, then send them again; its old proposals are
        // void (a proposal must come from a server that holds the message).
        self.counters.announce_to(peer, out);
        // We also propose afresh for each open round, above every priority
        // agreed here so far: the new incarnation's proposals start low, and
        // without this a re-sent message could be ordered before an earlier
        // message of the same sender that was finalized before the crash.
        let mut resend = Vec::new();
        for (&id, round) in self.rounds.iter_mut() {
            if let Some(slot) = round.proposals.get_mut(peer.index()) {
                *slot = None;
            }
            if let Some(rq) = self.rooms.get_mut(&round.room)
                && let Some(old) = rq.position.get(&id).copied()
                && let Some(held) = rq.queue.remove(&old)
            {
                rq.highest += 1;
                let fresh = Priority {
                    n: rq.highest,
                    server: self.me.0,
                };
                rq.queue.insert(fresh, held);
                rq.position.insert(id, fresh);
                round.proposals[self.me.index()] = Some(fresh);
            }
            resend.push(StreamMsg {
                id,
                room: round.room,
                seq: 0,
                line: round.line.clone(),
            });
        }
        for m in resend {
            let chat = TotalMessage::Chat {
                resent: true,
                chat: m.to_chat(),
            };
            out.send(Dest::Peer(peer), chat.encode());
        }
    }

    fn handle_member_left(
        &mut self,
        _now: Time,
        peer: ServerId,
        dead_below: u64,
        out: &mut Outbox,
    ) {
        let Some(m) = self.members.get_mut(peer.index()) else {
            return;
        };
        if !*m {
            return;
        }
        *m = false;
        // Nothing of a later incarnation can be held yet: every tentative
        // message of `peer` is the departed incarnation's.
        self.settle_departed(peer, dead_below, u64::MAX, out);
        // Rounds that waited for its proposal complete without it.
        let open: Vec<MsgId> = self.rounds.keys().copied().collect();
        for id in open {
            self.try_finish_round(id, out);
        }
    }

    fn unsettled_posts(&self) -> Vec<Post> {
        self.rounds
            .iter()
            .map(|(&id, round)| Post {
                id,
                room: round.room,
                line: round.line.clone(),
            })
            .collect()
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            refused: self.refused + self.streams.refused,
            held_back: self.streams.held()
                + self.rooms.values().map(|r| r.queue.len()).sum::<usize>(),
            in_flight: self.rounds.len() + self.recoveries.len(),
            relayed: 0,
        }
    }
}

impl Total {
    /// Everything `peer`'s incarnations before `incarnation` left behind:
    /// its stream position, its tentative messages with counters below
    /// `counters_below` (settled by asking the other members, who learn
    /// from the query that those incarnations are over), and our queries
    /// that waited for its answer.
    fn settle_departed(
        &mut self,
        peer: ServerId,
        incarnation: u64,
        counters_below: u64,
        out: &mut Outbox,
    ) {
        self.streams.forget_origin(peer);

        // The crashed incarnation's tentative messages: ask the survivors.
        // Its counters are below the new incarnation (they start there).
        let mut stuck: Vec<(MsgId, RoomId)> = Vec::new();
        for (&room, rq) in &self.rooms {
            for held in rq.queue.values() {
                if held.id.origin == peer
                    && !held.is_final
                    && held.id.counter < counters_below
                    && !self.recoveries.contains_key(&held.id)
                {
                    stuck.push((held.id, room));
                }
            }
        }
        stuck.sort_unstable();
        for &(id, room) in &stuck {
            // Servers outside our view have no say, nor has the crashed
            // origin; we hold it tentatively, so we do not know its final.
            let mut answers: Vec<Option<Option<KnownFinal>>> = self
                .members
                .iter()
                .map(|&m| if m { None } else { Some(None) })
                .collect();
            answers[self.me.index()] = Some(None);
            answers[peer.index()] = Some(None);
            self.recoveries.insert(id, Recovery { room, answers });
        }
        if !stuck.is_empty() {
            let counters: Vec<u64> = stuck.iter().map(|(id, _)| id.counter).collect();
            for s in 0..self.servers {
                let s = ServerId(s as u16);
                if s != self.me && s != peer && self.members[s.index()] {
                    self.send_query(Dest::Peer(s), peer, incarnation, &counters, out);
                }
            }
            for (id, _) in stuck {
                self.try_settle(id, out);
            }
        }
        // Queries of ours that waited for its answer: it has none now (a
        // member that left has no say; a new incarnation knows nothing).
        let waiting: Vec<MsgId> = self
            .recoveries
            .iter()
            .filter(|(id, rec)| {
                id.origin != peer && rec.answers.get(peer.index()).is_some_and(Option::is_none)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in waiting {
            if let Some(rec) = self.recoveries.get_mut(&id)
                && let Some(slot) = rec.answers.get_mut(peer.index())
            {
                *slot = Some(None);
            }
            self.try_settle(id, out);
        }
    }
}

fn build(ctx: &StrategyContext) -> Box<dyn Ordering> {
    Box::new(Total::new(ctx))
}

inventory::submit! {
    StrategySpec {
        name: "isis",
        summary: "one identical order per room for all members (ISIS/Skeen agreement, leaderless), keeping each sender's order",
        guarantees: Guarantees { fifo: true, total: true, causal: false },
        build,
    }
}
