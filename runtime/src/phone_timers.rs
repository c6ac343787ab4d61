//! The phone and web connections' timers (idle checks and pings, handshake, bind and flush
//! deadlines): one coarse wheel per node instead of a tokio timer per connection.
//!
//! A phone has a timer armed almost all of its life (its next idle check, seconds to minutes
//! away). A tokio `Sleep` per phone costs a boxed timer entry (about 115 heap bytes) per
//! connection; here a phone's timer is one entry `(tick, connection) → its queue` in one ordered
//! map, and one ticker task per node wakes, every [`TICK_MS`], the connections whose tick has
//! come, through their [`PhoneQueue`]. The rules:
//!
//! - a timer fires at the first tick at or after its deadline: up to one tick late, never
//!   early (the deadlines it serves are seconds long; MPush checks them on a one-second wheel);
//! - a connection arms only when its deadline moves earlier than the tick it holds, replacing
//!   its entry; a deadline that moves later (a heartbeat pushes the idle check back) costs
//!   nothing until the held tick fires, and the connection then arms again for the new one;
//! - a connection that ends removes its entry. So the map holds at most one entry per live
//!   connection.
use crate::phone_queue::PhoneQueue;
use pushgate_core::{ConnId, Millis};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::time::Instant;

/// The wheel's resolution: a phone's timer fires within this much after its deadline.
pub const TICK_MS: u64 = 100;

/// The armed timers of a node's phone connections.
#[derive(Debug, Default)]
pub struct PhoneTimers {
    /// `(tick, connection)` → the connection's queue, woken when the tick comes.
    armed: Mutex<BTreeMap<(u64, ConnId), Weak<PhoneQueue>>>,
}

impl PhoneTimers {
    /// No timers armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first tick at or after `at_ms` (never 0: 0 means "no tick").
    pub fn tick_of(at_ms: Millis) -> u64 {
        at_ms.div_ceil(TICK_MS).max(1)
    }

    /// Arms `conn`'s timer for the deadline `at_ms`, given the tick it holds (`held`, 0 for
    /// none); returns the tick it holds after. Only a deadline earlier than the held tick
    /// changes the map.
    pub fn arm(
        &self,
        conn: ConnId,
        queue: &Arc<PhoneQueue>,
        at_ms: Option<Millis>,
        held: u64,
    ) -> u64 {
        let Some(at_ms) = at_ms else {
            return held;
        };
        let tick = Self::tick_of(at_ms);
        if held != 0 && tick >= held {
            return held;
        }
        let mut armed = self.lock();
        if held != 0 {
            armed.remove(&(held, conn));
        }
        armed.insert((tick, conn), Arc::downgrade(queue));
        tick
    }

    /// Removes `conn`'s entry at `held` (the connection ended).
    pub fn disarm(&self, conn: ConnId, held: u64) {
        if held != 0 {
            self.lock().remove(&(held, conn));
        }
    }

    /// Wakes the connection of every entry whose tick has come by `now_ms` (and removes the
    /// entries); returns how many were woken.
    pub fn fire_due(&self, now_ms: Millis) -> usize {
        let now_tick = now_ms / TICK_MS;
        let due = {
            let mut armed = self.lock();
            let later = armed.split_off(&(now_tick + 1, ConnId(0)));
            std::mem::replace(&mut *armed, later)
        };
        let mut woken = 0;
        for ((tick, _), queue) in due {
            if let Some(queue) = queue.upgrade() {
                queue.wake_timer(tick);
                woken += 1;
            }
        }
        woken
    }

    /// Entries armed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ticker: fires the due timers every [`TICK_MS`] of the node's clock (time 0 at
    /// `start`) until the timers are dropped.
    pub async fn run(timers: Weak<PhoneTimers>, start: Instant) {
        let period = std::time::Duration::from_millis(TICK_MS);
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(timers) = timers.upgrade() else {
                return;
            };
            timers.fire_due(crate::node_clock::now_ms(start));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, ConnId), Weak<PhoneQueue>>> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.armed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection's place on the wheel: the tick it holds (none at first). The connection
/// task arms it before each wait, hands it the tick its queue reports fired, and disarms it when
/// the connection ends.
#[derive(Debug, Default)]
pub struct WheelEntry {
    /// The tick of the entry in the map; 0: none.
    tick: u64,
}

impl WheelEntry {
    /// Arms the connection's timer for `at_ms` ([`PhoneTimers::arm`]).
    pub fn arm(
        &mut self,
        timers: &PhoneTimers,
        conn: ConnId,
        queue: &Arc<PhoneQueue>,
        at_ms: Option<Millis>,
    ) {
        self.tick = timers.arm(conn, queue, at_ms, self.tick);
    }

