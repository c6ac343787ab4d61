//! [`PushClient`]: MPush's `PushClient` (the "server SDK") in Rust: sends GATEWAY_PUSH requests
//! to a gateway port and reads the OK / ERROR answers (reference §11).
//!
//! Many pushes are in flight on one connection at once, correlated by the packet sessionId (a
//! per-connection counter). No handshake, encryption or heartbeat on gateway links; every
//! request is sent raw (never compressed).
//!
//! A single push ends in one [`PushStatus`]: OK → success (ack-success when the request asked
//! for an ACK), ERROR 1 → offline, ERROR 3 → router change, ERROR 2 → failure, or timeout when
//! its reason says so (pushgate reports timeouts as ERROR 2 "push timeout" / "ack timeout",
//! see [`pushgate_core::status`]); no answer within the request's timeout → timeout too.
//! On router change, a [`RouteResolver`] (if given) names the gateway that now holds the user
//! and the push is sent there, at most `max_redirects` times, each with the full timeout (as
//! MPush re-sends once per redirect).
use super::tls::{ClientIo, GatewayTls};
use super::{
    connect_tcp, lock, read_frame, run_writer, take_pending, ClientError, Outbound, Pending,
    CLIENT_MAX_BODY_BYTES,
};
use bytes::{Bytes, BytesMut};
use pushgate_core::command::{Command, PUSHGATE_GATEWAY_AUTH};
use pushgate_core::frame::{Flags, Frame, FrameDecoder, Packet};
use pushgate_core::message::{Body, ErrorMessage, GatewayPush, OkMessage};
use pushgate_core::pipeline::raw_packet;
use pushgate_core::push::AckMode;
use pushgate_core::status::{status_of_reply, PushStatus};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// MPush PushClient's default request timeout.
pub const DEFAULT_PUSH_TIMEOUT_MS: u64 = 3000;
/// How many times a push follows a router change by default.
pub const DEFAULT_MAX_REDIRECTS: usize = 2;

/// Finds the gateway that holds a user's connection now (after a router change). MPush's
/// PushClient reads the route from Redis; implement this over whatever knows the routes.
pub trait RouteResolver: Send + Sync {
    /// The gateway address of `user_id`'s connection of `client_type` (`None`: any type), or
    /// `None` when the user has no route (the push then ends offline).
    fn resolve(&self, user_id: &str, client_type: Option<i32>) -> Option<SocketAddr>;
}

/// How a [`PushClient`] behaves.
#[derive(Clone)]
pub struct PushClientOptions {
    /// Follows router changes when given; without one a router change is the push's status.
    pub resolver: Option<Arc<dyn RouteResolver>>,
    /// Most router changes one push follows.
    pub max_redirects: usize,
    /// Time for a TCP connection to a gateway to be established.
    pub connect_timeout_ms: u64,
    /// The gateway token (`security.gateway_tokens` of the nodes), sent as the first frame of
    /// every gateway connection (pushgate's extension; MPush's gateway answers it with an
    /// ERROR this client ignores). `None`: no token, as MPush's Java PushClient.
    pub token: Option<String>,
}

impl Default for PushClientOptions {
    fn default() -> Self {
        Self {
            resolver: None,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            connect_timeout_ms: DEFAULT_PUSH_TIMEOUT_MS,
            token: None,
        }
    }
}

impl fmt::Debug for PushClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushClientOptions")
            .field("resolver", &self.resolver.is_some())
            .field("max_redirects", &self.max_redirects)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// A push to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinglePushRequest {
    pub user_id: String,
    /// The route's client type (1 mobile, 2 PC, 3 web, -1 unknown); `None` (sent as 0): any.
    pub client_type: Option<i32>,
    pub content: Bytes,
    pub ack: AckMode,
    /// How long the caller waits (0: [`DEFAULT_PUSH_TIMEOUT_MS`]); the gateway is given 500 ms
    /// less (see [`gateway_timeout_ms`]).
    pub timeout_ms: u64,
}

