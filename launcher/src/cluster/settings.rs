//! The launcher's settings in a cluster file. `chatserver` reads the
//! servers, the ordering and the rooms ([`node::config::ClusterConfig`]);
//! the launcher reads those through `node` and the rest here:
//!
//! ```toml
//! [cluster]
//! name = "demo"              # default: the file name without extension
//! chatserver = "bin/chatserver"  # default: next to the launcher's executable
//! state_dir = ".state/demo"  # default: ./.state/<name> (relative to the cwd)
//! secret = "generate"        # "off" | "generate" (default) | the secret itself
//! # secret_file = "secret.txt"   # instead of `secret`
//! node_args = ["-v"]         # extra arguments for every chatserver
//! console = "127.0.0.1:8080" # `launcher up` serves the web console there
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
//! the directory of the TOML file. Legacy files have none of these: the
//! defaults apply, with the secret off.

use node::config::{ClusterConfig, ConfigError, ConfigFormat, MAX_CONFIG_BYTES};
use node::config_toml::{Int, Table, TomlDoc, TomlTable, check_name};
use serde::Deserialize;
use serde::de::{self, IgnoredAny};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Restart policy of a supervised node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    Never,
    #[default]
    OnFailure,
    Always,
}

/// How the launcher supervises nodes (`[supervise]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SuperviseConfig {
    pub restart: RestartPolicy,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Give up after this many restarts within `restart_window_s`.
    pub max_restarts: u32,
    pub restart_window_s: u64,
    pub stop_timeout_ms: u64,
}

impl Default for SuperviseConfig {
    fn default() -> Self {
        Self {
            restart: RestartPolicy::OnFailure,
            backoff_initial_ms: 200,
            backoff_max_ms: 5_000,
            max_restarts: 5,
            restart_window_s: 60,
            stop_timeout_ms: 3_000,
        }
    }
}

/// Faults the launcher's proxy injects between servers (`[faults]`).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    pub delay_min_ms: f64,
    pub delay_max_ms: f64,
    pub loss: f64,
    pub duplicate: f64,
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            delay_min_ms: 0.0,
            delay_max_ms: 0.0,
            loss: 0.0,
            duplicate: 0.0,
            seed: 1,
        }
    }
}

/// Where the cluster secret comes from (`secret`, `secret_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSetting {
    /// `launcher up` generates one per cluster (the default for TOML).
    Generate,
    /// Explicitly off: servers are unauthenticated, as in the spec.
    Off,
    Inline(String),
    File(PathBuf),
}

/// Everything in a cluster file that only the launcher uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub name: String,
    /// The `chatserver` binary the launcher runs (default: next to it).
    pub chatserver: Option<PathBuf>,
    /// Where the launcher keeps logs, pid files and the secret.
    pub state_dir: Option<PathBuf>,
    pub secret: SecretSetting,
    /// Extra arguments the launcher passes to every node.
    pub node_args: Vec<String>,
    /// Where `launcher up` serves its web console (`--console` overrides).
    pub console: Option<std::net::SocketAddr>,
    pub supervise: SuperviseConfig,
    pub faults: Option<FaultConfig>,
}

impl Settings {
    /// The defaults of a file named `path` (a TOML file generates a secret;
    /// a legacy one, as in the spec, has none).
    pub fn defaults(path: &Path, format: ConfigFormat) -> Self {
        Self {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cluster".to_string()),
            chatserver: None,
            state_dir: None,
            secret: match format {
                ConfigFormat::Legacy => SecretSetting::Off,
                ConfigFormat::Toml => SecretSetting::Generate,
            },
            node_args: Vec::new(),
            console: None,
            supervise: SuperviseConfig::default(),
            faults: None,
        }
    }
}

/// A cluster file as the launcher reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterFile {
    pub cfg: ClusterConfig,
    pub settings: Settings,
}

/// Reads and parses a cluster file, legacy or TOML.
pub fn load(path: &Path) -> Result<ClusterFile, ConfigError> {
    let text = node::config::read_bounded(path, MAX_CONFIG_BYTES)?;
    parse(path, &text)
}

