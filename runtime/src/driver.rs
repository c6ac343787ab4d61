//! The node task: owns the sans-IO [`Node`] and the embedded store, and moves inputs in and
//! outputs out. It is the only place where core outputs become effects:
//!
//! - `Transmit`, `Resume` and `Close` go to the phone's connection task, whose
//!   [`pushgate_core::PhoneConn`] compresses and encrypts there (the expensive part runs beside
//!   the socket, not here) and applies the slow-consumer marks.
//! - `Store` is performed on the embedded [`MemoryStore`] and its answer fed straight back.
//! - `GatewayTransmit` goes to the PushClient's connection task.
//! - `Event`s become log lines and metrics, and finish pushes from the local API.
//!
//! The drain contract of the core is kept: after every input the task drains `poll_output`
//! until it is empty, and it sleeps until `poll_timeout` when nothing arrives.
//!
//! Turns interleave: one `handle_timeout` call does a bounded amount of work (a broadcast runs
//! one batch per call), and after each call the task handles what arrived meanwhile (up to
//! [`MAX_MESSAGES_PER_WAKE`]) and yields to the connection tasks before the next, so a single
//! push waits behind at most one broadcast batch, not behind the whole broadcast. Turns that
//! follow each other (a broadcast's batches) run at most once per tick of the runtime's timer
//! (1 ms): meanwhile the connection tasks write the turn's frames and the node takes in the
//! write reports and pushes that come, so with several broadcasts in flight a connection
//! writes several broadcasts' frames at once (`bench/README.md`, run 6: 0.5 instead of 0.85
//! `sendto` per delivery, about twice the deliveries/s with 8 broadcasts to 10,000 phones).
//! Pushes and other messages are handled as they arrive, never held for the tick. The task's
//! busy time and queue depth are published as metrics ([`metrics::NodeLoad`]).
use crate::metrics::{self, NodeLoad};
use crate::phone_queue::{PhoneQueue, ToPhone};
use crate::store::MemoryStore;
use crate::store_net::{FromStore, RemoteStore, StoreLinkEvent};
use pushgate_core::frame::Packet;
use pushgate_core::push::{Origin, PushRequest};
use pushgate_core::route::ClientType;
use pushgate_core::status::{PushStatus, Reason};
use pushgate_core::store::{RouteRecord, StoreError, StoreOp};
use pushgate_core::{
    CloseReason, ConnId, Event, GatewayId, Input, Millis, Node, NodeAddr, NodeStats, OutFrame,
    Output, RequestId,
};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

/// Sees every core [`Event`] a node emits, with the node's address and the time the core was
/// handed (ms since the node task started), before the node task acts on it (the simulator's
/// oracle judges from these). Unset in production: no cost.
pub type EventObserver = Arc<dyn Fn(&NodeAddr, Millis, &Event) + Send + Sync>;

/// Capacity of the channel into the node task; senders wait when it is full (backpressure
/// on the sockets that feed it).
pub const NODE_QUEUE_CAPACITY: usize = 64 * 1024;
/// Most messages handled in one wake-up before timers and the store get their turn.
const MAX_MESSAGES_PER_WAKE: usize = 1024;

/// What a gateway connection task is asked to do.
#[derive(Debug)]
pub enum GatewayCmd {
    Packet(Packet),
    Close,
}

/// The bytes queued for one PushClient, shared by the node task (which adds what it queues)
/// and the connection's task (which takes off what it wrote). A PushClient that does not read
/// its statuses cannot make them grow past `limits.max_gateway_queued_bytes`: the node task
/// stops queueing and tells the connection's task, which drops the connection even while a
/// write is stuck.
#[derive(Debug, Default)]
pub struct GatewayOutbox {
    queued_bytes: AtomicUsize,
    overflowed: AtomicBool,
    overflow: Notify,
}

