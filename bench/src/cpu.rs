//! What each process of the stack spent: CPU seconds (utime + stime from `/proc/<pid>/stat`)
//! and resident memory (`VmRSS` from `/proc/<pid>/status`). Read without unsafe code, so the
//! clock tick comes from the caller (`getconf CLK_TCK`, 100 on Linux in practice).

use std::collections::BTreeMap;

/// A process of the stack under test, by the name the report uses.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// CPU seconds the process has used so far, or `None` if it is gone.
pub fn cpu_seconds(pid: u32, clock_ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after the last ')' are fixed:
    // state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks)
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit on open files of a process (`/proc/<pid>/limits`).
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// How many files (sockets included) the process has open now.
pub fn open_files(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// CPU seconds per watched process between `start` and `stop`.
pub struct CpuMeter {
    clock_ticks: f64,
    start: Vec<(Watched, Option<f64>)>,
}

impl CpuMeter {
    pub fn start(processes: &[Watched], clock_ticks: f64) -> Self {
        let start = processes.iter().map(|p| (p.clone(), cpu_seconds(p.pid, clock_ticks))).collect();
        Self { clock_ticks, start }
    }

    pub fn stop(self) -> BTreeMap<String, f64> {
        let mut spent = BTreeMap::new();
        for (process, before) in self.start {
            if let (Some(before), Some(after)) = (before, cpu_seconds(process.pid, self.clock_ticks)) {
                spent.insert(process.name, ((after - before) * 100.0).round() / 100.0);
            }
        }
        spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me, 100.0).is_some());
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        assert!(open_files_limit(me).is_some_and(|n| n > 0));
        assert!(open_files(me).is_some_and(|n| n > 0));
    }
}
