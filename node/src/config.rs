//! The one cluster model, [`ClusterConfig`], parsed from the spec's legacy
//! line format or from TOML (`config_toml`). Used by `chatserver` and by the
//! launcher, which reads its own settings from the same files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default number of chat rooms (rooms are numbered 1..=rooms).
pub const DEFAULT_ROOMS: u32 = 10;
/// Largest config file read (bytes). Longer files are refused before
/// they are read whole (`/dev/zero` included: reads stop at the cap).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Default cap on the servers of one cluster.
pub const DEFAULT_MAX_SERVERS: usize = 1024;
/// Hard cap: server ids are 16 bits.
pub const HARD_MAX_SERVERS: usize = 65_535;

/// Bounds on what a config file may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigLimits {
    /// At most this many servers (1..=[`HARD_MAX_SERVERS`]).
    pub max_servers: usize,
    /// Files longer than this are refused.
    pub max_bytes: u64,
}

impl Default for ConfigLimits {
    fn default() -> Self {
        Self {
            max_servers: DEFAULT_MAX_SERVERS,
            max_bytes: MAX_CONFIG_BYTES,
        }
    }
}

impl ConfigLimits {
    /// `max_servers` clamped to the id space (and at least 1).
    pub fn servers(&self) -> usize {
        self.max_servers.clamp(1, HARD_MAX_SERVERS)
    }
}

/// One server of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// `s1`, `s2`, ... unless the TOML names it.
    pub name: String,
    /// The advertised address: where the other servers (and clients) reach
    /// it (`advertise`/`forward` in TOML; a proxy may sit here). When it is
    /// a host name that did not resolve at load, its IP is the unspecified
    /// address (see [`ServerEntry::forward_resolved`]).
    pub forward: SocketAddr,
    /// Where this server listens, for clients and peers: a specific or a
    /// wildcard address; the unspecified IP too when `bind_name` did not
    /// resolve at load.
    pub bind: SocketAddr,
    /// `HOST:PORT` as written when the advertised address names a host:
    /// resolved at load and again at run time (see `server.rs`).
    pub forward_name: Option<String>,
    /// `HOST:PORT` as written when the bind address names a host.
    pub bind_name: Option<String>,
    /// 1-based line in the source file the entry came from.
    pub line: usize,
    /// Where to serve `/metrics` (TOML `metrics_base_port` or `metrics`);
    /// `chatserver --metrics` overrides it.
    pub metrics: Option<SocketAddr>,
}

impl ServerEntry {
    /// The advertised address as a cluster file writes it: the host name
    /// when there is one, else the address.
    pub fn advertised(&self) -> String {
        self.forward_name
            .clone()
            .unwrap_or_else(|| self.forward.to_string())
    }

    /// The bind address as a cluster file writes it.
    pub fn bind_text(&self) -> String {
        self.bind_name
            .clone()
            .unwrap_or_else(|| self.bind.to_string())
    }

    /// Whether [`ServerEntry::forward`] is an address (a literal, or a name
    /// that resolved at load). An advertised address is never a wildcard,
    /// so the unspecified IP means "not resolved".
    pub fn forward_resolved(&self) -> bool {
        !self.forward.ip().is_unspecified()
    }

    /// Whether [`ServerEntry::bind`] is usable as it is (a literal, a
    /// wildcard, or a name that resolved at load).
    pub fn bind_resolved(&self) -> bool {
        self.bind_name.is_none() || !self.bind.ip().is_unspecified()
    }
}

/// What an address in a cluster file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Where the others reach a server: must be specific (or a name).
    Advertise,
    /// What a server binds: may be a wildcard (0.0.0.0, `::`).
    Bind,
}

/// An address as written in a cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address (for a name that did not resolve: the unspecified IP
    /// with the port).
    pub addr: SocketAddr,
    /// `HOST:PORT` as written when it names a host.
    pub name: Option<String>,
}

/// Which syntax a file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    Legacy,
    Toml,
}

/// A whole cluster as `chatserver` needs it: the servers, the ordering mode
/// and the number of rooms. The launcher reads its own tables of the same
/// TOML file (`launcher::cluster::settings`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub source: PathBuf,
    pub format: ConfigFormat,
    /// Ordering mode from the file (TOML); `None` for legacy files.
    pub ordering: Option<String>,
    pub rooms: u32,
    /// How long each server keeps polling after traffic (TOML
    /// `busy_poll_us`; `chatserver --busy-poll-us` overrides it); `None`:
    /// the server's default.
    pub busy_poll_us: Option<u64>,
    pub servers: Vec<ServerEntry>,
    /// Failure detection and quorum (TOML `[membership]`); unset values
    /// take the defaults of [`orderings::MembershipConfig`].
    pub membership: MembershipSettings,
}

