//! The generator's CPU priorities: while the fan-out receivers run, the measured path first.
//!
//! Why: the generator runs on one core. Its main thread is the measured path — it sends on
//! schedule, reads the statuses and the single-push deliveries — and in the fan-out and
//! interference points the fan-out receivers' thread ([`crate::bulk_thread`], `SCHED_IDLE`)
//! reads and decrypts up to a hundred thousand broadcast deliveries a second beside it. With
//! the main thread in the normal policy the kernel still left it runnable and waiting for up
//! to 4.6 ms behind the receivers (`perf sched timehist`, the interference point), and that
//! wait was most of the point's end-to-end p99.9 (send lag p99.9 7–12 ms; status p99.9
//! 15–20 ms against the server's own 1–2 ms). In `SCHED_FIFO` a wake-up runs it at once: send
//! lag p99.9 0.7–0.9 ms, status p99.9 2.7–2.9 ms, same build, same minutes (`bench/README.md`,
//! run 13). Every target gets the same.
//!
//! Only while the receivers run ([`MeasuredPathFirst`], held by those points): alone on its
//! core the main thread needs no precedence, and a real-time thread that keeps its core busy
//! (the single-push points at 50,000/s and more) is throttled by the kernel (95 % of each
//! second), which stalled it for tens of ms. Raising a policy needs the privilege (root or
//! `CAP_SYS_NICE`, or an `RLIMIT_RTPRIO`); without it the points run in the normal policy and
//! the run says so ([`check`]).
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether raising was refused once already (said once, then not tried again).
static REFUSED: AtomicBool = AtomicBool::new(false);

/// The calling thread in `SCHED_FIFO` at the lowest real-time priority until dropped, then
/// back in the normal policy.
pub struct MeasuredPathFirst {
    raised: bool,
}

impl MeasuredPathFirst {
    /// Raises the calling thread (the measured path); a refusal leaves it as it was.
    pub fn raise() -> Self {
        if REFUSED.load(Ordering::Relaxed) {
            return Self { raised: false };
        }
        let raised = set_policy(libc::SCHED_FIFO, 1).is_ok();
        if !raised {
            REFUSED.store(true, Ordering::Relaxed);
        }
        Self { raised }
    }
}

impl Drop for MeasuredPathFirst {
    fn drop(&mut self) {
        if self.raised {
            let _ = set_policy(libc::SCHED_OTHER, 0);
        }
    }
}

/// Whether the measured path can be raised, for the run's record; says so on stderr when not.
pub fn check() -> String {
    match set_policy(libc::SCHED_FIFO, 1).and_then(|()| set_policy(libc::SCHED_OTHER, 0)) {
        Ok(()) => "SCHED_FIFO 1 while the fan-out receivers run".into(),
        Err(error) => {
            REFUSED.store(true, Ordering::Relaxed);
            eprintln!(
                "pushgate-bench: the measured path stays in the normal policy (SCHED_FIFO \
                 refused: {error}); the fan-out and interference points' tail latencies \
                 include the generator's own scheduling"
            );
            format!("normal (SCHED_FIFO refused: {error})")
        }
    }
}

/// Puts the calling thread (the fan-out receivers) in the `SCHED_IDLE` policy. Lowering one's
/// own priority needs no privilege; if it fails anyway the receivers still run, only without
/// the measured path's precedence.
pub fn lower_bulk() {
    if let Err(error) = set_policy(libc::SCHED_IDLE, 0) {
        eprintln!("pushgate-bench: could not lower the fan-out receivers' priority: {error}");
    }
}

fn set_policy(policy: libc::c_int, priority: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` outlives the call; pid 0 is the calling thread.
    let result = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: no arguments; 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// Raised while held (where the privilege allows), back in the normal policy after.
    #[test]
    fn the_measured_path_is_first_only_while_held() {
        std::thread::spawn(|| {
            let allowed = !check().starts_with("normal");
            {
                let _first = MeasuredPathFirst::raise();
                let expected = if allowed {
                    libc::SCHED_FIFO
                } else {
                    libc::SCHED_OTHER
                };
                assert_eq!(policy(), expected);
            }
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .expect("thread");
        assert_eq!(
            policy(),
            libc::SCHED_OTHER,
            "only the raised thread changes"
        );
    }
}
