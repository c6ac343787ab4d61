//! SipHash-1-3, keyed: the hash of tables whose keys others choose (user ids in the route
//! index).
//!
//! A table keyed by strings an attacker picks needs a hash they cannot predict, or they can put
//! every key in one bucket. SipHash with a secret 128-bit key is that hash; the 1-3 variant
//! (one compression round per 8-byte word, three finalisation rounds) is the one std's
//! `HashMap` uses by default, at about 60 % of the rounds of SipHash-2-4 for a short key. std
//! offers no keyed SipHash-1-3 on stable (its `RandomState` draws its keys from the operating
//! system, and the core takes its randomness as an input), so it is written out here.
//! [`Sip`] is generic over the round counts only so the tests can hold the 2-4 instance to
//! std's `SipHasher`.
use std::hash::Hasher;

/// SipHash with `C` compression and `D` finalisation rounds, keyed by (`k0`, `k1`).
#[derive(Debug, Clone, Copy)]
pub struct Sip<const C: usize, const D: usize> {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    /// Bytes written that do not fill a word yet (little-endian, `tail_len` of them).
    tail: u64,
    tail_len: usize,
    /// Bytes written in all (its low byte goes into the last word).
    length: usize,
}

/// SipHash-1-3.
pub type SipHasher13 = Sip<1, 3>;

impl<const C: usize, const D: usize> Sip<C, D> {
    /// A hasher keyed by (`k0`, `k1`).
    pub const fn new_with_keys(k0: u64, k1: u64) -> Self {
        Self {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            tail: 0,
            tail_len: 0,
            length: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    #[inline(always)]
    fn compress(&mut self, word: u64) {
        self.v3 ^= word;
        for _ in 0..C {
            self.round();
        }
        self.v0 ^= word;
    }
}

/// Up to 8 bytes as a little-endian word.
#[inline(always)]
fn word_of(bytes: &[u8]) -> u64 {
    debug_assert!(bytes.len() <= 8);
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

impl<const C: usize, const D: usize> Hasher for Sip<C, D> {
    #[inline]
    fn write(&mut self, msg: &[u8]) {
        self.length = self.length.wrapping_add(msg.len());
        let mut rest = msg;
        if self.tail_len > 0 {
            // Fill the pending word first.
            let fill = (8 - self.tail_len).min(rest.len());
            self.tail |= word_of(&rest[..fill]) << (8 * self.tail_len);
            self.tail_len += fill;
            rest = &rest[fill..];
            if self.tail_len < 8 {
                return;
            }
            let word = self.tail;
            self.compress(word);
            self.tail = 0;
            self.tail_len = 0;
        }
        let mut words = rest.chunks_exact(8);
        for chunk in &mut words {
            self.compress(word_of(chunk));
        }
        let left = words.remainder();
        self.tail = word_of(left);
        self.tail_len = left.len();
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut state = *self;
        let last = ((self.length as u64 & 0xff) << 56) | self.tail;
        state.compress(last);
        state.v2 ^= 0xff;
        for _ in 0..D {
            state.round();
        }
        state.v0 ^ state.v1 ^ state.v2 ^ state.v3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    #[allow(deprecated)] // std's SipHasher is SipHash-2-4, the reference for the shared code.
    fn std_sip24(k0: u64, k1: u64) -> std::hash::SipHasher {
        std::hash::SipHasher::new_with_keys(k0, k1)
    }

    proptest::proptest! {
        /// The 2-4 instance gives std's SipHash-2-4 for any keys, bytes and split into writes
        /// (so the word buffering, the length byte and the rounds are right; 1-3 differs only
        /// in the round counts).
        #[test]
        fn the_2_4_instance_is_std_siphash(
            k0: u64,
            k1: u64,
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            cuts in proptest::collection::vec(0usize..80, 0..6),
        ) {
            let mut ours = Sip::<2, 4>::new_with_keys(k0, k1);
            let mut reference = std_sip24(k0, k1);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut from = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                ours.write(&data[from..cut]);
                reference.write(&data[from..cut]);
                from = cut;
            }
            proptest::prop_assert_eq!(ours.finish(), reference.finish());
        }
    }

    #[test]
    fn strings_hash_as_std_hashes_them_and_keys_matter() {
        let mut ours = Sip::<2, 4>::new_with_keys(1, 2);
        let mut reference = std_sip24(1, 2);
        "user-1".hash(&mut ours);
        "user-1".hash(&mut reference);
        assert_eq!(ours.finish(), reference.finish());
        let hash = |k0, k1, text: &str| {
            let mut h = SipHasher13::new_with_keys(k0, k1);
            text.hash(&mut h);
            h.finish()
        };
        assert_ne!(hash(1, 2, "user-1"), hash(1, 3, "user-1"));
        assert_ne!(hash(1, 2, "user-1"), hash(1, 2, "user-2"));
        assert_ne!(hash(1, 2, "user-1"), hash(1, 2, "user-1\u{0}"));
    }

    #[test]
    fn siphash_1_3_reference_values() {
        // SipHash-1-3 under the all-zero key, as published beside other implementations (the
        // 64-bit result, written most significant byte first).
        for (input, output) in [
            (&b""[..], [0xd1, 0xfb, 0xa7, 0x62, 0x15, 0x0c, 0x53, 0x2c]),
            (b"siphash", [0x82, 0x64, 0xce, 0xec, 0xcb, 0x16, 0xbc, 0xbe]),
        ] {
            let mut h = SipHasher13::new_with_keys(0, 0);
            h.write(input);
            assert_eq!(h.finish(), u64::from_be_bytes(output), "{input:?}");
        }
    }
}
