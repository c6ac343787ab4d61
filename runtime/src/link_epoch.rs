//! Epochs of a node's store links. A node replaces a store connection that stopped answering,
//! and what it sent on the old one may still reach the store after what it sends on the new
//! one (bytes held in the network, a server still reading the old socket). Each connection
//! carries an epoch, and the store applies no route op of a node that comes on an older
//! connection after one on a newer (`pushgate_core::store::RouteRecord::is_fenced`). Epochs
//! come from the wall clock, so they also grow across a restart of the node; a node whose
//! clock stepped back since an earlier run learns the newer epoch from the store's refusal
//! (`StoreError::Fenced`) and continues above it ([`LinkEpochs::above`]), so its routes are
//! never refused for longer than one op.

/// The epochs of one node's store connections: the wall clock in µs when each opened, and
/// strictly above every epoch used or learned before, even when the clock stepped back.
#[derive(Debug, Default)]
pub struct LinkEpochs {
    last: u64,
}

impl LinkEpochs {
    /// The epoch of a connection opening now.
    pub fn next_epoch(&mut self) -> u64 {
        self.above(0)
    }

    /// An epoch above `floor` (a newer epoch of this node the store knows), above every epoch
    /// before, and the clock's when that is higher. A floor past
    /// [`MAX_LINK_EPOCH`](pushgate_core::store::MAX_LINK_EPOCH) is no epoch a node stamps
    /// (stores ignore such links): not taken in.
    pub fn above(&mut self, floor: u64) -> u64 {
        let floor = if floor < pushgate_core::store::MAX_LINK_EPOCH {
            floor
        } else {
            0
        };
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            });
        self.last = now_us
            .max(self.last.saturating_add(1))
            .max(floor.saturating_add(1));
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_increase_and_pass_what_the_store_knows() {
        let mut epochs = LinkEpochs::default();
        let first = epochs.next_epoch();
        assert!(
            first > 1_700_000_000_000_000,
            "the wall clock in µs: {first}"
        );
        let second = epochs.next_epoch();
        assert!(second > first);
        let ahead = second + 3_600_000_000;
        assert_eq!(epochs.above(ahead), ahead + 1);
        assert!(epochs.next_epoch() > ahead + 1);
        let sane = epochs.next_epoch();
        assert_eq!(
            epochs.above(u64::MAX),
            sane + 1,
            "no epoch a node stamps: ignored"
        );
    }
}
