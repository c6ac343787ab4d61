//! Web clients: the WebSocket listener (`net.ws_port`, `--ws-port`) and one task per web
//! connection, which runs a [`WebConn`] (MPush's JSON packets, reference §14) beside the socket
//! as a phone's task runs its `PhoneConn`.
//!
//! To the node a web connection is a phone like any other: it opens with
//! [`NodeMsg::PhoneOpened`] and a [`PhoneQueue`], hands over the same inputs and takes the same
//! frames, so routes, kicks, pushes, broadcasts and ACKs follow one set of rules. The WebSocket
//! protocol itself (upgrade, framing, masking, answering pings, the frame and message size
//! limits) is axum's, on tokio-tungstenite. A plain `GET` of the WebSocket path (or of
//! `index.html` under it) serves the demo page, with the JavaScript client of `clients/js/`
//! inlined, as MPush serves its test page.
//!
//! permessage-deflate is not offered: tungstenite does not implement it.
//!
//! Built outside the simulator only: axum needs a real tokio reactor.
use crate::driver::{NodeHandle, NodeMsg};
use crate::phone_queue::{PhoneQueue, ToPhone};
use crate::server::LiveGuard;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{Sink, Stream};
use pushgate_core::web_conn::{WebConfig, WebConn, WsMessage};
use pushgate_core::{ConnId, Millis};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use tokio::time::{Instant, Sleep};

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
}

impl WebSettings {
    fn now_ms(&self) -> Millis {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn instant(&self, at_ms: Millis) -> Instant {
        self.start + std::time::Duration::from_millis(at_ms)
    }
}

#[derive(Clone)]
struct WebState {
    node: NodeHandle,
    settings: Arc<WebSettings>,
    next_id: Arc<AtomicU64>,
    live: Arc<AtomicUsize>,
    page: Arc<str>,
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

async fn upgrade_or_page(
    State(state): State<WebState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) if headers.contains_key(header::UPGRADE) => {
            return rejection.into_response()
        }
        Err(_) => return page(State(state)).await.into_response(),
    };
    let max = state.settings.cfg.max_message_bytes;
    let guard = LiveGuard::new(&state.live);
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        // The connection's own queue holds what waits; the socket's buffer is one message.
        .write_buffer_size(0)
        .on_failed_upgrade(|error| tracing::debug!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            // The node hears of the connection once it is a WebSocket (a failed upgrade
            // leaves nothing behind).
            let conn = ConnId(state.next_id.fetch_add(1, Ordering::Relaxed));
            let queue = Arc::new(PhoneQueue::new(state.settings.max_queued_items));
            let opened = NodeMsg::PhoneOpened {
                conn,
                queue: queue.clone(),
            };
            if state.node.send(opened).await.is_ok() {
                run_web(conn, socket, state.node, queue, state.settings).await;
            }
            drop(guard);
        })
}

/// What woke a web task.
enum Wake {
    FlushExpired,
    Wrote,
    WriteFailed,
    Queue,
    Read(Option<Result<Message, axum::Error>>),
    Timer,
}

/// Longest a closed connection keeps writing what it still holds to a client.
const CLOSE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn to_message(message: &WsMessage) -> Message {
    match message {
        WsMessage::Text(text) => Message::Text(text.as_str().into()),
        WsMessage::Ping => Message::Ping(Default::default()),
        WsMessage::Close { code, reason } => Message::Close(Some(CloseFrame {
            code: *code,
            reason: (*reason).into(),
        })),
    }
}

/// Runs a web connection until either side closes it.
async fn run_web(
    conn: ConnId,
    mut socket: WebSocket,
    node: NodeHandle,
    queue: Arc<PhoneQueue>,
    settings: Arc<WebSettings>,
) {
    // An upgrade the node refused (over its connection limit) still gets its close frame.
    std::future::poll_fn(|cx| queue.poll_admitted(cx)).await;
    let cfg = &settings.cfg;
    let mut machine = WebConn::new(conn, settings.now_ms());
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let mut flush_deadline: Option<Pin<Box<Sleep>>> = None;
    // A message handed to the socket and not yet flushed.
    let mut sending = false;
    loop {
        while let Some(input) = machine.poll_input() {
            if node.send(NodeMsg::Input(input)).await.is_err() {
                return; // the node is gone
            }
        }
        if machine.is_finished() {
            return;
        }
        if !machine.is_open() && flush_deadline.is_none() {
            flush_deadline = Some(Box::pin(tokio::time::sleep(CLOSE_FLUSH_TIMEOUT)));
        }
        crate::conn::set_timer(
            &mut timer,
            machine.poll_timeout(cfg).map(|at| settings.instant(at)),
        );
        let wake = std::future::poll_fn(|cx| {
            if let Some(deadline) = &mut flush_deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::FlushExpired);
                }
            }
            let mut sink = Pin::new(&mut socket);
            if !sending {
                if let Some(message) = machine.poll_transmit() {
                    match sink.as_mut().poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            if sink.as_mut().start_send(to_message(message)).is_err() {
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
                if let Poll::Ready(read) = Pin::new(&mut socket).poll_next(cx) {
                    return Poll::Ready(Wake::Read(read));
                }
            }
            if let Some(sleep) = &mut timer {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
            }
            Poll::Pending
        })
        .await;
        let now = settings.now_ms();
        match wake {
            Wake::FlushExpired => {
                tracing::debug!(?conn, "closing web client read nothing in time: dropped");
                return;
            }
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
            }
            Wake::Read(Some(Ok(message))) => match message {
                Message::Text(text) => machine.handle_text(cfg, now, text.as_str()),
                Message::Binary(_) => machine.handle_binary(now),
                Message::Ping(_) | Message::Pong(_) => machine.handle_control(now),
                Message::Close(_) => machine.handle_peer_closed(now),
            },
            Wake::Read(Some(Err(error))) => {
                if is_too_big(&error) {
                    machine.handle_oversized(now);
                } else {
                    machine.handle_peer_closed(now);
                }
            }
            Wake::Read(None) => machine.handle_peer_closed(now),
            Wake::Timer => {
                let due = machine.poll_timeout(cfg).unwrap_or(now);
                machine.handle_timeout(cfg, now.max(due));
            }
        }
    }
}

/// Whether a read failed because a frame or message passed the size limit.
fn is_too_big(error: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(inner) = source {
        if let Some(ts) = inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            return matches!(ts, tokio_tungstenite::tungstenite::Error::Capacity(_));
        }
        source = inner.source();
    }
    let text = error.to_string();
    text.contains("too long") || text.contains("Space limit exceeded")
}
