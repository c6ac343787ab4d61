//! The demo page in a real browser: `pushgate serve` with the WebSocket listener on, the page
//! it serves at the WebSocket path opened in headless Chromium (Debian's `chromium`), driven
//! over the DevTools protocol: connect, bind, one push with `ack: "auto"` (the client
//! acknowledges it) and one with `"biz"` (acknowledged with the page's Ack button); the HTTP
//! API answers ack-success for both; the browser's connection runs permessage-deflate (the
//! handshake's answer, seen over the DevTools protocol, and the server's count). A screenshot of the page is kept in
//! `target/web-client/demo.png`. Then the connection drops and the client reconnects, binds
//! again and gets pushes; an operator's kick closes it for good.
//!
//! Chromium missing is a failure with the command that installs it, never a skip.
#![cfg(not(madsim))]

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use pushgate_tests::{bounded, http, workspace_root, ScratchDir, TestServer};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const LIMIT: Duration = Duration::from_secs(90);
const INSTALL: &str = "apt-get install -y chromium";

/// The Chromium executable: `$CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    for name in ["chromium", "chromium-browser"] {
        if let Ok(output) = Command::new("which").arg(name).output() {
            if output.status.success() {
                let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
                if !path.is_empty() {
                    return PathBuf::from(path);
                }
            }
        }
    }
    panic!("the browser test needs Chromium, which is not installed: run `{INSTALL}` (or set CHROMIUM to its executable)");
}

/// A headless Chromium, killed on drop.
struct Browser {
    child: Child,
    devtools: SocketAddr,
    _profile: ScratchDir,
}

