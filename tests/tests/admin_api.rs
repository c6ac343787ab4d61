//! The HTTP admin API of the real binary: pushes over HTTP behave like gateway pushes,
//! broadcasts with tags, `/metrics` and `/v1/stats` count what happened.
#![cfg(not(madsim))]

use pushgate::client::{BroadcastRequest, DeviceOptions, SinglePushRequest};
use pushgate_core::frame::Flags;
use pushgate_core::push::AckMode;
use pushgate_core::PushStatus;
use pushgate_tests::{bounded, eventually, expect_push, expect_silence, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(5);

/// The names of a `[name, ms, name, ms, ...]` time line.
fn names_of(line: &Value) -> Vec<String> {
    let points = line
        .as_array()
        .unwrap_or_else(|| panic!("time line is not an array: {line}"));
    assert_eq!(points.len() % 2, 0, "pairs of name and time: {line}");
    points
        .chunks(2)
        .map(|pair| {
            assert!(
                pair[1].is_i64(),
                "time of {} is not a number: {line}",
                pair[0]
            );
            pair[0]
                .as_str()
                .unwrap_or_else(|| panic!("point name is not a string: {line}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_push_answers_like_a_gateway_push() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let device = server.bound_device("device-h", "user-h", &[]).await;
        let pusher = server.push_client().await;

        for (ack, status) in [
            ("none", PushStatus::Success),
            ("auto", PushStatus::AckSuccess),
        ] {
            let mode = if ack == "auto" {
                AckMode::Auto
            } else {
                AckMode::None
            };
            let request = SinglePushRequest {
                ack: mode,
                ..SinglePushRequest::new("user-h", format!("gateway {ack}").into_bytes())
            };
            let gateway = pusher.push(request).await.unwrap();
            assert_eq!(gateway.status, status, "{gateway:?}");
            assert_eq!(
                &expect_push(&device, WAIT).await.content[..],
                format!("gateway {ack}").as_bytes()
            );

            let response = server
                .http_post(
                    "/v1/push",
                    &json!({"userId": "user-h", "content": format!("http {ack}"), "ack": ack}),
                )
                .await;
            assert_eq!(response.status, 200, "{}", response.text());
            assert!(response
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")));
            let body = response.json();
            assert_eq!(body["status"], status.name(), "{body}");
            let received = expect_push(&device, WAIT).await;
            assert_eq!(&received.content[..], format!("http {ack}").as_bytes());
            assert_eq!(
                received.flags.ack_bits(),
                mode.flags(),
                "same ack flags as the gateway push"
            );
            let gateway_names: Vec<String> =
                gateway.time_points.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(names_of(&body["timePoints"]), gateway_names, "{body}");
            assert_eq!(body["userId"], "user-h", "{body}");
            for snake in ["user_id", "client_type", "time_points"] {
                assert!(
                    body.get(snake).is_none(),
                    "camelCase like the request and /v1/stats: {body}"
                );
            }
        }

        // The same statuses as the gateway for the other outcomes.
        let body = server
            .http_post("/v1/push", &json!({"userId": "nobody", "content": "x"}))
            .await
            .json();
        assert_eq!(body["status"], "offline", "{body}");
        assert_eq!(
            names_of(&body["timePoints"]).last().map(String::as_str),
            Some("offline-end")
        );
        let silent = server.silent_device("device-s", "user-s").await;
        let body = server
            .http_post(
                "/v1/push",
                &json!({"userId": "user-s", "content": "x", "ack": "biz", "timeoutMs": 600}),
            )
            .await
            .json();
        assert_eq!(
            (&body["status"], &body["reason"]),
            (&json!("timeout"), &json!("ack timeout")),
            "{body}"
        );
        assert_eq!(&expect_push(&silent, WAIT).await.content[..], b"x");

        // Bad requests are refused with a reason.
        for bad in [
            json!({"content": "no user"}),
            json!({"userId": "u", "content": "x", "ack": "maybe"}),
            json!({"userId": "u"}),
        ] {
            let response = server.http_post("/v1/push", &bad).await;
            assert!(
                (400..500).contains(&response.status),
                "{bad} → {} {}",
                response.status,
                response.text()
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_with_tags_reaches_only_matching_devices() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let tagged = server.bound_device("device-a", "user-a", &["tag-a", "tag-x"]).await;
        let other_tag = server.bound_device("device-b", "user-b", &["tag-b"]).await;
        let untagged = server.bound_device("device-c", "user-c", &[]).await;
        // Exact tag matching by default: "tag-a1" does not match "tag-a".
        let near_miss = server.bound_device("device-d", "user-d", &["tag-a1"]).await;
        let pc_options = DeviceOptions { os_name: "mac".into(), ..server.device_options("device-e") };
        let tagged_pc = server.bound_device_with(pc_options, "user-e", &["tag-a"]).await;

        let response = server.http_post("/v1/push", &json!({"broadcast": true, "content": "to tag-a", "tags": ["tag-a"]})).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        assert_eq!((&body["status"], &body["sent"]), (&json!("success"), &json!(2)), "{body}");
        for device in [&tagged, &tagged_pc] {
            let got = expect_push(device, WAIT).await;
            assert_eq!(&got.content[..], b"to tag-a");
            assert_eq!(got.flags, Flags::CRYPTO, "broadcasts never ask for acks");
        }
        for device in [&other_tag, &untagged, &near_miss] {
            expect_silence(device, Duration::from_millis(300)).await;
        }

        // Without tags: everyone. Through the gateway: the same.
        let body = server.http_post("/v1/push", &json!({"broadcast": true, "content": "to all"})).await.json();
        assert_eq!((&body["status"], &body["sent"]), (&json!("success"), &json!(5)), "{body}");
        for device in [&tagged, &other_tag, &untagged, &near_miss, &tagged_pc] {
            assert_eq!(&expect_push(device, WAIT).await.content[..], b"to all");
        }
        let pusher = server.push_client().await;
        let request = BroadcastRequest { tags: vec!["tag-b".into(), "tag-x".into()], ..BroadcastRequest::new(&b"gateway tags"[..]) };
        let result = pusher.broadcast(request).await.unwrap();
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        for device in [&tagged, &other_tag] {
            assert_eq!(&expect_push(device, WAIT).await.content[..], b"gateway tags");
        }
        for device in [&untagged, &near_miss, &tagged_pc] {
            expect_silence(device, Duration::from_millis(200)).await;
        }

        // A condition over the bound attributes.
        let body = server.http_post("/v1/push", &json!({"broadcast": true, "content": "by condition", "condition": "userId == 'user-c'"})).await.json();
        assert_eq!((&body["status"], &body["sent"]), (&json!("success"), &json!(1)), "{body}");
        assert_eq!(&expect_push(&untagged, WAIT).await.content[..], b"by condition");
        expect_silence(&tagged, Duration::from_millis(200)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_stats_count_what_happened() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let before = server.stats().await;
        assert_eq!(
            (&before["connections"], &before["boundRoutes"]),
            (&json!(0), &json!(0)),
            "{before}"
        );

        let first = server.bound_device("device-1", "user-1", &[]).await;
        let second = server.bound_device("device-2", "user-2", &[]).await;
        let _unbound = server.device_with(server.device_options("device-3")).await;
        let silent = server.silent_device("device-4", "user-4").await;
        let pusher = server.push_client().await;

        let push = |user: &str, ack: AckMode, timeout_ms: u64| SinglePushRequest {
            ack,
            timeout_ms,
            ..SinglePushRequest::new(user, b"counted".to_vec())
        };
        for _ in 0..3 {
            assert_eq!(
                pusher
                    .push(push("user-1", AckMode::None, 3000))
                    .await
                    .unwrap()
                    .status,
                PushStatus::Success
            );
        }
        for _ in 0..2 {
            assert_eq!(
                pusher
                    .push(push("user-2", AckMode::Auto, 3000))
                    .await
                    .unwrap()
                    .status,
                PushStatus::AckSuccess
            );
        }
        assert_eq!(
            pusher
                .push(push("nobody", AckMode::None, 3000))
                .await
                .unwrap()
                .status,
            PushStatus::Offline
        );
        assert_eq!(
            pusher
                .push(push("user-4", AckMode::Biz, 800))
                .await
                .unwrap()
                .status,
            PushStatus::Timeout
        );
        let body = server
            .http_post("/v1/push", &json!({"broadcast": true, "content": "all"}))
            .await
            .json();
        assert_eq!(body["sent"], 3, "{body}");
        for _ in 0..4 {
            expect_push(&first, WAIT).await;
        }
        for _ in 0..3 {
            expect_push(&second, WAIT).await;
        }
        for _ in 0..2 {
            expect_push(&silent, WAIT).await;
        }

        let metrics = eventually(WAIT, "the push counters", || async {
            let m = server.metrics().await;
            (m.count("pushgate_pushes_total", &[("status", "timeout")]) >= 1.0).then_some(m)
        })
        .await;
        let text = &metrics.0;
        let pushes = |status: &str| metrics.count("pushgate_pushes_total", &[("status", status)]);
        assert_eq!(pushes("success"), 3.0, "{text}");
        assert_eq!(pushes("ack-success"), 2.0, "{text}");
        assert_eq!(pushes("offline"), 1.0, "{text}");
        assert_eq!(pushes("timeout"), 1.0, "{text}");
        assert_eq!(pushes("failure"), 0.0, "{text}");
        assert_eq!(
            metrics.count("pushgate_broadcasts_total", &[("status", "success")]),
            1.0,
            "{text}"
        );
        assert_eq!(
            metrics.count("pushgate_handshakes_total", &[("kind", "full")]),
            4.0,
            "{text}"
        );
        assert_eq!(metrics.count("pushgate_binds_total", &[]), 3.0, "{text}");
        assert_eq!(metrics.count("pushgate_connections", &[]), 4.0, "{text}");
        assert_eq!(
            metrics.count("pushgate_connections_opened_total", &[]),
            4.0,
            "{text}"
        );
        assert!(
            metrics
                .value("pushgate_ack_latency_seconds_count", &[])
                .is_some_and(|n| n >= 2.0),
            "{text}"
        );

        let stats = server.stats().await;
        assert_eq!(stats["connections"], 4, "{stats}");
        assert_eq!(stats["boundRoutes"], 3, "{stats}");
        assert_eq!(stats["gatewayConnections"], 1, "{stats}");
        assert_eq!(stats["handshakes"], 4, "{stats}");
        assert_eq!(stats["binds"], 3, "{stats}");
        assert_eq!(stats["pendingPushes"], 0, "{stats}");
        assert_eq!(stats["inFlight"], 0, "{stats}");
        // /v1/stats counts single pushes by status and broadcasts on their own, as /metrics does.
        let by_status = &stats["pushes"];
        assert_eq!(
            (
                &by_status["success"],
                &by_status["ack-success"],
                &by_status["offline"],
                &by_status["timeout"],
                &by_status["failure"]
            ),
            (&json!(3), &json!(2), &json!(1), &json!(1), &json!(0)),
            "{stats}"
        );
        assert_eq!(stats["broadcastsFinished"]["success"], 1, "{stats}");
        assert_eq!(stats["broadcastDeliveries"], 3, "{stats}");

        // A device leaving shows in both.
        second.close().await;
        let stats = eventually(WAIT, "the closed connection to leave the stats", || async {
            let s = server.stats().await;
            (s["connections"] == 3).then_some(s)
        })
        .await;
        assert_eq!(stats["boundRoutes"], 2, "{stats}");
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.count("pushgate_connections", &[]),
            3.0,
            "{}",
            metrics.0
        );

        // Users and health.
        let user = server.http_get("/v1/users/user-1").await;
        assert_eq!(user.status, 200, "{}", user.text());
        assert!(user.text().contains("user-1"), "{}", user.text());
        assert_eq!(server.http_get("/healthz").await.text(), "ok");
        assert_eq!(server.http_get("/no/such/path").await.status, 404);
    })
    .await;
}
