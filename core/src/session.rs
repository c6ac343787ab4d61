//! One phone connection as the node sees it (reference §9): where it is in the handshake, its
//! cipher, its device facts, its heartbeat bookkeeping and the user bound to it.
//!
//! States: `Connected` (only HANDSHAKE, FAST_CONNECT and heartbeats are useful) →
//! `FastConnecting` (waiting for the store's copy of the reusable session) → `Ready` (session
//! cipher set; BIND, UNBIND, PUSH and ACK are legal). A failed fast connect returns to
//! `Connected`, so the client can hand-shake on the same connection.
use crate::crypto::AesCipher;
use crate::ids::{ConnId, Millis, RequestId};
use crate::route::ClientType;

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    Connected,
    FastConnecting {
        request: RequestId,
        packet_session_id: i32,
        device_id: String,
        max_heartbeat_ms: i32,
    },
    Ready,
}

/// The user bound to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundUser {
    pub user_id: String,
    pub tags: String,
    /// The version of this bind, written into its store route ([`crate::store::RouteRecord`]).
    pub route_version: u64,
}

/// One phone connection.
#[derive(Debug, Clone)]
pub struct Session {
    pub conn: ConnId,
    /// Cluster-unique id of this connection, written into its store route as `connId`.
    pub conn_token: String,
    pub state: SessionState,
    /// The session cipher once the handshake or fast connect completed.
    pub cipher: Option<AesCipher>,
    pub device_id: String,
    pub os_name: String,
    pub os_version: String,
    pub client_version: String,
    pub client_type: ClientType,
    /// Negotiated heartbeat; 0 before the handshake.
    pub heartbeat_ms: u64,
    pub last_read_ms: Millis,
    /// Consecutive idle checks that found no traffic.
    pub heartbeat_misses: u32,
    /// When the armed idle timer is due (validates timer entries).
    pub idle_check_at_ms: Millis,
    pub bound: Option<BoundUser>,
    /// When this node made the connection ready (its first handshake or fast connect), on the
    /// bind-version clock; 0 before. Written into store routes as `connVersion`.
    pub conn_version: u64,
    /// False while the driver reports the outbound queue over its high-water mark.
    pub writable: bool,
    /// Push sessionIds sent on this connection whose write or ACK is still awaited.
    pub in_flight: Vec<i32>,
}

impl Session {
    /// A new connection at `now_ms`.
    pub fn new(conn: ConnId, conn_token: String, now_ms: Millis) -> Self {
        Self {
            conn,
            conn_token,
            state: SessionState::Connected,
            cipher: None,
            device_id: String::new(),
            os_name: String::new(),
            os_version: String::new(),
            client_version: String::new(),
            client_type: ClientType::Unknown,
            heartbeat_ms: 0,
            last_read_ms: now_ms,
            heartbeat_misses: 0,
            idle_check_at_ms: 0,
            bound: None,
            conn_version: 0,
            writable: true,
            in_flight: Vec::new(),
        }
    }

    /// True once the handshake or fast connect completed.
    pub fn is_ready(&self) -> bool {
        self.state == SessionState::Ready
    }

    /// The bound user id, if any.
    pub fn user_id(&self) -> Option<&str> {
        self.bound.as_ref().map(|b| b.user_id.as_str())
    }

    /// MPush's idle check (§9.3) at `now_ms`: a miss when nothing was read for more than
    /// heartbeat + 1 s. Returns true when the connection must be closed (misses exceeded
    /// `max_misses`).
    pub fn idle_check(&mut self, now_ms: Millis, max_misses: u32) -> bool {
        if now_ms.saturating_sub(self.last_read_ms) > self.heartbeat_ms + 1000 {
            self.heartbeat_misses += 1;
        } else {
            self.heartbeat_misses = 0;
        }
        self.heartbeat_misses > max_misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn third_consecutive_miss_closes() {
        let mut s = Session::new(ConnId(1), "t".into(), 0);
        s.heartbeat_ms = 10_000;
        assert!(!s.idle_check(10_000, 2), "within heartbeat + 1 s");
        assert!(!s.idle_check(20_000, 2), "miss 1");
        assert!(!s.idle_check(30_000, 2), "miss 2");
        s.last_read_ms = 35_000;
        assert!(!s.idle_check(40_000, 2), "traffic resets");
        assert_eq!(s.heartbeat_misses, 0);
        assert!(!s.idle_check(50_000, 2));
        assert!(!s.idle_check(60_000, 2));
        assert!(s.idle_check(70_000, 2), "3rd consecutive miss");
    }
}
