//! Property-based fuzzing of every decoder that sees bytes from the network.
//!
//! Whatever arrives (random bytes, truncated or bit-flipped datagrams,
//! well-formed datagrams whose frames carry hostile payloads, payload
//! sequences that drive a strategy into odd states) must be an `Err` or be
//! handled: never a panic, never an unbounded allocation. Round trips of the
//! link encoding and of `seal`/`open` are checked on the way.
//!
//! Payloads come from two generators: plain random bytes, and a grammar of
//! the strategies' payload layouts (kind byte, then varints drawn from
//! "interesting" values: 0, 1, small, `u64::MAX`, ...), so that the fuzzer
//! gets past the first length check and into the strategies' state.
//!
//! `PROPTEST_CASES=N` overrides the number of cases of every property.

use bytes::Bytes;
use orderings::{
    Datagram, MAC_LEN, MAGIC, MsgId, Ordering, Outbox, Post, Reader, Replica, ReplicaConfig,
    ServerId, StrategyContext, Time, VERSION, Writer, open_datagram, registered, seal_datagram,
    sender_of, stamp_sender, stuff_into, unstuff,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

const KEY: [u8; 32] = [0x5a; 32];
const OTHER_KEY: [u8; 32] = [0xa5; 32];
const SERVERS: usize = 3;

/// Cases per property: `PROPTEST_CASES` if set, else `default`.
fn cfg(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Found failures become named regression tests below, not files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Generators.

/// Varint values that hit edges: zero, small, around u32/u16 limits, max.
fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..6,
        2 => 6u64..300,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => Just(u64::from(u32::MAX)),
        1 => Just(u64::from(u32::MAX) + 1),
        1 => Just(u64::from(u16::MAX) + 1),
        1 => any::<u64>(),
    ]
}

fn small_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..24),
        1 => vec(any::<u8>(), 0..1100),
    ]
}

/// Identifiers (counters, rooms, stream positions): mostly tiny, so that a
/// payload names what an earlier one created; sometimes an edge value.
fn ident() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..4,
        1 => interesting_u64(),
    ]
}

fn enc(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::new();
    f(&mut w);
    w.finish()
}

/// A strategy payload laid out the way some strategy decodes it (kinds and
/// layouts of `orderings::strategies`), with edge values, optionally cut
/// short or extended by a few bytes.
fn grammar_payload() -> BoxedStrategy<Vec<u8>> {
    let v = interesting_u64;
    let body = prop_oneof![
        // CHAT: counter, room, seq, line
        (ident(), ident(), ident(), small_bytes())
            .prop_map(|(c, r, s, l)| enc(|w| {
                w.u8(1).varint(c).varint(r).varint(s).bytes(&l);
            }))
            .boxed(),
        // STREAM_START: room, next
        (ident(), v())
            .prop_map(|(r, n)| enc(|w| {
                w.u8(2).varint(r).varint(n);
            }))
            .boxed(),
        // TOTAL_MSG: flags, counter, room, seq, line
        (0u8..3, ident(), ident(), ident(), small_bytes())
            .prop_map(|(f, c, r, s, l)| enc(|w| {
                w.u8(3).u8(f).varint(c).varint(r).varint(s).bytes(&l);
            }))
            .boxed(),
        // TOTAL_PROPOSE: counter, n
        (ident(), v())
            .prop_map(|(c, n)| enc(|w| {
                w.u8(4).varint(c).varint(n);
            }))
            .boxed(),
        // TOTAL_FINAL: counter, room, n, server, excluded servers
        (ident(), ident(), v(), ident(), vec(ident(), 0..3))
            .prop_map(|(c, r, n, s, ex)| enc(|w| {
                w.u8(5).varint(c).varint(r).varint(n).varint(s);
                w.varint(ex.len() as u64);
                for e in &ex {
                    w.varint(*e);
                }
            }))
            .boxed(),
        // CAUSAL_MSG: counter, room, clock length, (count, incarnation if count > 0)*, line
        (
            ident(),
            ident(),
            prop_oneof![3 => Just(SERVERS as u64), 1 => v()],
            vec((ident(), v()), 0..5),
            small_bytes()
        )
            .prop_map(|(c, r, len, entries, l)| enc(|w| {
                w.u8(6).varint(c).varint(r).varint(len);
                for (count, inc) in entries {
                    w.varint(count);
                    if count > 0 {
                        w.varint(inc);
                    }
                }
                w.bytes(&l);
            }))
            .boxed(),
        // TOTAL_QUERY: origin, incarnation, n, counters
        (ident(), v(), ident(), vec(ident(), 0..6))
            .prop_map(|(o, inc, n, cs)| enc(|w| {
                w.u8(7).varint(o).varint(inc).varint(n);
                for c in cs {
                    w.varint(c);
                }
            }))
            .boxed(),
        // TOTAL_ANSWER: origin, n, (counter, known?, n, server)*
        (ident(), ident(), vec((ident(), 0u8..3, v(), ident()), 0..6))
            .prop_map(|(o, n, answers)| enc(|w| {
                w.u8(8).varint(o).varint(n);
                for (c, known, p, s) in answers {
                    w.varint(c).u8(known);
                    if known == 1 {
                        w.varint(p).varint(s);
                    }
                }
            }))
            .boxed(),
        // Unknown kinds.
        (prop_oneof![Just(0u8), 9u8..=255], small_bytes())
            .prop_map(|(k, rest)| {
                let mut p = vec![k];
                p.extend(rest);
                p
            })
            .boxed(),
    ];
    (body, 0u8..10, vec(any::<u8>(), 0..3))
        .prop_map(|(mut p, cut, extra)| {
            match cut {
                // Mostly intact; sometimes truncated or with trailing bytes.
                0 if !p.is_empty() => {
                    p.pop();
                }
                1 => p.extend(extra),
                _ => {}
            }
            p
        })
        .boxed()
}

