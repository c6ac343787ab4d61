//! Bind and connection versions: every bind gets a version from the node's clock (epoch ms ×
//! 1000, strictly increasing per node), and every connection the version of the moment it
//! became Ready. Both are written into the store route, so a store can order binds that race
//! across nodes (the newer bind wins) and, between two connections of one device, keep the
//! device's newer connection even when its bind was processed first
//! ([`RouteRecord::supersedes`]).
//!
//! Why: writes from a stalled, partitioned or restarted node arrive late; without versions a
//! late write would overwrite a newer route.
//!
//! The nodes' clocks disagree a little (NTP keeps them within ms to a few hundred ms), so a
//! node also takes in the versions it reads from the store (a hybrid logical clock): it never
//! stamps a version below one it has read. A device that moves here from a node whose clock is
//! ahead then gets a newer connection version than its old connection's, once this node has
//! read a route of that node stamped after it — e.g. a push to the device's user through here.
//! While the old connection's route is still online, ages stamped by two nodes order the two
//! connections only beyond the clocks' margin (`MAX_CLOCK_DISAGREEMENT_US`,
//! [`RouteRecord::is_late_against`]).
use super::Node;
use crate::ids::ConnId;
use crate::route::ClientType;
use crate::store::{RouteRecord, StoreError, StoreReply};

/// How far ahead of this node's clock a version read from the store may be and still be taken
/// in: a node whose clock is far off must not drag every other node's versions along.
pub const MAX_VERSION_LEAD_MS: u64 = 60_000;

impl Node {
    /// A new bind or connection version: the node's clock (epoch ms × 1000), strictly
    /// increasing per node, and above every version taken in from the store.
    pub(super) fn next_version(&mut self) -> u64 {
        let clock = self.clock_us();
        self.last_route_version = clock.max(self.last_route_version.saturating_add(1));
        self.last_route_version
    }

    /// A version for a bind that must win only against the bind of version `version`: the
    /// next one after it (not the clock, which may be past binds made since), and the node's
    /// later versions come after it. A `version` that leads the clock by more than
    /// [`MAX_VERSION_LEAD_MS`] is not taken in (as for versions read from the store): the
    /// answer is then [`Node::next_version`], which does not win against it.
    pub(super) fn version_just_above(&mut self, version: u64) -> u64 {
        let above = version.saturating_add(1);
        if above > self.version_lead_limit() {
            return self.next_version();
        }
        self.last_route_version = self.last_route_version.max(above);
        above
    }

    /// The highest version this node takes in from elsewhere: its clock plus
    /// [`MAX_VERSION_LEAD_MS`].
    fn version_lead_limit(&self) -> u64 {
        self.clock_us()
            .saturating_add(MAX_VERSION_LEAD_MS.saturating_mul(1000))
    }

    /// The node's clock in µs since the epoch (the versions' unit).
    fn clock_us(&self) -> u64 {
        u64::try_from(self.epoch_ms())
            .unwrap_or(0)
            .saturating_mul(1000)
    }

    /// Takes in the versions of the route a store reply carries (the route a bind replaced or
    /// lost to, or a route read for a push): later versions of this node come after them,
    /// unless they lead this node's clock by more than [`MAX_VERSION_LEAD_MS`].
    pub(super) fn observe_versions(&mut self, reply: &Result<StoreReply, StoreError>) {
        let route = match reply {
            Ok(StoreReply::Previous(Some(route)))
            | Ok(StoreReply::Stale { current: route })
            | Ok(StoreReply::Route(Some((_, route)))) => route,
            _ => return,
        };
        let seen = route.version.max(route.conn_version);
        if seen <= self.version_lead_limit() {
            self.last_route_version = self.last_route_version.max(seen);
        }
    }

    /// The store route describing a bound connection's current bind.
    pub(super) fn route_record(&self, conn: ConnId) -> Option<(String, ClientType, RouteRecord)> {
        let session = self.sessions.get(&conn)?;
        let bound = session.bound.as_ref()?;
        let record = RouteRecord {
            host: self.cfg.node_addr.host.clone(),
            port: self.cfg.node_addr.port,
            device_id: session.facts.device_id().to_owned(),
            os_name: session.facts.os_name().to_owned(),
            client_version: session.facts.client_version().to_owned(),
            conn_id: Some(session.conn_token.to_string()),
            version: bound.route_version,
            conn_version: session.conn_version,
            ended: Vec::new(),
            links: Vec::new(),
        };
        Some((bound.user_id.to_string(), session.client_type, record))
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
