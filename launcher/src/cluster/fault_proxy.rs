//! `launcher proxy`: the fault-injecting delay proxy.
//!
//! The proxy binds every server's forwarding address. A packet that arrives
//! at server j's forwarding address from server i's bind address is sent to
//! server j's bind address *from server i's forwarding address* (through the
//! socket bound there), so that j sees it come from i. On the way it is held
//! for a random delay (which reorders packets), dropped with probability
//! `loss`, and duplicated with probability `duplicate` (the copy gets its own
//! delay). Packets from any other source are dropped and counted.
//!
//! Decisions are drawn from one seeded [`fastrand::Rng`] per link (i -> j), in the
//! order packets arrive on that link: the same seed and the same packets on a
//! link give the same drops, duplicates and delays, whatever happens on other
//! links. Each packet draws exactly four numbers (loss, delay, duplicate,
//! duplicate's delay).
//!
//! When the proxy stops, it reads what is still queued in its sockets and
//! sends every held packet at once (counted as `flushed`), so nothing that it
//! decided to forward is lost by stopping it.
//!
//! Entries: [`spawn`] (a thread with its own runtime, for `launcher up` and
//! `launcher stress`) and [`serve`] (an async function for a caller's
//! runtime, as `launcher proxy` uses).

use super::settings::FaultConfig;
use anyhow::{Context, bail};
use clap::Args;
use node::config::ClusterConfig;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Largest datagram the proxy forwards (the UDP maximum).
pub const MAX_DATAGRAM: usize = 65_536;

/// Socket buffer size the proxy asks for (it holds bursts for all servers).
const SOCKET_BUFFER: usize = 8 << 20;

/// Fault options shared by `launcher proxy` and `launcher stress`; each
/// defaults to the file's `[faults]`, else none.
#[derive(Debug, Clone, Default, Args)]
pub struct FaultArgs {
    /// Delay between servers in milliseconds, `MIN..MAX` (e.g. `0..20`) or one number.
    #[arg(long, value_parser = parse_delay, value_name = "MIN..MAX")]
    pub delay: Option<(f64, f64)>,
    /// Probability (0..=1) that a packet between servers is dropped.
    #[arg(long, value_parser = parse_probability, value_name = "P")]
    pub loss: Option<f64>,
    /// Probability (0..=1) that a packet between servers is sent twice.
    #[arg(long, value_parser = parse_probability, value_name = "P")]
    pub duplicate: Option<f64>,
    /// Seed of the proxy's random decisions.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
}

impl FaultArgs {
    pub fn any(&self) -> bool {
        self.delay.is_some()
            || self.loss.is_some()
            || self.duplicate.is_some()
            || self.seed.is_some()
    }

    /// These options over the file's `[faults]` (or none).
    pub fn over(&self, file: Option<&FaultConfig>) -> FaultConfig {
        let mut f = file.cloned().unwrap_or_default();
        if let Some((lo, hi)) = self.delay {
            f.delay_min_ms = lo;
            f.delay_max_ms = hi;
        }
        if let Some(p) = self.loss {
            f.loss = p;
        }
        if let Some(p) = self.duplicate {
            f.duplicate = p;
        }
        if let Some(s) = self.seed {
            f.seed = s;
        }
        f
    }
}

/// Parses a delay range in milliseconds: `MIN..MAX`, `MIN..=MAX`, `MIN-MAX`
/// or a single number.
pub fn parse_delay(s: &str) -> Result<(f64, f64), String> {
    let s = s.trim();
    let num = |t: &str| -> Result<f64, String> {
        let v: f64 = t
            .trim()
            .parse()
            .map_err(|_| format!("'{t}' is not a number of milliseconds"))?;
        if !v.is_finite() || v < 0.0 {
            return Err(format!("delay {v} must be a finite number >= 0"));
        }
        Ok(v)
    };
    let (lo, hi) = if let Some((a, b)) = s.split_once("..") {
        (num(a)?, num(b.strip_prefix('=').unwrap_or(b))?)
    } else if let Some((a, b)) = s.split_once('-') {
        (num(a)?, num(b)?)
    } else {
        let v = num(s)?;
        (v, v)
    };
    if hi < lo {
        return Err(format!("delay range {lo}..{hi} is empty (MIN > MAX)"));
    }
    Ok((lo, hi))
}

/// Parses a probability in `0..=1`.
pub fn parse_probability(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("probability {v} is outside 0..=1"));
    }
    Ok(v)
}

/// True when `f` injects anything (a delay, loss or duplicates).
pub fn faults_active(f: &FaultConfig) -> bool {
    f.delay_max_ms > 0.0 || f.loss > 0.0 || f.duplicate > 0.0
}

