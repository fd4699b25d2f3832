//! A throw-away cluster for `launcher stress` and `launcher bench`: a config
//! file of its own in a scratch directory (with fresh forwarding ports when
//! a proxy is needed and the file has none), the fault proxy, and one
//! `chatserver` per server, each started by [`super::process`].
//!
//! Everything started here is stopped by [`LocalCluster::stop`] or on drop:
//! the servers gracefully, then the proxy.

use super::fault_proxy::{self, ProxyCounts, ProxyHandle, ProxyPlan};
use super::process::{self, is_ready_line};
use super::settings::FaultConfig;
use super::{ScratchDir, procfs};
use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use node::config::ClusterConfig;
use node::stats::ServerCounters;
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many of a server's last stderr lines are kept for error messages.
const KEEP_LINES: usize = 20;

/// How long [`LocalCluster::stop`] waits for the servers' last lines.
const OUTPUT_WAIT: Duration = Duration::from_secs(2);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub cfg: ClusterConfig,
    pub mode: String,
    pub rooms: u32,
    /// `Some` starts the proxy on the forwarding addresses (zero faults for a
    /// plain pass-through); `None` runs the servers with forward = bind
    /// unless the file already separates them (then a proxy is required).
    pub faults: Option<FaultConfig>,
    pub chatserver: PathBuf,
    pub extra_args: Vec<String>,
    pub ready_timeout: Duration,
}

/// What a server said on stderr, as far as the cluster cares.
#[derive(Debug, Default)]
struct ServerOutput {
    last_lines: VecDeque<String>,
    /// From its `stopped` line.
    counters: Option<ServerCounters>,
}

