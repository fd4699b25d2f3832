//! The report of `launcher stress`: what `--json` writes and what is
//! printed.

use super::StressArgs;
use super::faults::{FaultOutcome, ServerFault};
use super::pause::Pauses;
use crate::cluster::fault_proxy::ProxyCounts;
use crate::cluster::settings::FaultConfig;
use crate::load::LoadResult;
use hdrhistogram::Histogram;
use serde::Serialize;
use testkit::check::{Properties, Report};

/// Latency figures in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    /// The percentiles of a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
        }
    }

    /// `p50 1.485 ms, p90 1.779 ms, p99 2.117 ms, max 2.127 ms (160 samples)`.
    pub fn text(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.count
        )
    }
}

/// The report (`--json` writes it).
#[derive(Debug, Clone, Serialize)]
pub struct StressReport {
    pub ok: bool,
    pub mode: String,
    pub properties: Properties,
    /// Servers in the cluster (`client_servers` says which got clients).
    pub servers: usize,
    pub clients: usize,
    pub rooms: u32,
    pub messages_per_client: u32,
    pub rate: f64,
    pub window: u32,
    pub size: usize,
    pub attached: bool,
    pub faults: Option<FaultSummary>,
    pub stop_reason: String,
    pub sent: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub distinct_deliveries: u64,
    pub setup_s: f64,
    pub send_duration_s: f64,
    pub run_duration_s: f64,
    pub messages_per_s: f64,
    pub deliveries_per_s: f64,
    pub latency: Latency,
    /// Send -> the kernel's arrival stamp on the member's socket: the
    /// latency without the load tool's own wait to read (its one thread
    /// shares the machine with the servers). `None` without stamps.
    pub arrival_latency: Option<Latency>,
    /// Increase of the kernel's `Udp RcvbufErrors` during the run (all
    /// sockets of the machine).
    pub kernel_rcvbuf_errors: Option<u64>,
    pub proxy: Option<ProxyCounts>,
    /// Counters of the servers this run started, summed (empty with --attach).
    pub server_counters: std::collections::BTreeMap<String, u64>,
    pub clients_per_server: Vec<usize>,
    pub other_replies: u64,
    pub other_examples: Vec<String>,
    pub garbled: u64,
    pub garbled_examples: Vec<String>,
    pub server_problems: Vec<String>,
    /// Address-confirmation requests answered.
    pub confirmations: u64,
    /// Datagrams or runs read from the clients' sockets (one system call
    /// may take several), and of them the runs of several deliveries
    /// (`UDP_GRO`; 0 with --no-gro).
    pub client_reads: u64,
    pub coalesced_reads: u64,
    pub flood: Option<FloodSummary>,
    /// Peak RSS (VmHWM) of each server this run started, in KiB; empty
    /// with --attach (not known).
    pub server_peak_rss_kib: Vec<Option<u64>>,
    /// How long the checker took.
    pub check_s: f64,
    /// The servers (1-based) that got clients.
    pub client_servers: Vec<usize>,
    /// Why some servers got no clients (`--kill-server` without
    /// `--client-servers`).
    pub client_note: Option<String>,
    /// `--kill-server`/`--stop-server`, in the order given.
    pub server_faults: Vec<ServerFaultReport>,
    /// Faults that could not be done as asked (the run fails).
    pub fault_problems: Vec<String>,
    /// The longest stretch with no delivery at any client of an unaffected
    /// server while a message was still due to one of them (ms).
    pub longest_pause_ms: f64,
    /// When it started, after the sending started (ms); `None` when nothing
    /// was ever due.
    pub longest_pause_start_ms: Option<f64>,
    /// It lasted until the run stopped: deliveries never resumed.
    pub longest_pause_open: bool,
    pub check: Report,
}

/// One `--kill-server`/`--stop-server` and what came of it. Times are
/// after the sending started, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFaultReport {
    /// `kill` or `stop`.
    pub kind: &'static str,
    /// 1-based.
    pub server: usize,
    /// As asked.
    pub at_ms: u64,
    /// As asked (stop only); `None`: not resumed during the run.
    pub for_ms: Option<u64>,
    /// When the signal went out; `None`: it did not.
    pub done_at_ms: Option<f64>,
    /// When SIGCONT went out as asked.
    pub resumed_at_ms: Option<f64>,
    /// Still stopped when the load ended, continued then.
    pub continued_at_end: bool,
    /// From the signal to the next delivery at a client of an unaffected
    /// server; `None`: none came.
    pub first_delivery_after_ms: Option<f64>,
    pub problem: Option<String>,
}

