//! The HTTP admin API (JSON), on the admin port (loopback by default):
//!
//! - `POST /v1/push` — a single push (`userId`, optional `clientType`, `content`, `ack`,
//!   `timeoutMs`) or a broadcast (`broadcast: true` with optional `tags`, `condition`,
//!   `userIds`, `clientType`, `taskId`); answers with the terminal status and its time line.
//!   On Redis, a single push this node answers router-change for is sent on through the
//!   cluster PushClient to the node(s) holding the user's routes, within what is left of the
//!   push's timeout, and the final status is answered. A broadcast with `cluster: true` goes
//!   to every node of the cluster through the cluster PushClient (Redis registry, and the
//!   gateways registered in ZooKeeper) and answers once for all of them.
//! - `GET /v1/nodes` — the live nodes of the node registry (this node alone without Redis);
//!   with ZooKeeper also `zookeeper`: this node's registration and the servers registered there.
//! - `GET /v1/alloc` (and `GET /`, the path of MPush's alloc service) — MPush's alloc answer:
//!   `host:port,…` of the connection servers, least loaded first ([`crate::alloc`]); also
//!   served alone on `net.alloc_port` by [`serve_alloc`].
//! - `GET /v1/users/{id}` — the user's routes (local and in the store);
//!   `DELETE /v1/users/{id}` — kick the user's local connections (`?clientType=N` for one type).
//! - `GET /v1/stats` — connections, bound routes, pushes by status.
//! - `GET /v1/limits` — every limit with its configuration key, value and hits so far.
//! - `GET /healthz`, `GET /metrics` (Prometheus text), `GET /v1/public-key`.
//!
//! With `security.admin_tokens` set, every route but `/healthz` needs
//! `Authorization: Bearer TOKEN` (any configured token, compared in constant time); without it
//! the answer is 401 with a JSON body saying what is missing.
use crate::client::cluster::ClusterPushResult;
use crate::client::SinglePushRequest;
use crate::cluster::ClusterNode;
use crate::driver::{NodeHandle, PushOutcome};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use pushgate_core::condition::Condition;
use pushgate_core::push::{AckMode, Broadcast, BroadcastFilter, PushRequest, SinglePush};
use pushgate_core::route::ClientType;
use pushgate_core::status::Reason;
use pushgate_core::PushStatus;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

#[derive(Clone)]
struct AppState {
    node: NodeHandle,
    metrics: crate::metrics::PrometheusHandle,
    api: Arc<ApiConfig>,
    cluster: Arc<ClusterNode>,
}

/// What the admin API answers with and how it bounds pushes.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Accepted bearer tokens (empty: no token needed).
    pub tokens: crate::access::TokenSet,
    /// Where limit hits are counted.
    pub counters: Arc<crate::limits::LimitCounters>,
    /// Each limit's configured value (`GET /v1/limits`).
    pub limits: Vec<(crate::limits::Limit, serde_json::Value)>,
    /// `GET /v1/public-key`.
    pub public_key: String,
    /// A push without `timeoutMs` waits this long (core.default_push_timeout_ms)...
    pub default_push_timeout_ms: u64,
    /// ...and none waits longer than this (core.max_push_timeout_ms).
    pub max_push_timeout_ms: u64,
}

/// Serves the admin API on `listener` (plain TCP, or [`crate::tls::TlsListener`]) until the
/// task is aborted.
pub async fn serve<L>(listener: L, node: NodeHandle, api: ApiConfig, cluster: Arc<ClusterNode>)
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    let state = AppState {
        node,
        metrics: crate::metrics::install(),
        api: Arc::new(api),
        cluster,
    };
    if let Err(error) = axum::serve(listener, router(state)).await {
        tracing::error!(%error, "admin HTTP server stopped");
    }
}

fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/v1/push", post(push))
        .route("/v1/users/{id}", get(user).delete(kick))
        .route("/v1/stats", get(stats))
        .route("/v1/limits", get(limits))
        .route("/v1/nodes", get(nodes))
        .route("/v1/alloc", get(alloc))
        .route("/", get(alloc))
        .route("/v1/public-key", get(public_key))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .merge(guarded)
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// Lets a request through when no token is configured or it carries one of them.
async fn require_token(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let tokens = &state.api.tokens;
    if tokens.is_empty() {
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let message = match header.map(crate::access::bearer_token) {
        None => {
            "missing bearer token: send Authorization: Bearer TOKEN (one of security.admin_tokens)"
        }
        Some(None) => "malformed Authorization header: expected Bearer TOKEN",
        Some(Some(token)) if tokens.accepts(token) => return next.run(request).await,
        Some(Some(_)) => "bearer token not accepted",
    };
    state.api.counters.hit(
        crate::limits::Limit::AdminAuth,
        &format_args!("{} {}: {message}", request.method(), request.uri().path()),
    );
    (
        StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": message })),
    )
        .into_response()
}

async fn limits(State(state): State<AppState>) -> Response {
    let Ok(stats) = state.node.stats().await else {
        return unavailable();
    };
    let counters = &state.api.counters;
    let limits: Vec<serde_json::Value> = state
        .api
        .limits
        .iter()
        .map(|(limit, value)| {
            json!({
                "name": limit.name(),
                "key": limit.key(),
                "value": value,
                "hits": counters.hits(*limit),
            })
        })
        .collect();
    Json(json!({
        "limits": limits,
        "current": {
            "connections": stats.connections,
            "gatewayConnections": stats.gateway_connections,
            "pendingPushes": stats.pending_pushes,
            "inFlight": stats.in_flight,
            "broadcasts": stats.broadcasts,
        },
    }))
    .into_response()
}

/// The body of `POST /v1/push`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushBody {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub client_type: Option<i32>,
    pub content: String,
    #[serde(default)]
    pub ack: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub broadcast: bool,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default)]
    pub user_ids: Option<Vec<String>>,
    #[serde(default)]
    pub task_id: Option<String>,
    /// A broadcast to every node of the cluster (the Redis registry and, with ZooKeeper, every
    /// gateway registered there), not only this node's phones.
    #[serde(default)]
    pub cluster: bool,
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.into() })),
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": "node is not running" })),
    )
        .into_response()
}

/// Turns the JSON body into a push request, or says what is wrong with it.
pub fn push_request(body: PushBody) -> Result<PushRequest, String> {
    let client_type = match body.client_type {
        None | Some(0) => None,
        Some(code) => {
            Some(ClientType::from_code(code).ok_or_else(|| format!("unknown clientType {code}"))?)
        }
    };
    let content = Bytes::from(body.content.into_bytes());
    if body.broadcast {
        let condition = match body
            .condition
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            Some(text) => Some(Condition::parse(text).map_err(|e| e.to_string())?),
            None => None,
        };
        let filter = BroadcastFilter {
            tags: body.tags.filter(|t| !t.is_empty()),
            condition,
            user_ids: body.user_ids.map(|ids| ids.into_iter().collect()),
            client_type,
        };
        return Ok(PushRequest::Broadcast(Broadcast {
            content,
            filter,
            task_id: body.task_id.filter(|t| !t.is_empty()),
        }));
    }
    let user_id = body
        .user_id
        .filter(|u| !u.is_empty())
        .ok_or("userId is required (or set broadcast: true)")?;
    let ack = match body.ack.as_deref().unwrap_or("none") {
        "none" => AckMode::None,
        "auto" => AckMode::Auto,
        "biz" => AckMode::Biz,
        other => return Err(format!("ack must be none, auto or biz, not {other:?}")),
    };
    Ok(PushRequest::Single(SinglePush {
        user_id,
        client_type,
        timeout_ms: body.timeout_ms.unwrap_or(0),
        content,
        ack,
    }))
}

