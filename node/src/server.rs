//! The server's loop: one UDP socket for clients and peers, the sans-IO
//! [`Replica`] for ordering and [`Sessions`] for clients. Everything runs
//! on one thread that sleeps in `ppoll` on the socket and the
//! [`ControlInbox`] (see [`crate::control`] for why it is not a tokio
//! task): no locks, and batches of datagrams are handled before anything
//! is flushed, so server-to-server packets get batched under load. Signals,
//! metrics scrapes and host-name lookups live on a tokio runtime of their
//! own and reach the loop as [`Control`] messages.

use crate::admission::FairAdmission;
use crate::command::{ClientCommand, CommandError, MAX_LINE};
use crate::config::ClusterConfig;
use crate::control::{Control, ControlInbox};
use crate::guard::{ErrorLimiter, ErrorLimits};
use crate::peers::PeerBook;
use crate::session::{Outcome, SessionLimits, SessionPolicy, SessionStats, Sessions};
use crate::udp::{RECV_BATCH, RecvBatch, SendQueue};
use bytes::Bytes;
use orderings::{
    Replica, ReplicaConfig, ReplicaEvent, ReplicaStats, RoomId, ServerId, StrategySpec, Time,
};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// `recvmmsg` calls per wake-up before flushing (bounds latency under load).
const BATCHES_PER_WAKE: usize = 4;

/// Everything a server needs besides its socket.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    pub cluster: ClusterConfig,
    /// Zero-based index of this server.
    pub me: ServerId,
    pub strategy: &'static StrategySpec,
    pub rooms: u32,
    pub max_clients: usize,
    pub incarnation: u64,
    pub key: Option<[u8; 32]>,
    /// Keep polling this long after activity before sleeping (0 = never).
    pub busy_poll_us: u64,
    /// The replica's admission window (messages of ours not yet delivered
    /// everywhere).
    pub window: usize,
    /// How far in the future a peer's incarnation (start time) may lie.
    pub max_clock_skew_us: u64,
    /// Failure detection and quorum.
    pub membership: orderings::MembershipConfig,
    /// Session expiry, address validation (see [`SessionPolicy`]).
    pub session_policy: SessionPolicy,
    /// Rate limits of `-ERR` replies.
    pub error_limits: ErrorLimits,
}