impl SinglePushRequest {
    /// A push of `content` to `user_id`: any client type, no ACK, 3000 ms.
    pub fn new(user_id: impl Into<String>, content: impl Into<Bytes>) -> Self {
        Self {
            user_id: user_id.into(),
            client_type: None,
            content: content.into(),
            ack: AckMode::None,
            timeout_ms: DEFAULT_PUSH_TIMEOUT_MS,
        }
    }
}

/// A push to every matching connection of the gateway's node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BroadcastRequest {
    pub content: Bytes,
    /// Only connections bound with one of these tags (empty: no tag filter).
    pub tags: Vec<String>,
    /// A condition expression over userId, tags, clientVersion, osName, osVersion.
    pub condition: Option<String>,
    /// With a task id the gateway takes flow control and progress from the store, and this
    /// client reports success as soon as the request is written (as MPush's does).
    pub task_id: Option<String>,
    /// How long to wait for the gateway's finishing OK (0: [`DEFAULT_PUSH_TIMEOUT_MS`]).
    pub timeout_ms: u64,
}

impl BroadcastRequest {
    /// A broadcast of `content` to every bound connection, 3000 ms.
    pub fn new(content: impl Into<Bytes>) -> Self {
        Self {
            content: content.into(),
            timeout_ms: DEFAULT_PUSH_TIMEOUT_MS,
            ..Self::default()
        }
    }
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResult {
    pub status: PushStatus,
    /// The gateway's reason text for errors, or why the client gave up.
    pub reason: Option<String>,
    /// The user the gateway reported (the request's when the reply names none; empty for
    /// broadcasts).
    pub user_id: String,
    /// The client type the gateway reported (omitted by it when not a real type).
    pub client_type: Option<i32>,
    /// The reply's time line: (point name, epoch ms), in order.
    pub time_points: Vec<(String, i64)>,
    /// The gateway's answer as received (`None` on a client-side timeout or a task broadcast).
    pub raw_reply: Option<Packet>,
}

impl PushResult {
    fn without_reply(status: PushStatus, reason: Option<String>, user_id: &str) -> Self {
        Self {
            status,
            reason,
            user_id: user_id.to_owned(),
            client_type: None,
            time_points: Vec::new(),
            raw_reply: None,
        }
    }
}

/// The GATEWAY_PUSH `timeout` field for a request timeout: MPush gives the gateway 500 ms
/// less than it waits itself; a timeout of 500 ms or less gives it half (at least 1).
pub fn gateway_timeout_ms(timeout_ms: u64) -> i32 {
    let gateway = if timeout_ms > 500 {
        timeout_ms - 500
    } else {
        (timeout_ms / 2).max(1)
    };
    i32::try_from(gateway).unwrap_or(i32::MAX)
}

/// What a result's `data` JSON carries: `{"clientType":1,"timePoints":["name",ms,...],
/// "userId":"u"}` (every member optional; anything unreadable is left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultData {
    pub user_id: Option<String>,
    pub client_type: Option<i32>,
    pub time_points: Vec<(String, i64)>,
}

/// Parses a gateway result's `data` JSON (tolerant: empty or malformed data gives nothing).
pub fn parse_result_data(data: &str) -> ResultData {
    let mut out = ResultData::default();
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(data) else {
        return out;
    };
    out.user_id = map
        .get("userId")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    out.client_type = map
        .get("clientType")
        .and_then(serde_json::Value::as_i64)
        .and_then(|c| i32::try_from(c).ok());
    if let Some(points) = map.get("timePoints").and_then(serde_json::Value::as_array) {
        out.time_points = points
            .chunks_exact(2)
            .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_i64()?)))
            .collect();
    }
    out
}

