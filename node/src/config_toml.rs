//! TOML cluster files (see `config.rs` for the model).
//!
//! The servers and the ordering, which `chatserver` reads (every key
//! optional unless marked required):
//!
//! ```toml
//! [cluster]
//! ordering = "total"         # a registered mode; `launcher up -o` overrides it
//! rooms = 10                 # rooms 1..=rooms
//! busy_poll_us = 400         # polling after traffic, 0..=5000 (default 50;
//!                            # `chatserver --busy-poll-us` overrides it)
//!
//! [nodes]                    # N nodes on consecutive ports of one host ...
//! count = 3                  # required
//! host = "127.0.0.1"         # default 127.0.0.1; hostnames are resolved
//! base_port = 5000           # required
//! forward_base_port = 8000   # default: forwarding address = bind address
//! metrics_base_port = 9100   # default: no /metrics (node i serves host:port+i-1)
//!
//! [[node]]                   # ... or explicit nodes (not both)
//! name = "s1"                # default s<i>
//! advertise = "chat-1.example:5000"  # where the others reach it (a name
//!                            # or a specific address); `forward` is a synonym
//! bind = "0.0.0.0:5000"      # what it binds (may be a wildcard); default:
//!                            # = advertise. At least one of the two.
//! metrics = "127.0.0.1:9100" # default: no /metrics; port 0: any free port
//! ```
//!
//! A host name that does not resolve at load is no error: the server
//! resolves it again while it runs (see `server.rs`).
//!
//! The same file carries the launcher's settings (`name`, `chatserver`,
//! `state_dir`, `secret`, `secret_file`, `node_args`, `console` in `[cluster]`; the
//! `[supervise]` and `[faults]` tables), which `launcher::cluster::settings`
//! parses. `chatserver` skips exactly those keys by name, so a misspelt key
//! is still an error on both sides, naming the file, the line and the key.
//!
//! The tables are serde structs with `deny_unknown_fields`; [`TomlDoc`]
//! turns the deserializer's errors into [`ConfigError`]s.

use crate::config::{
    self, ClusterConfig, ConfigError, ConfigFormat, ConfigLimits, DEFAULT_ROOMS, Origin,
    ServerEntry,
};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, IgnoredAny};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

type Result<T> = std::result::Result<T, ConfigError>;

/// The whole file as `chatserver` reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cluster: Option<Table<ClusterTable>>,
    nodes: Option<Spanned<Table<NodesTable>>>,
    node: Option<Spanned<NodeList>>,
    membership: Option<Spanned<Table<MembershipTable>>>,
    // The launcher's tables.
    #[serde(rename = "supervise")]
    _supervise: Option<IgnoredAny>,
    #[serde(rename = "faults")]
    _faults: Option<IgnoredAny>,
}

// Fields in the documented order: serde lists them in that order when a
// key is unknown. Those with `_` are the launcher's, skipped by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterTable {
    #[serde(rename = "name")]
    _name: Option<IgnoredAny>,
    ordering: Option<Spanned<String>>,
    rooms: Option<Int<1, { u32::MAX as i64 }>>,
    busy_poll_us: Option<Int<0, { MAX_BUSY_POLL_US as i64 }>>,
    #[serde(rename = "chatserver")]
    _chatserver: Option<IgnoredAny>,
    #[serde(rename = "state_dir")]
    _state_dir: Option<IgnoredAny>,
    #[serde(rename = "secret")]
    _secret: Option<IgnoredAny>,
    #[serde(rename = "secret_file")]
    _secret_file: Option<IgnoredAny>,
    #[serde(rename = "node_args")]
    _node_args: Option<IgnoredAny>,
    #[serde(rename = "console")]
    _console: Option<IgnoredAny>,
}

type Port = Int<1, 65535>;

/// The most polling a file may ask for: one poll never lasts longer than
/// 5 ms (the loop's timers and shutdown run at least that often).
pub const MAX_BUSY_POLL_US: u64 = 5_000;

impl TomlTable for ClusterTable {
    const EXPECTING: &'static str = "the [cluster] table";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesTable {
    count: Option<Spanned<Int<1, 65535>>>,
    host: Option<Spanned<String>>,
    base_port: Option<Spanned<Port>>,
    forward_base_port: Option<Spanned<Port>>,
    metrics_base_port: Option<Spanned<Port>>,
}

