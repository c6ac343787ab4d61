//! GATEWAY_KICK (cmd 14): server-to-server kick notice (MPush's UDP gateway mode, §8, §12.4).
use super::{Body, DecodeError};
use crate::codec::{put_string, Reader};
use bytes::BufMut;

/// A GATEWAY_KICK body: which connection of which user the target node should kick.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayKick {
    pub user_id: String,
    pub device_id: String,
    pub conn_id: String,
    pub client_type: i32,
    pub target_server: String,
    pub target_port: i32,
}

impl Body for GatewayKick {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            user_id: r.string("userId")?,
            device_id: r.string("deviceId")?,
            conn_id: r.string("connId")?,
            client_type: r.i32("clientType")?,
            target_server: r.string("targetServer")?,
            target_port: r.i32("targetPort")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_string(out, &self.user_id);
        put_string(out, &self.device_id);
        put_string(out, &self.conn_id);
        out.put_i32(self.client_type);
        put_string(out, &self.target_server);
        out.put_i32(self.target_port);
    }
}
