//! Membership: which servers currently run together (the *view*), failure
//! detection by silence, and the quorum that makes a view *primary*.
//!
//! The configured servers are the universe. Every server starts with all of
//! them as members. A member not heard from for
//! [`MembershipConfig::suspect_us`] (links send a heartbeat at least every
//! [`MembershipConfig::heartbeat_us`], traffic counts too) is excluded, as
//! long as the members left still hold the quorum; a server never shrinks
//! its view below the quorum, so a server cut off from the majority keeps
//! waiting for it instead of going on alone. An exclusion names the
//! server's incarnation: it is final for that incarnation, and the server
//! comes back only as a new one (the replica's rejoin), admitted when first
//! heard from.
//!
//! This module only decides; the replica carries the decisions out (links,
//! strategy hooks, gossip). Its own starvation (a long gap between two
//! ticks: the process was stopped, or the machine overloaded) is not taken
//! as the silence of everybody else: the silence clock restarts after it.
//! Nor is the silence of a member while this server was *cut off* (heard
//! fewer than a quorum): when it hears a quorum again, every member gets a
//! full suspicion time from then. Otherwise the first server back after a
//! stop or a heal would exclude the others that were away with it the moment
//! it hears one of them, only because it resumed a little earlier.

use crate::{ServerId, Time};

/// Tunables of failure detection and the quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// A datagram goes to every peer at least this often.
    pub heartbeat_us: u64,
    /// A member silent this long is suspected (and excluded, quorum
    /// permitting).
    pub suspect_us: u64,
    /// Members a view needs to order `total` messages; `None` = a majority
    /// of the configured servers.
    pub quorum: Option<usize>,
    /// Own messages a server cut off from the quorum keeps waiting at most;
    /// beyond it, posts are refused.
    pub cut_off_backlog: usize,
}

/// Defaults tuned so that the survivors of a `kill -9` resume total order
/// within a second: silence is noticed after 700 ms, seven heartbeats.
impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            heartbeat_us: 100_000,
            suspect_us: 700_000,
            quorum: None,
            cut_off_backlog: 1024,
        }
    }
}

impl MembershipConfig {
    /// The quorum for `servers` configured servers.
    pub fn quorum_of(&self, servers: usize) -> usize {
        self.quorum
            .unwrap_or(servers / 2 + 1)
            .clamp(1, servers.max(1))
    }
}

/// What changed in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewChange {
    /// `server` was silent for the suspicion time (or another member said
    /// so) and is no longer a member.
    Excluded(ServerId),
    /// `server` (a new incarnation) is a member again.
    Admitted(ServerId),
}

/// The view as a server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Grows with every change this server makes to its view.
    pub number: u64,
    /// Per configured server (this one included): a member or not.
    pub members: Vec<bool>,
}

impl View {
    /// How many members.
    pub fn len(&self) -> usize {
        self.members.iter().filter(|m| **m).count()
    }

    /// Whether there are no members (never: this server is one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `s` is a member.
    pub fn contains(&self, s: ServerId) -> bool {
        self.members.get(s.index()).copied().unwrap_or(false)
    }

    /// The members, in server order.
    pub fn iter(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| **m)
            .map(|(i, _)| ServerId(i as u16))
    }
}

/// Failure detector and view of one server (see the module docs).
#[derive(Debug)]
pub(crate) struct Membership {
    me: ServerId,
    cfg: MembershipConfig,
    quorum: usize,
    view: View,
    /// Per server: when last heard from (its current incarnation).
    last_heard: Vec<Time>,
    last_tick: Option<Time>,
    /// [`Membership::reachable`] below the quorum, as of the latest tick or
    /// view change: asked on every post, so not recounted there.
    cut_off: bool,
    /// A change of [`Membership::cut_off`] not yet taken by the replica.
    cut_off_changed: bool,
    /// Views installed (changes made), for the counters.
    pub(crate) changes: u64,
}

impl Membership {
    pub(crate) fn new(me: ServerId, servers: usize, cfg: MembershipConfig) -> Self {
        let quorum = cfg.quorum_of(servers);
        Self {
            me,
            cfg,
            quorum,
            view: View {
                number: 1,
                members: vec![true; servers],
            },
            last_heard: vec![Time::ZERO; servers],
            last_tick: None,
            cut_off: false,
            cut_off_changed: false,
            changes: 0,
        }
    }

    pub(crate) fn view(&self) -> &View {
        &self.view
    }

    pub(crate) fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    pub(crate) fn quorum(&self) -> usize {
        self.quorum
    }

    pub(crate) fn is_member(&self, s: ServerId) -> bool {
        self.view.contains(s)
    }

    /// An authentic datagram of `peer`'s current incarnation arrived.
    pub(crate) fn heard(&mut self, now: Time, peer: ServerId) {
        if let Some(t) = self.last_heard.get_mut(peer.index()) {
            *t = (*t).max(now);
        }
    }

