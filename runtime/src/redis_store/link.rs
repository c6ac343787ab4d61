//! The task between the node and Redis, on a thread of its own ([`run_apart`] says why): it
//! opens the connections (following Sentinel to the current master), subscribes to this node's
//! kick channel, runs every request as its own pipelined command sequence with at most
//! [`RedisOptions::max_in_flight`] in flight and a deadline each, pings to find a dead link,
//! and reconnects with backoff. Requests beyond the slots wait in a queue as plain values, not
//! as tasks: a connect burst of thousands of binds parked a 2 KiB task each.
//!
//! Requests are refused (the driver answers them as unavailable) while the link is down, and
//! those accepted but not yet sent when it goes down are answered as unavailable. Each outage
//! is logged once when it starts and once when it ends, with its length.
use super::conn::{self, DataConn};
use super::keys;
use super::ops::{self, OpResult};
use super::target::RedisTarget;
use crate::link_epoch::LinkEpochs;
use crate::metrics::names;
use crate::store_net::{FromStore, StoreLinkEvent};
use futures_util::StreamExt;
use pushgate_core::store::{StoreError, StoreOp};
use pushgate_core::NodeAddr;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// How the link behaves.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Deadline of one op, waiting for a slot included (then answered as timeout); also the
    /// connect timeout.
    pub op_timeout: Duration,
    /// Most ops in flight at once; more wait for a slot.
    pub max_in_flight: usize,
    /// A PING this often finds a link that died without closing.
    pub ping_interval: Duration,
    /// First and longest wait between connection attempts (doubling in between).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            op_timeout: Duration::from_secs(3),
            max_in_flight: 1024,
            ping_interval: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

#[derive(Debug)]
struct Request {
    id: u64,
    op: StoreOp,
}

/// A request leaving on a connection, with the epoch it carries and the link's epochs (a
/// refusal naming a newer one is reported there, [`LinkEpochs::refused`]).
struct Outgoing {
    request: Request,
    epoch: u64,
    epochs: Arc<LinkEpochs>,
}

/// The node side of the Redis store.
#[derive(Debug)]
pub struct RedisStore {
    tx: mpsc::UnboundedSender<Vec<Request>>,
    connected: Arc<AtomicBool>,
    /// Requests queued since the last [`RedisStore::flush`].
    queued: Vec<Request>,
}

impl RedisStore {
    /// Starts the link task; the receiver gets replies, kick notices and `Connected` events.
    pub fn start(
        target: RedisTarget,
        node: NodeAddr,
        options: RedisOptions,
    ) -> (Self, mpsc::UnboundedReceiver<StoreLinkEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (deliver, delivered) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let link = run_link(target, node, options, rx, deliver, connected.clone());
        run_apart(Box::pin(link));
        let store = Self {
            tx,
            connected,
            queued: Vec::new(),
        };
        (store, delivered)
    }

    /// True while the link to Redis is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Sends a request now (with any queued before it): [`RedisStore::queue`], then
    /// [`RedisStore::flush`]; false when the link is down or gone (the caller answers it as
    /// unavailable).
    pub fn request(&mut self, id: u64, op: StoreOp) -> bool {
        self.queue(id, op) && self.flush().is_empty()
    }

    /// Queues a request for the next [`RedisStore::flush`]; false when the link is down (the
    /// caller answers it as unavailable). The node task queues what one wake-up asks for and
    /// flushes once: the link's thread then wakes once per batch, not once per request, and
    /// its commands reach Redis pipelined together.
    pub fn queue(&mut self, id: u64, op: StoreOp) -> bool {
        if !self.is_connected() {
            return false;
        }
        self.queued.push(Request { id, op });
        true
    }

    /// Sends the queued requests to the link; the ids of those it could not take (its task
    /// is gone), for the caller to answer as unavailable.
    pub fn flush(&mut self) -> Vec<u64> {
        if self.queued.is_empty() {
            return Vec::new();
        }
        match self.tx.send(std::mem::take(&mut self.queued)) {
            Ok(()) => Vec::new(),
            Err(mpsc::error::SendError(refused)) => refused.iter().map(|r| r.id).collect(),
        }
    }
}

