//! The Redis route store against real Redis: the same generated op sequences applied to the
//! embedded `MemoryStore` and to Redis (standalone and a three-master Cluster) answer the same,
//! op by op; MPush's own Redis data (`../shared/vectors/cluster-data.json`) reads correctly and
//! what pushgate writes has MPush's keys and values.
//!
//! These tests start `redis-server` themselves; without it they fail with the install command.
use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use pushgate::redis_store::{keys, RedisOptions, RedisStore, RedisTarget};
use pushgate::store::MemoryStore;
use pushgate::store_net::{FromStore, StoreLinkEvent};
use pushgate_core::route::ClientType;
use pushgate_core::store::{
    CachedSession, KickNotice, RouteRecord, StoreError, StoreOp, StoreReply, TaskControl,
};
use pushgate_core::NodeAddr;
use pushgate_tests::redis::{raw_command, RedisCluster, RedisSentinel, RedisServer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The node the store under test serves (its kick channel).
fn this_node() -> NodeAddr {
    NodeAddr::new("h1", 3001)
}

/// A Redis store link, driven one op at a time.
struct Linked {
    store: RedisStore,
    rx: mpsc::UnboundedReceiver<StoreLinkEvent>,
    kicks: Vec<KickNotice>,
    next_id: u64,
}

impl Linked {
    async fn connect(url: &str, node: NodeAddr) -> Self {
        let target = RedisTarget::parse(url).expect("a good URL");
        let (store, mut rx) = RedisStore::start(target, node, RedisOptions::default());
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(StoreLinkEvent::Connected)) => {}
            other => panic!("the Redis store did not connect to {url}: {other:?}"),
        }
        Self {
            store,
            rx,
            kicks: Vec::new(),
            next_id: 0,
        }
    }

    /// Performs `op` and returns its answer; kick notices that arrive meanwhile are kept.
    async fn apply(&mut self, op: StoreOp) -> Result<StoreReply, StoreError> {
        self.next_id += 1;
        let id = self.next_id;
        assert!(self.store.request(id, op.clone()), "the link is down");
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await {
                Ok(Some(StoreLinkEvent::Message(FromStore::Reply { id: got, result }))) => {
                    assert_eq!(got, id, "a reply to another request");
                    return result;
                }
                Ok(Some(StoreLinkEvent::Message(FromStore::Kick(notice)))) => {
                    self.kicks.push(notice)
                }
                Ok(Some(StoreLinkEvent::Connected)) => panic!("the link reconnected during {op:?}"),
                Ok(None) => panic!("the link task ended"),
                Err(_) => panic!("no answer to {op:?} within 5 s"),
            }
        }
    }

    /// Waits until `count` kick notices have arrived (or `limit` passed); takes them.
    async fn take_kicks(&mut self, count: usize, limit: Duration) -> Vec<KickNotice> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.kicks.len() < count {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(StoreLinkEvent::Message(FromStore::Kick(notice)))) => {
                    self.kicks.push(notice)
                }
                Ok(other) => panic!("unexpected link event {other:?}"),
                Err(_) => break,
            }
        }
        std::mem::take(&mut self.kicks)
    }
}

/// The Redis store's ops run straight on a command connection, on a link epoch the caller
/// picks (the link stamps its own): for comparing with `MemoryStore::apply_on_link`.
struct Scripted {
    data: pushgate::redis_store::conn::DataConn,
}

impl Scripted {
    async fn connect(url: &str) -> Self {
        let target = RedisTarget::parse(url).expect("a good URL");
        let opened = pushgate::redis_store::conn::open(&target, Duration::from_secs(10))
            .await
            .expect("a Redis connection");
        Self { data: opened.data }
    }

    /// Performs `op` as sent on a link of epoch `link_epoch`, then its status event.
    async fn apply(&mut self, op: StoreOp, link_epoch: u64) -> Result<StoreReply, StoreError> {
        let outcome = pushgate::redis_store::ops::execute(&mut self.data, op, link_epoch).await;
        if let Some(event) = outcome.event {
            pushgate::redis_store::ops::send_status_event(&mut self.data, event)
                .await
                .expect("the status event");
        }
        outcome.reply.map_err(|error| error.to_store_error())
    }
}

/// `reply` with the links its route remembers cleared: their epochs are the link's clock
/// (`a_write_held_on_a_replaced_link_is_refused_after_the_new_link_reached_the_route` checks
/// them).
fn unlinked(reply: Result<StoreReply, StoreError>) -> Result<StoreReply, StoreError> {
    let clear = |mut route: RouteRecord| {
        route.links.clear();
        route
    };
    reply.map(|reply| match reply {
        StoreReply::Route(Some((ct, route))) => StoreReply::Route(Some((ct, clear(route)))),
        StoreReply::Previous(Some(route)) => StoreReply::Previous(Some(clear(route))),
        StoreReply::Stale { current } => StoreReply::Stale {
            current: clear(current),
        },
        other => other,
    })
}

// ---------------------------------------------------------------------------------------------
// Generated op sequences

const HOSTS: [(&str, u16); 2] = [("h1", 3001), ("h2", 3002)];
const DEVICES: [&str; 3] = ["", "dA", "dB"];
const CONNS: [Option<&str>; 3] = [None, Some("c1"), Some("c2")];
/// Versions as nodes make them (epoch ms × 1000, about 2^51 today).
const EPOCH_VERSION: u64 = 1_764_650_000_000_000;

/// A bind version: small ones, and ones the size nodes write.
fn version() -> impl Strategy<Value = u64> {
    prop_oneof![0..4u64, (0..3u64).prop_map(|k| EPOCH_VERSION + k)]
}

fn client_type() -> impl Strategy<Value = ClientType> {
    prop_oneof![
        4 => Just(ClientType::Mobile),
        2 => Just(ClientType::Pc),
        1 => Just(ClientType::Web),
        1 => Just(ClientType::Unknown),
    ]
}

fn user() -> impl Strategy<Value = String> {
    (0..2usize).prop_map(|u| format!("u{u}"))
}

fn route() -> impl Strategy<Value = RouteRecord> {
    (
        0..2usize,
        0..3usize,
        0..3usize,
        version(),
        prop_oneof![
            0..3u64,
            (1..3u64).prop_map(|k| EPOCH_VERSION + k),
            // Newer than the others by more than two nodes' clocks may disagree.
            Just(EPOCH_VERSION + pushgate_core::store::MAX_CLOCK_DISAGREEMENT_US + 3),
        ],
        any::<bool>(),
    )
        .prop_map(|(h, d, c, version, conn_version, android)| RouteRecord {
            host: HOSTS[h].0.into(),
            port: HOSTS[h].1,
            device_id: DEVICES[d].into(),
            os_name: if android {
                "android".into()
            } else {
                String::new()
            },
            client_version: "2.0".into(),
            conn_id: CONNS[c].map(str::to_owned),
            version,
            conn_version,
            ended: Vec::new(),
            links: Vec::new(),
        })
}

fn session() -> impl Strategy<Value = CachedSession> {
    (any::<[u8; 16]>(), any::<[u8; 16]>(), 0..2usize).prop_map(|(key, iv, d)| CachedSession {
        os_name: "android".into(),
        os_version: "6.0".into(),
        client_version: "2.0".into(),
        device_id: DEVICES[d + 1].into(),
        session_key: key,
        iv,
    })
}

