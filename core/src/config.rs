//! Node configuration: every rule's numbers and every bound, with units in the names.
//! Defaults follow MPush's `reference.conf` (reference §16) where MPush has a value.
use crate::crypto::ServerRsaKey;
use serde::{Deserialize, Serialize};

/// Where a node's gateway listens: what routes in the shared store point at, and what
/// PushClients connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl NodeAddr {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How a broadcast's tag filter matches a connection's tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TagMatch {
    /// A requested tag must equal one of the connection's comma-separated tags.
    #[default]
    Exact,
    /// MPush's behaviour: a requested tag must occur as a substring of the connection's tags
    /// string (so "tag-1" matches "tag-10"). Only for deployments that depend on it.
    Substring,
}

/// Every default number of a node, in one place: [`NodeConfig::new`] uses them, and so do the
/// server's configuration file defaults (`pushgate serve --print-config`). MPush's values
/// (`reference.conf`) where MPush has one.
pub mod defaults {
    /// Heartbeat bounds (MPush `mp.core.min-heartbeat` / `max-heartbeat`: 3 minutes).
    pub const MIN_HEARTBEAT_MS: u64 = 180_000;
    pub const MAX_HEARTBEAT_MS: u64 = 180_000;
    /// MPush `max-hb-timeout-times`.
    pub const MAX_HEARTBEAT_MISSES: u32 = 2;
    pub const HANDSHAKE_DEADLINE_MS: u64 = 10_000;
    /// Off: MPush's SDKs connect at start-up and bind after the user logs in, which may be
    /// much later.
    pub const BIND_DEADLINE_MS: u64 = 0;
    /// MPush `mp.core.session-expired-time`: one day.
    pub const SESSION_EXPIRE_MS: u64 = 86_400_000;
    /// MPush `mp.core.max-packet-size`: 10 KiB.
    pub const MAX_BODY_BYTES: usize = crate::frame::DEFAULT_MAX_BODY_BYTES;
    /// MPush `mp.core.compress-threshold`: 10 KiB.
    pub const COMPRESS_THRESHOLD_BYTES: usize = crate::pipeline::DEFAULT_COMPRESS_THRESHOLD_BYTES;
    /// MPush `mp.push.flow-control.global`: 5,000 pushes per second, no total cap.
    pub const GLOBAL_FLOW_LIMIT_PER_WINDOW: u64 = 5_000;
    pub const GLOBAL_FLOW_MAX_TOTAL: u64 = 0;
    pub const FLOW_WINDOW_MS: u64 = 1_000;
    /// MPush `mp.push.flow-control.broadcast`: 3,000 per second, 100,000 in all.
    pub const BROADCAST_FLOW_LIMIT_PER_WINDOW: u64 = 3_000;
    pub const BROADCAST_FLOW_MAX_TOTAL: u64 = 100_000;
    pub const TASK_FLOW_DEFAULT_LIMIT: u64 = 1_000;
    pub const DEFAULT_PUSH_TIMEOUT_MS: u64 = 3_000;
    pub const MAX_PUSH_TIMEOUT_MS: u64 = 600_000;
    pub const STORE_TIMEOUT_MS: u64 = 3_000;
    pub const BROADCAST_BATCH_SIZE: usize = 256;
    /// Phone connections served at once (beyond it a handshake is refused).
    pub const MAX_CONNECTIONS: usize = 100_000;
    pub const MAX_GATEWAY_CONNECTIONS: usize = 4096;
    pub const MAX_PENDING_PUSHES: usize = 1 << 20;
    pub const MAX_BROADCASTS: usize = 64;
    pub const MAX_STORE_REQUESTS: usize = 1 << 20;
    pub const MAX_USER_ID_BYTES: usize = 256;
    pub const MAX_TAGS_BYTES: usize = 4096;
    /// Bind checks awaiting their verdict at once (see [`super::NodeConfig::bind_check`]).
    pub const MAX_BIND_CHECKS: usize = 4096;
}

/// What a bind becomes when its check could not give a verdict (the checker failed, timed
/// out, or too many checks were in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindCheckFallback {
    /// Refused, as a refusal by the checker is: the check guards who may bind, so an
    /// unanswered check lets nobody in.
    #[default]
    Refuse,
    /// Allowed, as if no check were configured: availability before the check.
    Allow,
}

