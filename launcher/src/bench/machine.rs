//! What a benchmark report says about the machine it ran on, and the
//! external measuring tools (perf, strace, valgrind) on `PATH`.

use serde::Serialize;
use std::path::PathBuf;

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
        .find(|p| crate::cluster::is_executable(p))
}

/// The machine's CPU time so far, by kind (`/proc/stat`, the `cpu` line, in
/// clock ticks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTimes {
    /// Running anything (user, nice, system, irq, softirq).
    pub busy: u64,
    /// Idle or waiting for I/O.
    pub idle: u64,
    /// Taken by the hypervisor for other guests while we had work (`steal`).
    pub steal: u64,
}

impl CpuTimes {
    pub fn now() -> Option<CpuTimes> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The `cpu ` line of `/proc/stat`: user nice system idle iowait irq
    /// softirq steal (guest time is already counted in user).
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Some(CpuTimes {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
        })
    }
}

/// How the machine's CPUs spent the time between two samples.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CpuLoad {
    /// Share of CPU time running anything (ours or not), in percent.
    pub busy_pct: f64,
    /// Share the hypervisor gave to other guests, in percent: on a shared
    /// VM, what makes figures noisy that no process here can see.
    pub steal_pct: f64,
}

impl CpuLoad {
    pub fn between(before: CpuTimes, after: CpuTimes) -> Option<CpuLoad> {
        let busy = after.busy.checked_sub(before.busy)?;
        let idle = after.idle.checked_sub(before.idle)?;
        let steal = after.steal.checked_sub(before.steal)?;
        let total = (busy + idle + steal) as f64;
        (total > 0.0).then(|| CpuLoad {
            busy_pct: 100.0 * busy as f64 / total,
            steal_pct: 100.0 * steal as f64 / total,
        })
    }
}

impl std::fmt::Display for CpuLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPUs busy {:.0}%, stolen by the hypervisor {:.0}% (/proc/stat)",
            self.busy_pct, self.steal_pct
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_is_described() {
        assert!(machine().nproc >= 1);
        assert!(which("sh").is_some());
        assert!(which("no-such-program-here").is_none());
    }

    #[test]
    fn cpu_load_counts_steal_apart_from_busy_and_idle() {
        let before = CpuTimes::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let after = CpuTimes::parse("cpu  300 0 150 900 50 0 0 400 0 0\n").unwrap();
        assert_eq!(before.busy, 150);
        assert_eq!(before.idle, 850);
        let load = CpuLoad::between(before, after).unwrap();
        // 300 busy, 100 idle, 400 stolen of 800 ticks.
        assert_eq!(load.busy_pct, 37.5);
        assert_eq!(load.steal_pct, 50.0);
        assert!(
            CpuLoad::between(after, before).is_none(),
            "counters go forward"
        );
        assert!(CpuTimes::parse("intr 1 2\n").is_none());
        assert!(CpuTimes::now().is_some(), "Linux has /proc/stat");
    }
}