/// The `[membership]` table: each value optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipSettings {
    pub heartbeat_ms: Option<u64>,
    pub suspect_ms: Option<u64>,
    pub quorum: Option<usize>,
}

impl MembershipSettings {
    /// These settings over the defaults.
    pub fn to_config(&self) -> orderings::MembershipConfig {
        let mut m = orderings::MembershipConfig::default();
        if let Some(h) = self.heartbeat_ms {
            m.heartbeat_us = h * 1000;
        }
        if let Some(s) = self.suspect_ms {
            m.suspect_us = s * 1000;
        }
        if self.quorum.is_some() {
            m.quorum = self.quorum;
        }
        m
    }
}

/// A configuration error, naming the file, the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

impl ClusterConfig {
    /// The entry of the 1-based server `index` given on the command line.
    pub fn server(&self, index: usize) -> Result<&ServerEntry, ConfigError> {
        if index == 0 || index > self.servers.len() {
            return Err(ConfigError::new(
                &self.source,
                None,
                format!(
                    "server index {index} is out of range (the file lists {} server{}, numbered from 1)",
                    self.servers.len(),
                    if self.servers.len() == 1 { "" } else { "s" }
                ),
            ));
        }
        Ok(&self.servers[index - 1])
    }
}

/// Reads and parses a config file, legacy or TOML (by the `.toml` extension,
/// or by content when the extension says nothing).
pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
    load_with(path, ConfigLimits::default())
}

/// [`load`] with explicit limits.
pub fn load_with(path: &Path, limits: ConfigLimits) -> Result<ClusterConfig, ConfigError> {
    let text = read_bounded(path, limits.max_bytes)?;
    parse_with(path, &text, limits)
}

/// Reads at most `max` bytes of `path` as UTF-8; a longer file (or an
/// endless one such as `/dev/zero`) is an error, found without reading
/// more than `max + 1` bytes.
pub fn read_bounded(path: &Path, max: u64) -> Result<String, ConfigError> {
    use std::io::Read;
    let cannot = |e: std::io::Error| ConfigError::new(path, None, format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let too_big = || {
        ConfigError::new(
            path,
            None,
            format!(
                "file is too large (more than {max} bytes); a cluster file is at most {max} bytes"
            ),
        )
    };
    if let Ok(m) = file.metadata()
        && m.is_file()
        && m.len() > max
    {
        return Err(too_big());
    }
    let mut buf = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    if buf.len() as u64 > max {
        return Err(too_big());
    }
    String::from_utf8(buf).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        ConfigError::new(path, Some(line), "cannot read: the file is not valid UTF-8")
    })
}

/// Parses text as [`load`] does.
pub fn parse(path: &Path, text: &str) -> Result<ClusterConfig, ConfigError> {
    parse_with(path, text, ConfigLimits::default())
}

/// [`parse`] with explicit limits.
pub fn parse_with(
    path: &Path,
    text: &str,
    limits: ConfigLimits,
) -> Result<ClusterConfig, ConfigError> {
    if looks_like_toml(path, text) {
        crate::config_toml::parse_toml_with(path, text, limits)
    } else {
        parse_legacy_with(path, text, limits)
    }
}

fn looks_like_toml(path: &Path, text: &str) -> bool {
    if path.extension().is_some_and(|e| e == "toml") {
        return true;
    }
    // A legacy line may start with '[' too (`[::1]:5000`), but never ends
    // with ']' the way a TOML table header does.
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .is_some_and(|l| (l.starts_with('[') && l.ends_with(']')) || l.contains('='))
}

/// The spec's format: one server per line, `ADDR` or `FWD,BIND`.
pub fn parse_legacy(path: &Path, text: &str) -> Result<ClusterConfig, ConfigError> {
    parse_legacy_with(path, text, ConfigLimits::default())
}