impl GatewayOutbox {
    /// `bytes` were written to the socket.
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Resolves once the queue passed its limit.
    pub async fn overflowed(&self) {
        let notified = self.overflow.notified();
        if self.overflowed.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Queues `bytes` more unless that passes `max_bytes`; false (and the connection's task
    /// told, once) when it would.
    fn reserve(&self, bytes: usize, max_bytes: usize) -> bool {
        if self.overflowed.load(Ordering::Acquire) {
            return false;
        }
        if self.queued_bytes.load(Ordering::Relaxed) + bytes > max_bytes {
            self.overflowed.store(true, Ordering::Release);
            self.overflow.notify_waiters();
            self.overflow.notify_one();
            return false;
        }
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        true
    }
}

/// The node task's side of a gateway connection.
#[derive(Debug)]
struct GatewayLink {
    tx: mpsc::UnboundedSender<GatewayCmd>,
    outbox: Arc<GatewayOutbox>,
}

/// The outcome of a push made through [`NodeHandle::push`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushOutcome {
    pub status: PushStatus,
    /// Why it did not succeed, as a value (for this node's own pushes; a push answered by
    /// another node has only the `reason` text).
    #[serde(skip)]
    pub cause: Option<Reason>,
    /// The reason text, as the gateway reply carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_type: Option<i32>,
    /// `[name, epoch ms, name, epoch ms, …]` as MPush reports time lines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub time_points: Vec<serde_json::Value>,
    /// For broadcasts: connections the content was sent to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    /// For a router-change: the route the store named (where the user is bound now).
    #[serde(skip)]
    pub moved_to: Option<RouteRecord>,
}

/// A user's routes, local and in the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub user_id: String,
    pub local: Vec<LocalRoute>,
    pub store: Vec<StoreRoute>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRoute {
    pub client_type: i32,
    pub conn: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreRoute {
    pub client_type: i32,
    #[serde(flatten)]
    pub route: RouteRecord,
}

/// Messages into the node task.
#[derive(Debug)]
pub enum NodeMsg {
    /// A phone connection task started.
    PhoneOpened {
        conn: ConnId,
        queue: Arc<PhoneQueue>,
    },
    /// A gateway connection task started.
    GatewayOpened {
        gw: GatewayId,
        tx: mpsc::UnboundedSender<GatewayCmd>,
        outbox: Arc<GatewayOutbox>,
    },
    /// Something a connection task saw.
    Input(Input),
    Push {
        request: PushRequest,
        reply: oneshot::Sender<PushOutcome>,
    },
    Stats {
        reply: oneshot::Sender<NodeStats>,
    },
    User {
        user_id: String,
        reply: oneshot::Sender<UserView>,
    },
    Kick {
        user_id: String,
        client_type: Option<ClientType>,
        reply: oneshot::Sender<usize>,
    },
    /// Answer every pending push, close every phone, then report.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A cloneable handle to the node task.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<NodeMsg>,
}

/// Why [`NodeHandle::try_send`] did not send.
#[derive(Debug)]
pub enum TrySend {
    /// The node's queue is full; the message is given back (boxed: this is the rare path).
    Full(Box<NodeMsg>),
    /// The node task is gone.
    Gone,
}

/// The node task is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is not running")]
pub struct NodeGone;

impl NodeHandle {
    /// A handle and the receiving end of its queue, with room for `capacity` messages.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<NodeMsg>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    /// Sends a message to the node task.
    pub async fn send(&self, msg: NodeMsg) -> Result<(), NodeGone> {
        self.tx.send(msg).await.map_err(|_| NodeGone)
    }

    /// Sends a message to the node task if its queue has room now.
    pub fn try_send(&self, msg: NodeMsg) -> Result<(), TrySend> {
        self.tx.try_send(msg).map_err(|error| match error {
            mpsc::error::TrySendError::Full(msg) => TrySend::Full(Box::new(msg)),
            mpsc::error::TrySendError::Closed(_) => TrySend::Gone,
        })
    }

    /// Pushes and waits for the terminal status.
    pub async fn push(&self, request: PushRequest) -> Result<PushOutcome, NodeGone> {
        let (reply, rx) = oneshot::channel();
        self.send(NodeMsg::Push { request, reply }).await?;
        rx.await.map_err(|_| NodeGone)
    }

    pub async fn stats(&self) -> Result<NodeStats, NodeGone> {
        let (reply, rx) = oneshot::channel();
        self.send(NodeMsg::Stats { reply }).await?;
        rx.await.map_err(|_| NodeGone)
    }

    pub async fn user(&self, user_id: String) -> Result<UserView, NodeGone> {
        let (reply, rx) = oneshot::channel();
        self.send(NodeMsg::User { user_id, reply }).await?;
        rx.await.map_err(|_| NodeGone)
    }

    /// Kicks a user's local connections; returns how many.
    pub async fn kick(
        &self,
        user_id: String,
        client_type: Option<ClientType>,
    ) -> Result<usize, NodeGone> {
        let (reply, rx) = oneshot::channel();
        self.send(NodeMsg::Kick {
            user_id,
            client_type,
            reply,
        })
        .await?;
        rx.await.map_err(|_| NodeGone)
    }
}

/// What the node task watches itself with, and the limits it enforces and counts.
#[derive(Debug, Clone)]
pub struct QueueLimits {
    /// Handling one message slower than this is logged.
    pub slow_ms: u64,
    /// Most bytes queued for one PushClient.
    pub max_gateway_queued_bytes: usize,
    /// PushClient connections at once (the core refuses beyond; counted here).
    pub max_gateway_connections: usize,
    /// Where limit hits are counted.
    pub counters: Arc<crate::limits::LimitCounters>,
    /// Who answers the core's bind checks (`security.bind_check_url`); `None`: no check.
    pub bind_checker: Option<Arc<crate::bind_check::BindChecker>>,
}

impl QueueLimits {
    /// The defaults, counting into a fresh set of counters.
    pub fn new(slow_ms: u64) -> Self {
        Self {
            slow_ms,
            max_gateway_queued_bytes: crate::config::MAX_GATEWAY_QUEUED_BYTES,
            max_gateway_connections: pushgate_core::config::defaults::MAX_GATEWAY_CONNECTIONS,
            counters: Arc::default(),
            bind_checker: None,
        }
    }
}

/// Where the route store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In this process (a single node).
    Memory,
    /// A store node shared with other pushgate nodes.
    Remote(std::net::SocketAddr),
    /// Redis (standalone, Sentinel or Cluster), shared with other pushgate and MPush nodes.
    #[cfg(not(madsim))]
    Redis(crate::redis_store::RedisTarget),
}

enum StoreBackend {
    Memory(MemoryStore),
    Remote(RemoteStore),
    #[cfg(not(madsim))]
    Redis(crate::redis_store::RedisStore),
}

/// The node task's state.
pub struct Driver {
    node: Node,
    store: StoreBackend,
    node_addr: NodeAddr,
    start: Instant,
    /// The time of the current wake-up ([`Driver::tick`]): every message handled in one
    /// wake-up is handled at it, so a burst reads the clock once, not once per message.
    now: Millis,
    /// When the node's clock next re-reads the wall clock ([`Node::follow_wall_clock`]).
    wall_clock_due_ms: Millis,
    /// When the next housekeeping round is due ([`crate::housekeeping`]).
    housekeeping: crate::housekeeping::Schedule,
    /// Each phone's outbound queue.
    phones: FxHashMap<ConnId, Arc<PhoneQueue>>,
    gateways: FxHashMap<GatewayId, GatewayLink>,
    local_waiters: FxHashMap<u64, oneshot::Sender<PushOutcome>>,
    next_token: u64,
    limits: QueueLimits,
    observer: Option<EventObserver>,
    load: NodeLoad,
    /// The node task's own queue, for the verdicts of bind checks (weak: the task still ends
    /// when every handle is gone).
    own_queue: mpsc::WeakSender<NodeMsg>,
}

/// Starts the node task; returns its handle. The node's time is measured from `start`, the
/// instant its epoch offset was read.
pub fn spawn(
    node: Node,
    limits: QueueLimits,
    store: StoreSpec,
    start: Instant,
    observer: Option<EventObserver>,
) -> (NodeHandle, tokio::task::JoinHandle<()>) {
    let (handle, rx) = NodeHandle::channel(NODE_QUEUE_CAPACITY);
    let node_addr = node.config().node_addr.clone();
    let (store, store_rx) = match store {
        StoreSpec::Memory => (StoreBackend::Memory(MemoryStore::new()), None),
        StoreSpec::Remote(addr) => {
            // A link silent for three store timeouts (at least 3 s) is opened again.
            let dead_after_ms = node.config().store_timeout_ms.saturating_mul(3).max(3_000);
            let (remote, delivered) = RemoteStore::start(
                addr,
                node_addr.clone(),
                Duration::from_millis(dead_after_ms),
            );
            (StoreBackend::Remote(remote), Some(delivered))
        }
        #[cfg(not(madsim))]
        StoreSpec::Redis(target) => {
            let options = crate::redis_store::RedisOptions {
                op_timeout: Duration::from_millis(node.config().store_timeout_ms.max(1)),
                ..Default::default()
            };
            let (redis, delivered) =
                crate::redis_store::RedisStore::start(target, node_addr.clone(), options);
            (StoreBackend::Redis(redis), Some(delivered))
        }
    };
    let driver = Driver {
        node,
        store,
        node_addr,
        start,
        now: 0,
        wall_clock_due_ms: crate::node_clock::WALL_CLOCK_READ_INTERVAL_MS,
        housekeeping: crate::housekeeping::Schedule::new(0),
        phones: FxHashMap::default(),
        gateways: FxHashMap::default(),
        local_waiters: FxHashMap::default(),
        next_token: 1,
        limits,
        observer,
        load: NodeLoad::new(start),
        own_queue: handle.tx.downgrade(),
    };
    let join = tokio::spawn(driver.run(rx, store_rx));
    (handle, join)
}

impl Driver {
    /// Reads the clock for a wake-up; returns the instant read.
    fn tick(&mut self) -> Instant {
        let at = Instant::now();
        self.now = crate::node_clock::now_ms(self.start);
        if self.now >= self.wall_clock_due_ms {
            let epoch_ms = crate::node_clock::wall_epoch_ms();
            self.node.follow_wall_clock(self.now, epoch_ms);
            self.wall_clock_due_ms = self.now + crate::node_clock::WALL_CLOCK_READ_INTERVAL_MS;
        }
        at
    }

