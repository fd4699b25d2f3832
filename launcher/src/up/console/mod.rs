//! The web console of `launcher up --console IP:PORT`: one page that shows
//! the cluster live and lets a person chat.
//!
//! It knows what the supervisor knows (each node's state, pid, restarts:
//! [`Console::set_state`] on every change), what the nodes print with
//! `-v` ([`Console::node_line`]: posts and deliveries, for the space-time
//! diagram), and what each node's `/metrics` says (scraped each second
//! with [`crate::cluster::metrics::scrape`]: clients, rates, holdback,
//! members per room, RSS), kept for the charts' history. Where a node
//! serves no metrics, the figures come from its `-v` lines and /proc. Chat goes
//! through [`chat`]: the console is an ordinary UDP client of the node the
//! person picks. HTTP is axum on the supervisor's runtime; the page polls
//! JSON (`/api/...`), and `/metrics` serves the figures per node in the
//! Prometheus text format.

mod chat;

use crate::cluster::metrics::{self, NodeSample, Rates};
use crate::cluster::procfs;
use crate::cluster::state::{NodeStatus, StateFile};
use crate::diagram::{self, Event, Kind, Line};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PAGE_JS: &str = include_str!("assets/console.js");
const PAGE_CSS: &str = include_str!("assets/console.css");

/// Samples kept per node for the charts: 5 minutes at one a second.
const HISTORY: usize = 300;
/// Events kept per room for the diagram.
const ROOM_EVENTS: usize = 600;
/// Messages of a room the diagram shows.
const DIAGRAM_MESSAGES: usize = 24;

/// How long one scrape of a node's `/metrics` may take (the console
/// samples each second).
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// One second of one node, for the charts.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    /// Unix time, seconds.
    t: u64,
    up: bool,
    rss_kib: Option<u64>,
    posts_per_s: f64,
    deliveries_per_s: f64,
}

#[derive(Debug, Default)]
struct NodeLive {
    /// Counted from the node's `-v` lines since the console started.
    posts: u64,
    deliveries: u64,
    /// At the last sample.
    last_posts: u64,
    last_deliveries: u64,
    /// Members per room, as the node's last delivery in that room said.
    members: BTreeMap<u32, u32>,
    history: VecDeque<Sample>,
    /// The last scrape of the node's `/metrics` (none while it is down or
    /// serves none), and the rates since the one before.
    scraped: Option<NodeSample>,
    rates: Option<Rates>,
}

struct Inner {
    state: StateFile,
    nodes: Vec<NodeLive>,
    rooms: BTreeMap<u32, VecDeque<Event>>,
    chats: chat::Sessions,
}

