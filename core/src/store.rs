//! The route store as the core sees it: requests it hands out and the answers it expects.
//!
//! In a cluster the store is shared (routes, reusable sessions, kick notices between nodes,
//! broadcast task control); on one node it is an in-memory map in the driver. Either way the
//! core never calls it: it emits [`StoreOp`]s with a [`RequestId`] and later receives the
//! [`StoreReply`] for that id. Values keep MPush's Redis formats (reference §12) so a store can
//! be shared with MPush's Java PushClient.
use crate::config::NodeAddr;
use crate::ids::RequestId;
use crate::route::ClientType;
use serde::{Deserialize, Serialize};

/// Most ended binds a route remembers ([`RouteRecord::ended`]).
pub const MAX_ENDED_BINDS: usize = 4;

/// How far two nodes' wall clocks may disagree, in ms: NTP keeps a cluster's clocks within a
/// few hundred ms, and every node re-reads its wall clock once a second
/// (`Node::follow_wall_clock`). Connection ages stamped by two nodes are only ordered when they
/// differ by more than this ([`RouteRecord::supersedes`]).
pub const MAX_CLOCK_SKEW_MS: u64 = 1_000;

/// [`MAX_CLOCK_SKEW_MS`] in the versions' unit (µs).
pub const MAX_CLOCK_SKEW_US: u64 = MAX_CLOCK_SKEW_MS * 1_000;

/// A bind known to have ended, named by its node and bind version (a node's versions are
/// strictly increasing, so the pair names one bind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedBind {
    pub host: String,
    pub port: u16,
    pub version: u64,
}

/// Where a user's connection of one client type lives (MPush's `ClientLocation` JSON:
/// `{"port":3001,"host":"…","deviceId":"…","osName":"…","clientVersion":"…","connId":"…"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRecord {
    /// The node's gateway port. (Fields are declared in the order MPush writes them, so an
    /// unversioned route serialises to MPush's exact bytes.)
    pub port: u16,
    /// The node's gateway host.
    pub host: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_version: String,
    /// The connection's cluster-unique id; absent = offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<String>,
    /// The version of the bind this route describes: the binding node's clock in µs-ish units,
    /// monotonic per node. A store never lets an older bind overwrite a newer one, because
    /// writes from a partitioned or restarted node can arrive late. 0 = unversioned (written by
    /// MPush), older than any versioned route.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    /// When the binding node made this connection ready (handshake or fast connect), on the
    /// same clock as `version`. A device keeps one connection at a time and opens a new one only
    /// after giving up the old, so between two connections of one device the newer connection
    /// is the device's current one, whenever each bind happened to be processed. 0 = unknown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub conn_version: u64,
    /// Binds of this user and client type whose offline mark reached the store while it held
    /// another route (marks can overtake their bind's own write, e.g. a write delivered late
    /// on an old link, or a route put back by [`StoreOp::RestoreRoute`]): none of them may
    /// come back online. Kept by the store, at most [`MAX_ENDED_BINDS`], newest last.
    #[serde(default, rename = "endedBinds", skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<EndedBind>,
}

