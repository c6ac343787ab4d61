//! Web clients: the WebSocket listener (`net.ws_port`, `--ws-port`) and one task per web
//! connection, which runs a [`WebConn`] (MPush's JSON packets, reference §14) beside the socket
//! as a phone's task runs its `PhoneConn`.
//!
//! To the node a web connection is a phone like any other: it opens with
//! [`NodeMsg::PhoneOpened`] and a [`PhoneQueue`], hands over the same inputs and takes the same
//! frames, so routes, kicks, pushes, broadcasts and ACKs follow one set of rules; its pings,
//! idle, bind and flush deadlines are an entry on the node's timer wheel
//! ([`crate::phone_timers`]), as a phone's are. The WebSocket
//! protocol itself (upgrade, framing, masking, answering pings, the message size limit) is
//! yawc's, as an axum extractor. A plain `GET` of the WebSocket path (or of `index.html` under
//! it) serves the demo page, with the JavaScript client of `clients/js/` inlined, as MPush
//! serves its test page.
//!
//! # permessage-deflate (RFC 7692)
//! With `net.ws_deflate` (on by default) a client that offers permessage-deflate (every
//! browser does) gets it; one that offers nothing gets plain frames. The terms are the
//! server's, so that compression costs no memory per idle connection and nothing a client
//! sends can make it cost more:
//! - no context takeover in either direction (RFC 7692 §7.1.1 lets the server impose both):
//!   each message is compressed on its own, so the deflate state is borrowed from one
//!   [`DeflatePool`] for the length of one message instead of living in every connection;
//! - a 15-bit window both ways: an offer that asks the server for a smaller window
//!   (`server_max_window_bits` below 15), or carries a parameter RFC 7692 does not define, is
//!   declined and the connection runs uncompressed ([`deflate_offer_acceptable`]), and
//!   `client_max_window_bits` is left out of the answer (the client keeps to 15 bits or less,
//!   which the 15-bit inflater reads);
//! - the message size limit (`net.ws_max_message_bytes`) holds for the inflated message:
//!   inflating stops at the limit and the client gets close 1009, so a deflate bomb costs
//!   at most the limit;
//! - messages under [`DEFLATE_THRESHOLD_BYTES`] go out uncompressed (they do not shrink).
//!
//! Connections count themselves in `pushgate_ws_connections_total{deflate="on"|"off"}`.
//!
//! Built outside the simulator only: axum needs a real tokio reactor.
use crate::driver::{NodeHandle, NodeMsg};
use crate::phone_queue::{PhoneQueue, ToPhone};
use crate::phone_timers::WheelEntry;
use crate::server::LiveGuard;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Sink;
use pushgate_core::web_conn::{WebConfig, WebConn, WsMessage};
use pushgate_core::{ConnId, Millis};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use tokio::time::Instant;
use yawc::close::CloseCode;
use yawc::{CompressionLevel, DeflatePool, Frame, HttpWebSocket, IncomingUpgrade, OpCode};
use yawc::{Options, WebSocketError};

/// The JavaScript client, inlined into the demo page.
pub const CLIENT_JS: &str = include_str!("../../clients/js/pushgate-web.js");
/// The demo page; its `<script src="pushgate-web.js">` is replaced by the client.
pub const DEMO_HTML: &str = include_str!("../../clients/js/demo.html");
const CLIENT_TAG: &str = r#"<script src="pushgate-web.js"></script>"#;

/// What every web connection of a node shares.
#[derive(Debug)]
pub struct WebSettings {
    pub cfg: WebConfig,
    /// Time 0 of the connections' clock.
    pub start: Instant,
    /// The WebSocket path.
    pub path: String,
    /// The bound of each connection's [`PhoneQueue`].
    pub max_queued_items: usize,
    /// Offer permessage-deflate to clients that ask for it (`net.ws_deflate`).
    pub deflate: bool,
    /// The connections' timers: the node's wheel, shared with its phone connections.
    pub timers: Arc<crate::phone_timers::PhoneTimers>,
}

