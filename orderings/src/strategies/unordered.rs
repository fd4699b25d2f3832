//! `unordered`: deliver each message as soon as it arrives.

use super::kind;
use super::stream::StreamMsg;
use crate::registry::{Guarantees, StrategySpec};
use crate::wire::{Reader, WireError};
use crate::{Dest, Ordering, Outbox, Post, ServerId, StrategyContext, StrategyStats, Time};

pub(super) struct Unordered;

impl Ordering for Unordered {
    fn handle_post(&mut self, _now: Time, post: Post, out: &mut Outbox) {
        let msg = StreamMsg {
            id: post.id,
            room: post.room,
            seq: 0,
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
                out.deliver(m.into());
                Ok(())
            }
            k => Err(WireError::UnknownKind(k)),
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