/// The numbers a [`crate::Node`] runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's gateway address, written into the routes it owns.
    pub node_addr: NodeAddr,
    /// The RSA key that opens handshakes.
    pub rsa_key: ServerRsaKey,
    /// Heartbeat bounds; negotiated = max(min, min(client max, max)).
    pub min_heartbeat_ms: u64,
    pub max_heartbeat_ms: u64,
    /// A connection is closed when this many consecutive idle checks found no traffic, plus one
    /// (MPush `max-hb-timeout-times` = 2: closed on the 3rd miss).
    pub max_heartbeat_misses: u32,
    /// A connection must complete its handshake (or fast connect) within this time.
    pub handshake_deadline_ms: u64,
    /// A handshaken connection that sends no BIND within this time is closed (0: never).
    pub bind_deadline_ms: u64,
    /// Reusable sessions for fast connect live this long.
    pub session_expire_ms: u64,
    /// Largest frame body accepted (both links) and largest inflated body.
    pub max_body_bytes: usize,
    /// Server bodies larger than this are zlib-compressed.
    pub compress_threshold_bytes: usize,
    /// Global flow control for single-user pushes.
    pub global_flow_limit_per_window: u64,
    pub global_flow_max_total: u64,
    pub flow_window_ms: u64,
    /// Per-broadcast flow control (broadcasts without a task id).
    pub broadcast_flow_limit_per_window: u64,
    pub broadcast_flow_max_total: u64,
    /// Per-second limit for task-id broadcasts when the store holds none.
    pub task_flow_default_limit: u64,
    /// Timeout of a single push whose request carries none (≤ 0).
    pub default_push_timeout_ms: u64,
    /// Longest timeout a request may ask for.
    pub max_push_timeout_ms: u64,
    /// A route-store request not answered in this time counts as failed.
    pub store_timeout_ms: u64,
    /// Routes a broadcast visits per step before it yields to other work.
    pub broadcast_batch_size: usize,
    pub tag_match: TagMatch,
    /// Bounds: beyond them new work is refused with a clear status, never queued.
    pub max_connections: usize,
    pub max_gateway_connections: usize,
    pub max_pending_pushes: usize,
    pub max_broadcasts: usize,
    pub max_store_requests: usize,
    /// Longest user id / tags string accepted in a bind.
    pub max_user_id_bytes: usize,
    pub max_tags_bytes: usize,
    /// Also emit the events only an observer reads, one or more per push and per broadcast
    /// delivery (`PushAccepted`, `PushSent`, `WritableChanged`, `KickNoticeHandled`): on by
    /// default (tests, the simulator's oracle); the runtime turns it off unless it was given
    /// an observer, so a production node does not build and queue them.
    pub trace_events: bool,
    /// Ask the driver before a bind of a new user takes effect ([`crate::Output::BindCheck`],
    /// MPush's `BindValidator`); off by default (every bind allowed, as MPush's default).
    pub bind_check: bool,
    /// What a bind whose check gave no verdict becomes.
    pub bind_check_fallback: BindCheckFallback,
    /// Bind checks awaiting their verdict at once; a bind beyond it gets the fallback.
    pub max_bind_checks: usize,
}

impl NodeConfig {
    /// MPush's defaults ([`defaults`]), with the given gateway address and key.
    pub fn new(node_addr: NodeAddr, rsa_key: ServerRsaKey) -> Self {
        use defaults as d;
        Self {
            node_addr,
            rsa_key,
            min_heartbeat_ms: d::MIN_HEARTBEAT_MS,
            max_heartbeat_ms: d::MAX_HEARTBEAT_MS,
            max_heartbeat_misses: d::MAX_HEARTBEAT_MISSES,
            handshake_deadline_ms: d::HANDSHAKE_DEADLINE_MS,
            bind_deadline_ms: d::BIND_DEADLINE_MS,
            session_expire_ms: d::SESSION_EXPIRE_MS,
            max_body_bytes: d::MAX_BODY_BYTES,
            compress_threshold_bytes: d::COMPRESS_THRESHOLD_BYTES,
            global_flow_limit_per_window: d::GLOBAL_FLOW_LIMIT_PER_WINDOW,
            global_flow_max_total: d::GLOBAL_FLOW_MAX_TOTAL,
            flow_window_ms: d::FLOW_WINDOW_MS,
            broadcast_flow_limit_per_window: d::BROADCAST_FLOW_LIMIT_PER_WINDOW,
            broadcast_flow_max_total: d::BROADCAST_FLOW_MAX_TOTAL,
            task_flow_default_limit: d::TASK_FLOW_DEFAULT_LIMIT,
            default_push_timeout_ms: d::DEFAULT_PUSH_TIMEOUT_MS,
            max_push_timeout_ms: d::MAX_PUSH_TIMEOUT_MS,
            store_timeout_ms: d::STORE_TIMEOUT_MS,
            broadcast_batch_size: d::BROADCAST_BATCH_SIZE,
            tag_match: TagMatch::Exact,
            max_connections: d::MAX_CONNECTIONS,
            max_gateway_connections: d::MAX_GATEWAY_CONNECTIONS,
            max_pending_pushes: d::MAX_PENDING_PUSHES,
            max_broadcasts: d::MAX_BROADCASTS,
            max_store_requests: d::MAX_STORE_REQUESTS,
            max_user_id_bytes: d::MAX_USER_ID_BYTES,
            max_tags_bytes: d::MAX_TAGS_BYTES,
            trace_events: true,
            bind_check: false,
            bind_check_fallback: BindCheckFallback::Refuse,
            max_bind_checks: d::MAX_BIND_CHECKS,
        }
    }

    /// The heartbeat a client asking for at most `client_max_ms` gets (§9.1 step 4; the
    /// client's minimum is ignored, as in MPush).
    pub fn negotiate_heartbeat_ms(&self, client_max_ms: i32) -> u64 {
        let client_max = u64::try_from(client_max_ms).unwrap_or(0);
        self.min_heartbeat_ms
            .max(client_max.min(self.max_heartbeat_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_negotiation_follows_mpush() {
        let mut cfg = NodeConfig::new(
            NodeAddr::new("127.0.0.1", 3001),
            ServerRsaKey::mpush_default(),
        );
        assert_eq!(cfg.negotiate_heartbeat_ms(240_000), 180_000);
        cfg.min_heartbeat_ms = 10_000;
        assert_eq!(cfg.negotiate_heartbeat_ms(12_000), 12_000);
        assert_eq!(cfg.negotiate_heartbeat_ms(5_000), 10_000);
        assert_eq!(cfg.negotiate_heartbeat_ms(-1), 10_000);
        assert_eq!(cfg.negotiate_heartbeat_ms(i32::MAX), 180_000);
    }
}
