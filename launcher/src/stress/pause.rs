//! Pauses in deliveries, from the delivery logs.
//!
//! Only *surviving* members count: members not marked partial (a client of
//! a server a fault hits is partial). A *required* delivery is a message of
//! a sender whose sends are not optional, to a surviving member of its
//! room; it is outstanding from its send until that member first delivers
//! it.
//!
//! - The **longest pause** is the longest stretch with no delivery at any
//!   surviving member while some required delivery was outstanding: it
//!   starts at the later of the last delivery and the send that made
//!   something outstanding, and ends at the next delivery, or at the end of
//!   the run if none came (then it is *open*: deliveries never resumed).
//! - For each fault, the **first delivery after** it is the time from the
//!   fault to the next delivery at a surviving member.

use std::collections::HashSet;
use testkit::check::{EventKind, History, MessageId};

/// The longest pause (µs, on the history's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pause {
    pub start_us: u64,
    pub len_us: u64,
    /// It lasted until the end of the run.
    pub open: bool,
}

/// The analysis: the longest pause (`None` when nothing was ever
/// outstanding) and every delivery time at a surviving member, sorted.
#[derive(Debug, Clone, Default)]
pub struct Pauses {
    pub longest: Option<Pause>,
    deliveries: Vec<u64>,
}

impl Pauses {
    /// µs from `t` to the first delivery at a surviving member at or after
    /// `t`; `None` when none came.
    pub fn first_delivery_after(&self, t: u64) -> Option<u64> {
        let i = self.deliveries.partition_point(|&d| d < t);
        self.deliveries.get(i).map(|&d| d - t)
    }
}

/// Analyses `h`; `end_us` is when the collection stopped.
pub fn analyse(h: &History, end_us: u64) -> Pauses {
    let members = h.members();
    // Surviving members per room.
    let mut room_survivors: std::collections::HashMap<u32, u64> = Default::default();
    for m in members.iter().filter(|m| !m.opts.partial) {
        *room_survivors.entry(m.room).or_default() += 1;
    }
    // (time, order, what): at one instant sends come first, so a delivery
    // never precedes the send it answers.
    enum What {
        /// Makes this many required deliveries outstanding.
        Send(u64),
        /// A delivery at surviving member `m`.
        Deliver(u32, MessageId),
    }
    let mut events: Vec<(u64, u8, What)> = Vec::new();
    for (id, m) in members.iter().enumerate() {
        for e in &m.events {
            match e.kind {
                EventKind::Sent if !m.opts.optional_sends => {
                    let n = room_survivors.get(&m.room).copied().unwrap_or(0);
                    events.push((e.at, 0, What::Send(n)));
                }
                EventKind::Sent => {}
                EventKind::Delivered if !m.opts.partial => {
                    events.push((e.at, 1, What::Deliver(id as u32, e.msg)));
                }
                EventKind::Delivered => {}
            }
        }
    }
    events.sort_by_key(|(t, o, _)| (*t, *o));
    let required = |msg: &MessageId| {
        members
            .get(msg.sender as usize)
            .is_some_and(|s| !s.opts.optional_sends)
    };
    let mut outstanding: u64 = 0;
    let mut done: HashSet<(u32, MessageId)> = HashSet::new();
    let mut pause_from: Option<u64> = None;
    let mut longest: Option<Pause> = None;
    let mut deliveries = Vec::new();
    let note = |start: u64, end: u64, open: bool, longest: &mut Option<Pause>| {
        let len = end.saturating_sub(start);
        if longest.is_none_or(|p| len > p.len_us) {
            *longest = Some(Pause {
                start_us: start,
                len_us: len,
                open,
            });
        }
    };
    for (t, _, what) in events {
        match what {
            What::Send(n) => {
                if outstanding == 0 && n > 0 {
                    pause_from = Some(t);
                }
                outstanding += n;
            }
            What::Deliver(m, msg) => {
                deliveries.push(t);
                if let Some(p) = pause_from {
                    note(p, t, false, &mut longest);
                }
                // Same-room check: a foreign delivery is the checker's
                // business, not outstanding work.
                let same_room = members
                    .get(msg.sender as usize)
                    .is_some_and(|s| s.room == members[m as usize].room);
                if required(&msg) && same_room && done.insert((m, msg)) {
                    outstanding = outstanding.saturating_sub(1);
                }
                pause_from = (outstanding > 0).then_some(t);
            }
        }
    }
    if let Some(p) = pause_from {
        note(p, end_us.max(p), true, &mut longest);
    }
    Pauses {
        longest,
        deliveries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::check::MemberOpts;

    #[test]
    fn longest_gap_while_something_is_outstanding() {
        let mut h = History::new();
        let a = h.add_member("a", 1);
        let b = h.add_member("b", 1);
        // m1 at 0, delivered at 10 and 20; idle (nothing outstanding) until
        // m2 at 1000, delivered at 1300 and 1350; m3 at 1400, delivered at
        // 1410 and 1420.
        let m1 = h.sent(a, 1, 0);
        h.delivered(a, m1, 10);
        h.delivered(b, m1, 20);
        let m2 = h.sent(b, 1, 1000);
        h.delivered(a, m2, 1300);
        h.delivered(b, m2, 1350);
        let m3 = h.sent(a, 2, 1400);
        h.delivered(b, m3, 1410);
        h.delivered(a, m3, 1420);
        let p = analyse(&h, 5000);
        // Not 20..1300 (nothing was outstanding before 1000).
        assert_eq!(
            p.longest,
            Some(Pause {
                start_us: 1000,
                len_us: 300,
                open: false
            })
        );
        assert_eq!(p.first_delivery_after(1100), Some(200));
        assert_eq!(p.first_delivery_after(1300), Some(0));
        assert_eq!(p.first_delivery_after(1421), None);
    }

    #[test]
    fn a_stall_to_the_end_is_open_and_partial_members_do_not_count() {
        let mut h = History::new();
        let a = h.add_member("a", 1);
        let b = h.add_member("b", 1);
        let gone = h.add_member_with(
            "gone",
            1,
            MemberOpts {
                partial: true,
                optional_sends: true,
                agreed_sends: false,
            },
        );
        let m1 = h.sent(a, 1, 0);
        h.delivered(a, m1, 10);
        h.delivered(b, m1, 20);
        // The partial member's deliveries and sends neither end a pause nor
        // start one.
        let g = h.sent(gone, 1, 30);
        h.delivered(gone, g, 40);
        h.delivered(gone, m1, 50);
        // m2 reaches a but never b.
        let m2 = h.sent(a, 2, 100);
        h.delivered(a, m2, 110);
        h.delivered(gone, m2, 900);
        let p = analyse(&h, 2000);
        assert_eq!(
            p.longest,
            Some(Pause {
                start_us: 110,
                len_us: 1890,
                open: true
            })
        );
        assert_eq!(p.first_delivery_after(120), None);
    }

    #[test]
    fn nothing_sent_no_pause() {
        let h = History::new();
        assert_eq!(analyse(&h, 100).longest, None);
    }
}
