//! The bind check's HTTP callback (`security.bind_check_url`, MPush's `BindValidator` SPI):
//! the runtime side of [`pushgate_core::Output::BindCheck`]. For each check the node asks
//! about, a task POSTs the bind as JSON to the configured URL and hands the verdict back to
//! the node task as [`pushgate_core::Input::BindVerdict`].
//!
//! The contract (README, "On the open internet"): a POST with `Content-Type: application/json`
//! and the body `{"userId", "clientType", "deviceId", "tags", "data"}` (plus `Authorization:
//! Bearer TOKEN` with `security.bind_check_token`); a 2xx answer whose JSON body has a boolean
//! `allow` is the verdict. Anything else — another status, a body without `allow`, no answer
//! within `security.bind_check_timeout_ms`, a refused connection — is an error, and the bind
//! then follows `security.bind_check_on_error` (refused by default).
//!
//! The client is a small HTTP/1.1 one on a plain TCP stream (one connection per check,
//! `Connection: close`, the answer read up to [`MAX_RESPONSE_BYTES`]): the callback is a
//! service on the operator's own network, and the same code runs in the simulator.
use crate::driver::NodeMsg;
use pushgate_core::{BindCheck, BindVerdict, Input};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Most bytes of an answer read; a longer one is an error.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Shortest time between two log lines about failing checks.
const ERROR_LOG_INTERVAL_MS: u64 = 10_000;

/// Where and how bind checks are asked.
#[derive(Debug)]
pub struct BindChecker {
    host: String,
    port: u16,
    /// `Host` header value (host, and port when not 80).
    authority: String,
    /// Path and query of the URL (`/` when empty).
    path: String,
    token: Option<String>,
    timeout: Duration,
    start: tokio::time::Instant,
    /// Milliseconds since `start` of the last error line, plus one (0 = never).
    logged_at_ms: AtomicU64,
    errors_since_log: AtomicU64,
}

impl BindChecker {
    /// A checker POSTing to `url` (`http://HOST[:PORT][/PATH]`), giving up after `timeout_ms`.
    pub fn new(url: &str, token: Option<String>, timeout_ms: u64) -> anyhow::Result<Arc<Self>> {
        let url = url.trim();
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            anyhow::anyhow!(
                "security.bind_check_url {url:?}: expected http://HOST[:PORT]/PATH (a service on the operator's network; https is not supported)"
            )
        })?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| anyhow::anyhow!("security.bind_check_url {url:?}: bad HOST[:PORT]"))?;
        anyhow::ensure!(
            path.bytes().all(|b| b.is_ascii_graphic()),
            "security.bind_check_url {url:?}: the path must be printable ASCII"
        );
        anyhow::ensure!(timeout_ms > 0, "security.bind_check_timeout_ms must be > 0");
        Ok(Arc::new(Self {
            host,
            port,
            authority: authority.to_owned(),
            path,
            token: token.filter(|t| !t.trim().is_empty()),
            timeout: Duration::from_millis(timeout_ms),
            start: tokio::time::Instant::now(),
            logged_at_ms: AtomicU64::new(0),
            errors_since_log: AtomicU64::new(0),
        }))
    }

    /// Asks about `check` on a task of its own and sends the verdict to the node task through
    /// `node` (dropped if the node task is gone). Every check gets a verdict: an error or a
    /// timeout is [`BindVerdict::Failed`].
    pub fn spawn_check(self: &Arc<Self>, check: BindCheck, node: mpsc::WeakSender<NodeMsg>) {
        let checker = self.clone();
        tokio::spawn(async move {
            let verdict = match tokio::time::timeout(checker.timeout, checker.ask(&check)).await {
                Ok(Ok(true)) => BindVerdict::Allow,
                Ok(Ok(false)) => {
                    tracing::info!(conn = %check.conn, user = %check.user_id, device = %check.device_id, "bind refused by the bind check");
                    BindVerdict::Refuse
                }
                Ok(Err(error)) => {
                    checker.log_error(&error);
                    BindVerdict::Failed
                }
                Err(_) => {
                    checker.log_error(&format!(
                        "no answer within {} ms",
                        checker.timeout.as_millis()
                    ));
                    BindVerdict::Failed
                }
            };
            crate::metrics::bind_check(match verdict {
                BindVerdict::Allow => "allowed",
                BindVerdict::Refuse => "refused",
                BindVerdict::Failed => "error",
            });
            if let Some(node) = node.upgrade() {
                let input = Input::BindVerdict {
                    check: check.id,
                    verdict,
                };
                let _ = node.send(NodeMsg::Input(input)).await;
            }
        });
    }

    /// One check: true (allow) or false (refuse), or why there is no verdict.
    pub async fn ask(&self, check: &BindCheck) -> Result<bool, String> {
        let body = serde_json::json!({
            "userId": check.user_id,
            "clientType": check.client_type.code(),
            "deviceId": check.device_id,
            "tags": check.tags,
            "data": check.data,
        })
        .to_string();
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pushgate\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.path,
            self.authority,
            body.len()
        );
        if let Some(token) = &self.token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let mut stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", self.host, self.port))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        stream.flush().await.map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(response) = parse_response(&buf, false)? {
                return verdict_of(response);
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                let response = parse_response(&buf, true)?
                    .ok_or_else(|| "the answer ended early".to_owned())?;
                return verdict_of(response);
            }
            if buf.len() + n > MAX_RESPONSE_BYTES {
                return Err(format!("the answer is over {MAX_RESPONSE_BYTES} bytes"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Logs a failed check: the first at once, then at most one line every
    /// [`ERROR_LOG_INTERVAL_MS`] with the count of failures in between.
    fn log_error(&self, error: &str) {
        let failures = self.errors_since_log.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.logged_at_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < ERROR_LOG_INTERVAL_MS {
            return;
        }
        if self
            .logged_at_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.errors_since_log.store(0, Ordering::Relaxed);
            tracing::warn!(
                url = %format!("http://{}{}", self.authority, self.path),
                failures,
                "bind check failed: {error} (the bind follows security.bind_check_on_error)"
            );
        }
    }
}

/// An HTTP answer: status and body.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// The verdict an answer carries: a 2xx with a JSON object whose `allow` is a boolean.
fn verdict_of(response: Response) -> Result<bool, String> {
    if !(200..300).contains(&response.status) {
        return Err(format!("HTTP status {}", response.status));
    }
    let json: serde_json::Value = serde_json::from_slice(&response.body)
        .map_err(|e| format!("the answer is not JSON: {e}"))?;
    json.get("allow")
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| "the answer has no boolean \"allow\"".to_owned())
}

