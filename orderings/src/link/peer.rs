//! One reliable, FIFO, batching link to one peer, sans-IO.
//!
//! Every strategy payload becomes a *frame* with a per-link sequence number.
//! Frames are packed into datagrams up to a size limit, kept until the peer
//! acknowledges them cumulatively, re-sent at once when the peer reports a
//! gap (negative acknowledgement) and after a retransmission timeout
//! otherwise. The receiving side delivers frames in sequence order exactly
//! once, buffering frames that arrive early. At most `window` frames are in
//! flight, so a fast sender cannot overflow the peer's kernel buffer.
//!
//! Each node start is an *incarnation* (a number that grows across restarts).
//! A datagram names its sender's incarnation and the receiver's incarnation
//! as the sender knows it; a datagram from an older incarnation, or to an
//! older incarnation of ours, is stale and dropped. When a peer shows up with
//! a newer incarnation, the link starts afresh and the strategy is told.
//!
//! An incarnation is adopted only with proof: the datagram that claims it
//! must name *our* incarnation as its receiver, which a peer learns only from
//! a datagram of ours. A claim without proof is answered with a *probe* (a
//! heartbeat addressed to the claimed incarnation) and otherwise ignored, so
//! a blind forger cannot cut a link by claiming that its peer restarted. An
//! incarnation further in the future than the clock-skew bound
//! ([`LinkConfig::max_incarnation_ahead_us`]) is refused outright: no real
//! start produces it, and adopting it would make every later datagram of the
//! real peer look stale.
//!
//! Every arrival of a frame beyond the first is reported back once (an
//! entry `(seq, 0)` among the gaps, which a server without this report
//! ignores; never in a datagram's second copy), like TCP's D-SACK. A
//! sender whose resend copies are outnumbered by the reported arrivals
//! learns that an earlier copy arrived: the resend was needless (the
//! original was late, not lost), and it counts as no loss. (It is no round-trip sample: the acknowledgement of the original
//! may have been what was lost.)
//!
//! Every datagram also carries how many of the receiver's messages (of its
//! current incarnation) the sender has delivered: the origin's admission
//! window ([`crate::replica`]) is built on it.
//!
//! The datagram format itself is [`super::datagram`]'s.

use super::datagram::{Datagram, MAC_LEN};
use crate::Time;
use crate::wire::stuffed_len;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};

/// Tunables of a link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Frames in flight (sent, not yet acknowledged) at most.
    pub window: usize,
    /// Datagram size the batcher aims for (stuffed). A single frame larger
    /// than this still goes out alone.
    pub max_datagram: usize,
    /// How long an acknowledgement may wait for a data datagram to ride on.
    pub ack_delay_us: u64,
    /// Retransmission timeout floor.
    pub min_rto_us: u64,
    /// Retransmission timeout ceiling (back-off stops here).
    pub max_rto_us: u64,
    /// Retransmission timeout before the first round-trip sample.
    pub initial_rto_us: u64,
    /// A datagram goes to every peer at least this often (keep-alive and
    /// incarnation discovery).
    pub heartbeat_us: u64,
    /// How far beyond our own clock a peer's incarnation (its start time)
    /// may lie: the clock-skew bound. Beyond it, the datagram is refused.
    pub max_incarnation_ahead_us: u64,
    /// Probes to one peer at most this often (each unproven claim asks for
    /// one; a flood of forged claims must not become a flood of probes).
    pub probe_spacing_us: u64,
    /// Report deliveries to the peer without waiting for other traffic once
    /// this many of its messages were delivered since the last report.
    pub delivered_report_every: u64,
    /// Send every datagram that carries frames twice while the link loses
    /// more than this fraction of them (estimated; 0 turns it off). A lost
    /// frame then costs nothing instead of a round trip or a timeout, at
    /// the price of the bandwidth, and only on a lossy link.
    pub duplicate_above_loss: f64,
    /// ... and only while fewer frames than this await acknowledgement:
    /// a busy link's losses are mostly congestion (full buffers), which
    /// copies would make worse.
    pub duplicate_below_backlog: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            window: 4096,
            max_datagram: 999,
            ack_delay_us: 2_000,
            min_rto_us: 20_000,
            max_rto_us: 1_000_000,
            initial_rto_us: 100_000,
            heartbeat_us: 500_000,
            max_incarnation_ahead_us: 10_000_000,
            probe_spacing_us: 20_000,
            duplicate_above_loss: 0.02,
            duplicate_below_backlog: 256,
            delivered_report_every: 64,
        }
    }
}

/// Counters of one link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams sent to the peer.
    pub datagrams_sent: u64,
    /// Datagrams from the peer's current incarnation accepted.
    pub datagrams_received: u64,
    /// Frames put into datagrams, retransmissions included.
    pub frames_sent: u64,
    /// Frames handed on in order, exactly once.
    pub frames_delivered: u64,
    /// Frames sent again.
    pub retransmissions: u64,
    /// Frames received again (each is reported back to the peer).
    pub duplicates: u64,
    /// Datagrams or frames of another incarnation (or far out of window).
    pub stale: u64,
    /// Times the peer turned out to have restarted.
    pub peer_restarts: u64,
    /// Datagrams refused for naming an incarnation beyond the skew bound.
    pub future_incarnations: u64,
    /// Claims of a new incarnation without proof (answered with a probe).
    pub unproven_claims: u64,
    /// Probes sent to claimed incarnations.
    pub probes_sent: u64,
    /// Second copies of datagrams, sent while the link was lossy.
    pub duplicated_datagrams: u64,
    /// Frames queued for a resend because the peer reported them missing.
    pub resends_on_gap: u64,
    /// Frames queued for a resend because their timer expired.
    pub resends_on_timeout: u64,
    /// Resent frames whose original turned out to have arrived, late
    /// (reordering, not loss): the peer reported the frame twice, or
    /// acknowledged it too soon after the resend for the resend to have
    /// arrived.
    pub needless_resends: u64,
}

/// The most duplicate reports one datagram carries.
const MAX_DUPLICATE_REPORTS: usize = 16;
/// Resent frames remembered after their acknowledgement, for a duplicate
/// report that may still come.
const RECENT_RESENDS: usize = 128;

#[derive(Debug)]
struct OutFrame {
    seq: u64,
    payload: Bytes,
    /// When last put into a datagram; `None` while never sent.
    sent_at: Option<Time>,
    retransmitted: bool,
    /// Copies sent since the first resend (datagram copies included).
    resent_copies: u8,
    /// Arrivals beyond the first the peer reported before acknowledging it.
    extra_arrivals: u8,
    /// Queued for an early resend (gap reported or timer fired).
    resend: bool,
}

/// A resent frame, acknowledged, that a duplicate report may yet show was
/// not lost: it counts as a loss only once no report came in time.
#[derive(Debug)]
struct AcknowledgedResend {
    seq: u64,
    acknowledged_at: Time,
    resent_copies: u8,
    extra_arrivals: u8,
}

/// What happened when a datagram arrived on a link.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// The peer is a new incarnation: everything from before is void.
    pub peer_restarted: bool,
    /// First datagram ever from this peer.
    pub first_contact: bool,
    /// In-order, exactly-once payloads for the strategy.
    pub payloads: Vec<Bytes>,
    /// How many of our messages the peer says it delivered (from a datagram
    /// of its adopted incarnation).
    pub peer_delivered: Option<u64>,
    /// The datagram came from the peer's adopted incarnation and was meant
    /// for ours: the peer is alive and talking to us (failure detection).
    pub current: bool,
    /// The peer, in its adopted incarnation, addresses a *later* incarnation
    /// of ours than this one: it has excluded this incarnation from its view.
    pub excluded_us: bool,
    /// The peer's incarnation we excluded has excluded ours as well (each
    /// side of a partition excluded the other): neither hears the other
    /// until one comes back as a new incarnation (the replica picks).
    pub excluded_mutually: bool,
}

