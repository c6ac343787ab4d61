//! Bind and unbind (reference §9.4): BIND names the user (and tags) a Ready connection speaks
//! for. The node takes the local route (kicking an older local holder), writes the route to the
//! store, and reads the store's answer: the route it replaced (an older connection on another
//! node, kicked through a notice) or a newer bind that wins (this one is kicked). UNBIND, a new
//! handshake, a kick or teardown release the binding: the local route goes and the store route
//! is marked offline — only if it still names this binding.
//!
//! With a bind check configured, a BIND of a new user waits for its verdict first
//! (`bind_check.rs`).
//!
//! Why the care: binds of one user race across nodes, store answers arrive late or never, and
//! a store must never keep naming a connection that no longer holds the user.
use super::phone::{INVALID_PARAM, NOT_HANDSHAKE};
use super::{Node, StorePurpose, STORE_WRITE_ATTEMPTS};
use crate::command::Command;
use crate::ids::ConnId;
use crate::message::{Bind, ErrorMessage, OkMessage};
use crate::route::ClientType;
use crate::session::BoundUser;
use crate::store::{KickNotice, RouteRecord, StoreError, StoreOp, StoreReply};
use crate::{BindField, CloseReason, Event, KickCause};
use std::sync::Arc;

impl Node {
    pub(super) fn on_bind(&mut self, conn: ConnId, sid: i32, bind: Bind) {
        if !self.sessions[&conn].is_ready() {
            let error = ErrorMessage::validation(Command::Bind, NOT_HANDSHAKE);
            self.send_raw(conn, Command::Error, sid, &error);
            return self.teardown(conn, CloseReason::BadRequest);
        }
        let too_long = if bind.user_id.len() > self.cfg.max_user_id_bytes {
            Some(BindField::UserId)
        } else if bind.tags.len() > self.cfg.max_tags_bytes {
            Some(BindField::Tags)
        } else {
            None
        };
        if let Some(field) = too_long {
            self.emit(Event::BindTooLong { conn, field });
        }
        if bind.user_id.is_empty() || too_long.is_some() {
            let error = ErrorMessage::validation(Command::Bind, INVALID_PARAM);
            self.send_raw(conn, Command::Error, sid, &error);
            return self.teardown(conn, CloseReason::BadRequest);
        }
        if self.rebind_while_checking(conn, sid, &bind) {
            return; // the same bind again: the check in flight answers it
        }
        let same_user = self.sessions[&conn].user_id() == Some(bind.user_id.as_str());
        if self.cfg.bind_check && !same_user {
            // MPush asks its validator after the same-user shortcut, before any route changes.
            return self.ask_bind_check(conn, sid, bind);
        }
        self.bind_now(conn, sid, bind);
    }

