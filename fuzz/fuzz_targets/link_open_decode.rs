//! `open_datagram` (with and without a key), `Datagram::decode_raw`,
//! `sender_of`, `unstuff` and a round trip of whatever decodes (the
//! sender's index stamped back when it named one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderings::{
    Datagram, open_datagram, seal_datagram, sender_of, stamp_sender, stuff_into, unstuff,
};

const KEY: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    for key in [None, Some(&KEY)] {
        if let Ok(raw) = open_datagram(data, key) {
            if let Ok((d, auth)) = Datagram::decode_raw(&raw) {
                let sender = sender_of(&raw).expect("a decoded datagram has a readable sender");
                let mut again = d.encode_raw(auth);
                if let Some(s) = sender {
                    stamp_sender(&mut again, s);
                }
                let (d2, a2) = Datagram::decode_raw(&again).expect("re-encoded datagram decodes");
                assert_eq!(d2, d);
                assert_eq!(a2, auth);
                assert_eq!(sender_of(&again), Ok(sender));
                let sealed = seal_datagram(&again, key);
                assert!(!sealed.contains(&0));
                assert_eq!(open_datagram(&sealed, key).expect("opens"), again);
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
    if let Ok(raw) = unstuff(data) {
        let mut back = Vec::new();
        stuff_into(&raw, &mut back);
        assert_eq!(back, data);
    }
});