/// The link to one peer.
#[derive(Debug)]
pub(crate) struct PeerLink {
    cfg: LinkConfig,
    my_incarnation: u64,
    /// The peer's incarnation as last seen; 0 while unknown.
    peer_incarnation: u64,

    // Sending side.
    next_seq: u64,
    /// Unacknowledged frames, oldest first; seqs are consecutive.
    queue: VecDeque<OutFrame>,
    /// Index in `queue` of the first frame never sent.
    first_unsent: usize,
    resend_pending: usize,
    srtt_us: Option<u64>,
    rttvar_us: u64,
    rto_us: u64,
    last_sent: Option<Time>,

    // Receiving side.
    recv_upto: u64,
    early: BTreeMap<u64, Bytes>,
    ack_due: Option<Time>,
    /// Since when frames are missing before `early` (a gap is open), and
    /// whether it was reported yet.
    gap_open: Option<(Time, bool)>,
    /// How long a gap stays unreported: the reordering this link showed (a
    /// gap that filled right after it was reported was filled by the late
    /// original, not by the resend). Reordering is not loss.
    reorder_us: u64,

    /// An incarnation the peer claimed without proof, to be probed.
    probe: Option<u64>,
    last_probe: Option<Time>,
    /// The delivery count last put in a datagram to the peer.
    delivered_reported: u64,
    /// Ask the peer for a delivery report in the next datagram.
    report_wanted: bool,
    /// The peer's current incarnation is out of our view: nothing of it is
    /// accepted, and our datagrams tell it so.
    excluded: bool,
    last_report_request: Option<Time>,
    /// Estimated fraction of frames that needed a resend (moving average).
    resend_rate: f64,
    /// Datagrams with frames go out twice (see
    /// [`LinkConfig::duplicate_above_loss`]).
    duplicating: bool,
    /// The second copy of the datagram just sent, due next.
    copy: Option<Vec<u8>>,
    /// Resent frames acknowledged lately, oldest first.
    acknowledged_resends: VecDeque<AcknowledgedResend>,
    /// Frames that arrived again, to report to the peer.
    duplicates_seen: Vec<u64>,

    pub stats: LinkStats,
}

impl PeerLink {
    pub(crate) fn new(my_incarnation: u64, cfg: LinkConfig) -> Self {
        let rto = cfg.initial_rto_us;
        Self {
            cfg,
            my_incarnation,
            peer_incarnation: 0,
            next_seq: 1,
            queue: VecDeque::new(),
            first_unsent: 0,
            resend_pending: 0,
            srtt_us: None,
            rttvar_us: 0,
            rto_us: rto,
            last_sent: None,
            recv_upto: 0,
            early: BTreeMap::new(),
            gap_open: None,
            reorder_us: 0,
            ack_due: None,
            probe: None,
            excluded: false,
            last_probe: None,
            delivered_reported: 0,
            report_wanted: false,
            last_report_request: None,
            resend_rate: 0.0,
            duplicating: false,
            copy: None,
            acknowledged_resends: VecDeque::new(),
            duplicates_seen: Vec::new(),
            stats: LinkStats::default(),
        }
    }

    pub(crate) fn peer_incarnation(&self) -> u64 {
        self.peer_incarnation
    }

    /// Frames accepted but not yet acknowledged by the peer.
    pub(crate) fn backlog(&self) -> usize {
        self.queue.len()
    }

    /// Queues a payload for the peer.
    pub(crate) fn push(&mut self, payload: Bytes) {
        self.queue.push_back(OutFrame {
            seq: self.next_seq,
            payload,
            sent_at: None,
            retransmitted: false,
            resent_copies: 0,
            extra_arrivals: 0,
            resend: false,
        });
        self.next_seq += 1;
    }

    fn reset_for(&mut self, incarnation: u64) {
        self.peer_incarnation = incarnation;
        self.excluded = false;
        self.next_seq = 1;
        self.queue.clear();
        self.first_unsent = 0;
        self.resend_pending = 0;
        self.recv_upto = 0;
        self.early.clear();
        self.gap_open = None;
        self.ack_due = None;
        self.srtt_us = None;
        self.rto_us = self.cfg.initial_rto_us;
        self.probe = None;
        self.delivered_reported = 0;
        self.copy = None;
        self.acknowledged_resends.clear();
        self.duplicates_seen.clear();
        // Answer at once, so the peer learns our incarnation.
        self.last_sent = None;
    }

    /// The largest incarnation a peer may have at `now`: our own start plus
    /// the time since, plus the clock-skew bound. Our incarnation is our
    /// start time in microseconds, and `now` counts from that start.
    fn incarnation_limit(&self, now: Time, clock_at_zero: u64) -> u64 {
        clock_at_zero
            .saturating_add(now.as_micros())
            .saturating_add(self.cfg.max_incarnation_ahead_us)
    }

    /// Our admission window is full because of this peer: ask it for a
    /// delivery report (at most once per retransmission timeout, since the
    /// report itself may be lost).
    pub(crate) fn request_report(&mut self, now: Time) {
        if self.peer_incarnation != 0
            && self
                .last_report_request
                .is_none_or(|t| now.saturating_since(t) >= self.base_rto())
        {
            self.report_wanted = true;
            self.last_report_request = Some(now);
        }
    }

    /// Our count of the peer's delivered messages advanced to `count`:
    /// when it ran far enough ahead of the last report, report it soon even
    /// without other traffic (the peer's admission may be waiting for it).
    pub(crate) fn note_delivered(&mut self, now: Time, count: u64) {
        if count >= self.delivered_reported + self.cfg.delivered_report_every.max(1)
            && self.peer_incarnation != 0
        {
            let due = now.plus_micros(self.cfg.ack_delay_us);
            self.ack_due = Some(self.ack_due.map_or(due, |t| t.min(due)));
        }
    }

    /// A third party says the peer runs `incarnation` (or later). Returns
    /// `Some(restarted)` when that is news: the link then starts afresh.
    pub(crate) fn learn_incarnation(
        &mut self,
        now: Time,
        clock_at_zero: u64,
        incarnation: u64,
    ) -> Option<bool> {
        if incarnation <= self.peer_incarnation {
            return None;
        }
        if incarnation > self.incarnation_limit(now, clock_at_zero) {
            self.stats.future_incarnations += 1;
            return None;
        }
        let restarted = self.peer_incarnation != 0;
        if restarted {
            self.stats.peer_restarts += 1;
            self.reset_for(incarnation);
        } else {
            self.peer_incarnation = incarnation;
            self.last_sent = None;
        }
        Some(restarted)
    }

    /// A fresh link (ours is a new incarnation) to a peer whose incarnation
    /// we already know: our datagrams name it at once, which proves our
    /// new incarnation to the peer.
    pub(crate) fn adopt(&mut self, peer_incarnation: u64) {
        self.peer_incarnation = peer_incarnation;
        self.last_sent = None;
    }

