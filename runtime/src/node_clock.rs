//! The node's clock: milliseconds since the node started (what the core's `now` is), and the
//! instant a reading comes due (what a task's timer sleeps until). The node task and every
//! connection task read it here, so under the simulator one host's clock fault
//! (`crate::sim_hooks`, built under the simulator only: a skewed rate) applies to all of them
//! alike. The wall clock (the versions' time base) is read here too, NTP-disciplined in
//! production and off by the host's bounded offset under the simulator.
use pushgate_core::Millis;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

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

/// Points a task's timer at `at` (none: no timer), re-arming the one it holds instead of
/// registering another: a deadline that stays costs nothing.
pub fn set_timer(timer: &mut Option<Pin<Box<Sleep>>>, at: Option<Instant>) {
    match (at, timer.as_mut()) {
        (None, _) => *timer = None,
        (Some(at), Some(sleep)) if sleep.deadline() == at => {}
        (Some(at), Some(sleep)) => sleep.as_mut().reset(at),
        (Some(at), None) => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

/// Resolves when `timer` fires; never while there is none.
pub async fn timer_fired(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// How often the node task re-reads the wall clock (`Node::follow_wall_clock`): between two
/// readings its wall-clock time runs on the monotonic clock, at that clock's rate.
pub const WALL_CLOCK_READ_INTERVAL_MS: Millis = 1_000;

/// The wall-clock time in ms since the Unix epoch (0 before it).
pub fn wall_epoch_ms() -> i64 {
    let epoch_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    #[cfg(madsim)]
    let epoch_ms = epoch_ms.saturating_add(crate::sim_hooks::wall_offset_ms());
    epoch_ms
}
