//! The supervisor of `launcher up`: one task per node on a current-thread
//! tokio runtime.
//!
//! Each node is a [`process::server_command`] with stdout and stderr piped
//! to the [`Output`]; it is *up* once it prints its ready line on stderr.
//! Exits are detected by waiting for the process (`Child::wait`), never by
//! the pipes closing; what follows an exit is [`Restarts::decide`]'s. On
//! SIGINT/SIGTERM every node is stopped gracefully (SIGKILL after
//! `stop_timeout_ms`, or at once on a second signal).
//!
//! The runtime is single-threaded on purpose: `PR_SET_PDEATHSIG` fires when
//! the *thread* that forked the child exits, so every fork must happen on
//! the main thread, which lives as long as the launcher.

use super::console::{self, Console};
use super::output::Output;
use crate::cluster::plan::{NodePlan, Plan};
use crate::cluster::process::{self, describe_exit, is_ready_line};
use crate::cluster::procfs;
use crate::cluster::restart::{Decision, Restarts};
use crate::cluster::state::{self, NodeState, NodeStatus, StateFile};
use nix::sys::signal::Signal;
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
    /// The web console, when it is on: it sees every state change and
    /// every line of the nodes.
    console: Option<Arc<Console>>,
}

impl Shared {
    /// Changes a node's state and rewrites the state file.
    fn update<R>(&self, node: usize, f: impl FnOnce(&mut NodeState) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut st.nodes[node]);
        if let Some(c) = &self.console {
            c.set_state(&st);
        }
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