/// Bytes rich in the stuffing escape and its codes (and the magic byte).
fn stuffish_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![4 => any::<u8>(), 1 => Just(0xFEu8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(MAGIC)],
        0..64,
    )
}

/// Random bytes or a grammar payload.
fn payload() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..64),
        4 => grammar_payload(),
    ]
    .boxed()
}

/// One input to a strategy.
#[derive(Debug, Clone)]
enum Op {
    Post {
        room: u32,
        line: Vec<u8>,
    },
    Peer {
        from: u16,
        payload: Vec<u8>,
    },
    Incarnation {
        peer: u16,
        incarnation: u64,
        restarted: bool,
    },
    Timeout {
        advance_us: u64,
    },
}

fn op() -> BoxedStrategy<Op> {
    prop_oneof![
        2 => (prop_oneof![3 => 1u32..4, 1 => any::<u32>()], vec(any::<u8>(), 0..16))
            .prop_map(|(room, line)| Op::Post { room, line }),
        6 => (1u16..SERVERS as u16, payload()).prop_map(|(from, payload)| Op::Peer { from, payload }),
        1 => (1u16..SERVERS as u16, interesting_u64(), any::<bool>())
            .prop_map(|(peer, incarnation, restarted)| Op::Incarnation { peer, incarnation, restarted }),
        1 => (0u64..2_000_000).prop_map(|advance_us| Op::Timeout { advance_us }),
    ]
    .boxed()
}

fn build(name: &str) -> Box<dyn Ordering> {
    let spec = registered()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("strategy {name} not registered"));
    (spec.build)(&StrategyContext {
        me: ServerId(0),
        servers: SERVERS,
        incarnation: 1,
        window: orderings::DEFAULT_WINDOW,
    })
}

fn strategy_names() -> Vec<&'static str> {
    registered().iter().map(|s| s.name).collect()
}

