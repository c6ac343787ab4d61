//! Replays the client side of traffic captured from the real MPush 0.8.1 client SDK and
//! PushClient (`../shared/vectors/handshake-bind-push.json`, `gateway-single.json`) against
//! the real binary, and compares what it answers with what the real MPush server answered.
//!
//! Random values differ per run (server key, reusable session id, timestamps, push session
//! ids), so frames that carry them are compared field by field; every other server frame must
//! be byte-identical to the capture.
#![cfg(not(madsim))]

use pushgate_core::command::Command;
use pushgate_core::crypto::{inflate, mix_keys, AesCipher};
use pushgate_core::frame::{Flags, Packet};
use pushgate_core::message::{Body, ErrorMessage, HandshakeOk, OkMessage};
use pushgate_tests::vectors::{
    expect_exact, key16, load, with_session_id, without_times, Capture, Phone,
};
use pushgate_tests::{bounded, RawConn, RawEnd, TestServer};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_mpush_client_session_replays_against_the_binary() {
    bounded(Duration::from_secs(30), async {
        let client_file = load("handshake-bind-push.json");
        let gateway_file = load("gateway-single.json");
        let phone_cap = Capture::of(&client_file, 0);
        let gw_cap = Capture::of(&gateway_file, 0);
        let keys = &client_file["connections"][0]["key_material"];
        let client_key = key16(&keys["clientKey"]);
        let iv = key16(&keys["iv"]);

        // Self-check of the replay helpers: the captured session key re-encrypts the captured
        // BIND plaintext to the captured bytes.
        let captured_session = AesCipher::new(key16(&keys["sessionKey"]), iv);
        assert_eq!(
            captured_session.encrypt(&phone_cap.plain(2)),
            phone_cap.raw(2)[13..]
        );

        // The capture's server ran with max-packet-size 64k (the 11040-byte push needs it);
        // everything else default: 3-minute heartbeats, the published RSA key.
        let server = TestServer::start_toml("[core]\nmax_packet_bytes = 65536\n").await;
        let mut phone = RawConn::connect(server.connect).await;

        // HANDSHAKE, sent verbatim (RSA under the default key).
        phone.send(&phone_cap.raw(0)).await;
        let reply = phone.expect_packet(WAIT).await;
        assert_eq!(
            (reply.cmd, reply.flags, reply.session_id),
            (Command::Handshake.code(), Flags::CRYPTO, 1),
            "{reply:?}"
        );
        assert_eq!(
            reply.body.len(),
            80,
            "same size as the captured HANDSHAKE-ok"
        );
        let plain = AesCipher::new(client_key, iv)
            .decrypt(&reply.body)
            .expect("HANDSHAKE-ok under AES(clientKey, iv)");
        assert_eq!(plain.len(), phone_cap.plain(1).len());
        let ok = HandshakeOk::decode(&plain).expect("HANDSHAKE-ok body");
        assert_eq!(ok.server_key.len(), 16);
        assert_ne!(
            &ok.server_key[..],
            &key16(&keys["serverKey"]),
            "a fresh server key"
        );
        assert_eq!(ok.heartbeat_ms, 180_000, "the default min = max = 3 min");
        assert_eq!(ok.session_id.len(), 32);
        assert!(
            ok.session_id
                .chars()
                .all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{}",
            ok.session_id
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            (ok.expire_time_ms - (now + 86_400_000)).abs() < 60_000,
            "expires in one day: {}",
            ok.expire_time_ms
        );
        let server_key: [u8; 16] = ok.server_key[..].try_into().unwrap();
        let session = AesCipher::new(mix_keys(&client_key, &server_key), iv);

        // BIND re-encrypted with the new session key; the OK is byte-identical.
        let bind = Packet::new(
            Command::Bind.code(),
            Flags::CRYPTO,
            2,
            session.encrypt(&phone_cap.plain(2)),
        );
        phone.send(&bind.to_bytes()).await;
        let bind_ok = phone_cap.raw(3);
        assert_eq!(
            hex::encode(&bind_ok),
            "000000100b00000000000002000500000c62696e642073756363657373"
        );
        expect_exact(&mut phone, &bind_ok, "OK to BIND").await;

        // The PushClient's GATEWAY_PUSHes, verbatim: NO_ACK, AUTO_ACK, BIZ_ACK, 11040 bytes.
        let mut gateway = RawConn::connect(server.gateway).await;
        // (gateway request frame, its answer, the phone's PUSH, the phone's ACK if any)
        let steps = [
            (0, 1, 4, None),
            (2, 3, 5, Some(6)),
            (4, 5, 7, Some(8)),
            (6, 7, 9, Some(10)),
        ];
        for (request, answer, push_index, ack_index) in steps {
            gateway.send(&gw_cap.raw(request)).await;
            let push = phone.expect_packet(WAIT).await;
            let what = format!("PUSH of gateway frame {request}");
            assert_eq!(push.cmd, Command::Push.code(), "{what}");
            assert_eq!(
                push.flags,
                phone_cap.flags(push_index),
                "{what}: the captured flags"
            );
            let mut body = session
                .decrypt(&push.body)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            if push.flags.contains(Flags::COMPRESS) {
                body = inflate(&body, 1 << 20).unwrap_or_else(|e| panic!("{what}: zlib: {e}"));
            } else {
                assert_eq!(
                    push.body.len() as i64,
                    phone_cap.header(push_index, "length"),
                    "{what}: length"
                );
            }
            assert_eq!(
                hex::encode(&body),
                hex::encode(phone_cap.plain(push_index)),
                "{what}: content"
            );
            if let Some(ack_index) = ack_index {
                // The SDK's ACK, with this server's push sessionId.
                let ack = with_session_id(phone_cap.raw(ack_index), push.session_id);
                assert_eq!(
                    Packet::new(
                        Command::Ack.code(),
                        Flags::NONE,
                        push.session_id,
                        Vec::new()
                    )
                    .to_bytes(),
                    ack[..]
                );
                phone.send(&ack).await;
            }
            let reply = gateway.expect_packet(WAIT).await;
            let expected = gw_cap.raw(answer);
            let what = format!("answer to gateway frame {request}");
            assert_eq!(reply.to_bytes().len(), expected.len(), "{what}: length");
            assert_eq!(reply.to_bytes()[..13], expected[..13], "{what}: header");
            let got = OkMessage::decode(&reply.body).expect("OK body");
            let captured = OkMessage::decode(&expected[13..]).expect("captured OK body");
            assert_eq!((got.cmd, got.code), (captured.cmd, captured.code), "{what}");
            assert_eq!(
                without_times(&got.data),
                without_times(&captured.data),
                "{what}: result JSON"
            );
        }

        // A push to a user who is not online: ERROR 1 "user offline" with the same result JSON.
        gateway.send(&gw_cap.raw(8)).await;
        let reply = gateway.expect_packet(WAIT).await;
        let expected = gw_cap.raw(9);
        assert_eq!(reply.to_bytes()[..13], expected[..13], "ERROR header");
        let got = ErrorMessage::decode(&reply.body).expect("ERROR body");
        let captured = ErrorMessage::decode(&expected[13..]).expect("captured ERROR body");
        assert_eq!(
            (got.cmd, got.code, &got.reason),
            (captured.cmd, captured.code, &captured.reason)
        );
        assert_eq!(without_times(&got.data), without_times(&captured.data));
        assert_eq!(reply.to_bytes().len(), expected.len());

        // Upstream PUSHes (64 bytes; 2000 bytes compressed by the client), re-encrypted: the
        // raw ACKs are the captured bytes.
        let up = Packet::new(
            Command::Push.code(),
            phone_cap.flags(11),
            3,
            session.encrypt(&phone_cap.plain(11)),
        );
        phone.send(&up.to_bytes()).await;
        expect_exact(&mut phone, &phone_cap.raw(12), "ACK of the upstream PUSH").await;
        let zlib = phone_cap.bytes(13, "decrypted_zlib_hex");
        let up = Packet::new(
            Command::Push.code(),
            phone_cap.flags(13),
            4,
            session.encrypt(&zlib),
        );
        phone.send(&up.to_bytes()).await;
        expect_exact(
            &mut phone,
            &phone_cap.raw(14),
            "ACK of the compressed upstream PUSH",
        )
        .await;

        // UNBIND → the captured OK.
        let unbind = Packet::new(
            Command::Unbind.code(),
            Flags::CRYPTO,
            5,
            session.encrypt(&phone_cap.plain(15)),
        );
        phone.send(&unbind.to_bytes()).await;
        expect_exact(&mut phone, &phone_cap.raw(16), "OK to UNBIND").await;

        // Unbound: the next push for user-1 is offline, and the phone got nothing more.
        gateway.send(&gw_cap.raw(0)).await;
        let reply = gateway.expect_packet(WAIT).await;
        let error = ErrorMessage::decode(&reply.body).expect("ERROR body");
        assert_eq!(
            (reply.cmd, error.code),
            (Command::Error.code(), 1),
            "{error:?}"
        );
        assert!(matches!(
            phone.read_frame(Duration::from_millis(200)).await,
            Err(RawEnd::TimedOut)
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_handshake_of_the_same_device_is_refused_without_closing() {
    bounded(Duration::from_secs(20), async {
        let file = load("handshake-bind-push.json");
        let phone = Phone::of(&file, 0);
        let server = TestServer::start().await;
        let mut conn = RawConn::connect(server.connect).await;
        let (session, _) = phone.handshake(&mut conn, 0, 180_000).await;
        // The same HANDSHAKE again on the same connection: ERROR 102, raw, connection kept.
        conn.send(&phone.cap.raw(0)).await;
        let reply = conn.expect_packet(WAIT).await;
        let mut expected = hex::decode("000000160a000000000000010002660010").unwrap();
        expected.extend_from_slice(b"repeat handshake");
        expected.extend_from_slice(&[0, 0]);
        assert_eq!(
            hex::encode(reply.to_bytes()),
            hex::encode(&expected),
            "ERROR(cmd 2, code 102 \"repeat handshake\")"
        );
        // The first session still holds.
        phone.send_sealed(&mut conn, &session, 2).await;
        expect_exact(
            &mut conn,
            &phone.cap.raw(3),
            "OK to BIND after the refused handshake",
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_connect_with_an_unknown_session_falls_back_on_the_same_connection() {
    bounded(Duration::from_secs(20), async {
        let file = load("fast-connect-fallback.json");
        let phone = Phone::of(&file, 0);
        let server = TestServer::start().await;
        let mut conn = RawConn::connect(server.connect).await;
        // FAST_CONNECT with a session this server never issued: the captured raw ERROR 103,
        // and the connection stays open.
        conn.send(&phone.cap.raw(0)).await;
        expect_exact(&mut conn, &phone.cap.raw(1), "ERROR(cmd 7, code 103)").await;
        let (session, _) = phone.handshake(&mut conn, 2, 180_000).await;
        phone.send_sealed(&mut conn, &session, 4).await;
        expect_exact(&mut conn, &phone.cap.raw(5), "OK to BIND").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_connect_replays_byte_for_byte() {
    bounded(Duration::from_secs(20), async {
        let first_file = load("handshake-bind-push.json");
        let first = Phone::of(&first_file, 0);
        let fast_file = load("fast-connect.json");
        let fast = Phone::of(&fast_file, 0);
        // The capture's server: min-heartbeat 10 s, max 3 min.
        let server = TestServer::start_toml("[core]\nmin_heartbeat_ms = 10000\n").await;
        let mut conn = RawConn::connect(server.connect).await;
        let (session, session_id) = first.handshake(&mut conn, 0, 180_000).await;
        drop(conn);

        // The captured FAST_CONNECT (plaintext) with this server's session id in place of the
        // captured one (same length, so the frame is otherwise identical).
        let captured_id = fast.cap.frame(0)["fields"]["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut request = fast.cap.raw(0);
        let at = request
            .windows(32)
            .position(|w| w == captured_id.as_bytes())
            .expect("session id in the frame");
        request[at..at + 32].copy_from_slice(session_id.as_bytes());
        let mut conn = RawConn::connect(server.connect).await;
        conn.send(&request).await;
        // FAST_CONNECT-ok, raw: heartbeat 12000 (the client asked for 12000..12000).
        expect_exact(&mut conn, &fast.cap.raw(1), "FAST_CONNECT-ok").await;
        // The BIND under the stored session key, the same as on the first connection.
        fast.send_sealed(&mut conn, &session, 2).await;
        expect_exact(&mut conn, &fast.cap.raw(3), "OK to BIND").await;
        conn.send(&fast.cap.raw(4)).await;
        expect_exact(&mut conn, &fast.cap.raw(5), "heartbeat echo").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_replays_like_the_capture() {
    bounded(Duration::from_secs(20), async {
        let file = load("kick.json");
        let (k1, k2) = (Phone::of(&file, 0), Phone::of(&file, 1));
        let server = TestServer::start().await;
        let mut conn1 = RawConn::connect(server.connect).await;
        let (session1, _) = k1.handshake(&mut conn1, 0, 180_000).await;
        k1.send_sealed(&mut conn1, &session1, 2).await;
        expect_exact(&mut conn1, &k1.cap.raw(3), "K1 OK to BIND").await;
        let mut conn2 = RawConn::connect(server.connect).await;
        let (session2, _) = k2.handshake(&mut conn2, 0, 180_000).await;
        k2.send_sealed(&mut conn2, &session2, 2).await;
        expect_exact(&mut conn2, &k2.cap.raw(3), "K2 OK to BIND").await;

        // KICK to the older connection: sessionId 0, encrypted with its session key.
        let kick = conn1.expect_packet(WAIT).await;
        let captured = k1.cap.raw(4);
        assert_eq!(
            kick.to_bytes()[..13],
            captured[..13],
            "KICK header (cmd 13, flags 1, sessionId 0)"
        );
        assert_eq!(
            session1.decrypt(&kick.body).expect("KICK body"),
            k1.cap.plain(4)
        );
        // Both connections stay open and nothing else arrives.
        for conn in [&mut conn1, &mut conn2] {
            assert!(matches!(
                conn.read_frame(Duration::from_millis(200)).await,
                Err(RawEnd::TimedOut)
            ));
            conn.send(&[0xDF]).await;
            assert_eq!(conn.read_exact(1, WAIT).await, [0xDF]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_with_tags_replays_like_the_capture() {
    bounded(Duration::from_secs(20), async {
        let file = load("gateway-broadcast.json");
        let pusher = Capture::of(&file, 0);
        let (b1, b2) = (Phone::of(&file, 1), Phone::of(&file, 2));
        let server = TestServer::start().await;
        let mut conn1 = RawConn::connect(server.connect).await;
        let session1 = b1.connect_and_bind(&mut conn1, 180_000).await;
        let mut conn2 = RawConn::connect(server.connect).await;
        b2.connect_and_bind(&mut conn2, 180_000).await;

        let mut gateway = RawConn::connect(server.gateway).await;
        gateway.send(&pusher.raw(0)).await;
        let push = conn1.expect_packet(WAIT).await;
        assert_eq!(
            (push.cmd, push.flags),
            (Command::Push.code(), b1.cap.flags(4)),
            "{push:?}"
        );
        assert_eq!(push.body.len() as i64, b1.cap.header(4, "length"));
        assert_eq!(
            session1.decrypt(&push.body).expect("PUSH body"),
            b1.cap.plain(4)
        );
        // The finishing OK(cmd 16) with null data, byte for byte.
        expect_exact(&mut gateway, &pusher.raw(1), "broadcast OK").await;
        assert!(
            matches!(
                conn2.read_frame(Duration::from_millis(200)).await,
                Err(RawEnd::TimedOut)
            ),
            "B2 (tag-c) gets nothing"
        );
    })
    .await;
}
