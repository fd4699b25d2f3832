//! The tokio side of a server: one UDP socket for clients and peers, the
//! sans-IO [`Replica`] for ordering and [`Sessions`] for clients. Everything
//! runs on one task: no locks, and batches of datagrams are handled before
//! anything is flushed, so server-to-server packets get batched under load.

use crate::admission::FairAdmission;
use crate::config::ClusterConfig;
use crate::guard::{ErrorLimiter, ErrorLimits};
use crate::session::{MAX_LINE, Outcome, SessionLimits, SessionPolicy, SessionStats, Sessions};
use crate::udp::{RECV_BATCH, RecvBatch, SendQueue};
use bytes::Bytes;
use orderings::replica::{Replica, ReplicaConfig, ReplicaStats};
use orderings::{ServerId, StrategyContext, StrategySpec, Time};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Receive buffer we ask the kernel for: bursts must not be dropped.
pub const RECV_BUFFER: usize = 8 * 1024 * 1024;
pub const SEND_BUFFER: usize = 4 * 1024 * 1024;
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
    /// Refused posts not answered (a refused client is told at most every
    /// 250 ms).
    pub unanswered_refusals: u64,
    /// ICMP unreachable errors for peer (server) addresses.
    pub unreachable_peers: u64,
    /// ICMP errors for addresses with no session (or not unreachable).
    pub icmp_other: u64,
    pub sessions: SessionStats,
    pub replica: ReplicaStats,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Binds a UDP socket with large kernel buffers. Returns the socket and the
/// receive buffer size the kernel granted.
pub fn bind_socket(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    grow_buffer(&sock, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, RECV_BUFFER);
    grow_buffer(&sock, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, SEND_BUFFER);
    sock.set_nonblocking(true)?;
    // ICMP port/host unreachable for clients end their sessions (see
    // `Server::handle_icmp`).
    crate::udp::enable_recverr(&sock, addr.is_ipv6())?;
    sock.bind(&addr.into())?;
    let granted = sock.recv_buffer_size().unwrap_or(0);
    Ok((sock.into(), granted))
}

/// Asks for `size`; when the system limit caps it and we are privileged, the
/// FORCE variant gets past the cap.
fn grow_buffer(sock: &socket2::Socket, opt: libc::c_int, force: libc::c_int, size: usize) {
    use std::os::fd::AsRawFd;
    let set = |o: libc::c_int| {
        let v = size as libc::c_int;
        // SAFETY: setsockopt on a valid fd with a pointer to a live c_int.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                o,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(force) != 0 {
        let _ = set(opt);
    }
}

