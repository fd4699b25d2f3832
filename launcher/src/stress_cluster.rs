//! The cluster `launcher stress` brings up for itself: a config file of its
//! own (with fresh forwarding ports when a proxy is needed and the file has
//! none), the in-process proxy, and one `chatserver` per server.
//!
//! Everything started here is stopped by [`Cluster::stop`] or on drop:
//! servers by their pid (SIGTERM, then SIGKILL after a grace period), then
//! the proxy.

use crate::proxy::{self, ProxyCounts, ProxyHandle, ProxyPlan};
use anyhow::{Context, bail};
use node::config::{ClusterConfig, FaultConfig};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How many of a server's last stderr lines are kept for error messages.
const KEEP_LINES: usize = 20;

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

/// One running server.
pub struct ServerProc {
    pub index: usize,
    pub child: Child,
    pub lines: Arc<Mutex<VecDeque<String>>>,
    exited: Option<std::process::ExitStatus>,
}

impl ServerProc {
    pub fn last_lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A started cluster.
pub struct Cluster {
    pub binds: Vec<SocketAddr>,
    pub forwards: Vec<SocketAddr>,
    pub config_path: PathBuf,
    servers: Vec<ServerProc>,
    proxy: Option<ProxyHandle>,
    dir: PathBuf,
    stopped: bool,
}

/// The `chatserver` next to the running executable (or the file's choice).
pub fn default_chatserver(cfg: &ClusterConfig) -> anyhow::Result<PathBuf> {
    if let Some(p) = &cfg.chatserver {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("locating the launcher executable")?;
    let dir = exe
        .parent()
        .context("the launcher executable has no directory")?;
    Ok(dir.join("chatserver"))
}

/// `n` UDP ports on 127.0.0.1 that were free a moment ago.
pub fn fresh_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let socks: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("picking free ports")?;
    socks
        .iter()
        .map(|s| Ok(s.local_addr()?.port()))
        .collect::<std::io::Result<_>>()
        .map_err(Into::into)
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
    let ports = fresh_ports(cfg.servers.len())?;
    Ok(cfg
        .servers
        .iter()
        .zip(ports)
        .map(|(s, p)| SocketAddr::new(s.bind.ip(), p))
        .collect())
}

/// `VmHWM:  1234 kB` of a /proc/PID/status text, in KiB.
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("launcher-stress-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

impl Cluster {
    /// Writes the config, starts the proxy (if any) and the servers, and
    /// waits until every server printed its `ready` line.
    pub fn start(spec: &ClusterSpec) -> anyhow::Result<Cluster> {
        let binds: Vec<SocketAddr> = spec.cfg.servers.iter().map(|s| s.bind).collect();
        let use_proxy =
            spec.faults.is_some() || spec.cfg.servers.iter().any(|s| s.forward != s.bind);
        let forwards = forwarding_addresses(&spec.cfg, use_proxy)?;
        let dir = scratch_dir()?;
        let mut text = String::new();
        for (f, b) in forwards.iter().zip(&binds) {
            if f == b {
                text.push_str(&format!("{b}\n"));
            } else {
                text.push_str(&format!("{f},{b}\n"));
            }
        }
        let config_path = dir.join("servers.txt");
        std::fs::write(&config_path, text)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut cluster = Cluster {
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
            cluster.proxy = Some(proxy::spawn_plan(plan, &faults)?);
        }
        if !spec.chatserver.exists() {
            bail!(
                "chatserver binary {} not found (build it: cargo build -p node)",
                spec.chatserver.display()
            );
        }
        let mut waiting = Vec::new();
        for index in 1..=binds.len() {
            let mut cmd = Command::new(&spec.chatserver);
            cmd.arg(&cluster.config_path)
                .arg(index.to_string())
                .arg("-o")
                .arg(&spec.mode)
                .arg("--rooms")
                .arg(spec.rooms.to_string())
                .args(&spec.extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            // If the launcher dies without cleaning up (SIGKILL), the
            // servers follow it instead of lingering.
            // SAFETY: prctl is async-signal-safe; nothing else runs here.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().with_context(|| {
                format!("starting {} for server {index}", spec.chatserver.display())
            })?;
            let stderr = child.stderr.take().expect("piped stderr");
            let lines = Arc::new(Mutex::new(VecDeque::new()));
            let (tx, rx) = mpsc::channel::<()>();
            let keep = lines.clone();
            std::thread::Builder::new()
                .name(format!("server{index}-stderr"))
                .spawn(move || {
                    let mut tx = Some(tx);
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        // " ready: listening on" exactly: "Address already in
                        // use" contains "ready" too (issue 18).
                        let ready = line.contains(" ready: listening on ");
                        if let Ok(mut k) = keep.lock() {
                            if k.len() == KEEP_LINES {
                                k.pop_front();
                            }
                            k.push_back(line);
                        }
                        if ready && let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                })
                .context("spawning a stderr reader")?;
            cluster.servers.push(ServerProc {
                index,
                child,
                lines,
                exited: None,
            });
            waiting.push(rx);
        }
        let deadline = Instant::now() + spec.ready_timeout;
        for (i, rx) in waiting.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(()) => {}
                Err(e) => {
                    let s = &mut cluster.servers[i];
                    let status = s.child.try_wait().ok().flatten();
                    let why = match (e, status) {
                        (_, Some(st)) => format!("exited ({st})"),
                        (mpsc::RecvTimeoutError::Timeout, None) => {
                            format!("printed no 'ready' line within {:?}", spec.ready_timeout)
                        }
                        (mpsc::RecvTimeoutError::Disconnected, None) => {
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
        &self.dir
    }

    /// Each server's peak resident set (VmHWM of /proc/PID/status) in KiB,
    /// while it still runs; `None` for a server that exited or a kernel
    /// without /proc.
    pub fn peak_rss_kib(&mut self) -> Vec<Option<u64>> {
        self.servers
            .iter_mut()
            .map(|s| {
                if !matches!(s.child.try_wait(), Ok(None)) {
                    return None;
                }
                let text =
                    std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).ok()?;
                vm_hwm_kib(&text)
            })
            .collect()
    }

    /// Servers that have exited, with their status and last output.
    pub fn dead_servers(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &mut self.servers {
            if s.exited.is_none()
                && let Ok(Some(st)) = s.child.try_wait()
            {
                s.exited = Some(st);
            }
            if let Some(st) = s.exited {
                out.push(format!(
                    "server {} exited early ({st}); last output: {}",
                    s.index,
                    s.last_lines().join(" | ")
                ));
            }
        }
        out
    }

    /// After [`Cluster::stop`]: the counters every server printed when it
    /// stopped, summed over the servers, by name.
    pub fn server_counters(&self) -> std::collections::BTreeMap<String, u64> {
        let mut sum: Option<node::stats::ServerCounters> = None;
        for s in &self.servers {
            for line in s.last_lines() {
                if let Some(c) = node::stats::ServerCounters::from_stopped_line(&line) {
                    sum.get_or_insert_default().add(&c);
                }
            }
        }
        sum.iter()
            .flat_map(|c| c.entries())
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// Stops the servers (SIGTERM by pid, SIGKILL after `grace`), then the
    /// proxy; returns the proxy's final counts.
    pub fn stop(&mut self, grace: Duration) -> Option<ProxyCounts> {
        if self.stopped {
            return self.proxy_counts();
        }
        self.stopped = true;
        for s in &mut self.servers {
            if s.exited.is_none() && matches!(s.child.try_wait(), Ok(None)) {
                let pid = nix::unistd::Pid::from_raw(s.child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for s in &mut self.servers {
            loop {
                match s.child.try_wait() {
                    Ok(Some(st)) => {
                        s.exited.get_or_insert(st);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = s.child.kill();
                        let _ = s.child.wait();
                        break;
                    }
                }
            }
        }
        let counts = self.proxy.take().and_then(|p| p.stop().ok());
        let _ = std::fs::remove_dir_all(&self.dir);
        counts
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}