impl TomlTable for NodesTable {
    const EXPECTING: &'static str = "one [nodes] table (write [nodes], not [[nodes]])";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTable {
    name: Option<Spanned<String>>,
    bind: Option<Spanned<String>>,
    advertise: Option<Spanned<String>>,
    forward: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
}

/// Failure detection and quorum (see `orderings::MembershipConfig`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipTable {
    heartbeat_ms: Option<Int<1, 60_000>>,
    suspect_ms: Option<Int<1, 3_600_000>>,
    quorum: Option<Spanned<Int<1, 65535>>>,
}

impl TomlTable for MembershipTable {
    const EXPECTING: &'static str = "one [membership] table";
}

impl TomlTable for NodeTable {
    const EXPECTING: &'static str = "a [[node]] table";
}

/// The `[[node]]` array. Its own visitor only to name `[[node]]` when the
/// file writes `[node]` (serde would say "expected a sequence").
struct NodeList(Vec<Spanned<Table<NodeTable>>>);

impl<'de> Deserialize<'de> for NodeList {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = NodeList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[[node]] tables (an array of tables, not [node])")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<NodeList, A::Error> {
                let mut v = Vec::new();
                while let Some(t) = seq.next_element()? {
                    v.push(t);
                }
                Ok(NodeList(v))
            }
        }
        d.deserialize_seq(V)
    }
}

/// What a table struct is called in messages ("the `[cluster]` table").
pub trait TomlTable {
    const EXPECTING: &'static str;
}

/// A TOML table, and nothing else: serde's derived structs also take an
/// array, its elements as the fields in order (`[[nodes]]` would read as
/// `count = <a table>`).
pub struct Table<T>(pub T);

impl<'de, T: Deserialize<'de> + TomlTable> Deserialize<'de> for Table<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + TomlTable> de::Visitor<'de> for V<T> {
            type Value = Table<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Table<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Table)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// An integer in `MIN..=MAX`. The range check runs inside the deserializer,
/// so its error carries the value's position like a type error does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int<const MIN: i64, const MAX: i64>(pub i64);

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Int<MIN, MAX> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<const MIN: i64, const MAX: i64>;
        impl<const MIN: i64, const MAX: i64> de::Visitor<'_> for V<MIN, MAX> {
            type Value = Int<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> std::result::Result<Self::Value, E> {
                if (MIN..=MAX).contains(&n) {
                    Ok(Int(n))
                } else {
                    Err(E::custom(format!(
                        "{n} is out of range (expected {MIN} to {MAX})"
                    )))
                }
            }
            fn visit_i128<E: de::Error>(self, n: i128) -> std::result::Result<Self::Value, E> {
                match i64::try_from(n) {
                    Ok(n) => self.visit_i64(n),
                    Err(_) => Err(E::custom(format!(
                        "{n} is out of range (expected {MIN} to {MAX})"
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> std::result::Result<Self::Value, E> {
                self.visit_i128(i128::from(n))
            }
            fn visit_u128<E: de::Error>(self, n: u128) -> std::result::Result<Self::Value, E> {
                self.visit_i128(i128::try_from(n).unwrap_or(i128::MAX))
            }
        }
        d.deserialize_i64(V::<MIN, MAX>)
    }
}

/// Checks a cluster or node name: usable as a file name and an output prefix.
pub fn check_name(what: &str, s: &str) -> std::result::Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid {what} name (letters, digits, '-', '_', '.'; at most 64; not starting with '.')"
        ))
    }
}