/// Whether a node's ended bind `ended` ends its bind `version`: the same bind, or a later one
/// (unversioned binds, 0, only by their own end).
fn ends(ended: u64, version: u64) -> bool {
    ended == version || (version != 0 && ended > version)
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl RouteRecord {
    /// Whether writing `self` may replace `stored` (a newer or the same bind).
    ///
    /// Against a route of another connection of the same device, the newer connection wins,
    /// even when its bind was processed first: a bind that a stalled node processes late, after
    /// the device gave that connection up and bound again elsewhere, must neither displace the
    /// device's live connection nor, once that late route went offline, keep the live one out.
    /// A route of the same device that is offline never keeps a bind out: its connection gave
    /// the user up, so it displaces nobody. Connection ages stamped by two nodes come from two
    /// clocks, which may disagree by up to [`MAX_CLOCK_SKEW_MS`] — more than a device takes to
    /// move from one node to another — so across nodes a connection counts as older only when
    /// its age is older by more than that bound (a device leaving a crashed node whose clock
    /// was ahead would otherwise find its own dead route online and newer, and lose its user).
    /// Otherwise (other devices, the same connection, or unknown ages) the newer bind wins.
    pub fn supersedes(&self, stored: &RouteRecord) -> bool {
        if self.compares_by_connection_age(stored) {
            !stored.is_online() || !self.is_older_connection_than(stored)
        } else {
            self.version >= stored.version
        }
    }

    /// True when `stored` is online for a newer connection of this route's device: a bind on
    /// this route's connection came too late ([`RouteRecord::supersedes`]).
    pub fn is_late_against(&self, stored: &RouteRecord) -> bool {
        self.compares_by_connection_age(stored)
            && stored.is_online()
            && self.is_older_connection_than(stored)
    }

    /// Whether this route's connection is known to be older than `other`'s: on one node its
    /// age is lower (one clock), across nodes lower by more than [`MAX_CLOCK_SKEW_US`].
    fn is_older_connection_than(&self, other: &RouteRecord) -> bool {
        let margin = if self.host == other.host && self.port == other.port {
            0
        } else {
            MAX_CLOCK_SKEW_US
        };
        self.conn_version.saturating_add(margin) < other.conn_version
    }

    /// Whether the two routes are decided by connection age: routes of two connections of the
    /// same device (the stored one online or not), both ages known.
    fn compares_by_connection_age(&self, stored: &RouteRecord) -> bool {
        !self.device_id.is_empty()
            && self.device_id == stored.device_id
            && self.conn_id != stored.conn_id
            && self.conn_version != 0
            && stored.conn_version != 0
    }

    /// Applies an offline mark: only the binding it names — node, connection and bind version,
    /// or an older bind of that same connection — goes offline. True when it did.
    pub fn take_offline(&mut self, node: &NodeAddr, conn_id: &str, version: u64) -> bool {
        // An older bind of the same connection ends with it: the connection gave the user up,
        // and the write of its newer bind may never have landed.
        if self.is_on(node) && self.conn_id.as_deref() == Some(conn_id) && self.version <= version {
            self.conn_id = None;
            true
        } else {
            false
        }
    }

    /// True when this route describes the bind `version` made on `node` (online or offline):
    /// a node's bind versions are strictly increasing, so the pair names one bind.
    pub fn is_bind(&self, node: &NodeAddr, version: u64) -> bool {
        self.is_on(node) && self.version == version
    }

    /// True when the bind `version` of `node` has ended as far as this stored route knows:
    /// this route, taken offline, or one of the binds it remembers as ended, is that bind or a
    /// later bind of the same node. A node ends every earlier bind of a user and client type
    /// when it binds them again (the same connection gives its old bind up; another local
    /// connection holding them is kicked), so once a later bind of that node has ended, an
    /// earlier one's write that arrives late (retried, or held up in the network) must not
    /// put the route back online.
    pub fn knows_ended(&self, node: &NodeAddr, version: u64) -> bool {
        (self.is_on(node) && !self.is_online() && ends(self.version, version))
            || self
                .ended
                .iter()
                .any(|e| e.host == node.host && e.port == node.port && ends(e.version, version))
    }

    /// Remembers that the bind `version` of `node` ended (the oldest memory goes beyond
    /// [`MAX_ENDED_BINDS`]).
    pub fn remember_ended(&mut self, node: &NodeAddr, version: u64) {
        if self.knows_ended(node, version) {
            return;
        }
        if self.ended.len() >= MAX_ENDED_BINDS {
            self.ended.remove(0);
        }
        self.ended.push(EndedBind {
            host: node.host.clone(),
            port: node.port,
            version,
        });
    }

    /// The node this route points at.
    pub fn node(&self) -> NodeAddr {
        NodeAddr::new(self.host.clone(), self.port)
    }

    /// True when the route names a live connection.
    pub fn is_online(&self) -> bool {
        self.conn_id.is_some()
    }

    /// True when the route points at `node`.
    pub fn is_on(&self, node: &NodeAddr) -> bool {
        self.host == node.host && self.port == node.port
    }
}

/// The best of a user's routes (in [`ClientType::ALL`] order) for a push that names no client
/// type: an online route on a node other than `asker` first, then any online route, then the
/// first route. A node asks the store only when it holds no connection of the user, so an
/// online route naming the asker is stale: preferring it would answer offline for a user
/// bound elsewhere with another client type.
pub fn best_route(
    routes: impl IntoIterator<Item = (ClientType, RouteRecord)>,
    asker: Option<&NodeAddr>,
) -> Option<(ClientType, RouteRecord)> {
    let mut best: Option<(u8, (ClientType, RouteRecord))> = None;
    for (client_type, route) in routes {
        let rank = match (route.is_online(), asker.is_some_and(|a| route.is_on(a))) {
            (true, false) => 0,
            (true, true) => 1,
            (false, _) => 2,
        };
        if best.as_ref().is_none_or(|(b, _)| rank < *b) {
            best = Some((rank, (client_type, route)));
        }
    }
    best.map(|(_, route)| route)
}

/// A reusable session for fast connect (MPush `mp:rs:{id}`:
/// `osName,osVersion,clientVersion,deviceId,K,IV` with K and IV as signed decimals joined by `|`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedSession {
    pub os_name: String,
    pub os_version: String,
    pub client_version: String,
    pub device_id: String,
    pub session_key: [u8; 16],
    pub iv: [u8; 16],
}

