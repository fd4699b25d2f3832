//! The supervisor of `launcher up`: one task per node on a current-thread
//! tokio runtime.
//!
//! Each node runs directly (no shell) in its own process group, with stdin
//! null and stdout/stderr piped. A node is *up* once it prints a line with
//! the word `ready` on stderr. Exits are detected by waiting for the process
//! (`Child::wait`), never by the pipes closing; restarts follow the
//! `[supervise]` policy with exponential backoff. On SIGINT/SIGTERM every
//! node's group gets SIGTERM, then SIGKILL after `stop_timeout_ms`.
//!
//! The runtime is single-threaded on purpose: `PR_SET_PDEATHSIG` fires when
//! the *thread* that forked the child exits, so every fork must happen on
//! the main thread, which lives as long as the launcher.

use crate::cluster::settings::RestartPolicy;
use crate::output::Output;
use crate::plan::{NodePlan, Plan};
use crate::state::{self, NodeState, NodeStatus, StateFile};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What the main loop asks of the node tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Run,
    /// SIGTERM, then SIGKILL after the stop timeout.
    Term,
    /// SIGKILL now (a second signal to the launcher).
    Kill,
}

/// How a node task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Stopped,
    Exited,
    Failed,
}

struct Shared {
    plan: Plan,
    out: Output,
    state: Mutex<StateFile>,
    state_path: PathBuf,
    state_write_failed: AtomicBool,
    /// Our pid, taken before any fork, for the children's start-up check.
    launcher_pid: libc::pid_t,
}

impl Shared {
    /// Changes a node's state and rewrites the state file.
    fn update<R>(&self, node: usize, f: impl FnOnce(&mut NodeState) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut st.nodes[node]);
        if let Err(e) = state::write(&self.state_path, &st)
            && !self.state_write_failed.swap(true, Ordering::Relaxed)
        {
            self.out.global(&format!(
                "cannot write state file {}: {e}",
                self.state_path.display()
            ));
        }
        r
    }

    fn node(&self, node: usize) -> &NodePlan {
        &self.plan.nodes[node]
    }

    /// The `ready` line of process `pid` of `node` arrived.
    fn mark_up(&self, node: usize, pid: i32) {
        let became_up = self.update(node, |n| {
            if n.pid == Some(pid) && n.status == NodeStatus::Starting {
                n.status = NodeStatus::Up;
                true
            } else {
                false
            }
        });
        if became_up {
            self.out.event(node, &format!("up (pid {pid})"));
        }
    }
}

/// True for a line with the word `ready` (not `already`).
pub fn is_ready_line(line: &str) -> bool {
    line.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == "ready")
}

/// `exited with status 1`, `exited with signal 9 (SIGKILL)`.
pub fn describe_exit(st: &ExitStatus) -> String {
    if let Some(code) = st.code() {
        return format!("exited with status {code}");
    }
    if let Some(sig) = st.signal() {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("unknown signal");
        let core = if st.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        return format!("exited with signal {sig} ({name}{core})");
    }
    format!("exited ({st})")
}

/// The delay before restart number `n + 1` (0-based `n`): initial * 2^n,
/// capped at max.
pub fn backoff_ms(initial: u64, max: u64, n: usize) -> u64 {
    let factor = 2u64.saturating_pow(u32::try_from(n).unwrap_or(u32::MAX));
    initial.saturating_mul(factor).min(max)
}

/// Runs the cluster until every node has stopped, exited or failed.
/// Exit code: 0 unless some node was marked failed.
pub fn run(plan: Plan, out: Output) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the tokio runtime: {e}"))?;
    rt.block_on(main_loop(plan, out))
}

