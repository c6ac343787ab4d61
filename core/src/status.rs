//! Push statuses, their time line, and how each is told to a PushClient (reference §11.2).
//!
//! Every push request ends in exactly one [`PushStatus`]. On the gateway link MPush's Java
//! PushClient understands OK (success) and ERROR codes 1 (offline), 2 (failure) and 3 (router
//! change). MPush never reports a timeout; pushgate does, as ERROR code 2 with the reason
//! `"push timeout"` (or `"ack timeout"` when the phone's ACK did not come) and a time line that
//! ends in `timeout-end`. Code 2 is deliberate: the Java PushClient removes a request on *any*
//! gateway ERROR before it dispatches codes 1–3, so an unknown code (such as MPush's unused 4,
//! ACK_TIMEOUT) would leave the Java caller waiting forever. With code 2 the Java client reports
//! failure; pushgate's own PushClient reads the reason and reports timeout.
use crate::command::Command;
use crate::frame::{Flags, Packet};
use crate::message::{ErrorCode, ErrorMessage, OkMessage};
use crate::pipeline::raw_packet;
use crate::route::ClientType;
use serde::Serialize;

/// Reason text of a timeout before the push could be sent.
pub const PUSH_TIMEOUT_REASON: &str = "push timeout";
/// Reason text of a timeout waiting for the phone's ACK.
pub const ACK_TIMEOUT_REASON: &str = "ack timeout";

/// Why a push or a broadcast did not succeed, as a value callers can act on (the HTTP API
/// answers [`Reason::Busy`] with 503, for example). Its text (`Display`) is the reason string
/// the gateway reply carries, as MPush's PushClients read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The node refused new work: it holds as much of this kind as its bounds allow.
    Busy(Busy),
    /// The node is shutting down.
    ShuttingDown,
    /// The request did not decode or its condition does not parse.
    BadRequest(String),
    /// Too many route-store requests are under way to look the user up.
    RouteStoreBusy,
    /// The route store answered the lookup with an error.
    RouteLookupFailed(String),
    /// The phone's connection is above its outbound high-water mark.
    NotWritable,
    /// The phone's connection has no session cipher yet.
    NotReady,
    /// The global flow control's total is used up.
    FlowLimitReached,
    /// Writing the PUSH to the phone failed.
    WriteFailed,
    /// The phone's connection closed before the push was written or acknowledged.
    ConnectionClosed,
    /// The push could not be sent within its timeout.
    PushTimeout,
    /// The phone's ACK did not come within the push's timeout.
    AckTimeout,
}

/// What a busy node holds too much of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    PendingPushes,
    Broadcasts,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Busy(Busy::PendingPushes) => {
                f.write_str("server busy: too many pending pushes")
            }
            Reason::Busy(Busy::Broadcasts) => f.write_str("server busy: too many broadcasts"),
            Reason::ShuttingDown => f.write_str("server shutting down"),
            Reason::BadRequest(detail) => write!(f, "bad request: {detail}"),
            Reason::RouteStoreBusy => f.write_str("route store busy"),
            Reason::RouteLookupFailed(error) => write!(f, "route lookup failed: {error}"),
            Reason::NotWritable => f.write_str("connection not writable"),
            Reason::NotReady => f.write_str("connection not ready"),
            Reason::FlowLimitReached => f.write_str("flow control limit reached"),
            Reason::WriteFailed => f.write_str("write to phone failed"),
            Reason::ConnectionClosed => f.write_str("connection closed"),
            Reason::PushTimeout => f.write_str(PUSH_TIMEOUT_REASON),
            Reason::AckTimeout => f.write_str(ACK_TIMEOUT_REASON),
        }
    }
}

/// The one terminal outcome of a push request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushStatus {
    /// Written to the phone (no ACK asked), or a broadcast finished.
    Success,
    /// The phone acknowledged it.
    AckSuccess,
    /// The user has no live connection.
    Offline,
    /// The write failed, the connection was not writable or closed, or the request was refused.
    Failure,
    /// The user is connected to another node: look the route up again and push there.
    RouterChange,
    /// Not done within the request's timeout.
    Timeout,
}

impl PushStatus {
    /// Every status.
    pub const ALL: [PushStatus; 6] = [
        PushStatus::Success,
        PushStatus::AckSuccess,
        PushStatus::Offline,
        PushStatus::Failure,
        PushStatus::RouterChange,
        PushStatus::Timeout,
    ];

