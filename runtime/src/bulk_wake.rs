//! Which lane a phone's wake-up is for: a broadcast's delivery (bulk) or anything else.
//!
//! Why: a broadcast to every phone wakes thousands of connections at once, and a phone group
//! polls its woken phones in the order they were woken. A single push queued behind such a
//! fan-out would wait for every phone the broadcast woke before it; a push server is expected
//! to deliver a transactional push at once, broadcast or not. So the node task wakes a phone
//! for a broadcast frame through [`wake_bulk`], and a phone group keeps those wake-ups on a
//! list of their own, polled after the phones woken for anything else (and given a share of
//! every turn, so a stream of single pushes does not starve a broadcast). Frames to one
//! connection still go out in the order the node queued them: the lane only orders which
//! connections are polled first.
//!
//! A [`std::task::Waker`] carries no argument, so the lane travels beside it: [`wake_bulk`]
//! marks the calling thread for the length of the (synchronous) wake call, and the group's
//! waker reads the mark ([`is_bulk_wake`]). Wakers that are not a group's (a task per phone,
//! the simulator) ignore it: for them both lanes are the tokio scheduler's one queue.
use std::cell::Cell;
use std::task::Waker;

thread_local! {
    /// Set while [`wake_bulk`] is waking a waker on this thread.
    static BULK: Cell<bool> = const { Cell::new(false) };
}

/// Wakes `waker` for bulk work (a broadcast's frame).
pub fn wake_bulk(waker: &Waker) {
    BULK.with(|bulk| bulk.set(true));
    waker.wake_by_ref();
    BULK.with(|bulk| bulk.set(false));
}

/// True inside [`wake_bulk`]'s wake call: the wake-up is for bulk work.
pub fn is_bulk_wake() -> bool {
    BULK.with(Cell::get)
}

/// A waker that counts its wake-ups by lane (for the tests of what wakes on which lane).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct LaneCounts {
    bulk: std::sync::atomic::AtomicUsize,
    other: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl LaneCounts {
    /// Wake-ups on the bulk lane and on the other, so far.
    pub(crate) fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.bulk.load(Relaxed), self.other.load(Relaxed))
    }
}

#[cfg(test)]
impl std::task::Wake for LaneCounts {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        let lane = if is_bulk_wake() {
            &self.bulk
        } else {
            &self.other
        };
        lane.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waker_sees_the_lane_only_inside_a_bulk_wake() {
        let lanes = Arc::new(LaneCounts::default());
        let waker = Waker::from(lanes.clone());
        wake_bulk(&waker);
        waker.wake_by_ref();
        wake_bulk(&waker);
        assert_eq!(lanes.counts(), (2, 1));
        assert!(!is_bulk_wake(), "the mark ends with the wake");
    }
}