    /// Members heard from within the suspicion time, this server included.
    pub(crate) fn reachable(&self, now: Time) -> usize {
        self.view
            .iter()
            .filter(|&s| {
                s == self.me
                    || now.saturating_since(self.last_heard[s.index()]) < self.cfg.suspect_us
            })
            .count()
    }

    /// Whether a quorum of members was heard lately (within half the
    /// suspicion time), not merely not yet suspected: only then may this
    /// server exclude anybody. A server just cut off from the majority
    /// still counts the far side as reachable for a while, and must not
    /// shrink its view by servers it never heard meanwhile.
    pub(crate) fn hears_quorum_lately(&self, now: Time) -> bool {
        let lately = self.cfg.suspect_us / 2;
        let heard = self
            .view
            .iter()
            .filter(|&s| s == self.me || now.saturating_since(self.last_heard[s.index()]) < lately)
            .count();
        heard >= self.quorum
    }

    /// Whether this server hears too few members to make up the quorum: its
    /// `total` messages cannot be ordered until that changes. As of the
    /// latest tick (every heartbeat) or view change.
    pub(crate) fn cut_off(&self) -> bool {
        self.cut_off
    }

    /// Whether [`Membership::cut_off`] changed since the last call, and to
    /// what.
    pub(crate) fn take_cut_off_change(&mut self) -> Option<bool> {
        std::mem::take(&mut self.cut_off_changed).then_some(self.cut_off)
    }

    fn refresh_cut_off(&mut self, now: Time) {
        let cut_off = self.reachable(now) < self.quorum;
        if cut_off != self.cut_off {
            self.cut_off_changed = !self.cut_off_changed;
        }
        if self.cut_off && !cut_off {
            // Silence while we could not act on it is not counted (module
            // docs): every member gets a full suspicion time from now.
            for t in &mut self.last_heard {
                *t = (*t).max(now);
            }
        }
        self.cut_off = cut_off;
    }

    /// `peer` leaves the view, if the members left still hold the quorum.
    pub(crate) fn exclude(&mut self, peer: ServerId) -> Option<ViewChange> {
        if peer == self.me || !self.view.contains(peer) || self.view.len() <= self.quorum {
            return None;
        }
        self.view.members[peer.index()] = false;
        self.view.number += 1;
        self.changes += 1;
        self.refresh_cut_off(self.last_tick.unwrap_or(Time::ZERO));
        Some(ViewChange::Excluded(peer))
    }

    /// `peer` runs a new incarnation that was adopted: it is a member
    /// (again). Returns the change if it was not one.
    pub(crate) fn admit(&mut self, now: Time, peer: ServerId) -> Option<ViewChange> {
        self.heard(now, peer);
        let slot = self.view.members.get_mut(peer.index())?;
        if *slot {
            return None;
        }
        *slot = true;
        self.view.number += 1;
        self.changes += 1;
        self.refresh_cut_off(now);
        Some(ViewChange::Admitted(peer))
    }

    /// Failure detection: the members silent for the suspicion time (the
    /// caller excludes them, one by one while the quorum allows).
    pub(crate) fn tick(&mut self, now: Time) -> Vec<ServerId> {
        match self.last_tick {
            None => {
                // Start of life: everybody gets a full suspicion time.
                for t in &mut self.last_heard {
                    *t = now;
                }
            }
            Some(prev) => {
                let gap = now.saturating_since(prev);
                if gap > self.cfg.suspect_us / 2 {
                    // We were not running: the others' silence is ours.
                    for t in &mut self.last_heard {
                        *t = Time((*t).as_micros().saturating_add(gap)).min(now);
                    }
                }
            }
        }
        self.last_tick = Some(now);
        self.refresh_cut_off(now);
        self.view
            .iter()
            .filter(|&s| {
                s != self.me
                    && now.saturating_since(self.last_heard[s.index()]) >= self.cfg.suspect_us
            })
            .collect()
    }

    /// When [`Membership::tick`] should run next.
    pub(crate) fn next_tick(&self) -> Time {
        self.last_tick
            .map_or(Time::ZERO, |t| t.plus_micros(self.cfg.heartbeat_us))
    }

