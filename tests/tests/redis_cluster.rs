//! Three `pushgate serve --redis …` nodes on one real Redis: the node registry (`/v1/nodes`
//! lists every node; a node killed with SIGKILL leaves within its TTL; a clean shutdown leaves
//! at once) and cluster-wide push (the cluster PushClient and `POST /v1/push` on any node reach
//! a phone on any node, a stale cached route is corrected through router change, one push per
//! route of a user on two client types, a broadcast reaches every node with one answer).
use pushgate::client::cluster::ClusterPushClient;
use pushgate::client::{
    BroadcastRequest, DeviceClient, DeviceEvent, DeviceOptions, SinglePushRequest,
};
use pushgate_core::push::AckMode;
use pushgate_core::PushStatus;
use pushgate_tests::redis::{auto_ack_push, node_on};
use pushgate_tests::redis::{RedisCluster, RedisServer};
use pushgate_tests::{bounded, eventually, CliProcess, TestServer};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(5);
const NODE_TTL_MS: u64 = 1500;

/// Waits for a push of `want` on `phone`, passing over other pushes (probes).
async fn expect_content(phone: &DeviceClient, want: &str) {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match phone.next_event_within(left).await {
            Ok(DeviceEvent::Push { content, .. }) if content == want.as_bytes() => return,
            Ok(other) => seen.push(format!("{other:?}")),
            Err(error) => panic!(
                "{} never got {want:?} ({error}); saw {seen:?}",
                phone.device_id()
            ),
        }
    }
}

/// Waits for a KICK on `phone`, passing over pushes.
async fn expect_kick(phone: &DeviceClient) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match phone.next_event_within(left).await {
            Ok(DeviceEvent::Kick { .. }) => return,
            Ok(DeviceEvent::Push { .. }) => {}
            other => panic!("{} expected a KICK, got {other:?}", phone.device_id()),
        }
    }
}