/// The epoch of the link an op comes on: none, small ones (so ops of one node come on older
/// and newer links), and ones the size nodes stamp (epoch µs, about 2^51 today).
fn link_epoch() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        1..4u64,
        (0..2u64).prop_map(|k| EPOCH_VERSION + k)
    ]
}

fn op() -> impl Strategy<Value = StoreOp> {
    prop_oneof![
        6 => (user(), client_type(), route()).prop_map(|(user_id, client_type, route)| {
            StoreOp::PutRoute { user_id, client_type, route }
        }),
        4 => (user(), client_type(), 0..2usize, 1..3usize, version()).prop_map(
            |(user_id, client_type, h, c, version)| StoreOp::SetRouteOffline {
                user_id,
                client_type,
                node: NodeAddr::new(HOSTS[h].0, HOSTS[h].1),
                conn_id: CONNS[c].unwrap_or_default().into(),
                version,
            }
        ),
        2 => (user(), client_type(), 0..2usize, version(), route()).prop_map(
            |(user_id, client_type, h, version, previous)| StoreOp::RestoreRoute {
                user_id,
                client_type,
                node: NodeAddr::new(HOSTS[h].0, HOSTS[h].1),
                version,
                previous: Box::new(previous),
            }
        ),
        4 => (user(), proptest::option::of(client_type()), proptest::option::of(0..2usize)).prop_map(
            |(user_id, client_type, h)| StoreOp::GetRoute {
                user_id,
                client_type,
                asker: h.map(|h| NodeAddr::new(HOSTS[h].0, HOSTS[h].1)),
            }
        ),
        1 => ((0..2usize), session()).prop_map(|(s, session)| StoreOp::PutSession {
            session_id: format!("s{s}"),
            session,
            ttl_ms: 3_600_000,
        }),
        1 => (0..3usize).prop_map(|s| StoreOp::GetSession { session_id: format!("s{s}") }),
        1 => (user(), client_type(), 0..2usize, 0..3u64).prop_map(|(user_id, ct, h, version)| {
            StoreOp::PublishKick {
                notice: KickNotice {
                    client_type: ct.code(),
                    conn_id: "c1".into(),
                    device_id: "dA".into(),
                    target_port: HOSTS[h].1,
                    target_server: HOSTS[h].0.into(),
                    user_id,
                    version,
                },
            }
        }),
        1 => (0..2usize).prop_map(|t| StoreOp::GetTaskControl { task_id: format!("t{t}") }),
        1 => (0..2usize, 0..3u64, proptest::collection::vec(user(), 0..3)).prop_map(
            |(t, sent, user_ids)| StoreOp::AddTaskProgress {
                task_id: format!("t{t}"),
                sent,
                user_ids,
            }
        ),
    ]
}

/// `op` with every user, session and task id given `prefix`, so each case starts on empty keys.
fn prefixed(op: StoreOp, prefix: &str) -> StoreOp {
    let p = |id: String| format!("{prefix}{id}");
    match op {
        StoreOp::PutRoute {
            user_id,
            client_type,
            route,
        } => StoreOp::PutRoute {
            user_id: p(user_id),
            client_type,
            route,
        },
        StoreOp::SetRouteOffline {
            user_id,
            client_type,
            node,
            conn_id,
            version,
        } => StoreOp::SetRouteOffline {
            user_id: p(user_id),
            client_type,
            node,
            conn_id,
            version,
        },
        StoreOp::RestoreRoute {
            user_id,
            client_type,
            node,
            version,
            previous,
        } => StoreOp::RestoreRoute {
            user_id: p(user_id),
            client_type,
            node,
            version,
            previous,
        },
        StoreOp::GetRoute {
            user_id,
            client_type,
            asker,
        } => StoreOp::GetRoute {
            user_id: p(user_id),
            client_type,
            asker,
        },
        StoreOp::PutSession {
            session_id,
            session,
            ttl_ms,
        } => StoreOp::PutSession {
            session_id: p(session_id),
            session,
            ttl_ms,
        },
        StoreOp::GetSession { session_id } => StoreOp::GetSession {
            session_id: p(session_id),
        },
        StoreOp::PublishKick { mut notice } => {
            notice.user_id = p(notice.user_id);
            StoreOp::PublishKick { notice }
        }
        StoreOp::GetTaskControl { task_id } => StoreOp::GetTaskControl {
            task_id: p(task_id),
        },
        StoreOp::AddTaskProgress {
            task_id,
            sent,
            user_ids,
        } => StoreOp::AddTaskProgress {
            task_id: p(task_id),
            sent,
            user_ids,
        },
    }
}

/// How the contract suite reads Redis directly (task progress).
enum Direct {
    /// One server (`redis://…`).
    Single(String),
    /// Cluster nodes (`redis://…` each).
    Cluster(Vec<String>),
}

/// Runs `cases` generated sequences against MemoryStore and the Redis store at `url`; returns
/// (cases, ops) run.
fn contract(url: &str, direct: Direct, cases: u32, label: &str) -> (u64, u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let linked = tokio::sync::Mutex::new(runtime.block_on(Linked::connect(url, this_node())));
    let scripted = tokio::sync::Mutex::new(runtime.block_on(Scripted::connect(url)));
    static CASE: AtomicU64 = AtomicU64::new(0);
    let ops_run = AtomicU64::new(0);
    let cases_run = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &proptest::collection::vec((op(), link_epoch()), 1..40),
        |ops| {
            let prefix = format!("{label}{}-", CASE.fetch_add(1, Ordering::Relaxed));
            cases_run.fetch_add(1, Ordering::Relaxed);
            runtime.block_on(async {
                let mut linked = linked.lock().await;
                let mut scripted = scripted.lock().await;
                let mut memory = MemoryStore::new();
                let mut expected_kicks = Vec::new();
                let mut users_reached: std::collections::HashMap<String, usize> =
                    Default::default();
                for (step, (op, epoch)) in ops.into_iter().enumerate() {
                    let op = prefixed(op, &prefix);
                    if let StoreOp::AddTaskProgress {
                        task_id, user_ids, ..
                    } = &op
                    {
                        *users_reached.entry(task_id.clone()).or_default() += user_ids.len();
                    }
                    let want = memory.apply_on_link(0, op.clone(), epoch);
                    expected_kicks.extend(
                        memory
                            .take_kicks()
                            .into_iter()
                            .filter(|n| n.target() == this_node()),
                    );
                    let got = scripted.apply(op.clone(), epoch).await;
                    ops_run.fetch_add(1, Ordering::Relaxed);
                    prop_assert_eq!(&got, &want, "step {} op {:?} on link {}", step, op, epoch);
                }
                let kicks = linked
                    .take_kicks(expected_kicks.len(), Duration::from_secs(3))
                    .await;
                prop_assert_eq!(&kicks, &expected_kicks, "kick notices delivered");
                // Broadcast progress: sent counts (HINCRBY sc) and users reached (LPUSH {t}:sui).
                for t in 0..2 {
                    let task_id = format!("{prefix}t{t}");
                    let (sent, listed) = match &direct {
                        Direct::Cluster(nodes) => {
                            let client = redis::cluster::ClusterClient::new(nodes.clone())
                                .expect("cluster client");
                            let mut conn = client.get_connection().expect("cluster connection");
                            read_progress(&mut conn, &task_id)
                        }
                        Direct::Single(url) => {
                            let client = redis::Client::open(url.as_str()).expect("client");
                            let mut conn = client.get_connection().expect("connection");
                            read_progress(&mut conn, &task_id)
                        }
                    };
                    let progress = memory.state().task_progress(&task_id);
                    prop_assert_eq!(sent, progress.sent, "sc of {}", task_id);
                    prop_assert_eq!(listed, progress.user_ids.len(), "users of {}", task_id);
                    prop_assert_eq!(
                        listed,
                        users_reached.get(&task_id).copied().unwrap_or(0),
                        "users listed for {}",
                        task_id
                    );
                }
                Ok::<(), TestCaseError>(())
            })
        },
    );
    if let Err(error) = result {
        panic!("{label}: the Redis store and MemoryStore disagree: {error}");
    }
    (
        cases_run.load(Ordering::Relaxed),
        ops_run.load(Ordering::Relaxed),
    )
}

