//! One web connection (a browser or H5 page on the WebSocket port) as its connection task runs
//! it ([`WebConn`]): the WebSocket counterpart of [`PhoneConn`], speaking MPush's JSON packets
//! (reference §14) instead of binary frames.
//!
//! A web client sends one JSON packet per text message, `{"cmd":N,"flags":16,"sessionId":N,
//! "body":{…}}`, with no encryption and no compression. This machine parses those packets into
//! the same node inputs a TCP phone's connection produces — [`PhoneMessage::Handshaken`],
//! `Bind`, `Unbind`, `Ack`, `Upstream`, [`Input::PhoneClosed`] — so routes, kicks, single
//! pushes, broadcasts and ACK modes follow the node's one set of rules. The frames the node
//! sends back (OK, ERROR, PUSH, KICK, still in plaintext) are rendered as the JSON packets
//! MPush's Java server writes: fastjson's sorted bean fields `body`, `bodyLength`, `cmd`,
//! `flags`, `sessionId`, and each body's keys in the order of the Java `HashMap` that holds
//! them ([`render`]). The seal the node asks for is not applied: WebSocket bodies travel in
//! plaintext, as in MPush.
//!
//! Beyond MPush, which neither checks web connections for idleness nor bounds them: a
//! handshake deadline, the bind deadline of TCP phones (`core.bind_deadline_ms`), WebSocket
//! pings after `ping_interval_ms` of silence and a close after `idle_timeout_ms` of it, a
//! bound on the inbound message size, and the slow-consumer marks of [`WriteMarks`] (the
//! phones' own) on the messages queued and not yet written.
//!
//! Sans-IO like [`PhoneConn`], with the same drain contract: after any `handle_*`, drain
//! [`WebConn::poll_input`] into the node, write [`WebConn::poll_transmit`] (one message at a
//! time, reported with [`WebConn::handle_written`]), end the task when
//! [`WebConn::is_finished`], and arm one timer at [`WebConn::poll_timeout`].
//!
//! [`PhoneConn`]: crate::conn::PhoneConn
use crate::command::Command;
use crate::config::NodeConfig;
use crate::conn::{Handshaken, PhoneMessage, QueueMarks, CLOSE_FLUSH_TIMEOUT_MS};
use crate::frame::Flags;
use crate::ids::{ConnId, Millis};
use crate::message::{Bind, Body, ErrorCode, ErrorMessage, Kick, OkMessage, Push};
use crate::node::{CloseReason, Input, OutFrame};
use crate::store::CachedSession;
use crate::write_marks::{Crossing, WriteMarks, WriteReports};
use bytes::Bytes;
use serde::Deserialize;
use std::collections::VecDeque;
use std::fmt::Write as _;

/// Reason text MPush sends with a HANDSHAKE that names no device.
const PARAM_INVALID: &str = "Param invalid";

/// The operating system a web client that names none is taken to run: `"web"` makes it client
/// type 3, as MPush's JS client (which always sends `"web"`) is.
pub const DEFAULT_WEB_OS_NAME: &str = "web";

/// WebSocket close codes (RFC 6455 §7.4.1) the server sends.
pub mod close_code {
    /// A close with nothing to report.
    pub const NORMAL: u16 = 1000;
    /// The server shuts down, or the client went silent.
    pub const GOING_AWAY: u16 = 1001;
    /// A binary message: MPush's packets are text.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message that is not a JSON packet.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A request the protocol refuses (answered with an ERROR packet first).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message over the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server holds its maximum of connections.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// What every web connection of a node runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Largest inbound text message, in bytes.
    pub max_message_bytes: usize,
    /// A WebSocket ping goes out after this much silence from the client.
    pub ping_interval_ms: Millis,
    /// The connection closes after this much silence (pongs count as traffic).
    pub idle_timeout_ms: Millis,
    /// The HANDSHAKE packet must arrive within this time.
    pub handshake_deadline_ms: Millis,
    /// A handshaken connection must send a BIND within this time (0: no deadline), as a TCP
    /// phone must.
    pub bind_deadline_ms: Millis,
    pub marks: QueueMarks,
}

impl WebConfig {
    /// The web settings of a node with `cfg`.
    pub fn from_node(
        cfg: &NodeConfig,
        marks: QueueMarks,
        max_message_bytes: usize,
        ping_interval_ms: Millis,
        idle_timeout_ms: Millis,
    ) -> Self {
        Self {
            max_message_bytes,
            ping_interval_ms,
            idle_timeout_ms,
            handshake_deadline_ms: cfg.handshake_deadline_ms,
            bind_deadline_ms: cfg.bind_deadline_ms,
            marks,
        }
    }
}

/// A WebSocket message for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// One JSON packet.
    Text(String),
    /// A keep-alive ping (empty payload).
    Ping,
    /// The close frame; the connection is over once it is written.
    Close { code: u16, reason: &'static str },
}

