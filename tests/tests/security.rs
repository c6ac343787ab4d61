//! The business ports on the open internet, through the real binary: bearer tokens on the
//! admin API, the gateway's token (pushgate's PushClient) and allow-list (MPush's Java
//! PushClient), `pushgate serve` refusing unguarded ports and, with `--production`, every unsafe
//! setting. Each refusal is a clear answer, counted in `/v1/limits` and `/metrics`, and leaves
//! other connections working.
#![cfg(not(madsim))]

use bytes::BytesMut;
use pushgate::client::{ClientError, PushClient, PushClientOptions, SinglePushRequest};
use pushgate_core::command::{Command, PUSHGATE_GATEWAY_AUTH};
use pushgate_core::frame::{Flags, Frame, FrameDecoder, Packet};
use pushgate_core::message::{Body, ErrorMessage, GatewayPush};
use pushgate_core::PushStatus;
use pushgate_tests::{bounded, http, CliProcess, ServerOptions, TestServer};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(30);
const OLD_TOKEN: &str = "old-admin-token-0123456789";
const NEW_TOKEN: &str = "new-admin-token-0123456789";
const GW_TOKEN: &str = "gateway-token-0123456789ab";
const GW_TOKEN_NEXT: &str = "gateway-token-next-0123456789";

async fn get_with(server: &TestServer, path: &str, token: Option<&str>) -> http::Response {
    let header = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = header
        .iter()
        .map(|h| ("Authorization", h.as_str()))
        .collect();
    http::request_with(server.admin, "GET", path, &headers, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The hits of `name` in `GET /v1/limits`.
async fn limit_hits(server: &TestServer, token: Option<&str>, name: &str) -> u64 {
    let response = get_with(server, "/v1/limits", token).await;
    assert_eq!(response.status, 200, "/v1/limits: {}", response.text());
    let body = response.json();
    body["limits"]
        .as_array()
        .expect("a list of limits")
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no limit {name} in {body}"))["hits"]
        .as_u64()
        .expect("hits")
}

fn push_client_options(token: Option<&str>) -> PushClientOptions {
    PushClientOptions {
        token: token.map(str::to_owned),
        ..PushClientOptions::default()
    }
}

async fn push_with_token(
    gateway: SocketAddr,
    token: Option<&str>,
    user: &str,
) -> Result<pushgate::client::PushResult, ClientError> {
    let client = PushClient::connect_with(gateway, push_client_options(token)).await?;
    let result = client
        .push(SinglePushRequest::new(user, b"hello".to_vec()))
        .await;
    client.close();
    result
}

/// What MPush's Java PushClient sends: a GATEWAY_PUSH first, no token.
fn java_push_frame(user: &str, sid: i32) -> Vec<u8> {
    let message = GatewayPush {
        user_id: user.to_owned(),
        timeout_ms: 2500,
        content: bytes::Bytes::from_static(b"from java"),
        ..GatewayPush::default()
    };
    let mut body = BytesMut::new();
    message.encode(&mut body);
    let mut out = BytesMut::new();
    Packet::new(Command::GatewayPush.code(), Flags(0), sid, body.freeze()).encode(&mut out);
    out.to_vec()
}

/// Sends `bytes` on a fresh gateway connection and reads until the server closes it (bounded):
/// the first packet answered, if any.
async fn raw_gateway_exchange(gateway: SocketAddr, bytes: &[u8]) -> Option<Packet> {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the gateway closes a refused connection");
    let mut buf = BytesMut::from(&raw[..]);
    match FrameDecoder::new(1 << 20)
        .decode(&mut buf)
        .expect("a frame")
    {
        Some(Frame::Packet(packet)) => Some(packet),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_one_of_its_bearer_tokens() {
    bounded(LIMIT, async {
        let server = TestServer::start_with(ServerOptions {
            args: vec![
                "--admin-token".into(),
                OLD_TOKEN.into(),
                "--admin-token".into(),
                NEW_TOKEN.into(),
            ],
            ..ServerOptions::default()
        })
        .await;
        let missing = get_with(&server, "/v1/stats", None).await;
        assert_eq!(missing.status, 401, "{}", missing.text());
        assert!(
            missing.json()["error"].as_str().unwrap().contains("Bearer"),
            "says what is missing: {}",
            missing.text()
        );
        assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
        let wrong = get_with(&server, "/v1/stats", Some("not-the-token-0123456789")).await;
        assert_eq!(wrong.status, 401);
        assert!(wrong.text().contains("not accepted"), "{}", wrong.text());
        let posted = http::post_json(
            server.admin,
            "/v1/push",
            &serde_json::json!({"userId": "u", "content": "x"}),
        )
        .await
        .unwrap();
        assert_eq!(posted.status, 401, "pushes need the token too");
        let metrics = get_with(&server, "/metrics", None).await;
        assert_eq!(metrics.status, 401, "metrics need the token too");
        // Both tokens work at once (rotation); /healthz needs none.
        for token in [OLD_TOKEN, NEW_TOKEN] {
            let ok = get_with(&server, "/v1/stats", Some(token)).await;
            assert_eq!(ok.status, 200, "{}", ok.text());
        }
        assert_eq!(get_with(&server, "/healthz", None).await.status, 200);
        assert_eq!(limit_hits(&server, Some(NEW_TOKEN), "admin-auth").await, 4);
        let metrics = get_with(&server, "/metrics", Some(OLD_TOKEN)).await.text();
        assert!(
            metrics.contains("pushgate_limit_hits_total{limit=\"admin-auth\"} 4"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_needs_a_token_first_or_an_allowed_source() {
    bounded(LIMIT, async {
        let server = TestServer::start_with(ServerOptions {
            args: vec![
                "--gateway-token".into(),
                GW_TOKEN.into(),
                "--gateway-token".into(),
                GW_TOKEN_NEXT.into(),
            ],
            ..ServerOptions::default()
        })
        .await;
        let _device = server.bound_device("device-s", "user-s", &[]).await;

        // Both configured tokens push (rotation).
        for token in [GW_TOKEN, GW_TOKEN_NEXT] {
            let result = push_with_token(server.gateway, Some(token), "user-s")
                .await
                .expect("a push with a right token");
            assert_eq!(result.status, PushStatus::Success, "{result:?}");
        }
        // A wrong token: the client reports the gateway's refusal.
        let wrong = push_with_token(server.gateway, Some("wrong-token-0123456789"), "user-s").await;
        match wrong {
            Err(ClientError::Rejected { cmd, reason, .. }) => {
                assert_eq!(cmd, PUSHGATE_GATEWAY_AUTH);
                assert!(reason.contains("not accepted"), "{reason}");
            }
            other => panic!("a wrong token must be rejected, got {other:?}"),
        }
        // No token, as MPush's Java PushClient: its push is answered ERROR, then closed.
        let answer = raw_gateway_exchange(server.gateway, &java_push_frame("user-s", 41))
            .await
            .expect("an ERROR answer");
        assert_eq!((answer.cmd, answer.session_id), (Command::Error.code(), 41));
        let error = ErrorMessage::decode(&answer.body).unwrap();
        assert_eq!(error.cmd, Command::GatewayPush.code());
        assert!(error.reason.contains("token"), "{}", error.reason);
        // Silence is closed at the auth deadline without an answer; garbage at once.
        assert!(raw_gateway_exchange(server.gateway, &[0xff; 20])
            .await
            .is_none());

        // Meanwhile a right token still works, and the device was untouched.
        let result = push_with_token(server.gateway, Some(GW_TOKEN), "user-s")
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success);
        assert!(limit_hits(&server, None, "gateway-auth").await >= 3);
        let metrics = server.metrics().await;
        assert!(metrics.count("pushgate_limit_hits_total", &[("limit", "gateway-auth")]) >= 3.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpush_push_clients_are_admitted_from_the_allow_list_only() {
    bounded(LIMIT, async {
        // Loopback is allowed: a client without a token (MPush's Java PushClient) pushes.
        let allowed = TestServer::start_toml(&format!(
            "[security]\ngateway_tokens = [\"{GW_TOKEN}\"]\ngateway_allow = [\"127.0.0.0/8\"]\n"
        ))
        .await;
        let _device = allowed.bound_device("device-a", "user-a", &[]).await;
        let result = push_with_token(allowed.gateway, None, "user-a")
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        // A token it sends anyway must be right.
        let wrong =
            push_with_token(allowed.gateway, Some("wrong-token-0123456789"), "user-a").await;
        assert!(
            matches!(wrong, Err(ClientError::Rejected { .. })),
            "{wrong:?}"
        );

        // Only another network allowed, no tokens: loopback is refused with a clear reason.
        let elsewhere =
            TestServer::start_toml("[security]\ngateway_allow = [\"10.0.0.0/8\"]\n").await;
        let answer = raw_gateway_exchange(elsewhere.gateway, &java_push_frame("user-a", 5))
            .await
            .expect("an ERROR answer");
        let error = ErrorMessage::decode(&answer.body).unwrap();
        assert!(error.reason.contains("gateway_allow"), "{}", error.reason);
        let refused = push_with_token(elsewhere.gateway, Some(GW_TOKEN), "user-a").await;
        assert!(
            matches!(refused, Err(ClientError::Rejected { .. })),
            "{refused:?}"
        );
    })
    .await;
}

/// Runs `pushgate serve ARGS` (with free loopback-only ports unless ARGS say otherwise) and
/// expects it to refuse to start; returns what it printed.
async fn refused_start(toml: &str, args: &[&str]) -> String {
    let transcript = failed_start(toml, args).await;
    assert!(transcript.contains("refusing to start"), "{transcript}");
    transcript
}

/// Runs `pushgate serve ARGS` and expects it to exit non-zero at once.
async fn failed_start(toml: &str, args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!(
        "pushgate-refusal-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pushgate.toml");
    let base =
        "[net]\nconnect_bind = \"127.0.0.1\"\nconnect_port = 0\ngateway_port = 0\nadmin_port = 0\n";
    std::fs::write(&path, format!("{base}{toml}")).unwrap();
    let mut all = vec!["serve", "--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut process = CliProcess::spawn(&all);
    let status = process.finish(Duration::from_secs(10)).await;
    let transcript = process.transcript();
    std::fs::remove_dir_all(&dir).ok();
    assert!(!status.success(), "must refuse to start: {transcript}");
    transcript
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A fresh `[security]` key pair (what `pushgate keygen` prints).
async fn fresh_key_section() -> String {
    let mut process = CliProcess::spawn(&["keygen"]);
    let status = process.finish(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", process.transcript());
    let text = process.stdout.text();
    text.lines()
        .filter(|l| l.starts_with("private_key") || l.starts_with("public_key"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_business_ports_beyond_loopback_without_a_guard() {
    bounded(LIMIT, async {
        let text = refused_start("", &["--admin-bind", "0.0.0.0"]).await;
        assert!(text.contains("security.admin_tokens"), "{text}");
        assert!(
            !text.contains("gateway"),
            "only the admin API is named: {text}"
        );
        let text = refused_start("", &["--gateway-bind", "0.0.0.0"]).await;
        assert!(text.contains("security.gateway_tokens"), "{text}");
        assert!(text.contains("security.gateway_allow"), "{text}");
        // Guarded, both start.
        let server = TestServer::start_with(ServerOptions {
            args: [
                "--gateway-bind",
                "0.0.0.0",
                "--gateway-allow",
                "127.0.0.1",
                "--admin-bind",
                "0.0.0.0",
                "--admin-token",
                OLD_TOKEN,
            ]
            .map(String::from)
            .to_vec(),
            ..ServerOptions::default()
        })
        .await;
        assert_eq!(
            get_with(&server, "/v1/stats", Some(OLD_TOKEN)).await.status,
            200
        );
        let text = failed_start("[security]\nadmin_tokens = [\"short\"]\n", &[]).await;
        assert!(text.contains("16 to 512 bytes"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_each_unsafe_setting_with_its_fix() {
    bounded(Duration::from_secs(60), async {
        let keys = fresh_key_section().await;
        assert!(keys.contains("private_key"), "keygen printed {keys}");
        let guarded =
            format!("admin_tokens = [\"{OLD_TOKEN}\"]\ngateway_tokens = [\"{GW_TOKEN}\"]\n");
        // The published key.
        let text = refused_start(&format!("[security]\n{guarded}"), &["--production"]).await;
        assert!(text.contains("published RSA key"), "{text}");
        assert!(text.contains("pushgate keygen"), "{text}");
        assert!(!text.contains("admin API"), "{text}");
        // Unauthenticated business ports, even on loopback.
        let text = refused_start(&format!("[security]\n{keys}"), &["--production"]).await;
        assert!(text.contains("security.admin_tokens"), "{text}");
        assert!(text.contains("security.gateway_tokens"), "{text}");
        assert!(!text.contains("published"), "{text}");
        // Debug logging.
        let text = refused_start(
            &format!("[security]\n{keys}{guarded}"),
            &["--production", "--log", "pushgate=debug"],
        )
        .await;
        assert!(text.contains("debug logging"), "{text}");
        assert!(text.contains("--log info"), "{text}");
        // The config key works like the flag; all set, it starts.
        let text = refused_start("[security]\nproduction = true\n", &[]).await;
        assert!(
            text.contains("published RSA key") && text.contains("admin_tokens"),
            "{text}"
        );
        let server =
            TestServer::start_toml(&format!("[security]\nproduction = true\n{keys}{guarded}"))
                .await;
        let stats: Value = get_with(&server, "/v1/stats", Some(OLD_TOKEN)).await.json();
        assert_eq!(stats["connections"], 0);
    })
    .await;
}

/// A tiny bind-check service on a free loopback port: it records each request's JSON body
/// and answers by the user id's prefix — `ok-` allowed, `no-` refused, `err-` HTTP 500,
/// `slow-` no answer for 10 s. Stopped when dropped.
struct CheckService {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CheckService {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the check service");
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut stream).await else {
                        return;
                    };
                    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    log.lock().unwrap().push((head.clone(), json.clone()));
                    let user = json["userId"].as_str().unwrap_or_default().to_owned();
                    let (status, answer) = if user.starts_with("ok-") {
                        ("200 OK", r#"{"allow":true}"#)
                    } else if user.starts_with("no-") {
                        ("200 OK", r#"{"allow":false,"reason":"not this one"}"#)
                    } else if user.starts_with("slow-") {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        ("200 OK", r#"{"allow":true}"#)
                    } else {
                        ("500 Internal Server Error", r#"{"error":"broken"}"#)
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}/check", self.addr)
    }

    fn seen(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for CheckService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP request with a Content-Length body (bounded): the head and the body.
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some((head, buf[end + 4..end + 4 + length].to_vec()));
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bind_check_callback_allows_refuses_and_fails_safe() {
    bounded(LIMIT, async {
        let service = CheckService::start().await;
        let server = TestServer::start_with(ServerOptions {
            toml: "[security]\nbind_check_timeout_ms = 500\nbind_check_token = \"check-token-0123456789\"\n".into(),
            args: vec!["--bind-check-url".into(), service.url()],
        })
        .await;

        // Allowed: bound, and pushes reach it.
        let allowed = server.bound_device("device-ok", "ok-alice", &["vip"]).await;
        let result = server
            .push_client()
            .await
            .push(SinglePushRequest::new("ok-alice", b"hi".to_vec()))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        let seen = service.seen();
        assert_eq!(seen.len(), 1);
        let (head, json) = &seen[0];
        assert!(head.starts_with("POST /check HTTP/1.1"), "{head}");
        assert!(
            head.contains("Authorization: Bearer check-token-0123456789"),
            "{head}"
        );
        assert_eq!(json["userId"], "ok-alice");
        assert_eq!(json["deviceId"], "device-ok");
        assert_eq!(json["tags"], "vip");
        assert_eq!(json["data"], "");
        assert!(json["clientType"].is_i64(), "{json}");

        // Refused, failed (HTTP 500) and timed out: MPush's ERROR "bind failed", then closed.
        for user in ["no-bob", "err-carol", "slow-dave"] {
            let device = server.device_with(server.device_options(user)).await;
            match device.bind(user, &[]).await {
                Err(ClientError::Rejected { cmd, code, reason }) => {
                    assert_eq!((cmd, code, reason.as_str()), (5, 0, "bind failed"), "{user}");
                }
                other => panic!("{user}: expected bind failed, got {other:?}"),
            }
            pushgate_tests::expect_closed(&device, Duration::from_secs(5)).await;
            let result = server
                .push_client()
                .await
                .push(SinglePushRequest::new(user, b"hi".to_vec()))
                .await
                .unwrap();
            assert_eq!(result.status, PushStatus::Offline, "{user}: {result:?}");
        }

        // The allowed phone is unaffected; the checks are counted by outcome.
        let result = server
            .push_client()
            .await
            .push(SinglePushRequest::new("ok-alice", b"still".to_vec()))
            .await
            .unwrap();
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        let metrics = server.metrics().await;
        for (outcome, count) in [("allowed", 1.0), ("refused", 1.0), ("error", 2.0)] {
            assert_eq!(
                metrics.count("pushgate_bind_checks_total", &[("outcome", outcome)]),
                count,
                "{outcome}"
            );
        }
        drop(allowed);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bind_check_allows_only_when_configured_to() {
    bounded(LIMIT, async {
        // Nothing listens there: every check fails at once.
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{closed_port}/check");
        let refusing = TestServer::start_with(ServerOptions {
            args: vec!["--bind-check-url".into(), url.clone()],
            ..ServerOptions::default()
        })
        .await;
        let device = refusing
            .device_with(refusing.device_options("device-1"))
            .await;
        let error = device.bind("user-1", &[]).await.unwrap_err();
        assert!(error.to_string().contains("bind failed"), "{error}");

        let allowing = TestServer::start_with(ServerOptions {
            toml: "[security]\nbind_check_on_error = \"allow\"\n".into(),
            args: vec!["--bind-check-url".into(), url],
        })
        .await;
        let _bound = allowing.bound_device("device-2", "user-2", &[]).await;
        let metrics = allowing.metrics().await;
        assert_eq!(
            metrics.count("pushgate_bind_checks_total", &[("outcome", "error")]),
            1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_bind_check_url_is_refused_at_start() {
    bounded(LIMIT, async {
        let mut serve = CliProcess::spawn(&[
            "serve",
            "--connect-port",
            "0",
            "--gateway-port",
            "0",
            "--admin-port",
            "0",
            "--bind-check-url",
            "https://auth.example/check",
        ]);
        let status = serve.finish(Duration::from_secs(10)).await;
        assert!(!status.success());
        assert!(
            serve.transcript().contains("security.bind_check_url"),
            "{}",
            serve.transcript()
        );
    })
    .await;
}
