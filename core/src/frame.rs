//! The MPush packet frame (reference §2): a 13-byte big-endian header and a body, or the
//! single heartbeat byte `0xDF`.
//!
//! ```text
//! offset 0  length    i32  body length only (not the header)
//!        4  cmd       u8   command code
//!        5  cc        i16  "check code": written 0, ignored on read
//!        7  flags     u8   CRYPTO | COMPRESS | BIZ_ACK | AUTO_ACK | JSON_BODY
//!        8  sessionId i32  request/response correlation id
//!       12  lrc       u8   "redundancy check": written 0, ignored on read
//!       13  body      `length` bytes
//! ```
//!
//! [`FrameDecoder`] splits a byte stream incrementally: it returns `Ok(None)` until a whole
//! frame is buffered, and rejects a negative or oversized `length` as soon as the header is
//! readable, so a peer can never make it buffer more than the configured maximum.
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the packet header.
pub const HEADER_BYTES: usize = 13;
/// The one-byte heartbeat both sides send instead of a header.
pub const HEARTBEAT_BYTE: u8 = 0xDF;
/// MPush's default `max-packet-size`: the largest body accepted.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024;

/// The flag bits of a packet header (reference §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// The body is encrypted (AES, or RSA for the client's handshake).
    pub const CRYPTO: Flags = Flags(0x01);
    /// The body was compressed before encryption.
    pub const COMPRESS: Flags = Flags(0x02);
    /// The application acknowledges the push itself.
    pub const BIZ_ACK: Flags = Flags(0x04);
    /// The client SDK acknowledges the push as soon as it delivered it.
    pub const AUTO_ACK: Flags = Flags(0x08);
    /// WebSocket only: the body is JSON.
    pub const JSON_BODY: Flags = Flags(0x10);
    /// No flag.
    pub const NONE: Flags = Flags(0);
    /// The two acknowledgement bits.
    pub const ACK_MASK: Flags = Flags(0x04 | 0x08);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any bit of `other` is set.
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// Both flag sets together.
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// This set without the bits of `other`.
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// Whether the push must be acknowledged (BIZ_ACK or AUTO_ACK).
    pub const fn needs_ack(self) -> bool {
        self.intersects(Flags::ACK_MASK)
    }

    /// Only the acknowledgement bits.
    pub const fn ack_bits(self) -> Flags {
        Flags(self.0 & Flags::ACK_MASK.0)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.with(rhs)
    }
}

/// One packet: header fields and the body as it is on the wire (possibly encrypted or
/// compressed; see [`crate::pipeline`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The raw command byte; see [`crate::command::Command::try_from`].
    pub cmd: u8,
    pub flags: Flags,
    pub session_id: i32,
    pub body: Bytes,
}

impl Packet {
    /// A packet with the given fields.
    pub fn new(cmd: u8, flags: Flags, session_id: i32, body: impl Into<Bytes>) -> Self {
        Self {
            cmd,
            flags,
            session_id,
            body: body.into(),
        }
    }

    /// Bytes this packet takes on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.body.len()
    }

    /// Appends the header (cc and lrc written as 0) and the body to `out`.
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        encode_header(out, self.cmd, self.flags, self.session_id, self.body.len());
        out.put_slice(&self.body);
    }

    /// The packet as a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.freeze()
    }
}

/// Appends a 13-byte header for a body of `body_len` bytes.
pub fn encode_header<B: BufMut>(
    out: &mut B,
    cmd: u8,
    flags: Flags,
    session_id: i32,
    body_len: usize,
) {
    // Bodies are bounded by the frame limit, far below i32::MAX.
    debug_assert!(body_len <= i32::MAX as usize);
    out.put_i32(i32::try_from(body_len).unwrap_or(i32::MAX));
    out.put_u8(cmd);
    out.put_i16(0); // cc
    out.put_u8(flags.0);
    out.put_i32(session_id);
    out.put_u8(0); // lrc
}

