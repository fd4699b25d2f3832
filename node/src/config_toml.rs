//! TOML cluster files (see `config.rs` for the model).
//!
//! The format (every key optional unless marked required; unknown keys are
//! errors, and every error names the file, the line and the key):
//!
//! ```toml
//! [cluster]
//! name = "demo"              # default: the file name without extension
//! ordering = "total"         # a registered mode; `launcher up -o` overrides it
//! rooms = 10                 # rooms 1..=rooms
//! chatserver = "bin/chatserver"  # default: next to the launcher's executable
//! state_dir = ".state/demo"  # default: ./.state/<name> (relative to the cwd)
//! secret = "generate"        # "off" | "generate" (default) | the secret itself
//! # secret_file = "secret.txt"   # instead of `secret`
//! node_args = ["-v"]         # extra arguments for every chatserver
//!
//! [nodes]                    # N nodes on consecutive ports of one host ...
//! count = 3                  # required
//! host = "127.0.0.1"         # default 127.0.0.1; hostnames are resolved
//! base_port = 5000           # required
//! forward_base_port = 8000   # default: forwarding address = bind address
//!
//! [[node]]                   # ... or explicit nodes (not both)
//! name = "s1"                # default s<i>
//! bind = "127.0.0.1:5000"    # required
//! forward = "127.0.0.1:8000" # default: = bind
//!
//! [supervise]
//! restart = "on-failure"     # never | on-failure | always
//! backoff_initial_ms = 200
//! backoff_max_ms = 5000
//! max_restarts = 5           # within restart_window_s, then the node is failed
//! restart_window_s = 60
//! stop_timeout_ms = 3000
//!
//! [faults]                   # the launcher's proxy between the servers
//! delay_ms = [0, 20]         # [min, max] or one number
//! loss = 0.1                 # 0..=1
//! duplicate = 0.05           # 0..=1
//! seed = 42
//! ```
//!
//! Relative paths (`chatserver`, `state_dir`, `secret_file`) are relative to
//! the directory of the TOML file.

use crate::config::{
    ClusterConfig, ConfigError, ConfigFormat, ConfigLimits, DEFAULT_ROOMS, FaultConfig,
    RestartPolicy, SecretSetting, ServerEntry, SuperviseConfig,
};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

type Result<T> = std::result::Result<T, ConfigError>;

/// The ordering modes a config file may name: every registered strategy.
pub fn known_orderings() -> Vec<&'static str> {
    orderings::registered().iter().map(|s| s.name).collect()
}

/// Checks an ordering mode name against the registry; the error text lists
/// the known names.
pub fn check_ordering(name: &str) -> std::result::Result<(), String> {
    let known = known_orderings();
    if known.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "unknown ordering mode '{name}' (known: {})",
            known.join(", ")
        ))
    }
}

pub fn parse_toml_impl(path: &Path, text: &str) -> Result<ClusterConfig> {
    parse_toml_with(path, text, ConfigLimits::default())
}

