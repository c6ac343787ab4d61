//! The oracle's view of what each node decided, from the nodes' own core events (see
//! [`crate::capture`]), and the invariants judged from them as they happen:
//!
//! - `6-router-change-only-when-elsewhere`: a node answers router-change only after the store
//!   answered it, during that push, with an online route of the user naming another node.
//! - `6-not-writable-only-when-full`: a push fails "connection not writable" only while a
//!   connection of its user on that node was reported over its high-water mark.
//! - `7-no-send-to-full-queue`: no PUSH (single or broadcast) is handed to a connection while
//!   it is reported over its high-water mark.
//! - `7-no-send-after-deadline`: no single push is sent at or after its deadline.
//! - `7-flow-window`: at most the limit of sends per flow window (single pushes per node,
//!   each broadcast on its own), windows as MPush's fixed-window flow control counts them.
//! - `8-kick-names-connection`: a kick notice kicks only the connection (and binding) it names.
use crate::oracle::Oracle;
use pushgate_core::route::ClientType;
use pushgate_core::status::Reason;
use pushgate_core::store::RouteRecord;
use pushgate_core::{Event, Millis, PushStatus};
use std::collections::{HashMap, HashSet};

/// A push a node accepted.
#[derive(Debug, Clone)]
struct Accepted {
    node_ms: Millis,
    timeout_ms: Millis,
    /// Oracle time it was accepted.
    at: u64,
}

/// A fixed flow-control window being counted.
#[derive(Debug, Clone, Default)]
struct Window {
    start: Millis,
    count: u64,
}

impl Window {
    /// Counts a send at `now`; false when it is over `limit` in its window.
    fn send(&mut self, now: Millis, window_ms: Millis, limit: u64) -> bool {
        if self.count == 0 || now >= self.start + window_ms {
            self.start = now;
            self.count = 0;
        }
        self.count += 1;
        limit == 0 || self.count <= limit
    }
}

/// A route the store gave a node (GetRoute), as the store model saw it.
#[derive(Debug, Clone)]
pub struct RouteRead {
    pub at: u64,
    pub node: usize,
    pub user: String,
    pub route: Option<(ClientType, RouteRecord)>,
}

/// Key of something inside one node incarnation.
type Key = (usize, u32, u64);

/// What the nodes reported, per node incarnation.
#[derive(Default)]
pub struct NodeSide {
    accepted: HashMap<Key, Accepted>,
    bound: HashMap<Key, (String, ClientType)>,
    unwritable: HashSet<Key>,
    single_flow: HashMap<(usize, u32), Window>,
    broadcast_flow: HashMap<Key, Window>,
    /// Every GetRoute answer the store gave a node.
    pub route_reads: Vec<RouteRead>,
    /// When the store lost data (crash, failover).
    pub store_losses: Vec<u64>,
    /// Routes a failover brought back online after the store had replaced them or marked
    /// them offline: (user, client type code, connection id, version).
    pub resurrected: Vec<crate::store_node::RouteKey>,
    /// When the store last accepted each route write (`PutRoute` answered `Previous`).
    pub routes_written: HashMap<crate::store_node::RouteKey, u64>,
    /// Offline answers of the nodes: (oracle ms, node, user).
    pub offline_answers: Vec<(u64, usize, String)>,
}

/// The flow window of the simulated nodes (`flow.*_limit_per_second`).
const FLOW_WINDOW_MS: Millis = 1_000;

