//! Harder paths through the real binary: many pushes at once, flow control, devices that
//! leave with pushes in flight, rebinds and unbinds, kicks of the same device id, protocol
//! misuse before the handshake, the connection limit and the admin kick.
#![cfg(not(madsim))]

use bytes::Bytes;
use pushgate::client::{ClientError, DeviceEvent, DeviceOptions, PushClient, SinglePushRequest};
use pushgate_core::command::Command;
use pushgate_core::frame::{Flags, Frame, Packet};
use pushgate_core::message::{Bind, Body, ErrorMessage};
use pushgate_core::push::AckMode;
use pushgate_core::PushStatus;
use pushgate_tests::{
    bounded, expect_closed, expect_push, expect_silence, RawConn, RawEnd, TestServer,
};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(5);

fn push(user: &str, content: impl Into<Bytes>, ack: AckMode, timeout_ms: u64) -> SinglePushRequest {
    SinglePushRequest {
        ack,
        timeout_ms,
        ..SinglePushRequest::new(user, content)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_acked_pushes_all_succeed_exactly_once() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let users = ["user-0", "user-1", "user-2"];
        let mut devices = Vec::new();
        for user in users {
            devices.push(
                server
                    .bound_device(&format!("device-{user}"), user, &[])
                    .await,
            );
        }
        let clients = [
            Arc::new(server.push_client().await),
            Arc::new(server.push_client().await),
        ];
        const PER_USER: usize = 100;
        let mut tasks = Vec::new();
        for i in 0..PER_USER * users.len() {
            let client: Arc<PushClient> = clients[i % 2].clone();
            let user = users[i % users.len()];
            tasks.push(tokio::spawn(async move {
                client
                    .push(push(user, format!("m{i}"), AckMode::Auto, 10_000))
                    .await
            }));
        }
        for task in tasks {
            let result = task.await.unwrap().unwrap();
            assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        }
        for (n, device) in devices.iter().enumerate() {
            let mut got = BTreeSet::new();
            for _ in 0..PER_USER {
                let push = expect_push(device, WAIT).await;
                assert!(
                    got.insert(String::from_utf8(push.content.to_vec()).unwrap()),
                    "a push arrived twice"
                );
            }
            let expected: BTreeSet<String> = (0..PER_USER * users.len())
                .filter(|i| i % users.len() == n)
                .map(|i| format!("m{i}"))
                .collect();
            assert_eq!(got, expected);
            expect_silence(device, Duration::from_millis(100)).await;
        }
        let stats = server.stats().await;
        assert_eq!(
            (&stats["inFlight"], &stats["pendingPushes"]),
            (&json!(0), &json!(0)),
            "{stats}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_flow_control_delays_but_delivers() {
    bounded(LIMIT, async {
        let server = TestServer::start_toml("[flow]\nglobal_limit_per_second = 10\n").await;
        let device = server.bound_device("device-f", "user-f", &[]).await;
        let client = Arc::new(server.push_client().await);
        let started = Instant::now();
        let tasks: Vec<_> = (0..25)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .push(push("user-f", format!("f{i}"), AckMode::None, 10_000))
                        .await
                })
            })
            .collect();
        for task in tasks {
            let result = task.await.unwrap().unwrap();
            assert_eq!(result.status, PushStatus::Success, "{result:?}");
        }
        let elapsed = started.elapsed();
        // About 10 per second: 25 pushes need at least two more windows after the first.
        assert!(
            elapsed >= Duration::from_millis(1500),
            "25 pushes at 10/s took only {elapsed:?}"
        );
        for _ in 0..25 {
            expect_push(&device, WAIT).await;
        }
        let stats = server.stats().await;
        assert!(
            stats["flowDelays"].as_u64().is_some_and(|n| n > 0),
            "{stats}"
        );
        let metrics = server.metrics().await;
        assert!(
            metrics.count("pushgate_flow_control_delays_total", &[]) > 0.0,
            "{}",
            metrics.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_leaving_with_an_ack_pending_fails_the_push_at_once() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let device = server.silent_device("device-gone", "user-gone").await;
        let client = Arc::new(server.push_client().await);
        let pending = tokio::spawn({
            let client = client.clone();
            async move {
                client
                    .push(push("user-gone", "never acked", AckMode::Biz, 20_000))
                    .await
            }
        });
        expect_push(&device, WAIT).await;
        let closed_at = Instant::now();
        device.close().await;
        let result = pending.await.unwrap().unwrap();
        assert_eq!(result.status, PushStatus::Failure, "{result:?}");
        assert_eq!(
            result.reason.as_deref(),
            Some("connection closed"),
            "{result:?}"
        );
        assert!(
            closed_at.elapsed() < Duration::from_secs(2),
            "answered after {:?}, not at the close",
            closed_at.elapsed()
        );
        let result = client
            .push(push("user-gone", "later", AckMode::None, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Offline, "{result:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebind_and_unbind_move_the_route() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let client = server.push_client().await;
        let device = server.bound_device("device-r", "user-old", &["t1"]).await;
        // Binding another user on the same connection unbinds the first.
        device.bind("user-new", &["t2"]).await.unwrap();
        let result = client
            .push(push("user-old", "old", AckMode::None, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Offline, "{result:?}");
        let result = client
            .push(push("user-new", "new", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(&expect_push(&device, WAIT).await.content[..], b"new");
        // The same user again just updates the tags.
        device.bind("user-new", &["t3"]).await.unwrap();
        let body = server
            .http_post(
                "/v1/push",
                &json!({"broadcast": true, "content": "t3 only", "tags": ["t3"]}),
            )
            .await
            .json();
        assert_eq!(body["sent"], 1, "{body}");
        assert_eq!(&expect_push(&device, WAIT).await.content[..], b"t3 only");
        let body = server
            .http_post(
                "/v1/push",
                &json!({"broadcast": true, "content": "t2", "tags": ["t2"]}),
            )
            .await
            .json();
        assert_eq!(body["sent"], 0, "{body}");
        // Unbind: offline, connection kept; bind again: reachable.
        device.unbind().await.unwrap();
        let result = client
            .push(push("user-new", "x", AckMode::None, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Offline, "{result:?}");
        assert!(!device.is_closed());
        device.bind("user-new", &[]).await.unwrap();
        let result = client
            .push(push("user-new", "back", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(&expect_push(&device, WAIT).await.content[..], b"back");
        expect_silence(&device, Duration::from_millis(100)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_device_unbinding_or_leaving_does_not_take_the_new_route() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let client = server.push_client().await;
        for (old_id, new_id) in [("device-x", "device-y"), ("same-device", "same-device")] {
            let user = format!("user-{old_id}");
            let old = server.bound_device(old_id, &user, &[]).await;
            let new = server.bound_device(new_id, &user, &[]).await;
            match old.next_event_within(WAIT).await {
                Ok(DeviceEvent::Kick { device_id, user_id }) => assert_eq!(
                    (device_id.as_str(), user_id.as_str()),
                    (old_id, user.as_str())
                ),
                other => panic!("expected a KICK, got {other:?}"),
            }
            // What the Android SDK does after a kick: unbind, then (here) leave.
            old.unbind().await.unwrap();
            let result = client
                .push(push(&user, "after the unbind", AckMode::Auto, 3000))
                .await
                .unwrap();
            assert_eq!(
                result.status,
                PushStatus::AckSuccess,
                "{old_id}: {result:?}"
            );
            assert_eq!(
                &expect_push(&new, WAIT).await.content[..],
                b"after the unbind"
            );
            old.close().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let result = client
                .push(push(&user, "after the close", AckMode::Auto, 3000))
                .await
                .unwrap();
            assert_eq!(
                result.status,
                PushStatus::AckSuccess,
                "{old_id}: {result:?}"
            );
            assert_eq!(
                &expect_push(&new, WAIT).await.content[..],
                b"after the close"
            );
            let view = server.http_get(&format!("/v1/users/{user}")).await.json();
            assert_eq!(view["local"].as_array().map(Vec::len), Some(1), "{view}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_kick_sends_kick_and_unroutes_the_user() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let mobile = server.bound_device("device-m", "user-a", &[]).await;
        let pc = server
            .bound_device_with(
                DeviceOptions {
                    os_name: "linux".into(),
                    ..server.device_options("device-p")
                },
                "user-a",
                &[],
            )
            .await;
        let response = server.http_delete("/v1/users/user-a?clientType=1").await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["kicked"], 1);
        match mobile.next_event_within(WAIT).await {
            Ok(DeviceEvent::Kick { device_id, user_id }) => assert_eq!(
                (device_id.as_str(), user_id.as_str()),
                ("device-m", "user-a")
            ),
            other => panic!("expected a KICK, got {other:?}"),
        }
        expect_silence(&pc, Duration::from_millis(200)).await;
        let client = server.push_client().await;
        let to_mobile = SinglePushRequest {
            client_type: Some(1),
            ..push("user-a", "m", AckMode::None, 3000)
        };
        assert_eq!(
            client.push(to_mobile).await.unwrap().status,
            PushStatus::Offline
        );
        let to_pc = SinglePushRequest {
            client_type: Some(2),
            ..push("user-a", "p", AckMode::Auto, 3000)
        };
        assert_eq!(
            client.push(to_pc).await.unwrap().status,
            PushStatus::AckSuccess
        );
        assert_eq!(&expect_push(&pc, WAIT).await.content[..], b"p");
        let response = server.http_delete("/v1/users/user-a").await;
        assert_eq!(response.json()["kicked"], 1, "{}", response.text());
        assert!(matches!(
            pc.next_event_within(WAIT).await,
            Ok(DeviceEvent::Kick { .. })
        ));
        let response = server.http_delete("/v1/users/nobody").await;
        assert_eq!(response.json()["kicked"], 0, "{}", response.text());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_and_unbind_before_the_handshake_are_refused_and_closed() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let body = Bind {
            user_id: "u".into(),
            data: String::new(),
            tags: String::new(),
        }
        .to_bytes();
        for cmd in [Command::Bind, Command::Unbind] {
            let mut raw = RawConn::connect(server.connect).await;
            raw.send(&Packet::new(cmd.code(), Flags::NONE, 3, body.clone()).to_bytes())
                .await;
            let frames = raw.expect_closed(WAIT).await;
            let [Frame::Packet(reply)] = frames.as_slice() else {
                panic!("{cmd:?}: expected one ERROR, got {frames:?}")
            };
            let error = ErrorMessage::decode(&reply.body).unwrap();
            assert_eq!(
                (
                    reply.cmd,
                    reply.session_id,
                    error.cmd,
                    error.code,
                    error.reason.as_str()
                ),
                (10, 3, cmd.code(), 0, "not handshake")
            );
        }
        // An empty user id after the handshake: "invalid param" and close.
        let device = server.device_with(server.device_options("device-e")).await;
        match device.bind("", &[]).await {
            Err(ClientError::Rejected {
                cmd: 5,
                code: 0,
                reason,
            }) => assert_eq!(reason, "invalid param"),
            other => panic!("expected invalid param, got {other:?}"),
        }
        expect_closed(&device, WAIT).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed() {
    bounded(LIMIT, async {
        let server = TestServer::start_toml("[net]\nmax_connections = 2\n").await;
        let first = server.bound_device("device-1", "user-1", &[]).await;
        let _second = server.bound_device("device-2", "user-2", &[]).await;
        let mut third = RawConn::connect(server.connect).await;
        third.send(&[0xDF]).await;
        assert!(
            third.expect_closed(WAIT).await.is_empty(),
            "no answer over the limit"
        );
        // The first ones are still served, and a place freed is usable again.
        first.close().await;
        let deadline = Instant::now() + WAIT;
        loop {
            match pushgate::client::DeviceClient::connect(
                server.connect,
                server.device_options("device-3"),
            )
            .await
            {
                Ok(device) => {
                    device.bind("user-3", &[]).await.unwrap();
                    break;
                }
                Err(error) => assert!(Instant::now() < deadline, "no place freed: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_push_is_acked_only_when_asked() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let device = server.bound_device("device-u", "user-u", &[]).await;
        device.push_upstream(&b"with ack"[..], true).await.unwrap();
        device.push_upstream(vec![b'z'; 3000], true).await.unwrap();
        device.push_upstream(&b"no ack"[..], false).await.unwrap();
        expect_silence(&device, Duration::from_millis(300)).await;
        assert!(!device.is_closed());

        // The device client drops ACKs nobody waits for, so "only when asked" is checked on a
        // bare connection: a captured MPush client, whose every frame is seen.
        let file = pushgate_tests::vectors::load("handshake-bind-push.json");
        let phone = pushgate_tests::vectors::Phone::of(&file, 0);
        let mut raw = RawConn::connect(server.connect).await;
        let session = phone.connect_and_bind(&mut raw, 180_000).await;
        let upstream = |flags: Flags, session_id: i32| {
            Packet::new(
                Command::Push.code(),
                flags,
                session_id,
                session.encrypt(b"upstream"),
            )
            .to_bytes()
        };
        raw.send(&upstream(Flags::CRYPTO, 41)).await;
        assert_eq!(
            raw.read_frame(Duration::from_millis(300)).await,
            Err(RawEnd::TimedOut),
            "no ACK for an upstream push that did not ask for one"
        );
        raw.send(&upstream(Flags::CRYPTO.with(Flags::AUTO_ACK), 42))
            .await;
        let ack = raw.expect_packet(WAIT).await;
        assert_eq!(
            (ack.cmd, ack.session_id),
            (Command::Ack.code(), 42),
            "{ack:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_that_stops_reading_fails_its_pushes_without_stalling_others() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        // A captured MPush client (device-A, user-1) that handshakes, binds, then reads nothing.
        let file = pushgate_tests::vectors::load("handshake-bind-push.json");
        let phone = pushgate_tests::vectors::Phone::of(&file, 0);
        let mut stuck = RawConn::connect(server.connect).await;
        phone.connect_and_bind(&mut stuck, 180_000).await;
        let reader = server.bound_device("device-r", "user-r", &[]).await;
        let client = Arc::new(server.push_client().await);

        let content = Bytes::from(vec![b'x'; 10_000]);
        let mut failure = None;
        let mut sent = 0;
        'fill: while sent < 3000 {
            let batch: Vec<_> = (0..100)
                .map(|_| {
                    let client = client.clone();
                    let content = content.clone();
                    tokio::spawn(async move {
                        client
                            .push(push("user-1", content, AckMode::None, 10_000))
                            .await
                    })
                })
                .collect();
            sent += batch.len();
            for task in batch {
                let result = task.await.unwrap().unwrap();
                match result.status {
                    PushStatus::Success => {}
                    // Pushes the node handed over before the connection reported crossing its
                    // high mark wait in its queue, unread, until their deadline.
                    PushStatus::Timeout => {
                        assert_eq!(result.reason.as_deref(), Some("push timeout"), "{result:?}")
                    }
                    _ => failure = failure.or(Some(result)),
                }
            }
            if failure.is_some() {
                break 'fill;
            }
        }
        let failure = failure.unwrap_or_else(|| {
            panic!("{sent} pushes of 10 kB to a device that reads nothing all succeeded")
        });
        assert_eq!(failure.status, PushStatus::Failure, "{failure:?}");
        assert_eq!(
            failure.reason.as_deref(),
            Some("connection not writable"),
            "{failure:?}"
        );

        // Others are served meanwhile, without delay.
        let started = Instant::now();
        let result = client
            .push(push("user-r", "not stuck", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(&expect_push(&reader, WAIT).await.content[..], b"not stuck");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );

        // Once the device reads again it becomes writable again.
        let mut drained = 0usize;
        while let Ok(frame) = stuck.read_frame(Duration::from_millis(300)).await {
            assert!(
                matches!(frame, Frame::Packet(ref p) if p.cmd == Command::Push.code()),
                "{frame:?}"
            );
            drained += 1;
        }
        assert!(drained > 0);
        let result = client
            .push(push("user-1", "flowing again", AckMode::None, 3000))
            .await
            .unwrap();
        assert_eq!(
            result.status,
            PushStatus::Success,
            "{result:?} after draining {drained} pushes"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_misuse_is_answered_and_contained() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let device = server.bound_device("device-g", "user-g", &[]).await;
        let good = server.push_client().await;

        // A command other than GATEWAY_PUSH: ERROR 101 and close.
        let mut raw = RawConn::connect(server.gateway).await;
        raw.send(&Packet::new(Command::Bind.code(), Flags::NONE, 9, Bytes::new()).to_bytes())
            .await;
        let frames = raw.expect_closed(WAIT).await;
        let [Frame::Packet(reply)] = frames.as_slice() else {
            panic!("expected one ERROR, got {frames:?}")
        };
        let error = ErrorMessage::decode(&reply.body).unwrap();
        assert_eq!(
            (reply.cmd, reply.session_id, error.cmd, error.code),
            (10, 9, Command::Bind.code(), 101),
            "{error:?}"
        );

        // An undecodable GATEWAY_PUSH body: a failure answer, the link stays usable.
        let mut raw = RawConn::connect(server.gateway).await;
        raw.send(
            &Packet::new(
                Command::GatewayPush.code(),
                Flags::NONE,
                10,
                vec![0x7F, 0xFF, 1],
            )
            .to_bytes(),
        )
        .await;
        let reply = raw.expect_packet(WAIT).await;
        let error = ErrorMessage::decode(&reply.body).unwrap();
        assert_eq!(
            (reply.cmd, reply.session_id, error.cmd, error.code),
            (10, 10, 16, 2),
            "{error:?}"
        );
        assert!(error.reason.starts_with("bad request"), "{error:?}");
        // A broadcast whose condition does not parse: a failure naming it.
        let request = pushgate::client::BroadcastRequest {
            condition: Some("userId %".into()),
            ..pushgate::client::BroadcastRequest::new(&b"x"[..])
        };
        let result = good.broadcast(request).await.unwrap();
        assert_eq!(result.status, PushStatus::Failure, "{result:?}");
        assert!(
            result
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("condition")),
            "{result:?}"
        );

        let result = good
            .push(push("user-g", "fine", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(&expect_push(&device, WAIT).await.content[..], b"fine");
        expect_silence(&device, Duration::from_millis(100)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_client_recovers_after_the_gateway_drops_its_link() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let device = server.bound_device("device-l", "user-l", &[]).await;
        let client = server.push_client().await;
        assert_eq!(
            client
                .push(push("user-l", "before", AckMode::None, 3000))
                .await
                .unwrap()
                .status,
            PushStatus::Success
        );
        expect_push(&device, WAIT).await;
        // Too long for the gateway (10240-byte bodies at most): the link is closed unanswered.
        let started = Instant::now();
        match client
            .push(push("user-l", vec![b'y'; 11_000], AckMode::None, 3000))
            .await
        {
            Err(ClientError::Closed) => {}
            Ok(result) => assert_eq!(result.status, PushStatus::Timeout, "{result:?}"),
            Err(other) => panic!("expected the link to close, got {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "noticed after {:?}",
            started.elapsed()
        );
        // The next push opens a new link.
        let result = client
            .push(push("user-l", "after", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(&expect_push(&device, WAIT).await.content[..], b"after");
        expect_silence(&device, Duration::from_millis(100)).await;
        let stats = server.stats().await;
        assert_eq!(stats["gatewayConnections"], 1, "{stats}");
    })
    .await;
}