/// [`parse_toml_impl`] with explicit limits.
pub fn parse_toml_with(path: &Path, text: &str, limits: ConfigLimits) -> Result<ClusterConfig> {
    let doc = Doc { path, text };
    let root = DeTable::parse(text).map_err(|e| {
        let line = e.span().map(|s| doc.line_of(s.start)).unwrap_or(1);
        ConfigError::new(
            path,
            Some(line),
            format!("TOML syntax error: {}", e.message().trim()),
        )
    })?;
    let root = Section {
        doc: &doc,
        prefix: String::new(),
        table: root.get_ref(),
        span: root.span(),
    };
    root.check_keys(&["cluster", "nodes", "node", "supervise", "faults"])?;

    let cluster = root.table_opt("cluster")?;
    let mut cfg = ClusterConfig {
        source: path.to_path_buf(),
        format: ConfigFormat::Toml,
        name: default_name(path),
        ordering: None,
        rooms: DEFAULT_ROOMS,
        servers: Vec::new(),
        supervise: SuperviseConfig::default(),
        faults: None,
        secret: SecretSetting::Generate,
        chatserver: None,
        state_dir: None,
        node_args: Vec::new(),
    };
    if let Some(c) = &cluster {
        parse_cluster(c, &mut cfg)?;
    }

    let shorthand = root.table_opt("nodes")?;
    let explicit = root.get("node");
    let servers = match (shorthand, explicit) {
        (Some(_), Some((k, _))) => {
            return Err(doc.err(
                k.span(),
                "node",
                "use either [nodes] (shorthand) or [[node]] entries, not both",
            ));
        }
        (Some(n), None) => parse_nodes_shorthand(&n, limits)?,
        (None, Some((k, v))) => parse_node_list(&doc, k, v, limits)?,
        (None, None) => {
            return Err(ConfigError::new(
                path,
                Some(1),
                "nodes: no nodes listed: add a [nodes] table (count, host, base_port) or [[node]] entries",
            ));
        }
    };
    check_duplicates(&doc, &servers)?;
    cfg.servers = servers.into_iter().map(|(s, _)| s).collect();

    if let Some(s) = root.table_opt("supervise")? {
        cfg.supervise = parse_supervise(&s)?;
    }
    if let Some(f) = root.table_opt("faults")? {
        cfg.faults = Some(parse_faults(&f)?);
    }

    crate::config::validate(&cfg)?;
    Ok(cfg)
}

fn default_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cluster".to_string())
}

/// A name usable as a file name and an output prefix.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_cluster(c: &Section<'_, '_>, cfg: &mut ClusterConfig) -> Result<()> {
    c.check_keys(&[
        "name",
        "ordering",
        "rooms",
        "chatserver",
        "state_dir",
        "secret",
        "secret_file",
        "node_args",
    ])?;
    if let Some(name) = c.string("name")? {
        if !valid_name(name.get_ref()) {
            return Err(c.err_at(
                name.span(),
                "name",
                format!(
                    "'{}' is not a valid cluster name (letters, digits, '-', '_', '.'; at most 64; not starting with '.')",
                    name.get_ref()
                ),
            ));
        }
        cfg.name = name.into_inner();
    }
    if let Some(o) = c.string("ordering")? {
        check_ordering(o.get_ref()).map_err(|m| c.err_at(o.span(), "ordering", m))?;
        cfg.ordering = Some(o.into_inner());
    }
    if let Some(r) = c.uint("rooms", 1, u64::from(u32::MAX))? {
        cfg.rooms = *r.get_ref() as u32;
    }
    cfg.chatserver = c.path("chatserver")?;
    cfg.state_dir = c.path("state_dir")?;
    let secret = c.string("secret")?;
    let secret_file = c.path("secret_file")?;
    cfg.secret = match (secret, secret_file) {
        (Some(_), Some(_)) => {
            let span = c.key_span("secret_file").unwrap_or(c.span.clone());
            return Err(c.err_at(
                span,
                "secret_file",
                "give either `secret` or `secret_file`, not both",
            ));
        }
        (Some(s), None) => match s.get_ref().as_str() {
            "off" => SecretSetting::Off,
            "generate" => SecretSetting::Generate,
            "" => {
                return Err(c.err_at(s.span(), "secret", "empty secret (use \"off\" to disable)"));
            }
            _ => SecretSetting::Inline(s.into_inner()),
        },
        (None, Some(p)) => SecretSetting::File(p),
        (None, None) => SecretSetting::Generate,
    };
    if let Some((_, v)) = c.get("node_args") {
        let arr = v
            .get_ref()
            .as_array()
            .ok_or_else(|| c.type_err(v, "node_args", "an array of strings"))?;
        for item in arr.iter() {
            let s = item
                .get_ref()
                .as_str()
                .ok_or_else(|| c.type_err(item, "node_args", "an array of strings"))?;
            cfg.node_args.push(s.to_string());
        }
    }
    Ok(())
}

fn host_port(host: &str, port: u64) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Where a server's addresses were written: (key, line) of bind and forward.
#[derive(Debug, Clone)]
struct Origin {
    bind: (String, usize),
    forward: (String, usize),
}