/// Outbound messages shorter than this go out uncompressed.
pub const DEFLATE_THRESHOLD_BYTES: usize = 128;
/// Idle deflate and inflate states the pool keeps: enough for the messages compressed at one
/// moment (a few per worker thread), not one per connection.
const DEFLATE_POOL_STATES: usize = 8;
/// Initial (and resting) size of each connection's socket read and write buffers.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024;
/// The counter of upgraded web connections, labelled `deflate` = `on` or `off`.
pub const WS_CONNECTIONS_METRIC: &str = "pushgate_ws_connections_total";

impl WebSettings {
    fn now_ms(&self) -> Millis {
        crate::node_clock::now_ms(self.start)
    }
}

#[derive(Clone)]
struct WebState {
    node: NodeHandle,
    settings: Arc<WebSettings>,
    next_id: Arc<AtomicU64>,
    live: Arc<AtomicUsize>,
    page: Arc<str>,
    pool: DeflatePool,
}

/// The demo page with the client inlined.
pub fn demo_page() -> String {
    DEMO_HTML.replace(CLIENT_TAG, &format!("<script>\n{CLIENT_JS}</script>"))
}

/// Serves web clients on `listener` (plain TCP, or [`crate::tls::TlsListener`] for `wss://`)
/// until the task is aborted. Connection ids come from `next_id` (shared with the phone
/// listener); `live` counts the connection tasks.
pub async fn serve<L>(
    listener: L,
    node: NodeHandle,
    settings: Arc<WebSettings>,
    next_id: Arc<AtomicU64>,
    live: Arc<AtomicUsize>,
) where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    let path = settings.path.clone();
    let state = WebState {
        node,
        settings,
        next_id,
        live,
        page: demo_page().into(),
        pool: DeflatePool::new(DEFLATE_POOL_STATES),
    };
    let mut router = Router::new().route(&path, get(upgrade_or_page));
    if path.ends_with('/') {
        router = router.route(&format!("{path}index.html"), get(page));
    }
    if let Err(error) = axum::serve(listener, router.with_state(state)).await {
        tracing::error!(%error, "WebSocket listener stopped");
    }
}

async fn page(State(state): State<WebState>) -> Html<String> {
    Html(state.page.to_string())
}

/// Whether a `Sec-WebSocket-Extensions` offer can be answered with permessage-deflate on
/// this server's terms: every permessage-deflate offer in it leaves the server its 15-bit
/// window (`server_max_window_bits` absent or 15) and has only the parameters of RFC 7692 with
/// valid values. Anything else is declined (the client gets plain frames), not bent.
pub fn deflate_offer_acceptable(headers: &HeaderMap) -> bool {
    let mut offered = false;
    for value in headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for offer in value.split(',') {
            let mut params = offer.split(';').map(str::trim);
            if params.next() != Some("permessage-deflate") {
                continue;
            }
            offered = true;
            for param in params {
                let (name, bits) = match param.split_once('=') {
                    Some((name, bits)) => (name.trim(), Some(bits.trim().trim_matches('"'))),
                    None => (param, None),
                };
                let window = |bits: &str| bits.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b));
                let fits = match (name, bits) {
                    ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
                    ("server_max_window_bits", Some(bits)) => bits == "15",
                    ("client_max_window_bits", None) => true,
                    ("client_max_window_bits", Some(bits)) => window(bits),
                    _ => false,
                };
                if !fits {
                    return false;
                }
            }
        }
    }
    offered
}

/// The WebSocket options of one connection: the size limit on every (inflated) message and,
/// when `deflate`, the server's permessage-deflate terms (see the module docs).
fn socket_options(max_message_bytes: usize, deflate: Option<&DeflatePool>) -> Options {
    // yawc's limits are exclusive; a message of exactly `max_message_bytes` is accepted.
    let limit = max_message_bytes.saturating_add(1);
    let options = Options::default()
        .with_max_payload_read(limit)
        .with_max_read_buffer(limit)
        .with_read_buffer_capacity(SOCKET_BUFFER_BYTES)
        .with_write_buffer_capacity(SOCKET_BUFFER_BYTES)
        .with_utf8();
    match deflate {
        Some(pool) => options
            .with_compression_level(CompressionLevel::fast())
            .server_no_context_takeover()
            .client_no_context_takeover()
            .with_deflate_pool(pool.clone())
            .with_compression_threshold(DEFLATE_THRESHOLD_BYTES),
        None => options.without_compression(),
    }
}

