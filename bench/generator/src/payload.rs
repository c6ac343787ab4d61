//! The benchmark payload: 64 bytes whose first 16 carry what the receiving side needs to time a
//! message without asking the sender — the send time (ns since this process's epoch), the
//! measurement point it belongs to and its sequence number — and whose rest is filler.
//!
//! The same process sends and receives every message, so one monotonic clock ([`now_ns`])
//! serves both ends and no clock synchronisation is involved.
use std::sync::OnceLock;
use std::time::Instant;

/// Bytes of every message the benchmark sends (the 64-byte payload).
pub const PAYLOAD_BYTES: usize = 64;
/// Bytes of the stamp at the front of the payload.
const STAMP_BYTES: usize = 16;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When the message was meant to be sent (open loop) or was sent (closed loop), in ns
    /// since [`epoch`].
    pub sent_ns: u64,
    /// The measurement point that sent it (messages of an earlier point are ignored).
    pub point_id: u32,
    /// The message's number within its point (single pushes) or the broadcast's (fan-out).
    pub seq: u32,
}

impl Stamp {
    /// The 64-byte payload carrying this stamp.
    pub fn encode(&self) -> [u8; PAYLOAD_BYTES] {
        let mut out = [b'.'; PAYLOAD_BYTES];
        out[0..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        out[8..12].copy_from_slice(&self.point_id.to_le_bytes());
        out[12..16].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Reads a payload's stamp; `None` when it is too short to be one of ours.
    pub fn decode(payload: &[u8]) -> Option<Stamp> {
        if payload.len() < STAMP_BYTES {
            return None;
        }
        let u64_at = |i: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&payload[i..i + 8]);
            u64::from_le_bytes(raw)
        };
        let u32_at = |i: usize| {
            let mut raw = [0u8; 4];
            raw.copy_from_slice(&payload[i..i + 4]);
            u32::from_le_bytes(raw)
        };
        Some(Stamp {
            sent_ns: u64_at(0),
            point_id: u32_at(8),
            seq: u32_at(12),
        })
    }
}

/// The process-local epoch of every timestamp (set on first use).
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_short_payloads_are_refused() {
        let stamp = Stamp {
            sent_ns: 123_456_789_012,
            point_id: 7,
            seq: 4_000_000_000,
        };
        let payload = stamp.encode();
        assert_eq!(payload.len(), PAYLOAD_BYTES);
        assert_eq!(Stamp::decode(&payload), Some(stamp));
        assert_eq!(Stamp::decode(&payload[..15]), None);
    }
}
