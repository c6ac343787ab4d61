//! Push requests: what a PushClient (or the local API) asks a node to deliver, and to whom.
//!
//! A GATEWAY_PUSH becomes a [`PushRequest`] once: ack mode from the flags, the client type
//! checked, the tag list and the condition parsed. A request that cannot be understood is
//! answered at once with a failure carrying the reason (for example a condition parse error);
//! it never reaches the push engine.
use crate::condition::{Condition, ConditionInput};
use crate::config::TagMatch;
use crate::frame::Flags;
use crate::ids::GatewayId;
use crate::message::GatewayPush;
use crate::route::ClientType;
use bytes::Bytes;
use std::collections::BTreeSet;

/// How the phone acknowledges a push (MPush's `AckModel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AckMode {
    /// Success when the PUSH is written.
    #[default]
    None,
    /// The client SDK ACKs on delivery (flag AUTO_ACK).
    Auto,
    /// The application ACKs (flag BIZ_ACK).
    Biz,
}

impl AckMode {
    /// The mode a packet's flags ask for (BIZ_ACK wins if both are set).
    pub fn from_flags(flags: Flags) -> AckMode {
        if flags.contains(Flags::BIZ_ACK) {
            AckMode::Biz
        } else if flags.contains(Flags::AUTO_ACK) {
            AckMode::Auto
        } else {
            AckMode::None
        }
    }

    /// The flag bits of this mode.
    pub fn flags(self) -> Flags {
        match self {
            AckMode::None => Flags::NONE,
            AckMode::Auto => Flags::AUTO_ACK,
            AckMode::Biz => Flags::BIZ_ACK,
        }
    }

    /// True unless no ACK is asked for.
    pub fn needs_ack(self) -> bool {
        self != AckMode::None
    }
}

/// A push to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinglePush {
    pub user_id: String,
    /// `None`: any of the user's connections on this node (the first in client-type order).
    pub client_type: Option<ClientType>,
    /// 0: the node's default.
    pub timeout_ms: u64,
    pub content: Bytes,
    pub ack: AckMode,
}

/// Which connections a broadcast reaches. Every filter given must match (an empty filter
/// matches every bound connection).
#[derive(Debug, Clone, Default)]
pub struct BroadcastFilter {
    /// At least one of these tags (see [`TagMatch`]).
    pub tags: Option<Vec<String>>,
    pub condition: Option<Condition>,
    /// Only these users.
    pub user_ids: Option<BTreeSet<String>>,
    pub client_type: Option<ClientType>,
}

/// What the filter reads of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub user_id: &'a str,
    pub client_type: ClientType,
    pub tags: &'a str,
    pub client_version: &'a str,
    pub os_name: &'a str,
    pub os_version: &'a str,
}

impl BroadcastFilter {
    /// Whether `candidate` receives the broadcast.
    pub fn matches(&self, candidate: &Candidate<'_>, tag_match: TagMatch) -> bool {
        if let Some(ct) = self.client_type {
            if ct != candidate.client_type {
                return false;
            }
        }
        if let Some(users) = &self.user_ids {
            if !users.contains(candidate.user_id) {
                return false;
            }
        }
        if let Some(wanted) = &self.tags {
            let hit = match tag_match {
                TagMatch::Exact => candidate
                    .tags
                    .split(',')
                    .map(str::trim)
                    .any(|have| wanted.iter().any(|w| w == have)),
                TagMatch::Substring => wanted.iter().any(|w| candidate.tags.contains(w.as_str())),
            };
            if !hit {
                return false;
            }
        }
        if let Some(condition) = &self.condition {
            let input = ConditionInput {
                user_id: candidate.user_id,
                tags: non_empty(candidate.tags),
                client_version: non_empty(candidate.client_version),
                os_name: non_empty(candidate.os_name),
                os_version: non_empty(candidate.os_version),
            };
            if !condition.matches(&input) {
                return false;
            }
        }
        true
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// A push to every matching connection of a node.
#[derive(Debug, Clone)]
pub struct Broadcast {
    pub content: Bytes,
    pub filter: BroadcastFilter,
    /// Flow control and progress come from the store under this id.
    pub task_id: Option<String>,
}

/// A push request.
#[derive(Debug, Clone)]
pub enum PushRequest {
    Single(SinglePush),
    Broadcast(Broadcast),
}

/// Who asked, and so where the status goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A PushClient on a gateway connection; the reply carries its request's sessionId.
    Gateway { gw: GatewayId, session_id: i32 },
    /// The node's own API (HTTP); the status is only reported as an event.
    Local { token: u64 },
}

/// A GATEWAY_PUSH the node cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("bad tags: {0}")]
    BadTags(String),
    #[error("bad condition: {0}")]
    BadCondition(String),
    #[error("empty content")]
    EmptyContent,
}

