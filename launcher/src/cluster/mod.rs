//! The cluster layer every subcommand builds on: the launcher's own keys
//! of the cluster file ([`settings`]), what to run ([`plan`]),
//! how to run one server ([`process`]: spawn, readiness, graceful stop),
//! when to restart it ([`restart`], pure), what a running `launcher up`
//! records ([`state`]), what /proc says about a known pid ([`procfs`]), a
//! throw-away cluster on free ports for `stress` and `bench` ([`local`]),
//! a node's `/metrics` read back ([`metrics`]),
//! and the fault-injecting proxy that sits between servers
//! ([`fault_proxy`]).

pub mod fault_proxy;
pub mod local;
pub mod metrics;
pub mod plan;
pub mod process;
pub mod procfs;
pub mod restart;
pub mod settings;
pub mod state;

use anyhow::Context;
use std::path::{Path, PathBuf};

/// The `chatserver` to run: the one chosen (by a flag or the cluster
/// file), else the one next to the running launcher binary (`cargo build`
/// puts both in the same directory).
pub fn chatserver(chosen: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = chosen {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("cannot find the launcher's own executable")?;
    let dir = me
        .parent()
        .with_context(|| format!("{} has no parent directory", me.display()))?;
    Ok(dir.join("chatserver"))
}

/// True for a regular file someone may execute.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// `$TMPDIR/launcher-TAG-PID-NANOS`: unique per process and call.
    pub fn new(tag: &str) -> anyhow::Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("launcher-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
