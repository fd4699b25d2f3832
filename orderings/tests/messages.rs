//! Property tests of the strategies' peer message formats
//! ([`StreamMessage`], [`TotalMessage`], [`StampedMessage`],
//! [`CausalMessage`]): decoding any
//! bytes is an `Ok` or an `Err`, never a panic, and every message decodes
//! back to itself. The fuzz targets `*_message_decode` cover the first half
//! with libFuzzer. The `*_layout_is_unchanged` properties pin the bytes.
//!
//! `PROPTEST_CASES=N` overrides the number of cases of every property.

use bytes::Bytes;
use orderings::{
    CausalMessage, ChatMessage, ClockEntry, MAX_CLOCK, MAX_PRIORITY, Priority, ServerId,
    StampedMessage, StreamMessage, StreamStart, TotalMessage, Writer,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Cases per property: `PROPTEST_CASES` if set, else `default`.
fn cfg(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn chat() -> impl Strategy<Value = ChatMessage> {
    (
        any::<u64>(),
        any::<u32>(),
        0..u64::MAX,
        vec(any::<u8>(), 0..1200),
    )
        .prop_map(|(counter, room, seq, line)| ChatMessage {
            counter,
            room,
            seq,
            line: Bytes::from(line),
        })
}

fn stream_start() -> impl Strategy<Value = StreamStart> {
    (any::<u32>(), 0..u64::MAX).prop_map(|(room, next)| StreamStart { room, next })
}

fn stream_message() -> impl Strategy<Value = StreamMessage> {
    prop_oneof![
        chat().prop_map(StreamMessage::Chat),
        stream_start().prop_map(StreamMessage::Start),
    ]
}

fn priority() -> impl Strategy<Value = Priority> {
    (0..=MAX_PRIORITY, any::<u16>()).prop_map(|(n, server)| Priority { n, server })
}

fn total_message() -> impl Strategy<Value = TotalMessage> {
    prop_oneof![
        (any::<bool>(), chat()).prop_map(|(resent, chat)| TotalMessage::Chat { resent, chat }),
        (any::<u64>(), 0..=MAX_PRIORITY)
            .prop_map(|(counter, priority)| TotalMessage::Propose { counter, priority }),
        (
            any::<u64>(),
            any::<u32>(),
            priority(),
            vec(any::<u16>(), 0..8)
        )
            .prop_map(|(counter, room, priority, excluded)| TotalMessage::Final {
                counter,
                room,
                priority,
                excluded,
            }),
        stream_start().prop_map(TotalMessage::StreamStart),
        (any::<u16>(), any::<u64>(), vec(any::<u64>(), 0..50)).prop_map(
            |(origin, incarnation, counters)| TotalMessage::Query {
                origin: ServerId(origin),
                incarnation,
                counters,
            }
        ),
        (
            any::<u16>(),
            vec(
                (
                    any::<u64>(),
                    proptest::option::of((priority(), vec(any::<u16>(), 0..8)))
                ),
                0..50
            )
        )
            .prop_map(|(origin, answers)| TotalMessage::Answer {
                origin: ServerId(origin),
                answers,
            }),
    ]
}

fn clock_entry() -> impl Strategy<Value = ClockEntry> {
    // The incarnation is on the wire only for a non-zero count.
    prop_oneof![
        Just(ClockEntry {
            incarnation: 0,
            count: 0
        }),
        (any::<u64>(), 1..=u64::MAX)
            .prop_map(|(incarnation, count)| ClockEntry { incarnation, count }),
    ]
}

fn causal_message() -> impl Strategy<Value = CausalMessage> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            vec(clock_entry(), 0..20),
            vec(any::<u8>(), 0..1200)
        )
            .prop_map(|(counter, room, clock, line)| CausalMessage::Chat {
                counter,
                room,
                clock,
                line: Bytes::from(line),
            }),
        (any::<u32>(), any::<u64>()).prop_map(|(room, count)| CausalMessage::Start { room, count }),
    ]
}

