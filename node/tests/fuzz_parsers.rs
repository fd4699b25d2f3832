//! Property-based fuzzing of what a server parses: cluster files (legacy and
//! TOML) and client datagrams.
//!
//! - `node::config::parse` (and `parse_legacy`, `parse_toml` directly) on
//!   arbitrary text, on token soups of the TOML vocabulary and on mutated
//!   valid files: always `Ok` or `Err`, never a panic; what parses is valid
//!   (at least one server, no address twice, rooms >= 1).
//! - `Sessions::handle` on arbitrary datagrams from a few client addresses,
//!   checked against a small model: replies start with `+OK` or `-ERR`, a
//!   post is `<nick> text` byte for byte in the sender's room, `members(room)`
//!   holds exactly the clients that joined it, the client limit holds.
//!
//! Cluster files may name hosts; resolving one would send a DNS query. The
//! generators keep to IP literals, and a guard skips any generated text in
//! which a parser could still see a host name (counted; most cases run).
//!
//! `PROPTEST_CASES=N` overrides the number of cases of every property.

use node::command::{MAX_LINE, MAX_NICK};
use node::config::{self, ClusterConfig, ConfigFormat};
use node::session::{Outcome, SessionLimits, Sessions};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

fn cfg(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Config files.

/// Whether `text` (one address as a parser would pass it to
/// `config::resolve`) could make it look a host name up.
fn address_may_resolve(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return false;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    if host.is_empty() || !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
        return false;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_err()
}

/// Conservative: could the legacy parser resolve a host name in `text`?
fn legacy_may_resolve(text: &str) -> bool {
    // Every comma-separated part of every line.
    text.lines().any(|raw| {
        let line = raw.split('#').next().unwrap_or("").trim();
        line.split(',').map(str::trim).any(address_may_resolve)
    })
}

fn names_a_host(s: &str) -> bool {
    !s.is_empty()
        && s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_err()
}

/// Conservative: could the TOML parser resolve a host name in `text`?
fn toml_may_resolve(text: &str) -> bool {
    // Any quoted piece that is an address with a name (also catches what a
    // lenient parser might accept where `toml::Table` does not).
    if text
        .split(['"', '\''])
        .skip(1)
        .step_by(2)
        .any(address_may_resolve)
    {
        return true;
    }
    // Every string value anywhere (a `host` is joined with a port).
    fn walk(v: &toml::Value, key: &str) -> bool {
        match v {
            toml::Value::String(s) => address_may_resolve(s) || (key == "host" && names_a_host(s)),
            toml::Value::Array(a) => a.iter().any(|x| walk(x, key)),
            toml::Value::Table(t) => t.iter().any(|(k, x)| walk(x, k)),
            _ => false,
        }
    }
    match text.parse::<toml::Table>() {
        Ok(t) => t.iter().any(|(k, v)| walk(v, k)),
        // The parsers share this TOML grammar, so text it refuses should
        // never get as far as an address; still, look at `host` lines.
        Err(_) => text.lines().filter(|l| l.contains("host")).any(|l| {
            names_a_host(
                l.split_once('=')
                    .map_or("", |(_, v)| v)
                    .trim()
                    .trim_matches(['"', '\'']),
            )
        }),
    }
}

fn may_resolve(text: &str) -> bool {
    legacy_may_resolve(text) || toml_may_resolve(text)
}

/// What every successfully parsed config must satisfy.
fn check_valid(c: &ClusterConfig, expect: Option<ConfigFormat>) -> Result<(), TestCaseError> {
    prop_assert!(!c.servers.is_empty());
    prop_assert!(c.rooms >= 1);
    if let Some(f) = expect {
        prop_assert_eq!(c.format, f);
    }
    let mut seen = HashSet::new();
    for s in &c.servers {
        // A wildcard bind has no address to collide on (every server of
        // a StatefulSet binds 0.0.0.0:PORT); the advertised address never
        // is one (these inputs resolve no names, so it is an address).
        prop_assert!(
            !s.forward.ip().is_unspecified(),
            "forward {} is a wildcard",
            s.forward
        );
        if !s.bind.ip().is_unspecified() {
            prop_assert!(seen.insert(s.bind), "bind {} twice", s.bind);
        }
        if s.forward != s.bind {
            prop_assert!(seen.insert(s.forward), "forward {} twice", s.forward);
        }
        prop_assert!(s.bind.port() != 0 && s.forward.port() != 0);
    }
    // Index lookups are checked, not panics.
    prop_assert!(c.server(0).is_err());
    prop_assert!(c.server(c.servers.len()).is_ok());
    prop_assert!(c.server(c.servers.len() + 1).is_err());
    Ok(())
}

/// Runs every entry point on `text` that cannot resolve a host name in it;
/// never panics, and what parses is valid.
fn parse_all(text: &str) -> Result<(), TestCaseError> {
    let legacy_ok = !legacy_may_resolve(text);
    let toml_ok = !toml_may_resolve(text);
    let dir = Path::new("/nonexistent/fuzz");
    // (path, may run): the extension picks TOML; otherwise the content does.
    let runs = [
        (dir.join("cluster.toml"), toml_ok),
        (dir.join("servers.txt"), legacy_ok && toml_ok),
        (dir.join("servers"), legacy_ok && toml_ok),
    ];
    for (path, ok) in &runs {
        if !ok {
            continue;
        }
        match config::parse(path, text) {
            Ok(c) => {
                check_valid(&c, None)?;
                if path.extension().is_some_and(|e| e == "toml") {
                    prop_assert_eq!(c.format, ConfigFormat::Toml);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(
                    msg.contains("fuzz"),
                    "error does not name the file: {}",
                    msg
                );
            }
        }
    }
    let path = Path::new("fuzz.txt");
    if legacy_ok && let Ok(c) = config::parse_legacy(path, text) {
        check_valid(&c, Some(ConfigFormat::Legacy))?;
    }
    if toml_ok && let Ok(c) = config::parse_toml(path, text) {
        check_valid(&c, Some(ConfigFormat::Toml))?;
    }
    Ok(())
}

/// Valid files of both formats: the seeds of the mutations.
const SEEDS: &[&str] = &[
    "127.0.0.1:8000,127.0.0.1:5000\n127.0.0.1:8001,127.0.0.1:5001\n127.0.0.1:8002,127.0.0.1:5002\n",
    "127.0.0.1:5000\n127.0.0.1:5001 # comment\n\n[::1]:5002\n",
    "[nodes]\ncount = 3\nhost = \"127.0.0.1\"\nbase_port = 5000\nforward_base_port = 8000\n",
    r#"[cluster]
name = "demo"
ordering = "total"
rooms = 10
secret = "off"
node_args = ["-v"]

[[node]]
name = "a"
bind = "127.0.0.1:5000"
forward = "127.0.0.1:8000"

[[node]]
bind = "127.0.0.1:5001"

[supervise]
restart = "always"
backoff_initial_ms = 100
backoff_max_ms = 1000
max_restarts = 3
restart_window_s = 10
stop_timeout_ms = 500

[faults]
delay_ms = [0, 20]
loss = 0.1
duplicate = 0.05
seed = 42
"#,
    "[cluster]\nsecret_file = \"secret.txt\"\nstate_dir = \"state\"\nchatserver = \"/bin/true\"\n[nodes]\ncount = 2\nbase_port = 7000\n[faults]\ndelay_ms = 5\n",
];

/// Pieces of both formats, including edge values.
const TOKENS: &[&str] = &[
    "[cluster]",
    "[nodes]",
    "[[node]]",
    "[node]",
    "[supervise]",
    "[faults]",
    "[[nodes]]",
    "[cluster.x]",
    "name",
    "ordering",
    "rooms",
    "chatserver",
    "state_dir",
    "secret",
    "secret_file",
    "node_args",
    "count",
    "host",
    "base_port",
    "forward_base_port",
    "bind",
    "forward",
    "restart",
    "backoff_initial_ms",
    "backoff_max_ms",
    "max_restarts",
    "restart_window_s",
    "stop_timeout_ms",
    "delay_ms",
    "loss",
    "duplicate",
    "seed",
    "=",
    " = ",
    "\n",
    "\n",
    "\n",
    " ",
    ",",
    ".",
    "#",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    "0",
    "1",
    "2",
    "3",
    "-1",
    "10",
    "255",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "99999999999999999999999",
    "1e309",
    "-0.0",
    "nan",
    "inf",
    "-inf",
    "0x10",
    "0o7",
    "0b1",
    "1_000",
    "3.5",
    "true",
    "false",
    "1979-05-27",
    "\"\"",
    "\"total\"",
    "\"fifo\"",
    "\"causal\"",
    "\"unordered\"",
    "\"nope\"",
    "\"off\"",
    "\"generate\"",
    "\"demo\"",
    "\".hidden\"",
    "\"a/b\"",
    "\"127.0.0.1\"",
    "\"::1\"",
    "\"[::1]\"",
    "\"0.0.0.0\"",
    "\"127.0.0.1:5000\"",
    "\"127.0.0.1:0\"",
    "\"127.0.0.1:65536\"",
    "\"[::1]:5000\"",
    "\"127.0.0.1:5000:1\"",
    "[0, 20]",
    "[20, 0]",
    "[1]",
    "[1, 2, 3]",
    "[\"-v\"]",
    "[1, \"x\"]",
    "{}",
    "{ a = 1 }",
    "127.0.0.1:5000",
    "127.0.0.1:5001",
    "127.0.0.1:8000",
    "[::1]:5000",
    "127.0.0.1:0",
    "127.0.0.1:65535",
    "127.0.0.1:65536",
    "127.0.0.1",
    ":5000",
    "127.0.0.1:",
    "1.2.3.4.5:6",
    "\u{feff}",
    "\u{e9}",
    "\t",
    "\r\n",
];

fn token_soup() -> impl Strategy<Value = String> {
    vec(
        (
            prop::sample::select(TOKENS),
            prop::sample::select(&["\n", "\n", " ", " = ", ""][..]),
        ),
        0..60,
    )
    .prop_map(|t| t.into_iter().flat_map(|(a, b)| [a, b]).collect())
}

/// Numbers that make the TOML shorthand large are bounded by
/// `MAX_FUZZ_NODES` (see `many_nodes_parse_in_reasonable_time`).
#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: &'static str },
    InsertChar { at: usize, c: char },
    Replace { at: usize, c: char },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    DropLine { line: usize },
    Number { nth: usize, token: &'static str },
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "-1",
    "65535",
    "65536",
    "4294967296",
    "9223372036854775808",
    "1e3",
    "0x1F",
    "+1",
    "1_0",
    "00",
    "999",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), prop::sample::select(TOKENS))
            .prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), any::<char>()).prop_map(|(at, c)| Mutation::InsertChar { at, c }),
        (
            any::<usize>(),
            prop::sample::select(&b"[]=\",.:#0123456789 \nax"[..])
        )
            .prop_map(|(at, c)| Mutation::Replace { at, c: c as char }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|line| Mutation::DropLine { line }),
        (any::<usize>(), prop::sample::select(NUMBERS))
            .prop_map(|(nth, token)| Mutation::Number { nth, token }),
    ]
}