/// A TOML file being read: deserializes it and words errors as
/// `file:line: key: what is wrong`.
pub struct TomlDoc<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl<'a> TomlDoc<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self { path, text }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// An error at `span`, about `key` (a dotted path such as `node[2].bind`).
    pub fn err(&self, span: Range<usize>, key: &str, msg: impl fmt::Display) -> ConfigError {
        ConfigError::new(
            self.path,
            Some(self.line_of(span.start)),
            format!("{key}: {msg}"),
        )
    }

    /// Parses the file into `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        let de = toml::de::Deserializer::parse(self.text).map_err(|e| {
            let line = e.span().map_or(1, |s| self.line_of(s.start));
            ConfigError::new(
                self.path,
                Some(line),
                format!("TOML syntax error: {}", e.message().trim()),
            )
        })?;
        T::deserialize(de).map_err(|e| self.data_error(&e))
    }

    /// A deserializer error (the text is valid TOML), with the key it is
    /// about. toml keeps the key path of an error private and without array
    /// indexes, so the key is found again from the error's span.
    fn data_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let key = span.as_ref().and_then(|s| {
            let root = DeTable::parse(self.text).ok()?;
            let mut path = String::new();
            find_key(root.get_ref(), s, &mut path).then_some(path)
        });
        let msg = e.message().trim();
        // serde's "unknown field `x`, expected one of `a`, `b`", in the
        // words of TOML: the root's keys are tables.
        let msg = match msg.strip_prefix("unknown field `") {
            Some(rest) => {
                let expected = rest
                    .split_once(", expected ")
                    .map(|(_, e)| e.trim_start_matches("one of ").replace(['`'], ""))
                    .map(|e| e.replace(" or ", ", "))
                    .unwrap_or_default();
                let what = match &key {
                    Some(k) if k.contains('.') => "key",
                    _ => "table",
                };
                format!("unknown {what} (expected one of: {expected})")
            }
            None => msg.to_string(),
        };
        let line = span.map(|s| self.line_of(s.start));
        match key {
            Some(k) => ConfigError::new(self.path, line, format!("{k}: {msg}")),
            None => ConfigError::new(self.path, line, msg),
        }
    }
}

/// Appends to `path` the dotted key (`node[2].bind`) whose key or value is
/// at `span`; false when nothing is.
fn find_key(table: &DeTable<'_>, span: &Range<usize>, path: &mut String) -> bool {
    for (k, v) in table.iter() {
        let mark = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k.get_ref());
        if k.span().contains(&span.start) || v.span() == *span || within(v, span, path) {
            return true;
        }
        path.truncate(mark);
    }
    false
}

fn within(v: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &mut String) -> bool {
    match v.get_ref() {
        DeValue::Table(t) => find_key(t, span, path),
        DeValue::Array(a) => a.iter().enumerate().any(|(i, item)| {
            let mark = path.len();
            path.push_str(&format!("[{}]", i + 1));
            if item.span() == *span || within(item, span, path) {
                return true;
            }
            path.truncate(mark);
            false
        }),
        _ => v.span().contains(&span.start),
    }
}

/// [`crate::config::parse_toml`] with explicit limits.
pub fn parse_toml_with(path: &Path, text: &str, limits: ConfigLimits) -> Result<ClusterConfig> {
    let doc = TomlDoc::new(path, text);
    let file: File = doc.deserialize()?;
    let mut cfg = ClusterConfig {
        source: path.to_path_buf(),
        format: ConfigFormat::Toml,
        ordering: None,
        rooms: DEFAULT_ROOMS,
        busy_poll_us: None,
        servers: Vec::new(),
        membership: config::MembershipSettings::default(),
    };
    if let Some(Table(c)) = file.cluster {
        if let Some(o) = c.ordering {
            let spec = orderings::lookup(o.get_ref())
                .map_err(|e| doc.err(o.span(), "cluster.ordering", e))?;
            cfg.ordering = Some(spec.name.to_string());
        }
        if let Some(Int(r)) = c.rooms {
            cfg.rooms = r as u32; // in 1..=u32::MAX
        }
        if let Some(Int(us)) = c.busy_poll_us {
            cfg.busy_poll_us = Some(us as u64); // in 0..=MAX_BUSY_POLL_US
        }
    }
    let (servers, origins) = match (file.nodes, file.node) {
        (Some(_), Some(n)) => {
            return Err(doc.err(
                n.span(),
                "node",
                "use either [nodes] (shorthand) or [[node]] entries, not both",
            ));
        }
        (Some(n), None) => nodes_shorthand(&doc, n, limits)?,
        (None, Some(n)) => node_list(&doc, n, limits)?,
        (None, None) => {
            return Err(ConfigError::new(
                path,
                Some(1),
                "nodes: no nodes listed: add a [nodes] table (count, host, base_port) or [[node]] entries",
            ));
        }
    };
    cfg.servers = servers;
    if let Some(m) = file.membership {
        let span = m.span();
        let Table(m) = m.into_inner();
        let defaults = orderings::MembershipConfig::default();
        let heartbeat = m.heartbeat_ms.map(|Int(h)| h as u64);
        let suspect = m.suspect_ms.map(|Int(s)| s as u64);
        let h = heartbeat.unwrap_or(defaults.heartbeat_us / 1000);
        let s = suspect.unwrap_or(defaults.suspect_us / 1000);
        if s < 2 * h {
            return Err(doc.err(
                span,
                "membership.suspect_ms",
                format!(
                    "{s} ms is less than two heartbeats ({h} ms each): every lost heartbeat would exclude a server"
                ),
            ));
        }
        let mut quorum = None;
        if let Some(q) = m.quorum {
            let n = q.get_ref().0 as usize;
            if n > cfg.servers.len() {
                return Err(doc.err(
                    q.span(),
                    "membership.quorum",
                    format!("{n} is more than the {} servers listed", cfg.servers.len()),
                ));
            }
            quorum = Some(n);
        }
        cfg.membership = config::MembershipSettings {
            heartbeat_ms: heartbeat,
            suspect_ms: suspect,
            quorum,
        };
    }
    config::finish(cfg, &origins)
}

