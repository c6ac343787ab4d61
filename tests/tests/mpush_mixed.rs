//! A pushgate node beside MPush Java nodes, end to end through the real binary and a real
//! Redis: the test plays the Java node through its Redis footprint only, with MPush's exact
//! formats (the captured values of `../shared/vectors/cluster-data.json`):
//!
//! - a route a Java node wrote (no version fields) makes pushgate answer router-change for that
//!   user, and a later bind on pushgate replaces it (the Java route counts as the oldest) and
//!   sends the Java node MPush's kick notice;
//! - a reusable session in MPush's text lets a phone fast-connect to pushgate;
//! - a kick notice in MPush's JSON on the node's channel kicks its phone.
use pushgate::client::{DeviceEvent, StoredSession};
use pushgate_core::PushStatus;
use pushgate_tests::redis::{auto_ack_push, node_on, RedisServer};
use pushgate_tests::{bounded, eventually, expect_push, TestServer};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(40);
const WAIT: Duration = Duration::from_secs(5);

/// Every command MPush sent to Redis in the captured run.
fn mpush_commands() -> Vec<Vec<String>> {
    let path = pushgate_tests::shared_path("vectors/cluster-data.json");
    let text = std::fs::read_to_string(&path).expect("cluster-data.json");
    let data: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut out = Vec::new();
    for step in data["redis_commands"].as_array().expect("redis_commands") {
        for command in step["commands"].as_array().expect("commands") {
            out.push(
                command["cmd"]
                    .as_array()
                    .expect("cmd")
                    .iter()
                    .map(|a| a.as_str().expect("string").to_owned())
                    .collect(),
            );
        }
    }
    out
}

/// The first captured command with `name` whose key starts with `prefix`.
fn captured(name: &str, prefix: &str) -> Vec<String> {
    mpush_commands()
        .into_iter()
        .find(|c| c[0] == name && c[1].starts_with(prefix))
        .unwrap_or_else(|| panic!("no captured {name} {prefix}…"))
}

