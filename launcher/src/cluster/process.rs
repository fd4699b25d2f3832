//! One server process: how it is started, when it counts as ready, how it
//! ended, and how it is stopped. `launcher up`'s supervisor, the throw-away
//! clusters of `stress` and `bench`, and `launcher down` all go through here.
//!
//! A server runs directly (no shell) in its own process group with stdin
//! closed, and dies with the launcher: `PR_SET_PDEATHSIG` is set in the
//! child, and the child leaves at once if the launcher already died between
//! `fork` and `prctl` (then no signal would ever come). The death signal
//! fires when the *thread* that forked exits, so callers fork from a thread
//! that lives as long as the servers (the main thread).

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::future::Future;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a stop waits after SIGKILL before it gives up on a process.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often the synchronous waits below look again.
const POLL: Duration = Duration::from_millis(10);

/// The command for one server: `program args`, stdin closed, its own
/// process group, the parent-death signal. The caller chooses stdout and
/// stderr.
pub fn server_command(program: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).process_group(0);
    let launcher_pid = std::process::id() as libc::pid_t;
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
    cmd
}

/// True for the line a server prints once it serves: one with the word
/// `ready` (not `already`, as in "address already in use").
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

/// Signals the process group of a server started by [`server_command`].
/// Only for a child not yet reaped: until then its pid, which is also its
/// group id, cannot have been reused.
pub fn signal_group(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), sig);
    }
}

/// Polls `done` until it holds (true) or `deadline` passes (false).
pub fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopEnd {
    /// Gone within the grace period.
    Exited,
    /// Gone after SIGKILL.
    Killed,
    /// Still there [`KILL_WAIT`] after SIGKILL.
    StillRunning,
}

/// The graceful stop: `polite` (SIGTERM; SIGINT for tools that report on
/// it), then SIGKILL once `grace` has passed. `send` delivers a signal to
/// whatever is being stopped (one process or several), `gone` says whether
/// all of it has exited.
pub fn stop_gracefully(
    polite: Signal,
    grace: Duration,
    mut send: impl FnMut(Signal),
    mut gone: impl FnMut() -> bool,
) -> StopEnd {
    if gone() {
        return StopEnd::Exited;
    }
    send(polite);
    if wait_until(Instant::now() + grace, &mut gone) {
        return StopEnd::Exited;
    }
    send(Signal::SIGKILL);
    if wait_until(Instant::now() + KILL_WAIT, gone) {
        StopEnd::Killed
    } else {
        StopEnd::StillRunning
    }
}

/// [`stop_gracefully`] for a child on a tokio runtime: SIGTERM to its
/// group, SIGKILL after `grace` (calling `on_escalate` first) or as soon as
/// `kill_now` completes; then waits for it.
pub async fn stop_child_gracefully(
    child: &mut tokio::process::Child,
    grace: Duration,
    kill_now: impl Future<Output = ()>,
    on_escalate: impl FnOnce(),
) -> std::io::Result<ExitStatus> {
    let Some(pid) = child.id() else {
        // Already reaped.
        return child.wait().await;
    };
    signal_group(pid, Signal::SIGTERM);
    tokio::select! {
        st = child.wait() => return st,
        _ = tokio::time::sleep(grace) => on_escalate(),
        _ = kill_now => {}
    }
    signal_group(pid, Signal::SIGKILL);
    child.wait().await
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

    #[test]
    fn a_stubborn_child_is_killed_after_the_grace_period() {
        use std::io::{BufRead, BufReader};
        // This `sh` ignores SIGTERM (it says `ready` once it does), so only
        // SIGKILL ends it.
        let mut child = server_command(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "trap '' TERM; echo ready; while :; do sleep 1; done".into(),
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read");
        assert!(is_ready_line(&line), "{line:?}");
        let pid = child.id();
        let started = Instant::now();
        let end = stop_gracefully(
            Signal::SIGTERM,
            Duration::from_millis(200),
            |sig| signal_group(pid, sig),
            || matches!(child.try_wait(), Ok(Some(_))),
        );
        assert_eq!(end, StopEnd::Killed);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
