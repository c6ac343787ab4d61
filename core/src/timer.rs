//! The node's timers: an ordered set of (deadline, what), with cancellation.
//!
//! Every owner of a timer (a push's deadline or next step, a store request's deadline, the
//! route repair round) records the deadline it armed, and cancels the entry when it stops
//! wanting it (a push that finished, a store request answered). So the set holds exactly the
//! timers of live work: it never grows with the rate of finished pushes times their timeout. Arming and cancelling are O(log n);
//! entries come due in (deadline, timer) order, the same order whatever else was armed or
//! cancelled in between, so a run is reproducible.
use crate::ids::{Millis, PushId, RequestId};
use std::collections::BTreeSet;

/// What a timer wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A push's overall deadline.
    PushDeadline(PushId),
    /// A push task's next step (after a flow-control delay).
    PushStep(PushId),
    /// A store request's deadline.
    StoreDeadline(RequestId),
    /// Routes whose store write failed are written again.
    RouteRepair,
}

/// The armed timers, earliest first.
#[derive(Debug, Default)]
pub struct TimerQueue {
    entries: BTreeSet<(Millis, Timer)>,
}

impl TimerQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms `timer` at `at_ms`. The same timer may be armed at several deadlines at once only
    /// if its owner tells them apart by deadline; arming one (deadline, timer) twice is a bug.
    pub fn arm(&mut self, at_ms: Millis, timer: Timer) {
        let fresh = self.entries.insert((at_ms, timer));
        debug_assert!(fresh, "{timer:?} armed twice at {at_ms} ms");
    }

    /// Cancels `timer` armed at `at_ms`; false when it was not armed (it fired already).
    pub fn cancel(&mut self, at_ms: Millis, timer: Timer) -> bool {
        self.entries.remove(&(at_ms, timer))
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.entries.first().map(|(at, _)| *at)
    }

    /// Takes the earliest entry due at or before `now_ms`.
    pub fn pop_due(&mut self, now_ms: Millis) -> Option<(Millis, Timer)> {
        match self.entries.first() {
            Some((at, _)) if *at <= now_ms => self.entries.pop_first(),
            _ => None,
        }
    }

    /// Armed timers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every armed timer, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = (Millis, Timer)> + '_ {
        self.entries.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_in_order_and_cancelled_entries_never_come() {
        let mut q = TimerQueue::new();
        q.arm(30, Timer::PushDeadline(PushId(1)));
        q.arm(10, Timer::PushStep(PushId(2)));
        q.arm(20, Timer::StoreDeadline(RequestId(1)));
        q.arm(10, Timer::RouteRepair);
        assert_eq!(q.len(), 4);
        assert!(q.cancel(20, Timer::StoreDeadline(RequestId(1))));
        assert!(!q.cancel(20, Timer::StoreDeadline(RequestId(1))), "once");
        assert!(
            !q.cancel(31, Timer::PushDeadline(PushId(1))),
            "other deadline"
        );
        assert_eq!(q.next_deadline(), Some(10));
        assert_eq!(q.pop_due(9), None);
        assert_eq!(q.pop_due(10), Some((10, Timer::PushStep(PushId(2)))));
        assert_eq!(q.pop_due(10), Some((10, Timer::RouteRepair)));
        assert_eq!(q.pop_due(29), None);
        assert_eq!(q.pop_due(100), Some((30, Timer::PushDeadline(PushId(1)))));
        assert!(q.is_empty());
    }
}
