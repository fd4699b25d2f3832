//! A replica (every registered strategy, with and without a key) fed
//! datagrams from the fuzz data, both raw and wrapped into well-formed,
//! correctly sealed datagrams whose frames carry the fuzz bytes; with a
//! key, also through `handle_authenticated_datagram` (identified by the
//! sender's index inside the MAC).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use orderings::{
    Datagram, Replica, ReplicaConfig, ServerId, StrategyContext, Time, open_datagram, registered,
    seal_datagram, sender_of, stamp_sender,
};

const SERVERS: usize = 3;
const KEY: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let specs = registered();
    let spec = specs[usize::from(pick >> 1) % specs.len()];
    let key = (pick & 1 == 1).then_some(KEY);
    let mut cfg = ReplicaConfig::new(ServerId(0), SERVERS, 1);
    cfg.key = key;
    let mut r = Replica::new(
        cfg,
        (spec.build)(&StrategyContext {
            me: ServerId(0),
            servers: SERVERS,
            incarnation: 1,
            window: orderings::DEFAULT_WINDOW,
        }),
    );
    let mut now = Time(1);
    let mut seq = [0u64; SERVERS];
    let mut bad = 0;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        now = now.plus_micros(u64::from(*op) * 997);
        let from = usize::from(*op & 3) % SERVERS;
        let result = match op >> 2 & 3 {
            0 if key.is_some() && op & 0x80 != 0 => {
                match r.handle_authenticated_datagram(now, chunk) {
                    Some((_, result)) => result,
                    // Not a peer's: nothing counted.
                    None => Ok(()),
                }
            }
            0 => r.handle_datagram(now, ServerId(from as u16), chunk),
            1 | 2 => {
                // A valid datagram from a peer: the next frames, the fuzz
                // bytes as their payloads.
                let from = 1 + from % (SERVERS - 1);
                let frames: Vec<(u64, &[u8])> = chunk
                    .chunks(1 + usize::from(*op >> 4))
                    .map(|p| {
                        seq[from] += 1;
                        (seq[from], p)
                    })
                    .collect();
                let d = Datagram {
                    src_incarnation: 7,
                    dst_incarnation: 1,
                    ack: 0,
                    delivered: 0,
                    report_wanted: false,
                    excluded: false,
                    gaps: vec![],
                    frames,
                };
                let mut raw = d.encode_raw(key.is_some());
                if key.is_some() {
                    stamp_sender(&mut raw, from as u16);
                }
                let wire = seal_datagram(&raw, key.as_ref());
                if key.is_some() && op >> 2 & 3 == 2 {
                    let (who, result) = r
                        .handle_authenticated_datagram(now, &wire)
                        .expect("a sealed datagram naming a peer is identified");
                    assert_eq!(who, ServerId(from as u16));
                    result
                } else {
                    r.handle_datagram(now, ServerId(from as u16), &wire)
                }
            }
            _ => {
                let _ = r.post(
                    now,
                    1 + u32::from(*op >> 4) % 3,
                    Bytes::copy_from_slice(chunk),
                );
                r.handle_timeout(now);
                Ok(())
            }
        };
        bad += u64::from(result.is_err());
        while let Some(t) = r.poll_transmit(now) {
            assert!(!t.payload.contains(&0));
            let raw = open_datagram(&t.payload, key.as_ref()).expect("own transmit opens");
            assert_eq!(sender_of(&raw), Ok(key.map(|_| 0)));
        }
        while r.poll_delivery().is_some() {}
    }
    assert_eq!(r.stats().bad_datagrams, bad);
});