    /// Back to the start of life (this server rejoins as a new incarnation):
    /// every configured server a member, every silence clock restarted.
    pub(crate) fn restart(&mut self, now: Time) {
        self.view.members.iter_mut().for_each(|m| *m = true);
        self.view.number += 1;
        self.changes += 1;
        for t in &mut self.last_heard {
            *t = now;
        }
        self.last_tick = Some(now);
        self.refresh_cut_off(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Time {
        Time::from_millis(n)
    }

    /// Ticks every heartbeat from `from` to `to` (ms), hearing `heard` at
    /// each; returns the silent members seen at the last tick.
    fn tick_until(m: &mut Membership, from: u64, to: u64, heard: &[ServerId]) -> Vec<ServerId> {
        let mut last = Vec::new();
        let mut t = from;
        while t <= to {
            for &h in heard {
                m.heard(ms(t), h);
            }
            last = m.tick(ms(t));
            t += 100;
        }
        last
    }

    #[test]
    fn a_silent_member_is_excluded_after_the_suspicion_time() {
        let mut m = Membership::new(ServerId(0), 3, MembershipConfig::default());
        assert!(m.tick(ms(0)).is_empty());
        for t in (100..=600).step_by(100) {
            m.heard(ms(t), ServerId(1));
            assert!(m.tick(ms(t)).is_empty(), "at {t} ms");
        }
        m.heard(ms(700), ServerId(1));
        assert_eq!(m.tick(ms(700)), vec![ServerId(2)]);
        assert_eq!(
            m.exclude(ServerId(2)),
            Some(ViewChange::Excluded(ServerId(2)))
        );
        assert_eq!(m.view().len(), 2);
        assert!(!m.cut_off());
    }

    #[test]
    fn the_view_never_shrinks_below_the_quorum() {
        let mut m = Membership::new(ServerId(0), 3, MembershipConfig::default());
        let silent = tick_until(&mut m, 0, 800, &[]);
        assert_eq!(silent, vec![ServerId(1), ServerId(2)]);
        let changes: Vec<_> = silent.into_iter().filter_map(|s| m.exclude(s)).collect();
        assert_eq!(changes.len(), 1, "one of the two may go, not both");
        assert_eq!(m.view().len(), 2);
        assert!(m.cut_off(), "hears nobody: cut off");
    }

    #[test]
    fn a_quorum_setting_lets_two_servers_go_on_alone() {
        let cfg = MembershipConfig {
            quorum: Some(1),
            ..MembershipConfig::default()
        };
        let mut m = Membership::new(ServerId(1), 2, cfg);
        assert_eq!(tick_until(&mut m, 0, 700, &[]), vec![ServerId(0)]);
        assert_eq!(
            m.exclude(ServerId(0)),
            Some(ViewChange::Excluded(ServerId(0)))
        );
        assert!(!m.cut_off());
    }

    #[test]
    fn own_starvation_is_not_everybody_elses_silence() {
        let mut m = Membership::new(ServerId(0), 3, MembershipConfig::default());
        m.tick(ms(0));
        m.heard(ms(100), ServerId(1));
        m.heard(ms(100), ServerId(2));
        m.tick(ms(100));
        // Stopped for five seconds: nobody is suspected at once...
        assert!(m.tick(ms(5100)).is_empty());
        // ...but silence after that counts.
        for t in (5200..5800).step_by(100) {
            m.heard(ms(t), ServerId(1));
            assert!(m.tick(ms(t)).is_empty(), "at {t} ms");
        }
        m.heard(ms(5800), ServerId(1));
        assert_eq!(m.tick(ms(5800)), vec![ServerId(2)]);
    }

    #[test]
    fn silence_while_cut_off_is_not_counted_once_a_quorum_is_heard_again() {
        let mut m = Membership::new(ServerId(0), 3, MembershipConfig::default());
        // Both others stop: after the suspicion time this server is cut
        // off (and so excludes nobody, whatever tick() says).
        assert_eq!(
            tick_until(&mut m, 0, 3000, &[]),
            vec![ServerId(1), ServerId(2)]
        );
        assert!(m.cut_off());
        assert_eq!(m.take_cut_off_change(), Some(true));
        assert_eq!(m.take_cut_off_change(), None);
        // Server 1 comes back first: a quorum again, and server 2, silent
        // for three seconds, gets a full suspicion time from now...
        m.heard(ms(3050), ServerId(1));
        assert!(m.tick(ms(3100)).is_empty());
        assert!(!m.cut_off());
        assert_eq!(m.take_cut_off_change(), Some(false));
        assert_eq!(
            tick_until(&mut m, 3200, 3700, &[ServerId(1)]),
            vec![],
            "server 2 had no suspicion time of its own yet"
        );
        // ...after which its silence counts.
        assert_eq!(
            tick_until(&mut m, 3800, 3800, &[ServerId(1)]),
            vec![ServerId(2)]
        );
        assert_eq!(m.take_cut_off_change(), None);
    }

    #[test]
    fn an_excluded_server_is_admitted_again_as_a_new_incarnation() {
        let mut m = Membership::new(ServerId(0), 3, MembershipConfig::default());
        for s in tick_until(&mut m, 0, 700, &[ServerId(1)]) {
            m.exclude(s);
        }
        assert!(!m.is_member(ServerId(2)));
        assert_eq!(
            m.admit(ms(900), ServerId(2)),
            Some(ViewChange::Admitted(ServerId(2)))
        );
        assert_eq!(m.admit(ms(900), ServerId(2)), None);
        assert_eq!(m.view().len(), 3);
        assert_eq!(m.changes, 2);
    }
}
