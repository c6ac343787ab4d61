//! KICK (cmd 13): tells an older connection that the same user bound elsewhere (§8, §9.6).
use super::{Body, DecodeError};
use crate::codec::{put_string, Reader};
use bytes::BufMut;

/// A KICK body: identifies the session being replaced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Kick {
    pub device_id: String,
    pub user_id: String,
}

impl Body for Kick {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            device_id: r.string("deviceId")?,
            user_id: r.string("userId")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_string(out, &self.device_id);
        put_string(out, &self.user_id);
    }
}