    /// The kebab-case name used in logs, metrics and the HTTP API.
    pub const fn name(self) -> &'static str {
        match self {
            PushStatus::Success => "success",
            PushStatus::AckSuccess => "ack-success",
            PushStatus::Offline => "offline",
            PushStatus::Failure => "failure",
            PushStatus::RouterChange => "router-change",
            PushStatus::Timeout => "timeout",
        }
    }

    /// The time point that closes the time line.
    pub const fn end_point(self) -> &'static str {
        match self {
            PushStatus::Success | PushStatus::AckSuccess => "success-end",
            PushStatus::Offline => "offline-end",
            PushStatus::Failure => "failure-end",
            PushStatus::RouterChange => "redirect-end",
            PushStatus::Timeout => "timeout-end",
        }
    }

    /// True for success and ack-success.
    pub const fn is_success(self) -> bool {
        matches!(self, PushStatus::Success | PushStatus::AckSuccess)
    }
}

/// Named time points (epoch ms), as MPush's `TimeLine` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeLine {
    points: Vec<(&'static str, i64)>,
}

/// Most points a time line holds (a push records at most about six; retries add none).
pub const MAX_TIME_POINTS: usize = 16;

impl TimeLine {
    /// A time line starting with `push-center-begin` at `epoch_ms`.
    pub fn begin(epoch_ms: i64) -> Self {
        let mut t = Self {
            points: Vec::with_capacity(4),
        };
        t.add("push-center-begin", epoch_ms);
        t
    }

    /// Records a point (ignored beyond [`MAX_TIME_POINTS`]).
    pub fn add(&mut self, name: &'static str, epoch_ms: i64) {
        if self.points.len() < MAX_TIME_POINTS {
            self.points.push((name, epoch_ms));
        }
    }

    /// The points in order.
    pub fn points(&self) -> &[(&'static str, i64)] {
        &self.points
    }
}

/// The result of a single-user push, as JSON for a PushClient (MPush's `GatewayPushResult`:
/// keys in alphabetical order, `clientType` omitted when not a real type). Written directly,
/// byte for byte what `serde_json` writes for it, without building JSON values.
pub fn result_json(user_id: &str, client_type: Option<ClientType>, timeline: &TimeLine) -> String {
    use std::fmt::Write;
    let points = timeline.points();
    let mut out = String::with_capacity(48 + user_id.len() + 40 * points.len());
    out.push('{');
    if let Some(code) = client_type.map(ClientType::code).filter(|c| *c > 0) {
        // Writing to a String cannot fail.
        let _ = write!(out, "\"clientType\":{code},");
    }
    out.push_str("\"timePoints\":[");
    for (index, (name, at)) in points.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        let _ = write!(out, ",{at}");
    }
    out.push_str("],\"userId\":");
    push_json_string(&mut out, user_id);
    out.push('}');
    out
}

/// Appends `text` as a JSON string, escaped as `serde_json` escapes it (quote, backslash and
/// control characters; everything else as is).
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The gateway reply for a finished single-user push. `reason` replaces the standard reason
/// text of failures and timeouts (a timeout without one says [`PUSH_TIMEOUT_REASON`]).
pub fn single_reply(
    session_id: i32,
    status: PushStatus,
    reason: Option<&str>,
    data: String,
) -> Packet {
    let cmd = Command::GatewayPush.code();
    let (code, reason_text) = match status {
        PushStatus::Success | PushStatus::AckSuccess => {
            return raw_packet(
                Command::Ok.code(),
                Flags::NONE,
                session_id,
                &OkMessage::new(Command::GatewayPush, data),
            );
        }
        PushStatus::Offline => (ErrorCode::Offline, None),
        PushStatus::Failure => (ErrorCode::PushClientFailure, reason),
        PushStatus::RouterChange => (ErrorCode::RouterChange, None),
        PushStatus::Timeout => (
            ErrorCode::PushClientFailure,
            Some(reason.unwrap_or(PUSH_TIMEOUT_REASON)),
        ),
    };
    let mut message = ErrorMessage::new(cmd, code).with_data(data);
    if let Some(text) = reason_text {
        message.reason = text.to_owned();
    }
    error_packet(session_id, message)
}

/// The gateway reply for a finished broadcast: OK(cmd 16) with no data, or a failure with a
/// reason (for example a condition that does not parse).
pub fn broadcast_reply(session_id: i32, failure_reason: Option<&str>) -> Packet {
    match failure_reason {
        None => raw_packet(
            Command::Ok.code(),
            Flags::NONE,
            session_id,
            &OkMessage::new(Command::GatewayPush, ""),
        ),
        Some(reason) => {
            let mut message =
                ErrorMessage::new(Command::GatewayPush.code(), ErrorCode::PushClientFailure);
            message.reason = reason.to_owned();
            error_packet(session_id, message)
        }
    }
}