impl WsMessage {
    /// What the message counts against the queue marks.
    fn weight_bytes(&self) -> usize {
        match self {
            WsMessage::Text(text) => text.len(),
            WsMessage::Ping => 2,
            WsMessage::Close { reason, .. } => 4 + reason.len(),
        }
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Writing what is queued, the close frame last (nothing is read or queued any more).
    Closing,
    /// Done: the driver drops the socket.
    Closed,
}

/// One web connection (see the module docs).
#[derive(Debug)]
pub struct WebConn {
    conn: ConnId,
    phase: Phase,
    /// The handshaken device; empty before the handshake.
    device_id: String,
    opened_ms: Millis,
    last_read_ms: Millis,
    /// A ping went out since the last read.
    ping_sent: bool,
    /// Handshaken and no BIND sent since: when the bind deadline passes.
    bind_by_ms: Option<Millis>,
    /// Messages queued and not yet written, and the slow-consumer marks on their weight.
    outbound: VecDeque<WsMessage>,
    marks: WriteMarks,
    /// Messages queued and messages written since the connection opened.
    queued_messages: u64,
    written_messages: u64,
    /// Pushes whose write the node wants to hear of: (message count their message ends at,
    /// sessionId).
    reports: WriteReports,
    to_node: VecDeque<Input>,
}

/// An inbound JSON packet as MPush's `JsonPacket` reads it (other members are ignored).
#[derive(Debug, Deserialize)]
struct InPacket {
    cmd: u8,
    #[serde(default)]
    flags: u8,
    #[serde(default, rename = "sessionId")]
    session_id: i32,
    #[serde(default)]
    body: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A body member that is neither a string nor null (MPush's handler fails its cast).
struct BadMember;

/// A string member of a body: absent and null are `""`, as on the binary link.
fn member(
    body: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<String, BadMember> {
    match body.get(key) {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(BadMember),
    }
}

impl WebConn {
    /// A connection accepted at `now_ms`.
    pub fn new(conn: ConnId, now_ms: Millis) -> Self {
        Self {
            conn,
            phase: Phase::Open,
            device_id: String::new(),
            opened_ms: now_ms,
            last_read_ms: now_ms,
            ping_sent: false,
            bind_by_ms: None,
            outbound: VecDeque::new(),
            marks: WriteMarks::new(),
            queued_messages: 0,
            written_messages: 0,
            reports: WriteReports::default(),
            to_node: VecDeque::new(),
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.conn
    }

    /// True once a HANDSHAKE was answered.
    pub fn is_handshaken(&self) -> bool {
        !self.device_id.is_empty()
    }

    /// True while the connection reads and takes frames.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// True when the connection is over: the driver drops the socket and ends its task.
    pub fn is_finished(&self) -> bool {
        match self.phase {
            Phase::Open => false,
            Phase::Closing => self.outbound.is_empty(),
            Phase::Closed => true,
        }
    }

    /// The weight of the messages queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.marks.queued_bytes()
    }

    /// False while the queued bytes are over the high-water mark (until they drain to the
    /// low-water mark).
    pub fn is_writable(&self) -> bool {
        self.marks.is_writable()
    }

    /// Handles one text message from the client.
    pub fn handle_text(&mut self, cfg: &WebConfig, now_ms: Millis, text: &str) {
        if !self.is_open() {
            return;
        }
        self.saw_traffic(now_ms);
        if text.len() > cfg.max_message_bytes {
            return self.handle_oversized(now_ms);
        }
        let packet: InPacket = match serde_json::from_str(text) {
            Ok(packet) => packet,
            Err(_) => {
                return self.close_after_flush(
                    now_ms,
                    CloseReason::BadFrame,
                    close_code::INVALID_PAYLOAD,
                    "malformed packet",
                )
            }
        };
        let body = packet.body.unwrap_or_default();
        if !body.is_empty() && !Flags(packet.flags).contains(Flags::JSON_BODY) {
            // MPush reads a body without the JSON flag as binary, and fails.
            return self.dispatch_error(cfg, now_ms, packet.cmd, packet.session_id);
        }
        let session_id = packet.session_id;
        let message = match Command::try_from(packet.cmd) {
            Ok(Command::Handshake) => {
                return match self.on_handshake(cfg, now_ms, session_id, &body) {
                    Ok(()) => {}
                    Err(BadMember) => self.dispatch_error(cfg, now_ms, packet.cmd, session_id),
                }
            }
            Ok(command @ (Command::Bind | Command::Unbind)) => {
                let bind = match bind_body(&body) {
                    Ok(bind) => bind,
                    Err(BadMember) => {
                        return self.dispatch_error(cfg, now_ms, packet.cmd, session_id)
                    }
                };
                if command == Command::Bind {
                    // A BIND was sent: the node answers it (a refused one closes).
                    self.bind_by_ms = None;
                    PhoneMessage::Bind { session_id, bind }
                } else {
                    PhoneMessage::Unbind { session_id, bind }
                }
            }
            Ok(Command::Push) => {
                let content = match member(&body, "content") {
                    Ok(content) => content,
                    Err(BadMember) => {
                        return self.dispatch_error(cfg, now_ms, packet.cmd, session_id)
                    }
                };
                if Flags(packet.flags).contains(Flags::AUTO_ACK) {
                    let ack = packet_json(Command::Ack.code(), Flags::JSON_BODY, session_id, None);
                    self.queue(cfg, WsMessage::Text(ack), None);
                }
                PhoneMessage::Upstream {
                    content: Bytes::from(content.into_bytes()),
                }
            }
            Ok(Command::Ack) => PhoneMessage::Ack { session_id },
            // MPush's WebSocket server registers nothing else: no heartbeat command (pings
            // keep the connection alive), no fast connect, no HTTP proxy.
            _ => {
                let error = ErrorMessage::new(packet.cmd, ErrorCode::UnsupportedCmd);
                self.send_error(cfg, session_id, &error);
                return self.close_after_flush(
                    now_ms,
                    CloseReason::UnsupportedCommand,
                    close_code::POLICY_VIOLATION,
                    "unsupported command",
                );
            }
        };
        self.hand_to_node(message.into_input(self.conn));
    }

    /// A binary message: MPush's packets are text, so the connection closes.
    pub fn handle_binary(&mut self, now_ms: Millis) {
        if !self.is_open() {
            return;
        }
        self.saw_traffic(now_ms);
        self.close_after_flush(
            now_ms,
            CloseReason::BadFrame,
            close_code::UNSUPPORTED_DATA,
            "binary messages are not supported",
        );
    }

    /// A message over the size limit (seen here, or refused by the WebSocket reader).
    pub fn handle_oversized(&mut self, now_ms: Millis) {
        self.close_after_flush(
            now_ms,
            CloseReason::BadFrame,
            close_code::MESSAGE_TOO_BIG,
            "message too big",
        );
    }

    /// A ping or pong from the client: traffic that keeps the connection alive.
    pub fn handle_control(&mut self, now_ms: Millis) {
        if self.is_open() {
            self.saw_traffic(now_ms);
        }
    }

    fn saw_traffic(&mut self, now_ms: Millis) {
        self.last_read_ms = self.last_read_ms.max(now_ms);
        self.ping_sent = false;
    }

    /// MPush's insecure handshake: the device facts in plaintext, the reply without a body.
    fn on_handshake(
        &mut self,
        cfg: &WebConfig,
        now_ms: Millis,
        session_id: i32,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), BadMember> {
        let device_id = member(body, "deviceId")?;
        let mut os_name = member(body, "osName")?;
        let os_version = member(body, "osVersion")?;
        let client_version = member(body, "clientVersion")?;
        if device_id.is_empty() {
            let error = ErrorMessage::validation(Command::Handshake, PARAM_INVALID);
            self.send_error(cfg, session_id, &error);
            self.close_after_flush(
                now_ms,
                CloseReason::BadRequest,
                close_code::POLICY_VIOLATION,
                PARAM_INVALID,
            );
            return Ok(());
        }
        if device_id == self.device_id {
            let error = ErrorMessage::new(Command::Handshake.code(), ErrorCode::RepeatHandshake);
            self.send_error(cfg, session_id, &error);
            return Ok(());
        }
        if os_name.is_empty() {
            os_name = DEFAULT_WEB_OS_NAME.to_owned();
        }
        let reply = packet_json(
            Command::Handshake.code(),
            Flags::JSON_BODY,
            session_id,
            None,
        );
        self.queue(cfg, WsMessage::Text(reply), None);
        self.device_id = device_id.clone();
        self.bind_by_ms = (cfg.bind_deadline_ms > 0).then(|| {
            // The handshake is the last traffic read.
            self.last_read_ms.saturating_add(cfg.bind_deadline_ms)
        });
        // No keys: a web session is never encrypted and never stored for fast connects.
        let handshaken = Handshaken {
            reusable_session_id: None,
            session: CachedSession {
                os_name,
                os_version,
                client_version,
                device_id,
                session_key: [0; 16],
                iv: [0; 16],
            },
            heartbeat_ms: cfg.ping_interval_ms,
        };
        self.hand_to_node(PhoneMessage::Handshaken(Box::new(handshaken)).into_input(self.conn));
        Ok(())
    }

    /// MPush's answer to a packet its handler cannot read: ERROR 100, then close.
    fn dispatch_error(&mut self, cfg: &WebConfig, now_ms: Millis, cmd: u8, session_id: i32) {
        let error = ErrorMessage::new(cmd, ErrorCode::DispatchError);
        self.send_error(cfg, session_id, &error);
        self.close_after_flush(
            now_ms,
            CloseReason::BadBody,
            close_code::POLICY_VIOLATION,
            "handle message error",
        );
    }

    fn send_error(&mut self, cfg: &WebConfig, session_id: i32, error: &ErrorMessage) {
        let frame = OutFrame::Packet {
            cmd: Command::Error.code(),
            flags: Flags::NONE,
            session_id,
            body: error.to_bytes(),
            seal: crate::node::Seal::Raw,
        };
        if let Some(text) = render(&frame) {
            self.queue(cfg, WsMessage::Text(text), None);
        }
    }

    /// A frame from the node, rendered as a JSON packet. With `report_write`, the node hears
    /// [`Input::PhoneWritten`] once it is written. A frame with no JSON form (a heartbeat
    /// echo) is dropped; a report for it is answered at once.
    pub fn handle_transmit(
        &mut self,
        cfg: &WebConfig,
        _now_ms: Millis,
        frame: OutFrame,
        report_write: Option<i32>,
    ) {
        if !self.is_open() {
            return;
        }
        match render(&frame) {
            Some(text) => self.queue(cfg, WsMessage::Text(text), report_write),
            None => {
                if let Some(session_id) = report_write {
                    self.hand_to_node(Input::PhoneWritten {
                        conn: self.conn,
                        push_session_id: session_id,
                        ok: true,
                    });
                }
            }
        }
    }

    /// The node closed the connection (for `reason`, when it said): what is queued is written,
    /// then the close frame. The node knows already; it hears nothing more.
    pub fn handle_close(&mut self, now_ms: Millis, reason: Option<CloseReason>) {
        if !self.is_open() {
            return;
        }
        let (code, text) = close_frame_for(reason);
        self.reports.clear();
        self.push_close(code, text);
        self.start_closing(now_ms);
    }

    /// The message at the front of [`WebConn::poll_transmit`] was written.
    pub fn handle_written(&mut self, cfg: &WebConfig, _now_ms: Millis) {
        let Some(message) = self.outbound.pop_front() else {
            return;
        };
        let crossing = self.marks.written(&cfg.marks, message.weight_bytes());
        self.written_messages += 1;
        if self.outbound.is_empty() && self.outbound.capacity() > 0 {
            self.outbound = VecDeque::new(); // an idle connection holds no buffer
        }
        if matches!(message, WsMessage::Close { .. }) {
            self.phase = Phase::Closed;
            return;
        }
        if !self.is_open() {
            return;
        }
        self.reports
            .written_through(self.written_messages, self.conn, &mut self.to_node);
        if let Some(input) = crossing.writable_input(self.conn) {
            self.hand_to_node(input);
        }
    }

    /// The node handed over more frames than its hand-off to this connection holds: the
    /// connection closes as a slow consumer.
    pub fn handle_queue_overflow(&mut self, _now_ms: Millis) {
        self.abort(CloseReason::SlowConsumer);
    }

    /// The client closed the connection, or the socket broke.
    pub fn handle_peer_closed(&mut self, _now_ms: Millis) {
        self.abort(CloseReason::PeerClosed);
    }

    /// The next message to write (`None` when there is none).
    pub fn poll_transmit(&self) -> Option<&WsMessage> {
        if self.phase == Phase::Closed {
            return None;
        }
        self.outbound.front()
    }

    /// The next message for the node.
    pub fn poll_input(&mut self) -> Option<Input> {
        let input = self.to_node.pop_front();
        if self.to_node.is_empty() && self.to_node.capacity() > 0 {
            self.to_node = VecDeque::new();
        }
        input
    }

    /// True when [`WebConn::poll_input`] has something.
    pub fn has_input(&self) -> bool {
        !self.to_node.is_empty()
    }

    /// When [`WebConn::handle_timeout`] should next be called.
    pub fn poll_timeout(&self, cfg: &WebConfig) -> Option<Millis> {
        match self.phase {
            Phase::Open => {}
            // The flush deadline, while there is something to flush.
            Phase::Closing => return self.bind_by_ms.filter(|_| !self.outbound.is_empty()),
            Phase::Closed => return None,
        }
        if !self.is_handshaken() {
            return Some(self.opened_ms.saturating_add(cfg.handshake_deadline_ms));
        }
        let keep_alive = if self.ping_sent {
            self.last_read_ms.saturating_add(cfg.idle_timeout_ms)
        } else {
            self.last_read_ms.saturating_add(cfg.ping_interval_ms)
        };
        Some(
            self.bind_by_ms
                .map_or(keep_alive, |bind_by| bind_by.min(keep_alive)),
        )
    }

    /// Runs the checks due at `now_ms`: the handshake deadline, the bind deadline, then a ping
    /// after `ping_interval_ms` of silence and a close after `idle_timeout_ms` of it.
    pub fn handle_timeout(&mut self, cfg: &WebConfig, now_ms: Millis) {
        if self.phase == Phase::Closing && self.bind_by_ms.is_some_and(|at| now_ms >= at) {
            // The closing connection's client read nothing in time: what is left is dropped.
            self.phase = Phase::Closed;
            self.outbound = VecDeque::new();
            self.marks.clear();
            return;
        }
        if !self.is_open() {
            return;
        }
        if !self.is_handshaken() {
            if now_ms >= self.opened_ms.saturating_add(cfg.handshake_deadline_ms) {
                self.close_after_flush(
                    now_ms,
                    CloseReason::HandshakeTimeout,
                    close_code::POLICY_VIOLATION,
                    "handshake timeout",
                );
            }
            return;
        }
        if self.bind_by_ms.is_some_and(|bind_by| now_ms >= bind_by) {
            // Handshaken, but no BIND within the bind deadline.
            let (code, text) = close_frame_for(Some(CloseReason::BindTimeout));
            return self.close_after_flush(now_ms, CloseReason::BindTimeout, code, text);
        }
        let silent_ms = now_ms.saturating_sub(self.last_read_ms);
        if silent_ms >= cfg.idle_timeout_ms {
            return self.close_after_flush(
                now_ms,
                CloseReason::IdleTimeout,
                close_code::GOING_AWAY,
                "idle timeout",
            );
        }
        if !self.ping_sent && silent_ms >= cfg.ping_interval_ms {
            self.ping_sent = true;
            self.queue(cfg, WsMessage::Ping, None);
        }
    }

    fn hand_to_node(&mut self, input: Input) {
        if self.is_open() {
            self.to_node.push_back(input);
        }
    }

    /// Queues a message and applies the marks.
    fn queue(&mut self, cfg: &WebConfig, message: WsMessage, report_write: Option<i32>) {
        if !self.is_open() {
            return;
        }
        let crossing = self.marks.queued(&cfg.marks, message.weight_bytes());
        self.queued_messages += 1;
        self.outbound.push_back(message);
        if let Some(session_id) = report_write {
            self.reports.expect(self.queued_messages, session_id);
        }
        match crossing {
            Crossing::HardLimit => self.abort(CloseReason::SlowConsumer),
            other => {
                if let Some(input) = other.writable_input(self.conn) {
                    self.hand_to_node(input);
                }
            }
        }
    }

    /// Queues the close frame, the last message: counted, but no mark applies to it (a
    /// closing connection tells the node nothing more, and its close frame is bounded).
    fn push_close(&mut self, code: u16, reason: &'static str) {
        let close = WsMessage::Close { code, reason };
        self.marks.queued_closing(close.weight_bytes());
        self.queued_messages += 1;
        self.outbound.push_back(close);
    }

    /// Closes after writing what is queued and a close frame; the node hears why.
    fn close_after_flush(
        &mut self,
        now_ms: Millis,
        reason: CloseReason,
        code: u16,
        text: &'static str,
    ) {
        if !self.is_open() {
            return;
        }
        self.tell_closed(reason);
        self.push_close(code, text);
        self.start_closing(now_ms);
    }

    /// From now on only what is queued (ending with the close frame) is written, for at most
    /// [`CLOSE_FLUSH_TIMEOUT_MS`]: a client that reads nothing does not hold the socket longer.
    /// The bind deadline's field serves as the flush deadline.
    fn start_closing(&mut self, now_ms: Millis) {
        self.phase = Phase::Closing;
        self.bind_by_ms = Some(now_ms.saturating_add(CLOSE_FLUSH_TIMEOUT_MS));
    }

    /// Closes at once, dropping what is queued; the node hears why (unless it closed first).
    fn abort(&mut self, reason: CloseReason) {
        if self.is_open() {
            self.tell_closed(reason);
        }
        self.phase = Phase::Closed;
        self.outbound = VecDeque::new();
        self.marks.clear();
    }

    fn tell_closed(&mut self, reason: CloseReason) {
        self.reports.clear();
        self.hand_to_node(Input::PhoneClosed {
            conn: self.conn,
            reason,
        });
    }
}

/// The BIND/UNBIND body `{userId, tags, data}`.
fn bind_body(body: &serde_json::Map<String, serde_json::Value>) -> Result<Bind, BadMember> {
    Ok(Bind {
        user_id: member(body, "userId")?,
        data: member(body, "data")?,
        tags: member(body, "tags")?,
    })
}

/// The close frame for a close the node asked for.
fn close_frame_for(reason: Option<CloseReason>) -> (u16, &'static str) {
    use close_code::*;
    match reason {
        None | Some(CloseReason::PeerClosed) => (NORMAL, ""),
        Some(CloseReason::Shutdown) => (GOING_AWAY, "server shutting down"),
        Some(CloseReason::IdleTimeout) => (GOING_AWAY, "idle timeout"),
        Some(CloseReason::ServerFull) => (TRY_AGAIN_LATER, "server full"),
        Some(CloseReason::BadFrame) => (INVALID_PAYLOAD, "malformed packet"),
        Some(CloseReason::HandshakeTimeout) => (POLICY_VIOLATION, "handshake timeout"),
        Some(CloseReason::BindTimeout) => (POLICY_VIOLATION, "bind timeout"),
        Some(CloseReason::BadBody) => (POLICY_VIOLATION, "handle message error"),
        Some(CloseReason::UnsupportedCommand) => (POLICY_VIOLATION, "unsupported command"),
        Some(CloseReason::BadRequest) => (POLICY_VIOLATION, "bad request"),
        Some(CloseReason::SlowConsumer) => (POLICY_VIOLATION, "slow consumer"),
    }
}

/// A body member's value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    Str(String),
    Num(i64),
}

/// A JSON packet as MPush's fastjson writes a `JsonPacket`: the bean's fields sorted by name,
/// `body` left out when there is none, `bodyLength` the number of body members.
fn packet_json(
    cmd: u8,
    flags: Flags,
    session_id: i32,
    body: Option<&[(&'static str, Member)]>,
) -> String {
    let mut out = String::with_capacity(96);
    out.push('{');
    let members = body.map_or(0, <[_]>::len);
    if let Some(body) = body {
        out.push_str("\"body\":{");
        for (i, (key, value)) in body.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "\"{key}\":");
            match value {
                Member::Str(s) => out.push_str(&json_string(s)),
                Member::Num(n) => {
                    let _ = write!(out, "{n}");
                }
            }
        }
        out.push_str("},");
    }
    let _ = write!(
        out,
        "\"bodyLength\":{members},\"cmd\":{cmd},\"flags\":{},\"sessionId\":{session_id}}}",
        flags.0
    );
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// The JSON packet MPush's WebSocket server writes for a frame the node sends to a phone, or
/// `None` for a frame with no JSON form (the heartbeat echo, binary-only answers). Bodies are
/// the binary ones the node encoded (OK, ERROR, PUSH, KICK), read back; their members come in
/// the iteration order of the Java `HashMap` MPush builds them in (`OkMessage`: `new
/// HashMap<>(3)` → data, cmd, code; `ErrorMessage`: `new HashMap<>(4)` → data, reason, cmd,
/// code, or reason, cmd, code, data once all four make it grow; `KickUserMessage`: deviceId,
/// userId), members MPush leaves out when zero or null left out (an empty string is null here,
/// as on the binary link).
pub fn render(frame: &OutFrame) -> Option<String> {
    let OutFrame::Packet {
        cmd,
        flags,
        session_id,
        body,
        ..
    } = frame
    else {
        return None;
    };
    // The seal's bits never apply to JSON; the ACK bits of a PUSH do.
    let json_flags = flags
        .without(Flags::CRYPTO.with(Flags::COMPRESS))
        .with(Flags::JSON_BODY);
    let str_member =
        |key: &'static str, s: &str| (!s.is_empty()).then(|| (key, Member::Str(s.to_owned())));
    let num_member = |key: &'static str, n: u8| (n > 0).then_some((key, Member::Num(n.into())));
    let members: Vec<(&'static str, Member)> = match Command::try_from(*cmd).ok()? {
        Command::Ok => {
            let ok = OkMessage::decode(body).ok()?;
            [
                str_member("data", &ok.data),
                num_member("cmd", ok.cmd),
                num_member("code", ok.code),
            ]
            .into_iter()
            .flatten()
            .collect()
        }
        Command::Error => {
            let error = ErrorMessage::decode(body).ok()?;
            let data = str_member("data", &error.data);
            let reason = str_member("reason", &error.reason);
            let cmd = num_member("cmd", error.cmd);
            let code = num_member("code", error.code);
            let all_four = data.is_some() && reason.is_some() && cmd.is_some() && code.is_some();
            let ordered = if all_four {
                [reason, cmd, code, data]
            } else {
                [data, reason, cmd, code]
            };
            ordered.into_iter().flatten().collect()
        }
        Command::Push => {
            let push = Push::decode(body).ok()?;
            vec![(
                "content",
                Member::Str(String::from_utf8_lossy(&push.content).into_owned()),
            )]
        }
        Command::Kick => {
            let kick = Kick::decode(body).ok()?;
            vec![
                ("deviceId", Member::Str(kick.device_id)),
                ("userId", Member::Str(kick.user_id)),
            ]
        }
        Command::Ack => return Some(packet_json(*cmd, json_flags, *session_id, None)),
        _ => return None,
    };
    Some(packet_json(*cmd, json_flags, *session_id, Some(&members)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Seal;
    use crate::route::ClientType;
    use proptest::prelude::*;

    fn cfg() -> WebConfig {
        WebConfig {
            max_message_bytes: 4096,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 75_000,
            handshake_deadline_ms: 10_000,
            bind_deadline_ms: 0,
            marks: QueueMarks::new(1024, 2048, 8192).unwrap(),
        }
    }

    fn raw(cmd: Command, flags: Flags, session_id: i32, body: Bytes) -> OutFrame {
        OutFrame::Packet {
            cmd: cmd.code(),
            flags,
            session_id,
            body,
            seal: Seal::Raw,
        }
    }

    /// Writes everything queued; returns the messages.
    fn drain(conn: &mut WebConn, cfg: &WebConfig) -> Vec<WsMessage> {
        let mut out = Vec::new();
        while let Some(message) = conn.poll_transmit().cloned() {
            out.push(message);
            conn.handle_written(cfg, 0);
        }
        out
    }

    fn inputs(conn: &mut WebConn) -> Vec<Input> {
        std::iter::from_fn(|| conn.poll_input()).collect()
    }

    fn texts(messages: &[WsMessage]) -> Vec<&str> {
        messages
            .iter()
            .filter_map(|m| match m {
                WsMessage::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    fn handshaken(cfg: &WebConfig) -> WebConn {
        let mut conn = WebConn::new(ConnId(1), 0);
        conn.handle_text(
            cfg,
            0,
            r#"{"cmd":2,"flags":16,"sessionId":1,"body":{"deviceId":"d-1","osName":"web","osVersion":"x","clientVersion":"1.0"}}"#,
        );
        drain(&mut conn, cfg);
        inputs(&mut conn);
        conn
    }

    /// A closing web client that reads nothing has what is left dropped at the flush deadline;
    /// one that takes its messages ends with the close frame.
    #[test]
    fn a_closing_client_that_reads_nothing_is_dropped_at_the_flush_deadline() {
        let cfg = cfg();
        for client_reads in [false, true] {
            let mut conn = handshaken(&cfg);
            conn.handle_close(100, Some(CloseReason::IdleTimeout));
            assert!(
                !conn.is_open() && !conn.is_finished(),
                "the close frame to write"
            );
            assert_eq!(conn.poll_timeout(&cfg), Some(100 + CLOSE_FLUSH_TIMEOUT_MS));
            conn.handle_timeout(&cfg, 100 + CLOSE_FLUSH_TIMEOUT_MS - 1);
            assert!(!conn.is_finished(), "not due yet");
            if client_reads {
                let written = drain(&mut conn, &cfg);
                assert!(matches!(written.last(), Some(WsMessage::Close { .. })));
            } else {
                conn.handle_timeout(&cfg, 100 + CLOSE_FLUSH_TIMEOUT_MS);
                assert!(conn.poll_transmit().is_none(), "what was left is dropped");
            }
            assert!(conn.is_finished());
            assert_eq!(conn.poll_timeout(&cfg), None);
        }
    }

    /// Every web client holds one for as long as it is connected.
    #[test]
    fn an_idle_connection_is_small() {
        let bytes = std::mem::size_of::<WebConn>();
        eprintln!("WebConn: {bytes} bytes");
        assert!(bytes <= 256, "a WebConn holds {bytes} bytes");
    }

    #[test]
    fn answers_are_mpush_json_packets() {
        let ok = OkMessage::new(Command::Bind, "bind success").to_bytes();
        let error = ErrorMessage::validation(Command::Bind, "not handshake").to_bytes();
        let unsupported = ErrorMessage::new(1, ErrorCode::UnsupportedCmd).to_bytes();
        let all_four = ErrorMessage::new(2, ErrorCode::RepeatHandshake)
            .with_data("x")
            .to_bytes();
        let push = Push {
            content: Bytes::from_static("hi \"there\" ✓".as_bytes()),
        }
        .to_bytes();
        let kick = Kick {
            device_id: "d-1".into(),
            user_id: "alice".into(),
        }
        .to_bytes();
        let rendered: Vec<String> = [
            raw(Command::Ok, Flags::NONE, 2, ok),
            raw(Command::Error, Flags::NONE, 3, error),
            raw(Command::Error, Flags::NONE, 4, unsupported),
            raw(Command::Error, Flags::NONE, 5, all_four),
            OutFrame::Packet {
                cmd: Command::Push.code(),
                flags: Flags::AUTO_ACK,
                session_id: 7,
                body: push,
                seal: Seal::Aes(crate::crypto::AesCipher::new([0; 16], [0; 16])),
            },
            raw(Command::Kick, Flags::NONE, 0, kick),
            raw(Command::Ack, Flags::NONE, 9, Bytes::new()),
        ]
        .iter()
        .map(|f| render(f).unwrap())
        .collect();
        insta::assert_snapshot!(rendered.join("\n"), @r#"
        {"body":{"data":"bind success","cmd":5},"bodyLength":2,"cmd":11,"flags":16,"sessionId":2}
        {"body":{"reason":"not handshake","cmd":5},"bodyLength":2,"cmd":10,"flags":16,"sessionId":3}
        {"body":{"reason":"unsupported command","cmd":1,"code":101},"bodyLength":3,"cmd":10,"flags":16,"sessionId":4}
        {"body":{"reason":"repeat handshake","cmd":2,"code":102,"data":"x"},"bodyLength":4,"cmd":10,"flags":16,"sessionId":5}
        {"body":{"content":"hi \"there\" ✓"},"bodyLength":1,"cmd":15,"flags":24,"sessionId":7}
        {"body":{"deviceId":"d-1","userId":"alice"},"bodyLength":2,"cmd":13,"flags":16,"sessionId":0}
        {"bodyLength":0,"cmd":23,"flags":16,"sessionId":9}
        "#);
        assert_eq!(render(&OutFrame::Heartbeat), None);
    }

    #[test]
    fn a_handshake_is_answered_and_handed_to_the_node_as_a_web_session() {
        let cfg = cfg();
        let mut conn = WebConn::new(ConnId(4), 0);
        conn.handle_text(
            &cfg,
            5,
            r#"{"cmd":2,"flags":16,"sessionId":1,"body":{"deviceId":"d-1","osVersion":"x","clientVersion":"1.0"}}"#,
        );
        assert_eq!(
            texts(&drain(&mut conn, &cfg)),
            [r#"{"bodyLength":0,"cmd":2,"flags":16,"sessionId":1}"#]
        );
        let input = inputs(&mut conn);
        let [Input::PhoneMessage {
            conn: ConnId(4),
            message: PhoneMessage::Handshaken(h),
        }] = input.as_slice()
        else {
            panic!("{input:?}")
        };
        assert_eq!(
            h.reusable_session_id, None,
            "never stored for fast connects"
        );
        assert_eq!(h.session.device_id, "d-1");
        assert_eq!(
            ClientType::from_os_name(&h.session.os_name),
            ClientType::Web
        );
        // The same device again: ERROR 102, still open.
        conn.handle_text(
            &cfg,
            6,
            r#"{"cmd":2,"flags":16,"sessionId":2,"body":{"deviceId":"d-1"}}"#,
        );
        assert_eq!(
            texts(&drain(&mut conn, &cfg)),
            [
                r#"{"body":{"reason":"repeat handshake","cmd":2,"code":102},"bodyLength":3,"cmd":10,"flags":16,"sessionId":2}"#
            ]
        );
        assert!(conn.is_open());
    }

    #[test]
    fn bind_unbind_ack_and_upstream_become_node_messages() {
        let cfg = cfg();
        let mut conn = handshaken(&cfg);
        conn.handle_text(
            &cfg,
            1,
            r#"{"cmd":5,"flags":16,"sessionId":2,"body":{"userId":"alice","tags":"vip,beta"}}"#,
        );
        conn.handle_text(&cfg, 1, r#"{"cmd":23,"flags":16,"sessionId":77}"#);
        conn.handle_text(
            &cfg,
            1,
            r#"{"cmd":15,"flags":24,"sessionId":3,"body":{"content":"up"}}"#,
        );
        conn.handle_text(
            &cfg,
            1,
            r#"{"cmd":6,"flags":16,"sessionId":4,"body":{"userId":"alice"}}"#,
        );
        let messages: Vec<PhoneMessage> = inputs(&mut conn)
            .into_iter()
            .map(|i| match i {
                Input::PhoneMessage { message, .. } => message,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            messages,
            [
                PhoneMessage::Bind {
                    session_id: 2,
                    bind: Bind {
                        user_id: "alice".into(),
                        data: String::new(),
                        tags: "vip,beta".into()
                    }
                },
                PhoneMessage::Ack { session_id: 77 },
                PhoneMessage::Upstream {
                    content: Bytes::from_static(b"up")
                },
                PhoneMessage::Unbind {
                    session_id: 4,
                    bind: Bind {
                        user_id: "alice".into(),
                        ..Bind::default()
                    }
                },
            ]
        );
        assert_eq!(
            texts(&drain(&mut conn, &cfg)),
            [r#"{"bodyLength":0,"cmd":23,"flags":16,"sessionId":3}"#],
            "an AUTO_ACK upstream push is acknowledged"
        );
    }

    /// (input, close code, what the node hears).
    #[test]
    fn bad_input_closes_with_a_clear_code() {
        let cfg = cfg();
        let cases: [(&str, u16, CloseReason); 6] = [
            (
                "not json",
                close_code::INVALID_PAYLOAD,
                CloseReason::BadFrame,
            ),
            (
                r#"{"cmd":"x"}"#,
                close_code::INVALID_PAYLOAD,
                CloseReason::BadFrame,
            ),
            (
                r#"{"cmd":1,"flags":16,"sessionId":1}"#,
                close_code::POLICY_VIOLATION,
                CloseReason::UnsupportedCommand,
            ),
            (
                r#"{"cmd":5,"flags":16,"sessionId":1,"body":{"userId":7}}"#,
                close_code::POLICY_VIOLATION,
                CloseReason::BadBody,
            ),
            (
                r#"{"cmd":5,"flags":0,"sessionId":1,"body":{"userId":"a"}}"#,
                close_code::POLICY_VIOLATION,
                CloseReason::BadBody,
            ),
            (
                r#"{"cmd":2,"flags":16,"sessionId":1,"body":{"deviceId":""}}"#,
                close_code::POLICY_VIOLATION,
                CloseReason::BadRequest,
            ),
        ];
        for (text, code, reason) in cases {
            let mut conn = WebConn::new(ConnId(1), 0);
            conn.handle_text(&cfg, 0, text);
            let written = drain(&mut conn, &cfg);
            assert!(
                matches!(written.last(), Some(WsMessage::Close { code: c, .. }) if *c == code),
                "{text}: {written:?}"
            );
            assert!(conn.is_finished(), "{text}");
            let heard = format!("{:?}", inputs(&mut conn));
            let want = format!(
                "{:?}",
                [Input::PhoneClosed {
                    conn: ConnId(1),
                    reason
                }]
            );
            assert_eq!(heard, want, "{text}");
        }
    }

    #[test]
    fn a_silent_client_is_pinged_then_closed_and_traffic_keeps_it_open() {
        let cfg = cfg();
        let mut conn = handshaken(&cfg);
        assert_eq!(conn.poll_timeout(&cfg), Some(30_000));
        conn.handle_timeout(&cfg, 30_000);
        assert_eq!(drain(&mut conn, &cfg), [WsMessage::Ping]);
        assert_eq!(conn.poll_timeout(&cfg), Some(75_000));
        conn.handle_control(40_000); // the pong
        assert_eq!(conn.poll_timeout(&cfg), Some(70_000));
        conn.handle_timeout(&cfg, 70_000);
        assert_eq!(drain(&mut conn, &cfg), [WsMessage::Ping]);
        conn.handle_timeout(&cfg, 115_000);
        assert_eq!(
            drain(&mut conn, &cfg),
            [WsMessage::Close {
                code: close_code::GOING_AWAY,
                reason: "idle timeout"
            }]
        );
        assert!(conn.is_finished());
        let heard = format!("{:?}", inputs(&mut conn));
        assert!(heard.contains("IdleTimeout"), "{heard}");
    }

    #[test]
    fn a_connection_that_never_handshakes_is_closed_at_the_deadline() {
        let cfg = cfg();
        let mut conn = WebConn::new(ConnId(1), 100);
        conn.handle_control(5_000);
        assert_eq!(conn.poll_timeout(&cfg), Some(10_100));
        conn.handle_timeout(&cfg, 10_100);
        assert!(matches!(
            drain(&mut conn, &cfg).as_slice(),
            [WsMessage::Close { .. }]
        ));
        assert!(format!("{:?}", inputs(&mut conn)).contains("HandshakeTimeout"));
    }

    #[test]
    fn a_handshaken_connection_that_never_binds_is_closed_at_the_bind_deadline() {
        let cfg = WebConfig {
            bind_deadline_ms: 5_000,
            ..cfg()
        };
        let bind = r#"{"cmd":5,"flags":16,"sessionId":2,"body":{"userId":"u-1"}}"#;
        // Handshaken at 0: due at 5 s, before the first ping; traffic is no BIND.
        let mut idle = handshaken(&cfg);
        assert_eq!(idle.poll_timeout(&cfg), Some(5_000));
        idle.handle_control(4_000);
        assert_eq!(idle.poll_timeout(&cfg), Some(5_000));
        idle.handle_timeout(&cfg, 4_999);
        assert!(idle.is_open());
        idle.handle_timeout(&cfg, 5_000);
        assert_eq!(
            drain(&mut idle, &cfg),
            vec![WsMessage::Close {
                code: close_code::POLICY_VIOLATION,
                reason: "bind timeout"
            }]
        );
        assert!(format!("{:?}", inputs(&mut idle)).contains("BindTimeout"));
        assert!(idle.is_finished());
        // One that binds in time is kept: only the keep-alive is due after its BIND.
        let mut binding = handshaken(&cfg);
        binding.handle_text(&cfg, 4_000, bind);
        assert!(format!("{:?}", inputs(&mut binding)).contains("Bind"));
        assert_eq!(
            binding.poll_timeout(&cfg),
            Some(4_000 + cfg.ping_interval_ms)
        );
        binding.handle_timeout(&cfg, 5_000);
        assert!(binding.is_open());
        // Without a deadline, a handshaken connection may wait to bind.
        let no_deadline = super::tests::cfg();
        let mut waiting = handshaken(&no_deadline);
        assert_eq!(
            waiting.poll_timeout(&no_deadline),
            Some(no_deadline.ping_interval_ms)
        );
        waiting.handle_control(29_000);
        waiting.handle_timeout(&no_deadline, 29_000);
        assert!(waiting.is_open());
    }

    #[test]
    fn a_push_is_reported_once_written_and_a_reader_that_stops_is_marked_then_dropped() {
        let cfg = cfg();
        let mut conn = handshaken(&cfg);
        let push = |sid| {
            let body = Push {
                content: Bytes::from(vec![b'x'; 1000]),
            }
            .to_bytes();
            raw(Command::Push, Flags::BIZ_ACK, sid, body)
        };
        conn.handle_transmit(&cfg, 1, push(1), Some(1));
        assert!(inputs(&mut conn).is_empty(), "reported only once written");
        conn.handle_written(&cfg, 2);
        let heard = format!("{:?}", inputs(&mut conn));
        assert!(heard.contains("PhoneWritten") && heard.contains("push_session_id: 1"));
        // Not written: over the high-water mark the node hears "not writable", over the hard
        // limit the connection is dropped.
        for sid in 2..=3 {
            conn.handle_transmit(&cfg, 3, push(sid), Some(sid));
        }
        let heard = format!("{:?}", inputs(&mut conn));
        assert!(heard.contains("writable: false"), "{heard}");
        for sid in 4..=9 {
            conn.handle_transmit(&cfg, 3, push(sid), Some(sid));
        }
        assert!(conn.is_finished());
        assert_eq!(conn.queued_bytes(), 0);
        let heard = format!("{:?}", inputs(&mut conn));
        assert!(heard.contains("SlowConsumer"), "{heard}");
    }

    #[test]
    fn a_close_from_the_node_writes_what_is_queued_then_the_close_frame() {
        let cfg = cfg();
        let mut conn = handshaken(&cfg);
        let kick = Kick {
            device_id: "d-1".into(),
            user_id: "u".into(),
        }
        .to_bytes();
        conn.handle_transmit(&cfg, 1, raw(Command::Kick, Flags::NONE, 0, kick), None);
        conn.handle_close(1, Some(CloseReason::Shutdown));
        let written = drain(&mut conn, &cfg);
        assert_eq!(written.len(), 2);
        assert_eq!(
            written[1],
            WsMessage::Close {
                code: close_code::GOING_AWAY,
                reason: "server shutting down"
            }
        );
        assert!(conn.is_finished());
        assert!(
            inputs(&mut conn).is_empty(),
            "the node closed it: it hears nothing"
        );
    }

    /// What a client can do to a connection.
    #[derive(Debug, Clone)]
    enum Step {
        Text(String),
        Packet {
            cmd: u8,
            flags: u8,
            sid: i32,
            user: String,
        },
        Binary,
        Control,
        Push(usize),
        Written,
        Timeout(u64),
        Close,
        PeerClosed,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            ".{0,40}".prop_map(Step::Text),
            (0u8..30, any::<u8>(), any::<i32>(), ".{0,12}").prop_map(|(cmd, flags, sid, user)| {
                Step::Packet {
                    cmd,
                    flags,
                    sid,
                    user,
                }
            }),
            Just(Step::Binary),
            Just(Step::Control),
            (0usize..3000).prop_map(Step::Push),
            Just(Step::Written),
            (0u64..50_000).prop_map(Step::Timeout),
            Just(Step::Close),
            Just(Step::PeerClosed),
        ]
    }

    proptest! {
        /// Whatever a client sends and however the node and the socket behave: no panic, the
        /// node hears of the close at most once (and nothing after it), an open connection's
        /// queue stays under the hard limit, and a finished one holds nothing.
        #[test]
        fn any_sequence_keeps_the_connection_bounded(steps in proptest::collection::vec(step(), 0..60)) {
            let cfg = cfg();
            let mut conn = WebConn::new(ConnId(9), 0);
            let mut now = 0;
            let mut closes = 0;
            let mut heard_after_close = 0;
            for step in steps {
                match step {
                    Step::Text(text) => conn.handle_text(&cfg, now, &text),
                    Step::Packet { cmd, flags, sid, user } => {
                        let text = serde_json::json!({
                            "cmd": cmd, "flags": flags, "sessionId": sid,
                            "body": {"deviceId": user, "userId": user, "content": user}
                        })
                        .to_string();
                        conn.handle_text(&cfg, now, &text);
                    }
                    Step::Binary => conn.handle_binary(now),
                    Step::Control => conn.handle_control(now),
                    Step::Push(len) => {
                        let body = Push { content: Bytes::from(vec![b'p'; len]) }.to_bytes();
                        conn.handle_transmit(&cfg, now, raw(Command::Push, Flags::AUTO_ACK, 1, body), Some(1));
                    }
                    Step::Written => {
                        if conn.poll_transmit().is_some() {
                            conn.handle_written(&cfg, now);
                        }
                    }
                    Step::Timeout(ms) => {
                        now += ms;
                        conn.handle_timeout(&cfg, now);
                    }
                    Step::Close => conn.handle_close(now, None),
                    Step::PeerClosed => conn.handle_peer_closed(now),
                }
                while let Some(input) = conn.poll_input() {
                    if closes > 0 {
                        heard_after_close += 1;
                    }
                    if matches!(input, Input::PhoneClosed { .. }) {
                        closes += 1;
                    }
                }
                if conn.is_open() {
                    prop_assert!(conn.queued_bytes() <= cfg.marks.hard_limit_bytes);
                    if let Some(at) = conn.poll_timeout(&cfg) {
                        prop_assert!(at >= now || !conn.is_handshaken() || at + cfg.idle_timeout_ms >= now);
                    }
                }
                if conn.is_finished() {
                    let left = conn.poll_transmit();
                    let only_close = matches!(left, None | Some(WsMessage::Close { .. }));
                    prop_assert!(only_close, "left {:?}", left);
                }
            }
            prop_assert!(closes <= 1);
            prop_assert_eq!(heard_after_close, 0);
        }

        /// A BIND body with any strings reaches the node as the same user, tags and data.
        #[test]
        fn bind_members_reach_the_node_unchanged(user in ".{1,30}", tags in ".{0,30}", data in ".{0,30}") {
            let cfg = cfg();
            let mut conn = handshaken(&cfg);
            let text = serde_json::json!({
                "cmd": 5, "flags": 16, "sessionId": 3,
                "body": {"userId": user, "tags": tags, "data": data}
            })
            .to_string();
            conn.handle_text(&cfg, 1, &text);
            let input = conn.poll_input();
            let Some(Input::PhoneMessage { message: PhoneMessage::Bind { session_id: 3, bind }, .. }) = input else {
                return Err(TestCaseError::fail(format!("{input:?}")));
            };
            prop_assert_eq!(bind, Bind { user_id: user, tags, data });
        }

        /// Any PUSH content the node sends reads back from its JSON packet as the same text.
        #[test]
        fn push_content_survives_rendering(content in ".{0,200}", sid in any::<i32>(), biz in any::<bool>()) {
            let flags = if biz { Flags::BIZ_ACK } else { Flags::AUTO_ACK };
            let body = Push { content: Bytes::from(content.clone().into_bytes()) }.to_bytes();
            let text = render(&raw(Command::Push, flags, sid, body)).unwrap();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(value["body"]["content"].as_str(), Some(content.as_str()));
            prop_assert_eq!(value["sessionId"].as_i64(), Some(i64::from(sid)));
            prop_assert_eq!(value["flags"].as_u64(), Some(u64::from(flags.with(Flags::JSON_BODY).0)));
            prop_assert_eq!(value["cmd"].as_u64(), Some(15));
        }
    }
}
