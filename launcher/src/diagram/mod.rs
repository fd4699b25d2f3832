//! The space-time diagram of a run: what `launcher trace` draws from the
//! servers' `-v` logs and what the console draws live from the same lines.
//!
//! [`parse_line`] reads one `hh:mm:ss.uuuuuu Snn text` line (the format of
//! `node`'s `verbose` module) into a post or a delivery; anything else is
//! counted, never an error. A [`Trace`] collects the events, and is
//! serialised as the JSON that `assets/diagram.js` draws (in the console's
//! page and in the HTML of `launcher trace`); [`svg`] draws the same
//! picture in Rust for `trace -o FILE.svg`.

pub mod svg;

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// The diagram's script: `ChatDiagram.draw(element, data, room)`. One
/// copy, embedded in the console's page and in every trace HTML file.
pub const DIAGRAM_JS: &str = include_str!("assets/diagram.js");

/// One event of a message's life at one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// `post` (at the origin, when its client's line arrived) or `deliver`.
    pub kind: Kind,
    /// The server's number (`S02` is 2).
    pub server: u32,
    /// Microseconds since midnight UTC, as the log line says.
    pub t: u64,
    /// The message id, `S01#1795484319672956`.
    pub id: String,
    pub room: u32,
    /// The text as the log shows it (posts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// How many members of the room the server delivered to (deliveries
    /// only): what the console shows as a room's members on that node.
    #[serde(skip)]
    pub members: Option<u32>,
}

impl Event {
    /// The order of the global history: by time, then server, posts
    /// before deliveries (a server's own post and delivery may share a
    /// microsecond).
    pub fn history_key(&self) -> (u64, u32, Kind) {
        (self.t, self.server, self.kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Post,
    Deliver,
}

/// What one log line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Event(Event),
    /// A well-formed `-v` line of another kind (packets, holdback, replies).
    Other,
    /// Not a `-v` line at all.
    Junk,
}

/// `hh:mm:ss.uuuuuu` as microseconds since midnight.
fn parse_clock(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 15 || b[2] != b':' || b[5] != b':' || b[8] != b'.' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (h, m, sec, us) = (num(0..2)?, num(3..5)?, num(6..8)?, num(9..15)?);
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + us)
}

/// `S02` as 2.
fn parse_server(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('S')?;
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A message id as the server prints it: `S01#123`.
fn is_msg_id(s: &str) -> bool {
    s.split_once('#').is_some_and(|(srv, n)| {
        parse_server(srv).is_some() && !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())
    })
}

/// Reads one line of a server's `-v` output. A `NAME | ` prefix (the
/// launcher's terminal output) is skipped, so `launcher up > run.log`
/// works as well as the per-node log files.
pub fn parse_line(line: &str) -> Line {
    let line = line.trim_end_matches(['\r', '\n']);
    match parse_bare(line) {
        Line::Junk => match line.split_once(" | ") {
            Some((_, rest)) => parse_bare(rest),
            None => Line::Junk,
        },
        l => l,
    }
}

fn parse_bare(line: &str) -> Line {
    let (Some(clock), Some(rest)) = (line.get(..15), line.get(15..)) else {
        return Line::Junk;
    };
    let Some(t) = parse_clock(clock) else {
        return Line::Junk;
    };
    let Some(rest) = rest.strip_prefix(' ') else {
        return Line::Junk;
    };
    let Some((tag, text)) = rest.split_once(' ') else {
        return Line::Junk;
    };
    let Some(server) = parse_server(tag) else {
        return Line::Junk;
    };
    match event_of(text) {
        Some((kind, id, room, text, members)) => Line::Event(Event {
            kind,
            server,
            t,
            id,
            room,
            text,
            members,
        }),
        None => Line::Other,
    }
}