async fn push(State(state): State<AppState>, Json(body): Json<PushBody>) -> Response {
    if body.cluster {
        return cluster_broadcast(&state, body).await;
    }
    let request = match push_request(body) {
        Ok(request) => request,
        Err(message) => return bad_request(message),
    };
    let started = Instant::now();
    let single = match &request {
        PushRequest::Single(single) => Some(single.clone()),
        PushRequest::Broadcast(_) => None,
    };
    let outcome = match state.node.push(request).await {
        Ok(outcome) => outcome,
        Err(_) => return unavailable(),
    };
    match (single, state.cluster.push_client()) {
        (Some(single), Some(client)) if outcome.status == PushStatus::RouterChange => {
            let total = match single.timeout_ms {
                0 => state.api.default_push_timeout_ms,
                t => t.min(state.api.max_push_timeout_ms),
            };
            let deadline = started + Duration::from_millis(total);
            push_response(forward(client, single, deadline, outcome).await)
        }
        _ => push_response(outcome),
    }
}

/// `POST /v1/push` with `broadcast` and `cluster`: through the cluster PushClient to every
/// node, as MPush's PushClient broadcasts (tags, condition and task id only: its gateway
/// request carries no user list or client type); one answer folding every node's.
async fn cluster_broadcast(state: &AppState, body: PushBody) -> Response {
    if !body.broadcast {
        return bad_request("cluster: true is for broadcasts (set broadcast: true)");
    }
    if body.user_ids.is_some() || body.client_type.is_some_and(|c| c != 0) {
        return bad_request(
            "a cluster broadcast takes tags, condition and taskId only (userIds and clientType are not in MPush's gateway request)",
        );
    }
    let Some(client) = state.cluster.push_client() else {
        return bad_request("cluster: true needs the node on Redis (store.redis_url)");
    };
    if let Some(text) = body.condition.as_deref().filter(|c| !c.trim().is_empty()) {
        if let Err(error) = Condition::parse(text) {
            return bad_request(error.to_string());
        }
    }
    let timeout_ms = match body.timeout_ms.unwrap_or(0) {
        0 => state.api.default_push_timeout_ms,
        t => t.min(state.api.max_push_timeout_ms),
    };
    let request = crate::client::BroadcastRequest {
        content: Bytes::from(body.content.into_bytes()),
        tags: body.tags.unwrap_or_default(),
        condition: body.condition.filter(|c| !c.trim().is_empty()),
        task_id: body.task_id.filter(|t| !t.is_empty()),
        timeout_ms,
    };
    let result = client.broadcast(request).await;
    Json(json!({
        "broadcast": true,
        "cluster": true,
        "status": result.status.name(),
        "reason": result.reason,
        "nodes": result.nodes,
    }))
    .into_response()
}

/// Time kept back from a forwarded push for the remote gateway's answer to come back.
const FORWARD_MARGIN_MS: u64 = 100;

/// Sends a push this node answered router-change for to the nodes holding the user's
/// routes; the answer comes by `deadline` (a timeout status otherwise).
async fn forward(
    client: &crate::client::cluster::ClusterPushClient,
    single: SinglePush,
    deadline: Instant,
    local: PushOutcome,
) -> PushOutcome {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return PushOutcome {
            status: PushStatus::Timeout,
            reason: Some("router change, and no time left to follow it".into()),
            cause: None,
            ..local
        };
    }
    // A PushClient gives the gateway 500 ms less than it waits itself; here the remote gateway
    // gets what is left less FORWARD_MARGIN (its answer's way back), and the wait is cut at
    // what is left.
    let left_ms = left.as_millis().max(1) as u64;
    let timeout_ms = if left_ms > 2 * FORWARD_MARGIN_MS {
        left_ms - FORWARD_MARGIN_MS + 500
    } else {
        left_ms
    };
    let request = SinglePushRequest {
        user_id: single.user_id.clone(),
        client_type: single.client_type.map(ClientType::code),
        content: single.content,
        ack: single.ack,
        timeout_ms,
    };
    // A push for one client type goes straight to the route this node's store read named
    // (no second read); a push for any type goes to every route of the user, read afresh.
    let send = async {
        match (single.client_type, local.moved_to.clone()) {
            (Some(client_type), Some(route)) => {
                client
                    .push_to_route(request, client_type.code(), route)
                    .await
            }
            _ => client.push(request).await,
        }
    };
    match tokio::time::timeout(left, send).await {
        Ok(result) => cluster_outcome(result),
        Err(_) => PushOutcome {
            status: PushStatus::Timeout,
            reason: Some(
                "router change, and the node holding the user did not answer in time".into(),
            ),
            cause: None,
            ..local
        },
    }
}

