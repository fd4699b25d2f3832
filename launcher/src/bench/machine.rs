//! What a benchmark report says about the machine it ran on, and the
//! external measuring tools (perf, strace, valgrind) on `PATH`.

use serde::Serialize;
use std::path::{Path, PathBuf};

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    /// How an idle CPU waits for work; `None` where sysfs does not say.
    pub idle: Option<IdleWait>,
}

/// How the machine's idle CPUs wait (cpuidle), which sets what waking a
/// sleeping process costs: every hop of a delivery to a server or client
/// that sleeps pays it. In a KVM guest an idle virtual CPU that halts is
/// descheduled by the hypervisor and woken by an interrupt through it, tens
/// of microseconds; with guest halt polling it polls for a while first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleWait {
    /// The cpuidle driver (`haltpoll`, `intel_idle`, `acpi_idle`, ...).
    pub driver: String,
    /// The cpuidle governor (`haltpoll`, `menu`, `teo`, ...).
    pub governor: String,
    /// Most nanoseconds an idle virtual CPU polls before it halts
    /// (`/sys/module/haltpoll/parameters/guest_halt_poll_ns`); `None`
    /// without the haltpoll driver's module.
    pub guest_halt_poll_ns: Option<u64>,
}

impl IdleWait {
    /// Reads it under `root` (`/` on a live machine; a test's tree
    /// otherwise).
    pub fn read(root: &Path) -> Option<IdleWait> {
        let text = |p: &str| {
            std::fs::read_to_string(root.join(p))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let cpuidle = "sys/devices/system/cpu/cpuidle";
        let driver = text(&format!("{cpuidle}/current_driver"))?;
        let governor = text(&format!("{cpuidle}/current_governor"))
            .or_else(|| text(&format!("{cpuidle}/current_governor_ro")))
            .unwrap_or_else(|| "unknown".into());
        let guest_halt_poll_ns =
            text("sys/module/haltpoll/parameters/guest_halt_poll_ns").and_then(|v| v.parse().ok());
        Some(IdleWait {
            driver,
            governor,
            guest_halt_poll_ns,
        })
    }

    /// A guest whose idle CPUs halt at once: the haltpoll driver with its
    /// polling turned off.
    pub fn halts_at_once(&self) -> bool {
        self.driver == "haltpoll" && self.guest_halt_poll_ns == Some(0)
    }
}

impl std::fmt::Display for IdleWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "idle CPUs: {}/{}", self.driver, self.governor)?;
        match self.guest_halt_poll_ns {
            Some(0) => write!(f, ", guest halt polling off"),
            Some(ns) => write!(f, ", guest halt polling up to {} us", ns / 1_000),
            None => Ok(()),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} CPUs ({}), {:.1} GiB, Linux {}",
            self.nproc, self.cpu_model, self.memory_gib, self.kernel
        )?;
        match &self.idle {
            Some(idle) => write!(f, "; {idle}"),
            None => Ok(()),
        }
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
        idle: IdleWait::read(Path::new("/")),
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
    fn idle_wait_reads_the_driver_governor_and_guest_halt_polling() {
        // Removed on drop, also when an assertion fails.
        let scratch = crate::cluster::ScratchDir::new("idle-wait").unwrap();
        let root = scratch.path();
        let put = |p: &str, v: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        assert_eq!(IdleWait::read(root), None, "no sysfs, nothing said");
        put(
            "sys/devices/system/cpu/cpuidle/current_driver",
            "intel_idle\n",
        );
        put(
            "sys/devices/system/cpu/cpuidle/current_governor_ro",
            "menu\n",
        );
        let bare = IdleWait::read(root).unwrap();
        assert_eq!(bare.to_string(), "idle CPUs: intel_idle/menu");
        assert!(!bare.halts_at_once());
        put(
            "sys/devices/system/cpu/cpuidle/current_driver",
            "haltpoll\n",
        );
        put(
            "sys/devices/system/cpu/cpuidle/current_governor",
            "haltpoll\n",
        );
        put("sys/module/haltpoll/parameters/guest_halt_poll_ns", "0\n");
        let off = IdleWait::read(root).unwrap();
        assert_eq!(
            off.to_string(),
            "idle CPUs: haltpoll/haltpoll, guest halt polling off"
        );
        assert!(off.halts_at_once());
        put(
            "sys/module/haltpoll/parameters/guest_halt_poll_ns",
            "400000\n",
        );
        let on = IdleWait::read(root).unwrap();
        assert_eq!(on.guest_halt_poll_ns, Some(400_000));
        assert_eq!(
            on.to_string(),
            "idle CPUs: haltpoll/haltpoll, guest halt polling up to 400 us"
        );
        assert!(!on.halts_at_once());
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