pub struct Console {
    inner: Mutex<Inner>,
    rooms: u32,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Console {
    pub fn new(state: StateFile, rooms: u32) -> Arc<Console> {
        let nodes = state.nodes.iter().map(|_| NodeLive::default()).collect();
        Arc::new(Console {
            inner: Mutex::new(Inner {
                state,
                nodes,
                rooms: BTreeMap::new(),
                chats: chat::Sessions::default(),
            }),
            rooms,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere leaves plain data behind: keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The supervisor's view changed.
    pub fn set_state(&self, st: &StateFile) {
        self.lock().state = st.clone();
    }

    /// A line node `node` (0-based) printed.
    pub fn node_line(&self, node: usize, line: &str) {
        let Line::Event(e) = diagram::parse_line(line) else {
            return;
        };
        let mut g = self.lock();
        if let Some(n) = g.nodes.get_mut(node) {
            match e.kind {
                Kind::Post => n.posts += 1,
                Kind::Deliver => {
                    n.deliveries += 1;
                    if let Some(m) = e.members {
                        n.members.insert(e.room, m);
                    }
                }
            }
        }
        if e.room == 0 || e.room > self.rooms {
            return;
        }
        let q = g.rooms.entry(e.room).or_default();
        if q.len() >= ROOM_EVENTS {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// Scrapes every node that is up and serves `/metrics` (in parallel,
    /// off the runtime's thread: the scrape blocks), then samples.
    async fn scrape_and_sample(&self) {
        let targets: Vec<(usize, Option<SocketAddr>)> = {
            let g = self.lock();
            g.state
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let addr = (n.status == NodeStatus::Up)
                        .then(|| n.metrics.as_deref()?.parse().ok())
                        .flatten();
                    (i, addr)
                })
                .collect()
        };
        let jobs: Vec<_> = targets
            .into_iter()
            .map(|(i, addr)| {
                let job = addr.map(|a| {
                    tokio::task::spawn_blocking(move || metrics::scrape(a, SCRAPE_TIMEOUT))
                });
                (i, job)
            })
            .collect();
        let mut results = Vec::new();
        for (i, job) in jobs {
            let got = match job {
                Some(j) => j.await.ok().and_then(Result::ok),
                None => None,
            };
            results.push((i, got));
        }
        {
            let mut g = self.lock();
            for (i, got) in results {
                if let Some(n) = g.nodes.get_mut(i) {
                    n.rates = match (&got, &n.scraped) {
                        (Some(now), Some(before)) => Some(now.rates_since(before)),
                        _ => None,
                    };
                    n.scraped = got;
                }
            }
        }
        self.sample();
    }

    /// Takes one sample of every node (each second): the scraped figures
    /// where there are some, else the `-v` counts and /proc.
    fn sample(&self) {
        let mut g = self.lock();
        let t = now_s();
        let Inner { state, nodes, .. } = &mut *g;
        for (st, n) in state.nodes.iter().zip(nodes.iter_mut()) {
            let up = st.status == NodeStatus::Up;
            let (posts_per_s, deliveries_per_s) = match n.rates {
                Some(r) => (r.posts, r.deliveries),
                None => (
                    (n.posts - n.last_posts) as f64,
                    (n.deliveries - n.last_deliveries) as f64,
                ),
            };
            let s = Sample {
                t,
                up,
                rss_kib: rss_kib(st.pid.filter(|_| up), n.scraped.as_ref()),
                posts_per_s,
                deliveries_per_s,
            };
            n.last_posts = n.posts;
            n.last_deliveries = n.deliveries;
            if n.history.len() >= HISTORY {
                n.history.pop_front();
            }
            n.history.push_back(s);
        }
    }

    /// The diagram's data for `room`: its last messages' events.
    fn diagram(&self, room: u32) -> DiagramData {
        let g = self.lock();
        let servers: BTreeSet<u32> = g.state.nodes.iter().map(|n| n.index as u32).collect();
        let mut events: Vec<Event> = g
            .rooms
            .get(&room)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default();
        drop(g);
        // The last DIAGRAM_MESSAGES messages, whole (every event of each).
        let mut keep = BTreeSet::new();
        for e in events.iter().rev() {
            if keep.len() >= DIAGRAM_MESSAGES && !keep.contains(&e.id) {
                continue;
            }
            keep.insert(e.id.clone());
        }
        events.retain(|e| keep.contains(&e.id));
        events.sort_by_key(Event::history_key);
        DiagramData { servers, events }
    }

    fn view(&self) -> View {
        let g = self.lock();
        let nodes = g
            .state
            .nodes
            .iter()
            .zip(&g.nodes)
            .map(|(st, n)| {
                let last = n.history.back();
                let up = st.status == NodeStatus::Up;
                let scraped = n.scraped.as_ref().filter(|_| up);
                // Members from the node's own figures when it serves them,
                // else from its last delivery per room.
                let members = match scraped {
                    Some(m) => m
                        .room_members
                        .iter()
                        .map(|(r, c)| (*r, u32::try_from(*c).unwrap_or(u32::MAX)))
                        .collect(),
                    None => n.members.clone(),
                };
                NodeView {
                    name: st.name.clone(),
                    index: st.index,
                    bind: st.bind.clone(),
                    status: st.status.to_string(),
                    up,
                    pid: st.pid,
                    restarts: st.restarts,
                    // Read now, not at the last sample: a node that has
                    // just come up has its figure at once.
                    rss_kib: rss_kib(st.pid.filter(|_| up), scraped),
                    posts_per_s: last.map_or(0.0, |s| s.posts_per_s),
                    deliveries_per_s: last.map_or(0.0, |s| s.deliveries_per_s),
                    retransmissions_per_s: n.rates.filter(|_| up).map(|r| r.retransmissions),
                    clients: scraped.map(NodeSample::clients),
                    held_back: scraped.map(NodeSample::held_back),
                    view: scraped.and_then(NodeSample::view),
                    posts: n.posts,
                    deliveries: n.deliveries,
                    members,
                    history: n.history.iter().copied().collect(),
                    scraped: scraped.cloned(),
                }
            })
            .collect();
        View {
            cluster: g.state.cluster.clone(),
            ordering: g.state.ordering.clone(),
            rooms: self.rooms,
            nodes,
        }
    }

    /// The figures per node in the Prometheus text format.
    fn metrics(&self) -> String {
        let v = self.view();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        let per_node = |f: &dyn Fn(&NodeView) -> Option<String>| -> Vec<(String, String)> {
            v.nodes
                .iter()
                .filter_map(|n| Some((format!("node=\"{}\"", prom_escape(&n.name)), f(n)?)))
                .collect()
        };
        family(
            "chat_node_up",
            "gauge",
            "1 while the launcher sees the node up (ready), else 0.",
            per_node(&|n| Some(u8::from(n.up).to_string())),
        );
        family(
            "chat_node_restarts_total",
            "counter",
            "Restarts of the node since launcher up started.",
            per_node(&|n| Some(n.restarts.to_string())),
        );
        family(
            "chat_node_resident_memory_bytes",
            "gauge",
            "Resident set size of the node's process.",
            per_node(&|n| n.rss_kib.map(|k| (k * 1024).to_string())),
        );
        family(
            "chat_node_posts_total",
            "counter",
            "Posts the node logged (-v) since the console started.",
            per_node(&|n| Some(n.posts.to_string())),
        );
        family(
            "chat_node_deliveries_total",
            "counter",
            "Deliveries the node logged (-v) since the console started.",
            per_node(&|n| Some(n.deliveries.to_string())),
        );
        let mut members = Vec::new();
        for n in &v.nodes {
            for (room, m) in &n.members {
                members.push((
                    format!("node=\"{}\",room=\"{room}\"", prom_escape(&n.name)),
                    m.to_string(),
                ));
            }
        }
        family(
            "chat_room_members",
            "gauge",
            "Members of a room on a node (its /metrics, else its last delivery there).",
            members,
        );
        // Each node's own /metrics, one family per name, labelled by node.
        let mut scraped: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for n in &v.nodes {
            let Some(s) = &n.scraped else { continue };
            let node = format!("node=\"{}\"", prom_escape(&n.name));
            for (name, value) in &s.values {
                if value.is_finite() {
                    scraped
                        .entry(name.clone())
                        .or_default()
                        .push((node.clone(), value.to_string()));
                }
            }
            for (room, m) in &s.room_members {
                scraped
                    .entry(node::metrics::ROOM_MEMBERS.to_string())
                    .or_default()
                    .push((format!("{node},room=\"{room}\""), m.to_string()));
            }
            for (reason, c) in &s.refusals {
                scraped
                    .entry(node::metrics::REFUSALS.to_string())
                    .or_default()
                    .push((
                        format!("{node},reason=\"{}\"", prom_escape(reason)),
                        c.to_string(),
                    ));
            }
        }
        for (name, rows) in scraped {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            family(&name, kind, "From the node's own /metrics.", rows);
        }
        out
    }
}

/// A node's RSS: from its `/metrics`, else from /proc (its pid while up).
fn rss_kib(pid: Option<i32>, scraped: Option<&NodeSample>) -> Option<u64> {
    scraped
        .and_then(NodeSample::rss_bytes)
        .map(|b| b / 1024)
        .or_else(|| pid.and_then(procfs::memory).map(|m| m.rss_kib))
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Serialize)]
struct DiagramData {
    servers: BTreeSet<u32>,
    events: Vec<Event>,
}

#[derive(Serialize)]
struct NodeView {
    name: String,
    index: usize,
    bind: String,
    status: String,
    up: bool,
    pid: Option<i32>,
    restarts: u32,
    rss_kib: Option<u64>,
    posts_per_s: f64,
    deliveries_per_s: f64,
    retransmissions_per_s: Option<f64>,
    clients: Option<u64>,
    held_back: Option<u64>,
    /// The membership view, for servers that have one.
    view: Option<u64>,
    posts: u64,
    deliveries: u64,
    members: BTreeMap<u32, u32>,
    history: Vec<Sample>,
    /// For `/metrics` only.
    #[serde(skip)]
    scraped: Option<NodeSample>,
}

#[derive(Serialize)]
struct View {
    cluster: String,
    ordering: String,
    rooms: u32,
    nodes: Vec<NodeView>,
}

/// Binds the console's address (before the nodes start, so a busy port
/// fails `launcher up` at once) and serves it on the current runtime;
/// returns the address bound.
pub async fn serve(console: Arc<Console>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("console: cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(index))
        .route("/diagram.js", get(diagram_js))
        .route("/metrics", get(metrics))
        .route("/api/state", get(api_state))
        .route("/api/diagram", get(api_diagram))
        .route("/api/chat", post(chat::join))
        .route("/api/chat/{id}/send", post(chat::send))
        .route("/api/chat/{id}/lines", get(chat::lines))
        .route("/api/chat/{id}/leave", post(chat::leave))
        .with_state(console.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("console: HTTP server stopped: {e}");
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            console.scrape_and_sample().await;
            chat::expire(&console);
        }
    });
    Ok(bound)
}

/// The page: the node table rendered here (it is right before any script
/// runs), the rest filled in by the script from `/api/state`.
async fn index(State(c): State<Arc<Console>>) -> Html<String> {
    let v = c.view();
    let mut rows = String::new();
    for n in &v.nodes {
        let _ = write!(
            rows,
            r#"<tr data-node="{name}"><td class="name">{name}</td><td class="status {cls}">{status}</td><td class="bind">{bind}</td><td class="pid">{pid}</td><td class="restarts">{restarts}</td><td class="clients">-</td><td class="view">-</td><td class="rss">-</td><td class="posts">-</td><td class="deliveries">-</td><td class="retransmissions">-</td><td class="held">-</td><td class="chart"><canvas width="160" height="32"></canvas></td></tr>"#,
            name = diagram::html_escape(&n.name),
            cls = if n.up { "up" } else { "down" },
            status = n.status,
            bind = diagram::html_escape(&n.bind),
            pid = n.pid.map_or("-".to_string(), |p| p.to_string()),
            restarts = n.restarts,
        );
    }
    let node_options: String = v
        .nodes
        .iter()
        .map(|n| {
            format!(
                r#"<option value="{i}">{name} ({bind})</option>"#,
                i = n.index,
                name = diagram::html_escape(&n.name),
                bind = diagram::html_escape(&n.bind)
            )
        })
        .collect();
    let room_options: String = (1..=v.rooms)
        .map(|r| format!(r#"<option value="{r}">#{r}</option>"#))
        .collect();
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cluster {cluster}</title><style>{css}</style></head>
<body>
<header><h1>cluster {cluster}</h1><span id="ordering">ordering {ordering}</span> <span id="clock"></span></header>
<main>
<section id="nodes-section"><h2>Nodes</h2>
<table id="nodes"><thead><tr><th>node</th><th>state</th><th>bind</th><th>pid</th><th>restarts</th><th>clients</th><th>view</th><th>RSS</th><th>posts/s</th><th>deliveries/s</th><th>retransmits/s</th><th>held back</th><th>last minutes (deliveries/s, RSS)</th></tr></thead>
<tbody>{rows}</tbody></table></section>
<section id="rooms-section"><h2>Rooms</h2><p class="hint">members per node (from each node's /metrics, else its last delivery in the room)</p><table id="rooms"></table></section>
<section id="diagram-section"><h2>Order of the last messages</h2>
<p>room <select id="diagram-room">{room_options}</select> <span class="hint">one line per server; each message from its post (square) to its delivery at every server (dot, numbered in that server's order)</span></p>
<div id="diagram"></div></section>
<section id="chat-section"><h2>Chat</h2>
<form id="join"><label>node <select id="chat-node">{node_options}</select></label>
<label>nick <input id="chat-nick" value="web" maxlength="32" size="10"></label>
<label>room <select id="chat-room">{room_options}</select></label>
<button id="chat-join" type="submit">join</button> <span id="chat-status"></span></form>
<div id="chat-log"></div>
<form id="say"><input id="chat-text" size="60" maxlength="1000" placeholder="message" autocomplete="off" disabled><button id="chat-send" type="submit" disabled>send</button></form>
</section>
</main>
<script src="/diagram.js"></script>
<script>{js}</script>
</body></html>
"#,
        cluster = diagram::html_escape(&v.cluster),
        ordering = diagram::html_escape(&v.ordering),
        css = PAGE_CSS,
        js = PAGE_JS,
    ))
}

async fn diagram_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        diagram::DIAGRAM_JS,
    )
        .into_response()
}

async fn metrics(State(c): State<Arc<Console>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        c.metrics(),
    )
        .into_response()
}

async fn api_state(State(c): State<Arc<Console>>) -> axum::Json<View> {
    axum::Json(c.view())
}

#[derive(Deserialize)]
struct RoomQuery {
    room: u32,
}

async fn api_diagram(
    State(c): State<Arc<Console>>,
    Query(q): Query<RoomQuery>,
) -> Result<axum::Json<DiagramData>, (StatusCode, String)> {
    if q.room == 0 || q.room > c.rooms {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("room {} is not in 1..={}", q.room, c.rooms),
        ));
    }
    Ok(axum::Json(c.diagram(q.room)))
}