async fn upgrade_or_page(
    State(state): State<WebState>,
    headers: HeaderMap,
    upgrade: Result<IncomingUpgrade, StatusCode>,
) -> Response {
    let wants_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let upgrade = match upgrade {
        Ok(upgrade) if wants_websocket => upgrade,
        Ok(_) | Err(_) if headers.contains_key(header::UPGRADE) => {
            return (StatusCode::BAD_REQUEST, "not a WebSocket upgrade").into_response()
        }
        Ok(_) | Err(_) => return page(State(state)).await.into_response(),
    };
    let deflate = state.settings.deflate && deflate_offer_acceptable(&headers);
    let options = socket_options(
        state.settings.cfg.max_message_bytes,
        deflate.then_some(&state.pool),
    );
    let (response, socket) = match upgrade.upgrade(options) {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "WebSocket upgrade refused");
            return (StatusCode::BAD_REQUEST, "bad WebSocket upgrade").into_response();
        }
    };
    let negotiated = response
        .headers()
        .contains_key(header::SEC_WEBSOCKET_EXTENSIONS);
    let guard = LiveGuard::new(&state.live);
    tokio::spawn(async move {
        let socket = match socket.await {
            Ok(socket) => socket,
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                return;
            }
        };
        metrics::counter!(WS_CONNECTIONS_METRIC, "deflate" => if negotiated { "on" } else { "off" })
            .increment(1);
        // The node hears of the connection once it is a WebSocket (a failed upgrade leaves
        // nothing behind).
        let conn = ConnId(state.next_id.fetch_add(1, Ordering::Relaxed));
        tracing::debug!(?conn, deflate = negotiated, "web client connected");
        let opened =
            crate::server::open_phone(&state.node, conn, state.settings.max_queued_items).await;
        if let Some(queue) = opened {
            run_web(conn, socket, state.node, queue, state.settings).await;
        }
        drop(guard);
    });
    response.map(axum::body::Body::new).into_response()
}

/// What woke a web task.
enum Wake {
    Wrote,
    WriteFailed,
    Queue,
    Read(Result<Frame, WebSocketError>),
}

fn to_frame(message: &WsMessage) -> Frame {
    match message {
        WsMessage::Text(text) => Frame::text(text.clone()),
        WsMessage::Ping => Frame::ping(bytes::Bytes::new()),
        WsMessage::Close { code, reason } => Frame::close(CloseCode::from(*code), reason),
    }
}