fn read_progress(conn: &mut impl redis::ConnectionLike, task_id: &str) -> (u64, usize) {
    let sent: Option<u64> = redis::cmd("HGET")
        .arg(keys::task(task_id))
        .arg(keys::TASK_SENT)
        .query(conn)
        .expect("HGET sc");
    let listed: usize = redis::cmd("LLEN")
        .arg(keys::task_users(task_id))
        .query(conn)
        .expect("LLEN");
    (sent.unwrap_or(0), listed)
}

#[test]
fn contract_standalone_redis_answers_as_memory_store() {
    let redis = RedisServer::start();
    let started = Instant::now();
    let (cases, ops) = contract(&redis.url(), Direct::Single(redis.url()), 256, "s");
    let elapsed = started.elapsed();
    eprintln!(
        "standalone contract: {cases} cases, {ops} ops in {elapsed:?} ({:.0} µs per op incl. MemoryStore)",
        elapsed.as_micros() as f64 / ops.max(1) as f64
    );
    assert!(ops > 1000, "too few ops ran: {ops}");
}

#[test]
fn contract_redis_cluster_answers_as_memory_store() {
    let cluster = RedisCluster::start();
    let started = Instant::now();
    let nodes = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}", n.port))
        .collect();
    let (cases, ops) = contract(&cluster.url(), Direct::Cluster(nodes), 128, "c");
    eprintln!(
        "cluster contract: {cases} cases, {ops} ops in {:?}",
        started.elapsed()
    );
    assert!(ops > 500, "too few ops ran: {ops}");
}

// ---------------------------------------------------------------------------------------------
// MPush's own data (cluster-data.json)

