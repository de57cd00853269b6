//! What `/proc` says of processes and of the machine: resident memory, CPU
//! time, who runs, and how busy the cores were over a measurement.

use std::time::Instant;

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user and system) a process has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf only reads a constant of the system.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Processes whose command line has `word` (the JVM's `comm` is `java`).
pub fn pids_running(word: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == word.as_bytes()))
        })
        .collect()
}

/// The processes whose command name is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// The machine's CPU time so far, in clock ticks: (busy, idle, stolen by
/// the hypervisor), from the first line of `/proc/stat`.
pub fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    (busy, field(3) + field(4), field(7))
}

/// What each process of the pipeline used of the CPU over the measurement,
/// and what the machine as a whole did (busy, idle, stolen), so that a run
/// shows how busy the shared cores were.
pub struct CpuShares {
    parts: Vec<(&'static str, Vec<u32>, f64)>,
    machine: (u64, u64, u64),
    started: Instant,
}

impl CpuShares {
    pub fn start(parts: Vec<(&'static str, Vec<u32>)>) -> CpuShares {
        let parts = parts
            .into_iter()
            .map(|(name, pids)| {
                let used = pids.iter().map(|&p| cpu_secs(p)).sum();
                (name, pids, used)
            })
            .collect();
        CpuShares { parts, machine: machine_ticks(), started: Instant::now() }
    }

    /// Each part's share of one core since `start`, in percent.
    pub fn finish(&self) -> String {
        let wall = self.started.elapsed().as_secs_f64();
        let shares: Vec<String> = self
            .parts
            .iter()
            .map(|(name, pids, before)| {
                let used: f64 = pids.iter().map(|&p| cpu_secs(p)).sum();
                format!("{name} {:.0} %", (used - before) * 100.0 / wall)
            })
            .collect();
        let (busy, idle, steal) = machine_ticks();
        let (busy, idle, steal) = (busy - self.machine.0, idle - self.machine.1, steal - self.machine.2);
        let all = (busy + idle + steal).max(1) as f64;
        format!(
            "CPU over the measurement (100 % = one core): {}; the machine: busy {:.0} %, idle {:.0} %, stolen by the host {:.0} % (of all cores)",
            shares.join(", "),
            busy as f64 * 100.0 / all,
            idle as f64 * 100.0 / all,
            steal as f64 * 100.0 / all
        )
    }
}

/// Context switches of every thread of a process so far (voluntary and
/// not): each is a wakeup or a preemption, so their rate shows timers and
/// polling loops that CPU time alone rounds away.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .map(|task| {
            std::fs::read_to_string(task.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// CPU time of a process's threads whose name starts with `prefix`, in
/// seconds (the scheduler's count, `/proc/<pid>/task/<tid>/schedstat`).
pub fn threads_cpu_secs(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks
        .flatten()
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|name| name.starts_with(prefix)))
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum::<u64>() as f64
        / 1e9
}