    /// Does the housekeeping when a round is due ([`crate::housekeeping`]): spare capacity
    /// given back, expired sessions forgotten now and then, memory gauges published.
    fn housekeep_if_due(&mut self) {
        let Some(round) = self.housekeeping.due(self.now) else {
            return;
        };
        self.node.shrink_spare_capacity();
        pushgate_core::spare::shrink_map(&mut self.phones);
        pushgate_core::spare::shrink_map(&mut self.gateways);
        pushgate_core::spare::shrink_map(&mut self.local_waiters);
        let footprint = match &mut self.store {
            StoreBackend::Memory(memory) => {
                Some(memory.state_mut().housekeep(self.now, round.sweep_sessions))
            }
            _ => None,
        };
        crate::housekeeping::release_freed_memory();
        metrics::memory(footprint);
    }

    /// The instant the node's clock reads `at_ms`.
    fn instant_at(&self, at_ms: Millis) -> Instant {
        crate::node_clock::instant_at(self.start, at_ms)
    }

    /// Ends a wake-up that began at `woke` with `queue_depth` messages waiting: records the
    /// node task's load, and warns when the wake-up kept it busy longer than
    /// `profile_slowly_ms` (every push waiting behind it was delayed that long).
    fn end_wake(&mut self, woke: Instant, queue_depth: usize, messages: usize, kind: &'static str) {
        self.housekeep_if_due();
        let done = Instant::now();
        self.load
            .record(woke, done, queue_depth, self.node.timer_count());
        let elapsed_ms =
            u64::try_from(done.saturating_duration_since(woke).as_millis()).unwrap_or(u64::MAX);
        if elapsed_ms > self.limits.slow_ms {
            tracing::warn!(target: "pushgate::profile", kind, messages, elapsed_ms, "slow packet: handling took longer than profile_slowly_ms");
        }
    }