/// Every command MPush sent to Redis in the captured run, as argument lists.
fn mpush_commands() -> Vec<Vec<String>> {
    let path = pushgate_tests::shared_path("vectors/cluster-data.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let data: serde_json::Value = serde_json::from_str(&text).expect("cluster-data.json is JSON");
    let mut out = Vec::new();
    for step in data["redis_commands"].as_array().expect("redis_commands") {
        for command in step["commands"].as_array().expect("commands") {
            let args: Vec<String> = command["cmd"]
                .as_array()
                .expect("cmd")
                .iter()
                .map(|a| a.as_str().expect("a string argument").to_owned())
                .collect();
            out.push(args);
        }
    }
    assert!(out.len() > 50, "cluster-data.json has too few commands");
    out
}

fn mpush_hsets() -> Vec<(String, String, String)> {
    mpush_commands()
        .into_iter()
        .filter(|c| c[0] == "HSET" && c[1].starts_with("mp:ur:"))
        .map(|c| (c[1].clone(), c[2].clone(), c[3].clone()))
        .collect()
}

async fn direct(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("a direct connection")
}

fn mpush_node() -> NodeAddr {
    NodeAddr::new("127.0.0.1", 26001)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_sessions_mpush_wrote_read_back() {
    let redis = RedisServer::start();
    let mut raw = direct(&redis).await;
    let mut linked = Linked::connect(&redis.url(), mpush_node()).await;
    let hsets = mpush_hsets();
    assert!(hsets.len() >= 10);
    for (key, field, value) in hsets {
        let () = redis::cmd("HSET")
            .arg(&key)
            .arg(&field)
            .arg(&value)
            .query_async::<i64>(&mut raw)
            .await
            .map(|_| ())
            .unwrap();
        let user_id = key.strip_prefix("mp:ur:").unwrap().to_owned();
        let client_type = ClientType::from_code(field.parse().unwrap()).unwrap();
        let want: RouteRecord = serde_json::from_str(&value).unwrap();
        assert_eq!((want.version, want.conn_version), (0, 0));
        assert_eq!(
            linked
                .apply(StoreOp::GetRoute {
                    user_id,
                    client_type: Some(client_type),
                    asker: None,
                })
                .await,
            Ok(StoreReply::Route(Some((client_type, want)))),
            "{value}"
        );
    }
    // The final state: user-1 offline on mobile (device-B) and PC: the best route is mobile's.
    let best = linked
        .apply(StoreOp::GetRoute {
            user_id: "user-1".into(),
            client_type: None,
            asker: None,
        })
        .await;
    match best {
        Ok(StoreReply::Route(Some((ClientType::Mobile, route)))) => {
            assert_eq!(route.device_id, "device-B");
            assert!(!route.is_online());
        }
        other => panic!("best route of user-1: {other:?}"),
    }
    let sets: Vec<Vec<String>> = mpush_commands()
        .into_iter()
        .filter(|c| c[0] == "SET" && c[1].starts_with("mp:rs:"))
        .collect();
    assert!(sets.len() >= 5);
    for set in sets {
        let () = redis::cmd("SET")
            .arg(&set[1])
            .arg(&set[2])
            .query_async(&mut raw)
            .await
            .unwrap();
        let session_id = set[1].strip_prefix("mp:rs:").unwrap().to_owned();
        let want = CachedSession::from_mpush_string(&set[2]).expect("MPush's session text");
        assert_eq!(
            linked.apply(StoreOp::GetSession { session_id }).await,
            Ok(StoreReply::Session(Some(want)))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_mpush_wrote_counts_as_the_oldest_bind() {
    let redis = RedisServer::start();
    let mut raw = direct(&redis).await;
    let mut linked = Linked::connect(&redis.url(), mpush_node()).await;
    let (key, field, value) = mpush_hsets().into_iter().next().unwrap();
    let java: RouteRecord = serde_json::from_str(&value).unwrap();
    assert!(java.is_online());
    let _: i64 = redis::cmd("HSET")
        .arg(&key)
        .arg(&field)
        .arg(&value)
        .query_async(&mut raw)
        .await
        .unwrap();
    let user_id = key.strip_prefix("mp:ur:").unwrap().to_owned();
    // Any versioned bind replaces it, even one of the same device with a connection age
    // (MPush's route has none), and the answer carries MPush's route (to kick it).
    let ours = RouteRecord {
        host: "127.0.0.1".into(),
        port: 26011,
        device_id: java.device_id.clone(),
        os_name: "android".into(),
        client_version: "2.0".into(),
        conn_id: Some("pg-conn-1".into()),
        version: 1,
        conn_version: 1,
        ended: Vec::new(),
        links: Vec::new(),
    };
    assert_eq!(
        linked
            .apply(StoreOp::PutRoute {
                user_id: user_id.clone(),
                client_type: ClientType::Mobile,
                route: ours.clone(),
            })
            .await,
        Ok(StoreReply::Previous(Some(java.clone())))
    );
    // MPush's offline mark for its connection (bind version 0) no longer matches: the route
    // stays online and remembers that bind as ended.
    assert_eq!(
        linked
            .apply(StoreOp::SetRouteOffline {
                user_id: user_id.clone(),
                client_type: ClientType::Mobile,
                node: mpush_node(),
                conn_id: java.conn_id.clone().unwrap(),
                version: 0,
            })
            .await,
        Ok(StoreReply::Done)
    );
    assert_eq!(
        unlinked(
            linked
                .apply(StoreOp::GetRoute {
                    user_id: user_id.clone(),
                    client_type: Some(ClientType::Mobile),
                    asker: None,
                })
                .await
        ),
        Ok(StoreReply::Route(Some((
            ClientType::Mobile,
            RouteRecord {
                ended: vec![pushgate_core::store::EndedBind {
                    host: "127.0.0.1".into(),
                    port: 26001,
                    version: 0,
                }],
                ..ours
            }
        ))))
    );
    // A version Lua cannot compare exactly (above 2^53) is refused, not compared wrongly.
    let refused = linked
        .apply(StoreOp::PutRoute {
            user_id,
            client_type: ClientType::Mobile,
            route: RouteRecord {
                version: u64::MAX,
                ..java
            },
        })
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(ref reason)) if reason.contains("2^53")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_pushgate_writes_is_what_mpush_writes() {
    let redis = RedisServer::start();
    let mut raw = direct(&redis).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut events = client.get_async_pubsub().await.unwrap();
    events.subscribe(keys::ONLINE_CHANNEL).await.unwrap();
    events.subscribe(keys::OFFLINE_CHANNEL).await.unwrap();
    let mut events = events.into_on_message();
    let mut linked = Linked::connect(&redis.url(), mpush_node()).await;

    // Bind: MPush's online route, then its offline marker (byte for byte: MPush's key order).
    let commands = mpush_commands();
    let online_json = &commands
        .iter()
        .find(|c| c[0] == "HSET" && c[1] == "mp:ur:user-1" && c[2] == "1")
        .unwrap()[3];
    let offline_json = r#"{"port":26001,"host":"127.0.0.1","deviceId":"device-A","osName":"android","clientVersion":"2.0"}"#;
    assert!(commands
        .iter()
        .any(|c| c[0] == "HSET" && c[3] == offline_json));
    let route: RouteRecord = serde_json::from_str(online_json).unwrap();
    assert_eq!(
        linked
            .apply(StoreOp::PutRoute {
                user_id: "user-1".into(),
                client_type: ClientType::Mobile,
                route: route.clone(),
            })
            .await,
        Ok(StoreReply::Previous(None))
    );
    let stored: String = redis::cmd("HGET")
        .arg("mp:ur:user-1")
        .arg("1")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        &stored, online_json,
        "an unversioned route is MPush's route, byte for byte"
    );
    let message = tokio::time::timeout(Duration::from_secs(3), events.next())
        .await
        .expect("an online event")
        .unwrap();
    assert_eq!(
        (
            message.get_channel_name(),
            message.get_payload::<String>().unwrap()
        ),
        ("/mpush/online/", "user-1".to_owned())
    );
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg("mp:oul:127.0.0.1")
        .arg("user-1")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(score, Some(0.0));

    assert_eq!(
        linked
            .apply(StoreOp::SetRouteOffline {
                user_id: "user-1".into(),
                client_type: ClientType::Mobile,
                node: mpush_node(),
                conn_id: route.conn_id.clone().unwrap(),
                version: 0,
            })
            .await,
        Ok(StoreReply::Done)
    );
    let stored: String = redis::cmd("HGET")
        .arg("mp:ur:user-1")
        .arg("1")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        stored, offline_json,
        "MPush's offline marker, byte for byte"
    );
    let message = tokio::time::timeout(Duration::from_secs(3), events.next())
        .await
        .expect("an offline event")
        .unwrap();
    assert_eq!(
        (
            message.get_channel_name(),
            message.get_payload::<String>().unwrap()
        ),
        ("/mpush/offline/", "user-1".to_owned())
    );
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg("mp:oul:127.0.0.1")
        .arg("user-1")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(score, None);

    // A versioned route keeps its versions through the offline mark.
    let versioned = RouteRecord {
        conn_id: Some("c-9".into()),
        version: 1_764_650_000_000_123,
        conn_version: 1_764_650_000_000_001,
        ..route.clone()
    };
    linked
        .apply(StoreOp::PutRoute {
            user_id: "user-9".into(),
            client_type: ClientType::Pc,
            route: versioned.clone(),
        })
        .await
        .unwrap();
    linked
        .apply(StoreOp::SetRouteOffline {
            user_id: "user-9".into(),
            client_type: ClientType::Pc,
            node: mpush_node(),
            conn_id: "c-9".into(),
            version: versioned.version,
        })
        .await
        .unwrap();
    let stored: String = redis::cmd("HGET")
        .arg("mp:ur:user-9")
        .arg("2")
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut marked = serde_json::from_str::<RouteRecord>(&stored).unwrap();
    assert_eq!(
        marked.links.len(),
        1,
        "a versioned route remembers the node's link: {stored}"
    );
    marked.links.clear();
    assert_eq!(
        marked,
        RouteRecord {
            conn_id: None,
            ..versioned
        },
        "{stored}"
    );

    // Sessions: MPush's text, with its TTL.
    let set = commands
        .iter()
        .find(|c| c[0] == "SET" && c[1].starts_with("mp:rs:"))
        .unwrap();
    let session = CachedSession::from_mpush_string(&set[2]).unwrap();
    linked
        .apply(StoreOp::PutSession {
            session_id: set[1].strip_prefix("mp:rs:").unwrap().into(),
            session,
            ttl_ms: 86_400_000,
        })
        .await
        .unwrap();
    let text: String = redis::cmd("GET")
        .arg(&set[1])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(&text, &set[2]);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&set[1])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((86_390..=86_400).contains(&ttl), "TTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_notices_travel_in_mpush_json() {
    let redis = RedisServer::start();
    let mut raw = direct(&redis).await;
    let mut linked = Linked::connect(&redis.url(), mpush_node()).await;
    let publish = mpush_commands()
        .into_iter()
        .find(|c| c[0] == "PUBLISH" && c[1].starts_with("/mpush/kick/"))
        .expect("MPush's cross-server kick");
    assert_eq!(publish[1], keys::kick_channel(&mpush_node()));
    let mpush_json: serde_json::Value = serde_json::from_str(&publish[2]).unwrap();

    // MPush's notice, published as MPush did, reaches this node.
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&publish[1])
        .arg(&publish[2])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(receivers, 1, "the store subscribed to its kick channel");
    let kicks = linked.take_kicks(1, Duration::from_secs(3)).await;
    let notice = KickNotice {
        client_type: 1,
        conn_id: "11c9ec34".into(),
        device_id: "device-D".into(),
        target_port: 26001,
        target_server: "127.0.0.1".into(),
        user_id: "user-2".into(),
        version: 0,
    };
    assert_eq!(kicks, vec![notice.clone()]);
    // Garbage on the channel is dropped, not delivered, and does not break the link.
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&publish[1])
        .arg("{\\clientType\\\":1")
        .query_async(&mut raw)
        .await
        .unwrap();

    // pushgate's notice has MPush's keys and values.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(&publish[1]).await.unwrap();
    let mut sub = sub.into_on_message();
    assert_eq!(
        linked
            .apply(StoreOp::PublishKick {
                notice: notice.clone()
            })
            .await,
        Ok(StoreReply::Done)
    );
    let message = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("the kick message")
        .unwrap();
    let sent: serde_json::Value =
        serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(sent, mpush_json);
    assert_eq!(
        linked.take_kicks(1, Duration::from_secs(3)).await,
        vec![notice]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_task_control_and_progress_in_mpush_keys() {
    let redis = RedisServer::start();
    let mut raw = direct(&redis).await;
    let mut linked = Linked::connect(&redis.url(), mpush_node()).await;
    let control = |task: &str| StoreOp::GetTaskControl {
        task_id: task.into(),
    };
    assert_eq!(
        linked.apply(control("task-1")).await,
        Ok(StoreReply::TaskControl(TaskControl::default()))
    );
    let _: i64 = redis::cmd("HSET")
        .arg("mp:pttask-1")
        .arg("q")
        .arg("200")
        .arg("c")
        .arg("1")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        linked.apply(control("task-1")).await,
        Ok(StoreReply::TaskControl(TaskControl {
            qps: Some(200),
            cancelled: true
        }))
    );
    // MPush's progress of the captured run: HINCRBY sc 1 and no users (no LPUSH).
    assert_eq!(
        linked
            .apply(StoreOp::AddTaskProgress {
                task_id: "task-1".into(),
                sent: 1,
                user_ids: vec![],
            })
            .await,
        Ok(StoreReply::Done)
    );
    let sc: String = redis::cmd("HGET")
        .arg("mp:pttask-1")
        .arg("sc")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(sc, "1");
    let exists: i64 = redis::cmd("EXISTS")
        .arg("task-1:sui")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    linked
        .apply(StoreOp::AddTaskProgress {
            task_id: "task-1".into(),
            sent: 2,
            user_ids: vec!["user-1".into(), "user-2".into()],
        })
        .await
        .unwrap();
    let users: Vec<String> = redis::cmd("LRANGE")
        .arg("task-1:sui")
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(users, vec!["user-2".to_owned(), "user-1".to_owned()]);
    let sc: String = redis::cmd("HGET")
        .arg("mp:pttask-1")
        .arg("sc")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(sc, "3");
}

// ---------------------------------------------------------------------------------------------
// Sentinel

/// Waits until the Sentinel knows the replica and the replica is in sync with the master.
fn wait_sentinel_ready(setup: &RedisSentinel) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replicas = raw_command(
            setup.sentinel.port,
            &[
                "SENTINEL",
                "REPLICAS",
                pushgate_tests::redis::SENTINEL_SERVICE,
            ],
        )
        .unwrap_or_default();
        let link = raw_command(setup.replica.port(), &["INFO", "replication"]).unwrap_or_default();
        if replicas.contains(&setup.replica.port().to_string())
            && link.contains("master_link_status:up")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the Sentinel setup did not settle: {replicas} {link}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn contract_sentinel_master_answers_as_memory_store() {
    let setup = RedisSentinel::start();
    wait_sentinel_ready(&setup);
    let (cases, ops) = contract(&setup.url(), Direct::Single(setup.master.url()), 48, "n");
    eprintln!("sentinel contract: {cases} cases, {ops} ops");
    assert!(ops > 200, "too few ops ran: {ops}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed_to_the_new_master() {
    let mut setup = RedisSentinel::start();
    wait_sentinel_ready(&setup);
    let mut linked = Linked::connect(&setup.url(), this_node()).await;
    let route = RouteRecord {
        host: "h1".into(),
        port: 3001,
        device_id: "dA".into(),
        os_name: "android".into(),
        client_version: "2.0".into(),
        conn_id: Some("c1".into()),
        version: 10,
        conn_version: 5,
        ended: Vec::new(),
        links: Vec::new(),
    };
    let put = |route: RouteRecord| StoreOp::PutRoute {
        user_id: "fo-user".into(),
        client_type: ClientType::Mobile,
        route,
    };
    assert_eq!(
        linked.apply(put(route.clone())).await,
        Ok(StoreReply::Previous(None))
    );
    // Replicated before the master dies (WAIT: one replica acknowledged).
    let acked = raw_command(setup.master.port(), &["WAIT", "1", "2000"]).unwrap();
    assert!(acked.starts_with(":1"), "WAIT: {acked}");

    setup.master.process.kill();
    let started = Instant::now();
    // The link notices, asks the Sentinel again until it names the promoted replica, and
    // reports a new connection (the node then writes its routes again).
    loop {
        match tokio::time::timeout(Duration::from_secs(30), linked.rx.recv()).await {
            Ok(Some(StoreLinkEvent::Connected)) => break,
            Ok(Some(_)) => {}
            other => panic!("no reconnect after the failover: {other:?}"),
        }
    }
    eprintln!("sentinel failover followed in {:?}", started.elapsed());
    assert_eq!(setup.master_port(), Some(setup.replica.port()));
    assert_eq!(
        unlinked(
            linked
                .apply(StoreOp::GetRoute {
                    user_id: "fo-user".into(),
                    client_type: Some(ClientType::Mobile),
                    asker: None,
                })
                .await
        ),
        Ok(StoreReply::Route(Some((ClientType::Mobile, route.clone()))))
    );
    // Writes go to the new master.
    let newer = RouteRecord {
        version: 11,
        ..route.clone()
    };
    assert_eq!(
        unlinked(linked.apply(put(newer)).await),
        Ok(StoreReply::Previous(Some(route)))
    );
}

// ---------------------------------------------------------------------------------------------
// Round trips, deadlines

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_and_pipelined_throughput_against_local_redis() {
    let redis = RedisServer::start();
    let mut linked = Linked::connect(&redis.url(), this_node()).await;
    let route = |n: u64| RouteRecord {
        host: "h1".into(),
        port: 3001,
        device_id: format!("d{n}"),
        os_name: "android".into(),
        client_version: "2.0".into(),
        conn_id: Some(format!("c{n}")),
        version: n + 1,
        conn_version: n + 1,
        ended: Vec::new(),
        links: Vec::new(),
    };
    // One op at a time: the round trip of each kind.
    const SEQUENTIAL: u64 = 1000;
    for (name, make) in [
        (
            "put_route",
            Box::new(|n: u64| StoreOp::PutRoute {
                user_id: format!("rt{}", n % 100),
                client_type: ClientType::Mobile,
                route: route(n),
            }) as Box<dyn Fn(u64) -> StoreOp>,
        ),
        (
            "get_route",
            Box::new(|n: u64| StoreOp::GetRoute {
                user_id: format!("rt{}", n % 100),
                client_type: None,
                asker: None,
            }),
        ),
        (
            "set_route_offline",
            Box::new(move |n: u64| StoreOp::SetRouteOffline {
                user_id: format!("rt{}", n % 100),
                client_type: ClientType::Mobile,
                node: this_node(),
                conn_id: format!("c{n}"),
                version: n + 1,
            }),
        ),
    ] {
        let started = Instant::now();
        for n in 0..SEQUENTIAL {
            linked.apply(make(n)).await.expect("an answer");
        }
        let per_op = started.elapsed() / SEQUENTIAL as u32;
        eprintln!("{name}: {per_op:?} per op, one at a time");
    }
    // Many in flight: pipelined on one connection.
    const PIPELINED: u64 = 20_000;
    let started = Instant::now();
    let mut answered = 0u64;
    let mut sent = 0u64;
    while answered < PIPELINED {
        while sent < PIPELINED && sent - answered < 512 {
            sent += 1;
            assert!(linked.store.request(
                1_000_000 + sent,
                StoreOp::PutRoute {
                    user_id: format!("pl{}", sent % 5000),
                    client_type: ClientType::Mobile,
                    route: route(sent),
                }
            ));
        }
        match tokio::time::timeout(Duration::from_secs(5), linked.rx.recv()).await {
            Ok(Some(StoreLinkEvent::Message(FromStore::Reply { result, .. }))) => {
                assert!(result.is_ok(), "{result:?}");
                answered += 1;
            }
            other => panic!("pipelined: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "pipelined put_route (512 in flight): {PIPELINED} in {elapsed:?} = {:.0} ops/s",
        PIPELINED as f64 / elapsed.as_secs_f64()
    );
    // Redis's own time per script call (the route writes' Lua), from its command stats.
    let stats = redis.command(&["INFO", "commandstats"]);
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_eval")) {
        eprintln!("redis {line}");
    }
}

/// A Redis store link to `redis` with `options`, once it reports itself connected.
async fn start_connected(
    redis: &RedisServer,
    options: RedisOptions,
) -> (RedisStore, mpsc::UnboundedReceiver<StoreLinkEvent>) {
    let target = RedisTarget::parse(&redis.url()).unwrap();
    let (store, mut rx) = RedisStore::start(target, this_node(), options);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap(),
        Some(StoreLinkEvent::Connected)
    );
    (store, rx)
}

/// Requests beyond the link's slots wait in its queue (as values, not tasks) and are each
/// answered once, in full, when slots free up; while Redis stalls, each is answered once,
/// within its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_slots_is_answered_in_full_and_waiting_requests_keep_their_deadline() {
    let redis = RedisServer::start();
    let (mut store, mut rx) = start_connected(
        &redis,
        RedisOptions {
            op_timeout: Duration::from_millis(400),
            max_in_flight: 4,
            // No PING during the test: a stall must be answered by the deadlines alone.
            ping_interval: Duration::from_secs(60),
            ..RedisOptions::default()
        },
    )
    .await;
    let get = |user: u64| StoreOp::GetRoute {
        user_id: format!("burst-{user}"),
        client_type: None,
        asker: None,
    };
    // The next `count` answers, each id once.
    async fn answers(
        rx: &mut mpsc::UnboundedReceiver<StoreLinkEvent>,
        count: usize,
    ) -> std::collections::BTreeMap<u64, Result<StoreReply, StoreError>> {
        let mut got = std::collections::BTreeMap::new();
        while got.len() < count {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(StoreLinkEvent::Message(FromStore::Reply { id, result }))) => {
                    assert!(
                        got.insert(id, result).is_none(),
                        "request {id} answered twice"
                    );
                }
                Ok(Some(_)) => {}
                other => panic!("{} of {count} answered, then {other:?}", got.len()),
            }
        }
        got
    }
    const BURST: u64 = 500;
    for id in 1..=BURST {
        assert!(store.request(id, get(id)));
    }
    let got = answers(&mut rx, BURST as usize).await;
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=BURST).collect::<Vec<_>>()
    );
    assert!(
        got.values()
            .all(|r| matches!(r, Ok(StoreReply::Route(None)))),
        "{got:?}"
    );
    // Redis stalls: the four in flight time out at their deadline and the link gives up the
    // connection that left them unanswered; every request, in flight or queued, is answered
    // once (timed out or unavailable), promptly.
    redis.command(&["CLIENT", "PAUSE", "2000", "ALL"]);
    let started = Instant::now();
    for id in BURST + 1..=BURST + 20 {
        assert!(store.request(id, get(id)));
    }
    let got = answers(&mut rx, 20).await;
    let waited = started.elapsed();
    assert!(
        got.values().all(|r| matches!(
            r,
            Err(StoreError::Timeout) | Err(StoreError::Unavailable(_))
        )),
        "{got:?}"
    );
    assert!(
        waited < Duration::from_millis(1_200),
        "answered after {waited:?}"
    );
}