/// A char boundary of `s` near `at`.
fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut s = text.to_string();
    match m {
        Mutation::Delete { at, len } => {
            let a = boundary(&s, *at);
            let b = boundary(&s, (a + len).min(s.len()));
            if a <= b {
                s.replace_range(a..b, "");
            }
        }
        Mutation::Insert { at, token } => {
            let a = boundary(&s, *at);
            s.insert_str(a, token);
        }
        Mutation::InsertChar { at, c } => {
            let a = boundary(&s, *at);
            s.insert(a, *c);
        }
        Mutation::Replace { at, c } => {
            if !s.is_empty() {
                let a = boundary(&s, *at % s.len());
                let end = s[a..].chars().next().map_or(a, |ch| a + ch.len_utf8());
                s.replace_range(a..end, &c.to_string());
            }
        }
        Mutation::DuplicateLine { line } | Mutation::DropLine { line } => {
            let mut lines: Vec<&str> = s.lines().collect();
            if !lines.is_empty() {
                let i = line % lines.len();
                if matches!(m, Mutation::DuplicateLine { .. }) {
                    lines.insert(i, lines[i]);
                } else {
                    lines.remove(i);
                }
            }
            s = lines.join("\n");
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&str> = s.lines().collect();
            if !lines.is_empty() {
                let n = lines.len();
                lines.swap(a % n, b % n);
            }
            s = lines.join("\n");
        }
        Mutation::Number { nth, token } => {
            // Replace the nth run of digits.
            let runs: Vec<(usize, usize)> = {
                let b = s.as_bytes();
                let mut v = Vec::new();
                let mut i = 0;
                while i < b.len() {
                    if b[i].is_ascii_digit() {
                        let st = i;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                        // Not inside an IP address: those would become host names.
                        let dotted = (st > 0 && b[st - 1] == b'.') || (i < b.len() && b[i] == b'.');
                        if !dotted {
                            v.push((st, i));
                        }
                    } else {
                        i += 1;
                    }
                }
                v
            };
            if !runs.is_empty() {
                let (a, b) = runs[nth % runs.len()];
                s.replace_range(a..b, token);
            }
        }
    }
    s
}

