//! `pushgate serve --redis …` end to end: real nodes sharing a real Redis. A push reaching the
//! wrong node answers router-change; binding a user and type on another node kicks the older
//! connection through Redis pub/sub; a Redis restarted empty gets the routes written again; a
//! node whose Redis is away serves its own users and writes their routes when Redis comes.
use pushgate::client::{DeviceEvent, DeviceOptions};
use pushgate_core::PushStatus;
use pushgate_tests::redis::{auto_ack_push, node_on};
use pushgate_tests::redis::{free_redis_port, RedisCluster, RedisSentinel, RedisServer};
use pushgate_tests::{bounded, eventually, expect_push, TestServer};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(40);
const WAIT: Duration = Duration::from_secs(5);

/// Pushes through `via` until the answer is `want` (routes reach Redis asynchronously).
async fn push_until(via: &TestServer, user: &str, want: PushStatus) {
    let client = via.push_client().await;
    eventually(WAIT, &format!("{want:?} for {user}"), || {
        let client = &client;
        async move {
            let result = client.push(auto_ack_push(user, "probe")).await.ok()?;
            (result.status == want).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_routes_and_kick_through_redis() {
    let redis = RedisServer::start();
    bounded(LIMIT, two_nodes_scenario(&redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_routes_and_kick_through_a_redis_cluster() {
    let cluster = RedisCluster::start();
    bounded(LIMIT, two_nodes_scenario(&cluster.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_routes_and_kick_through_redis_behind_sentinel() {
    let setup = RedisSentinel::start();
    bounded(LIMIT, two_nodes_scenario(&setup.url())).await;
}

/// Two nodes on the Redis at `url`: router-change from the node without the user, a kick
/// across nodes when the user binds the same client type on the other node.
async fn two_nodes_scenario(url: &str) {
    {
        let a = node_on(url, "").await;
        let b = node_on(url, "").await;
        for node in [&a, &b] {
            eventually(WAIT, "the link to Redis", || {
                let up = node.logs().contains("connected to Redis");
                async move { up.then_some(()) }
            })
            .await;
        }

        let phone = a.bound_device("device-1", "user-r", &[]).await;
        // B finds the route on A in Redis and answers router-change.
        push_until(&b, "user-r", PushStatus::RouterChange).await;
        // A delivers.
        let result = a
            .push_client()
            .await
            .push(auto_ack_push("user-r", "via A"))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(expect_push(&phone, WAIT).await.content, &b"via A"[..]);

        // The same user and type binds on B: A's connection is kicked (Redis pub/sub). Bind
        // versions come from each node's clock (ms): the binds are apart by more than the
        // nodes' clocks can differ.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = b
            .bound_device_with(
                DeviceOptions {
                    os_name: "ios".into(),
                    ..b.device_options("device-2")
                },
                "user-r",
                &[],
            )
            .await;
        match phone.next_event_within(WAIT).await {
            Ok(DeviceEvent::Kick { device_id, user_id }) => {
                assert_eq!(
                    (device_id.as_str(), user_id.as_str()),
                    ("device-1", "user-r")
                )
            }
            other => panic!(
                "the phone on A expected a KICK, got {other:?}\nA:\n{}\nB:\n{}",
                a.logs(),
                b.logs()
            ),
        }
        // Now A sends pushes for the user to B, and B delivers.
        push_until(&a, "user-r", PushStatus::RouterChange).await;
        let result = b
            .push_client()
            .await
            .push(auto_ack_push("user-r", "via B"))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(expect_push(&second, WAIT).await.content, &b"via B"[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_written_again_after_redis_restarts_empty() {
    bounded(LIMIT, async {
        let mut redis = RedisServer::start();
        let a = node_on(&redis.url(), "").await;
        let b = node_on(&redis.url(), "").await;
        let phone = a.bound_device("device-1", "user-x", &[]).await;
        push_until(&b, "user-x", PushStatus::RouterChange).await;

        redis.restart();
        // A reconnects, writes its routes again, and B finds the user on A once more.
        eventually(Duration::from_secs(10), "the route written again", || {
            let found = redis.command(&["HLEN", "mp:ur:user-x"]).starts_with(":1");
            async move { found.then_some(()) }
        })
        .await;
        push_until(&b, "user-x", PushStatus::RouterChange).await;
        let logs = a.logs();
        assert!(logs.contains("lost the Redis link"), "{logs}");
        assert!(logs.contains("Redis link restored"), "{logs}");
        let metrics = a.metrics().await;
        assert!(metrics.count("pushgate_store_reconnects_total", &[]) >= 1.0);
        assert!(metrics.count("pushgate_store_outages_total", &[]) >= 1.0);
        assert_eq!(metrics.value("pushgate_store_connected", &[]), Some(1.0));
        assert!(
            metrics.count(
                "pushgate_store_latency_seconds_count",
                &[("op", "put_route")]
            ) >= 2.0,
            "{}",
            metrics.0
        );
        // A subscribed to its kick channel again: a bind on B still kicks A's connection.
        let _second = b.bound_device("device-2", "user-x", &[]).await;
        match phone.next_event_within(WAIT).await {
            Ok(DeviceEvent::Kick { device_id, .. }) => assert_eq!(device_id, "device-1"),
            other => panic!("expected a KICK after the restart, got {other:?}\nA:\n{logs}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_redis_url_is_a_clear_error() {
    bounded(LIMIT, async {
        let mut serve = pushgate_tests::CliProcess::spawn(&[
            "serve",
            "--redis",
            "redis://:secret@127.0.0.1",
            "--admin-port",
            "0",
        ]);
        let status = serve.finish(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(2));
        let text = serve.stderr.text();
        assert!(text.contains("store.redis_url"), "{text}");
        assert!(text.contains("has no port"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("panicked"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_its_own_users_while_redis_is_away_and_writes_routes_when_it_comes() {
    bounded(LIMIT, async {
        let port = free_redis_port();
        let a = node_on(&format!("redis://127.0.0.1:{port}"), "").await;
        let phone = a.bound_device("device-1", "user-away", &[]).await;
        let result = a
            .push_client()
            .await
            .push(auto_ack_push("user-away", "local"))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(expect_push(&phone, WAIT).await.content, &b"local"[..]);
        let logs = a.logs();
        assert_eq!(
            logs.matches("cannot reach Redis").count(),
            1,
            "one line per outage:\n{logs}"
        );

        let redis = RedisServer::start_on(port, &[]);
        eventually(Duration::from_secs(10), "the route written", || {
            let found = redis
                .command(&["HLEN", "mp:ur:user-away"])
                .starts_with(":1");
            async move { found.then_some(()) }
        })
        .await;
        let stored = redis.command(&["HGET", "mp:ur:user-away", "1"]);
        assert!(stored.contains("\"deviceId\":\"device-1\""), "{stored}");
        assert!(stored.contains("\"connId\""), "online: {stored}");
    })
    .await;
}
