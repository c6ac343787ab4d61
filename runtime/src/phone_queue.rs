//! The outbound queue between the node task and one phone's connection task.
//!
//! The node task appends frames (and fast-connect resumptions); the connection task takes
//! everything queued in one go and hands it to its [`pushgate_core::PhoneConn`], which seals it
//! and counts it against the slow-consumer marks. It is a mutex-guarded `VecDeque` and the waiting
//! task's waker rather than a channel because a phone is idle almost all of the time: an empty
//! queue owns no heap memory (a channel keeps a block of slots allocated for its whole life),
//! the connection task waits on it with a plain poll (no wait-list node stored in the task),
//! and a burst of frames costs one wake-up of the connection task, not one per frame. The
//! frames are a `ThinVec` (one pointer while empty, where a `VecDeque` holds four words), as
//! they are only appended and taken all at once.
//!
//! The connection task takes from the queue whenever it has something, also while its socket
//! does not take bytes, so what waits here is what the node handed over since the connection
//! task last ran; the bytes a phone does not read are counted (and bounded) by its connection.
//! The queue holds at most `max_items` items: each frame seals to at least a header, so more
//! than the hard limit's worth of headers would pass the hard limit anyway; beyond it items are
//! dropped and the batch says so, and the connection closes as a slow consumer.
use pushgate_core::conn::Resume;
use pushgate_core::{CloseReason, OutFrame};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use thin_vec::ThinVec;

/// What the node hands a phone's connection.
#[derive(Debug)]
pub enum ToPhone {
    /// A frame to seal and send.
    Frame {
        frame: OutFrame,
        /// The push sessionId whose write result the node wants to hear (`PhoneWritten`).
        report_write: Option<i32>,
    },
    /// A fast connect was accepted: the connection takes on this session.
    Resume(Box<Resume>),
}

/// What the connection task takes out of the queue at once.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: ThinVec<ToPhone>,
    /// The node asked for the connection to be closed after these frames.
    pub close: bool,
    /// Why, when the node said (a web connection tells its client in the close frame).
    pub close_reason: Option<CloseReason>,
    /// Items were dropped: more were handed over than the queue holds.
    pub overflow: bool,
    /// The connection's timer fired at this tick ([`crate::phone_timers`]); 0: it did not.
    pub timer_tick: u64,
}

#[derive(Debug, Default)]
struct State {
    frames: ThinVec<ToPhone>,
    /// A close was asked for and not taken yet.
    close: bool,
    close_reason: Option<CloseReason>,
    /// A close was asked for: later items are dropped.
    closed: bool,
    /// The node took the connection in (under its connection limit): the task may read.
    admitted: bool,
    overflow: bool,
    /// The latest tick at which the connection's timer fired, not yet taken; 0: none.
    timer_tick: u64,
    /// The connection task, when it waits for frames.
    waiter: Option<Waker>,
}

/// The queue; shared by the node task (producer) and the connection task (consumer).
#[derive(Debug)]
pub struct PhoneQueue {
    state: Mutex<State>,
    max_items: usize,
}

impl PhoneQueue {
    /// A queue of at most `max_items` items.
    pub fn new(max_items: usize) -> Self {
        Self {
            state: Mutex::default(),
            max_items: max_items.max(1),
        }
    }

