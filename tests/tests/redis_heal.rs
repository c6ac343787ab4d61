//! A kick notice lost while a node was away from Redis heals: pub/sub is at-most-once, so a
//! node that comes back after an outage rewrites every local route, and a rewrite that Redis
//! answers `Stale` (a newer bind of that user and type exists) kicks the local connection —
//! the notice it missed is not needed.
use pushgate::client::cluster::ClusterPushClient;
use pushgate::client::{DeviceClient, DeviceEvent};
use pushgate_core::PushStatus;
use pushgate_tests::redis::RedisServer;
use pushgate_tests::redis::{auto_ack_push, node_on};
use pushgate_tests::{bounded, eventually, expect_push, TestServer};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(5);

/// A TCP forwarder in front of Redis for one node only: `cut` closes every forwarded
/// connection and refuses new ones (accepted and closed at once) until `restore`.
struct CuttableProxy {
    port: u16,
    open: watch::Sender<bool>,
}

impl CuttableProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (open, watch) = watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*watch.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut open = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { port, open }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

async fn logged(node: &TestServer, what: &str, count: usize) {
    eventually(Duration::from_secs(10), what, || {
        let seen = node.logs().matches(what).count() >= count;
        async move { seen.then_some(()) }
    })
    .await;
}

/// Waits for a KICK on `phone` (pushes would be a failure: nothing is pushed meanwhile).
async fn expect_kick_within(phone: &DeviceClient, limit: Duration, logs: impl Fn() -> String) {
    match phone.next_event_within(limit).await {
        Ok(DeviceEvent::Kick { device_id, user_id }) => {
            assert_eq!(
                (device_id.as_str(), user_id.as_str()),
                ("phone-1", "user-h")
            )
        }
        other => panic!("phone-1 expected a KICK, got {other:?}\n{}", logs()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_notice_lost_while_a_node_was_away_heals_when_it_reconnects() {
    let redis = RedisServer::start();
    bounded(LIMIT, async {
        let proxy = CuttableProxy::start(redis.port()).await;
        let a = node_on(&redis.url(), "").await;
        let b = node_on(&proxy.url(), "").await;
        logged(&a, "connected to Redis", 1).await;
        logged(&b, "connected to Redis", 1).await;
        let all_logs = || format!("A:\n{}\nB:\n{}", a.logs(), b.logs());

        // P1 binds the user on B; its route reaches Redis.
        let p1 = b.bound_device("phone-1", "user-h", &[]).await;
        eventually(WAIT, "P1's route in Redis", || {
            let stored = redis.command(&["HGET", "mp:ur:user-h", "1"]);
            async move { stored.contains("\"deviceId\":\"phone-1\"").then_some(()) }
        })
        .await;

        // B alone loses Redis (its command and pub/sub connections close, reconnects refused).
        proxy.cut();
        logged(&b, "lost the Redis link", 1).await;
        let subscribers = redis.command(&[
            "PUBSUB",
            "NUMSUB",
            &format!("/mpush/kick/127.0.0.1:{}", b.gateway.port()),
        ]);
        assert!(
            subscribers.trim_end().ends_with(":0"),
            "B must not be subscribed while cut: {subscribers}"
        );

        // P2 binds the same user and type on A: A publishes the kick for B, which nobody hears.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let kicks_before = a.metrics().await.count(
            "pushgate_store_latency_seconds_count",
            &[("op", "publish_kick")],
        );
        let p2 = a.bound_device("phone-2", "user-h", &[]).await;
        eventually(WAIT, "P2's route in Redis", || {
            let stored = redis.command(&["HGET", "mp:ur:user-h", "1"]);
            async move { stored.contains("\"deviceId\":\"phone-2\"").then_some(()) }
        })
        .await;
        eventually(WAIT, "A's kick notice published", || async {
            let sent = a.metrics().await.count(
                "pushgate_store_latency_seconds_count",
                &[("op", "publish_kick")],
            );
            (sent > kicks_before).then_some(())
        })
        .await;
        // The notice is lost: P1 is not kicked while B is away.
        match p1.next_event_within(Duration::from_millis(500)).await {
            Err(_) => {}
            other => panic!("nothing can reach P1 while B is cut, got {other:?}"),
        }

        // B comes back: it rewrites its routes, Redis answers Stale for P1's, B kicks P1.
        let restored = Instant::now();
        proxy.restore();
        logged(&b, "Redis link restored", 1).await;
        expect_kick_within(&p1, WAIT, all_logs).await;
        eprintln!(
            "P1 kicked {} ms after B's link was let through again",
            restored.elapsed().as_millis()
        );
        // Redis still names P2 on A: B's rewrite did not win.
        let stored = redis.command(&["HGET", "mp:ur:user-h", "1"]);
        assert!(stored.contains("\"deviceId\":\"phone-2\""), "{stored}");
        assert!(
            stored.contains(&format!("\"port\":{}", a.gateway.port())),
            "{stored}"
        );

        // Pushes to the user reach P2 only: through the cluster client, through A, and B
        // (which no longer holds the user) answers router change.
        let client = ClusterPushClient::new(&redis.url()).expect("a Redis URL");
        let result = client.push(auto_ack_push("user-h", "cluster")).await;
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(result.routes.len(), 1, "{result:?}");
        assert_eq!(
            result.routes[0].gateway,
            a.gateway.to_string(),
            "{result:?}"
        );
        assert_eq!(expect_push(&p2, WAIT).await.content, &b"cluster"[..]);
        let result = a
            .push_client()
            .await
            .push(auto_ack_push("user-h", "via A"))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(expect_push(&p2, WAIT).await.content, &b"via A"[..]);
        let result = b
            .push_client()
            .await
            .push(auto_ack_push("user-h", "via B"))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::RouterChange, "{result:?}");
        // P1 got nothing after its KICK (its connection is closed or silent).
        loop {
            match p1.next_event_within(Duration::from_millis(300)).await {
                Ok(DeviceEvent::Push { content, .. }) => {
                    panic!("P1 got a push after its kick: {content:?}")
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        client.close();
    })
    .await;
}
