//! What /proc says about one known process: whether a pid is still the
//! process we started (its start time), its memory and its CPU time. Only
//! reads; never signals anything.

use serde::Serialize;

/// The fields of `/proc/PID/stat` we use.
struct Stat {
    /// Field 3: `R`, `S`, `Z`, ...
    state: char,
    /// Fields 14 and 15, in clock ticks.
    utime: u64,
    stime: u64,
    /// Field 22: clock ticks since boot.
    start_time: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) is in parentheses and may contain anything, so split
    // after the last ')'; fields from 3 on are then space-separated.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

/// The start time of a live process (`None` if it is gone or a zombie).
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid)
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .map(|s| s.start_time)
}

/// True if `pid` is still the very process that had `start`: never signal
/// a pid without this check, the number may have been reused.
pub fn is_same_process(pid: i32, start: u64) -> bool {
    start_time(pid) == Some(start)
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
    let s = stat(pid)?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ns_per_tick = 1_000_000_000 / tck;
    let sched_ns = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(CpuTime {
        sched_ns,
        user_ns: s.utime * ns_per_tick,
        system_ns: s.stime * ns_per_tick,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own /proc/PID/stat");
        assert!(is_same_process(me, t));
        assert!(!is_same_process(me, t + 1));
        assert_eq!(start_time(-1), None);
        let m = memory(me).expect("status");
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        assert!(cpu_time(me).is_some());
    }
}