/// Appends the one-byte heartbeat.
pub fn encode_heartbeat<B: BufMut>(out: &mut B) {
    out.put_u8(HEARTBEAT_BYTE);
}

/// One unit of the stream: a heartbeat byte or a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Heartbeat,
    Packet(Packet),
}

/// Why the stream cannot be decoded further. Both are fatal for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces a body larger than the configured limit.
    #[error("frame body of {length} bytes exceeds the limit of {max_body_bytes} bytes")]
    TooLarge {
        length: usize,
        max_body_bytes: usize,
    },
    /// The header announces a negative body length.
    #[error("negative frame length {length}")]
    NegativeLength { length: i32 },
}

/// An incremental decoder over a connection's receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    max_body_bytes: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder accepting bodies of at most `max_body_bytes`.
    pub const fn new(max_body_bytes: usize) -> Self {
        Self { max_body_bytes }
    }

    /// The body limit.
    pub const fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Takes the next frame off the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (nothing consumed). `Ok(Some(frame))`: the frame's
    /// bytes were consumed. `Err`: the stream is unusable; `buf` is left as it was and the same
    /// error is returned again on the next call.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first == HEARTBEAT_BYTE {
            buf.advance(1);
            return Ok(Some(Frame::Heartbeat));
        }
        if buf.len() < 4 {
            return Ok(None);
        }
        let length = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let Ok(body_len) = usize::try_from(length) else {
            return Err(FrameError::NegativeLength { length });
        };
        if body_len > self.max_body_bytes {
            return Err(FrameError::TooLarge {
                length: body_len,
                max_body_bytes: self.max_body_bytes,
            });
        }
        if buf.len() < HEADER_BYTES + body_len {
            // Make room once for the whole frame, so a slow sender causes one allocation.
            buf.reserve(HEADER_BYTES + body_len - buf.len());
            return Ok(None);
        }
        let mut header = buf.split_to(HEADER_BYTES);
        header.advance(4);
        let cmd = header.get_u8();
        let _cc = header.get_i16();
        let flags = Flags(header.get_u8());
        let session_id = header.get_i32();
        let _lrc = header.get_u8();
        let body = buf.split_to(body_len).freeze();
        Ok(Some(Frame::Packet(Packet {
            cmd,
            flags,
            session_id,
            body,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_from_the_reference() {
        // OK to a BIND with sessionId 2.
        let body = hex_body("0500000c62696e642073756363657373");
        let packet = Packet::new(11, Flags::NONE, 2, body);
        assert_eq!(
            hex(&packet.to_bytes()),
            "000000100b00000000000002000500000c62696e642073756363657373"
        );
        // ACK for push 1001.
        let ack = Packet::new(23, Flags::NONE, 1001, Bytes::new());
        assert_eq!(hex(&ack.to_bytes()), "0000000017000000000003e900");
    }

    #[test]
    fn heartbeats_and_partial_frames() {
        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::from(&[0xDF, 0xDF, 0x00, 0x00][..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Frame::Heartbeat)));
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Frame::Heartbeat)));
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[
            0x00, 0x01, 0x0F, 0xAB, 0xCD, 0x01, 0x00, 0x00, 0x00, 0x07, 0x99,
        ]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[0x42]);
        let Some(Frame::Packet(p)) = decoder.decode(&mut buf).unwrap() else {
            panic!("packet expected")
        };
        assert_eq!(
            (p.cmd, p.flags, p.session_id, &p.body[..]),
            (15, Flags::CRYPTO, 7, &[0x42][..])
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_and_negative_lengths_fail_at_the_header() {
        let decoder = FrameDecoder::new(100);
        let mut buf = BytesMut::from(&[0x00, 0x00, 0x00, 0x65][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge {
                length: 101,
                max_body_bytes: 100
            })
        );
        assert_eq!(buf.len(), 4, "nothing consumed on error");
        let mut buf = BytesMut::from(&[0x80, 0x00, 0x00, 0x00][..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::NegativeLength { length: i32::MIN })
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn hex_body(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