    /// The `ready` line of process `pid` of `node` arrived; it names the
    /// bound metrics address (port 0 resolved), which `status` scrapes.
    fn mark_up(&self, node: usize, pid: i32, line: &str) {
        let metrics = node::metrics::addr_in_ready_line(line).map(|a| a.to_string());
        let became_up = self.update(node, |n| {
            if n.pid == Some(pid) && n.status == NodeStatus::Starting {
                n.status = NodeStatus::Up;
                n.metrics = metrics;
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
    let launcher_start_time = procfs::start_time(launcher_pid)
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
                metrics: None,
            })
            .collect(),
    };
    let state_path = plan.state_file();
    // The console listens before any node starts: a busy port fails now.
    let console = match plan.settings.console {
        Some(addr) => {
            let c = Console::new(initial.clone(), plan.cfg.rooms);
            let bound = console::serve(c.clone(), addr).await?;
            out.global(&format!("console http://{bound}/"));
            Some(c)
        }
        None => None,
    };
    state::write(&state_path, &initial)
        .map_err(|e| anyhow::anyhow!("cannot write state file {}: {e}", state_path.display()))?;
    let sh = Arc::new(Shared {
        plan,
        out,
        state: Mutex::new(initial),
        state_path,
        state_write_failed: AtomicBool::new(false),
        console,
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

fn spawn_node(np: &NodePlan) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::from(process::server_command(&np.program, &np.args));
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
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
        if let Some(c) = &sh.console {
            c.node_line(node, &line);
        }
        if stderr && !ready && is_ready_line(&line) {
            ready = true;
            sh.mark_up(node, pid, &line);
        }
    }
}

/// What became of one run of a node's process.
enum Run {
    /// It exited by itself (or could not start): `desc` says how.
    Ended { desc: String, success: bool },
    /// The launcher stopped it.
    Stopped,
}

/// Starts the node once and waits for it to exit or to be stopped.
async fn run_once(sh: &Arc<Shared>, i: usize, stop: &mut watch::Receiver<Stop>) -> Run {
    let np = sh.node(i);
    let mut child = match spawn_node(np) {
        Ok(c) => c,
        Err(e) => {
            return Run::Ended {
                desc: format!("cannot start {}: {e}", np.program.display()),
                success: false,
            };
        }
    };
    // A child that has not been waited for always has an id.
    let pid = child.id().map_or(0, |p| p as i32);
    let start = procfs::start_time(pid);
    sh.update(i, |n| {
        n.pid = Some(pid);
        n.start_time = start;
        n.status = NodeStatus::Starting;
        // A new process binds its own (port 0: another) metrics address.
        n.metrics = None;
    });
    sh.out.event(i, &format!("starting (pid {pid})"));
    let out_task = tokio::spawn(pump(sh.clone(), i, pid, child.stdout.take(), false));
    let err_task = tokio::spawn(pump(sh.clone(), i, pid, child.stderr.take(), true));
    let exited = tokio::select! {
        st = child.wait() => Some(st),
        _ = stop_requested(stop) => None,
    };
    let (st, stopped) = match exited {
        Some(st) => (st, false),
        None => (stop_child(sh, i, &mut child, stop).await, true),
    };
    // Let the last lines through before reporting the exit.
    drain(out_task, err_task).await;
    let (desc, success) = match st {
        Ok(st) => (describe_exit(&st), st.success()),
        Err(e) => (format!("lost track of it: {e}"), false),
    };
    if stopped {
        sh.update(i, |n| {
            n.status = NodeStatus::Stopped;
            n.pid = None;
            n.start_time = None;
            n.last_exit = Some(desc.clone());
        });
        sh.out.event(i, &format!("stopped ({desc})"));
        return Run::Stopped;
    }
    Run::Ended { desc, success }
}

/// Runs one node until it is stopped, exits for good or fails.
async fn node_task(sh: Arc<Shared>, i: usize, mut stop: watch::Receiver<Stop>) -> Outcome {
    let mut restarts = Restarts::new(&sh.plan.settings.supervise);
    loop {
        if *stop.borrow() != Stop::Run {
            sh.update(i, |n| n.status = NodeStatus::Stopped);
            return Outcome::Stopped;
        }
        let (desc, success) = match run_once(&sh, i, &mut stop).await {
            Run::Stopped => return Outcome::Stopped,
            Run::Ended { desc, success } => (desc, success),
        };
        let (status, outcome, what) = if *stop.borrow() != Stop::Run {
            (NodeStatus::Stopped, Outcome::Stopped, "stopped".to_string())
        } else {
            match restarts.decide(success, Instant::now().into_std()) {
                Decision::Restart { delay } => {
                    sh.update(i, |n| {
                        n.status = NodeStatus::Restarting;
                        n.pid = None;
                        n.start_time = None;
                        n.last_exit = Some(desc.clone());
                    });
                    sh.out.event(
                        i,
                        &format!("{desc}; restarting in {} ms", delay.as_millis()),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop_requested(&mut stop) => {
                            sh.update(i, |n| n.status = NodeStatus::Stopped);
                            sh.out.event(i, "stopped (it was waiting to restart)");
                            return Outcome::Stopped;
                        }
                    }
                    restarts.record_restart(Instant::now().into_std());
                    sh.update(i, |n| n.restarts += 1);
                    continue;
                }
                Decision::Exited => (
                    NodeStatus::Exited,
                    Outcome::Exited,
                    "not restarting".to_string(),
                ),
                Decision::Failed => (
                    NodeStatus::Failed,
                    Outcome::Failed,
                    "not restarting (restart = never): failed".to_string(),
                ),
                Decision::GaveUp { restarts } => (
                    NodeStatus::Failed,
                    Outcome::Failed,
                    format!(
                        "gave up after {restarts} restart{} within {} s: failed",
                        if restarts == 1 { "" } else { "s" },
                        sh.plan.settings.supervise.restart_window_s
                    ),
                ),
            }
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
}

/// Stops a node gracefully: SIGKILL after the stop timeout, or at once on
/// a second signal to the launcher.
async fn stop_child(
    sh: &Shared,
    i: usize,
    child: &mut tokio::process::Child,
    stop: &mut watch::Receiver<Stop>,
) -> std::io::Result<ExitStatus> {
    sh.update(i, |n| n.status = NodeStatus::Stopping);
    let timeout = Duration::from_millis(sh.plan.settings.supervise.stop_timeout_ms);
    if *stop.borrow() == Stop::Kill {
        if let Some(pid) = child.id() {
            process::signal_group(pid, Signal::SIGKILL);
        }
        return child.wait().await;
    }
    process::stop_child_gracefully(child, timeout, kill_requested(stop), || {
        sh.out.event(
            i,
            &format!(
                "still running {} ms after SIGTERM; sending SIGKILL",
                timeout.as_millis()
            ),
        );
    })
    .await
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
