//! What the server and the load generator cost: the server's resident memory (`VmRSS` of
//! `/proc/<pid>/status`) and CPU time (`utime + stime` of `/proc/<pid>/stat`, all threads),
//! and the generator's own CPU time (`getrusage(RUSAGE_SELF)`).
//!
//! Both CPU figures are turned into a utilisation of one core over a measurement window: the
//! generator runs on one core, so a generator near 100 % means the load, not the server, may
//! be what limits a figure, and the report says so.
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// The server's resident set size in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("{path} has no VmRSS line"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: unreadable {line:?}"))?;
    Ok(kib * 1024)
}

/// CPU time (user + system) a process has used, in ns.
pub fn process_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after
    // its closing parenthesis, where field 3 (state) comes first.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {n} missing"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(ticks.saturating_mul(1_000_000_000) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// CPU time (user + system) this process has used, in ns.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0;
        }
        usage
    };
    let ns = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_usec).unwrap_or(0) * 1_000
    };
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// CPU time all CPUs spent busy (not idle, not waiting for I/O) since boot, in ns, from
/// `/proc/stat`.
pub fn system_busy_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle).saturating_mul(1_000_000_000) / clock_ticks_per_second())
}

/// Utilisation over a window, in percent of one core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    pub server_pct: f64,
    pub generator_pct: f64,
    /// Everything else on the machine (other processes, interrupts): a benchmark is only
    /// clean when this is near 0.
    #[serde(default)]
    pub other_pct: f64,
}

/// The CPU clocks at the start of a window.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    server_ns: Option<u64>,
    generator_ns: u64,
    system_ns: Option<u64>,
}

impl CpuMark {
    /// Reads both clocks now (`server_pid` `None`: the server's side is reported as 0).
    pub fn now(server_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            server_ns: server_pid.and_then(|pid| process_cpu_ns(pid).ok()),
            generator_ns: self_cpu_ns(),
            system_ns: system_busy_ns(),
        }
    }

    /// Utilisation since this mark.
    pub fn since(&self, server_pid: Option<u32>) -> CpuUse {
        let wall_ns = self.at.elapsed().as_nanos().max(1) as f64;
        let server = match (
            self.server_ns,
            server_pid.and_then(|p| process_cpu_ns(p).ok()),
        ) {
            (Some(before), Some(after)) => after.saturating_sub(before) as f64,
            _ => 0.0,
        };
        let generator = self_cpu_ns().saturating_sub(self.generator_ns) as f64;
        let system = match (self.system_ns, system_busy_ns()) {
            (Some(before), Some(after)) => after.saturating_sub(before) as f64,
            _ => 0.0,
        };
        CpuUse {
            server_pct: 100.0 * server / wall_ns,
            generator_pct: 100.0 * generator / wall_ns,
            other_pct: (100.0 * (system - server - generator) / wall_ns).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        process_cpu_ns(pid).unwrap();
        let mark = CpuMark::now(Some(pid));
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let used = mark.since(Some(pid));
        assert!(used.generator_pct >= 0.0 && used.server_pct >= 0.0);
        assert!(rss_bytes(u32::MAX).is_err());
    }
}

/// The TCP counters of the reconnect storm, as `nstat` names them.
pub const STORM_COUNTERS: [&str; 3] = [
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPSynRetrans",
];

/// The kernel's `TcpExt` counters (`/proc/net/netstat`), named as `nstat` names them
/// (`TcpExtListenOverflows`, ...).
pub fn tcp_ext_counters() -> anyhow::Result<BTreeMap<String, u64>> {
    let path = "/proc/net/netstat";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(parse_netstat(&text))
}

/// Parses `/proc/net/netstat`: pairs of lines, `Section: name name ...` then
/// `Section: value value ...`.
fn parse_netstat(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((section, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse() {
                out.insert(format!("{section}{name}"), value);
            }
        }
    }
    out
}

/// How much each of `names` grew from `before` to `after`.
pub fn counter_growth(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    names: &[&str],
) -> BTreeMap<String, u64> {
    names
        .iter()
        .filter_map(|name| {
            let (b, a) = (before.get(*name)?, after.get(*name)?);
            Some(((*name).to_owned(), a.saturating_sub(*b)))
        })
        .collect()
}

#[cfg(test)]
mod netstat_tests {
    use super::*;

    #[test]
    fn netstat_counters_by_nstat_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 12 14\n\
                    IpExt: InNoRoutes\nIpExt: 3\n";
        let before = parse_netstat(text);
        assert_eq!(before.get("TcpExtListenOverflows"), Some(&12));
        assert_eq!(before.get("IpExtInNoRoutes"), Some(&3));
        let mut after = before.clone();
        after.insert("TcpExtListenOverflows".into(), 20);
        let growth = counter_growth(
            &before,
            &after,
            &["TcpExtListenOverflows", "TcpExtListenDrops", "Missing"],
        );
        assert_eq!(growth.get("TcpExtListenOverflows"), Some(&8));
        assert_eq!(growth.get("TcpExtListenDrops"), Some(&0));
        assert_eq!(growth.len(), 2);
    }
}
