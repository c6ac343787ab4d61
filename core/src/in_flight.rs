//! Pushes in flight (reference §13.4): PUSH frames whose write result or ACK is still awaited,
//! keyed by the PUSH's sessionId (the id the phone echoes in its ACK).
//!
//! An entry is made *before* the frame is handed to the driver, so an ACK can never arrive
//! ahead of its entry (MPush registers its wait after the write and loses fast ACKs). Ids come
//! from one node-wide counter that skips ids still in use when it wraps.
use crate::ids::{ConnId, PushId};
use rustc_hash::FxHashMap;

/// Who a PUSH frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A single-user push (its write and possibly its ACK decide the status).
    Single(PushId),
    /// One delivery of a broadcast (only its write is awaited).
    Broadcast(PushId),
}

/// One PUSH frame in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub conn: ConnId,
    pub owner: Owner,
}

/// The in-flight table.
#[derive(Debug, Default)]
pub struct InFlightTable {
    entries: FxHashMap<i32, InFlight>,
    next_session_id: i32,
}

impl InFlightTable {
    pub fn new() -> Self {
        Self {
            entries: FxHashMap::default(),
            next_session_id: 1,
        }
    }

    /// Registers a new PUSH and returns its sessionId (positive, not in use).
    pub fn register(&mut self, entry: InFlight) -> i32 {
        // At most entries.len() + 1 probes: the table is far smaller than i32::MAX.
        loop {
            let id = self.next_session_id;
            self.next_session_id = if id == i32::MAX { 1 } else { id + 1 };
            if let std::collections::hash_map::Entry::Vacant(slot) = self.entries.entry(id) {
                slot.insert(entry);
                return id;
            }
        }
    }

    /// The entry for `session_id` if it belongs to `conn` (an ACK from another connection
    /// does not count).
    pub fn get(&self, conn: ConnId, session_id: i32) -> Option<InFlight> {
        self.entries
            .get(&session_id)
            .copied()
            .filter(|e| e.conn == conn)
    }

    /// Removes and returns the entry.
    pub fn remove(&mut self, session_id: i32) -> Option<InFlight> {
        self.entries.remove(&session_id)
    }

    /// Gives back capacity a crowd left behind ([`crate::spare`]).
    pub fn shrink_spare_capacity(&mut self) {
        crate::spare::shrink_map(&mut self.entries);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&i32, &InFlight)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_acks_must_come_from_the_right_connection() {
        let mut t = InFlightTable::new();
        let a = t.register(InFlight {
            conn: ConnId(1),
            owner: Owner::Single(PushId(1)),
        });
        let b = t.register(InFlight {
            conn: ConnId(2),
            owner: Owner::Broadcast(PushId(2)),
        });
        assert_ne!(a, b);
        assert!(t.get(ConnId(2), a).is_none());
        assert!(t.get(ConnId(1), a).is_some());
        t.next_session_id = i32::MAX;
        let c = t.register(InFlight {
            conn: ConnId(1),
            owner: Owner::Single(PushId(3)),
        });
        assert_eq!(c, i32::MAX);
        let d = t.register(InFlight {
            conn: ConnId(1),
            owner: Owner::Single(PushId(4)),
        });
        assert!(d > 0 && d != a && d != b, "wraps to 1 and skips ids in use");
    }
}
