//! Kicks (reference §9.5): a connection that loses its user — to a newer bind here or on
//! another node (a kick notice through the store's pub/sub), to a newer connection of its own
//! device (a late bind), or to an operator — gets a KICK and gives up the user's local route.
//! The connection stays open, as in MPush; the client decides what to do.
//!
//! Why notices name a binding: a notice that arrives after the connection bound again must not
//! take the newer binding away.
use super::Node;
use crate::command::Command;
use crate::frame::Flags;
use crate::ids::ConnId;
use crate::message::Kick;
use crate::route::ClientType;
use crate::store::KickNotice;
use crate::{Event, KickCause};

impl Node {
    /// Sends KICK to a connection that lost its user to a newer bind, and detaches the user
    /// from it: its local route (if still its own) goes, so nothing more is pushed to it. The
    /// store route is left alone — it already names the newer connection. The connection stays
    /// open, as in MPush; the client decides what to do.
    pub(super) fn kick_connection(&mut self, conn: ConnId, cause: KickCause) {
        let Some(bound) = self.release_binding(conn) else {
            return;
        };
        let session = &self.sessions[&conn];
        let device_id = session.facts.device_id().to_owned();
        if session.has_cipher() {
            let kick = Kick {
                device_id: device_id.clone(),
                user_id: bound.user_id.to_string(),
            };
            self.send_sealed(conn, Command::Kick, Flags::NONE, 0, &kick);
        }
        self.stats.kicks += 1;
        self.emit(Event::Kicked {
            conn,
            user_id: bound.user_id.to_string(),
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
            s.conn_token.is(&notice.conn_id)
                && (notice.version == 0
                    || s.bound
                        .as_ref()
                        .is_some_and(|b| b.route_version == notice.version))
        });
        let kicked = named.then(|| {
            let session = &self.sessions[&conn];
            let version = session.bound.as_ref().map_or(0, |b| b.route_version);
            (conn, session.conn_token.to_string(), version)
        });
        self.trace(|| Event::KickNoticeHandled {
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
}
