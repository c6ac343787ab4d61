//! Snapshot tests: one encoded frame per message type, built from fixed, realistic values, as a
//! readable dump (header split into its fields, body in hex rows, then the decoded fields).
//!
//! Each dump is produced by encoding the packet, then decoding it again through the whole
//! inbound path (frame decoder → pipeline::open → message decoder) and checking the result
//! equals what was encoded, so a snapshot can only show a frame the crate itself reads back.
//!
//! Regenerate after an intended change: `INSTA_UPDATE=always cargo test -p pushgate-core --test
//! wire_snapshots` (or `cargo insta test --accept`), then review the diff of `snapshots/`.
use bytes::{Bytes, BytesMut};
use pushgate_core::command::Command;
use pushgate_core::crypto::{mix_keys, AesCipher};
use pushgate_core::frame::{
    encode_heartbeat, Flags, Frame, FrameDecoder, Packet, HEADER_BYTES, HEARTBEAT_BYTE,
};
use pushgate_core::message::{
    Ack, Bind, Body, ErrorCode, ErrorMessage, FastConnect, FastConnectOk, GatewayKick, GatewayPush,
    Handshake, HandshakeOk, HttpRequest, HttpResponse, Kick, OkMessage, Push, Unbind,
};
use pushgate_core::pipeline::{
    raw_packet, sealed_packet, OpenKey, DEFAULT_COMPRESS_THRESHOLD_BYTES,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt::{Debug, Write as _};

// ---------------------------------------------------------------------------------------------
// Fixed session material
// ---------------------------------------------------------------------------------------------

/// The client's half of the key: 00 01 .. 0f.
const CLIENT_KEY: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
];
/// The connection's IV: 10 11 .. 1f.
const IV: [u8; 16] = [
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
/// The server's half of the key: f0 e1 d2 .. 0f, so the session key (XOR) is f0 e0 d0 .. 00.
const SERVER_KEY: [u8; 16] = [
    0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f,
];
/// A reusable-session id: 32 lowercase hex characters, as MPush's MD5 gives.
const REUSABLE_SESSION_ID: &str = "98fd6ac2c54a5e4c0b8f1d3e7a9b2c41";
/// "Now" when the handshake was answered (epoch ms) and the session's expiry one day later.
const NOW_MS: i64 = 1_795_553_844_669;
const EXPIRE_MS: i64 = NOW_MS + 86_400_000;
/// What PushClient sends as a push's content.
const PUSH_CONTENT: &str = r#"{"content":"hello","msgId":"m-1","msgType":2}"#;

/// The cipher of the HANDSHAKE-ok: AES(clientKey, iv).
fn handshake_cipher() -> AesCipher {
    AesCipher::new(CLIENT_KEY, IV)
}

/// The session cipher: AES(clientKey XOR serverKey, iv).
fn session_cipher() -> AesCipher {
    let key = mix_keys(&CLIENT_KEY, &SERVER_KEY);
    assert_eq!(hex(&key), "f0 e0 d0 c0 b0 a0 90 80 70 60 50 40 30 20 10 00");
    AesCipher::new(key, IV)
}

/// A packet whose body went through the pipeline (compression above 10 KiB, then AES).
fn sealed(
    cmd: Command,
    extra: Flags,
    session_id: i32,
    body: &impl Body,
    cipher: &AesCipher,
) -> Packet {
    sealed_packet(
        cmd.code(),
        extra,
        session_id,
        body,
        Some(cipher),
        DEFAULT_COMPRESS_THRESHOLD_BYTES,
    )
}

/// A packet sent raw: the body as encoded, no flags added.
fn raw(cmd: Command, flags: Flags, session_id: i32, body: &impl Body) -> Packet {
    raw_packet(cmd.code(), flags, session_id, body)
}

// ---------------------------------------------------------------------------------------------
// The dump
// ---------------------------------------------------------------------------------------------

fn flag_names(flags: Flags) -> String {
    let names: Vec<&str> = [
        (Flags::CRYPTO, "CRYPTO"),
        (Flags::COMPRESS, "COMPRESS"),
        (Flags::BIZ_ACK, "BIZ_ACK"),
        (Flags::AUTO_ACK, "AUTO_ACK"),
        (Flags::JSON_BODY, "JSON_BODY"),
    ]
    .iter()
    .filter(|(flag, _)| flags.contains(*flag))
    .map(|(_, name)| *name)
    .collect();
    let unknown = flags.without(Flags(0x1F));
    match (names.is_empty(), unknown == Flags::NONE) {
        (true, true) => "none".to_owned(),
        (_, true) => names.join("|"),
        (_, false) => format!("{}|0x{:02x}?", names.join("|"), unknown.0),
    }
}

fn cmd_name(cmd: u8) -> &'static str {
    Command::try_from(cmd)
        .map(Command::name)
        .unwrap_or("unknown")
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Classic hex dump: offset, 16 bytes in two groups of 8, printable ASCII.
fn hex_rows(out: &mut String, bytes: &[u8]) {
    if bytes.is_empty() {
        out.push_str("  (empty)\n");
        return;
    }
    for (row, chunk) in bytes.chunks(16).enumerate() {
        let mut cells = String::new();
        for i in 0..16 {
            match chunk.get(i) {
                Some(b) => write!(cells, "{b:02x} ").unwrap(),
                None => cells.push_str("   "),
            }
            if i == 7 {
                cells.push(' ');
            }
        }
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        writeln!(out, "  {:04x}  {}|{}|", row * 16, cells, ascii).unwrap();
    }
}

/// Encodes `packet`, reads it back through frame decoder, pipeline and body decoder (checking
/// every step), and renders the text the snapshot holds.
fn dump<T: Body + Debug + PartialEq>(
    title: &str,
    packet: &Packet,
    cipher: Option<&AesCipher>,
    expected: &T,
) -> String {
    let wire = packet.to_bytes();

    // The frame reads back whole, with nothing left over.
    let mut buf = BytesMut::from(&wire[..]);
    let frame = FrameDecoder::default()
        .decode(&mut buf)
        .expect("frame decodes");
    assert_eq!(frame, Some(Frame::Packet(packet.clone())));
    assert!(buf.is_empty(), "frame fully consumed");
    // §2: cc and lrc are always written 0.
    assert_eq!(&wire[5..7], &[0, 0], "cc");
    assert_eq!(wire[12], 0, "lrc");

    // The body opens to exactly the encoded message.
    let key = cipher.map_or(OpenKey::None, OpenKey::Aes);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let plain = pushgate_core::pipeline::open(packet.flags, &packet.body, key, &mut rng, 1 << 20)
        .expect("body opens");
    assert_eq!(
        plain,
        expected.to_bytes(),
        "opened body is the encoded message"
    );
    let decoded = T::decode(&plain).expect("body decodes");
    assert_eq!(&decoded, expected);

    let (header, body) = wire.split_at(HEADER_BYTES);
    let mut out = String::new();
    writeln!(out, "{title}").unwrap();
    writeln!(
        out,
        "frame: {} bytes = {HEADER_BYTES}-byte header + {}-byte body",
        wire.len(),
        body.len()
    )
    .unwrap();
    writeln!(out).unwrap();
    writeln!(
        out,
        "header: length      | cmd | cc    | flags | sessionId   | lrc"
    )
    .unwrap();
    writeln!(
        out,
        "        {} | {}  | {} | {}    | {} | {}",
        hex(&header[0..4]),
        hex(&header[4..5]),
        hex(&header[5..7]),
        hex(&header[7..8]),
        hex(&header[8..12]),
        hex(&header[12..13]),
    )
    .unwrap();
    writeln!(
        out,
        "        length={} cmd={} ({}) cc=0 flags=0x{:02x} ({}) sessionId={} lrc=0",
        packet.body.len(),
        packet.cmd,
        cmd_name(packet.cmd),
        packet.flags.0,
        flag_names(packet.flags),
        packet.session_id,
    )
    .unwrap();
    writeln!(out).unwrap();
    writeln!(out, "body ({} bytes, as on the wire):", body.len()).unwrap();
    hex_rows(&mut out, body);
    if plain[..] != body[..] {
        let how = match (
            packet.flags.contains(Flags::CRYPTO),
            packet.flags.contains(Flags::COMPRESS),
        ) {
            (true, true) => "after AES decrypt and inflate",
            (true, false) => "after AES decrypt",
            _ => "after inflate",
        };
        writeln!(out).unwrap();
        writeln!(out, "plaintext body ({} bytes, {how}):", plain.len()).unwrap();
        hex_rows(&mut out, &plain);
    }
    writeln!(out).unwrap();
    writeln!(out, "fields:").unwrap();
    writeln!(out, "{decoded:#?}").unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// Device link (connection server)
// ---------------------------------------------------------------------------------------------

fn handshake_request() -> Handshake {
    Handshake {
        device_id: "device-A".into(),
        os_name: "android".into(),
        os_version: "6.0".into(),
        client_version: "2.0".into(),
        iv: Bytes::from_static(&IV),
        client_key: Bytes::from_static(&CLIENT_KEY),
        min_heartbeat_ms: 240_000,
        max_heartbeat_ms: 240_000,
        timestamp_ms: 0,
    }
}

#[test]
fn handshake_request_snapshot() {
    let body = handshake_request();
    // Shown in plaintext: the real client RSA-encrypts this body (CRYPTO, one 128-byte block), and
    // PKCS#1 v1.5 padding is random, so the encrypted form cannot be a fixed snapshot.
    let packet = raw(Command::Handshake, Flags::NONE, 1, &body);
    let text = dump(
        "HANDSHAKE request, client -> server, body before RSA (really sent RSA-encrypted)",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("handshake_request", text);
}

#[test]
fn handshake_ok_snapshot() {
    let body = HandshakeOk {
        server_key: Bytes::from_static(&SERVER_KEY),
        heartbeat_ms: 180_000,
        session_id: REUSABLE_SESSION_ID.into(),
        expire_time_ms: EXPIRE_MS,
    };
    let cipher = handshake_cipher();
    let packet = sealed(Command::Handshake, Flags::NONE, 1, &body, &cipher);
    assert_eq!(packet.flags, Flags::CRYPTO);
    let text = dump(
        "HANDSHAKE-ok, server -> client, sealed with AES(clientKey, iv), request's sessionId",
        &packet,
        Some(&cipher),
        &body,
    );
    insta::assert_snapshot!("handshake_ok", text);
}

#[test]
fn fast_connect_snapshot() {
    let body = FastConnect {
        session_id: REUSABLE_SESSION_ID.into(),
        device_id: "device-A".into(),
        min_heartbeat_ms: 240_000,
        max_heartbeat_ms: 240_000,
    };
    let packet = raw(Command::FastConnect, Flags::NONE, 1, &body);
    let text = dump(
        "FAST_CONNECT request, client -> server, plaintext",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("fast_connect", text);
}

#[test]
fn fast_connect_ok_snapshot() {
    let body = FastConnectOk {
        heartbeat_ms: 180_000,
    };
    let packet = raw(Command::FastConnect, Flags::NONE, 1, &body);
    let text = dump(
        "FAST_CONNECT-ok, server -> client, raw (plaintext), request's sessionId",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("fast_connect_ok", text);
}

#[test]
fn bind_snapshot() {
    let body = Bind {
        user_id: "user-1".into(),
        data: String::new(),
        tags: "tag-a,tag-b".into(),
    };
    let cipher = session_cipher();
    let packet = sealed(Command::Bind, Flags::NONE, 2, &body, &cipher);
    let text = dump(
        "BIND, client -> server, sealed with the session key AES(clientKey ^ serverKey, iv)",
        &packet,
        Some(&cipher),
        &body,
    );
    insta::assert_snapshot!("bind", text);
}

#[test]
fn unbind_snapshot() {
    let body = Unbind {
        user_id: "user-1".into(),
        data: String::new(),
        tags: String::new(),
    };
    let cipher = session_cipher();
    let packet = sealed(Command::Unbind, Flags::NONE, 3, &body, &cipher);
    let text = dump(
        "UNBIND, client -> server, sealed with the session key",
        &packet,
        Some(&cipher),
        &body,
    );
    insta::assert_snapshot!("unbind", text);
}

fn push_body() -> Push {
    Push {
        content: Bytes::from_static(PUSH_CONTENT.as_bytes()),
    }
}

#[test]
fn push_no_ack_snapshot() {
    let body = push_body();
    let cipher = session_cipher();
    let packet = sealed(Command::Push, Flags::NONE, 1, &body, &cipher);
    assert_eq!(packet.flags, Flags::CRYPTO);
    let text = dump(
        "PUSH (NO_ACK), server -> client, sealed with the session key, server-counter sessionId",
        &packet,
        Some(&cipher),
        &body,
    );
    insta::assert_snapshot!("push_no_ack", text);
}

#[test]
fn push_auto_ack_snapshot() {
    let body = push_body();
    let cipher = session_cipher();
    let packet = sealed(Command::Push, Flags::AUTO_ACK, 2, &body, &cipher);
    assert_eq!(packet.flags, Flags(0x09));
    let text = dump(
        "PUSH (AUTO_ACK), server -> client, sealed with the session key",
        &packet,
        Some(&cipher),
        &body,
    );
    insta::assert_snapshot!("push_auto_ack", text);
}

#[test]
fn push_biz_ack_snapshot() {
    let body = push_body();
    let cipher = session_cipher();
    let packet = sealed(Command::Push, Flags::BIZ_ACK, 3, &body, &cipher);
    assert_eq!(packet.flags, Flags(0x05));
    let text = dump(
        "PUSH (BIZ_ACK), server -> client, sealed with the session key",
        &packet,
        Some(&cipher),
        &body,
    );
    insta::assert_snapshot!("push_biz_ack", text);
}

#[test]
fn ack_snapshot() {
    let packet = raw(Command::Ack, Flags::NONE, 2, &Ack);
    // Byte-identical to the captured ACK of push 2 (shared/vectors/handshake-bind-push.json).
    assert_eq!(
        hex(&packet.to_bytes()).replace(' ', ""),
        "00000000170000000000000200"
    );
    let text = dump(
        "ACK of the AUTO_ACK push, client -> server, raw, empty body, the push's sessionId",
        &packet,
        None,
        &Ack,
    );
    insta::assert_snapshot!("ack", text);
}

#[test]
fn kick_snapshot() {
    let body = Kick {
        device_id: "device-A".into(),
        user_id: "user-1".into(),
    };
    let cipher = session_cipher();
    let packet = sealed(Command::Kick, Flags::NONE, 0, &body, &cipher);
    let text = dump(
        "KICK, server -> older client, sealed with the session key, sessionId 0",
        &packet,
        Some(&cipher),
        &body,
    );
    insta::assert_snapshot!("kick", text);
}

#[test]
fn ok_bind_snapshot() {
    let body = OkMessage::new(Command::Bind, "bind success");
    let packet = raw(Command::Ok, Flags::NONE, 2, &body);
    // The worked example of reference §8.
    assert_eq!(
        hex(&packet.to_bytes()),
        "00 00 00 10 0b 00 00 00 00 00 00 02 00 05 00 00 0c 62 69 6e 64 20 73 75 63 63 65 73 73"
    );
    let text = dump(
        "OK to BIND (cmd 5, code 0, \"bind success\"), server -> client, raw, request's sessionId",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("ok_bind", text);
}

#[test]
fn error_unsupported_command_snapshot() {
    let body = ErrorMessage::new(Command::HttpProxy.code(), ErrorCode::UnsupportedCmd);
    let packet = raw(Command::Error, Flags::NONE, 5, &body);
    let text = dump(
        "ERROR 101 \"unsupported command\" to HTTP_PROXY (proxy off), server -> client, raw",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("error_unsupported_command", text);
}

#[test]
fn http_proxy_request_snapshot() {
    let body = HttpRequest {
        method: 1,
        uri: "http://api.example.com/v1/echo".into(),
        headers: "content-type:application/json\nreadTimeout:3000\n".into(),
        body: Bytes::from_static(br#"{"hello":"world"}"#),
    };
    let cipher = session_cipher();
    let packet = sealed(Command::HttpProxy, Flags::NONE, 6, &body, &cipher);
    let text = dump(
        "HTTP_PROXY request (POST), client -> server, sealed with the session key",
        &packet,
        Some(&cipher),
        &body,
    );
    insta::assert_snapshot!("http_proxy_request", text);
}

#[test]
fn http_proxy_response_snapshot() {
    let body = HttpResponse {
        status_code: 200,
        reason_phrase: "OK".into(),
        headers: "content-type:application/json\ncontent-length:17\n".into(),
        body: Bytes::from_static(br#"{"hello":"world"}"#),
    };
    let cipher = session_cipher();
    let packet = sealed(Command::HttpProxy, Flags::NONE, 6, &body, &cipher);
    let text = dump(
        "HTTP_PROXY response (200), server -> client, sealed with the session key",
        &packet,
        Some(&cipher),
        &body,
    );
    insta::assert_snapshot!("http_proxy_response", text);
}

#[test]
fn heartbeat_snapshot() {
    let mut wire = BytesMut::new();
    encode_heartbeat(&mut wire);
    assert_eq!(&wire[..], &[HEARTBEAT_BYTE]);
    let mut buf = wire.clone();
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Ok(Some(Frame::Heartbeat))
    );
    assert!(buf.is_empty());
    let mut out =
        String::from("HEARTBEAT, either direction: one byte, no header\nframe: 1 byte\n\n");
    hex_rows(&mut out, &wire);
    insta::assert_snapshot!("heartbeat", out);
}

// ---------------------------------------------------------------------------------------------
// Gateway link (PushClient <-> gateway server): never encrypted, never compressed
// ---------------------------------------------------------------------------------------------

#[test]
fn gateway_ok_snapshot() {
    let data = concat!(
        r#"{"clientType":1,"timePoints":["push-center-begin",1795553845043,"before-send","#,
        r#"1795553845043,"waiting-ack",1795553845044,"success-end",1795553845047],"#,
        r#""userId":"user-1"}"#
    );
    let body = OkMessage::new(Command::GatewayPush, data);
    let packet = raw(Command::Ok, Flags::NONE, 2, &body);
    let text = dump(
        "OK to GATEWAY_PUSH with the GatewayPushResult JSON, gateway -> PushClient, raw",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("gateway_ok", text);
}

#[test]
fn gateway_error_offline_snapshot() {
    let data = concat!(
        r#"{"clientType":1,"timePoints":["push-center-begin",1795553845981,"#,
        r#""offline-end",1795553845982],"userId":"user-1"}"#
    );
    let body = ErrorMessage::new(Command::GatewayPush.code(), ErrorCode::Offline).with_data(data);
    let packet = raw(Command::Error, Flags::NONE, 5, &body);
    let text = dump(
        "ERROR 1 \"user offline\" to GATEWAY_PUSH, gateway -> PushClient, raw",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("gateway_error_offline", text);
}

#[test]
fn gateway_broadcast_ok_snapshot() {
    let body = OkMessage::new(Command::GatewayPush, "");
    let packet = raw(Command::Ok, Flags::NONE, 1, &body);
    // As captured (shared/vectors/gateway-broadcast.json): 4-byte body, data null.
    assert_eq!(
        hex(&packet.to_bytes()).replace(' ', ""),
        "000000040b000000000000010010000000"
    );
    let text = dump(
        "OK to a finished broadcast GATEWAY_PUSH (data empty), gateway -> PushClient, raw",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("gateway_broadcast_ok", text);
}

#[test]
fn gateway_push_single_snapshot() {
    let body = GatewayPush {
        user_id: "user-1".into(),
        client_type: 1,
        timeout_ms: 2500,
        content: Bytes::from_static(PUSH_CONTENT.as_bytes()),
        task_id: String::new(),
        tags: String::new(),
        condition: String::new(),
    };
    let packet = raw(Command::GatewayPush, Flags::AUTO_ACK, 2, &body);
    let text = dump(
        "GATEWAY_PUSH to one user (AUTO_ACK), PushClient -> gateway, raw",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("gateway_push_single", text);
}

#[test]
fn gateway_push_broadcast_snapshot() {
    let mut body = GatewayPush {
        user_id: String::new(),
        client_type: 0,
        timeout_ms: 0,
        content: Bytes::from_static(PUSH_CONTENT.as_bytes()),
        ..GatewayPush::default()
    };
    body.set_tags(&["tag-a"]);
    assert_eq!(body.tags, r#"["tag-a"]"#);
    assert!(body.is_broadcast());
    let packet = raw(Command::GatewayPush, Flags::NONE, 1, &body);
    let text = dump(
        "GATEWAY_PUSH broadcast (userId null, tags [\"tag-a\"]), PushClient -> gateway, raw",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("gateway_push_broadcast", text);
}

#[test]
fn gateway_kick_snapshot() {
    let body = GatewayKick {
        user_id: "user-1".into(),
        device_id: "device-A".into(),
        conn_id: "conn-42".into(),
        client_type: 1,
        target_server: "10.0.0.2".into(),
        target_port: 3001,
    };
    let packet = raw(Command::GatewayKick, Flags::NONE, 7, &body);
    let text = dump(
        "GATEWAY_KICK, server -> server (UDP gateway mode), raw",
        &packet,
        None,
        &body,
    );
    insta::assert_snapshot!("gateway_kick", text);
}