fn parse_nodes_shorthand(
    n: &Section<'_, '_>,
    limits: ConfigLimits,
) -> Result<Vec<(ServerEntry, Origin)>> {
    n.check_keys(&["count", "host", "base_port", "forward_base_port"])?;
    let count = n.require(n.uint("count", 1, 65535)?, "count")?;
    if *count.get_ref() > limits.servers() as u64 {
        let line = n.doc.line_of(count.span().start);
        let e = crate::config::too_many_servers(n.doc.path, line, limits);
        return Err(ConfigError {
            message: format!("{}: {}", n.key("count"), e.message),
            ..e
        });
    }
    let base = n.require(n.uint("base_port", 1, 65535)?, "base_port")?;
    let fwd_base = n.uint("forward_base_port", 1, 65535)?;
    let host = n.string("host")?;
    let host_s = host
        .as_ref()
        .map(|h| h.get_ref().as_str())
        .unwrap_or("127.0.0.1");
    let host_span = host.as_ref().map(|h| h.span()).unwrap_or(n.span.clone());
    let c = *count.get_ref();
    let last = *base.get_ref() + c - 1;
    if last > 65535 {
        return Err(n.err_at(
            base.span(),
            "base_port",
            format!("{c} nodes from port {} run past port 65535", base.get_ref()),
        ));
    }
    if let Some(f) = &fwd_base
        && *f.get_ref() + c - 1 > 65535
    {
        return Err(n.err_at(
            f.span(),
            "forward_base_port",
            format!("{c} nodes from port {} run past port 65535", f.get_ref()),
        ));
    }
    // Resolve the host once; every node shares its IP.
    let ip = n
        .resolve(host_span, "host", &host_port(host_s, *base.get_ref()))?
        .ip();
    let bind_line = n.doc.line_of(base.span().start);
    let origin = Origin {
        bind: (n.key("base_port"), bind_line),
        forward: match &fwd_base {
            Some(f) => (n.key("forward_base_port"), n.doc.line_of(f.span().start)),
            None => (n.key("base_port"), bind_line),
        },
    };
    let mut out = Vec::new();
    for i in 0..c {
        let bind = SocketAddr::new(ip, (*base.get_ref() + i) as u16);
        let forward = match &fwd_base {
            Some(f) => SocketAddr::new(ip, (*f.get_ref() + i) as u16),
            None => bind,
        };
        let entry = ServerEntry {
            name: format!("s{}", i + 1),
            forward,
            bind,
            line: bind_line,
        };
        out.push((entry, origin.clone()));
    }
    Ok(out)
}

