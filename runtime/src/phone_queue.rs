//! The outbound queue between the node task and one phone's connection task.
//!
//! The node task appends frames; the connection task takes everything queued in one go,
//! encodes it and writes it in one write. It is a mutex-guarded `VecDeque` and the waiting
//! task's waker rather than a channel because a phone is idle almost all of the time: an empty
//! queue owns no heap memory (a channel keeps a block of slots allocated for its whole life),
//! the connection task waits on it with a plain poll (no wait-list node stored in the task),
//! and a burst of frames costs one wake-up of the connection task, not one per frame.
//!
//! The queue also counts the bytes handed over and not yet written, which is what the node
//! task's flow control (high-water mark, hard limit) and the low-water "writable again" report
//! are measured against.
use pushgate_core::OutFrame;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// One frame for the phone.
#[derive(Debug)]
pub struct QueuedFrame {
    pub frame: OutFrame,
    /// The push sessionId whose write result the node wants to hear (`PhoneWritten`).
    pub report_write: Option<i32>,
    /// What the frame counts for in `queued_bytes`.
    pub bytes: usize,
}

/// What the connection task takes out of the queue at once.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: VecDeque<QueuedFrame>,
    /// The node asked for the connection to be closed after these frames.
    pub close: bool,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<QueuedFrame>,
    queued_bytes: usize,
    close: bool,
    /// The connection task, when it waits for frames.
    waiter: Option<Waker>,
}

/// The queue; shared by the node task (producer) and the connection task (consumer).
#[derive(Debug, Default)]
pub struct PhoneQueue {
    state: Mutex<State>,
}

impl PhoneQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a frame; returns the bytes now queued and not yet written (this frame included).
    /// A frame queued after [`PhoneQueue::close`] is dropped: the connection is going away.
    pub fn push(&self, frame: QueuedFrame) -> usize {
        let mut state = self.lock();
        if state.close {
            return state.queued_bytes;
        }
        state.queued_bytes += frame.bytes;
        state.frames.push_back(frame);
        let queued = state.queued_bytes;
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        queued
    }

    /// Asks the connection task to write what is queued and then close.
    pub fn close(&self) {
        let mut state = self.lock();
        if state.close {
            return;
        }
        state.close = true;
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// Ready when there is something to take (frames or a close); otherwise the task of `cx`
    /// is woken by the next [`PhoneQueue::push`] or [`PhoneQueue::close`]. One task waits on a
    /// queue at a time (the connection task).
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if !state.frames.is_empty() || state.close {
            return Poll::Ready(());
        }
        match &mut state.waiter {
            Some(waiter) if waiter.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes every queued frame (and the close request, if any).
    pub fn take(&self) -> Batch {
        let mut state = self.lock();
        Batch {
            frames: std::mem::take(&mut state.frames),
            close: state.close,
        }
    }

    /// Records that `bytes` of taken frames were written (or dropped with a broken socket);
    /// returns the queued bytes before and after.
    pub fn written(&self, bytes: usize) -> (usize, usize) {
        let mut state = self.lock();
        debug_assert!(
            bytes <= state.queued_bytes,
            "more bytes written than queued"
        );
        let before = state.queued_bytes;
        state.queued_bytes = before.saturating_sub(bytes);
        (before, state.queued_bytes)
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
        fn queued_bytes(&self) -> usize {
            self.lock().queued_bytes
        }

        async fn ready(&self) {
            std::future::poll_fn(|cx| self.poll_ready(cx)).await
        }
    }

    fn frame(bytes: usize) -> QueuedFrame {
        QueuedFrame {
            frame: OutFrame::Heartbeat,
            report_write: None,
            bytes,
        }
    }

    #[test]
    fn counts_bytes_until_written() {
        let queue = PhoneQueue::new();
        assert_eq!(queue.push(frame(10)), 10);
        assert_eq!(queue.push(frame(5)), 15);
        let batch = queue.take();
        assert_eq!(batch.frames.len(), 2);
        assert!(!batch.close);
        assert_eq!(queue.queued_bytes(), 15, "taken is not written");
        assert_eq!(queue.written(15), (15, 0));
        assert!(queue.take().frames.is_empty());
    }

    #[test]
    fn close_keeps_earlier_frames_and_drops_later_ones() {
        let queue = PhoneQueue::new();
        queue.push(frame(3));
        queue.close();
        queue.push(frame(4));
        let batch = queue.take();
        assert_eq!(batch.frames.len(), 1);
        assert!(batch.close);
        assert_eq!(queue.queued_bytes(), 3);
    }

    #[test]
    fn an_empty_queue_owns_no_heap_memory() {
        let queue = PhoneQueue::new();
        queue.push(frame(1));
        drop(queue.take());
        assert_eq!(queue.lock().frames.capacity(), 0);
    }

    #[test]
    fn ready_wakes_for_frames_pushed_before_or_after_the_wait() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let queue = std::sync::Arc::new(PhoneQueue::new());
            queue.push(frame(1));
            queue.ready().await;
            queue.take();
            let producer = queue.clone();
            let waiter = tokio::spawn(async move {
                queue.ready().await;
                queue.take().frames.len()
            });
            tokio::task::yield_now().await;
            producer.push(frame(1));
            assert_eq!(waiter.await.expect("waiter"), 1);
        });
    }
}
