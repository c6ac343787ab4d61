//! Connection-level behaviour of the real binary: heartbeat echo, idle close, handshake
//! deadline, oversized frames, unknown commands and undecodable bodies.
#![cfg(not(madsim))]

use bytes::Bytes;
use pushgate::client::{ClientError, DeviceEvent, DeviceOptions, SinglePushRequest};
use pushgate_core::command::Command;
use pushgate_core::frame::{Flags, Frame, Packet};
use pushgate_core::message::{Body, ErrorMessage, GatewayPush};
use pushgate_core::pipeline::raw_packet;
use pushgate_core::push::AckMode;
use pushgate_core::PushStatus;
use pushgate_tests::{bounded, expect_closed, expect_push, RawConn, TestServer};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(5);

/// A 13-byte header announcing `length` body bytes.
fn header(length: i32, cmd: u8, flags: u8, session_id: i32) -> Vec<u8> {
    let mut out = length.to_be_bytes().to_vec();
    out.push(cmd);
    out.extend_from_slice(&[0, 0, flags]);
    out.extend_from_slice(&session_id.to_be_bytes());
    out.push(0);
    out
}

fn push_to(user: &str, content: &str) -> SinglePushRequest {
    SinglePushRequest {
        ack: AckMode::Auto,
        ..SinglePushRequest::new(user, content.as_bytes().to_vec())
    }
}

