//! [`ClusterPushClient`]: MPush's `PushClient` over a Redis-backed cluster (reference §11).
//!
//! A single push reads the user's routes (`HGETALL mp:ur:{user}`), skips the routes without a
//! connection id (offline, as MPush's PushClient does), and sends one GATEWAY_PUSH per route
//! (or only the requested client type) to the gateway the route names, through one pooled
//! [`PushClient`] per gateway address. A router-change answer re-reads that route
//! (`HGET mp:ur:{user} {type}`) and sends again, at most `max_rereads` times. The whole push,
//! Redis reads and re-sends included, ends within the request's timeout, and every route ends
//! in exactly one status; the combined status is a success when any route succeeded, else the
//! most informative failure (timeout, failure, router change, offline in that order).
//!
//! With [`ClusterPushClient::with_route_cache`] the routes read are kept per user for a while
//! (as MPush's PushClient caches them): a push to a cached user costs no Redis round trip, and
//! a stale entry is corrected by the router change it meets (the entry is replaced by what the
//! re-read finds) or dropped when the push ends offline. Off by default: every push reads.
//!
//! A broadcast goes to every node in the node registry ([`crate::redis_store::registry`]) and,
//! with [`ClusterPushClient::with_zookeeper`], to every gateway registered in MPush's ZooKeeper
//! (MPush's Java nodes; one send per gateway address), and their answers fold into one:
//! success when every node answered success.
use super::push::{
    BroadcastRequest, PushClient, PushClientOptions, PushResult, SinglePushRequest,
    DEFAULT_MAX_REDIRECTS, DEFAULT_PUSH_TIMEOUT_MS,
};
use crate::redis_store::{keys, ops, registry, RedisReader, RedisTarget};
use pushgate_core::store::RouteRecord;
use pushgate_core::PushStatus;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Most routes (client types) one push sends to; a hash with more fields is cut here.
pub const MAX_ROUTES_PER_USER: usize = 16;
/// Most users the route cache holds; when full it is emptied.
pub const MAX_CACHED_USERS: usize = 100_000;
/// Most gateway connections kept; when full the pool is emptied (routes name the gateways, so
/// bad data in Redis cannot grow it without bound).
pub const MAX_GATEWAYS: usize = 1024;

type Routes = Vec<(i32, RouteRecord)>;

/// One route's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePush {
    pub client_type: i32,
    /// The gateway the last attempt went to (`host:port`).
    pub gateway: String,
    /// Router changes followed for this route.
    pub rereads: usize,
    pub result: PushResult,
    /// The route record the last attempt followed.
    pub route: Option<RouteRecord>,
}

/// A single push's outcome over every route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPushResult {
    pub status: PushStatus,
    pub reason: Option<String>,
    pub user_id: String,
    pub routes: Vec<RoutePush>,
}

impl ClusterPushResult {
    fn without_routes(status: PushStatus, reason: String, user_id: &str) -> Self {
        Self {
            status,
            reason: Some(reason),
            user_id: user_id.to_owned(),
            routes: Vec::new(),
        }
    }

    /// The route result the combined status came from (the first with that status).
    pub fn deciding_route(&self) -> Option<&RoutePush> {
        self.routes.iter().find(|r| r.result.status == self.status)
    }
}

/// One node's answer to a broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeBroadcast {
    pub gateway: String,
    pub status: PushStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A broadcast's outcome over every registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBroadcastResult {
    pub status: PushStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub nodes: Vec<NodeBroadcast>,
}

/// A PushClient that finds users through Redis.
#[derive(Clone)]
pub struct ClusterPushClient {
    redis: RedisReader,
    max_rereads: usize,
    gateways: Arc<Mutex<HashMap<SocketAddr, Arc<PushClient>>>>,
    /// How long read routes are kept (zero: not kept).
    cache_ttl: Duration,
    cache: Arc<Mutex<HashMap<String, (Instant, Routes)>>>,
    /// The gateway token sent on every gateway connection.
    token: Option<String>,
    /// TLS on every gateway connection (the nodes' gateways serve `--gateway-tls`).
    tls: Option<Arc<crate::client::GatewayTls>>,
    /// The gateways registered in ZooKeeper, when watched.
    zookeeper: Option<tokio::sync::watch::Receiver<crate::zookeeper::ZkView>>,
}

