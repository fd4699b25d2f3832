//! `chatserver --metrics IP:PORT`: the Prometheus (OpenMetrics) text format
//! on `GET /metrics`.
//!
//! The served counters are [`ServerCounters`], the very record printed at
//! stop, turned into name/value pairs through its serde serialization: a
//! field added to the record is served without a second edit (as a
//! counter, unless [`GAUGES`] lists it), and [`metric_name`] says under
//! which name. Beside them: clients, members per room, refusals by reason
//! and the resident set size.
//!
//! Nothing runs on the message path: the server loop publishes a
//! [`Snapshot`] every [`PUBLISH_EVERY`] and whenever a scrape asks for one
//! ([`MetricsHandle::asks`], relayed to the loop as
//! [`crate::control::Control::MetricsWanted`]); the HTTP task (hyper, on
//! the runtime beside the loop) encodes the latest snapshot.

use crate::stats::ServerCounters;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Every metric name starts with this (`chatserver_posts_total`).
pub const PREFIX: &str = "chatserver";

/// Fields of [`ServerCounters`] that are levels, not running totals: served
/// as gauges (`chatserver_held_back`). Every other field is a counter
/// (`chatserver_posts_total`). A new field that can go down belongs here.
pub const GAUGES: &[&str] = &[
    "held_back",
    "in_flight",
    "outstanding",
    "peak_outstanding",
    "admission_window",
    "link_backlog",
    // Members of the server's current view.
    "view_members",
];

/// Members of each room: `chatserver_room_members{room="3"}`.
pub const ROOM_MEMBERS: &str = "chatserver_room_members";
/// Clients with a session: `chatserver_clients`.
pub const CLIENTS: &str = "chatserver_clients";
/// Resident set size from `/proc/self/statm`, the name Prometheus' own
/// process collectors use.
pub const RSS: &str = "process_resident_memory_bytes";
/// The refusal counters again, in one family labelled by reason:
/// `chatserver_refusals_total{reason="post"}`.
pub const REFUSALS: &str = "chatserver_refusals_total";

/// Refusals by reason: the label value and the [`ServerCounters`] field
/// that counts it.
pub const REFUSAL_REASONS: &[(&str, &str)] = &[
    // A client's chat line refused: over its fair share, or the cluster's
    // admission window or link backlog is full.
    ("post", "refused_posts"),
    // A peer's message dropped by the strategy's holdback limit.
    ("holdback_limit", "refused_by_holdback_limit"),
    // A delivery not sent to an unconfirmed address over its allowance.
    ("over_allowance", "dropped_over_allowance"),
    // An `-ERR` reply not sent (rate limits).
    ("error_reply_rate", "suppressed_error_replies"),
];

/// How often the server loop publishes a snapshot without being asked.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// The least time between two snapshots published on request: however
/// many scrapes arrive, the loop publishes at most 50 extra a second (an
/// ask within it is answered at its end).
pub const MIN_PUBLISH_GAP: Duration = Duration::from_millis(20);

/// How long a scrape waits for the fresh snapshot it asked for before it
/// serves the latest one (a server busy with a burst answers a moment later).
const FRESH_WAIT: Duration = Duration::from_millis(200);

/// True if the [`ServerCounters`] field `field` is served as a gauge.
pub fn is_gauge(field: &str) -> bool {
    GAUGES.contains(&field)
}

/// The exposed sample name of a [`ServerCounters`] field:
/// `chatserver_FIELD_total` for a counter, `chatserver_FIELD` for a gauge.
pub fn metric_name(field: &str) -> String {
    if is_gauge(field) {
        format!("{PREFIX}_{field}")
    } else {
        format!("{PREFIX}_{field}_total")
    }
}

/// The fields of `c` with their values, by serde: whatever the record
/// holds, ordered by name. Non-integer fields (none today) are left
/// out, since a sample is a number.
pub fn counter_fields(c: &ServerCounters) -> Vec<(String, u64)> {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_u64()?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// What the server loop publishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub counters: ServerCounters,
    /// Clients with a session.
    pub clients: u64,
    /// Members of each room, rooms 1..=N in order.
    pub room_members: Vec<(u32, u64)>,
}

/// The server loop's side: publish snapshots, learn when one is wanted.
#[derive(Debug)]
pub struct MetricsHandle {
    tx: watch::Sender<Arc<Snapshot>>,
    asked: Arc<Notify>,
}

impl MetricsHandle {
    /// Makes `snapshot` the one served from now on.
    pub fn publish(&self, snapshot: Snapshot) {
        self.tx.send_replace(Arc::new(snapshot));
    }

    /// What tells when a scrape asks for a fresh snapshot, for a task of
    /// the runtime that serves the scrapes.
    pub fn asks(&self) -> ScrapeAsks {
        ScrapeAsks(self.asked.clone())
    }
}

/// See [`MetricsHandle::asks`].
#[derive(Debug, Clone)]
pub struct ScrapeAsks(Arc<Notify>);

impl ScrapeAsks {
    /// Completes when a scrape asks for a fresh snapshot (an ask made
    /// while nobody waited is kept for the next call).
    pub async fn next(&self) {
        self.0.notified().await
    }
}

/// The HTTP side: what a request handler reads.
#[derive(Debug, Clone)]
struct Shared {
    rx: watch::Receiver<Arc<Snapshot>>,
    asked: Arc<Notify>,
}

/// Binds `addr` (port 0: any free port) now, so that a bad address fails
/// before the server says `ready`; returns the listener and its address.
pub fn bind(addr: SocketAddr) -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let local = l.local_addr()?;
    Ok((l, local))
}

