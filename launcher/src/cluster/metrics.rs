//! Reading a node's `/metrics` (`chatserver --metrics`): one HTTP GET
//! ([`scrape`]), parsed with a Prometheus text parser into a [`NodeSample`];
//! rates between two samples ([`NodeSample::rates_since`]).
//!
//! Blocking on purpose (no runtime of its own), so it may be called from
//! any thread; from async code, call it in `spawn_blocking`.

use node::metrics as names;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Why a `/metrics` text could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("not the Prometheus text format: {0}")]
    Parse(#[from] std::io::Error),
    #[error("no {0} sample: not a chatserver's /metrics?")]
    Missing(&'static str),
}

/// One scrape of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSample {
    /// When the answer arrived (for rates).
    pub taken: Instant,
    /// Every sample without labels, by its exposed name
    /// (`chatserver_posts_total`, `chatserver_held_back`, ...).
    pub values: BTreeMap<String, f64>,
    /// Members per room, from `chatserver_room_members{room="N"}`.
    pub room_members: BTreeMap<u32, u64>,
    /// `chatserver_refusals_total{reason="..."}`.
    pub refusals: BTreeMap<String, u64>,
}

/// Per-second rates between two samples of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub posts: f64,
    pub deliveries: f64,
    pub retransmissions: f64,
}

impl NodeSample {
    /// A sample by its exposed name.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// A field of the server's counters (`ServerCounters`) by its field
    /// name, whatever its metric type.
    pub fn field(&self, field: &str) -> Option<u64> {
        self.value(&names::metric_name(field)).map(as_u64)
    }

    /// Every `ServerCounters` field found in the sample, by field name:
    /// what the node's `stopped:` line would say now.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        names::counter_fields(&node::stats::ServerCounters::default())
            .into_iter()
            .filter_map(|(f, _)| Some((f.clone(), self.field(&f)?)))
            .collect()
    }

    pub fn posts(&self) -> u64 {
        self.field("posts").unwrap_or(0)
    }

    pub fn deliveries(&self) -> u64 {
        self.field("deliveries").unwrap_or(0)
    }

    pub fn retransmissions(&self) -> u64 {
        self.field("retransmissions").unwrap_or(0)
    }

    /// Messages in the holdback queue.
    pub fn held_back(&self) -> u64 {
        self.field("held_back").unwrap_or(0)
    }

    pub fn clients(&self) -> u64 {
        self.value(names::CLIENTS).map_or(0, as_u64)
    }

    /// Resident set size; `None` where the node has no procfs.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.value(names::RSS).map(as_u64)
    }

    /// The node's current membership view, `None` while the server has no
    /// such counter (static membership).
    pub fn view(&self) -> Option<u64> {
        self.field("view")
    }

    /// Rates from `earlier` (of the same node) to this sample; zero when
    /// no time passed, and a counter that went down (the node restarted)
    /// counts from zero.
    pub fn rates_since(&self, earlier: &NodeSample) -> Rates {
        let secs = self
            .taken
            .saturating_duration_since(earlier.taken)
            .as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        let rate = |now: u64, then: u64| {
            let d = if now >= then { now - then } else { now };
            d as f64 / secs
        };
        Rates {
            posts: rate(self.posts(), earlier.posts()),
            deliveries: rate(self.deliveries(), earlier.deliveries()),
            retransmissions: rate(self.retransmissions(), earlier.retransmissions()),
        }
    }
}

fn as_u64(v: f64) -> u64 {
    // Counters and gauges here are whole numbers; NaN and negatives read as 0.
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

/// Parses a `/metrics` text (Prometheus or OpenMetrics text format).
pub fn parse(text: &str, taken: Instant) -> Result<NodeSample, MetricsError> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    let mut s = NodeSample {
        taken,
        values: BTreeMap::new(),
        room_members: BTreeMap::new(),
        refusals: BTreeMap::new(),
    };
    for sample in scrape.samples {
        let v = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            // None are served; a histogram is not one number.
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => {
                continue;
            }
        };
        if sample.metric == names::ROOM_MEMBERS {
            if let Some(room) = sample.labels.get("room").and_then(|r| r.parse().ok()) {
                s.room_members.insert(room, as_u64(v));
            }
        } else if sample.metric == names::REFUSALS {
            if let Some(reason) = sample.labels.get("reason") {
                s.refusals.insert(reason.to_string(), as_u64(v));
            }
        } else if sample.labels.is_empty() {
            s.values.insert(sample.metric, v);
        }
    }
    if !s.values.contains_key(names::CLIENTS) {
        return Err(MetricsError::Missing(names::CLIENTS));
    }
    Ok(s)
}

/// GETs `http://ADDR/metrics` within `timeout` and parses it.
pub fn scrape(addr: SocketAddr, timeout: Duration) -> anyhow::Result<NodeSample> {
    use anyhow::Context;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    let url = format!("http://{addr}/metrics");
    let text = agent
        .get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .with_context(|| format!("GET {url}"))?;
    parse(&text, Instant::now()).with_context(|| format!("reading {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::metrics::Snapshot;
    use node::stats::ServerCounters;

    #[test]
    fn parses_what_the_server_encodes() {
        let snap = Snapshot {
            counters: ServerCounters {
                posts: 10,
                deliveries: 30,
                retransmissions: 2,
                held_back: 1,
                refused_posts: 4,
                ..ServerCounters::default()
            },
            clients: 3,
            room_members: vec![(1, 2), (2, 1)],
        };
        let t0 = Instant::now();
        let s = parse(&node::metrics::encode(&snap, Some(8192)), t0).unwrap();
        assert_eq!(
            (
                s.posts(),
                s.deliveries(),
                s.retransmissions(),
                s.held_back()
            ),
            (10, 30, 2, 1)
        );
        assert_eq!(s.clients(), 3);
        assert_eq!(s.rss_bytes(), Some(8192));
        assert_eq!(s.view(), None);
        assert_eq!(s.room_members, BTreeMap::from([(1, 2), (2, 1)]));
        assert_eq!(s.refusals.get("post"), Some(&4));
        let all: BTreeMap<String, u64> =
            names::counter_fields(&snap.counters).into_iter().collect();
        assert_eq!(s.counters(), all);

        let mut later = s.clone();
        later.taken = t0 + Duration::from_secs(2);
        later.values.insert("chatserver_posts_total".into(), 30.0);
        let r = later.rates_since(&s);
        assert_eq!((r.posts, r.deliveries), (10.0, 0.0));
    }

    #[test]
    fn refuses_what_is_not_a_chatserver() {
        assert!(matches!(
            parse("# HELP x y\nx 1\n", Instant::now()),
            Err(MetricsError::Missing(_))
        ));
        assert!(parse("", Instant::now()).is_err());
    }

    #[test]
    fn scrape_of_nothing_fails_within_the_timeout() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // Accepts (the backlog does) but never answers.
        let start = Instant::now();
        assert!(scrape(addr, Duration::from_millis(300)).is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(l);
    }
}
