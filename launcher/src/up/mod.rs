//! `launcher up/check/status/down`.
//!
//! `status --watch` (`watch`) scrapes each node's `/metrics`: `up`
//! starts every node with one (the file's address, else a free port) and
//! records the bound address in the state file.
//!
//! `up` runs every node of a cluster file under the `supervisor` and
//! keeps `STATE_DIR/launcher.json` current; `status` and `down` work from
//! that file in another terminal, checking each pid's start time in `/proc`
//! before trusting (or signalling) it.

mod console;
mod output;
mod supervisor;
mod watch;

use crate::cluster::fault_proxy;
use crate::cluster::plan::{self, Plan, SecretPlan};
use crate::cluster::process::{self, StopEnd};
use crate::cluster::procfs;
use crate::cluster::state::{self, StateFile};
use anyhow::Context;
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use output::{Output, want_colour};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Cluster file (TOML or the legacy line format).
    pub file: PathBuf,
    /// Ordering mode (overrides the TOML file's; default for legacy files: unordered).
    #[arg(short = 'o', long = "ordering")]
    pub ordering: Option<String>,
    /// Serve the web console at IP:PORT (overrides `console` in
    /// `[cluster]`); the nodes then run with `-v`.
    #[arg(long, value_name = "IP:PORT")]
    pub console: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    pub file: PathBuf,
    #[arg(short = 'o', long = "ordering")]
    pub ordering: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub file: PathBuf,
    /// Refresh a table of live figures every second (from each node's
    /// /metrics): state, restarts, clients, posts/s, deliveries/s,
    /// retransmits/s, holdback, view, RSS. Ctrl+C stops it.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after N tables (plain lines when stdout is not a
    /// terminal).
    #[arg(long, value_name = "N", requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    pub file: PathBuf,
}

/// Exit status of `status` when the cluster is not running (as LSB init
/// scripts do).
const NOT_RUNNING: u8 = 3;

/// The running launcher of a state file, if it is still the same process.
fn live_launcher(st: &StateFile) -> bool {
    procfs::is_same_process(st.launcher_pid, st.launcher_start_time)
}

fn refuse_if_running(plan: &Plan) -> anyhow::Result<()> {
    if let Some(st) = state::read(&plan.state_file())?
        && live_launcher(&st)
    {
        anyhow::bail!(
            "cluster {} is already running under launcher pid {} (state file {}); stop it with `launcher down {}`",
            st.cluster,
            st.launcher_pid,
            plan.state_file().display(),
            plan.config_path.display()
        );
    }
    Ok(())
}

pub fn run_up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let mut plan = Plan::build(&a.file, a.ordering.as_deref())?;
    if let Some(addr) = a.console.or(plan.settings.console) {
        plan.enable_console(addr);
    }
    refuse_if_running(&plan)?;
    plan.check_ports()?;
    std::fs::create_dir_all(plan.log_dir())
        .with_context(|| format!("cannot create {}", plan.log_dir().display()))?;
    prepare_secret(&plan.secret)?;
    let names = plan.nodes.iter().map(|n| n.name.clone()).collect();
    let out = Output::new(names, Some(&plan.log_dir()), want_colour())
        .with_context(|| format!("cannot create log files in {}", plan.log_dir().display()))?;
    out.global(&format!(
        "cluster {}: {} node{} from {}; {}",
        plan.settings.name,
        plan.nodes.len(),
        if plan.nodes.len() == 1 { "" } else { "s" },
        plan.config_path.display(),
        plan.ordering_line()
    ));
    out.global(&format!(
        "state {}, logs {}",
        plan.state_file().display(),
        plan.log_dir().display()
    ));
    for w in plan.warnings() {
        out.global(&format!("warning: {w}"));
    }
    // With [faults], the proxy sits on the forwarding addresses for the
    // whole life of the cluster.
    let proxy = match &plan.settings.faults {
        Some(f) => {
            if plan.cfg.servers.iter().any(|s| s.forward == s.bind) {
                anyhow::bail!(
                    "{}: [faults] needs separate forwarding addresses for the proxy (set forward_base_port in [nodes], or forward in each [[node]])",
                    plan.cfg.source.display()
                );
            }
            let handle =
                fault_proxy::spawn(&plan.cfg, f).context("starting the fault-injecting proxy")?;
            out.global(&format!(
                "proxy on the forwarding addresses: delay {}..{} ms, loss {}, duplicate {}, seed {}",
                f.delay_min_ms, f.delay_max_ms, f.loss, f.duplicate, f.seed
            ));
            Some(handle)
        }
        None => None,
    };
    let result = supervisor::run(plan, out);
    // Every node is gone: nothing else writes to stdout any more.
    if let Some(p) = proxy {
        match p.stop() {
            Ok(counts) => crate::outln!("launcher: proxy stopped: {counts}"),
            Err(e) => crate::outln!("launcher: proxy stopped with an error: {e:#}"),
        }
    }
    result
}