/// Short description of a fault setting, for banners and reports.
pub fn describe_faults(f: &FaultConfig) -> String {
    format!(
        "delay {}..{} ms, loss {}, duplicate {}, seed {}",
        f.delay_min_ms, f.delay_max_ms, f.loss, f.duplicate, f.seed
    )
}

/// Live counters (shared with whoever started the proxy).
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub unknown_source: AtomicU64,
    pub send_errors: AtomicU64,
    pub flushed: AtomicU64,
    pub held: AtomicU64,
}

/// A snapshot of [`ProxyCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProxyCounts {
    /// Packets read from the forwarding sockets (any source).
    pub received: u64,
    /// Datagrams sent on (duplicates included).
    pub forwarded: u64,
    /// Packets dropped by the loss setting.
    pub dropped: u64,
    /// Packets sent twice.
    pub duplicated: u64,
    /// Packets from a source that is no server's bind address (dropped).
    pub unknown_source: u64,
    /// Sends that failed (the destination socket is closed, say).
    pub send_errors: u64,
    /// Held packets sent early because the proxy stopped.
    pub flushed: u64,
    /// Packets currently held back (0 after the proxy stopped).
    pub held: u64,
}

impl ProxyCounters {
    pub fn snapshot(&self) -> ProxyCounts {
        ProxyCounts {
            received: self.received.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            duplicated: self.duplicated.load(Relaxed),
            unknown_source: self.unknown_source.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            flushed: self.flushed.load(Relaxed),
            held: self.held.load(Relaxed),
        }
    }
}

impl fmt::Display for ProxyCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} forwarded={} dropped={} duplicated={} unknown_source={} send_errors={} flushed={}",
            self.received,
            self.forwarded,
            self.dropped,
            self.duplicated,
            self.unknown_source,
            self.send_errors,
            self.flushed
        )
    }
}

/// Which addresses the proxy serves: for server i, `forwards[i]` (bound by
/// the proxy) and `binds[i]` (the server's own socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPlan {
    pub forwards: Vec<SocketAddr>,
    pub binds: Vec<SocketAddr>,
}

impl ProxyPlan {
    /// The plan for a cluster; fails when a server's forwarding address is
    /// its bind address (there is no room for a proxy then).
    pub fn from_config(cfg: &ClusterConfig) -> anyhow::Result<ProxyPlan> {
        let mut plan = ProxyPlan {
            forwards: Vec::new(),
            binds: Vec::new(),
        };
        for s in &cfg.servers {
            if s.forward == s.bind {
                let fix = match cfg.format {
                    node::config::ConfigFormat::Toml => {
                        "set `forward_base_port` in [nodes], or `forward = \"IP:PORT\"` in each [[node]]"
                    }
                    _ => "use lines `FWD_IP:PORT,BIND_IP:PORT`",
                };
                bail!(
                    "{}: server {} ({}, line {}) has no separate forwarding address, so a proxy cannot sit in \
                     front of it; {fix}",
                    cfg.source.display(),
                    s.name,
                    s.bind,
                    s.line
                );
            }
            plan.forwards.push(s.forward);
            plan.binds.push(s.bind);
        }
        if plan.forwards.is_empty() {
            bail!("{}: no servers", cfg.source.display());
        }
        Ok(plan)
    }

    fn server_of_source(&self, src: SocketAddr) -> Option<usize> {
        self.binds.iter().position(|b| *b == src)
    }
}

/// A plan with its forwarding sockets bound (synchronously, so that errors
/// such as "address in use" surface before anything runs).
#[derive(Debug)]
pub struct BoundProxy {
    pub plan: ProxyPlan,
    sockets: Vec<std::net::UdpSocket>,
}

impl BoundProxy {
    pub fn bind(plan: ProxyPlan) -> anyhow::Result<BoundProxy> {
        let mut sockets = Vec::with_capacity(plan.forwards.len());
        for (i, &a) in plan.forwards.iter().enumerate() {
            let s = crate::net::bind_udp(a, SOCKET_BUFFER).with_context(|| {
                format!(
                    "proxy: cannot bind forwarding address {a} of server {}",
                    i + 1
                )
            })?;
            sockets.push(s);
        }
        Ok(BoundProxy { plan, sockets })
    }
}

