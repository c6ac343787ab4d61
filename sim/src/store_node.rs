//! The simulator's store node: a model of the cluster store with Redis's semantics for what
//! pushgate uses (one op at a time in arrival order — the real [`MemoryStore`] rules, route ops
//! with the epoch of the node's link they came on, as the Redis scripts take them — replies
//! on a connection, pub/sub kick notices to subscribed nodes) and Redis's faults, switched by
//! the fault schedule through [`StoreModel`]:
//!
//! - **restart empty** (a Redis without persistence restarting): the host is killed and
//!   restarted, the new incarnation starts empty;
//! - **failover that loses the last writes** (a replica promoted before it caught up): the
//!   host is killed and restarted from a snapshot taken some ms before (snapshots every
//!   [`SNAPSHOT_EVERY_MS`]);
//! - **pub/sub messages lost** while a subscriber is away: kick notices for a "deaf" node are
//!   dropped (Redis pub/sub is at-most-once);
//! - **slow replies**: each reply (and notice) is held back by its own random delay, so they
//!   also arrive out of order.
//!
//! It speaks the store node's wire protocol (`pushgate::store_net`), so the nodes' real
//! `RemoteStore` links talk to it, and tells the oracle every route it hands a node.
use crate::oracle::{lock, Shared};
use crate::params::Params;
use crate::world::lock_std;
use bytes::BytesMut;
use pushgate::store::MemoryStore;
use pushgate::store_net::{decode_frame, encode_frame, FromStore, ToStore};
use pushgate_core::route::ClientType;
use pushgate_core::store::{StoreOp, StoreReply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A route binding: (user, client type code, connection id, version).
pub type RouteKey = (String, i32, Option<String>, u64);

/// How often the model keeps a snapshot (for failovers).
pub const SNAPSHOT_EVERY_MS: u64 = 100;
/// Snapshots kept (the oldest one is this many times [`SNAPSHOT_EVERY_MS`] old).
const SNAPSHOTS: usize = 40;

/// The model's state and fault switches; outlives the store host's incarnations.
pub struct StoreModel {
    sh: Shared,
    params: Arc<Params>,
    /// What the next incarnation starts with (`None`: empty).
    restore: Mutex<Option<MemoryStore>>,
    snapshots: Mutex<VecDeque<(u64, MemoryStore)>>,
    /// Replies and notices are held back up to this many ms each (0: at once).
    pub slow_ms: AtomicU64,
    /// Nodes whose kick notices are lost.
    pub deaf: Mutex<BTreeSet<usize>>,
    rng: Mutex<StdRng>,
    /// The incarnation serving now.
    current: Mutex<Option<Arc<Mutex<Live>>>>,
}

/// One incarnation of the store host.
struct Live {
    store: MemoryStore,
    subscribers: BTreeMap<usize, mpsc::UnboundedSender<FromStore>>,
    last_snapshot: u64,
}

impl StoreModel {
    pub fn new(sh: Shared, params: Arc<Params>) -> Arc<Self> {
        let rng = StdRng::seed_from_u64(params.seed ^ 0x5702_E000);
        Arc::new(Self {
            sh,
            params,
            restore: Mutex::new(None),
            snapshots: Mutex::new(VecDeque::new()),
            slow_ms: AtomicU64::new(0),
            deaf: Mutex::new(BTreeSet::new()),
            rng: Mutex::new(rng),
            current: Mutex::new(None),
        })
    }

    /// Prepares a failover at `now` (oracle time): the next incarnation starts from the newest
    /// snapshot at least `lag_ms` old (or the oldest one, or empty when there is none).
    /// Returns how old it is, and the routes it brings back online (user, client type code,
    /// connection id, version) that the live store had replaced or marked offline.
    pub fn prepare_failover(&self, now: u64, lag_ms: u64) -> (Option<u64>, Vec<RouteKey>) {
        let snapshots = lock_std(&self.snapshots);
        let chosen = snapshots
            .iter()
            .rev()
            .find(|(at, _)| *at + lag_ms <= now)
            .or_else(|| snapshots.front());
        let age = chosen.map(|(at, _)| now - at);
        let mut resurrected = Vec::new();
        if let (Some((_, replica)), Some(live)) = (chosen, lock_std(&self.current).as_ref()) {
            let live = lock_std(live);
            for user in self.params.all_users() {
                for ct in ClientType::ALL {
                    let Some((_, old)) = replica.route(&user, Some(ct)) else {
                        continue;
                    };
                    let newer = live.store.route(&user, Some(ct)).map(|(_, r)| r);
                    if old.is_online() && newer.as_ref() != Some(&old) {
                        resurrected.push((user.clone(), ct.code(), old.conn_id, old.version));
                    }
                }
            }
        }
        *lock_std(&self.restore) = chosen.map(|(_, s)| s.clone());
        (age, resurrected)
    }

    /// Everything back to normal (the end of the fault phase).
    pub fn heal(&self) {
        self.slow_ms.store(0, Ordering::Relaxed);
        lock_std(&self.deaf).clear();
    }

    fn delay(&self) -> Option<Duration> {
        let max = self.slow_ms.load(Ordering::Relaxed);
        (max > 0).then(|| Duration::from_millis(lock_std(&self.rng).gen_range(0..=max)))
    }
}

/// Sends `message` now, or after the model's delay.
fn send(model: &StoreModel, tx: &mpsc::UnboundedSender<FromStore>, message: FromStore) {
    match model.delay() {
        None => {
            let _ = tx.send(message);
        }
        Some(delay) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(message);
            });
        }
    }
}

