//! One phone connection as the node sees it (reference §9): where it is in the handshake, its
//! cipher, its device facts and the user bound to it. What concerns only the connection
//! (framing, decryption, heartbeats, idle checks, queued bytes) is its [`crate::conn::PhoneConn`].
//!
//! States: `Connected` (only HANDSHAKE, FAST_CONNECT and heartbeats are useful) →
//! `FastConnecting` (waiting for the store's copy of the reusable session) → `Ready` (session
//! cipher set; BIND, UNBIND, PUSH and ACK are legal). A failed fast connect returns to
//! `Connected`, so the client can hand-shake on the same connection.
use crate::crypto::AesCipher;
use crate::ids::{ConnId, RequestId};
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
    /// (The strings of a session are boxed, without spare capacity: every phone holds one.)
    pub conn_token: Box<str>,
    pub state: SessionState,
    /// The session cipher once the handshake or fast connect completed.
    pub cipher: Option<AesCipher>,
    pub device_id: Box<str>,
    pub os_name: Box<str>,
    pub os_version: Box<str>,
    pub client_version: Box<str>,
    pub client_type: ClientType,
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
    /// A new connection.
    pub fn new(conn: ConnId, conn_token: String) -> Self {
        Self {
            conn,
            conn_token: conn_token.into_boxed_str(),
            state: SessionState::Connected,
            cipher: None,
            device_id: Box::default(),
            os_name: Box::default(),
            os_version: Box::default(),
            client_version: Box::default(),
            client_type: ClientType::Unknown,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node keeps one per connection, boxed: 256 bytes is a size class of the allocator
    /// (mimalloc), 264 would take 320.
    #[test]
    fn a_session_fits_its_size_class() {
        let bytes = std::mem::size_of::<Session>();
        eprintln!("Session: {bytes} bytes");
        assert!(bytes <= 256, "a Session holds {bytes} bytes");
    }
}
