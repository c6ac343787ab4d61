//! The Redis route store against real Redis: the same generated op sequences applied to the
//! embedded `MemoryStore` and to Redis (standalone and a three-master Cluster) answer the same,
//! op by op; MPush's own Redis data (`../shared/vectors/cluster-data.json`) reads correctly and
//! what pushgate writes has MPush's keys and values.
//!
//! These tests start `redis-server` themselves; without it they fail with the install command.
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use pushgate::redis_store::{keys, RedisOptions, RedisStore, RedisTarget};
use pushgate::store::MemoryStore;
use pushgate::store_net::{FromStore, StoreLinkEvent};
use pushgate_core::route::ClientType;
use pushgate_core::store::{
    CachedSession, KickNotice, RouteRecord, StoreError, StoreOp, StoreReply,
};
use pushgate_core::NodeAddr;
use pushgate_tests::redis::{RedisCluster, RedisServer};
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

// ---------------------------------------------------------------------------------------------
// Generated op sequences

const HOSTS: [(&str, u16); 2] = [("h1", 3001), ("h2", 3002)];
const DEVICES: [&str; 3] = ["", "dA", "dB"];
const CONNS: [Option<&str>; 3] = [None, Some("c1"), Some("c2")];

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
        0..4u64,
        0..3u64,
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

fn op() -> impl Strategy<Value = StoreOp> {
    prop_oneof![
        6 => (user(), client_type(), route()).prop_map(|(user_id, client_type, route)| {
            StoreOp::PutRoute { user_id, client_type, route }
        }),
        4 => (user(), client_type(), 0..2usize, 1..3usize, 0..4u64).prop_map(
            |(user_id, client_type, h, c, version)| StoreOp::SetRouteOffline {
                user_id,
                client_type,
                node: NodeAddr::new(HOSTS[h].0, HOSTS[h].1),
                conn_id: CONNS[c].unwrap_or_default().into(),
                version,
            }
        ),
        4 => (user(), proptest::option::of(client_type())).prop_map(|(user_id, client_type)| {
            StoreOp::GetRoute { user_id, client_type }
        }),
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
        StoreOp::GetRoute {
            user_id,
            client_type,
        } => StoreOp::GetRoute {
            user_id: p(user_id),
            client_type,
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

/// Runs `cases` generated sequences against MemoryStore and the Redis at `url`; returns
/// (cases, ops) run.
fn contract(url: &str, cases: u32, label: &str) -> (u64, u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let linked = tokio::sync::Mutex::new(runtime.block_on(Linked::connect(url, this_node())));
    let direct = redis::Client::open(match url.strip_prefix("redis+cluster://") {
        Some(nodes) => format!("redis://{}", nodes.split(',').next().unwrap_or_default()),
        None => url.to_owned(),
    })
    .expect("a client");
    let cluster_nodes: Option<Vec<String>> = url
        .strip_prefix("redis+cluster://")
        .map(|nodes| nodes.split(',').map(|n| format!("redis://{n}")).collect());
    static CASE: AtomicU64 = AtomicU64::new(0);
    let ops_run = AtomicU64::new(0);
    let cases_run = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        let prefix = format!("{label}{}-", CASE.fetch_add(1, Ordering::Relaxed));
        cases_run.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(async {
            let mut linked = linked.lock().await;
            let mut memory = MemoryStore::new();
            let mut expected_kicks = Vec::new();
            let mut users_reached: std::collections::HashMap<String, usize> = Default::default();
            for (step, op) in ops.into_iter().enumerate() {
                let op = prefixed(op, &prefix);
                if let StoreOp::AddTaskProgress {
                    task_id, user_ids, ..
                } = &op
                {
                    *users_reached.entry(task_id.clone()).or_default() += user_ids.len();
                }
                let want = memory.apply(0, op.clone());
                expected_kicks.extend(
                    memory
                        .take_kicks()
                        .into_iter()
                        .filter(|n| n.target() == this_node()),
                );
                let got = linked.apply(op.clone()).await;
                ops_run.fetch_add(1, Ordering::Relaxed);
                prop_assert_eq!(&got, &want, "step {} op {:?}", step, op);
            }
            let kicks = linked
                .take_kicks(expected_kicks.len(), Duration::from_secs(3))
                .await;
            prop_assert_eq!(&kicks, &expected_kicks, "kick notices delivered");
            // Broadcast progress: sent counts (HINCRBY sc) and users reached (LPUSH {t}:sui).
            for t in 0..2 {
                let task_id = format!("{prefix}t{t}");
                let (sent, listed) = match &cluster_nodes {
                    Some(nodes) => {
                        let client = redis::cluster::ClusterClient::new(nodes.clone())
                            .expect("cluster client");
                        let mut conn = client.get_connection().expect("cluster connection");
                        read_progress(&mut conn, &task_id)
                    }
                    None => {
                        let mut conn = direct.get_connection().expect("connection");
                        read_progress(&mut conn, &task_id)
                    }
                };
                prop_assert_eq!(sent, memory.task_progress(&task_id), "sc of {}", task_id);
                prop_assert_eq!(
                    listed,
                    users_reached.get(&task_id).copied().unwrap_or(0),
                    "users listed for {}",
                    task_id
                );
            }
            Ok::<(), TestCaseError>(())
        })
    });
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
    let (cases, ops) = contract(&redis.url(), 256, "s");
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
    let (cases, ops) = contract(&cluster.url(), 128, "c");
    eprintln!(
        "cluster contract: {cases} cases, {ops} ops in {:?}",
        started.elapsed()
    );
    assert!(ops > 500, "too few ops ran: {ops}");
}
