//! A phone connection's life on the node (reference §9): it opens (a connection token, the
//! handshake deadline), its frames are opened and dispatched to the concept that handles them,
//! upstream pushes and ACKs are taken, idle checks run, and it is torn down (routes released,
//! pushes in flight failed).
//!
//! The rules for each step of a session live beside this file: `handshake.rs`,
//! `fast_connect.rs`, `bind.rs`, `versioning.rs`, `repair.rs`, `kicks.rs`.
use super::{CloseReason, Event, Node, OutFrame, Output, Seal};
use crate::ack::Owner;
use crate::command::Command;
use crate::crypto::AesCipher;
use crate::frame::{Flags, Frame, FrameError, Packet};
use crate::ids::{ConnId, Millis};
use crate::message::{
    Ack, Bind, Body, ErrorCode, ErrorMessage, FastConnect, Handshake, HttpResponse, Push,
};
use crate::pipeline::{self, OpenKey};
use crate::session::{Session, SessionState};
use crate::status::PushStatus;
use crate::timer::Timer;
use rand_core::RngCore;

/// Reason texts MPush sends with code-0 errors.
pub(super) const PARAM_INVALID: &str = "Param invalid";
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
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let mut session = Session::new(conn, token, self.now);
        let at = self.now + self.cfg.handshake_deadline_ms;
        session.idle_check_at_ms = at;
        self.sessions.insert(conn, Box::new(session));
        self.timers.arm(at, Timer::Idle(conn));
    }

    pub(super) fn on_phone_frame_error(&mut self, conn: ConnId, _error: FrameError) {
        self.stats.decode_errors += 1;
        self.emit(Event::DecodeError {
            kind: "phone-frame",
        });
        self.teardown(conn, Some(CloseReason::BadFrame));
    }

    pub(super) fn on_phone_frame(&mut self, conn: ConnId, frame: Frame) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return; // closed by the node already; the driver may still deliver buffered frames
        };
        session.last_read_ms = self.now;
        let packet = match frame {
            Frame::Heartbeat => return self.transmit(conn, OutFrame::Heartbeat, None),
            Frame::Packet(packet) if packet.cmd == Command::Heartbeat.code() => {
                return self.transmit(conn, OutFrame::Heartbeat, None)
            }
            Frame::Packet(packet) => packet,
        };
        let command = match Command::try_from(packet.cmd) {
            Ok(
                c @ (Command::Handshake
                | Command::FastConnect
                | Command::Bind
                | Command::Unbind
                | Command::Push
                | Command::Ack
                | Command::HttpProxy),
            ) => c,
            _ => {
                let error = ErrorMessage::new(packet.cmd, ErrorCode::UnsupportedCmd);
                self.send_raw(conn, Command::Error, packet.session_id, &error);
                return self.teardown(conn, Some(CloseReason::UnsupportedCommand));
            }
        };
        let body = {
            let session = &self.sessions[&conn];
            // A HANDSHAKE is always RSA, whatever state the connection is in (as in MPush).
            let key = match &session.cipher {
                Some(cipher) if command != Command::Handshake => OpenKey::Aes(cipher),
                _ => OpenKey::Rsa(&self.cfg.rsa_key),
            };
            pipeline::open(
                packet.flags,
                &packet.body,
                key,
                &mut self.rng,
                self.cfg.max_body_bytes,
            )
        };
        let result = body
            .map_err(|e| e.to_string())
            .and_then(|body| self.dispatch(conn, command, &packet, &body));
        if let Err(_reason) = result {
            self.stats.decode_errors += 1;
            self.emit(Event::DecodeError { kind: "phone-body" });
            let error = ErrorMessage::new(packet.cmd, ErrorCode::DispatchError);
            self.send_raw(conn, Command::Error, packet.session_id, &error);
            self.teardown(conn, Some(CloseReason::BadBody));
        }
    }

    /// Handles a decrypted body; `Err` means "could not decode" (ERROR 100 and close).
    pub(super) fn dispatch(
        &mut self,
        conn: ConnId,
        command: Command,
        packet: &Packet,
        body: &[u8],
    ) -> Result<(), String> {
        let sid = packet.session_id;
        match command {
            Command::Handshake => self.on_handshake(
                conn,
                sid,
                Handshake::decode(body).map_err(|e| e.to_string())?,
            ),
            Command::FastConnect => self.on_fast_connect(
                conn,
                sid,
                FastConnect::decode(body).map_err(|e| e.to_string())?,
            ),
            Command::Bind => {
                self.on_bind(conn, sid, Bind::decode(body).map_err(|e| e.to_string())?)
            }
            Command::Unbind => {
                self.on_unbind(conn, sid, Bind::decode(body).map_err(|e| e.to_string())?)
            }
            Command::Push => self.on_upstream(
                conn,
                sid,
                packet.flags,
                Push::decode(body).map_err(|e| e.to_string())?,
            ),
            Command::Ack => self.on_ack(conn, sid),
            Command::HttpProxy => {
                // pushgate does not proxy HTTP. MPush (proxy disabled) answers ERROR 101 and
                // closes, which makes the SDK reconnect; answering the request with an HTTP
                // error keeps the client connected and tells the app what happened.
                let response = HttpResponse {
                    status_code: 501,
                    reason_phrase: "Not Implemented".into(),
                    headers: String::new(),
                    body: bytes::Bytes::from_static(b"HTTP proxy is not supported by this server"),
                };
                self.send_raw(conn, Command::HttpProxy, sid, &response);
            }
            _ => unreachable!("filtered in on_phone_frame"),
        }
        Ok(())
    }

    pub(super) fn on_upstream(&mut self, conn: ConnId, sid: i32, flags: Flags, push: Push) {
        if flags.contains(Flags::AUTO_ACK) {
            self.send_raw(conn, Command::Ack, sid, &Ack);
        }
        let user_id = self.sessions[&conn].user_id().map(str::to_owned);
        self.emit(Event::Upstream {
            conn,
            user_id,
            content: push.content,
        });
    }

    pub(super) fn on_ack(&mut self, conn: ConnId, sid: i32) {
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

    pub(super) fn on_idle_timer(&mut self, conn: ConnId, at: Millis) {
        let max_misses = self.cfg.max_heartbeat_misses;
        let now = self.now;
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.idle_check_at_ms != at {
            return; // superseded
        }
        if session.cipher.is_none() {
            // Never completed a handshake or fast connect: the handshake deadline passed. (A
            // live session doing a fast connect keeps its cipher and its idle checks.)
            return self.teardown(conn, Some(CloseReason::HandshakeTimeout));
        }
        if session.idle_check(now, max_misses) {
            return self.teardown(conn, Some(CloseReason::IdleTimeout));
        }
        let next = now + session.heartbeat_ms.max(1);
        session.idle_check_at_ms = next;
        self.timers.arm(next, Timer::Idle(conn));
    }

    /// Forgets a connection: its routes, its pushes in flight (failed), and, when `reason` is
    /// given, tells the driver to close it.
    pub(super) fn teardown(&mut self, conn: ConnId, reason: Option<CloseReason>) {
        if !self.sessions.contains_key(&conn) {
            return;
        }
        self.unbind_session(conn);
        let session = self.sessions.remove(&conn).expect("checked above");
        self.timers
            .cancel(session.idle_check_at_ms, Timer::Idle(conn));
        for sid in session.in_flight {
            self.on_written_failed(sid);
        }
        if let SessionState::FastConnecting { request, .. } = session.state {
            self.forget_store_request(request);
        }
        if let Some(reason) = reason {
            self.outputs.push_back(Output::Close { conn, reason });
        }
        let reason = reason.unwrap_or(CloseReason::PeerClosed);
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
        cipher: AesCipher,
    ) {
        let frame = OutFrame::Packet {
            cmd: cmd.code(),
            flags,
            session_id: sid,
            body: body.to_bytes(),
            seal: Seal::Aes(cipher),
        };
        self.transmit(conn, frame, None);
    }
}