/// The per-link generator: reproducible from the seed and independent of
/// every other link's traffic.
fn link_rng(seed: u64, from: usize, to: usize) -> fastrand::Rng {
    let salt = fastrand::Rng::with_seed(seed).u64(..);
    let link = ((from as u64) << 32) | to as u64;
    fastrand::Rng::with_seed(salt ^ link.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub drop: bool,
    pub delay_us: u64,
    /// The delay of the copy, when duplicated.
    pub duplicate: Option<u64>,
}

/// The decision maker of one link.
#[derive(Debug, Clone)]
pub struct LinkFaults {
    rng: fastrand::Rng,
    loss: f64,
    duplicate: f64,
    min_us: u64,
    span_us: u64,
}

impl LinkFaults {
    pub fn new(f: &FaultConfig, from: usize, to: usize) -> Self {
        let min_us = (f.delay_min_ms.max(0.0) * 1000.0).round() as u64;
        let max_us = (f.delay_max_ms.max(0.0) * 1000.0).round() as u64;
        LinkFaults {
            rng: link_rng(f.seed, from, to),
            loss: f.loss,
            duplicate: f.duplicate,
            min_us,
            span_us: max_us.saturating_sub(min_us),
        }
    }

    /// Decides the next packet's fate (always four draws).
    pub fn decide(&mut self) -> Decision {
        let drop = self.rng.f64() < self.loss;
        let delay_us = self.min_us + self.rng.u64(..=self.span_us);
        let dup = self.rng.f64() < self.duplicate;
        let dup_delay = self.min_us + self.rng.u64(..=self.span_us);
        Decision {
            drop,
            delay_us,
            duplicate: (dup && !drop).then_some(dup_delay),
        }
    }
}

/// A packet waiting for its time.
struct Held {
    due: Instant,
    n: u64,
    from: usize,
    to: SocketAddr,
    data: Arc<[u8]>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.n) == (o.due, o.n)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.n).cmp(&(o.due, o.n))
    }
}