/// Runs the link on a thread of its own, with a single-threaded runtime, rather than among
/// the node's and the phones' tasks.
///
/// The reason is memory. Every op in flight holds a task and its command buffers (about
/// 1 KiB, up to [`RedisOptions::max_in_flight`] at once), and a connect burst is a burst of
/// ops. Allocated on the threads that also allocate the phones' long-lived records, these
/// transients are interleaved with them in the allocator's pages, and once freed they leave
/// holes no idle phone fills: 19,000 phones connecting 100 at a time kept about 0.35 KiB per
/// phone of such pages (`bench/README.md`, run 12). The allocator (mimalloc) gives each thread
/// its own pages, so on a thread of its own the link's transients free whole pages, which go
/// back to the OS. (It also lets RESP encoding and parsing run beside the node on another
/// core.)
///
/// When no thread can be started (the process is out of threads), the link runs as a task of
/// the current runtime, as it would otherwise.
fn run_apart(link: Pin<Box<dyn Future<Output = ()> + Send>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::warn!(%error, "cannot build the Redis link's runtime; running it beside the node");
            tokio::spawn(link);
            return;
        }
    };
    // The future goes over only once the thread runs: a thread that cannot start hands it back.
    let (hand, take) = std::sync::mpsc::sync_channel::<Pin<Box<dyn Future<Output = ()> + Send>>>(1);
    let started = std::thread::Builder::new()
        .name("pushgate-redis".into())
        .spawn(move || {
            if let Ok(link) = take.recv() {
                runtime.block_on(link);
            }
        });
    match started {
        Ok(_) => {
            if let Err(std::sync::mpsc::SendError(link)) = hand.send(link) {
                tokio::spawn(link); // the thread ended before it took the link
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot start the Redis link's thread; running it beside the node");
            tokio::spawn(link);
        }
    }
}

/// The name of an op in metrics.
fn op_name(op: &StoreOp) -> &'static str {
    match op {
        StoreOp::PutRoute { .. } => "put_route",
        StoreOp::SetRouteOffline { .. } => "set_route_offline",
        StoreOp::RestoreRoute { .. } => "restore_route",
        StoreOp::GetRoute { .. } => "get_route",
        StoreOp::PutSession { .. } => "put_session",
        StoreOp::GetSession { .. } => "get_session",
        StoreOp::PublishKick { .. } => "publish_kick",
        StoreOp::GetTaskControl { .. } => "get_task_control",
        StoreOp::AddTaskProgress { .. } => "add_task_progress",
    }
}

