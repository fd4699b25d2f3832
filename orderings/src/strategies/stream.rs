//! Per-(origin server, room) message streams: the origin numbers its
//! messages for each room 1, 2, 3, ...; a receiver hands them on in that
//! order, holding back early ones. Ordering by origin server is stronger than
//! ordering by sender client (every client talks to exactly one server), and
//! its state is bounded by servers x rooms, so nothing needs cleaning up when
//! a client leaves.

use super::kind;
use crate::wire::{Reader, WireError, Writer};
use crate::{MsgId, RoomId, ServerId};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};

/// A chat message as a strategy holds it: identity (the origin is the peer
/// it came from), room, stream position, line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamMsg {
    pub(crate) id: MsgId,
    pub(crate) room: RoomId,
    pub(crate) seq: u64,
    pub(crate) line: Bytes,
}

impl StreamMsg {
    /// The wire form (the origin is implied by the sending peer).
    pub(crate) fn to_chat(&self) -> ChatMessage {
        ChatMessage {
            counter: self.id.counter,
            room: self.room,
            seq: self.seq,
            line: self.line.clone(),
        }
    }
}

/// A chat message on the wire: the origin's counter, the room, the position
/// in the origin's stream for that room, and the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// The origin's message counter ([`MsgId::counter`]).
    pub counter: u64,
    /// The room the message was posted to.
    pub room: RoomId,
    /// Position in the origin's stream for `room` (1, 2, 3, ...; 0 where
    /// the strategy does not number its messages). Never `u64::MAX`.
    pub seq: u64,
    /// The line every member receives.
    pub line: Bytes,
}

impl ChatMessage {
    /// Writes the fields (after a kind byte the caller wrote).
    pub(crate) fn write(&self, w: &mut Writer) {
        w.varint(self.counter)
            .varint(u64::from(self.room))
            .varint(self.seq)
            .bytes(&self.line);
    }

    /// Reads the fields written by [`ChatMessage::write`].
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let counter = r.varint()?;
        let room = r.varint_u32("room")?;
        let seq = r.varint()?;
        // No stream gets that far; refusing it keeps `next + 1` in range.
        if seq == u64::MAX {
            return Err(WireError::OutOfRange("seq"));
        }
        let line = Bytes::copy_from_slice(r.bytes()?);
        Ok(ChatMessage {
            counter,
            room,
            seq,
            line,
        })
    }

    /// The message as held by a strategy, from peer `origin`.
    pub(crate) fn into_stream_msg(self, origin: ServerId) -> StreamMsg {
        StreamMsg {
            id: MsgId {
                origin,
                counter: self.counter,
            },
            room: self.room,
            seq: self.seq,
            line: self.line,
        }
    }
}

/// "My stream for `room` continues at `next`": sent to a restarted peer,
/// whose new incarnation expects every stream to start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// The room of the stream.
    pub room: RoomId,
    /// The next position the origin will use. Never `u64::MAX`.
    pub next: u64,
}

impl StreamStart {
    pub(crate) fn write(&self, w: &mut Writer) {
        w.varint(u64::from(self.room)).varint(self.next);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let room = r.varint_u32("room")?;
        let next = r.varint()?;
        if next == u64::MAX {
            return Err(WireError::OutOfRange("seq"));
        }
        Ok(StreamStart { room, next })
    }
}

/// The peer messages of `unordered` and `fifo`: one kind byte, then fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// A chat message (`unordered` sends `seq` 0).
    Chat(ChatMessage),
    /// Where a stream continues, after a restart (`fifo` only).
    Start(StreamStart),
}

impl StreamMessage {
    /// The payload for a peer.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::with_capacity(match self {
            StreamMessage::Chat(m) => m.line.len() + 24,
            StreamMessage::Start(_) => 12,
        });
        match self {
            StreamMessage::Chat(m) => {
                w.u8(kind::CHAT);
                m.write(&mut w);
            }
            StreamMessage::Start(s) => {
                w.u8(kind::STREAM_START);
                s.write(&mut w);
            }
        }
        w.into_bytes()
    }

    /// Decodes a whole payload; any malformed or trailing byte is an error.
    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let message = match r.u8()? {
            kind::CHAT => StreamMessage::Chat(ChatMessage::read(&mut r)?),
            kind::STREAM_START => StreamMessage::Start(StreamStart::read(&mut r)?),
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(message)
    }
}

impl From<StreamMsg> for crate::Post {
    fn from(m: StreamMsg) -> Self {
        crate::Post {
            id: m.id,
            room: m.room,
            line: m.line,
        }
    }
}

