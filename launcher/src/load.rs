//! The client workload `launcher stress` and `launcher bench` drive: C UDP
//! clients on one single-threaded tokio runtime, joined to G rooms spread
//! over all servers, sending M messages each at a total rate (or as fast as
//! a per-client window of un-echoed messages allows), logging every send and
//! delivery.

use crate::net::bind_udp;
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use testkit::check::{History, MessageId};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Receive buffer of each client socket.
const CLIENT_BUFFER: usize = 8 << 20;
/// How many examples of odd datagrams are kept.
const KEEP_EXAMPLES: usize = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Bind addresses of the servers (clients connect there).
    pub servers: Vec<SocketAddr>,
    pub clients: usize,
    pub rooms: u32,
    /// Messages per client.
    pub messages: u32,
    /// Total messages per second over all clients; 0 = as fast as the window
    /// allows.
    pub rate: f64,
    /// Most un-echoed messages per client.
    pub window: u32,
    /// Pad each message body to this many bytes.
    pub size: usize,
    /// Stop when nothing was sent or received for this long.
    pub quiet: Duration,
    /// Stop at the latest after this long (setup included).
    pub deadline: Duration,
    /// After the last expected delivery, keep listening this long for extra
    /// (duplicate) deliveries.
    pub linger: Duration,
    /// Print a progress line on stderr every second.
    pub progress: bool,
    /// Extra clients in room 1 that send as fast as they can while the
    /// others send (`--flood-clients`): the server must stay fair to the
    /// others.
    pub flood_clients: usize,
    /// Per server (index into `servers`): its clients are exempt (a fault
    /// hits that server during the run): checked as partial with optional
    /// sends, and left out of what the run waits for. Empty: nobody is.
    pub excused: Vec<bool>,
    /// What a fault schedule running beside the load needs (`None`: none).
    pub hooks: Option<LoadHooks>,
    /// Receive runs of deliveries whole (`UDP_GRO`), as a busy client
    /// should: the servers' kernels then queue each segmented run to the
    /// client once instead of once per datagram. `false` (`--no-gro`)
    /// receives one datagram per read, as a client of the spec does.
    pub gro: bool,
}

/// What a fault schedule beside the load hears about it.
#[derive(Debug, Clone, Copy)]
pub enum LoadEvent {
    /// The sending starts now (the origin of the schedule's times).
    Started(std::time::Instant),
    /// The load is over (sent by the caller once [`run_load`] returned).
    Ended,
}

/// The load's side of a fault schedule (`launcher stress --kill-server`).
#[derive(Debug, Clone)]
pub struct LoadHooks {
    /// Gets [`LoadEvent::Started`].
    pub events: std::sync::mpsc::Sender<LoadEvent>,
    /// Per server (index into `servers`), set once that server is gone for
    /// good: its clients stop sending, so the run can still complete.
    pub gone: Arc<Vec<AtomicBool>>,
    /// No stop for quiet before this long after the sending started: a
    /// server stopped until then may hold every delivery back meanwhile.
    pub quiet_not_before: Duration,
}

/// Most messages one flooding client sends (with the run's deadline and
/// the end of the normal clients' sending, the flood's bounds).
pub const FLOOD_MAX_PER_CLIENT: u32 = 2_000_000;

/// A datagram a client gets while it waits for the reply to a setup
/// command (`/nick`, `/join`).
pub enum SetupReply {
    /// An address-confirmation request: send this answer and keep waiting.
    Confirm(Vec<u8>),
    /// The server's answer to a confirmation: keep waiting.
    Confirmed,
    /// A reply line.
    Line(String),
}

impl SetupReply {
    pub fn of(datagram: &[u8]) -> SetupReply {
        if let Some(token) = client::confirm_token(datagram) {
            SetupReply::Confirm(client::confirm_reply(token))
        } else if client::is_confirm_answer(datagram) {
            SetupReply::Confirmed
        } else {
            SetupReply::Line(String::from_utf8_lossy(datagram).into_owned())
        }
    }
}

/// The body of flood message `seq` of flooding client `f`: `F1-000123`.
pub fn flood_body(f: usize, seq: u32) -> String {
    format!("F{f}-{seq:06}")
}

/// Parses a flood delivery `<Ff> Ff-SEQ` into (f, SEQ).
pub fn parse_flood(line: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(line).ok()?;
    let (nick, body) = text.strip_prefix('<')?.split_once("> ")?;
    let f: u32 = nick.strip_prefix('F')?.parse().ok()?;
    let (who, seq) = body.split_once('-')?;
    if who != nick || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((f, seq.parse().ok()?))
}

/// Where client `c` goes: room `c % G + 1` on server `(c / G + c % G) % S`,
/// so that clients are spread evenly over the servers and each room's
/// members sit on consecutive servers (every room spans min(members, S)
/// servers).
pub fn assign(c: usize, servers: usize, rooms: u32) -> (usize, u32) {
    let g = c % rooms as usize;
    let k = c / rooms as usize;
    ((k + g) % servers, g as u32 + 1)
}

/// The body of message `seq` of client `c`: `c12-s3-r2-000042`, padded with
/// dots to `size` bytes.
pub fn body(c: usize, server: usize, room: u32, seq: u32, size: usize) -> String {
    let mut s = format!("c{c}-s{}-r{room}-{seq:06}", server + 1);
    while s.len() < size {
        s.push('.');
    }
    s
}

