//! Fault points the simulator flips (compiled only with `--cfg madsim`).
//!
//! - **Slow readers**: a phone whose address is stalled stops taking bytes, as a phone that
//!   stops reading fills its TCP window: its connection task writes nothing to it (the bytes
//!   its `PhoneConn` sealed pile up, so the high-water mark and the hard limit are reached as
//!   they would be in production), and reads from it go on. The simulated network has no send buffer to
//!   fill, so this is the only way to reach those rules there.
//!
//! The state is per thread: madsim runs one world per thread.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::task::{Context, Waker};

thread_local! {
    /// Stalled peers, and the connection tasks waiting for them to read again.
    static STALLED: RefCell<BTreeMap<IpAddr, Vec<Waker>>> = const { RefCell::new(BTreeMap::new()) };
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

/// Forgets every stall (a new world on this thread).
pub fn reset() {
    STALLED.with(|s| s.borrow_mut().clear());
}
