//! `unordered`: deliver each message as soon as it arrives. A departed
//! server's messages that reached only some survivors are relayed by them
//! ([`super::relay`]).

use super::kind;
use super::relay::{DepartedRelay, RelayMessage};
use super::stream::{ChatMessage, StreamMessage};
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::WireError;
use crate::{Dest, Ordering, Outbox, Post, ServerId, StrategyContext, StrategyStats, Time};

pub(super) struct Unordered {
    relay: DepartedRelay<ChatMessage>,
}

impl Ordering for Unordered {
    fn handle_post(&mut self, _now: Time, post: Post, out: &mut Outbox) {
        let msg = ChatMessage {
            counter: post.id.counter,
            room: post.room,
            seq: 0,
            line: post.line.clone(),
        };
        out.send(Dest::AllPeers, StreamMessage::Chat(msg).encode());
        out.deliver(post);
    }

    fn handle_peer(
        &mut self,
        _now: Time,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        if RelayMessage::is_relay_kind(payload) {
            return self.relay.handle_stream(from, payload, out);
        }
        // No order to keep: a new incarnation's messages need not wait for
        // the flush of its old one (nothing is stashed).
        match StreamMessage::decode(payload)? {
            StreamMessage::Chat(m) => {
                self.relay.note_received(from, m.counter, m.clone());
                if !self.relay.already_relayed(from, m.counter) {
                    out.deliver(m.into_stream_msg(from).into());
                }
                Ok(())
            }
            // Unordered keeps no streams: a stream start is not for it.
            StreamMessage::Start(_) => Err(WireError::UnknownKind(kind::STREAM_START)),
        }
    }

    fn handle_peer_incarnation(
        &mut self,
        _now: Time,
        peer: ServerId,
        incarnation: u64,
        _restarted: bool,
        out: &mut Outbox,
    ) {
        self.relay.note_incarnation(peer, incarnation, out);
    }

    fn handle_member_left(
        &mut self,
        _now: Time,
        peer: ServerId,
        _dead_below: u64,
        out: &mut Outbox,
    ) {
        self.relay.depart(peer, out);
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            relayed: self.relay.relayed,
            ..StrategyStats::default()
        }
    }
}

fn build(ctx: &StrategyContext) -> Box<dyn Ordering> {
    Box::new(Unordered {
        relay: DepartedRelay::new(ctx.me, ctx.servers, ctx.window),
    })
}

inventory::submit! {
    StrategySpec {
        name: "unordered",
        summary: "deliver each message as soon as a server receives it",
        guarantees: Guarantees::NONE,
        build,
    }
}