/// Reads a gateway answer to a push made with `ack`: status, reason and the data text.
fn interpret_reply(
    reply: &Packet,
    ack: AckMode,
) -> Result<(PushStatus, Option<String>, String), ClientError> {
    if reply.cmd == Command::Ok.code() {
        let ok = OkMessage::decode(&reply.body)
            .map_err(|e| ClientError::Protocol(format!("gateway OK body: {e}")))?;
        let mut status = status_of_reply(reply.cmd, ok.code, "");
        if status == PushStatus::Success && ack.needs_ack() {
            status = PushStatus::AckSuccess;
        }
        Ok((status, None, ok.data))
    } else if reply.cmd == Command::Error.code() {
        let error = ErrorMessage::decode(&reply.body)
            .map_err(|e| ClientError::Protocol(format!("gateway ERROR body: {e}")))?;
        let status = status_of_reply(reply.cmd, error.code, &error.reason);
        let reason = (!error.reason.is_empty()).then_some(error.reason);
        Ok((status, reason, error.data))
    } else {
        Err(ClientError::Protocol(format!(
            "unexpected gateway answer cmd {}",
            reply.cmd
        )))
    }
}

/// The result of a single push from the gateway's answer.
fn single_result(reply: Packet, req: &SinglePushRequest) -> Result<PushResult, ClientError> {
    let (status, reason, data) = interpret_reply(&reply, req.ack)?;
    let data = parse_result_data(&data);
    Ok(PushResult {
        status,
        reason,
        user_id: data.user_id.unwrap_or_else(|| req.user_id.clone()),
        client_type: data.client_type,
        time_points: data.time_points,
        raw_reply: Some(reply),
    })
}

fn timeout_reason(timeout: Duration) -> Option<String> {
    Some(format!(
        "no answer from the gateway within {} ms",
        timeout.as_millis()
    ))
}

