//! One phone connection as the node sees it (reference §9): where it is in the handshake, its
//! device facts and the user bound to it. What concerns only the connection (framing, the
//! ciphers, heartbeats, idle checks, queued bytes) is its [`crate::conn::PhoneConn`].
//!
//! States: connected (only HANDSHAKE, FAST_CONNECT and heartbeats are useful) → fast
//! connecting (`fast_connect`: waiting for the store's copy of the reusable session) → ready
//! (`ready`: the connection has its session cipher; BIND, UNBIND, PUSH and ACK are legal). A
//! failed fast connect returns to connected (or to ready, on a session that was), so the client
//! can hand-shake on the same connection. Every phone holds a `Session` for its whole life, so
//! the states are a flag and an optional box, not an enum of 16 bytes.
use crate::ids::RequestId;
use crate::route::ClientType;
use std::sync::Arc;
use thin_vec::ThinVec;

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

/// A device's facts from its handshake: id, OS name, OS version, client version. Every phone
/// holds them for as long as it is connected, so they share one allocation (the four strings
/// end to end, and where the first three end) instead of four.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    text: Box<str>,
    /// Where the device id, the OS name and the OS version end in `text`.
    ends: [u32; 3],
}

impl DeviceFacts {
    /// The facts of a device. (Strings of a handshake fit its frame, far below 4 GiB; a
    /// longer one would be cut at 4 GiB.)
    pub fn new(device_id: &str, os_name: &str, os_version: &str, client_version: &str) -> Self {
        let mut text = String::with_capacity(
            device_id.len() + os_name.len() + os_version.len() + client_version.len(),
        );
        let mut ends = [0u32; 3];
        for (end, part) in ends.iter_mut().zip([device_id, os_name, os_version]) {
            text.push_str(part);
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        text.push_str(client_version);
        let facts = Self {
            text: text.into_boxed_str(),
            ends,
        };
        debug_assert_eq!(facts.device_id(), device_id);
        debug_assert_eq!(facts.client_version(), client_version);
        facts
    }

    /// The part of `text` from `start` to `end` (empty if they do not fall on its chars).
    fn part(&self, start: u32, end: Option<u32>) -> &str {
        let start = start as usize;
        let end = end.map_or(self.text.len(), |end| end as usize);
        self.text.get(start..end).unwrap_or("")
    }

    pub fn device_id(&self) -> &str {
        self.part(0, Some(self.ends[0]))
    }

    pub fn os_name(&self) -> &str {
        self.part(self.ends[0], Some(self.ends[1]))
    }

    pub fn os_version(&self) -> &str {
        self.part(self.ends[1], Some(self.ends[2]))
    }

    pub fn client_version(&self) -> &str {
        self.part(self.ends[2], None)
    }
}

/// One phone connection.
#[derive(Debug, Clone)]
pub struct Session {
    /// Cluster-unique id of this connection, written into its store route as `connId`.
    /// (The strings of a session are boxed, without spare capacity: every phone holds one.)
    pub conn_token: ConnToken,
    /// While a fast connect waits for the store's copy of the reusable session (boxed: a
    /// connection spends one store round trip here, and the rest of its life without it).
    pub fast_connect: Option<Box<FastConnectWait>>,
    /// The handshake or fast connect completed: BIND, UNBIND, PUSH and ACK are legal. False
    /// while a fast connect waits, also on a session that was ready before it.
    pub ready: bool,
    /// The device's id, OS and client version (from its handshake). The session cipher is
    /// not here: the connection holds it and seals with it ([`crate::node::Seal::Session`]).
    pub facts: DeviceFacts,
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
            fast_connect: None,
            ready: false,
            facts: DeviceFacts::default(),
            client_type: ClientType::Unknown,
            bound: None,
            conn_version: 0,
            writable: true,
            in_flight: ThinVec::new(),
        }
    }

    /// True once the handshake or fast connect completed.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// True once the connection holds a session cipher: it was made Ready once (by a handshake
    /// or a fast connect). A connection never loses its cipher; during a fast connect on a
    /// live session it keeps the old one until the new one arrives.
    pub fn has_cipher(&self) -> bool {
        self.conn_version != 0
    }

    /// The bound user id, if any.
    pub fn user_id(&self) -> Option<&str> {
        self.bound.as_ref().map(|b| &*b.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node keeps one per connection, boxed: 112 bytes is a size class of the allocator
    /// (mimalloc), 120 would take 128.
    #[test]
    fn a_session_fits_its_size_class() {
        let bytes = std::mem::size_of::<Session>();
        eprintln!("Session: {bytes} bytes");
        assert!(bytes <= 112, "a Session holds {bytes} bytes");
    }

    proptest::proptest! {
        /// The four facts come back as given, whatever they hold (empty, multi-byte chars).
        #[test]
        fn device_facts_give_back_what_they_were_given(
            parts in proptest::collection::vec(".{0,12}", 4),
        ) {
            let facts = DeviceFacts::new(&parts[0], &parts[1], &parts[2], &parts[3]);
            proptest::prop_assert_eq!(facts.device_id(), parts[0].as_str());
            proptest::prop_assert_eq!(facts.os_name(), parts[1].as_str());
            proptest::prop_assert_eq!(facts.os_version(), parts[2].as_str());
            proptest::prop_assert_eq!(facts.client_version(), parts[3].as_str());
        }
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