impl std::fmt::Debug for ClusterPushClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPushClient")
            .field("redis", &self.redis)
            .field("max_rereads", &self.max_rereads)
            .finish_non_exhaustive()
    }
}

/// How a status ranks when routes are combined (higher wins).
fn rank(status: PushStatus) -> u8 {
    match status {
        PushStatus::AckSuccess => 6,
        PushStatus::Success => 5,
        PushStatus::Timeout => 4,
        PushStatus::Failure => 3,
        PushStatus::RouterChange => 2,
        PushStatus::Offline => 1,
    }
}

fn failed(status: PushStatus, reason: String, user_id: &str) -> PushResult {
    PushResult {
        status,
        reason: Some(reason),
        user_id: user_id.to_owned(),
        client_type: None,
        time_points: Vec::new(),
        raw_reply: None,
    }
}

impl ClusterPushClient {
    /// A client of the Redis at `url` (same forms as `store.redis_url`); nothing is opened yet.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self::with_reader(RedisReader::new(RedisTarget::parse(
            url,
        )?)))
    }

    /// A client sharing `redis` (a node passes its own reader).
    pub fn with_reader(redis: RedisReader) -> Self {
        Self {
            redis,
            max_rereads: DEFAULT_MAX_REDIRECTS,
            gateways: Arc::new(Mutex::new(HashMap::new())),
            cache_ttl: Duration::ZERO,
            cache: Arc::new(Mutex::new(HashMap::new())),
            token: None,
            tls: None,
            zookeeper: None,
        }
    }

    /// Sends `token` first on every gateway connection (the nodes' `security.gateway_tokens`).
    pub fn with_gateway_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// Speaks TLS to every gateway with `tls` (checking each route's host name unless `tls`
    /// names a server); `None`: plain TCP.
    pub fn with_gateway_tls(mut self, tls: Option<Arc<crate::client::GatewayTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Broadcasts also reach the gateways registered in ZooKeeper (`view` of a
    /// [`crate::zookeeper::ZkMember`]).
    pub fn with_zookeeper(
        mut self,
        view: tokio::sync::watch::Receiver<crate::zookeeper::ZkView>,
    ) -> Self {
        self.zookeeper = Some(view);
        self
    }

    /// Keeps the routes read for a user up to `ttl` (zero: reads them for every push).
    pub fn with_route_cache(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Sets how many router changes one route follows.
    pub fn max_rereads(mut self, max_rereads: usize) -> Self {
        self.max_rereads = max_rereads;
        self
    }

    /// Redis commands sent so far.
    pub fn redis_round_trips(&self) -> u64 {
        self.redis.round_trips()
    }

    /// Pushes to every route of the user (or of the requested client type).
    pub async fn push(&self, req: SinglePushRequest) -> ClusterPushResult {
        let timeout_ms = if req.timeout_ms == 0 {
            DEFAULT_PUSH_TIMEOUT_MS
        } else {
            req.timeout_ms
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let routes = match self.routes(&req.user_id, deadline).await {
            Ok(routes) => routes,
            Err(reason) => {
                let status = if Instant::now() >= deadline {
                    PushStatus::Timeout
                } else {
                    PushStatus::Failure
                };
                return ClusterPushResult::without_routes(
                    status,
                    format!("reading the routes: {reason}"),
                    &req.user_id,
                );
            }
        };
        // Client type 0 means any, as on the gateway.
        let wanted = req.client_type.filter(|code| *code != 0);
        let routes: Vec<(i32, RouteRecord)> = routes
            .into_iter()
            .filter(|(code, route)| route.is_online() && wanted.is_none_or(|w| w == *code))
            .collect();
        if routes.is_empty() {
            return ClusterPushResult::without_routes(
                PushStatus::Offline,
                "the user has no online route".into(),
                &req.user_id,
            );
        }
        let pushes = routes
            .into_iter()
            .map(|(code, route)| self.push_route(&req, code, route, deadline));
        let routes = futures_util::future::join_all(pushes).await;
        let best = routes
            .iter()
            .max_by_key(|r| rank(r.result.status))
            .map(|r| (r.result.status, r.result.reason.clone()));
        let (status, reason) = best.unwrap_or((PushStatus::Offline, None));
        if !self.cache_ttl.is_zero() {
            self.remember_outcome(&req.user_id, &routes);
        }
        ClusterPushResult {
            status,
            reason,
            user_id: req.user_id.clone(),
            routes,
        }
    }

    /// Pushes to one route already read (a gateway's router-change named it), following
    /// router changes from there as [`Self::push`] does: no Redis read unless the route moved
    /// again.
    pub async fn push_to_route(
        &self,
        req: SinglePushRequest,
        client_type: i32,
        route: RouteRecord,
    ) -> ClusterPushResult {
        let timeout_ms = if req.timeout_ms == 0 {
            DEFAULT_PUSH_TIMEOUT_MS
        } else {
            req.timeout_ms
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        if !route.is_online() {
            return ClusterPushResult::without_routes(
                PushStatus::Offline,
                "the user has no online route".into(),
                &req.user_id,
            );
        }
        let pushed = self.push_route(&req, client_type, route, deadline).await;
        ClusterPushResult {
            status: pushed.result.status,
            reason: pushed.result.reason.clone(),
            user_id: req.user_id.clone(),
            routes: vec![pushed],
        }
    }

    /// Broadcasts through every registered node.
    pub async fn broadcast(&self, req: BroadcastRequest) -> ClusterBroadcastResult {
        let timeout_ms = if req.timeout_ms == 0 {
            DEFAULT_PUSH_TIMEOUT_MS
        } else {
            req.timeout_ms
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let nodes = match registry::list(&self.redis, left(deadline)).await {
            Ok(nodes) => {
                let mut gateways: Vec<(String, u16)> = nodes
                    .into_iter()
                    .map(|n| (n.gateway_host, n.gateway_port))
                    .collect();
                if let Some(view) = &self.zookeeper {
                    for seen in &view.borrow().gateway_servers {
                        let gateway = (seen.node.host.clone(), seen.node.port);
                        if !gateways.contains(&gateway) {
                            gateways.push(gateway);
                        }
                    }
                }
                gateways.truncate(MAX_GATEWAYS);
                gateways
            }
            Err(reason) => {
                return ClusterBroadcastResult {
                    status: PushStatus::Failure,
                    reason: Some(format!("listing the nodes: {reason}")),
                    nodes: Vec::new(),
                }
            }
        };
        if nodes.is_empty() {
            return ClusterBroadcastResult {
                status: PushStatus::Failure,
                reason: Some("no node is registered".into()),
                nodes: Vec::new(),
            };
        }
        let sends = nodes.into_iter().map(|(gateway_host, gateway_port)| {
            let mut req = req.clone();
            async move {
                let gateway = format!("{gateway_host}:{gateway_port}");
                let budget = left(deadline);
                req.timeout_ms = budget.as_millis().max(1) as u64;
                let outcome = tokio::time::timeout(budget, async {
                    let client = self.gateway(&gateway_host, gateway_port, deadline).await?;
                    client.broadcast(req).await.map_err(|e| e.to_string())
                })
                .await;
                let (status, reason) = match outcome {
                    Ok(Ok(result)) => (result.status, result.reason),
                    Ok(Err(reason)) => (PushStatus::Failure, Some(reason)),
                    Err(_) => (
                        PushStatus::Timeout,
                        Some("no answer within the timeout".into()),
                    ),
                };
                NodeBroadcast {
                    gateway,
                    status,
                    reason,
                }
            }
        });
        let nodes = futures_util::future::join_all(sends).await;
        let failed: Vec<&NodeBroadcast> = nodes.iter().filter(|n| !n.status.is_success()).collect();
        let (status, reason) = if failed.is_empty() {
            (PushStatus::Success, None)
        } else {
            let names: Vec<String> = failed
                .iter()
                .map(|n| format!("{} {}", n.gateway, n.status.name()))
                .collect();
            (
                PushStatus::Failure,
                Some(format!(
                    "{} of {} nodes did not finish: {}",
                    failed.len(),
                    nodes.len(),
                    names.join(", ")
                )),
            )
        };
        ClusterBroadcastResult {
            status,
            reason,
            nodes,
        }
    }

    /// Closes every gateway connection.
    pub fn close(&self) {
        for client in lock(&self.gateways).drain().map(|(_, c)| c) {
            client.close();
        }
    }

    /// The user's routes: cached, or read (and cached when they are any).
    async fn routes(&self, user_id: &str, deadline: Instant) -> Result<Routes, String> {
        if self.cache_ttl.is_zero() {
            return self.read_routes(user_id, deadline).await;
        }
        if let Some((at, routes)) = lock(&self.cache).get(user_id) {
            if at.elapsed() < self.cache_ttl {
                return Ok(routes.clone());
            }
        }
        let routes = self.read_routes(user_id, deadline).await?;
        let mut cache = lock(&self.cache);
        if routes.is_empty() {
            cache.remove(user_id);
        } else {
            if cache.len() >= MAX_CACHED_USERS {
                cache.clear();
            }
            cache.insert(user_id.to_owned(), (Instant::now(), routes.clone()));
        }
        Ok(routes)
    }

    /// Updates the cached routes of `user_id` with what the push learned: a route that ended
    /// offline (or failed) is forgotten, a route re-read after a router change is kept as
    /// re-read.
    fn remember_outcome(&self, user_id: &str, pushed: &[RoutePush]) {
        let mut cache = lock(&self.cache);
        let Some((_, routes)) = cache.get_mut(user_id) else {
            return;
        };
        for push in pushed {
            let Some(entry) = routes
                .iter_mut()
                .find(|(code, _)| *code == push.client_type)
            else {
                continue;
            };
            match (&push.result.status, &push.route) {
                (status, Some(route)) if status.is_success() => entry.1 = route.clone(),
                _ => entry.1.conn_id = None,
            }
        }
        routes.retain(|(_, route)| route.is_online());
        if routes.is_empty() {
            cache.remove(user_id);
        }
    }

    /// The user's routes by client type code (at most [`MAX_ROUTES_PER_USER`]).
    async fn read_routes(
        &self,
        user_id: &str,
        deadline: Instant,
    ) -> Result<Vec<(i32, RouteRecord)>, String> {
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg(keys::user_routes(user_id));
        let fields: HashMap<String, String> = self.redis.query(&hgetall, left(deadline)).await?;
        let mut routes: Vec<(i32, RouteRecord)> = fields
            .into_iter()
            .filter_map(|(field, value)| {
                let code = field.trim().parse::<i32>().ok()?;
                Some((code, ops::parse_route(&value)?))
            })
            .collect();
        routes.sort_by_key(|(code, _)| *code);
        routes.truncate(MAX_ROUTES_PER_USER);
        Ok(routes)
    }

    /// One route's current record.
    async fn read_route(
        &self,
        user_id: &str,
        code: i32,
        deadline: Instant,
    ) -> Result<Option<RouteRecord>, String> {
        let mut hget = redis::cmd("HGET");
        hget.arg(keys::user_routes(user_id)).arg(code.to_string());
        let value: Option<String> = self.redis.query(&hget, left(deadline)).await?;
        Ok(value.and_then(|v| ops::parse_route(&v)))
    }

    /// Pushes to one route, following router changes, until `deadline`.
    async fn push_route(
        &self,
        req: &SinglePushRequest,
        code: i32,
        mut route: RouteRecord,
        deadline: Instant,
    ) -> RoutePush {
        let mut rereads = 0;
        loop {
            let gateway = format!("{}:{}", route.host, route.port);
            let result = self.push_once(req, code, &route, deadline).await;
            let done = |result: PushResult, rereads| RoutePush {
                client_type: code,
                gateway: gateway.clone(),
                rereads,
                result,
                route: Some(route.clone()),
            };
            if result.status != PushStatus::RouterChange || rereads >= self.max_rereads {
                return done(result, rereads);
            }
            rereads += 1;
            match self.read_route(&req.user_id, code, deadline).await {
                Ok(Some(next)) if next.is_online() => {
                    tracing::debug!(user = %req.user_id, client_type = code, from = %gateway, to = %format!("{}:{}", next.host, next.port), "router change: pushing again");
                    route = next;
                }
                Ok(_) => {
                    let result = PushResult {
                        status: PushStatus::Offline,
                        reason: Some("router change, and the route is offline now".into()),
                        ..result
                    };
                    return done(result, rereads);
                }
                Err(reason) => {
                    let status = if Instant::now() >= deadline {
                        PushStatus::Timeout
                    } else {
                        PushStatus::Failure
                    };
                    let result = failed(
                        status,
                        format!("router change, and re-reading the route failed: {reason}"),
                        &req.user_id,
                    );
                    return done(result, rereads);
                }
            }
        }
    }

    /// One GATEWAY_PUSH to the route's gateway with the time left.
    async fn push_once(
        &self,
        req: &SinglePushRequest,
        code: i32,
        route: &RouteRecord,
        deadline: Instant,
    ) -> PushResult {
        let budget = left(deadline);
        if budget.is_zero() {
            return failed(
                PushStatus::Timeout,
                "no time left for this route".into(),
                &req.user_id,
            );
        }
        let mut one = req.clone();
        one.client_type = Some(code);
        one.timeout_ms = budget.as_millis().max(1) as u64;
        let outcome = tokio::time::timeout(budget, async {
            let client = self.gateway(&route.host, route.port, deadline).await?;
            client.push(one).await.map_err(|e| e.to_string())
        })
        .await;
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(reason)) => failed(
                PushStatus::Failure,
                format!("gateway {}:{}: {reason}", route.host, route.port),
                &req.user_id,
            ),
            Err(_) => failed(
                PushStatus::Timeout,
                format!(
                    "no answer from the gateway {}:{} within the timeout",
                    route.host, route.port
                ),
                &req.user_id,
            ),
        }
    }

    /// The pooled client of a gateway, connected within the time left.
    async fn gateway(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Arc<PushClient>, String> {
        let addr = resolve(host, port, deadline).await?;
        if let Some(client) = lock(&self.gateways).get(&addr) {
            return Ok(client.clone());
        }
        let options = PushClientOptions {
            connect_timeout_ms: left(deadline).as_millis().max(1) as u64,
            token: self.token.clone(),
            ..PushClientOptions::default()
        };
        let tls = self.tls.as_ref().map(|tls| tls.for_host(host));
        let client = PushClient::connect_with_tls(addr, options, tls)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let client = Arc::new(client);
        let mut pool = lock(&self.gateways);
        if pool.len() >= MAX_GATEWAYS && !pool.contains_key(&addr) {
            for (_, old) in pool.drain() {
                old.close();
            }
        }
        Ok(pool.entry(addr).or_insert(client).clone())
    }
}

/// The socket address of a route's gateway (a name is looked up within the time left).
async fn resolve(host: &str, port: u16, deadline: Instant) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let found = tokio::time::timeout(left(deadline), tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("looking up {host} timed out"))?
        .map_err(|e| format!("looking up {host}: {e}"))?
        .next();
    found.ok_or_else(|| format!("{host} has no address"))
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_outrank_failures_and_timeouts_outrank_offline() {
        let mut all = PushStatus::ALL.to_vec();
        all.sort_by_key(|s| std::cmp::Reverse(rank(*s)));
        assert_eq!(
            all,
            vec![
                PushStatus::AckSuccess,
                PushStatus::Success,
                PushStatus::Timeout,
                PushStatus::Failure,
                PushStatus::RouterChange,
                PushStatus::Offline,
            ]
        );
    }
}