impl Oracle {
    /// One core event of `node`, at the node's time `node_ms`.
    pub fn node_event(&mut self, node: usize, node_ms: Millis, event: &Event) {
        let inc = self.node_incarnation[node];
        match event {
            Event::PushFinished {
                id,
                user_id,
                client_type,
                status,
                reason,
                ..
            } => {
                self.node_finished(node, id.0, false, status.name(), user_id);
                self.judge_status(node, inc, id.0, user_id, *client_type, *status, reason);
                self.side.accepted.remove(&(node, inc, id.0));
            }
            Event::BroadcastFinished { id, status, .. } => {
                self.node_finished(node, id.0, true, status.name(), "");
                self.side.accepted.remove(&(node, inc, id.0));
                self.side.broadcast_flow.remove(&(node, inc, id.0));
            }
            Event::PushAccepted { id, timeout_ms, .. } => {
                let at = self.now();
                self.side.accepted.insert(
                    (node, inc, id.0),
                    Accepted {
                        node_ms,
                        timeout_ms: *timeout_ms,
                        at,
                    },
                );
            }
            Event::PushSent {
                id,
                conn,
                broadcast,
                ..
            } => self.judge_send(node, inc, node_ms, id.0, conn.0, *broadcast),
            Event::WritableChanged { conn, writable } => {
                let key = (node, inc, conn.0);
                if *writable {
                    self.side.unwritable.remove(&key);
                } else {
                    self.side.unwritable.insert(key);
                }
                self.trace(format!("node{node} {conn} writable={writable}"));
            }
            Event::Bound {
                conn,
                user_id,
                client_type,
            } => {
                self.side
                    .bound
                    .insert((node, inc, conn.0), (user_id.clone(), *client_type));
            }
            Event::Unbound { conn, .. } | Event::Kicked { conn, .. } => {
                self.side.bound.remove(&(node, inc, conn.0));
            }
            Event::Closed { conn, .. } => {
                self.side.bound.remove(&(node, inc, conn.0));
                self.side.unwritable.remove(&(node, inc, conn.0));
            }
            Event::KickNoticeHandled { notice, kicked } => {
                self.checked("8-kick-names-connection");
                if let Some((conn, token, version)) = kicked {
                    let holder = self.side.bound.get(&(node, inc, conn.0)).cloned();
                    let right_binding = holder.as_ref().is_some_and(|(user, ct)| {
                        *user == notice.user_id && ct.code() == notice.client_type
                    });
                    if *token != notice.conn_id
                        || (notice.version != 0 && *version != notice.version)
                        || !right_binding
                    {
                        self.violate(
                            "8-kick-names-connection",
                            format!("node{node} applied a kick notice for {:?} (type {}) naming connection {} version {} to {conn} (token {token}, version {version}, bound as {holder:?})", notice.user_id, notice.client_type, notice.conn_id, notice.version),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn judge_status(
        &mut self,
        node: usize,
        inc: u32,
        push: u64,
        user: &str,
        client_type: Option<ClientType>,
        status: PushStatus,
        reason: &Option<Reason>,
    ) {
        let Some(accepted) = self.side.accepted.get(&(node, inc, push)).cloned() else {
            return; // refused before it became a task
        };
        let now = self.now();
        match status {
            PushStatus::Offline => {
                self.side.offline_answers.push((now, node, user.to_owned()));
            }
            PushStatus::RouterChange => {
                self.checked("6-router-change-only-when-elsewhere");
                let host = self.params.node_ip(node);
                let named_elsewhere = self.side.route_reads.iter().rev().any(|r| {
                    r.node == node
                        && r.user == user
                        && r.at >= accepted.at
                        && r.at <= now
                        && r.route.as_ref().is_some_and(|(ct, route)| {
                            route.is_online()
                                && route.host != host
                                && client_type.is_none_or(|want| want == *ct)
                        })
                });
                if !named_elsewhere {
                    self.violate(
                        "6-router-change-only-when-elsewhere",
                        format!("node{node} answered router-change for its push #{push} to {user:?} (type {client_type:?}) although the store named no online route of that user on another node to it during the push"),
                    );
                }
            }
            PushStatus::Failure if *reason == Some(Reason::NotWritable) => {
                self.checked("6-not-writable-only-when-full");
                let full = self.side.bound.iter().any(|((n, i, conn), (u, _))| {
                    *n == node
                        && *i == inc
                        && u == user
                        && self.side.unwritable.contains(&(node, inc, *conn))
                });
                if !full {
                    self.violate(
                        "6-not-writable-only-when-full",
                        format!("node{node} failed its push #{push} to {user:?} as not writable, but no connection of that user there was over its high-water mark"),
                    );
                }
            }
            _ => {}
        }
    }

    fn judge_send(
        &mut self,
        node: usize,
        inc: u32,
        node_ms: Millis,
        push: u64,
        conn: u64,
        broadcast: bool,
    ) {
        self.checked("7-no-send-to-full-queue");
        if self.side.unwritable.contains(&(node, inc, conn)) {
            let what = if broadcast { "broadcast" } else { "push" };
            self.violate(
                "7-no-send-to-full-queue",
                format!("node{node} sent its {what} #{push} to c#{conn}, whose queue is over its high-water mark"),
            );
        }
        if broadcast {
            self.checked("7-flow-window");
            let limit = self.params.broadcast_flow_limit;
            let ok = self
                .side
                .broadcast_flow
                .entry((node, inc, push))
                .or_default()
                .send(node_ms, FLOW_WINDOW_MS, limit);
            if !ok {
                self.violate(
                    "7-flow-window",
                    format!("node{node} broadcast #{push} sent more than {limit} PUSHes in one flow window"),
                );
            }
            return;
        }
        if let Some(accepted) = self.side.accepted.get(&(node, inc, push)).cloned() {
            self.checked("7-no-send-after-deadline");
            let deadline = accepted.node_ms + accepted.timeout_ms;
            if node_ms >= deadline {
                self.violate(
                    "7-no-send-after-deadline",
                    format!("node{node} sent its push #{push} at {node_ms} ms, its deadline was {deadline} ms (accepted at {} ms, timeout {} ms)", accepted.node_ms, accepted.timeout_ms),
                );
            }
        }
        self.checked("7-flow-window");
        let limit = self.params.global_flow_limit;
        let ok = self.side.single_flow.entry((node, inc)).or_default().send(
            node_ms,
            FLOW_WINDOW_MS,
            limit,
        );
        if !ok {
            self.violate(
                "7-flow-window",
                format!("node{node} sent more than {limit} single pushes in one flow window (push #{push})"),
            );
        }
    }

    /// The store answered a node's GetRoute (from the store model).
    pub fn store_route_read(
        &mut self,
        node: usize,
        user: &str,
        route: Option<(ClientType, RouteRecord)>,
    ) {
        let at = self.now();
        self.side.route_reads.push(RouteRead {
            at,
            node,
            user: user.to_owned(),
            route,
        });
    }
}
