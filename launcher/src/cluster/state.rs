//! The state file of a running `launcher up` (`STATE_DIR/launcher.json`):
//! what `status` and `down` read from another terminal (they check each pid
//! with [`super::procfs::is_same_process`] before trusting it).

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
    /// Where the current process serves `/metrics` (from its `ready`
    /// line); absent in files of older launchers.
    #[serde(default)]
    pub metrics: Option<String>,
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

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {} is corrupt: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Reads the state file; `Ok(None)` if there is none.
pub fn read(path: &Path) -> Result<Option<StateFile>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
                metrics: Some("127.0.0.1:9100".into()),
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