impl CachedSession {
    /// MPush's string form.
    pub fn to_mpush_string(&self) -> String {
        let join = |bytes: &[u8; 16]| {
            bytes
                .iter()
                .map(|b| (*b as i8).to_string())
                .collect::<Vec<_>>()
                .join("|")
        };
        format!(
            "{},{},{},{},{},{}",
            self.os_name,
            self.os_version,
            self.client_version,
            self.device_id,
            join(&self.session_key),
            join(&self.iv)
        )
    }

    /// Parses MPush's string form; `None` unless it has exactly 6 fields and 16 numbers each
    /// for key and IV (as MPush requires).
    pub fn from_mpush_string(text: &str) -> Option<Self> {
        let fields: Vec<&str> = text.split(',').collect();
        let [os_name, os_version, client_version, device_id, key, iv] = fields.as_slice() else {
            return None;
        };
        let parse = |list: &str| -> Option<[u8; 16]> {
            let mut out = [0u8; 16];
            let mut n = 0;
            for part in list.split('|') {
                *out.get_mut(n)? = part.trim().parse::<i8>().ok()? as u8;
                n += 1;
            }
            (n == 16).then_some(out)
        };
        Some(Self {
            os_name: (*os_name).to_owned(),
            os_version: (*os_version).to_owned(),
            client_version: (*client_version).to_owned(),
            device_id: (*device_id).to_owned(),
            session_key: parse(key)?,
            iv: parse(iv)?,
        })
    }
}

/// A request to kick one connection on another node (MPush's kick pub/sub JSON:
/// `clientType`, `connId`, `deviceId`, `targetPort`, `targetServer`, `userId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KickNotice {
    pub client_type: i32,
    pub conn_id: String,
    pub device_id: String,
    pub target_port: u16,
    pub target_server: String,
    pub user_id: String,
    /// The version of the binding being superseded: a connection that bound again since (a
    /// newer version) is not kicked. 0 (MPush's notices) = any binding of that connection.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

impl KickNotice {
    /// The node the notice is for.
    pub fn target(&self) -> NodeAddr {
        NodeAddr::new(self.target_server.clone(), self.target_port)
    }
}

/// What a store does for the core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOp {
    /// Set the route of (user, client type) unless the store holds a newer bind
    /// ([`RouteRecord::supersedes`]) or knows this bind already ended
    /// ([`RouteRecord::knows_ended`]); answer [`StoreReply::Previous`] with the value it
    /// replaced (atomically, so the core can kick an older connection elsewhere), or
    /// [`StoreReply::Stale`] when it was not applied.
    PutRoute {
        user_id: String,
        client_type: ClientType,
        route: RouteRecord,
    },
    /// Mark the route of (user, client type) offline, only if it still describes the binding
    /// `conn_id` on `node` with bind `version` or older ([`RouteRecord::take_offline`]); otherwise
    /// the store remembers that bind as ended, so its write arriving later, or a restore of
    /// it, cannot bring it back online. Answer [`StoreReply::Done`].
    SetRouteOffline {
        user_id: String,
        client_type: ClientType,
        node: NodeAddr,
        conn_id: String,
        version: u64,
    },
    /// Put `previous` back as the route of (user, client type) if the store still holds the
    /// bind `version` of `node` (online or already marked offline): that bind replaced
    /// `previous` but its connection closed before the node learned it had (a BIND read just
    /// before its phone's close), so it never took effect and the connection it displaced
    /// keeps the user ([`RouteRecord::is_bind`]). Answer [`StoreReply::Done`].
    RestoreRoute {
        user_id: String,
        client_type: ClientType,
        node: NodeAddr,
        version: u64,
        previous: Box<RouteRecord>,
    },
    /// Read the route of (user, client type), or with `client_type` `None` the user's best
    /// route for a push through `asker` ([`best_route`]); answer [`StoreReply::Route`].
    GetRoute {
        user_id: String,
        client_type: Option<ClientType>,
        /// The node asking, when it holds no connection of the user (so an online route
        /// naming it is stale).
        #[serde(default)]
        asker: Option<NodeAddr>,
    },
    /// Keep a reusable session for `ttl_ms`; answer [`StoreReply::Done`].
    PutSession {
        session_id: String,
        session: CachedSession,
        ttl_ms: u64,
    },
    /// Read a reusable session; answer [`StoreReply::Session`].
    GetSession { session_id: String },
    /// Deliver a kick notice to the node it names; answer [`StoreReply::Done`].
    PublishKick { notice: KickNotice },
    /// Read a broadcast task's control record; answer [`StoreReply::TaskControl`].
    GetTaskControl { task_id: String },
    /// Add to a broadcast task's progress: sent count and the users reached; answer
    /// [`StoreReply::Done`].
    AddTaskProgress {
        task_id: String,
        sent: u64,
        user_ids: Vec<String>,
    },
}

