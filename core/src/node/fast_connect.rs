//! Fast connect (reference §9.2): a phone that hand-shook before sends FAST_CONNECT with its
//! reusable session id instead of paying for RSA again. The node asks the store for the cached
//! session (`GetSession`); when it exists and names the same device, the phone gets
//! FAST_CONNECT-ok and its connection takes on the cached cipher ([`Output::Resume`]).
//! Otherwise ERROR (session expired, invalid device) and the phone falls back to a full
//! handshake on the same connection.
//!
//! Why it goes through the node: the cached session lives in the shared store, which only the
//! node talks to; the connection waits in `FastConnecting` until the answer comes.
use super::{Node, Output, StorePurpose};
use crate::command::Command;
use crate::conn::Resume;
use crate::ids::{ConnId, RequestId};
use crate::message::{ErrorCode, ErrorMessage, FastConnect, FastConnectOk};
use crate::session::FastConnectWait;
use crate::store::{StoreError, StoreOp, StoreReply};
use crate::Event;

impl Node {
    pub(super) fn on_fast_connect(&mut self, conn: ConnId, sid: i32, fc: FastConnect) {
        let purpose = StorePurpose::FastConnect { conn };
        match self.store(
            StoreOp::GetSession {
                session_id: fc.session_id.clone(),
            },
            purpose,
        ) {
            Some(request) => {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.ready = false;
                    session.fast_connect = Some(Box::new(FastConnectWait {
                        request,
                        packet_session_id: sid,
                        device_id: fc.device_id,
                        max_heartbeat_ms: fc.max_heartbeat_ms,
                    }));
                }
            }
            None => {
                let error =
                    ErrorMessage::new(Command::FastConnect.code(), ErrorCode::SessionExpired);
                self.send_raw(conn, Command::Error, sid, &error);
            }
        }
    }

    pub(super) fn on_fast_connect_reply(
        &mut self,
        conn: ConnId,
        request: RequestId,
        reply: Result<StoreReply, StoreError>,
    ) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if !matches!(&session.fast_connect, Some(wait) if wait.request == request) {
            return; // an answer to an earlier attempt
        }
        let Some(wait) = session.fast_connect.take() else {
            return;
        };
        let FastConnectWait {
            packet_session_id,
            device_id,
            max_heartbeat_ms,
            ..
        } = *wait;
        // A session that was Ready before (a fast connect on a live session) stays usable.
        if session.has_cipher() {
            session.ready = true;
        }
        let cached = match reply {
            Ok(StoreReply::Session(Some(cached))) => cached,
            Ok(_) | Err(_) => {
                let error =
                    ErrorMessage::new(Command::FastConnect.code(), ErrorCode::SessionExpired);
                return self.send_raw(conn, Command::Error, packet_session_id, &error);
            }
        };
        if cached.device_id != device_id {
            let error = ErrorMessage::new(Command::FastConnect.code(), ErrorCode::InvalidDevice);
            return self.send_raw(conn, Command::Error, packet_session_id, &error);
        }
        if self.sessions[&conn].bound.is_some() {
            self.unbind_session(conn);
        }
        let heartbeat_ms = self.cfg.negotiate_heartbeat_ms(max_heartbeat_ms);
        let ok = FastConnectOk {
            heartbeat_ms: i32::try_from(heartbeat_ms).unwrap_or(i32::MAX),
        };
        // The connection takes on the session before the OK is queued: the phone sends its
        // first sealed packet once it reads the OK, and the connection task may write the OK
        // out (on another thread) before it sees anything queued after it.
        let resume = Resume {
            session_key: cached.session_key,
            iv: cached.iv,
            device_id: cached.device_id.clone(),
            heartbeat_ms,
        };
        self.outputs.push_back(Output::Resume {
            conn,
            resume: Box::new(resume),
        });
        self.send_raw(conn, Command::FastConnect, packet_session_id, &ok);
        self.adopt(conn, &cached);
        self.stats.fast_connects += 1;
        self.emit(Event::HandshakeDone {
            conn,
            device_id,
            fast: true,
        });
    }
}