/// Numbers outgoing messages per room.
#[derive(Debug, Default)]
pub(super) struct StreamCounters {
    next: HashMap<RoomId, u64>,
}

impl StreamCounters {
    pub(super) fn next(&mut self, room: RoomId) -> u64 {
        let n = self.next.entry(room).or_insert(1);
        let seq = *n;
        *n += 1;
        seq
    }
    /// Tells a restarted peer where each of our streams continues (its
    /// new incarnation expects every stream to start at 1).
    pub(super) fn announce_to(&self, peer: ServerId, out: &mut crate::Outbox) {
        for (room, next) in self.positions() {
            let start = StreamMessage::Start(StreamStart { room, next });
            out.send(crate::Dest::Peer(peer), start.encode());
        }
    }

    /// `(room, next seq)` for every room used so far.
    pub(super) fn positions(&self) -> Vec<(RoomId, u64)> {
        let mut v: Vec<_> = self.next.iter().map(|(&r, &n)| (r, n)).collect();
        v.sort_unstable();
        v
    }
}

#[derive(Debug)]
struct Stream {
    next: u64,
    early: BTreeMap<u64, StreamMsg>,
}

impl Default for Stream {
    fn default() -> Self {
        Self {
            next: 1,
            early: BTreeMap::new(),
        }
    }
}

/// Receiving side: puts each origin's messages for a room back in order.
/// Most messages held back per stream, waiting for an earlier one. A peer's
/// link never runs this far ahead (it delivers in order, at most a window
/// at a time); anything beyond is a broken or hostile peer, and is dropped
/// and counted rather than allowed to exhaust memory.
pub(super) const MAX_EARLY_PER_STREAM: u64 = 1 << 17;

#[derive(Debug, Default)]
pub(super) struct StreamHoldback {
    streams: HashMap<(ServerId, RoomId), Stream>,
    /// Messages dropped for running too far ahead of their stream.
    pub refused: u64,
}

impl StreamHoldback {
    /// Accepts a message; returns the messages now ready, in order.
    pub(super) fn accept(&mut self, msg: StreamMsg) -> Vec<StreamMsg> {
        let s = self.streams.entry((msg.id.origin, msg.room)).or_default();
        let mut ready = Vec::new();
        if msg.seq < s.next {
            return ready; // already handed on
        }
        if msg.seq > s.next {
            if msg.seq - s.next > MAX_EARLY_PER_STREAM {
                self.refused += 1;
            } else {
                s.early.insert(msg.seq, msg);
            }
            return ready;
        }
        s.next += 1;
        ready.push(msg);
        while let Some(m) = s.early.remove(&s.next) {
            s.next += 1;
            ready.push(m);
        }
        ready
    }

    /// The origin says its stream for `room` continues at `next` (sent after
    /// one side restarted). Held messages below `next` are dropped.
    pub(super) fn restart_at(
        &mut self,
        origin: ServerId,
        room: RoomId,
        next: u64,
    ) -> Vec<StreamMsg> {
        let s = self.streams.entry((origin, room)).or_default();
        s.next = next;
        s.early = s.early.split_off(&next);
        let mut ready = Vec::new();
        while let Some(m) = s.early.remove(&s.next) {
            s.next += 1;
            ready.push(m);
        }
        ready
    }

    /// Forgets everything from `origin` (it restarted: its counters begin anew).
    pub(super) fn forget_origin(&mut self, origin: ServerId) {
        self.streams.retain(|(o, _), _| *o != origin);
    }

    /// Messages waiting for an earlier one.
    pub(super) fn held(&self) -> usize {
        self.streams.values().map(|s| s.early.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> StreamMsg {
        StreamMsg {
            id: MsgId {
                origin: ServerId(1),
                counter: seq,
            },
            room: 1,
            seq,
            line: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn releases_in_order_and_bounds_what_it_holds() {
        let mut h = StreamHoldback::default();
        assert!(h.accept(msg(3)).is_empty());
        assert!(h.accept(msg(2)).is_empty());
        let seqs: Vec<u64> = h.accept(msg(1)).iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(
            h.accept(msg(2)).is_empty(),
            "a duplicate is not handed on twice"
        );
        assert!(h.accept(msg(4 + MAX_EARLY_PER_STREAM + 1)).is_empty());
        assert_eq!(
            (h.held(), h.refused),
            (0, 1),
            "too far ahead: dropped and counted"
        );
        assert!(h.accept(msg(4 + MAX_EARLY_PER_STREAM)).is_empty());
        assert_eq!((h.held(), h.refused), (1, 1), "within the limit: held");
    }
}
