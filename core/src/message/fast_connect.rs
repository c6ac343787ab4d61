//! FAST_CONNECT (cmd 7): resuming a cached session without RSA (§8, §9.2). Both directions
//! travel in plaintext.
use super::{Body, DecodeError};
use crate::codec::{put_string, Reader};
use bytes::BufMut;

/// The client's fast-connect request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FastConnect {
    /// The reusable-session id from an earlier HANDSHAKE-ok.
    pub session_id: String,
    pub device_id: String,
    pub min_heartbeat_ms: i32,
    pub max_heartbeat_ms: i32,
}

impl Body for FastConnect {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            session_id: r.string("sessionId")?,
            device_id: r.string("deviceId")?,
            min_heartbeat_ms: r.i32("minHeartbeat")?,
            max_heartbeat_ms: r.i32("maxHeartbeat")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_string(out, &self.session_id);
        put_string(out, &self.device_id);
        out.put_i32(self.min_heartbeat_ms);
        out.put_i32(self.max_heartbeat_ms);
    }
}

/// The server's answer to a successful fast connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FastConnectOk {
    pub heartbeat_ms: i32,
}

impl Body for FastConnectOk {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Ok(Self {
            heartbeat_ms: Reader::new(body).i32("heartbeat")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_i32(self.heartbeat_ms);
    }
}
