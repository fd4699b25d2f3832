//! The report of `launcher stress`: what `--json` writes and what is
//! printed.

use super::StressArgs;
use crate::cluster::fault_proxy::ProxyCounts;
use crate::cluster::settings::FaultConfig;
use crate::load::LoadResult;
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
    pub flood: Option<FloodSummary>,
    /// Peak RSS (VmHWM) of each server this run started, in KiB; empty
    /// with --attach (not known).
    pub server_peak_rss_kib: Vec<Option<u64>>,
    /// How long the checker took.
    pub check_s: f64,
    pub check: Report,
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
) -> StressReport {
    let h = &load.latency;
    let latency = Latency {
        count: h.len(),
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
        mean_us: if h.is_empty() { 0.0 } else { h.mean() },
    };
    let secs = load.run_duration.as_secs_f64();
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let ok = check.ok() && load.garbled == 0 && server_problems.is_empty();
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
        flood: (a.flood_clients > 0).then_some(FloodSummary {
            clients: a.flood_clients,
            sent: load.flood_sent,
            delivered: load.flood_delivered,
            deliveries: load.flood_deliveries,
            refused_replies: load.flood_refused,
        }),
        server_peak_rss_kib,
        check_s,
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
            "  servers (summed): {} server datagrams sent, {} retransmitted payloads, {} duplicate payloads dropped, {} bad peer datagrams, {} posts refused",
            c("link_datagrams_sent"),
            c("retransmissions"),
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
    crate::outln!("  {}", check_text(&r.check).replace('\n', "\n  "));
    crate::outln!("  checker took {:.3}s", r.check_s);
    crate::outln!("  result: {}", if r.ok { "PASS" } else { "FAIL" });
}
