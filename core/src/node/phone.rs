//! Phone connections (reference §9): handshake, fast connect, heartbeats and idle checks,
//! bind/unbind with routes and kicks, upstream pushes and ACKs, and teardown.
use super::{
    CloseReason, Event, KickCause, Node, OutFrame, Output, Seal, StorePurpose,
    MAX_OFFLINE_MARKS_TO_REPAIR, ROUTE_REPAIR_INTERVAL_MS, STORE_WRITE_ATTEMPTS,
};
use crate::command::Command;
use crate::crypto::{mix_keys, AesCipher};
use crate::frame::{Flags, Frame, FrameError, Packet};
use crate::ids::{ConnId, Millis, RequestId};
use crate::in_flight::Owner;
use crate::message::{
    Ack, Bind, Body, ErrorCode, ErrorMessage, FastConnect, FastConnectOk, Handshake, HandshakeOk,
    HttpResponse, Kick, OkMessage, Push,
};
use crate::pipeline::{self, OpenKey};
use crate::route::ClientType;
use crate::session::{BoundUser, Session, SessionState};
use crate::status::PushStatus;
use crate::store::{CachedSession, KickNotice, RouteRecord, StoreError, StoreOp, StoreReply};
use crate::timer::Timer;
use rand_core::RngCore;

