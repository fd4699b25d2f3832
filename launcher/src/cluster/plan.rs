//! The resolved plan of a cluster: which binary, which arguments, where the
//! state lives. Shared by `launcher check` (prints it) and `launcher up`
//! (runs it).

use super::settings::{self, ClusterFile, RestartPolicy, SecretSetting, Settings};
use anyhow::Context;
use node::config::{self, ClusterConfig, ConfigFormat};
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

/// Where the ordering mode came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderingSource {
    Flag,
    File,
    Default,
}

/// How the nodes get the cluster secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretPlan {
    Off,
    /// `launcher up` generates 32 random bytes into `path` (mode 0600).
    Generate {
        path: PathBuf,
    },
    /// `launcher up` writes the secret from the config into `path` (0600).
    Inline {
        path: PathBuf,
        secret: String,
    },
    /// The nodes read the user's file.
    File {
        path: PathBuf,
    },
}

impl SecretPlan {
    /// The file passed to `--secret-file`, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            SecretPlan::Off => None,
            SecretPlan::Generate { path }
            | SecretPlan::Inline { path, .. }
            | SecretPlan::File { path } => Some(path),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodePlan {
    /// 1-based, as on the chatserver command line.
    pub index: usize,
    pub name: String,
    pub bind: SocketAddr,
    pub forward: SocketAddr,
    /// Where the node serves `/metrics`: the cluster file's address, else
    /// 127.0.0.1 port 0 (a free port, named in its `ready` line).
    pub metrics: SocketAddr,
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl NodePlan {
    /// The command line, shell-quoted for display.
    pub fn command_line(&self) -> String {
        let mut s = shell_quote(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(a));
        }
        s
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub cfg: ClusterConfig,
    pub settings: Settings,
    /// Absolute path of the cluster file (what the nodes are given).
    pub config_path: PathBuf,
    pub ordering: String,
    pub ordering_source: OrderingSource,
    pub chatserver: PathBuf,
    pub state_dir: PathBuf,
    pub secret: SecretPlan,
    pub nodes: Vec<NodePlan>,
}

/// Loads a cluster file with the path in the error.
pub fn load_config(file: &Path) -> anyhow::Result<ClusterFile> {
    // ConfigError already names the file and line.
    Ok(settings::load(file)?)
}

/// The absolute form of `p` (relative to the current directory), without
/// resolving symlinks.
pub fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// The state directory of a cluster: `state_dir` from the file, else
/// `./.state/<name>`.
pub fn state_dir(s: &Settings) -> anyhow::Result<PathBuf> {
    let dir = match &s.state_dir {
        Some(d) => d.clone(),
        None => Path::new(".state").join(&s.name),
    };
    absolute(&dir)
}

pub fn state_file(s: &Settings) -> anyhow::Result<PathBuf> {
    Ok(state_dir(s)?.join(super::state::STATE_FILE))
}

impl Plan {
    /// Resolves a cluster file and an optional `-o` override into a plan.
    pub fn build(file: &Path, ordering_flag: Option<&str>) -> anyhow::Result<Plan> {
        let ClusterFile { cfg, settings } = load_config(file)?;
        // Names may resolve late for chatserver on its own host; the
        // launcher runs every server here and needs every address now.
        if let Some(s) = cfg
            .servers
            .iter()
            .find(|s| !s.forward_resolved() || !s.bind_resolved())
        {
            anyhow::bail!(
                "{}:{}: the address of {} ({}) does not resolve on this machine; the launcher runs every server here (to deploy on several machines, see `launcher export`)",
                file.display(),
                s.line,
                s.name,
                if s.forward_resolved() {
                    s.bind_text()
                } else {
                    s.advertised()
                }
            );
        }
        let config_path = absolute(file)?;
        let (ordering, ordering_source) = match (ordering_flag, &cfg.ordering) {
            (Some(o), _) => {
                let spec = orderings::lookup(o).map_err(|e| anyhow::anyhow!("-o {o}: {e}"))?;
                (spec.name.to_string(), OrderingSource::Flag)
            }
            (None, Some(o)) => (o.clone(), OrderingSource::File),
            (None, None) => ("unordered".to_string(), OrderingSource::Default),
        };
        let chatserver = absolute(&super::chatserver(settings.chatserver.as_deref())?)?;
        if !super::is_executable(&chatserver) {
            let hint = if settings.chatserver.is_some() {
                "check `chatserver` in [cluster]"
            } else {
                "build it with `cargo build -p node`, or set `chatserver` in [cluster]"
            };
            anyhow::bail!(
                "{}: the chatserver binary {} does not exist or is not executable ({hint})",
                file.display(),
                chatserver.display()
            );
        }
        let state_dir = state_dir(&settings)?;
        let secret = match &settings.secret {
            SecretSetting::Off => SecretPlan::Off,
            SecretSetting::Generate => SecretPlan::Generate {
                path: state_dir.join("secret"),
            },
            SecretSetting::Inline(s) => SecretPlan::Inline {
                path: state_dir.join("secret"),
                secret: s.clone(),
            },
            SecretSetting::File(p) => SecretPlan::File { path: absolute(p)? },
        };
        let nodes = cfg
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut args = vec![
                    config_path.to_string_lossy().into_owned(),
                    (i + 1).to_string(),
                    "-o".to_string(),
                    ordering.clone(),
                ];
                if cfg.format == ConfigFormat::Toml || cfg.rooms != config::DEFAULT_ROOMS {
                    args.push("--rooms".into());
                    args.push(cfg.rooms.to_string());
                }
                if let Some(f) = secret.file() {
                    args.push("--secret-file".into());
                    args.push(f.to_string_lossy().into_owned());
                }
                // Every node serves /metrics, so that `status` can show
                // its figures; the file's address when it has one.
                let metrics = s.metrics.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
                if !settings
                    .node_args
                    .iter()
                    .any(|a| a.starts_with("--metrics"))
                {
                    args.push("--metrics".into());
                    args.push(metrics.to_string());
                }
                args.extend(settings.node_args.iter().cloned());
                NodePlan {
                    index: i + 1,
                    name: s.name.clone(),
                    bind: s.bind,
                    forward: s.forward,
                    metrics,
                    program: chatserver.clone(),
                    args,
                }
            })
            .collect();
        Ok(Plan {
            cfg,
            settings,
            config_path,
            ordering,
            ordering_source,
            chatserver,
            state_dir,
            secret,
            nodes,
        })
    }