/// Parses text as [`load`] does.
pub fn parse(path: &Path, text: &str) -> Result<ClusterFile, ConfigError> {
    let cfg = node::config::parse(path, text)?;
    let settings = match cfg.format {
        ConfigFormat::Legacy => Settings::defaults(path, ConfigFormat::Legacy),
        ConfigFormat::Toml => parse_toml(path, text)?,
    };
    Ok(ClusterFile { cfg, settings })
}

/// The whole file as the launcher reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cluster: Option<Table<ClusterKeys>>,
    // `chatserver`'s tables, read by `node::config` and skipped here by name.
    #[serde(rename = "nodes")]
    _nodes: Option<IgnoredAny>,
    #[serde(rename = "node")]
    _node: Option<IgnoredAny>,
    #[serde(rename = "membership")]
    _membership: Option<IgnoredAny>,
    supervise: Option<Table<SuperviseKeys>>,
    faults: Option<Table<FaultKeys>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterKeys {
    name: Option<Spanned<String>>,
    // `chatserver`'s keys.
    #[serde(rename = "ordering")]
    _ordering: Option<IgnoredAny>,
    #[serde(rename = "rooms")]
    _rooms: Option<IgnoredAny>,
    #[serde(rename = "busy_poll_us")]
    _busy_poll_us: Option<IgnoredAny>,
    chatserver: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    node_args: Option<Strings>,
    console: Option<Spanned<String>>,
}

impl TomlTable for ClusterKeys {
    const EXPECTING: &'static str = "the [cluster] table";
}

const DAY_MS: i64 = 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuperviseKeys {
    restart: Option<Spanned<String>>,
    backoff_initial_ms: Option<Spanned<Int<1, DAY_MS>>>,
    backoff_max_ms: Option<Spanned<Int<1, DAY_MS>>>,
    max_restarts: Option<Int<0, { u32::MAX as i64 }>>,
    restart_window_s: Option<Int<1, { 86_400 * 365 }>>,
    stop_timeout_ms: Option<Int<1, DAY_MS>>,
}

impl TomlTable for SuperviseKeys {
    const EXPECTING: &'static str = "one [supervise] table (write [supervise], not [[supervise]])";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultKeys {
    delay_ms: Option<Delay>,
    loss: Option<Probability>,
    duplicate: Option<Probability>,
    seed: Option<Int<0, { i64::MAX }>>,
}

impl TomlTable for FaultKeys {
    const EXPECTING: &'static str = "one [faults] table (write [faults], not [[faults]])";
}

/// `node_args`: an array of strings (serde would say "a sequence").
struct Strings(Vec<String>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strings, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element()? {
                    v.push(s);
                }
                Ok(Strings(v))
            }
        }
        d.deserialize_seq(V)
    }
}

/// An integer or a float, as f64 (serde's f64 would say "expected f64").
struct Number(f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Number, E> {
                Ok(Number(n as f64))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Number, E> {
                Ok(Number(n as f64))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Number, E> {
                Ok(Number(n))
            }
        }
        d.deserialize_f64(V)
    }
}

/// A probability in 0..=1.
struct Probability(f64);

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Number(p) = Number::deserialize(d)?;
        if (0.0..=1.0).contains(&p) {
            Ok(Probability(p))
        } else {
            Err(de::Error::custom(format!(
                "probability {p} is out of range (expected 0 to 1)"
            )))
        }
    }
}

/// `delay_ms`: one number of milliseconds, or `[min, max]`.
struct Delay(f64, f64);

impl<'de> Deserialize<'de> for Delay {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = (f64, f64);
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of milliseconds or [min, max]")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok((n as f64, n as f64))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok((n as f64, n as f64))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Ok((n, n))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(Number(n)) = seq.next_element()? {
                    v.push(n);
                }
                match v[..] {
                    [min, max] => Ok((min, max)),
                    _ => Err(de::Error::custom(format!(
                        "expected [min, max], found {} element(s)",
                        v.len()
                    ))),
                }
            }
        }
        let (min, max) = d.deserialize_any(V)?;
        if !(min >= 0.0 && max >= 0.0 && min.is_finite() && max.is_finite()) {
            return Err(de::Error::custom("delays must be finite and at least 0"));
        }
        if min > max {
            return Err(de::Error::custom(format!(
                "min {min} is greater than max {max}"
            )));
        }
        Ok(Delay(min, max))
    }
}

