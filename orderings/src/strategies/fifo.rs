//! `fifo`: each origin server numbers its messages per room; receivers
//! deliver them in that order (a holdback queue per stream). Since a client
//! talks to one server, this keeps every sender's order.
//!
//! A departed server's messages that reached only some survivors are relayed
//! by them ([`super::relay`]); a relay arrives in the departed stream's
//! order, so it is delivered as it comes.

use super::relay::{DepartedRelay, RelayMessage};
use super::stream::{ChatMessage, StreamCounters, StreamHoldback, StreamMessage, StreamMsg};
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::WireError;
use crate::{Dest, Ordering, Outbox, Post, ServerId, StrategyContext, StrategyStats, Time};

pub(super) struct Fifo {
    counters: StreamCounters,
    holdback: StreamHoldback,
    relay: DepartedRelay<ChatMessage>,
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
        if restarted {
            self.relay.release_for(peer);
            self.handle_released(out);
        }
        self.relay.note_incarnation(peer, incarnation, out);
        if restarted {
            // Its numbering starts again at 1; ours continues where it is.
            self.holdback.forget_origin(peer);
            self.counters.announce_to(peer, out);
        }
        self.handle_released(out);
    }

    fn handle_member_left(
        &mut self,
        _now: Time,
        peer: ServerId,
        _dead_below: u64,
        out: &mut Outbox,
    ) {
        self.relay.release_for(peer);
        self.handle_released(out);
        self.relay.depart(peer, out);
        // Its next incarnation numbers from 1 again (and hears where our
        // streams stand when it is admitted).
        self.holdback.forget_origin(peer);
        self.handle_released(out);
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            refused: self.holdback.refused,
            held_back: self.holdback.held(),
            in_flight: 0,
            relayed: self.relay.relayed,
        }
    }
}

impl Fifo {
    fn handle_payload(
        &mut self,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        if RelayMessage::is_relay_kind(payload) {
            return self.relay.handle_stream(from, payload, out);
        }
        let message = StreamMessage::decode(payload)?;
        if self.relay.stash(from, payload) {
            return Ok(());
        }
        let ready = match message {
            StreamMessage::Chat(m) => {
                self.relay.note_received(from, m.counter, m.clone());
                let mut ready = self.holdback.accept(m.into_stream_msg(from));
                ready.retain(|m| !self.relay.already_relayed(from, m.id.counter));
                ready
            }
            StreamMessage::Start(s) => self.holdback.restart_at(from, s.room, s.next),
        };
        deliver(out, ready);
        Ok(())
    }

    /// Payloads of a new incarnation that waited for its old one's flush.
    fn handle_released(&mut self, out: &mut Outbox) {
        while let Some((from, payload)) = self.relay.take_released() {
            // It decoded when it arrived.
            let _ = self.handle_payload(from, &payload, out);
        }
    }
}

fn build(ctx: &StrategyContext) -> Box<dyn Ordering> {
    Box::new(Fifo {
        counters: StreamCounters::default(),
        holdback: StreamHoldback::default(),
        relay: DepartedRelay::new(ctx.me, ctx.servers, ctx.window),
    })
}

inventory::submit! {
    StrategySpec {
        name: "fifo",
        summary: "each sender's messages reach every member in the order sent",
        guarantees: Guarantees { fifo: true, total: false, causal: false },
        build,
    }
}