proptest! {
    #![proptest_config(cfg(3_000))]

    #[test]
    fn config_parsers_survive_arbitrary_text(text in arbitrary_text()) {
        parse_all(&text)?;
    }

    #[test]
    fn config_parsers_survive_token_soup(text in token_soup()) {
        parse_all(&text)?;
    }

    #[test]
    fn config_parsers_survive_mutated_valid_files(text in mutated_file()) {
        parse_all(&text)?;
    }
}

fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\[\\]a-z0-9_.:,=\"'#{} \n\t-]{0,200}",
        vec(any::<u8>(), 0..300).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn mutated_file() -> impl Strategy<Value = String> {
    (prop::sample::select(SEEDS), vec(mutation(), 0..6)).prop_map(|(seed, muts)| {
        let mut text = seed.to_string();
        for m in &muts {
            text = apply(&text, m);
        }
        text
    })
}

#[test]
fn seeds_are_valid_and_the_guard_works() {
    for (i, s) in SEEDS.iter().enumerate() {
        let path = Path::new(if i < 2 { "s.txt" } else { "s.toml" });
        assert!(!may_resolve(s), "seed {i} would resolve");
        config::parse(path, s).unwrap_or_else(|e| panic!("seed {i}: {e}"));
    }
    // The guard lets real work through and stops host names.
    assert!(legacy_may_resolve("example.invalid:5000"));
    assert!(legacy_may_resolve(
        "127.0.0.1:5000,example.invalid:5000 # x"
    ));
    assert!(toml_may_resolve(
        "[nodes]\ncount = 1\nhost = \"example.invalid\"\nbase_port = 5000\n"
    ));
    assert!(toml_may_resolve(
        "[[node]]\nbind = \"example.invalid:5000\"\n"
    ));
    assert!(!legacy_may_resolve("127.0.0.1:5000,[::1]:6000"));
    assert!(!toml_may_resolve(
        "[nodes]\ncount = 1\nhost = \"127.0.0.1\"\nbase_port = 5000\n"
    ));
}

