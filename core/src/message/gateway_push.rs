//! GATEWAY_PUSH (cmd 16): a push request from a PushClient to a gateway node (§8, §11).
//! An empty `user_id` makes it a broadcast.
use super::{Body, DecodeError};
use crate::codec::{put_bytes, put_string, Reader};
use bytes::{BufMut, Bytes};

/// A GATEWAY_PUSH body. The ack mode travels in the packet flags (BIZ_ACK / AUTO_ACK).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayPush {
    /// The target user; empty for a broadcast.
    pub user_id: String,
    /// The route's client type (1 mobile, 2 PC, 3 web, -1 unknown); 0 on broadcasts.
    pub client_type: i32,
    /// The time the gateway has for this push, in ms (PushClient sends its timeout − 500).
    pub timeout_ms: i32,
    /// What the phone receives as the PUSH body.
    pub content: Bytes,
    /// Broadcast task id: flow control and progress come from the store.
    pub task_id: String,
    /// Broadcast tag filter as MPush sends it: a JSON array of strings, e.g. `["tag-a"]`.
    pub tags: String,
    /// Broadcast condition expression (see [`crate::condition`]).
    pub condition: String,
}

/// The `tags` field was not a JSON array of strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tags must be a JSON array of strings: {0}")]
pub struct BadTags(pub String);

impl GatewayPush {
    /// True when this push goes to every matching connection rather than one user.
    pub fn is_broadcast(&self) -> bool {
        self.user_id.is_empty()
    }

    /// The tag filter as a list; `None` when no filter was given.
    pub fn tag_list(&self) -> Result<Option<Vec<String>>, BadTags> {
        if self.tags.is_empty() {
            return Ok(None);
        }
        serde_json::from_str::<Option<Vec<String>>>(&self.tags).map_err(|e| BadTags(e.to_string()))
    }

    /// Sets the tag filter from a list, in the JSON form MPush writes.
    pub fn set_tags<S: AsRef<str>>(&mut self, tags: &[S]) {
        let list: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
        self.tags = if list.is_empty() {
            String::new()
        } else {
            // Serialising a list of strings cannot fail.
            serde_json::to_string(&list).unwrap_or_default()
        };
    }
}

impl Body for GatewayPush {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            user_id: r.string("userId")?,
            client_type: r.i32("clientType")?,
            timeout_ms: r.i32("timeout")?,
            content: r.owned_bytes("content")?,
            task_id: r.string("taskId")?,
            tags: r.string("tags")?,
            condition: r.string("condition")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_string(out, &self.user_id);
        out.put_i32(self.client_type);
        out.put_i32(self.timeout_ms);
        put_bytes(out, &self.content);
        put_string(out, &self.task_id);
        put_string(out, &self.tags);
        put_string(out, &self.condition);
    }
}
