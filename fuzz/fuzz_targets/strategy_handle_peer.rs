//! Every registered strategy fed a sequence of inputs decoded from the fuzz
//! data: payloads from peers, local posts, peer restarts, timers.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use orderings::{MsgId, Outbox, Post, ServerId, StrategyContext, Time, registered};

const SERVERS: usize = 3;

fuzz_target!(|data: &[u8]| {
    let specs = registered();
    assert!(specs.len() >= 4, "strategies missing from the registry");
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let spec = specs[usize::from(pick) % specs.len()];
    let mut s = (spec.build)(&StrategyContext {
        me: ServerId(0),
        servers: SERVERS,
        incarnation: 1,
        window: orderings::DEFAULT_WINDOW,
    });
    let mut now = Time(1);
    let mut counter = 1;
    // Each step: an op byte, a length byte, that many bytes.
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        let mut out = Outbox::default();
        let from = ServerId(1 + u16::from(*op & 1));
        match op >> 1 & 3 {
            0 | 1 => {
                let _ = s.handle_peer(now, from, chunk, &mut out);
            }
            2 => {
                let room = u32::from(chunk.first().copied().unwrap_or(1) % 4);
                s.handle_post(
                    now,
                    Post {
                        id: MsgId {
                            origin: ServerId(0),
                            counter,
                        },
                        room,
                        line: Bytes::copy_from_slice(chunk),
                    },
                    &mut out,
                );
                counter += 1;
            }
            _ => {
                let mut b = [0u8; 8];
                let k = chunk.len().min(8);
                b[..k].copy_from_slice(&chunk[..k]);
                let v = u64::from_le_bytes(b);
                if op & 0x10 != 0 {
                    s.handle_peer_incarnation(now, from, v, op & 0x20 != 0, &mut out);
                } else {
                    now = now.plus_micros(v % 10_000_000);
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now, &mut out);
                    }
                }
            }
        }
        for (dest, _) in &out.sends {
            if let orderings::Dest::Peer(p) = dest {
                assert!(p.index() < SERVERS && *p != ServerId(0));
            }
        }
        let _ = s.stats();
    }
});
