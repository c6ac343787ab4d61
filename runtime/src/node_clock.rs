//! The node's clock: milliseconds since the node started (what the core's `now` is), and the
//! instant a reading comes due (what a task's timer sleeps until). The node task and every
//! connection task read it here, so under the simulator one host's clock fault
//! ([`crate::sim_hooks`]: a skewed rate) applies to all of them alike.
use pushgate_core::Millis;
use std::time::Duration;
use tokio::time::Instant;

/// Milliseconds since `start` on this host's clock.
pub fn now_ms(start: Instant) -> Millis {
    #[cfg(not(madsim))]
    let elapsed = start.elapsed();
    #[cfg(madsim)]
    let elapsed = crate::sim_hooks::elapsed(start);
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// The instant at which this host's clock reads `at_ms` since `start`.
pub fn instant_at(start: Instant, at_ms: Millis) -> Instant {
    #[cfg(madsim)]
    let at = crate::sim_hooks::instant_at(start, Duration::from_millis(at_ms));
    #[cfg(not(madsim))]
    let at = start + Duration::from_millis(at_ms);
    at
}