    /// The peer's current incarnation is excluded from our view: nothing of
    /// it is accepted any more, nothing queued for it is sent, and our
    /// datagrams say so (flagged, addressed to that incarnation), which
    /// tells the peer, if it is alive after all, to come back as a new one.
    /// Returns the excluded incarnation (0 if it was never heard from).
    pub(crate) fn exclude(&mut self) -> u64 {
        let excluded = self.peer_incarnation;
        self.reset_for(excluded);
        self.excluded = true;
        excluded
    }

    /// [`receive_with`](Self::receive_with), the payloads copied.
    #[cfg(test)]
    pub(crate) fn receive(&mut self, now: Time, clock_at_zero: u64, d: &Datagram<'_>) -> Received {
        self.receive_with(now, clock_at_zero, d, Bytes::copy_from_slice)
    }

    /// [`receive_with`](Self::receive_with) of a datagram decoded from
    /// `raw`: the payloads are slices of `raw`, which they keep alive, not
    /// copies.
    pub(crate) fn receive_sharing(
        &mut self,
        now: Time,
        clock_at_zero: u64,
        d: &Datagram<'_>,
        raw: &Bytes,
    ) -> Received {
        self.receive_with(now, clock_at_zero, d, |p| share(raw, p))
    }

    /// Handles a decoded datagram from the peer; `payload_of` makes each
    /// payload handed on. `clock_at_zero` is the incarnation clock's
    /// reading at `Time::ZERO` (see
    /// [`crate::replica::ReplicaConfig::clock_at_zero`]).
    fn receive_with(
        &mut self,
        now: Time,
        clock_at_zero: u64,
        d: &Datagram<'_>,
        payload_of: impl Fn(&[u8]) -> Bytes,
    ) -> Received {
        let mut out = Received::default();
        if d.excluded {
            // The peer, addressing this very incarnation of ours, says it is
            // out of its view (see `exclude`). Naming our incarnation is the
            // proof it heard us; we may never have heard it: it excluded us
            // before we came up, and since then says nothing else to us.
            if d.dst_incarnation == self.my_incarnation
                && d.src_incarnation != 0
                && (d.src_incarnation == self.peer_incarnation || self.peer_incarnation == 0)
            {
                if self.excluded {
                    // We excluded each other: one of us must come back.
                    out.excluded_mutually = true;
                } else {
                    out.excluded_us = true;
                }
            }
            self.stats.stale += 1;
            return out;
        }
        if self.excluded && self.peer_incarnation == 0 {
            // We excluded it before we ever heard it: the first incarnation
            // we hear is the one we excluded (what the others sent it
            // meanwhile never reached it, nor it us). Our datagrams now
            // tell it so, and it comes back as a new one, like any excluded
            // server.
            if d.src_incarnation <= self.incarnation_limit(now, clock_at_zero) {
                self.peer_incarnation = d.src_incarnation;
            }
            self.stats.stale += 1;
            return out;
        }
        if self.excluded && d.src_incarnation <= self.peer_incarnation {
            // The incarnation we excluded: it is over for us.
            self.stats.stale += 1;
            return out;
        }
        if d.dst_incarnation != 0 && d.dst_incarnation != self.my_incarnation {
            // Addressed to an earlier life of ours.
            self.stats.stale += 1;
            if d.src_incarnation > self.peer_incarnation
                && d.src_incarnation <= self.incarnation_limit(now, clock_at_zero)
            {
                // A newer life of the peer that knows only an earlier one
                // of ours, as we know only an earlier one of it (both came
                // back while apart): each would drop the other's datagrams
                // for ever. Probe the claimed incarnation, which names ours.
                self.stats.unproven_claims += 1;
                self.probe = Some(
                    self.probe
                        .map_or(d.src_incarnation, |p| p.max(d.src_incarnation)),
                );
            }
            return out;
        }
        if d.src_incarnation < self.peer_incarnation {
            self.stats.stale += 1;
            return out;
        }
        if d.src_incarnation > self.peer_incarnation {
            if d.src_incarnation > self.incarnation_limit(now, clock_at_zero) {
                self.stats.future_incarnations += 1;
                return out;
            }
            if d.dst_incarnation != self.my_incarnation {
                // A claim without proof: ask the claimed incarnation to
                // show it hears us; a real (re)started peer answers.
                self.stats.unproven_claims += 1;
                self.probe = Some(
                    self.probe
                        .map_or(d.src_incarnation, |p| p.max(d.src_incarnation)),
                );
                return out;
            }
            if self.peer_incarnation != 0 {
                out.peer_restarted = true;
                self.stats.peer_restarts += 1;
                self.reset_for(d.src_incarnation);
            } else {
                // Keep what we queued before the peer came up (frames wait
                // until we know whom they are for), and answer at once.
                out.first_contact = true;
                self.peer_incarnation = d.src_incarnation;
                self.excluded = false;
                self.probe = None;
                self.last_sent = None;
            }
        }
        if d.dst_incarnation == self.my_incarnation {
            out.current = true;
            out.peer_delivered = Some(d.delivered);
            if d.report_wanted {
                self.ack_due = Some(now);
            }
        }
        self.stats.datagrams_received += 1;
        self.handle_ack(now, d.ack, &d.gaps);
        if d.dst_incarnation == 0 && !d.frames.is_empty() {
            // Frames always name their receiver's incarnation; frames for
            // "anyone" could be meant for an earlier life of ours.
            self.stats.stale += 1;
            return out;
        }

        let mut gap_seen = false;
        for &(seq, payload) in &d.frames {
            if seq <= self.recv_upto || self.early.contains_key(&seq) {
                self.stats.duplicates += 1;
                if self.duplicates_seen.len() < MAX_DUPLICATE_REPORTS {
                    self.duplicates_seen.push(seq);
                }
                continue;
            }
            if seq == self.recv_upto + 1 {
                self.recv_upto = seq;
                out.payloads.push(payload_of(payload));
                while let Some(p) = self.early.remove(&(self.recv_upto + 1)) {
                    self.recv_upto += 1;
                    out.payloads.push(p);
                }
            } else if seq <= self.recv_upto + 4 * self.cfg.window as u64 {
                self.early.insert(seq, payload_of(payload));
                gap_seen = true;
            } else {
                // Far beyond any window the peer may use: not a frame of ours.
                self.stats.stale += 1;
            }
        }
        self.stats.frames_delivered += out.payloads.len() as u64;
        self.track_gap(now);
        if !d.frames.is_empty() {
            let due = match self.gap_open {
                // Report the gap once it outlived the reordering seen.
                Some((since, _)) if gap_seen || !self.early.is_empty() => {
                    since.plus_micros(self.reorder_us).max(now)
                }
                _ => now.plus_micros(self.cfg.ack_delay_us),
            };
            self.ack_due = Some(self.ack_due.map_or(due, |t| t.min(due)));
        }
        out
    }

    /// Follows the oldest gap: when it opened, and when it filled, what
    /// that says about reordering. A gap that filled within half a round
    /// trip of being reported was filled by the late original (the resend
    /// could not have arrived yet): the link reorders by at least as long
    /// as the gap lasted, and later gaps wait that long (at most half a
    /// round trip: a real loss must not wait much longer to be repaired)
    /// before they are reported. One that took longer was a loss: the wait
    /// shrinks a bit.
    fn track_gap(&mut self, now: Time) {
        match (self.gap_open, self.early.is_empty()) {
            (None, false) => self.gap_open = Some((now, false)),
            (Some((since, reported_at)), true) => {
                self.gap_open = None;
                let lasted = now.saturating_since(since);
                let half_rtt = self.srtt_us.unwrap_or(self.cfg.min_rto_us) / 2;
                if !reported_at || lasted < self.reorder_us + half_rtt {
                    self.reorder_us = self.reorder_us.max(lasted).min(half_rtt);
                } else {
                    self.reorder_us -= self.reorder_us / 8;
                }
            }
            _ => {}
        }
    }

