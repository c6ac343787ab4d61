//! The bookkeeping shared by the sending side and every receiving connection of one target:
//! which messages are in flight, when each was (meant to be) sent, and the latency
//! histograms of the current measurement point.
//!
//! Every receiving connection calls [`Tracker::on_delivery`] with the payload it got (the
//! stamp in it names the point and the message); the PushClient side calls
//! [`Tracker::on_status`]. A message counts as in flight from [`Tracker::sent`] until
//! the phone has it and, for pushgate, its status has come back to the PushClient too (a
//! status that is not a success completes it without a delivery). The window logic of the
//! closed loop reads [`Tracker::in_flight`] and sleeps on [`Tracker::progress`], so it is the
//! same for every target.
//!
//! Latencies are recorded for messages whose send time lies in the measurement window
//! (warm-up and drain excluded); throughput counts deliveries received inside the window.
//!
//! A single-push point may run broadcasts in the background (the interference point): their
//! stamps carry the point's id and a sequence number with [`BACKGROUND_SEQ`] set; they are
//! counted apart ([`Tracker::background_in_flight`], [`Counts::background`]) and never mix
//! with the single pushes' counts or latencies.
use crate::latency::{Latency, LatencySummary};
use crate::payload::{now_ns, Stamp};
use crate::pushgate_target::ServerTimes;
use pushgate_core::status::PushStatus;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

/// The measurement window of a point, in ns since the payload epoch: `[from_ns, to_ns)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_ns: u64,
    pub to_ns: u64,
}

impl Window {
    fn contains(&self, ns: u64) -> bool {
        (self.from_ns..self.to_ns).contains(&ns)
    }
}

/// Set in the sequence number of a background broadcast's stamp.
pub const BACKGROUND_SEQ: u32 = 1 << 31;

/// How a status came back (or did not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Status(PushStatus),
    /// The client failed (closed connection, unreadable answer).
    ClientError(String),
}

impl Outcome {
    fn is_success(&self) -> bool {
        matches!(self, Outcome::Status(s) if s.is_success())
    }

    fn name(&self) -> String {
        match self {
            Outcome::Status(s) => s.name().to_owned(),
            Outcome::ClientError(_) => "client-error".to_owned(),
        }
    }
}

/// What a finished point counted.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Messages (single) or broadcasts (fan-out) sent.
    pub sent: u64,
    /// Deliveries received (all, and inside the measurement window).
    pub delivered: u64,
    pub delivered_in_window: u64,
    /// Time of the last delivery inside the window (ns since the epoch), 0 if none.
    pub last_in_window_ns: u64,
    /// Single: messages never delivered (status success but no delivery, or no status and no
    /// delivery before the drain ended). Fan-out: deliveries missing from broadcasts.
    pub lost: u64,
    /// Broadcasts not complete when the drain ended (fan-out only).
    pub incomplete: u64,
    /// Deliveries of a message already delivered or not known (for single pushes), or beyond
    /// N for a broadcast.
    pub unexpected: u64,
    /// Payloads of an earlier point, or unreadable.
    pub stale: u64,
    /// Statuses by name ("success", "ack-success", "offline", ..., "client-error").
    pub statuses: BTreeMap<String, u64>,
    /// The first client error text, if any.
    pub first_error: Option<String>,
    pub delivery: LatencySummary,
    pub status: LatencySummary,
    /// Single pushes: the server's own time per status, from its time line
    /// ([`Tracker::on_server_time`]).
    pub server_status: LatencySummary,
    /// Single pushes: the rest of each status's time, before the node took the push in and
    /// after it answered ([`crate::pushgate_target::ServerTimes`]).
    pub before_server: LatencySummary,
    pub after_server: LatencySummary,
    /// Fan-out: time until the last of the N phones had a broadcast.
    pub last_delivery: LatencySummary,
    /// The background broadcasts of a single-push point, if it ran any.
    pub background: Option<BackgroundCounts>,
}

/// What the background broadcasts of a single-push point did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackgroundCounts {
    pub sent: u64,
    /// Broadcasts every phone had (and, where the target answers, whose status came back).
    pub completed: u64,
    /// Deliveries received, all and inside the measurement window.
    pub delivered: u64,
    pub delivered_in_window: u64,
}

