//! Epochs of a node's store links. A node replaces a store connection that stopped answering,
//! and what it sent on the old one may still reach the store after what it sends on the new
//! one (bytes held in the network, a server still reading the old socket). Each connection
//! carries an epoch, and the store applies no route op of a node that comes on an older
//! connection after one on a newer (`pushgate_core::store::RouteRecord::is_fenced`). Epochs
//! come from the wall clock, so they also grow across a restart of the node.

/// The epochs of one node's store connections: the wall clock in µs when each opened, and
/// strictly above the one before even when the clock stepped back.
#[derive(Debug, Default)]
pub struct LinkEpochs {
    last: u64,
}

impl LinkEpochs {
    /// The epoch of a connection opening now.
    pub fn next_epoch(&mut self) -> u64 {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            });
        self.last = now_us.max(self.last.saturating_add(1));
        self.last
    }
}