/// The ERROR a device reported: (cmd, code, reason).
fn rejected(events: &[DeviceEvent]) -> Vec<(u8, u8, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::Error(ClientError::Rejected { cmd, code, reason }) => {
                Some((*cmd, *code, reason.clone()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_echoed_in_the_one_byte_form() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        // Before any handshake, on a bare connection.
        let mut raw = RawConn::connect(server.connect).await;
        raw.send(&[0xDF]).await;
        assert_eq!(raw.read_exact(1, WAIT).await, [0xDF]);
        // Several at once: one echo each.
        raw.send(&[0xDF, 0xDF, 0xDF]).await;
        assert_eq!(raw.read_exact(3, WAIT).await, [0xDF; 3]);
        // The 13-byte frame form (cmd 1) is answered with the 1-byte form too.
        raw.send(&header(0, 1, 0, 9)).await;
        assert_eq!(raw.read_exact(1, WAIT).await, [0xDF]);

        // After a handshake, through the device client.
        let options = DeviceOptions {
            send_heartbeats: false,
            ..server.device_options("device-hb")
        };
        let device = server.bound_device_with(options, "user-hb", &[]).await;
        assert_eq!(device.heartbeats_received(), 0);
        device.send_heartbeat().unwrap();
        device.send_heartbeat().unwrap();
        pushgate_tests::eventually(WAIT, "two heartbeat echoes", || {
            let n = device.heartbeats_received();
            async move { (n == 2).then_some(()) }
        })
        .await;
        assert!(!device.is_closed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_missed_heartbeats() {
    bounded(LIMIT, async {
        let server =
            TestServer::start_toml("[core]\nmin_heartbeat_ms = 1000\nmax_heartbeat_ms = 1000\n")
                .await;
        let quiet_options = DeviceOptions {
            send_heartbeats: false,
            ..server.device_options("device-quiet")
        };
        let quiet = server
            .bound_device_with(quiet_options, "user-quiet", &[])
            .await;
        let silent_since = Instant::now();
        assert_eq!(
            quiet.heartbeat_ms(),
            1000,
            "max(min, min(client 240000, max))"
        );
        let lively = server
            .bound_device("device-lively", "user-lively", &[])
            .await;
        assert_eq!(lively.heartbeat_ms(), 1000);

        let events = expect_closed(&quiet, Duration::from_secs(8)).await;
        let silent_for = silent_since.elapsed();
        assert!(events.is_empty(), "closed without a message: {events:?}");
        // Checked every heartbeat; a check misses when the silence exceeds heartbeat + 1 s, and
        // the 3rd consecutive miss closes (MPush's rule): with a 1 s heartbeat that is about
        // 4–5 s of silence. The upper bound leaves room for a loaded machine.
        assert!(
            silent_for >= Duration::from_millis(2500) && silent_for <= Duration::from_millis(7000),
            "closed after {silent_for:?} of silence"
        );
        // The device that heartbeats is still served, and the silent one's route is gone.
        assert!(!lively.is_closed());
        let pusher = server.push_client().await;
        let result = pusher
            .push(push_to("user-lively", "still here"))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(&expect_push(&lively, WAIT).await.content[..], b"still here");
        let result = pusher.push(push_to("user-quiet", "gone")).await.unwrap();
        assert_eq!(result.status, PushStatus::Offline, "{result:?}");
        assert!(
            lively.heartbeats_received() >= 2,
            "the server echoed the lively device's heartbeats"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_that_never_handshakes_is_closed_at_the_deadline() {
    bounded(LIMIT, async {
        let server = TestServer::start_toml("[core]\nhandshake_deadline_ms = 700\n").await;
        let started = Instant::now();
        let mut raw = RawConn::connect(server.connect).await;
        // Heartbeats are echoed but do not stand in for a handshake.
        raw.send(&[0xDF]).await;
        let frames = raw.expect_closed(Duration::from_secs(5)).await;
        let after = started.elapsed();
        assert_eq!(frames, [Frame::Heartbeat]);
        assert!(
            after >= Duration::from_millis(600) && after <= Duration::from_millis(3000),
            "closed after {after:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_only_its_connection() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let bystander = server.bound_device("device-ok", "user-ok", &[]).await;
        let pusher = server.push_client().await;

        // A bare connection announcing 10241 body bytes: closed as soon as the header is read,
        // without waiting for the body and without an answer.
        let mut raw = RawConn::connect(server.connect).await;
        raw.send(&header(10_241, Command::Bind.code(), 1, 1)).await;
        assert_eq!(raw.expect_closed(Duration::from_secs(3)).await, []);

        // The same from a handshaken, bound device.
        let victim = server.bound_device("device-big", "user-big", &[]).await;
        victim
            .send_bytes(header(64 * 1024, Command::Push.code(), 1, 5))
            .await
            .unwrap();
        let events = expect_closed(&victim, Duration::from_secs(3)).await;
        assert!(
            rejected(&events).is_empty(),
            "no ERROR for a too-long frame: {events:?}"
        );

        // A PushClient link announcing an 11064-byte GATEWAY_PUSH is closed without a reply
        // (gateway-too-long.json).
        let mut gateway = RawConn::connect(server.gateway).await;
        gateway
            .send(&header(11_064, Command::GatewayPush.code(), 0, 1))
            .await;
        assert_eq!(gateway.expect_closed(Duration::from_secs(3)).await, []);

        // Nothing else was disturbed.
        let result = pusher
            .push(push_to("user-ok", "still served"))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(
            &expect_push(&bystander, WAIT).await.content[..],
            b"still served"
        );
        let result = pusher.push(push_to("user-big", "gone")).await.unwrap();
        assert_eq!(result.status, PushStatus::Offline, "{result:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_push_of_exactly_the_maximum_size_is_delivered() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let device = server.bound_device("device-max", "user-max", &[]).await;
        // A GATEWAY_PUSH body of exactly 10240 bytes is allowed (only "> 10240" is too long).
        let mut message = GatewayPush {
            user_id: "user-max".into(),
            client_type: 1,
            timeout_ms: 2500,
            ..GatewayPush::default()
        };
        let overhead = message.to_bytes().len();
        let content: Vec<u8> = (0..10_240 - overhead)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        message.content = Bytes::from(content.clone());
        let packet = raw_packet(
            Command::GatewayPush.code(),
            AckMode::Auto.flags(),
            77,
            &message,
        );
        assert_eq!(packet.body.len(), 10_240);
        let mut gateway = RawConn::connect(server.gateway).await;
        gateway.send(&packet.to_bytes()).await;
        let reply = gateway.expect_packet(WAIT).await;
        assert_eq!(
            (reply.cmd, reply.session_id),
            (Command::Ok.code(), 77),
            "{reply:?}"
        );
        let got = expect_push(&device, WAIT).await;
        assert_eq!(got.content.len(), content.len());
        assert_eq!(&got.content[..], &content[..]);
        assert_eq!(
            got.flags,
            Flags::CRYPTO | Flags::AUTO_ACK,
            "not over the 10240 compression threshold"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_gets_error_101_and_close() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let bystander = server.bound_device("device-ok", "user-ok", &[]).await;

        // Before the handshake, on a bare connection: cmd 99.
        let mut raw = RawConn::connect(server.connect).await;
        raw.send(&header(0, 99, 0, 7)).await;
        let frames = raw.expect_closed(WAIT).await;
        let [Frame::Packet(reply)] = frames.as_slice() else {
            panic!("expected one ERROR, got {frames:?}")
        };
        assert_eq!(
            (reply.cmd, reply.flags, reply.session_id),
            (Command::Error.code(), Flags::NONE, 7),
            "raw ERROR"
        );
        let error = ErrorMessage::decode(&reply.body).unwrap();
        assert_eq!(
            (error.cmd, error.code, error.reason.as_str()),
            (99, 101, "unsupported command")
        );
        // Exactly MPush's bytes: header, cmd 99, code 101, reason, null data.
        let mut expected = header(25, 10, 0, 7);
        expected.extend_from_slice(&[99, 101, 0, 19]);
        expected.extend_from_slice(b"unsupported command");
        expected.extend_from_slice(&[0, 0]);
        assert_eq!(hex::encode(reply.to_bytes()), hex::encode(&expected));

        // After a handshake: a client sending OK (cmd 11) or an unknown code is cut off too.
        for cmd in [99u8, Command::Ok.code(), Command::Kick.code()] {
            let device = server
                .bound_device(&format!("device-{cmd}"), &format!("user-{cmd}"), &[])
                .await;
            device
                .send_raw(Packet::new(cmd, Flags::NONE, 1234, Bytes::new()))
                .await
                .unwrap();
            let events = expect_closed(&device, WAIT).await;
            assert_eq!(
                rejected(&events),
                [(cmd, 101, "unsupported command".to_owned())],
                "cmd {cmd}: {events:?}"
            );
        }

        let pusher = server.push_client().await;
        let result = pusher.push(push_to("user-ok", "unaffected")).await.unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(
            &expect_push(&bystander, WAIT).await.content[..],
            b"unaffected"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_body_gets_error_100_and_close() {
    bounded(LIMIT, async {
        let server = TestServer::start().await;
        let bystander = server.bound_device("device-ok", "user-ok", &[]).await;

        // Garbage where the AES-encrypted BIND should be (20 bytes: not even whole blocks).
        let device = server
            .device_with(server.device_options("device-garbage"))
            .await;
        let garbage: Vec<u8> = (0u8..20)
            .map(|i| i.wrapping_mul(97).wrapping_add(13))
            .collect();
        device
            .send_raw(Packet::new(Command::Bind.code(), Flags::CRYPTO, 2, garbage))
            .await
            .unwrap();
        let events = expect_closed(&device, WAIT).await;
        assert_eq!(
            rejected(&events),
            [(5, 100, "handle message error".to_owned())],
            "{events:?}"
        );

        // Whole AES blocks that do not decrypt to valid padding under the session key. The key
        // is random per connection and about one block in 255 decrypts to valid padding by
        // chance, so the blocks are picked with the session's own cipher.
        let device = server
            .device_with(server.device_options("device-garbage-2"))
            .await;
        let cipher = device.stored_session().cipher();
        let blocks = (0x5Au8..=0xFF)
            .map(|byte| vec![byte; 32])
            .find(|blocks| cipher.decrypt(blocks).is_err())
            .expect("some filler byte fails the padding check");
        device
            .send_raw(Packet::new(Command::Push.code(), Flags::CRYPTO, 3, blocks))
            .await
            .unwrap();
        let events = expect_closed(&device, WAIT).await;
        assert_eq!(
            rejected(&events),
            [(15, 100, "handle message error".to_owned())],
            "{events:?}"
        );

        // A HANDSHAKE that RSA cannot open, on a bare connection.
        let mut raw = RawConn::connect(server.connect).await;
        let mut frame = header(128, Command::Handshake.code(), 1, 1);
        frame.extend_from_slice(&[0x42; 128]);
        raw.send(&frame).await;
        let frames = raw.expect_closed(WAIT).await;
        let [Frame::Packet(reply)] = frames.as_slice() else {
            panic!("expected one ERROR, got {frames:?}")
        };
        let error = ErrorMessage::decode(&reply.body).unwrap();
        assert_eq!(
            (reply.cmd, reply.session_id, error.cmd, error.code),
            (10, 1, 2, 100),
            "{error:?}"
        );

        let pusher = server.push_client().await;
        let result = pusher.push(push_to("user-ok", "unaffected")).await.unwrap();
        assert_eq!(result.status, PushStatus::AckSuccess, "{result:?}");
        assert_eq!(
            &expect_push(&bystander, WAIT).await.content[..],
            b"unaffected"
        );
        let stats = server.stats().await;
        assert_eq!(stats["decodeErrors"], 3, "{stats}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_connected_session_keeps_idle_checks() {
    bounded(LIMIT, async {
        let server =
            TestServer::start_toml("[core]\nmin_heartbeat_ms = 1000\nmax_heartbeat_ms = 1000\n")
                .await;
        let first = server.bound_device("device-fc", "user-fc", &[]).await;
        let session = first.stored_session();
        first.close().await;
        let options = DeviceOptions {
            session: Some(session),
            send_heartbeats: false,
            ..server.device_options("device-fc")
        };
        let resumed = server.bound_device_with(options, "user-fc", &[]).await;
        let since = Instant::now();
        assert!(resumed.fast_connected());
        assert_eq!(resumed.heartbeat_ms(), 1000);
        expect_closed(&resumed, Duration::from_secs(8)).await;
        let silent_for = since.elapsed();
        assert!(
            silent_for >= Duration::from_millis(2500) && silent_for <= Duration::from_millis(7000),
            "closed after {silent_for:?} of silence"
        );
    })
    .await;
}
