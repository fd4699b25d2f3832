//! Where the peers are: the address each peer is sent to and recognised
//! by, which can change while the server runs.
//!
//! * A peer named by host name in the cluster file is resolved at load; a
//!   name that did not resolve then (a Kubernetes pod's DNS record appears
//!   a little after the pod) leaves the peer without an address: nothing is
//!   sent to it, and its name is resolved again every [`RESOLVE_EVERY_US`].
//! * A named peer that has been silent for [`SILENT_US`] (three heartbeats)
//!   is resolved again, at most every [`RESOLVE_EVERY_US`], so a server
//!   that comes back with a new address (a rescheduled pod) is found.
//! * With a cluster secret, a datagram that authenticates as peer `i`'s
//!   is `i`'s whatever its source address (the index is inside the MAC);
//!   its address becomes `i`'s once `i`'s current address has been silent
//!   for [`SILENT_US`] (a replayed datagram cannot divert a live peer's
//!   traffic). Without a secret, only resolution changes an address.
//!
//! Resolution itself runs outside the server loop (the server spawns a
//! task per lookup); this book only says what to resolve and when.

use orderings::ServerId;

use std::net::SocketAddr;

/// A peer silent this long (three heartbeats of 0.5 s) may have moved.
pub(crate) const SILENT_US: u64 = 1_500_000;
/// A name is looked up at most this often.
pub(crate) const RESOLVE_EVERY_US: u64 = 1_000_000;

#[derive(Debug, Clone, Default)]
struct Peer {
    /// Where it is sent to and recognised at (`None`: not resolved yet).
    addr: Option<SocketAddr>,
    /// `HOST:PORT` to resolve, when the file names a host.
    name: Option<String>,
    /// When a datagram last came from `addr` (or when `addr` was set).
    heard_at: u64,
    /// A lookup is running.
    resolving: bool,
    /// No lookup before this time.
    next_lookup: u64,
    /// The last lookup failed (warned once per failure streak).
    failing: bool,
}

/// What changed when an address was learned, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) peer: ServerId,
    pub(crate) from: Option<SocketAddr>,
    pub(crate) to: SocketAddr,
}

/// The peers' addresses (see the module docs).
#[derive(Debug)]
pub(crate) struct PeerBook {
    peers: Vec<Peer>,
    me: usize,
    by_addr: crate::FastMap<SocketAddr, ServerId>,
    /// Every server's configured bind and advertised address (with the
    /// peers' current addresses, those no client can have).
    configured: crate::FastSet<SocketAddr>,
}

impl PeerBook {
    /// The book of `servers` (`(advertised address if resolved, name to
    /// resolve, bind address)` per server) as seen by server `me` at time
    /// `now`.
    pub(crate) fn new(
        me: ServerId,
        servers: impl IntoIterator<Item = (Option<SocketAddr>, Option<String>, SocketAddr)>,
        now: u64,
    ) -> PeerBook {
        let mut book = PeerBook {
            peers: Vec::new(),
            me: me.index(),
            by_addr: crate::FastMap::default(),
            configured: crate::FastSet::default(),
        };
        for (i, (addr, name, bind)) in servers.into_iter().enumerate() {
            if !bind.ip().is_unspecified() {
                book.configured.insert(bind);
            }
            if let Some(a) = addr {
                book.configured.insert(a);
                if i != book.me {
                    book.by_addr.insert(a, ServerId(i as u16));
                }
            }
            book.peers.push(Peer {
                addr,
                name,
                heard_at: now,
                next_lookup: now,
                // The server warns about unresolved names at start.
                failing: addr.is_none(),
                ..Peer::default()
            });
        }
        book
    }

    /// The peer whose address `from` is.
    pub(crate) fn peer_at(&self, from: SocketAddr) -> Option<ServerId> {
        self.by_addr.get(&from).copied()
    }

    /// Whether `a` is a server's address: configured, or a peer's now (a
    /// peer's address of before a move may be a client's later).
    pub(crate) fn is_server_address(&self, a: SocketAddr) -> bool {
        self.configured.contains(&a) || self.by_addr.contains_key(&a)
    }

    /// Where to send to `peer` (`None`: not resolved yet).
    pub(crate) fn addr_of(&self, peer: ServerId) -> Option<SocketAddr> {
        self.peers.get(peer.index()).and_then(|p| p.addr)
    }

    /// Peers without an address, with their names (for the start-up
    /// warning).
    pub(crate) fn unresolved(&self) -> impl Iterator<Item = (ServerId, &str)> {
        self.peers
            .iter()
            .enumerate()
            .filter(|&(i, p)| i != self.me && p.addr.is_none())
            .map(|(i, p)| (ServerId(i as u16), p.name.as_deref().unwrap_or("?")))
    }