/// Parses `buf` as a whole HTTP/1.x answer: `Ok(None)` while more bytes are needed (`eof`:
/// the stream ended, so a body without a length ends here).
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "the head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 answer: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &buf[head_end + 4..];
    if chunked {
        return Ok(dechunk(rest)?.map(|body| Response { status, body }));
    }
    match content_length {
        Some(len) if rest.len() >= len => Ok(Some(Response {
            status,
            body: rest[..len].to_vec(),
        })),
        Some(_) => Ok(None),
        None if eof => Ok(Some(Response {
            status,
            body: rest.to_vec(),
        })),
        None => Ok(None),
    }
}

/// A chunked body, once its last chunk arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `host[:port]` or `[v6][:port]`; port 80 when absent.
fn split_host_port(authority: &str) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => 80,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_owned(), 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_or_refused_with_the_key() {
        let c = BindChecker::new("http://127.0.0.1:8080/check?x=1", None, 1000).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8080));
        assert_eq!(c.path, "/check?x=1");
        let c = BindChecker::new("http://[::1]/", None, 1000).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.path.as_str()), ("::1", 80, "/"));
        let c = BindChecker::new("http://auth.internal", None, 1000).unwrap();
        assert_eq!(
            (c.authority.as_str(), c.path.as_str()),
            ("auth.internal", "/")
        );
        for bad in [
            "https://x/",
            "x:80/",
            "http://:80/",
            "http://u@x/",
            "http://x:port/",
        ] {
            let error = BindChecker::new(bad, None, 1000).unwrap_err().to_string();
            assert!(error.contains("security.bind_check_url"), "{bad}: {error}");
        }
    }

    #[test]
    fn answers_are_read_by_length_by_chunks_or_to_the_end() {
        let by_length = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"allow\":true}";
        assert_eq!(
            parse_response(by_length, false).unwrap(),
            Some(Response {
                status: 200,
                body: b"{\"allow\":true}".to_vec()
            })
        );
        assert_eq!(parse_response(&by_length[..40], false).unwrap(), None);
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"all\r\n9\r\now\":false\r\n1\r\n}\r\n0\r\n\r\n";
        let response = parse_response(chunked, false).unwrap().unwrap();
        assert_eq!(verdict_of(response), Ok(false));
        let to_end = b"HTTP/1.0 200 OK\r\n\r\n{\"allow\": true}";
        assert_eq!(parse_response(to_end, false).unwrap(), None);
        let response = parse_response(to_end, true).unwrap().unwrap();
        assert_eq!(verdict_of(response), Ok(true));
        assert!(parse_response(b"SSH-2.0\r\n\r\n", true).is_err());
    }

    #[test]
    fn only_a_2xx_with_a_boolean_allow_is_a_verdict() {
        let answer = |status, body: &str| Response {
            status,
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(verdict_of(answer(200, r#"{"allow":true}"#)), Ok(true));
        assert_eq!(verdict_of(answer(204, r#"{"allow":false}"#)), Ok(false));
        assert!(verdict_of(answer(403, r#"{"allow":false}"#)).is_err());
        assert!(verdict_of(answer(200, r#"{"allow":"yes"}"#)).is_err());
        assert!(verdict_of(answer(200, "ok")).is_err());
    }
}