/// One TCP connection to a gateway.
struct GatewayConn {
    tx: mpsc::UnboundedSender<Outbound>,
    pending: Pending,
    next_id: AtomicI32,
    closed: Arc<AtomicBool>,
    /// The gateway's refusal of the token, if it sent one.
    refused: Arc<Mutex<Option<ClientError>>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl GatewayConn {
    async fn open(
        addr: SocketAddr,
        connect_timeout: Duration,
        token: Option<&str>,
        tls: Option<&GatewayTls>,
    ) -> Result<Self, ClientError> {
        let started = tokio::time::Instant::now();
        let tcp = connect_tcp(addr, connect_timeout).await?;
        let stream: Box<dyn ClientIo> = match tls {
            Some(tls) => {
                let left = connect_timeout.saturating_sub(started.elapsed());
                tokio::time::timeout(left, tls.connect(tcp, addr))
                    .await
                    .map_err(|_| ClientError::Timeout)??
            }
            None => Box::new(tcp),
        };
        let (read_half, write_half) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(token) = token {
            // First on the link: the writer keeps the order of what is queued.
            let auth = Packet::new(
                PUSHGATE_GATEWAY_AUTH,
                Flags(0),
                0,
                Bytes::copy_from_slice(token.as_bytes()),
            );
            let _ = tx.send(Outbound::packet(&auth));
        }
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(Mutex::new(None));
        let writer = tokio::spawn(run_writer(write_half, rx, None, move |error| {
            tracing::debug!(%addr, %error, "gateway link write failed");
        }));
        let reader = tokio::spawn(run_gateway_reader(
            read_half,
            pending.clone(),
            closed.clone(),
            refused.clone(),
            addr,
        ));
        Ok(Self {
            tx,
            pending,
            next_id: AtomicI32::new(1),
            closed,
            refused,
            reader,
            writer,
        })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Why the link closed: the gateway's refusal of the token, or just closed.
    fn closed_error(&self) -> ClientError {
        match &*lock(&self.refused) {
            Some(ClientError::Rejected { cmd, code, reason }) => ClientError::Rejected {
                cmd: *cmd,
                code: *code,
                reason: reason.clone(),
            },
            _ => ClientError::Closed,
        }
    }

    fn next_session_id(&self) -> i32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Sends the packet built for a fresh sessionId and waits for its answer; `Ok(None)` when
    /// none came within `within`.
    async fn request(
        &self,
        build: impl FnOnce(i32) -> Packet,
        within: Duration,
    ) -> Result<Option<Packet>, ClientError> {
        let sid = self.next_session_id();
        let packet = build(sid);
        let (answer_tx, answer) = oneshot::channel();
        lock(&self.pending).insert(sid, answer_tx);
        // Checked after the insert: the reader marks the link closed before it drops waiters.
        if self.is_closed() || self.tx.send(Outbound::packet(&packet)).is_err() {
            take_pending(&self.pending, sid);
            return Err(self.closed_error());
        }
        match tokio::time::timeout(within, answer).await {
            Ok(Ok(reply)) => Ok(Some(reply)),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                take_pending(&self.pending, sid);
                Ok(None)
            }
        }
    }

    /// Sends the packet built for a fresh sessionId and waits until it is written.
    async fn send(
        &self,
        build: impl FnOnce(i32) -> Packet,
        within: Duration,
    ) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let packet = build(self.next_session_id());
        let (written, done) = oneshot::channel();
        self.tx
            .send(Outbound::Bytes {
                bytes: packet.to_bytes(),
                written: Some(written),
            })
            .map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(within, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }
}

impl Drop for GatewayConn {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

async fn run_gateway_reader<R: AsyncRead + Unpin>(
    mut input: R,
    pending: Pending,
    closed: Arc<AtomicBool>,
    refused: Arc<Mutex<Option<ClientError>>>,
    addr: SocketAddr,
) {
    let decoder = FrameDecoder::new(CLIENT_MAX_BODY_BYTES);
    let mut inbound = BytesMut::new();
    loop {
        match read_frame(&mut input, &mut inbound, &decoder).await {
            Ok(Frame::Packet(packet))
                if packet.session_id == 0 && packet.cmd == Command::Error.code() =>
            {
                // The answer to the token frame: a pushgate gateway that refuses it closes
                // the link; MPush's gateway (no such command) answers 101 and goes on.
                match ErrorMessage::decode(&packet.body) {
                    Ok(error) if error.cmd == PUSHGATE_GATEWAY_AUTH && error.code != 101 => {
                        tracing::warn!(%addr, reason = %error.reason, "gateway refused the token");
                        *lock(&refused) = Some(ClientError::Rejected {
                            cmd: error.cmd,
                            code: error.code,
                            reason: error.reason,
                        });
                    }
                    _ => tracing::debug!(%addr, "gateway does not know the token frame"),
                }
            }
            Ok(Frame::Packet(packet)) => match take_pending(&pending, packet.session_id) {
                Some(waiter) => {
                    let _ = waiter.send(packet);
                }
                None => {
                    // A late answer (its request timed out) or a task broadcast's finishing OK.
                    tracing::debug!(%addr, cmd = packet.cmd, sid = packet.session_id, "unclaimed gateway answer");
                }
            },
            Ok(Frame::Heartbeat) => {}
            Err(error) => {
                if !matches!(error, ClientError::Closed) {
                    tracing::debug!(%addr, %error, "gateway link failed");
                }
                break;
            }
        }
    }
    closed.store(true, Ordering::SeqCst);
    lock(&pending).clear();
}

/// A PushClient: pushes through a gateway, following router changes with a resolver.
///
/// Connections are kept per gateway address and reopened on the next push after one closed.
/// A request in flight when its connection closes fails with [`ClientError::Closed`].
pub struct PushClient {
    gateway: SocketAddr,
    options: PushClientOptions,
    /// TLS on every gateway link (`None`: plain TCP, as MPush's PushClient).
    tls: Option<Arc<GatewayTls>>,
    conns: Mutex<HashMap<SocketAddr, Arc<GatewayConn>>>,
}

impl fmt::Debug for PushClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushClient")
            .field("gateway", &self.gateway)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PushClient {
    /// Connects to a gateway port with the default options (no resolver).
    pub async fn connect(gateway: SocketAddr) -> Result<Self, ClientError> {
        Self::connect_with(gateway, PushClientOptions::default()).await
    }

    /// Connects to a gateway port.
    pub async fn connect_with(
        gateway: SocketAddr,
        options: PushClientOptions,
    ) -> Result<Self, ClientError> {
        Self::connect_with_tls(gateway, options, None).await
    }

    /// Connects to a gateway port that serves TLS (`--gateway-tls`) with `tls`, or plain TCP
    /// when `None`; every link it opens later (router changes) uses the same.
    pub async fn connect_with_tls(
        gateway: SocketAddr,
        options: PushClientOptions,
        tls: Option<Arc<GatewayTls>>,
    ) -> Result<Self, ClientError> {
        let client = Self {
            gateway,
            options,
            tls,
            conns: Mutex::new(HashMap::new()),
        };
        client.conn(gateway).await?;
        Ok(client)
    }

    /// The gateway given to `connect`.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway
    }

