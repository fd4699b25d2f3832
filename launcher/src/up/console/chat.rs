//! The console's chat: each person in a browser is one session, an
//! ordinary UDP client of the node they picked (its own socket, `/nick`,
//! `/join`, lines as datagrams, the address confirmation answered as
//! `chatclient` does). The browser sends lines and polls for what the
//! server sent. Bounded: at most [`MAX_SESSIONS`] sessions, the last
//! [`MAX_LINES`] lines each, and a session nobody polled for
//! [`IDLE`] is ended with `/quit`.

use super::{Console, SessionId};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const MAX_SESSIONS: usize = 64;
const MAX_LINES: usize = 500;
const IDLE: Duration = Duration::from_secs(300);
/// The spec's limit on a client line.
const MAX_LINE: usize = 1000;

pub(super) struct Session {
    sock: Arc<UdpSocket>,
    server: SocketAddr,
    /// Lines from the server, numbered from 1.
    lines: VecDeque<(u64, String)>,
    next: u64,
    polled: Instant,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        // Tell the server, so the session does not linger there.
        let _ = self.sock.try_send_to(b"/quit", self.server);
    }
}

#[derive(Default)]
pub(super) struct Sessions {
    by_id: HashMap<u64, Session>,
    next_id: u64,
}

type ApiError = (StatusCode, String);

fn err(code: StatusCode, msg: impl Into<String>) -> ApiError {
    (code, msg.into())
}

#[derive(Deserialize)]
pub(super) struct JoinRequest {
    /// The node's index (1-based).
    node: usize,
    nick: String,
    room: u32,
}

#[derive(Serialize)]
pub(super) struct Joined {
    session: u64,
    server: String,
}

/// Opens a session at the chosen node: `/nick`, then `/join`. The
/// server's answers arrive as the session's first lines.
pub(super) async fn join(
    State(c): State<Arc<Console>>,
    Json(r): Json<JoinRequest>,
) -> Result<Json<Joined>, ApiError> {
    let server: SocketAddr = {
        let g = c.lock();
        let n = g
            .state
            .nodes
            .iter()
            .find(|n| n.index == r.node)
            .ok_or_else(|| err(StatusCode::BAD_REQUEST, format!("no node {}", r.node)))?;
        n.bind
            .parse()
            .map_err(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "bad bind address"))?
    };
    if r.nick.is_empty()
        || r.nick.len() > 32
        || r.nick.contains(['<', '>'])
        || r.nick.chars().any(char::is_control)
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "a nick is 1 to 32 bytes without control characters, < or >",
        ));
    }
    if r.room == 0 || r.room > c.rooms {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("room {} is not in 1..={}", r.room, c.rooms),
        ));
    }
    let sock = client::bind_for(server)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("socket: {e}")))?;
    let sock = Arc::new(sock);
    let id = {
        let mut g = c.lock();
        if g.chats.by_id.len() >= MAX_SESSIONS {
            return Err(err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("at most {MAX_SESSIONS} chat sessions at once"),
            ));
        }
        g.chats.next_id += 1;
        let id = g.chats.next_id;
        let reader = tokio::spawn(read_loop(c.clone(), id, sock.clone(), server));
        g.chats.by_id.insert(
            id,
            Session {
                sock: sock.clone(),
                server,
                lines: VecDeque::new(),
                next: 1,
                polled: Instant::now(),
                reader,
            },
        );
        id
    };
    for line in [format!("/nick {}", r.nick), format!("/join {}", r.room)] {
        sock.send_to(line.as_bytes(), server)
            .await
            .map_err(|e| err(StatusCode::BAD_GATEWAY, format!("send to {server}: {e}")))?;
    }
    Ok(Json(Joined {
        session: id,
        server: server.to_string(),
    }))
}

/// Copies the server's datagrams into the session's lines; answers an
/// address-confirmation request at once (not shown).
async fn read_loop(c: Arc<Console>, id: u64, sock: Arc<UdpSocket>, server: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP refusals while the node restarts: keep listening.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if from != server {
            continue;
        }
        let data = &buf[..n];
        if let Some(token) = client::confirm_token(data) {
            let _ = sock.send_to(&client::confirm_reply(token), server).await;
            continue;
        }
        if client::is_confirm_answer(data) {
            continue;
        }
        let text = String::from_utf8_lossy(data).into_owned();
        let mut g = c.lock();
        let Some(s) = g.chats.by_id.get_mut(&id) else {
            return;
        };
        if s.lines.len() >= MAX_LINES {
            s.lines.pop_front();
        }
        let seq = s.next;
        s.next += 1;
        s.lines.push_back((seq, text));
    }
}

#[derive(Deserialize)]
pub(super) struct SendRequest {
    text: String,
}

pub(super) async fn send(
    State(c): State<Arc<Console>>,
    id: SessionId,
    Json(r): Json<SendRequest>,
) -> Result<StatusCode, ApiError> {
    if r.text.len() > MAX_LINE || r.text.contains(['\n', '\r']) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("one line of at most {MAX_LINE} bytes"),
        ));
    }
    let (sock, server) = {
        let g = c.lock();
        let s = g
            .chats
            .by_id
            .get(&id.0)
            .ok_or_else(|| err(StatusCode::NOT_FOUND, "no such chat session"))?;
        (s.sock.clone(), s.server)
    };
    sock.send_to(r.text.as_bytes(), server)
        .await
        .map_err(|e| err(StatusCode::BAD_GATEWAY, format!("send to {server}: {e}")))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct After {
    #[serde(default)]
    after: u64,
}

#[derive(Serialize)]
pub(super) struct Lines {
    lines: Vec<LineOut>,
}

#[derive(Serialize)]
struct LineOut {
    seq: u64,
    text: String,
}

pub(super) async fn lines(
    State(c): State<Arc<Console>>,
    id: SessionId,
    Query(q): Query<After>,
) -> Result<Json<Lines>, ApiError> {
    let mut g = c.lock();
    let s = g
        .chats
        .by_id
        .get_mut(&id.0)
        .ok_or_else(|| err(StatusCode::NOT_FOUND, "no such chat session"))?;
    s.polled = Instant::now();
    let lines = s
        .lines
        .iter()
        .filter(|(seq, _)| *seq > q.after)
        .map(|(seq, text)| LineOut {
            seq: *seq,
            text: text.clone(),
        })
        .collect();
    Ok(Json(Lines { lines }))
}

pub(super) async fn leave(State(c): State<Arc<Console>>, id: SessionId) -> StatusCode {
    // Dropping the session sends `/quit`.
    match c.lock().chats.by_id.remove(&id.0) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

/// Ends the sessions nobody polled for [`IDLE`] (a closed browser tab).
pub(super) fn expire(c: &Console) {
    let now = Instant::now();
    c.lock()
        .chats
        .by_id
        .retain(|_, s| now.duration_since(s.polled) < IDLE);
}