/// [`parse_legacy`] with explicit limits.
pub fn parse_legacy_with(
    path: &Path,
    text: &str,
    limits: ConfigLimits,
) -> Result<ClusterConfig, ConfigError> {
    let mut servers: Vec<ServerEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if servers.len() >= limits.servers() {
            return Err(too_many_servers(path, line_no, limits));
        }
        let parts: Vec<&str> = line.split(',').map(str::trim).collect();
        if parts.len() == 2 && (parts[0].is_empty() || parts[1].is_empty()) {
            let which = if parts[1].is_empty() {
                "a trailing comma"
            } else {
                "a leading comma"
            };
            return Err(ConfigError::new(
                path,
                Some(line_no),
                format!(
                    "'{line}' has {which}: write FWD_IP:PORT,BIND_IP:PORT (two addresses) or IP:PORT (one address, no comma)"
                ),
            ));
        }
        let (forward, bind) = match parts.as_slice() {
            [one] => {
                let a = endpoint(path, line_no, one, Role::Advertise)?;
                (a.clone(), a)
            }
            [f, b] => (
                endpoint(path, line_no, f, Role::Advertise)?,
                endpoint(path, line_no, b, Role::Bind)?,
            ),
            _ => {
                return Err(ConfigError::new(
                    path,
                    Some(line_no),
                    format!("expected IP:PORT or FWD_IP:PORT,BIND_IP:PORT, found '{line}'"),
                ));
            }
        };
        servers.push(ServerEntry {
            metrics: None,
            name: format!("s{}", servers.len() + 1),
            forward: forward.addr,
            bind: bind.addr,
            forward_name: forward.name,
            bind_name: bind.name,
            line: line_no,
        });
    }
    let origins: Vec<Origin> = servers
        .iter()
        .map(|s| Origin::same_line(s.line, ""))
        .collect();
    finish(
        ClusterConfig {
            source: path.to_path_buf(),
            format: ConfigFormat::Legacy,
            ordering: None,
            rooms: DEFAULT_ROOMS,
            busy_poll_us: None,
            servers,
            membership: MembershipSettings::default(),
        },
        &origins,
    )
}

/// The error for a file that lists more servers than `limits` allow.
pub fn too_many_servers(path: &Path, line: usize, limits: ConfigLimits) -> ConfigError {
    ConfigError::new(
        path,
        Some(line),
        format!(
            "too many servers: at most {} are allowed (server ids are 16 bits; the default cap is {DEFAULT_MAX_SERVERS}, `chatserver --max-servers` raises it up to {HARD_MAX_SERVERS})",
            limits.servers()
        ),
    )
}

/// Refuses addresses a server cannot be reached at or that would make it
/// take packets from everyone for its own: the unspecified address
/// (0.0.0.0, ::), broadcast and multicast addresses, port 0.
pub fn check_usable(
    path: &Path,
    line: usize,
    text: &str,
    a: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    check_usable_as(path, line, text, a, Role::Advertise)
}

/// [`check_usable`] for an address of `role`: a bind address may be the
/// unspecified (wildcard) address.
pub fn check_usable_as(
    path: &Path,
    line: usize,
    text: &str,
    a: SocketAddr,
    role: Role,
) -> Result<SocketAddr, ConfigError> {
    let ip = a.ip();
    let why = if a.port() == 0 {
        Some("port 0 is not allowed")
    } else if ip.is_unspecified() && role == Role::Bind {
        None
    } else if ip.is_unspecified() {
        Some(
            "the unspecified (wildcard) address is not allowed here: give the address other servers and clients reach this server at (only `bind` may be a wildcard, with `advertise` beside it)",
        )
    } else if ip.is_multicast() {
        Some("a multicast address is not allowed")
    } else if matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address is not allowed")
    } else if let std::net::IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
        && (v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast())
    {
        Some("an IPv4-mapped wildcard, broadcast or multicast address is not allowed")
    } else {
        None
    };
    match why {
        Some(w) => Err(ConfigError::new(
            path,
            Some(line),
            if text == a.to_string() {
                format!("{w} in '{text}'")
            } else {
                format!("{w} in '{text}' ({a})")
            },
        )),
        None => Ok(a),
    }
}

/// Resolves `host:port` (hostnames allowed; IPv4 preferred); a name that
/// does not resolve is an error.
pub fn resolve(path: &Path, line: usize, text: &str) -> Result<SocketAddr, ConfigError> {
    let e = endpoint(path, line, text, Role::Advertise)?;
    if e.name.is_some() && e.addr.ip().is_unspecified() {
        return Err(ConfigError::new(
            path,
            Some(line),
            format!("cannot resolve '{text}'"),
        ));
    }
    Ok(e.addr)
}