/// The launcher's part of a TOML cluster file.
fn parse_toml(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let doc = TomlDoc::new(path, text);
    let file: File = doc.deserialize()?;
    let mut s = Settings::defaults(path, ConfigFormat::Toml);
    if let Some(Table(c)) = file.cluster {
        cluster_keys(&doc, c, &mut s)?;
    }
    if let Some(Table(sv)) = file.supervise {
        s.supervise = supervise(&doc, sv)?;
    }
    if let Some(Table(f)) = file.faults {
        let mut out = FaultConfig::default();
        if let Some(Delay(min, max)) = f.delay_ms {
            (out.delay_min_ms, out.delay_max_ms) = (min, max);
        }
        if let Some(Probability(p)) = f.loss {
            out.loss = p;
        }
        if let Some(Probability(p)) = f.duplicate {
            out.duplicate = p;
        }
        if let Some(Int(seed)) = f.seed {
            out.seed = seed as u64; // at least 0
        }
        s.faults = Some(out);
    }
    Ok(s)
}

/// A path, relative to the directory of the config file.
fn path_of(
    doc: &TomlDoc<'_>,
    v: Option<Spanned<String>>,
    key: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(v) = v else {
        return Ok(None);
    };
    if v.get_ref().is_empty() {
        return Err(doc.err(v.span(), key, "empty path"));
    }
    let p = PathBuf::from(v.get_ref());
    if p.is_absolute() {
        return Ok(Some(p));
    }
    let dir = doc.path.parent().unwrap_or(Path::new(""));
    Ok(Some(dir.join(p)))
}

fn cluster_keys(doc: &TomlDoc<'_>, c: ClusterKeys, s: &mut Settings) -> Result<(), ConfigError> {
    if let Some(name) = c.name {
        check_name("cluster", name.get_ref())
            .map_err(|m| doc.err(name.span(), "cluster.name", m))?;
        s.name = name.into_inner();
    }
    s.chatserver = path_of(doc, c.chatserver, "cluster.chatserver")?;
    s.state_dir = path_of(doc, c.state_dir, "cluster.state_dir")?;
    let secret_file_span = c.secret_file.as_ref().map(|f| f.span());
    let secret_file = path_of(doc, c.secret_file, "cluster.secret_file")?;
    s.secret = match (c.secret, secret_file) {
        (Some(_), Some(_)) => {
            return Err(doc.err(
                secret_file_span.unwrap_or_default(),
                "cluster.secret_file",
                "give either `secret` or `secret_file`, not both",
            ));
        }
        (Some(v), None) => match v.get_ref().as_str() {
            "off" => SecretSetting::Off,
            "generate" => SecretSetting::Generate,
            "" => {
                return Err(doc.err(
                    v.span(),
                    "cluster.secret",
                    "empty secret (use \"off\" to disable)",
                ));
            }
            _ => SecretSetting::Inline(v.into_inner()),
        },
        (None, Some(p)) => SecretSetting::File(p),
        (None, None) => SecretSetting::Generate,
    };
    if let Some(Strings(args)) = c.node_args {
        s.node_args = args;
    }
    if let Some(v) = c.console {
        // An address, not a host name: the console is for this machine or
        // one interface of it.
        let addr = v.get_ref().parse().map_err(|_| {
            doc.err(
                v.span(),
                "cluster.console",
                format!("'{}' is not an IP:PORT address", v.get_ref()),
            )
        })?;
        s.console = Some(addr);
    }
    Ok(())
}