/// Counters reported when a server stops (encoded as
/// [`crate::stats::ServerCounters`]).
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    pub client_datagrams: u64,
    pub peer_datagrams: u64,
    pub bad_peer_datagrams: u64,
    pub refused_posts: u64,
    /// Datagrams the kernel refused to send (not counting full buffers).
    pub failed_sends: u64,
    /// Datagrams from a configured server address (ours, or any server's
    /// bind or forwarding address) that were not valid peer traffic:
    /// dropped, never answered as client lines.
    pub dropped_from_server_addresses: u64,
    /// Datagrams from a source no client can have (unspecified address,
    /// port 0, multicast, broadcast): dropped.
    pub dropped_bad_source: u64,
    /// `-ERR` replies not sent because of the per-address or the
    /// server-wide rate limit.
    pub suppressed_error_replies: u64,
    /// Datagrams dropped because the send buffer stayed full.
    pub dropped_sends: u64,
    /// Datagrams sent in segmented runs (UDP segmentation offload).
    pub segmented_sends: u64,
    /// Refused posts not answered (a refused client is told at most every
    /// 250 ms).
    pub unanswered_refusals: u64,
    /// ICMP unreachable errors for peer (server) addresses.
    pub unreachable_peers: u64,
    /// ICMP errors for addresses with no session (or not unreachable).
    pub icmp_other: u64,
    /// With a secret: datagrams from an address that is no peer's which
    /// look like server datagrams but do not authenticate (forged, or a
    /// server with another secret). Never taken for a peer's; handled as
    /// client lines, as without a secret.
    pub unauthenticated_peer_claims: u64,
    /// Times a peer's address changed (resolved again, or learned from an
    /// authenticated datagram).
    pub peer_address_changes: u64,
    pub sessions: SessionStats,
    pub replica: ReplicaStats,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Where a datagram comes from, decided by its source address (with a
/// secret, an authenticated datagram is its sender's whatever its source:
/// see [`Server::handle`]).
enum Source {
    /// A peer's advertised (forwarding) address: server-to-server traffic.
    Peer(ServerId),
    /// Any other plausible address: a client.
    Client,
    /// A configured server address that is no peer's forwarding address
    /// (ours, or a bind address): a forged source or a server's reply, never
    /// a client. Dropped.
    ServerAddress,
    /// A source no client can have (unspecified address, port 0, multicast,
    /// broadcast). Dropped.
    Implausible,
}

struct Server {
    socket: UdpSocket,
    replica: Replica,
    sessions: Sessions,
    /// The peers' addresses, updated while running.
    book: PeerBook,
    /// Signals, scrapes and finished host-name lookups arrive here.
    inbox: ControlInbox,
    /// Where host-name lookups run (they report to `inbox`).
    runtime: tokio::runtime::Handle,
    /// Whether any peer is named by host name (lookups to schedule).
    named_peers: bool,
    /// No lookup scheduling before this time (µs since the epoch).
    next_lookup_check: u64,
    /// The cluster has a secret: peers are identified by their
    /// authenticated server index.
    keyed: bool,
    errors: ErrorLimiter,
    epoch: Instant,
    stats: ServerStats,
    held_reported: (usize, usize),
    out: SendQueue,
    admission: FairAdmission,
    /// The last drain read full batches without emptying the socket.
    backed_up: bool,
}

impl Server {
    fn now(&self) -> Time {
        Time(self.epoch.elapsed().as_micros() as u64)
    }

    /// Handles one datagram of `len` bytes (`data` may be cut short when
    /// `len` exceeds what a receive slot keeps), by its source.
    fn handle(&mut self, from: SocketAddr, data: &[u8], len: usize) {
        // With a secret, a datagram that authenticates is its sender's,
        // by the index inside the MAC, from any address (a peer that came
        // back with a new one is found at once).
        // Only what starts like a server datagram is opened (stuffing
        // leaves the magic byte alone): client lines cost a compare.
        if self.keyed && len <= data.len() && data.first() == Some(&orderings::MAGIC) {
            let now = self.now();
            if let Some((peer, result)) = self.replica.handle_authenticated_datagram(now, data) {
                self.handle_peer(peer, from, data, len, Some(result));
                return;
            }
            if self.book.peer_at(from).is_none() && !self.book.is_server_address(from) {
                self.stats.unauthenticated_peer_claims += 1;
                tracing::debug!("{from} sent a server datagram that does not authenticate");
            }
        }
        match self.source(from) {
            Source::Peer(peer) => self.handle_peer(peer, from, data, len, None),
            Source::Client => self.handle_client(from, data, len),
            Source::ServerAddress => {
                self.stats.dropped_from_server_addresses += 1;
                tracing::debug!("dropped a datagram from server address {from}");
            }
            Source::Implausible => self.stats.dropped_bad_source += 1,
        }
    }

    fn source(&self, from: SocketAddr) -> Source {
        if let Some(peer) = self.book.peer_at(from) {
            Source::Peer(peer)
        } else if self.book.is_server_address(from) {
            Source::ServerAddress
        } else if !plausible_client(from) {
            Source::Implausible
        } else {
            Source::Client
        }
    }

    /// A datagram from `peer` (at its address `from`) goes to the replica;
    /// `handled` is the replica's result when it took it already (an
    /// authenticated datagram).
    fn handle_peer(
        &mut self,
        peer: ServerId,
        from: SocketAddr,
        data: &[u8],
        len: usize,
        handled: Option<Result<(), orderings::WireError>>,
    ) {
        self.stats.peer_datagrams += 1;
        if tracing::enabled!(tracing::Level::INFO) {
            match crate::verbose::payloads_in(data) {
                Some(0) => tracing::debug!(
                    "Received {len} bytes from {peer} (no payload: heartbeat or acknowledgement)"
                ),
                Some(n) => tracing::info!("Received {len} bytes from {peer} ({n} payload(s))"),
                None => tracing::debug!("Received {len} bytes from {peer} (undecodable)"),
            }
        }
        let now = self.now();
        let result = match handled {
            Some(r) => r,
            None if len > data.len() => Err(orderings::WireError::OutOfRange("datagram length")),
            None => self.replica.handle_datagram(now, peer, data),
        };
        match result {
            Ok(()) => {
                if let Some(m) = self.book.heard(peer, from, now.0) {
                    self.moved(m, "authenticated datagram");
                }
            }
            Err(e) => {
                self.stats.bad_peer_datagrams += 1;
                tracing::debug!("dropped a bad datagram from {peer} ({from}): {e}");
            }
        }
    }

    /// Logs and counts a peer's new address.
    fn moved(&mut self, m: crate::peers::Moved, how: &str) {
        self.stats.peer_address_changes += 1;
        match m.from {
            Some(old) => tracing::warn!("{} is now at {} (was {old}; {how})", m.peer, m.to),
            None => tracing::warn!("{} is at {} ({how})", m.peer, m.to),
        }
    }

    /// Starts the host-name lookups that are due (unresolved peers, silent
    /// named peers), each in a task of its own: the loop never waits for
    /// DNS.
    fn start_lookups(&mut self) {
        let now = self.now().0;
        if !self.named_peers || now < self.next_lookup_check {
            return;
        }
        self.next_lookup_check = now + 100_000;
        for (peer, name) in self.book.due_lookups(now) {
            let tx = self.inbox.sender();
            self.runtime.spawn(async move {
                let addr = match tokio::net::lookup_host(name.as_str()).await {
                    Ok(found) => crate::config::pick_address(&found.collect::<Vec<_>>())
                        .filter(|a| plausible_client(*a)),
                    Err(_) => None,
                };
                // The server may be gone: nothing to tell then.
                tx.send(Control::Resolved(peer, addr));
            });
        }
    }

    /// A lookup of `peer`'s name ended.
    fn resolved(&mut self, peer: ServerId, addr: Option<SocketAddr>) {
        let now = self.now().0;
        let (moved, first_failure) = self.book.resolved(peer, addr, now);
        if let Some(m) = moved {
            self.moved(m, "name resolved again");
        }
        if first_failure {
            tracing::warn!("{peer}'s name does not resolve now; keeping its last address");
        }
    }

    /// A datagram from a client: parsed, checked against the client's fair
    /// share when it is a chat line, applied to its session; then the reply
    /// is sent or the post ordered.
    fn handle_client(&mut self, from: SocketAddr, data: &[u8], len: usize) {
        self.stats.client_datagrams += 1;
        let now = self.now();
        if len > MAX_LINE {
            // Possibly cut short: answered from its length alone.
            self.sessions.advance(now.0);
            self.sessions.touch(from, len, data);
            self.reply_to_client(None, from, CommandError::TooLong(len).reply());
            return;
        }
        let command = ClientCommand::parse(data, self.sessions.rooms());
        // A chat line from a client over its fair share is refused before
        // anything is formatted or ordered: a flood costs a lookup each.
        if let Ok(ClientCommand::Chat(_)) = command
            && self.sessions.room_of(from).is_some()
            && let Err(refusal) = self.admission.check(
                from,
                || self.replica.outstanding(),
                self.replica.window(),
                self.backed_up,
                now.as_micros(),
            )
        {
            self.stats.refused_posts += 1;
            // Heavy clients wait from half the window on; a lost delivery
            // report may keep it there: ask for one (rate-limited by the
            // links).
            self.replica.request_reports(now, self.replica.window() / 2);
            if self.admission.tell_refused(from, now.as_micros()) {
                self.reply(from, Bytes::from(format!("-ERR {refusal}")));
            }
            return;
        }
        match self.sessions.apply(now.0, from, data, command) {
            Outcome::Reply { client, reply } => self.reply_to_client(client, from, reply),
            Outcome::Post { client, room, line } => self.post(now, from, client, room, data, line),
            Outcome::Quit {
                client: Some(client),
            } => tracing::info!("Client {client} ({from}) quits"),
            Outcome::Quit { client: None } | Outcome::Silenced { .. } => {}
        }
    }

    /// Hands a client's chat line to the replica; a refusal is answered
    /// (rate-limited per client).
    /// The `-v` line names the message's id (`as S01#...`), the one its
    /// `Delivered` lines carry, so that `launcher trace` and the console can
    /// join a post to its deliveries.
    fn post(
        &mut self,
        now: Time,
        from: SocketAddr,
        client: u64,
        room: RoomId,
        data: &[u8],
        line: Bytes,
    ) {
        let result = self.replica.post(now, room, line);
        if tracing::enabled!(tracing::Level::INFO) {
            let text = crate::verbose::shown(data);
            match &result {
                Ok(id) => {
                    tracing::info!("Client {client} posts \"{text}\" to chat room #{room} as {id}")
                }
                Err(e) => tracing::info!(
                    "Client {client} posts \"{text}\" to chat room #{room}, refused: {e}"
                ),
            }
        }
        match result {
            Ok(id) => self.admission.admitted(from, id),
            Err(e) => {
                self.stats.refused_posts += 1;
                if self.admission.tell_refused(from, now.as_micros()) {
                    self.reply(from, Bytes::from(format!("-ERR {e}")));
                }
            }
        }
    }

    /// Logs a reply to a command (`client` is the session's number, 0 when
    /// there is none) and sends it.
    fn reply_to_client(&mut self, client: Option<u64>, to: SocketAddr, reply: Bytes) {
        tracing::info!(
            "Client {} <- \"{}\"",
            client.unwrap_or(0),
            crate::verbose::shown(&reply)
        );
        self.reply(to, reply);
    }

    /// Queues a reply to a client datagram. `-ERR` replies pass the rate
    /// limits (per address and server-wide); every reply is charged to the
    /// address's amplification budget (replies are one per datagram
    /// received, so they are sent even over the cap).
    fn reply(&mut self, to: SocketAddr, reply: Bytes) {
        if reply.starts_with(b"-ERR") && !self.errors.allow(to, self.now().0) {
            self.stats.suppressed_error_replies += 1;
            return;
        }
        self.sessions.charge_reply(to, reply.len());
        self.out.push(to, reply);
    }

    /// Reads the socket's error queue: ICMP unreachable for a client ends
    /// its session (it leaves its room); for a server it is only counted.
    fn handle_icmp(&mut self) {
        if self.out.icmp.is_empty() {
            let (_, empty) = self.out.collect_icmp(&self.socket);
            if !empty {
                // More than one batch waits; the next call takes the rest.
                tracing::debug!("ICMP error queue: more entries pending");
            }
        }
        for e in std::mem::take(&mut self.out.icmp) {
            if !e.is_unreachable() {
                self.stats.icmp_other += 1;
            } else if self.book.is_server_address(e.addr) {
                self.stats.unreachable_peers += 1;
            } else if self.sessions.unreachable(e.addr) {
                tracing::info!("Client {} is unreachable (ICMP); session ended", e.addr);
            } else {
                self.stats.icmp_other += 1;
            }
        }
    }

    /// Sends what is queued, then acts on the ICMP errors it caused.
    fn send_out(&mut self) {
        let r = self.out.flush(&self.socket);
        self.stats.failed_sends += r.failed;
        self.stats.dropped_sends += r.dropped;
        self.stats.segmented_sends += r.segmented;
        // Read the error queue after every flush: its entries (each with a
        // copy of the refused datagram) count against the receive buffer,
        // and a room of dead members would fill it and starve the socket.
        self.handle_icmp();
    }

    /// Frees the sessions idle for the idle time.
    fn expire_sessions(&mut self) {
        let now = self.now().0;
        if self.sessions.next_expiry().is_some_and(|t| t <= now) {
            let n = self.sessions.expire(now);
            if n > 0 {
                tracing::info!("{n} idle session(s) expired");
            }
        }
    }

    /// Reads and handles what the socket holds (bounded, so that timers
    /// and flushes run). Returns how many datagrams were handled.
    fn drain(&mut self, batch: &mut RecvBatch) -> usize {
        let mut handled = 0;
        for _ in 0..BATCHES_PER_WAKE {
            match batch.recv(&self.socket) {
                Ok(n) => {
                    for i in 0..n {
                        let (from, len) = batch.got[i];
                        self.handle(from, batch.data(i), len);
                    }
                    handled += n;
                    if n < RECV_BATCH {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A pending ICMP error (IP_RECVERR) surfaces here: the error
                // queue says which address failed. Not fatal.
                Err(e) => {
                    tracing::debug!("recv: {e}");
                    self.handle_icmp();
                    if !crate::udp::is_async_icmp_error(&e) {
                        break;
                    }
                }
            }
        }
        // Full batches all the way: the socket holds more than we read per
        // wake-up (see `admission`).
        self.backed_up = handled >= BATCHES_PER_WAKE * RECV_BATCH;
        handled
    }

    /// After activity, keeps polling the socket for `window`, yielding the
    /// CPU between polls instead of sleeping in ppoll: the next hop of an
    /// agreement round usually arrives within tens of microseconds, and a
    /// sleeping process pays a scheduler wake-up for it. Bounded, so the
    /// main loop (timers, shutdown) runs at least every few milliseconds.
    fn busy_poll(&mut self, batch: &mut RecvBatch, window: Duration) {
        let start = Instant::now();
        let mut until = start + window;
        loop {
            let now = Instant::now();
            if now >= until || now.duration_since(start) > Duration::from_millis(5) {
                return;
            }
            if self.replica.poll_timeout().is_some_and(|t| t <= self.now()) {
                return;
            }
            if self.drain(batch) > 0 {
                self.flush();
                until = Instant::now() + window;
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Logs what the replica did on its own; a message posted again under a
    /// new id keeps its client's share of the window.
    fn note_replica_event(&mut self, e: ReplicaEvent) {
        match e {
            ReplicaEvent::Excluded {
                server,
                members,
                by,
            } => match by {
                Some(by) => tracing::info!(
                    "View change: {server} left the view ({by} excluded it); {members} member(s)"
                ),
                None => tracing::info!(
                    "View change: {server} suspected (silent) and left the view; {members} member(s)"
                ),
            },
            ReplicaEvent::Admitted { server, members } => {
                tracing::info!("View change: {server} joined the view; {members} member(s)");
            }
            ReplicaEvent::Rejoined { by, incarnation } => {
                self.admission.rejoined();
                tracing::warn!(
                    "{} was excluded by {by}: rejoining as incarnation {incarnation}",
                    self.replica.me()
                );
            }
            ReplicaEvent::CutOff { heard, quorum } => tracing::warn!(
                "Cut off: hears {heard} of the {quorum} server(s) a quorum needs; total messages wait, nobody is excluded"
            ),
            ReplicaEvent::QuorumRegained { heard } => tracing::info!(
                "Hears a quorum again ({heard} server(s)); silent members get a full suspicion time from now"
            ),
            ReplicaEvent::Discarded { id } => {
                self.admission.delivered(id);
                tracing::info!(
                    "{id} was delivered by the others before this server rejoined (from its previous incarnation): not posted again"
                );
            }
            ReplicaEvent::Reposted { old, new } => {
                self.admission.renamed(old, new);
                tracing::info!("Posted {old} again as {new} after rejoining");
            }
        }
    }

    /// Copies the replica's and the sessions' counters into `stats`.
    fn fill_stats(&mut self) {
        self.stats.replica = self.replica.stats();
        self.stats.unanswered_refusals = self.admission.silent_refusals;
        self.stats.sessions = self.sessions.stats().clone();
    }

    /// Publishes a metrics snapshot: the same counters as the stopped line.
    fn publish(&mut self, metrics: Option<&crate::metrics::MetricsHandle>) {
        let Some(m) = metrics else { return };
        self.fill_stats();
        let rooms = self.sessions.rooms();
        m.publish(crate::metrics::Snapshot {
            counters: crate::stats::ServerCounters::from(&self.stats),
            clients: self.sessions.len() as u64,
            room_members: (1..=rooms)
                .map(|r| (r, self.sessions.members(r).len() as u64))
                .collect(),
        });
    }

    /// Queues what the replica wants sent and delivers what it has ordered,
    /// then sends it all in batches.
    fn flush(&mut self) {
        let now = self.now();
        while let Some(t) = self.replica.poll_transmit(now) {
            // A peer whose name has not resolved yet: the link sends again.
            let Some(to) = self.book.addr_of(t.to) else {
                continue;
            };
            if tracing::enabled!(tracing::Level::INFO) {
                match crate::verbose::payloads_in(&t.payload) {
                    Some(0) => tracing::debug!(
                        "Sent {} bytes to {} (no payload: heartbeat or acknowledgement)",
                        t.payload.len(),
                        t.to
                    ),
                    Some(n) => {
                        tracing::info!(
                            "Sent {} bytes to {} ({n} payload(s))",
                            t.payload.len(),
                            t.to
                        )
                    }
                    None => tracing::debug!("Sent {} bytes to {}", t.payload.len(), t.to),
                }
            }
            self.out.push(to, Bytes::from(t.payload));
            if self.out.len() >= SendQueue::FLUSH_AT {
                self.send_out();
            }
        }
        while let Some(e) = self.replica.poll_event() {
            self.note_replica_event(e);
        }
        self.admission.forget_stale();
        while let Some(d) = self.replica.poll_delivery() {
            if d.id.origin == self.replica.me() {
                self.admission.delivered(d.id);
            }
            tracing::info!(
                "Delivered {} to {} member(s) of chat room #{}",
                d.id,
                self.sessions.members(d.room).len(),
                d.room
            );
            let out = &mut self.out;
            let line = &d.line;
            self.sessions.deliver(d.room, line.len(), |m, notice| {
                if let Some(n) = notice {
                    out.push(m, n);
                }
                out.push(m, line.clone());
            });
            // Bounded memory: a room of thousands of members and a burst of
            // deliveries never queue more than about FLUSH_AT datagrams.
            if self.out.len() >= SendQueue::FLUSH_AT {
                self.send_out();
            }
        }
        if tracing::enabled!(tracing::Level::INFO) {
            let s = self.replica.stats().strategy;
            if (s.held_back, s.in_flight) != self.held_reported {
                self.held_reported = (s.held_back, s.in_flight);
                tracing::info!(
                    "Holdback queue: {} held back, {} of ours awaiting agreement",
                    s.held_back,
                    s.in_flight
                );
            }
        }
        if !self.out.is_empty() {
            self.send_out();
        }
    }
}

/// Runs a server on `socket` (non-blocking) until `inbox` says
/// [`Control::Shutdown`]; returns its counters. Host-name lookups run on
/// `runtime`. With `metrics`, publishes a snapshot every
/// [`crate::metrics::PUBLISH_EVERY`] and whenever a scrape asks
/// ([`Control::MetricsWanted`]).
pub fn run(
    socket: UdpSocket,
    setup: ServerSetup,
    inbox: ControlInbox,
    runtime: tokio::runtime::Handle,
    metrics: Option<crate::metrics::MetricsHandle>,
) -> Result<ServerStats, ServerError> {
    let servers = setup.cluster.servers.len();
    let mut rcfg = ReplicaConfig::new(setup.me, servers, setup.incarnation);
    rcfg.key = setup.key;
    rcfg.window = setup.window.max(1);
    rcfg.link.max_incarnation_ahead_us = setup.max_clock_skew_us;
    rcfg.membership = setup.membership.clone();
    let book = PeerBook::new(
        setup.me,
        setup.cluster.servers.iter().map(|s| {
            (
                s.forward_resolved().then_some(s.forward),
                s.forward_name.clone(),
                s.bind,
            )
        }),
        0,
    );
    for (peer, name) in book.unresolved() {
        tracing::warn!("{peer}'s name {name} does not resolve yet; retrying every second");
    }
    let named_peers = setup
        .cluster
        .servers
        .iter()
        .enumerate()
        .any(|(i, s)| i != setup.me.index() && s.forward_name.is_some());
    let mut server = Server {
        socket,
        replica: Replica::with_builder(rcfg, setup.strategy.build),
        sessions: Sessions::with_policy(
            SessionLimits {
                rooms: setup.rooms,
                max_clients: setup.max_clients,
            },
            setup.session_policy.clone(),
        ),
        book,
        inbox,
        runtime,
        named_peers,
        next_lookup_check: 0,
        keyed: setup.key.is_some(),
        errors: ErrorLimiter::new(setup.error_limits),
        epoch: Instant::now(),
        stats: ServerStats::default(),
        held_reported: (0, 0),
        out: SendQueue::default(),
        admission: FairAdmission::default(),
        backed_up: false,
    };
    let mut batch = RecvBatch::new();
    let busy_poll = Duration::from_micros(setup.busy_poll_us);
    // Metrics: a snapshot now and then, never per message.
    let mut last_publish = Instant::now();
    let mut next_publish = last_publish + crate::metrics::PUBLISH_EVERY;
    // Announce ourselves (heartbeats carry our incarnation).
    server.flush();
    'serve: loop {
        // Wake for the replica's timers, the next session expiry and the
        // next snapshot.
        let wake = match (
            server.replica.poll_timeout().map(|t| t.0),
            server.sessions.next_expiry(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut sleep_until = wake.map(|t| server.epoch + Duration::from_micros(t));
        if metrics.is_some() {
            sleep_until = Some(sleep_until.map_or(next_publish, |t| t.min(next_publish)));
        }
        let timeout = sleep_until.map(|t| t.saturating_duration_since(Instant::now()));
        let ready = crate::control::wait(&server.socket, &server.inbox, timeout)?;
        if ready.control {
            for c in server.inbox.take() {
                match c {
                    Control::Shutdown => break 'serve,
                    Control::MetricsWanted => {
                        // At most one snapshot per gap: a later ask is
                        // answered at the gap's end.
                        let next = last_publish + crate::metrics::MIN_PUBLISH_GAP;
                        next_publish = next_publish.min(next);
                    }
                    Control::Resolved(peer, addr) => server.resolved(peer, addr),
                }
            }
        }
        if ready.readable {
            server.drain(&mut batch);
        }
        // ICMP errors queued on the socket (IP_RECVERR).
        if ready.error {
            let out = &mut server.out;
            let mut read = 0;
            // Bounded: the loop comes back for the rest.
            for _ in 0..4 {
                let (n, empty) = crate::udp::drain_errqueue(&server.socket, &mut out.icmp, 4096);
                read += n;
                if empty {
                    break;
                }
            }
            if read == 0 {
                // A pending error with nothing queued: take it, or every
                // wait would return at once.
                if let Ok(Some(e)) = server.socket.take_error() {
                    tracing::debug!("socket error: {e}");
                }
            }
            server.handle_icmp();
        }
        let now = server.now();
        if server.replica.poll_timeout().is_some_and(|t| t <= now) {
            server.replica.handle_timeout(now);
        }
        server.expire_sessions();
        if metrics.is_some() && Instant::now() >= next_publish {
            server.publish(metrics.as_ref());
            last_publish = Instant::now();
            next_publish = last_publish + crate::metrics::PUBLISH_EVERY;
        }
        server.start_lookups();
        server.flush();
        if !busy_poll.is_zero() {
            server.busy_poll(&mut batch, busy_poll);
        }
    }
    server.fill_stats();
    // The last snapshot is the stopped line's counters.
    server.publish(metrics.as_ref());
    Ok(server.stats)
}

/// Whether `a` could be a client's source address at all.
fn plausible_client(a: SocketAddr) -> bool {
    let ip = a.ip();
    a.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast())
}