/// The post or delivery a `-v` text describes:
/// `Client 17 posts "Hi" to chat room #3 as S02#5` or
/// `Delivered S02#5 to 2 member(s) of chat room #3`. The text of a post
/// may hold quotes and ` to chat room #`, so a post is read from its end.
/// What [`event_of`] reads: kind, message id, room, post text, members.
type Parsed = (Kind, String, u32, Option<String>, Option<u32>);

fn event_of(text: &str) -> Option<Parsed> {
    if let Some(rest) = text.strip_prefix("Delivered ") {
        let (id, rest) = rest.split_once(" to ")?;
        let (members, room) = rest.rsplit_once(" member(s) of chat room #")?;
        if !is_msg_id(id) {
            return None;
        }
        return Some((
            Kind::Deliver,
            id.to_string(),
            room.parse().ok()?,
            None,
            Some(members.parse().ok()?),
        ));
    }
    let rest = text.strip_prefix("Client ")?;
    let (_client, rest) = rest.split_once(" posts \"")?;
    let (rest, id) = rest.rsplit_once(" as ")?;
    if !is_msg_id(id) {
        return None;
    }
    let (quoted, room) = rest.rsplit_once(" to chat room #")?;
    let body = quoted.strip_suffix('"')?;
    Some((
        Kind::Post,
        id.to_string(),
        room.parse().ok()?,
        Some(body.to_string()),
        None,
    ))
}

/// The events of a run, and how many lines were of no use.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trace {
    /// Every server seen in a line, sorted.
    pub servers: BTreeSet<u32>,
    pub events: Vec<Event>,
    /// Lines that are not `-v` lines.
    pub junk: u64,
    /// `-v` lines of other kinds.
    pub other: u64,
}

impl Trace {
    pub fn add_line(&mut self, line: &str) {
        match parse_line(line) {
            Line::Event(e) => {
                self.servers.insert(e.server);
                self.events.push(e);
            }
            Line::Other => self.other += 1,
            Line::Junk => self.junk += 1,
        }
    }

    /// One global history ([`Event::history_key`]). A message is posted
    /// once and delivered once per server, so an event seen twice (the
    /// same log given twice, or a node's log file beside the launcher's
    /// output) is kept once.
    pub fn sort(&mut self) {
        self.events.sort_by_key(Event::history_key);
        let mut seen = BTreeSet::new();
        self.events
            .retain(|e| seen.insert((e.server, e.kind, e.id.clone())));
    }

    /// The rooms with events, and their messages' count.
    pub fn rooms(&self) -> BTreeMap<u32, usize> {
        let mut ids: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
        for e in &self.events {
            ids.entry(e.room).or_default().insert(&e.id);
        }
        ids.into_iter().map(|(r, s)| (r, s.len())).collect()
    }

