//! Field encodings inside MPush message bodies (reference §3).
//!
//! Integers are big-endian. Strings and byte arrays carry a 2-byte signed length; lengths of
//! 32767 and more use the extended form `0x7FFF` followed by a 4-byte `length - 32767`. A length
//! of 0 means "null or empty": the wire cannot tell the two apart, so this crate models absent
//! strings as `""` and absent byte arrays as empty [`Bytes`], which keeps decode → encode exact.
//!
//! [`Reader`] never allocates before it has checked that the declared length is present in the
//! input, so a hostile length field costs nothing.
use bytes::{BufMut, Bytes};

/// The 2-byte length value that announces the extended 4-byte length.
pub const EXTENDED_LENGTH_MARKER: i16 = 0x7FFF;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ended inside `field`.
    #[error("body truncated while reading {field}")]
    Truncated { field: &'static str },
    /// A length prefix was negative.
    #[error("negative length {length} for {field}")]
    NegativeLength { field: &'static str, length: i64 },
    /// A string field was not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// A field that must have a fixed size did not.
    #[error("{field} must be {expected} bytes, got {actual}")]
    BadFieldSize {
        field: &'static str,
        expected: usize,
        actual: usize,
    },
}

/// A cursor over a body, reading the encodings of §3.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the first byte of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.input.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A 2-byte signed integer.
    pub fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    /// A 4-byte signed integer.
    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// An 8-byte signed integer.
    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// A length-prefixed byte array; empty when the length is 0 (null on the wire).
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let short = self.i16(field)?;
        let length: i64 = if short == EXTENDED_LENGTH_MARKER {
            i64::from(short) + i64::from(self.i32(field)?)
        } else {
            i64::from(short)
        };
        if length < 0 {
            return Err(DecodeError::NegativeLength { field, length });
        }
        // `length` fits in usize on every platform we build for (it is at most 2^31 + 2^15).
        let length = usize::try_from(length).map_err(|_| DecodeError::Truncated { field })?;
        self.take(length, field)
    }

    /// A length-prefixed byte array copied into [`Bytes`].
    pub fn owned_bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        self.bytes(field).map(Bytes::copy_from_slice)
    }

    /// A length-prefixed UTF-8 string; `""` when the length is 0 (null on the wire).
    pub fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.bytes(field)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Every byte not read yet (for bodies that end in raw content).
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.input)
    }
}

/// Writes a length prefix in the short or the extended form.
pub fn put_length<B: BufMut>(out: &mut B, length: usize) {
    // Lengths come from in-memory buffers, which are far below 2^31 + 2^15 in practice; a
    // larger one would not fit any frame. Saturate rather than wrap.
    if length < EXTENDED_LENGTH_MARKER as usize {
        out.put_i16(length as i16);
    } else {
        out.put_i16(EXTENDED_LENGTH_MARKER);
        let extra = length - EXTENDED_LENGTH_MARKER as usize;
        out.put_i32(i32::try_from(extra).unwrap_or(i32::MAX));
    }
}

/// Writes a length-prefixed byte array (empty = null).
pub fn put_bytes<B: BufMut>(out: &mut B, data: &[u8]) {
    put_length(out, data.len());
    out.put_slice(data);
}

/// Writes a length-prefixed UTF-8 string (empty = null).
pub fn put_string<B: BufMut>(out: &mut B, text: &str) {
    put_bytes(out, text.as_bytes());
}

/// Encoded size of a length-prefixed field holding `length` bytes.
pub fn prefixed_len(length: usize) -> usize {
    if length < EXTENDED_LENGTH_MARKER as usize {
        2 + length
    } else {
        6 + length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_extended_lengths() {
        for len in [0usize, 1, 32766, 32767, 32768, 70000] {
            let data = vec![b'x'; len];
            let mut out = Vec::new();
            put_bytes(&mut out, &data);
            assert_eq!(out.len(), prefixed_len(len));
            let mut r = Reader::new(&out);
            assert_eq!(r.bytes("f").unwrap(), &data[..]);
            assert!(r.is_empty());
        }
        let mut out = Vec::new();
        put_length(&mut out, 32767);
        assert_eq!(out, [0x7F, 0xFF, 0, 0, 0, 0]);
    }

    #[test]
    fn hostile_lengths_are_errors() {
        // Declares 32767 + 2^31-1 bytes but carries none.
        let mut r = Reader::new(&[0x7F, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF]);
        assert_eq!(r.bytes("f"), Err(DecodeError::Truncated { field: "f" }));
        let mut r = Reader::new(&[0x80, 0x00]);
        assert!(matches!(
            r.bytes("f"),
            Err(DecodeError::NegativeLength { .. })
        ));
        let mut r = Reader::new(&[0x7F, 0xFF, 0xFF, 0xFF, 0x00, 0x00]);
        assert!(matches!(
            r.bytes("f"),
            Err(DecodeError::NegativeLength { .. })
        ));
        let mut r = Reader::new(&[0x00, 0x02, 0xFF, 0xFE]);
        assert_eq!(r.string("s"), Err(DecodeError::InvalidUtf8 { field: "s" }));
    }
}
