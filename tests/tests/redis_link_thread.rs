//! The Redis link runs on a thread of its own (`runtime/src/redis_store/link.rs`, `run_apart`,
//! says why: its per-op transients then free whole allocator pages), and that thread ends with
//! its store, so a process that starts and stops nodes does not collect threads.
//!
//! A test binary of its own: it counts the process's threads by name, which other tests
//! running beside it in one process would disturb. It starts `redis-server` itself; without
//! it the test fails with the install command.
use pushgate::redis_store::{RedisOptions, RedisStore, RedisTarget};
use pushgate::store_net::StoreLinkEvent;
use pushgate_core::store::{StoreOp, StoreReply};
use pushgate_core::NodeAddr;
use pushgate_tests::redis::RedisServer;
use std::time::{Duration, Instant};

/// Threads of this process named `name` (`/proc/self/task/*/comm`).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_runs_on_its_own_thread_and_ends_with_its_store() {
    let redis = RedisServer::start();
    assert_eq!(threads_named("pushgate-redis"), 0, "no link yet");
    let target = RedisTarget::parse(&redis.url()).expect("a good URL");
    let (mut store, mut rx) =
        RedisStore::start(target, NodeAddr::new("h1", 3001), RedisOptions::default());
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("connected within 10 s"),
        Some(StoreLinkEvent::Connected)
    );
    assert_eq!(threads_named("pushgate-redis"), 1, "the link's own thread");
    // It serves requests from there.
    assert!(store.request(
        1,
        StoreOp::GetRoute {
            user_id: "nobody".into(),
            client_type: None,
            asker: None,
        }
    ));
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(StoreLinkEvent::Message(pushgate::store_net::FromStore::Reply { id, result }))) => {
            assert_eq!(id, 1);
            assert_eq!(result, Ok(StoreReply::Route(None)));
        }
        other => panic!("no answer to the route read: {other:?}"),
    }
    drop(store);
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads_named("pushgate-redis") > 0 {
        assert!(
            Instant::now() < deadline,
            "the link's thread outlived its store by 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