/// Runs a web connection until either side closes it.
async fn run_web(
    conn: ConnId,
    mut socket: HttpWebSocket,
    node: NodeHandle,
    queue: Arc<PhoneQueue>,
    settings: Arc<WebSettings>,
) {
    // An upgrade the node refused (over its connection limit) still gets its close frame.
    std::future::poll_fn(|cx| queue.poll_admitted(cx)).await;
    let cfg = &settings.cfg;
    let mut machine = WebConn::new(conn, settings.now_ms());
    // The connection's keep-alive, deadlines and, once it closes, its flush deadline: an entry
    // on the node's timer wheel, disarmed when the task ends.
    let mut wheel = WheelEntry::default();
    // A message handed to the socket and not yet flushed.
    let mut sending = false;
    'connection: loop {
        while let Some(input) = machine.poll_input() {
            if node.send(NodeMsg::Input(input)).await.is_err() {
                break 'connection; // the node is gone
            }
        }
        if machine.is_finished() {
            break;
        }
        wheel.arm(&settings.timers, conn, &queue, machine.poll_timeout(cfg));
        let wake = std::future::poll_fn(|cx| {
            let mut sink = Pin::new(&mut socket);
            if !sending {
                if let Some(message) = machine.poll_transmit() {
                    match sink.as_mut().poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            if sink.as_mut().start_send(to_frame(message)).is_err() {
                                return Poll::Ready(Wake::WriteFailed);
                            }
                            sending = true;
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(Wake::WriteFailed),
                        Poll::Pending => {}
                    }
                }
            }
            if sending {
                match sink.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        sending = false;
                        return Poll::Ready(Wake::Wrote);
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Wake::WriteFailed),
                    Poll::Pending => {}
                }
            }
            if queue.poll_ready(cx).is_ready() {
                return Poll::Ready(Wake::Queue);
            }
            if machine.is_open() {
                if let Poll::Ready(read) = socket.poll_next_frame(cx) {
                    return Poll::Ready(Wake::Read(read));
                }
            }
            Poll::Pending
        })
        .await;
        let now = settings.now_ms();
        match wake {
            Wake::Wrote => machine.handle_written(cfg, now),
            Wake::WriteFailed => machine.handle_peer_closed(now),
            Wake::Queue => {
                let batch = queue.take();
                for item in batch.frames {
                    match item {
                        ToPhone::Frame {
                            frame,
                            report_write,
                        } => machine.handle_transmit(cfg, now, frame, report_write),
                        // Web clients never fast-connect.
                        ToPhone::Resume(_) => {}
                    }
                }
                if batch.overflow {
                    machine.handle_queue_overflow(now);
                }
                if batch.close {
                    machine.handle_close(now, batch.close_reason);
                }
                if let Some(tick_ms) = wheel.fired(batch.timer_tick) {
                    // A deadline moved later since is armed again above.
                    if let Some(due) = machine.poll_timeout(cfg).filter(|due| *due <= tick_ms) {
                        machine.handle_timeout(cfg, now.max(due));
                    }
                }
            }
            Wake::Read(Ok(frame)) => match frame.opcode() {
                OpCode::Text => match std::str::from_utf8(frame.payload()) {
                    Ok(text) => machine.handle_text(cfg, now, text),
                    // yawc checks text messages (`with_utf8`): not reached.
                    Err(_) => machine.handle_text(cfg, now, ""),
                },
                OpCode::Binary => machine.handle_binary(now),
                OpCode::Ping | OpCode::Pong => machine.handle_control(now),
                OpCode::Close => machine.handle_peer_closed(now),
                // Fragments reach the connection assembled.
                OpCode::Continuation => {}
            },
            Wake::Read(Err(WebSocketError::FrameTooLarge)) => machine.handle_oversized(now),
            Wake::Read(Err(_)) => machine.handle_peer_closed(now),
        }
    }
    wheel.disarm(&settings.timers, conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acceptable(offers: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for offer in offers {
            headers.append(header::SEC_WEBSOCKET_EXTENSIONS, offer.parse().unwrap());
        }
        deflate_offer_acceptable(&headers)
    }

    #[test]
    fn browser_offers_are_taken_and_terms_the_server_cannot_keep_are_declined() {
        // Chromium's, Firefox's, and the RFC's parameters within the server's terms.
        assert!(acceptable(&["permessage-deflate; client_max_window_bits"]));
        assert!(acceptable(&["permessage-deflate"]));
        assert!(acceptable(&[
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=15; client_max_window_bits=10"
        ]));
        assert!(acceptable(&[
            "x-webkit-deflate-frame",
            "permessage-deflate; client_max_window_bits=\"12\""
        ]));
        // Nothing offered.
        assert!(!acceptable(&[]));
        assert!(!acceptable(&["x-webkit-deflate-frame"]));
        // A smaller server window, in any of the offers.
        assert!(!acceptable(&[
            "permessage-deflate; server_max_window_bits=10"
        ]));
        assert!(!acceptable(&["permessage-deflate; server_max_window_bits"]));
        assert!(!acceptable(&[
            "permessage-deflate, permessage-deflate; server_max_window_bits=9"
        ]));
        // Parameters RFC 7692 does not define, or with values it does not allow.
        assert!(!acceptable(&["permessage-deflate; unknown"]));
        assert!(!acceptable(&[
            "permessage-deflate; client_max_window_bits=7"
        ]));
        assert!(!acceptable(&[
            "permessage-deflate; client_max_window_bits=x"
        ]));
        assert!(!acceptable(&[
            "permessage-deflate; server_no_context_takeover=1"
        ]));
    }
}