    /// The gaps to report now: none while the oldest is younger than the
    /// reordering this link shows.
    fn reportable_gaps(&mut self, now: Time) -> Vec<(u64, u64)> {
        match self.gap_open {
            Some((since, _)) if now.saturating_since(since) < self.reorder_us => Vec::new(),
            Some((since, false)) => {
                self.gap_open = Some((since, true));
                self.gaps()
            }
            _ => self.gaps(),
        }
    }

    fn handle_ack(&mut self, now: Time, ack: u64, gaps: &[(u64, u64)]) {
        // `(seq, 0)`: frame `seq` arrived once more at the peer.
        for &(seq, count) in gaps {
            if count == 0 {
                self.note_extra_arrival(seq);
            }
        }
        let mut progressed = false;
        while let Some(front) = self.queue.front() {
            if front.seq > ack {
                break;
            }
            // A frame that was never sent cannot be acknowledged: a confused
            // or hostile peer. Stop at the first unsent frame.
            if front.sent_at.is_none() {
                break;
            }
            let f = self.queue.pop_front().expect("front exists");
            progressed = true;
            if f.resend {
                self.resend_pending -= 1;
            }
            self.first_unsent = self.first_unsent.saturating_sub(1);
            if f.retransmitted {
                self.settle_resend(now, &f);
            } else {
                self.note_resend_sample(false);
                if f.seq == ack
                    && let Some(sent) = f.sent_at
                {
                    self.rtt_sample(now.saturating_since(sent));
                }
            }
        }
        self.expire_resends(now);
        if progressed {
            // The peer is alive and taking frames: drop any timer back-off
            // (samples are rare under loss, so waiting for one would keep a
            // backed-off timeout for long).
            self.rto_us = self.base_rto();
        }
        let Some(base) = self.queue.front().map(|f| f.seq) else {
            return;
        };
        for &(first, count) in gaps {
            let count = count.min(self.cfg.window as u64);
            for seq in first..first.saturating_add(count) {
                let Some(idx) = seq.checked_sub(base).map(|i| i as usize) else {
                    continue;
                };
                if idx >= self.first_unsent {
                    break;
                }
                let min_gap = self
                    .srtt_us
                    .map_or(1_000, |s| s + 2 * self.rttvar_us)
                    .max(200);
                let f = &mut self.queue[idx];
                let recently = f.sent_at.is_some_and(|t| now.saturating_since(t) < min_gap);
                if !f.resend && !recently {
                    f.resend = true;
                    self.resend_pending += 1;
                    self.stats.resends_on_gap += 1;
                }
            }
        }
    }

    /// An acknowledged frame that was resent: was the resend needed? Not
    /// when the peer reported more arrivals of it than copies went out
    /// since the first resend (so an earlier copy arrived), nor when
    /// the acknowledgement came sooner than a quarter of a round trip after
    /// the resend (it answers the original; a quarter, so that a real loss
    /// with a quick resend and a quick answer is seldom taken for
    /// reordering). Otherwise it waits for a duplicate report for a while
    /// (see [`PeerLink::expire_resends`]), and counts as a loss if none
    /// comes: counted at once, the loss would turn on datagram copies on a
    /// link that only reorders, before the report could say so.
    fn settle_resend(&mut self, now: Time, f: &OutFrame) {
        let answered_too_soon = f
            .sent_at
            .zip(self.srtt_us)
            .is_some_and(|(sent, srtt)| now.saturating_since(sent) < srtt / 4);
        if proven_needless(f.extra_arrivals, f.resent_copies) || answered_too_soon {
            self.stats.needless_resends += 1;
            self.note_resend_sample(false);
            return;
        }
        if self.acknowledged_resends.len() == RECENT_RESENDS {
            self.acknowledged_resends.pop_front();
            self.note_resend_sample(true);
        }
        self.acknowledged_resends.push_back(AcknowledgedResend {
            seq: f.seq,
            acknowledged_at: now,
            resent_copies: f.resent_copies,
            extra_arrivals: f.extra_arrivals,
        });
    }

    /// Resends acknowledged longer ago than a retransmission timeout were
    /// not reported twice in time (the report of a late original follows
    /// the acknowledgement within about a round trip): they were losses.
    fn expire_resends(&mut self, now: Time) {
        let wait = self.base_rto();
        while let Some(r) = self.acknowledged_resends.front() {
            if now.saturating_since(r.acknowledged_at) < wait {
                break;
            }
            self.acknowledged_resends.pop_front();
            self.note_resend_sample(true);
        }
    }

    /// Frame `seq` arrived once more at the peer. A resent frame not yet
    /// counted as a loss whose arrivals now prove it needless was not lost.
    fn note_extra_arrival(&mut self, seq: u64) {
        let Some(i) = self.acknowledged_resends.iter().position(|r| r.seq == seq) else {
            // Not acknowledged yet: settled when it is.
            if let Some(f) = self
                .queue
                .front()
                .and_then(|front| seq.checked_sub(front.seq))
                .and_then(|i| self.queue.get_mut(usize::try_from(i).ok()?))
            {
                f.extra_arrivals = f.extra_arrivals.saturating_add(1);
            }
            return;
        };
        let r = &mut self.acknowledged_resends[i];
        r.extra_arrivals = r.extra_arrivals.saturating_add(1);
        if proven_needless(r.extra_arrivals, r.resent_copies) {
            self.acknowledged_resends.remove(i);
            self.stats.needless_resends += 1;
            self.note_resend_sample(false);
        }
    }

    /// One acknowledged frame: whether it had to be sent again. Keeps the
    /// moving resend rate, and with it whether datagrams go out twice. While
    /// they do, a frame needs a resend only when both copies were lost, so
    /// the loss is estimated as the square root of the rate (hysteresis:
    /// on above the threshold, off below a quarter of it).
    fn note_resend_sample(&mut self, resent: bool) {
        let threshold = self.cfg.duplicate_above_loss;
        if threshold <= 0.0 {
            return;
        }
        let sample = if resent { 1.0 } else { 0.0 };
        self.resend_rate += (sample - self.resend_rate) / 64.0;
        let loss = if self.duplicating {
            self.resend_rate.sqrt()
        } else {
            self.resend_rate
        };
        if loss > threshold {
            self.duplicating = true;
        } else if loss < threshold / 4.0 {
            self.duplicating = false;
        }
    }

    fn rtt_sample(&mut self, rtt: u64) {
        match self.srtt_us {
            None => {
                self.srtt_us = Some(rtt);
                self.rttvar_us = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar_us = (3 * self.rttvar_us + err) / 4;
                self.srtt_us = Some((7 * srtt + rtt) / 8);
            }
        }
        self.rto_us = self.base_rto();
    }

    /// The retransmission timeout from the RTT estimate, without back-off.
    fn base_rto(&self) -> u64 {
        match self.srtt_us {
            Some(srtt) => (srtt + 4 * self.rttvar_us + self.cfg.ack_delay_us)
                .clamp(self.cfg.min_rto_us, self.cfg.max_rto_us),
            None => self.cfg.initial_rto_us,
        }
    }

