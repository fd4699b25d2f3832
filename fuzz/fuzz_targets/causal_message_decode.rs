//! `CausalMessage::decode` on arbitrary bytes: an error or a message, never a
//! panic; whatever decodes encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderings::CausalMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = CausalMessage::decode(data) {
        let again = CausalMessage::decode(&message.encode()).expect("an encoded message decodes");
        assert_eq!(again, message);
    }
});