/// One running server.
struct ServerProc {
    /// 1-based, as on the command line.
    index: usize,
    child: Child,
    output: Arc<Mutex<ServerOutput>>,
    reader: Option<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl ServerProc {
    fn last_lines(&self) -> Vec<String> {
        self.output
            .lock()
            .map(|o| o.last_lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether it has exited (reaping it if so).
    fn has_exited(&mut self) -> bool {
        if self.exited.is_none()
            && let Ok(Some(st)) = self.child.try_wait()
        {
            self.exited = Some(st);
        }
        self.exited.is_some()
    }
}

/// A started cluster.
pub struct LocalCluster {
    pub binds: Vec<SocketAddr>,
    pub forwards: Vec<SocketAddr>,
    pub config_path: PathBuf,
    servers: Vec<ServerProc>,
    proxy: Option<ProxyHandle>,
    dir: ScratchDir,
    stopped: bool,
}

/// The cluster of `cfg` moved to free ports of its own: each server's bind
/// (and separate forwarding) address gets a port that was free a moment ago
/// on the same IP. `launcher stress` without `--attach` runs there, so it
/// never talks to a cluster that runs on the file's ports.
pub fn on_fresh_ports(cfg: &ClusterConfig) -> anyhow::Result<ClusterConfig> {
    let mut out = cfg.clone();
    let mut held = Vec::new();
    let mut pick = |ip: std::net::IpAddr| -> anyhow::Result<u16> {
        let s = std::net::UdpSocket::bind((ip, 0))
            .with_context(|| format!("picking a free port on {ip}"))?;
        let port = s.local_addr()?.port();
        held.push(s);
        Ok(port)
    };
    for s in &mut out.servers {
        let separate = s.forward != s.bind;
        let bind = SocketAddr::new(s.bind.ip(), pick(s.bind.ip())?);
        s.forward = if separate {
            SocketAddr::new(s.forward.ip(), pick(s.forward.ip())?)
        } else {
            bind
        };
        s.bind = bind;
    }
    Ok(out)
}

/// A legacy cluster of `n` servers on fresh 127.0.0.1 ports.
pub fn loopback_config(n: usize) -> anyhow::Result<ClusterConfig> {
    let ports = crate::net::free_ports([127, 0, 0, 1].into(), n).context("picking free ports")?;
    let text: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    node::config::parse_legacy(Path::new("<launcher>"), &text).map_err(Into::into)
}

/// The forwarding addresses to use: the file's, or fresh ports on the bind
/// addresses' hosts when a proxy is needed and the file has none.
fn forwarding_addresses(cfg: &ClusterConfig, proxy: bool) -> anyhow::Result<Vec<SocketAddr>> {
    let separate = cfg.servers.iter().filter(|s| s.forward != s.bind).count();
    if !proxy {
        if separate > 0 {
            bail!("internal: the file separates forwarding addresses but no proxy was planned");
        }
        return Ok(cfg.servers.iter().map(|s| s.bind).collect());
    }
    if separate == cfg.servers.len() {
        return Ok(cfg.servers.iter().map(|s| s.forward).collect());
    }
    if separate != 0 {
        bail!(
            "{}: some servers have a separate forwarding address and some do not; a proxy needs all or none",
            cfg.source.display()
        );
    }
    if cfg.servers.iter().any(|s| !s.bind.ip().is_loopback()) {
        bail!(
            "{}: faults need separate forwarding addresses (`FWD,BIND` lines); fresh ones are only picked \
             automatically for 127.0.0.1 clusters",
            cfg.source.display()
        );
    }
    let ports = crate::net::free_ports([127, 0, 0, 1].into(), cfg.servers.len())
        .context("picking free ports")?;
    Ok(cfg
        .servers
        .iter()
        .zip(ports)
        .map(|(s, p)| SocketAddr::new(s.bind.ip(), p))
        .collect())
}

/// Copies a server's stderr into `output` (last lines, counters); sends on
/// `ready` at its ready line.
fn read_stderr(
    stderr: impl std::io::Read,
    output: Arc<Mutex<ServerOutput>>,
    ready: mpsc::Sender<()>,
) {
    let mut ready = Some(ready);
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let is_ready = is_ready_line(&line);
        if let Ok(mut o) = output.lock() {
            if let Some(c) = ServerCounters::from_stopped_line(&line) {
                o.counters = Some(c);
            }
            if o.last_lines.len() == KEEP_LINES {
                o.last_lines.pop_front();
            }
            o.last_lines.push_back(line);
        }
        if is_ready && let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
    }
}

impl LocalCluster {
    /// Writes the config, starts the proxy (if any) and the servers, and
    /// waits until every server printed its ready line.
    pub fn start(spec: &ClusterSpec) -> anyhow::Result<LocalCluster> {
        let binds: Vec<SocketAddr> = spec.cfg.servers.iter().map(|s| s.bind).collect();
        let use_proxy =
            spec.faults.is_some() || spec.cfg.servers.iter().any(|s| s.forward != s.bind);
        let forwards = forwarding_addresses(&spec.cfg, use_proxy)?;
        let dir = ScratchDir::new("cluster")?;
        let mut text = String::new();
        for (f, b) in forwards.iter().zip(&binds) {
            if f == b {
                text.push_str(&format!("{b}\n"));
            } else {
                text.push_str(&format!("{f},{b}\n"));
            }
        }
        let config_path = dir.path().join("servers.txt");
        std::fs::write(&config_path, text)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut cluster = LocalCluster {
            binds: binds.clone(),
            forwards: forwards.clone(),
            config_path,
            servers: Vec::new(),
            proxy: None,
            dir,
            stopped: false,
        };
        if use_proxy {
            let faults = spec.faults.clone().unwrap_or_default();
            let plan = ProxyPlan {
                forwards: forwards.clone(),
                binds: binds.clone(),
            };
            cluster.proxy = Some(fault_proxy::spawn_plan(plan, &faults)?);
        }
        if !spec.chatserver.exists() {
            bail!(
                "chatserver binary {} not found (build it: cargo build -p node)",
                spec.chatserver.display()
            );
        }
        let mut waiting = Vec::new();
        for index in 1..=binds.len() {
            let mut args = vec![
                cluster.config_path.to_string_lossy().into_owned(),
                index.to_string(),
                "-o".into(),
                spec.mode.clone(),
                "--rooms".into(),
                spec.rooms.to_string(),
            ];
            args.extend(spec.extra_args.iter().cloned());
            let mut child = process::server_command(&spec.chatserver, &args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| {
                    format!("starting {} for server {index}", spec.chatserver.display())
                })?;
            let stderr = child.stderr.take().context("the server's stderr")?;
            let output = Arc::new(Mutex::new(ServerOutput::default()));
            let (tx, rx) = mpsc::channel::<()>();
            let reader = {
                let output = output.clone();
                std::thread::Builder::new()
                    .name(format!("server{index}-stderr"))
                    .spawn(move || read_stderr(stderr, output, tx))
            };
            // Pushed before the reader's error is returned: on drop the
            // child is stopped either way.
            let failed = reader.is_err();
            cluster.servers.push(ServerProc {
                index,
                child,
                output,
                reader: reader.ok(),
                exited: None,
            });
            if failed {
                bail!("cannot start a thread to read server {index}'s stderr");
            }
            waiting.push(rx);
        }
        let deadline = Instant::now() + spec.ready_timeout;
        for (i, rx) in waiting.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = rx.recv_timeout(left) {
                let s = &mut cluster.servers[i];
                let why = match (e, s.has_exited()) {
                    (_, true) => format!("exited ({})", s.exited.unwrap_or_default()),
                    (mpsc::RecvTimeoutError::Timeout, false) => {
                        format!("printed no 'ready' line within {:?}", spec.ready_timeout)
                    }
                    (mpsc::RecvTimeoutError::Disconnected, false) => {
                        "closed its stderr".to_string()
                    }
                };
                let lines = s.last_lines();
                bail!(
                    "server {} ({}) {why}; its last output:\n  {}",
                    s.index,
                    cluster.binds[i],
                    if lines.is_empty() {
                        "(none)".to_string()
                    } else {
                        lines.join("\n  ")
                    }
                );
            }
        }
        Ok(cluster)
    }

    pub fn proxy_counts(&self) -> Option<ProxyCounts> {
        self.proxy.as_ref().map(ProxyHandle::counts)
    }

    pub fn has_proxy(&self) -> bool {
        self.proxy.is_some()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid of each server (by index - 1) while it runs.
    pub fn pids(&mut self) -> Vec<Option<i32>> {
        self.servers
            .iter_mut()
            .map(|s| (!s.has_exited()).then(|| s.child.id() as i32))
            .collect()
    }

    /// Each server's peak resident set (VmHWM) in KiB, while it still runs.
    pub fn peak_rss_kib(&mut self) -> Vec<Option<u64>> {
        self.pids()
            .into_iter()
            .map(|p| Some(procfs::memory(p?)?.hwm_kib))
            .collect()
    }

    /// Servers that have exited, with their status and last output.
    pub fn dead_servers(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &mut self.servers {
            if s.has_exited() {
                out.push(format!(
                    "server {} exited early ({}); last output: {}",
                    s.index,
                    s.exited.unwrap_or_default(),
                    s.last_lines().join(" | ")
                ));
            }
        }
        out
    }

    /// After [`LocalCluster::stop`]: the counters each server printed when it
    /// stopped, by index - 1.
    pub fn counters(&self) -> Vec<Option<ServerCounters>> {
        self.servers
            .iter()
            .map(|s| s.output.lock().ok().and_then(|o| o.counters))
            .collect()
    }

    /// After [`LocalCluster::stop`]: the counters summed over the servers
    /// that printed them, by name (empty when none did).
    pub fn summed_counters(&self) -> BTreeMap<String, u64> {
        sum_counters(&self.counters())
    }

    /// Stops the servers gracefully (SIGKILL after `grace`), waits briefly
    /// for their last lines, then stops the proxy; returns the proxy's
    /// final counts.
    pub fn stop(&mut self, grace: Duration) -> Option<ProxyCounts> {
        if self.stopped {
            return self.proxy_counts();
        }
        self.stopped = true;
        let pids: Vec<u32> = self
            .servers
            .iter_mut()
            .filter_map(|s| (!s.has_exited()).then(|| s.child.id()))
            .collect();
        let servers = &mut self.servers;
        process::stop_gracefully(
            Signal::SIGTERM,
            grace,
            |sig| {
                for &pid in &pids {
                    process::signal_group(pid, sig);
                }
            },
            || servers.iter_mut().all(ServerProc::has_exited),
        );
        let deadline = Instant::now() + OUTPUT_WAIT;
        process::wait_until(deadline, || {
            self.servers
                .iter()
                .all(|s| s.reader.as_ref().is_none_or(JoinHandle::is_finished))
        });
        for s in &mut self.servers {
            if let Some(r) = s.reader.take_if(|r| r.is_finished()) {
                let _ = r.join();
            }
        }
        self.proxy.take().and_then(|p| p.stop().ok())
    }
}

/// Sums counters by name over the servers that have them (empty when none
/// has).
pub fn sum_counters(counters: &[Option<ServerCounters>]) -> BTreeMap<String, u64> {
    let mut present = counters.iter().flatten().peekable();
    if present.peek().is_none() {
        return BTreeMap::new();
    }
    let mut sum = ServerCounters::default();
    for c in present {
        sum.add(c);
    }
    sum.entries().map(|(k, v)| (k.to_string(), v)).collect()
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}
