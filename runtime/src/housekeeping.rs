//! The node task's housekeeping, every [`HOUSEKEEPING_INTERVAL_MS`]: the tables a crowd left
//! behind give back their capacity (the core's [`pushgate_core::spare`] rules: the node's
//! connection, route, push and ACK tables, the driver's phone and gateway maps, the embedded
//! store's sessions), the embedded store forgets expired sessions now and then, the allocator
//! hands freed pages back to the OS ([`release_freed_memory`]), and the memory gauges are
//! published: what the embedded store holds (`pushgate_store_sessions`,
//! `pushgate_store_routes`, `pushgate_store_bytes`) and the process's resident memory
//! (`process_resident_memory_bytes`).
//!
//! Why: after a reconnect storm or a churn of 10,000 phones the node's tables keep their
//! peak capacity and the allocator keeps the pages they freed; without this, resident memory
//! stays at the peak for good, and nobody can tell the store's reusable sessions (kept a day,
//! as in MPush) from memory held for nothing. The churn soak (`bench/soak.sh`) judges
//! resident memory round after round against what the store reports.
use pushgate_core::Millis;

/// The allocator's "hand freed pages back to the OS now" (set by the binary, which chose the
/// allocator; unset, as in tests and the simulator, nothing is done).
static RELEASE_FREED_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what [`release_freed_memory`] calls (once; later calls are ignored).
pub fn set_release_freed_memory(release: fn()) {
    let _ = RELEASE_FREED_MEMORY.set(release);
}

/// Asks the allocator to hand the pages freed since the last round back to the OS.
pub fn release_freed_memory() {
    if let Some(release) = RELEASE_FREED_MEMORY.get() {
        release();
    }
}

/// How often the node task does its housekeeping.
pub const HOUSEKEEPING_INTERVAL_MS: Millis = 10_000;

/// How often the embedded store walks its sessions to forget the expired ones (a walk of
/// every session: about 10 ns each, so a few ms for a million; sessions live a day, and one
/// read after expiry forgets a session as well).
pub const SESSION_SWEEP_INTERVAL_MS: Millis = 600_000;

/// When the next housekeeping and the next session sweep are due (node clock, ms).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    next_ms: Millis,
    next_sweep_ms: Millis,
}

/// What one housekeeping round is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// The embedded store also forgets expired sessions this round.
    pub sweep_sessions: bool,
}

impl Schedule {
    /// The first round one interval after `now_ms`.
    pub fn new(now_ms: Millis) -> Self {
        Self {
            next_ms: now_ms.saturating_add(HOUSEKEEPING_INTERVAL_MS),
            next_sweep_ms: now_ms.saturating_add(SESSION_SWEEP_INTERVAL_MS),
        }
    }

    /// The round due at `now_ms`, if one is; the next is then one interval later.
    pub fn due(&mut self, now_ms: Millis) -> Option<Round> {
        if now_ms < self.next_ms {
            return None;
        }
        self.next_ms = now_ms.saturating_add(HOUSEKEEPING_INTERVAL_MS);
        let sweep_sessions = now_ms >= self.next_sweep_ms;
        if sweep_sessions {
            self.next_sweep_ms = now_ms.saturating_add(SESSION_SWEEP_INTERVAL_MS);
        }
        Some(Round { sweep_sessions })
    }
}

/// This process's resident memory in bytes (`VmRSS` of `/proc/self/status`); `None` where
/// there is no such file.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_come_every_interval_and_sweeps_every_sweep_interval() {
        let mut schedule = Schedule::new(0);
        assert_eq!(schedule.due(HOUSEKEEPING_INTERVAL_MS - 1), None);
        assert_eq!(
            schedule.due(HOUSEKEEPING_INTERVAL_MS),
            Some(Round {
                sweep_sessions: false
            })
        );
        assert_eq!(schedule.due(HOUSEKEEPING_INTERVAL_MS + 1), None);
        let mut sweeps = 0;
        let mut rounds = 0;
        let mut now = HOUSEKEEPING_INTERVAL_MS;
        while now < 2 * SESSION_SWEEP_INTERVAL_MS {
            now += 1_000;
            if let Some(round) = schedule.due(now) {
                rounds += 1;
                sweeps += usize::from(round.sweep_sessions);
            }
        }
        assert_eq!(sweeps, 2);
        assert!((118..=120).contains(&rounds), "{rounds}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn resident_memory_is_read() {
        let bytes = resident_bytes().expect("VmRSS");
        assert!(bytes > 1024 * 1024, "{bytes}");
    }
}
