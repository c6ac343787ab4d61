//! Flow control (reference §13.2): a fixed-window rate limiter that answers "go" or "retry in N
//! ms", with an optional cap on the total.
//!
//! One instance limits all single-user pushes of a node (MPush's GlobalFlowControl, default
//! 5000 per second, no cap); each broadcast gets its own (FastFlowControl, 3000 per second, cap
//! 100,000; or, for a broadcast with a task id, a limit read from the store).
//!
//! Semantics: at most `limit` sends start in each window of `window_ms`; the window restarts at
//! the first send after it elapsed. MPush lets `limit - 1` through per window (it compares the
//! incremented count with `<`); pushgate lets exactly `limit` through.
use crate::ids::Millis;

/// The answer to "may I send one more now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowDecision {
    /// Send now; the send has been counted.
    Go,
    /// Over the limit: try again after this many ms (the rest of the window).
    RetryInMs(u64),
    /// The total cap is reached: stop for good.
    Exhausted,
}

/// A fixed-window limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowControl {
    limit_per_window: u64,
    window_ms: u64,
    /// 0 = no cap on the total.
    max_total: u64,
    window_start_ms: Millis,
    in_window: u64,
    total: u64,
    /// How many times a caller was told to wait (for metrics).
    delays: u64,
}

impl FlowControl {
    /// `limit_per_window` sends per `window_ms`; `max_total` 0 means unlimited. A limit of 0
    /// means "no rate limit".
    pub fn new(limit_per_window: u64, window_ms: u64, max_total: u64) -> Self {
        Self {
            limit_per_window,
            window_ms: window_ms.max(1),
            max_total,
            window_start_ms: 0,
            in_window: 0,
            total: 0,
            delays: 0,
        }
    }

    /// Asks to send one message at `now_ms`; counts it on [`FlowDecision::Go`].
    pub fn check(&mut self, now_ms: Millis) -> FlowDecision {
        if self.max_total > 0 && self.total >= self.max_total {
            return FlowDecision::Exhausted;
        }
        if self.in_window == 0 || now_ms >= self.window_start_ms.saturating_add(self.window_ms) {
            self.window_start_ms = now_ms;
            self.in_window = 0;
        }
        if self.limit_per_window > 0 && self.in_window >= self.limit_per_window {
            self.delays += 1;
            let window_end = self.window_start_ms.saturating_add(self.window_ms);
            return FlowDecision::RetryInMs(window_end.saturating_sub(now_ms).max(1));
        }
        self.in_window += 1;
        self.total += 1;
        FlowDecision::Go
    }

    /// Changes the per-window limit (a task-id broadcast re-reads it from the store).
    pub fn set_limit(&mut self, limit_per_window: u64) {
        self.limit_per_window = limit_per_window;
    }

    /// The per-window limit.
    pub fn limit(&self) -> u64 {
        self.limit_per_window
    }

    /// Sends counted so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Times a caller was told to wait.
    pub fn delays(&self) -> u64 {
        self.delays
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_per_window_then_retry_after_the_rest_of_the_window() {
        let mut flow = FlowControl::new(3, 1000, 0);
        for _ in 0..3 {
            assert_eq!(flow.check(100), FlowDecision::Go);
        }
        assert_eq!(flow.check(400), FlowDecision::RetryInMs(700));
        assert_eq!(flow.check(1099), FlowDecision::RetryInMs(1));
        assert_eq!(flow.check(1100), FlowDecision::Go, "a new window starts");
        assert_eq!(flow.total(), 4);
        assert_eq!(flow.delays(), 2);
    }

    #[test]
    fn total_cap_exhausts() {
        let mut flow = FlowControl::new(10, 1000, 2);
        assert_eq!(flow.check(0), FlowDecision::Go);
        assert_eq!(flow.check(0), FlowDecision::Go);
        assert_eq!(flow.check(5000), FlowDecision::Exhausted);
    }

    #[test]
    fn zero_limit_means_unlimited() {
        let mut flow = FlowControl::new(0, 1000, 0);
        for _ in 0..10_000 {
            assert_eq!(flow.check(0), FlowDecision::Go);
        }
    }
}