    /// Feeds one event of the store link to the core and drains it.
    fn on_store_event(&mut self, event: StoreLinkEvent) {
        let now = self.now;
        match event {
            StoreLinkEvent::Connected => self.node.handle(now, Input::StoreConnected),
            StoreLinkEvent::Message(FromStore::Reply { id, result }) => self.node.handle(
                now,
                Input::StoreReply {
                    request: RequestId(id),
                    reply: result,
                },
            ),
            StoreLinkEvent::Message(FromStore::Kick(notice)) => {
                self.node.handle(now, Input::KickNotice { notice })
            }
        }
        self.drain();
    }

    /// Handles what is already waiting, without waiting for more: up to
    /// [`MAX_MESSAGES_PER_WAKE`] messages and as many store events. Returns how many were
    /// handled, and true when the task must stop.
    fn take_waiting(
        &mut self,
        rx: &mut mpsc::Receiver<NodeMsg>,
        store_rx: &mut Option<mpsc::UnboundedReceiver<StoreLinkEvent>>,
    ) -> (usize, bool) {
        let mut handled = self.take_store_events(store_rx, MAX_MESSAGES_PER_WAKE);
        for _ in 0..MAX_MESSAGES_PER_WAKE {
            let Ok(msg) = rx.try_recv() else { break };
            handled += 1;
            if self.on_msg(msg) {
                return (handled, true);
            }
        }
        (handled, false)
    }