/// Whether `error` means the connection is gone or points at the wrong server (a replica
/// after a failover answers writes with READONLY).
fn link_lost(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        || error.is_connection_refusal()
        || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

async fn run_link(
    target: RedisTarget,
    node: NodeAddr,
    options: RedisOptions,
    mut rx: mpsc::UnboundedReceiver<Vec<Request>>,
    deliver: mpsc::UnboundedSender<StoreLinkEvent>,
    connected: Arc<AtomicBool>,
) {
    let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let channel = keys::kick_channel(&node);
    let mut backoff = options.backoff_min;
    // When the current outage began (None while up); the first connect counts as one.
    let mut outage: Option<(Instant, String)> = Some((Instant::now(), String::new()));
    let mut links = 0u64;
    let epochs = Arc::new(LinkEpochs::default());
    loop {
        let opened = match conn::open(&target, options.op_timeout).await {
            Ok(mut opened) => {
                match tokio::time::timeout(options.op_timeout, opened.pubsub.subscribe(&channel))
                    .await
                {
                    Ok(Ok(())) => Ok(opened),
                    Ok(Err(error)) => Err(format!("SUBSCRIBE {channel}: {error}")),
                    Err(_) => Err(format!("SUBSCRIBE {channel} timed out")),
                }
            }
            Err(error) => Err(error),
        };
        let opened = match opened {
            Ok(opened) => opened,
            Err(error) => {
                if let Some((_, reason)) = &mut outage {
                    if reason.is_empty() {
                        tracing::warn!(redis = %target, %error, "cannot reach Redis; retrying with backoff");
                        metrics::counter!(names::STORE_OUTAGES).increment(1);
                        *reason = error;
                    } else {
                        tracing::debug!(redis = %target, %error, "Redis still unreachable");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(options.backoff_max);
                if deliver.is_closed() {
                    return;
                }
                continue;
            }
        };
        backoff = options.backoff_min;
        links += 1;
        if links > 1 {
            metrics::counter!(names::STORE_RECONNECTS).increment(1);
        }
        let data = opened.data;
        epochs.open_connection();
        let mut kicks = opened.pubsub.into_on_message();
        connected.store(true, Ordering::Relaxed);
        metrics::gauge!(names::STORE_CONNECTED).set(1.0);
        match outage.take() {
            Some((since, _)) if links > 1 => {
                tracing::info!(redis = %target, server = %opened.server, outage_ms = since.elapsed().as_millis() as u64, "Redis link restored")
            }
            _ => {
                tracing::info!(redis = %target, server = %opened.server, %channel, "connected to Redis")
            }
        }
        if deliver.send(StoreLinkEvent::Connected).is_err() {
            return;
        }
        let (lost_tx, mut lost_rx) = mpsc::unbounded_channel::<String>();
        if let Some(sentinel) = opened.sentinel {
            tokio::spawn(watch_sentinel(
                sentinel,
                opened.server.clone(),
                options.ping_interval,
                options.op_timeout,
                lost_tx.clone(),
            ));
        }
        let mut ping = tokio::time::interval(options.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // Requests waiting for a slot, as plain values with their arrival (a task each would
        // hold a future of about 2 KiB: a connect burst parked thousands of them).
        let mut waiting: VecDeque<(Request, Instant)> = VecDeque::new();
        let reason = loop {
            let head_deadline = waiting
                .front()
                .map(|(_, arrived)| tokio::time::Instant::from_std(*arrived + options.op_timeout));
            tokio::select! {
                biased;
                reason = lost_rx.recv() => break reason.unwrap_or_default(),
                message = kicks.next() => {
                    let Some(message) = message else { break "the pub/sub connection closed".to_owned() };
                    let Some(notice) = ops::parse_kick(message.get_payload_bytes()) else { continue };
                    if notice.target() != node {
                        tracing::debug!(?notice, "a kick notice for another node: ignored");
                        continue;
                    }
                    if deliver.send(StoreLinkEvent::Message(FromStore::Kick(notice))).is_err() {
                        return;
                    }
                }
                permit = slots.clone().acquire_owned(), if !waiting.is_empty() => {
                    let Ok(permit) = permit else { return };
                    let Some((request, arrived)) = waiting.pop_front() else { continue };
                    tokio::spawn(perform(
                        data.clone(),
                        Outgoing {
                            request,
                            epoch: epochs.current(),
                            epochs: epochs.clone(),
                        },
                        arrived,
                        permit,
                        options.op_timeout,
                        deliver.clone(),
                        lost_tx.clone(),
                    ));
                }
                requests = rx.recv() => {
                    let Some(requests) = requests else { return };
                    let arrived = Instant::now();
                    waiting.extend(requests.into_iter().map(|request| (request, arrived)));
                }
                () = sleep_until_some(head_deadline) => {
                    // Waited out its deadline without a slot: answered as timed out.
                    while let Some((_, arrived)) = waiting.front() {
                        if arrived.elapsed() < options.op_timeout {
                            break;
                        }
                        if let Some((request, _)) = waiting.pop_front() {
                            answer(&deliver, request.id, Err(StoreError::Timeout));
                        }
                    }
                }
                _ = ping.tick() => {
                    // A burst's queue gives its capacity back once it has drained (a
                    // VecDeque keeps its largest capacity: megabytes after a connect storm).
                    pushgate_core::spare::shrink_queue(&mut waiting);
                    let mut data = data.clone();
                    let lost = lost_tx.clone();
                    let limit = options.op_timeout;
                    tokio::spawn(async move {
                        let pong = tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut data)).await;
                        match pong {
                            Ok(Ok(_)) => {}
                            Ok(Err(error)) => {
                                if link_lost(&error) {
                                    let _ = lost.send(format!("PING: {error}"));
                                }
                            }
                            Err(_) => {
                                let _ = lost.send("PING timed out".to_owned());
                            }
                        }
                    });
                }
            }
        };
        connected.store(false, Ordering::Relaxed);
        metrics::gauge!(names::STORE_CONNECTED).set(0.0);
        metrics::counter!(names::STORE_OUTAGES).increment(1);
        tracing::warn!(redis = %target, %reason, "lost the Redis link; reconnecting");
        outage = Some((Instant::now(), reason));
        // Accepted while up but not sent: answered now, as the driver answers refused ones.
        let unsent = waiting.drain(..).map(|(request, _)| request);
        let queued = std::iter::from_fn(|| rx.try_recv().ok()).flatten();
        for request in unsent.chain(queued) {
            let result = Err(StoreError::Unavailable("the Redis link is down".into()));
            answer(&deliver, request.id, result);
        }
    }
}

/// Asks the Sentinels every `interval` which server is the master; reports the link lost when
/// they name another than `master`. Ends when the link it watches is gone.
async fn watch_sentinel(
    mut sentinel: redis::sentinel::SentinelClient,
    master: String,
    interval: Duration,
    limit: Duration,
    lost: mpsc::UnboundedSender<String>,
) {
    loop {
        tokio::time::sleep(interval).await;
        if lost.is_closed() {
            return;
        }
        match conn::sentinel_master(&mut sentinel, limit).await {
            Ok(now) if now != master => {
                let _ = lost.send(format!("the Sentinels name {now} as master, not {master}"));
                return;
            }
            Ok(_) => {}
            // The Sentinels unreachable: the master link itself is still checked by PING.
            Err(error) => tracing::debug!(%error, "Sentinel check failed"),
        }
    }
}

/// Sleeps until `deadline`; never wakes without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Answers the request `id` with `result`.
fn answer(
    deliver: &mpsc::UnboundedSender<StoreLinkEvent>,
    id: u64,
    result: Result<pushgate_core::store::StoreReply, StoreError>,
) {
    let _ = deliver.send(StoreLinkEvent::Message(FromStore::Reply { id, result }));
}

/// Runs one request holding its slot: performs the op within what is left of `limit` since
/// the request `arrived`, answers, then sends the route's status event (online list and
/// channel).
async fn perform(
    mut data: DataConn,
    Outgoing {
        request,
        epoch,
        epochs,
    }: Outgoing,
    arrived: Instant,
    slot: OwnedSemaphorePermit,
    limit: Duration,
    deliver: mpsc::UnboundedSender<StoreLinkEvent>,
    lost: mpsc::UnboundedSender<String>,
) {
    let name = op_name(&request.op);
    let left = limit.saturating_sub(arrived.elapsed());
    let outcome = tokio::time::timeout(left, async {
        let _slot = slot;
        let done = ops::execute(&mut data, request.op, epoch).await;
        if let Err(ops::OpError::Fenced(newest)) = &done.reply {
            if epochs.refused(*newest) {
                tracing::warn!(
                    epoch,
                    newest,
                    "Redis knows a newer link epoch of this node; continuing above it"
                );
            }
        }
        done
    })
    .await;
    let (result, event) = match outcome {
        Ok(OpResult { reply, event }) => match reply {
            Ok(reply) => (Ok(reply), event),
            Err(error) => {
                if let ops::OpError::Redis(redis_error) = &error {
                    if link_lost(redis_error) {
                        let _ = lost.send(format!("{name}: {redis_error}"));
                    }
                }
                (Err(error.to_store_error()), None)
            }
        },
        Err(_) => (Err(StoreError::Timeout), None),
    };
    metrics::histogram!(names::STORE_LATENCY, "op" => name).record(arrived.elapsed().as_secs_f64());
    if let Err(error) = &result {
        let kind = match error {
            StoreError::Timeout => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Fenced { .. } => "fenced",
        };
        metrics::counter!(names::STORE_ERRORS, "op" => name, "kind" => kind).increment(1);
        tracing::debug!(op = name, %error, "Redis store op failed");
    }
    answer(&deliver, request.id, result);
    if let Some(event) = event {
        match tokio::time::timeout(limit, ops::send_status_event(&mut data, event)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "online list / status event not sent"),
            Err(_) => tracing::debug!("online list / status event timed out"),
        }
    }
}