async fn connected(node: &TestServer) {
    eventually(WAIT, "the link to Redis", || {
        let up = node.logs().contains("connected to Redis");
        async move { up.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_a_java_node_wrote_gets_router_change_then_yields_to_a_bind_here() {
    let redis = RedisServer::start();
    bounded(LIMIT, async {
        let node = node_on(&redis.url(), "").await;
        connected(&node).await;
        // MPush's online route of user-1 on the Java node 127.0.0.1:26001, byte for byte.
        let hset = mpush_commands()
            .into_iter()
            .find(|c| c[0] == "HSET" && c[1] == "mp:ur:user-1" && c[3].contains("connId"))
            .expect("MPush's online route");
        assert!(!hset[3].contains("version"), "MPush writes no versions");
        redis.command(&["HSET", &hset[1], &hset[2], &hset[3]]);

        // A push through pushgate for the user the Java node holds: router change (MPush's
        // PushClient then re-reads the route and goes to the Java node).
        let client = node.push_client().await;
        let result = client.push(auto_ack_push("user-1", "hi")).await.unwrap();
        assert_eq!(result.status, PushStatus::RouterChange, "{result:?}");

        // The same user binds the same client type here: the Java route is the oldest bind, it
        // is replaced, and the Java node's kick channel gets MPush's notice.
        let redis_client = redis::Client::open(redis.url()).unwrap();
        let mut kicks = redis_client.get_async_pubsub().await.unwrap();
        kicks
            .subscribe("/mpush/kick/127.0.0.1:26001")
            .await
            .unwrap();
        let mut kicks = kicks.into_on_message();
        let phone = node.bound_device("device-pg", "user-1", &[]).await;
        let message = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut kicks))
            .await
            .expect("a kick notice for the Java node")
            .unwrap();
        let notice: serde_json::Value =
            serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(
            notice,
            serde_json::json!({
                "clientType": 1, "connId": "851404e0", "deviceId": "device-A",
                "targetPort": 26001, "targetServer": "127.0.0.1", "userId": "user-1"
            })
        );
        let route = redis.command(&["HGET", "mp:ur:user-1", "1"]);
        assert!(
            route.contains(&format!("\"port\":{}", node.gateway.port())),
            "{route}"
        );
        let result = client.push(auto_ack_push("user-1", "hi")).await.unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(expect_push(&phone, WAIT).await.content.as_ref(), b"hi");
    })
    .await;
}

/// `-92|82|…` (signed Java bytes) as 16 bytes.
fn java_bytes(text: &str) -> [u8; 16] {
    let bytes: Vec<u8> = text
        .split('|')
        .map(|b| b.parse::<i8>().expect("a signed byte") as u8)
        .collect();
    bytes.try_into().expect("16 bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_a_java_node_stored_fast_connects_here() {
    let redis = RedisServer::start();
    bounded(LIMIT, async {
        let node = node_on(&redis.url(), "").await;
        connected(&node).await;
        // MPush's reusable session of device-A (SET mp:rs:… then EXPIRE 86400, as MPush).
        let set = captured("SET", "mp:rs:");
        redis.command(&["SET", &set[1], &set[2]]);
        redis.command(&["EXPIRE", &set[1], "86400"]);
        let fields: Vec<&str> = set[2].split(',').collect();
        assert_eq!(fields.len(), 6, "{}", set[2]);
        let session = StoredSession {
            session_id: set[1].strip_prefix("mp:rs:").unwrap().to_owned(),
            session_key: java_bytes(fields[4]),
            iv: java_bytes(fields[5]),
            expire_time_ms: i64::MAX,
        };
        let mut options = node.device_options(fields[3]);
        options.os_name = fields[0].into();
        options.os_version = fields[1].into();
        options.client_version = fields[2].into();
        options.session = Some(session);
        let phone = node.bound_device_with(options, "user-fast", &[]).await;
        assert!(phone.fast_connected(), "fast connect with MPush's session");
        let client = node.push_client().await;
        let result = client
            .push(auto_ack_push("user-fast", "fast"))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(expect_push(&phone, WAIT).await.content.as_ref(), b"fast");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_notice_in_mpush_json_kicks_the_phone_here() {
    let redis = RedisServer::start();
    bounded(LIMIT, async {
        let node = node_on(&redis.url(), "").await;
        connected(&node).await;
        let phone = node.bound_device("device-D", "user-2", &[]).await;
        let route = eventually(WAIT, "the route in Redis", || {
            let route = redis.command(&["HGET", "mp:ur:user-2", "1"]);
            async move { route.contains("connId").then_some(route) }
        })
        .await;
        let json = route
            .lines()
            .find(|l| l.starts_with('{'))
            .expect("the route JSON");
        let route: serde_json::Value = serde_json::from_str(json).unwrap();
        let conn_id = route["connId"].as_str().unwrap();
        // What a Java node publishes when device-E binds user-2 there (MPush's key order).
        let notice = format!(
            "{{\"clientType\":1,\"connId\":\"{conn_id}\",\"deviceId\":\"device-D\",\"targetPort\":{port},\"targetServer\":\"127.0.0.1\",\"userId\":\"user-2\"}}",
            port = node.gateway.port()
        );
        let channel = format!("/mpush/kick/127.0.0.1:{}", node.gateway.port());
        let receivers = redis.command(&["PUBLISH", &channel, &notice]);
        assert!(receivers.starts_with(":1"), "{receivers}");
        match phone.next_event_within(WAIT).await {
            Ok(DeviceEvent::Kick { device_id, user_id }) => {
                assert_eq!((device_id.as_str(), user_id.as_str()), ("device-D", "user-2"));
            }
            other => panic!("expected a KICK, got {other:?}\n{}", node.logs()),
        }
    })
    .await;
}
