//! The simulator's route store over the network: a store node that several pushgate nodes
//! share, and the client side the driver uses to reach it (`store.address`). Production
//! clusters share Redis instead (`crate::redis_store`); this link stays because the simulator
//! (`pushgate-sim`) runs its Redis model behind it, on its own simulated host.
//!
//! Wire format: frames of a 4-byte big-endian length and a JSON body, at most
//! [`MAX_STORE_FRAME_BYTES`]. A node sends `Subscribe` once per connection (so kick notices for
//! it are delivered) and `Request`s with ids; the store answers each with a `Reply` carrying the
//! same id, in order, and pushes `Kick`s to the node they name. The store node is the embedded
//! [`MemoryStore`] behind one task, so operations are applied one at a time, in arrival order.
//!
//! In the simulator the store node runs on its own simulated host, so partitions, crashes and
//! delays between nodes and store are real to the nodes.
use crate::store::MemoryStore;
use bytes::{Buf, BufMut, BytesMut};
use pushgate_core::store::{KickNotice, StoreError, StoreOp, StoreReply};
use pushgate_core::{Millis, NodeAddr};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Largest store frame accepted.
pub const MAX_STORE_FRAME_BYTES: usize = 1024 * 1024;

/// From a node to the store. (A request is moved once, into a frame: not boxed.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToStore {
    Subscribe {
        node: NodeAddr,
    },
    Request {
        id: u64,
        op: StoreOp,
        /// The epoch of the connection it went out on (0: not set).
        #[serde(default)]
        link: u64,
    },
}

/// From the store to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromStore {
    Reply {
        id: u64,
        result: Result<StoreReply, StoreError>,
    },
    Kick(KickNotice),
}

/// What the link to the store hands the node task. (A message is moved once, through the
/// channel to the node task: not boxed, which would cost an allocation per store reply.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StoreLinkEvent {
    /// The link is up (again); the node should write its routes again.
    Connected,
    Message(FromStore),
}

/// Appends one frame.
pub fn encode_frame<T: Serialize>(message: &T, out: &mut BytesMut) {
    // Store messages are plain data: serialising cannot fail.
    let body = serde_json::to_vec(message).unwrap_or_default();
    out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(&body);
}

/// Takes one frame off `buf`: `Ok(None)` when more bytes are needed.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(buf: &mut BytesMut) -> Result<Option<T>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_STORE_FRAME_BYTES {
        return Err(format!("store frame of {len} bytes is over the limit"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len);
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| format!("bad store frame: {e}"))
}

async fn read_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
) -> Option<T> {
    loop {
        match decode_frame(buf) {
            Ok(Some(message)) => return Some(message),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "store link");
                return None;
            }
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// What a connection hands the store task (moved once: not boxed).
#[allow(clippy::large_enum_variant)]
enum StoreTaskMsg {
    Op {
        op: StoreOp,
        reply: mpsc::UnboundedSender<FromStore>,
        id: u64,
        link: u64,
    },
    Subscribe {
        node: NodeAddr,
        tx: mpsc::UnboundedSender<FromStore>,
    },
}

/// Serves the store on `listener` until the task is dropped.
pub async fn serve_store(listener: TcpListener) {
    let (tx, mut rx) = mpsc::unbounded_channel::<StoreTaskMsg>();
    // One task owns the data: operations apply one at a time, in arrival order.
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut store = MemoryStore::new();
        let mut subscribers: HashMap<NodeAddr, mpsc::UnboundedSender<FromStore>> = HashMap::new();
        while let Some(msg) = rx.recv().await {
            let now: Millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            match msg {
                StoreTaskMsg::Subscribe { node, tx } => {
                    subscribers.insert(node, tx);
                }
                StoreTaskMsg::Op {
                    op,
                    reply,
                    id,
                    link,
                } => {
                    let result = store.apply_on_link(now, op, link);
                    let _ = reply.send(FromStore::Reply { id, result });
                    for notice in store.take_kicks() {
                        if let Some(sub) = subscribers.get(&notice.target()) {
                            let _ = sub.send(FromStore::Kick(notice));
                        }
                    }
                }
            }
        }
    });
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_store_conn(stream, tx.clone()));
    }
}