/// Serves `/metrics` on `listener` from a task of the current runtime;
/// returns the handle the server loop publishes through.
pub fn serve(listener: std::net::TcpListener) -> std::io::Result<MetricsHandle> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let asked = Arc::new(Notify::new());
    let shared = Shared {
        rx,
        asked: asked.clone(),
    };
    tokio::spawn(accept_loop(listener, shared));
    Ok(MetricsHandle { tx, asked })
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Shared) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning on the same error.
                tracing::debug!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| respond(shared.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!("metrics: connection: {e}");
            }
        });
    }
}

async fn respond(
    mut shared: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found: try /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n"));
    }
    // Ask the loop for a fresh snapshot, so that a scrape right after
    // some traffic sees it; serve the latest if it is slow to come. The
    // asks of many scrapes at once fold into one (`notify_one` keeps a
    // single permit).
    shared.rx.mark_unchanged();
    shared.asked.notify_one();
    let _ = tokio::time::timeout(FRESH_WAIT, shared.rx.changed()).await;
    let snapshot = shared.rx.borrow().clone();
    let body = encode(&snapshot, rss_bytes());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = hyper::header::HeaderValue::from_str(
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    ) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(r)
}

/// The resident set size of this process (`/proc/self/statm`, field 2, in
/// pages); `None` where there is no procfs.
pub fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}

/// The text format of one snapshot.
pub fn encode(s: &Snapshot, rss: Option<u64>) -> String {
    let mut reg = Registry::with_prefix(PREFIX);
    let fields = counter_fields(&s.counters);
    for (name, value) in &fields {
        let help = format!("`{name}` of the server's counters (as in its `stopped:` line)");
        if is_gauge(name) {
            let g = Gauge::<u64, AtomicU64>::default();
            g.set(*value);
            reg.register(name.as_str(), help, g);
        } else {
            let c = Counter::<u64>::default();
            c.inc_by(*value);
            reg.register(name.as_str(), help, c);
        }
    }
    let refusals = Family::<Vec<(String, String)>, Counter>::default();
    for (reason, field) in REFUSAL_REASONS {
        if let Some((_, v)) = fields.iter().find(|(n, _)| n == field) {
            refusals
                .get_or_create(&vec![("reason".to_string(), reason.to_string())])
                .inc_by(*v);
        }
    }
    reg.register(
        "refusals",
        "Refusals by reason (the refusal counters, labelled)",
        refusals,
    );
    let clients = Gauge::<u64, AtomicU64>::default();
    clients.set(s.clients);
    reg.register("clients", "Clients with a session", clients);
    let members = Family::<Vec<(String, String)>, Gauge<u64, AtomicU64>>::default();
    for (room, n) in &s.room_members {
        members
            .get_or_create(&vec![("room".to_string(), room.to_string())])
            .set(*n);
    }
    reg.register(
        "room_members",
        "Members of each room on this server",
        members,
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &reg);
    if let Some(rss) = rss {
        let mut process = Registry::default();
        let g = Gauge::<u64, AtomicU64>::default();
        g.set(rss);
        process.register_with_unit(
            "process_resident_memory",
            "Resident set size (/proc/self/statm)",
            prometheus_client::registry::Unit::Bytes,
            g,
        );
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &process);
    }
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

/// The metrics address in a `ready` line (`..., metrics on http://ADDR/metrics`).
pub fn addr_in_ready_line(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(READY_MARK)?;
    rest.split('/').next()?.parse().ok()
}

/// What precedes the metrics address in the `ready` line.
pub const READY_MARK: &str = "metrics on http://";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_field_is_served_under_its_name() {
        let s = Snapshot {
            counters: ServerCounters {
                posts: 7,
                held_back: 2,
                refused_posts: 3,
                ..ServerCounters::default()
            },
            clients: 4,
            room_members: vec![(1, 0), (2, 5)],
        };
        let text = encode(&s, Some(4096));
        let fields = counter_fields(&s.counters);
        assert_eq!(
            fields.len(),
            ServerCounters::default().entries().count(),
            "serde and entries() disagree"
        );
        for (name, value) in &fields {
            let line = format!("{} {value}\n", metric_name(name));
            assert!(text.contains(&line), "{line:?} missing in\n{text}");
        }
        for want in [
            "chatserver_posts_total 7\n",
            "chatserver_held_back 2\n",
            "# TYPE chatserver_held_back gauge\n",
            "# TYPE chatserver_posts counter\n",
            "chatserver_clients 4\n",
            "chatserver_room_members{room=\"2\"} 5\n",
            "chatserver_refusals_total{reason=\"post\"} 3\n",
            "process_resident_memory_bytes 4096\n",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn refusal_reasons_name_real_fields() {
        let fields = counter_fields(&ServerCounters::default());
        for (_, f) in REFUSAL_REASONS {
            assert!(fields.iter().any(|(n, _)| n == f), "{f}");
        }
    }

    #[test]
    fn ready_line_address() {
        let line = "S01 ready: listening on 127.0.0.1:5000 (ordering total), metrics on http://127.0.0.1:9100/metrics";
        assert_eq!(
            addr_in_ready_line(line),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(addr_in_ready_line("S01 ready: listening on x"), None);
        assert_eq!(
            addr_in_ready_line("metrics on http://nonsense/metrics"),
            None
        );
    }

    #[test]
    fn rss_is_positive_here() {
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }
}