/// The answer of a push forwarded through the cluster PushClient.
fn cluster_outcome(result: ClusterPushResult) -> PushOutcome {
    let route = result.deciding_route();
    PushOutcome {
        status: result.status,
        cause: None,
        reason: result.reason.clone(),
        user_id: result.user_id.clone(),
        client_type: route.and_then(|r| r.result.client_type.or(Some(r.client_type))),
        time_points: route
            .map(|r| {
                r.result
                    .time_points
                    .iter()
                    .flat_map(|(name, at)| [json!(name), json!(at)])
                    .collect()
            })
            .unwrap_or_default(),
        sent: None,
        moved_to: None,
    }
}

/// The alloc answer of `cluster` (503 with the reason when the registry cannot be read).
async fn alloc_answer(cluster: &ClusterNode, node: &NodeHandle) -> Response {
    match cluster.alloc_text(node).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot list the nodes: {error}"),
        )
            .into_response(),
    }
}

async fn alloc(State(state): State<AppState>) -> Response {
    alloc_answer(&state.cluster, &state.node).await
}

/// Serves MPush's alloc query (`GET /`) alone on `listener` until the task is aborted.
pub async fn serve_alloc(listener: TcpListener, node: NodeHandle, cluster: Arc<ClusterNode>) {
    let router = Router::new().route(
        "/",
        get(move || {
            let (node, cluster) = (node.clone(), cluster.clone());
            async move { alloc_answer(&cluster, &node).await }
        }),
    );
    if let Err(error) = axum::serve(listener, router).await {
        tracing::error!(%error, "alloc HTTP server stopped");
    }
}

async fn nodes(State(state): State<AppState>) -> Response {
    match state.cluster.nodes(&state.node).await {
        Ok(nodes) => {
            let mut body = json!({ "nodes": nodes });
            if let Some(member) = state.cluster.zookeeper() {
                body["zookeeper"] = zookeeper_json(member);
            }
            Json(body).into_response()
        }
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("cannot list the nodes: {error}") })),
        )
            .into_response(),
    }
}

/// What this node sees in ZooKeeper: whether it is registered, under which name, and the
/// connection and gateway servers registered there (`host:port`).
fn zookeeper_json(member: &crate::zookeeper::ZkMember) -> serde_json::Value {
    let view = member.view();
    json!({
        "registered": view.registered,
        "nodeId": member.registration().map(|r| r.node_id.clone()),
        "connectServers": view
            .connect_servers
            .iter()
            .map(|s| format!("{}:{}", s.node.public_host(), s.node.port))
            .collect::<Vec<_>>(),
        "gatewayServers": view
            .gateway_servers
            .iter()
            .map(|s| format!("{}:{}", s.node.host, s.node.port))
            .collect::<Vec<_>>(),
    })
}

fn push_response(outcome: PushOutcome) -> Response {
    // The request was handled: the status is in the body. A refused request (for example a
    // busy node) is a failure status too.
    let code = if outcome.status == PushStatus::Failure
        && matches!(outcome.cause, Some(Reason::Busy(_)))
    {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(outcome)).into_response()
}