    /// When this link next needs [`PeerLink::handle_timeout`] or has a
    /// datagram due.
    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        let mut t = self.ack_due;
        let mut consider = |x: Time| t = Some(t.map_or(x, |y: Time| y.min(x)));
        if let Some(oldest) = self
            .queue
            .iter()
            .take(self.first_unsent)
            .find_map(|f| f.sent_at)
        {
            consider(oldest.plus_micros(self.rto_us));
        }
        consider(
            self.last_sent
                .map_or(Time::ZERO, |l| l.plus_micros(self.cfg.heartbeat_us)),
        );
        if self.probe.is_some() {
            consider(
                self.last_probe
                    .map_or(Time::ZERO, |l| l.plus_micros(self.cfg.probe_spacing_us)),
            );
        }
        t
    }

    /// Marks frames whose retransmission timer expired.
    pub(crate) fn handle_timeout(&mut self, now: Time) {
        let mut fired = false;
        for f in self.queue.iter_mut().take(self.first_unsent) {
            if let Some(sent) = f.sent_at
                && now.saturating_since(sent) >= self.rto_us
                && !f.resend
            {
                f.resend = true;
                self.resend_pending += 1;
                self.stats.resends_on_timeout += 1;
                fired = true;
            }
        }
        if fired {
            // Back off so a dead peer costs little.
            self.rto_us = (self.rto_us * 2).min(self.cfg.max_rto_us);
        }
    }

    fn probe_due(&self, now: Time) -> bool {
        self.probe.is_some()
            && self
                .last_probe
                .is_none_or(|t| now.saturating_since(t) >= self.cfg.probe_spacing_us)
    }

    fn wants_to_send(&self, now: Time) -> bool {
        if self.copy.is_some()
            || self.probe_due(now)
            || (self.report_wanted && self.peer_incarnation != 0)
        {
            return true;
        }
        let may_send_frames = self.peer_incarnation != 0;
        (may_send_frames && self.resend_pending > 0)
            || (may_send_frames
                && self.first_unsent < self.queue.len()
                && self.first_unsent < self.cfg.window)
            || self.ack_due.is_some_and(|t| t <= now)
            || self
                .last_sent
                .is_none_or(|l| now.saturating_since(l) >= self.cfg.heartbeat_us)
    }

    fn gaps(&self) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut expect = self.recv_upto + 1;
        for &seq in self.early.keys() {
            if seq > expect {
                gaps.push((expect, seq - expect));
                if gaps.len() == 16 {
                    break;
                }
            }
            expect = seq + 1;
        }
        gaps
    }

    /// The next datagram for this peer, raw (not yet stuffed or sealed).
    /// `delivered` is how many of the peer's messages (of its current
    /// incarnation) we have delivered.
    pub(crate) fn poll_datagram(
        &mut self,
        now: Time,
        authenticated: bool,
        delivered: u64,
    ) -> Option<Vec<u8>> {
        if let Some(copy) = self.copy.take() {
            self.stats.datagrams_sent += 1;
            self.stats.duplicated_datagrams += 1;
            return Some(copy);
        }
        if !self.wants_to_send(now) {
            return None;
        }
        if self.probe_due(now)
            && let Some(claimed) = self.probe.take()
        {
            // Only our incarnation, addressed to the claimed one: nothing
            // of the current link state goes to an unproven party.
            self.last_probe = Some(now);
            self.stats.probes_sent += 1;
            self.stats.datagrams_sent += 1;
            return Some(
                Datagram {
                    src_incarnation: self.my_incarnation,
                    dst_incarnation: claimed,
                    ack: 0,
                    delivered: 0,
                    report_wanted: false,
                    excluded: false,
                    gaps: Vec::new(),
                    frames: Vec::new(),
                }
                .encode_raw(authenticated),
            );
        }
        let mut gaps = self.reportable_gaps(now);
        let missing = gaps.len();
        gaps.extend(self.duplicates_seen.drain(..).map(|seq| (seq, 0)));
        self.delivered_reported = delivered;
        let mut header = Datagram {
            src_incarnation: self.my_incarnation,
            dst_incarnation: self.peer_incarnation,
            ack: self.recv_upto,
            delivered,
            report_wanted: std::mem::take(&mut self.report_wanted),
            excluded: self.excluded,
            gaps,
            frames: Vec::new(),
        };
        let overhead = if authenticated { MAC_LEN * 2 } else { 0 };
        let mut size = stuffed_len(&header.encode_raw(authenticated)) + 2 + overhead;
        let budget = self.cfg.max_datagram;
        let mut picked: Vec<usize> = Vec::new();
        // Until the peer's incarnation is known, only heartbeats go out:
        // frames must name the incarnation they are for.
        let limit = if self.peer_incarnation == 0 {
            0
        } else {
            self.queue.len().min(self.cfg.window)
        };
        // Resends first (oldest first), then new frames within the window.
        if self.resend_pending > 0 && limit > 0 {
            for (i, f) in self.queue.iter().enumerate().take(self.first_unsent) {
                if f.resend {
                    let cost = frame_cost(f);
                    if !picked.is_empty() && size + cost > budget {
                        break;
                    }
                    size += cost;
                    picked.push(i);
                }
            }
        }
        let mut i = self.first_unsent;
        while i < limit {
            let cost = frame_cost(&self.queue[i]);
            if !picked.is_empty() && size + cost > budget {
                break;
            }
            size += cost;
            picked.push(i);
            i += 1;
        }
        let copied = self.duplicating
            && !picked.is_empty()
            && self.queue.len() < self.cfg.duplicate_below_backlog;
        for &i in &picked {
            let f = &mut self.queue[i];
            if f.sent_at.is_some() {
                f.retransmitted = true;
                self.stats.retransmissions += 1;
            }
            if f.retransmitted {
                f.resent_copies = f.resent_copies.saturating_add(1 + u8::from(copied));
            }
            if f.resend {
                f.resend = false;
                self.resend_pending -= 1;
            }
            f.sent_at = Some(now);
        }
        self.first_unsent = i;
        self.stats.frames_sent += picked.len() as u64;
        header.frames = picked
            .iter()
            .map(|&i| (self.queue[i].seq, &self.queue[i].payload[..]))
            .collect();
        let raw = header.encode_raw(authenticated);
        if copied {
            // The copy reports no arrivals: each is reported once, so that
            // the sender may count them.
            header.gaps.truncate(missing);
            self.copy = Some(header.encode_raw(authenticated));
        }
        self.ack_due = None;
        self.last_sent = Some(now);
        self.stats.datagrams_sent += 1;
        Some(raw)
    }
}

/// Whether a resend was needless, from the arrivals the peer reported
/// beyond the first and the copies sent since the first resend: more
/// arrivals than resend copies means an earlier copy arrived.
fn proven_needless(extra_arrivals: u8, resent_copies: u8) -> bool {
    extra_arrivals >= resent_copies
}

fn frame_cost(f: &OutFrame) -> usize {
    // seq and length varints (at most 10 bytes each, stuffed at most x2) plus
    // the stuffed payload.
    stuffed_len(&f.payload) + 12
}

