//! The whole machine's CPU time over an interval, from `/proc/stat`: how much
//! of its cores were busy, idle, or taken by the hypervisor (steal).
//!
//! A virtual machine's cores are not always its own: steal is time a virtual
//! core was ready to run but the host ran something else. `pocket bench`
//! reports it per phase, and `pocket limits` counts only the cores the
//! machine was given when it bounds pocket by CPU.

use serde::Serialize;

/// Cumulative CPU ticks of all cores, as `/proc/stat`'s first line counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq
    busy: u64,
    /// idle + iowait
    idle: u64,
    steal: u64,
}

impl CpuTicks {
    /// Now, or None where `/proc/stat` cannot be read or parsed.
    pub fn now() -> Option<CpuTicks> {
        CpuTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Parses the aggregate `cpu` line of `/proc/stat`.
    pub fn parse(stat: &str) -> Option<CpuTicks> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
        if fields.len() < 4 {
            return None;
        }
        // user nice system idle iowait irq softirq steal [guest guest_nice]:
        // guest time is already counted in user and nice.
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        Some(CpuTicks {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3) + field(4),
            steal: field(7),
        })
    }

    /// The split of the cores' time between `self` and a later reading.
    pub fn until(&self, later: &CpuTicks) -> Option<MachineCpu> {
        let busy = later.busy.checked_sub(self.busy)?;
        let idle = later.idle.checked_sub(self.idle)?;
        let steal = later.steal.checked_sub(self.steal)?;
        let total = (busy + idle + steal) as f64;
        if total == 0.0 {
            return None;
        }
        Some(MachineCpu { busy: busy as f64 / total, idle: idle as f64 / total, steal: steal as f64 / total })
    }
}

/// Shares (0–1) of all cores' time over an interval; they add up to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MachineCpu {
    /// Running anything: pocket, the bench client and every other process.
    pub busy: f64,
    /// Idle or waiting for I/O.
    pub idle: f64,
    /// Taken by the hypervisor while a core was ready to run.
    pub steal: f64,
}

impl MachineCpu {
    /// The share of the cores the machine was given (not stolen).
    pub fn given(&self) -> f64 {
        1.0 - self.steal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_A: &str = "cpu  100 5 50 800 20 3 2 20 0 0\ncpu0 50 2 25 400 10 1 1 10 0 0\nintr 1\n";
    const STAT_B: &str = "cpu  160 5 90 900 40 5 10 220 7 0\ncpu0 80 2 45 450 20 2 5 110 3 0\nintr 2\n";

    #[test]
    fn shares_of_an_interval_come_from_the_aggregate_line() {
        let a = CpuTicks::parse(STAT_A).expect("parses");
        let b = CpuTicks::parse(STAT_B).expect("parses");
        let cpu = a.until(&b).expect("an interval");
        // busy: 60 user + 40 system + 2 irq + 8 softirq = 110; idle: 100 + 20; steal: 200.
        let total = 110.0 + 120.0 + 200.0;
        assert!((cpu.busy - 110.0 / total).abs() < 1e-12, "{cpu:?}");
        assert!((cpu.idle - 120.0 / total).abs() < 1e-12, "{cpu:?}");
        assert!((cpu.steal - 200.0 / total).abs() < 1e-12, "{cpu:?}");
        assert!((cpu.given() - 230.0 / total).abs() < 1e-12, "{cpu:?}");
    }

    #[test]
    fn no_interval_from_garbage_an_empty_span_or_a_counter_going_back() {
        assert_eq!(CpuTicks::parse("intr 1\n"), None);
        assert_eq!(CpuTicks::parse("cpu  1 2 x 4\n"), None);
        assert_eq!(CpuTicks::parse("cpu  1 2\n"), None);
        let a = CpuTicks::parse(STAT_A).expect("parses");
        let b = CpuTicks::parse(STAT_B).expect("parses");
        assert_eq!(a.until(&a), None);
        assert_eq!(b.until(&a), None);
    }

    #[test]
    fn this_machine_reports_its_cpu_on_linux() {
        if cfg!(target_os = "linux") {
            let a = CpuTicks::now().expect("/proc/stat parses on Linux");
            let b = CpuTicks::now().expect("/proc/stat parses on Linux");
            assert!(b.busy >= a.busy && b.idle >= a.idle && b.steal >= a.steal, "{a:?} then {b:?}");
        }
    }
}
