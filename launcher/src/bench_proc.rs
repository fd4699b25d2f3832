//! What `launcher bench` needs to know about processes and the machine:
//! the pids of the `chatserver`s a [`Cluster`] started (found in /proc as
//! our own children running that cluster's config file), their memory
//! (`VmRSS`, `VmHWM`) and CPU time, the machine's description, external tools
//! on `PATH`, and the counters each server prints when it stops.
//!
//! Only reads /proc; never signals anything.

use crate::stress_cluster::{Cluster, fresh_ports};
use anyhow::Context;
use node::config::ClusterConfig;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A legacy cluster of `n` servers on fresh 127.0.0.1 ports.
pub fn local_cluster_config(n: usize) -> anyhow::Result<ClusterConfig> {
    let ports = fresh_ports(n)?;
    let text: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    node::config::parse_legacy(Path::new("<launcher bench>"), &text).map_err(Into::into)
}

/// Fields of /proc/PID/stat after the command name: (ppid, utime, stime) in
/// clock ticks.
fn stat_fields(pid: i32) -> Option<(i32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3), f[1] = ppid (4), f[11] = utime (14), f[12] = stime (15).
    Some((
        f.get(1)?.parse().ok()?,
        f.get(11)?.parse().ok()?,
        f.get(12)?.parse().ok()?,
    ))
}

/// Pids of the servers of `cluster`, by index (1-based, `result[i - 1]`):
/// our own children whose command line names the cluster's config file
/// followed by the index (a wrapper that `exec`s, such as valgrind, keeps
/// both the pid and those arguments).
pub fn server_pids(cluster: &Cluster, servers: usize) -> Vec<Option<i32>> {
    let me = std::process::id() as i32;
    let config = cluster.config_path.to_string_lossy().into_owned();
    let mut pids = vec![None; servers];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if stat_fields(pid).map(|f| f.0) != Some(me) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(i) = args.iter().position(|a| *a == config)
            && let Some(index) = args.get(i + 1).and_then(|a| a.parse::<usize>().ok())
            && (1..=servers).contains(&index)
        {
            pids[index - 1] = Some(pid);
        }
    }
    pids
}

/// `VmRSS` and `VmHWM` (peak RSS) in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn memory(pid: i32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU time of a process so far.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuTime {
    /// On-CPU time from /proc/PID/schedstat (nanoseconds; 0 if unavailable).
    pub sched_ns: u64,
    /// utime and stime from /proc/PID/stat, in nanoseconds (tick resolution).
    pub user_ns: u64,
    pub system_ns: u64,
}

impl CpuTime {
    /// The best total: schedstat when present, else utime + stime.
    pub fn total_ns(&self) -> u64 {
        if self.sched_ns > 0 {
            self.sched_ns
        } else {
            self.user_ns + self.system_ns
        }
    }

    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            sched_ns: self.sched_ns.saturating_sub(earlier.sched_ns),
            user_ns: self.user_ns.saturating_sub(earlier.user_ns),
            system_ns: self.system_ns.saturating_sub(earlier.system_ns),
        }
    }
}

pub fn cpu_time(pid: i32) -> Option<CpuTime> {
    let (_, utime, stime) = stat_fields(pid)?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ns_per_tick = 1_000_000_000 / tck;
    let sched_ns = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(CpuTime {
        sched_ns,
        user_ns: utime * ns_per_tick,
        system_ns: stime * ns_per_tick,
    })
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} CPUs ({}), {:.1} GiB, Linux {}",
            self.nproc, self.cpu_model, self.memory_gib, self.kernel
        )
    }
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        kernel,
        memory_gib,
    }
}

/// `prog` on `PATH`, if it is there.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The counters of the `Snn stopped: {JSON}` line each server printed, by index (after
/// [`Cluster::stop`]); waits up to `wait` for the stderr readers to catch
/// up. The cluster only shows the last lines of servers that have exited,
/// through [`Cluster::dead_servers`], which is where they are read from.
pub fn stopped_counters(
    cluster: &mut Cluster,
    servers: usize,
    wait: Duration,
) -> Vec<Option<BTreeMap<String, u64>>> {
    let deadline = Instant::now() + wait;
    loop {
        let mut out = vec![None; servers];
        for text in cluster.dead_servers() {
            // "server N exited early (status); last output: l1 | l2 | ..."
            let Some(index) = text
                .strip_prefix("server ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if let Some(c) = text
                .split(" | ")
                .find_map(|l| node::stats::ServerCounters::from_stopped_line(l.trim()))
                && (1..=servers).contains(&index)
            {
                out[index - 1] = Some(c.entries().map(|(k, v)| (k.to_string(), v)).collect());
            }
        }
        if out.iter().all(Option::is_some) || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Creates a fresh scratch directory for a benchmark's files.
pub fn scratch(tag: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "launcher-bench-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id() as i32;
        let m = memory(me).expect("status");
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        assert!(cpu_time(me).is_some());
        assert!(machine().nproc >= 1);
    }
}