/// The bracketed form of an IPv6 host, so that a port can follow.
fn host_port(host: &str, port: i64) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Resolves an address written at `span`, naming `key` in the error.
fn resolve(doc: &TomlDoc<'_>, span: Range<usize>, key: &str, text: &str) -> Result<SocketAddr> {
    config::resolve(doc.path, doc.line_of(span.start), text).map_err(|e| ConfigError {
        message: format!("{key}: {}", e.message),
        ..e
    })
}

/// A metrics listen address written at `span`, naming `key` in the error:
/// an IP address and a port, where port 0 is allowed (the node's own
/// address is what other servers send to and must be known, but a metrics
/// listener may take any free port; its `ready` line names it).
fn resolve_metrics(
    doc: &TomlDoc<'_>,
    span: Range<usize>,
    key: &str,
    text: &str,
) -> Result<SocketAddr> {
    text.parse::<SocketAddr>().map_err(|_| {
        doc.err(
            span,
            key,
            format!("'{text}' is not an address: expected IP:PORT (port 0: any free port)"),
        )
    })
}

/// Parses an address of `role` written at `span` (names need not resolve
/// yet), naming `key` in the error.
fn endpoint(
    doc: &TomlDoc<'_>,
    span: Range<usize>,
    key: &str,
    text: &str,
    role: config::Role,
) -> Result<config::Endpoint> {
    config::endpoint(doc.path, doc.line_of(span.start), text, role).map_err(|e| ConfigError {
        message: format!("{key}: {}", e.message),
        ..e
    })
}

fn missing(doc: &TomlDoc<'_>, span: Range<usize>, key: &str) -> ConfigError {
    doc.err(span, key, "missing (required)")
}

fn nodes_shorthand(
    doc: &TomlDoc<'_>,
    n: Spanned<Table<NodesTable>>,
    limits: ConfigLimits,
) -> Result<(Vec<ServerEntry>, Vec<Origin>)> {
    let table_span = n.span();
    let Table(n) = n.into_inner();
    let count = n
        .count
        .ok_or_else(|| missing(doc, table_span.clone(), "nodes.count"))?;
    let c = count.get_ref().0;
    if c as usize > limits.servers() {
        let e = config::too_many_servers(doc.path, doc.line_of(count.span().start), limits);
        return Err(ConfigError {
            message: format!("nodes.count: {}", e.message),
            ..e
        });
    }
    let base = n
        .base_port
        .ok_or_else(|| missing(doc, table_span.clone(), "nodes.base_port"))?;
    for (p, key) in [
        (Some(&base), "nodes.base_port"),
        (n.forward_base_port.as_ref(), "nodes.forward_base_port"),
        (n.metrics_base_port.as_ref(), "nodes.metrics_base_port"),
    ] {
        if let Some(p) = p
            && p.get_ref().0 + c - 1 > 65535
        {
            return Err(doc.err(
                p.span(),
                key,
                format!("{c} nodes from port {} run past port 65535", p.get_ref().0),
            ));
        }
    }
    let (host, host_span) = match &n.host {
        Some(h) => (h.get_ref().as_str(), h.span()),
        None => ("127.0.0.1", table_span),
    };
    // Resolved once; every node shares the IP.
    let ip = resolve(
        doc,
        host_span,
        "nodes.host",
        &host_port(host, base.get_ref().0),
    )?
    .ip();
    let bind_line = doc.line_of(base.span().start);
    let origin = Origin {
        bind: (bind_line, "nodes.base_port".into()),
        forward: match &n.forward_base_port {
            Some(f) => (
                doc.line_of(f.span().start),
                "nodes.forward_base_port".into(),
            ),
            None => (bind_line, "nodes.base_port".into()),
        },
    };
    // The checks above keep every port in 1..=65535.
    let port = |p: &Spanned<Port>, i: i64| (p.get_ref().0 + i) as u16;
    let servers = (0..c)
        .map(|i| {
            let bind = SocketAddr::new(ip, port(&base, i));
            ServerEntry {
                name: format!("s{}", i + 1),
                forward: n
                    .forward_base_port
                    .as_ref()
                    .map_or(bind, |f| SocketAddr::new(ip, port(f, i))),
                bind,
                forward_name: None,
                bind_name: None,
                line: bind_line,
                metrics: n
                    .metrics_base_port
                    .as_ref()
                    .map(|m| SocketAddr::new(ip, port(m, i))),
            }
        })
        .collect();
    Ok((servers, vec![origin; c as usize]))
}

