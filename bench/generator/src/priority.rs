//! The generator's two CPU priorities: the measured path first, the fan-out receivers last.
//!
//! Why: the generator runs on one core. Its main thread is the measured path — it sends on
//! schedule, reads the statuses and the single-push deliveries — while the fan-out receivers'
//! thread ([`crate::bulk_thread`]) reads and decrypts up to a hundred thousand broadcast
//! deliveries a second beside it. With the receivers in `SCHED_IDLE` and the main thread in
//! the normal policy, the kernel still left the main thread runnable and waiting for up to
//! 4.6 ms behind the receivers (`perf sched timehist`, the interference point), and that wait
//! was most of the point's end-to-end p99.9 (send lag p99.9 7–12 ms; status p99.9 15–20 ms
//! against the server's own 1–2 ms). With the main thread in `SCHED_FIFO` a wake-up runs it at
//! once: send lag p99.9 0.7–0.9 ms, status p99.9 2.7–2.9 ms, same build, same minutes
//! (`bench/README.md`, run 13). The main thread sleeps most of the time, so a real-time policy
//! takes nothing from the receivers it does not use; the kernel's real-time throttling still
//! bounds it. Every target gets the same.
//!
//! Raising a policy needs the privilege (root or `CAP_SYS_NICE`, or an `RLIMIT_RTPRIO`); without
//! it the run goes on in the normal policy, says so on stderr and records it in the run's
//! parameters.

/// Puts the calling thread (the measured path) in `SCHED_FIFO` at the lowest real-time
/// priority. Returns the policy it runs in, for the run's record.
pub fn raise_measured_path() -> String {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `param` outlives the call; pid 0 is the calling thread.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if result == 0 {
        return "SCHED_FIFO 1".into();
    }
    let error = std::io::Error::last_os_error();
    eprintln!(
        "pushgate-bench: the measured path runs in the normal policy (SCHED_FIFO refused: \
         {error}); tail latencies include the generator's own scheduling"
    );
    format!("normal (SCHED_FIFO refused: {error})")
}

/// Puts the calling thread (the fan-out receivers) in the `SCHED_IDLE` policy. Lowering one's
/// own priority needs no privilege; if it fails anyway the receivers still run, only without
/// the measured path's precedence.
pub fn lower_bulk() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; pid 0 is the calling thread.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result != 0 {
        eprintln!(
            "pushgate-bench: could not lower the fan-out receivers' priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread raised either runs in `SCHED_FIFO` or says why not; the thread that was not
    /// raised keeps its policy.
    #[test]
    fn the_measured_path_is_raised_or_says_why_not() {
        let (policy, said) = std::thread::spawn(|| {
            let said = raise_measured_path();
            // SAFETY: no arguments; 0 is the calling thread.
            (unsafe { libc::sched_getscheduler(0) }, said)
        })
        .join()
        .expect("thread");
        if policy == libc::SCHED_FIFO {
            assert_eq!(said, "SCHED_FIFO 1");
        } else {
            assert_eq!(policy, libc::SCHED_OTHER);
            assert!(said.starts_with("normal (SCHED_FIFO refused"), "{said}");
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
