//! The state file of a running `launcher up` (`STATE_DIR/launcher.json`) and
//! the `/proc` checks that keep `status` and `down` from trusting a reused
//! pid.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name inside the state dir.
pub const STATE_FILE: &str = "launcher.json";

/// What `launcher up` writes on every change and removes on a clean exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub launcher_pid: i32,
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot).
    pub launcher_start_time: u64,
    pub cluster: String,
    pub config: PathBuf,
    pub ordering: String,
    pub nodes: Vec<NodeState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    /// 1-based index in the cluster file.
    pub index: usize,
    /// The current process, if one is running.
    pub pid: Option<i32>,
    pub start_time: Option<u64>,
    pub bind: String,
    pub forward: String,
    pub status: NodeStatus,
    /// Restarts since `launcher up` started.
    pub restarts: u32,
    /// How the previous process ended, e.g. `exited with status 1`.
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStatus {
    /// Spawned, not yet printed its `ready` line.
    Starting,
    Up,
    /// Exited; waiting out the backoff before the next start.
    Restarting,
    /// Gave up (or exited non-zero with `restart = "never"`).
    Failed,
    /// Exited with status 0 and the policy does not restart it.
    Exited,
    /// Being stopped by the launcher.
    Stopping,
    Stopped,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStatus::Starting => "starting",
            NodeStatus::Up => "up",
            NodeStatus::Restarting => "restarting",
            NodeStatus::Failed => "failed",
            NodeStatus::Exited => "exited",
            NodeStatus::Stopping => "stopping",
            NodeStatus::Stopped => "stopped",
        })
    }
}

/// Writes `state` to `path` atomically (temporary file, then rename).
pub fn write(path: &Path, state: &StateFile) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads the state file; `Ok(None)` if there is none.
pub fn read(path: &Path) -> anyhow::Result<Option<StateFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read state file {}: {e}",
                path.display()
            ));
        }
    };
    let st = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("state file {} is corrupt: {e}", path.display()))?;
    Ok(Some(st))
}

/// State (field 3) and start time (field 22) of `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) is in parentheses and may contain anything, so split
    // after the last ')'. Fields from 3 on are then space-separated.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was the first; field 22 is 19 further.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The start time of a live process (`None` if it is gone or a zombie).
pub fn start_time(pid: i32) -> Option<u64> {
    match proc_stat(pid) {
        Some((state, _)) if state == 'Z' || state == 'X' => None,
        Some((_, t)) => Some(t),
        None => None,
    }
}

/// True if `pid` is still the very process that had `start`: never signal
/// a pid without this check, the number may have been reused.
pub fn is_same_process(pid: i32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own /proc/PID/stat");
        assert!(is_same_process(me, t));
        assert!(!is_same_process(me, t + 1));
        assert_eq!(start_time(-1), None);
    }

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("launcher-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(STATE_FILE);
        let st = StateFile {
            launcher_pid: 1,
            launcher_start_time: 2,
            cluster: "c".into(),
            config: "/x.toml".into(),
            ordering: "total".into(),
            nodes: vec![NodeState {
                name: "s1".into(),
                index: 1,
                pid: Some(3),
                start_time: Some(4),
                bind: "127.0.0.1:5000".into(),
                forward: "127.0.0.1:5000".into(),
                status: NodeStatus::Restarting,
                restarts: 1,
                last_exit: None,
            }],
        };
        write(&p, &st).unwrap();
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .contains("\"restarting\"")
        );
        assert_eq!(read(&p).unwrap(), Some(st));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read(&p).unwrap(), None);
    }
}