    /// The tick `fired_tick` came (a queue batch's `timer_tick`; 0: none): the time it stands
    /// for, in ms of the node's clock. A deadline at or before it is due then, even while the
    /// clock, read in whole ms, has not reached the deadline (the tick is at or after it). When
    /// it is the held tick, its entry is gone from the map (the wheel took it out), so the next
    /// [`WheelEntry::arm`] arms again.
    pub fn fired(&mut self, fired_tick: u64) -> Option<Millis> {
        if fired_tick == 0 {
            return None;
        }
        if fired_tick == self.tick {
            self.tick = 0;
        }
        Some(fired_tick.saturating_mul(TICK_MS))
    }

    /// Removes the connection's entry (the connection ended).
    pub fn disarm(&mut self, timers: &PhoneTimers, conn: ConnId) {
        timers.disarm(conn, self.tick);
        self.tick = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Arc<PhoneQueue> {
        Arc::new(PhoneQueue::new(16))
    }

    fn timers() -> PhoneTimers {
        PhoneTimers::new()
    }

    #[test]
    fn a_timer_fires_at_the_first_tick_at_or_after_its_deadline_never_before() {
        let timers = timers();
        let q = queue();
        let held = timers.arm(ConnId(1), &q, Some(250), 0);
        assert_eq!(held, 3);
        assert_eq!(timers.fire_due(299), 0, "before the tick");
        assert_eq!(q.take().timer_tick, 0);
        assert_eq!(timers.fire_due(300), 1);
        assert_eq!(q.take().timer_tick, 3, "the queue says which tick fired");
        assert!(timers.is_empty());
    }

    #[test]
    fn an_entry_arms_again_after_its_tick_fired_and_is_gone_once_disarmed() {
        let timers = timers();
        let q = queue();
        let mut entry = WheelEntry::default();
        entry.arm(&timers, ConnId(7), &q, Some(250));
        assert_eq!(entry.fired(0), None, "no tick fired");
        timers.fire_due(300);
        assert_eq!(entry.fired(q.take().timer_tick), Some(300));
        // The wheel took the entry out: the next deadline arms again, even a later one.
        entry.arm(&timers, ConnId(7), &q, Some(900));
        assert_eq!(timers.len(), 1);
        // A tick it no longer holds fires nothing out of the map.
        assert_eq!(entry.fired(2), Some(200));
        assert_eq!(timers.len(), 1);
        entry.disarm(&timers, ConnId(7));
        assert!(timers.is_empty());
    }

    #[test]
    fn a_later_deadline_keeps_the_held_tick_an_earlier_one_replaces_it() {
        let timers = timers();
        let q = queue();
        let held = timers.arm(ConnId(1), &q, Some(1_000), 0);
        assert_eq!(
            timers.arm(ConnId(1), &q, Some(5_000), held),
            held,
            "later: kept"
        );
        assert_eq!(timers.len(), 1);
        let earlier = timers.arm(ConnId(1), &q, Some(400), held);
        assert_eq!(earlier, 4);
        assert_eq!(timers.len(), 1, "one entry per connection");
        assert_eq!(
            timers.arm(ConnId(1), &q, None, earlier),
            earlier,
            "none: kept"
        );
    }

    #[test]
    fn an_ended_connection_leaves_no_entry_and_a_dropped_queue_is_not_woken() {
        let timers = timers();
        let (a, b) = (queue(), queue());
        let held_a = timers.arm(ConnId(1), &a, Some(100), 0);
        timers.arm(ConnId(2), &b, Some(100), 0);
        timers.disarm(ConnId(1), held_a);
        drop(b);
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.fire_due(1_000), 0, "nobody left to wake");
        assert!(timers.is_empty());
    }

    #[test]
    fn the_ticker_wakes_a_waiting_connection_not_before_its_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let timers = Arc::new(timers());
            tokio::spawn(PhoneTimers::run(Arc::downgrade(&timers), Instant::now()));
            let q = queue();
            let held = timers.arm(ConnId(7), &q, Some(350), 0);
            let waiter = q.clone();
            let fired = tokio::spawn(async move {
                std::future::poll_fn(|cx| waiter.poll_ready(cx)).await;
                waiter.take().timer_tick
            });
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert!(!fired.is_finished(), "woken before its deadline");
            let tick = tokio::time::timeout(std::time::Duration::from_secs(10), fired)
                .await
                .expect("woken")
                .expect("waiter");
            assert_eq!(tick, held);
        });
    }
}
