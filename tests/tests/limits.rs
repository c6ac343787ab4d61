//! The node's limits through the real binary: a flood of connections from one address, too
//! many new connections per second, a connection that never handshakes, a PushClient that
//! never reads its statuses. Each is refused or closed, counted in `GET /v1/limits` and
//! `/metrics`, and leaves other connections working.
#![cfg(not(madsim))]

use bytes::BytesMut;
use pushgate::client::SinglePushRequest;
use pushgate_core::command::Command;
use pushgate_core::frame::Packet;
use pushgate_core::message::{Body, GatewayPush};
use pushgate_core::push::AckMode;
use pushgate_core::PushStatus;
use pushgate_tests::{bounded, eventually, TestServer};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const LIMIT: Duration = Duration::from_secs(40);
const WAIT: Duration = Duration::from_secs(10);

/// A connection to `to` from the loopback address `from` (Linux routes all of 127.0.0.0/8).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.expect("connect")
}

/// True when the server closed `stream` within `within` (EOF or reset); false when it is
/// still open.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

async fn limits(server: &TestServer) -> Value {
    let response = server.http_get("/v1/limits").await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn limit<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no limit {name} in {body}"))
}

async fn hits(server: &TestServer, name: &str) -> u64 {
    limit(&limits(server).await, name)["hits"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_capped_and_others_still_connect() {
    bounded(LIMIT, async {
        let server = TestServer::start_toml(
            "[limits]\nper_address_exempt = []\nmax_connections_per_address = 5\nnew_connections_per_second_per_address = 0\n",
        )
        .await;
        let body = limits(&server).await;
        assert_eq!(limit(&body, "connections-per-address")["value"], 5);
        assert_eq!(
            limit(&body, "connections-per-address")["key"],
            "limits.max_connections_per_address"
        );
        let mut flood = Vec::new();
        for _ in 0..20 {
            flood.push(connect_from([127, 0, 0, 2], server.connect).await);
        }
        let mut refused = 0;
        let mut open = Vec::new();
        for mut stream in flood {
            if closed_by_server(&mut stream, Duration::from_millis(500)).await {
                refused += 1;
            } else {
                open.push(stream);
            }
        }
        assert_eq!((refused, open.len()), (15, 5), "5 held, the rest closed");
        assert_eq!(hits(&server, "connections-per-address").await, 15);
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.count(
                "pushgate_limit_hits_total",
                &[("limit", "connections-per-address")]
            ),
            15.0
        );
        // Another address is unaffected: a phone handshakes, binds and gets a push.
        let _device = server.bound_device("device-f", "user-f", &[]).await;
        let result = server
            .push_client()
            .await
            .push(SinglePushRequest::new("user-f", b"hi".to_vec()))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success);
        // A slot comes back when one of the five closes.
        drop(open.pop());
        let mut again = eventually(WAIT, "a freed slot is reused", || async {
            let mut stream = connect_from([127, 0, 0, 2], server.connect).await;
            (!closed_by_server(&mut stream, Duration::from_millis(300)).await).then_some(stream)
        })
        .await;
        assert!(!closed_by_server(&mut again, Duration::from_millis(100)).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_second_from_one_address_are_capped() {
    bounded(LIMIT, async {
        let server = TestServer::start_toml(
            "[limits]\nper_address_exempt = []\nmax_connections_per_address = 0\nnew_connections_per_second_per_address = 3\n",
        )
        .await;
        let mut streams = Vec::new();
        for _ in 0..10 {
            streams.push(connect_from([127, 0, 0, 3], server.connect).await);
        }
        let mut refused = 0;
        for stream in &mut streams {
            if closed_by_server(stream, Duration::from_millis(300)).await {
                refused += 1;
            }
        }
        // Ten connections in well under a second: three admitted (six if a second began).
        assert!((4..=7).contains(&refused), "refused {refused}");
        assert_eq!(
            hits(&server, "new-connections-per-second-per-address").await,
            refused
        );
        let _device = server.bound_device("device-r", "user-r", &[]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_handshakes_is_closed_at_the_deadline() {
    bounded(LIMIT, async {
        let server = TestServer::start_toml("[core]\nhandshake_deadline_ms = 400\n").await;
        let mut idle = TcpStream::connect(server.connect).await.unwrap();
        let device = server.bound_device("device-h", "user-h", &[]).await;
        assert!(
            closed_by_server(&mut idle, WAIT).await,
            "closed at the handshake deadline"
        );
        eventually(WAIT, "the deadline is counted", || async {
            (hits(&server, "handshake-deadline").await >= 1).then_some(())
        })
        .await;
        let metrics = server.metrics().await;
        assert!(
            metrics.count(
                "pushgate_limit_hits_total",
                &[("limit", "handshake-deadline")]
            ) >= 1.0
        );
        // The handshaken phone is kept.
        let result = server
            .push_client()
            .await
            .push(SinglePushRequest::new("user-h", b"hi".to_vec()))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success);
        drop(device);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshaken_connection_that_never_binds_is_closed_at_the_bind_deadline() {
    bounded(LIMIT, async {
        let server = TestServer::start_toml("[core]\nbind_deadline_ms = 500\n").await;
        let unbound = server
            .device_with(server.device_options("device-unbound"))
            .await;
        let device = server.bound_device("device-b", "user-b", &[]).await;
        loop {
            match unbound.next_event_within(WAIT).await {
                Ok(pushgate::client::DeviceEvent::Closed) => break,
                Ok(_) => continue,
                Err(error) => panic!("not closed at the bind deadline: {error}"),
            }
        }
        eventually(WAIT, "the deadline is counted", || async {
            (hits(&server, "bind-deadline").await >= 1).then_some(())
        })
        .await;
        // The bound phone is kept past the deadline.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let result = server
            .push_client()
            .await
            .push(SinglePushRequest::new("user-b", b"hi".to_vec()))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success);
        drop(device);
    })
    .await;
}

/// A GATEWAY_PUSH frame as a PushClient sends it.
fn push_frame(user: &str, sid: i32, ack: AckMode, timeout_ms: i32) -> Vec<u8> {
    let message = GatewayPush {
        user_id: user.to_owned(),
        timeout_ms,
        content: bytes::Bytes::from_static(b"never read"),
        ..GatewayPush::default()
    };
    let mut body = BytesMut::new();
    message.encode(&mut body);
    let mut out = BytesMut::new();
    Packet::new(Command::GatewayPush.code(), ack.flags(), sid, body.freeze()).encode(&mut out);
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_client_that_never_reads_its_statuses_is_dropped() {
    bounded(Duration::from_secs(60), async {
        let server = TestServer::start_toml(
            "[limits]\nmax_gateway_queued_bytes = 65536\n[flow]\nglobal_limit_per_second = 0\n",
        )
        .await;
        // The phone reads every push but acknowledges none: each push waits for its ACK and
        // times out, and all the answers come at once.
        let _device = server.silent_device("device-q", "user-q").await;
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut greedy = socket.connect(server.gateway).await.unwrap();
        let mut frames = Vec::new();
        for sid in 1..=4_000 {
            frames.extend_from_slice(&push_frame("user-q", sid, AckMode::Auto, 1000));
        }
        greedy.write_all(&frames).await.unwrap();
        greedy.flush().await.unwrap();
        eventually(
            Duration::from_secs(30),
            "the unread statuses pass the limit",
            || async { (hits(&server, "gateway-queued-bytes").await >= 1).then_some(()) },
        )
        .await;
        eventually(WAIT, "the greedy connection is gone", || async {
            let body = limits(&server).await;
            (body["current"]["gatewayConnections"] == 0).then_some(())
        })
        .await;
        // Other PushClients and the phone are unaffected.
        let result = server
            .push_client()
            .await
            .push(SinglePushRequest::new("user-q", b"still here".to_vec()))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.count(
                "pushgate_limit_hits_total",
                &[("limit", "gateway-queued-bytes")]
            ),
            1.0
        );
        drop(greedy);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_user_ids_and_tags_are_refused_and_counted_apart() {
    bounded(LIMIT, async {
        let server =
            TestServer::start_toml("[limits]\nmax_user_id_bytes = 16\nmax_tags_bytes = 32\n").await;
        let body = limits(&server).await;
        assert_eq!(limit(&body, "user-id-length")["value"], 16);
        assert_eq!(
            limit(&body, "user-id-length")["key"],
            "limits.max_user_id_bytes"
        );
        assert_eq!(limit(&body, "tags-length")["value"], 32);

        let long_user = server.device_with(server.device_options("device-u")).await;
        let error = long_user.bind(&"u".repeat(17), &[]).await.unwrap_err();
        assert!(error.to_string().contains("invalid param"), "{error}");
        let long_tags = server.device_with(server.device_options("device-t")).await;
        let tags = ["tag-0123456789", "tag-0123456789", "tag-0123"];
        let error = long_tags.bind("user-t", &tags).await.unwrap_err();
        assert!(error.to_string().contains("invalid param"), "{error}");
        let error = long_tags
            .bind("user-t2", &["t"])
            .await
            .expect_err("the refused connection is closed");
        assert!(
            matches!(error, pushgate::client::ClientError::Closed),
            "{error}"
        );

        assert_eq!(hits(&server, "user-id-length").await, 1);
        assert_eq!(hits(&server, "tags-length").await, 1);
        assert_eq!(
            hits(&server, "frame-size").await,
            0,
            "not counted elsewhere"
        );
        let metrics = server.metrics().await;
        for name in ["user-id-length", "tags-length"] {
            assert_eq!(
                metrics.count("pushgate_limit_hits_total", &[("limit", name)]),
                1.0,
                "{name}"
            );
        }
        // Lengths at the limit bind, and other phones are unaffected.
        let fine = server
            .bound_device(
                "device-f",
                &"u".repeat(16),
                &["0123456789012345678901234567890"],
            )
            .await;
        let result = server
            .push_client()
            .await
            .push(SinglePushRequest::new("u".repeat(16), b"hi".to_vec()))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        drop(fine);
    })
    .await;
}