async fn main_loop(plan: Plan, out: Output) -> anyhow::Result<ExitCode> {
    // Signal handlers first: a signal between spawning and installing them
    // would kill the launcher the default way.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let launcher_pid = std::process::id() as libc::pid_t;
    let launcher_start_time = state::start_time(launcher_pid)
        .ok_or_else(|| anyhow::anyhow!("cannot read /proc/{launcher_pid}/stat"))?;
    let initial = StateFile {
        launcher_pid,
        launcher_start_time,
        cluster: plan.settings.name.clone(),
        config: plan.config_path.clone(),
        ordering: plan.ordering.clone(),
        nodes: plan
            .nodes
            .iter()
            .map(|n| NodeState {
                name: n.name.clone(),
                index: n.index,
                pid: None,
                start_time: None,
                bind: n.bind.to_string(),
                forward: n.forward.to_string(),
                status: NodeStatus::Starting,
                restarts: 0,
                last_exit: None,
            })
            .collect(),
    };
    let state_path = plan.state_file();
    state::write(&state_path, &initial)
        .map_err(|e| anyhow::anyhow!("cannot write state file {}: {e}", state_path.display()))?;
    let sh = Arc::new(Shared {
        plan,
        out,
        state: Mutex::new(initial),
        state_path,
        state_write_failed: AtomicBool::new(false),
        launcher_pid,
    });

    let (tx, rx) = watch::channel(Stop::Run);
    let mut tasks = JoinSet::new();
    for i in 0..sh.plan.nodes.len() {
        tasks.spawn(node_task(sh.clone(), i, rx.clone()));
    }

    let mut failed = 0usize;
    let mut stopping = false;
    loop {
        let sig = tokio::select! {
            r = tasks.join_next() => {
                match r {
                    None => break,
                    Some(Ok(Outcome::Failed)) => failed += 1,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        failed += 1;
                        sh.out.global(&format!("a node task ended abnormally: {e}"));
                    }
                }
                continue;
            }
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
            _ = sighup.recv() => "SIGHUP",
        };
        if !stopping {
            stopping = true;
            sh.out.global(&format!(
                "{sig}: stopping all nodes (SIGTERM, SIGKILL after {} ms)",
                sh.plan.settings.supervise.stop_timeout_ms
            ));
            let _ = tx.send(Stop::Term);
        } else {
            sh.out
                .global(&format!("{sig} again: killing all nodes (SIGKILL)"));
            let _ = tx.send(Stop::Kill);
        }
    }

    match std::fs::remove_file(&sh.state_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => sh.out.global(&format!(
            "cannot remove state file {}: {e}",
            sh.state_path.display()
        )),
    }
    if failed > 0 {
        sh.out.global(&format!(
            "{failed} node{} failed; exiting with status 1",
            if failed == 1 { "" } else { "s" }
        ));
        Ok(ExitCode::FAILURE)
    } else {
        sh.out.global("all nodes stopped");
        Ok(ExitCode::SUCCESS)
    }
}

/// Resolves once the main loop asks to stop; returns what it asked.
async fn stop_requested(rx: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        let v = *rx.borrow_and_update();
        if v != Stop::Run {
            return v;
        }
        if rx.changed().await.is_err() {
            // The main loop is gone: nothing can ask us any more.
            return Stop::Kill;
        }
    }
}

async fn kill_requested(rx: &mut watch::Receiver<Stop>) {
    loop {
        if *rx.borrow_and_update() == Stop::Kill {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn spawn_node(np: &NodePlan, launcher_pid: libc::pid_t) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&np.program);
    cmd.args(&np.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher may have died between fork and prctl: then no
            // death signal will come, so leave now.
            if libc::getppid() != launcher_pid {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Copies one pipe of a node to the output, line by line; on stderr it
/// watches for the `ready` line.
async fn pump<R: AsyncRead + Unpin>(
    sh: Arc<Shared>,
    node: usize,
    pid: i32,
    r: Option<R>,
    stderr: bool,
) {
    let Some(r) = r else { return };
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    let mut ready = false;
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf);
        sh.out.node_line(node, &line);
        if stderr && !ready && is_ready_line(&line) {
            ready = true;
            sh.mark_up(node, pid);
        }
    }
}

fn signal_group(pid: i32, sig: Signal) {
    // The child is not reaped yet (we hold it un-waited), so its pid, which
    // is also its process group id, cannot have been reused.
    let _ = killpg(Pid::from_raw(pid), sig);
}

async fn node_task(sh: Arc<Shared>, i: usize, mut stop: watch::Receiver<Stop>) -> Outcome {
    let np = sh.node(i).clone();
    let sv = sh.plan.settings.supervise.clone();
    let window = Duration::from_secs(sv.restart_window_s);
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    loop {
        if *stop.borrow() != Stop::Run {
            sh.update(i, |n| n.status = NodeStatus::Stopped);
            return Outcome::Stopped;
        }
        let (desc, success) = match spawn_node(&np, sh.launcher_pid) {
            Err(e) => (format!("cannot start {}: {e}", np.program.display()), false),
            Ok(mut child) => {
                let Some(pid) = child.id().map(|p| p as i32) else {
                    // Only after a wait; cannot happen here.
                    let st = child.wait().await;
                    let d = st
                        .map(|s| describe_exit(&s))
                        .unwrap_or_else(|e| e.to_string());
                    return fail_now(&sh, i, d);
                };
                let start = state::start_time(pid);
                sh.update(i, |n| {
                    n.pid = Some(pid);
                    n.start_time = start;
                    n.status = NodeStatus::Starting;
                });
                sh.out.event(i, &format!("starting (pid {pid})"));
                let out_task = tokio::spawn(pump(sh.clone(), i, pid, child.stdout.take(), false));
                let err_task = tokio::spawn(pump(sh.clone(), i, pid, child.stderr.take(), true));
                let waited = tokio::select! {
                    st = child.wait() => Some(st),
                    _ = stop_requested(&mut stop) => None,
                };
                let st = match waited {
                    Some(st) => st,
                    None => {
                        let st = stop_child(&sh, i, pid, &mut child, &mut stop).await;
                        drain(out_task, err_task).await;
                        let d = match &st {
                            Ok(st) => describe_exit(st),
                            Err(e) => format!("lost track of it: {e}"),
                        };
                        sh.update(i, |n| {
                            n.status = NodeStatus::Stopped;
                            n.pid = None;
                            n.start_time = None;
                            n.last_exit = Some(d.clone());
                        });
                        sh.out.event(i, &format!("stopped ({d})"));
                        return Outcome::Stopped;
                    }
                };
                // Let the last lines through before reporting the exit.
                drain(out_task, err_task).await;
                match st {
                    Ok(st) => (describe_exit(&st), st.success()),
                    Err(e) => (format!("lost track of it: {e}"), false),
                }
            }
        };
        let restart = match sv.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Always => true,
        };
        let stopping = *stop.borrow() != Stop::Run;
        if !restart || stopping {
            let (status, outcome, what) = if stopping {
                (NodeStatus::Stopped, Outcome::Stopped, "stopped")
            } else if success {
                (NodeStatus::Exited, Outcome::Exited, "not restarting")
            } else {
                (
                    NodeStatus::Failed,
                    Outcome::Failed,
                    "not restarting (restart = never): failed",
                )
            };
            sh.update(i, |n| {
                n.status = status;
                n.pid = None;
                n.start_time = None;
                n.last_exit = Some(desc.clone());
            });
            sh.out.event(i, &format!("{desc}; {what}"));
            return outcome;
        }
        let now = Instant::now();
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            restarts.pop_front();
        }
        if restarts.len() >= sv.max_restarts as usize {
            sh.update(i, |n| {
                n.status = NodeStatus::Failed;
                n.pid = None;
                n.start_time = None;
                n.last_exit = Some(desc.clone());
            });
            sh.out.event(
                i,
                &format!(
                    "{desc}; gave up after {} restart{} within {} s: failed",
                    restarts.len(),
                    if restarts.len() == 1 { "" } else { "s" },
                    sv.restart_window_s
                ),
            );
            return Outcome::Failed;
        }
        let delay = backoff_ms(sv.backoff_initial_ms, sv.backoff_max_ms, restarts.len());
        sh.update(i, |n| {
            n.status = NodeStatus::Restarting;
            n.pid = None;
            n.start_time = None;
            n.last_exit = Some(desc.clone());
        });
        sh.out
            .event(i, &format!("{desc}; restarting in {delay} ms"));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = stop_requested(&mut stop) => {
                sh.update(i, |n| n.status = NodeStatus::Stopped);
                sh.out.event(i, "stopped (it was waiting to restart)");
                return Outcome::Stopped;
            }
        }
        restarts.push_back(Instant::now());
        sh.update(i, |n| n.restarts += 1);
    }
}

