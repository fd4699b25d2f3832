//! `TotalMessage::decode` on arbitrary bytes: an error or a message, never a
//! panic; whatever decodes encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderings::TotalMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = TotalMessage::decode(data) {
        let again = TotalMessage::decode(&message.encode()).expect("an encoded message decodes");
        assert_eq!(again, message);
    }
});
