//! TLS through the real binary, with certificates made at test time (rcgen): the gateway, the
//! TLS connection port (MPush's protocol inside TLS) and the admin API accept a client that
//! trusts the server's CA; a client trusting another CA and plaintext on a TLS port are closed
//! (counted in `pushgate_tls_handshake_failures_total`) without disturbing other connections;
//! SIGHUP loads a new certificate.
#![cfg(not(madsim))]

use bytes::BytesMut;
use pushgate::client::DeviceClient;
use pushgate_core::command::Command;
use pushgate_core::frame::{Frame, FrameDecoder, Packet};
use pushgate_core::message::{Body, GatewayPush};
use pushgate_core::push::AckMode;
use pushgate_tests::{
    bounded, eventually, expect_push, CliProcess, ScratchDir, ServerOptions, TestServer,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(40);
const WAIT: Duration = Duration::from_secs(10);

/// A certificate authority and a leaf it signed for `localhost` / 127.0.0.1.
struct Pki {
    ca_der: CertificateDer<'static>,
    leaf_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    Pki {
        ca_der: ca.der().clone(),
        leaf_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

fn write_pki(dir: &Path, pki: &Pki) -> (PathBuf, PathBuf) {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, &pki.leaf_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    (cert, key)
}

fn connector(ca: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector(ca).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single push frame as a PushClient sends it.
fn push_frame(user: &str, sid: i32) -> Vec<u8> {
    let message = GatewayPush {
        user_id: user.to_owned(),
        timeout_ms: 2500,
        content: bytes::Bytes::from_static(b"over tls"),
        ..GatewayPush::default()
    };
    let mut body = BytesMut::new();
    message.encode(&mut body);
    let mut out = BytesMut::new();
    Packet::new(
        Command::GatewayPush.code(),
        AckMode::None.flags(),
        sid,
        body.freeze(),
    )
    .encode(&mut out);
    out.to_vec()
}

/// Sends a push on `stream` and reads its answer.
async fn push_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &str,
    sid: i32,
) -> Packet {
    stream.write_all(&push_frame(user, sid)).await.unwrap();
    stream.flush().await.unwrap();
    let decoder = FrameDecoder::new(1 << 20);
    let mut inbound = BytesMut::new();
    loop {
        if let Some(Frame::Packet(packet)) = decoder.decode(&mut inbound).unwrap() {
            return packet;
        }
        let n = tokio::time::timeout(WAIT, stream.read_buf(&mut inbound))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before answering");
    }
}

fn tls_failures(server: &TestServer, metrics: &pushgate_tests::Metrics, port: &str) -> f64 {
    let _ = server;
    metrics.count("pushgate_tls_handshake_failures_total", &[("port", port)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_gateway_and_connection_port_serve_trusting_clients_only() {
    bounded(LIMIT, async {
        let dir = ScratchDir::new("tls");
        let good = pki();
        let other = pki();
        let (cert, key) = write_pki(dir.path(), &good);
        let tls_port = free_port();
        let server = TestServer::start_with(ServerOptions {
            toml: "[tls]\nhandshake_timeout_ms = 1000\n".to_owned(),
            args: vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
                "--gateway-tls".into(),
                "--connect-tls-port".into(),
                tls_port.to_string(),
            ],
        })
        .await;
        let tls_connect_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));

        // A phone on the plain port (MPush's SDKs) and one inside TLS, same protocol.
        let plain = server.bound_device("device-plain", "user-plain", &[]).await;
        let stream = tls_connect(tls_connect_addr, &good.ca_der).await.unwrap();
        let local = stream.get_ref().0.local_addr().ok();
        let secure = DeviceClient::connect_over(stream, local, server.device_options("device-tls"))
            .await
            .expect("MPush's handshake inside TLS");
        secure.bind("user-tls", &[]).await.unwrap();

        // The gateway over TLS pushes to both.
        let mut gateway = tls_connect(server.gateway, &good.ca_der).await.unwrap();
        for (sid, user) in [(1, "user-plain"), (2, "user-tls")] {
            let answer = push_over(&mut gateway, user, sid).await;
            assert_eq!(
                (answer.cmd, answer.session_id),
                (Command::Ok.code(), sid),
                "{user}"
            );
        }
        assert_eq!(&expect_push(&plain, WAIT).await.content[..], b"over tls");
        assert_eq!(&expect_push(&secure, WAIT).await.content[..], b"over tls");

        // A client trusting another CA: its handshake fails, the server closes it.
        let wrong = tls_connect(server.gateway, &other.ca_der).await;
        let error = wrong.expect_err("another CA is not trusted");
        assert!(error.to_string().contains("certificate"), "{error}");
        assert!(tls_connect(tls_connect_addr, &other.ca_der).await.is_err());
        // Plaintext on the TLS ports: closed (an alert at most), never an MPush answer.
        for addr in [server.gateway, tls_connect_addr] {
            let mut raw = TcpStream::connect(addr).await.unwrap();
            raw.write_all(&push_frame("user-plain", 9)).await.unwrap();
            let mut answer = Vec::new();
            let read = tokio::time::timeout(WAIT, raw.read_to_end(&mut answer)).await;
            assert!(read.is_ok(), "{addr}: plaintext is closed");
            let mut buf = BytesMut::from(&answer[..]);
            let decoded = FrameDecoder::new(1 << 20).decode(&mut buf);
            assert!(
                !matches!(decoded, Ok(Some(Frame::Packet(ref p))) if p.cmd == Command::Ok.code()),
                "{addr}: no push was made from plaintext"
            );
        }
        // A TLS peer that never finishes its handshake is closed at the deadline.
        let mut silent = TcpStream::connect(tls_connect_addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(WAIT, silent.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "closed at the TLS deadline"
        );

        let metrics = eventually(WAIT, "failures counted", || async {
            let metrics = server.metrics().await;
            (tls_failures(&server, &metrics, "gateway") >= 2.0
                && tls_failures(&server, &metrics, "connection") >= 3.0)
                .then_some(metrics)
        })
        .await;
        assert_eq!(tls_failures(&server, &metrics, "admin"), 0.0);
        // Everyone else is unaffected.
        let answer = push_over(&mut gateway, "user-tls", 3).await;
        assert_eq!(answer.cmd, Command::Ok.code());
        assert_eq!(&expect_push(&secure, WAIT).await.content[..], b"over tls");
    })
    .await;
}

/// An HTTPS GET over `stream`; the status code.
async fn https_get(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    path: &str,
) -> std::io::Result<u16> {
    let mut stream = tls_connect(addr, ca).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // Read until the response is whole (the server may keep the TLS session open a while).
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(response) = pushgate_tests::http::parse(&raw) {
            return Ok(response.status);
        }
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&chunk[..n]),
            _ => return pushgate_tests::http::parse(&raw).map(|r| r.status),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_admin_and_certificate_reload_on_sighup() {
    bounded(LIMIT, async {
        let dir = ScratchDir::new("tls-admin");
        let first = pki();
        let second = pki();
        let (cert, key) = write_pki(dir.path(), &first);
        // The admin port is picked free and then bound by the server: retried if another
        // process took it in between.
        let mut started = None;
        for _ in 0..3 {
            let admin_port = free_port();
            let config = dir.path().join("pushgate.toml");
            std::fs::write(
                &config,
                format!(
                    "[net]\nconnect_bind = \"127.0.0.1\"\nconnect_port = 0\ngateway_port = 0\nadmin_port = {admin_port}\n\
                     [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nadmin = true\n",
                    cert.display(),
                    key.display()
                ),
            )
            .unwrap();
            let process = CliProcess::spawn(&["serve", "--config", config.to_str().unwrap()]);
            let line = process
                .stderr
                .wait_for(WAIT, |line| line.contains("pushgate serving") || line.contains("in use"))
                .await;
            match line {
                Some(line) if line.contains("pushgate serving") => {
                    started = Some((process, admin_port));
                    break;
                }
                Some(_) => continue,
                None => panic!("{}", process.transcript()),
            }
        }
        let (process, admin_port) = started.expect("a free admin port in three tries");
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        assert_eq!(https_get(admin, &first.ca_der, "/healthz").await.unwrap(), 200);
        assert_eq!(https_get(admin, &first.ca_der, "/v1/stats").await.unwrap(), 200);
        // Plain HTTP on the HTTPS port gets no HTTP answer.
        let plain = pushgate_tests::http::get(admin, "/healthz").await;
        assert!(plain.is_err() || plain.unwrap().status != 200);
        assert!(https_get(admin, &second.ca_der, "/healthz").await.is_err());

        // New files, SIGHUP: new connections get the new certificate.
        write_pki(dir.path(), &second);
        let status = std::process::Command::new("kill")
            .args(["-HUP", &process.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        eventually(WAIT, "the new certificate is served", || async {
            https_get(admin, &second.ca_der, "/healthz")
                .await
                .ok()
                .filter(|s| *s == 200)
        })
        .await;
        assert!(https_get(admin, &first.ca_der, "/healthz").await.is_err());
        // A broken file on reload keeps the current pair.
        std::fs::write(&key, "not a key").unwrap();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &process.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let failed = process
            .stderr
            .wait_for(WAIT, |line| line.contains("TLS reload failed"))
            .await;
        assert!(failed.is_some(), "{}", process.transcript());
        assert_eq!(https_get(admin, &second.ca_der, "/healthz").await.unwrap(), 200);
    })
    .await;
}

/// The next text message of a web connection (pings and pongs skipped).
async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the connection is open")
            .expect("a readable message");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// `--ws-tls`: pages connect with wss://, MPush's JSON packets inside TLS, and a push sent
/// over the HTTP API reaches them; a client trusting another CA and a plain ws:// client are
/// refused on that port (counted under `port="ws"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_clients_connect_over_wss() {
    use futures_util::SinkExt;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::Message;
    bounded(LIMIT, async {
        let dir = ScratchDir::new("wss");
        let good = pki();
        let other = pki();
        let (cert, key) = write_pki(dir.path(), &good);
        let ws_port = free_port();
        let server = TestServer::start_with(ServerOptions {
            toml: format!(
                "[net]\nws_port = {ws_port}\nws_bind = \"127.0.0.1\"\n[tls]\nhandshake_timeout_ms = 1000\n"
            ),
            args: vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
                "--ws-tls".into(),
            ],
        })
        .await;
        let addr = SocketAddr::from(([127, 0, 0, 1], ws_port));

        let stream = tls_connect(addr, &good.ca_der).await.expect("TLS to the ws port");
        let (mut ws, _) =
            tokio_tungstenite::client_async(format!("wss://localhost:{ws_port}/"), stream)
                .await
                .expect("a WebSocket upgrade inside TLS");
        let send = |cmd: u8, sid: i32, body: serde_json::Value| {
            Message::Text(
                json!({"cmd": cmd, "flags": 16, "sessionId": sid, "body": body})
                    .to_string()
                    .into(),
            )
        };
        ws.send(send(
            2,
            1,
            json!({"deviceId": "page-wss", "osName": "web", "osVersion": "test", "clientVersion": "1.0"}),
        ))
        .await
        .unwrap();
        let handshake = next_text(&mut ws).await;
        assert!(handshake.contains("\"cmd\":2"), "{handshake}");
        ws.send(send(5, 2, json!({"userId": "user-wss"})))
            .await
            .unwrap();
        let bound = next_text(&mut ws).await;
        assert!(bound.contains("bind success"), "{bound}");

        let body = server
            .http_post(
                "/v1/push",
                &json!({"userId": "user-wss", "content": "over wss", "ack": "none"}),
            )
            .await
            .json();
        assert_eq!(body["status"], json!("success"), "{body}");
        let push = next_text(&mut ws).await;
        assert!(
            push.contains("\"cmd\":15") && push.contains("over wss"),
            "{push}"
        );

        // Another CA's client and a plain ws:// client get no WebSocket there.
        assert!(tls_connect(addr, &other.ca_der).await.is_err());
        let plain = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/")),
        )
        .await;
        assert!(
            !matches!(plain, Ok(Ok(_))),
            "a plain WebSocket upgrade on the wss port"
        );
        eventually(WAIT, "failures counted under ws", || async {
            let metrics = server.metrics().await;
            (tls_failures(&server, &metrics, "ws") >= 2.0).then_some(())
        })
        .await;
        // The page over wss is unaffected.
        ws.send(send(5, 3, json!({"userId": "user-wss"})))
            .await
            .unwrap();
        assert!(next_text(&mut ws).await.contains("bind success"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_forward_pushes_to_each_other_over_tls_gateways() {
    let redis = pushgate_tests::redis::RedisServer::start();
    bounded(Duration::from_secs(60), async {
        let dir = ScratchDir::new("tls-nodes");
        let good = pki();
        let (cert, key) = write_pki(dir.path(), &good);
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem(&good.ca_der)).unwrap();
        let node = || {
            TestServer::start_with(ServerOptions {
                toml: String::new(),
                args: vec![
                    "--redis".into(),
                    redis.url(),
                    "--tls-cert".into(),
                    cert.display().to_string(),
                    "--tls-key".into(),
                    key.display().to_string(),
                    "--gateway-tls".into(),
                    "--gateway-ca".into(),
                    ca.display().to_string(),
                ],
            })
        };
        let a = node().await;
        let b = node().await;
        let phone = a.bound_device("device-a", "user-tls", &[]).await;

        // B does not hold the user: it forwards to A's TLS gateway and answers A's status.
        let body = serde_json::json!({"userId": "user-tls", "content": "via b", "ack": "auto"});
        let answer = eventually(WAIT, "B forwards to A over TLS", || {
            let b = &b;
            let body = body.clone();
            async move {
                let response = b.http_post("/v1/push", &body).await;
                let json = response.json();
                (json["status"] == "ack-success").then_some(json)
            }
        })
        .await;
        assert_eq!(answer["userId"], "user-tls", "{answer}");
        assert_eq!(&expect_push(&phone, WAIT).await.content[..], b"via b");

        // pushgate's PushClient and `pushgate push` reach a TLS gateway with the CA.
        let tls = pushgate::client::GatewayTls::from_ca_file(&ca, None).unwrap();
        let client = pushgate::client::PushClient::connect_with_tls(
            a.gateway,
            pushgate::client::PushClientOptions::default(),
            Some(tls),
        )
        .await
        .unwrap();
        let result = client
            .push(pushgate::client::SinglePushRequest::new(
                "user-tls",
                b"library".to_vec(),
            ))
            .await
            .unwrap();
        assert_eq!(
            result.status,
            pushgate_core::PushStatus::Success,
            "{result:?}"
        );
        assert_eq!(&expect_push(&phone, WAIT).await.content[..], b"library");
        let gateway = a.gateway.to_string();
        let ca_arg = ca.display().to_string();
        let mut cli = CliProcess::spawn(&[
            "push",
            "--gateway",
            gateway.as_str(),
            "--tls-ca",
            ca_arg.as_str(),
            "--user",
            "user-tls",
            "--content",
            "cli",
        ]);
        let status = cli.finish(WAIT).await;
        assert!(status.success(), "{}", cli.transcript());
        assert_eq!(&expect_push(&phone, WAIT).await.content[..], b"cli");

        // Trusting another CA, the client is refused by its own check.
        let other = pki();
        let other_ca = dir.path().join("other-ca.pem");
        std::fs::write(&other_ca, ca_pem(&other.ca_der)).unwrap();
        let wrong = pushgate::client::GatewayTls::from_ca_file(&other_ca, None).unwrap();
        let refused = pushgate::client::PushClient::connect_with_tls(
            a.gateway,
            pushgate::client::PushClientOptions::default(),
            Some(wrong),
        )
        .await;
        let error = refused.expect_err("another CA is not trusted");
        assert!(error.to_string().contains("certificate"), "{error}");
    })
    .await;
}

/// A certificate as PEM text.
fn ca_pem(der: &CertificateDer<'static>) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}