/// The fault-related part of the report.
pub(super) struct FaultPart {
    client_servers: Vec<usize>,
    client_note: Option<String>,
    server_faults: Vec<ServerFaultReport>,
    fault_problems: Vec<String>,
    longest_pause_ms: f64,
    longest_pause_start_ms: Option<f64>,
    longest_pause_open: bool,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `load_start_us`: when the sending started, on the history's clock.
pub(super) fn fault_part(
    faults: &[ServerFault],
    outcomes: &[FaultOutcome],
    pauses: &Pauses,
    load_start_us: u64,
    client_servers: Vec<usize>,
    client_note: Option<String>,
) -> FaultPart {
    let mut problems = Vec::new();
    let server_faults = faults
        .iter()
        .zip(outcomes)
        .map(|(f, o)| {
            if let Some(p) = &o.problem {
                problems.push(format!("{}: {p}", f.describe()));
            }
            let us = |d: std::time::Duration| d.as_micros() as u64;
            ServerFaultReport {
                kind: f.kind.as_str(),
                server: f.server,
                at_ms: f.at.as_millis() as u64,
                for_ms: f.for_.map(|d| d.as_millis() as u64),
                done_at_ms: o.done_at.map(|d| ms(us(d))),
                resumed_at_ms: o.resumed_at.map(|d| ms(us(d))),
                continued_at_end: o.continued_at_end,
                first_delivery_after_ms: o
                    .done_at
                    .and_then(|d| pauses.first_delivery_after(load_start_us + us(d)))
                    .map(ms),
                problem: o.problem.clone(),
            }
        })
        .collect();
    let longest = pauses.longest.unwrap_or_default();
    FaultPart {
        client_servers,
        client_note,
        server_faults,
        fault_problems: problems,
        longest_pause_ms: ms(longest.len_us),
        longest_pause_start_ms: pauses
            .longest
            .map(|p| ms(p.start_us.saturating_sub(load_start_us))),
        longest_pause_open: longest.open,
    }
}

/// What the flooding clients did.
#[derive(Debug, Clone, Serialize)]
pub struct FloodSummary {
    pub clients: usize,
    pub sent: u64,
    /// Flood messages that reached the room (at least one member).
    pub delivered: u64,
    /// Deliveries of flood messages (datagrams, all members).
    pub deliveries: u64,
    /// `-ERR` replies the flooding clients got.
    pub refused_replies: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultSummary {
    pub delay_min_ms: f64,
    pub delay_max_ms: f64,
    pub loss: f64,
    pub duplicate: f64,
    pub seed: u64,
}

impl From<&FaultConfig> for FaultSummary {
    fn from(f: &FaultConfig) -> Self {
        FaultSummary {
            delay_min_ms: f.delay_min_ms,
            delay_max_ms: f.delay_max_ms,
            loss: f.loss,
            duplicate: f.duplicate,
            seed: f.seed,
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    a: &StressArgs,
    mode: &str,
    props: Properties,
    servers: usize,
    faults: Option<&FaultConfig>,
    load: LoadResult,
    check: Report,
    kernel_rcvbuf_errors: Option<u64>,
    proxy: Option<ProxyCounts>,
    server_counters: std::collections::BTreeMap<String, u64>,
    server_problems: Vec<String>,
    check_s: f64,
    server_peak_rss_kib: Vec<Option<u64>>,
    faults_part: FaultPart,
) -> StressReport {
    let latency = Latency::of(&load.latency);
    let arrival_latency = load.arrival_latency.as_ref().map(Latency::of);
    let secs = load.run_duration.as_secs_f64();
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let ok = check.ok()
        && load.garbled == 0
        && server_problems.is_empty()
        && faults_part.fault_problems.is_empty();
    StressReport {
        ok,
        mode: mode.to_string(),
        properties: props,
        servers,
        clients: a.clients,
        rooms: a.rooms,
        messages_per_client: a.messages,
        rate: a.rate,
        window: a.window,
        size: a.size,
        attached: a.attach,
        faults: faults.map(FaultSummary::from),
        stop_reason: load.stop_reason.to_string(),
        sent: load.sent,
        expected_deliveries: load.expected,
        deliveries: load.deliveries,
        distinct_deliveries: load.distinct,
        setup_s: load.setup.as_secs_f64(),
        send_duration_s: load.send_duration.as_secs_f64(),
        run_duration_s: secs,
        messages_per_s: per_s(load.sent),
        deliveries_per_s: per_s(load.distinct),
        latency,
        arrival_latency,
        kernel_rcvbuf_errors,
        proxy,
        server_counters,
        clients_per_server: load.clients_per_server,
        other_replies: load.other,
        other_examples: load.other_examples,
        garbled: load.garbled,
        garbled_examples: load.garbled_examples,
        server_problems,
        confirmations: load.confirmations,
        client_reads: load.reads,
        coalesced_reads: load.coalesced_reads,
        flood: (a.flood_clients > 0).then_some(FloodSummary {
            clients: a.flood_clients,
            sent: load.flood_sent,
            delivered: load.flood_delivered,
            deliveries: load.flood_deliveries,
            refused_replies: load.flood_refused,
        }),
        server_peak_rss_kib,
        check_s,
        client_servers: faults_part.client_servers,
        client_note: faults_part.client_note,
        server_faults: faults_part.server_faults,
        fault_problems: faults_part.fault_problems,
        longest_pause_ms: faults_part.longest_pause_ms,
        longest_pause_start_ms: faults_part.longest_pause_start_ms,
        longest_pause_open: faults_part.longest_pause_open,
        check,
    }
}

/// The checker's verdict for the report: every violation is counted (the
/// counts are exact), only the examples are capped.
pub fn check_text(r: &Report) -> String {
    let head = format!(
        "checked {} over {} members, {} rooms, {} messages, {} deliveries: ",
        r.checked, r.members, r.rooms, r.messages, r.deliveries
    );
    if r.ok() {
        return head + "OK";
    }
    let by_kind: Vec<String> = r
        .counts
        .iter()
        .filter(|(_, c)| **c > 0)
        .map(|(k, c)| format!("{c} {k}"))
        .collect();
    let mut s = format!(
        "{head}FAILED: {} violations in all ({}; every violation is counted), the first {} of each kind shown:",
        r.total_violations(),
        by_kind.join(", "),
        testkit::check::DEFAULT_EXAMPLES
    );
    for e in &r.examples {
        s.push_str(&format!("\n  {}: {}", e.violation.kind(), e.text));
    }
    s
}

/// Each server's peak RSS, `s1 4.6 MiB, s2 unknown`; `None` when not known
/// at all.
pub(super) fn peak_rss_text(r: &StressReport) -> Option<String> {
    if r.server_peak_rss_kib.is_empty() {
        return None;
    }
    let each: Vec<String> = r
        .server_peak_rss_kib
        .iter()
        .enumerate()
        .map(|(i, k)| match k {
            Some(k) => format!("s{} {:.1} MiB", i + 1, *k as f64 / 1024.0),
            None => format!("s{} unknown", i + 1),
        })
        .collect();
    Some(each.join(", "))
}

pub(super) fn print(r: &StressReport) {
    let ms = |us: u64| us as f64 / 1000.0;
    crate::outln!(
        "stress: mode {} ({} servers, {} clients, {} rooms, {} messages each{}), checking {}",
        r.mode,
        r.servers,
        r.clients,
        r.rooms,
        r.messages_per_client,
        match &r.faults {
            Some(f) => format!(
                ", proxy delay {}..{} ms loss {} duplicate {} seed {}",
                f.delay_min_ms, f.delay_max_ms, f.loss, f.duplicate, f.seed
            ),
            None => String::new(),
        },
        r.properties
    );
    crate::outln!(
        "  sent {} messages, {}/{} deliveries ({} datagrams) in {:.3}s, stopped: {}",
        r.sent,
        r.distinct_deliveries,
        r.expected_deliveries,
        r.deliveries,
        r.run_duration_s,
        r.stop_reason
    );
    crate::outln!(
        "  throughput {:.0} messages/s, {:.0} deliveries/s",
        r.messages_per_s,
        r.deliveries_per_s
    );
    crate::outln!("  latency send->delivery: {}", r.latency.text());
    if let Some(a) = &r.arrival_latency {
        crate::outln!(
            "  latency send->arrival (kernel stamp on the client's socket, before this tool read it): {}",
            a.text()
        );
    }
    if let Some(f) = &r.flood {
        crate::outln!(
            "  flood: {} client{} in room 1 sent {} messages; {} reached the room ({} deliveries), {} -ERR replies (refusals are answered at most every 250 ms)",
            f.clients,
            if f.clients == 1 { "" } else { "s" },
            f.sent,
            f.delivered,
            f.deliveries,
            f.refused_replies
        );
        crate::outln!(
            "  normal clients' latency during the flood: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(r.latency.p50_us),
            ms(r.latency.p99_us),
            ms(r.latency.max_us)
        );
    }
    if r.attached {
        crate::outln!("  servers' peak RSS: not known (attached to a running cluster)");
    } else if let Some(each) = peak_rss_text(r) {
        crate::outln!("  servers' peak RSS (VmHWM): {each}");
    }
    if r.confirmations > 0 {
        crate::outln!(
            "  {} address-confirmation requests answered",
            r.confirmations
        );
    }
    crate::outln!(
        "  clients' socket reads: {}, of which {} held a run of several datagrams (UDP_GRO)",
        r.client_reads,
        r.coalesced_reads
    );
    match r.kernel_rcvbuf_errors {
        Some(n) => crate::outln!("  kernel UDP receive-buffer drops during the run: {n}"),
        None => crate::outln!("  kernel UDP receive-buffer drops: unknown (no /proc/net/snmp)"),
    }
    if let Some(p) = &r.proxy {
        crate::outln!("  proxy: {p}");
    }
    if !r.server_counters.is_empty() {
        let c = |k: &str| r.server_counters.get(k).copied().unwrap_or(0);
        crate::outln!(
            "  servers (summed): {} server datagrams sent ({} second copies on lossy links), {} retransmitted payloads ({} on a reported gap, {} on a timeout; {} found needless), {} duplicate payloads dropped, {} bad peer datagrams, {} posts refused",
            c("link_datagrams_sent"),
            c("duplicated_datagrams"),
            c("retransmissions"),
            c("resends_on_gap"),
            c("resends_on_timeout"),
            c("needless_resends"),
            c("duplicates"),
            c("bad_peer_datagrams"),
            c("refused_posts")
        );
        let lost = r.proxy.as_ref().map_or(0, |p| p.dropped);
        if c("retransmissions") > 0 && lost == 0 && r.faults.is_some() {
            crate::outln!(
                "    (no datagram was lost: these resends were spurious. The proxy's delay reorders \
                 datagrams; a link takes a datagram overtaken by later ones for a lost one, reports \
                 the gap and the sender resends it after about one round trip; the late original \
                 arrives too, and one of the two is dropped as a duplicate)"
            );
        }
    }
    if r.other_replies > 0 {
        crate::outln!(
            "  {} other datagrams (not deliveries), e.g. {:?}",
            r.other_replies,
            r.other_examples
        );
    }
    if r.garbled > 0 {
        crate::outln!(
            "  {} garbled deliveries, e.g. {:?}",
            r.garbled,
            r.garbled_examples
        );
    }
    for p in &r.server_problems {
        crate::outln!("  {p}");
    }
    print_faults(r);
    crate::outln!("  {}", check_text(&r.check).replace('\n', "\n  "));
    crate::outln!("  checker took {:.3}s", r.check_s);
    crate::outln!("  result: {}", if r.ok { "PASS" } else { "FAIL" });
}

/// The server faults and the pauses (nothing without `--kill-server` or
/// `--stop-server`).
fn print_faults(r: &StressReport) {
    if r.server_faults.is_empty() {
        return;
    }
    if let Some(note) = &r.client_note {
        crate::outln!("  {note}");
    }
    for f in &r.server_faults {
        let what = match (f.kind, f.for_ms) {
            ("stop", Some(d)) => format!("stop server {} at {} ms for {d} ms", f.server, f.at_ms),
            ("stop", None) => format!("stop server {} at {} ms (no --for)", f.server, f.at_ms),
            (k, _) => format!("{k} server {} at {} ms", f.server, f.at_ms),
        };
        let mut line = match f.done_at_ms {
            Some(t) => format!("  {what}: signalled at {t:.1} ms"),
            None => format!("  {what}: NOT DONE"),
        };
        if let Some(t) = f.resumed_at_ms {
            line.push_str(&format!(", resumed at {t:.1} ms"));
        }
        if f.continued_at_end {
            line.push_str(", continued when the load ended");
        }
        if f.done_at_ms.is_some() {
            match f.first_delivery_after_ms {
                Some(d) => line.push_str(&format!("; next delivery {d:.1} ms later")),
                None => line.push_str("; no delivery after it"),
            }
        }
        if let Some(p) = &f.problem {
            line.push_str(&format!(" ({p})"));
        }
        crate::outln!("{line}");
    }
    match r.longest_pause_start_ms {
        Some(start) => crate::outln!(
            "  longest pause in deliveries (clients of unaffected servers, while messages were due): {:.1} ms, from {start:.1} ms after the sending started{}",
            r.longest_pause_ms,
            if r.longest_pause_open {
                " until the run stopped (deliveries never resumed)"
            } else {
                ""
            }
        ),
        None => crate::outln!("  longest pause in deliveries: none (nothing was due)"),
    }
}