/// The gateway ports `/v1/nodes` on `via` lists.
async fn listed_ports(via: &TestServer) -> BTreeSet<u16> {
    let response = via.http_get("/v1/nodes").await;
    assert_eq!(response.status, 200, "/v1/nodes: {}", response.text());
    let body = response.json();
    body["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("/v1/nodes has no nodes array: {body}"))
        .iter()
        .filter_map(|n| n["gatewayPort"].as_u64())
        .map(|p| p as u16)
        .collect()
}

fn ports(nodes: &[&TestServer]) -> BTreeSet<u16> {
    nodes.iter().map(|n| n.gateway.port()).collect()
}

/// Pushes through the cluster client until `user` is reachable (routes reach Redis
/// asynchronously after the bind answer).
async fn push_until_success(client: &ClusterPushClient, user: &str) {
    eventually(
        WAIT,
        &format!("a route for {user} in Redis"),
        || async move {
            let result = client.push(auto_ack_push(user, "probe")).await;
            result.status.is_success().then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_redis_discover_each_other_and_push_across_nodes() {
    let redis = RedisServer::start();
    bounded(LIMIT, three_nodes_scenario(&redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_redis_cluster_discover_each_other_and_push_across_nodes() {
    let cluster = RedisCluster::start();
    bounded(LIMIT, three_nodes_scenario(&cluster.url())).await;
}

async fn three_nodes_scenario(url: &str) {
    let a = node_on(url, &format!("[store]\nnode_ttl_ms = {NODE_TTL_MS}\n")).await;
    let b = node_on(url, &format!("[store]\nnode_ttl_ms = {NODE_TTL_MS}\n")).await;
    let mut c = node_on(url, &format!("[store]\nnode_ttl_ms = {NODE_TTL_MS}\n")).await;
    let all = &ports(&[&a, &b, &c]);

    // Every node lists all three, with their addresses.
    for via in [&a, &b, &c] {
        eventually(WAIT, "three nodes in /v1/nodes", || async move {
            (listed_ports(via).await == *all).then_some(())
        })
        .await;
    }
    let body = a.http_get("/v1/nodes").await.json();
    let entry = body["nodes"]
        .as_array()
        .and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n["gatewayPort"] == json!(b.gateway.port()))
        })
        .cloned()
        .unwrap_or_else(|| panic!("B missing: {body}"));
    assert_eq!(
        entry["connectAddr"],
        json!(format!("127.0.0.1:{}", b.connect.port()))
    );
    assert_eq!(entry["adminAddr"], json!(b.admin.to_string()));
    assert_eq!(entry["gatewayHost"], json!("127.0.0.1"));
    assert_eq!(entry["ttlMs"], json!(NODE_TTL_MS));

    // A phone on B: the cluster PushClient finds it through Redis.
    let client = ClusterPushClient::new(url)
        .expect("a Redis URL")
        .with_route_cache(Duration::from_secs(60));
    let phone_b = b.bound_device("phone-b", "user-1", &[]).await;
    push_until_success(&client, "user-1").await;
    expect_content(&phone_b, "probe").await;
    let result = client
        .push(auto_ack_push("user-1", "through the cluster client"))
        .await;
    assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
    assert_eq!(result.routes.len(), 1, "{result:?}");
    assert_eq!(result.routes[0].gateway, b.gateway.to_string());
    expect_content(&phone_b, "through the cluster client").await;
    // The route is cached now: a push costs no Redis round trip.
    let before = client.redis_round_trips();
    let result = client.push(auto_ack_push("user-1", "cached")).await;
    assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
    assert_eq!(client.redis_round_trips() - before, 0, "a cached route");
    expect_content(&phone_b, "cached").await;
    // An uncached client reads the routes once per push.
    let fresh = ClusterPushClient::new(url).expect("a Redis URL");
    let result = fresh.push(auto_ack_push("user-1", "uncached")).await;
    assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
    assert_eq!(fresh.redis_round_trips(), 1, "one HGETALL");
    expect_content(&phone_b, "uncached").await;

    // POST /v1/push on A: A answers router change itself, follows it to B, and answers the
    // final status.
    let started = Instant::now();
    let response = a
        .http_post(
            "/v1/push",
            &json!({"userId": "user-1", "content": "via A's API", "ack": "auto", "timeoutMs": 3000}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["status"], json!("ack-success"), "{body}");
    assert_eq!(body["userId"], json!("user-1"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "within the push's timeout"
    );
    expect_content(&phone_b, "via A's API").await;
    // On B itself (the user is local) the API answers without forwarding.
    let body = b
        .http_post(
            "/v1/push",
            &json!({"userId": "user-1", "content": "on B", "ack": "auto"}),
        )
        .await
        .json();
    assert_eq!(body["status"], json!("ack-success"), "{body}");
    expect_content(&phone_b, "on B").await;
    // A user bound nowhere: offline, from any node.
    let body = a
        .http_post("/v1/push", &json!({"userId": "nobody", "content": "x"}))
        .await
        .json();
    assert_eq!(body["status"], json!("offline"), "{body}");
    let result = client.push(auto_ack_push("nobody", "x")).await;
    assert_eq!(result.status, PushStatus::Offline, "{result:?}");

    // The phone moves from B to C (same client type: B's connection is kicked). The client's
    // cached route still names B: B answers router change, the client re-reads and sends to C.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let phone_c = c.bound_device("phone-c", "user-1", &[]).await;
    expect_kick(&phone_b).await;
    eventually(WAIT, "the route on C in Redis", || async {
        let mut hget = redis::cmd("HGET");
        hget.arg("mp:ur:user-1").arg("1");
        let reader = pushgate::redis_store::RedisReader::new(
            pushgate::redis_store::RedisTarget::parse(url).ok()?,
        );
        let value: Option<String> = reader.query(&hget, WAIT).await.ok()?;
        value?
            .contains(&format!("\"port\":{}", c.gateway.port()))
            .then_some(())
    })
    .await;
    let before = client.redis_round_trips();
    let result = client.push(auto_ack_push("user-1", "moved")).await;
    assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
    assert_eq!(result.routes.len(), 1, "{result:?}");
    assert_eq!(
        result.routes[0].rereads, 1,
        "one router change followed: {result:?}"
    );
    assert_eq!(result.routes[0].gateway, c.gateway.to_string());
    assert_eq!(
        client.redis_round_trips() - before,
        1,
        "one HGET after the router change"
    );
    expect_content(&phone_c, "moved").await;
    // The cache now names C.
    let before = client.redis_round_trips();
    let result = client.push(auto_ack_push("user-1", "cached on C")).await;
    assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
    assert_eq!(result.routes[0].rereads, 0, "{result:?}");
    assert_eq!(client.redis_round_trips() - before, 0);
    expect_content(&phone_c, "cached on C").await;

    // The same user on a second client type (PC) on C: one push per route.
    let pc = c
        .bound_device_with(
            DeviceOptions {
                os_name: "windows".into(),
                ..c.device_options("pc-c")
            },
            "user-1",
            &[],
        )
        .await;
    eventually(WAIT, "both routes pushed", || async {
        let result = fresh.push(auto_ack_push("user-1", "both")).await;
        (result.routes.len() == 2).then_some(result)
    })
    .await;
    let result = fresh.push(auto_ack_push("user-1", "two routes")).await;
    assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
    let types: BTreeSet<i32> = result.routes.iter().map(|r| r.client_type).collect();
    assert_eq!(types, BTreeSet::from([1, 2]), "{result:?}");
    assert!(result
        .routes
        .iter()
        .all(|r| r.result.status == PushStatus::AckSuccess));
    expect_content(&phone_c, "two routes").await;
    expect_content(&pc, "two routes").await;
    // Only the PC route when asked for client type 2.
    let result = fresh
        .push(SinglePushRequest {
            client_type: Some(2),
            ..auto_ack_push("user-1", "pc only")
        })
        .await;
    assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
    assert_eq!(result.routes.len(), 1, "{result:?}");
    expect_content(&pc, "pc only").await;
    // Client type 0 means any, as on a gateway.
    let result = fresh
        .push(SinglePushRequest {
            client_type: Some(0),
            ..auto_ack_push("user-1", "type 0")
        })
        .await;
    assert_eq!(result.routes.len(), 2, "{result:?}");
    expect_content(&phone_c, "type 0").await;
    expect_content(&pc, "type 0").await;

    // A broadcast through the cluster client reaches phones on all three nodes, one answer.
    let on_a = a.bound_device("bcast-a", "user-a", &["news"]).await;
    let on_b = b.bound_device("bcast-b", "user-b", &["news"]).await;
    let on_c = c.bound_device("bcast-c", "user-c", &["news"]).await;
    let result = client
        .broadcast(BroadcastRequest {
            tags: vec!["news".into()],
            ..BroadcastRequest::new("to everyone")
        })
        .await;
    assert_eq!(result.status, PushStatus::Success, "{result:?}");
    assert_eq!(result.nodes.len(), 3, "{result:?}");
    for phone in [&on_a, &on_b, &on_c] {
        expect_content(phone, "to everyone").await;
    }

    // kill -9 of C: it leaves /v1/nodes within its TTL (plus a heartbeat's slack).
    let killed = std::process::Command::new("kill")
        .arg("-9")
        .arg(c.pid().to_string())
        .status()
        .expect("run kill");
    assert!(killed.success());
    let _ = c.wait_exit(WAIT).await;
    let gone = Instant::now();
    let remaining = ports(&[&a, &b]);
    eventually(
        Duration::from_millis(NODE_TTL_MS + 1500),
        "C gone from /v1/nodes",
        || async { (listed_ports(&a).await == remaining).then_some(()) },
    )
    .await;
    let took = gone.elapsed();
    eprintln!("a killed node left /v1/nodes after {} ms", took.as_millis());
    // A broadcast now goes to A and B only, and succeeds.
    let result = client.broadcast(BroadcastRequest::new("after C")).await;
    assert_eq!(result.status, PushStatus::Success, "{result:?}");
    assert_eq!(result.nodes.len(), 2, "{result:?}");

    // A clean shutdown leaves at once.
    b.sigterm();
    let mut b = b;
    assert!(b.wait_exit(Duration::from_secs(10)).await.is_some());
    let only_a = ports(&[&a]);
    eventually(
        Duration::from_millis(500),
        "B gone after its shutdown",
        || async { (listed_ports(&a).await == only_a).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_node_lists_itself() {
    bounded(LIMIT, async {
        let node = TestServer::start().await;
        assert_eq!(listed_ports(&node).await, ports(&[&node]));
        let body = node.http_get("/v1/nodes").await.json();
        assert_eq!(body["nodes"][0]["adminAddr"], json!(node.admin.to_string()));
        // Without Redis a push to a user bound nowhere is offline, not forwarded.
        let body = node
            .http_post("/v1/push", &json!({"userId": "u", "content": "x"}))
            .await
            .json();
        assert_eq!(body["status"], json!("offline"), "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_client_answers_within_its_timeout_when_redis_is_away() {
    bounded(LIMIT, async {
        let port = pushgate_tests::redis::free_redis_port();
        let client = ClusterPushClient::new(&format!("redis://127.0.0.1:{port}")).expect("URL");
        let started = Instant::now();
        let result = client
            .push(SinglePushRequest {
                timeout_ms: 500,
                ..auto_ack_push("u", "x")
            })
            .await;
        assert!(!result.status.is_success(), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        let result = client.broadcast(BroadcastRequest::new("x")).await;
        assert_eq!(result.status, PushStatus::Failure, "{result:?}");
        assert!(ClusterPushClient::new("http://nope").is_err());
    })
    .await;
}

/// Route reads Redis has served so far (HGET, HMGET, HGETALL calls in `INFO commandstats`).
fn route_reads(redis: &RedisServer) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().split_once(':')?;
            if !matches!(name, "cmdstat_hget" | "cmdstat_hmget" | "cmdstat_hgetall") {
                return None;
            }
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            calls.parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_round_trips_per_push() {
    let redis = RedisServer::start();
    bounded(LIMIT, async {
        let url = redis.url();
        let a = node_on(&url, &format!("[store]\nnode_ttl_ms = {NODE_TTL_MS}\n")).await;
        let b = node_on(&url, &format!("[store]\nnode_ttl_ms = {NODE_TTL_MS}\n")).await;
        let phone = b.bound_device("phone", "user-rt", &[]).await;
        let client = ClusterPushClient::new(&url)
            .expect("URL")
            .with_route_cache(Duration::from_secs(60));
        push_until_success(&client, "user-rt").await;
        const N: u64 = 20;

        // A user bound on the receiving node: no route read, through the gateway or the API.
        let gateway = b.push_client().await;
        let before = route_reads(&redis);
        for i in 0..N {
            let content = format!("local {i}");
            let result = gateway.push(auto_ack_push("user-rt", &content)).await.expect("push");
            assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
            expect_content(&phone, &content).await;
            let content = format!("local api {i}");
            let body = b
                .http_post(
                    "/v1/push",
                    &json!({"userId": "user-rt", "content": content, "ack": "auto"}),
                )
                .await
                .json();
            assert_eq!(body["status"], json!("ack-success"), "{body}");
            expect_content(&phone, &content).await;
        }
        let local = route_reads(&redis) - before;
        eprintln!(
            "route reads per push to a user bound on the receiving node: {}",
            local as f64 / (2 * N) as f64
        );
        assert_eq!(local, 0);

        // The cluster client with a cached route: none; without a cache: one per push.
        let before = route_reads(&redis);
        for i in 0..N {
            let content = format!("cached {i}");
            assert!(client
                .push(auto_ack_push("user-rt", &content))
                .await
                .status
                .is_success());
            expect_content(&phone, &content).await;
        }
        let cached = route_reads(&redis) - before;
        let fresh = ClusterPushClient::new(&url).expect("URL");
        let before = route_reads(&redis);
        for i in 0..N {
            let content = format!("uncached {i}");
            assert!(fresh
                .push(auto_ack_push("user-rt", &content))
                .await
                .status
                .is_success());
            expect_content(&phone, &content).await;
        }
        let uncached = route_reads(&redis) - before;
        eprintln!(
            "route reads per push through the cluster client: {} with a cached route, {} without",
            cached as f64 / N as f64,
            uncached as f64 / N as f64
        );
        assert_eq!(cached, 0);
        assert_eq!(uncached, N);

        // POST /v1/push on the other node: its own route lookup, then the forward's read.
        let before = route_reads(&redis);
        for i in 0..N {
            let content = format!("forwarded {i}");
            let body = a
                .http_post(
                    "/v1/push",
                    &json!({"userId": "user-rt", "content": content, "ack": "auto"}),
                )
                .await
                .json();
            assert_eq!(body["status"], json!("ack-success"), "{body}");
            expect_content(&phone, &content).await;
        }
        let forwarded = route_reads(&redis) - before;
        eprintln!(
            "route reads per POST /v1/push on a node without the user: {}",
            forwarded as f64 / N as f64
        );
        assert!(forwarded <= 2 * N, "{forwarded} reads for {N} pushes");

        // The same for one client type: the node's own lookup names the route, and the push
        // goes there without a second read.
        let before = route_reads(&redis);
        for i in 0..N {
            let content = format!("forwarded typed {i}");
            let body = a
                .http_post(
                    "/v1/push",
                    &json!({"userId": "user-rt", "clientType": 1, "content": content, "ack": "auto"}),
                )
                .await
                .json();
            assert_eq!(body["status"], json!("ack-success"), "{body}");
            expect_content(&phone, &content).await;
        }
        let typed = route_reads(&redis) - before;
        eprintln!(
            "route reads per POST /v1/push for one client type on a node without the user: {}",
            typed as f64 / N as f64
        );
        assert_eq!(typed, N, "one read per push: the node's own lookup");

        // A phone that never acknowledges: POST /v1/push on A ends in one timeout status within
        // the push's timeout, router change and forwarding included.
        let _silent = b.silent_device("silent", "user-silent").await;
        let quiet = ClusterPushClient::new(&url).expect("URL");
        eventually(WAIT, "the silent phone's route", || async {
            let result = quiet
                .push(SinglePushRequest {
                    ack: AckMode::None,
                    ..auto_ack_push("user-silent", "probe")
                })
                .await;
            result.status.is_success().then_some(())
        })
        .await;
        let started = Instant::now();
        let body = a
            .http_post(
                "/v1/push",
                &json!({"userId": "user-silent", "content": "never acked", "ack": "biz", "timeoutMs": 1000}),
            )
            .await
            .json();
        let took = started.elapsed();
        assert_eq!(body["status"], json!("timeout"), "{body}");
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_millis(1300),
            "answered after {took:?}: the remote gateway gets most of the push's time"
        );
        eprintln!("a forwarded push with a 1000 ms timeout answered timeout after {} ms", took.as_millis());

        // `pushgate push --redis`: the CLI on the cluster client (single push and broadcast).
        let mut cli = CliProcess::spawn(&[
            "push",
            "--redis",
            &url,
            "--user",
            "user-rt",
            "--content",
            "from the CLI",
            "--ack",
            "auto",
        ]);
        let status = cli.finish(WAIT).await;
        assert!(status.success(), "{}", cli.transcript());
        let line: serde_json::Value =
            serde_json::from_str(cli.stdout.text().trim()).expect("one JSON line");
        assert_eq!(line["status"], json!("ack-success"), "{line}");
        assert_eq!(
            line["routes"][0]["gateway"],
            json!(b.gateway.to_string()),
            "{line}"
        );
        expect_content(&phone, "from the CLI").await;
        let mut cli = CliProcess::spawn(&[
            "push",
            "--redis",
            &url,
            "--broadcast",
            "--content",
            "cli broadcast",
        ]);
        let status = cli.finish(WAIT).await;
        assert!(status.success(), "{}", cli.transcript());
        let line: serde_json::Value =
            serde_json::from_str(cli.stdout.text().trim()).expect("one JSON line");
        assert_eq!(line["nodes"].as_array().map(Vec::len), Some(2), "{line}");
        expect_content(&phone, "cli broadcast").await;
        // A user bound nowhere: exit 1 with the offline status.
        let mut cli = CliProcess::spawn(&[
            "push",
            "--redis",
            &url,
            "--user",
            "nobody",
            "--content",
            "x",
        ]);
        let status = cli.finish(WAIT).await;
        assert_eq!(status.code(), Some(1), "{}", cli.transcript());
        assert!(
            cli.stdout.text().contains("\"offline\""),
            "{}",
            cli.transcript()
        );
    })
    .await;
}