    /// Handles up to `limit` store events already waiting, without waiting for more; how many.
    /// A link that is gone is dropped (`store_rx` becomes `None`).
    fn take_store_events(
        &mut self,
        store_rx: &mut Option<mpsc::UnboundedReceiver<StoreLinkEvent>>,
        limit: usize,
    ) -> usize {
        let mut handled = 0;
        while handled < limit {
            let Some(link) = store_rx.as_mut() else { break };
            match link.try_recv() {
                Ok(event) => {
                    handled += 1;
                    self.on_store_event(event);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => *store_rx = None,
            }
        }
        handled
    }

    /// True when the core has more work due now (a broadcast's next batch, more due timers).
    fn turn_due(&self) -> bool {
        self.node.poll_timeout().is_some_and(|at| at <= self.now)
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<NodeMsg>,
        mut store_rx: Option<mpsc::UnboundedReceiver<StoreLinkEvent>>,
    ) {
        // The core's next deadline and the load window's end, each one timer held across
        // wake-ups and moved only when its deadline changes (not a timer registered and
        // cancelled per message).
        let mut deadline = None;
        let mut publish = None;
        'wakes: loop {
            self.flush_store();
            let core_due = self.node.poll_timeout().map(|at| self.instant_at(at));
            crate::node_clock::set_timer(&mut deadline, core_due);
            crate::node_clock::set_timer(&mut publish, Some(self.load.publish_at()));
            // `biased`: branches are polled in this order, so a run is the same for the same
            // inputs (the simulator checks it), and due timers are never starved by traffic.
            tokio::select! {
                biased;
                () = crate::node_clock::timer_fired(&mut deadline) => {
                    let woke = self.tick();
                    let queue_depth = rx.len();
                    // One bounded turn (at most one broadcast batch), then what arrived meanwhile.
                    self.node.handle_timeout(self.now);
                    self.drain();
                    let (messages, stop) = self.take_waiting(&mut rx, &mut store_rx);
                    self.end_wake(woke, queue_depth, messages + 1, "timers");
                    if stop {
                        break;
                    }
                    if self.turn_due() {
                        // Let the connection tasks write out this turn before the next one,
                        // which waits for the timer's next tick: a new timer for a deadline
                        // already passed fires then (tokio's timer counts whole ms), where the
                        // held one, fired, would run the next turn at once.
                        deadline = None;
                        self.flush_store();
                        tokio::task::yield_now().await;
                    }
                }
                message = recv_store(&mut store_rx) => {
                    let woke = self.tick();
                    let queue_depth = rx.len();
                    match message {
                        Some(event) => self.on_store_event(event),
                        None => store_rx = None,
                    }
                    // Take the store's other answers already waiting too (bounded, to stay
                    // fair): a link on another thread answers in bursts.
                    let events = 1 + self.take_store_events(&mut store_rx, MAX_MESSAGES_PER_WAKE - 1);
                    self.end_wake(woke, queue_depth, events, "store");
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    let woke = self.tick();
                    let queue_depth = rx.len() + 1;
                    let mut kind = msg_kind(&msg);
                    if self.on_msg(msg) {
                        break;
                    }
                    // Take what else is waiting before sleeping again (bounded, to stay fair).
                    let mut messages = 1;
                    while messages < MAX_MESSAGES_PER_WAKE {
                        let Ok(msg) = rx.try_recv() else { break };
                        messages += 1;
                        kind = msg_kind(&msg);
                        if self.on_msg(msg) {
                            break 'wakes;
                        }
                    }
                    self.end_wake(woke, queue_depth, messages, kind);
                }
                // Publishes the node task's load when it stays idle past a window's end,
                // and does the housekeeping when it is due.
                () = crate::node_clock::timer_fired(&mut publish) => {
                    self.load.publish(Instant::now());
                    self.tick();
                    self.housekeep_if_due();
                }
            }
        }
        // What the last wake-up (a shutdown's offline marks) asked of the store.
        self.flush_store();
    }

