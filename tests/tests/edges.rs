//! Edge paths: shutdown with broadcasts and flow-delayed pushes pending, expired sessions,
//! unknown client types, admin API filters.
#![cfg(not(madsim))]

use pushgate::client::{BroadcastRequest, DeviceOptions, SinglePushRequest};
use pushgate_core::PushStatus;
use pushgate_tests::{bounded, eventually, expect_closed, expect_push, expect_silence, TestServer};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_a_running_broadcast_and_flow_delayed_pushes() {
    bounded(LIMIT, async {
        let mut server = TestServer::start_toml(
            "[flow]\nbroadcast_limit_per_second = 2\nglobal_limit_per_second = 2\n[net]\nshutdown_grace_ms = 3000\n",
        )
        .await;
        let mut devices = Vec::new();
        for i in 0..8 {
            devices.push(server.bound_device(&format!("device-{i}"), &format!("user-{i}"), &[]).await);
        }
        let pusher = Arc::new(server.push_client().await);
        // At 2 per second the broadcast needs about four seconds for eight devices.
        let broadcast = tokio::spawn({
            let pusher = pusher.clone();
            async move { pusher.broadcast(BroadcastRequest { timeout_ms: 20_000, ..BroadcastRequest::new(&b"slowly"[..]) }).await }
        });
        // Single pushes beyond the global limit wait for the next window.
        let singles: Vec<_> = (0..6)
            .map(|i| {
                let pusher = pusher.clone();
                tokio::spawn(async move {
                    let request = SinglePushRequest { timeout_ms: 20_000, ..SinglePushRequest::new("user-0", format!("s{i}").into_bytes()) };
                    pusher.push(request).await
                })
            })
            .collect();
        eventually(WAIT, "a broadcast and delayed pushes pending", || async {
            let s = server.stats().await;
            (s["broadcasts"] == 1 && s["flowDelays"].as_u64().unwrap_or(0) > 0).then_some(())
        })
        .await;
        let signalled = Instant::now();
        server.sigterm();
        let result = broadcast.await.unwrap().expect("the broadcast is answered");
        assert_eq!(result.status, PushStatus::Failure, "{result:?}");
        assert_eq!(result.reason.as_deref(), Some("server shutting down"), "{result:?}");
        let mut shut = 0;
        for single in singles {
            let result = single.await.unwrap().expect("each push is answered");
            match result.status {
                PushStatus::Success => {}
                PushStatus::Failure => {
                    assert_eq!(result.reason.as_deref(), Some("server shutting down"), "{result:?}");
                    shut += 1;
                }
                other => panic!("unexpected {other:?}: {result:?}"),
            }
        }
        assert!(shut > 0, "some pushes were still waiting for the flow window");
        assert!(signalled.elapsed() < Duration::from_secs(2), "answers took {:?}", signalled.elapsed());
        let status = server.wait_exit(WAIT).await.expect("exits");
        assert!(status.success(), "{status}\n{}", server.logs());
        for device in &devices {
            expect_closed(device, WAIT).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_is_refused_and_the_client_handshakes_again() {
    bounded(LIMIT, async {
        let server = TestServer::start_toml("[core]\nsession_expire_ms = 300\n").await;
        let first = server.bound_device("device-x", "user-x", &[]).await;
        let mut session = first.stored_session();
        first.close().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The client still believes in its session; the server no longer does.
        session.expire_time_ms = i64::MAX;
        let options = DeviceOptions {
            session: Some(session),
            ..server.device_options("device-x")
        };
        let second = server.bound_device_with(options, "user-x", &[]).await;
        assert!(
            !second.fast_connected(),
            "an expired session must not be resumed"
        );
        let stats = server.stats().await;
        assert_eq!(
            (&stats["handshakes"], &stats["fastConnects"]),
            (&json!(2), &json!(0)),
            "{stats}"
        );
        let result = server
            .push_client()
            .await
            .push(SinglePushRequest::new("user-x", b"after".to_vec()))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        assert_eq!(&expect_push(&second, WAIT).await.content[..], b"after");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_types_follow_the_os_name() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let pusher = server.push_client().await;
        // (os name, client type): android/ios → 1, windows/mac/linux → 2, web/h5 → 3, else -1.
        let cases = [
            ("Android", 1),
            ("iOS", 1),
            ("Windows 10", 2),
            ("MacOS", 2),
            ("web", 3),
            ("h5", 3),
            ("tizen", -1),
        ];
        let mut devices = Vec::new();
        for (i, (os, _)) in cases.iter().enumerate() {
            let options = DeviceOptions {
                os_name: (*os).into(),
                ..server.device_options(&format!("device-{i}"))
            };
            devices.push(
                server
                    .bound_device_with(options, &format!("user-{i}"), &[])
                    .await,
            );
        }
        for (i, (os, code)) in cases.iter().enumerate() {
            let user = format!("user-{i}");
            let exact = SinglePushRequest {
                client_type: Some(*code),
                ..SinglePushRequest::new(user.clone(), os.as_bytes().to_vec())
            };
            let result = pusher.push(exact).await.unwrap();
            // As in MPush, the result JSON leaves clientType out when it is not positive.
            let reported = (*code > 0).then_some(*code);
            assert_eq!(
                (result.status, result.client_type),
                (PushStatus::Success, reported),
                "{os}: {result:?}"
            );
            assert_eq!(
                &expect_push(&devices[i], WAIT).await.content[..],
                os.as_bytes()
            );
            let other = if *code == 1 { 2 } else { 1 };
            let wrong = SinglePushRequest {
                client_type: Some(other),
                ..SinglePushRequest::new(user.clone(), b"no".to_vec())
            };
            assert_eq!(
                pusher.push(wrong).await.unwrap().status,
                PushStatus::Offline,
                "{os} is not type {other}"
            );
        }
        let view = server.http_get("/v1/users/user-6").await.json();
        assert_eq!(view["local"][0]["clientType"], -1, "{view}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_broadcast_filters_and_task_ids() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let a = server.bound_device("device-a", "user-a", &["x"]).await;
        let b = server.bound_device("device-b", "user-b", &["x"]).await;
        let pc = server
            .bound_device_with(
                DeviceOptions {
                    os_name: "linux".into(),
                    ..server.device_options("device-c")
                },
                "user-c",
                &["x"],
            )
            .await;

        let body = server
            .http_post(
                "/v1/push",
                &json!({"broadcast": true, "content": "ids", "userIds": ["user-b", "user-c"]}),
            )
            .await
            .json();
        assert_eq!(
            (&body["status"], &body["sent"]),
            (&json!("success"), &json!(2)),
            "{body}"
        );
        assert_eq!(&expect_push(&b, WAIT).await.content[..], b"ids");
        assert_eq!(&expect_push(&pc, WAIT).await.content[..], b"ids");
        expect_silence(&a, Duration::from_millis(200)).await;

        let body = server
            .http_post(
                "/v1/push",
                &json!({"broadcast": true, "content": "pc", "clientType": 2}),
            )
            .await
            .json();
        assert_eq!(body["sent"], 1, "{body}");
        assert_eq!(&expect_push(&pc, WAIT).await.content[..], b"pc");

        let body = server
            .http_post(
                "/v1/push",
                &json!({"broadcast": true, "content": "task", "taskId": "t-1", "tags": ["x"]}),
            )
            .await
            .json();
        assert_eq!(body["status"], "success", "{body}");
        for device in [&a, &b, &pc] {
            assert_eq!(&expect_push(device, WAIT).await.content[..], b"task");
        }

        let response = server
            .http_post(
                "/v1/push",
                &json!({"userId": "user-a", "content": "x", "clientType": 9}),
            )
            .await;
        assert_eq!(response.status, 400, "{}", response.text());
        let response = server
            .http_post(
                "/v1/push",
                &json!({"broadcast": true, "content": "x", "condition": "userId %"}),
            )
            .await;
        assert_eq!(response.status, 400, "{}", response.text());
        assert!(
            response.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("condition")),
            "{}",
            response.text()
        );
        expect_silence(&a, Duration::from_millis(100)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_device_that_reads_nothing_exits_within_the_grace_time() {
    bounded(LIMIT, async {
        let mut server = TestServer::start_toml("[net]\nshutdown_grace_ms = 1500\n").await;
        let file = pushgate_tests::vectors::load("handshake-bind-push.json");
        let phone = pushgate_tests::vectors::Phone::of(&file, 0);
        let mut stuck = pushgate_tests::RawConn::connect(server.connect).await;
        phone.connect_and_bind(&mut stuck, 180_000).await;
        let pusher = Arc::new(server.push_client().await);
        // Fill the socket buffers and the server's queue until no push gets through any more:
        // the connection task is then blocked writing to a peer that reads nothing.
        let content = bytes::Bytes::from(vec![b'z'; 10_000]);
        let mut stalled = false;
        for _ in 0..80 {
            let batch: Vec<_> = (0..100)
                .map(|_| {
                    let pusher = pusher.clone();
                    let content = content.clone();
                    tokio::spawn(async move {
                        pusher.push(SinglePushRequest::new("user-1", content)).await
                    })
                })
                .collect();
            let mut delivered = 0;
            for task in batch {
                delivered +=
                    usize::from(task.await.unwrap().unwrap().status == PushStatus::Success);
            }
            if delivered == 0 {
                stalled = true;
                break;
            }
        }
        assert!(stalled, "the device never stalled");
        let signalled = Instant::now();
        server.sigterm();
        let Some(status) = server.wait_exit(Duration::from_secs(6)).await else {
            panic!("still running 6 s after SIGTERM\n{}", server.logs());
        };
        assert!(status.success(), "{status}\n{}", server.logs());
        let after = signalled.elapsed();
        assert!(
            after < Duration::from_millis(1500 + 1500),
            "exited after {after:?}"
        );
        assert!(
            server.logs().contains("grace period over"),
            "the premise: a connection task was stuck"
        );
        drop(stuck);
    })
    .await;
}
