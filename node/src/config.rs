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
    /// Where other servers send to (a proxy may sit here).
    pub forward: SocketAddr,
    /// Where this server listens, for clients and peers.
    pub bind: SocketAddr,
    /// 1-based line in the source file the entry came from.
    pub line: usize,
    /// Where to serve `/metrics` (TOML `metrics_base_port` or `metrics`);
    /// `chatserver --metrics` overrides it.
    pub metrics: Option<SocketAddr>,
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
    pub servers: Vec<ServerEntry>,
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
                let a = resolve(path, line_no, one)?;
                (a, a)
            }
            [f, b] => (resolve(path, line_no, f)?, resolve(path, line_no, b)?),
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
            forward,
            bind,
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
            servers,
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
    let ip = a.ip();
    let why = if a.port() == 0 {
        Some("port 0 is not allowed")
    } else if ip.is_unspecified() {
        Some(
            "the unspecified (wildcard) address is not allowed: give the address other servers and clients reach this server at",
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

/// Resolves `host:port` (hostnames allowed; IPv4 preferred).
pub fn resolve(path: &Path, line: usize, text: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = text.parse::<SocketAddr>() {
        return check_usable(path, line, text, a);
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
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| ConfigError::new(path, Some(line), format!("cannot resolve '{host}': {e}")))?
        .collect();
    let a = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| {
            ConfigError::new(path, Some(line), format!("'{host}' resolves to no address"))
        })?;
    check_usable(path, line, text, a)
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
    // A hash map, not a pairwise scan: 65,535 servers stay fast.
    let mut seen: std::collections::HashMap<SocketAddr, (&str, &str, usize)> =
        std::collections::HashMap::new();
    for (s, origin) in cfg.servers.iter().zip(origins) {
        let mut mine = vec![(s.bind, "bind", &origin.bind)];
        if s.forward != s.bind {
            mine.push((s.forward, "forwarding", &origin.forward));
        }
        for (addr, what, (line, key)) in mine {
            if let Some((other, other_what, other_line)) = seen.get(&addr) {
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
