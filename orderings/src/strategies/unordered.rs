//! `unordered`: deliver each message as soon as it arrives.

use super::kind;
use super::stream::{ChatMessage, StreamMessage};
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::WireError;
use crate::{Dest, Ordering, Outbox, Post, ServerId, StrategyContext, StrategyStats, Time};

pub(super) struct Unordered;

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
        match StreamMessage::decode(payload)? {
            StreamMessage::Chat(m) => {
                out.deliver(m.into_stream_msg(from).into());
                Ok(())
            }
            // Unordered keeps no streams: a stream start is not for it.
            StreamMessage::Start(_) => Err(WireError::UnknownKind(kind::STREAM_START)),
        }
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats::default()
    }
}

fn build(_: &StrategyContext) -> Box<dyn Ordering> {
    Box::new(Unordered)
}

inventory::submit! {
    StrategySpec {
        name: "unordered",
        summary: "deliver each message as soon as a server receives it",
        guarantees: Guarantees::NONE,
        build,
    }
}
