//! `fifo`: each origin server numbers its messages per room; receivers
//! deliver them in that order (a holdback queue per stream). Since a client
//! talks to one server, this keeps every sender's order.

use super::kind;
use super::stream::{StreamCounters, StreamHoldback, StreamMsg, decode_stream_start};
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::{Reader, WireError};
use crate::{Dest, Ordering, Outbox, Post, ServerId, StrategyContext, StrategyStats, Time};

#[derive(Default)]
pub(super) struct Fifo {
    counters: StreamCounters,
    holdback: StreamHoldback,
}

fn deliver(out: &mut Outbox, ready: Vec<StreamMsg>) {
    for m in ready {
        out.deliver(m.into());
    }
}

impl Ordering for Fifo {
    fn handle_post(&mut self, _now: Time, post: Post, out: &mut Outbox) {
        let msg = StreamMsg {
            id: post.id,
            room: post.room,
            seq: self.counters.next(post.room),
            line: post.line.clone(),
        };
        out.send(Dest::AllPeers, msg.encode(kind::CHAT));
        out.deliver(post);
    }

    fn handle_peer(
        &mut self,
        _now: Time,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        let mut r = Reader::new(payload);
        match r.u8()? {
            kind::CHAT => {
                let m = StreamMsg::decode(from, &mut r)?;
                r.finish()?;
                let ready = self.holdback.accept(m);
                deliver(out, ready);
            }
            kind::STREAM_START => {
                let (room, next) = decode_stream_start(&mut r)?;
                let ready = self.holdback.restart_at(from, room, next);
                deliver(out, ready);
            }
            k => return Err(WireError::UnknownKind(k)),
        }
        Ok(())
    }

    fn handle_peer_incarnation(
        &mut self,
        _now: Time,
        peer: ServerId,
        _inc: u64,
        restarted: bool,
        out: &mut Outbox,
    ) {
        if !restarted {
            return;
        }
        // Its numbering starts again at 1; ours continues where it is.
        self.holdback.forget_origin(peer);
        self.counters.announce_to(peer, out);
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            refused: self.holdback.refused,
            held_back: self.holdback.held(),
            in_flight: 0,
        }
    }
}

fn build(_: &StrategyContext) -> Box<dyn Ordering> {
    Box::<Fifo>::default()
}

inventory::submit! {
    StrategySpec {
        name: "fifo",
        summary: "each sender's messages reach every member in the order sent",
        guarantees: Guarantees { fifo: true, total: false, causal: false },
        build,
    }
}