/// Feeds `ops` to a fresh instance of every registered strategy. A
/// delivery's room must be a room some input named, and a send to a peer
/// must name a real peer.
fn run_strategy_ops(ops: &[Op]) -> Result<(), TestCaseError> {
    for name in strategy_names() {
        let mut s = build(name);
        let mut now = Time(1);
        let mut counter = 1u64;
        for op in ops {
            let mut out = Outbox::default();
            match op {
                Op::Post { room, line } => {
                    let id = MsgId {
                        origin: ServerId(0),
                        counter,
                    };
                    counter += 1;
                    s.handle_post(
                        now,
                        Post {
                            id,
                            room: *room,
                            line: Bytes::copy_from_slice(line),
                        },
                        &mut out,
                    );
                }
                Op::Peer { from, payload } => {
                    let _ = s.handle_peer(now, ServerId(*from), payload, &mut out);
                }
                Op::Incarnation {
                    peer,
                    incarnation,
                    restarted,
                } => s.handle_peer_incarnation(
                    now,
                    ServerId(*peer),
                    *incarnation,
                    *restarted,
                    &mut out,
                ),
                Op::Timeout { advance_us } => {
                    now = now.plus_micros(*advance_us);
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now, &mut out);
                    }
                }
            }
            for (dest, _) in &out.sends {
                if let orderings::Dest::Peer(p) = dest {
                    prop_assert!(
                        p.index() < SERVERS && *p != ServerId(0),
                        "{name}: send to {p:?}"
                    );
                }
            }
            let _ = s.stats();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Byte-level decoders.

proptest! {
    #![proptest_config(cfg(4_000))]

    #[test]
    fn open_never_panics_on_arbitrary_bytes(data in prop_oneof![3 => stuffish_bytes(), 1 => vec(any::<u8>(), 0..1200)]) {
        let _ = open_datagram(&data, None);
        let _ = open_datagram(&data, Some(&KEY));
    }

    #[test]
    fn open_never_panics_on_magic_prefixed_bytes(flags in any::<u8>(), rest in vec(any::<u8>(), 0..80)) {
        let mut data = vec![MAGIC, VERSION, flags];
        data.extend(rest);
        for key in [None, Some(&KEY)] {
            if let Ok(raw) = open_datagram(&data, key) {
                // Whatever opens must at least start like a datagram.
                prop_assert_eq!(raw[0], MAGIC);
                let _ = Datagram::decode_raw(&raw);
            }
        }
    }

    #[test]
    fn decode_raw_never_panics(data in vec(any::<u8>(), 0..600)) {
        let _ = Datagram::decode_raw(&data);
    }

    #[test]
    fn decode_raw_never_panics_past_the_header(flags in prop_oneof![0u8..2, 4u8..6], rest in vec(any::<u8>(), 0..200)) {
        let mut data = vec![MAGIC, VERSION, flags];
        data.extend(rest);
        if let Ok((d, authenticated)) = Datagram::decode_raw(&data) {
            prop_assert_eq!(authenticated, flags & 1 == 1);
            prop_assert!(d.gaps.len() <= 64);
            // What decodes names a sender exactly when the flag says so.
            let sender = sender_of(&data).expect("a decoded datagram has a readable sender");
            prop_assert_eq!(sender.is_some(), flags & 4 != 0);
            // What decodes re-encodes to the same bytes (varints are
            // canonical only when the input was; compare decoded fields).
            let mut again = d.encode_raw(authenticated);
            if let Some(s) = sender {
                stamp_sender(&mut again, s);
            }
            let (d2, a2) = Datagram::decode_raw(&again).expect("re-encoded datagram decodes");
            prop_assert_eq!(d2, d);
            prop_assert_eq!(a2, authenticated);
            prop_assert_eq!(sender_of(&again), Ok(sender));
        }
    }

    #[test]
    fn unstuff_never_panics_and_inverts_stuffing(data in prop_oneof![3 => stuffish_bytes(), 1 => vec(any::<u8>(), 0..1200)]) {
        if let Ok(raw) = unstuff(&data) {
            let mut again = Vec::new();
            stuff_into(&raw, &mut again);
            // Stuffing is a bijection onto the valid stuffed strings.
            prop_assert_eq!(again, data);
        }
    }

    #[test]
    fn reader_never_panics(data in vec(any::<u8>(), 0..96), ops in vec(0u8..9, 0..24), n in any::<usize>()) {
        let mut r = Reader::new(&data);
        for op in ops {
            let before = r.remaining();
            match op {
                0 => { let _ = r.u8(); }
                1 => { let _ = r.varint(); }
                2 => { let _ = r.varint_u32("x"); }
                3 => { let _ = r.varint_u16("x"); }
                4 => { let _ = r.bytes(); }
                5 => { let _ = r.take(n % 128); }
                6 => { let _ = r.take(n); }
                7 => { let _ = r.finish(); }
                _ => { let _ = r.rest(); }
            }
            prop_assert!(r.remaining() <= before);
        }
    }
}

// ---------------------------------------------------------------------------
// Round trips.

/// (src incarnation, dst incarnation, ack, gaps, frames, authenticated)
type DatagramParts = (u64, u64, u64, Vec<(u64, u64)>, Vec<(u64, Vec<u8>)>, bool);

fn datagram_parts() -> impl Strategy<Value = DatagramParts> {
    (
        interesting_u64(),
        interesting_u64(),
        interesting_u64(),
        prop_oneof![
            4 => vec((interesting_u64(), interesting_u64()), 0..6),
            1 => vec((interesting_u64(), interesting_u64()), 60..65),
        ],
        vec((interesting_u64(), small_bytes()), 0..6),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(cfg(2_000))]

    #[test]
    fn datagram_encode_decode_round_trips((src, dst, ack, gaps, frames, auth) in datagram_parts()) {
        let d = Datagram {
            src_incarnation: src,
            dst_incarnation: dst,
            ack,
            delivered: ack.rotate_left(7),
            report_wanted: ack % 3 == 0,
            excluded: false,
            gaps,
            frames: frames.iter().map(|(s, p)| (*s, &p[..])).collect(),
        };
        let plain = d.encode_raw(auth);
        // With and without the sender's index (stamped when keyed).
        let sender = (src % 65_536) as u16;
        let mut stamped = plain.clone();
        stamp_sender(&mut stamped, sender);
        for (raw, named) in [(plain, None), (stamped, Some(sender))] {
            let (back, a) = Datagram::decode_raw(&raw).expect("decodes");
            prop_assert_eq!(&back, &d);
            prop_assert_eq!(a, auth);
            prop_assert_eq!(sender_of(&raw), Ok(named));
            // Every strict prefix is refused (the frame count and lengths
            // are checked), never misread.
            for cut in [0, 1, 2, 3, 4, raw.len() / 2, raw.len() - 1] {
                if cut < raw.len() {
                    prop_assert!(Datagram::decode_raw(&raw[..cut]).is_err(), "prefix of {} bytes decoded", cut);
                }
            }
        }
    }

    #[test]
    fn seal_open_round_trips_without_nul((src, dst, ack, gaps, frames, _auth) in datagram_parts(), flip in any::<(usize, u8)>()) {
        let d = Datagram {
            src_incarnation: src,
            dst_incarnation: dst,
            ack,
            delivered: ack.rotate_left(7),
            report_wanted: ack % 3 == 0,
            excluded: false,
            gaps,
            frames: frames.iter().map(|(s, p)| (*s, &p[..])).collect(),
        };
        // Keyed, naming its sender as the replica does.
        let mut raw = d.encode_raw(true);
        stamp_sender(&mut raw, (dst % 65_536) as u16);
        let wire_k = seal_datagram(&raw, Some(&KEY));
        prop_assert!(!wire_k.contains(&0), "sealed datagram contains NUL");
        prop_assert!(wire_k.len() >= raw.len() + MAC_LEN);
        prop_assert_eq!(open_datagram(&wire_k, Some(&KEY)).expect("opens"), raw.clone());
        prop_assert_eq!(open_datagram(&wire_k, Some(&OTHER_KEY)), Err(orderings::WireError::BadMac));
        prop_assert_eq!(open_datagram(&wire_k, None), Err(orderings::WireError::BadMac));
        // Any single bit flip or truncation is refused.
        let (pos, bit) = flip;
        let mut bad = wire_k.clone();
        let i = pos % bad.len();
        bad[i] ^= 1 << (bit % 8);
        prop_assert!(open_datagram(&bad, Some(&KEY)).is_err(), "bit flip at {} accepted", i);
        let cut = pos % wire_k.len();
        prop_assert!(open_datagram(&wire_k[..cut], Some(&KEY)).is_err(), "truncation to {} accepted", cut);
        // Unkeyed.
        let raw = d.encode_raw(false);
        let wire_n = seal_datagram(&raw, None);
        prop_assert!(!wire_n.contains(&0));
        prop_assert_eq!(open_datagram(&wire_n, None).expect("opens"), raw);
        prop_assert_eq!(open_datagram(&wire_n, Some(&KEY)), Err(orderings::WireError::BadMac));
    }

    #[test]
    fn seal_of_arbitrary_bytes_has_no_nul_and_opens(raw in vec(any::<u8>(), 0..1200)) {
        for key in [None, Some(&KEY)] {
            let w = seal_datagram(&raw, key);
            prop_assert!(!w.contains(&0));
            // It opens exactly when it looks like a datagram with the right flag.
            let looks = raw.len() >= 3 && raw[0] == MAGIC && (raw[2] & 1 == 1) == key.is_some();
            match open_datagram(&w, key) {
                Ok(back) => {
                    prop_assert!(looks);
                    prop_assert_eq!(back, raw.clone());
                }
                Err(_) => prop_assert!(!looks),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Strategies.

proptest! {
    #![proptest_config(cfg(4_000))]

    #[test]
    fn every_strategy_survives_any_single_payload(from in 1u16..SERVERS as u16, p in payload()) {
        for name in strategy_names() {
            let mut s = build(name);
            let mut out = Outbox::default();
            let _ = s.handle_peer(Time(1), ServerId(from), &p, &mut out);
            let _ = s.stats();
        }
    }
}

proptest! {
    #![proptest_config(cfg(2_000))]

    #[test]
    fn every_strategy_survives_hostile_payload_sequences(ops in vec(op(), 1..32)) {
        run_strategy_ops(&ops)?;
    }
}

// ---------------------------------------------------------------------------
// The replica: bytes in through `handle_datagram`.

fn replica(key: Option<[u8; 32]>) -> Replica {
    let spec = registered()[0];
    replica_with(spec.name, key)
}

fn replica_with(name: &str, key: Option<[u8; 32]>) -> Replica {
    let spec = registered()
        .into_iter()
        .find(|s| s.name == name)
        .expect("registered");
    let mut cfg = ReplicaConfig::new(ServerId(0), SERVERS, 1);
    cfg.key = key;
    let strategy = (spec.build)(&StrategyContext {
        me: ServerId(0),
        servers: SERVERS,
        incarnation: 1,
        window: orderings::DEFAULT_WINDOW,
    });
    Replica::new(cfg, strategy)
}

/// Drains a replica's output, checking every transmit is NUL-free and opens.
fn drain(r: &mut Replica, now: Time, key: Option<&[u8; 32]>) -> Result<usize, TestCaseError> {
    let mut n = 0;
    for _ in 0..10_000 {
        let Some(t) = r.poll_transmit(now) else {
            break;
        };
        prop_assert!(!t.payload.contains(&0), "transmit contains NUL");
        prop_assert!(t.to.index() < SERVERS && t.to != ServerId(0));
        let raw = open_datagram(&t.payload, key).expect("own transmit opens");
        prop_assert!(Datagram::decode_raw(&raw).is_ok());
        // Keyed transmits name their sender (inside the MAC); unkeyed
        // ones are today's datagrams.
        let named = key.map(|_| 0u16);
        prop_assert_eq!(sender_of(&raw), Ok(named));
        n += 1;
    }
    while r.poll_delivery().is_some() {}
    Ok(n)
}

proptest! {
    #![proptest_config(cfg(2_000))]

    #[test]
    fn replica_counts_arbitrary_bytes_as_bad(
        inputs in vec((0u16..5, vec(any::<u8>(), 0..300)), 1..12),
        keyed in any::<bool>(),
    ) {
        let key = keyed.then_some(KEY);
        for name in strategy_names() {
            let mut r = replica_with(name, key);
            let mut errors = 0;
            for (i, (from, data)) in inputs.iter().enumerate() {
                let now = Time(1 + i as u64 * 1000);
                if r.handle_datagram(now, ServerId(*from), data).is_err() {
                    errors += 1;
                }
                drain(&mut r, now, key.as_ref())?;
            }
            prop_assert_eq!(r.stats().bad_datagrams, errors);
            prop_assert_eq!(r.stats().deliveries, 0);
        }
    }
}

/// A structurally valid datagram from a peer, frames with hostile payloads.
#[derive(Debug, Clone)]
struct Forged {
    from: u16,
    src_incarnation: u64,
    dst_incarnation: u64,
    ack: u64,
    gaps: Vec<(u64, u64)>,
    frames: Vec<(u64, Vec<u8>)>,
    /// 0: right key; 1: wrong key; 2: no MAC; 3: right key, one bit flipped.
    sealing: u8,
    flip: usize,
}

fn forged() -> impl Strategy<Value = Forged> {
    (
        1u16..SERVERS as u16,
        prop_oneof![4 => 1u64..4, 1 => interesting_u64()],
        prop_oneof![4 => Just(1u64), 1 => Just(0u64), 1 => interesting_u64()],
        interesting_u64(),
        vec((interesting_u64(), interesting_u64()), 0..4),
        // Frames: mostly the next few sequence numbers, so they get through.
        vec(
            (prop_oneof![4 => 1u64..8, 1 => interesting_u64()], payload()),
            0..5,
        ),
        prop_oneof![6 => Just(0u8), 1 => 1u8..4],
        any::<usize>(),
    )
        .prop_map(
            |(from, src_incarnation, dst_incarnation, ack, gaps, frames, sealing, flip)| Forged {
                from,
                src_incarnation,
                dst_incarnation,
                ack,
                gaps,
                frames,
                sealing,
                flip,
            },
        )
}

impl Forged {
    fn wire(&self, key: Option<&[u8; 32]>) -> Vec<u8> {
        let d = Datagram {
            src_incarnation: self.src_incarnation,
            dst_incarnation: self.dst_incarnation,
            ack: self.ack,
            delivered: self.ack / 2,
            report_wanted: self.ack % 2 == 1,
            excluded: false,
            gaps: self.gaps.clone(),
            frames: self.frames.iter().map(|(s, p)| (*s, &p[..])).collect(),
        };
        match (self.sealing, key) {
            (0, k) => seal_datagram(&d.encode_raw(k.is_some()), k),
            (1, _) => seal_datagram(&d.encode_raw(true), Some(&OTHER_KEY)),
            (2, _) => seal_datagram(&d.encode_raw(false), None),
            (_, k) => {
                let mut w = seal_datagram(&d.encode_raw(k.is_some()), k);
                let i = self.flip % w.len();
                w[i] ^= 1 << (self.flip % 8);
                w
            }
        }
    }

    /// Whether the replica must refuse it for sure.
    fn must_fail(&self, key: Option<&[u8; 32]>) -> bool {
        match self.sealing {
            0 => false,
            1 => true,
            2 => key.is_some(),
            // A flipped bit on an unkeyed datagram may still decode.
            _ => key.is_some(),
        }
    }
}

proptest! {
    #![proptest_config(cfg(1_000))]

    #[test]
    fn replica_survives_valid_datagrams_with_hostile_frames(
        inputs in vec((forged(), prop_oneof![3 => Just(None), 1 => (1u32..4, vec(any::<u8>(), 0..12)).prop_map(Some)], 0u64..300_000), 1..16),
        keyed in any::<bool>(),
    ) {
        let key = keyed.then_some(KEY);
        for name in strategy_names() {
            let mut r = replica_with(name, key);
            let mut now = Time(1);
            let mut bad = 0;
            for (f, post, advance) in &inputs {
                now = now.plus_micros(*advance);
                let before = r.stats();
                let result = r.handle_datagram(now, ServerId(f.from), &f.wire(key.as_ref()));
                if result.is_err() {
                    bad += 1;
                    // A refused datagram changes nothing but the counter.
                    let after = r.stats();
                    prop_assert_eq!(&after.links, &before.links);
                    prop_assert_eq!(after.deliveries, before.deliveries);
                }
                if f.must_fail(key.as_ref()) {
                    prop_assert!(result.is_err(), "{}: forged datagram accepted: {:?}", name, f);
                }
                if let Some((room, line)) = post {
                    let _ = r.post(now, *room, Bytes::copy_from_slice(line));
                }
                r.handle_timeout(now);
                drain(&mut r, now, key.as_ref())?;
            }
            prop_assert_eq!(r.stats().bad_datagrams, bad);
        }
    }
}

// ---------------------------------------------------------------------------
// Replays between real replicas: a captured datagram replayed later (in any
// order, any number of times) delivers nothing twice.

struct Net {
    replicas: Vec<Replica>,
    /// Every datagram ever sent: (from, to, wire).
    captured: Vec<(usize, usize, Vec<u8>)>,
    delivered: Vec<Vec<(u32, Bytes)>>,
}

impl Net {
    fn new(name: &str, key: Option<[u8; 32]>) -> Net {
        let spec = registered()
            .into_iter()
            .find(|s| s.name == name)
            .expect("registered");
        let replicas = (0..SERVERS)
            .map(|i| {
                let mut cfg = ReplicaConfig::new(ServerId(i as u16), SERVERS, 1 + i as u64);
                cfg.key = key;
                let st = (spec.build)(&StrategyContext {
                    me: ServerId(i as u16),
                    servers: SERVERS,
                    incarnation: 1 + i as u64,
                    window: orderings::DEFAULT_WINDOW,
                });
                Replica::new(cfg, st)
            })
            .collect();
        Net {
            replicas,
            captured: Vec::new(),
            delivered: vec![Vec::new(); SERVERS],
        }
    }

    /// Exchanges datagrams until nobody has anything to send.
    fn pump(&mut self, now: Time) {
        for _round in 0..1000 {
            let mut moved = false;
            for i in 0..SERVERS {
                while let Some(t) = self.replicas[i].poll_transmit(now) {
                    moved = true;
                    let to = t.to.index();
                    self.captured.push((i, to, t.payload.clone()));
                    self.replicas[to]
                        .handle_datagram(now, ServerId(i as u16), &t.payload)
                        .expect("genuine datagram accepted");
                }
            }
            for i in 0..SERVERS {
                while let Some(d) = self.replicas[i].poll_delivery() {
                    self.delivered[i].push((d.room, d.line));
                }
            }
            if !moved {
                return;
            }
        }
        panic!("network did not go quiet");
    }

    fn settle(&mut self, mut now: Time) -> Time {
        for _ in 0..50 {
            self.pump(now);
            let next = self.replicas.iter().filter_map(|r| r.poll_timeout()).min();
            match next {
                Some(t) if t <= now.plus_micros(50_000) => {
                    now = t.max(now);
                    for r in &mut self.replicas {
                        r.handle_timeout(now);
                    }
                }
                _ => break,
            }
        }
        self.pump(now);
        now
    }
}

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn replayed_datagrams_deliver_nothing_twice(
        posts in vec((0usize..SERVERS, 1u32..3, vec(any::<u8>(), 0..20)), 1..12),
        replays in vec((any::<usize>(), 1usize..3), 1..40),
        keyed in any::<bool>(),
    ) {
        let key = keyed.then_some(KEY);
        for name in strategy_names() {
            let mut net = Net::new(name, key);
            let mut now = net.settle(Time(1));
            for (who, room, text) in &posts {
                now = now.plus_micros(10);
                net.replicas[*who].post(now, *room, Bytes::copy_from_slice(text)).expect("accepted");
                now = net.settle(now);
            }
            now = net.settle(now.plus_micros(1_000));
            let before: Vec<usize> = net.delivered.iter().map(Vec::len).collect();
            // Every post reached every replica exactly once.
            for (i, d) in net.delivered.iter().enumerate() {
                prop_assert_eq!(d.len(), posts.len(), "{}: replica {} delivered {:?}", name, i, d);
            }
            let dup_before: u64 = net.replicas.iter().flat_map(|r| r.stats().links).map(|l| l.duplicates + l.stale).sum();
            // Replay captured datagrams, in any order, some several times.
            let captured = net.captured.clone();
            let mut frames_replayed = false;
            for (pick, times) in &replays {
                let (from, to, wire) = &captured[pick % captured.len()];
                let raw = open_datagram(wire, key.as_ref()).expect("captured opens");
                if !Datagram::decode_raw(&raw).expect("decodes").0.frames.is_empty() {
                    frames_replayed = true;
                }
                for _ in 0..*times {
                    prop_assert!(net.replicas[*to].handle_datagram(now, ServerId(*from as u16), wire).is_ok());
                }
            }
            net.settle(now.plus_micros(1_000));
            let after: Vec<usize> = net.delivered.iter().map(Vec::len).collect();
            prop_assert_eq!(&after, &before, "{}: a replay was delivered", name);
            let dup_after: u64 = net.replicas.iter().flat_map(|r| r.stats().links).map(|l| l.duplicates + l.stale).sum();
            if frames_replayed {
                prop_assert!(dup_after > dup_before, "{}: replayed frames not counted as duplicates/stale", name);
            }
            for r in &net.replicas {
                prop_assert_eq!(r.stats().bad_datagrams, 0);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Named cases: the registry holds the built-in strategies, so the
// properties above cover them all.

#[test]
fn every_builtin_strategy_is_fuzzed() {
    let names = strategy_names();
    for want in ["causal", "fifo", "isis", "total", "unordered"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // The default replica helper builds something.
    let _ = replica(None);
}

// ---------------------------------------------------------------------------
// Regressions found by the properties above (each panicked with "attempt to
// add with overflow" in debug builds; in release the counter wrapped).

fn total_msg(counter: u64, room: u64, seq: u64) -> Vec<u8> {
    enc(|w| {
        w.u8(3)
            .u8(0)
            .varint(counter)
            .varint(room)
            .varint(seq)
            .bytes(b"x");
    })
}

/// A stream position of `u64::MAX` (STREAM_START, then a message at that
/// position) made `next += 1` overflow in the stream holdback.
#[test]
fn stream_position_at_u64_max_is_refused() {
    for name in ["fifo", "isis"] {
        let mut s = build(name);
        let mut out = Outbox::default();
        let start = enc(|w| {
            w.u8(2).varint(1).varint(u64::MAX);
        });
        assert!(
            s.handle_peer(Time(1), ServerId(1), &start, &mut out)
                .is_err(),
            "{name}"
        );
        let chat = enc(|w| {
            w.u8(1).varint(1).varint(1).varint(u64::MAX).bytes(b"x");
        });
        let _ = s.handle_peer(Time(1), ServerId(1), &chat, &mut out);
        let _ = s.handle_peer(Time(1), ServerId(1), &total_msg(1, 1, u64::MAX), &mut out);
        // The largest accepted position still works and cannot go further.
        let start = enc(|w| {
            w.u8(2).varint(2).varint(u64::MAX - 1);
        });
        assert!(
            s.handle_peer(Time(1), ServerId(1), &start, &mut out)
                .is_ok(),
            "{name}"
        );
        let _ = s.handle_peer(
            Time(1),
            ServerId(1),
            &total_msg(2, 2, u64::MAX - 1),
            &mut out,
        );
        let chat = enc(|w| {
            w.u8(1).varint(2).varint(2).varint(u64::MAX - 1).bytes(b"x");
        });
        let _ = s.handle_peer(Time(1), ServerId(1), &chat, &mut out);
    }
}

/// A final (or proposed) priority of `u64::MAX` made the next proposal's
/// `highest += 1` overflow in `isis` (then called `total`).
#[test]
fn isis_refuses_priorities_without_headroom() {
    let mut s = build("isis");
    let mut out = Outbox::default();
    s.handle_peer(Time(1), ServerId(1), &total_msg(7, 1, 1), &mut out)
        .unwrap();
    let fin = |n: u64| {
        enc(|w| {
            w.u8(5).varint(7).varint(1).varint(n).varint(1).varint(0);
        })
    };
    assert!(
        s.handle_peer(Time(1), ServerId(1), &fin(u64::MAX), &mut out)
            .is_err()
    );
    let propose = enc(|w| {
        w.u8(4).varint(1).varint(u64::MAX);
    });
    assert!(
        s.handle_peer(Time(1), ServerId(2), &propose, &mut out)
            .is_err()
    );
    let answer = enc(|w| {
        w.u8(8)
            .varint(1)
            .varint(1)
            .varint(1)
            .u8(1)
            .varint(u64::MAX)
            .varint(1)
            .varint(0);
    });
    assert!(
        s.handle_peer(Time(1), ServerId(2), &answer, &mut out)
            .is_err()
    );
    // The largest accepted priority leaves room for every later proposal.
    s.handle_peer(Time(1), ServerId(1), &fin(u64::MAX / 2), &mut out)
        .unwrap();
    s.handle_peer(Time(1), ServerId(1), &total_msg(8, 1, 2), &mut out)
        .unwrap();
    s.handle_post(
        Time(2),
        Post {
            id: MsgId {
                origin: ServerId(0),
                counter: 1,
            },
            room: 1,
            line: Bytes::from_static(b"<me> hi"),
        },
        &mut out,
    );
    s.handle_peer_incarnation(Time(3), ServerId(1), 9, true, &mut out);
}

/// Replica `me` of [`SERVERS`], running the first registered strategy.
fn replica_as(me: u16, key: Option<[u8; 32]>) -> Replica {
    let spec = registered()[0];
    let mut cfg = ReplicaConfig::new(ServerId(me), SERVERS, 1 + u64::from(me));
    cfg.key = key;
    let strategy = (spec.build)(&StrategyContext {
        me: ServerId(me),
        servers: SERVERS,
        incarnation: 1 + u64::from(me),
        window: orderings::DEFAULT_WINDOW,
    });
    Replica::new(cfg, strategy)
}

/// With a secret, a replica identifies a datagram's sender by the index
/// inside the MAC, whatever address it came from; a wrong MAC, a missing
/// secret or an index that contradicts the address is refused.
#[test]
fn keyed_datagrams_are_identified_by_their_authenticated_sender() {
    let mut a = replica_as(0, Some(KEY));
    let mut b = replica_as(1, Some(KEY));
    let t = b.poll_transmit(Time(1)).expect("a first heartbeat");
    let to_a = if t.to == ServerId(0) {
        t.payload
    } else {
        b.poll_transmit(Time(1))
            .expect("a heartbeat for server 0")
            .payload
    };
    let bad_before = a.stats().bad_datagrams;
    match a.handle_authenticated_datagram(Time(2), &to_a) {
        Some((from, Ok(()))) => assert_eq!(from, ServerId(1)),
        other => panic!("not identified as server 1: {other:?}"),
    }
    // The same bytes claimed for another peer's address are refused.
    assert!(a.handle_datagram(Time(3), ServerId(2), &to_a).is_err());
    assert_eq!(a.stats().bad_datagrams, bad_before + 1);
    // A forged datagram naming server 1 under another key is nobody's,
    // and nothing is counted (the caller decides what it is).
    let raw = open_datagram(&to_a, Some(&KEY)).expect("opens");
    let forged = seal_datagram(&raw, Some(&OTHER_KEY));
    assert_eq!(sender_of(&raw), Ok(Some(1)));
    assert!(a.handle_authenticated_datagram(Time(4), &forged).is_none());
    assert_eq!(a.stats().bad_datagrams, bad_before + 1);
    // An index naming ourselves, or beyond the cluster, is nobody's.
    for index in [0u16, 3, u16::MAX] {
        let mut raw = Datagram {
            src_incarnation: 2,
            dst_incarnation: 1,
            ..Datagram::default()
        }
        .encode_raw(true);
        stamp_sender(&mut raw, index);
        let wire = seal_datagram(&raw, Some(&KEY));
        assert!(
            a.handle_authenticated_datagram(Time(5), &wire).is_none(),
            "index {index}"
        );
    }
    // Without a secret an index claim is never trusted.
    let mut plain = replica_as(0, None);
    let mut c = replica_as(1, None);
    let t = c.poll_transmit(Time(1)).expect("a heartbeat");
    assert_eq!(
        sender_of(&open_datagram(&t.payload, None).expect("opens")),
        Ok(None),
        "unkeyed datagrams are today's"
    );
    assert!(
        plain
            .handle_authenticated_datagram(Time(2), &t.payload)
            .is_none()
    );
}
