//! The fan-out receivers' thread: a second tokio runtime on its own OS thread, at the lowest
//! CPU priority (`SCHED_IDLE`; the main thread, the measured path, runs first:
//! [`crate::priority`]).
//!
//! Why: the generator runs on one core. Its fan-out receivers read and (for pushgate) decrypt
//! every broadcast delivery — tens of thousands per second in the interference point — and on
//! the main thread the sender, the statuses it reads and the single-push receivers waited
//! behind that work: the generator's own send lag (p99.9 29 ms) hid the server's latency.
//! Here the measured path keeps the main thread, and the kernel runs it first whenever it has
//! work: this thread is in `SCHED_IDLE` and the main thread, while these run, in `SCHED_FIFO` (in the normal
//! policy it still waited for up to 4.6 ms behind this one; see [`crate::priority`]). The
//! fan-out receivers take the rest of the core, which in a fan-out point is nearly all of it.
//! Every target gets the same.
use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The running thread; stopped (its connections dropped) when this is dropped.
pub struct BulkThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BulkThread {
    /// Starts the thread and its runtime.
    pub fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the fan-out receivers' runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fan-receivers".into())
            .spawn(move || {
                crate::priority::lower_bulk();
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .context("starting the fan-out receivers' thread")?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where fan-out receivers are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for BulkThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bulk_thread_runs_tasks_in_the_idle_policy() {
        let bulk = BulkThread::start().expect("start");
        let (tx, rx) = std::sync::mpsc::channel();
        bulk.handle().spawn(async move {
            // SAFETY: no arguments; 0 is the calling thread.
            let _ = tx.send(unsafe { libc::sched_getscheduler(0) });
        });
        assert_eq!(rx.recv().expect("the task ran"), libc::SCHED_IDLE);
        // SAFETY: as above.
        let main = unsafe { libc::sched_getscheduler(0) };
        assert_eq!(
            main,
            libc::SCHED_OTHER,
            "only the bulk thread's policy changes"
        );
        drop(bulk);
    }
}