async fn user(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.node.user(id).await {
        Ok(view) => Json(view).into_response(),
        Err(_) => unavailable(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KickQuery {
    client_type: Option<i32>,
}

async fn kick(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<KickQuery>,
) -> Response {
    let client_type = match query.client_type {
        None | Some(0) => None,
        Some(code) => match ClientType::from_code(code) {
            Some(ct) => Some(ct),
            None => return bad_request(format!("unknown clientType {code}")),
        },
    };
    match state.node.kick(id, client_type).await {
        Ok(kicked) => Json(json!({ "kicked": kicked })).into_response(),
        Err(_) => unavailable(),
    }
}

async fn stats(State(state): State<AppState>) -> Response {
    let Ok(stats) = state.node.stats().await else {
        return unavailable();
    };
    let by_status: serde_json::Map<String, serde_json::Value> = PushStatus::ALL
        .iter()
        .map(|s| (s.name().to_owned(), json!(stats.pushes(*s))))
        .collect();
    Json(json!({
        "connections": stats.connections,
        "gatewayConnections": stats.gateway_connections,
        "boundRoutes": stats.bound_routes,
        "pendingPushes": stats.pending_pushes,
        "broadcasts": stats.broadcasts,
        "inFlight": stats.in_flight,
        "handshakes": stats.handshakes,
        "fastConnects": stats.fast_connects,
        "binds": stats.binds,
        "kicks": stats.kicks,
        "pushes": by_status,
        "broadcastsFinished": {
            "success": stats.broadcasts(PushStatus::Success),
            "failure": stats.broadcasts(PushStatus::Failure),
        },
        "broadcastDeliveries": stats.broadcast_deliveries,
        "flowDelays": stats.flow_delays,
        "decodeErrors": stats.decode_errors,
    }))
    .into_response()
}

async fn public_key(State(state): State<AppState>) -> Response {
    Json(json!({ "publicKey": state.api.public_key })).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> PushBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn push_bodies_become_requests_or_clear_errors() {
        let single = push_request(body(
            json!({"userId": "u", "content": "hi", "ack": "biz", "clientType": 1}),
        ))
        .unwrap();
        let PushRequest::Single(s) = single else {
            panic!("single expected")
        };
        assert_eq!(
            (s.ack, s.client_type),
            (AckMode::Biz, Some(ClientType::Mobile))
        );
        assert!(push_request(body(json!({"content": "hi"})))
            .unwrap_err()
            .contains("userId"));
        assert!(push_request(body(
            json!({"userId": "u", "content": "hi", "ack": "maybe"})
        ))
        .unwrap_err()
        .contains("ack"));
        let err = push_request(body(
            json!({"broadcast": true, "content": "x", "condition": "userId %"}),
        ))
        .unwrap_err();
        assert!(err.contains("condition parse error"), "{err}");
        let b = push_request(body(
            json!({"broadcast": true, "content": "x", "tags": ["a"], "userIds": ["u1"]}),
        ))
        .unwrap();
        let PushRequest::Broadcast(b) = b else {
            panic!("broadcast expected")
        };
        assert_eq!(b.filter.tags, Some(vec!["a".to_owned()]));
        assert!(serde_json::from_value::<PushBody>(json!({"content": "x", "bogus": 1})).is_err());
    }

    #[test]
    fn a_busy_node_answers_503_and_other_failures_200() {
        let outcome = |cause: Option<Reason>| PushOutcome {
            status: PushStatus::Failure,
            reason: cause.as_ref().map(Reason::to_string),
            cause,
            user_id: "u".into(),
            client_type: None,
            time_points: Vec::new(),
            sent: None,
            moved_to: None,
        };
        use pushgate_core::status::Busy;
        for busy in [Busy::PendingPushes, Busy::Broadcasts] {
            let response = push_response(outcome(Some(Reason::Busy(busy))));
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        for other in [
            Some(Reason::ConnectionClosed),
            Some(Reason::ShuttingDown),
            None,
        ] {
            assert_eq!(push_response(outcome(other)).status(), StatusCode::OK);
        }
        // A remote node's text alone is not a cause: only this node's refusals are 503.
        let mut remote = outcome(None);
        remote.reason = Some("server busy: too many pending pushes".into());
        assert_eq!(push_response(remote).status(), StatusCode::OK);
    }
}