/// The path id of a chat session.
type SessionId = Path<u64>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::NodeState;

    fn state() -> StateFile {
        StateFile {
            launcher_pid: 1,
            launcher_start_time: 1,
            cluster: "c".into(),
            config: "/c.toml".into(),
            ordering: "total".into(),
            nodes: (1..=2)
                .map(|i| NodeState {
                    name: format!("s{i}"),
                    index: i,
                    pid: None,
                    start_time: None,
                    bind: format!("127.0.0.1:{}", 5000 + i),
                    forward: format!("127.0.0.1:{}", 5000 + i),
                    status: NodeStatus::Up,
                    restarts: 0,
                    last_exit: None,
                    metrics: None,
                })
                .collect(),
        }
    }

    #[test]
    fn lines_feed_the_diagram_the_rates_and_the_members() {
        let c = Console::new(state(), 10);
        c.node_line(
            0,
            "00:00:01.000000 S01 Client 1 posts \"hi\" to chat room #3 as S01#7",
        );
        c.node_line(
            0,
            "00:00:01.000100 S01 Delivered S01#7 to 2 member(s) of chat room #3",
        );
        c.node_line(
            1,
            "00:00:01.000200 S02 Delivered S01#7 to 1 member(s) of chat room #3",
        );
        c.node_line(1, "junk");
        c.node_line(
            1,
            "00:00:01.000200 S02 Delivered S01#8 to 1 member(s) of chat room #99",
        );
        let d = c.diagram(3);
        assert_eq!(d.events.len(), 3);
        assert_eq!(d.servers, BTreeSet::from([1, 2]));
        c.sample();
        let v = c.view();
        assert_eq!(v.nodes[0].posts_per_s, 1.0);
        assert_eq!(v.nodes[1].deliveries_per_s, 2.0);
        assert_eq!(v.nodes[0].members.get(&3), Some(&2));
        let m = c.metrics();
        assert!(
            m.contains("chat_node_deliveries_total{node=\"s2\"} 2"),
            "{m}"
        );
        assert!(
            m.contains("chat_room_members{node=\"s1\",room=\"3\"} 2"),
            "{m}"
        );
    }

    #[test]
    fn the_diagram_keeps_whole_last_messages() {
        let c = Console::new(state(), 10);
        for i in 0..(DIAGRAM_MESSAGES as u64 + 10) {
            c.node_line(
                0,
                &format!("00:00:01.{i:06} S01 Client 1 posts \"m{i}\" to chat room #1 as S01#{i}"),
            );
            c.node_line(
                1,
                &format!("00:00:02.{i:06} S02 Delivered S01#{i} to 1 member(s) of chat room #1"),
            );
        }
        let d = c.diagram(1);
        assert_eq!(d.events.len(), 2 * DIAGRAM_MESSAGES);
        assert_eq!(d.events[0].id, "S01#10");
    }
}