/// Serves one incarnation of the store host on `listener`.
pub async fn serve(listener: TcpListener, model: Arc<StoreModel>) {
    let store = lock_std(&model.restore).take().unwrap_or_default();
    lock_std(&model.snapshots).clear();
    let live = Arc::new(Mutex::new(Live {
        store,
        subscribers: BTreeMap::new(),
        last_snapshot: 0,
    }));
    *lock_std(&model.current) = Some(live.clone());
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_conn(stream, model.clone(), live.clone()));
    }
}

async fn serve_conn(mut stream: TcpStream, model: Arc<StoreModel>, live: Arc<Mutex<Live>>) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<FromStore>();
    let mut inbound = BytesMut::new();
    let mut node: Option<usize> = None;
    loop {
        tokio::select! {
            biased;
            read = read_frame(&mut stream, &mut inbound) => {
                let Some(message) = read else { return };
                match message {
                    ToStore::Subscribe { node: addr } => {
                        node = model.params.node_of_host(&addr.host);
                        if let Some(k) = node {
                            lock_std(&live).subscribers.insert(k, out_tx.clone());
                        }
                    }
                    ToStore::Request { id, op, link } => apply(&model, &live, node, id, op, link, &out_tx),
                }
            }
            out = out_rx.recv() => {
                let Some(first) = out else { return };
                let mut buf = BytesMut::new();
                encode_frame(&first, &mut buf);
                while let Ok(more) = out_rx.try_recv() {
                    encode_frame(&more, &mut buf);
                }
                if stream.write_all(&buf).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn apply(
    model: &StoreModel,
    live: &Mutex<Live>,
    node: Option<usize>,
    id: u64,
    op: StoreOp,
    link: u64,
    out: &mpsc::UnboundedSender<FromStore>,
) {
    let now = lock(&model.sh).now();
    let read_user = match &op {
        StoreOp::GetRoute { user_id, .. } => Some(user_id.clone()),
        _ => None,
    };
    let written: Option<RouteKey> = match &op {
        StoreOp::PutRoute {
            user_id,
            client_type,
            route,
        } => Some((
            user_id.clone(),
            client_type.code(),
            route.conn_id.clone(),
            route.version,
        )),
        _ => None,
    };
    let traced = std::env::var("PUSHGATE_SIM_STORE_TRACE").is_ok()
        && matches!(
            op,
            StoreOp::PutRoute { .. } | StoreOp::SetRouteOffline { .. }
        );
    let shown = traced.then(|| format!("{op:?}"));
    let mut live = lock_std(live);
    let result = live.store.apply_on_link(now, op, link);
    if let Some(shown) = shown {
        lock(&model.sh).trace(format!("store from node{node:?}: {shown} -> {result:?}"));
    }
    let kicks = live.store.take_kicks();
    if now >= live.last_snapshot + SNAPSHOT_EVERY_MS {
        live.last_snapshot = now;
        let mut snapshots = lock_std(&model.snapshots);
        snapshots.push_back((now, live.store.clone()));
        if snapshots.len() > SNAPSHOTS {
            snapshots.pop_front();
        }
    }
    let targets: Vec<_> = kicks
        .into_iter()
        .map(|notice| {
            let target = model.params.node_of_host(&notice.target_server);
            let tx = target.and_then(|k| live.subscribers.get(&k).cloned());
            (notice, target, tx)
        })
        .collect();
    drop(live);
    if let (Some(node), Some(user), Ok(StoreReply::Route(route))) = (node, &read_user, &result) {
        lock(&model.sh).store_route_read(node, user, route.clone());
    }
    if let (Some(key), Ok(StoreReply::Previous(_))) = (written, &result) {
        lock(&model.sh).side.routes_written.insert(key, now);
    }
    send(model, out, FromStore::Reply { id, result });
    for (notice, target, tx) in targets {
        let deaf = target.is_some_and(|k| lock_std(&model.deaf).contains(&k));
        if deaf {
            lock(&model.sh).trace(format!(
                "store: kick notice for {:?} to node{target:?} lost (subscriber away)",
                notice.user_id
            ));
            continue;
        }
        if let Some(tx) = tx {
            send(model, &tx, FromStore::Kick(notice));
        }
    }
}

async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<ToStore> {
    loop {
        match decode_frame(buf) {
            Ok(Some(message)) => return Some(message),
            Ok(None) => {}
            Err(_) => return None,
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}
