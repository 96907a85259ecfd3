//! CPU time of the server and of the benchmark itself over a workload: whether the two cores were
//! the limit (busy all the time) or something waited (cores idle). And the machine's time waiting
//! for the disk (iowait) or taken by the VM's host (steal), which tell why a run was slow.

use std::time::Instant;

/// CPU seconds used so far by process `pid` ("self" for this one), all threads, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses; utime and stime
    // are fields 14 and 15 of the line, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

fn server_seconds(pids: &[String]) -> f64 {
    pids.iter().map(|pid| cpu_seconds(pid)).sum()
}

/// CPU seconds used so far by every process named `name` (PostgreSQL's server and backends: a
/// backend that ended meanwhile is not counted).
pub fn cpu_seconds_named(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    let wanted = format!("({name})");
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.split_whitespace().nth(1) == Some(wanted.as_str())
        })
        .map(|pid| cpu_seconds(&pid))
        .sum()
}

/// Seconds all cores together spent waiting for the disk and stolen by the host so far, from the
/// `cpu` line of /proc/stat (fields 5 and 8, in clock ticks).
fn machine_waits() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let seconds =
        |i: usize| fields.get(i).copied().unwrap_or(0) as f64 / rustix::param::clock_ticks_per_second() as f64;
    (seconds(4), seconds(7))
}

/// Where a workload started: wall clock, both sides' CPU time and the machine's waits.
pub struct CpuMark {
    /// The server's processes (one per node).
    server_pids: Vec<String>,
    at: Instant,
    server: f64,
    client: f64,
    waits: (f64, f64),
}

/// What a workload used: CPU seconds of each side, and the cores busy on average; and the seconds
/// the machine's cores waited for the disk or were taken by the host meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub server_s: f64,
    pub client_s: f64,
    pub cores_busy: f64,
    pub iowait_s: f64,
    pub stolen_s: f64,
}

impl CpuMark {
    pub fn now(server_pid: u32) -> Self {
        Self::of_all(&[server_pid])
    }

    /// A mark of a server that runs as the processes `server_pids` (its nodes).
    pub fn of_all(server_pids: &[u32]) -> Self {
        let server_pids: Vec<String> = server_pids.iter().map(u32::to_string).collect();
        let (server, client, waits) = (server_seconds(&server_pids), cpu_seconds("self"), machine_waits());
        Self { server, client, waits, at: Instant::now(), server_pids }
    }

    pub fn used(&self) -> CpuUse {
        let wall = self.at.elapsed().as_secs_f64();
        let server_s = server_seconds(&self.server_pids) - self.server;
        let client_s = cpu_seconds("self") - self.client;
        let (iowait, stolen) = machine_waits();
        CpuUse {
            server_s,
            client_s,
            cores_busy: (server_s + client_s) / wall,
            iowait_s: iowait - self.waits.0,
            stolen_s: stolen - self.waits.1,
        }
    }
}
