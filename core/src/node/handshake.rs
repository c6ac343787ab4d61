//! The full handshake (reference §9.1): a HANDSHAKE body, RSA-encrypted by the phone, carries
//! its device facts, its AES key and IV. The phone's connection ([`crate::conn::PhoneConn`])
//! opens it, answers HANDSHAKE-ok under AES(clientKey, iv) with a random server key, a reusable
//! session id and the negotiated heartbeat, and mixes the two keys into the session key that
//! protects everything after; the node hears [`PhoneMessage::Handshaken`]. Here the node takes
//! the session on (a new device on a bound connection gives up the old user first) and stores
//! it (`PutSession`) so a later connection can skip RSA with a fast connect. A web connection's
//! plaintext handshake ([`crate::web_conn::WebConn`], MPush's JSON packets) arrives the same
//! way, with no keys and no reusable id: it is taken on and never stored.
//!
//! Why it is here: `adopt` is the one place a connection becomes Ready on the node (also for
//! fast connects), and the stored session is shared through the store.
//!
//! [`PhoneMessage::Handshaken`]: crate::conn::PhoneMessage::Handshaken
use super::Node;
use crate::conn::Handshaken;
use crate::ids::ConnId;
use crate::route::ClientType;
use crate::session::DeviceFacts;
use crate::store::{CachedSession, StoreOp};
use crate::Event;

impl Node {
    pub(super) fn on_handshaken(&mut self, conn: ConnId, handshaken: Handshaken) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        if session.bound.is_some() {
            // A new device on this connection replaces the old context, routes included.
            self.unbind_session(conn);
        }
        let Handshaken {
            reusable_session_id,
            session,
            heartbeat_ms: _,
        } = handshaken;
        self.adopt(conn, &session);
        self.stats.handshakes += 1;
        self.emit(Event::HandshakeDone {
            conn,
            device_id: session.device_id.clone(),
            fast: false,
        });
        if let Some(session_id) = reusable_session_id {
            let ttl_ms = self.cfg.session_expire_ms;
            self.store_write(StoreOp::PutSession {
                session_id,
                session,
                ttl_ms,
            });
        }
    }

    /// Takes on a session context: the device's facts; the connection is Ready (its cipher
    /// is the connection's: it opened the handshake, or takes the cached one from
    /// [`super::Output::Resume`]).
    pub(super) fn adopt(&mut self, conn: ConnId, cached: &CachedSession) {
        let ready_version = self.next_version();
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.conn_version == 0 {
            session.conn_version = ready_version;
        }
        session.facts = DeviceFacts::new(
            &cached.device_id,
            &cached.os_name,
            &cached.os_version,
            &cached.client_version,
        );
        session.client_type = ClientType::from_os_name(&cached.os_name);
        session.fast_connect = None;
        session.ready = true;
    }
}