fn parse_node_list(
    doc: &Doc<'_>,
    key: &Spanned<std::borrow::Cow<'_, str>>,
    v: &Spanned<DeValue<'_>>,
    limits: ConfigLimits,
) -> Result<Vec<(ServerEntry, Origin)>> {
    let arr = match v.get_ref() {
        DeValue::Array(a) => a,
        DeValue::Table(_) => {
            return Err(doc.err(
                key.span(),
                "node",
                "write each node as [[node]] (an array of tables), not [node]",
            ));
        }
        other => {
            return Err(doc.err(
                v.span(),
                "node",
                format!("expected [[node]] tables, found a {}", other.type_str()),
            ));
        }
    };
    if arr.is_empty() {
        return Err(doc.err(v.span(), "node", "no nodes listed"));
    }
    if let Some(extra) = arr.get(limits.servers()) {
        let line = doc.line_of(extra.span().start);
        let e = crate::config::too_many_servers(doc.path, line, limits);
        return Err(ConfigError {
            message: format!("node[{}]: {}", limits.servers() + 1, e.message),
            ..e
        });
    }
    let mut out: Vec<(ServerEntry, Origin)> = Vec::new();
    for (i, item) in arr.iter().enumerate() {
        let prefix = format!("node[{}]", i + 1);
        let DeValue::Table(t) = item.get_ref() else {
            return Err(doc.err(
                item.span(),
                &prefix,
                format!("expected a table, found a {}", item.get_ref().type_str()),
            ));
        };
        let s = Section {
            doc,
            prefix: format!("{prefix}."),
            table: t,
            span: item.span(),
        };
        s.check_keys(&["name", "bind", "forward"])?;
        let name = match s.string("name")? {
            Some(n) => {
                if !valid_name(n.get_ref()) {
                    return Err(s.err_at(
                        n.span(),
                        "name",
                        format!(
                            "'{}' is not a valid node name (letters, digits, '-', '_', '.'; at most 64; not starting with '.')",
                            n.get_ref()
                        ),
                    ));
                }
                if let Some((other, _)) = out.iter().find(|(o, _)| o.name == *n.get_ref()) {
                    return Err(s.err_at(
                        n.span(),
                        "name",
                        format!(
                            "duplicate node name '{}' (also on line {})",
                            n.get_ref(),
                            other.line
                        ),
                    ));
                }
                n.into_inner()
            }
            None => format!("s{}", i + 1),
        };
        let bind_s = s.require(s.string("bind")?, "bind")?;
        let bind = s.resolve(bind_s.span(), "bind", bind_s.get_ref())?;
        let bind_line = doc.line_of(bind_s.span().start);
        let (forward, fwd_origin) = match s.string("forward")? {
            Some(f) => (
                s.resolve(f.span(), "forward", f.get_ref())?,
                (s.key("forward"), doc.line_of(f.span().start)),
            ),
            None => (bind, (s.key("bind"), bind_line)),
        };
        let entry = ServerEntry {
            name,
            forward,
            bind,
            line: bind_line,
        };
        let origin = Origin {
            bind: (s.key("bind"), bind_line),
            forward: fwd_origin,
        };
        out.push((entry, origin));
    }
    // A default name may collide with an explicit one (`name = "s2"` on node 1).
    for (i, (a, _)) in out.iter().enumerate() {
        if let Some((j, (b, _))) = out
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, (b, _))| b.name == a.name)
        {
            return Err(ConfigError::new(
                doc.path,
                Some(b.line),
                format!(
                    "node[{}].name: duplicate node name '{}' (node[{}] on line {} has it too)",
                    j + 1,
                    b.name,
                    i + 1,
                    a.line
                ),
            ));
        }
    }
    Ok(out)
}

/// Like `config::validate`'s check, but naming the keys.
fn check_duplicates(doc: &Doc<'_>, servers: &[(ServerEntry, Origin)]) -> Result<()> {
    let mut seen: std::collections::HashMap<SocketAddr, (&str, &str, usize)> =
        std::collections::HashMap::new();
    for (s, origin) in servers {
        let mut mine = vec![(s.bind, "bind", &origin.bind)];
        if s.forward != s.bind {
            mine.push((s.forward, "forwarding", &origin.forward));
        }
        for (addr, what, (key, line)) in mine {
            if let Some((other, other_what, other_line)) = seen.get(&addr) {
                return Err(ConfigError::new(
                    doc.path,
                    Some(*line),
                    format!(
                        "{key}: duplicate address {addr}: the {what} address of {} is already the {other_what} address of {other} (line {other_line})",
                        s.name
                    ),
                ));
            }
            seen.insert(addr, (&s.name, what, *line));
        }
    }
    Ok(())
}

fn parse_supervise(s: &Section<'_, '_>) -> Result<SuperviseConfig> {
    s.check_keys(&[
        "restart",
        "backoff_initial_ms",
        "backoff_max_ms",
        "max_restarts",
        "restart_window_s",
        "stop_timeout_ms",
    ])?;
    let mut out = SuperviseConfig::default();
    if let Some(r) = s.string("restart")? {
        out.restart = match r.get_ref().as_str() {
            "never" => RestartPolicy::Never,
            "on-failure" => RestartPolicy::OnFailure,
            "always" => RestartPolicy::Always,
            other => {
                return Err(s.err_at(
                    r.span(),
                    "restart",
                    format!(
                        "unknown restart policy '{other}' (expected never, on-failure or always)"
                    ),
                ));
            }
        };
    }
    const DAY_MS: u64 = 86_400_000;
    if let Some(v) = s.uint("backoff_initial_ms", 1, DAY_MS)? {
        out.backoff_initial_ms = v.into_inner();
    }
    let max = s.uint("backoff_max_ms", 1, DAY_MS)?;
    if let Some(v) = &max {
        out.backoff_max_ms = *v.get_ref();
    }
    if out.backoff_max_ms < out.backoff_initial_ms {
        let span = max
            .as_ref()
            .map(|m| m.span())
            .or_else(|| s.key_span("backoff_initial_ms"))
            .unwrap_or(s.span.clone());
        let key = if max.is_some() {
            "backoff_max_ms"
        } else {
            "backoff_initial_ms"
        };
        return Err(s.err_at(
            span,
            key,
            format!(
                "backoff_max_ms ({}) is less than backoff_initial_ms ({})",
                out.backoff_max_ms, out.backoff_initial_ms
            ),
        ));
    }
    if let Some(v) = s.uint("max_restarts", 0, u64::from(u32::MAX))? {
        out.max_restarts = v.into_inner() as u32;
    }
    if let Some(v) = s.uint("restart_window_s", 1, 86_400 * 365)? {
        out.restart_window_s = v.into_inner();
    }
    if let Some(v) = s.uint("stop_timeout_ms", 1, DAY_MS)? {
        out.stop_timeout_ms = v.into_inner();
    }
    Ok(out)
}

