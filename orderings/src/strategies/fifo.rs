//! `fifo`: each origin server numbers its messages per room; receivers
//! deliver them in that order (a holdback queue per stream). Since a client
//! talks to one server, this keeps every sender's order.

use super::stream::{StreamCounters, StreamHoldback, StreamMessage, StreamMsg};
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::WireError;
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
        out.send(Dest::AllPeers, StreamMessage::Chat(msg.to_chat()).encode());
        out.deliver(post);
    }

    fn handle_peer(
        &mut self,
        _now: Time,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        let ready = match StreamMessage::decode(payload)? {
            StreamMessage::Chat(m) => self.holdback.accept(m.into_stream_msg(from)),
            StreamMessage::Start(s) => self.holdback.restart_at(from, s.room, s.next),
        };
        deliver(out, ready);
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
