//! The open loop's clock: a periodic Linux `timerfd` registered with the tokio reactor, so the
//! sender wakes at the message interval with µs precision on the runtime's own thread (tokio's
//! timers have a 1 ms granularity; a pacing thread would cost a cross-thread wake-up per tick).
use anyhow::Context;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Shortest period the pacer ticks at (faster schedules send several messages per tick).
pub const MIN_PERIOD: Duration = Duration::from_micros(50);

/// A periodic timer.
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
}

impl Pacer {
    /// Ticks every `period` (at least [`MIN_PERIOD`]), the first tick one period from now.
    pub fn start(period: Duration) -> anyhow::Result<Pacer> {
        let period = period.max(MIN_PERIOD);
        // Timers of this thread may fire up to its timer slack late (50 µs by default).
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64, 0u64, 0u64, 0u64);
        }
        // SAFETY: timerfd_create returns a new descriptor (or -1), owned from here on.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_create");
        }
        // SAFETY: `raw` is a valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let spec = libc::timespec {
            tv_sec: libc::time_t::try_from(period.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(period.subsec_nanos() as i32),
        };
        let value = libc::itimerspec {
            it_interval: spec,
            it_value: spec,
        };
        // SAFETY: the descriptor is a timerfd; `value` is a valid itimerspec.
        let rc = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &value, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_settime");
        }
        // SAFETY: the OwnedFd keeps the descriptor open, and refers to the same timer, for as
        // long as the AsyncFd that owns it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the timerfd")?;
        Ok(Pacer { fd })
    }

    /// Waits for the next tick (returns at once if ticks passed since the last call).
    pub async fn tick(&self) -> anyhow::Result<()> {
        loop {
            let mut guard = self.fd.readable().await.context("timerfd")?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads 8 bytes into a buffer of 8 bytes from a timerfd.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            if n == 8 {
                return Ok(());
            }
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(error).context("reading the timerfd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn ticks_at_its_period() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pacer = Pacer::start(Duration::from_micros(200)).unwrap();
            let started = Instant::now();
            for _ in 0..50 {
                pacer.tick().await.unwrap();
            }
            // 50 ticks of 200 µs: at least 10 ms (no upper bound: a busy machine may be late).
            assert!(started.elapsed() >= Duration::from_millis(9));
        });
    }
}
