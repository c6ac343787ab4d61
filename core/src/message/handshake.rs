//! HANDSHAKE (cmd 2): the client's request and the server's "handshake ok" answer (§8, §9.1).
use super::{Body, DecodeError};
use crate::codec::{put_bytes, put_string, Reader};
use bytes::{BufMut, Bytes};

/// The client's HANDSHAKE request (sent RSA-encrypted).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Handshake {
    pub device_id: String,
    pub os_name: String,
    pub os_version: String,
    pub client_version: String,
    /// The connection's AES IV; must be 16 bytes to be accepted.
    pub iv: Bytes,
    /// The client half of the session key; must be 16 bytes to be accepted.
    pub client_key: Bytes,
    pub min_heartbeat_ms: i32,
    pub max_heartbeat_ms: i32,
    /// Sent as 0 by the Java SDK and ignored by servers.
    pub timestamp_ms: i64,
}

impl Body for Handshake {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            device_id: r.string("deviceId")?,
            os_name: r.string("osName")?,
            os_version: r.string("osVersion")?,
            client_version: r.string("clientVersion")?,
            iv: r.owned_bytes("iv")?,
            client_key: r.owned_bytes("clientKey")?,
            min_heartbeat_ms: r.i32("minHeartbeat")?,
            max_heartbeat_ms: r.i32("maxHeartbeat")?,
            timestamp_ms: r.i64("timestamp")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_string(out, &self.device_id);
        put_string(out, &self.os_name);
        put_string(out, &self.os_version);
        put_string(out, &self.client_version);
        put_bytes(out, &self.iv);
        put_bytes(out, &self.client_key);
        out.put_i32(self.min_heartbeat_ms);
        out.put_i32(self.max_heartbeat_ms);
        out.put_i64(self.timestamp_ms);
    }
}

/// The server's answer to a successful handshake (sent AES(clientKey, iv)-encrypted).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeOk {
    /// The server half of the session key (16 bytes).
    pub server_key: Bytes,
    pub heartbeat_ms: i32,
    /// The reusable-session id for fast connect: 32 lowercase hex characters.
    pub session_id: String,
    /// When the reusable session expires (epoch milliseconds).
    pub expire_time_ms: i64,
}

impl Body for HandshakeOk {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            server_key: r.owned_bytes("serverKey")?,
            heartbeat_ms: r.i32("heartbeat")?,
            session_id: r.string("sessionId")?,
            expire_time_ms: r.i64("expireTime")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_bytes(out, &self.server_key);
        out.put_i32(self.heartbeat_ms);
        put_string(out, &self.session_id);
        out.put_i64(self.expire_time_ms);
    }
}