/// A hostile or mistyped `[nodes] count` must not stall `chatserver` or
/// `launcher` at start: over the default cap (1,024) it is refused, and up to
/// the hard cap (the 16-bit id space) it parses quickly. A pairwise
/// duplicate-address check (`config::finish`) would make about 2 * 10^9
/// comparisons there, about 30 s in a debug build.
#[test]
fn largest_node_count_parses_quickly() {
    let text = "[nodes]\ncount = 65535\nbase_port = 1\n";
    let started = std::time::Instant::now();
    let e = config::parse(Path::new("big.toml"), text).expect_err("over the default cap");
    assert!(
        e.to_string()
            .starts_with("big.toml:2: nodes.count: too many servers"),
        "{e}"
    );
    let limits = config::ConfigLimits {
        max_servers: config::HARD_MAX_SERVERS,
        ..Default::default()
    };
    let c = config::parse_with(Path::new("big.toml"), text, limits).expect("parses");
    assert_eq!(c.servers.len(), 65535);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(2),
        "65535 nodes took {took:?}"
    );
}

// ---------------------------------------------------------------------------
// Client sessions.

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000 + u16::from(i)))
}

/// A client datagram: commands with odd arguments, chat text, junk.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let arg = prop_oneof![
        Just(Vec::new()),
        prop::sample::select(vec![
            "0",
            "1",
            "2",
            "3",
            "4",
            "10",
            "11",
            "-1",
            "+1",
            "01",
            " 2 ",
            "2\t",
            "abc",
            "4294967297",
            "99999999999999999999",
            "1 2",
            "Bob",
            "a<b",
            "a>b",
            "x\ty",
            "\u{e9}",
            "\u{7f}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        vec(any::<u8>(), 0..40),
        (1usize..40).prop_map(|n| vec![b'n'; n]),
    ];
    let cmd = prop::sample::select(vec![
        "/join", "/join ", "/part", "/part ", "/nick", "/nick ", "/quit", "/quit ", "/", "/JOIN ",
        "/joinx", "/ join",
    ]);
    let tail = prop::sample::select(vec!["", "", "", "\n", "\r\n", " ", "\n\n"]);
    prop_oneof![
        4 => (cmd, arg, tail).prop_map(|(c, a, t)| [c.as_bytes(), &a, t.as_bytes()].concat()),
        3 => vec(any::<u8>(), 0..60),
        1 => prop_oneof![Just(999usize), Just(1000), Just(1001), 0usize..1200]
            .prop_flat_map(|n| vec(any::<u8>(), n..=n)),
        1 => vec(any::<u8>(), 0..8).prop_map(|mut v| { v.insert(0, 0xC5); v }),
        1 => Just(Vec::new()),
    ]
}

