//! `launcher status --watch`: the nodes' live figures, scraped from their
//! `/metrics` (the addresses the state file records), one table a second.
//!
//! On a terminal each table replaces the last; otherwise (a pipe, a file,
//! a test) the tables follow one another as plain lines.

use crate::cluster::metrics::{self, NodeSample};
use crate::cluster::procfs;
use crate::cluster::state::{NodeState, NodeStatus, StateFile};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long one scrape may take: a node that does not answer within it is
/// shown without figures rather than holding up the table.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(700);

/// One node's row.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub name: String,
    pub state: String,
    pub restarts: u32,
    pub sample: Option<NodeSample>,
    /// Rates since the previous sample of the same process.
    pub rates: Option<metrics::Rates>,
}

/// The state as the table shows it: `up`, `down` for a recorded pid that
/// is gone, else the supervisor's word.
fn shown_state(n: &NodeState) -> String {
    let alive = match (n.pid, n.start_time) {
        (Some(p), Some(t)) => procfs::is_same_process(p, t),
        _ => false,
    };
    match n.status {
        NodeStatus::Up | NodeStatus::Starting if !alive && n.pid.is_some() => "down".into(),
        s => s.to_string(),
    }
}

/// Scrapes every node with a metrics address, in parallel.
fn scrape_all(nodes: &[NodeState]) -> Vec<Option<NodeSample>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| {
                let addr: Option<SocketAddr> = n.metrics.as_deref().and_then(|a| a.parse().ok());
                s.spawn(move || addr.and_then(|a| metrics::scrape(a, SCRAPE_TIMEOUT).ok()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    })
}

/// A rate with one decimal under 100, whole above.
fn rate(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    }
}

fn mib(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => "-".into(),
    }
}

/// The table: a header and one line per node.
pub(super) fn render(rows: &[Row]) -> Vec<String> {
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let mut out = vec![format!(
        "{:w$}  {:10}  {:>8}  {:>7}  {:>8}  {:>9}  {:>8}  {:>8}  {:>5}  {:>10}",
        "NAME",
        "STATE",
        "RESTARTS",
        "CLIENTS",
        "POSTS/S",
        "DELIV/S",
        "RETX/S",
        "HOLDBACK",
        "VIEW",
        "RSS"
    )];
    for r in rows {
        let s = r.sample.as_ref();
        let num = |f: fn(&NodeSample) -> u64| s.map_or("-".into(), |s| f(s).to_string());
        out.push(format!(
            "{:w$}  {:10}  {:>8}  {:>7}  {:>8}  {:>9}  {:>8}  {:>8}  {:>5}  {:>10}",
            r.name,
            r.state,
            r.restarts,
            num(NodeSample::clients),
            rate(r.rates.map(|x| x.posts)),
            rate(r.rates.map(|x| x.deliveries)),
            rate(r.rates.map(|x| x.retransmissions)),
            num(NodeSample::held_back),
            s.and_then(NodeSample::view)
                .map_or("-".into(), |v| v.to_string()),
            mib(s.and_then(NodeSample::rss_bytes)),
        ));
    }
    out
}

/// Refreshes the table every `every` until `count` tables are shown (or
/// for ever), re-reading the state file each time: `read_state` returns
/// `None` once the cluster is no longer running, which ends the watch.
pub(super) fn watch(
    count: Option<u64>,
    every: Duration,
    mut read_state: impl FnMut() -> anyhow::Result<Option<StateFile>>,
) -> anyhow::Result<bool> {
    let tty = std::io::stdout().is_terminal();
    // Previous sample per (node, pid): a restarted node starts afresh.
    let mut prev: HashMap<(String, Option<i32>), NodeSample> = HashMap::new();
    let start = Instant::now();
    let mut shown = 0u64;
    loop {
        let Some(st) = read_state()? else {
            return Ok(false);
        };
        let samples = scrape_all(&st.nodes);
        let rows: Vec<Row> = st
            .nodes
            .iter()
            .zip(samples)
            .map(|(n, sample)| {
                let key = (n.name.clone(), n.pid);
                let rates = match (&sample, prev.get(&key)) {
                    (Some(now), Some(then)) => Some(now.rates_since(then)),
                    _ => None,
                };
                if let Some(s) = &sample {
                    prev.insert(key, s.clone());
                }
                Row {
                    name: n.name.clone(),
                    state: shown_state(n),
                    restarts: n.restarts,
                    sample,
                    rates,
                }
            })
            .collect();
        let lines = render(&rows);
        if tty {
            // Home and clear, then the table: it replaces the last one.
            crate::out!("\x1b[H\x1b[2J");
        } else if shown > 0 {
            crate::outln!();
        }
        crate::outln!(
            "cluster {} ({}), {}",
            st.cluster,
            st.ordering,
            if shown == 0 {
                "rates from the next refresh on".to_string()
            } else {
                format!("every {} ms", every.as_millis())
            }
        );
        for l in lines {
            crate::outln!("{l}");
        }
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(true);
        }
        // Paced from the start, so that scrapes do not stretch the period.
        let next = start + every.saturating_mul(u32::try_from(shown).unwrap_or(u32::MAX));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::metrics::{Snapshot, encode};
    use node::stats::ServerCounters;

    #[test]
    fn rows_show_figures_or_dashes() {
        let snap = Snapshot {
            counters: ServerCounters {
                posts: 5,
                held_back: 2,
                ..ServerCounters::default()
            },
            clients: 3,
            room_members: vec![(1, 3)],
        };
        let t = Instant::now();
        let sample = metrics::parse(&encode(&snap, Some(3 * 1024 * 1024)), t).unwrap();
        let rows = [
            Row {
                name: "s1".into(),
                state: "up".into(),
                restarts: 1,
                sample: Some(sample),
                rates: Some(metrics::Rates {
                    posts: 2.5,
                    deliveries: 250.0,
                    retransmissions: 0.0,
                }),
            },
            Row {
                name: "second".into(),
                state: "down".into(),
                restarts: 0,
                sample: None,
                rates: None,
            },
        ];
        let lines = render(&rows);
        assert_eq!(lines.len(), 3);
        let f: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            f,
            [
                "s1", "up", "1", "3", "2.5", "250", "0.0", "2", "-", "3.0", "MiB"
            ]
        );
        let f: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            f,
            ["second", "down", "0", "-", "-", "-", "-", "-", "-", "-"]
        );
        assert!(lines[0].starts_with("NAME    STATE"), "{}", lines[0]);
    }
}
