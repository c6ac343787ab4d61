//! The route store's semantics, written once: what every [`StoreOp`] does to a store's data and
//! what it answers.
//!
//! Every store pushgate runs or models applies ops through [`StoreState::apply`]: the embedded
//! single-node store, the simulator's store node and the core's test harness. The Redis back
//! end implements the same contract in Lua scripts and is held to it by the contract tests
//! (the same op sequences, the same replies). The rules:
//!
//! - **Routes** (`mp:ur:{user}` by client type): a `PutRoute` replaces the stored route only
//!   when it is the newer bind ([`RouteRecord::supersedes`]); it answers the route it replaced,
//!   or `Stale` with the newer route it left alone. Routes are never deleted, only taken
//!   offline, and an offline mark applies only to the binding it names
//!   ([`RouteRecord::take_offline`]), so a late mark never touches a newer bind. A bind whose
//!   connection closed before it took effect is undone the same way: `RestoreRoute` puts the
//!   route it replaced back only while the store still holds that bind.
//! - **Links** ([`StoreState::apply_on_link`]): a route op sent over a store link names the
//!   link's epoch; the route remembers each node's newest link, and an op a node sent on an
//!   older link arriving after it is not applied ([`StoreError::Fenced`]). So whatever a node
//!   sent on a link it has replaced never lands after what it sent since (a bind's write held
//!   in the network would otherwise land after the bind's own offline mark).
//! - **Sessions** (`mp:rs:{id}`): kept for their TTL; a read after it finds nothing. At most
//!   [`MAX_SESSIONS`] are kept (expired ones are dropped first, then new ones are refused).
//! - **Kick notices** are published: the caller takes them with [`StoreState::poll_kick`] and
//!   delivers each to the node it names (pub/sub: at most once).
//! - **Broadcast task control** (`mp:pt{task}`): qps and the cancel flag, read by the node; set
//!   by the business side ([`StoreState::set_task_control`]). Progress (`sc`, `{task}:sui`) adds
//!   up the sends and keeps the users reached, at most [`MAX_TASK_USERS`] per task.
//!
//! Pure data and no clock: time comes in as `now_ms`.
use crate::config::NodeAddr;
use crate::ids::Millis;
use crate::route::ClientType;
use crate::store::{
    best_route, CachedSession, KickNotice, RouteRecord, StoreError, StoreOp, StoreReply,
    TaskControl,
};
use crate::store_packed::{PackedSession, RouteMap, SessionKey};
use std::collections::{HashMap, VecDeque};

/// Most reusable sessions kept.
pub const MAX_SESSIONS: usize = 1 << 20;
/// Most user ids kept per broadcast task's progress list (the newest win).
pub const MAX_TASK_USERS: usize = 100_000;
/// Most kick notices waiting for [`StoreState::poll_kick`]; older ones are dropped (pub/sub
/// is at most once).
pub const MAX_PENDING_KICKS: usize = 65_536;

/// A broadcast task's progress: sends counted (`sc`) and the users reached (`{task}:sui`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskProgress {
    pub sent: u64,
    /// Newest last; at most [`MAX_TASK_USERS`].
    pub user_ids: VecDeque<String>,
}

/// What a store holds, for its gauges (`pushgate_store_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFootprint {
    pub sessions: usize,
    pub routes: usize,
    /// Approximately: packed records, keys and table slots (not the allocator's rounding).
    pub approx_bytes: usize,
}

/// A store's data and the rules of every op.
#[derive(Debug, Clone, Default)]
pub struct StoreState {
    /// Routes by (user, client type). Writing here directly skips the version rules: that is
    /// for seeding a store as a Java node or an operator would, never for a node's writes.
    /// Kept packed ([`crate::store_packed`]): one allocation per route.
    pub routes: RouteMap,
    /// Sessions and the time each expires, packed: one allocation per session.
    sessions: HashMap<SessionKey, PackedSession>,
    /// The heap bytes of every session's key and packed record (kept as they change).
    session_payload_bytes: usize,
    /// Broadcast task control records, as the business side sets them.
    pub tasks: HashMap<String, TaskControl>,
    progress: HashMap<String, TaskProgress>,
    kicks: VecDeque<KickNotice>,
}

/// The route a route op of a versioned bind changes and the node that sent it (the node its
/// route or mark names). Ops of unversioned binds (version 0, MPush's format) name no link:
/// what they write stays MPush's bytes.
fn route_sender(op: &StoreOp) -> Option<((String, ClientType), NodeAddr)> {
    let (user_id, client_type, node, version) = match op {
        StoreOp::PutRoute {
            user_id,
            client_type,
            route,
        } => (user_id, client_type, route.node(), route.version),
        StoreOp::SetRouteOffline {
            user_id,
            client_type,
            node,
            version,
            ..
        }
        | StoreOp::RestoreRoute {
            user_id,
            client_type,
            node,
            version,
            ..
        } => (user_id, client_type, node.clone(), *version),
        _ => return None,
    };
    (version != 0).then(|| ((user_id.clone(), *client_type), node))
}