/// Parses a delivery `<cN> cN-sX-rY-SEQ...` into (N, SEQ).
pub fn parse_delivery(line: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix('<')?;
    let (nick, body) = rest.split_once("> ")?;
    let sender: u32 = nick.strip_prefix('c')?.parse().ok()?;
    let mut fields = body.splitn(4, '-');
    let c = fields.next()?;
    if c != nick {
        return None;
    }
    fields.next()?.strip_prefix('s')?;
    fields.next()?.strip_prefix('r')?;
    let last = fields.next()?;
    let digits = last.split('.').next()?;
    if digits.is_empty() || !last[digits.len()..].bytes().all(|b| b == b'.') {
        return None;
    }
    Some((sender, digits.parse().ok()?))
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Sent { seq: u32, at: u64 },
    Delivered { sender: u32, seq: u32, at: u64 },
    Garbled { at: u64 },
}

/// The messages one member was delivered: a bit per (sender's place in
/// the room, seq) for every message the run can send it, dense and cheap
/// (a hash set of them was a tenth of the tool's time, in cache misses);
/// and a set for anything else, a sender of another room or a seq beyond
/// the run, which only a server's bug delivers, so that it too counts once.
#[derive(Default)]
struct Delivered {
    /// Messages per sender (0: no bits, everything in `other`).
    messages: u32,
    bits: Vec<u64>,
    other: HashSet<(u32, u32)>,
}

impl Delivered {
    /// Most bits a member keeps (1 MiB); a larger run uses the set.
    const MAX_BITS: usize = 1 << 23;

    fn new(members: usize, messages: u32) -> Self {
        let n = members.saturating_mul(messages as usize);
        if n == 0 || n > Self::MAX_BITS {
            return Delivered::default();
        }
        Delivered {
            messages,
            bits: vec![0; n.div_ceil(64)],
            other: HashSet::new(),
        }
    }

    /// Notes message `seq` (1-based) of `sender`, whose place in this
    /// member's room is `place` (`None`: another room); whether it is new.
    fn insert(&mut self, place: Option<usize>, sender: u32, seq: u32) -> bool {
        let bit = place
            .filter(|_| (1..=self.messages).contains(&seq))
            .map(|p| p * self.messages as usize + (seq - 1) as usize)
            .filter(|&i| i / 64 < self.bits.len());
        match bit {
            Some(i) => {
                let (word, mask) = (&mut self.bits[i / 64], 1u64 << (i % 64));
                let new = *word & mask == 0;
                *word |= mask;
                new
            }
            None => self.other.insert((sender, seq)),
        }
    }
}

/// Runs (or datagrams) one read of a client's socket takes at most.
const READ_SLOTS: usize = 4;

struct ClientSt {
    /// A flooding client (ids from `plan.clients` on).
    flood: bool,
    room: u32,
    server: usize,
    sock: Rc<UdpSocket>,
    log: Vec<Ev>,
    sent: u32,
    outstanding: u32,
    /// Send time (µs since start) of message `seq` (1-based) at `seq - 1`.
    sent_at: Vec<u64>,
    /// Every message delivered to this client.
    seen: Delivered,
    /// This client's place among its room's members (0-based).
    place: usize,
}

struct Shared {
    plan: LoadPlan,
    start: Instant,
    clients: RefCell<Vec<ClientSt>>,
    /// Room -> number of members.
    room_size: Vec<u64>,
    notify: Notify,
    sent: Cell<u64>,
    deliveries: Cell<u64>,
    distinct: Cell<u64>,
    first_send: Cell<Option<u64>>,
    last_send: Cell<u64>,
    /// How late the last paced send was against its schedule, up to
    /// [`PACER_TICK`] (µs).
    last_send_late_us: Cell<u64>,
    last_delivery: Cell<u64>,
    last_progress: Cell<Instant>,
    /// When any datagram last arrived (flood included).
    last_any: Cell<Instant>,
    sending_done: Cell<bool>,
    stop: Cell<bool>,
    other: Cell<u64>,
    other_examples: RefCell<Vec<String>>,
    garbled: Cell<u64>,
    garbled_examples: RefCell<Vec<String>>,
    latency: RefCell<Histogram<u64>>,
    /// Send -> the kernel's arrival stamp on the member's socket (µs): the
    /// latency without this tool's own wait to read.
    arrival_latency: RefCell<Histogram<u64>>,
    expected_so_far: Cell<u64>,
    /// Like `expected_so_far` and `distinct`, among clients of servers that
    /// are not excused only: what the run waits for.
    required_expected: Cell<u64>,
    required_distinct: Cell<u64>,
    /// Room -> members on servers that are not excused.
    required_room_size: Vec<u64>,
    /// When the sending started (µs since `start`).
    load_start: Cell<Option<u64>>,
    /// Address-confirmation requests answered (the server asks a new
    /// address to confirm before it sends it much).
    confirmations: Cell<u64>,
    /// What the clients' sockets gave, counted per datagram or run (one
    /// system call may take several), and of them the runs of several
    /// datagrams (`UDP_GRO`).
    reads: Cell<u64>,
    coalesced_reads: Cell<u64>,
    /// The clients' read buffers, shared: a task holds them only between
    /// awaits, and the runtime has one thread.
    batch: RefCell<client::gro::RunBatch>,
    /// Deliveries of flood messages (datagrams, any member).
    flood_deliveries: Cell<u64>,
    /// `-ERR` replies to flooding clients (their posts refused).
    flood_refused: Cell<u64>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn excused(&self, server: usize) -> bool {
        self.plan.excused.get(server).copied().unwrap_or(false)
    }