/// `part` as a slice of `whole` when it lies within it (a payload decoded
/// from it), else a copy.
fn share(whole: &Bytes, part: &[u8]) -> Bytes {
    let (start, end) = (
        whole.as_ptr() as usize,
        whole.as_ptr() as usize + whole.len(),
    );
    let at = part.as_ptr() as usize;
    if !part.is_empty() && at >= start && at + part.len() <= end {
        whole.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::datagram::{open_datagram, seal_datagram};

    fn pair() -> (PeerLink, PeerLink) {
        let cfg = LinkConfig::default();
        let mut a = PeerLink::new(11, cfg.clone());
        let mut b = PeerLink::new(22, cfg);
        // The exchange that introduces the two: a's heartbeat, b's probe
        // (a adopts b), a's answer (b adopts a).
        carry(&mut a, &mut b, Time(0));
        carry(&mut b, &mut a, Time(0));
        carry(&mut a, &mut b, Time(0));
        carry(&mut b, &mut a, Time(0));
        assert_eq!((a.peer_incarnation(), b.peer_incarnation()), (22, 11));
        (a, b)
    }

    #[test]
    fn frames_wait_until_the_peer_is_known() {
        let cfg = LinkConfig::default();
        let mut a = PeerLink::new(11, cfg.clone());
        let mut b = PeerLink::new(22, cfg);
        a.push(Bytes::from_static(b"early"));
        let raw = a.poll_datagram(Time(0), false, 0).expect("heartbeat");
        let (d, _) = Datagram::decode_raw(&raw).unwrap();
        assert!(d.frames.is_empty(), "no frames for an unknown incarnation");
        let r = b.receive(Time(0), 0, &d);
        assert!(
            !r.first_contact && b.peer_incarnation() == 0,
            "an incarnation is not adopted without proof"
        );
        // b probes the claimed incarnation; a adopts b (the probe names a),
        // and its answer, naming b, proves a to b.
        assert_eq!(carry(&mut b, &mut a, Time(1)), Vec::<Bytes>::new());
        assert_eq!(a.peer_incarnation(), 22);
        assert_eq!(
            carry(&mut a, &mut b, Time(2)),
            vec![Bytes::from_static(b"early")]
        );
        assert_eq!(b.peer_incarnation(), 11);
    }

    /// A server that came up after a peer had excluded it (the peer never
    /// heard it in time) hears only "excluded" datagrams from that peer: it
    /// must learn from them that it is excluded, though it never learned
    /// the peer's incarnation.
    #[test]
    fn an_exclusion_from_a_peer_never_heard_is_noticed() {
        let cfg = LinkConfig::default();
        let mut late = PeerLink::new(11, cfg.clone());
        let mut excluder = PeerLink::new(22, cfg);
        assert_eq!(excluder.exclude(), 0, "excluded before it was heard");
        // The late one speaks; the excluder takes it for the one excluded.
        carry(&mut late, &mut excluder, Time(0));
        let raw = excluder
            .poll_datagram(Time(1), false, 0)
            .expect("a datagram");
        let (d, _) = Datagram::decode_raw(&raw).unwrap();
        assert!(d.excluded && d.dst_incarnation == 11);
        assert_eq!(late.peer_incarnation(), 0);
        assert!(late.receive(Time(1), 0, &d).excluded_us);
        // Addressed to another incarnation of ours: not about us.
        let mut other = PeerLink::new(12, LinkConfig::default());
        assert!(!other.receive(Time(1), 0, &d).excluded_us);
    }

    /// Two servers that both came back as new incarnations while apart
    /// (each rejoined, keeping the other's old incarnation) address each
    /// other's old lives: each drops the other's datagrams as stale, and
    /// must probe the newer life it sees, or they never speak again.
    #[test]
    fn two_servers_back_while_apart_find_each_other() {
        let cfg = LinkConfig::default();
        // a was 11, b was 22; both rejoined: a as 33, b as 44.
        let mut a = PeerLink::new(33, cfg.clone());
        a.adopt(22);
        let mut b = PeerLink::new(44, cfg);
        b.adopt(11);
        for step in 0..10u64 {
            let now = Time(1_000_000 + step * 30_000);
            carry(&mut a, &mut b, now);
            carry(&mut b, &mut a, now);
        }
        assert_eq!((a.peer_incarnation(), b.peer_incarnation()), (44, 33));
        // (What was queued for the old lives went with them.)
        a.push(Bytes::from_static(b"from a"));
        b.push(Bytes::from_static(b"from b"));
        let now = Time(1_500_000);
        assert_eq!(
            carry(&mut a, &mut b, now),
            vec![Bytes::from_static(b"from a")]
        );
        assert_eq!(
            carry(&mut b, &mut a, now),
            vec![Bytes::from_static(b"from b")]
        );
    }

    #[test]
    fn forged_claims_do_not_cut_the_link() {
        let (mut a, mut b) = pair();
        let claims_before = b.stats.unproven_claims;
        // A blind forger claims a's restart, not knowing b's incarnation.
        for (inc, dst) in [(12, 0), (1 << 62, 0), (1 << 62, 22), (13, 99)] {
            let forged = Datagram {
                src_incarnation: inc,
                dst_incarnation: dst,
                ack: 0,
                delivered: 0,
                report_wanted: false,
                excluded: false,
                gaps: vec![],
                frames: vec![],
            };
            let r = b.receive(Time(10), 0, &forged);
            assert!(!r.peer_restarted && r.payloads.is_empty());
        }
        assert_eq!(b.peer_incarnation(), 11, "the real incarnation stays");
        assert_eq!(b.stats.future_incarnations, 2, "2^62 is beyond any clock");
        // 12 and 13 (addressed to another life of b's) are probed; the
        // ones from the future are refused.
        assert_eq!(b.stats.unproven_claims, claims_before + 2);
        // The probe goes to the claimed incarnation, nobody answers it, and
        // the real peer's traffic still flows.
        // (Probes are spaced: the one of the introduction went at time 0.)
        assert!(b.poll_datagram(Time(10), false, 0).is_none());
        let raw = b.poll_datagram(Time(20_000), false, 0).expect("probe");
        let (probe, _) = Datagram::decode_raw(&raw).unwrap();
        assert_eq!((probe.dst_incarnation, probe.ack), (13, 0));
        a.push(Bytes::from_static(b"still here"));
        assert_eq!(
            carry(&mut a, &mut b, Time(20_000)),
            vec![Bytes::from_static(b"still here")]
        );
        // A hint from the future is refused too.
        assert_eq!(b.learn_incarnation(Time(20_000), 0, 1 << 62), None);
    }

    #[test]
    fn deliveries_are_reported_and_prompt_a_report() {
        let (mut a, mut b) = pair();
        let raw = a.poll_datagram(Time(600_000), false, 7).expect("heartbeat");
        let (d, _) = Datagram::decode_raw(&raw).unwrap();
        assert_eq!(b.receive(Time(600_000), 0, &d).peer_delivered, Some(7));
        // 64 more deliveries make an early report due.
        assert!(a.poll_datagram(Time(600_001), false, 8).is_none());
        a.note_delivered(Time(600_001), 7 + 64);
        let due = a.poll_timeout().expect("report due");
        assert!(due <= Time(600_001 + LinkConfig::default().ack_delay_us));
        let raw = a.poll_datagram(due, false, 71).expect("report");
        let (d, _) = Datagram::decode_raw(&raw).unwrap();
        assert_eq!(d.delivered, 71);
    }

    fn carry(from: &mut PeerLink, to: &mut PeerLink, now: Time) -> Vec<Bytes> {
        let mut got = Vec::new();
        while let Some(raw) = from.poll_datagram(now, false, 0) {
            let wire = seal_datagram(&raw, None);
            assert!(!wire.contains(&0));
            let raw = open_datagram(&wire, None).unwrap();
            let (d, _) = Datagram::decode_raw(&raw).unwrap();
            got.extend(to.receive(now, 0, &d).payloads);
        }
        got
    }

    /// Sends one frame a -> b every 10 ms for `frames` frames, losing every
    /// `lose_every`-th datagram a sends (0: none), with acks back; returns
    /// the frames b got.
    fn exchange_losing(
        a: &mut PeerLink,
        b: &mut PeerLink,
        start: u64,
        frames: u64,
        lose_every: u64,
    ) -> Vec<Bytes> {
        let mut got = Vec::new();
        let mut sent = 0u64;
        for i in 0..frames * 10 {
            let now = Time(start + i * 1_000);
            if i % 10 == 0 && i / 10 < frames {
                a.push(Bytes::from(format!("f{}", i / 10)));
            }
            a.handle_timeout(now);
            while let Some(raw) = a.poll_datagram(now, false, 0) {
                sent += 1;
                if lose_every > 0 && sent.is_multiple_of(lose_every) {
                    continue;
                }
                let (d, _) = Datagram::decode_raw(&raw).unwrap();
                got.extend(b.receive(now, 0, &d).payloads);
            }
            b.handle_timeout(now);
            while let Some(raw) = b.poll_datagram(now, false, 0) {
                let (d, _) = Datagram::decode_raw(&raw).unwrap();
                a.receive(now, 0, &d);
            }
        }
        got
    }

    #[test]
    fn a_lossy_link_sends_datagrams_twice_and_a_clean_one_stops() {
        let (mut a, mut b) = pair();
        let got = exchange_losing(&mut a, &mut b, 1_000_000, 300, 5);
        assert_eq!(got.len(), 300, "everything arrives, once");
        assert!(a.duplicating, "a link losing 1 in 5 duplicates");
        let copies = a.stats.duplicated_datagrams;
        assert!(copies > 50, "copies sent: {copies}");
        let got = exchange_losing(&mut a, &mut b, 5_000_000, 600, 0);
        assert_eq!(got.len(), 600);
        assert!(!a.duplicating, "a clean link stops duplicating");
        let late = a.stats.duplicated_datagrams - copies;
        assert!(late < 400, "copies once clean again: {late}");
    }

    /// Hands every datagram `from` has at `now` to `to` at `at`.
    fn carry_at(from: &mut PeerLink, to: &mut PeerLink, now: Time, at: Time) {
        while let Some(raw) = from.poll_datagram(now, false, 0) {
            let (d, _) = Datagram::decode_raw(&raw).unwrap();
            to.receive(at, 0, &d);
        }
    }

    /// A frame resent on a timeout whose original was only late: the
    /// acknowledgement comes right after the resend, too soon to answer it,
    /// so the resend is counted needless and is no loss.
    #[test]
    fn a_resend_answered_too_soon_was_needless() {
        let (mut a, mut b) = pair();
        // Round trips of 20 ms.
        for k in 0..10u64 {
            let t = 1_000_000 + k * 100_000;
            a.push(Bytes::from(format!("f{k}")));
            carry_at(&mut a, &mut b, Time(t), Time(t + 8_000));
            // b acknowledges after its acknowledgement delay.
            b.handle_timeout(Time(t + 10_000));
            carry_at(&mut b, &mut a, Time(t + 10_000), Time(t + 20_000));
        }
        assert_eq!(a.stats.retransmissions, 0);
        assert_eq!(a.backlog(), 0, "all acknowledged");
        let srtt = a.srtt_us.expect("rtt measured");
        assert!((15_000..=25_000).contains(&srtt), "srtt {srtt}");
        // The original leaves at t and is delayed past the retransmission
        // timeout; the resend is lost; the original arrives just after it.
        let t = 3_000_000;
        a.push(Bytes::from_static(b"late"));
        let original = a.poll_datagram(Time(t), false, 0).expect("original");
        let resend_at = Time(t + a.rto_us);
        a.handle_timeout(resend_at);
        let lost = a.poll_datagram(resend_at, false, 0).expect("the resend");
        let (l, _) = Datagram::decode_raw(&lost).unwrap();
        assert_eq!(l.frames.len(), 1);
        assert_eq!(a.stats.retransmissions, 1);
        let (d, _) = Datagram::decode_raw(&original).unwrap();
        let now = resend_at.plus_micros(1_000);
        assert_eq!(b.receive(now, 0, &d).payloads.len(), 1);
        b.handle_timeout(now.plus_micros(2_000));
        carry_at(
            &mut b,
            &mut a,
            now.plus_micros(2_000),
            now.plus_micros(3_000),
        );
        assert_eq!(a.backlog(), 0, "acknowledged");
        assert_eq!(a.stats.needless_resends, 1);
        assert_eq!(a.resend_rate, 0.0, "no loss counted");
    }

    /// Runs a -> b with one-way delays `ab_us` and `ba_us` (every datagram
    /// in flight that long), one frame from a every 200 ms for `rounds`
    /// frames, dropping the first copy of every frame when `lose_originals`;
    /// returns the frames b got.
    fn delayed_exchange(
        a: &mut PeerLink,
        b: &mut PeerLink,
        start: u64,
        rounds: u64,
        (ab_us, ba_us): (u64, u64),
        lose_originals: bool,
    ) -> Vec<Bytes> {
        let mut in_flight: Vec<(u64, bool, Vec<u8>)> = Vec::new();
        let mut got = Vec::new();
        for ms in 0..rounds * 200 {
            let now = start + ms * 1_000;
            if ms % 200 == 0 {
                a.push(Bytes::from(format!("r{}", ms / 200)));
            }
            let (due, later): (Vec<_>, Vec<_>) =
                in_flight.drain(..).partition(|(at, _, _)| *at <= now);
            in_flight = later;
            for (_, to_b, raw) in due {
                let (d, _) = Datagram::decode_raw(&raw).unwrap();
                if to_b {
                    got.extend(b.receive(Time(now), 0, &d).payloads);
                } else {
                    a.receive(Time(now), 0, &d);
                }
            }
            a.handle_timeout(Time(now));
            while let Some(raw) = a.poll_datagram(Time(now), false, 0) {
                let (d, _) = Datagram::decode_raw(&raw).unwrap();
                let original = d.frames.first().is_some_and(|&(seq, _)| {
                    a.queue.iter().any(|f| f.seq == seq && !f.retransmitted)
                });
                if !(lose_originals && original) {
                    in_flight.push((now + ab_us, true, raw));
                }
            }
            b.handle_timeout(Time(now));
            while let Some(raw) = b.poll_datagram(Time(now), false, 0) {
                in_flight.push((now + ba_us, false, raw));
            }
        }
        got
    }

    /// Round trips of 20 ms, then the path from a to b slows to 60 ms one
    /// way: the timeout fires before the acknowledgements, the resends
    /// arrive after their originals, and b reports each frame it got twice.
    /// a counts those resends needless: no loss, so it never starts sending
    /// datagrams twice.
    #[test]
    fn frames_reported_twice_were_late_not_lost() {
        let (mut a, mut b) = pair();
        let got = delayed_exchange(&mut a, &mut b, 1_000_000, 10, (10_000, 10_000), false);
        assert_eq!(got.len(), 10);
        assert_eq!(a.stats.retransmissions, 0);
        let got = delayed_exchange(&mut a, &mut b, 3_000_000, 30, (60_000, 10_000), false);
        assert_eq!(got.len(), 30, "everything arrives, once");
        let resent = a.stats.retransmissions;
        assert!(resent >= 5, "the slower path fires the timeout: {resent}");
        assert_eq!(b.stats.duplicates, resent, "every resend arrived twice");
        assert_eq!(
            a.stats.needless_resends, resent,
            "each was reported needless"
        );
        assert!(a.resend_rate < 1e-9, "no loss counted: {}", a.resend_rate);
        assert!(!a.duplicating && a.stats.duplicated_datagrams == 0);
    }

    /// The same slow path on a link that sends datagrams twice: each resend
    /// goes out twice too, and the peer reports every arrival beyond the
    /// first once (not again in the copies of its own datagrams): four
    /// arrivals of two resend copies prove each resend needless, no loss is
    /// counted, and the link stops sending twice.
    #[test]
    fn counted_arrivals_prove_copied_resends_needless() {
        let (mut a, mut b) = pair();
        delayed_exchange(&mut a, &mut b, 1_000_000, 10, (10_000, 10_000), false);
        a.duplicating = true;
        b.duplicating = true;
        let got = delayed_exchange(&mut a, &mut b, 3_000_000, 30, (60_000, 10_000), false);
        assert_eq!(got.len(), 30, "everything arrives, once");
        let resent = a.stats.retransmissions;
        assert!(resent >= 5, "the slower path fires the timeout: {resent}");
        assert_eq!(a.stats.needless_resends, resent, "each was proven needless");
        assert!(a.resend_rate < 1e-9, "no loss counted: {}", a.resend_rate);
        assert!(
            !a.duplicating,
            "a link that only reorders stops sending twice"
        );
    }

    /// Every original is lost: the resends were needed, and each counts as
    /// a loss, though the link soon sends datagrams twice and so frames do
    /// arrive twice (those copies prove nothing about the resends).
    #[test]
    fn resends_that_arrive_once_were_needed() {
        let (mut a, mut b) = pair();
        delayed_exchange(&mut a, &mut b, 1_000_000, 10, (10_000, 10_000), false);
        let got = delayed_exchange(&mut a, &mut b, 3_000_000, 10, (10_000, 10_000), true);
        assert_eq!(got.len(), 10, "every frame arrives, resent");
        assert!(a.duplicating, "a link losing every original sends twice");
        assert!(b.stats.duplicates > 0 && b.stats.duplicates <= a.stats.duplicated_datagrams);
        assert_eq!(a.stats.needless_resends, 0);
        assert!(a.resend_rate > 0.1, "losses counted: {}", a.resend_rate);
    }

    /// A duplicate report is a gap entry `(seq, 0)`: it names a frame at or
    /// below the acknowledgement, so a server that does not know the report
    /// resends nothing for it.
    #[test]
    fn a_duplicate_report_resends_nothing() {
        let (mut a, mut b) = pair();
        a.push(Bytes::from_static(b"once"));
        let raw = a.poll_datagram(Time(10), false, 0).expect("frame");
        let (d, _) = Datagram::decode_raw(&raw).unwrap();
        assert_eq!(b.receive(Time(11), 0, &d).payloads.len(), 1);
        assert!(b.receive(Time(12), 0, &d).payloads.is_empty());
        let raw = b.poll_datagram(Time(5_000), false, 0).expect("report");
        let (report, _) = Datagram::decode_raw(&raw).unwrap();
        assert_eq!((report.ack, report.gaps.clone()), (1, vec![(1, 0)]));
        a.receive(Time(5_001), 0, &report);
        assert_eq!(a.backlog(), 0);
        assert!(a.poll_datagram(Time(5_002), false, 0).is_none());
        assert_eq!(a.stats.retransmissions, 0);
    }

    #[test]
    fn reordering_is_not_reported_as_loss_once_seen() {
        let (mut a, mut b) = pair();
        let mut reported = Vec::new();
        for k in 0..20u64 {
            let t = 1_000_000 + k * 50_000;
            a.push(Bytes::from(format!("first {k}")));
            let first = a.poll_datagram(Time(t), false, 0).expect("first");
            a.push(Bytes::from(format!("second {k}")));
            let second = a.poll_datagram(Time(t), false, 0).expect("second");
            // The second overtakes the first by 3 ms.
            let (d2, _) = Datagram::decode_raw(&second).unwrap();
            assert!(b.receive(Time(t), 0, &d2).payloads.is_empty());
            let gap_reported = match b.poll_datagram(Time(t), false, 0) {
                Some(raw) => !Datagram::decode_raw(&raw).unwrap().0.gaps.is_empty(),
                None => false,
            };
            reported.push(gap_reported);
            let (d1, _) = Datagram::decode_raw(&first).unwrap();
            assert_eq!(b.receive(Time(t + 3_000), 0, &d1).payloads.len(), 2);
            carry(&mut b, &mut a, Time(t + 10_000));
        }
        assert!(
            reported[0],
            "a gap is reported at once on a link never seen reordering"
        );
        assert!(
            reported[1..].iter().all(|r| !r),
            "then it waits out the reordering: {reported:?}"
        );
        assert_eq!(b.reorder_us, 3_000);
    }

    #[test]
    fn delivers_in_order_and_acks() {
        let (mut a, mut b) = pair();
        for i in 0..100u32 {
            a.push(Bytes::from(format!("m{i}")));
        }
        let got = carry(&mut a, &mut b, Time(0));
        assert_eq!(got.len(), 100);
        assert_eq!(&got[99][..], b"m99");
        // The acknowledgement waits for data to ride on, at most ack_delay.
        let ack_at = Time(LinkConfig::default().ack_delay_us);
        assert!(carry(&mut b, &mut a, Time(ack_at.0 - 1)).is_empty());
        assert_eq!(a.backlog(), 100, "no standalone ack before the delay");
        carry(&mut b, &mut a, ack_at);
        assert_eq!(a.backlog(), 0);
    }

    #[test]
    fn loss_is_repaired_by_gap_report() {
        let (mut a, mut b) = pair();
        for i in 0..3u32 {
            a.push(Bytes::from(vec![b'x'; 600 + i as usize]));
        }
        // Three datagrams (each frame ~600 bytes); drop the first.
        let d1 = a.poll_datagram(Time(0), false, 0).unwrap();
        drop(d1);
        let got = carry(&mut a, &mut b, Time(0));
        assert!(got.is_empty(), "frames 2 and 3 wait for frame 1");
        // b reports the gap; a resends frame 1 after the minimum spacing.
        let now = Time(10_000);
        let _ = carry(&mut b, &mut a, now);
        let got = carry(&mut a, &mut b, now);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn stale_incarnation_is_dropped_and_restart_resets() {
        let (mut a, mut b) = pair();
        a.push(Bytes::from_static(b"one"));
        assert_eq!(carry(&mut a, &mut b, Time(0)).len(), 1);
        // a restarts as incarnation 33.
        let mut a2 = PeerLink::new(33, LinkConfig::default());
        a2.learn_incarnation(Time(5), 0, 22);
        a2.push(Bytes::from_static(b"fresh"));
        let raw = a2.poll_datagram(Time(5), false, 0).unwrap();
        let (d, _) = Datagram::decode_raw(&raw).unwrap();
        let r = b.receive(Time(5), 0, &d);
        assert!(r.peer_restarted);
        assert_eq!(r.payloads, vec![Bytes::from_static(b"fresh")]);
        // A late datagram of the old incarnation is stale.
        a.push(Bytes::from_static(b"late"));
        let raw = a.poll_datagram(Time(6), false, 0).unwrap();
        let (d, _) = Datagram::decode_raw(&raw).unwrap();
        assert!(b.receive(Time(6), 0, &d).payloads.is_empty());
        assert_eq!(b.stats.stale, 1);
    }
}
