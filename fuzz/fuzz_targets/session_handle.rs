//! `Sessions::handle` on datagrams from a few addresses: replies start with
//! `+OK` or `-ERR`, a post is `<nick> text`, members are unique and bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::session::{SessionLimits, Sessions};
use std::collections::HashSet;
use std::net::SocketAddr;

fuzz_target!(|data: &[u8]| {
    let Some((&limits, mut rest)) = data.split_first() else {
        return;
    };
    let limits = SessionLimits {
        rooms: 1 + u32::from(limits & 7),
        max_clients: 1 + usize::from(limits >> 3 & 3),
    };
    let mut s = Sessions::new(limits.clone());
    // Each datagram: a sender byte, a length byte (x8), that many bytes.
    while let [who, len, tail @ ..] = rest {
        let n = (usize::from(*len) * 8).min(tail.len());
        let (d, next) = tail.split_at(n);
        rest = next;
        let from = SocketAddr::from(([127, 0, 0, 1], 40000 + u16::from(*who & 3)));
        let o = s.handle(from, d);
        if let Some(r) = o.reply() {
            assert!(r.starts_with(b"+OK") || r.starts_with(b"-ERR"));
            assert!(o.post().is_none());
        }
        if let Some((room, line)) = o.post() {
            assert!(room >= 1 && room <= limits.rooms);
            assert!(line.starts_with(b"<"));
            assert!(line.ends_with(d));
            assert!(s.members(room).contains(&from));
        }
        assert!(s.len() <= limits.max_clients);
        for room in 0..=limits.rooms + 1 {
            let m = s.members(room);
            assert_eq!(m.iter().collect::<HashSet<_>>().len(), m.len());
        }
    }
});