fn node_list(
    doc: &TomlDoc<'_>,
    list: Spanned<NodeList>,
    limits: ConfigLimits,
) -> Result<(Vec<ServerEntry>, Vec<Origin>)> {
    let list_span = list.span();
    let NodeList(nodes) = list.into_inner();
    if nodes.is_empty() {
        return Err(doc.err(list_span, "node", "no nodes listed"));
    }
    if let Some(extra) = nodes.get(limits.servers()) {
        let e = config::too_many_servers(doc.path, doc.line_of(extra.span().start), limits);
        return Err(ConfigError {
            message: format!("node[{}]: {}", limits.servers() + 1, e.message),
            ..e
        });
    }
    let mut servers: Vec<ServerEntry> = Vec::with_capacity(nodes.len());
    let mut origins = Vec::with_capacity(nodes.len());
    for (i, item) in nodes.into_iter().enumerate() {
        let key = |k: &str| format!("node[{}].{k}", i + 1);
        let span = item.span();
        let Table(t) = item.into_inner();
        let (name, name_span) = match t.name {
            Some(n) => {
                check_name("node", n.get_ref()).map_err(|m| doc.err(n.span(), &key("name"), m))?;
                (n.get_ref().clone(), Some(n.span()))
            }
            None => (format!("s{}", i + 1), None),
        };
        let advertise = match (t.advertise, t.forward) {
            (Some(a), Some(f)) => {
                return Err(doc.err(
                    f.span(),
                    &key("forward"),
                    format!(
                        "give `advertise` or its synonym `forward`, not both (advertise = {:?} is on line {})",
                        a.get_ref(),
                        doc.line_of(a.span().start)
                    ),
                ));
            }
            (Some(a), None) => Some((a, "advertise")),
            (None, Some(f)) => Some((f, "forward")),
            (None, None) => None,
        };
        let written = |s: &Spanned<String>, k: &str, role| {
            endpoint(doc, s.span(), &key(k), s.get_ref(), role)
                .map(|e| (e, (doc.line_of(s.span().start), key(k))))
        };
        let (bind, bind_origin, line_span) = match &t.bind {
            Some(b) => {
                let (e, o) = written(b, "bind", config::Role::Bind)?;
                (e, o, b.span())
            }
            None => match &advertise {
                Some((a, k)) => {
                    let (e, o) = written(a, k, config::Role::Advertise)?;
                    (e, o, a.span())
                }
                None => {
                    return Err(doc.err(
                        span,
                        &key("bind"),
                        "missing (required): give `bind`, `advertise` or both",
                    ));
                }
            },
        };
        let (forward, forward_origin) = match &advertise {
            Some((a, k)) => written(a, k, config::Role::Advertise)?,
            None if bind.addr.ip().is_unspecified() && bind.name.is_none() => {
                let b = t.bind.as_ref().map_or(span.clone(), |b| b.span());
                return Err(doc.err(
                    b,
                    &key("bind"),
                    format!(
                        "a wildcard (unspecified) bind address ({}) needs `advertise = \"HOST:PORT\"`: the address the other servers and clients reach this server at",
                        bind.addr
                    ),
                ));
            }
            None => (bind.clone(), bind_origin.clone()),
        };
        let bind_line = doc.line_of(line_span.start);
        let metrics = match &t.metrics {
            Some(m) => {
                let addr = resolve_metrics(doc, m.span(), &key("metrics"), m.get_ref())?;
                // Two nodes cannot serve on one TCP port (port 0 picks a
                // free one each).
                if addr.port() != 0
                    && let Some((j, other)) = servers
                        .iter()
                        .enumerate()
                        .find(|(_, o)| o.metrics == Some(addr))
                {
                    return Err(doc.err(
                        m.span(),
                        &key("metrics"),
                        format!(
                            "metrics address {addr} is also node[{}]'s (line {})",
                            j + 1,
                            other.line
                        ),
                    ));
                }
                Some(addr)
            }
            None => None,
        };
        // Explicit names and defaults may collide (`name = "s2"` on node 1).
        if let Some((j, other)) = servers.iter().enumerate().find(|(_, o)| o.name == name) {
            return Err(doc.err(
                name_span.unwrap_or(line_span),
                &key("name"),
                format!(
                    "duplicate node name '{name}' (node[{}] on line {} has it too)",
                    j + 1,
                    other.line
                ),
            ));
        }
        servers.push(ServerEntry {
            name,
            forward: forward.addr,
            bind: bind.addr,
            forward_name: forward.name,
            bind_name: bind.name,
            line: bind_line,
            metrics,
        });
        origins.push(Origin {
            bind: bind_origin,
            forward: forward_origin,
        });
    }
    Ok((servers, origins))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn p(text: &str) -> Result<ClusterConfig> {
        crate::config::parse_toml(Path::new("/cfg/demo.toml"), text)
    }

    /// The error for `text`, as displayed.
    fn e(text: &str) -> String {
        match p(text) {
            Ok(c) => panic!("expected an error, parsed {c:#?}"),
            Err(e) => e.to_string(),
        }
    }

    const NODES: &str = "[nodes]\ncount = 3\nbase_port = 5000\n";

    #[test]
    fn minimal_shorthand() {
        let c = p(NODES).unwrap();
        assert_eq!(c.format, ConfigFormat::Toml);
        assert_eq!(c.rooms, DEFAULT_ROOMS);
        assert_eq!(c.ordering, None);
        assert_eq!(c.busy_poll_us, None);
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.servers[2].name, "s3");
        assert_eq!(c.servers[2].bind, "127.0.0.1:5002".parse().unwrap());
        assert_eq!(c.servers[2].forward, c.servers[2].bind);
        assert_eq!(c.servers[0].line, 3);
    }

    #[test]
    fn explicit_nodes() {
        let text = "[cluster]\nordering = \"fifo\"\nrooms = 20\nbusy_poll_us = 400\n\
                    [[node]]\nname = \"alpha\"\nbind = \"127.0.0.1:5000\"\nforward = \"127.0.0.1:8000\"\n\n\
                    [[node]]\nbind = \"localhost:5001\"\n";
        let c = p(text).unwrap();
        assert_eq!(c.ordering.as_deref(), Some("fifo"));
        assert_eq!(c.rooms, 20);
        assert_eq!(c.busy_poll_us, Some(400));
        assert_eq!(c.servers[0].name, "alpha");
        assert_eq!(c.servers[0].forward, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.servers[0].line, 7);
        assert_eq!(c.servers[1].name, "s2");
        assert_eq!(c.servers[1].bind.port(), 5001);
        assert_eq!(c.servers[1].forward, c.servers[1].bind);
    }

    #[test]
    fn the_launchers_keys_are_skipped_whatever_their_values() {
        // The launcher checks them; `chatserver` does not read them.
        let c = p(&format!(
            "[cluster]\nname = 3\nsecret = [1]\n{NODES}[supervise]\nbogus = 1\n[faults]\nloss = 7\n"
        ))
        .unwrap();
        assert_eq!(c.servers.len(), 3);
    }

    #[test]
    fn shorthand_with_forward_ports() {
        let c = p("[nodes]\ncount = 2\nhost = \"127.0.0.1\"\nbase_port = 5000\nforward_base_port = 8000\n").unwrap();
        assert_eq!(c.servers[1].forward, "127.0.0.1:8001".parse().unwrap());
        assert_eq!(c.servers[1].bind, "127.0.0.1:5001".parse().unwrap());
    }

    #[test]
    fn ordering_names_the_registered_mode() {
        let c = p(&format!("[cluster]\nordering = \"Total\"\n{NODES}")).unwrap();
        assert_eq!(c.ordering.as_deref(), Some("total"));
    }

    #[test]
    fn parse_detects_toml_by_content() {
        let c = parse(Path::new("/cfg/cluster.conf"), NODES).unwrap();
        assert_eq!(c.format, ConfigFormat::Toml);
    }

    fn assert_err(text: &str, line: usize, needles: &[&str]) {
        let msg = e(text);
        let prefix = format!("/cfg/demo.toml:{line}: ");
        assert!(
            msg.starts_with(&prefix),
            "{msg:?} should start with {prefix:?}"
        );
        for n in needles {
            assert!(msg.contains(n), "{msg:?} should contain {n:?}");
        }
    }

    #[test]
    fn metrics_addresses() {
        let c = p("[nodes]\ncount = 3\nbase_port = 5000\nmetrics_base_port = 9100\n").unwrap();
        let m: Vec<_> = c.servers.iter().map(|s| s.metrics).collect();
        assert_eq!(
            m,
            ["127.0.0.1:9100", "127.0.0.1:9101", "127.0.0.1:9102"]
                .map(|a| Some(a.parse().unwrap()))
        );
        assert_eq!(p(NODES).unwrap().servers[0].metrics, None);
        let c = p(
            "[[node]]\nbind = \"127.0.0.1:5000\"\nmetrics = \"127.0.0.1:0\"\n\
                   [[node]]\nbind = \"127.0.0.1:5001\"\nmetrics = \"127.0.0.1:0\"\n\
                   [[node]]\nbind = \"127.0.0.1:5002\"\n",
        )
        .unwrap();
        assert_eq!(c.servers[1].metrics, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.servers[2].metrics, None);
    }

    #[test]
    fn error_metrics_addresses() {
        assert_err(
            "[nodes]\ncount = 3\nbase_port = 5000\nmetrics_base_port = 65534\n",
            4,
            &["nodes.metrics_base_port", "past port 65535"],
        );
        assert_err(
            "[nodes]\ncount = 3\nbase_port = 5000\nmetrics_base_port = 0\n",
            4,
            &["nodes.metrics_base_port"],
        );
        assert_err(
            "[nodes]\ncount = 1\nbase_port = 5000\nmetrics_port = 9100\n",
            4,
            &["nodes.metrics_port", "unknown key"],
        );
        assert_err(
            "[[node]]\nbind = \"127.0.0.1:5000\"\nmetrics = \"127.0.0.1\"\n",
            3,
            &["node[1].metrics"],
        );
        assert_err(
            "[[node]]\nbind = \"127.0.0.1:5000\"\nmetrics = \"127.0.0.1:9100\"\n\
             [[node]]\nbind = \"127.0.0.1:5001\"\nmetrics = \"127.0.0.1:9100\"\n",
            6,
            &["node[2].metrics", "node[1]", "line 2"],
        );
    }

    #[test]
    fn error_syntax() {
        assert_err("[cluster]\nrooms = = 3\n", 2, &["syntax"]);
        assert_err("[cluster]\nrooms = 3\nrooms = 4\n", 3, &["syntax"]);
    }

    #[test]
    fn error_unknown_keys() {
        assert_err("[cluster]\nroms = 3\n", 2, &["cluster.roms", "unknown key"]);
        assert_err(
            &format!("{NODES}[bogus]\nx = 1\n"),
            4,
            &[
                "bogus",
                "unknown table",
                "cluster, nodes, node, membership, supervise, faults",
            ],
        );
        assert_err(
            &format!("{NODES}extra = 1\n"),
            4,
            &["nodes.extra", "unknown key"],
        );
        assert_err(
            "[[node]]\nbind = \"127.0.0.1:5000\"\nport = 3\n",
            3,
            &["node[1].port", "unknown", "name, bind, advertise, forward"],
        );
        assert_err(
            "[[node]]\nbind = \"127.0.0.1:5000\"\n[[node]]\nbind = \"127.0.0.1:5001\"\nport = 3\n",
            5,
            &["node[2].port: unknown key"],
        );
    }

    #[test]
    fn error_nodes_shape() {
        assert_err("[cluster]\nrooms = 3\n", 1, &["nodes", "no nodes"]);
        assert_err(
            &format!("{NODES}[[node]]\nbind = \"127.0.0.1:6000\"\n"),
            4,
            &["node", "not both"],
        );
        assert_err("[node]\nbind = \"127.0.0.1:6000\"\n", 1, &["[[node]]"]);
        assert_err("[[nodes]]\ncount = 1\n", 1, &["nodes", "[nodes]"]);
        assert_err("[[node]]\nname = \"a\"\n", 1, &["node[1].bind", "missing"]);
        assert_err(
            "[nodes]\nbase_port = 5000\n",
            1,
            &["nodes.count", "missing"],
        );
        assert_err(
            "[nodes]\ncount = 0\nbase_port = 5000\n",
            2,
            &["nodes.count", "out of range"],
        );
        assert_err(
            "[[node]]\nname = \"a\"\nbind = \"127.0.0.1:5000\"\n[[node]]\nname = \"a\"\nbind = \"127.0.0.1:5001\"\n",
            5,
            &["node[2].name", "duplicate node name"],
        );
        assert_err(
            "[[node]]\nname = \"s2\"\nbind = \"127.0.0.1:5000\"\n[[node]]\nbind = \"127.0.0.1:5001\"\n",
            5,
            &["duplicate node name 's2'"],
        );
        assert_err(
            "[[node]]\nname = \"a/b\"\nbind = \"127.0.0.1:5000\"\n",
            2,
            &["node[1].name", "not a valid"],
        );
    }

    #[test]
    fn error_addresses() {
        assert_err(
            "[[node]]\nbind = \"127.0.0.1:99999\"\n",
            2,
            &["node[1].bind", "bad port"],
        );
        assert_err(
            "[[node]]\nbind = \"127.0.0.1:0\"\n",
            2,
            &["node[1].bind", "port 0"],
        );
        assert_err(
            "[[node]]\nbind = \"nonsense\"\n",
            2,
            &["node[1].bind", "not an address"],
        );
        assert_err(
            "[[node]]\nbind = 5000\n",
            2,
            &["node[1].bind", "expected a string"],
        );
        assert_err(
            "[[node]]\nbind = \"127.0.0.1:5000\"\n\n[[node]]\nbind = \"127.0.0.1:5000\"\n",
            5,
            &["node[2].bind", "duplicate address 127.0.0.1:5000", "line 2"],
        );
        assert_err(
            "[[node]]\nbind = \"127.0.0.1:5000\"\nforward = \"127.0.0.1:5001\"\n[[node]]\nbind = \"127.0.0.1:5001\"\n",
            5,
            &[
                "duplicate address 127.0.0.1:5001",
                "forwarding address of s1",
            ],
        );
        assert_err(
            "[nodes]\ncount = 3\nbase_port = 5000\nforward_base_port = 5002\n",
            3,
            &[
                "nodes.base_port",
                "duplicate address 127.0.0.1:5002",
                "forwarding address of s1",
            ],
        );
        assert_err(
            "[nodes]\ncount = 3\nbase_port = 65534\n",
            3,
            &["nodes.base_port", "65535"],
        );
        assert_err(
            "[nodes]\ncount = 3\nbase_port = 5000\nforward_base_port = 65535\n",
            4,
            &["nodes.forward_base_port", "65535"],
        );
        assert_err(
            "[nodes]\ncount = 3\nbase_port = 70000\n",
            3,
            &["nodes.base_port", "out of range"],
        );
        assert_err(
            "[nodes]\ncount = 1\nhost = \"no.such.host.invalid\"\nbase_port = 5000\n",
            3,
            &["nodes.host", "cannot resolve"],
        );
    }

    #[test]
    fn error_cluster_values() {
        assert_err(
            &format!("[cluster]\nrooms = 0\n{NODES}"),
            2,
            &["cluster.rooms", "out of range"],
        );
        assert_err(
            &format!("[cluster]\nrooms = -1\n{NODES}"),
            2,
            &["cluster.rooms"],
        );
        assert_err(
            &format!("[cluster]\nbusy_poll_us = 5001\n{NODES}"),
            2,
            &["cluster.busy_poll_us", "out of range"],
        );
        assert_err(
            &format!("[cluster]\nbusy_poll_us = -1\n{NODES}"),
            2,
            &["cluster.busy_poll_us"],
        );
        assert_err(
            &format!("[cluster]\nrooms = \"ten\"\n{NODES}"),
            2,
            &["cluster.rooms", "integer"],
        );
        assert_err(
            &format!("[cluster]\nordering = \"bogus\"\n{NODES}"),
            2,
            &["cluster.ordering", "unknown ordering mode 'bogus'"],
        );
        assert_err(&format!("cluster = 3\n{NODES}"), 1, &["cluster", "table"]);
    }

    #[test]
    fn line_numbers_count_from_one() {
        let d = TomlDoc::new(Path::new("x"), "a\nb\nc");
        assert_eq!(d.line_of(0), 1);
        assert_eq!(d.line_of(2), 2);
        assert_eq!(d.line_of(4), 3);
        assert_eq!(d.line_of(100), 3);
    }
}
