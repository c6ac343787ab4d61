//! Route-store back ends. The core hands out [`StoreOp`]s; a back end performs them.
//!
//! [`MemoryStore`] is the embedded default for a single node: routes, reusable sessions with
//! their TTL, broadcast task records, all in this process. It answers synchronously, so the
//! driver feeds its answer straight back to the core. Kick notices addressed to this node are
//! handed back to the caller to deliver locally. Back ends shared between nodes (a store node,
//! Redis) implement the same operations.
use pushgate_core::route::ClientType;
use pushgate_core::store::{
    CachedSession, KickNotice, RouteRecord, StoreError, StoreOp, StoreReply, TaskControl,
};
use pushgate_core::Millis;
use std::collections::{BTreeMap, HashMap};

/// Most reusable sessions kept; the oldest-expiring are dropped first beyond it.
pub const MAX_SESSIONS: usize = 1 << 20;

/// The embedded single-node store. `Clone` takes a snapshot (the simulator's store model
/// restores one to play a failover that lost the last writes).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    routes: BTreeMap<(String, ClientType), RouteRecord>,
    sessions: HashMap<String, (CachedSession, Millis)>,
    tasks: HashMap<String, TaskControl>,
    progress: HashMap<String, u64>,
    /// Kick notices published; the driver drains them.
    kicks: Vec<KickNotice>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Performs `op` at `now_ms`.
    pub fn apply(&mut self, now_ms: Millis, op: StoreOp) -> Result<StoreReply, StoreError> {
        tracing::trace!(?op, "store op");
        Ok(match op {
            StoreOp::PutRoute {
                user_id,
                client_type,
                route,
            } => match self.routes.get(&(user_id.clone(), client_type)) {
                // A late write of an older bind: keep the newer one.
                Some(current) if !route.supersedes(current) => StoreReply::Stale {
                    current: current.clone(),
                },
                _ => StoreReply::Previous(self.routes.insert((user_id, client_type), route)),
            },
            StoreOp::SetRouteOffline {
                user_id,
                client_type,
                node,
                conn_id,
                version,
            } => {
                if let Some(route) = self.routes.get_mut(&(user_id, client_type)) {
                    route.take_offline(&node, &conn_id, version);
                }
                StoreReply::Done
            }
            StoreOp::GetRoute {
                user_id,
                client_type,
            } => StoreReply::Route(self.route(&user_id, client_type)),
            StoreOp::PutSession {
                session_id,
                session,
                ttl_ms,
            } => {
                if self.sessions.len() >= MAX_SESSIONS {
                    self.sessions.retain(|_, (_, expires)| *expires > now_ms);
                }
                if self.sessions.len() < MAX_SESSIONS {
                    self.sessions
                        .insert(session_id, (session, now_ms.saturating_add(ttl_ms)));
                }
                StoreReply::Done
            }
            StoreOp::GetSession { session_id } => {
                let live = self
                    .sessions
                    .get(&session_id)
                    .filter(|(_, expires)| *expires > now_ms)
                    .map(|(s, _)| s.clone());
                if live.is_none() {
                    self.sessions.remove(&session_id);
                }
                StoreReply::Session(live)
            }
            StoreOp::PublishKick { notice } => {
                self.kicks.push(notice);
                StoreReply::Done
            }
            StoreOp::GetTaskControl { task_id } => {
                StoreReply::TaskControl(self.tasks.get(&task_id).copied().unwrap_or_default())
            }
            StoreOp::AddTaskProgress { task_id, sent, .. } => {
                *self.progress.entry(task_id).or_default() += sent;
                StoreReply::Done
            }
        })
    }

    /// The route of (user, type), or with no type the user's best route (online first).
    pub fn route(
        &self,
        user_id: &str,
        client_type: Option<ClientType>,
    ) -> Option<(ClientType, RouteRecord)> {
        match client_type {
            Some(ct) => self
                .routes
                .get(&(user_id.to_owned(), ct))
                .map(|r| (ct, r.clone())),
            None => {
                let mut best = None;
                for ct in ClientType::ALL {
                    if let Some(route) = self.routes.get(&(user_id.to_owned(), ct)) {
                        if route.is_online() {
                            return Some((ct, route.clone()));
                        }
                        best.get_or_insert((ct, route.clone()));
                    }
                }
                best
            }
        }
    }

    /// Every route of a user (for the admin API).
    pub fn routes_of(&self, user_id: &str) -> Vec<(ClientType, RouteRecord)> {
        ClientType::ALL
            .into_iter()
            .filter_map(|ct| {
                self.routes
                    .get(&(user_id.to_owned(), ct))
                    .map(|r| (ct, r.clone()))
            })
            .collect()
    }

    /// Sets a broadcast task's control record (qps, cancel flag).
    pub fn set_task_control(&mut self, task_id: &str, control: TaskControl) {
        self.tasks.insert(task_id.to_owned(), control);
    }

    /// Sends counted for a broadcast task.
    pub fn task_progress(&self, task_id: &str) -> u64 {
        self.progress.get(task_id).copied().unwrap_or(0)
    }

    /// Takes the kick notices published since the last call.
    pub fn take_kicks(&mut self) -> Vec<KickNotice> {
        std::mem::take(&mut self.kicks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushgate_core::NodeAddr;

    fn route(conn: Option<&str>, version: u64) -> RouteRecord {
        RouteRecord {
            host: "127.0.0.1".into(),
            port: 3001,
            device_id: "d".into(),
            os_name: "android".into(),
            client_version: "1".into(),
            conn_id: conn.map(str::to_owned),
            version,
            conn_version: 0,
        }
    }

    #[test]
    fn routes_follow_the_newest_bind_and_are_cleared_only_by_it() {
        let mut s = MemoryStore::new();
        let put = |conn, version| StoreOp::PutRoute {
            user_id: "u".into(),
            client_type: ClientType::Mobile,
            route: route(Some(conn), version),
        };
        assert_eq!(
            s.apply(0, put("a", 10)).unwrap(),
            StoreReply::Previous(None)
        );
        assert_eq!(
            s.apply(0, put("b", 20)).unwrap(),
            StoreReply::Previous(Some(route(Some("a"), 10)))
        );
        // A late write of the older bind does not undo the newer one.
        assert_eq!(
            s.apply(0, put("a", 10)).unwrap(),
            StoreReply::Stale {
                current: route(Some("b"), 20)
            }
        );
        let offline = |conn: &str, version| StoreOp::SetRouteOffline {
            user_id: "u".into(),
            client_type: ClientType::Mobile,
            node: NodeAddr::new("127.0.0.1", 3001),
            conn_id: conn.into(),
            version,
        };
        s.apply(0, offline("a", 10)).unwrap();
        assert!(
            s.route("u", None).unwrap().1.is_online(),
            "a stale owner cannot clear it"
        );
        s.apply(0, offline("b", 19)).unwrap();
        assert!(
            s.route("u", None).unwrap().1.is_online(),
            "nor an older bind of the same connection"
        );
        s.apply(0, offline("b", 20)).unwrap();
        assert!(!s
            .route("u", Some(ClientType::Mobile))
            .unwrap()
            .1
            .is_online());
    }

    #[test]
    fn sessions_expire() {
        let mut s = MemoryStore::new();
        let session = CachedSession {
            os_name: "android".into(),
            os_version: "6".into(),
            client_version: "1".into(),
            device_id: "d".into(),
            session_key: [1; 16],
            iv: [2; 16],
        };
        s.apply(
            0,
            StoreOp::PutSession {
                session_id: "x".into(),
                session: session.clone(),
                ttl_ms: 1000,
            },
        )
        .unwrap();
        assert_eq!(
            s.apply(
                999,
                StoreOp::GetSession {
                    session_id: "x".into()
                }
            )
            .unwrap(),
            StoreReply::Session(Some(session))
        );
        assert_eq!(
            s.apply(
                1000,
                StoreOp::GetSession {
                    session_id: "x".into()
                }
            )
            .unwrap(),
            StoreReply::Session(None)
        );
    }
}
