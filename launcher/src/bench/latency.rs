//! The latency driver of `launcher bench w2`: precisely paced clients on
//! plain OS threads.
//!
//! The stress workload runs on tokio, whose timers tick in milliseconds: at
//! 1,000 messages/s per client it sends in bursts, and the queueing those
//! bursts cause shows up as latency. Here every client has its own sender
//! thread with a blocking, connected `std` UDP socket that sends at exact
//! `Instant` deadlines (sleep until `spin` before the deadline with the
//! thread's timer slack set to 1 ns, then spin), and a receiver thread on a
//! clone of the same socket that stamps every delivery. Send times are kept
//! in one shared table indexed by (client, seq), so any receiver can look up
//! any message's send time. Clients' schedules are staggered by
//! `interval / clients`, so the total load is evenly spaced.
//!
//! After the run, each member's sends and deliveries are merged by time into
//! an [`testkit::check::History`] and checked against the mode's
//! guarantees; latencies (send -> delivery, at every member, the sender
//! included) go into an HDR histogram in nanoseconds.

use crate::load::{SetupReply, body, parse_delivery};
use crate::net::bind_udp;
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use testkit::check::{History, MessageId, Properties, Report};

const CLIENT_BUFFER: usize = 8 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct LatencyPlan {
    /// One client per entry, connected to that server.
    pub servers: Vec<SocketAddr>,
    pub room: u32,
    /// Messages per second of each client.
    pub rate_per_client: f64,
    /// Messages per client.
    pub messages: u32,
    /// Body size in bytes.
    pub size: usize,
    /// How long before each deadline the sender stops sleeping and spins.
    pub spin: Duration,
    /// Stop waiting for deliveries after this long without one.
    pub quiet: Duration,
    /// Upper bound on the whole run (setup included).
    pub deadline: Duration,
    pub properties: Properties,
}

/// Pacing precision of the senders.
#[derive(Debug, Clone, Serialize)]
pub struct Pacing {
    /// How late sends were against their schedule (µs).
    pub lag_p50_us: f64,
    pub lag_p99_us: f64,
    pub lag_max_us: f64,
    /// Sends more than 50 µs late.
    pub late_sends: u64,
}

/// Latency figures (ms, to the microsecond).
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    /// From a histogram in nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        Self::from_histogram(h, 1_000_000.0)
    }

    /// From a histogram in microseconds.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        Self::from_histogram(h, 1_000.0)
    }

    /// `units_per_ms`: how many of the histogram's units make a millisecond.
    /// Figures are rounded to the microsecond.
    fn from_histogram(h: &Histogram<u64>, units_per_ms: f64) -> Self {
        let ms = |v: f64| (v / units_per_ms * 1000.0).round() / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50) as f64),
            p90_ms: ms(h.value_at_quantile(0.90) as f64),
            p99_ms: ms(h.value_at_quantile(0.99) as f64),
            p999_ms: ms(h.value_at_quantile(0.999) as f64),
            max_ms: ms(h.max() as f64),
            mean_ms: if h.is_empty() { 0.0 } else { ms(h.mean()) },
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub clients: usize,
    pub rate_per_client: f64,
    pub sent: u64,
    /// Every message to every member (the sender included) once.
    pub expected_deliveries: u64,
    /// Distinct deliveries.
    pub deliveries: u64,
    /// Datagrams that were deliveries of a message already delivered there.
    pub duplicates: u64,
    pub garbled: u64,
    pub other: u64,
    /// First send to last send (s).
    pub send_duration_s: f64,
    /// Achieved send rate over all clients.
    pub send_rate: f64,
    pub stop_reason: String,
    pub latency: Percentiles,
    pub pacing: Pacing,
    pub check_ok: bool,
    pub check: String,
}