/// Writes the secret file the nodes get with `--secret-file` (mode 0600).
fn prepare_secret(secret: &SecretPlan) -> anyhow::Result<()> {
    let (path, text) = match secret {
        SecretPlan::Off => return Ok(()),
        SecretPlan::File { path } => {
            std::fs::metadata(path).with_context(|| format!("secret_file {}", path.display()))?;
            return Ok(());
        }
        SecretPlan::Generate { path } => (path, random_hex(32)?),
        SecretPlan::Inline { path, secret } => (path, secret.clone()),
    };
    write_private(path, &text)
        .with_context(|| format!("cannot write the secret to {}", path.display()))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a new file.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

pub(crate) fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn run_check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::build(&a.file, a.ordering.as_deref())?;
    crate::out!("{}", plan.describe());
    // A running cluster holds its own ports: the file is valid all the same.
    if let Some(st) = state::read(&plan.state_file())?
        && live_launcher(&st)
    {
        crate::outln!(
            "ok: the file is valid; cluster {} is already running under launcher pid {} (its nodes hold the bind addresses; `launcher status {}` lists them)",
            st.cluster,
            st.launcher_pid,
            plan.config_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    plan.check_ports()?;
    crate::outln!(
        "ok: {} bind address{} free",
        plan.nodes.len(),
        if plan.nodes.len() == 1 {
            " is"
        } else {
            "es are"
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let settings = plan::load_config(&a.file)?.settings;
    let path = plan::state_file(&settings)?;
    if a.watch {
        let running = watch::watch(a.count, Duration::from_secs(1), || {
            Ok(state::read(&path)?.filter(live_launcher))
        })?;
        if !running {
            crate::outln!(
                "cluster {}: not running (no live launcher in {})",
                settings.name,
                path.display()
            );
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(st) = state::read(&path)? else {
        crate::outln!(
            "cluster {}: not running (no state file {})",
            settings.name,
            path.display()
        );
        return Ok(ExitCode::from(NOT_RUNNING));
    };
    let running = live_launcher(&st);
    if running {
        crate::outln!(
            "cluster {}: launcher pid {} running, ordering {}",
            st.cluster,
            st.launcher_pid,
            st.ordering
        );
    } else {
        crate::outln!(
            "cluster {}: launcher pid {} is NOT running (stale state file {}; run `launcher down` to clean up)",
            st.cluster,
            st.launcher_pid,
            path.display()
        );
    }
    let w = st
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    crate::outln!(
        "{:w$}  {:>8}  {:10}  {:5}  {:21}  {:>8}  LAST EXIT",
        "NAME",
        "PID",
        "STATE",
        "ALIVE",
        "BIND",
        "RESTARTS"
    );
    for n in &st.nodes {
        let alive = match (n.pid, n.start_time) {
            (Some(p), Some(t)) => procfs::is_same_process(p, t),
            _ => false,
        };
        let pid = n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        crate::outln!(
            "{:w$}  {:>8}  {:10}  {:5}  {:21}  {:>8}  {}",
            n.name,
            pid,
            n.status.to_string(),
            if alive { "yes" } else { "no" },
            n.bind,
            n.restarts,
            n.last_exit.as_deref().unwrap_or("-")
        );
    }
    Ok(if running {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_RUNNING)
    })
}

pub fn run_down(a: DownArgs) -> anyhow::Result<ExitCode> {
    let settings = plan::load_config(&a.file)?.settings;
    let path = plan::state_file(&settings)?;
    let Some(st) = state::read(&path)? else {
        crate::outln!("cluster {}: not running", settings.name);
        return Ok(ExitCode::SUCCESS);
    };
    let stop_timeout = Duration::from_millis(settings.supervise.stop_timeout_ms);
    // The launcher gives each node stop_timeout, then SIGKILLs it.
    let deadline = Instant::now() + stop_timeout + Duration::from_secs(5);
    if live_launcher(&st) {
        let pid = st.launcher_pid;
        match kill(Pid::from_raw(pid), Signal::SIGTERM) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => anyhow::bail!("cannot signal launcher pid {pid}: {e}"),
        }
        crate::outln!("cluster {}: sent SIGTERM to launcher pid {pid}", st.cluster);
        if !process::wait_until(deadline, || !live_launcher(&st)) {
            anyhow::bail!(
                "launcher pid {pid} is still running {} s after SIGTERM",
                (stop_timeout + Duration::from_secs(5)).as_secs()
            );
        }
        crate::outln!("cluster {}: stopped", st.cluster);
        return Ok(ExitCode::SUCCESS);
    }
    // The launcher died without cleaning up (SIGKILL?). Its nodes normally
    // died with it (PDEATHSIG); stop any that did not.
    let alive: Vec<(i32, u64, &str)> = st
        .nodes
        .iter()
        .filter_map(|n| Some((n.pid?, n.start_time?, n.name.as_str())))
        .filter(|(p, t, _)| procfs::is_same_process(*p, *t))
        .collect();
    let end = process::stop_gracefully(
        Signal::SIGTERM,
        stop_timeout,
        |sig| {
            for (pid, t, name) in &alive {
                if !procfs::is_same_process(*pid, *t) {
                    continue;
                }
                if sig == Signal::SIGKILL {
                    crate::outln!(
                        "cluster {}: {name} (pid {pid}) ignored SIGTERM; sending SIGKILL",
                        st.cluster
                    );
                } else {
                    crate::outln!(
                        "cluster {}: {name} (pid {pid}) outlived its launcher; sending SIGTERM",
                        st.cluster
                    );
                }
                let _ = kill(Pid::from_raw(*pid), sig);
            }
        },
        || {
            alive
                .iter()
                .all(|(p, t, _)| !procfs::is_same_process(*p, *t))
        },
    );
    if end == StopEnd::StillRunning {
        anyhow::bail!("some nodes of cluster {} are still running", st.cluster);
    }
    std::fs::remove_file(&path)
        .with_context(|| format!("cannot remove stale state file {}", path.display()))?;
    crate::outln!(
        "cluster {}: launcher pid {} was not running; removed its stale state file",
        st.cluster,
        st.launcher_pid
    );
    Ok(ExitCode::SUCCESS)
}
