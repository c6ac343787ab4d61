//! Web clients over WebSocket (MPush's JSON packets, reference §14), driven with
//! tokio-tungstenite against the real binary: the handshake and bind answers byte for byte,
//! single pushes in every ACK mode answered over the HTTP API, broadcasts, a phone and a web
//! client of one user side by side while a second web client kicks the first, and the bad
//! clients — malformed JSON, binary messages, oversized messages, a client that never answers
//! pings.
#![cfg(not(madsim))]

use futures_util::{SinkExt, StreamExt};
use pushgate_tests::{bounded, eventually, http, TestServer};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(5);

/// A free loopback port for the WebSocket listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A server with the WebSocket listener on, plus `extra` in `[net]`.
async fn server_with_ws(extra: &str) -> (TestServer, SocketAddr) {
    let port = free_port();
    let server = TestServer::start_toml(&format!(
        "[net]\nws_port = {port}\nws_bind = \"127.0.0.1\"\n{extra}\n"
    ))
    .await;
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A web client speaking JSON packets.
struct Web {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: i32,
}

impl Web {
    async fn connect(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .expect("WebSocket connect");
        Self { ws, next_id: 1 }
    }

    async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends a packet with the next sessionId; returns it.
    async fn send(&mut self, cmd: u8, body: Option<Value>) -> i32 {
        let sid = self.next_id;
        self.next_id += 1;
        let mut packet = json!({"cmd": cmd, "flags": 16, "sessionId": sid});
        if let Some(body) = body {
            packet["body"] = body;
        }
        self.send_text(packet.to_string()).await;
        sid
    }

    /// The next message that is not a ping or pong.
    async fn next_message(&mut self) -> Message {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("the connection is open")
                .expect("a readable message");
            if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
                return message;
            }
        }
    }

    /// The next packet's text.
    async fn recv_text(&mut self) -> String {
        match self.next_message().await {
            Message::Text(text) => text.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    async fn recv(&mut self) -> Value {
        serde_json::from_str(&self.recv_text().await).expect("a JSON packet")
    }

    /// The close frame the server ends with.
    async fn expect_close(&mut self) -> (CloseCode, String) {
        loop {
            match self.next_message().await {
                Message::Close(Some(frame)) => return (frame.code, frame.reason.to_string()),
                Message::Close(None) => panic!("a close frame without a code"),
                Message::Text(_) => continue, // an ERROR packet before the close
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    async fn handshake(&mut self, device_id: &str) -> String {
        self.send(
            2,
            Some(json!({"deviceId": device_id, "osName": "web", "osVersion": "test", "clientVersion": "1.0"})),
        )
        .await;
        self.recv_text().await
    }

    async fn bind(&mut self, user: &str, tags: Option<&str>) -> String {
        let mut body = json!({"userId": user});
        if let Some(tags) = tags {
            body["tags"] = json!(tags);
        }
        self.send(5, Some(body)).await;
        self.recv_text().await
    }

    /// A handshaken web client bound to `user`.
    async fn bound(addr: SocketAddr, device_id: &str, user: &str, tags: Option<&str>) -> Self {
        let mut web = Self::connect(addr).await;
        web.handshake(device_id).await;
        let ok = web.bind(user, tags).await;
        assert!(ok.contains("bind success"), "{ok}");
        web
    }

    async fn expect_push(&mut self) -> Value {
        let packet = self.recv().await;
        assert_eq!(packet["cmd"], 15, "{packet}");
        packet
    }

    async fn ack(&mut self, session_id: i64) {
        self.send_text(json!({"cmd": 23, "flags": 16, "sessionId": session_id}).to_string())
            .await;
    }
}

async fn http_push(server: &TestServer, body: Value) -> Value {
    let response = server.http_post("/v1/push", &body).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[tokio::test]
async fn web_clients_bind_and_get_single_pushes_in_every_ack_mode() {
    bounded(LIMIT, async {
        let (server, addr) = server_with_ws("").await;
        let mut web = Web::connect(addr).await;
        // MPush's replies, byte for byte.
        assert_eq!(
            web.handshake("web-device-1").await,
            r#"{"bodyLength":0,"cmd":2,"flags":16,"sessionId":1}"#
        );
        assert_eq!(
            web.bind("web-user", Some("vip")).await,
            r#"{"body":{"data":"bind success","cmd":5},"bodyLength":2,"cmd":11,"flags":16,"sessionId":2}"#
        );
        let user = http::get(server.admin, "/v1/users/web-user").await.unwrap().json();
        assert!(user.to_string().contains("\"clientType\":3"), "{user}");

        // ack none: success once written.
        let status = http_push(&server, json!({"userId": "web-user", "content": "plain", "ack": "none"})).await;
        assert_eq!(status["status"], "success", "{status}");
        let push = web.expect_push().await;
        assert_eq!(push["body"]["content"], "plain");
        assert_eq!(push["flags"], 16);
        assert_eq!(push["bodyLength"], 1);

        // ack auto and biz: ack-success once the client acknowledges.
        for (ack, flags) in [("auto", 24), ("biz", 20)] {
            let pending = {
                let admin = server.admin;
                let content = format!("needs {ack}");
                tokio::spawn(async move {
                    http::post_json(
                        admin,
                        "/v1/push",
                        &json!({"userId": "web-user", "content": content, "ack": ack}),
                    )
                    .await
                })
            };
            let push = web.expect_push().await;
            assert_eq!(push["body"]["content"], format!("needs {ack}"));
            assert_eq!(push["flags"], flags, "{push}");
            web.ack(push["sessionId"].as_i64().unwrap()).await;
            let response = pending.await.unwrap().unwrap();
            assert_eq!(response.json()["status"], "ack-success", "{}", response.text());
        }

        // Unbind: the user is offline.
        web.send(6, Some(json!({"userId": "web-user"}))).await;
        assert_eq!(
            web.recv_text().await,
            r#"{"body":{"data":"unbind success","cmd":6},"bodyLength":2,"cmd":11,"flags":16,"sessionId":3}"#
        );
        let status = http_push(&server, json!({"userId": "web-user", "content": "gone"})).await;
        assert_eq!(status["status"], "offline", "{status}");
    })
    .await;
}

#[tokio::test]
async fn a_broadcast_reaches_web_clients_and_phones() {
    bounded(LIMIT, async {
        let (server, addr) = server_with_ws("").await;
        let mut web = Web::bound(addr, "web-b", "user-web-b", Some("news")).await;
        let phone = server
            .bound_device("phone-b", "user-phone-b", &["news"])
            .await;
        let status = http_push(
            &server,
            json!({"broadcast": true, "content": "to everyone on news", "tags": ["news"]}),
        )
        .await;
        assert_eq!(status["status"], "success", "{status}");
        let push = web.expect_push().await;
        assert_eq!(push["body"]["content"], "to everyone on news");
        let received = pushgate_tests::expect_push(&phone, WAIT).await;
        assert_eq!(&received.content[..], b"to everyone on news");
    })
    .await;
}

#[tokio::test]
async fn a_phone_and_a_web_client_of_one_user_coexist_and_a_second_web_client_kicks_the_first() {
    bounded(LIMIT, async {
        let (server, addr) = server_with_ws("").await;
        let phone = server.bound_device("phone-k", "user-k", &[]).await;
        let mut first = Web::bound(addr, "web-k1", "user-k", None).await;
        // Different client types: both hold the user.
        let status = http_push(&server, json!({"userId": "user-k", "clientType": 1, "content": "to the phone"})).await;
        assert_eq!(status["status"], "success", "{status}");
        assert_eq!(&pushgate_tests::expect_push(&phone, WAIT).await.content[..], b"to the phone");
        let status = http_push(&server, json!({"userId": "user-k", "clientType": 3, "content": "to the page"})).await;
        assert_eq!(status["status"], "success", "{status}");
        assert_eq!(first.expect_push().await["body"]["content"], "to the page");

        // A second web client of the same user takes the web route: the first is kicked.
        let mut second = Web::bound(addr, "web-k2", "user-k", None).await;
        assert_eq!(
            first.recv_text().await,
            r#"{"body":{"deviceId":"web-k1","userId":"user-k"},"bodyLength":2,"cmd":13,"flags":16,"sessionId":0}"#
        );
        let status = http_push(&server, json!({"userId": "user-k", "clientType": 3, "content": "to the new page"})).await;
        assert_eq!(status["status"], "success", "{status}");
        assert_eq!(second.expect_push().await["body"]["content"], "to the new page");
        // The kicked page stays open (as in MPush) but gets nothing more; the phone keeps the
        // user.
        let status = http_push(&server, json!({"userId": "user-k", "clientType": 1, "content": "still yours"})).await;
        assert_eq!(status["status"], "success", "{status}");
        assert_eq!(&pushgate_tests::expect_push(&phone, WAIT).await.content[..], b"still yours");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), first.ws.next()).await.is_err(),
            "the kicked page got something more"
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_json_binary_and_oversized_messages_close_with_a_clear_code() {
    bounded(LIMIT, async {
        let (server, addr) = server_with_ws("ws_max_message_bytes = 1024").await;

        let mut web = Web::connect(addr).await;
        web.send_text("{\"cmd\":2,".to_owned()).await;
        assert_eq!(
            web.expect_close().await,
            (CloseCode::Invalid, "malformed packet".to_owned())
        );

        let mut web = Web::connect(addr).await;
        web.ws
            .send(Message::Binary(vec![0, 0, 0, 1].into()))
            .await
            .unwrap();
        assert_eq!(web.expect_close().await.0, CloseCode::Unsupported);

        // Over the limit: refused by the WebSocket reader before it is buffered whole.
        let mut web = Web::connect(addr).await;
        web.handshake("web-big").await;
        let big = json!({"cmd": 5, "flags": 16, "sessionId": 9, "body": {"userId": "x".repeat(4096)}});
        let _ = web.ws.send(Message::Text(big.to_string().into())).await;
        assert_eq!(web.expect_close().await.0, CloseCode::Size);

        // A command the WebSocket link does not take: ERROR 101, then close.
        let mut web = Web::connect(addr).await;
        web.send(1, None).await;
        assert_eq!(
            web.recv_text().await,
            r#"{"body":{"reason":"unsupported command","cmd":1,"code":101},"bodyLength":3,"cmd":10,"flags":16,"sessionId":1}"#
        );
        assert_eq!(web.expect_close().await.0, CloseCode::Policy);

        // Bind before the handshake: MPush's "not handshake".
        let mut web = Web::connect(addr).await;
        assert_eq!(
            web.bind("early", None).await,
            r#"{"body":{"reason":"not handshake","cmd":5},"bodyLength":2,"cmd":10,"flags":16,"sessionId":1}"#
        );

        // The server is still fine.
        let mut web = Web::bound(addr, "web-after", "user-after", None).await;
        let status = http_push(&server, json!({"userId": "user-after", "content": "ok"})).await;
        assert_eq!(status["status"], "success", "{status}");
        assert_eq!(web.expect_push().await["body"]["content"], "ok");
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_and_one_that_does_stays() {
    bounded(LIMIT, async {
        let (server, addr) =
            server_with_ws("ws_ping_interval_ms = 200\nws_idle_timeout_ms = 1000").await;
        let mut silent = Web::bound(addr, "web-silent", "user-silent", None).await;
        let mut alive = Web::bound(addr, "web-alive", "user-alive", None).await;
        // `alive` reads all along (tungstenite answers each ping as it reads it); `silent`
        // reads nothing, so its pings stay unanswered.
        let reader = tokio::spawn(async move {
            let mut pings = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
            while let Ok(Some(Ok(message))) =
                tokio::time::timeout_at(deadline, alive.ws.next()).await
            {
                if matches!(message, Message::Ping(_)) {
                    pings += 1;
                }
            }
            (alive, pings)
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (mut alive, pings) = reader.await.unwrap();
        assert!(pings >= 2, "{pings} pings in 1.5 s at a 200 ms interval");

        // The silent one was pinged, then closed as idle.
        let mut saw_ping = false;
        let close = loop {
            match tokio::time::timeout(WAIT, silent.ws.next())
                .await
                .expect("in time")
            {
                Some(Ok(Message::Ping(_))) => saw_ping = true,
                Some(Ok(Message::Close(frame))) => break frame,
                other => panic!("{other:?}"),
            }
        };
        assert!(saw_ping);
        let frame = close.expect("a close frame");
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode::Away, "idle timeout")
        );
        let status = http_push(&server, json!({"userId": "user-silent", "content": "x"})).await;
        assert_eq!(status["status"], "offline", "{status}");

        // The one that answered is still bound.
        let status = http_push(
            &server,
            json!({"userId": "user-alive", "content": "still here"}),
        )
        .await;
        assert_eq!(status["status"], "success", "{status}");
        assert_eq!(alive.expect_push().await["body"]["content"], "still here");
    })
    .await;
}

#[tokio::test]
async fn the_websocket_path_serves_the_demo_page_and_is_off_by_default() {
    bounded(LIMIT, async {
        let (_server, addr) = server_with_ws("ws_path = \"/push/\"").await;
        let page = http::get(addr, "/push/").await.unwrap();
        assert_eq!(page.status, 200);
        let text = page.text();
        assert!(text.contains("PushgateClient"), "the client is inlined");
        assert!(!text.contains("src=\"pushgate-web.js\""));
        assert_eq!(
            http::get(addr, "/push/index.html").await.unwrap().status,
            200
        );
        assert_eq!(http::get(addr, "/elsewhere").await.unwrap().status, 404);
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/push/"))
            .await
            .expect("upgrade on the configured path");
        ws.send(Message::Text(
            json!({"cmd": 2, "flags": 16, "sessionId": 1, "body": {"deviceId": "d"}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));

        let server = TestServer::start().await;
        assert!(
            !server.logs().contains("ws_addr=Some"),
            "no WebSocket listener unless net.ws_port is set"
        );
    })
    .await;
}

#[tokio::test]
async fn on_sigterm_web_clients_get_a_going_away_close_and_the_server_exits() {
    bounded(LIMIT, async {
        let (mut server, addr) = server_with_ws("shutdown_grace_ms = 3000").await;
        let mut web = Web::bound(addr, "web-term", "user-term", None).await;
        let started = std::time::Instant::now();
        server.sigterm();
        assert_eq!(
            web.expect_close().await,
            (CloseCode::Away, "server shutting down".to_owned())
        );
        let status = server
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("still running after SIGTERM:\n{}", server.logs()));
        assert!(status.success(), "{status}\n{}", server.logs());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the web connection held the shutdown for {:?}",
            started.elapsed()
        );
    })
    .await;
}

/// A bare WebSocket client over TCP that writes the upgrade and the frames itself, so a test
/// sees what went on the wire: the `Sec-WebSocket-Extensions` answer, the RSV1 bit and the
/// size of each compressed message, and it can send any compressed frame (a deflate bomb).
struct RawWs {
    tcp: TcpStream,
    /// The `Sec-WebSocket-Extensions` header of the 101 answer.
    extensions: Option<String>,
}

/// One frame from the server.
struct RawFrame {
    opcode: u8,
    /// RSV1: the message is compressed (permessage-deflate).
    compressed: bool,
    /// The payload as sent (compressed when `compressed`).
    wire: Vec<u8>,
}

/// The tail RFC 7692 §7.2.1 strips from a compressed message.
const DEFLATE_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// A message compressed as permessage-deflate sends it (raw deflate, sync flush, tail removed).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compress = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 100 + 64);
    loop {
        let consumed = compress.total_in() as usize;
        out.reserve(64 * 1024);
        compress
            .compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        if compress.total_in() as usize == data.len() && out.ends_with(&DEFLATE_TAIL) {
            break;
        }
    }
    out.truncate(out.len() - DEFLATE_TAIL.len());
    out
}

/// A compressed message inflated.
fn inflate(wire: &[u8]) -> Vec<u8> {
    let mut input = wire.to_vec();
    input.extend_from_slice(&DEFLATE_TAIL);
    let mut out = Vec::with_capacity(wire.len() * 8 + 1024);
    let mut decompress = flate2::Decompress::new(false);
    loop {
        out.reserve(64 * 1024);
        let consumed = decompress.total_in() as usize;
        decompress
            .decompress_vec(&input[consumed..], &mut out, flate2::FlushDecompress::Sync)
            .expect("inflate");
        if decompress.total_in() as usize == input.len() {
            return out;
        }
    }
}

impl RawWs {
    /// Upgrades on `/`, offering `extensions` when given.
    async fn connect(addr: SocketAddr, extensions: Option<&str>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let offer = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        // Byte by byte up to the blank line: nothing of the first frame is read with it.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            assert!(head.len() < 8192, "an endless answer");
            head.push(tcp.read_u8().await.expect("the upgrade answer"));
        }
        let head = String::from_utf8(head).expect("an ASCII answer");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "the accept key of RFC 6455's example: {head}"
        );
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        Self { tcp, extensions }
    }

    /// Sends one masked frame.
    async fn send_frame(&mut self, opcode: u8, compressed: bool, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut frame = vec![0x80 | opcode | if compressed { 0x40 } else { 0 }];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.expect("send a frame");
    }

    async fn send_text(&mut self, text: &str, compressed: bool) {
        if compressed {
            self.send_frame(0x1, true, &deflate(text.as_bytes())).await;
        } else {
            self.send_frame(0x1, false, text.as_bytes()).await;
        }
    }

    /// The next frame that is not a ping or pong (unfragmented: the server does not fragment).
    async fn next_frame(&mut self) -> RawFrame {
        use tokio::io::AsyncReadExt;
        loop {
            let read = async {
                let b0 = self.tcp.read_u8().await?;
                let b1 = self.tcp.read_u8().await?;
                assert_eq!(b1 & 0x80, 0, "server frames are not masked");
                assert_ne!(b0 & 0x80, 0, "server frames are not fragmented");
                let len = match b1 & 0x7f {
                    126 => u64::from(self.tcp.read_u16().await?),
                    127 => self.tcp.read_u64().await?,
                    n => u64::from(n),
                };
                let mut wire = vec![0; usize::try_from(len).unwrap()];
                self.tcp.read_exact(&mut wire).await?;
                std::io::Result::Ok(RawFrame {
                    opcode: b0 & 0x0f,
                    compressed: b0 & 0x40 != 0,
                    wire,
                })
            };
            let frame = tokio::time::timeout(WAIT, read)
                .await
                .expect("a frame in time")
                .expect("a readable frame");
            if !matches!(frame.opcode, 0x9 | 0xa) {
                return frame;
            }
        }
    }

    /// The next text message, inflated when compressed; with the frame.
    async fn recv_text(&mut self) -> (String, RawFrame) {
        let frame = self.next_frame().await;
        assert_eq!(frame.opcode, 0x1, "a text message");
        let text = if frame.compressed {
            inflate(&frame.wire)
        } else {
            frame.wire.clone()
        };
        (String::from_utf8(text).expect("UTF-8"), frame)
    }

    /// The close frame's code.
    async fn expect_close(&mut self) -> u16 {
        loop {
            let frame = self.next_frame().await;
            if frame.opcode == 0x8 {
                return u16::from_be_bytes([frame.wire[0], frame.wire[1]]);
            }
            assert_eq!(frame.opcode, 0x1, "only text before the close");
        }
    }

    /// Handshakes and binds `user` (the BIND compressed when `compressed`).
    async fn bind(&mut self, device: &str, user: &str, compressed: bool) {
        let handshake = json!({"cmd": 2, "flags": 16, "sessionId": 1,
            "body": {"deviceId": device, "osName": "web", "osVersion": "t", "clientVersion": "1"}});
        self.send_text(&handshake.to_string(), false).await;
        let (ok, _) = self.recv_text().await;
        assert!(ok.contains(r#""cmd":2"#), "{ok}");
        let bind = json!({"cmd": 5, "flags": 16, "sessionId": 2, "body": {"userId": user}});
        self.send_text(&bind.to_string(), compressed).await;
        let (ok, _) = self.recv_text().await;
        assert!(ok.contains("bind success"), "{ok}");
    }
}

/// The answer a browser's offer (`permessage-deflate; client_max_window_bits`) gets: the
/// server's terms, no context takeover either way, its window left at 15 bits.
const DEFLATE_ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A push content that deflate shrinks: 8 KiB of repeated, JSON-escaped-free text.
fn compressible_content() -> String {
    (0..200)
        .map(|i| format!("price update {:04} for item {}; ", i % 7, i % 5))
        .collect::<String>()
}

#[tokio::test]
async fn a_client_that_offers_permessage_deflate_gets_it_and_pushes_shrink_on_the_wire() {
    bounded(LIMIT, async {
        let (server, addr) = server_with_ws("").await;
        let mut web =
            RawWs::connect(addr, Some("permessage-deflate; client_max_window_bits")).await;
        assert_eq!(web.extensions.as_deref(), Some(DEFLATE_ANSWER));
        // The client's own compressed BIND is inflated and answered.
        web.bind("web-deflate", "user-deflate", true).await;

        let content = compressible_content();
        let status = http_push(
            &server,
            json!({"userId": "user-deflate", "content": content}),
        )
        .await;
        assert_eq!(status["status"], "success", "{status}");
        let (text, frame) = web.recv_text().await;
        let packet: Value = serde_json::from_str(&text).expect("a JSON packet");
        assert_eq!(packet["cmd"], 15);
        assert_eq!(packet["body"]["content"], content.as_str(), "intact");
        assert!(frame.compressed, "a compressible push goes out compressed");
        eprintln!(
            "push of {} bytes: {} bytes on the wire ({:.1}x)",
            text.len(),
            frame.wire.len(),
            text.len() as f64 / frame.wire.len() as f64
        );
        assert!(
            frame.wire.len() * 5 < text.len(),
            "{} bytes on the wire for {}",
            frame.wire.len(),
            text.len()
        );

        // A short answer is not worth compressing (no context takeover: each message alone).
        web.send_text(
            &json!({"cmd": 5, "flags": 16, "sessionId": 3, "body": {"userId": "user-deflate"}})
                .to_string(),
            false,
        )
        .await;
        let (ok, frame) = web.recv_text().await;
        assert!(ok.contains("bind success"), "{ok}");
        assert!(!frame.compressed, "{} bytes sent compressed", ok.len());

        let metrics = server.metrics().await;
        assert_eq!(
            metrics.value("pushgate_ws_connections_total", &[("deflate", "on")]),
            Some(1.0),
            "{}",
            metrics.0
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_that_offers_nothing_or_terms_the_server_cannot_keep_gets_plain_frames() {
    bounded(LIMIT, async {
        let (server, addr) = server_with_ws("").await;
        // No offer (as tokio-tungstenite's client): no extension, plain frames.
        let (_ws, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .expect("WebSocket connect");
        assert!(!response.headers().contains_key("sec-websocket-extensions"));
        let mut plain = RawWs::connect(addr, None).await;
        assert_eq!(plain.extensions, None);
        plain.bind("web-plain", "user-plain", false).await;
        let content = compressible_content();
        http_push(&server, json!({"userId": "user-plain", "content": content})).await;
        let (text, frame) = plain.recv_text().await;
        assert!(!frame.compressed);
        assert_eq!(frame.wire.len(), text.len());
        assert!(text.contains(&content));

        // An offer that asks the server for a smaller window than its 15 bits, or that RFC 7692
        // does not allow, is declined.
        for offer in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits, permessage-deflate; server_max_window_bits=9",
            "x-webkit-deflate-frame",
            "permessage-deflate; unknown_parameter",
            "permessage-deflate; client_max_window_bits=20",
        ] {
            let mut web = RawWs::connect(addr, Some(offer)).await;
            assert_eq!(web.extensions, None, "{offer}");
            web.bind("web-declined", "user-declined", false).await;
        }
        // An explicit 15 is the server's own window: accepted.
        let web = RawWs::connect(addr, Some("permessage-deflate; server_max_window_bits=15")).await;
        assert!(web.extensions.is_some());
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.value("pushgate_ws_connections_total", &[("deflate", "off")]),
            Some(7.0),
            "{}",
            metrics.0
        );
        drop(server);

        // Switched off: every client gets plain frames.
        let (_server, addr) = server_with_ws("ws_deflate = false").await;
        let mut web = RawWs::connect(addr, Some("permessage-deflate; client_max_window_bits")).await;
        assert_eq!(web.extensions, None);
        web.bind("web-off", "user-off", false).await;
    })
    .await;
}

/// The most memory the server process held so far (VmHWM), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[tokio::test]
async fn an_inflate_bomb_is_refused_with_a_close_and_costs_no_memory() {
    bounded(LIMIT, async {
        // The default limit: 64 KiB per message, inflated.
        let (server, addr) = server_with_ws("").await;
        let mut web = RawWs::connect(addr, Some("permessage-deflate")).await;
        assert_eq!(web.extensions.as_deref(), Some(DEFLATE_ANSWER));
        web.bind("web-bomb", "user-bomb", false).await;
        // 60 MiB of one JSON string that deflates to under the wire limit.
        let mut bomb = br#"{"cmd":5,"flags":16,"sessionId":3,"body":{"userId":""#.to_vec();
        bomb.resize(60 << 20, b'a');
        bomb.extend_from_slice(br#""}}"#);
        let wire = deflate(&bomb);
        assert!(wire.len() < 64 * 1024, "{} bytes on the wire", wire.len());
        let before = peak_rss_bytes(server.pid());
        web.send_frame(0x1, true, &wire).await;
        assert_eq!(web.expect_close().await, 1009, "message too big");
        let after = peak_rss_bytes(server.pid());
        eprintln!(
            "bomb: {} bytes on the wire, {} inflated; server peak RSS {} -> {} KiB",
            wire.len(),
            bomb.len(),
            before / 1024,
            after / 1024
        );
        assert!(
            after < before + (16 << 20),
            "the bomb cost {} KiB",
            (after - before) / 1024
        );
        // The server goes on serving compressed clients.
        let mut next = RawWs::connect(addr, Some("permessage-deflate")).await;
        next.bind("web-after-bomb", "user-after-bomb", true).await;
        let status = http_push(
            &server,
            json!({"userId": "user-after-bomb", "content": "ok"}),
        )
        .await;
        assert_eq!(status["status"], "success", "{status}");
    })
    .await;
}

#[tokio::test]
async fn a_web_client_that_handshakes_and_never_binds_is_closed_at_the_bind_deadline() {
    bounded(LIMIT, async {
        let (server, addr) = server_with_ws("\n[core]\nbind_deadline_ms = 500").await;
        let mut bound = Web::bound(addr, "web-binds", "user-binds", None).await;
        let mut idle = Web::connect(addr).await;
        idle.handshake("web-never-binds").await;
        let started = std::time::Instant::now();
        assert_eq!(
            idle.expect_close().await,
            (CloseCode::Policy, "bind timeout".to_owned())
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed after {:?}",
            started.elapsed()
        );
        eventually(WAIT, "the bind-deadline limit counts the close", || async {
            let limits = server.http_get("/v1/limits").await.json();
            let hits = limits["limits"]
                .as_array()?
                .iter()
                .find(|l| l["name"] == "bind-deadline")?["hits"]
                .as_u64()?;
            (hits == 1).then_some(())
        })
        .await;
        // The one that bound in time is kept past the deadline.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let status = http_push(&server, json!({"userId": "user-binds", "content": "kept"})).await;
        assert_eq!(status["status"], "success", "{status}");
        assert_eq!(bound.expect_push().await["body"]["content"], "kept");
    })
    .await;
}
