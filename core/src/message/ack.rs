//! ACK (cmd 23): acknowledges the PUSH whose packet sessionId it carries; the body is empty.
use super::{Body, DecodeError};
use bytes::BufMut;

/// An ACK body (empty). Any bytes a peer sends in it are ignored, as MPush does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ack;

impl Body for Ack {
    fn decode(_body: &[u8]) -> Result<Self, DecodeError> {
        Ok(Ack)
    }

    fn encode<B: BufMut>(&self, _out: &mut B) {}
}
