//! A group's phones, by slot number: fixed-size chunks, so memory grows with the phones held,
//! a chunk at a time, never by doubling one array (a `Vec` of 19,000 slots of ~150 bytes
//! would hold up to twice that while it grows, and keep it).
//!
//! A slot number is the phone's token in the group's epoll set: stable while the phone lives,
//! handed out again after (a freed number is the next one taken). Chunks are not given back: a
//! group keeps the slots of its busiest moment, as the node's tables keep their capacity.

/// Slots per chunk.
pub const CHUNK_SLOTS: usize = 256;

/// Slot number → value, in chunks of [`CHUNK_SLOTS`].
pub struct Slots<T> {
    chunks: Vec<Vec<Option<T>>>,
    /// Numbers of free slots in allocated chunks.
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated (held or free).
    pub fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK_SLOTS
    }

    /// The number the next [`Slots::insert`] uses (a chunk is added when none is free);
    /// `None` when the numbers (u32) ran out.
    pub fn next_slot(&mut self) -> Option<u32> {
        if self.free.is_empty() {
            let base = u32::try_from(self.capacity()).ok()?;
            base.checked_add(CHUNK_SLOTS as u32)?;
            let mut chunk = Vec::with_capacity(CHUNK_SLOTS);
            chunk.resize_with(CHUNK_SLOTS, || None);
            self.chunks.push(chunk);
            // Lowest number on top of the stack.
            self.free.extend((base..base + CHUNK_SLOTS as u32).rev());
        }
        self.free.last().copied()
    }

    /// Puts `value` in a free slot ([`Slots::next_slot`]'s); its number. `None` when the
    /// numbers (u32) ran out.
    pub fn insert(&mut self, value: T) -> Option<u32> {
        let slot = self.next_slot()?;
        let place = self.place(slot)?;
        debug_assert!(place.is_none(), "a free slot held a value");
        *place = Some(value);
        self.free.pop();
        self.len += 1;
        Some(slot)
    }

    /// The value in `slot`, if any.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.place(slot)?.as_mut()
    }

    /// Takes the value out of `slot`; the number is free again.
    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let value = self.place(slot)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    fn place(&mut self, slot: u32) -> Option<&mut Option<T>> {
        let slot = slot as usize;
        self.chunks
            .get_mut(slot / CHUNK_SLOTS)?
            .get_mut(slot % CHUNK_SLOTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Any order of inserts and removes: every value is found under its number until
        /// removed, no two live values share a number, and chunks are allocated only when
        /// every allocated slot is held.
        #[test]
        fn slots_behave_like_a_map(ops in proptest::collection::vec(any::<(bool, u16)>(), 0..2_000)) {
            let mut slots = Slots::default();
            let mut model: HashMap<u32, u32> = HashMap::new();
            for (n, (insert, pick)) in ops.into_iter().enumerate() {
                if insert || model.is_empty() {
                    let before = slots.capacity();
                    let next = slots.next_slot().expect("numbers left");
                    let slot = slots.insert(n as u32).expect("numbers left");
                    prop_assert_eq!(next, slot);
                    if slots.capacity() > before {
                        prop_assert_eq!(model.len(), before, "a chunk added while slots were free");
                    }
                    prop_assert!(model.insert(slot, n as u32).is_none(), "slot {} handed out twice", slot);
                } else {
                    let mut keys: Vec<u32> = model.keys().copied().collect();
                    keys.sort_unstable();
                    let slot = keys[pick as usize % keys.len()];
                    prop_assert_eq!(slots.remove(slot), model.remove(&slot));
                    prop_assert_eq!(slots.remove(slot), None);
                }
                prop_assert_eq!(slots.len(), model.len());
            }
            for (slot, value) in &model {
                prop_assert_eq!(slots.get_mut(*slot).copied(), Some(*value));
            }
            prop_assert_eq!(slots.get_mut(u32::MAX), None);
        }
    }
}
