//! PUSH (cmd 15): a message to the phone, or an upstream message from it (§8, §9.7, §9.8).
//! The body is the content itself, with no length prefix.
use super::{Body, DecodeError};
use bytes::{BufMut, Bytes};

/// A PUSH body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Push {
    pub content: Bytes,
}

impl Body for Push {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Ok(Self {
            content: Bytes::copy_from_slice(body),
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_slice(&self.content);
    }
}