/// Random bytes, half of them behind a kind byte the formats know.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..300),
        (1u8..=9, vec(any::<u8>(), 0..300)).prop_map(|(kind, mut rest)| {
            rest.insert(0, kind);
            rest
        }),
    ]
}

fn stamped_message() -> impl Strategy<Value = StampedMessage> {
    prop_oneof![
        (
            any::<u64>(),
            0..=MAX_CLOCK,
            any::<u64>(),
            any::<u32>(),
            vec(any::<u8>(), 0..1200)
        )
            .prop_map(|(seq, clock, counter, room, line)| StampedMessage::Chat {
                seq,
                clock,
                counter,
                room,
                line: Bytes::from(line),
            }),
        (any::<u64>(), 0..=MAX_CLOCK).prop_map(|(seq, clock)| StampedMessage::Ack { seq, clock }),
        (
            0..=MAX_CLOCK,
            any::<u64>(),
            any::<u32>(),
            vec(any::<u8>(), 0..1200)
        )
            .prop_map(|(clock, counter, room, line)| StampedMessage::Resent {
                clock,
                counter,
                room,
                line: Bytes::from(line),
            }),
        (
            0..=MAX_CLOCK,
            any::<u64>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(clock, first_seq, held)| StampedMessage::Hello {
                clock,
                first_seq,
                held,
            }),
    ]
}

/// The wire layout of `total`, field by field apart from the encoder.
fn stamped_layout(m: &StampedMessage) -> Vec<u8> {
    let mut w = Writer::new();
    match m {
        StampedMessage::Chat {
            seq,
            clock,
            counter,
            room,
            line,
        } => {
            w.u8(13)
                .varint(*seq)
                .varint(*clock)
                .varint(*counter)
                .varint(u64::from(*room))
                .bytes(line);
        }
        StampedMessage::Ack { seq, clock } => {
            w.u8(14).varint(*seq).varint(*clock);
        }
        StampedMessage::Resent {
            clock,
            counter,
            room,
            line,
        } => {
            w.u8(16)
                .varint(*clock)
                .varint(*counter)
                .varint(u64::from(*room))
                .bytes(line);
        }
        StampedMessage::Hello {
            clock,
            first_seq,
            held,
        } => {
            w.u8(15).varint(*clock).varint(*first_seq);
            match held {
                Some(h) => w.u8(1).varint(*h),
                None => w.u8(0),
            };
        }
    }
    w.finish()
}

