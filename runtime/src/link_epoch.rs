//! Epochs of a node's store links. A node replaces a store connection that stopped answering,
//! and what it sent on the old one may still reach the store after what it sends on the new
//! one (bytes held in the network, a server still reading the old socket). Each connection
//! carries an epoch, and the store applies no route op of a node that comes on an older
//! connection after one on a newer (`pushgate_core::store::RouteRecord::is_fenced`). Epochs
//! come from the wall clock, so they also grow across a restart of the node; a node whose
//! clock stepped back since an earlier run learns the newer epoch from the store's refusal
//! (`StoreError::Fenced`) and continues above it ([`LinkEpochs::refused`]), so its routes are
//! never refused for longer than one op.
use pushgate_core::store::MAX_LINK_EPOCH;
use std::sync::atomic::{AtomicU64, Ordering};

/// The epochs of one node's store link, shared by the tasks that send on it: each connection's
/// is the wall clock in µs when it opened, strictly above every epoch used or learned before,
/// even when the clock stepped back.
#[derive(Debug, Default)]
pub struct LinkEpochs {
    /// The highest epoch used or learned: every later one is above it.
    highest: AtomicU64,
    /// The epoch ops leaving now carry: the current connection's, or above a refusal's.
    current: AtomicU64,
}

impl LinkEpochs {
    /// The epoch of a connection opening now; ops leave with it from now on.
    pub fn open_connection(&self) -> u64 {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            });
        let epoch = now_us.max(self.highest.load(Ordering::Relaxed).saturating_add(1));
        self.highest.fetch_max(epoch, Ordering::Relaxed);
        self.current.store(epoch, Ordering::Relaxed);
        epoch
    }

    /// The epoch an op leaving now carries.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// The store refused an op, naming `newest` as this node's newer epoch. One this link used
    /// means an op of a connection it has replaced was refused: the fence at work. One above
    /// every epoch it used was stamped by an earlier run of the node whose clock was ahead: ops
    /// continue above it (true). An epoch past [`MAX_LINK_EPOCH`] is none a node stamps (stores
    /// ignore such links): not taken in.
    pub fn refused(&self, newest: u64) -> bool {
        if newest >= MAX_LINK_EPOCH || newest <= self.highest.load(Ordering::Relaxed) {
            return false;
        }
        self.highest.fetch_max(newest + 1, Ordering::Relaxed);
        self.current.fetch_max(newest + 1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_increase_and_pass_what_the_store_knows() {
        let epochs = LinkEpochs::default();
        let first = epochs.open_connection();
        assert!(
            first > 1_700_000_000_000_000,
            "the wall clock in µs: {first}"
        );
        assert_eq!(epochs.current(), first);
        let second = epochs.open_connection();
        assert!(second > first);
        assert!(
            !epochs.refused(second),
            "this link's own epoch: the fence at work"
        );
        assert!(!epochs.refused(first));
        assert_eq!(epochs.current(), second);
        let ahead = second + 3_600_000_000;
        assert!(epochs.refused(ahead));
        assert_eq!(epochs.current(), ahead + 1);
        assert!(epochs.open_connection() > ahead + 1);
        let sane = epochs.current();
        assert!(!epochs.refused(u64::MAX), "no epoch a node stamps: ignored");
        assert_eq!(epochs.current(), sane);
    }
}