    /// A datagram of `peer` (identified by address, or authenticated)
    /// came from `from` at `now`. Returns the move when `from` became
    /// `peer`'s address.
    pub(crate) fn heard(&mut self, peer: ServerId, from: SocketAddr, now: u64) -> Option<Moved> {
        let p = self.peers.get_mut(peer.index())?;
        if p.addr == Some(from) {
            p.heard_at = now;
            return None;
        }
        let silent = p.addr.is_none() || now.saturating_sub(p.heard_at) >= SILENT_US;
        silent.then(|| self.set(peer, from, now)).flatten()
    }

    /// Which names to look up now: unresolved peers, and named peers
    /// silent for [`SILENT_US`], each at most every [`RESOLVE_EVERY_US`].
    /// They are marked as being looked up until [`PeerBook::resolved`].
    pub(crate) fn due_lookups(&mut self, now: u64) -> Vec<(ServerId, String)> {
        let mut due = Vec::new();
        for (i, p) in self.peers.iter_mut().enumerate() {
            let Some(name) = &p.name else { continue };
            let silent = p.addr.is_none() || now.saturating_sub(p.heard_at) >= SILENT_US;
            if i == self.me || p.resolving || now < p.next_lookup || !silent {
                continue;
            }
            p.resolving = true;
            p.next_lookup = now + RESOLVE_EVERY_US;
            due.push((ServerId(i as u16), name.clone()));
        }
        due
    }

    /// A lookup of `peer`'s name ended with `addr` (`None`: it did not
    /// resolve). Returns the move when the address changed, and whether
    /// this is the first failure of a streak (worth a warning).
    pub(crate) fn resolved(
        &mut self,
        peer: ServerId,
        addr: Option<SocketAddr>,
        now: u64,
    ) -> (Option<Moved>, bool) {
        let Some(p) = self.peers.get_mut(peer.index()) else {
            return (None, false);
        };
        p.resolving = false;
        match addr {
            None => {
                let first = !p.failing;
                p.failing = true;
                (None, first)
            }
            Some(a) => {
                p.failing = false;
                // Heard at its address since the lookup began (a lookup
                // starts only for a silent peer): that address is live, and
                // the name may lag behind it, as `heard` lets a new address
                // win only over a silent one.
                let live = p.addr.is_some() && now.saturating_sub(p.heard_at) < SILENT_US;
                if p.addr == Some(a) || live {
                    return (None, false);
                }
                (self.set(peer, a, now), false)
            }
        }
    }

