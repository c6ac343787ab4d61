//! BIND (cmd 5) and UNBIND (cmd 6): attach a user id and tags to a connection (§8, §9.4, §9.5).
use super::{Body, DecodeError};
use crate::codec::{put_string, Reader};
use bytes::BufMut;

/// The body of BIND and UNBIND.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bind {
    pub user_id: String,
    /// Free data for a bind validator ("alias" in the Java SDK; always empty from it).
    pub data: String,
    /// Free text, conventionally comma-separated: `"tag-a,tag-b"`.
    pub tags: String,
}

impl Bind {
    /// The tags split on commas, trimmed, empty parts dropped.
    pub fn tag_list(&self) -> impl Iterator<Item = &str> {
        self.tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }
}

impl Body for Bind {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            user_id: r.string("userId")?,
            data: r.string("data")?,
            tags: r.string("tags")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_string(out, &self.user_id);
        put_string(out, &self.data);
        put_string(out, &self.tags);
    }
}