proptest! {
    #![proptest_config(cfg(2000))]

    #[test]
    fn stamped_messages_round_trip_and_keep_their_layout(m in stamped_message()) {
        let wire = m.encode();
        prop_assert_eq!(wire.to_vec(), stamped_layout(&m));
        prop_assert_eq!(StampedMessage::decode(&wire), Ok(m));
    }

    /// A stamped payload cut short, or followed by a byte, is refused.
    #[test]
    fn truncated_or_extended_stamped_payloads_are_refused(m in stamped_message(), extra in any::<u8>()) {
        let wire = m.encode();
        prop_assert!(StampedMessage::decode(&wire[..wire.len() - 1]).is_err());
        let mut longer = wire.to_vec();
        longer.push(extra);
        prop_assert!(StampedMessage::decode(&longer).is_err());
    }

    #[test]
    fn stream_messages_round_trip(m in stream_message()) {
        prop_assert_eq!(StreamMessage::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn total_messages_round_trip(m in total_message()) {
        prop_assert_eq!(TotalMessage::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn causal_messages_round_trip(m in causal_message()) {
        prop_assert_eq!(CausalMessage::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn decoding_any_bytes_never_panics(data in payload()) {
        let _ = StreamMessage::decode(&data);
        let _ = TotalMessage::decode(&data);
        let _ = StampedMessage::decode(&data);
        let _ = CausalMessage::decode(&data);
    }

    /// A valid payload cut short, or followed by a byte, is refused.
    #[test]
    fn truncated_or_extended_payloads_are_refused(m in total_message(), extra in any::<u8>()) {
        let wire = m.encode();
        prop_assert!(TotalMessage::decode(&wire[..wire.len() - 1]).is_err());
        let mut longer = wire.to_vec();
        longer.push(extra);
        prop_assert!(TotalMessage::decode(&longer).is_err());
    }
}

/// The wire layout of `total`, written field by field apart from the enum's
/// encoder: if the two disagree, the wire format changed.
fn layout(m: &TotalMessage) -> Vec<u8> {
    let mut w = Writer::new();
    match m {
        TotalMessage::Chat { resent, chat } => {
            w.u8(3).u8(u8::from(*resent));
            chat_fields(&mut w, chat);
        }
        TotalMessage::Propose { counter, priority } => {
            w.u8(4).varint(*counter).varint(*priority);
        }
        TotalMessage::Final {
            counter,
            room,
            priority,
            excluded,
        } => {
            w.u8(5)
                .varint(*counter)
                .varint(u64::from(*room))
                .varint(priority.n)
                .varint(u64::from(priority.server))
                .varint(excluded.len() as u64);
            for &s in excluded {
                w.varint(u64::from(s));
            }
        }
        TotalMessage::StreamStart(s) => {
            w.u8(2).varint(u64::from(s.room)).varint(s.next);
        }
        TotalMessage::Query {
            origin,
            incarnation,
            counters,
        } => {
            w.u8(7)
                .varint(u64::from(origin.0))
                .varint(*incarnation)
                .varint(counters.len() as u64);
            for &c in counters {
                w.varint(c);
            }
        }
        TotalMessage::Answer { origin, answers } => {
            w.u8(8)
                .varint(u64::from(origin.0))
                .varint(answers.len() as u64);
            for (c, a) in answers {
                w.varint(*c);
                match a {
                    Some((p, excluded)) => {
                        w.u8(1)
                            .varint(p.n)
                            .varint(u64::from(p.server))
                            .varint(excluded.len() as u64);
                        for &s in excluded {
                            w.varint(u64::from(s));
                        }
                    }
                    None => {
                        w.u8(0);
                    }
                };
            }
        }
    }
    w.finish()
}

fn chat_fields(w: &mut Writer, chat: &ChatMessage) {
    w.varint(chat.counter)
        .varint(u64::from(chat.room))
        .varint(chat.seq)
        .bytes(&chat.line);
}

proptest! {
    #![proptest_config(cfg(500))]

    #[test]
    fn total_layout_is_unchanged(m in total_message()) {
        prop_assert_eq!(m.encode().to_vec(), layout(&m));
    }

    #[test]
    fn stream_layout_is_unchanged(m in stream_message()) {
        let mut w = Writer::new();
        match &m {
            StreamMessage::Chat(chat) => {
                w.u8(1);
                chat_fields(&mut w, chat);
            }
            StreamMessage::Start(s) => {
                w.u8(2).varint(u64::from(s.room)).varint(s.next);
            }
        }
        prop_assert_eq!(m.encode().to_vec(), w.finish());
    }

    #[test]
    fn causal_layout_is_unchanged(m in causal_message()) {
        let mut w = Writer::new();
        match &m {
            CausalMessage::Chat { counter, room, clock, line } => {
                w.u8(6).varint(*counter).varint(u64::from(*room)).varint(clock.len() as u64);
                for e in clock {
                    w.varint(e.count);
                    if e.count > 0 {
                        w.varint(e.incarnation);
                    }
                }
                w.bytes(line);
            }
            CausalMessage::Start { room, count } => {
                w.u8(9).varint(u64::from(*room)).varint(*count);
            }
        }
        prop_assert_eq!(m.encode().to_vec(), w.finish());
    }
}
