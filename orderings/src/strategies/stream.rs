//! Per-(origin server, room) message streams: the origin numbers its
//! messages for each room 1, 2, 3, ...; a receiver hands them on in that
//! order, holding back early ones. Ordering by origin server is stronger than
//! ordering by sender client (every client talks to exactly one server), and
//! its state is bounded by servers x rooms, so nothing needs cleaning up when
//! a client leaves.

use crate::wire::{Reader, WireError, Writer};
use crate::{MsgId, RoomId, ServerId};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};

/// A chat message on the wire: identity, room, stream position, line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMsg {
    pub id: MsgId,
    pub room: RoomId,
    pub seq: u64,
    pub line: Bytes,
}

impl StreamMsg {
    pub fn encode(&self, kind: u8) -> Bytes {
        let mut w = Writer::with_capacity(self.line.len() + 24);
        w.u8(kind)
            .varint(self.id.counter)
            .varint(u64::from(self.room))
            .varint(self.seq)
            .bytes(&self.line);
        w.into_bytes()
    }

    /// Decodes after the kind byte; the origin is the sending peer.
    pub fn decode(origin: ServerId, r: &mut Reader<'_>) -> Result<Self, WireError> {
        let counter = r.varint()?;
        let room = r.varint_u32("room")?;
        let seq = r.varint()?;
        // No stream gets that far; refusing it keeps `next + 1` in range.
        if seq == u64::MAX {
            return Err(WireError::OutOfRange("seq"));
        }
        let line = Bytes::copy_from_slice(r.bytes()?);
        Ok(StreamMsg {
            id: MsgId { origin, counter },
            room,
            seq,
            line,
        })
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
            out.send(crate::Dest::Peer(peer), encode_stream_start(room, next));
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

/// `STREAM_START room next`: tells a restarted peer where our stream for
/// `room` continues.
pub(super) fn encode_stream_start(room: RoomId, next: u64) -> Bytes {
    let mut w = Writer::with_capacity(12);
    w.u8(super::kind::STREAM_START)
        .varint(u64::from(room))
        .varint(next);
    w.into_bytes()
}

pub(super) fn decode_stream_start(r: &mut Reader<'_>) -> Result<(RoomId, u64), WireError> {
    let room = r.varint_u32("room")?;
    let next = r.varint()?;
    if next == u64::MAX {
        return Err(WireError::OutOfRange("seq"));
    }
    r.finish()?;
    Ok((room, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Reader;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stream_messages_round_trip(
            counter in any::<u64>(),
            room in any::<u32>(),
            seq in 0..u64::MAX,
            line in proptest::collection::vec(any::<u8>(), 0..1200),
            kind in any::<u8>(),
        ) {
            let m = StreamMsg { id: MsgId { origin: ServerId(3), counter }, room, seq, line: Bytes::from(line) };
            let wire = m.encode(kind);
            let mut r = Reader::new(&wire);
            prop_assert_eq!(r.u8().unwrap(), kind);
            prop_assert_eq!(StreamMsg::decode(ServerId(3), &mut r).unwrap(), m);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn stream_start_round_trips(room in any::<u32>(), next in 0..u64::MAX) {
            let wire = encode_stream_start(room, next);
            let mut r = Reader::new(&wire);
            prop_assert_eq!(r.u8().unwrap(), crate::strategies::kind::STREAM_START);
            prop_assert_eq!(decode_stream_start(&mut r).unwrap(), (room, next));
        }
    }

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