impl Browser {
    fn launch(url: &str) -> Self {
        let profile = ScratchDir::new("chromium");
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1000,760",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Chromium ({e}); install it: `{INSTALL}`"));
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    let _ = tx.send(Ok(rest.split('/').next().unwrap_or("").to_owned()));
                } else if seen.len() < 50 {
                    seen.push(line);
                    continue;
                }
            }
            let _ = tx.send(Err(seen.join("\n")));
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(log)) => panic!("Chromium exited before its DevTools listened:\n{log}"),
            Err(_) => panic!("Chromium's DevTools did not listen within 20 s"),
        };
        Self {
            child,
            devtools: addr.parse().expect("DevTools address"),
            _profile: profile,
        }
    }

    /// The DevTools WebSocket of the page showing `url_prefix`.
    async fn page_socket(&self, url_prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        loop {
            let listed = devtools_get(self.devtools, "/json/list").await;
            last = listed.clone().or(last);
            if let Some(body) = listed {
                if let Ok(Value::Array(targets)) = serde_json::from_str::<Value>(&body) {
                    for target in targets {
                        let url = target["url"].as_str().unwrap_or("");
                        if target["type"] == "page" && url.starts_with(url_prefix) {
                            if let Some(ws) = target["webSocketDebuggerUrl"].as_str() {
                                return ws.to_owned();
                            }
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no page target for {url_prefix}; targets: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The body of a GET to Chromium's DevTools HTTP endpoint (read by its Content-Length: the
/// endpoint keeps the connection open, and writes its headers with no space after the colon,
/// which the tests' HTTP client does not read).
async fn devtools_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())?;
            if body.len() >= length {
                return head.starts_with("HTTP/1.1 200").then(|| body.to_owned());
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if read == 0 {
            return None;
        }
        raw.extend_from_slice(&chunk[..read]);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol session with one page: commands and their results, and the events
/// read while waiting for them (the last [`MAX_EVENTS`]).
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: std::collections::VecDeque<Value>,
}

/// The DevTools events a [`Cdp`] keeps.
const MAX_EVENTS: usize = 256;

impl Cdp {
    async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("DevTools WebSocket");
        Self {
            ws,
            next_id: 1,
            events: Default::default(),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::Text(request.to_string().into()))
            .await
            .expect("DevTools send");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer in 10 s"))
                .expect("DevTools open")
                .expect("DevTools message");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if value["id"] == id {
                if let Some(error) = value.get("error") {
                    panic!("{method}: {error}");
                }
                return value["result"].clone();
            }
            if value.get("method").is_some() {
                if self.events.len() == MAX_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(value);
            }
        }
    }

    /// Evaluates `expression` in the page; its value (JSON-serialisable).
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` every 50 ms until it is true.
    async fn wait_for(&mut self, expression: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.eval(expression).await == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let log = self.eval("document.getElementById('log').value").await;
                panic!(
                    "timed out waiting for {what}; page log:\n{}",
                    log.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Where the screenshot is kept: `$CARGO_TARGET_DIR` or the workspace's `target/`.
fn artifact_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("web-client")
}

#[tokio::test]
async fn the_demo_page_binds_and_acknowledges_auto_and_biz_pushes_in_chromium() {
    bounded(LIMIT, async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = TestServer::start_toml(&format!(
            "[net]\nws_port = {port}\nws_bind = \"127.0.0.1\"\n"
        ))
        .await;
        let page_url = format!("http://127.0.0.1:{port}/");
        let browser = Browser::launch(&page_url);
        let mut page = Cdp::connect(&browser.page_socket(&page_url).await).await;
        page.wait_for(
            "document.readyState === 'complete' && typeof PushgateClient === 'function'",
            "the page and its client",
        )
        .await;
        // The WebSocket handshake's answer is seen through the Network domain.
        page.call("Network.enable", json!({})).await;
        page.eval(
            "document.getElementById('user').value = 'browser-user';\
             document.getElementById('tags').value = 'demo';\
             document.getElementById('connect').click(); true",
        )
        .await;
        page.wait_for(
            "document.getElementById('bound').textContent === 'browser-user'",
            "the bind",
        )
        .await;

        // Chromium offered permessage-deflate and the server took it, on its own terms.
        let answer = page
            .events
            .iter()
            .filter(|e| e["method"] == "Network.webSocketHandshakeResponseReceived")
            .find_map(|e| {
                let headers = e["params"]["response"]["headers"].as_object()?;
                headers.iter().find_map(|(name, value)| {
                    name.eq_ignore_ascii_case("sec-websocket-extensions")
                        .then(|| value.as_str().unwrap_or_default().to_owned())
                })
            })
            .unwrap_or_else(|| panic!("no extension in the handshake answer: {:?}", page.events));
        assert_eq!(
            answer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let metrics = server.metrics().await;
        assert_eq!(
            metrics.value("pushgate_ws_connections_total", &[("deflate", "on")]),
            Some(1.0),
            "{}",
            metrics.0
        );

        // ack "auto": the client acknowledges it as it arrives.
        let auto = server
            .http_post(
                "/v1/push",
                &json!({"userId": "browser-user", "content": "hello from the API (auto)", "ack": "auto"}),
            )
            .await;
        assert_eq!(auto.json()["status"], "ack-success", "{}", auto.text());

        // ack "biz": the push waits for the page's Ack button.
        let admin = server.admin;
        let biz = tokio::spawn(async move {
            http::post_json(
                admin,
                "/v1/push",
                &json!({"userId": "browser-user", "content": "please confirm (biz)", "ack": "biz"}),
            )
            .await
        });
        page.wait_for(
            "document.querySelector('tr.push[data-ack=\"biz\"] button.ack') !== null",
            "the biz push",
        )
        .await;
        page.eval("document.querySelector('tr.push[data-ack=\"biz\"] button.ack').click(); true")
            .await;
        let biz = biz.await.unwrap().expect("the biz push's answer");
        assert_eq!(biz.json()["status"], "ack-success", "{}", biz.text());
        page.wait_for(
            "document.querySelector('tr.push[data-ack=\"biz\"]').dataset.acked === 'true'",
            "the page to show the ack",
        )
        .await;
        let rows = page
            .eval("Array.from(document.querySelectorAll('tr.push')).map(r => r.dataset.ack + ':' + r.cells[2].textContent)")
            .await;
        assert_eq!(
            rows,
            json!(["biz:please confirm (biz)", "auto:hello from the API (auto)"])
        );

        let shot = page
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = artifact_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("demo.png");
        std::fs::write(&path, &png).unwrap();
        eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());

        // The connection drops: the client reconnects (with backoff), handshakes and binds the
        // user again, and pushes reach it.
        let count = |text: &str| {
            format!("document.getElementById('log').value.split('{text}').length - 1")
        };
        page.eval("window.pushgateClient._socket.close(); true").await;
        page.wait_for(
            &format!("{} >= 2", count("bound browser-user")),
            "the bind after the reconnect",
        )
        .await;
        assert!(page.eval(&count("reconnecting in")).await.as_u64() >= Some(1));
        let again = server
            .http_post(
                "/v1/push",
                &json!({"userId": "browser-user", "content": "after the reconnect", "ack": "auto"}),
            )
            .await;
        assert_eq!(again.json()["status"], "ack-success", "{}", again.text());

        // A kick (here the operator's) closes the client for good: no reconnect.
        let kicked = http::request(server.admin, "DELETE", "/v1/users/browser-user", None)
            .await
            .expect("DELETE /v1/users");
        assert_eq!(kicked.status, 200, "{}", kicked.text());
        page.wait_for(
            "document.getElementById('status').textContent === 'closed'",
            "the kicked client to close",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(page.eval(&count("handshake ok")).await, json!(2), "no reconnect after a kick");
        drop(browser);
    })
    .await;
}