    /// The JSON the diagram script draws.
    pub fn to_json(&self) -> String {
        // A struct of plain strings and numbers always serialises.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// Makes JSON safe inside an HTML `<script>` element (`</script>` and
/// `<!--` cannot end or confuse it).
pub fn json_for_script(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// A self-contained HTML page of a trace: the data, the diagram script,
/// a room chooser.
pub fn html_page(title: &str, trace: &Trace) -> String {
    let rooms = trace.rooms();
    let first = rooms.keys().next().copied().unwrap_or(1);
    let options: String = rooms
        .iter()
        .map(|(r, n)| format!("<option value=\"{r}\">room #{r} ({n} messages)</option>"))
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} #diagram{{overflow-x:auto}}</style>
</head><body>
<h1>{title}</h1>
<p>{servers} servers, {posts} posts, {deliveries} deliveries; room <select id="room">{options}</select></p>
<div id="diagram"></div>
<script>{js}</script>
<script>
const TRACE = {json};
const sel = document.getElementById("room");
function show() {{ ChatDiagram.draw(document.getElementById("diagram"), TRACE, Number(sel.value || {first})); }}
sel.addEventListener("change", show);
show();
</script>
</body></html>
"#,
        title = html_escape(title),
        servers = trace.servers.len(),
        posts = trace.events.iter().filter(|e| e.kind == Kind::Post).count(),
        deliveries = trace
            .events
            .iter()
            .filter(|e| e.kind == Kind::Deliver)
            .count(),
        js = DIAGRAM_JS,
        json = json_for_script(&trace.to_json()),
    )
}

/// `&`, `<`, `>`, `"` and `'` escaped for HTML and XML: text from a run
/// (chat lines, mode names, server replies) never becomes markup.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_and_deliveries() {
        let p = parse_line(
            r#"03:48:22.004328 S02 Client 17 posts "say "hi" to chat room #9 as x" to chat room #3 as S02#77"#,
        );
        assert_eq!(
            p,
            Line::Event(Event {
                kind: Kind::Post,
                server: 2,
                t: (3 * 3600 + 48 * 60 + 22) * 1_000_000 + 4328,
                id: "S02#77".into(),
                room: 3,
                text: Some(r#"say "hi" to chat room #9 as x"#.into()),
                members: None,
            })
        );
        let d =
            parse_line("s1 | 00:00:01.000000 S01 Delivered S02#77 to 4 member(s) of chat room #3");
        assert_eq!(
            d,
            Line::Event(Event {
                kind: Kind::Deliver,
                server: 1,
                t: 1_000_000,
                id: "S02#77".into(),
                room: 3,
                text: None,
                members: Some(4),
            })
        );
    }

    #[test]
    fn other_and_junk_lines_are_counted() {
        let mut t = Trace::default();
        for l in [
            "03:48:22.004328 S02 Sent 50 bytes to 127.0.0.1:5001 (1 payload(s))",
            "03:48:22.004328 S02 Client 3 posts \"x\" to chat room #3, refused: busy",
            "S01 ready: listening",
            "",
            "99:00:00.000000 S01 Delivered S01#1 to 1 member(s) of chat room #1",
            "00:00:00.00000x S01 Delivered S01#1 to 1 member(s) of chat room #1",
            "00:00:00.000000 S01 Delivered nonsense to 1 member(s) of chat room #1",
            "00:00:00.000000 S01 Delivered S01#1 to 1 member(s) of chat room #x",
            "00:00:00.000000 Sx Delivered S01#1 to 1 member(s) of chat room #1",
            "00:00:00.000000 S01 Client 1 posts \"unterminated",
            "\u{fffd}\u{fffd}\u{0}",
            "é1:00:00.000000 S01",
        ] {
            t.add_line(l);
        }
        assert!(t.events.is_empty(), "{:?}", t.events);
        assert_eq!((t.other, t.junk), (5, 7));
    }

    #[test]
    fn sorted_history_and_rooms() {
        let mut t = Trace::default();
        t.add_line("00:00:02.000000 S02 Delivered S01#1 to 1 member(s) of chat room #2");
        t.add_line("00:00:01.000000 S01 Delivered S01#1 to 1 member(s) of chat room #2");
        t.add_line("00:00:01.000000 S01 Client 1 posts \"a\" to chat room #2 as S01#1");
        t.add_line("s2 | 00:00:02.000000 S02 Delivered S01#1 to 1 member(s) of chat room #2");
        t.sort();
        let kinds: Vec<_> = t.events.iter().map(|e| (e.server, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![(1, Kind::Post), (1, Kind::Deliver), (2, Kind::Deliver)]
        );
        assert_eq!(t.rooms(), BTreeMap::from([(2, 1)]));
        let html = html_page("t <x>", &t);
        assert!(html.contains("ChatDiagram"));
        assert!(html.contains("t &lt;x&gt;"));
    }

    #[test]
    fn json_cannot_close_the_script() {
        let mut t = Trace::default();
        t.add_line("00:00:01.000000 S01 Client 1 posts \"</script><b>\" to chat room #2 as S01#1");
        let html = html_page("t", &t);
        assert!(!html.contains("</script><b>"));
        assert!(html.contains("\\u003c/script\\u003e"));
    }
}