/// Reason texts MPush sends with code-0 errors.
const PARAM_INVALID: &str = "Param invalid";
const INVALID_PARAM: &str = "invalid param";
const NOT_HANDSHAKE: &str = "not handshake";

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
    fn dispatch(
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

    fn on_handshake(&mut self, conn: ConnId, sid: i32, hs: Handshake) {
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
    fn adopt(&mut self, conn: ConnId, cached: &CachedSession, heartbeat_ms: u64) {
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

    fn on_fast_connect(&mut self, conn: ConnId, sid: i32, fc: FastConnect) {
        let purpose = StorePurpose::FastConnect { conn };
        match self.store(
            StoreOp::GetSession {
                session_id: fc.session_id.clone(),
            },
            purpose,
        ) {
            Some(request) => {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.state = SessionState::FastConnecting {
                        request,
                        packet_session_id: sid,
                        device_id: fc.device_id,
                        max_heartbeat_ms: fc.max_heartbeat_ms,
                    };
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
        if !matches!(&session.state, SessionState::FastConnecting { request: r, .. } if *r == request)
        {
            return; // an answer to an earlier attempt
        }
        let SessionState::FastConnecting {
            packet_session_id,
            device_id,
            max_heartbeat_ms,
            ..
        } = std::mem::replace(&mut session.state, SessionState::Connected)
        else {
            return;
        };
        // A session that was Ready before (a fast connect on a live session) stays usable.
        if session.cipher.is_some() {
            session.state = SessionState::Ready;
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
        self.send_raw(conn, Command::FastConnect, packet_session_id, &ok);
        self.adopt(conn, &cached, heartbeat_ms);
        self.stats.fast_connects += 1;
        self.emit(Event::HandshakeDone {
            conn,
            device_id,
            fast: true,
        });
    }

    fn on_bind(&mut self, conn: ConnId, sid: i32, bind: Bind) {
        if !self.sessions[&conn].is_ready() {
            let error = ErrorMessage::validation(Command::Bind, NOT_HANDSHAKE);
            self.send_raw(conn, Command::Error, sid, &error);
            return self.teardown(conn, Some(CloseReason::BadRequest));
        }
        if bind.user_id.is_empty()
            || bind.user_id.len() > self.cfg.max_user_id_bytes
            || bind.tags.len() > self.cfg.max_tags_bytes
        {
            let error = ErrorMessage::validation(Command::Bind, INVALID_PARAM);
            self.send_raw(conn, Command::Error, sid, &error);
            return self.teardown(conn, Some(CloseReason::BadRequest));
        }
        let session = self.sessions.get_mut(&conn).expect("checked above");
        if session.user_id() == Some(bind.user_id.as_str()) {
            // Same user again: new tags and a new bind, written to the store. The latest bind
            // wins everywhere, also against a concurrent bind of the same user on another node.
            let route_version = self.next_version();
            if let Some(bound) = self.sessions.get_mut(&conn).and_then(|s| s.bound.as_mut()) {
                bound.tags = bind.tags;
                bound.route_version = route_version;
            }
            if let Some((user_id, client_type, record)) = self.route_record(conn) {
                self.put_route(conn, user_id, client_type, record);
            }
            return self.send_raw(
                conn,
                Command::Ok,
                sid,
                &OkMessage::new(Command::Bind, "bind success"),
            );
        }
        if session.bound.is_some() {
            self.unbind_session(conn);
        }
        let route_version = self.next_version();
        let session = self.sessions.get_mut(&conn).expect("checked above");
        let client_type = session.client_type;
        session.bound = Some(BoundUser {
            user_id: bind.user_id.clone(),
            tags: bind.tags,
            route_version,
        });
        let (_, _, record) = self.route_record(conn).expect("bound above");
        if let Some(holder) = self.newer_connection_holding(&record, &bind.user_id, client_type) {
            // A late bind from a connection its device has given up: the device's newer
            // connection here keeps the user, and this one is answered and then kicked, as a
            // bind that lost the race in the store would be.
            debug_assert_ne!(holder, conn);
            self.send_raw(
                conn,
                Command::Ok,
                sid,
                &OkMessage::new(Command::Bind, "bind success"),
            );
            return self.kick_connection(conn, KickCause::LateBind);
        }
        if let Some(older) = self.routes.insert(&bind.user_id, client_type, conn) {
            if older != conn {
                // The older connection loses the user; the store route is overwritten below.
                self.kick_connection(older, KickCause::NewerBind);
            }
        }
        self.stats.binds += 1;
        self.emit(Event::Bound {
            conn,
            user_id: bind.user_id.clone(),
            client_type,
        });
        self.put_route(conn, bind.user_id, client_type, record);
        self.send_raw(
            conn,
            Command::Ok,
            sid,
            &OkMessage::new(Command::Bind, "bind success"),
        );
    }

    /// Writes a connection's route to the store (the answer may name an older route to kick).
    fn put_route(
        &mut self,
        conn: ConnId,
        user_id: String,
        client_type: ClientType,
        route: RouteRecord,
    ) {
        let op = StoreOp::PutRoute {
            user_id,
            client_type,
            route,
        };
        self.store(
            op.clone(),
            StorePurpose::BindRoute {
                conn,
                op,
                attempts: 1,
            },
        );
    }

    /// The local connection holding (user, client type) whose route `record` may not replace
    /// ([`RouteRecord::supersedes`]): a newer connection of the same device.
    fn newer_connection_holding(
        &self,
        record: &RouteRecord,
        user_id: &str,
        client_type: ClientType,
    ) -> Option<ConnId> {
        let holder = self.routes.get(user_id, client_type)?;
        let (_, _, held) = self.route_record(holder)?;
        (!record.supersedes(&held)).then_some(holder)
    }

    /// The store route describing a bound connection's current bind.
    fn route_record(&self, conn: ConnId) -> Option<(String, ClientType, RouteRecord)> {
        let session = self.sessions.get(&conn)?;
        let bound = session.bound.as_ref()?;
        let record = RouteRecord {
            host: self.cfg.node_addr.host.clone(),
            port: self.cfg.node_addr.port,
            device_id: session.device_id.clone(),
            os_name: session.os_name.clone(),
            client_version: session.client_version.clone(),
            conn_id: Some(session.conn_token.clone()),
            version: bound.route_version,
            conn_version: session.conn_version,
            ended: Vec::new(),
        };
        Some((bound.user_id.clone(), session.client_type, record))
    }

    /// A new bind or connection version: the node's clock (epoch ms × 1000), strictly
    /// increasing per node.
    fn next_version(&mut self) -> u64 {
        let clock = u64::try_from(self.epoch_ms())
            .unwrap_or(0)
            .saturating_mul(1000);
        self.last_route_version = clock.max(self.last_route_version + 1);
        self.last_route_version
    }

    /// Writes every local route to the store again (after the store link came back). Each
    /// keeps its bind's version, so a route the store learned of a newer bind is not undone.
    /// Writes `conn`'s route again at the next repair round.
    fn schedule_route_repair(&mut self, conn: ConnId) {
        self.routes_to_repair.insert(conn);
        self.arm_repair();
    }

    /// Sends an offline mark again at the next repair round. Marks are idempotent and name
    /// the binding they mean, so a late one never touches a newer route.
    pub(super) fn schedule_offline_mark_repair(&mut self, mark: StoreOp) {
        debug_assert!(matches!(
            mark,
            StoreOp::SetRouteOffline { .. } | StoreOp::RestoreRoute { .. }
        ));
        if self.offline_marks_to_repair.len() >= MAX_OFFLINE_MARKS_TO_REPAIR {
            self.offline_marks_to_repair.pop_front();
        }
        self.offline_marks_to_repair.push_back(mark);
        self.arm_repair();
    }

    fn resend_offline_marks(&mut self) {
        for mark in std::mem::take(&mut self.offline_marks_to_repair) {
            self.store_write(mark);
        }
    }

    fn arm_repair(&mut self) {
        if !self.repair_armed {
            self.repair_armed = true;
            self.timers
                .arm(self.now + ROUTE_REPAIR_INTERVAL_MS, Timer::RouteRepair);
        }
    }

    /// A repair round: sends the failed offline marks again, and writes the route of every
    /// connection that still holds the binding whose write failed (its current bind, which may
    /// be newer by now). What fails again comes back for the next round.
    pub(super) fn repair_routes(&mut self) {
        self.repair_armed = false;
        self.resend_offline_marks();
        let conns = std::mem::take(&mut self.routes_to_repair);
        for conn in conns {
            let Some((user_id, client_type, record)) = self.route_record(conn) else {
                continue;
            };
            if self.routes.get(&user_id, client_type) == Some(conn) {
                self.put_route(conn, user_id, client_type, record);
            }
        }
    }

    pub(super) fn republish_routes(&mut self) {
        self.routes_to_repair.clear();
        self.resend_offline_marks();
        let conns: Vec<ConnId> = self.routes.iter().map(|(_, _, c)| c).collect();
        for conn in conns {
            if let Some((user_id, client_type, record)) = self.route_record(conn) {
                self.put_route(conn, user_id, client_type, record);
            }
        }
    }

    pub(super) fn on_bind_route_reply(
        &mut self,
        conn: ConnId,
        op: StoreOp,
        attempts: u32,
        reply: Result<StoreReply, StoreError>,
    ) {
        let StoreOp::PutRoute {
            user_id,
            client_type,
            route,
        } = &op
        else {
            return;
        };
        match reply {
            Ok(StoreReply::Previous(Some(previous))) => {
                let holds_user = self.sessions.get(&conn).is_some_and(|s| {
                    s.user_id() == Some(user_id.as_str()) && s.client_type == *client_type
                });
                let displaced_elsewhere = previous.is_online()
                    && !previous.is_on(&self.cfg.node_addr)
                    && previous.conn_id != route.conn_id;
                if displaced_elsewhere && !holds_user {
                    // The connection closed (or gave the user up) before its bind took effect:
                    // the connection it displaced on another node keeps the user, and its
                    // route goes back, unless a newer bind came since.
                    return self.store_write(StoreOp::RestoreRoute {
                        user_id: user_id.clone(),
                        client_type: *client_type,
                        node: self.cfg.node_addr.clone(),
                        version: route.version,
                        previous: Box::new(previous),
                    });
                }
                // An older connection of this user and type on another node gets kicked there.
                if let Some(old_conn_id) = previous.conn_id.clone() {
                    if displaced_elsewhere {
                        let notice = KickNotice {
                            client_type: client_type.code(),
                            conn_id: old_conn_id,
                            device_id: previous.device_id.clone(),
                            target_port: previous.port,
                            target_server: previous.host.clone(),
                            user_id: user_id.clone(),
                            version: previous.version,
                        };
                        self.store_write(StoreOp::PublishKick { notice });
                    }
                }
            }
            Ok(StoreReply::Stale { current }) => {
                // The store knows a newer bind of this user and type on another connection:
                // this one lost the race and gives the user up, as if kicked by it.
                let still_this_bind = self
                    .sessions
                    .get(&conn)
                    .and_then(|s| s.bound.as_ref())
                    .is_some_and(|b| b.route_version == route.version);
                if still_this_bind && current.conn_id != route.conn_id {
                    let cause = if route.is_late_against(&current) {
                        KickCause::LateBind
                    } else {
                        KickCause::NewerBind
                    };
                    self.kick_connection(conn, cause);
                }
            }
            Ok(_) => {}
            Err(error) => {
                // Retry while this connection still holds the route; after a few tries (or at
                // once when the store is unreachable) the route waits for the next repair round
                // or for the store link to come back (`republish_routes`).
                let still_bound = self.sessions.get(&conn).is_some_and(|s| {
                    s.user_id() == Some(user_id.as_str()) && s.client_type == *client_type
                });
                let retry = !matches!(error, StoreError::Unavailable(_));
                if still_bound && retry && attempts < STORE_WRITE_ATTEMPTS {
                    self.store(
                        op.clone(),
                        StorePurpose::BindRoute {
                            conn,
                            op,
                            attempts: attempts + 1,
                        },
                    );
                } else {
                    if still_bound {
                        self.schedule_route_repair(conn);
                    }
                    self.emit(Event::StoreFailed {
                        op: "put-route",
                        error,
                    });
                }
            }
        }
    }

    fn on_unbind(&mut self, conn: ConnId, sid: i32, unbind: Bind) {
        if !self.sessions[&conn].is_ready() {
            let error = ErrorMessage::validation(Command::Unbind, NOT_HANDSHAKE);
            self.send_raw(conn, Command::Error, sid, &error);
            return self.teardown(conn, Some(CloseReason::BadRequest));
        }
        if unbind.user_id.is_empty() {
            let error = ErrorMessage::validation(Command::Unbind, INVALID_PARAM);
            self.send_raw(conn, Command::Error, sid, &error);
            return self.teardown(conn, Some(CloseReason::BadRequest));
        }
        // As in MPush, the connection's own user is unbound; the body's id is only checked.
        self.unbind_session(conn);
        self.send_raw(
            conn,
            Command::Ok,
            sid,
            &OkMessage::new(Command::Unbind, "unbind success"),
        );
    }

    /// Drops the connection's user: local route (if still ours), store route offline (if it
    /// still names this connection).
    pub(super) fn unbind_session(&mut self, conn: ConnId) {
        if let Some(bound) = self.release_binding(conn) {
            self.emit(Event::Unbound {
                conn,
                user_id: bound.user_id,
            });
        }
    }

    /// Takes `conn`'s user away: the local route goes, and the binding goes offline in the
    /// store unless something newer is there already (the mark names this binding), so a
    /// store never keeps naming a connection that no longer holds the user — also when the
    /// newer bind that displaced it never got its own write through.
    fn release_binding(&mut self, conn: ConnId) -> Option<BoundUser> {
        let session = self.sessions.get_mut(&conn)?;
        let bound = session.bound.take()?;
        let client_type = session.client_type;
        let conn_token = session.conn_token.clone();
        self.routes.remove_if(&bound.user_id, client_type, conn);
        self.store_write(StoreOp::SetRouteOffline {
            user_id: bound.user_id.clone(),
            client_type,
            node: self.cfg.node_addr.clone(),
            conn_id: conn_token,
            version: bound.route_version,
        });
        Some(bound)
    }

    fn on_upstream(&mut self, conn: ConnId, sid: i32, flags: Flags, push: Push) {
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

    /// Sends KICK to a connection that lost its user to a newer bind, and detaches the user
    /// from it: its local route (if still its own) goes, so nothing more is pushed to it. The
    /// store route is left alone — it already names the newer connection. The connection stays
    /// open, as in MPush; the client decides what to do.
    pub(super) fn kick_connection(&mut self, conn: ConnId, cause: KickCause) {
        let Some(bound) = self.release_binding(conn) else {
            return;
        };
        let session = &self.sessions[&conn];
        let device_id = session.device_id.clone();
        if let Some(cipher) = session.cipher.clone() {
            let kick = Kick {
                device_id: device_id.clone(),
                user_id: bound.user_id.clone(),
            };
            self.send_sealed(conn, Command::Kick, Flags::NONE, 0, &kick, cipher);
        }
        self.stats.kicks += 1;
        self.emit(Event::Kicked {
            conn,
            user_id: bound.user_id,
            device_id,
            cause,
        });
    }

    pub(super) fn on_kick_notice(&mut self, notice: KickNotice) {
        if notice.target() != self.cfg.node_addr {
            return;
        }
        let Some(client_type) = ClientType::from_code(notice.client_type) else {
            return;
        };
        let Some(conn) = self.routes.get(&notice.user_id, client_type) else {
            return;
        };
        // Only the binding the notice names: a connection that bound again since is newer.
        let named = self.sessions.get(&conn).is_some_and(|s| {
            s.conn_token == notice.conn_id
                && (notice.version == 0
                    || s.bound
                        .as_ref()
                        .is_some_and(|b| b.route_version == notice.version))
        });
        let kicked = named.then(|| {
            let session = &self.sessions[&conn];
            let version = session.bound.as_ref().map_or(0, |b| b.route_version);
            (conn, session.conn_token.clone(), version)
        });
        self.emit(Event::KickNoticeHandled {
            notice: notice.clone(),
            kicked: kicked.clone(),
        });
        if kicked.is_some() {
            self.kick_connection(conn, KickCause::NewerBind);
        }
    }

    /// Kicks a user's local connections (the admin API): KICK, then the routes go offline.
    pub(super) fn kick_user(&mut self, user_id: &str, client_type: Option<ClientType>) {
        let targets: Vec<ConnId> = self
            .routes
            .of_user(user_id)
            .filter(|(ct, _)| client_type.is_none_or(|want| want == *ct))
            .map(|(_, conn)| conn)
            .collect();
        for conn in targets {
            self.kick_connection(conn, KickCause::Operator);
        }
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

    fn send_sealed(
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