/// Background broadcasts in flight and what they counted.
#[derive(Default)]
struct Background {
    phones: usize,
    casts: HashMap<u32, Cast>,
    counts: BackgroundCounts,
}

struct Slot {
    sent_ns: u64,
    delivered: bool,
    answered: bool,
}

struct Cast {
    sent_ns: u64,
    remaining: usize,
    answered: bool,
}

enum Work {
    Nothing,
    Single {
        slots: HashMap<u32, Slot>,
        /// Broadcasts to this many phones run beside the single pushes (interference).
        background: Option<Background>,
    },
    Fanout {
        phones: usize,
        casts: HashMap<u32, Cast>,
        last: Latency,
    },
}

struct State {
    point_id: u32,
    needs_status: bool,
    window: Window,
    work: Work,
    counts: Counts,
    delivery: Latency,
    status: Latency,
    server_status: Latency,
    before_server: Latency,
    after_server: Latency,
}

/// See the module documentation.
pub struct Tracker {
    state: Mutex<State>,
    progress: Notify,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                point_id: 0,
                needs_status: false,
                window: Window {
                    from_ns: 0,
                    to_ns: 0,
                },
                work: Work::Nothing,
                counts: Counts::default(),
                delivery: Latency::new(),
                status: Latency::new(),
                server_status: Latency::new(),
                before_server: Latency::new(),
                after_server: Latency::new(),
            }),
            progress: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin(&self, needs_status: bool, window: Window, work: Work) -> u32 {
        let mut st = self.lock();
        st.point_id = st.point_id.wrapping_add(1);
        st.needs_status = needs_status;
        st.window = window;
        st.work = work;
        st.counts = Counts::default();
        st.delivery = Latency::new();
        st.status = Latency::new();
        st.server_status = Latency::new();
        st.before_server = Latency::new();
        st.after_server = Latency::new();
        st.point_id
    }

    /// Starts a point of single pushes; returns its id (for the payload stamps). With
    /// `background_phones`, broadcasts to that many phones run beside them
    /// ([`Tracker::sent_background`]).
    pub fn begin_single(
        &self,
        needs_status: bool,
        window: Window,
        background_phones: Option<usize>,
    ) -> u32 {
        self.begin(
            needs_status,
            window,
            Work::Single {
                slots: HashMap::new(),
                background: background_phones.map(|phones| Background {
                    phones,
                    ..Background::default()
                }),
            },
        )
    }

    /// A background broadcast `seq` (with [`BACKGROUND_SEQ`] set) is about to be written.
    pub fn sent_background(&self, seq: u32, sent_ns: u64) {
        debug_assert!(seq & BACKGROUND_SEQ != 0);
        if let Work::Single {
            background: Some(bg),
            ..
        } = &mut self.lock().work
        {
            bg.counts.sent += 1;
            bg.casts.insert(
                seq,
                Cast {
                    sent_ns,
                    remaining: bg.phones,
                    answered: false,
                },
            );
        }
    }

    /// Background broadcasts sent and not complete yet.
    pub fn background_in_flight(&self) -> usize {
        match &self.lock().work {
            Work::Single {
                background: Some(bg),
                ..
            } => bg.casts.len(),
            _ => 0,
        }
    }

    /// Starts a fan-out point: every broadcast is to reach `phones` receivers.
    pub fn begin_fanout(&self, phones: usize, needs_status: bool, window: Window) -> u32 {
        self.begin(
            needs_status,
            window,
            Work::Fanout {
                phones,
                casts: HashMap::new(),
                last: Latency::new(),
            },
        )
    }

    /// A single push / publish `seq` is about to be written, stamped `sent_ns`.
    pub fn sent(&self, seq: u32, sent_ns: u64) {
        let mut st = self.lock();
        st.counts.sent += 1;
        match &mut st.work {
            Work::Single { slots, .. } => {
                slots.insert(
                    seq,
                    Slot {
                        sent_ns,
                        delivered: false,
                        answered: false,
                    },
                );
            }
            Work::Fanout { phones, casts, .. } => {
                let remaining = *phones;
                casts.insert(
                    seq,
                    Cast {
                        sent_ns,
                        remaining,
                        answered: false,
                    },
                );
            }
            Work::Nothing => {}
        }
    }

    /// Messages (or broadcasts) sent and not complete yet.
    pub fn in_flight(&self) -> usize {
        match &self.lock().work {
            Work::Single { slots, .. } => slots.len(),
            Work::Fanout { casts, .. } => casts.len(),
            Work::Nothing => 0,
        }
    }

    /// Resolves after some message completed since the last call (or at once if one did).
    pub async fn progress(&self) {
        self.progress.notified().await;
    }

    /// A receiving connection got `payload`.
    pub fn on_delivery(&self, payload: &[u8]) {
        let now = now_ns();
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(stamp) = Stamp::decode(payload).filter(|s| s.point_id == st.point_id) else {
            st.counts.stale += 1;
            return;
        };
        let in_window = st.window.contains(now);
        let timed = st.window.contains(stamp.sent_ns);
        let mut completed = false;
        match &mut st.work {
            Work::Single {
                background: Some(bg),
                ..
            } if stamp.seq & BACKGROUND_SEQ != 0 => {
                let Some(cast) = bg.casts.get_mut(&stamp.seq).filter(|c| c.remaining > 0) else {
                    st.counts.unexpected += 1;
                    return;
                };
                cast.remaining -= 1;
                bg.counts.delivered += 1;
                if in_window {
                    bg.counts.delivered_in_window += 1;
                }
                if cast.remaining == 0 && (!st.needs_status || cast.answered) {
                    bg.casts.remove(&stamp.seq);
                    bg.counts.completed += 1;
                    drop(guard);
                    self.progress.notify_one();
                }
                return;
            }
            Work::Single { slots, .. } => {
                let Some(slot) = slots.get_mut(&stamp.seq).filter(|s| !s.delivered) else {
                    st.counts.unexpected += 1;
                    return;
                };
                slot.delivered = true;
                if !st.needs_status || slot.answered {
                    slots.remove(&stamp.seq);
                    completed = true;
                }
            }
            Work::Fanout { casts, last, .. } => {
                let Some(cast) = casts.get_mut(&stamp.seq).filter(|c| c.remaining > 0) else {
                    st.counts.unexpected += 1;
                    return;
                };
                cast.remaining -= 1;
                if cast.remaining == 0 {
                    if timed {
                        last.record_ns(now.saturating_sub(cast.sent_ns));
                    }
                    if !st.needs_status || cast.answered {
                        casts.remove(&stamp.seq);
                        completed = true;
                    }
                }
            }
            Work::Nothing => {
                st.counts.stale += 1;
                return;
            }
        }
        st.counts.delivered += 1;
        if in_window {
            st.counts.delivered_in_window += 1;
            st.counts.last_in_window_ns = now;
        }
        if timed {
            st.delivery.record_ns(now.saturating_sub(stamp.sent_ns));
        }
        drop(guard);
        if completed {
            self.progress.notify_one();
        }
    }

    /// The PushClient got the status of push (or broadcast) `seq` of point `point_id`.
    pub fn on_status(&self, point_id: u32, seq: u32, outcome: Outcome) {
        let now = now_ns();
        let mut guard = self.lock();
        let st = &mut *guard;
        if point_id != st.point_id {
            return;
        }
        if seq & BACKGROUND_SEQ != 0 {
            if let Work::Single {
                background: Some(bg),
                ..
            } = &mut st.work
            {
                if let Some(cast) = bg.casts.get_mut(&seq) {
                    cast.answered = true;
                    if cast.remaining == 0 || !outcome.is_success() {
                        bg.casts.remove(&seq);
                        bg.counts.completed += 1;
                        drop(guard);
                        self.progress.notify_one();
                    }
                }
            }
            return;
        }
        *st.counts.statuses.entry(outcome.name()).or_default() += 1;
        if let Outcome::ClientError(text) = &outcome {
            st.counts.first_error.get_or_insert_with(|| text.clone());
        }
        let success = outcome.is_success();
        let mut completed = false;
        match &mut st.work {
            Work::Single { slots, .. } => {
                if let Some(slot) = slots.get_mut(&seq) {
                    if st.window.contains(slot.sent_ns) {
                        st.status.record_ns(now.saturating_sub(slot.sent_ns));
                    }
                    slot.answered = true;
                    if slot.delivered || !success {
                        slots.remove(&seq);
                        completed = true;
                    }
                }
            }
            Work::Fanout { casts, .. } => {
                if let Some(cast) = casts.get_mut(&seq) {
                    if st.window.contains(cast.sent_ns) {
                        st.status.record_ns(now.saturating_sub(cast.sent_ns));
                    }
                    cast.answered = true;
                    if cast.remaining == 0 || !success {
                        casts.remove(&seq);
                        completed = true;
                    }
                }
            }
            Work::Nothing => {}
        }
        drop(guard);
        if completed {
            self.progress.notify_one();
        }
    }

    /// The server's own time for single push `seq`, read from its status's time line (ms
    /// between its first and last point), and the time before and after it; counted when the
    /// push was sent inside the window. Called before [`Tracker::on_status`] for the same push.
    pub fn on_server_time(&self, point_id: u32, seq: u32, times: ServerTimes) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if point_id != st.point_id || seq & BACKGROUND_SEQ != 0 {
            return;
        }
        if let Work::Single { slots, .. } = &st.work {
            if slots
                .get(&seq)
                .is_some_and(|slot| st.window.contains(slot.sent_ns))
            {
                let ns = |ms: u64| ms.saturating_mul(1_000_000);
                st.server_status.record_ns(ns(times.node_ms));
                st.before_server.record_ns(ns(times.before_ms));
                st.after_server.record_ns(ns(times.after_ms));
            }
        }
    }

    /// Ends the point: what it counted (what is still in flight counts as lost).
    pub fn finish(&self) -> Counts {
        let mut guard = self.lock();
        let st = &mut *guard;
        let work = std::mem::replace(&mut st.work, Work::Nothing);
        let mut counts = std::mem::take(&mut st.counts);
        counts.delivery = st.delivery.summary();
        counts.status = st.status.summary();
        counts.server_status = st.server_status.summary();
        counts.before_server = st.before_server.summary();
        counts.after_server = st.after_server.summary();
        match work {
            Work::Single { slots, background } => {
                counts.lost = slots.values().filter(|s| !s.delivered).count() as u64;
                counts.background = background.map(|bg| bg.counts);
            }
            Work::Fanout { casts, last, .. } => {
                counts.incomplete = casts.values().filter(|c| c.remaining > 0).count() as u64;
                counts.lost = casts.values().map(|c| c.remaining as u64).sum();
                counts.last_delivery = last.summary();
            }
            Work::Nothing => {}
        }
        // Later deliveries of this point are stale.
        st.point_id = st.point_id.wrapping_add(1);
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(point_id: u32, seq: u32, sent_ns: u64) -> [u8; 64] {
        Stamp {
            sent_ns,
            point_id,
            seq,
        }
        .encode()
    }

    #[test]
    fn single_completes_on_delivery_and_status() {
        let tracker = Tracker::new();
        let window = Window {
            from_ns: 0,
            to_ns: u64::MAX,
        };
        let point = tracker.begin_single(true, window, None);
        tracker.sent(1, now_ns());
        tracker.sent(2, now_ns());
        tracker.on_delivery(&payload(point, 1, now_ns()));
        assert_eq!(tracker.in_flight(), 2, "status still missing");
        tracker.on_status(point, 1, Outcome::Status(PushStatus::Success));
        assert_eq!(tracker.in_flight(), 1);
        tracker.on_status(point, 2, Outcome::Status(PushStatus::Offline));
        assert_eq!(tracker.in_flight(), 0, "a failed status completes it");
        tracker.on_delivery(&payload(point, 1, 0));
        tracker.on_delivery(&payload(point + 5, 1, 0));
        let counts = tracker.finish();
        assert_eq!(counts.sent, 2);
        assert_eq!(counts.delivered, 1);
        assert_eq!(counts.unexpected, 1);
        assert_eq!(counts.stale, 1);
        assert_eq!(counts.statuses.get("offline"), Some(&1));
        assert_eq!(counts.delivery.count, 1);
        assert_eq!(counts.status.count, 2);
    }

    #[test]
    fn the_servers_share_counts_single_pushes_sent_inside_the_window_only() {
        let tracker = Tracker::new();
        let window = Window {
            from_ns: 1_000,
            to_ns: 2_000,
        };
        let point = tracker.begin_single(true, window, Some(2));
        tracker.sent(1, 1_500);
        tracker.sent(2, 500);
        tracker.sent_background(BACKGROUND_SEQ | 1, 1_500);
        let times = |node_ms| ServerTimes {
            node_ms,
            before_ms: node_ms + 1,
            after_ms: node_ms + 2,
        };
        tracker.on_server_time(point, 1, times(3));
        tracker.on_server_time(point, 2, times(40));
        tracker.on_server_time(point, BACKGROUND_SEQ | 1, times(50));
        tracker.on_server_time(point + 1, 1, times(60));
        let counts = tracker.finish();
        assert_eq!(counts.server_status.count, 1);
        assert!((counts.server_status.max_us - 3_000.0).abs() < 10.0);
        assert!((counts.before_server.max_us - 4_000.0).abs() < 10.0);
        assert!((counts.after_server.max_us - 5_000.0).abs() < 10.0);
    }

    #[test]
    fn background_broadcasts_are_counted_apart_from_the_single_pushes() {
        let tracker = Tracker::new();
        let window = Window {
            from_ns: 0,
            to_ns: u64::MAX,
        };
        let point = tracker.begin_single(true, window, Some(2));
        let cast = BACKGROUND_SEQ | 1;
        tracker.sent(1, now_ns());
        tracker.sent_background(cast, now_ns());
        assert_eq!(
            (tracker.in_flight(), tracker.background_in_flight()),
            (1, 1)
        );
        tracker.on_delivery(&payload(point, cast, 1));
        tracker.on_delivery(&payload(point, cast, 1));
        assert_eq!(
            tracker.background_in_flight(),
            1,
            "its status is still missing"
        );
        tracker.on_status(point, cast, Outcome::Status(PushStatus::Success));
        assert_eq!(tracker.background_in_flight(), 0);
        tracker.on_delivery(&payload(point, cast, 1));
        tracker.on_delivery(&payload(point, 1, 1));
        tracker.on_status(point, 1, Outcome::Status(PushStatus::Success));
        assert_eq!(tracker.in_flight(), 0);
        let counts = tracker.finish();
        assert_eq!(
            (counts.sent, counts.delivered, counts.status.count),
            (1, 1, 1)
        );
        assert_eq!(
            counts.statuses.get("success"),
            Some(&1),
            "the broadcast's is not counted"
        );
        assert_eq!(
            counts.unexpected, 1,
            "a third delivery of a broadcast to two phones"
        );
        let bg = counts.background.expect("background counts");
        assert_eq!((bg.sent, bg.completed, bg.delivered), (1, 1, 2));
    }

    #[test]
    fn fanout_waits_for_every_phone() {
        let tracker = Tracker::new();
        let window = Window {
            from_ns: 0,
            to_ns: u64::MAX,
        };
        let point = tracker.begin_fanout(3, false, window);
        tracker.sent(1, now_ns());
        tracker.on_delivery(&payload(point, 1, 1));
        tracker.on_delivery(&payload(point, 1, 1));
        assert_eq!(tracker.in_flight(), 1);
        tracker.on_delivery(&payload(point, 1, 1));
        assert_eq!(tracker.in_flight(), 0);
        tracker.sent(2, now_ns());
        tracker.on_delivery(&payload(point, 2, 1));
        let counts = tracker.finish();
        assert_eq!(counts.delivered, 4);
        assert_eq!(counts.incomplete, 1);
        assert_eq!(counts.lost, 2);
        assert_eq!(counts.last_delivery.count, 1);
    }
}
