//! Fair admission of client posts at their server.
//!
//! The replica admits a post only while its admission window has room (see
//! `orderings::replica`): that protects the peers. This module shares the
//! window among this server's clients, so that one client sending as fast as
//! it can never crowds out the others: a client with a few messages in
//! flight (posted here, not yet delivered here) is *light* and may use the
//! whole window; a *heavy* client (many in flight) may use only the lower
//! half, split evenly among the heavy clients. So light clients always find
//! half the window free, and a flood is refused at the cost of a hash
//! lookup, before anything is formatted, ordered or sent.
//!
//! The window bounds what is in flight, not how fast it turns over: a flood
//! whose admitted share turns over fast can still eat the CPU that the
//! server needs to read its socket, and then the kernel drops everyone's
//! datagrams alike. So while the server's socket is *backed up* (it read a
//! whole run of full batches without emptying it), a heavy client that
//! ignores back-pressure (it was refused within the last second) or has
//! hundreds of messages in flight is not admitted at all: the server spends
//! its time reading and refusing until the backlog is gone, and everyone
//! else keeps flowing. A client that waits for its echoes before sending
//! more is never refused by this rule.

use orderings::MsgId;
use std::net::SocketAddr;

/// A client with this many messages in flight counts as heavy.
pub(crate) const LIGHT_IN_FLIGHT: u32 = 8;
/// While the socket is backed up, a client with this many in flight waits.
/// A client that waits for its own echoes before sending more (a window of
/// up to this many, as benchmark and stress clients do) is never refused:
/// it cannot be what floods the socket.
pub(crate) const BACKED_UP_IN_FLIGHT: u32 = 512;
/// A refused client is told so at most this often (a flood of refusals
/// must not become a flood of replies).
pub(crate) const REFUSAL_REPLY_EVERY_US: u64 = 250_000;
/// A client refused this recently still counts as pushing past its share.
pub(crate) const PUSHY_FOR_US: u64 = 1_000_000;

/// The last refusals of a client with messages in flight.
#[derive(Debug, Clone, Copy, Default)]
struct Refused {
    /// When it was last refused, and last told so (0 = never).
    at: u64,
    told: u64,
}

/// Why a post was refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "Slow down: you are sending faster than the cluster orders messages (message not sent)"
    )]
    FairShare,
}

/// Messages in flight per client; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct FairAdmission {
    in_flight: crate::FastMap<SocketAddr, u32>,
    owner: crate::FastMap<MsgId, SocketAddr>,
    /// After a rejoin: messages of the old incarnation, until each is
    /// posted again (`renamed`) or given up (`forget_stale`).
    stale: crate::FastMap<MsgId, SocketAddr>,
    heavy: usize,
    /// Refusals of clients with messages in flight; the entry goes with
    /// their last delivery.
    refused: crate::FastMap<SocketAddr, Refused>,
    /// Refusals not answered (rate limit).
    pub(crate) silent_refusals: u64,
}

impl FairAdmission {
    /// May `client` post now, with `outstanding()` of the server's messages
    /// not yet delivered everywhere and an admission window of `window`?
    /// (The replica itself refuses anything beyond the window; `outstanding`
    /// is asked only for heavy clients.)
    pub(crate) fn check(
        &self,
        client: SocketAddr,
        outstanding: impl FnOnce() -> usize,
        window: usize,
        backed_up: bool,
        now_us: u64,
    ) -> Result<(), Refusal> {
        let mine = self.in_flight.get(&client).copied().unwrap_or(0);
        if mine < LIGHT_IN_FLIGHT {
            return Ok(());
        }
        let pushy = self
            .refused
            .get(&client)
            .is_some_and(|r| r.at != 0 && now_us.saturating_sub(r.at) < PUSHY_FOR_US);
        if backed_up && (pushy || mine >= BACKED_UP_IN_FLIGHT) {
            return Err(Refusal::FairShare);
        }
        let half = window / 2;
        let share = half / self.heavy.max(1);
        if (mine as usize) < share.max(LIGHT_IN_FLIGHT as usize) && outstanding() < half {
            Ok(())
        } else {
            Err(Refusal::FairShare)
        }
    }

    /// `client`'s post was admitted as `id`.
    pub(crate) fn admitted(&mut self, client: SocketAddr, id: MsgId) {
        let n = self.in_flight.entry(client).or_insert(0);
        *n += 1;
        if *n == LIGHT_IN_FLIGHT {
            self.heavy += 1;
        }
        self.owner.insert(id, client);
    }

    /// The server rejoined as a new incarnation: its messages in flight are
    /// now either posted again ([`FairAdmission::renamed`]) or gone.
    pub(crate) fn rejoined(&mut self) {
        self.stale.extend(self.owner.drain());
    }

    /// Message `old` was posted again as `new`.
    pub(crate) fn renamed(&mut self, old: MsgId, new: MsgId) {
        if let Some(client) = self.stale.remove(&old).or_else(|| self.owner.remove(&old)) {
            self.owner.insert(new, client);
        }
    }