/// Parses an address of `role` as written (`IP:PORT` or `HOST:PORT`). A
/// host name is resolved now, but one that does not resolve is no error
/// (a Kubernetes pod's name appears in DNS a little after the pod): its
/// address is the unspecified IP with the port, and the server resolves it
/// again while it runs.
pub fn endpoint(path: &Path, line: usize, text: &str, role: Role) -> Result<Endpoint, ConfigError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(Endpoint {
            addr: check_usable_as(path, line, text, a, role)?,
            name: None,
        });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(ConfigError::new(
            path,
            Some(line),
            format!("'{text}' is not an address: expected IP:PORT or HOST:PORT"),
        ));
    };
    let port: u16 = port.parse().map_err(|_| {
        ConfigError::new(
            path,
            Some(line),
            format!("bad port '{port}' in '{text}' (expected 1-65535)"),
        )
    })?;
    if port == 0 {
        return Err(ConfigError::new(
            path,
            Some(line),
            format!("port 0 is not allowed in '{text}'"),
        ));
    }
    if host.is_empty() {
        return Err(ConfigError::new(
            path,
            Some(line),
            format!("missing host in '{text}'"),
        ));
    }
    // A DNS name (RFC 1123 labels; `_` too, as some resolvers allow); an
    // address that failed to parse is no name.
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253
        || !name.split('.').all(label_ok)
        || name
            .split('.')
            .all(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(ConfigError::new(
            path,
            Some(line),
            format!("'{host}' is not a host name (in '{text}')"),
        ));
    }
    let addr = match lookup_now(host, port) {
        // A name stands for a specific machine whatever the role: the
        // checks of an advertised address apply.
        Some(a) => check_usable(path, line, text, a)?,
        None => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port),
    };
    Ok(Endpoint {
        addr,
        name: Some(text.to_string()),
    })
}

/// `host:port`'s address now (IPv4 preferred), `None` when it does not
/// resolve.
pub fn lookup_now(host: &str, port: u16) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().ok()?.collect();
    pick_address(&addrs)
}

/// The address of a name among its resolutions: IPv4 first.
pub fn pick_address(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

/// Where a server's two addresses were written: the line of each and, in
/// TOML, the key (`node[2].forward`), so that a duplicate names both places.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) bind: (usize, String),
    pub(crate) forward: (usize, String),
}

impl Origin {
    pub(crate) fn same_line(line: usize, key: &str) -> Origin {
        Origin {
            bind: (line, key.to_string()),
            forward: (line, key.to_string()),
        }
    }
}

/// Checks what both formats share (at least one server, at most the id
/// space, at least one room, no address used twice) and returns the config.
/// `origins[i]` tells where server i's addresses were written.
pub(crate) fn finish(cfg: ClusterConfig, origins: &[Origin]) -> Result<ClusterConfig, ConfigError> {
    if cfg.servers.is_empty() {
        return Err(ConfigError::new(
            &cfg.source,
            None,
            "no servers listed (the file is empty)",
        ));
    }
    if cfg.servers.len() > HARD_MAX_SERVERS {
        let line = cfg.servers[HARD_MAX_SERVERS].line;
        return Err(too_many_servers(
            &cfg.source,
            line,
            ConfigLimits {
                max_servers: HARD_MAX_SERVERS,
                ..ConfigLimits::default()
            },
        ));
    }
    if cfg.rooms == 0 {
        return Err(ConfigError::new(
            &cfg.source,
            None,
            "rooms must be at least 1",
        ));
    }
    // A hash map, not a pairwise scan: 65,535 servers stay fast. Names
    // count as written (two servers advertising one name collide);
    // wildcard binds and names that did not resolve have no address to
    // collide on (every pod of a StatefulSet binds 0.0.0.0:5000).
    let mut seen: std::collections::HashMap<String, (&str, &str, usize)> =
        std::collections::HashMap::new();
    for (s, origin) in cfg.servers.iter().zip(origins) {
        let mut mine: Vec<(String, &str, &(usize, String))> = Vec::new();
        if !s.bind.ip().is_unspecified() {
            mine.push((s.bind.to_string(), "bind", &origin.bind));
        }
        if s.forward_resolved() && s.forward != s.bind {
            mine.push((s.forward.to_string(), "forwarding", &origin.forward));
        }
        if let Some(n) = &s.forward_name {
            mine.push((n.to_ascii_lowercase(), "advertised", &origin.forward));
        }
        for (addr, what, (line, key)) in mine {
            if let Some((other, other_what, other_line)) = seen.get(&addr) {
                if *other == s.name.as_str() {
                    continue;
                }
                let key = if key.is_empty() {
                    String::new()
                } else {
                    format!("{key}: ")
                };
                return Err(ConfigError::new(
                    &cfg.source,
                    Some(*line),
                    format!(
                        "{key}duplicate address {addr}: the {what} address of {} is already the {other_what} address of {other} (line {other_line})",
                        s.name
                    ),
                ));
            }
            seen.insert(addr, (&s.name, what, *line));
        }
    }
    Ok(cfg)
}

/// TOML: `[cluster]` plus `[[node]]` entries (or a `[nodes]` shorthand).
pub fn parse_toml(path: &Path, text: &str) -> Result<ClusterConfig, ConfigError> {
    crate::config_toml::parse_toml_with(path, text, ConfigLimits::default())
}