/// Requests waiting for a slot when the link is lost are answered at once as unavailable
/// (the node sends them again on the next link), not left to their deadline: Redis stalls
/// with one request in flight and more queued, then dies; every request gets exactly one
/// answer, long before the 30 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_slot_when_the_link_is_lost_are_answered_as_unavailable() {
    let mut redis = RedisServer::start();
    let (mut store, mut rx) = start_connected(
        &redis,
        RedisOptions {
            op_timeout: Duration::from_secs(30),
            max_in_flight: 1,
            ping_interval: Duration::from_millis(100),
            ..RedisOptions::default()
        },
    )
    .await;
    redis.command(&["CLIENT", "PAUSE", "20000", "ALL"]);
    const REQUESTS: u64 = 20;
    for id in 1..=REQUESTS {
        assert!(
            store.request(id, mobile_read("lost-link")),
            "request {id} refused"
        );
    }
    // One in flight, the rest queued behind the one slot; then Redis dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    redis.process.kill();
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < REQUESTS as usize {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(StoreLinkEvent::Message(FromStore::Reply { id, result }))) => {
                assert!(
                    answers.insert(id, result).is_none(),
                    "request {id} answered twice"
                );
            }
            Ok(Some(_)) => {}
            other => panic!(
                "{} of {REQUESTS} requests answered after the link was lost: {other:?}",
                answers.len()
            ),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let unavailable = answers
        .values()
        .filter(|r| matches!(r, Err(StoreError::Unavailable(_))))
        .count();
    assert_eq!(unavailable, REQUESTS as usize, "{answers:?}");
    // Nothing is answered a second time afterwards.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        if let StoreLinkEvent::Message(FromStore::Reply { id, .. }) = event {
            panic!("request {id} answered again");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_answered_within_the_deadline_and_the_link_recovers() {
    let redis = RedisServer::start();
    let (mut store, mut rx) = start_connected(
        &redis,
        RedisOptions {
            op_timeout: Duration::from_millis(300),
            ping_interval: Duration::from_millis(100),
            ..RedisOptions::default()
        },
    )
    .await;
    // Redis answers nothing for 1.5 s.
    redis.command(&["CLIENT", "PAUSE", "1500", "ALL"]);
    let started = Instant::now();
    let get = StoreOp::GetRoute {
        user_id: "stalled".into(),
        client_type: None,
        asker: None,
    };
    let accepted = store.request(1, get.clone());
    if accepted {
        loop {
            match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
                Ok(Some(StoreLinkEvent::Message(FromStore::Reply { id: 1, result }))) => {
                    assert!(
                        matches!(
                            result,
                            Err(StoreError::Timeout) | Err(StoreError::Unavailable(_))
                        ),
                        "{result:?}"
                    );
                    break;
                }
                Ok(Some(_)) => {}
                other => panic!("no answer while Redis stalls: {other:?}"),
            }
        }
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(800),
        "answered after {waited:?}"
    );
    // The ping finds the stall; after the pause the link is back and ops succeed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 10;
    loop {
        id += 1;
        if store.request(id, get.clone()) {
            let answer = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match rx.recv().await {
                        Some(StoreLinkEvent::Message(FromStore::Reply { id: got, result }))
                            if got == id =>
                        {
                            return result
                        }
                        Some(_) => {}
                        None => panic!("the link task ended"),
                    }
                }
            })
            .await;
            if let Ok(Ok(reply)) = answer {
                assert_eq!(reply, StoreReply::Route(None));
                break;
            }
        }
        assert!(Instant::now() < deadline, "the link did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_sentinel_failover_with_the_old_master_alive_is_followed() {
    let setup = RedisSentinel::start();
    wait_sentinel_ready(&setup);
    let mut linked = Linked::connect(&setup.url(), this_node()).await;
    let route = |version: u64| RouteRecord {
        host: "h1".into(),
        port: 3001,
        device_id: "dA".into(),
        os_name: "android".into(),
        client_version: "2.0".into(),
        conn_id: Some("c1".into()),
        version,
        conn_version: 5,
        ended: Vec::new(),
        links: Vec::new(),
    };
    let put = |version: u64| StoreOp::PutRoute {
        user_id: "mf-user".into(),
        client_type: ClientType::Mobile,
        route: route(version),
    };
    linked.apply(put(1)).await.unwrap();
    let reply = raw_command(
        setup.sentinel.port,
        &[
            "SENTINEL",
            "FAILOVER",
            pushgate_tests::redis::SENTINEL_SERVICE,
        ],
    )
    .unwrap();
    assert!(reply.starts_with("+OK"), "SENTINEL FAILOVER: {reply}");
    // Keep writing: the old master, now a replica, refuses writes (READONLY) or the Sentinel
    // disconnects its clients; either way the link finds the new master.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut version = 1;
    let mut reconnected = false;
    while !reconnected {
        assert!(
            Instant::now() < deadline,
            "the link did not follow the failover"
        );
        version += 1;
        linked.next_id += 1;
        let id = linked.next_id;
        if !linked.store.request(id, put(version)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(5), linked.rx.recv()).await {
                Ok(Some(StoreLinkEvent::Connected)) => reconnected = true,
                Ok(Some(StoreLinkEvent::Message(FromStore::Reply { id: got, .. })))
                    if got == id =>
                {
                    break
                }
                Ok(Some(_)) => {}
                other => panic!("during the failover: {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(setup.master_port(), Some(setup.replica.port()));
    version += 1;
    assert!(matches!(
        linked.apply(put(version)).await,
        Ok(StoreReply::Previous(Some(_)))
    ));
    let stored = raw_command(setup.replica.port(), &["HGET", "mp:ur:mf-user", "1"]).unwrap();
    assert!(
        stored.contains(&format!("\"version\":{version}")),
        "the write reached the new master: {stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_binds_from_two_nodes_keep_the_newest() {
    // MPush reads then writes a route (HGET, HSET): two nodes binding one user at once can
    // leave the older bind stored. The script decides and writes in one step.
    let redis = RedisServer::start();
    let mut a = Linked::connect(&redis.url(), NodeAddr::new("h1", 3001)).await;
    let mut b = Linked::connect(&redis.url(), NodeAddr::new("h2", 3002)).await;
    const BINDS: u64 = 400;
    let route = |n: u64| RouteRecord {
        host: if n.is_multiple_of(2) { "h1" } else { "h2" }.into(),
        port: if n.is_multiple_of(2) { 3001 } else { 3002 },
        device_id: format!("d{n}"),
        os_name: "android".into(),
        client_version: "2.0".into(),
        conn_id: Some(format!("c{n}")),
        // Versions in a scrambled order, all distinct.
        version: EPOCH_VERSION + (n * 7919) % BINDS,
        conn_version: EPOCH_VERSION,
        ended: Vec::new(),
        links: Vec::new(),
    };
    for n in 0..BINDS {
        let link = if n % 2 == 0 { &mut a } else { &mut b };
        assert!(link.store.request(
            n + 1,
            StoreOp::PutRoute {
                user_id: "race".into(),
                client_type: ClientType::Mobile,
                route: route(n),
            }
        ));
    }
    // Every write answered; exactly the writes that saw an older route were applied.
    let mut applied = 0;
    for link in [&mut a, &mut b] {
        let mut answered = 0;
        while answered < BINDS / 2 {
            match tokio::time::timeout(Duration::from_secs(5), link.rx.recv()).await {
                Ok(Some(StoreLinkEvent::Message(FromStore::Reply { result, .. }))) => {
                    answered += 1;
                    match result {
                        Ok(StoreReply::Previous(_)) => applied += 1,
                        Ok(StoreReply::Stale { .. }) => {}
                        other => panic!("{other:?}"),
                    }
                }
                other => panic!("concurrent binds: {other:?}"),
            }
        }
    }
    assert!(applied >= 1);
    let newest = (0..BINDS)
        .map(route)
        .max_by_key(|r| r.version)
        .expect("binds");
    assert_eq!(
        unlinked(
            a.apply(StoreOp::GetRoute {
                user_id: "race".into(),
                client_type: Some(ClientType::Mobile),
                asker: None,
            })
            .await
        ),
        Ok(StoreReply::Route(Some((ClientType::Mobile, newest))))
    );
}

/// A bind of `user`'s mobile route on the node `host`:3001 (bind version and connection age
/// `EPOCH_VERSION + version`).
fn mobile_bind(user: &str, host: &str, device: &str, conn: Option<&str>, version: u64) -> StoreOp {
    StoreOp::PutRoute {
        user_id: user.into(),
        client_type: ClientType::Mobile,
        route: RouteRecord {
            host: host.into(),
            port: 3001,
            device_id: device.into(),
            os_name: "android".into(),
            client_version: "2.0".into(),
            conn_id: conn.map(str::to_owned),
            version: EPOCH_VERSION + version,
            conn_version: EPOCH_VERSION + version,
            ended: Vec::new(),
            links: Vec::new(),
        },
    }
}

/// A read of `user`'s mobile route.
fn mobile_read(user: &str) -> StoreOp {
    StoreOp::GetRoute {
        user_id: user.into(),
        client_type: Some(ClientType::Mobile),
        asker: None,
    }
}

/// The bound on a route's ended binds, in the script as in `MemoryStore`: a node's marks are
/// kept against a burst of another node's (B24: a late write of a bind whose mark another
/// node's binds pushed out landed online), one node's oldest go past its share, and the
/// oldest of all go past the total. Every answer and the stored route agree op by op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_binds_are_bounded_per_node_as_in_memory() {
    use pushgate_core::store::{MAX_ENDED_BINDS, MAX_ENDED_BINDS_PER_NODE};
    let redis = RedisServer::start();
    let mut scripted = Scripted::connect(&redis.url()).await;
    let mut memory = MemoryStore::new();
    let user = "ended-bound";
    let offline = |host: &str, conn: &str, version: u64| StoreOp::SetRouteOffline {
        user_id: user.into(),
        client_type: ClientType::Mobile,
        node: NodeAddr::new(host, 3001),
        conn_id: conn.into(),
        version,
    };
    let put = |host: &str, device: &str, conn: Option<&str>, version: u64| {
        mobile_bind(user, host, device, conn, version)
    };
    let read = mobile_read(user);
    let per_node = MAX_ENDED_BINDS_PER_NODE as u64;
    let mut ops = vec![
        // Another device's route, offline; node a's mark overtakes its bind's write.
        put("a", "d0", None, 10),
        offline("a", "a1", EPOCH_VERSION + 100),
    ];
    // Node b's binds end, more than one node's share.
    for v in 0..per_node + 2 {
        ops.push(offline("b", &format!("b{v}"), EPOCH_VERSION + 200 + v));
    }
    // a's late write stays out; b's oldest marks went, a's did not.
    ops.push(put("a", "d1", Some("a1"), 100));
    ops.push(read.clone());
    // More nodes than the total holds.
    for n in 0..MAX_ENDED_BINDS as u64 {
        ops.push(offline(&format!("n{n}"), "x", EPOCH_VERSION + 300 + n));
    }
    ops.push(read.clone());
    for (step, op) in ops.into_iter().enumerate() {
        let want = memory.apply_on_link(0, op.clone(), 7);
        let got = scripted.apply(op.clone(), 7).await;
        assert_eq!(got, want, "step {step}: {op:?}");
        if step == 2 + per_node as usize + 2 {
            assert!(matches!(got, Ok(StoreReply::Stale { .. })), "{got:?}");
        }
    }
    let Ok(StoreReply::Route(Some((_, stored)))) = memory.apply(0, read) else {
        panic!("the route is stored");
    };
    assert_eq!(stored.ended.len(), MAX_ENDED_BINDS);
    assert_eq!(
        stored.links.len(),
        pushgate_core::store::MAX_LINKS,
        "a, b and every n noted their link, within the bound"
    );
    assert!(!stored.is_online());
}

/// A node that replaced its Redis link (B27, seeds 66002216 and 69000987): a bind's write held
/// on the old link reaches Redis after the bind's offline mark sent on the new one. The route
/// remembers the node's newer link, so the held write is refused (`StoreError::Fenced`) and
/// the route stays offline, while the new link's ops apply. Two links of one node started one
/// after the other stamp increasing epochs, as a link's reconnects do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_on_a_replaced_link_is_refused_after_the_new_link_reached_the_route() {
    let redis = RedisServer::start();
    let mut old = Linked::connect(&redis.url(), this_node()).await;
    let mut new = Linked::connect(&redis.url(), this_node()).await;
    let user = "replaced-link";
    let bind = |conn: &str, version: u64| mobile_bind(user, "h1", "dA", Some(conn), version);
    let read = mobile_read(user);
    let mark = StoreOp::SetRouteOffline {
        user_id: user.into(),
        client_type: ClientType::Mobile,
        node: this_node(),
        conn_id: "c1".into(),
        version: EPOCH_VERSION + 1,
    };
    assert_eq!(new.apply(mark).await, Ok(StoreReply::Done));
    let refused = old.apply(bind("c1", 1)).await;
    let Ok(StoreReply::Route(Some((_, stored)))) = new.apply(read.clone()).await else {
        panic!("the mark left a route");
    };
    assert!(!stored.is_online(), "the held write stayed out: {stored:?}");
    assert_eq!(stored.links.len(), 1);
    assert_eq!(
        refused,
        Err(StoreError::Fenced {
            newest_epoch: stored.links[0].epoch
        })
    );
    assert!(matches!(
        new.apply(bind("c2", 2)).await,
        Ok(StoreReply::Previous(Some(_)))
    ));
    let Ok(StoreReply::Route(Some((_, stored)))) = new.apply(read).await else {
        panic!("a route");
    };
    assert_eq!(stored.conn_id.as_deref(), Some("c2"));
}

/// A node whose clock stepped back since an earlier run of it wrote a route (that run's link
/// epoch is ahead of every epoch the clock gives now): its first route op is refused naming
/// the newer epoch, the link continues above it, and the op sent again applies — the node's
/// routes are refused once, not until the clock catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_behind_an_earlier_run_of_its_node_continues_above_it_after_one_refusal() {
    let redis = RedisServer::start();
    let user = "clock-back";
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
        + 3_600_000_000;
    let earlier_run = format!(
        r#"{{"port":3001,"host":"h1","deviceId":"dA","osName":"android","clientVersion":"2.0","version":{EPOCH_VERSION},"connVersion":{EPOCH_VERSION},"links":[{{"host":"h1","port":3001,"epoch":{ahead}}}]}}"#
    );
    redis.command(&["HSET", &format!("mp:ur:{user}"), "1", &earlier_run]);
    let mut linked = Linked::connect(&redis.url(), this_node()).await;
    let bind = mobile_bind(user, "h1", "dA", Some("c1"), 1);
    assert_eq!(
        linked.apply(bind.clone()).await,
        Err(StoreError::Fenced {
            newest_epoch: ahead
        })
    );
    assert!(matches!(
        linked.apply(bind).await,
        Ok(StoreReply::Previous(Some(_)))
    ));
    let Ok(StoreReply::Route(Some((_, stored)))) = linked.apply(mobile_read(user)).await else {
        panic!("a route");
    };
    assert_eq!(stored.conn_id.as_deref(), Some("c1"));
    assert!(stored.links[0].epoch > ahead, "{:?}", stored.links);
}

/// A link epoch no node stamps (past `MAX_LINK_EPOCH`, e.g. a route written by hand) in a
/// stored route neither fences the node nor stays: the node's next route write applies and
/// its link replaces it, in the script as in `MemoryStore`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_epoch_no_node_stamps_neither_fences_nor_stays() {
    let redis = RedisServer::start();
    let mut scripted = Scripted::connect(&redis.url()).await;
    let mut memory = MemoryStore::new();
    let user = "corrupt-link";
    let written = format!(
        r#"{{"port":3001,"host":"h1","deviceId":"dA","osName":"android","clientVersion":"2.0","version":{EPOCH_VERSION},"connVersion":{EPOCH_VERSION},"links":[{{"host":"h1","port":3001,"epoch":{}}}]}}"#,
        1u64 << 60
    );
    redis.command(&["HSET", &format!("mp:ur:{user}"), "1", &written]);
    memory.state_mut().routes.insert(
        (user.to_owned(), ClientType::Mobile),
        serde_json::from_str(&written).unwrap(),
    );
    let bind = mobile_bind(user, "h1", "dA", Some("c1"), 1);
    let want = memory.apply_on_link(0, bind.clone(), 5);
    assert!(
        matches!(want, Ok(StoreReply::Previous(Some(_)))),
        "{want:?}"
    );
    assert_eq!(scripted.apply(bind, 5).await, want);
    let read = mobile_read(user);
    let stored = scripted.apply(read.clone(), 0).await;
    assert_eq!(stored, memory.apply(0, read));
    let Ok(StoreReply::Route(Some((_, stored)))) = stored else {
        panic!("a route");
    };
    assert_eq!(stored.links.len(), 1);
    assert_eq!(stored.links[0].epoch, 5);
}