struct Server {
    socket: UdpSocket,
    replica: Replica,
    sessions: Sessions,
    peers: HashMap<SocketAddr, ServerId>,
    /// Every configured server address (bind and forwarding, ours too).
    server_addrs: HashSet<SocketAddr>,
    errors: ErrorLimiter,
    forward: Vec<SocketAddr>,
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
    /// `len` exceeds what a receive slot keeps).
    fn handle(&mut self, from: SocketAddr, data: &[u8], len: usize) {
        if let Some(&peer) = self.peers.get(&from) {
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
            let result = if len > data.len() {
                Err(orderings::WireError::OutOfRange("datagram length"))
            } else {
                self.replica.handle_datagram(now, peer, data)
            };
            if let Err(e) = result {
                self.stats.bad_peer_datagrams += 1;
                tracing::debug!("dropped a bad datagram from {peer} ({from}): {e}");
            }
            return;
        }
        // Never a client: our own address, any server's address (a forged
        // source, or a server's reply), or a source no client can have.
        if self.server_addrs.contains(&from) {
            self.stats.dropped_from_server_addresses += 1;
            tracing::debug!("dropped a datagram from server address {from}");
            return;
        }
        if !plausible_client(from) {
            self.stats.dropped_bad_source += 1;
            return;
        }
        self.stats.client_datagrams += 1;
        // A chat line from a client over its fair share is refused before
        // anything is formatted or ordered: a flood costs a lookup each.
        if len <= MAX_LINE
            && data.first() != Some(&b'/')
            && self.sessions.room_of(from).is_some()
            && let Err(refusal) = self.admission.check(
                from,
                || self.replica.outstanding(),
                self.replica.window(),
                self.backed_up,
                self.now().as_micros(),
            )
        {
            let now = self.now();
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
        let now = self.now();
        let outcome = if len > MAX_LINE {
            self.sessions.advance(now.0);
            self.sessions.touch(from, len, data);
            Outcome {
                reply: Some(
                    format!("-ERR Message too long ({len} bytes; at most {MAX_LINE})").into_bytes(),
                ),
                client: None,
                ..Outcome::default()
            }
        } else {
            self.sessions.handle_at(now.0, from, data)
        };
        if outcome.reply.is_none()
            && outcome.post.is_none()
            && !outcome.silenced
            && let Some(client) = outcome.client
        {
            tracing::info!("Client {client} ({from}) quits");
        }
        if let Some((room, line)) = outcome.post {
            let client = outcome.client.unwrap_or(0);
            tracing::info!(
                "Client {client} posts \"{}\" to chat room #{room}",
                crate::verbose::shown(data)
            );
            match self.replica.post(now, room, line) {
                Ok(id) => self.admission.admitted(from, id),
                Err(e) => {
                    self.stats.refused_posts += 1;
                    if self.admission.tell_refused(from, now.as_micros()) {
                        self.reply(from, Bytes::from(format!("-ERR {e}")));
                    }
                }
            }
        }
        if let Some(reply) = outcome.reply {
            tracing::info!(
                "Client {} <- \"{}\"",
                outcome.client.unwrap_or(0),
                crate::verbose::shown(&reply)
            );
            self.reply(from, Bytes::from(reply));
        }
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
            } else if self.server_addrs.contains(&e.addr) {
                self.stats.unreachable_peers += 1;
            } else if self.sessions.unreachable(e.addr) {
                tracing::info!("Client {} is unreachable (ICMP); session ended", e.addr);
            } else {
                self.stats.icmp_other += 1;
            }
        }
    }

    /// Sends what is queued, then acts on the ICMP errors it caused.
    async fn send_out(&mut self) {
        let r = self.out.flush(&self.socket).await;
        self.stats.failed_sends += r.failed;
        self.stats.dropped_sends += r.dropped;
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
    /// CPU between polls instead of sleeping in epoll: the next hop of an
    /// agreement round usually arrives within tens of microseconds, and a
    /// sleeping process pays a scheduler wake-up for it. Bounded, so the
    /// main loop (timers, shutdown) runs at least every few milliseconds.
    async fn busy_poll(&mut self, batch: &mut RecvBatch, window: std::time::Duration) {
        let start = Instant::now();
        let mut until = start + window;
        loop {
            let now = Instant::now();
            if now >= until || now.duration_since(start) > std::time::Duration::from_millis(5) {
                return;
            }
            if self.replica.poll_timeout().is_some_and(|t| t <= self.now()) {
                return;
            }
            if self.drain(batch) > 0 {
                self.flush().await;
                until = Instant::now() + window;
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Queues what the replica wants sent and delivers what it has ordered,
    /// then sends it all in batches.
    async fn flush(&mut self) {
        let now = self.now();
        while let Some(t) = self.replica.poll_transmit(now) {
            let to = self.forward[t.to.index()];
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
                self.send_out().await;
            }
        }
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
                self.send_out().await;
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
            self.send_out().await;
        }
    }
}

/// Runs a server on `socket` until `shutdown` completes; returns its counters.
pub async fn run(
    socket: UdpSocket,
    setup: ServerSetup,
    shutdown: impl Future<Output = ()>,
) -> Result<ServerStats, ServerError> {
    let servers = setup.cluster.servers.len();
    let mut rcfg = ReplicaConfig::new(setup.me, servers, setup.incarnation);
    rcfg.key = setup.key;
    rcfg.window = setup.window.max(1);
    rcfg.link.max_incarnation_ahead_us = setup.max_clock_skew_us;
    let strategy = (setup.strategy.build)(&StrategyContext {
        me: setup.me,
        servers,
        incarnation: setup.incarnation,
    });
    let peers = setup
        .cluster
        .servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != setup.me.index())
        .map(|(i, s)| (s.forward, ServerId(i as u16)))
        .collect();
    let server_addrs = setup
        .cluster
        .servers
        .iter()
        .flat_map(|s| [s.forward, s.bind])
        .collect();
    let mut server = Server {
        socket,
        replica: Replica::new(rcfg, strategy),
        sessions: Sessions::with_policy(
            SessionLimits {
                rooms: setup.rooms,
                max_clients: setup.max_clients,
            },
            setup.session_policy.clone(),
        ),
        peers,
        server_addrs,
        errors: ErrorLimiter::new(setup.error_limits),
        forward: setup.cluster.servers.iter().map(|s| s.forward).collect(),
        epoch: Instant::now(),
        stats: ServerStats::default(),
        held_reported: (0, 0),
        out: SendQueue::default(),
        admission: FairAdmission::default(),
        backed_up: false,
    };
    let mut batch = RecvBatch::new();
    let busy_poll = std::time::Duration::from_micros(setup.busy_poll_us);
    tokio::pin!(shutdown);
    // Announce ourselves (heartbeats carry our incarnation).
    server.flush().await;
    loop {
        // Wake for the replica's timers and for the next session expiry.
        let wake = match (
            server.replica.poll_timeout().map(|t| t.0),
            server.sessions.next_expiry(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep_until = wake.map(|t| server.epoch + std::time::Duration::from_micros(t));
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = server.socket.readable() => {
                r?;
                server.drain(&mut batch);
            }
            // ICMP errors queued on the socket (IP_RECVERR).
            r = server.socket.ready(Interest::ERROR) => {
                r?;
                let out = &mut server.out;
                let _ = server.socket.try_io(Interest::ERROR, || {
                    let (_, empty) = crate::udp::drain_errqueue(&server.socket, &mut out.icmp, 4096);
                    if empty {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                server.handle_icmp();
            }
            _ = async {
                match sleep_until {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = server.now();
                if server.replica.poll_timeout().is_some_and(|t| t <= now) {
                    server.replica.handle_timeout(now);
                }
                server.expire_sessions();
            }
        }
        server.flush().await;
        if !busy_poll.is_zero() {
            server.busy_poll(&mut batch, busy_poll).await;
        }
    }
    server.stats.replica = server.replica.stats();
    server.stats.unanswered_refusals = server.admission.silent_refusals;
    server.stats.sessions = server.sessions.stats().clone();
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