impl StoreState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Performs `op`, sent on a store link of epoch `link_epoch` (0: not over a link), at
    /// `now_ms` and answers it. A route op of a node that sent an op on a newer link to the
    /// same route before is not applied ([`RouteRecord::is_fenced`]); otherwise the route, if
    /// one is stored after the op, remembers the link ([`RouteRecord::note_link`]). (Ops of
    /// unversioned binds, MPush's format, name no link.)
    pub fn apply_on_link(
        &mut self,
        now_ms: Millis,
        op: StoreOp,
        link_epoch: u64,
    ) -> Result<StoreReply, StoreError> {
        let sent_by = route_sender(&op).filter(|_| link_epoch != 0);
        if let Some((key, node)) = &sent_by {
            let fence = self
                .routes
                .get(key)
                .and_then(|route| route.fence_of(node, link_epoch));
            if let Some(newest_epoch) = fence {
                return Err(StoreError::Fenced { newest_epoch });
            }
        }
        let reply = self.apply(now_ms, op);
        if let Some((key, node)) = sent_by {
            if let Some(mut route) = self.routes.get(&key) {
                if route.note_link(&node, link_epoch) {
                    self.routes.insert(key, route);
                }
            }
        }
        Ok(reply)
    }

    /// Performs `op` at `now_ms` and answers it.
    pub fn apply(&mut self, now_ms: Millis, op: StoreOp) -> StoreReply {
        match op {
            StoreOp::PutRoute {
                user_id,
                client_type,
                route,
            } => self.put_route(user_id, client_type, route),
            StoreOp::SetRouteOffline {
                user_id,
                client_type,
                node,
                conn_id,
                version,
            } => {
                let key = (user_id, client_type);
                let found = self.routes.update(&key, |route| {
                    let took = route.take_offline(&node, &conn_id, version);
                    if !(took && route.version == version) {
                        route.remember_ended(&node, version);
                    }
                });
                if !found {
                    // The mark overtook its bind's write: keep an empty, offline route that
                    // only remembers the ended bind (any other bind supersedes it).
                    let mut ended = RouteRecord::default();
                    ended.remember_ended(&node, version);
                    self.routes.insert(key, ended);
                }
                StoreReply::Done
            }
            StoreOp::RestoreRoute {
                user_id,
                client_type,
                node,
                version,
                previous,
            } => {
                self.routes.update(&(user_id, client_type), |route| {
                    if route.is_bind(&node, version) {
                        let mut restored = *previous;
                        // The displaced connection may have ended meanwhile.
                        if route.knows_ended(&restored.node(), restored.version) {
                            restored.conn_id = None;
                        }
                        restored.ended = std::mem::take(&mut route.ended);
                        restored.links = std::mem::take(&mut route.links);
                        // The undone bind has ended: a write of it still on its way (a retry
                        // held up on a link its node gave up) must not land after the restore
                        // replaced the one record that knew it.
                        restored.remember_ended(&node, version);
                        *route = restored;
                    }
                });
                StoreReply::Done
            }
            StoreOp::GetRoute {
                user_id,
                client_type,
                asker,
            } => StoreReply::Route(self.route(&user_id, client_type, asker.as_ref())),
            StoreOp::PutSession {
                session_id,
                session,
                ttl_ms,
            } => {
                self.put_session(now_ms, session_id, session, ttl_ms);
                StoreReply::Done
            }
            StoreOp::GetSession { session_id } => {
                StoreReply::Session(self.session(now_ms, &session_id))
            }
            StoreOp::PublishKick { notice } => {
                if self.kicks.len() >= MAX_PENDING_KICKS {
                    self.kicks.pop_front();
                }
                self.kicks.push_back(notice);
                StoreReply::Done
            }
            StoreOp::GetTaskControl { task_id } => {
                StoreReply::TaskControl(self.tasks.get(&task_id).copied().unwrap_or_default())
            }
            StoreOp::AddTaskProgress {
                task_id,
                sent,
                user_ids,
            } => {
                let progress = self.progress.entry(task_id).or_default();
                progress.sent = progress.sent.saturating_add(sent);
                for user in user_ids {
                    if progress.user_ids.len() >= MAX_TASK_USERS {
                        progress.user_ids.pop_front();
                    }
                    progress.user_ids.push_back(user);
                }
                StoreReply::Done
            }
        }
    }

    fn put_route(
        &mut self,
        user_id: String,
        client_type: ClientType,
        route: RouteRecord,
    ) -> StoreReply {
        let key = (user_id, client_type);
        let mut route = route;
        match self.routes.get(&key) {
            // A late write of an older bind, or of a bind that already ended: keep what is
            // stored.
            Some(current)
                if !route.supersedes(&current)
                    || current.knows_ended(&route.node(), route.version) =>
            {
                StoreReply::Stale { current }
            }
            Some(mut current) => {
                route.ended = std::mem::take(&mut current.ended);
                route.links = std::mem::take(&mut current.links);
                // An offline route's bind has ended: the route replacing it remembers that, so a
                // late write of that bind never comes back online (an offline route of the same
                // device keeps no bind out, [`RouteRecord::supersedes`]).
                if !current.is_online() && current.version != 0 {
                    route.remember_ended(&current.node(), current.version);
                }
                StoreReply::Previous(self.routes.insert(key, route))
            }
            None => StoreReply::Previous(self.routes.insert(key, route)),
        }
    }

    fn put_session(
        &mut self,
        now_ms: Millis,
        session_id: String,
        session: CachedSession,
        ttl_ms: u64,
    ) {
        let key = SessionKey::new(&session_id);
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&key) {
            self.sweep_expired_sessions(now_ms);
        }
        if self.sessions.len() < MAX_SESSIONS || self.sessions.contains_key(&key) {
            let packed = PackedSession::pack(&session, now_ms.saturating_add(ttl_ms));
            let key_bytes = key.heap_bytes();
            self.session_payload_bytes += packed.heap_bytes();
            match self.sessions.insert(key, packed) {
                Some(old) => self.session_payload_bytes -= old.heap_bytes(),
                None => self.session_payload_bytes += key_bytes,
            }
        }
    }

    /// Forgets every expired session (Redis expires them on its own).
    pub fn sweep_expired_sessions(&mut self, now_ms: Millis) {
        let mut freed = 0;
        self.sessions.retain(|key, packed| {
            let live = packed.expires_ms() > now_ms;
            if !live {
                freed += key.heap_bytes() + packed.heap_bytes();
            }
            live
        });
        self.session_payload_bytes -= freed;
    }

    /// The live session `session_id` (an expired one is forgotten).
    fn session(&mut self, now_ms: Millis, session_id: &str) -> Option<CachedSession> {
        let key = SessionKey::new(session_id);
        let live = self
            .sessions
            .get(&key)
            .filter(|packed| packed.expires_ms() > now_ms)
            .and_then(PackedSession::unpack);
        if live.is_none() {
            if let Some((key, packed)) = self.sessions.remove_entry(&key) {
                self.session_payload_bytes -= key.heap_bytes() + packed.heap_bytes();
            }
        }
        live
    }

    /// The route of (user, type), or with no type the user's best route for a push through
    /// `asker` ([`best_route`]).
    pub fn route(
        &self,
        user_id: &str,
        client_type: Option<ClientType>,
        asker: Option<&NodeAddr>,
    ) -> Option<(ClientType, RouteRecord)> {
        match client_type {
            Some(ct) => self.routes.get(&(user_id.to_owned(), ct)).map(|r| (ct, r)),
            None => best_route(self.routes_of(user_id), asker),
        }
    }

    /// Every route of a user, in [`ClientType::ALL`] order.
    pub fn routes_of(&self, user_id: &str) -> Vec<(ClientType, RouteRecord)> {
        ClientType::ALL
            .into_iter()
            .filter_map(|ct| self.routes.get(&(user_id.to_owned(), ct)).map(|r| (ct, r)))
            .collect()
    }

    /// Every route held, in key order.
    pub fn all_routes(&self) -> impl Iterator<Item = (String, ClientType, RouteRecord)> + '_ {
        self.routes
            .iter()
            .map(|((user, ct), route)| (user, ct, route))
    }

    /// Sets a broadcast task's control record (qps, cancel flag), as the business side does.
    pub fn set_task_control(&mut self, task_id: &str, control: TaskControl) {
        self.tasks.insert(task_id.to_owned(), control);
    }

    /// A broadcast task's progress.
    pub fn task_progress(&self, task_id: &str) -> TaskProgress {
        self.progress.get(task_id).cloned().unwrap_or_default()
    }

    /// Sessions kept (expired ones included until read or swept).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// How much this store holds: sessions, routes and approximately their bytes (records,
    /// keys and table slots). Kept as the data changes: reading it costs nothing.
    pub fn footprint(&self) -> StoreFootprint {
        const SESSION_SLOT_BYTES: usize = std::mem::size_of::<(SessionKey, PackedSession)>() + 1;
        StoreFootprint {
            sessions: self.sessions.len(),
            routes: self.routes.len(),
            approx_bytes: self.session_payload_bytes
                + self.sessions.capacity() * SESSION_SLOT_BYTES
                + self.routes.approx_bytes(),
        }
    }

    /// The embedded store's housekeeping round at `now_ms`: forgets expired sessions when
    /// `sweep_sessions` (a walk of every session, so not every round), gives back table
    /// capacity far beyond what is held ([`crate::spare`]), and answers the footprint.
    pub fn housekeep(&mut self, now_ms: Millis, sweep_sessions: bool) -> StoreFootprint {
        if sweep_sessions {
            self.sweep_expired_sessions(now_ms);
        }
        crate::spare::shrink_map(&mut self.sessions);
        self.footprint()
    }

    /// True when a session is kept under `session_id` (expired or not).
    pub fn has_session(&self, session_id: &str) -> bool {
        self.sessions.contains_key(&SessionKey::new(session_id))
    }

    /// The next kick notice published and not yet taken.
    pub fn poll_kick(&mut self) -> Option<KickNotice> {
        self.kicks.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeAddr;

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
            ended: Vec::new(),
            links: Vec::new(),
        }
    }

    fn put(conn: &str, version: u64) -> StoreOp {
        StoreOp::PutRoute {
            user_id: "u".into(),
            client_type: ClientType::Mobile,
            route: route(Some(conn), version),
        }
    }

    /// A bind's route write from the node at `host` (port 3001).
    fn put_on(host: &str, conn: &str, version: u64) -> StoreOp {
        let mut route = route(Some(conn), version);
        route.host = host.into();
        StoreOp::PutRoute {
            user_id: "u".into(),
            client_type: ClientType::Mobile,
            route,
        }
    }

    fn offline_on(host: &str, conn: &str, version: u64) -> StoreOp {
        StoreOp::SetRouteOffline {
            user_id: "u".into(),
            client_type: ClientType::Mobile,
            node: NodeAddr::new(host, 3001),
            conn_id: conn.into(),
            version,
        }
    }

    /// A restore asked by the node at `host` for its bind `version`: `previous` goes back.
    fn restore_on(host: &str, version: u64, previous: &RouteRecord) -> StoreOp {
        StoreOp::RestoreRoute {
            user_id: "u".into(),
            client_type: ClientType::Mobile,
            node: NodeAddr::new(host, 3001),
            version,
            previous: Box::new(previous.clone()),
        }
    }

    fn offline(conn: &str, version: u64) -> StoreOp {
        StoreOp::SetRouteOffline {
            user_id: "u".into(),
            client_type: ClientType::Mobile,
            node: NodeAddr::new("127.0.0.1", 3001),
            conn_id: conn.into(),
            version,
        }
    }

    #[test]
    fn routes_follow_the_newest_bind_and_are_cleared_only_by_it() {
        let mut s = StoreState::new();
        assert_eq!(s.apply(0, put("a", 10)), StoreReply::Previous(None));
        assert_eq!(
            s.apply(0, put("b", 20)),
            StoreReply::Previous(Some(route(Some("a"), 10)))
        );
        // A late write of the older bind does not undo the newer one.
        assert_eq!(
            s.apply(0, put("a", 10)),
            StoreReply::Stale {
                current: route(Some("b"), 20)
            }
        );
        s.apply(0, offline("a", 10));
        assert!(
            s.route("u", None, None).unwrap().1.is_online(),
            "a stale owner"
        );
        s.apply(0, offline("b", 19));
        assert!(
            s.route("u", None, None).unwrap().1.is_online(),
            "an older bind"
        );
        s.apply(0, offline("b", 20));
        assert!(!s
            .route("u", Some(ClientType::Mobile), None)
            .unwrap()
            .1
            .is_online());
    }

    #[test]
    fn a_restore_undoes_only_the_bind_it_names() {
        let mut s = StoreState::new();
        let far = RouteRecord {
            host: "10.0.0.2".into(),
            ..route(Some("far"), 1)
        };
        s.apply(
            0,
            StoreOp::PutRoute {
                user_id: "u".into(),
                client_type: ClientType::Mobile,
                route: far.clone(),
            },
        );
        s.apply(0, put("dead", 10));
        s.apply(0, offline("dead", 10));
        let restore = |version| restore_on("127.0.0.1", version, &far);
        s.apply(0, restore(9));
        assert_eq!(
            s.route("u", None, None).unwrap().1.version,
            10,
            "another bind"
        );
        s.apply(0, restore(10));
        let (_, back) = s.route("u", None, None).unwrap();
        assert_eq!(
            RouteRecord {
                ended: Vec::new(),
                links: Vec::new(),
                ..back.clone()
            },
            far
        );
        assert!(
            back.knows_ended(&NodeAddr::new("127.0.0.1", 3001), 10),
            "the undone bind is remembered as ended"
        );
        // Once a newer bind holds the route, a late restore does nothing.
        s.apply(0, put("newer", 20));
        s.apply(0, restore(10));
        let (_, stored) = s.route("u", None, None).unwrap();
        assert_eq!(stored.conn_id.as_deref(), Some("newer"));
        assert_eq!(stored.version, 20);
    }

    /// Found by the simulation (fresh seeds, B7): a route write delivered late on an old store
    /// link, after the offline mark of its bind, brought a closed connection back online.
    #[test]
    fn an_offline_mark_that_overtakes_its_write_keeps_the_bind_offline() {
        let mut s = StoreState::new();
        // The mark arrives first, with nothing stored: an empty offline route remembers the bind.
        s.apply(0, offline("late", 10));
        assert!(matches!(
            s.apply(0, put("late", 10)),
            StoreReply::Stale { .. }
        ));
        // Any other bind supersedes what only remembers an ended bind.
        assert!(matches!(
            s.apply(0, put_on("10.0.0.2", "older-device", 5)),
            StoreReply::Previous(Some(_))
        ));
        assert!(matches!(
            s.apply(0, put("late", 10)),
            StoreReply::Stale { .. }
        ));
        s.apply(0, offline_on("10.0.0.2", "older-device", 5));
        assert!(!s.route("u", None, None).unwrap().1.is_online());
        // The mark arrives while another bind is stored: remembered there, and carried along
        // when a newer bind replaces that one.
        s.apply(0, put("other", 20));
        s.apply(0, offline("late2", 30));
        s.apply(0, put_on("10.0.0.2", "newer", 25));
        assert!(matches!(
            s.apply(0, put("late2", 30)),
            StoreReply::Stale { .. }
        ));
        let (_, stored) = s.route("u", None, None).unwrap();
        assert_eq!(stored.conn_id.as_deref(), Some("newer"));
        // (older-device@5 too: its route was offline when "other" replaced it.)
        assert_eq!(
            stored.ended.len(),
            3,
            "late@10, older-device@5 and late2@30: {:?}",
            stored.ended
        );
        // A bind that never ended still wins.
        assert!(matches!(
            s.apply(0, put("newest", 40)),
            StoreReply::Previous(Some(_))
        ));
    }

    /// Found by the simulation (seed 914, once an offline route of the same device stopped
    /// keeping binds out): a connection's bind (connection age 5) went offline and was replaced
    /// by the device's next connection (age 9), which went offline too; then a retry of the
    /// first bind's write, held up on its link, landed. It must not come back online.
    #[test]
    fn a_late_write_of_a_bind_whose_route_was_replaced_offline_stays_out() {
        let mut s = StoreState::new();
        let with_age = |conn: &str, version: u64, age: u64| StoreOp::PutRoute {
            user_id: "u".into(),
            client_type: ClientType::Mobile,
            route: RouteRecord {
                conn_version: age,
                ..route(Some(conn), version)
            },
        };
        s.apply(0, with_age("a", 10, 5));
        s.apply(0, offline("a", 10));
        assert!(matches!(
            s.apply(0, with_age("b", 20, 9)),
            StoreReply::Previous(Some(_))
        ));
        s.apply(0, offline("b", 20));
        assert!(matches!(
            s.apply(0, with_age("a", 10, 5)),
            StoreReply::Stale { .. }
        ));
        let stored = s.route("u", Some(ClientType::Mobile), None);
        assert!(
            stored.as_ref().is_none_or(|(_, r)| !r.is_online()),
            "{stored:?}"
        );
        // A new bind of the device still takes the offline route over.
        assert!(matches!(
            s.apply(0, with_age("c", 30, 1)),
            StoreReply::Previous(Some(_))
        ));
    }

    #[test]
    fn ended_binds_are_bounded_per_node_and_in_all() {
        use crate::store::{MAX_ENDED_BINDS, MAX_ENDED_BINDS_PER_NODE};
        let mut s = StoreState::new();
        s.apply(0, put("a", 100));
        // One node's marks: its newest MAX_ENDED_BINDS_PER_NODE stay.
        let extra = 3;
        for v in 1..=(MAX_ENDED_BINDS_PER_NODE as u64 + extra) {
            s.apply(0, offline("x", v));
        }
        let (_, stored) = s.route("u", None, None).unwrap();
        let versions: Vec<u64> = stored.ended.iter().map(|e| e.version).collect();
        let want: Vec<u64> = (extra + 1..=MAX_ENDED_BINDS_PER_NODE as u64 + extra).collect();
        assert_eq!(versions, want);
        // Many nodes' marks: at most MAX_ENDED_BINDS, the oldest go.
        for n in 0..MAX_ENDED_BINDS {
            s.apply(0, offline_on(&format!("10.1.0.{n}"), "x", 7));
        }
        let (_, stored) = s.route("u", None, None).unwrap();
        assert_eq!(stored.ended.len(), MAX_ENDED_BINDS);
        assert_eq!(
            stored.ended.last().unwrap().host,
            format!("10.1.0.{}", MAX_ENDED_BINDS - 1)
        );
        assert!(stored.ended.iter().all(|e| e.host != "127.0.0.1"));
    }

    /// B24: node A's mark of a bind overtook the bind's write, which is held up on a store link
    /// A has given up; meanwhile node B's binds of the user end, one after another. B's marks
    /// must not push A's out, or A's late write lands online and the store names a connection
    /// nobody holds.
    #[test]
    fn another_nodes_ended_binds_do_not_flush_a_nodes_mark() {
        let mut s = StoreState::new();
        // Another device's route, offline, older than A's bind.
        let mut old = route(None, 50);
        old.device_id = "d0".into();
        s.apply(
            0,
            StoreOp::PutRoute {
                user_id: "u".into(),
                client_type: ClientType::Mobile,
                route: old,
            },
        );
        s.apply(0, offline_on("10.0.0.2", "a1", 100));
        for v in 0..(crate::store::MAX_ENDED_BINDS_PER_NODE as u64 + 2) {
            s.apply(0, offline_on("10.0.0.5", &format!("b{v}"), 200 + v));
        }
        let late = put_on("10.0.0.2", "a1", 100);
        assert!(matches!(s.apply(0, late), StoreReply::Stale { .. }));
        let (_, stored) = s.route("u", None, None).unwrap();
        assert!(!stored.is_online(), "{stored:?}");
    }

    /// A restore puts the displaced route back offline when that connection's own mark came
    /// while the dead bind was stored.
    #[test]
    fn a_restore_of_a_connection_that_ended_meanwhile_is_offline() {
        let mut s = StoreState::new();
        let far_node = NodeAddr::new("10.0.0.2", 3001);
        let far = RouteRecord {
            host: far_node.host.clone(),
            ..route(Some("far"), 1)
        };
        s.apply(
            0,
            StoreOp::PutRoute {
                user_id: "u".into(),
                client_type: ClientType::Mobile,
                route: far.clone(),
            },
        );
        s.apply(0, put("dead", 10));
        s.apply(
            0,
            StoreOp::SetRouteOffline {
                user_id: "u".into(),
                client_type: ClientType::Mobile,
                node: far_node,
                conn_id: "far".into(),
                version: 1,
            },
        );
        s.apply(0, restore_on("127.0.0.1", 10, &far));
        let (_, stored) = s.route("u", None, None).unwrap();
        assert!(stored.is_bind(&far.node(), 1));
        assert!(!stored.is_online());
    }

    /// Found by the simulation (seed 44002400): a bind's route write (b on node 10.0.0.2)
    /// replaced another node's route (a), but b had already given the user up, so its node
    /// asked for a back; b's offline mark had landed before the restore. The restore put a's
    /// route back, and with it forgot that b's bind had ended (the record that knew was b's
    /// own offline route): a retry of b's write, held up on a store link its node had given
    /// up, then landed online naming a connection bound to another user.
    #[test]
    fn a_restore_remembers_the_undone_bind_as_ended() {
        let mut s = StoreState::new();
        let a = route(Some("a"), 10);
        s.apply(0, put_on("127.0.0.1", "a", 10));
        let b_put = || put_on("10.0.0.2", "b", 20);
        assert_eq!(s.apply(0, b_put()), StoreReply::Previous(Some(a.clone())));
        s.apply(0, offline_on("127.0.0.1", "a", 10));
        s.apply(0, offline_on("10.0.0.2", "b", 20));
        s.apply(0, restore_on("10.0.0.2", 20, &a));
        let (_, stored) = s.route("u", None, None).unwrap();
        assert!(stored.is_bind(&a.node(), 10), "a's route is back");
        assert!(!stored.is_online(), "a ended meanwhile");
        assert!(stored.knows_ended(&NodeAddr::new("10.0.0.2", 3001), 20));
        // The late retry of b's write stays out.
        assert!(matches!(s.apply(0, b_put()), StoreReply::Stale { .. }));
        assert!(!s.route("u", None, None).unwrap().1.is_online());
    }

    /// Found by the simulation (seed 175): a connection re-bound its user during a store
    /// outage (the newer bind's write never landed), then gave the user up; the mark named
    /// the newer bind and missed the stored older bind of the same connection, which stayed
    /// online naming a connection nobody holds.
    #[test]
    fn a_mark_ends_an_older_bind_of_the_same_connection_too() {
        let mut s = StoreState::new();
        s.apply(0, put("c", 10));
        s.apply(0, offline("c", 15));
        let (_, stored) = s.route("u", None, None).unwrap();
        assert!(!stored.is_online());
        // The newer bind is remembered as ended: its write arriving late stays out.
        assert!(matches!(s.apply(0, put("c", 15)), StoreReply::Stale { .. }));
        // Another connection's older route is never touched by it.
        s.apply(0, put("d", 20));
        s.apply(0, offline("c", 30));
        assert!(s.route("u", None, None).unwrap().1.is_online());
    }

    #[test]
    fn best_route_is_the_first_online_one() {
        let mut s = StoreState::new();
        s.routes
            .insert(("u".into(), ClientType::Mobile), route(None, 1));
        s.routes
            .insert(("u".into(), ClientType::Web), route(Some("w"), 1));
        assert_eq!(s.route("u", None, None).unwrap().0, ClientType::Web);
        s.apply(
            0,
            StoreOp::SetRouteOffline {
                user_id: "u".into(),
                client_type: ClientType::Web,
                node: NodeAddr::new("127.0.0.1", 3001),
                conn_id: "w".into(),
                version: 1,
            },
        );
        assert_eq!(s.route("u", None, None).unwrap().0, ClientType::Mobile);
        assert_eq!(s.route("nobody", None, None), None);
    }

    proptest::proptest! {
        /// The footprint's byte counts follow every change: after any mix of session writes,
        /// replacements, expired reads, sweeps, route writes and offline marks they equal the
        /// bytes counted afresh.
        #[test]
        fn the_footprint_follows_every_change(ops in proptest::collection::vec((0u8..6, 0u8..6, 0u64..4), 1..60)) {
            let mut s = StoreState::new();
            for (step, (kind, which, at)) in ops.into_iter().enumerate() {
                let now = step as u64 * 100 + at * 10;
                // Three ids in the nodes' short hex form, three kept as text.
                let session_id = match which % 6 {
                    n @ 0..=2 => format!("{n:032x}"),
                    n => format!("text-id-{}", "x".repeat(usize::from(n))),
                };
                let user = format!("user{}", "u".repeat(usize::from(which)));
                match kind {
                    0 | 1 => {
                        let session = CachedSession {
                            os_name: "android".into(),
                            os_version: "6".into(),
                            client_version: "1".into(),
                            device_id: "d".repeat(at as usize + 1),
                            session_key: [1; 16],
                            iv: [2; 16],
                        };
                        s.apply(now, StoreOp::PutSession { session_id, session, ttl_ms: at * 100 });
                    }
                    2 => {
                        s.apply(now, StoreOp::GetSession { session_id });
                    }
                    3 => s.sweep_expired_sessions(now),
                    4 => {
                        let conn = "c".repeat(at as usize + 1);
                        s.apply(now, StoreOp::PutRoute { user_id: user, client_type: ClientType::Mobile, route: route(Some(&conn), now + 1) });
                    }
                    _ => {
                        s.apply(now, StoreOp::SetRouteOffline { user_id: user, client_type: ClientType::Mobile, node: NodeAddr::new("127.0.0.1", 3001), conn_id: "c".into(), version: now });
                    }
                }
                let counted: usize = s.sessions.iter().map(|(k, p)| k.heap_bytes() + p.heap_bytes()).sum();
                proptest::prop_assert_eq!(s.session_payload_bytes, counted);
                let (tracked, counted) = s.routes.payload_bytes_tracked_and_counted();
                proptest::prop_assert_eq!(tracked, counted);
                let footprint = s.footprint();
                proptest::prop_assert_eq!(footprint.sessions, s.sessions.len());
                proptest::prop_assert_eq!(footprint.routes, s.routes.len());
                proptest::prop_assert!(footprint.approx_bytes >= s.session_payload_bytes + tracked);
            }
        }
    }

    #[test]
    fn sessions_expire_at_their_ttl() {
        let mut s = StoreState::new();
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
        );
        let get = || StoreOp::GetSession {
            session_id: "x".into(),
        };
        assert_eq!(s.apply(999, get()), StoreReply::Session(Some(session)));
        assert_eq!(s.apply(1000, get()), StoreReply::Session(None));
        assert_eq!(s.session_count(), 0);
    }

    #[test]
    fn kicks_are_published_once_and_task_progress_adds_up() {
        let mut s = StoreState::new();
        let notice = KickNotice {
            client_type: 1,
            conn_id: "c".into(),
            device_id: "d".into(),
            target_port: 3001,
            target_server: "10.0.0.2".into(),
            user_id: "u".into(),
            version: 3,
        };
        s.apply(
            0,
            StoreOp::PublishKick {
                notice: notice.clone(),
            },
        );
        assert_eq!(s.poll_kick(), Some(notice));
        assert_eq!(s.poll_kick(), None);
        for n in 0..2 {
            s.apply(
                0,
                StoreOp::AddTaskProgress {
                    task_id: "t".into(),
                    sent: 2,
                    user_ids: vec![format!("a{n}"), format!("b{n}")],
                },
            );
        }
        let progress = s.task_progress("t");
        assert_eq!(progress.sent, 4);
        assert_eq!(progress.user_ids, ["a0", "b0", "a1", "b1"]);
        s.set_task_control(
            "t",
            TaskControl {
                qps: Some(5),
                cancelled: true,
            },
        );
        assert_eq!(
            s.apply(
                0,
                StoreOp::GetTaskControl {
                    task_id: "t".into()
                }
            ),
            StoreReply::TaskControl(TaskControl {
                qps: Some(5),
                cancelled: true
            })
        );
    }

    #[test]
    fn a_push_naming_no_client_type_gets_an_online_route_elsewhere_before_one_of_the_asker() {
        let mut s = StoreState::new();
        let here = NodeAddr::new("127.0.0.1", 3001);
        s.apply(0, put("stale", 10));
        let mut live = route(Some("live"), 5);
        live.host = "10.0.0.2".into();
        s.apply(
            0,
            StoreOp::PutRoute {
                user_id: "u".into(),
                client_type: ClientType::Pc,
                route: live.clone(),
            },
        );
        assert_eq!(
            s.route("u", None, Some(&here)),
            Some((ClientType::Pc, live))
        );
        // Without an asker, the first online route in client-type order.
        assert_eq!(
            s.route("u", None, None).map(|(ct, _)| ct),
            Some(ClientType::Mobile)
        );
    }

    /// Seeds 66002216 and 69000987 (B27), their numbers: node1 replaced its store link during
    /// an outage. Its bind 752613 (dev-7, connection c1) had gone out on the old link and was
    /// held in the network; the bind's offline mark and four marks of the node's later binds
    /// went out on the new link and landed first, while the store held another device's
    /// offline route (node 10.0.1.4) — each mark missed it and was remembered, and the four
    /// later ones pushed the first out of the route's bounded memory. Then the held write
    /// landed, newer than the stored route: online for a connection closed seconds before, with
    /// no end. The route remembers that node1's ops come on a newer link now, so the write is
    /// refused; ops on the new link, and every op of the other node, still apply.
    #[test]
    fn a_write_held_on_a_replaced_link_never_lands_after_marks_sent_on_the_new_one() {
        let (node1, other) = ("10.0.1.2", "10.0.1.4");
        let (old_link, new_link) = (1_000, 2_000);
        let mut s = StoreState::new();
        let mut stored = route(None, 752_609);
        stored.host = other.into();
        stored.device_id = "dev-3".into();
        let stored_put = StoreOp::PutRoute {
            user_id: "u".into(),
            client_type: ClientType::Mobile,
            route: stored,
        };
        assert!(matches!(
            s.apply_on_link(0, stored_put, 77),
            Ok(StoreReply::Previous(None))
        ));
        let mut held = put_on(node1, "c1", 752_613);
        if let StoreOp::PutRoute { route, .. } = &mut held {
            route.device_id = "dev-7".into();
        }
        let marks = [
            ("c1", 752_613),
            ("c2", 757_967),
            ("c3", 758_228),
            ("c4", 758_406),
            ("c5", 758_446),
        ];
        for (conn, version) in marks {
            let mark = offline_on(node1, conn, version);
            assert_eq!(s.apply_on_link(0, mark, new_link), Ok(StoreReply::Done));
        }
        let kept = s.routes.get(&("u".into(), ClientType::Mobile)).unwrap();
        assert!(
            !kept.knows_ended(&NodeAddr::new(node1, 3001), 752_613),
            "the first mark is out of the bounded memory: only the link keeps the write out"
        );
        assert_eq!(
            s.apply_on_link(0, held.clone(), old_link),
            Err(StoreError::Fenced {
                newest_epoch: new_link
            })
        );
        let after = s.routes.get(&("u".into(), ClientType::Mobile)).unwrap();
        assert!(!after.is_online() && after.is_on(&NodeAddr::new(other, 3001)));
        // Without links (the embedded store) nothing is fenced; on the new link, or from the
        // other node, ops still apply.
        assert!(matches!(
            s.clone().apply_on_link(0, held, 0),
            Ok(StoreReply::Previous(_))
        ));
        assert!(matches!(
            s.apply_on_link(0, put_on(node1, "c6", 760_000), new_link),
            Ok(StoreReply::Previous(_))
        ));
        assert!(matches!(
            s.apply_on_link(0, put_on(other, "c7", 761_000), 77),
            Ok(StoreReply::Previous(Some(_)))
        ));
    }

    #[test]
    fn a_route_remembers_each_nodes_newest_link_within_its_bound() {
        let mut r = route(None, 1);
        let a = NodeAddr::new("a", 1);
        assert!(!r.note_link(&a, 0), "no link, nothing to note");
        assert!(r.note_link(&a, 5));
        assert!(!r.note_link(&a, 5) && !r.note_link(&a, 4));
        assert!(r.is_fenced(&a, 4) && !r.is_fenced(&a, 5) && !r.is_fenced(&a, 0));
        assert!(!r.is_fenced(&NodeAddr::new("b", 1), 1));
        for n in 0..crate::store::MAX_LINKS {
            r.note_link(&NodeAddr::new(format!("n{n}"), 1), 9);
        }
        assert_eq!(r.links.len(), crate::store::MAX_LINKS);
        assert!(!r.is_fenced(&a, 4), "the node noted longest ago went first");
        // An op of an unversioned bind (MPush's format) names no link.
        let mut s = StoreState::new();
        s.apply_on_link(0, put("c", 0), 7).unwrap();
        let mpush = s.routes.get(&("u".into(), ClientType::Mobile)).unwrap();
        assert!(mpush.links.is_empty());
    }

    /// Every route op is fenced alike (a write, a mark, a restore), a refused one changes
    /// nothing, and an op left out by the rules (a stale write) still leaves its link noted.
    /// A link epoch past `MAX_LINK_EPOCH` in a stored route (corrupt, or written by hand)
    /// neither fences nor stays.
    #[test]
    fn every_route_op_is_fenced_and_an_epoch_no_node_stamps_is_ignored() {
        use crate::store::MAX_LINK_EPOCH;
        let key = ("u".to_owned(), ClientType::Mobile);
        let node = NodeAddr::new("127.0.0.1", 3001);
        let mut s = StoreState::new();
        s.apply_on_link(0, put("c2", 20), 9).unwrap();
        let before = s.routes.get(&key).unwrap();
        let refused = Err(StoreError::Fenced { newest_epoch: 9 });
        assert_eq!(s.apply_on_link(0, offline("c2", 20), 8), refused);
        assert_eq!(s.apply_on_link(0, put("c3", 30), 8), refused);
        let previous = route(Some("elsewhere"), 1);
        let restore = restore_on("127.0.0.1", 20, &previous);
        assert_eq!(s.apply_on_link(0, restore, 8), refused);
        assert_eq!(
            s.routes.get(&key),
            Some(before),
            "refused ops change nothing"
        );
        // A stale write on a newer link: not applied, yet its link is noted.
        assert!(matches!(
            s.apply_on_link(0, put("c1", 10), 12),
            Ok(StoreReply::Stale { .. })
        ));
        assert!(s.routes.get(&key).unwrap().is_fenced(&node, 11));
        // A corrupt epoch beyond any a node stamps: not a fence, replaced by the next link.
        let mut corrupt = s.routes.get(&key).unwrap();
        corrupt.links[0].epoch = u64::MAX;
        s.routes.insert(key.clone(), corrupt);
        assert!(matches!(
            s.apply_on_link(0, put("c4", 40), 13),
            Ok(StoreReply::Previous(Some(_)))
        ));
        let mut kept = s.routes.get(&key).unwrap();
        assert_eq!(kept.links.len(), 1);
        assert_eq!(kept.links[0].epoch, 13);
        assert!(!kept.note_link(&node, MAX_LINK_EPOCH + 1) && kept.links[0].epoch == 13);
    }
}