    /// Appends an item. One queued after [`PhoneQueue::close`] is dropped: the connection is
    /// going away.
    pub fn push(&self, item: ToPhone) {
        let Some(mut state) = self.append(item) else {
            return;
        };
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// Appends a broadcast's frame: as [`PhoneQueue::push`], but the connection task is woken
    /// on the bulk lane ([`crate::bulk_wake`]) and its waker is kept, so a frame pushed after
    /// this one (a single push) can still wake it on the other lane, ahead of the broadcast's
    /// other phones.
    pub fn push_bulk(&self, item: ToPhone) {
        let Some(state) = self.append(item) else {
            return;
        };
        let waiter = state.waiter.clone();
        drop(state);
        if let Some(waiter) = waiter {
            crate::bulk_wake::wake_bulk(&waiter);
        }
    }

    /// Appends `item` within the bound; `None` when the queue is closed.
    fn append(&self, item: ToPhone) -> Option<std::sync::MutexGuard<'_, State>> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        if state.frames.len() >= self.max_items {
            state.overflow = true;
        } else {
            state.frames.push(item);
        }
        Some(state)
    }

    /// Asks the connection task to write what is queued and then close.
    pub fn close(&self) {
        self.close_for(None);
    }

    /// [`PhoneQueue::close`], saying why.
    pub fn close_for(&self, reason: Option<CloseReason>) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.closed = true;
        state.close = true;
        state.close_reason = reason;
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// The connection's timer fired at `tick` ([`crate::phone_timers`]): wakes the task.
    pub fn wake_timer(&self, tick: u64) {
        let mut state = self.lock();
        state.timer_tick = state.timer_tick.max(tick);
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// Ready when there is something to take (frames, a close, a fired timer); otherwise the
    /// task of `cx` is woken by the next [`PhoneQueue::push`], [`PhoneQueue::close`] or
    /// [`PhoneQueue::wake_timer`]. One task waits on a queue at a time (the connection task).
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if !state.frames.is_empty() || state.close || state.overflow || state.timer_tick != 0 {
            return Poll::Ready(());
        }
        match &mut state.waiter {
            Some(waiter) if waiter.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The node took the connection in: wakes the task waiting in
    /// [`PhoneQueue::poll_admitted`].
    pub fn admit(&self) {
        let mut state = self.lock();
        state.admitted = true;
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// Ready once the node took the connection in or asked for it to close: a connection over
    /// the node's limit reads (and answers) nothing.
    pub fn poll_admitted(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.admitted || state.close {
            return Poll::Ready(());
        }
        match &mut state.waiter {
            Some(waiter) if waiter.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes every queued frame (and the close request, if any: taken once, so a connection
    /// still flushing after it waits for its socket instead of waking again at once).
    pub fn take(&self) -> Batch {
        let mut state = self.lock();
        Batch {
            frames: std::mem::take(&mut state.frames),
            close: std::mem::take(&mut state.close),
            close_reason: state.close_reason.take(),
            overflow: std::mem::take(&mut state.overflow),
            timer_tick: std::mem::take(&mut state.timer_tick),
        }
    }

    /// Items queued and not yet taken (for the phone groups' tests, which the simulator does
    /// not build).
    #[cfg(all(test, not(madsim)))]
    pub(crate) fn queued(&self) -> usize {
        self.lock().frames.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PhoneQueue {
        async fn ready(&self) {
            std::future::poll_fn(|cx| self.poll_ready(cx)).await
        }
    }

    fn frame() -> ToPhone {
        ToPhone::Frame {
            frame: OutFrame::Heartbeat,
            report_write: None,
        }
    }

    #[test]
    fn takes_everything_queued_at_once() {
        let queue = PhoneQueue::new(16);
        queue.push(frame());
        queue.push(frame());
        let batch = queue.take();
        assert_eq!(batch.frames.len(), 2);
        assert!(!batch.close);
        assert!(queue.take().frames.is_empty());
    }

    #[test]
    fn close_keeps_earlier_frames_and_drops_later_ones() {
        let queue = PhoneQueue::new(16);
        queue.push(frame());
        queue.close();
        queue.push(frame());
        let batch = queue.take();
        assert_eq!(batch.frames.len(), 1);
        assert!(batch.close);
    }

    #[test]
    fn beyond_its_bound_items_are_dropped_and_the_batch_says_so() {
        let queue = PhoneQueue::new(2);
        for _ in 0..3 {
            queue.push(frame());
        }
        let batch = queue.take();
        assert_eq!(batch.frames.len(), 2);
        assert!(batch.overflow);
        assert!(!queue.take().overflow, "told once");
    }

    /// Every phone holds one (behind an `Arc`: 16 bytes of counts more) for its whole life:
    /// at most 64 bytes keep it in the allocator's 80-byte class.
    #[test]
    fn a_phone_queue_is_small() {
        let bytes = std::mem::size_of::<PhoneQueue>();
        eprintln!("PhoneQueue: {bytes} bytes");
        assert!(bytes <= 64, "a PhoneQueue holds {bytes} bytes");
    }

    #[test]
    fn an_empty_queue_owns_no_heap_memory() {
        let queue = PhoneQueue::new(16);
        queue.push(frame());
        drop(queue.take());
        assert_eq!(queue.lock().frames.capacity(), 0);
    }

    #[test]
    fn a_single_push_after_a_broadcast_frame_still_wakes_the_task_on_its_own_lane() {
        let queue = PhoneQueue::new(16);
        let lanes = std::sync::Arc::new(crate::bulk_wake::LaneCounts::default());
        let waker = Waker::from(lanes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(queue.poll_ready(&mut cx).is_pending());
        queue.push_bulk(frame());
        queue.push_bulk(frame());
        queue.push(frame());
        // Taken by the lane the single push woke: a later broadcast frame waits with it.
        queue.push_bulk(frame());
        assert_eq!(lanes.counts(), (2, 1));
        assert_eq!(queue.take().frames.len(), 4, "every frame, in one batch");
    }

    #[test]
    fn ready_wakes_for_frames_pushed_before_or_after_the_wait() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let queue = std::sync::Arc::new(PhoneQueue::new(16));
            queue.push(frame());
            queue.ready().await;
            queue.take();
            let producer = queue.clone();
            let waiter = tokio::spawn(async move {
                queue.ready().await;
                queue.take().frames.len()
            });
            tokio::task::yield_now().await;
            producer.push(frame());
            assert_eq!(waiter.await.expect("waiter"), 1);
        });
    }
}