    /// Turns the web console on at `addr`: the nodes run with `-v`, whose
    /// lines the console reads for its diagram and rates.
    pub fn enable_console(&mut self, addr: SocketAddr) {
        self.settings.console = Some(addr);
        for n in &mut self.nodes {
            if !n
                .args
                .iter()
                .any(|a| a == "-v" || a == "-vv" || a == "--verbose")
            {
                n.args.push("-v".into());
            }
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(super::state::STATE_FILE)
    }

    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    pub fn log_file(&self, node: &NodePlan) -> PathBuf {
        self.log_dir().join(format!("{}.log", node.name))
    }

    /// One line saying which ordering mode and why.
    pub fn ordering_line(&self) -> String {
        let why = match (self.ordering_source, self.cfg.format) {
            (OrderingSource::Flag, _) => "from -o".to_string(),
            (OrderingSource::File, _) => "from the cluster file".to_string(),
            (OrderingSource::Default, ConfigFormat::Legacy) => {
                "the default for legacy files; choose one with -o".to_string()
            }
            (OrderingSource::Default, ConfigFormat::Toml) => {
                "the default; set `ordering` in [cluster] or use -o".to_string()
            }
        };
        format!("ordering {} ({why})", self.ordering)
    }

    /// Warnings worth printing before starting.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self
            .nodes
            .iter()
            .any(|n| n.forward != n.bind && !n.bind.ip().is_unspecified())
            && self.settings.faults.is_none()
        {
            w.push(
                "forwarding addresses differ from bind addresses: the servers reach each other only through a proxy on the forwarding addresses (e.g. `launcher proxy FILE`)"
                    .to_string(),
            );
        }
        w
    }

    /// The plan as `launcher check` prints it.
    pub fn describe(&self) -> String {
        let c = &self.cfg;
        let mut s = String::new();
        let fmt = match c.format {
            ConfigFormat::Legacy => "legacy",
            ConfigFormat::Toml => "TOML",
        };
        let _ = writeln!(
            s,
            "cluster {} ({fmt} file {}): {} node{}, {} room{}",
            self.settings.name,
            self.config_path.display(),
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" },
            c.rooms,
            if c.rooms == 1 { "" } else { "s" },
        );
        let _ = writeln!(s, "{}", self.ordering_line());
        let _ = writeln!(s, "chatserver {}", self.chatserver.display());
        let _ = writeln!(s, "state dir {}", self.state_dir.display());
        let secret = match &self.secret {
            SecretPlan::Off => "off (server-to-server packets are not authenticated)".to_string(),
            SecretPlan::Generate { path } => {
                format!("generated at start-up into {}", path.display())
            }
            SecretPlan::Inline { path, .. } => {
                format!("from the cluster file, written to {}", path.display())
            }
            SecretPlan::File { path } => format!("read from {}", path.display()),
        };
        let _ = writeln!(s, "secret {secret}");
        let sv = &self.settings.supervise;
        let policy = match sv.restart {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        };
        let _ = writeln!(
            s,
            "supervise restart {policy}, backoff {}..{} ms, at most {} restarts in {} s, stop timeout {} ms",
            sv.backoff_initial_ms,
            sv.backoff_max_ms,
            sv.max_restarts,
            sv.restart_window_s,
            sv.stop_timeout_ms
        );
        match &self.settings.faults {
            None => {
                let _ = writeln!(s, "faults none");
            }
            Some(f) => {
                let _ = writeln!(
                    s,
                    "faults delay {}..{} ms, loss {}, duplicate {}, seed {}",
                    f.delay_min_ms, f.delay_max_ms, f.loss, f.duplicate, f.seed
                );
            }
        }
        let width = self.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "node {} {:width$}  bind {}  forward {}",
                n.index, n.name, n.bind, n.forward
            );
            let _ = writeln!(s, "  {}", n.command_line());
        }
        for w in self.warnings() {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }

    /// Refuses bind addresses that something else already uses (tries to
    /// bind each with UDP), naming every busy node and address.
    pub fn check_ports(&self) -> anyhow::Result<()> {
        let mut busy = Vec::new();
        for n in &self.nodes {
            if let Err(e) = UdpSocket::bind(n.bind) {
                busy.push(format!(
                    "node {} ({}): bind address {} is not available: {e}",
                    n.index, n.name, n.bind
                ));
            }
        }
        if busy.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}: {}", self.config_path.display(), busy.join("; "))
        }
    }
}

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("-o"), "-o");
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
