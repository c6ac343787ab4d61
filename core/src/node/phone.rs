//! A phone connection's life on the node (reference §9): it opens (a connection token), the
//! messages its [`PhoneConn`] decoded are dispatched to the concept that handles them, upstream
//! pushes and ACKs are taken, and it is torn down (routes released, pushes in flight failed)
//! when it closes, for the reason its connection or the node gives.
//!
//! The rules for each step of a session live beside this file: `handshake.rs`,
//! `fast_connect.rs`, `bind.rs`, `versioning.rs`, `repair.rs`, `kicks.rs`. What concerns only
//! the connection (framing, decryption, heartbeats, idle checks, the slow-consumer marks) is in
//! [`PhoneConn`].
//!
//! [`PhoneConn`]: crate::conn::PhoneConn
use super::{CloseReason, Event, Node, OutFrame, Output, Seal};
use crate::command::Command;
use crate::conn::PhoneMessage;
use crate::frame::Flags;
use crate::ids::ConnId;
use crate::in_flight::Owner;
use crate::message::Body;
use crate::session::{ConnToken, Session};
use crate::status::PushStatus;
use bytes::Bytes;
use rand_core::RngCore;

/// Reason texts MPush sends with code-0 errors.
pub(super) const INVALID_PARAM: &str = "invalid param";
pub(super) const NOT_HANDSHAKE: &str = "not handshake";

impl Node {
    pub(super) fn on_phone_connected(&mut self, conn: ConnId) {
        if self.shut_down || self.sessions.len() >= self.cfg.max_connections {
            self.outputs.push_back(Output::Close {
                conn,
                reason: CloseReason::ServerFull,
            });
            self.emit(Event::Closed {
                conn,
                reason: CloseReason::ServerFull,
            });
            return;
        }
        if self.sessions.contains_key(&conn) {
            return; // the driver never reuses ids; a repeat is ignored
        }
        let mut token = [0u8; 8];
        self.rng.fill_bytes(&mut token);
        let token = ConnToken(u64::from_be_bytes(token));
        self.sessions.insert(conn, Box::new(Session::new(token)));
    }

    pub(super) fn on_phone_message(&mut self, conn: ConnId, message: PhoneMessage) {
        if !self.sessions.contains_key(&conn) {
            return; // closed by the node already; the connection may still hand over messages
        }
        match message {
            PhoneMessage::Handshaken(handshaken) => self.on_handshaken(conn, *handshaken),
            PhoneMessage::FastConnect {
                session_id,
                request,
            } => self.on_fast_connect(conn, session_id, request),
            PhoneMessage::Bind { session_id, bind } => self.on_bind(conn, session_id, bind),
            PhoneMessage::Unbind { session_id, bind } => self.on_unbind(conn, session_id, bind),
            PhoneMessage::Ack { session_id } => self.on_ack(conn, session_id),
            PhoneMessage::Upstream { content } => self.on_upstream(conn, content),
        }
    }

    /// The connection closed itself (bad input, idle, slow consumer) or is gone.
    pub(super) fn on_phone_closed(&mut self, conn: ConnId, reason: CloseReason) {
        if !self.sessions.contains_key(&conn) {
            return;
        }
        let kind = match reason {
            CloseReason::BadFrame => Some("phone-frame"),
            CloseReason::BadBody => Some("phone-body"),
            _ => None,
        };
        if let Some(kind) = kind {
            self.stats.decode_errors += 1;
            self.emit(Event::DecodeError { kind });
        }
        self.forget(conn, reason, false);
    }

    fn on_upstream(&mut self, conn: ConnId, content: Bytes) {
        let user_id = self.sessions[&conn].user_id().map(str::to_owned);
        self.emit(Event::Upstream {
            conn,
            user_id,
            content,
        });
    }

    fn on_ack(&mut self, conn: ConnId, sid: i32) {
        if let Some(entry) = self.in_flight.get(conn, sid) {
            if let Owner::Single(id) = entry.owner {
                if self
                    .singles
                    .get(&id)
                    .is_some_and(|t| t.request.ack.needs_ack())
                {
                    self.finish_single(id, PushStatus::AckSuccess, None);
                }
            }
        }
        // An ACK for nothing pending (late, duplicate, or for a NO_ACK push) is ignored.
    }

    /// Forgets a connection and tells its connection to close (after what was queued before)
    /// for `reason`.
    pub(super) fn teardown(&mut self, conn: ConnId, reason: CloseReason) {
        self.forget(conn, reason, true);
    }

    /// Forgets a connection: its routes, its pushes in flight (failed); with `close`, its
    /// connection is told to close.
    fn forget(&mut self, conn: ConnId, reason: CloseReason, close: bool) {
        if !self.sessions.contains_key(&conn) {
            return;
        }
        self.unbind_session(conn);
        let session = self.sessions.remove(&conn).expect("checked above");
        for sid in session.in_flight {
            self.on_written_failed(sid);
        }
        if let Some(wait) = session.fast_connect {
            self.forget_store_request(wait.request);
        }
        if close {
            self.outputs.push_back(Output::Close { conn, reason });
        }
        self.emit(Event::Closed { conn, reason });
    }

    pub(super) fn send_raw(&mut self, conn: ConnId, cmd: Command, sid: i32, body: &impl Body) {
        let frame = OutFrame::Packet {
            cmd: cmd.code(),
            flags: Flags::NONE,
            session_id: sid,
            body: body.to_bytes(),
            seal: Seal::Raw,
        };
        self.transmit(conn, frame, None);
    }

    pub(super) fn send_sealed(
        &mut self,
        conn: ConnId,
        cmd: Command,
        flags: Flags,
        sid: i32,
        body: &impl Body,
    ) {
        let frame = OutFrame::Packet {
            cmd: cmd.code(),
            flags,
            session_id: sid,
            body: body.to_bytes(),
            seal: Seal::Session,
        };
        self.transmit(conn, frame, None);
    }
}