struct Shared {
    start: Instant,
    messages: u32,
    /// `sent_at[c * messages + seq - 1]`: ns since `start` + 1 (0: not sent).
    sent_at: Vec<AtomicU64>,
    delivered: AtomicU64,
    last_delivery_ns: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// What one receiver saw: (sender, seq, ns since start).
struct ReceiverLog {
    deliveries: Vec<(u32, u32, u64)>,
    garbled: u64,
    other: u64,
}

/// Asks the kernel to wake this thread's sleeps as close to the deadline as
/// it can (the default slack is 50 µs).
fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Sleeps until `spin` before `deadline`, then spins until it.
pub fn wait_until(deadline: Instant, spin: Duration) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > spin {
            std::thread::sleep(left - spin);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// One request/reply exchange on a blocking socket, retried (UDP).
fn exchange(
    sock: &UdpSocket,
    line: &str,
    ok: impl Fn(&str) -> bool,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65_536];
    let mut last = String::new();
    for attempt in 0..4u32 {
        sock.send(line.as_bytes())
            .with_context(|| format!("sending {line:?}"))?;
        let until = (Instant::now() + Duration::from_millis(500 << attempt.min(2))).min(deadline);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv(&mut buf) {
                Ok(n) => match SetupReply::of(&buf[..n]) {
                    SetupReply::Confirm(answer) => {
                        let _ = sock.send(&answer);
                    }
                    SetupReply::Confirmed => {}
                    SetupReply::Line(reply) if ok(&reply) => return Ok(()),
                    SetupReply::Line(reply) => last = reply,
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(_) => continue, // ICMP error from an earlier send
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

/// Runs the plan: setup, paced sends, collection, check.
pub fn run(plan: &LatencyPlan) -> anyhow::Result<LatencyResult> {
    let clients = plan.servers.len();
    if clients == 0
        || plan.messages == 0
        || plan.rate_per_client.is_nan()
        || plan.rate_per_client <= 0.0
    {
        bail!("the latency driver needs clients, messages and a rate");
    }
    let began = Instant::now();
    let hard_deadline = began + plan.deadline;
    let mut socks = Vec::new();
    for (c, server) in plan.servers.iter().enumerate() {
        let local: SocketAddr = if server.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        }
        .parse()
        .expect("address");
        let sock = bind_udp(local, CLIENT_BUFFER).context("binding a client socket")?;
        sock.set_nonblocking(false)?;
        sock.connect(server).context("connecting a client socket")?;
        let room = plan.room;
        exchange(
            &sock,
            &format!("/join {room}"),
            |r| {
                r.starts_with("+OK")
                    || r.starts_with(&format!("-ERR You are already in room #{room}"))
            },
            hard_deadline,
        )
        .with_context(|| format!("client c{c} joining room {room}"))?;
        exchange(
            &sock,
            &format!("/nick c{c}"),
            |r| r.starts_with("+OK"),
            hard_deadline,
        )
        .with_context(|| format!("client c{c} setting its nick"))?;
        socks.push(sock);
    }
    let m = plan.messages;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        messages: m,
        sent_at: (0..clients * m as usize)
            .map(|_| AtomicU64::new(0))
            .collect(),
        delivered: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    let mut receivers = Vec::new();
    for (c, sock) in socks.iter().enumerate() {
        let sock = sock.try_clone().context("cloning a client socket")?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let sh = shared.clone();
        let expect = clients * m as usize;
        receivers.push(
            std::thread::Builder::new()
                .name(format!("recv-c{c}"))
                .spawn(move || {
                    let mut log = ReceiverLog {
                        deliveries: Vec::with_capacity(expect + 16),
                        garbled: 0,
                        other: 0,
                    };
                    let mut buf = vec![0u8; 65_536];
                    while !sh.stop.load(Relaxed) {
                        let n = match sock.recv(&mut buf) {
                            Ok(n) => n,
                            Err(_) => continue,
                        };
                        let at = sh.now_ns();
                        // An address-confirmation request: answered at
                        // once, not a delivery nor an odd line.
                        if let Some(token) = client::confirm_token(&buf[..n]) {
                            let _ = sock.send(&client::confirm_reply(token));
                            continue;
                        }
                        if client::is_confirm_answer(&buf[..n]) {
                            continue;
                        }
                        if buf.first() != Some(&b'<') {
                            log.other += 1;
                            continue;
                        }
                        match parse_delivery(&buf[..n]) {
                            Some((s, q))
                                if (s as usize) < clients && q >= 1 && q <= sh.messages =>
                            {
                                log.deliveries.push((s, q, at));
                                sh.delivered.fetch_add(1, Relaxed);
                                sh.last_delivery_ns.store(at, Relaxed);
                            }
                            _ => log.garbled += 1,
                        }
                    }
                    log
                })
                .context("spawning a receiver thread")?,
        );
    }

    let interval = Duration::from_secs_f64(1.0 / plan.rate_per_client);
    let first = Instant::now() + Duration::from_millis(20);
    let mut senders = Vec::new();
    for (c, sock) in socks.into_iter().enumerate() {
        let sh = shared.clone();
        let spin = plan.spin;
        let size = plan.size;
        let room = plan.room;
        let offset = interval.mul_f64(c as f64 / clients as f64);
        senders.push(
            std::thread::Builder::new()
                .name(format!("send-c{c}"))
                .spawn(move || {
                    tight_timer_slack();
                    let mut lags = Vec::with_capacity(sh.messages as usize);
                    let mut next = first + offset;
                    for seq in 1..=sh.messages {
                        if sh.stop.load(Relaxed) || Instant::now() >= hard_deadline {
                            break;
                        }
                        let line = body(c, c, room, seq, size);
                        wait_until(next, spin);
                        let now = Instant::now();
                        lags.push(now.saturating_duration_since(next).as_nanos() as u64);
                        let at = sh.now_ns();
                        sh.sent_at[c * sh.messages as usize + seq as usize - 1]
                            .store(at + 1, Relaxed);
                        // A full socket buffer or an ICMP error loses this one;
                        // the count check reports it.
                        let _ = sock.send(line.as_bytes());
                        next += interval;
                    }
                    lags
                })
                .context("spawning a sender thread")?,
        );
    }
    let mut lag_hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    let mut late_sends = 0u64;
    for s in senders {
        for lag in s
            .join()
            .map_err(|_| anyhow::anyhow!("a sender thread panicked"))?
        {
            if lag > 50_000 {
                late_sends += 1;
            }
            let _ = lag_hist.record(lag.max(1));
        }
    }
    let sent_ns: Vec<u64> = shared.sent_at.iter().map(|a| a.load(Relaxed)).collect();
    let sent = sent_ns.iter().filter(|&&t| t > 0).count() as u64;
    let expected = sent * clients as u64;
    let last_send = sent_ns.iter().copied().max().unwrap_or(0).saturating_sub(1);
    let first_send = sent_ns
        .iter()
        .copied()
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(1)
        - 1;

    // Wait for the deliveries: complete, quiet, or the deadline.
    let stop_reason = loop {
        let got = shared.delivered.load(Relaxed);
        if got >= expected {
            break "complete";
        }
        let last = shared.last_delivery_ns.load(Relaxed).max(last_send);
        if shared.now_ns().saturating_sub(last) > plan.quiet.as_nanos() as u64 {
            break "quiet";
        }
        if Instant::now() >= hard_deadline {
            break "deadline";
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Linger briefly for duplicates.
    std::thread::sleep(Duration::from_millis(100));
    shared.stop.store(true, Relaxed);
    let mut logs = Vec::new();
    for r in receivers {
        logs.push(
            r.join()
                .map_err(|_| anyhow::anyhow!("a receiver thread panicked"))?,
        );
    }

    // Latency, duplicates, and the ordering check.
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    let mut history = History::new();
    for c in 0..clients {
        history.add_member(format!("c{c}"), plan.room);
    }
    let mut distinct = 0u64;
    let mut duplicates = 0u64;
    let (mut garbled, mut other) = (0u64, 0u64);
    for (member, log) in logs.iter().enumerate() {
        garbled += log.garbled;
        other += log.other;
        let mut seen = vec![false; clients * m as usize];
        // (time, is_send, sender, seq): sends of this member and its deliveries.
        let mut events: Vec<(u64, bool, u32, u32)> =
            Vec::with_capacity(log.deliveries.len() + m as usize);
        for seq in 1..=m {
            let t = sent_ns[member * m as usize + seq as usize - 1];
            if t > 0 {
                events.push((t - 1, true, member as u32, seq));
            }
        }
        for &(s, q, at) in &log.deliveries {
            let k = s as usize * m as usize + q as usize - 1;
            if std::mem::replace(&mut seen[k], true) {
                duplicates += 1;
            } else {
                distinct += 1;
                if sent_ns[k] > 0 {
                    let _ = hist.record(at.saturating_sub(sent_ns[k] - 1).max(1));
                }
            }
            events.push((at, false, s, q));
        }
        // Stable: a delivery stamped at the same ns as a send stays after it.
        events.sort_by_key(|e| e.0);
        for (at, is_send, s, q) in events {
            if is_send {
                history.sent(member as u32, u64::from(q), at / 1000);
            } else {
                history.delivered(
                    member as u32,
                    MessageId {
                        sender: s,
                        seq: u64::from(q),
                    },
                    at / 1000,
                );
            }
        }
    }
    let report: Report = history.check(plan.properties);
    let send_duration = Duration::from_nanos(last_send.saturating_sub(first_send));
    let lag_us = |q: f64| lag_hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(LatencyResult {
        clients,
        rate_per_client: plan.rate_per_client,
        sent,
        expected_deliveries: expected,
        deliveries: distinct,
        duplicates,
        garbled,
        other,
        send_duration_s: send_duration.as_secs_f64(),
        send_rate: if sent > 1 && !send_duration.is_zero() {
            (sent - 1) as f64 / send_duration.as_secs_f64()
        } else {
            0.0
        },
        stop_reason: stop_reason.to_string(),
        latency: Percentiles::from_ns(&hist),
        pacing: Pacing {
            lag_p50_us: lag_us(0.5),
            lag_p99_us: lag_us(0.99),
            lag_max_us: lag_hist.max() as f64 / 1000.0,
            late_sends,
        },
        check_ok: report.ok() && garbled == 0,
        check: report.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_deadline_and_not_much_longer() {
        tight_timer_slack();
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            let d = Instant::now() + Duration::from_micros(700);
            wait_until(d, Duration::from_micros(100));
            let now = Instant::now();
            assert!(now >= d);
            worst = worst.max(now - d);
        }
        // Generous: a loaded CI machine may preempt the spinning thread.
        assert!(worst < Duration::from_millis(50), "{worst:?}");
    }
}