    /// Handles one message at the wake-up's time; true when the task must stop.
    fn on_msg(&mut self, msg: NodeMsg) -> bool {
        let now = self.now;
        match msg {
            NodeMsg::PhoneOpened { conn, queue } => {
                self.phones.insert(conn, queue.clone());
                metrics::connection_opened();
                self.node.handle(now, Input::PhoneConnected { conn });
                if self.node.is_connected(conn) {
                    queue.admit();
                }
            }
            NodeMsg::GatewayOpened { gw, tx, outbox } => {
                if self.gateways.len() >= self.limits.max_gateway_connections {
                    self.limits
                        .counters
                        .hit(crate::limits::Limit::GatewayConnections, &gw);
                }
                self.gateways.insert(gw, GatewayLink { tx, outbox });
                self.node.handle(now, Input::GatewayConnected { gw });
            }
            NodeMsg::Input(input) => {
                match &input {
                    Input::PhoneClosed { conn, reason } if self.phones.remove(conn).is_some() => {
                        metrics::connection_closed();
                        if *reason == CloseReason::SlowConsumer {
                            tracing::warn!(%conn, "phone does not read: its queued bytes passed the hard limit, closed");
                        }
                    }
                    Input::GatewayClosed { gw } => {
                        self.gateways.remove(gw);
                    }
                    _ => {}
                }
                self.node.handle(now, input);
            }
            NodeMsg::Push { request, reply } => {
                let token = self.next_token;
                self.next_token += 1;
                self.local_waiters.insert(token, reply);
                self.node.handle(now, Input::LocalPush { token, request });
            }
            NodeMsg::Stats { reply } => {
                let _ = reply.send(self.node.stats());
            }
            NodeMsg::User { user_id, reply } => {
                let local = self
                    .node
                    .routes_of(&user_id)
                    .into_iter()
                    .map(|(ct, conn)| LocalRoute {
                        client_type: ct.code(),
                        conn: conn.0,
                    })
                    .collect();
                // A remote store is not read from here (that would block the node task).
                let store = match &self.store {
                    StoreBackend::Memory(memory) => memory
                        .routes_of(&user_id)
                        .into_iter()
                        .map(|(ct, route)| StoreRoute {
                            client_type: ct.code(),
                            route,
                        })
                        .collect(),
                    StoreBackend::Remote(_) => Vec::new(),
                    #[cfg(not(madsim))]
                    StoreBackend::Redis(_) => Vec::new(),
                };
                let _ = reply.send(UserView {
                    user_id,
                    local,
                    store,
                });
            }
            NodeMsg::Kick {
                user_id,
                client_type,
                reply,
            } => {
                let count = self
                    .node
                    .routes_of(&user_id)
                    .iter()
                    .filter(|(ct, _)| client_type.is_none_or(|c| c == *ct))
                    .count();
                self.node.handle(
                    now,
                    Input::KickUser {
                        user_id,
                        client_type,
                    },
                );
                let _ = reply.send(count);
            }
            NodeMsg::Shutdown { done } => {
                self.node.handle(now, Input::Shutdown);
                self.drain();
                for (_, link) in self.gateways.drain() {
                    let _ = link.tx.send(GatewayCmd::Close);
                }
                let _ = done.send(());
                return true;
            }
        }
        self.drain();
        false
    }