fn error_packet(session_id: i32, message: ErrorMessage) -> Packet {
    raw_packet(Command::Error.code(), Flags::NONE, session_id, &message)
}

/// How a PushClient reads a gateway reply to a push (the inverse of [`single_reply`]).
pub fn status_of_reply(cmd: u8, code: u8, reason: &str) -> PushStatus {
    if cmd == Command::Ok.code() {
        return PushStatus::Success;
    }
    match ErrorCode::from_code(code) {
        Some(ErrorCode::Offline) => PushStatus::Offline,
        Some(ErrorCode::RouterChange) => PushStatus::RouterChange,
        Some(ErrorCode::AckTimeout) => PushStatus::Timeout,
        Some(ErrorCode::PushClientFailure)
            if reason == PUSH_TIMEOUT_REASON || reason == ACK_TIMEOUT_REASON =>
        {
            PushStatus::Timeout
        }
        _ => PushStatus::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_json_matches_the_captured_form() {
        let mut t = TimeLine::begin(1795553844669);
        t.add("before-send", 1795553844669);
        t.add("success-end", 1795553844671);
        assert_eq!(
            result_json("user-1", Some(ClientType::Mobile), &t),
            r#"{"clientType":1,"timePoints":["push-center-begin",1795553844669,"before-send",1795553844669,"success-end",1795553844671],"userId":"user-1"}"#
        );
        assert_eq!(
            result_json("u", Some(ClientType::Unknown), &TimeLine::default()),
            r#"{"timePoints":[],"userId":"u"}"#
        );
    }

    #[test]
    fn result_json_escapes_as_serde_json_does() {
        let mut t = TimeLine::begin(-5);
        t.add("before-send", i64::MAX);
        for user in [
            "plain",
            "",
            "quote\" back\\ slash/",
            "ctl \n\r\t\u{08}\u{0c}\u{01}\u{1f}\u{7f}",
            "ünï 中文 😀",
        ] {
            for ct in [None, Some(ClientType::Pc), Some(ClientType::Unknown)] {
                let expected = serde_json::json!({
                    "timePoints": ["push-center-begin", -5, "before-send", i64::MAX],
                    "userId": user,
                });
                let mut expected = expected;
                if let Some(code) = ct.map(ClientType::code).filter(|c| *c > 0) {
                    expected["clientType"] = code.into();
                }
                assert_eq!(result_json(user, ct, &t), expected.to_string(), "{user:?}");
            }
        }
    }

    #[test]
    fn reasons_read_as_the_gateway_reply_texts() {
        let cases = [
            (
                Reason::Busy(Busy::PendingPushes),
                "server busy: too many pending pushes",
            ),
            (
                Reason::Busy(Busy::Broadcasts),
                "server busy: too many broadcasts",
            ),
            (Reason::BadRequest("no user".into()), "bad request: no user"),
            (Reason::PushTimeout, PUSH_TIMEOUT_REASON),
            (Reason::AckTimeout, ACK_TIMEOUT_REASON),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
        for timeout in [Reason::PushTimeout, Reason::AckTimeout] {
            let text = timeout.to_string();
            let packet = single_reply(1, PushStatus::Timeout, Some(&text), "{}".into());
            let error = <ErrorMessage as crate::message::Body>::decode(&packet.body).unwrap();
            assert_eq!(
                status_of_reply(packet.cmd, error.code, &error.reason),
                PushStatus::Timeout
            );
        }
    }

    #[test]
    fn replies_round_trip_through_the_client_reading() {
        for status in PushStatus::ALL {
            let reason = (status == PushStatus::Timeout).then_some(ACK_TIMEOUT_REASON);
            let packet = single_reply(7, status, reason, "{}".into());
            assert_eq!(packet.session_id, 7);
            let (code, reason) = if packet.cmd == Command::Ok.code() {
                (0, String::new())
            } else {
                let m = <ErrorMessage as crate::message::Body>::decode(&packet.body).unwrap();
                (m.code, m.reason)
            };
            let read = status_of_reply(packet.cmd, code, &reason);
            let expected = if status == PushStatus::AckSuccess {
                PushStatus::Success
            } else {
                status
            };
            assert_eq!(read, expected, "{status:?}");
        }
    }
}