fn fail_now(sh: &Shared, i: usize, desc: String) -> Outcome {
    sh.update(i, |n| {
        n.status = NodeStatus::Failed;
        n.pid = None;
        n.start_time = None;
        n.last_exit = Some(desc.clone());
    });
    sh.out.event(i, &format!("{desc}: failed"));
    Outcome::Failed
}

/// SIGTERM to the node's group, SIGKILL after the stop timeout (or at once
/// on a second signal to the launcher); waits for the process.
async fn stop_child(
    sh: &Shared,
    i: usize,
    pid: i32,
    child: &mut tokio::process::Child,
    stop: &mut watch::Receiver<Stop>,
) -> std::io::Result<ExitStatus> {
    sh.update(i, |n| n.status = NodeStatus::Stopping);
    let timeout = Duration::from_millis(sh.plan.settings.supervise.stop_timeout_ms);
    if *stop.borrow() == Stop::Kill {
        signal_group(pid, Signal::SIGKILL);
        return child.wait().await;
    }
    signal_group(pid, Signal::SIGTERM);
    tokio::select! {
        st = child.wait() => st,
        _ = tokio::time::sleep(timeout) => {
            sh.out.event(i, &format!("still running {} ms after SIGTERM; sending SIGKILL", timeout.as_millis()));
            signal_group(pid, Signal::SIGKILL);
            child.wait().await
        }
        _ = kill_requested(stop) => {
            signal_group(pid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

/// Waits briefly for both pipe readers (a grandchild may hold a pipe open;
/// then they are abandoned).
async fn drain(a: tokio::task::JoinHandle<()>, b: tokio::task::JoinHandle<()>) {
    let ah = a.abort_handle();
    let bh = b.abort_handle();
    let both = async {
        let _ = a.await;
        let _ = b.await;
    };
    if tokio::time::timeout(Duration::from_millis(500), both)
        .await
        .is_err()
    {
        ah.abort();
        bh.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_word() {
        assert!(is_ready_line("S01 ready: listening on 127.0.0.1:5000"));
        assert!(is_ready_line("ready"));
        assert!(!is_ready_line("S01 error: address already in use"));
        assert!(!is_ready_line("S01 readying"));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        assert_eq!(backoff_ms(200, 5000, 0), 200);
        assert_eq!(backoff_ms(200, 5000, 1), 400);
        assert_eq!(backoff_ms(200, 5000, 5), 5000);
        assert_eq!(backoff_ms(200, 5000, 200), 5000);
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(9)),
            "exited with signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(1 << 8)),
            "exited with status 1"
        );
    }
}