/// A broadcast task's control record (MPush `mp:pt{taskId}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskControl {
    /// Sends per second; `None` when the store holds no value.
    pub qps: Option<u64>,
    /// The task was cancelled.
    pub cancelled: bool,
}

/// A store's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreReply {
    Done,
    Previous(Option<RouteRecord>),
    /// A PutRoute that was not applied: the store holds a newer bind ([`RouteRecord::supersedes`]).
    Stale {
        current: RouteRecord,
    },
    /// The route found, with the client type it is kept under.
    Route(Option<(ClientType, RouteRecord)>),
    Session(Option<CachedSession>),
    TaskControl(TaskControl),
}

/// Why a store request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    #[error("route store unavailable: {0}")]
    Unavailable(String),
    #[error("route store request timed out")]
    Timeout,
}

/// A store request as it leaves the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRequest {
    pub id: RequestId,
    pub op: StoreOp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_json_matches_mpush() {
        let offline = r#"{"port":3001,"host":"127.0.0.1","deviceId":"device-A","osName":"android","clientVersion":"2.0"}"#;
        let record: RouteRecord = serde_json::from_str(offline).unwrap();
        assert!(!record.is_online());
        assert_eq!(serde_json::to_string(&record).unwrap(), offline);
        let online: RouteRecord =
            serde_json::from_str(r#"{"port":3001,"host":"10.0.0.5","connId":"fb6359be"}"#).unwrap();
        assert_eq!(online.conn_id.as_deref(), Some("fb6359be"));
    }

    fn bind(device: &str, conn: &str, conn_version: u64, version: u64) -> RouteRecord {
        RouteRecord {
            host: "10.0.0.1".into(),
            port: 3001,
            device_id: device.into(),
            os_name: "android".into(),
            client_version: "2.0".into(),
            conn_id: Some(conn.into()),
            version,
            conn_version,
            ended: Vec::new(),
        }
    }

    #[test]
    fn a_newer_bind_supersedes_an_older_one_of_another_device() {
        let first = bind("device-A", "c1", 10, 11);
        let later = bind("device-B", "c2", 5, 20);
        assert!(later.supersedes(&first));
        assert!(!first.supersedes(&later));
        // The same connection binding again: the bind version decides.
        let again = bind("device-A", "c1", 10, 30);
        assert!(again.supersedes(&first));
        assert!(!first.supersedes(&again));
    }

    #[test]
    fn a_device_newer_connection_wins_whenever_its_bind_was_processed() {
        // The device bound on c2 (connected at 20) while its bind on c1 (connected at 10)
        // waited in a stalled node, which processed it later (version 40).
        let live = bind("device-A", "c2", 20, 21);
        let late = bind("device-A", "c1", 10, 40);
        assert!(!late.supersedes(&live));
        assert!(late.is_late_against(&live));
        assert!(live.supersedes(&late));
        assert!(!live.is_late_against(&late));
        // Offline routes of the device keep nobody out: the late route, gone offline, does not
        // keep the live connection out, and a connection whose route is offline displaces
        // nobody (the late bind is then marked offline when its connection's close is read).
        let mut late_offline = late.clone();
        late_offline.conn_id = None;
        assert!(live.supersedes(&late_offline));
        let mut live_offline = live.clone();
        live_offline.conn_id = None;
        assert!(late.supersedes(&live_offline));
        assert!(!late.is_late_against(&live_offline));
        // Routes without connection ages (MPush's) fall back to the bind version.
        let unknown_age = RouteRecord {
            conn_version: 0,
            ..late.clone()
        };
        assert!(unknown_age.supersedes(&live));
    }

    #[test]
    fn a_device_moving_to_a_node_whose_clock_is_behind_keeps_its_user() {
        // The device left c1 on a node whose clock is 300 ms ahead (connection age 10_300) and
        // connected 50 ms later to c2 on a node whose clock is right (age 10_050).
        let left = bind("device-A", "c1", 10_300, 10_301);
        let moved = RouteRecord {
            host: "10.0.0.2".into(),
            ..bind("device-A", "c2", 10_050, 10_060)
        };
        // Its first node marked c1 offline when the device left: the move wins.
        let mut left_offline = left.clone();
        left_offline.conn_id = None;
        assert!(moved.supersedes(&left_offline));
        assert!(!moved.is_late_against(&left_offline));
        // Before that mark lands (or when that node crashed and never marks it), the stored
        // route is online: ages of two nodes closer than the clocks' bound do not order the
        // connections, and the move wins too.
        assert!(moved.supersedes(&left));
        assert!(!moved.is_late_against(&left));
    }

    #[test]
    fn across_nodes_only_an_age_older_by_more_than_the_clock_bound_is_late() {
        let elsewhere = |conn: &str, age_us: u64| RouteRecord {
            host: "10.0.0.2".into(),
            ..bind("device-A", conn, age_us, age_us + 10)
        };
        let here = |conn: &str, age_us: u64| bind("device-A", conn, age_us, age_us + 10);
        let t = 1_000_000_000;
        let live = elsewhere("c2", t);
        // Older by exactly the bound: not known to be older.
        assert!(here("c1", t - MAX_CLOCK_SKEW_US).supersedes(&live));
        assert!(!here("c1", t - MAX_CLOCK_SKEW_US).is_late_against(&live));
        // Older by more: a late bind of a given-up connection.
        let late = here("c1", t - MAX_CLOCK_SKEW_US - 1);
        assert!(!late.supersedes(&live));
        assert!(late.is_late_against(&live));
        // On one node (one clock) any older age is older.
        let same_node = elsewhere("c1", t - 1);
        assert!(!same_node.supersedes(&live));
        assert!(same_node.is_late_against(&live));
    }

    #[test]
    fn a_later_ended_bind_of_a_node_ends_its_earlier_binds() {
        let node = NodeAddr::new("10.0.0.1", 3001);
        let other = NodeAddr::new("10.0.0.2", 3001);
        let mut stored = bind("device-B", "c9", 5, 50);
        stored.conn_id = None;
        stored.host = other.host.clone();
        stored.remember_ended(&node, 40);
        assert!(stored.knows_ended(&node, 40));
        assert!(
            stored.knows_ended(&node, 30),
            "an earlier bind of that node"
        );
        assert!(!stored.knows_ended(&node, 41), "a later bind of that node");
        assert!(!stored.knows_ended(&other, 60));
        assert!(stored.knows_ended(&other, 50), "the stored route, offline");
        assert!(stored.knows_ended(&other, 20));
        // Unversioned binds (MPush's) are ended only by their own end.
        assert!(!stored.knows_ended(&node, 0));
        // Remembering an earlier bind of that node adds nothing.
        stored.remember_ended(&node, 10);
        assert_eq!(stored.ended.len(), 1);
    }

    #[test]
    fn conn_version_travels_in_json_and_defaults_to_zero() {
        let record = bind("device-A", "c1", 7, 9);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""connVersion":7"#), "{json}");
        let back: RouteRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
        let mpush: RouteRecord =
            serde_json::from_str(r#"{"port":3001,"host":"10.0.0.5","connId":"fb6359be"}"#).unwrap();
        assert_eq!((mpush.version, mpush.conn_version), (0, 0));
    }

    #[test]
    fn cached_session_string_matches_mpush() {
        let s = CachedSession {
            os_name: "android".into(),
            os_version: "6.0".into(),
            client_version: "2.0".into(),
            device_id: "device-A".into(),
            session_key: [0xA4, 82, 22, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF],
            iv: [0x96, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        };
        let text = s.to_mpush_string();
        assert!(text.starts_with("android,6.0,2.0,device-A,-92|82|22|"));
        assert_eq!(CachedSession::from_mpush_string(&text), Some(s));
        assert_eq!(CachedSession::from_mpush_string("a,b,c,d,1|2,3"), None);
        assert_eq!(CachedSession::from_mpush_string("a,b"), None);
    }
}