async fn serve_store_conn(mut stream: TcpStream, store: mpsc::UnboundedSender<StoreTaskMsg>) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<FromStore>();
    let mut inbound = BytesMut::new();
    loop {
        tokio::select! {
            biased;
            message = read_frame::<ToStore>(&mut stream, &mut inbound) => {
                let Some(message) = message else { return };
                let msg = match message {
                    ToStore::Subscribe { node } => StoreTaskMsg::Subscribe { node, tx: out_tx.clone() },
                    ToStore::Request { id, op, link } => StoreTaskMsg::Op { op, reply: out_tx.clone(), id, link },
                };
                if store.send(msg).is_err() {
                    return;
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

/// The node side of a remote store: requests go out through a connection task that
/// reconnects with backoff; answers and kick notices come back through `deliver`.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    tx: mpsc::UnboundedSender<ToStore>,
    connected: Arc<AtomicBool>,
}

impl RemoteStore {
    /// Starts the connection task. The receiver gets every message from the store. A link
    /// that leaves a request unanswered for `dead_after` (or cannot connect within it) is
    /// given up and opened again, as the Redis link does after an unanswered PING: a link
    /// that stopped moving (a partition) would otherwise keep every later request queued
    /// behind the backlog even after the network heals.
    pub fn start(
        addr: SocketAddr,
        node: NodeAddr,
        dead_after: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<StoreLinkEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (deliver, delivered) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        tokio::spawn(run_remote(
            addr,
            node,
            dead_after,
            rx,
            deliver,
            connected.clone(),
        ));
        (Self { tx, connected }, delivered)
    }

    /// True while the link to the store is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Sends a request; false when the link is down (the caller answers it as unavailable).
    pub fn request(&self, id: u64, op: StoreOp) -> bool {
        self.is_connected() && self.tx.send(ToStore::Request { id, op, link: 0 }).is_ok()
    }
}

async fn run_remote(
    addr: SocketAddr,
    node: NodeAddr,
    dead_after: Duration,
    mut rx: mpsc::UnboundedReceiver<ToStore>,
    deliver: mpsc::UnboundedSender<StoreLinkEvent>,
    connected: Arc<AtomicBool>,
) {
    let mut backoff_ms = 50;
    let epochs = crate::link_epoch::LinkEpochs::default();
    loop {
        let mut stream = match tokio::time::timeout(dead_after, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(2_000);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        backoff_ms = 50;
        epochs.open_connection();
        let mut out = BytesMut::new();
        encode_frame(&ToStore::Subscribe { node: node.clone() }, &mut out);
        if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
            continue;
        }
        // Requests queued while the link was down were already answered as unavailable.
        while rx.try_recv().is_ok() {}
        connected.store(true, Ordering::Relaxed);
        tracing::info!(%addr, "connected to the route store");
        if deliver.send(StoreLinkEvent::Connected).is_err() {
            return;
        }
        let mut inbound = BytesMut::new();
        // Requests sent on this connection and not answered yet, with when they went out;
        // at most the node's bound of pending store requests plus those it timed out, which
        // a moving link answers too.
        let mut unanswered: HashMap<u64, tokio::time::Instant> = HashMap::new();
        let mut check = tokio::time::interval(dead_after / 4);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = loop {
            tokio::select! {
                biased;
                message = read_frame::<FromStore>(&mut stream, &mut inbound) => {
                    match message {
                        Some(message) => {
                            if let FromStore::Reply { id, result } = &message {
                                unanswered.remove(id);
                                if let Err(StoreError::Fenced { newest_epoch }) = result {
                                    if epochs.refused(*newest_epoch) {
                                        tracing::warn!(newest_epoch, "the store knows a newer link epoch of this node; continuing above it");
                                    }
                                }
                            }
                            if deliver.send(StoreLinkEvent::Message(message)).is_err() {
                                return; // the node task is gone
                            }
                        }
                        None => break "the connection closed".to_owned(),
                    }
                }
                request = rx.recv() => {
                    let Some(request) = request else { return };
                    let sent_at = tokio::time::Instant::now();
                    let mut out = BytesMut::new();
                    for mut request in std::iter::once(request).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                        if let ToStore::Request { id, link, .. } = &mut request {
                            unanswered.insert(*id, sent_at);
                            *link = epochs.current();
                        }
                        encode_frame(&request, &mut out);
                    }
                    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                        break "a write failed".to_owned();
                    }
                }
                _ = check.tick() => {
                    let oldest = unanswered.values().min().map(|sent| sent.elapsed());
                    if let Some(waited) = oldest.filter(|waited| *waited >= dead_after) {
                        break format!("a request unanswered for {} ms", waited.as_millis());
                    }
                }
            }
        };
        connected.store(false, Ordering::Relaxed);
        tracing::warn!(%addr, reason = %lost, "lost the route store; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushgate_core::route::ClientType;

    /// A fake store on a loopback port that takes connections (counted), reads what comes
    /// and answers nothing.
    #[cfg(not(madsim))]
    async fn silent_store() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut sink = vec![0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        (addr, accepted)
    }

    #[cfg(not(madsim))]
    fn this_node() -> NodeAddr {
        NodeAddr {
            host: "10.0.0.9".into(),
            port: 3001,
        }
    }

    /// A store that takes requests and never answers them (a link that stopped moving): the
    /// node side gives the connection up and opens a new one, which it reports as connected
    /// again (so the node writes its routes again on a link that moves).
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn a_link_that_leaves_a_request_unanswered_is_opened_again() {
        let (addr, accepted) = silent_store().await;
        let (store, mut events) = RemoteStore::start(addr, this_node(), Duration::from_millis(200));
        let within = Duration::from_secs(10);
        let first = tokio::time::timeout(within, events.recv()).await.unwrap();
        assert_eq!(first, Some(StoreLinkEvent::Connected));
        assert!(store.request(
            1,
            StoreOp::GetRoute {
                user_id: "u".into(),
                client_type: Some(ClientType::Mobile),
                asker: None,
            }
        ));
        let again = tokio::time::timeout(within, events.recv()).await.unwrap();
        assert_eq!(again, Some(StoreLinkEvent::Connected));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Each connection of a link stamps its requests with its own epoch, above the one before:
    /// the store then refuses what was sent on the connection the node gave up once an op on
    /// the new one reached the route (`StoreState::apply_on_link`).
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn a_reopened_link_stamps_its_requests_with_a_newer_epoch() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<(usize, u64)>();
        tokio::spawn(async move {
            let mut connection = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                connection += 1;
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut inbound = BytesMut::new();
                    while let Some(message) = read_frame::<ToStore>(&mut stream, &mut inbound).await
                    {
                        if let ToStore::Request { link, .. } = message {
                            let _ = seen_tx.send((connection, link));
                        }
                    }
                });
            }
        });
        let (store, mut events) = RemoteStore::start(addr, this_node(), Duration::from_millis(200));
        let within = Duration::from_secs(10);
        let get = || StoreOp::GetRoute {
            user_id: "u".into(),
            client_type: Some(ClientType::Mobile),
            asker: None,
        };
        let mut epochs = Vec::new();
        for id in 1..=2 {
            let connected = tokio::time::timeout(within, events.recv()).await.unwrap();
            assert_eq!(connected, Some(StoreLinkEvent::Connected));
            assert!(store.request(id, get()));
            let (connection, link) = tokio::time::timeout(within, seen.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(connection, id as usize);
            epochs.push(link);
        }
        assert!(epochs[0] > 0 && epochs[1] > epochs[0], "{epochs:?}");
    }

    /// A store that knows a newer epoch of this node than its clock gives now (an earlier run
    /// stamped it before the clock stepped back) refuses the first request naming it; the
    /// link's later requests carry an epoch above it, on the same connection.
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn a_refusal_naming_a_newer_epoch_moves_the_link_above_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<u64>();
        // An hour ahead of this clock.
        let ahead = crate::link_epoch::LinkEpochs::default().open_connection() + 3_600_000_000;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut inbound = BytesMut::new();
            while let Some(message) = read_frame::<ToStore>(&mut stream, &mut inbound).await {
                if let ToStore::Request { id, link, .. } = message {
                    let _ = seen_tx.send(link);
                    let mut out = BytesMut::new();
                    let result = Err(StoreError::Fenced {
                        newest_epoch: ahead,
                    });
                    encode_frame(&FromStore::Reply { id, result }, &mut out);
                    stream.write_all(&out).await.unwrap();
                }
            }
        });
        let (store, mut events) = RemoteStore::start(addr, this_node(), Duration::from_secs(5));
        let within = Duration::from_secs(10);
        let connected = tokio::time::timeout(within, events.recv()).await.unwrap();
        assert_eq!(connected, Some(StoreLinkEvent::Connected));
        let get = || StoreOp::GetRoute {
            user_id: "u".into(),
            client_type: Some(ClientType::Mobile),
            asker: None,
        };
        assert!(store.request(1, get()));
        let first = tokio::time::timeout(within, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(first < ahead);
        let refused = tokio::time::timeout(within, events.recv()).await.unwrap();
        assert!(matches!(
            refused,
            Some(StoreLinkEvent::Message(FromStore::Reply { id: 1, .. }))
        ));
        assert!(store.request(2, get()));
        let second = tokio::time::timeout(within, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second, ahead + 1);
    }

    /// Without requests outstanding, a quiet link is left alone.
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn a_quiet_link_with_nothing_outstanding_stays_open() {
        let (addr, accepted) = silent_store().await;
        let (_store, mut events) =
            RemoteStore::start(addr, this_node(), Duration::from_millis(100));
        let first = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        assert_eq!(first.unwrap(), Some(StoreLinkEvent::Connected));
        // Many dead-link checks pass with nothing outstanding.
        let more = tokio::time::timeout(Duration::from_millis(800), events.recv()).await;
        assert!(more.is_err(), "the link reconnected: {more:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut buf = BytesMut::new();
        let message = ToStore::Request {
            id: 7,
            op: StoreOp::GetRoute {
                user_id: "u".into(),
                client_type: Some(ClientType::Mobile),
                asker: None,
            },
            link: 3,
        };
        encode_frame(&message, &mut buf);
        encode_frame(
            &FromStore::Reply {
                id: 7,
                result: Err(StoreError::Timeout),
            },
            &mut buf,
        );
        let first: ToStore = decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!(first, message);
        let second: FromStore = decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            second,
            FromStore::Reply {
                id: 7,
                result: Err(StoreError::Timeout)
            }
        );
        assert!(buf.is_empty());
        let mut big = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(decode_frame::<ToStore>(&mut big).is_err());
    }
}