#[derive(Default)]
struct Model {
    /// Clients the server knows, with their room and nickname.
    clients: HashMap<SocketAddr, (Option<u32>, Option<Vec<u8>>)>,
}

fn step(
    s: &mut Sessions,
    m: &mut Model,
    limits: &SessionLimits,
    from: SocketAddr,
    data: &[u8],
) -> Result<(), TestCaseError> {
    let known = m.clients.contains_key(&from);
    let o = s.handle(from, data);
    let silenced = matches!(o, Outcome::Silenced { .. });
    let text = String::from_utf8_lossy(o.reply().unwrap_or_default()).into_owned();
    if let Some(r) = o.reply() {
        prop_assert!(
            r.starts_with(b"+OK") || r.starts_with(b"-ERR"),
            "reply {:?}",
            text
        );
        prop_assert!(o.post().is_none(), "reply and post at once");
    }
    if known {
        prop_assert!(o.client().is_some(), "a known client's outcome names it");
    }
    let is_cmd = data.first() == Some(&b'/');
    if data.len() > MAX_LINE {
        prop_assert!(
            text.starts_with("-ERR"),
            "{} bytes accepted: {:?}",
            data.len(),
            text
        );
        prop_assert!(o.post().is_none());
    } else if !is_cmd {
        match m.clients.get(&from) {
            Some((Some(room), nick)) => {
                let (r, line) = o.post().expect("a member's chat text is posted");
                prop_assert_eq!(r, *room);
                let mut want = b"<".to_vec();
                match nick {
                    Some(n) => want.extend_from_slice(n),
                    None => want.extend_from_slice(from.to_string().as_bytes()),
                }
                want.extend_from_slice(b"> ");
                want.extend_from_slice(data);
                prop_assert_eq!(&line[..], &want[..]);
            }
            // Text that looks like server output (`+OK`, `-ERR`, `<`) from
            // outside a room gets no reply at all (no ping-pong between
            // servers); other text gets `-ERR`.
            _ if node::session::looks_like_server_output(data) => {
                prop_assert!(o.reply().is_none(), "answered server output: {:?}", text);
                prop_assert!(silenced);
            }
            _ => prop_assert!(text.starts_with("-ERR"), "text outside a room: {:?}", text),
        }
    } else {
        prop_assert!(o.post().is_none(), "a command was posted");
    }
    // Update the model from what the server said.
    if silenced {
        prop_assert!(o.reply().is_none() && o.post().is_none());
    } else if o.reply().is_none() && o.post().is_none() {
        // Only /quit is silent (besides server output, above).
        prop_assert!(
            data.starts_with(b"/quit"),
            "silent on {:?}",
            String::from_utf8_lossy(data)
        );
        m.clients.remove(&from);
    } else if let Some(rest) = text.strip_prefix("+OK You are now in chat room #") {
        let room: u32 = rest.parse().expect("room number");
        prop_assert!(room >= 1 && room <= limits.rooms);
        let e = m.clients.entry(from).or_default();
        prop_assert!(e.0.is_none(), "joined twice");
        e.0 = Some(room);
    } else if let Some(rest) = text.strip_prefix("+OK You have left chat room #") {
        let room: u32 = rest.parse().expect("room number");
        let e = m.clients.get_mut(&from).expect("part by a known client");
        prop_assert_eq!(e.0, Some(room));
        e.0 = None;
    } else if text.starts_with("+OK Nickname set to '") {
        let r = o.reply().unwrap();
        let nick = r[b"+OK Nickname set to '".len()..r.len() - 1].to_vec();
        prop_assert!(!nick.is_empty() && nick.len() <= MAX_NICK);
        prop_assert!(
            !nick
                .iter()
                .any(|&b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>')
        );
        m.clients.entry(from).or_default().1 = Some(nick);
    } else if text.starts_with("+OK") {
        prop_assert!(false, "unexpected +OK: {:?}", text);
    } else if text.starts_with("-ERR Server is full") {
        prop_assert!(!known && m.clients.len() >= limits.max_clients);
    }
    // Invariants.
    prop_assert_eq!(s.len(), m.clients.len());
    prop_assert!(s.len() <= limits.max_clients);
    for room in 0..=limits.rooms + 1 {
        let members = s.members(room);
        let set: HashSet<_> = members.iter().copied().collect();
        prop_assert_eq!(set.len(), members.len(), "member twice in room {}", room);
        let want: HashSet<SocketAddr> = m
            .clients
            .iter()
            .filter(|(_, (r, _))| *r == Some(room))
            .map(|(a, _)| *a)
            .collect();
        prop_assert_eq!(set, want, "members of room {}", room);
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg(2_000))]

    #[test]
    fn sessions_follow_the_model(
        rooms in prop_oneof![Just(10u32), 1u32..4],
        max_clients in prop_oneof![Just(4096usize), 1usize..4],
        steps in vec((0u8..5, datagram()), 1..60),
    ) {
        let limits = SessionLimits { rooms, max_clients };
        let mut s = Sessions::new(limits.clone());
        let mut m = Model::default();
        for (who, data) in &steps {
            step(&mut s, &mut m, &limits, addr(*who), data)?;
        }
    }
}

