//! Handshake, bind and single pushes through the gateway port of the real binary: each ack
//! mode, ack timeout, offline, kick of an older device, fast connect after a reconnect.
#![cfg(not(madsim))]

use pushgate::client::{AckPolicy, DeviceEvent, DeviceOptions, PushResult, SinglePushRequest};
use pushgate_core::frame::Flags;
use pushgate_core::push::AckMode;
use pushgate_core::PushStatus;
use pushgate_tests::{bounded, expect_push, expect_silence, TestServer};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(5);

fn request(user: &str, content: &str, ack: AckMode, timeout_ms: u64) -> SinglePushRequest {
    SinglePushRequest {
        ack,
        timeout_ms,
        ..SinglePushRequest::new(user, content.as_bytes().to_vec())
    }
}

fn point_names(result: &PushResult) -> Vec<&str> {
    result
        .time_points
        .iter()
        .map(|(name, _)| name.as_str())
        .collect()
}

/// The time line's instants never go backwards.
fn assert_ordered(result: &PushResult) {
    let times: Vec<i64> = result.time_points.iter().map(|(_, at)| *at).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "time line out of order: {:?}",
        result.time_points
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_in_each_ack_mode_reaches_the_device_and_reports_its_status() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let device = server
            .bound_device("device-A", "user-1", &["tag-a", "tag-b"])
            .await;
        assert_eq!(device.heartbeat_ms(), 180_000, "MPush default heartbeat");
        let pusher = server.push_client().await;

        // NO_ACK: success once written. Like MPush's PushClient, name the route's client type
        // (1, mobile): the answer echoes it.
        let to_mobile = SinglePushRequest {
            client_type: Some(1),
            ..request("user-1", "no-ack content", AckMode::None, 3000)
        };
        let result = pusher.push(to_mobile).await.unwrap();
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        assert_eq!(
            (
                result.user_id.as_str(),
                result.client_type,
                result.reason.as_deref()
            ),
            ("user-1", Some(1), None)
        );
        assert_eq!(
            point_names(&result),
            ["push-center-begin", "before-send", "success-end"]
        );
        assert_ordered(&result);
        let got = expect_push(&device, WAIT).await;
        assert_eq!(&got.content[..], b"no-ack content");
        assert_eq!(got.flags, Flags::CRYPTO, "NO_ACK push carries no ack bit");

        // AUTO_ACK: the device's SDK acks on delivery.
        let result = pusher
            .push(request("user-1", "auto-ack content", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(
            point_names(&result),
            [
                "push-center-begin",
                "before-send",
                "waiting-ack",
                "success-end"
            ]
        );
        assert_ordered(&result);
        let got = expect_push(&device, WAIT).await;
        assert_eq!(&got.content[..], b"auto-ack content");
        assert_eq!(got.flags, Flags::CRYPTO | Flags::AUTO_ACK);

        // BIZ_ACK: nothing happens until the application acks.
        let push = tokio::spawn({
            let pusher = server.push_client().await;
            async move {
                pusher
                    .push(request("user-1", "biz-ack content", AckMode::Biz, 5000))
                    .await
            }
        });
        let got = expect_push(&device, WAIT).await;
        assert_eq!(&got.content[..], b"biz-ack content");
        assert_eq!(got.flags, Flags::CRYPTO | Flags::BIZ_ACK);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !push.is_finished(),
            "a BIZ_ACK push must wait for the application's ACK"
        );
        device.ack(got.session_id).unwrap();
        let result = push.await.unwrap().unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(
            point_names(&result),
            [
                "push-center-begin",
                "before-send",
                "waiting-ack",
                "success-end"
            ]
        );

        // Nothing else arrived: exactly one PUSH per request.
        expect_silence(&device, Duration::from_millis(200)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_whose_ack_never_comes_times_out() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let device = server.silent_device("device-quiet", "user-q").await;
        let pusher = server.push_client().await;
        for ack in [AckMode::Biz, AckMode::Auto] {
            let started = Instant::now();
            // The client waits 1000 ms; the gateway is given 500 ms.
            let result = pusher
                .push(request("user-q", "never acked", ack, 1000))
                .await
                .unwrap();
            let elapsed = started.elapsed();
            assert_eq!(result.status, PushStatus::Timeout, "{ack:?}: {result:?}");
            assert_eq!(
                result.reason.as_deref(),
                Some("ack timeout"),
                "{ack:?}: the gateway said why"
            );
            assert!(
                result.raw_reply.is_some(),
                "the gateway itself answered the timeout, not the client"
            );
            assert_eq!(
                point_names(&result).last(),
                Some(&"timeout-end"),
                "{result:?}"
            );
            assert!(
                elapsed >= Duration::from_millis(450),
                "answered after {elapsed:?}, before the ack timeout"
            );
            let got = expect_push(&device, WAIT).await;
            assert_eq!(&got.content[..], b"never acked");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_an_unknown_user_is_offline() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let _someone = server.bound_device("device-B", "someone", &[]).await;
        let pusher = server.push_client().await;
        let result = pusher
            .push(request("nobody", "hello?", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Offline, "{result:?}");
        assert_eq!(result.reason.as_deref(), Some("user offline"));
        assert_eq!(result.user_id, "nobody");
        assert_eq!(point_names(&result).last(), Some(&"offline-end"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_device_of_the_same_type_kicks_the_first() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let first = server.bound_device("device-1", "user-k", &[]).await;
        let second_options = DeviceOptions {
            os_name: "ios".into(),
            ..server.device_options("device-2")
        };
        let second = server
            .bound_device_with(second_options, "user-k", &[])
            .await;

        match first.next_event_within(WAIT).await {
            Ok(DeviceEvent::Kick { device_id, user_id }) => {
                assert_eq!(
                    (device_id.as_str(), user_id.as_str()),
                    ("device-1", "user-k")
                );
            }
            other => panic!("the first device expected a KICK, got {other:?}"),
        }
        // MPush leaves the kicked connection open; the client decides what to do.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !first.is_closed(),
            "the server must not close a kicked connection"
        );

        let pusher = server.push_client().await;
        let result = pusher
            .push(request(
                "user-k",
                "to the newer device",
                AckMode::Auto,
                3000,
            ))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        let got = expect_push(&second, WAIT).await;
        assert_eq!(&got.content[..], b"to the newer device");
        expect_silence(&first, Duration::from_millis(200)).await;
        expect_silence(&second, Duration::from_millis(50)).await;

        // A PC client of the same user is another route: no kick, both reachable by type.
        let pc_options = DeviceOptions {
            os_name: "windows".into(),
            ..server.device_options("device-pc")
        };
        let pc = server.bound_device_with(pc_options, "user-k", &[]).await;
        expect_silence(&second, Duration::from_millis(200)).await;
        let to_pc = SinglePushRequest {
            client_type: Some(2),
            ..request("user-k", "to the pc", AckMode::Auto, 3000)
        };
        let result = pusher.push(to_pc).await.unwrap();
        assert_eq!(
            (result.status, result.client_type),
            (PushStatus::AckSuccess, Some(2)),
            "{result:?}"
        );
        assert_eq!(&expect_push(&pc, WAIT).await.content[..], b"to the pc");
        expect_silence(&second, Duration::from_millis(100)).await;
    })
    .await;
}

/// `net.phone_io = "tasks"` (a tokio task per phone, as the simulator runs them, instead of
/// the phone groups every other test here runs): the same handshake, bind, push, ACK and kick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_run_as_a_task_each_are_served_alike() {
    bounded(LIMIT, async {
        let server = TestServer::start_toml("[net]\nphone_io = \"tasks\"\n").await;
        let first = server.bound_device("device-t1", "user-t", &[]).await;
        let pusher = server.push_client().await;
        let result = pusher
            .push(request("user-t", "to a task", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(&expect_push(&first, WAIT).await.content[..], b"to a task");

        let second = server.bound_device("device-t2", "user-t", &[]).await;
        match first.next_event_within(WAIT).await {
            Ok(DeviceEvent::Kick { device_id, .. }) => assert_eq!(device_id, "device-t1"),
            other => panic!("the first device expected a KICK, got {other:?}"),
        }
        let result = pusher
            .push(request("user-t", "to the second", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(
            &expect_push(&second, WAIT).await.content[..],
            b"to the second"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_connect_after_reconnect_resumes_the_session() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let first = server.bound_device("device-F", "user-f", &[]).await;
        assert!(!first.fast_connected());
        let session = first.stored_session();
        assert_eq!(session.session_id.len(), 32);
        first.close().await;

        // The route goes offline when the connection closes.
        let pusher = server.push_client().await;
        let offline = pushgate_tests::eventually(WAIT, "the closed device to go offline", || {
            let pusher = &pusher;
            async move {
                let r = pusher
                    .push(request("user-f", "anyone?", AckMode::None, 1000))
                    .await
                    .unwrap();
                (r.status == PushStatus::Offline).then_some(r)
            }
        })
        .await;
        assert_eq!(offline.status, PushStatus::Offline);

        let options = DeviceOptions {
            session: Some(session.clone()),
            ..server.device_options("device-F")
        };
        let second = server.bound_device_with(options, "user-f", &[]).await;
        assert!(
            second.fast_connected(),
            "the stored session must be resumed without RSA"
        );
        assert_eq!(second.heartbeat_ms(), 180_000);
        assert_eq!(
            second.stored_session(),
            session,
            "the same session and key are kept"
        );

        let result = pusher
            .push(request("user-f", "after fast connect", AckMode::Auto, 3000))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(
            &expect_push(&second, WAIT).await.content[..],
            b"after fast connect"
        );

        let metrics = server.metrics().await;
        assert_eq!(
            metrics.count("pushgate_handshakes_total", &[("kind", "full")]),
            1.0,
            "{}",
            metrics.0
        );
        assert_eq!(
            metrics.count("pushgate_handshakes_total", &[("kind", "fast")]),
            1.0,
            "{}",
            metrics.0
        );

        // A fast connect under another device id is refused (invalid device) and the client
        // falls back to a full handshake on the same connection.
        let options = DeviceOptions {
            session: Some(session),
            ack_policy: AckPolicy::Auto,
            ..server.device_options("device-G")
        };
        let other = server.device_with(options).await;
        assert!(
            !other.fast_connected(),
            "a session is bound to its device id"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_right_after_an_auto_ack_push_still_sends_the_ack() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let pusher = std::sync::Arc::new(server.push_client().await);
        let mut lost = Vec::new();
        for round in 0..30 {
            let user = format!("user-close-{round}");
            let device = server
                .bound_device(&format!("device-close-{round}"), &user, &[])
                .await;
            let push = tokio::spawn({
                let pusher = pusher.clone();
                async move {
                    pusher
                        .push(request(&user, "then close", AckMode::Auto, 3000))
                        .await
                }
            });
            match device.next_event_within(WAIT).await {
                // The SDK acks AUTO_ACK pushes on delivery: by the time the application sees the
                // push, the ACK is on its way, so closing now must not lose it.
                Ok(DeviceEvent::Push { .. }) => device.close().await,
                other => panic!("expected a PUSH, got {other:?}"),
            }
            let result = push.await.unwrap().unwrap();
            if result.status != PushStatus::AckSuccess {
                lost.push((round, result.status, result.reason));
            }
        }
        assert!(
            lost.is_empty(),
            "ACKs lost in {} of 30 rounds: {lost:?}",
            lost.len()
        );
    })
    .await;
}
