//! Fault points the simulator flips (compiled only with `--cfg madsim`).
//!
//! - **Slow readers**: a phone whose address is stalled stops taking bytes, as a phone that
//!   stops reading fills its TCP window: its connection task writes nothing to it (the bytes
//!   its `PhoneConn` sealed pile up, so the high-water mark and the hard limit are reached as
//!   they would be in production), and reads from it go on. The simulated network has no send buffer to
//!   fill, so this is the only way to reach those rules there.
//! - **Skewed clocks**: a node's clock may run fast or slow (its timers — heartbeat and idle
//!   checks, push deadlines, flow windows, repair rounds, store timeouts — fire early or late
//!   by that rate) and its wall clock may be off by a bounded offset (NTP-like), so the bind
//!   versions it stamps are off too. The node task and its connection tasks read their clock
//!   through [`elapsed`] and turn deadlines into instants through [`instant_at`]; the server
//!   adds [`wall_offset_ms`] to every wall-clock reading (`node_clock::wall_epoch_ms`).
//!
//! The state is per thread: madsim runs one world per thread.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::task::{Context, Waker};
use std::time::Duration;
use tokio::madsim::task::NodeId;
use tokio::time::Instant;

/// One host's clock fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSkew {
    /// How fast the host's clock runs, in parts per million off the true rate (+20,000: 2 %
    /// fast, its timers fire 2 % early).
    pub rate_ppm: i64,
    /// How far its wall clock is off the true time at start, in ms (+: ahead).
    pub offset_ms: i64,
}

thread_local! {
    /// Stalled peers, and the connection tasks waiting for them to read again.
    static STALLED: RefCell<BTreeMap<IpAddr, Vec<Waker>>> = const { RefCell::new(BTreeMap::new()) };
    /// Skewed clocks, by host.
    static CLOCKS: RefCell<BTreeMap<NodeId, ClockSkew>> = const { RefCell::new(BTreeMap::new()) };
}

/// Gives `host` a skewed clock (from the next time its tasks read it).
pub fn set_clock_skew(host: NodeId, skew: ClockSkew) {
    CLOCKS.with(|c| c.borrow_mut().insert(host, skew));
}

/// The clock fault of the host the calling task runs on.
fn current_skew() -> Option<ClockSkew> {
    let host = tokio::madsim::plugin::node();
    CLOCKS.with(|c| c.borrow().get(&host).copied())
}

/// The time since `start` on this host's clock.
pub fn elapsed(start: Instant) -> Duration {
    let real = start.elapsed();
    match current_skew() {
        Some(skew) => scale(real, 1_000_000 + skew.rate_ppm, 1_000_000, false),
        None => real,
    }
}

/// The first instant at which this host's clock reads at least `start + after` (rounded up, so
/// a timer due then is due when it wakes).
pub fn instant_at(start: Instant, after: Duration) -> Instant {
    match current_skew() {
        Some(skew) => start + scale(after, 1_000_000, 1_000_000 + skew.rate_ppm, true),
        None => start + after,
    }
}

/// How far this host's wall clock is ahead of the true time, in ms.
pub fn wall_offset_ms() -> i64 {
    current_skew().map_or(0, |skew| skew.offset_ms)
}

/// `d × num / den` in ns, rounded down or up (rates stay within a few percent, so it never
/// overflows).
fn scale(d: Duration, num: i64, den: i64, round_up: bool) -> Duration {
    let ns = i128::try_from(d.as_nanos()).unwrap_or(i128::MAX);
    let (num, den) = (i128::from(num.max(1)), i128::from(den.max(1)));
    let product = ns.saturating_mul(num);
    let scaled = if round_up {
        (product + den - 1) / den
    } else {
        product / den
    };
    Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// Stalls (or lets read again) the phone at `peer`.
pub fn set_stalled(peer: IpAddr, stalled: bool) {
    let wakers = STALLED.with(|s| {
        let mut s = s.borrow_mut();
        if stalled {
            s.entry(peer).or_default();
            Vec::new()
        } else {
            s.remove(&peer).unwrap_or_default()
        }
    });
    for waker in wakers {
        waker.wake();
    }
}

/// Whether writes to `peer` must wait; when they must, the task of `cx` is woken when the
/// stall ends.
pub fn poll_stalled(peer: Option<IpAddr>, cx: &mut Context<'_>) -> bool {
    let Some(peer) = peer else { return false };
    STALLED.with(|s| match s.borrow_mut().get_mut(&peer) {
        Some(wakers) => {
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            true
        }
        None => false,
    })
}

/// Forgets every stall and skewed clock (a new world on this thread).
pub fn reset() {
    STALLED.with(|s| s.borrow_mut().clear());
    CLOCKS.with(|c| c.borrow_mut().clear());
}