fn parse_faults(f: &Section<'_, '_>) -> Result<FaultConfig> {
    f.check_keys(&["delay_ms", "loss", "duplicate", "seed"])?;
    let mut out = FaultConfig::default();
    if let Some((_, v)) = f.get("delay_ms") {
        let (min, max) = match v.get_ref() {
            DeValue::Array(a) => {
                if a.len() != 2 {
                    return Err(f.err_at(
                        v.span(),
                        "delay_ms",
                        format!("expected [min, max], found {} element(s)", a.len()),
                    ));
                }
                (
                    f.number_of(&a[0], "delay_ms")?,
                    f.number_of(&a[1], "delay_ms")?,
                )
            }
            _ => {
                let d = f.number_of(v, "delay_ms")?;
                (d, d)
            }
        };
        if !(min >= 0.0 && max >= 0.0 && min.is_finite() && max.is_finite()) {
            return Err(f.err_at(v.span(), "delay_ms", "delays must be finite and at least 0"));
        }
        if min > max {
            return Err(f.err_at(
                v.span(),
                "delay_ms",
                format!("min {min} is greater than max {max}"),
            ));
        }
        out.delay_min_ms = min;
        out.delay_max_ms = max;
    }
    for key in ["loss", "duplicate"] {
        if let Some((_, v)) = f.get(key) {
            let p = f.number_of(v, key)?;
            if !(0.0..=1.0).contains(&p) {
                return Err(f.err_at(
                    v.span(),
                    key,
                    format!("probability {p} is out of range (expected 0 to 1)"),
                ));
            }
            if key == "loss" {
                out.loss = p;
            } else {
                out.duplicate = p;
            }
        }
    }
    if let Some(v) = f.uint("seed", 0, i64::MAX as u64)? {
        out.seed = v.into_inner();
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Spanned access to the parsed document.

struct Doc<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Doc<'_> {
    /// 1-based line of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: Range<usize>, key: &str, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError::new(
            self.path,
            Some(self.line_of(span.start)),
            format!("{key}: {msg}"),
        )
    }
}

/// One table of the document, with the dotted prefix of its keys.
struct Section<'d, 't> {
    doc: &'d Doc<'d>,
    /// `""` for the root, `"cluster."`, `"node[2]."`, ...
    prefix: String,
    table: &'t DeTable<'t>,
    span: Range<usize>,
}

type Entry<'t> = (
    &'t Spanned<std::borrow::Cow<'t, str>>,
    &'t Spanned<DeValue<'t>>,
);

impl<'d, 't> Section<'d, 't> {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn err_at(&self, span: Range<usize>, k: &str, msg: impl std::fmt::Display) -> ConfigError {
        self.doc.err(span, &self.key(k), msg)
    }

    fn check_keys(&self, allowed: &[&str]) -> Result<()> {
        let mut unknown: Vec<&Spanned<std::borrow::Cow<'_, str>>> = self
            .table
            .keys()
            .filter(|k| !allowed.contains(&k.get_ref().as_ref()))
            .collect();
        // Report the first one in the file.
        unknown.sort_by_key(|k| k.span().start);
        if let Some(k) = unknown.first() {
            let what = if self.prefix.is_empty() {
                "table"
            } else {
                "key"
            };
            return Err(self.err_at(
                k.span(),
                k.get_ref(),
                format!("unknown {what} (expected one of: {})", allowed.join(", ")),
            ));
        }
        Ok(())
    }