    /// Executes every pending output of the core.
    fn drain(&mut self) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Transmit {
                    conn,
                    frame,
                    report_write,
                    bulk,
                } => self.transmit(conn, frame, report_write, bulk),
                Output::Resume { conn, resume } => {
                    if let Some(queue) = self.phones.get(&conn) {
                        queue.push(ToPhone::Resume(resume));
                    }
                }
                Output::Close { conn, reason } => {
                    tracing::debug!(%conn, ?reason, "closing phone connection");
                    if let Some(queue) = self.phones.remove(&conn) {
                        metrics::connection_closed();
                        queue.close_for(Some(reason));
                    }
                }
                Output::GatewayTransmit { gw, packet } => {
                    if let Some(link) = self.gateways.get(&gw) {
                        let max = self.limits.max_gateway_queued_bytes;
                        if link.outbox.reserve(packet.encoded_len(), max) {
                            let _ = link.tx.send(GatewayCmd::Packet(packet));
                        } else if self.gateways.remove(&gw).is_some() {
                            // Its task drops the connection and reports it closed.
                            self.limits
                                .counters
                                .hit(crate::limits::Limit::GatewayQueuedBytes, &gw);
                        }
                    }
                }
                Output::GatewayClose { gw } => {
                    if let Some(link) = self.gateways.remove(&gw) {
                        let _ = link.tx.send(GatewayCmd::Close);
                    }
                }
                Output::Store(request) => {
                    let now = self.now;
                    match &mut self.store {
                        StoreBackend::Memory(memory) => {
                            let is_kick = matches!(request.op, StoreOp::PublishKick { .. });
                            let reply = memory.apply(now, request.op);
                            self.node.handle(
                                now,
                                Input::StoreReply {
                                    request: request.id,
                                    reply,
                                },
                            );
                            if is_kick {
                                // One embedded store serves one node: notices for this node come back here.
                                let kicks = memory.take_kicks();
                                for notice in kicks {
                                    if notice.target() == self.node_addr {
                                        self.node.handle(now, Input::KickNotice { notice });
                                    }
                                }
                            }
                        }
                        StoreBackend::Remote(remote) => {
                            if !remote.request(request.id.0, request.op) {
                                self.refuse_store_request(request.id);
                            }
                        }
                        #[cfg(not(madsim))]
                        StoreBackend::Redis(redis) => {
                            // Sent at the end of the wake-up, with the others ([`Driver::flush_store`]).
                            if !redis.queue(request.id.0, request.op) {
                                self.refuse_store_request(request.id);
                            }
                        }
                    }
                }
                Output::BindCheck(check) => match &self.limits.bind_checker {
                    Some(checker) => checker.spawn_check(check, self.own_queue.clone()),
                    None => {
                        // A core asking without a checker configured gets no verdict.
                        let input = Input::BindVerdict {
                            check: check.id,
                            verdict: pushgate_core::BindVerdict::Failed,
                        };
                        self.node.handle(self.now, input);
                    }
                },
                Output::Event(event) => {
                    if let Some(observer) = &self.observer {
                        observer(&self.node_addr, self.now, &event);
                    }
                    self.on_event(event)
                }
            }
        }
    }

    /// Sends the store requests this wake-up queued, as one batch (Redis); those the link
    /// could not take are answered as unavailable.
    fn flush_store(&mut self) {
        #[cfg(not(madsim))]
        if let StoreBackend::Redis(redis) = &mut self.store {
            let refused = redis.flush();
            for id in refused {
                // Refused requests are answered now; what the answers ask of the store in
                // turn goes with the next flush.
                self.refuse_store_request(RequestId(id));
                self.drain();
            }
        }
    }

    /// Answers a store request the link refused (it is down) as unavailable.
    fn refuse_store_request(&mut self, id: RequestId) {
        let reply = Err(StoreError::Unavailable("no link to the route store".into()));
        self.node
            .handle(self.now, Input::StoreReply { request: id, reply });
    }

    /// Queues a frame for a phone; a broadcast's (`bulk`) wakes its connection on the bulk
    /// lane ([`crate::bulk_wake`]).
    fn transmit(&mut self, conn: ConnId, frame: OutFrame, report_write: Option<i32>, bulk: bool) {
        // Gone: the core hears PhoneClosed from its connection task shortly.
        if let Some(queue) = self.phones.get(&conn) {
            let item = ToPhone::Frame {
                frame,
                report_write,
            };
            if bulk {
                queue.push_bulk(item);
            } else {
                queue.push(item);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        metrics::record(&event);
        self.limits.counters.record_event(&event);
        match event {
            Event::PushFinished {
                id,
                origin,
                user_id,
                client_type,
                status,
                reason,
                timeline,
                delivered,
                moved_to,
            } => {
                // Built only when someone reads it: a push log line or a local caller.
                let time_points = || -> Vec<serde_json::Value> {
                    timeline
                        .points()
                        .iter()
                        .flat_map(|(name, at)| {
                            [serde_json::Value::from(*name), serde_json::Value::from(*at)]
                        })
                        .collect()
                };
                tracing::info!(
                    target: "pushgate::push",
                    push = id.0,
                    user = %user_id,
                    client_type = client_type.map(|c| c.code()),
                    status = status.name(),
                    reason = reason.as_ref().map(Reason::to_string).unwrap_or_default(),
                    delivered,
                    time_line = %serde_json::Value::from(time_points()),
                    "push finished"
                );
                if !delivered {
                    tracing::warn!(target: "pushgate::push", push = id.0, status = status.name(), "the pushclient connection is closed, so it cannot be told");
                }
                if let Origin::Local { token } = origin {
                    if let Some(waiter) = self.local_waiters.remove(&token) {
                        let _ = waiter.send(PushOutcome {
                            status,
                            reason: reason.as_ref().map(Reason::to_string),
                            cause: reason,
                            user_id,
                            client_type: client_type.map(|c| c.code()),
                            time_points: time_points(),
                            sent: None,
                            moved_to: moved_to.map(|route| *route),
                        });
                    }
                }
            }
            Event::BroadcastFinished {
                id,
                origin,
                sent,
                status,
                reason,
                delivered,
            } => {
                tracing::info!(target: "pushgate::push", push = id.0, broadcast = true, sent, status = status.name(), reason = reason.as_ref().map(Reason::to_string).unwrap_or_default(), delivered, "broadcast finished");
                if let Origin::Local { token } = origin {
                    if let Some(waiter) = self.local_waiters.remove(&token) {
                        let outcome = PushOutcome {
                            status,
                            reason: reason.as_ref().map(Reason::to_string),
                            cause: reason,
                            user_id: String::new(),
                            client_type: None,
                            time_points: Vec::new(),
                            sent: Some(sent),
                            moved_to: None,
                        };
                        let _ = waiter.send(outcome);
                    }
                }
            }
            Event::StoreFailed { op, error } => {
                tracing::warn!(op, %error, "route store request failed")
            }
            Event::DecodeError { kind } => tracing::debug!(kind, "decode error"),
            Event::BindChecked {
                conn,
                user_id,
                outcome,
                allowed,
            } => {
                if outcome == pushgate_core::BindCheckOutcome::Busy {
                    // Not asked: counted here, the asked ones where they are answered.
                    metrics::bind_check(outcome.label());
                }
                tracing::debug!(%conn, user = %user_id, outcome = outcome.label(), allowed, "bind checked");
            }
            Event::Closed { conn, reason } => tracing::debug!(%conn, ?reason, "connection closed"),
            Event::Kicked {
                conn,
                user_id,
                device_id,
                cause,
            } => tracing::info!(%conn, user = %user_id, device = %device_id, ?cause, "kicked"),
            Event::Upstream {
                conn,
                user_id,
                content,
            } => {
                tracing::debug!(%conn, user = user_id.as_deref().unwrap_or(""), bytes = content.len(), "upstream push")
            }
            other => tracing::trace!(?other, "event"),
        }
    }
}

fn msg_kind(msg: &NodeMsg) -> &'static str {
    match msg {
        NodeMsg::PhoneOpened { .. } => "phone-opened",
        NodeMsg::GatewayOpened { .. } => "gateway-opened",
        NodeMsg::Input(Input::PhoneMessage { .. }) => "phone-message",
        NodeMsg::Input(Input::GatewayFrame { .. }) => "gateway-frame",
        NodeMsg::Input(_) => "input",
        NodeMsg::Push { .. } => "local-push",
        NodeMsg::Stats { .. } => "stats",
        NodeMsg::User { .. } => "user",
        NodeMsg::Kick { .. } => "kick",
        NodeMsg::Shutdown { .. } => "shutdown",
    }
}

async fn recv_store(
    rx: &mut Option<mpsc::UnboundedReceiver<StoreLinkEvent>>,
) -> Option<StoreLinkEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
