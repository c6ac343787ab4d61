//! Spare capacity: when a table that a crowd filled (a reconnect storm, a burst of pushes) has
//! emptied again, its capacity is given back so memory follows live work.
//!
//! Hash tables and queues keep their largest capacity forever; after 10,000 phones came and
//! went that is hundreds of KiB per table held for nothing. [`crate::node::Node::shrink_spare_capacity`]
//! and the embedded store's housekeeping call these rules now and then (not per operation: a
//! table that shrinks on every removal grows again on the next insert). A table shrinks only
//! when it holds less than a quarter of its capacity and more than [`MIN_SPARE_SLOTS`] slots are
//! spare, and keeps room for twice what it holds.

/// Spare slots below which a table is left alone (shrinking it would save little).
pub const MIN_SPARE_SLOTS: usize = 1024;

/// True when a table of `capacity` slots holding `len` is worth shrinking.
pub fn worth_shrinking(capacity: usize, len: usize) -> bool {
    capacity > len.saturating_mul(4) && capacity - len > MIN_SPARE_SLOTS
}

/// The capacity a shrinking table of `len` entries keeps.
pub fn keep_for(len: usize) -> usize {
    len.saturating_mul(2)
}

/// Shrinks `map` when [`worth_shrinking`].
pub fn shrink_map<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<K, V, S>,
) {
    if worth_shrinking(map.capacity(), map.len()) {
        map.shrink_to(keep_for(map.len()));
    }
}

/// Shrinks `set` when [`worth_shrinking`].
pub fn shrink_set<K: Eq + std::hash::Hash, S: std::hash::BuildHasher>(
    set: &mut std::collections::HashSet<K, S>,
) {
    if worth_shrinking(set.capacity(), set.len()) {
        set.shrink_to(keep_for(set.len()));
    }
}

/// Shrinks `queue` when [`worth_shrinking`].
pub fn shrink_queue<T>(queue: &mut std::collections::VecDeque<T>) {
    if worth_shrinking(queue.capacity(), queue.len()) {
        queue.shrink_to(keep_for(queue.len()));
    }
}

/// Shrinks `list` when [`worth_shrinking`].
pub fn shrink_vec<T>(list: &mut Vec<T>) {
    if worth_shrinking(list.capacity(), list.len()) {
        list.shrink_to(keep_for(list.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashMap;

    #[test]
    fn a_table_a_crowd_left_shrinks_and_a_busy_one_does_not() {
        let mut map: FxHashMap<u32, u64> = (0..10_000).map(|i| (i, 0)).collect();
        let full = map.capacity();
        shrink_map(&mut map);
        assert_eq!(map.capacity(), full, "a full table keeps its capacity");
        map.retain(|k, _| *k < 100);
        shrink_map(&mut map);
        assert!(
            map.capacity() < 1_000,
            "capacity {} after 100 stayed",
            map.capacity()
        );
        assert!(map.capacity() >= 200);
        assert_eq!(map.len(), 100);
    }

    #[test]
    fn a_drained_list_gives_its_burst_back() {
        let mut list: Vec<u32> = (0..10_000).collect();
        shrink_vec(&mut list);
        assert!(list.capacity() >= 10_000, "a full list keeps its capacity");
        list.clear();
        shrink_vec(&mut list);
        assert_eq!(list.capacity(), 0);
        let mut queue: std::collections::VecDeque<u32> = (0..10_000).collect();
        queue.truncate(10);
        shrink_queue(&mut queue);
        assert!(queue.capacity() < 1_000 && queue.len() == 10);
    }

    #[test]
    fn small_tables_are_left_alone() {
        assert!(!worth_shrinking(1_000, 0));
        assert!(worth_shrinking(1_100, 0));
        assert!(!worth_shrinking(8_000, 2_001));
        assert!(worth_shrinking(8_000, 1_999));
    }
}
