//! Bind and connection versions: every bind gets a version from the node's clock (epoch ms ×
//! 1000, strictly increasing per node), and every connection the version of the moment it
//! became Ready. Both are written into the store route, so a store can order binds that race
//! across nodes (the newer bind wins) and, between two connections of one device, keep the
//! device's newer connection even when its bind was processed first
//! ([`RouteRecord::supersedes`]).
//!
//! Why: writes from a stalled, partitioned or restarted node arrive late; without versions a
//! late write would overwrite a newer route.
use super::Node;
use crate::ids::ConnId;
use crate::route::ClientType;
use crate::store::RouteRecord;

impl Node {
    /// A new bind or connection version: the node's clock (epoch ms × 1000), strictly
    /// increasing per node.
    pub(super) fn next_version(&mut self) -> u64 {
        let clock = u64::try_from(self.epoch_ms())
            .unwrap_or(0)
            .saturating_mul(1000);
        self.last_route_version = clock.max(self.last_route_version + 1);
        self.last_route_version
    }

    /// The store route describing a bound connection's current bind.
    pub(super) fn route_record(&self, conn: ConnId) -> Option<(String, ClientType, RouteRecord)> {
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

    /// The local connection holding (user, client type) whose route `record` may not replace
    /// ([`RouteRecord::supersedes`]): a newer connection of the same device.
    pub(super) fn newer_connection_holding(
        &self,
        record: &RouteRecord,
        user_id: &str,
        client_type: ClientType,
    ) -> Option<ConnId> {
        let holder = self.routes.get(user_id, client_type)?;
        let (_, _, held) = self.route_record(holder)?;
        (!record.supersedes(&held)).then_some(holder)
    }
}
