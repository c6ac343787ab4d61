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

/// How far apart two nodes' clocks may read, in µs (nodes re-read the wall clock every
/// second; NTP keeps them within milliseconds to a few hundred): between two connections of
/// one device stamped closer than this, connection ages do not order them
/// ([`RouteRecord::supersedes`]).
pub const MAX_CLOCK_DISAGREEMENT_US: u64 = 2_000_000;

/// Most ended binds a route remembers ([`RouteRecord::ended`]), of all nodes together.
pub const MAX_ENDED_BINDS: usize = 32;

/// Most ended binds of one node a route remembers: a node's own later marks evict its older
/// marks first, so a burst of binds on one node cannot flush another node's mark (a late write
/// of that node's bind would then land online). Past [`MAX_ENDED_BINDS`] the oldest mark of
/// any node goes. A node's evicted mark cannot let its bind back in: the bind's write went out
/// before the later marks, on the same store link (and landed first) or on a link the node has
/// replaced since (and is refused, [`RouteRecord::is_fenced`]).
pub const MAX_ENDED_BINDS_PER_NODE: usize = 4;

/// Most nodes whose newest store link a route remembers ([`RouteRecord::links`]); past it the
/// node whose link reached the route longest ago is forgotten.
pub const MAX_LINKS: usize = 32;

/// Largest link epoch a store takes in: 2^53 µs since the Unix epoch is the year 2255, and
/// Redis's Lua compares numbers exactly up to it. A larger one in a stored route (corrupt, or
/// written by hand) neither fences nor is kept; an op naming one names no link.
pub const MAX_LINK_EPOCH: u64 = 1 << 53;

/// The newest store link of one node that an op reached a route on: the link's epoch, the
/// node's clock in µs when it opened that link (strictly increasing per node, also across
/// restarts). Ops a node sent on an older link are not applied after it
/// ([`RouteRecord::is_fenced`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLink {
    pub host: String,
    pub port: u16,
    pub epoch: u64,
}

impl NodeLink {
    /// True when this is a link of `node`.
    pub fn is_of(&self, node: &NodeAddr) -> bool {
        self.host == node.host && self.port == node.port
    }
}

/// A bind known to have ended, named by its node and bind version (a node's versions are
/// strictly increasing, so the pair names one bind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedBind {
    pub host: String,
    pub port: u16,
    pub version: u64,
}

impl EndedBind {
    /// True when this ended bind was made on `node`.
    pub fn is_on(&self, node: &NodeAddr) -> bool {
        self.host == node.host && self.port == node.port
    }
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
    /// come back online. Kept by the store, newest last, at most
    /// [`MAX_ENDED_BINDS_PER_NODE`] of one node and [`MAX_ENDED_BINDS`] in all
    /// ([`RouteRecord::remember_ended`]).
    #[serde(default, rename = "endedBinds", skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<EndedBind>,
    /// For each node whose route ops reached this route over a store link, the newest such
    /// link ([`RouteRecord::note_link`]): an op that node sent on an older link arriving now
    /// is not applied ([`RouteRecord::is_fenced`]). A node replaces a link that stopped
    /// answering, and what it sent on the old one may still arrive (bytes held in the network
    /// reach the store after the node's later ops on the new link): a bind's write landing
    /// after its own offline mark would bring a closed connection back online once the mark
    /// is gone from [`RouteRecord::ended`], which is bounded (seeds 66002216, 69000987). Kept
    /// by the store, at most [`MAX_LINKS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<NodeLink>,
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
    /// A route of the same device that is offline keeps a bind out only when both the bind's
    /// connection and the bind itself are older than the stored ones by more than the nodes'
    /// clocks can disagree ([`MAX_CLOCK_DISAGREEMENT_US`], [`RouteRecord::is_replaced_by`]):
    /// such a bind is a late write of a connection the device gave up before it connected
    /// again (its offline mark may be gone from `ended`, which is bounded). Otherwise it
    /// displaces nobody: the device moving between nodes whose clocks disagree, or binding now.
    ///
    /// Connection ages stamped by two nodes come from two clocks, which disagree by up to
    /// twice NTP's error (nodes re-read the wall clock every second,
    /// `Node::follow_wall_clock`). Between two connections of one device closer than that, the
    /// ages may order them wrongly either way, and the stored, online route is kept: a late
    /// write of a connection the device gave up must never take the user from its live
    /// connection (nothing would give it back, seed 62001643), while a live connection refused
    /// as late is kicked, and the device's connection made more than that margin after the
    /// stored one is the newer one ([`RouteRecord::is_late_against`]).
    /// Otherwise (other devices, the same connection, or unknown ages) the newer bind wins.
    pub fn supersedes(&self, stored: &RouteRecord) -> bool {
        if self.compares_by_connection_age(stored) {
            if stored.is_online() {
                !self.is_late_against(stored)
            } else {
                !self.is_replaced_by(stored)
            }
        } else {
            self.version >= stored.version
        }
    }