    /// Releases the old incarnation's messages that were not posted again:
    /// they will never be delivered here.
    pub(crate) fn forget_stale(&mut self) {
        for (id, client) in std::mem::take(&mut self.stale) {
            self.owner.insert(id, client);
            self.delivered(id);
        }
    }

    /// Message `id` of this server was delivered here.
    pub(crate) fn delivered(&mut self, id: MsgId) {
        let Some(client) = self.owner.remove(&id) else {
            return;
        };
        if let Some(n) = self.in_flight.get_mut(&client) {
            if *n == LIGHT_IN_FLIGHT {
                self.heavy = self.heavy.saturating_sub(1);
            }
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&client);
                self.refused.remove(&client);
            }
        }
    }

    /// `client` was refused at `now_us`: whether to tell it (at most once
    /// per [`REFUSAL_REPLY_EVERY_US`] while it has messages in flight; a
    /// client with none is left to the server's general `-ERR` limits, so
    /// that nothing is remembered of it here).
    pub(crate) fn tell_refused(&mut self, client: SocketAddr, now_us: u64) -> bool {
        if !self.in_flight.contains_key(&client) {
            return true;
        }
        let now_us = now_us.max(1);
        let r = self.refused.entry(client).or_default();
        r.at = now_us;
        if r.told == 0 || now_us.saturating_sub(r.told) >= REFUSAL_REPLY_EVERY_US {
            r.told = now_us;
            true
        } else {
            self.silent_refusals += 1;
            false
        }
    }

    /// Messages in flight, all clients together.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.owner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderings::ServerId;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn id(n: u64) -> MsgId {
        MsgId {
            origin: ServerId(0),
            counter: n,
        }
    }

    #[test]
    fn a_flood_takes_half_the_window_and_light_clients_the_rest() {
        let window = 64;
        let mut a = FairAdmission::default();
        let (flood, light) = (addr(1), addr(2));
        let mut n = 0;
        // The flooder posts until refused; nothing is delivered meanwhile.
        while a.check(flood, || a.in_flight(), window, false, 0).is_ok() {
            n += 1;
            a.admitted(flood, id(n));
            assert!(n < 1000, "never refused");
        }
        assert_eq!(a.in_flight(), 32, "a heavy client gets half the window");
        // A light client still gets in, up to the whole window.
        for _ in 0..LIGHT_IN_FLIGHT - 1 {
            assert!(a.check(light, || a.in_flight(), window, true, 0).is_ok());
            n += 1;
            a.admitted(light, id(n));
        }
        // While the server's socket is backed up, heavy clients wait.
        let mut b = FairAdmission::default();
        for k in 0..BACKED_UP_IN_FLIGHT {
            assert!(b.check(flood, || 0, 1 << 20, true, 0).is_ok());
            b.admitted(flood, id(u64::from(k)));
        }
        assert!(b.check(flood, || 0, 1 << 20, true, 0).is_err());
        assert!(b.check(flood, || 0, 1 << 20, false, 0).is_ok());
        // The flooder is told once per interval, not once per datagram.
        assert!(a.tell_refused(flood, 1_000));
        assert!(!a.tell_refused(flood, 2_000));
        assert!(a.tell_refused(flood, 1_000 + REFUSAL_REPLY_EVERY_US));
        assert_eq!(a.silent_refusals, 1);
        // A client with nothing in flight is not remembered here.
        let stranger = addr(9);
        assert!(a.tell_refused(stranger, 1) && a.tell_refused(stranger, 2));
        assert!(!a.refused.contains_key(&stranger));
        // Deliveries free the flooder's share again.
        a.delivered(id(1));
        assert!(a.check(flood, || 31, window, false, 0).is_ok());
        // ... but not while the socket is backed up and it was refused
        // within the last second (it pushes past its share), unlike a
        // client that waits for its echoes and is never refused.
        let last = 1_000 + REFUSAL_REPLY_EVERY_US;
        assert!(a.check(flood, || 31, window, true, last + 1).is_err());
        assert!(
            a.check(flood, || 31, window, true, last + PUSHY_FOR_US)
                .is_ok()
        );
    }

    #[test]
    fn heavy_clients_split_the_lower_half() {
        let window = 64;
        let mut a = FairAdmission::default();
        let mut n = 0;
        for c in [addr(1), addr(2)] {
            for _ in 0..LIGHT_IN_FLIGHT {
                n += 1;
                a.admitted(c, id(n));
            }
        }
        // Two heavy clients: 16 each.
        for c in [addr(1), addr(2)] {
            while a.check(c, || a.in_flight(), window, false, 0).is_ok() {
                n += 1;
                a.admitted(c, id(n));
            }
        }
        assert_eq!(a.in_flight(), 32);
        assert_eq!(a.in_flight.get(&addr(1)), Some(&16));
        assert_eq!(a.in_flight.get(&addr(2)), Some(&16));
        for k in 1..=n {
            a.delivered(id(k));
        }
        assert_eq!((a.in_flight(), a.heavy), (0, 0), "everything forgotten");
        assert!(a.refused.is_empty());
        a.delivered(id(1));
        assert_eq!(a.in_flight(), 0, "unknown ids are ignored");
    }
}