impl PushRequest {
    /// Interprets a GATEWAY_PUSH and its packet flags.
    pub fn from_gateway(message: GatewayPush, flags: Flags) -> Result<PushRequest, RequestError> {
        if message.is_broadcast() {
            let tags = message.tag_list().map_err(|e| RequestError::BadTags(e.0))?;
            let condition = if message.condition.trim().is_empty() {
                None
            } else {
                Some(
                    Condition::parse(&message.condition)
                        .map_err(|e| RequestError::BadCondition(e.to_string()))?,
                )
            };
            let filter = BroadcastFilter {
                tags: tags.filter(|t| !t.is_empty()),
                condition,
                user_ids: None,
                client_type: ClientType::from_code(message.client_type),
            };
            let task_id = (!message.task_id.is_empty()).then_some(message.task_id);
            return Ok(PushRequest::Broadcast(Broadcast {
                content: message.content,
                filter,
                task_id,
            }));
        }
        Ok(PushRequest::Single(SinglePush {
            user_id: message.user_id,
            client_type: ClientType::from_code(message.client_type),
            timeout_ms: u64::try_from(message.timeout_ms).unwrap_or(0),
            content: message.content,
            ack: AckMode::from_flags(flags),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate<'a>(user_id: &'a str, tags: &'a str) -> Candidate<'a> {
        Candidate {
            user_id,
            client_type: ClientType::Mobile,
            tags,
            client_version: "2.0",
            os_name: "android",
            os_version: "6.0",
        }
    }

    #[test]
    fn tag_matching_exact_and_substring() {
        let filter = BroadcastFilter {
            tags: Some(vec!["tag-1".into()]),
            ..Default::default()
        };
        assert!(filter.matches(&candidate("u", "tag-1,tag-2"), TagMatch::Exact));
        assert!(!filter.matches(&candidate("u", "tag-10"), TagMatch::Exact));
        assert!(
            filter.matches(&candidate("u", "tag-10"), TagMatch::Substring),
            "MPush's substring rule"
        );
        assert!(!filter.matches(&candidate("u", ""), TagMatch::Exact));
    }

    #[test]
    fn filters_combine() {
        let filter = BroadcastFilter {
            condition: Some(Condition::parse("userId % 100 < 20").unwrap()),
            user_ids: Some(["1019".to_owned(), "1050".to_owned()].into_iter().collect()),
            client_type: Some(ClientType::Mobile),
            ..Default::default()
        };
        assert!(filter.matches(&candidate("1019", ""), TagMatch::Exact));
        assert!(
            !filter.matches(&candidate("1050", ""), TagMatch::Exact),
            "condition false"
        );
        assert!(
            !filter.matches(&candidate("2019", ""), TagMatch::Exact),
            "not in the list"
        );
        let mut pc = candidate("1019", "");
        pc.client_type = ClientType::Pc;
        assert!(!filter.matches(&pc, TagMatch::Exact), "wrong client type");
    }

    #[test]
    fn gateway_messages_become_requests() {
        let single = GatewayPush {
            user_id: "u".into(),
            client_type: 1,
            timeout_ms: 4500,
            content: Bytes::from_static(b"x"),
            ..Default::default()
        };
        let PushRequest::Single(s) = PushRequest::from_gateway(single, Flags::AUTO_ACK).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (s.client_type, s.timeout_ms, s.ack),
            (Some(ClientType::Mobile), 4500, AckMode::Auto)
        );
        let bad = GatewayPush {
            condition: "userId ==".into(),
            content: Bytes::from_static(b"x"),
            ..Default::default()
        };
        assert!(matches!(
            PushRequest::from_gateway(bad, Flags::NONE),
            Err(RequestError::BadCondition(_))
        ));
        let mut broadcast = GatewayPush {
            content: Bytes::from_static(b"x"),
            ..Default::default()
        };
        broadcast.set_tags(&["tag-a"]);
        assert_eq!(broadcast.tags, r#"["tag-a"]"#);
        let PushRequest::Broadcast(b) = PushRequest::from_gateway(broadcast, Flags::NONE).unwrap()
        else {
            panic!()
        };
        assert_eq!(b.filter.tags, Some(vec!["tag-a".to_owned()]));
        assert_eq!(b.task_id, None);
    }
}