    /// True when `stored` is online for a connection of this route's device that this one is
    /// not known to be newer than: a bind on this route's connection came too late
    /// ([`RouteRecord::supersedes`]). On one node one clock stamped both ages, and the newer
    /// connection (or the same age) wins; across nodes this connection must be newer by more
    /// than the clocks can disagree ([`MAX_CLOCK_DISAGREEMENT_US`]).
    pub fn is_late_against(&self, stored: &RouteRecord) -> bool {
        self.compares_by_connection_age(stored)
            && stored.is_online()
            && self.conn_version
                < stored
                    .conn_version
                    .saturating_add(self.age_margin_us(stored))
    }

    /// How much newer than `other`'s this route's connection age must read to count as the
    /// newer connection: nothing on the same node (one clock), [`MAX_CLOCK_DISAGREEMENT_US`]
    /// across nodes.
    fn age_margin_us(&self, other: &RouteRecord) -> u64 {
        if self.host == other.host && self.port == other.port {
            0
        } else {
            MAX_CLOCK_DISAGREEMENT_US
        }
    }

    /// True when `stored` is the route of a newer connection of this route's device whose
    /// bind also came after this one, both by more than the clocks can disagree: this is a
    /// late write of a connection the device replaced ([`RouteRecord::supersedes`]). A bind
    /// made now on an older connection still open is not (its version is new).
    pub fn is_replaced_by(&self, stored: &RouteRecord) -> bool {
        self.compares_by_connection_age(stored)
            && self.conn_version.saturating_add(MAX_CLOCK_DISAGREEMENT_US) < stored.conn_version
            && self.version.saturating_add(MAX_CLOCK_DISAGREEMENT_US) < stored.version
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
    /// it is this route, taken offline, or one of the binds it remembers as ended.
    pub fn knows_ended(&self, node: &NodeAddr, version: u64) -> bool {
        (self.is_bind(node, version) && !self.is_online())
            || self
                .ended
                .iter()
                .any(|e| e.is_on(node) && e.version == version)
    }

    /// Remembers that the bind `version` of `node` ended. The memory is bounded: past
    /// [`MAX_ENDED_BINDS_PER_NODE`] marks of `node` its oldest goes, else past
    /// [`MAX_ENDED_BINDS`] the oldest of all. (What a node sent before its later marks cannot
    /// land after them, [`MAX_ENDED_BINDS_PER_NODE`]; another node's marks say nothing of this
    /// node's writes, so they must not push this node's marks out.)
    pub fn remember_ended(&mut self, node: &NodeAddr, version: u64) {
        if self.knows_ended(node, version) {
            return;
        }
        let of_node = self.ended.iter().filter(|e| e.is_on(node)).count();
        if of_node >= MAX_ENDED_BINDS_PER_NODE {
            if let Some(oldest) = self.ended.iter().position(|e| e.is_on(node)) {
                self.ended.remove(oldest);
            }
        } else if self.ended.len() >= MAX_ENDED_BINDS {
            self.ended.remove(0);
        }
        self.ended.push(EndedBind {
            host: node.host.clone(),
            port: node.port,
            version,
        });
    }

    /// True when an op of `node` sent on its store link `epoch` comes too late: an op that
    /// node sent on a newer link has reached this route already. Epoch 0 (an op not sent over
    /// a link: the embedded store) is never fenced.
    pub fn is_fenced(&self, node: &NodeAddr, epoch: u64) -> bool {
        self.fence_of(node, epoch).is_some()
    }

    /// The epoch of `node`'s newer link that fences an op it sent on its link `epoch`
    /// ([`RouteRecord::is_fenced`]), if any.
    pub fn fence_of(&self, node: &NodeAddr, epoch: u64) -> Option<u64> {
        self.links
            .iter()
            .find(|link| {
                epoch != 0 && link.is_of(node) && link.epoch > epoch && link.epoch <= MAX_LINK_EPOCH
            })
            .map(|link| link.epoch)
    }

    /// Remembers that an op of `node` sent on its link `epoch` reached this route; true when
    /// that link is newer than the node's link remembered so far. Bounded: past [`MAX_LINKS`]
    /// nodes, the one whose link was noted longest ago goes.
    pub fn note_link(&mut self, node: &NodeAddr, epoch: u64) -> bool {
        if epoch == 0 || epoch > MAX_LINK_EPOCH {
            return false;
        }
        if let Some(at) = self.links.iter().position(|link| link.is_of(node)) {
            let kept = self.links[at].epoch;
            if kept >= epoch && kept <= MAX_LINK_EPOCH {
                return false;
            }
            self.links.remove(at);
        } else if self.links.len() >= MAX_LINKS {
            self.links.remove(0);
        }
        self.links.push(NodeLink {
            host: node.host.clone(),
            port: node.port,
            epoch,
        });
        true
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
    /// The op came on a store link its node has replaced since, and an op the node sent on the
    /// newer link (of epoch `newest_epoch`) reached the route first: not applied
    /// ([`RouteRecord::is_fenced`]). Send it again if it still matters. The link it came on
    /// takes its epochs above `newest_epoch` from then on: when it is the node's current link,
    /// the node's clock stepped back since an earlier run of it stamped the newer epoch.
    #[error("route store op sent on a link this node has replaced (its link {newest_epoch} reached the route)")]
    Fenced { newest_epoch: u64 },
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
            links: Vec::new(),
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
        // Before that mark lands, the stored route is online and the two clocks decide.
        assert!(moved.is_late_against(&left));
    }

    #[test]
    fn a_late_write_of_a_given_up_connection_never_displaces_the_device_live_one() {
        // Found by the simulation (seed 28000133): the device bound on c1 (node A), gave it up
        // 13 ms later and connected to c2 on node B 476 ms after c1; c1's route write, held up
        // on A's store link, landed after c2's. However close the two ages, the stored live
        // route stays.
        let live = RouteRecord {
            host: "10.0.0.2".into(),
            ..bind("device-A", "c2", 1_000_476_000, 1_000_486_000)
        };
        let late = bind("device-A", "c1", 1_000_000_000, 1_000_011_000);
        assert!(!late.supersedes(&live));
        assert!(late.is_late_against(&live));
    }

    #[test]
    fn a_late_write_stamped_by_a_clock_ahead_never_displaces_the_device_live_one() {
        // Found by the simulation (seed 62001643): the device bound on c1 on node A, whose
        // clock read 234 ms ahead of node B's, and gave c1 up 14 ms later; 148 ms after c1 it
        // connected to c2 on node B and bound. c1's route write, held up on A's store link,
        // landed 5 s later with a connection age 84 ms *above* c2's, displaced the live route,
        // and c1's offline mark then left the user offline while c2 was connected. Across
        // nodes, ages closer than the clocks can disagree do not order two connections: the
        // stored live route stays.
        let live = RouteRecord {
            host: "10.0.0.3".into(),
            ..bind("device-A", "c2", 1_703_721_000, 1_703_726_000)
        };
        let late = bind("device-A", "c1", 1_703_805_000, 1_703_817_000);
        assert!(!late.supersedes(&live));
        assert!(late.is_late_against(&live));
        // A connection of that node newer by more than the clocks can disagree is the newer
        // one, and on one node (one clock) any newer age is.
        let much_later = bind(
            "device-A",
            "c3",
            1_703_721_000 + MAX_CLOCK_DISAGREEMENT_US,
            1,
        );
        assert!(much_later.supersedes(&live));
        assert!(!much_later.is_late_against(&live));
        let same_node_later = RouteRecord {
            host: "10.0.0.3".into(),
            ..bind("device-A", "c4", 1_703_721_001, 1)
        };
        assert!(same_node_later.supersedes(&live));
        assert!(!same_node_later.is_late_against(&live));
    }

    #[test]
    fn a_late_write_of_a_connection_the_device_replaced_stays_out_of_its_offline_route() {
        // Found by the simulation (seed 1791379): a device bound on c1 during a store outage
        // and gave c1 up; its offline mark landed, but four later ended binds pushed it out
        // of the route's bounded `ended` list. The device connected again 15 s later (c2),
        // bound and left: an offline route of c2. Then c1's write, held up on a store link its
        // node had given up, landed and put the user online on a dead connection.
        let c2_ended = RouteRecord {
            conn_id: None,
            ..bind("device-A", "c2", 1_015_500_000, 1_017_000_000)
        };
        let late = bind("device-A", "c1", 1_000_000_000, 1_005_000_000);
        assert!(!late.supersedes(&c2_ended));
        assert!(late.is_replaced_by(&c2_ended));
        // A connection about as new as the offline one (clocks disagreeing) still gets in,
        let c3_version = 1_015_500_000 - MAX_CLOCK_DISAGREEMENT_US;
        let moved = bind("device-A", "c3", c3_version, c3_version + 1);
        assert!(moved.supersedes(&c2_ended));
        assert!(!moved.is_replaced_by(&c2_ended));
        // and so does a bind made now on an older connection still open.
        let now_on_c1 = bind("device-A", "c1", 1_000_000_000, 1_018_000_000);
        assert!(now_on_c1.supersedes(&c2_ended));
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
