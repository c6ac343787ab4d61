//! The full handshake (reference §9.1): a HANDSHAKE body, RSA-encrypted by the phone, carries
//! its device facts, its AES key and IV. The node answers HANDSHAKE-ok under AES(clientKey, iv)
//! with its own random key, a reusable session id and the negotiated heartbeat; both sides then
//! mix the two keys into the session key that protects everything after. The session is
//! stored (`PutSession`) so a later connection can skip RSA with a fast connect.
//!
//! Why it is here: this is the only place a connection gets its cipher from scratch, and
//! `adopt` is the one place a connection becomes Ready (also for fast connects).
use super::phone::PARAM_INVALID;
use super::Node;
use crate::command::Command;
use crate::crypto::{mix_keys, AesCipher};
use crate::frame::Flags;
use crate::ids::ConnId;
use crate::message::{ErrorCode, ErrorMessage, Handshake, HandshakeOk};
use crate::route::ClientType;
use crate::session::SessionState;
use crate::store::{CachedSession, StoreOp};
use crate::timer::Timer;
use crate::{CloseReason, Event};
use rand_core::RngCore;

impl Node {
    pub(super) fn on_handshake(&mut self, conn: ConnId, sid: i32, hs: Handshake) {
        if hs.device_id.is_empty() || hs.iv.len() != 16 || hs.client_key.len() != 16 {
            let error = ErrorMessage::validation(Command::Handshake, PARAM_INVALID);
            self.send_raw(conn, Command::Error, sid, &error);
            return self.teardown(conn, Some(CloseReason::BadRequest));
        }
        let session = &self.sessions[&conn];
        if session.is_ready() && session.device_id == hs.device_id {
            let error = ErrorMessage::new(Command::Handshake.code(), ErrorCode::RepeatHandshake);
            return self.send_raw(conn, Command::Error, sid, &error);
        }
        if session.bound.is_some() {
            // A new device on this connection replaces the old context, routes included.
            self.unbind_session(conn);
        }
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&hs.iv);
        let mut client_key = [0u8; 16];
        client_key.copy_from_slice(&hs.client_key);
        let mut server_key = [0u8; 16];
        self.rng.fill_bytes(&mut server_key);
        let mut id_bytes = [0u8; 16];
        self.rng.fill_bytes(&mut id_bytes);
        let reusable_id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let heartbeat_ms = self.cfg.negotiate_heartbeat_ms(hs.max_heartbeat_ms);
        let expire_ms = i64::try_from(self.cfg.session_expire_ms).unwrap_or(i64::MAX);
        let ok = HandshakeOk {
            server_key: bytes::Bytes::copy_from_slice(&server_key),
            heartbeat_ms: i32::try_from(heartbeat_ms).unwrap_or(i32::MAX),
            session_id: reusable_id.clone(),
            expire_time_ms: self.epoch_ms().saturating_add(expire_ms),
        };
        // HANDSHAKE-ok travels under AES(clientKey, iv); everything after under the session key.
        self.send_sealed(
            conn,
            Command::Handshake,
            Flags::NONE,
            sid,
            &ok,
            AesCipher::new(client_key, iv),
        );
        let session_key = mix_keys(&client_key, &server_key);
        let cached = CachedSession {
            os_name: hs.os_name.clone(),
            os_version: hs.os_version.clone(),
            client_version: hs.client_version.clone(),
            device_id: hs.device_id.clone(),
            session_key,
            iv,
        };
        self.adopt(conn, &cached, heartbeat_ms);
        self.stats.handshakes += 1;
        self.emit(Event::HandshakeDone {
            conn,
            device_id: hs.device_id,
            fast: false,
        });
        let ttl_ms = self.cfg.session_expire_ms;
        self.store_write(StoreOp::PutSession {
            session_id: reusable_id,
            session: cached,
            ttl_ms,
        });
    }

    /// Takes on a session context: cipher, device facts, heartbeat; the connection is Ready.
    pub(super) fn adopt(&mut self, conn: ConnId, cached: &CachedSession, heartbeat_ms: u64) {
        let now = self.now;
        let ready_version = self.next_version();
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.conn_version == 0 {
            session.conn_version = ready_version;
        }
        session.cipher = Some(AesCipher::new(cached.session_key, cached.iv));
        session.device_id = cached.device_id.clone();
        session.os_name = cached.os_name.clone();
        session.os_version = cached.os_version.clone();
        session.client_version = cached.client_version.clone();
        session.client_type = ClientType::from_os_name(&cached.os_name);
        session.heartbeat_ms = heartbeat_ms;
        session.heartbeat_misses = 0;
        session.state = SessionState::Ready;
        let at = now + heartbeat_ms.max(1);
        self.timers
            .cancel(session.idle_check_at_ms, Timer::Idle(conn));
        session.idle_check_at_ms = at;
        self.timers.arm(at, Timer::Idle(conn));
    }
}
