//! `link::open` (with and without a key), `Datagram::decode_raw`,
//! `wire::unstuff` and a round trip of whatever decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderings::link::{self, Datagram};
use orderings::wire;

const KEY: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    for key in [None, Some(&KEY)] {
        if let Ok(raw) = link::open(data, key) {
            if let Ok((d, auth)) = Datagram::decode_raw(&raw) {
                let again = d.encode_raw(auth);
                let (d2, a2) = Datagram::decode_raw(&again).expect("re-encoded datagram decodes");
                assert_eq!(d2, d);
                assert_eq!(a2, auth);
                let sealed = link::seal(&again, key);
                assert!(!sealed.contains(&0));
                assert_eq!(link::open(&sealed, key).expect("opens"), again);
            }
        }
    }
    if let Ok((d, auth)) = Datagram::decode_raw(data) {
        assert_eq!(
            Datagram::decode_raw(&d.encode_raw(auth))
                .expect("decodes")
                .0,
            d
        );
    }
    if let Ok(raw) = wire::unstuff(data) {
        let mut back = Vec::new();
        wire::stuff_into(&raw, &mut back);
        assert_eq!(back, data);
    }
});
