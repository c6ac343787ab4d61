//! One phone connection as the node sees it (reference §9): where it is in the handshake, its
//! cipher, its device facts and the user bound to it. What concerns only the connection
//! (framing, decryption, heartbeats, idle checks, queued bytes) is its [`crate::conn::PhoneConn`].
//!
//! States: `Connected` (only HANDSHAKE, FAST_CONNECT and heartbeats are useful) →
//! `FastConnecting` (waiting for the store's copy of the reusable session) → `Ready` (session
//! cipher set; BIND, UNBIND, PUSH and ACK are legal). A failed fast connect returns to
//! `Connected`, so the client can hand-shake on the same connection.
use crate::crypto::AesCipher;
use crate::ids::RequestId;
use crate::route::ClientType;
use std::sync::Arc;
use thin_vec::ThinVec;

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    Connected,
    /// Boxed: a connection spends a store round trip here, and the rest of its life in `Ready`.
    FastConnecting(Box<FastConnectWait>),
    Ready,
}

/// A fast connect waiting for the store's copy of the reusable session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastConnectWait {
    pub request: RequestId,
    pub packet_session_id: i32,
    pub device_id: String,
    pub max_heartbeat_ms: i32,
}

/// The token naming one connection in the cluster: 8 random bytes, written into its store
/// route as `connId` in 16 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnToken(pub u64);

impl ConnToken {
    /// True when `text` is this token as written in a store route.
    pub fn is(&self, text: &str) -> bool {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        text.len() == 16
            && text.bytes().enumerate().all(|(index, digit)| {
                let nibble = (self.0 >> (60 - 4 * index)) & 0xf;
                digit == DIGITS[nibble as usize]
            })
    }
}

impl std::fmt::Display for ConnToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The user bound to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundUser {
    /// Shared with the node's route table once the bind holds the route.
    pub user_id: Arc<str>,
    pub tags: Box<str>,
    /// The version of this bind, written into its store route ([`crate::store::RouteRecord`]).
    pub route_version: u64,
}

/// One phone connection.
#[derive(Debug, Clone)]
pub struct Session {
    /// Cluster-unique id of this connection, written into its store route as `connId`.
    /// (The strings of a session are boxed, without spare capacity: every phone holds one.)
    pub conn_token: ConnToken,
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
    /// Push sessionIds sent on this connection whose write or ACK is still awaited (a
    /// `ThinVec`: one pointer in the session, length and capacity on the heap when not empty).
    pub in_flight: ThinVec<i32>,
}

impl Session {
    /// A new connection.
    pub fn new(conn_token: ConnToken) -> Self {
        Self {
            conn_token,
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
            in_flight: ThinVec::new(),
        }
    }

    /// True once the handshake or fast connect completed.
    pub fn is_ready(&self) -> bool {
        self.state == SessionState::Ready
    }

    /// The bound user id, if any.
    pub fn user_id(&self) -> Option<&str> {
        self.bound.as_ref().map(|b| &*b.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node keeps one per connection, boxed: 192 bytes is a size class of the allocator
    /// (mimalloc), 200 would take 224.
    #[test]
    fn a_session_fits_its_size_class() {
        let bytes = std::mem::size_of::<Session>();
        eprintln!("Session: {bytes} bytes");
        assert!(bytes <= 192, "a Session holds {bytes} bytes");
    }

    #[test]
    fn a_conn_token_is_written_as_16_hex_digits() {
        let token = ConnToken(0x00ab_cdef_0123_4567);
        assert_eq!(token.to_string(), "00abcdef01234567");
        assert!(token.is("00abcdef01234567"));
        assert!(!token.is("abcdef01234567"));
        assert!(!token.is("00ABCDEF01234567"));
        assert!(!token.is("00abcdef012345670"));
    }
}