proptest! {
    #![proptest_config(cfg(6_000))]

    #[test]
    fn sessions_never_panic_on_arbitrary_bytes(data in vec(any::<u8>(), 0..1100), port in any::<u16>()) {
        let mut s = Sessions::new(SessionLimits::default());
        let from = SocketAddr::from(([127, 0, 0, 1], port));
        let o = s.handle(from, &data);
        if let Some(r) = o.reply() {
            prop_assert!(r.starts_with(b"+OK") || r.starts_with(b"-ERR"));
        } else if data.len() <= MAX_LINE && data.first() != Some(&b'/') {
            let silenced = matches!(o, Outcome::Silenced { .. });
            prop_assert!(silenced && node::session::looks_like_server_output(&data));
        }
        // The same bytes after a join: a chat line or a command, never a panic.
        let _ = s.handle(from, b"/join 1");
        let o = s.handle(from, &data);
        if data.len() <= MAX_LINE && data.first() != Some(&b'/') {
            let (_, line) = o.post().expect("posted");
            let prefix = format!("<{from}> ");
            prop_assert!(line.starts_with(prefix.as_bytes()));
            prop_assert!(line.ends_with(&data));
        }
    }
}

/// The host-name guard must not skip most of the work: for each generator,
/// most samples run through every entry point.
#[test]
fn most_config_cases_are_parsed_not_skipped() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let gens: Vec<(&str, BoxedStrategy<String>)> = vec![
        ("arbitrary text", arbitrary_text().boxed()),
        ("token soup", token_soup().boxed()),
        ("mutated files", mutated_file().boxed()),
    ];
    for (name, g) in gens {
        let (mut legacy, mut toml) = (0, 0);
        let n = 500;
        for _ in 0..n {
            let text = g.new_tree(&mut runner).expect("sample").current();
            legacy += usize::from(!legacy_may_resolve(&text));
            toml += usize::from(!toml_may_resolve(&text));
        }
        eprintln!("{name}: legacy path runs {legacy}/{n}, TOML path runs {toml}/{n}");
        assert!(
            legacy * 2 > n && toml * 2 > n,
            "{name}: legacy {legacy}/{n}, TOML {toml}/{n}"
        );
    }
}