    /// Pushes to one user and waits for the outcome. A missing answer is
    /// [`PushStatus::Timeout`]; `Err` only for a broken connection or an unreadable answer.
    pub async fn push(&self, req: SinglePushRequest) -> Result<PushResult, ClientError> {
        let timeout_ms = effective_timeout(req.timeout_ms);
        let mut addr = self.gateway;
        let mut redirects = 0;
        loop {
            let result = self.push_once(addr, &req, timeout_ms).await?;
            if result.status != PushStatus::RouterChange {
                return Ok(result);
            }
            let Some(resolver) = &self.options.resolver else {
                return Ok(result);
            };
            if redirects >= self.options.max_redirects {
                return Ok(result);
            }
            redirects += 1;
            let client_type = req.client_type.or(result.client_type);
            match resolver.resolve(&req.user_id, client_type) {
                Some(next) => {
                    tracing::debug!(user = %req.user_id, from = %addr, to = %next, "router change: pushing again");
                    addr = next;
                }
                None => {
                    // MPush re-reads the route; no route means the user is offline.
                    return Ok(PushResult {
                        status: PushStatus::Offline,
                        reason: Some("router change, and the user has no route".into()),
                        ..result
                    });
                }
            }
        }
    }

    /// Broadcasts to every matching connection of the gateway's node. Without a task id it
    /// waits for the gateway's finishing OK (or ERROR); with one it returns success once the
    /// request is written.
    pub async fn broadcast(&self, req: BroadcastRequest) -> Result<PushResult, ClientError> {
        let timeout = Duration::from_millis(effective_timeout(req.timeout_ms));
        let mut message = GatewayPush {
            user_id: String::new(),
            client_type: 0,
            timeout_ms: 0,
            content: req.content,
            task_id: req.task_id.clone().unwrap_or_default(),
            tags: String::new(),
            condition: req.condition.unwrap_or_default(),
        };
        message.set_tags(&req.tags);
        let build = |sid| raw_packet(Command::GatewayPush.code(), Flags::NONE, sid, &message);
        let conn = self.conn(self.gateway).await?;
        if req.task_id.is_some() {
            conn.send(build, timeout).await?;
            return Ok(PushResult::without_reply(PushStatus::Success, None, ""));
        }
        let Some(reply) = conn.request(build, timeout).await? else {
            return Ok(PushResult::without_reply(
                PushStatus::Timeout,
                timeout_reason(timeout),
                "",
            ));
        };
        let (status, reason, _) = interpret_reply(&reply, AckMode::None)?;
        Ok(PushResult {
            status,
            reason,
            user_id: String::new(),
            client_type: None,
            time_points: Vec::new(),
            raw_reply: Some(reply),
        })
    }