    fn get(&self, k: &str) -> Option<Entry<'t>> {
        self.table.get_key_value(k)
    }

    fn key_span(&self, k: &str) -> Option<Range<usize>> {
        self.get(k).map(|(key, _)| key.span())
    }

    fn type_err(&self, v: &Spanned<DeValue<'_>>, k: &str, expected: &str) -> ConfigError {
        self.err_at(
            v.span(),
            k,
            format!("expected {expected}, found a {}", v.get_ref().type_str()),
        )
    }

    fn require<T>(&self, v: Option<T>, k: &str) -> Result<T> {
        v.ok_or_else(|| self.err_at(self.span.clone(), k, "missing (required)"))
    }

    fn table_opt(&self, k: &str) -> Result<Option<Section<'d, 't>>> {
        let Some((key, v)) = self.get(k) else {
            return Ok(None);
        };
        match v.get_ref() {
            DeValue::Table(t) => Ok(Some(Section {
                doc: self.doc,
                prefix: format!("{}{k}.", self.prefix),
                table: t,
                span: key.span(),
            })),
            DeValue::Array(_) => Err(self.err_at(
                key.span(),
                k,
                format!("write [{k}] (one table), not [[{k}]]"),
            )),
            _ => Err(self.type_err(v, k, "a table")),
        }
    }

    fn string(&self, k: &str) -> Result<Option<Spanned<String>>> {
        let Some((_, v)) = self.get(k) else {
            return Ok(None);
        };
        match v.get_ref() {
            DeValue::String(s) => Ok(Some(Spanned::new(v.span(), s.to_string()))),
            _ => Err(self.type_err(v, k, "a string")),
        }
    }

    /// A path, relative to the directory of the config file.
    fn path(&self, k: &str) -> Result<Option<PathBuf>> {
        let Some(s) = self.string(k)? else {
            return Ok(None);
        };
        if s.get_ref().is_empty() {
            return Err(self.err_at(s.span(), k, "empty path"));
        }
        let p = PathBuf::from(s.get_ref());
        if p.is_absolute() {
            return Ok(Some(p));
        }
        let dir = self.doc.path.parent().unwrap_or(Path::new(""));
        Ok(Some(dir.join(p)))
    }

    fn uint(&self, k: &str, min: u64, max: u64) -> Result<Option<Spanned<u64>>> {
        let Some((_, v)) = self.get(k) else {
            return Ok(None);
        };
        let DeValue::Integer(i) = v.get_ref() else {
            return Err(self.type_err(v, k, "an integer"));
        };
        let n = i128::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| self.err_at(v.span(), k, format!("{i} is not a valid integer")))?;
        if n < i128::from(min) || n > i128::from(max) {
            return Err(self.err_at(
                v.span(),
                k,
                format!("{n} is out of range (expected {min} to {max})"),
            ));
        }
        Ok(Some(Spanned::new(v.span(), n as u64)))
    }

    /// An integer or float value, as f64.
    fn number_of(&self, v: &Spanned<DeValue<'_>>, k: &str) -> Result<f64> {
        match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map(|n| n as f64)
                .map_err(|_| self.err_at(v.span(), k, format!("{i} is not a valid integer"))),
            DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .map_err(|_| self.err_at(v.span(), k, format!("{f} is not a valid number"))),
            _ => Err(self.type_err(v, k, "a number")),
        }
    }

    fn resolve(&self, span: Range<usize>, k: &str, text: &str) -> Result<SocketAddr> {
        let line = self.doc.line_of(span.start);
        crate::config::resolve(self.doc.path, line, text).map_err(|e| ConfigError {
            message: format!("{}: {}", self.key(k), e.message),
            ..e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn p(text: &str) -> Result<ClusterConfig> {
        parse_toml_impl(Path::new("/cfg/demo.toml"), text)
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
        assert_eq!(c.name, "demo");
        assert_eq!(c.format, ConfigFormat::Toml);
        assert_eq!(c.rooms, DEFAULT_ROOMS);
        assert_eq!(c.ordering, None);
        assert_eq!(c.secret, SecretSetting::Generate);
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.servers[2].name, "s3");
        assert_eq!(c.servers[2].bind, "127.0.0.1:5002".parse().unwrap());
        assert_eq!(c.servers[2].forward, c.servers[2].bind);
        assert_eq!(c.servers[0].line, 3);
        assert_eq!(c.supervise, SuperviseConfig::default());
        assert_eq!(c.faults, None);
    }

    #[test]
    fn full_file() {
        let text = r#"
[cluster]
name = "demo-1"
ordering = "fifo"
rooms = 20
chatserver = "bin/chatserver"
state_dir = "/tmp/x"
secret = "hunter2"
node_args = ["-v", "--x"]

[[node]]
name = "alpha"
bind = "127.0.0.1:5000"
forward = "127.0.0.1:8000"

[[node]]
bind = "localhost:5001"

[supervise]
restart = "always"
backoff_initial_ms = 10
backoff_max_ms = 100
max_restarts = 0
restart_window_s = 5
stop_timeout_ms = 50

[faults]
delay_ms = [1, 2.5]
loss = 0.5
duplicate = 1
seed = 7
"#;
        let c = p(text).unwrap();
        assert_eq!(c.name, "demo-1");
        assert_eq!(c.ordering.as_deref(), Some("fifo"));
        assert_eq!(c.rooms, 20);
        assert_eq!(c.chatserver, Some(PathBuf::from("/cfg/bin/chatserver")));
        assert_eq!(c.state_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(c.secret, SecretSetting::Inline("hunter2".into()));
        assert_eq!(c.node_args, vec!["-v", "--x"]);
        assert_eq!(c.servers[0].name, "alpha");
        assert_eq!(c.servers[0].forward, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.servers[0].line, 13);
        assert_eq!(c.servers[1].name, "s2");
        assert_eq!(c.servers[1].bind.port(), 5001);
        assert_eq!(c.servers[1].forward, c.servers[1].bind);
        assert_eq!(c.supervise.restart, RestartPolicy::Always);
        assert_eq!(c.supervise.backoff_initial_ms, 10);
        assert_eq!(c.supervise.backoff_max_ms, 100);
        assert_eq!(c.supervise.max_restarts, 0);
        assert_eq!(c.supervise.restart_window_s, 5);
        assert_eq!(c.supervise.stop_timeout_ms, 50);
        let f = c.faults.unwrap();
        assert_eq!((f.delay_min_ms, f.delay_max_ms), (1.0, 2.5));
        assert_eq!((f.loss, f.duplicate, f.seed), (0.5, 1.0, 7));
    }

    #[test]
    fn secret_settings() {
        let s = |v: &str| p(&format!("[cluster]\n{v}\n{NODES}")).unwrap().secret;
        assert_eq!(s("secret = \"off\""), SecretSetting::Off);
        assert_eq!(s("secret = \"generate\""), SecretSetting::Generate);
        assert_eq!(
            s("secret_file = \"k\""),
            SecretSetting::File("/cfg/k".into())
        );
        assert_eq!(s(""), SecretSetting::Generate);
    }

    #[test]
    fn shorthand_with_forward_ports_and_single_delay() {
        let c = p("[nodes]\ncount = 2\nhost = \"127.0.0.1\"\nbase_port = 5000\nforward_base_port = 8000\n[faults]\ndelay_ms = 3\n").unwrap();
        assert_eq!(c.servers[1].forward, "127.0.0.1:8001".parse().unwrap());
        assert_eq!(c.servers[1].bind, "127.0.0.1:5001".parse().unwrap());
        let f = c.faults.unwrap();
        assert_eq!((f.delay_min_ms, f.delay_max_ms), (3.0, 3.0));
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
            &["bogus", "unknown table"],
        );
        assert_err(
            &format!("{NODES}extra = 1\n"),
            4,
            &["nodes.extra", "unknown key"],
        );
        assert_err(
            "[[node]]\nbind = \"127.0.0.1:5000\"\nport = 3\n",
            3,
            &["node[1].port", "unknown"],
        );
        assert_err(
            &format!("{NODES}[supervise]\nretry = 1\n"),
            5,
            &["supervise.retry"],
        );
        assert_err(
            &format!("{NODES}[faults]\nlose = 0.1\n"),
            5,
            &["faults.lose"],
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
            &format!("[cluster]\nrooms = \"ten\"\n{NODES}"),
            2,
            &["cluster.rooms", "integer"],
        );
        assert_err(
            &format!("[cluster]\nordering = \"bogus\"\n{NODES}"),
            2,
            &["cluster.ordering", "unknown ordering mode 'bogus'"],
        );
        assert_err(
            &format!("[cluster]\nname = \"a b\"\n{NODES}"),
            2,
            &["cluster.name"],
        );
        assert_err(
            &format!("[cluster]\nsecret = \"x\"\nsecret_file = \"y\"\n{NODES}"),
            3,
            &["cluster.secret_file", "not both"],
        );
        assert_err(
            &format!("[cluster]\nsecret = \"\"\n{NODES}"),
            2,
            &["cluster.secret"],
        );
        assert_err(
            &format!("[cluster]\nnode_args = \"-v\"\n{NODES}"),
            2,
            &["cluster.node_args", "array"],
        );
        assert_err(
            &format!("[cluster]\nnode_args = [1]\n{NODES}"),
            2,
            &["cluster.node_args"],
        );
        assert_err(
            &format!("[cluster]\nchatserver = \"\"\n{NODES}"),
            2,
            &["cluster.chatserver", "empty"],
        );
        assert_err(&format!("cluster = 3\n{NODES}"), 1, &["cluster", "table"]);
    }

    #[test]
    fn error_supervise_values() {
        let s = |body: &str| format!("{NODES}[supervise]\n{body}\n");
        assert_err(
            &s("restart = \"sometimes\""),
            5,
            &["supervise.restart", "never, on-failure or always"],
        );
        assert_err(
            &s("backoff_initial_ms = 0"),
            5,
            &["supervise.backoff_initial_ms"],
        );
        assert_err(
            &s("backoff_initial_ms = 100\nbackoff_max_ms = 50"),
            6,
            &["supervise.backoff_max_ms", "less than"],
        );
        assert_err(
            &s("backoff_initial_ms = 9000"),
            5,
            &["supervise.backoff_initial_ms", "less than"],
        );
        assert_err(&s("max_restarts = -1"), 5, &["supervise.max_restarts"]);
        assert_err(
            &s("restart_window_s = 0"),
            5,
            &["supervise.restart_window_s"],
        );
        assert_err(
            &s("stop_timeout_ms = 1.5"),
            5,
            &["supervise.stop_timeout_ms", "integer"],
        );
    }

    #[test]
    fn error_fault_values() {
        let f = |body: &str| format!("{NODES}[faults]\n{body}\n");
        assert_err(&f("loss = 1.5"), 5, &["faults.loss", "out of range"]);
        assert_err(
            &f("duplicate = -0.1"),
            5,
            &["faults.duplicate", "out of range"],
        );
        assert_err(&f("loss = \"a lot\""), 5, &["faults.loss", "number"]);
        assert_err(&f("delay_ms = [5, 1]"), 5, &["faults.delay_ms", "greater"]);
        assert_err(
            &f("delay_ms = [1, 2, 3]"),
            5,
            &["faults.delay_ms", "[min, max]"],
        );
        assert_err(
            &f("delay_ms = [-1, 2]"),
            5,
            &["faults.delay_ms", "at least 0"],
        );
        assert_err(&f("seed = -3"), 5, &["faults.seed"]);
    }

    #[test]
    fn line_numbers_count_from_one() {
        let d = Doc {
            path: Path::new("x"),
            text: "a\nb\nc",
        };
        assert_eq!(d.line_of(0), 1);
        assert_eq!(d.line_of(2), 2);
        assert_eq!(d.line_of(4), 3);
        assert_eq!(d.line_of(100), 3);
    }
}