    /// Binds a Ready connection whose BIND passed validation (and its check, if any).
    pub(super) fn bind_now(&mut self, conn: ConnId, sid: i32, bind: Bind) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.user_id() == Some(bind.user_id.as_str()) {
            // Same user again: new tags and a new bind, written to the store. The latest bind
            // wins everywhere, also against a concurrent bind of the same user on another node.
            let route_version = self.next_version();
            let mut ended_version = None;
            if let Some(bound) = self.sessions.get_mut(&conn).and_then(|s| s.bound.as_mut()) {
                bound.tags = bind.tags.into_boxed_str();
                ended_version = Some(std::mem::replace(&mut bound.route_version, route_version));
            }
            if let Some((user_id, client_type, record)) = self.route_record(conn) {
                // The previous bind ends here, and its mark goes first: a write of it still on
                // its way (held up on a store link the node has given up, whose answer never
                // comes) then finds it ended, and never lands online after this bind ends.
                if let (Some(version), Some(conn_id)) = (ended_version, record.conn_id.clone()) {
                    self.mark_bind_offline(user_id.clone(), client_type, conn_id, version);
                }
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
            user_id: Arc::from(bind.user_id.as_str()),
            tags: bind.tags.into_boxed_str(),
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
        // The session and the route table hold the user id once between them.
        if let (Some(shared), Some(bound)) = (
            self.routes.shared_user_id(&bind.user_id),
            self.sessions.get_mut(&conn).and_then(|s| s.bound.as_mut()),
        ) {
            bound.user_id = shared;
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

    pub(super) fn on_unbind(&mut self, conn: ConnId, sid: i32, unbind: Bind) {
        if !self.sessions[&conn].is_ready() {
            let error = ErrorMessage::validation(Command::Unbind, NOT_HANDSHAKE);
            self.send_raw(conn, Command::Error, sid, &error);
            return self.teardown(conn, CloseReason::BadRequest);
        }
        if unbind.user_id.is_empty() {
            let error = ErrorMessage::validation(Command::Unbind, INVALID_PARAM);
            self.send_raw(conn, Command::Error, sid, &error);
            return self.teardown(conn, CloseReason::BadRequest);
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
        // A bind still waiting for its check is given up with the binding.
        self.cancel_bind_check(conn);
        if let Some(bound) = self.release_binding(conn) {
            self.emit(Event::Unbound {
                conn,
                user_id: bound.user_id.to_string(),
            });
        }
    }

    /// Takes `conn`'s user away: the local route goes, and the binding goes offline in the
    /// store unless something newer is there already (the mark names this binding), so a
    /// store never keeps naming a connection that no longer holds the user — also when the
    /// newer bind that displaced it never got its own write through.
    pub(super) fn release_binding(&mut self, conn: ConnId) -> Option<BoundUser> {
        let session = self.sessions.get_mut(&conn)?;
        let bound = session.bound.take()?;
        let client_type = session.client_type;
        let conn_token = session.conn_token.to_string();
        self.routes.remove_if(&bound.user_id, client_type, conn);
        self.mark_bind_offline(
            bound.user_id.to_string(),
            client_type,
            conn_token,
            bound.route_version,
        );
        Some(bound)
    }

    /// True when a connection here holds the user and client type of `displaced` (a route on
    /// another node) with a bind that supersedes it: `displaced` has lost the user to it.
    fn newer_bind_here(
        &self,
        user_id: &str,
        client_type: ClientType,
        displaced: &RouteRecord,
    ) -> bool {
        self.routes
            .get(user_id, client_type)
            .and_then(|holder| self.route_record(holder))
            .is_some_and(|(_, _, held)| {
                held.conn_id != displaced.conn_id && held.supersedes(displaced)
            })
    }

    /// Sends the offline mark of this node's bind `version` of (user, type) on connection
    /// `conn_id`: the store takes that binding (or an older one of the connection) offline, or
    /// remembers it ended; a newer route is never touched.
    pub(super) fn mark_bind_offline(
        &mut self,
        user_id: String,
        client_type: ClientType,
        conn_id: String,
        version: u64,
    ) {
        self.store_write(StoreOp::SetRouteOffline {
            user_id,
            client_type,
            node: self.cfg.node_addr.clone(),
            conn_id,
            version,
        });
    }

    /// Gives `conn`'s bind the version just above `ended_version`, the ended bind that kept it
    /// out, and writes it again as attempt `attempts + 1`. Just above, not the clock's now: a
    /// bind of another connection made after the ended one (and before this write lands) is
    /// newer than this connection's bind and keeps the user. The old version's mark goes
    /// first, as on a re-bind: a write of it still on its way never lands.
    fn restamp_bind(&mut self, conn: ConnId, attempts: u32, ended_version: u64) {
        let route_version = self.version_just_above(ended_version);
        let Some(bound) = self.sessions.get_mut(&conn).and_then(|s| s.bound.as_mut()) else {
            return;
        };
        let old_version = std::mem::replace(&mut bound.route_version, route_version);
        debug_assert!(
            route_version > old_version,
            "a re-stamp moves the bind forward"
        );
        let Some((user_id, client_type, record)) = self.route_record(conn) else {
            return;
        };
        if let Some(conn_id) = record.conn_id.clone() {
            self.mark_bind_offline(user_id.clone(), client_type, conn_id, old_version);
        }
        let op = StoreOp::PutRoute {
            user_id,
            client_type,
            route: record,
        };
        let purpose = StorePurpose::BindRoute {
            conn,
            op: op.clone(),
            attempts: attempts + 1,
        };
        if self.store(op, purpose).is_none() {
            self.schedule_route_repair(conn);
        }
    }

    /// Writes a connection's route to the store (the answer may name an older route to kick).
    pub(super) fn put_route(
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
        let sent = self.store(
            op.clone(),
            StorePurpose::BindRoute {
                conn,
                op,
                attempts: 1,
            },
        );
        if sent.is_none() {
            // The node holds its maximum of store requests: a repair round writes the route
            // (the connection's bind as it is then), as it does for a write that failed.
            self.schedule_route_repair(conn);
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
                if displaced_elsewhere
                    && !holds_user
                    && !self.newer_bind_here(user_id, *client_type, &previous)
                {
                    // The connection closed (or gave the user up) before its bind took effect:
                    // the connection it displaced on another node keeps the user, and its
                    // route goes back, unless a newer bind came since. (When a newer bind here
                    // took the user, its own write displaced only this one's route and kicks
                    // nobody: the connection displaced elsewhere is kicked below, seed
                    // 85002247.)
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
                if !still_this_bind || current.conn_id == route.conn_id {
                    return;
                }
                if !current.is_online()
                    && !route.is_replaced_by(&current)
                    && attempts <= STORE_WRITE_ATTEMPTS
                {
                    // The newer bind has ended already (its connection closed, perhaps before
                    // its node, stalled, even got to it): nobody holds the user but this
                    // connection, which binds again above it rather than leave the user to
                    // nobody. (A connection its device has replaced since loses for good.)
                    return self.restamp_bind(conn, attempts, current.version);
                }
                let cause = if route.is_late_against(&current) {
                    KickCause::LateBind
                } else {
                    KickCause::NewerBind
                };
                self.kick_connection(conn, cause);
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
}