    fn set(&mut self, peer: ServerId, to: SocketAddr, now: u64) -> Option<Moved> {
        // Another peer's address now (pods may swap addresses): it loses
        // it; its name or its own datagrams will find it again.
        if let Some(other) = self.by_addr.get(&to).copied()
            && let Some(o) = self.peers.get_mut(other.index())
        {
            o.addr = None;
            o.heard_at = now;
        }
        let p = self.peers.get_mut(peer.index())?;
        let from = p.addr.replace(to);
        p.heard_at = now;
        if let Some(old) = from {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(to, peer);
        Some(Moved { peer, from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn book() -> PeerBook {
        PeerBook::new(
            ServerId(0),
            [
                (Some(a("10.0.0.1:5000")), None, a("0.0.0.0:5000")),
                (
                    Some(a("10.0.0.2:5000")),
                    Some("b:5000".to_string()),
                    a("0.0.0.0:5000"),
                ),
                (None, Some("c:5000".to_string()), a("10.0.0.3:5000")),
            ],
            0,
        )
    }

    #[test]
    fn unresolved_names_are_looked_up_at_once_then_spaced() {
        let mut b = book();
        assert_eq!(b.addr_of(ServerId(2)), None);
        assert_eq!(
            b.unresolved().collect::<Vec<_>>(),
            vec![(ServerId(2), "c:5000")]
        );
        assert_eq!(b.due_lookups(0), vec![(ServerId(2), "c:5000".to_string())]);
        // Running: not again; failed: not before the spacing.
        assert!(b.due_lookups(10).is_empty());
        assert_eq!(
            b.resolved(ServerId(2), None, 20),
            (None, false),
            "warned at start"
        );
        // A named peer that resolved once and then fails is worth a warning, once.
        b.peers[1].name = Some("b:5000".into());
        assert_eq!(b.resolved(ServerId(1), None, 20), (None, true));
        assert_eq!(
            b.resolved(ServerId(1), None, 20),
            (None, false),
            "warned once"
        );
        b.peers[2].resolving = false;
        assert!(b.due_lookups(RESOLVE_EVERY_US - 1).is_empty());
        assert_eq!(b.due_lookups(RESOLVE_EVERY_US).len(), 1);
        let moved = b
            .resolved(ServerId(2), Some(a("10.0.0.3:5000")), RESOLVE_EVERY_US)
            .0;
        assert_eq!(moved.map(|m| m.to), Some(a("10.0.0.3:5000")));
        assert_eq!(b.peer_at(a("10.0.0.3:5000")), Some(ServerId(2)));
    }

    #[test]
    fn a_silent_named_peer_is_looked_up_again_and_moves() {
        let mut b = book();
        let _ = b.due_lookups(0);
        b.heard(ServerId(1), a("10.0.0.2:5000"), SILENT_US);
        assert!(b.due_lookups(SILENT_US + 1).is_empty(), "not silent");
        let t = 2 * SILENT_US + 1;
        assert_eq!(b.due_lookups(t), vec![(ServerId(1), "b:5000".to_string())]);
        let (moved, _) = b.resolved(ServerId(1), Some(a("10.0.0.9:5000")), t);
        assert_eq!(
            moved,
            Some(Moved {
                peer: ServerId(1),
                from: Some(a("10.0.0.2:5000")),
                to: a("10.0.0.9:5000")
            })
        );
        assert_eq!(b.peer_at(a("10.0.0.2:5000")), None);
        assert_eq!(b.addr_of(ServerId(1)), Some(a("10.0.0.9:5000")));
        assert!(
            b.is_server_address(a("10.0.0.2:5000")),
            "configured: never a client"
        );
        assert!(b.is_server_address(a("10.0.0.9:5000")), "the peer's now");
    }

    /// A lookup that began while the peer was silent ends after the peer
    /// was heard at a new address (an authenticated datagram): the stale
    /// name does not take the live address back.
    #[test]
    fn a_lookup_does_not_undo_an_address_heard_meanwhile() {
        let mut b = book();
        b.heard(ServerId(1), a("10.0.0.2:5000"), 100);
        let t = 100 + SILENT_US;
        let due = b.due_lookups(t);
        assert!(due.iter().any(|(p, _)| *p == ServerId(1)), "{due:?}");
        let m = b.heard(ServerId(1), a("10.0.0.9:5000"), t + 10);
        assert_eq!(m.map(|m| m.to), Some(a("10.0.0.9:5000")));
        let (moved, _) = b.resolved(ServerId(1), Some(a("10.0.0.2:5000")), t + 20);
        assert_eq!(moved, None);
        assert_eq!(b.addr_of(ServerId(1)), Some(a("10.0.0.9:5000")));
        // Silent again: the name is believed.
        let later = t + 10 + SILENT_US;
        b.due_lookups(later);
        let (moved, _) = b.resolved(ServerId(1), Some(a("10.0.0.2:5000")), later + 1);
        assert_eq!(moved.map(|m| m.to), Some(a("10.0.0.2:5000")));
    }

    #[test]
    fn an_authenticated_new_address_wins_only_over_a_silent_one() {
        let mut b = book();
        // The peer is alive at its address: a datagram (say, replayed)
        // from elsewhere does not divert its traffic.
        b.heard(ServerId(1), a("10.0.0.2:5000"), 100);
        assert_eq!(b.heard(ServerId(1), a("10.9.9.9:1"), 200), None);
        assert_eq!(b.addr_of(ServerId(1)), Some(a("10.0.0.2:5000")));
        // Silent for long enough: the new address is learned.
        let m = b.heard(ServerId(1), a("10.0.0.7:5000"), 100 + SILENT_US);
        assert_eq!(m.map(|m| m.to), Some(a("10.0.0.7:5000")));
        assert_eq!(b.peer_at(a("10.0.0.7:5000")), Some(ServerId(1)));
        // A peer taking another's address takes it over.
        b.heard(ServerId(2), a("10.0.0.7:5000"), 100 + SILENT_US);
        assert_eq!(b.peer_at(a("10.0.0.7:5000")), Some(ServerId(2)));
        assert_eq!(b.addr_of(ServerId(1)), None);
        // An address learned and left again may be a client's later.
        b.heard(ServerId(2), a("10.0.0.8:5000"), 100 + 3 * SILENT_US);
        assert!(!b.is_server_address(a("10.0.0.7:5000")));
    }
}