/// Serves a bound proxy until `shutdown` completes; then drains the sockets,
/// flushes what is held and returns.
pub async fn serve(
    bound: BoundProxy,
    faults: FaultConfig,
    counters: Arc<ProxyCounters>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let plan = Arc::new(bound.plan);
    let mut sockets = Vec::new();
    for s in bound.sockets {
        sockets.push(Arc::new(
            UdpSocket::from_std(s).context("proxy: registering socket")?,
        ));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (held_tx, held_rx) = mpsc::unbounded_channel::<Held>();
    let timer = tokio::spawn(timer_task(sockets.clone(), held_rx, counters.clone()));
    let mut receivers = Vec::new();
    for (j, sock) in sockets.iter().enumerate() {
        let links: Vec<LinkFaults> = (0..plan.binds.len())
            .map(|i| LinkFaults::new(&faults, i, j))
            .collect();
        receivers.push(tokio::spawn(receive_task(
            j,
            sock.clone(),
            sockets.clone(),
            plan.clone(),
            links,
            held_tx.clone(),
            counters.clone(),
            stop_rx.clone(),
        )));
    }
    drop(held_tx);
    shutdown.await;
    let _ = stop_tx.send(true);
    for r in receivers {
        r.await.context("proxy receive task")?;
    }
    timer.await.context("proxy timer task")?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn receive_task(
    j: usize,
    sock: Arc<UdpSocket>,
    sockets: Vec<Arc<UdpSocket>>,
    plan: Arc<ProxyPlan>,
    mut links: Vec<LinkFaults>,
    held: mpsc::UnboundedSender<Held>,
    counters: Arc<ProxyCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut n: u64 = (j as u64) << 48;
    let to = plan.binds[j];
    let mut handle = |len: usize, src: SocketAddr, buf: &[u8], n: &mut u64| {
        counters.received.fetch_add(1, Relaxed);
        let Some(i) = plan.server_of_source(src) else {
            counters.unknown_source.fetch_add(1, Relaxed);
            return;
        };
        let d = links[i].decide();
        if d.drop {
            counters.dropped.fetch_add(1, Relaxed);
            return;
        }
        let data: Arc<[u8]> = Arc::from(&buf[..len]);
        let now = Instant::now();
        let mut copies = vec![d.delay_us];
        if let Some(dd) = d.duplicate {
            counters.duplicated.fetch_add(1, Relaxed);
            copies.push(dd);
        }
        for delay in copies {
            if delay == 0 {
                // No delay: send right away (no queueing behind the timer).
                match sockets[i].try_send_to(&data, to) {
                    Ok(_) => {
                        counters.forwarded.fetch_add(1, Relaxed);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        counters.send_errors.fetch_add(1, Relaxed);
                        continue;
                    }
                }
            }
            *n += 1;
            counters.held.fetch_add(1, Relaxed);
            let _ = held.send(Held {
                due: now + Duration::from_micros(delay),
                n: *n,
                from: i,
                to,
                data: data.clone(),
            });
        }
    };
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((len, src)) => handle(len, src, &buf, &mut n),
                Err(e) if is_transient(&e) => continue,
                Err(e) => {
                    tracing::warn!("proxy: receive on {}: {e}", plan.forwards[j]);
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // Take what the kernel still holds for us, so that stopping the proxy
    // loses nothing it had accepted.
    loop {
        match sock.try_recv_from(&mut buf) {
            Ok((len, src)) => handle(len, src, &buf, &mut n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if is_transient(&e) => continue,
            Err(_) => break,
        }
    }
}

/// Errors a UDP socket reports for earlier sends (ICMP port unreachable) and
/// interrupted calls: not fatal.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

async fn timer_task(
    sockets: Vec<Arc<UdpSocket>>,
    mut rx: mpsc::UnboundedReceiver<Held>,
    counters: Arc<ProxyCounters>,
) {
    let mut heap: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let send = |h: &Held| {
        let sockets = &sockets;
        let counters = &counters;
        let data = h.data.clone();
        let from = h.from;
        let to = h.to;
        async move {
            counters.held.fetch_sub(1, Relaxed);
            match sockets[from].send_to(&data, to).await {
                Ok(_) => {
                    counters.forwarded.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    counters.send_errors.fetch_add(1, Relaxed);
                }
            }
        }
    };
    loop {
        let next_due = heap.peek().map(|Reverse(h)| h.due);
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(h) => heap.push(Reverse(h)),
                None => break,
            },
            _ = sleep_until_opt(next_due) => {
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse(h)| h.due <= now) {
                    let Reverse(h) = heap.pop().expect("peeked");
                    send(&h).await;
                }
            }
        }
    }
    // Stopped: send everything still held, in due order.
    while let Some(Reverse(h)) = heap.pop() {
        counters.flushed.fetch_add(1, Relaxed);
        send(&h).await;
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A proxy running on its own thread (with its own single-threaded runtime).
/// Dropping the handle stops it.
pub struct ProxyHandle {
    counters: Arc<ProxyCounters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    pub plan: ProxyPlan,
}

impl ProxyHandle {
    pub fn counts(&self) -> ProxyCounts {
        self.counters.snapshot()
    }

    pub fn counters(&self) -> Arc<ProxyCounters> {
        self.counters.clone()
    }

    /// Stops the proxy (flushing held packets) and returns the final counts.
    pub fn stop(mut self) -> anyhow::Result<ProxyCounts> {
        self.stop_inner()?;
        Ok(self.counters.snapshot())
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r?,
                Err(_) => bail!("proxy thread panicked"),
            }
        }
        Ok(())
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Starts the proxy for `cfg` with `faults` on a thread of its own. The
/// forwarding sockets are bound before this returns.
pub fn spawn(cfg: &ClusterConfig, faults: &FaultConfig) -> anyhow::Result<ProxyHandle> {
    let plan = ProxyPlan::from_config(cfg)?;
    spawn_plan(plan, faults)
}

/// [`spawn`] from an explicit plan.
pub fn spawn_plan(plan: ProxyPlan, faults: &FaultConfig) -> anyhow::Result<ProxyHandle> {
    let bound = BoundProxy::bind(plan.clone())?;
    let counters = Arc::new(ProxyCounters::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let c = counters.clone();
    let faults = faults.clone();
    let thread = std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(bound, faults, c, async {
                let _ = rx.await;
            }))
        })
        .context("spawning the proxy thread")?;
    Ok(ProxyHandle {
        counters,
        stop: Some(tx),
        thread: Some(thread),
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_parsing() {
        assert_eq!(parse_delay("0..20"), Ok((0.0, 20.0)));
        assert_eq!(parse_delay("1.5..=2"), Ok((1.5, 2.0)));
        assert_eq!(parse_delay("3-4"), Ok((3.0, 4.0)));
        assert_eq!(parse_delay("7"), Ok((7.0, 7.0)));
        assert!(parse_delay("5..1").is_err());
        assert!(parse_delay("x").is_err());
        assert!(parse_probability("1.5").is_err());
        assert_eq!(parse_probability("0.25"), Ok(0.25));
    }

    #[test]
    fn decisions_are_reproducible_and_per_link() {
        let f = FaultConfig {
            delay_min_ms: 0.0,
            delay_max_ms: 20.0,
            loss: 0.3,
            duplicate: 0.2,
            seed: 9,
        };
        let a: Vec<Decision> = {
            let mut l = LinkFaults::new(&f, 0, 1);
            (0..200).map(|_| l.decide()).collect()
        };
        let b: Vec<Decision> = {
            let mut l = LinkFaults::new(&f, 0, 1);
            (0..200).map(|_| l.decide()).collect()
        };
        assert_eq!(a, b);
        let c: Vec<Decision> = {
            let mut l = LinkFaults::new(&f, 1, 0);
            (0..200).map(|_| l.decide()).collect()
        };
        assert_ne!(a, c);
        let drops = a.iter().filter(|d| d.drop).count();
        assert!((30..90).contains(&drops), "{drops}");
        assert!(a.iter().all(|d| d.delay_us <= 20_000));
    }
}