    /// Closes every gateway connection (pushes in flight fail with `Closed`).
    pub fn close(&self) {
        lock(&self.conns).clear();
    }

    async fn push_once(
        &self,
        addr: SocketAddr,
        req: &SinglePushRequest,
        timeout_ms: u64,
    ) -> Result<PushResult, ClientError> {
        let message = GatewayPush {
            user_id: req.user_id.clone(),
            client_type: req.client_type.unwrap_or(0),
            timeout_ms: gateway_timeout_ms(timeout_ms),
            content: req.content.clone(),
            ..GatewayPush::default()
        };
        let flags = req.ack.flags();
        let timeout = Duration::from_millis(timeout_ms);
        let conn = self.conn(addr).await?;
        let reply = conn
            .request(
                |sid| raw_packet(Command::GatewayPush.code(), flags, sid, &message),
                timeout,
            )
            .await?;
        match reply {
            Some(reply) => single_result(reply, req),
            None => Ok(PushResult::without_reply(
                PushStatus::Timeout,
                timeout_reason(timeout),
                &req.user_id,
            )),
        }
    }

    /// The live connection to `addr`, opened if needed.
    async fn conn(&self, addr: SocketAddr) -> Result<Arc<GatewayConn>, ClientError> {
        if let Some(conn) = lock(&self.conns).get(&addr) {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
            // A gateway that refused this client's token refuses it again: say so.
            if let error @ ClientError::Rejected { .. } = conn.closed_error() {
                return Err(error);
            }
        }
        let fresh = Arc::new(
            GatewayConn::open(
                addr,
                Duration::from_millis(self.options.connect_timeout_ms),
                self.options.token.as_deref(),
                self.tls.as_deref(),
            )
            .await?,
        );
        let mut conns = lock(&self.conns);
        match conns.get(&addr) {
            // Another push connected meanwhile: use that one.
            Some(existing) if !existing.is_closed() => Ok(existing.clone()),
            _ => {
                conns.insert(addr, fresh.clone());
                Ok(fresh)
            }
        }
    }
}

fn effective_timeout(timeout_ms: u64) -> u64 {
    if timeout_ms == 0 {
        DEFAULT_PUSH_TIMEOUT_MS
    } else {
        timeout_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushgate_core::route::ClientType;
    use pushgate_core::status::{broadcast_reply, result_json, single_reply, TimeLine};

    #[test]
    fn gateway_timeout_field() {
        assert_eq!(gateway_timeout_ms(3000), 2500);
        assert_eq!(gateway_timeout_ms(5000), 4500);
        assert_eq!(gateway_timeout_ms(501), 1);
        assert_eq!(gateway_timeout_ms(500), 250);
        assert_eq!(gateway_timeout_ms(100), 50);
        assert_eq!(gateway_timeout_ms(1), 1);
        assert_eq!(gateway_timeout_ms(0), 1);
        assert_eq!(gateway_timeout_ms(u64::MAX), i32::MAX);
    }

    #[test]
    fn result_data_json() {
        let data = parse_result_data(
            r#"{"clientType":1,"timePoints":["push-center-begin",1795553844669,"before-send",1795553844669,"success-end",1795553844671],"userId":"user-1"}"#,
        );
        assert_eq!(data.user_id.as_deref(), Some("user-1"));
        assert_eq!(data.client_type, Some(1));
        assert_eq!(
            data.time_points,
            vec![
                ("push-center-begin".to_owned(), 1795553844669),
                ("before-send".to_owned(), 1795553844669),
                ("success-end".to_owned(), 1795553844671),
            ]
        );
        let no_type = parse_result_data(r#"{"timePoints":[],"userId":"u"}"#);
        assert_eq!(
            no_type,
            ResultData {
                user_id: Some("u".into()),
                ..ResultData::default()
            }
        );
        assert_eq!(parse_result_data(""), ResultData::default());
        assert_eq!(parse_result_data("not json"), ResultData::default());
        assert_eq!(parse_result_data("[1,2]"), ResultData::default());
        // An odd or mistyped time line keeps what it can.
        let odd = parse_result_data(r#"{"timePoints":["a",1,2,"b","c"]}"#);
        assert_eq!(odd.time_points, vec![("a".to_owned(), 1)]);
    }

    fn request(ack: AckMode) -> SinglePushRequest {
        SinglePushRequest {
            ack,
            ..SinglePushRequest::new("user-1", "hello")
        }
    }

    #[test]
    fn replies_become_results() {
        let mut timeline = TimeLine::begin(10);
        timeline.add("success-end", 12);
        let data = result_json("user-1", Some(ClientType::Mobile), &timeline);
        let ok = single_reply(5, PushStatus::Success, None, data.clone());

        let plain = single_result(ok.clone(), &request(AckMode::None)).unwrap();
        assert_eq!(plain.status, PushStatus::Success);
        assert_eq!(plain.client_type, Some(1));
        assert_eq!(plain.time_points.len(), 2);
        assert_eq!(plain.reason, None);
        assert_eq!(plain.raw_reply.as_ref(), Some(&ok));
        for ack in [AckMode::Auto, AckMode::Biz] {
            let acked = single_result(ok.clone(), &request(ack)).unwrap();
            assert_eq!(acked.status, PushStatus::AckSuccess, "{ack:?}");
        }

        let offline = single_reply(5, PushStatus::Offline, None, data.clone());
        let r = single_result(offline, &request(AckMode::Auto)).unwrap();
        assert_eq!(
            (r.status, r.reason.as_deref()),
            (PushStatus::Offline, Some("user offline"))
        );
        let timeout = single_reply(5, PushStatus::Timeout, Some("ack timeout"), data.clone());
        let r = single_result(timeout, &request(AckMode::Biz)).unwrap();
        assert_eq!(r.status, PushStatus::Timeout);
        let failure = single_reply(5, PushStatus::Failure, None, data.clone());
        assert_eq!(
            single_result(failure, &request(AckMode::None))
                .unwrap()
                .status,
            PushStatus::Failure
        );
        let moved = single_reply(5, PushStatus::RouterChange, None, data);
        assert_eq!(
            single_result(moved, &request(AckMode::None))
                .unwrap()
                .status,
            PushStatus::RouterChange
        );
        // A reply naming no user keeps the request's.
        let bare = broadcast_reply(5, None);
        let r = single_result(bare, &request(AckMode::None)).unwrap();
        assert_eq!(
            (r.status, r.user_id.as_str()),
            (PushStatus::Success, "user-1")
        );
        // Anything but OK/ERROR is a protocol error.
        let odd = Packet::new(Command::Push.code(), Flags::NONE, 5, Bytes::new());
        assert!(matches!(
            single_result(odd, &request(AckMode::None)),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn broadcast_failure_reason_is_kept() {
        let reply = broadcast_reply(9, Some("bad condition: x"));
        let (status, reason, _) = interpret_reply(&reply, AckMode::None).unwrap();
        assert_eq!(
            (status, reason.as_deref()),
            (PushStatus::Failure, Some("bad condition: x"))
        );
    }

    #[test]
    fn gateway_push_wire_form() {
        // What `push_once` sends for a 3000 ms AUTO_ACK push with no client type.
        let message = GatewayPush {
            user_id: "u".into(),
            client_type: 0,
            timeout_ms: gateway_timeout_ms(3000),
            content: Bytes::from_static(b"hi"),
            ..GatewayPush::default()
        };
        let packet = raw_packet(
            Command::GatewayPush.code(),
            AckMode::Auto.flags(),
            7,
            &message,
        );
        assert_eq!(packet.flags, Flags::AUTO_ACK);
        let back = GatewayPush::decode(&packet.body).unwrap();
        assert_eq!(back, message);
        assert_eq!(back.timeout_ms, 2500);
    }
}