    /// Whether `server` is gone for good (its clients stop sending).
    fn gone(&self, server: usize) -> bool {
        self.plan
            .hooks
            .as_ref()
            .and_then(|h| h.gone.get(server))
            .is_some_and(|g| g.load(Ordering::Relaxed))
    }

    /// Reads what client `c`'s socket holds, once readable, and handles
    /// it; whether the read failed (not merely found nothing).
    ///
    /// One read per wake-up: a batch that did not fill its slots emptied
    /// the socket, so the readiness is cleared then (the closure says
    /// `WouldBlock`) instead of by a second, empty read. A datagram that
    /// came meanwhile is a new readiness event, never lost.
    fn read_ready(&self, c: usize, sock: &UdpSocket) -> bool {
        let mut batch = self.batch.borrow_mut();
        let mut got = 0;
        let r = sock.try_io(tokio::io::Interest::READABLE, || {
            got = batch.recv(sock)?;
            if got < batch.slots() {
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        if got == 0 {
            return r.is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock);
        }
        let now = std::time::SystemTime::now();
        for i in 0..got {
            let (run, bytes) = batch.run(i);
            self.reads.set(self.reads.get() + 1);
            if run.segment < run.len {
                self.coalesced_reads.set(self.coalesced_reads.get() + 1);
            }
            let waited = run.waited(now);
            for d in client::gro::split(bytes, run.segment) {
                self.on_datagram(c, d, waited);
            }
        }
        false
    }

    /// `waited`: how long the datagram sat on the socket before this read
    /// (from the kernel's arrival stamp), if the socket has stamps.
    fn on_datagram(&self, c: usize, data: &[u8], waited: Option<Duration>) {
        let at = self.now_us();
        self.last_any.set(Instant::now());
        // The server asks a client to confirm its address: answered at once,
        // and neither the request nor the answer is a delivery or an
        // unexpected line.
        if let Some(token) = client::confirm_token(data) {
            let sock = self.clients.borrow()[c].sock.clone();
            let _ = sock.try_send(&client::confirm_reply(token));
            self.confirmations.set(self.confirmations.get() + 1);
            return;
        }
        if client::is_confirm_answer(data) {
            return;
        }
        let flooder = c >= self.plan.clients;
        if flooder && data.starts_with(b"-ERR") {
            self.flood_refused.set(self.flood_refused.get() + 1);
            return;
        }
        if let Some((f, seq)) =
            parse_flood(data).filter(|&(f, q)| (f as usize) < self.plan.flood_clients && q >= 1)
        {
            self.deliveries.set(self.deliveries.get() + 1);
            self.flood_deliveries.set(self.flood_deliveries.get() + 1);
            let sender = (self.plan.clients + f as usize) as u32;
            self.clients.borrow_mut()[c]
                .log
                .push(Ev::Delivered { sender, seq, at });
            return;
        }
        // Progress is the normal clients' traffic: a flood alone does not
        // keep a stalled run going.
        self.last_progress.set(Instant::now());
        if data.first() != Some(&b'<') {
            self.other.set(self.other.get() + 1);
            let mut ex = self.other_examples.borrow_mut();
            if ex.len() < KEEP_EXAMPLES {
                ex.push(format!(
                    "c{c}: {}",
                    String::from_utf8_lossy(&data[..data.len().min(200)])
                ));
            }
            return;
        }
        self.deliveries.set(self.deliveries.get() + 1);
        let mut clients = self.clients.borrow_mut();
        let Some((sender, seq)) =
            parse_delivery(data).filter(|&(s, q)| (s as usize) < self.plan.clients && q >= 1)
        else {
            self.garbled.set(self.garbled.get() + 1);
            let mut ex = self.garbled_examples.borrow_mut();
            if ex.len() < KEEP_EXAMPLES {
                ex.push(format!(
                    "c{c}: {}",
                    String::from_utf8_lossy(&data[..data.len().min(200)])
                ));
            }
            clients[c].log.push(Ev::Garbled { at });
            return;
        };
        clients[c].log.push(Ev::Delivered { sender, seq, at });
        let place = (clients[sender as usize].room == clients[c].room)
            .then_some(clients[sender as usize].place);
        if clients[c].seen.insert(place, sender, seq) {
            self.distinct.set(self.distinct.get() + 1);
            if !self.excused(clients[c].server) && !self.excused(clients[sender as usize].server) {
                self.required_distinct.set(self.required_distinct.get() + 1);
            }
            self.last_delivery.set(at);
            if let Some(&t) = clients[sender as usize].sent_at.get(seq as usize - 1) {
                let _ = self
                    .latency
                    .borrow_mut()
                    .record(at.saturating_sub(t).max(1));
                if let Some(waited) = waited {
                    let arrived = at.saturating_sub(waited.as_micros() as u64);
                    let _ = self
                        .arrival_latency
                        .borrow_mut()
                        .record(arrived.saturating_sub(t).max(1));
                }
            }
            if sender as usize == c {
                let st = &mut clients[c];
                st.outstanding = st.outstanding.saturating_sub(1);
                self.notify.notify_one();
            }
        }
    }
}

/// One send or delivery, for the timeline of `stress --report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineEvent {
    /// Microseconds since the run started.
    pub at_us: u64,
    /// The client that sent or received (flooding clients after the others).
    pub client: u32,
    /// A send (else a delivery to `client`).
    pub send: bool,
}

/// The outcome of a run.
pub struct LoadResult {
    pub history: History,
    pub sent: u64,
    /// Deliveries that would arrive if every sent message reached every
    /// member of its room once.
    pub expected: u64,
    pub deliveries: u64,
    pub distinct: u64,
    pub other: u64,
    pub other_examples: Vec<String>,
    pub garbled: u64,
    pub garbled_examples: Vec<String>,
    pub latency: Histogram<u64>,
    /// Send -> arrival on the member's socket by the kernel's stamp (µs),
    /// without the load tool's own wait to read; `None` when the sockets
    /// gave no stamps.
    pub arrival_latency: Option<Histogram<u64>>,
    pub setup: Duration,
    /// From the first send to the last send, less the last send's lateness
    /// to its schedule up to the pacer's timer tick (1 ms): the pacer
    /// sleeps on tokio's timer, which rounds up to the millisecond, and a
    /// last send that went out a fraction of a millisecond late for that
    /// reason would read as a rate below the one offered (4,999 of 5,000
    /// messages/s in W3) though nothing waited on the servers.
    pub send_duration: Duration,
    /// From the first send to the last first-time delivery.
    pub run_duration: Duration,
    pub stop_reason: &'static str,
    /// Per server, how many clients it had.
    pub clients_per_server: Vec<usize>,
    pub confirmations: u64,
    /// Datagrams or runs read from the clients' sockets (one system call
    /// may take several).
    pub reads: u64,
    /// Of them, those that held a run of several datagrams (`UDP_GRO`).
    pub coalesced_reads: u64,
    /// Messages the flooding clients sent.
    pub flood_sent: u64,
    /// Flood messages that reached at least one member.
    pub flood_delivered: u64,
    pub flood_deliveries: u64,
    pub flood_refused: u64,
    /// When the sending started (µs since the origin of the history's time
    /// stamps); 0 when it never did.
    pub load_start_us: u64,
    /// When the collection stopped (µs, same origin).
    pub end_us: u64,
    /// Every send and delivery of every client (flood sends included),
    /// ordered by time.
    pub timeline: Vec<TimelineEvent>,
}

/// Runs the workload on a fresh single-threaded runtime.
pub fn run_load(plan: &LoadPlan) -> anyhow::Result<LoadResult> {
    if plan.servers.is_empty() || plan.clients == 0 || plan.rooms == 0 {
        bail!("need at least one server, one client and one room");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, load(plan.clone()))
}

async fn load(plan: LoadPlan) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let hard_deadline = start + plan.deadline;
    let mut clients = Vec::with_capacity(plan.clients);
    let mut room_size = vec![0u64; plan.rooms as usize + 1];
    let mut required_room_size = vec![0u64; plan.rooms as usize + 1];
    let mut per_server = vec![0usize; plan.servers.len()];
    for c in 0..plan.clients + plan.flood_clients {
        let flood = c >= plan.clients;
        let (server, room) = if flood {
            ((c - plan.clients) % plan.servers.len(), 1)
        } else {
            assign(c, plan.servers.len(), plan.rooms)
        };
        let local: SocketAddr = if plan.servers[server].is_ipv4() {
            "127.0.0.1:0".parse().expect("addr")
        } else {
            "[::1]:0".parse().expect("addr")
        };
        let local = if plan.servers[server].ip().is_loopback() {
            local
        } else {
            SocketAddr::new(
                if plan.servers[server].is_ipv4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                },
                0,
            )
        };
        let std_sock = bind_udp(local, CLIENT_BUFFER).context("binding a client socket")?;
        // Asked for now: the kernel turns stamping on a little later (until
        // then a datagram is stamped when read, which only costs the
        // arrival figure its precision, never its truth).
        client::gro::enable_arrival_stamps(&std_sock);
        let sock = UdpSocket::from_std(std_sock).context("registering a client socket")?;
        sock.connect(plan.servers[server])
            .await
            .context("connecting a client socket")?;
        if !flood {
            room_size[room as usize] += 1;
            if !plan.excused.get(server).copied().unwrap_or(false) {
                required_room_size[room as usize] += 1;
            }
            per_server[server] += 1;
        }
        clients.push(ClientSt {
            flood,
            room,
            server,
            sock: Rc::new(sock),
            log: Vec::new(),
            sent: 0,
            outstanding: 0,
            sent_at: Vec::with_capacity(plan.messages as usize),
            seen: Delivered::default(),
            place: 0,
        });
    }
    // Room places, and room for what every member will be delivered.
    let mut next_place = vec![0usize; plan.rooms as usize + 1];
    for st in clients.iter_mut().filter(|st| !st.flood) {
        st.place = next_place[st.room as usize];
        next_place[st.room as usize] += 1;
        let members = usize::try_from(room_size[st.room as usize]).unwrap_or(0);
        st.seen = Delivered::new(members, plan.messages);
    }
    let latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds");
    let sh = Rc::new(Shared {
        plan: plan.clone(),
        start,
        clients: RefCell::new(clients),
        room_size,
        notify: Notify::new(),
        sent: Cell::new(0),
        deliveries: Cell::new(0),
        distinct: Cell::new(0),
        first_send: Cell::new(None),
        last_send: Cell::new(0),
        last_send_late_us: Cell::new(0),
        last_delivery: Cell::new(0),
        last_progress: Cell::new(Instant::now()),
        last_any: Cell::new(Instant::now()),
        sending_done: Cell::new(false),
        stop: Cell::new(false),
        other: Cell::new(0),
        other_examples: RefCell::new(Vec::new()),
        garbled: Cell::new(0),
        garbled_examples: RefCell::new(Vec::new()),
        arrival_latency: RefCell::new(latency.clone()),
        latency: RefCell::new(latency),
        expected_so_far: Cell::new(0),
        required_expected: Cell::new(0),
        required_distinct: Cell::new(0),
        required_room_size,
        load_start: Cell::new(None),
        confirmations: Cell::new(0),
        reads: Cell::new(0),
        coalesced_reads: Cell::new(0),
        batch: RefCell::new(client::gro::RunBatch::new(READ_SLOTS)),
        flood_deliveries: Cell::new(0),
        flood_refused: Cell::new(0),
    });
    let everyone = plan.clients + plan.flood_clients;

    // Setup: every client joins its room and sets its nick, all at once.
    let mut setups = Vec::new();
    let nick = |c: usize| {
        if c < plan.clients {
            format!("c{c}")
        } else {
            format!("F{}", c - plan.clients)
        }
    };
    for c in 0..everyone {
        let (sock, room) = {
            let cl = sh.clients.borrow();
            (cl[c].sock.clone(), cl[c].room)
        };
        setups.push(tokio::task::spawn_local(setup_client(
            nick(c),
            sock,
            room,
            hard_deadline,
        )));
    }
    for (c, s) in setups.into_iter().enumerate() {
        s.await
            .context("setup task")?
            .with_context(|| format!("setting up client {}", nick(c)))?;
    }
    let setup = start.elapsed();
    if plan.progress {
        eprintln!(
            "stress: {} clients joined {} rooms on {} servers in {:.2}s",
            plan.clients,
            plan.rooms,
            plan.servers.len(),
            setup.as_secs_f64()
        );
    }

    // Receivers, then the sender.
    let mut tasks = Vec::new();
    for c in 0..everyone {
        let sock = sh.clients.borrow()[c].sock.clone();
        let sh2 = sh.clone();
        let gro = plan.gro;
        tasks.push(tokio::task::spawn_local(async move {
            // Without GRO a read returns one datagram (a run of one).
            if gro {
                client::gro::enable(&*sock);
            }
            loop {
                if sock.readable().await.is_err() {
                    tokio::task::yield_now().await;
                    continue;
                }
                // One read per wake-up: a batch that did not fill its slots
                // emptied the socket, so the readiness is cleared then
                // (the closure says `WouldBlock`) instead of by a second,
                // empty read. A datagram that came meanwhile is a new
                // readiness event, never lost.
                if sh2.read_ready(c, &sock) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    sh.last_progress.set(Instant::now());
    // The flood: one OS thread sends for all flooding clients (blocking
    // sends on clones of their sockets), so that it competes with the
    // servers, not with this runtime's receivers.
    let flood_stop = Arc::new(AtomicBool::new(false));
    let flood = if plan.flood_clients > 0 {
        let socks = (plan.clients..everyone)
            .map(|c| {
                let cl = sh.clients.borrow();
                let fd = std::os::fd::AsFd::as_fd(&*cl[c].sock).try_clone_to_owned()?;
                Ok(std::net::UdpSocket::from(fd))
            })
            .collect::<std::io::Result<Vec<_>>>()
            .context("cloning the flood sockets")?;
        let stop = flood_stop.clone();
        let until =
            std::time::Instant::now() + hard_deadline.saturating_duration_since(Instant::now());
        let t0 = std::time::Instant::now() - start.elapsed();
        Some(
            std::thread::Builder::new()
                .name("flood".into())
                .spawn(move || flood_sender(socks, stop, until, t0))
                .context("starting the flood thread")?,
        )
    } else {
        None
    };
    // The origin of a fault schedule: taken (and handed over) just before
    // the first send.
    let load_start = Instant::now();
    sh.load_start
        .set(Some(load_start.duration_since(start).as_micros() as u64));
    if let Some(h) = &plan.hooks {
        // The schedule may be gone already (it failed); the load goes on.
        let _ = h.events.send(LoadEvent::Started(load_start.into_std()));
    }
    let quiet_from = load_start
        + plan
            .hooks
            .as_ref()
            .map_or(Duration::ZERO, |h| h.quiet_not_before);
    tasks.push(tokio::task::spawn_local(sender(sh.clone())));

    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let mut next_progress = Instant::now() + Duration::from_secs(1);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    let stop_reason: &'static str = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut ctrl_c => break "interrupted",
            _ = term.recv() => break "interrupted",
        }
        let now = Instant::now();
        let all_sent = sh.sending_done.get();
        if all_sent {
            flood_stop.store(true, Ordering::Relaxed);
        }
        if all_sent && sh.required_distinct.get() >= sh.required_expected.get() {
            break "complete";
        }
        // Quiet counts from the last scheduled fault action at the earliest:
        // a stopped server may hold everything back until it resumes.
        if now.duration_since(sh.last_progress.get().max(quiet_from)) > plan.quiet {
            break "quiet";
        }
        if now >= hard_deadline {
            break "deadline";
        }
        if plan.progress && now >= next_progress {
            next_progress = now + Duration::from_secs(1);
            progress_line(&sh);
        }
    };
    if stop_reason == "complete" && !plan.linger.is_zero() {
        // Catch trailing duplicates.
        tokio::time::sleep(
            plan.linger
                .min(hard_deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    flood_stop.store(true, Ordering::Relaxed);
    let flood_log: Vec<Vec<(u32, u64)>> = match flood {
        Some(t) => t.join().unwrap_or_default(),
        None => Vec::new(),
    };
    if matches!(stop_reason, "complete" | "quiet") && plan.flood_clients > 0 {
        // The last flood messages are still on their way: wait for quiet
        // (bounded), so that whatever is delivered is delivered everywhere.
        let until = (Instant::now() + plan.quiet).min(hard_deadline);
        while Instant::now() < until
            && Instant::now().duration_since(sh.last_any.get()) < Duration::from_millis(300)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let end_us = sh.now_us();
    sh.stop.set(true);
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    if plan.progress {
        progress_line(&sh);
    }

    // Build the checker's history.
    let mut history = History::new();
    let clients = sh.clients.take();
    for (c, st) in clients.iter().enumerate() {
        // A flooding client's own receive path is not under test (its
        // socket overflows): it is checked on what it got only.
        // A client of a server a fault hits may miss deliveries from then
        // on, and its own messages may never get out.
        let excused = !st.flood && sh.excused(st.server);
        let opts = testkit::check::MemberOpts {
            partial: st.flood || excused,
            optional_sends: excused,
            // The survivors flush what a departed server sent: all or none.
            agreed_sends: excused,
        };
        let id = history.add_member_with(nick(c), st.room, opts);
        debug_assert_eq!(id as usize, c);
    }
    // A flood message counts as sent when it reached anybody: the others
    // were refused by the server (that is allowed), and a message that got
    // through must then reach every member, in the mode's order.
    let mut flood_delivered = 0u64;
    let mut reached: HashSet<(u32, u32)> = HashSet::new();
    for st in &clients {
        for ev in &st.log {
            if let Ev::Delivered { sender, seq, .. } = *ev
                && sender as usize >= plan.clients
            {
                reached.insert((sender, seq));
            }
        }
    }
    let mut flood_sent = 0u64;
    for (f, log) in flood_log.iter().enumerate() {
        let me = (plan.clients + f) as u32;
        flood_sent += log.len() as u64;
        for &(seq, at) in log {
            if reached.contains(&(me, seq)) {
                history.sent(me, u64::from(seq), at);
                flood_delivered += 1;
            }
        }
    }
    for (c, st) in clients.iter().enumerate() {
        let me = c as u32;
        for ev in &st.log {
            match *ev {
                Ev::Sent { seq, at } => {
                    history.sent(me, u64::from(seq), at);
                }
                Ev::Delivered { sender, seq, at } => history.delivered(
                    me,
                    MessageId {
                        sender,
                        seq: u64::from(seq),
                    },
                    at,
                ),
                Ev::Garbled { at } => history.delivered(
                    me,
                    MessageId {
                        sender: u32::MAX,
                        seq: 0,
                    },
                    at,
                ),
            }
        }
    }
    let mut timeline = Vec::new();
    for (c, st) in clients.iter().enumerate() {
        for ev in &st.log {
            let (at_us, send) = match *ev {
                Ev::Sent { at, .. } => (at, true),
                Ev::Delivered { at, .. } | Ev::Garbled { at } => (at, false),
            };
            timeline.push(TimelineEvent {
                at_us,
                client: c as u32,
                send,
            });
        }
    }
    for (f, log) in flood_log.iter().enumerate() {
        timeline.extend(log.iter().map(|&(_, at_us)| TimelineEvent {
            at_us,
            client: (plan.clients + f) as u32,
            send: true,
        }));
    }
    timeline.sort_by_key(|e| e.at_us);
    let first = sh.first_send.get().unwrap_or(0);
    let send_duration = Duration::from_micros(
        sh.last_send
            .get()
            .saturating_sub(first)
            .saturating_sub(sh.last_send_late_us.get()),
    );
    let run_duration = Duration::from_micros(
        sh.last_delivery
            .get()
            .max(sh.last_send.get())
            .saturating_sub(first),
    );
    let latency = sh.latency.borrow().clone();
    let arrival_latency = Some(sh.arrival_latency.borrow().clone()).filter(|h| !h.is_empty());
    Ok(LoadResult {
        history,
        sent: sh.sent.get(),
        expected: sh.expected_so_far.get(),
        deliveries: sh.deliveries.get(),
        distinct: sh.distinct.get(),
        other: sh.other.get(),
        other_examples: sh.other_examples.take(),
        garbled: sh.garbled.get(),
        garbled_examples: sh.garbled_examples.take(),
        latency,
        arrival_latency,
        setup,
        send_duration,
        run_duration,
        stop_reason,
        clients_per_server: per_server,
        confirmations: sh.confirmations.get(),
        reads: sh.reads.get(),
        coalesced_reads: sh.coalesced_reads.get(),
        flood_sent,
        flood_delivered,
        flood_deliveries: sh.flood_deliveries.get(),
        flood_refused: sh.flood_refused.get(),
        load_start_us: sh.load_start.get().unwrap_or(0),
        end_us,
        timeline,
    })
}

/// Sends flood messages round-robin over `socks` until `stop`, `until` or
/// [`FLOOD_MAX_PER_CLIENT`] each; returns per client the (seq, µs since
/// `t0`) of every message sent.
fn flood_sender(
    socks: Vec<std::net::UdpSocket>,
    stop: Arc<AtomicBool>,
    until: std::time::Instant,
    t0: std::time::Instant,
) -> Vec<Vec<(u32, u64)>> {
    let mut logs: Vec<Vec<(u32, u64)>> = vec![Vec::new(); socks.len()];
    let mut seq = vec![0u32; socks.len()];
    'outer: for round in 0u64.. {
        if round % 64 == 0 && (stop.load(Ordering::Relaxed) || std::time::Instant::now() >= until) {
            break;
        }
        for (f, s) in socks.iter().enumerate() {
            if seq[f] >= FLOOD_MAX_PER_CLIENT {
                break 'outer;
            }
            let next = seq[f] + 1;
            match s.send(flood_body(f, next).as_bytes()) {
                Ok(_) => {
                    seq[f] = next;
                    logs[f].push((next, t0.elapsed().as_micros() as u64));
                }
                // A full socket buffer (the sockets are non-blocking) or an
                // ICMP error: not sent; go on.
                Err(_) => std::thread::yield_now(),
            }
        }
    }
    logs
}

fn progress_line(sh: &Shared) {
    let total = sh.plan.clients as u64 * u64::from(sh.plan.messages);
    let exp = sh.expected_so_far.get().max(1);
    eprintln!(
        "stress: {:6.1}s sent {}/{} delivered {}/{} ({:.1}%)",
        sh.start.elapsed().as_secs_f64(),
        sh.sent.get(),
        total,
        sh.distinct.get(),
        sh.expected_so_far.get(),
        100.0 * sh.distinct.get() as f64 / exp as f64
    );
}

/// One request/reply exchange: sends `line`, waits for a reply accepted by
/// `ok`; retries a few times (UDP), bounded by `deadline`.
async fn exchange(
    sock: &UdpSocket,
    line: &str,
    ok: impl Fn(&str) -> bool,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    let mut last = String::new();
    for attempt in 0..4u32 {
        sock.send(line.as_bytes())
            .await
            .with_context(|| format!("sending {line:?}"))?;
        let wait = Duration::from_millis(1000 << attempt.min(2));
        let until = (Instant::now() + wait).min(deadline);
        loop {
            match tokio::time::timeout_at(until, sock.recv(&mut buf)).await {
                Ok(Ok(n)) => match SetupReply::of(&buf[..n]) {
                    SetupReply::Confirm(answer) => {
                        let _ = sock.send(&answer).await;
                    }
                    SetupReply::Confirmed => {}
                    SetupReply::Line(reply) if ok(&reply) => return Ok(()),
                    SetupReply::Line(reply) => last = reply,
                },
                Ok(Err(_)) => continue, // ICMP error from an earlier send
                Err(_) => break,
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    if last.is_empty() {
        bail!("no reply to {line:?}")
    } else {
        bail!("unexpected reply to {line:?}: {last:?}")
    }
}

async fn setup_client(
    nick: String,
    sock: Rc<UdpSocket>,
    room: u32,
    deadline: Instant,
) -> anyhow::Result<()> {
    let join = format!("/join {room}");
    exchange(
        &sock,
        &join,
        |r| r.starts_with("+OK") || r.starts_with(&format!("-ERR You are already in room #{room}")),
        deadline,
    )
    .await?;
    exchange(
        &sock,
        &format!("/nick {nick}"),
        |r| r.starts_with("+OK"),
        deadline,
    )
    .await?;
    confirm_address(&sock, deadline).await
}

/// Confirms the client's address before the load: a client in a busy room
/// receives several times what it sends, and a notice that came only once
/// the server's cap is near would wait behind megabytes of deliveries. An
/// older server (no token on request) answers "-ERR Invalid confirmation
/// token", which ends it too.
async fn confirm_address(sock: &UdpSocket, deadline: Instant) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    for attempt in 0..4u32 {
        sock.send(b"/confirm").await.context("sending /confirm")?;
        let until = (Instant::now() + Duration::from_millis(1000 << attempt.min(2))).min(deadline);
        loop {
            match tokio::time::timeout_at(until, sock.recv(&mut buf)).await {
                Ok(Ok(n)) => match SetupReply::of(&buf[..n]) {
                    SetupReply::Confirm(answer) => {
                        sock.send(&answer).await.context("sending the token")?;
                    }
                    SetupReply::Confirmed => return Ok(()),
                    SetupReply::Line(_) => {}
                },
                Ok(Err(_)) => continue,
                Err(_) => break,
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    bail!("no answer to /confirm")
}

/// The resolution of the pacer's timer (tokio's timer wheel).
const PACER_TICK: Duration = Duration::from_millis(1);

async fn sender(sh: Rc<Shared>) {
    let plan = sh.plan.clone();
    let n = plan.clients;
    let interval = if plan.rate > 0.0 {
        Duration::from_secs_f64(1.0 / plan.rate)
    } else {
        Duration::ZERO
    };
    let mut rr = 0usize;
    let mut next = Instant::now();
    let mut since_yield = 0u32;
    loop {
        let mut due = None;
        if sh.stop.get() {
            break;
        }
        let (pick, all_sent) = {
            let cl = sh.clients.borrow();
            // A client whose server is gone for good has nobody to send to:
            // it counts as done.
            let done = |c: &ClientSt| c.sent >= plan.messages || sh.gone(c.server);
            let pick = (0..n)
                .map(|d| (rr + d) % n)
                .find(|&c| !done(&cl[c]) && cl[c].outstanding < plan.window);
            let all_sent = pick.is_none() && cl.iter().all(done);
            (pick, all_sent)
        };
        let Some(c) = pick else {
            if all_sent {
                break;
            }
            // Every client with messages left has a full window.
            tokio::select! {
                _ = sh.notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            continue;
        };
        if !interval.is_zero() {
            let now = Instant::now();
            if next > now {
                tokio::time::sleep_until(next).await;
            } else if now.duration_since(next) > Duration::from_millis(100) {
                // Fell behind (e.g. windows were full): do not burst to catch up.
                next = now;
            }
            due = Some(next);
            next += interval;
        }
        // Late by the pacer's own timer (tokio's rounds a sleep up to the
        // millisecond) or by something else; see `LoadResult::send_duration`.
        let late = due.map_or(Duration::ZERO, |d| {
            Instant::now().saturating_duration_since(d)
        });
        sh.last_send_late_us
            .set(late.min(PACER_TICK).as_micros() as u64);
        let (sock, line, seq) = {
            let mut cl = sh.clients.borrow_mut();
            let st = &mut cl[c];
            st.sent += 1;
            st.outstanding += 1;
            let seq = st.sent;
            let at = sh.now_us();
            st.sent_at.push(at);
            st.log.push(Ev::Sent { seq, at });
            if sh.first_send.get().is_none() {
                sh.first_send.set(Some(at));
            }
            sh.last_send.set(at);
            sh.sent.set(sh.sent.get() + 1);
            sh.expected_so_far
                .set(sh.expected_so_far.get() + sh.room_size[st.room as usize]);
            if !sh.excused(st.server) {
                sh.required_expected
                    .set(sh.required_expected.get() + sh.required_room_size[st.room as usize]);
            }
            (
                st.sock.clone(),
                body(c, st.server, st.room, seq, plan.size),
                seq,
            )
        };
        let _ = seq;
        sh.last_progress.set(Instant::now());
        match sock.try_send(line.as_bytes()) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = sock.send(line.as_bytes()).await;
            }
            Err(_) => {}
        }
        rr = (c + 1) % n;
        since_yield += 1;
        if since_yield >= 16 {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    sh.sending_done.set(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_span_servers_and_load_is_even() {
        for (clients, servers, rooms) in [(6, 3, 2), (250, 10, 10), (20, 4, 4), (7, 3, 3)] {
            let mut per_server = vec![0; servers];
            let mut room_servers: Vec<HashSet<usize>> = vec![HashSet::new(); rooms as usize + 1];
            let mut room_members = vec![0usize; rooms as usize + 1];
            for c in 0..clients {
                let (s, r) = assign(c, servers, rooms);
                per_server[s] += 1;
                room_servers[r as usize].insert(s);
                room_members[r as usize] += 1;
            }
            let (min, max) = (
                per_server.iter().min().unwrap(),
                per_server.iter().max().unwrap(),
            );
            assert!(max - min <= 1 + clients / servers / 5, "{per_server:?}");
            for r in 1..=rooms as usize {
                assert_eq!(
                    room_servers[r].len(),
                    room_members[r].min(servers),
                    "room {r}"
                );
            }
        }
    }

    /// Each message counts once, in the bits or, from another room or
    /// beyond the run, in the set; places and seqs never alias.
    #[test]
    fn a_member_counts_each_delivered_message_once() {
        let mut d = Delivered::new(3, 4);
        assert!(d.insert(Some(0), 7, 1));
        assert!(!d.insert(Some(0), 7, 1), "a repeat");
        assert!(d.insert(Some(1), 8, 1), "another sender's first");
        assert!(d.insert(Some(2), 9, 4));
        assert!(!d.insert(Some(2), 9, 4));
        assert!(d.insert(Some(0), 7, 4), "not aliased with (2, 4) or (1, 0)");
        // Another room's sender with the same place, and a seq beyond the run.
        assert!(d.insert(None, 20, 1));
        assert!(!d.insert(None, 20, 1));
        assert!(d.insert(Some(0), 7, 5));
        assert!(!d.insert(Some(0), 7, 5));
        assert!(d.insert(Some(0), 7, 0) && !d.insert(Some(0), 7, 0));
        assert_eq!(d.other.len(), 3);
        // Too large for bits: the set alone, same answers.
        let mut big = Delivered::new(1 << 12, 1 << 12);
        assert!(big.bits.is_empty());
        assert!(big.insert(Some(5), 5, 9) && !big.insert(Some(5), 5, 9));
    }

    #[test]
    fn bodies_parse_back() {
        let b = body(12, 2, 2, 42, 0);
        assert_eq!(b, "c12-s3-r2-000042");
        let line = format!("<c12> {b}");
        assert_eq!(parse_delivery(line.as_bytes()), Some((12, 42)));
        let padded = body(3, 0, 1, 7, 100);
        assert_eq!(padded.len(), 100);
        assert_eq!(
            parse_delivery(format!("<c3> {padded}").as_bytes()),
            Some((3, 7))
        );
        assert_eq!(parse_delivery(b"<c3> c4-s1-r1-000007"), None);
        assert_eq!(parse_delivery(b"<c3> c3-s1-r1-00x007"), None);
        assert_eq!(parse_delivery(b"+OK"), None);
        assert_eq!(flood_body(1, 123), "F1-000123");
        assert_eq!(parse_flood(b"<F1> F1-000123"), Some((1, 123)));
        assert_eq!(parse_flood(b"<F1> F2-000123"), None);
        assert_eq!(parse_flood(b"<F1> F1-00x123"), None);
        assert_eq!(parse_delivery(b"<F1> F1-000123"), None);
    }
}
