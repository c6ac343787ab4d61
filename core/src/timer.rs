//! The node's timers: one min-heap of (deadline, what) with lazy cancellation.
//!
//! Entries are never removed early. When one comes due, the node checks that the thing it
//! names still wants waking at that moment (the deadline stored with the connection or push
//! equals the entry's); otherwise the entry is stale and dropped. This keeps arming a timer
//! O(log n) and cancelling free, which matters with a million idle connections.
use crate::ids::{ConnId, Millis, PushId, RequestId};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a timer wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A connection's idle check (or its handshake deadline).
    Idle(ConnId),
    /// A push's overall deadline.
    PushDeadline(PushId),
    /// A push task's next step (after a flow-control delay, or a broadcast's next batch).
    PushStep(PushId),
    /// A store request's deadline.
    StoreDeadline(RequestId),
    /// Routes whose store write failed are written again.
    RouteRepair,
}

/// A min-heap of timers.
#[derive(Debug, Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(Millis, Timer)>>,
}

impl TimerQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms `timer` at `at_ms`.
    pub fn arm(&mut self, at_ms: Millis, timer: Timer) {
        self.heap.push(Reverse((at_ms, timer)));
    }

    /// The earliest deadline (possibly of a stale entry).
    pub fn next_deadline(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the earliest entry due at or before `now_ms`.
    pub fn pop_due(&mut self, now_ms: Millis) -> Option<(Millis, Timer)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now_ms => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
