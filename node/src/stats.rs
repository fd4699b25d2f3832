//! The counters a server reports when it stops, as one typed record with one
//! encoding: a stderr line `Snn stopped: {JSON}`, written by `chatserver`
//! and read back by the launcher and the tests with [`ServerCounters::from_stopped_line`].

use crate::server::ServerStats;
use serde::{Deserialize, Serialize};

/// What separates the server's name from the JSON counters.
pub const STOPPED: &str = " stopped: ";

/// Defines the record once, and the list of its fields by name for callers
/// that sum or print them generically.
macro_rules! counters {
    ($( $(#[$doc:meta])* $field:ident ),* $(,)?) => {
        /// One server's counters at stop (links summed over the peers).
        // A counter an older server does not print reads as 0 (its line
        // still counts); an unknown one is refused (not our line).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct ServerCounters {
            $( $(#[$doc])* pub $field: u64, )*
        }

        impl ServerCounters {
            /// Every counter with its name, in declaration order.
            pub fn entries(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$( (stringify!($field), self.$field) ),*].into_iter()
            }

            /// Adds `other` counter by counter (sums over a cluster).
            pub fn add(&mut self, other: &ServerCounters) {
                $( self.$field = self.$field.saturating_add(other.$field); )*
            }
        }
    };
}

counters! {
    client_datagrams,
    peer_datagrams,
    bad_peer_datagrams,
    refused_posts,
    posts,
    deliveries,
    bad_payloads,
    link_datagrams_sent,
    link_datagrams_received,
    retransmissions,
    /// Second copies of datagrams sent while a link was lossy.
    duplicated_datagrams,
    /// Frames resent because the peer reported them missing.
    resends_on_gap,
    /// Frames resent because their retransmission timer expired.
    resends_on_timeout,
    /// Resent frames whose original arrived after all (reported twice by
    /// the peer, or acknowledged too soon for the resend to have arrived):
    /// reordering, not loss.
    needless_resends,
    duplicates,
    stale,
    peer_restarts,
    held_back,
    in_flight,
    /// The largest backlog of a peer link (frames not yet acknowledged).
    link_backlog,
    /// Peer messages dropped by the strategy's holdback limit.
    refused_by_holdback_limit,
    future_incarnations,
    unproven_incarnation_claims,
    probes_sent,
    outstanding,
    peak_outstanding,
    admission_window,
    dropped_from_server_addresses,
    dropped_bad_source,
    suppressed_error_replies,
    silenced_server_output,
    expired_sessions,
    unreachable_sessions,
    unreachable_peers,
    icmp_other,
    unauthenticated_peer_claims,
    peer_address_changes,
    dropped_over_allowance,
    confirm_notices,
    confirmed_addresses,
    bad_confirmations,
    dropped_sends,
    /// Datagrams sent in runs of one length to one address, segmented by
    /// the kernel (UDP segmentation offload).
    segmented_sends,
    unanswered_refusals,
    /// View changes this server made (exclusions, admissions, rejoins).
    views_installed,
    /// Members of the view at the end, this server included.
    view_members,
    /// Times this server was excluded and rejoined as a new incarnation.
    rejoins,
    /// Own messages posted again after a rejoin.
    reposted,
    /// After a rejoin: messages handed over again that the previous
    /// incarnation had delivered (dropped, not delivered twice).
    repeats_dropped,
    /// Messages of departed servers received from a survivor's relay
    /// (since this server's latest rejoin).
    relayed,
}

impl From<&ServerStats> for ServerCounters {
    fn from(s: &ServerStats) -> Self {
        let r = &s.replica;
        let link = |f: fn(&orderings::LinkStats) -> u64| r.links.iter().map(f).sum::<u64>();
        ServerCounters {
            client_datagrams: s.client_datagrams,
            peer_datagrams: s.peer_datagrams,
            bad_peer_datagrams: s.bad_peer_datagrams,
            refused_posts: s.refused_posts,
            posts: r.posts,
            deliveries: r.deliveries,
            bad_payloads: r.bad_payloads,
            link_datagrams_sent: link(|l| l.datagrams_sent),
            link_datagrams_received: link(|l| l.datagrams_received),
            retransmissions: link(|l| l.retransmissions),
            duplicated_datagrams: link(|l| l.duplicated_datagrams),
            resends_on_gap: link(|l| l.resends_on_gap),
            resends_on_timeout: link(|l| l.resends_on_timeout),
            needless_resends: link(|l| l.needless_resends),
            duplicates: link(|l| l.duplicates),
            stale: link(|l| l.stale),
            peer_restarts: link(|l| l.peer_restarts),
            held_back: r.strategy.held_back as u64,
            relayed: r.strategy.relayed,
            in_flight: r.strategy.in_flight as u64,
            link_backlog: r.max_backlog as u64,
            refused_by_holdback_limit: r.strategy.refused,
            future_incarnations: link(|l| l.future_incarnations),
            unproven_incarnation_claims: link(|l| l.unproven_claims),
            probes_sent: link(|l| l.probes_sent),
            outstanding: r.outstanding as u64,
            peak_outstanding: r.peak_outstanding as u64,
            admission_window: r.window as u64,
            dropped_from_server_addresses: s.dropped_from_server_addresses,
            dropped_bad_source: s.dropped_bad_source,
            suppressed_error_replies: s.suppressed_error_replies,
            silenced_server_output: s.sessions.silenced,
            expired_sessions: s.sessions.expired,
            unreachable_sessions: s.sessions.unreachable,
            unreachable_peers: s.unreachable_peers,
            icmp_other: s.icmp_other,
            unauthenticated_peer_claims: s.unauthenticated_peer_claims,
            peer_address_changes: s.peer_address_changes,
            dropped_over_allowance: s.sessions.over_allowance,
            confirm_notices: s.sessions.notices,
            confirmed_addresses: s.sessions.confirmed,
            bad_confirmations: s.sessions.bad_confirmations,
            dropped_sends: s.dropped_sends,
            segmented_sends: s.segmented_sends,
            unanswered_refusals: s.unanswered_refusals,
            views_installed: r.views_installed,
            view_members: r.view_members as u64,
            rejoins: r.rejoins,
            reposted: r.reposted,
            repeats_dropped: r.repeats_dropped,
        }
    }
}

impl ServerCounters {
    /// The line a server prints when it stops: `S01 stopped: {"client_datagrams":3,...}`.
    pub fn stopped_line(&self, server: &str) -> String {
        // A struct of integers always serializes.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{server}{STOPPED}{json}")
    }

    /// The counters of a `stopped` line, `None` for any other line.
    pub fn from_stopped_line(line: &str) -> Option<ServerCounters> {
        let (_, json) = line.split_once(STOPPED)?;
        serde_json::from_str(json.trim()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_line_round_trips() {
        let c = ServerCounters {
            client_datagrams: 12,
            deliveries: 9,
            ..ServerCounters::default()
        };
        let line = c.stopped_line("S01");
        assert!(
            line.starts_with("S01 stopped: {\"client_datagrams\":12,"),
            "{line}"
        );
        assert_eq!(ServerCounters::from_stopped_line(&line), Some(c));
        // An older server's line, without the newest counter.
        let older = line.replace(",\"needless_resends\":0", "");
        assert_ne!(older, line);
        assert!(ServerCounters::from_stopped_line(&older).is_some());
        assert_eq!(
            ServerCounters::from_stopped_line("S01 ready: listening"),
            None
        );
        let mut sum = c;
        sum.add(&c);
        assert_eq!(
            (sum.client_datagrams, sum.deliveries, sum.posts),
            (24, 18, 0)
        );
        assert_eq!(c.entries().count(), 50);
    }
}