fn supervise(doc: &TomlDoc<'_>, sv: SuperviseKeys) -> Result<SuperviseConfig, ConfigError> {
    let mut out = SuperviseConfig::default();
    if let Some(r) = sv.restart {
        out.restart = match r.get_ref().as_str() {
            "never" => RestartPolicy::Never,
            "on-failure" => RestartPolicy::OnFailure,
            "always" => RestartPolicy::Always,
            other => {
                return Err(doc.err(
                    r.span(),
                    "supervise.restart",
                    format!(
                        "unknown restart policy '{other}' (expected never, on-failure or always)"
                    ),
                ));
            }
        };
    }
    // The ranges of `SuperviseKeys` keep every value non-negative.
    if let Some(v) = &sv.backoff_initial_ms {
        out.backoff_initial_ms = v.get_ref().0 as u64;
    }
    if let Some(v) = &sv.backoff_max_ms {
        out.backoff_max_ms = v.get_ref().0 as u64;
    }
    if out.backoff_max_ms < out.backoff_initial_ms {
        // Blame the key the file wrote: the maximum, else the initial value
        // (over the default maximum).
        let (span, key) = match (&sv.backoff_max_ms, &sv.backoff_initial_ms) {
            (Some(m), _) => (m.span(), "supervise.backoff_max_ms"),
            (None, Some(i)) => (i.span(), "supervise.backoff_initial_ms"),
            (None, None) => (0..0, "supervise.backoff_max_ms"),
        };
        return Err(doc.err(
            span,
            key,
            format!(
                "backoff_max_ms ({}) is less than backoff_initial_ms ({})",
                out.backoff_max_ms, out.backoff_initial_ms
            ),
        ));
    }
    if let Some(Int(v)) = sv.max_restarts {
        out.max_restarts = v as u32;
    }
    if let Some(Int(v)) = sv.restart_window_s {
        out.restart_window_s = v as u64;
    }
    if let Some(Int(v)) = sv.stop_timeout_ms {
        out.stop_timeout_ms = v as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<ClusterFile, ConfigError> {
        parse(Path::new("/cfg/demo.toml"), text)
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
    fn defaults() {
        let s = p(NODES).unwrap().settings;
        assert_eq!(s.name, "demo");
        assert_eq!(s.secret, SecretSetting::Generate);
        assert_eq!(s.supervise, SuperviseConfig::default());
        assert_eq!(s.faults, None);
        assert_eq!(s.chatserver, None);
        assert_eq!(s.state_dir, None);
        assert!(s.node_args.is_empty());
        // Legacy files carry no secret.
        let l = parse(Path::new("/cfg/servers.txt"), "127.0.0.1:5000\n").unwrap();
        assert_eq!(l.settings.name, "servers");
        assert_eq!(l.settings.secret, SecretSetting::Off);
    }

    /// Every key of the format, `chatserver`'s and the launcher's.
    #[test]
    fn full_file() {
        let text = r#"
[cluster]
name = "demo-1"
ordering = "fifo"
rooms = 20
busy_poll_us = 400
chatserver = "bin/chatserver"
state_dir = "/tmp/x"
secret = "hunter2"
node_args = ["-v", "--x"]
console = "127.0.0.1:8080"

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
        let ClusterFile { cfg, settings: s } = p(text).unwrap();
        assert_eq!(cfg.ordering.as_deref(), Some("fifo"));
        assert_eq!(cfg.rooms, 20);
        assert_eq!(cfg.busy_poll_us, Some(400));
        assert_eq!(cfg.servers[0].name, "alpha");
        assert_eq!(cfg.servers[0].line, 15);
        assert_eq!(cfg.servers[1].name, "s2");
        assert_eq!(s.name, "demo-1");
        assert_eq!(s.chatserver, Some(PathBuf::from("/cfg/bin/chatserver")));
        assert_eq!(s.state_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(s.secret, SecretSetting::Inline("hunter2".into()));
        assert_eq!(s.node_args, vec!["-v", "--x"]);
        assert_eq!(s.console, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(s.supervise.restart, RestartPolicy::Always);
        assert_eq!(s.supervise.backoff_initial_ms, 10);
        assert_eq!(s.supervise.backoff_max_ms, 100);
        assert_eq!(s.supervise.max_restarts, 0);
        assert_eq!(s.supervise.restart_window_s, 5);
        assert_eq!(s.supervise.stop_timeout_ms, 50);
        let f = s.faults.unwrap();
        assert_eq!((f.delay_min_ms, f.delay_max_ms), (1.0, 2.5));
        assert_eq!((f.loss, f.duplicate, f.seed), (0.5, 1.0, 7));
    }

    #[test]
    fn secret_settings() {
        let s = |v: &str| {
            p(&format!("[cluster]\n{v}\n{NODES}"))
                .unwrap()
                .settings
                .secret
        };
        assert_eq!(s("secret = \"off\""), SecretSetting::Off);
        assert_eq!(s("secret = \"generate\""), SecretSetting::Generate);
        assert_eq!(
            s("secret_file = \"k\""),
            SecretSetting::File("/cfg/k".into())
        );
        assert_eq!(s(""), SecretSetting::Generate);
    }

    #[test]
    fn single_delay() {
        let f = p(&format!("{NODES}[faults]\ndelay_ms = 3\n"))
            .unwrap()
            .settings
            .faults
            .unwrap();
        assert_eq!((f.delay_min_ms, f.delay_max_ms), (3.0, 3.0));
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("launcher-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[cluster]\nchatserver = \"bin/cs\"\nstate_dir = \"st\"\nsecret_file = \"/etc/k\"\n[nodes]\ncount = 1\nbase_port = 6000\n",
        )
        .unwrap();
        let s = load(&path).map(|f| f.settings);
        let _ = std::fs::remove_dir_all(&dir);
        let s = s.unwrap();
        assert_eq!(s.chatserver, Some(dir.join("bin/cs")));
        assert_eq!(s.state_dir, Some(dir.join("st")));
        assert_eq!(s.secret, SecretSetting::File("/etc/k".into()));
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
    fn error_unknown_keys() {
        assert_err(
            &format!("{NODES}[supervise]\nretry = 1\n"),
            5,
            &["supervise.retry", "unknown key"],
        );
        assert_err(
            &format!("{NODES}[faults]\nlose = 0.1\n"),
            5,
            &["faults.lose", "unknown key"],
        );
        assert_err(
            &format!("[cluster]\nchatsrever = \"x\"\n{NODES}"),
            2,
            &["cluster.chatsrever", "unknown key"],
        );
        assert_err(
            &format!("{NODES}[[supervise]]\nrestart = \"never\"\n"),
            4,
            &["supervise", "not [[supervise]]"],
        );
    }

    #[test]
    fn error_cluster_values() {
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
            &format!("[cluster]\nconsole = \"localhost\"\n{NODES}"),
            2,
            &["cluster.console", "IP:PORT"],
        );
        assert_err(
            &format!("[cluster]\nchatserver = \"\"\n{NODES}"),
            2,
            &["cluster.chatserver", "empty"],
        );
    }

    #[test]
    fn error_supervise_values() {
        let s = |body: &str| format!("{NODES}[supervise]\n{body}\n");
        assert_err(
            &s("restart = \"sometimes\""),
            5,
            &["supervise.restart", "never, on-failure or always"],
        );
        assert_err(&s("restart = \"maybe\""), 5, &["supervise.restart"]);
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
        assert_err(&f("loss = 2"), 5, &["faults.loss", "out of range"]);
        assert_err(
            &f("duplicate = -0.1"),
            5,
            &["faults.duplicate", "out of range"],
        );
        assert_err(&f("loss = \"a lot\""), 5, &["faults.loss", "number"]);
        assert_err(&f("loss = nan"), 5, &["faults.loss", "out of range"]);
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
        assert_err(&f("delay_ms = inf"), 5, &["faults.delay_ms", "finite"]);
        assert_err(&f("seed = -3"), 5, &["faults.seed"]);
    }

    #[test]
    fn the_servers_are_checked_first() {
        // `chatserver`'s part of the file is read by `node`, with its errors.
        assert_err(
            &format!("{NODES}bogus = 1\n[faults]\nlose = 1\n"),
            4,
            &["nodes.bogus", "unknown key"],
        );
    }
}
