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

    /// This status's place in [`PushStatus::ALL`] (tables indexed by status): `ALL` lists the
    /// statuses in declaration order.
    pub const fn index(self) -> usize {
        self as usize
    }

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

    /// Records a point (ignored beyond [`MAX_TIME_POINTS`]). `name` is a plain identifier such
    /// as `before-send`: it is written into the result JSON as it is, unescaped.
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
    let mut out = Vec::with_capacity(result_json_capacity(user_id, timeline));
    write_result_json(&mut out, user_id, client_type, timeline);
    // Only whole UTF-8 strings and ASCII were written.
    String::from_utf8(out).unwrap_or_default()
}

/// A size for the result JSON's buffer: enough for user ids without escapes and time points
/// of up to 20 characters of name and 13 digits, so the JSON is written without growing it.
fn result_json_capacity(user_id: &str, timeline: &TimeLine) -> usize {
    48 + user_id.len() + 40 * timeline.points().len()
}

/// Appends the result JSON of [`result_json`] to `out`.
fn write_result_json(
    out: &mut Vec<u8>,
    user_id: &str,
    client_type: Option<ClientType>,
    timeline: &TimeLine,
) {
    out.push(b'{');
    if let Some(code) = client_type.map(ClientType::code).filter(|c| *c > 0) {
        out.extend_from_slice(b"\"clientType\":");
        push_i64(out, i64::from(code));
        out.push(b',');
    }
    out.extend_from_slice(b"\"timePoints\":[");
    // The points of a push are mostly in the same millisecond: its digits are reused.
    let mut last: Option<(i64, std::ops::Range<usize>)> = None;
    for (index, (name, at)) in timeline.points().iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        // Point names are the code's own constants: nothing in them needs an escape.
        debug_assert!(!name.bytes().any(needs_escape), "{name:?}");
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\",");
        match &last {
            Some((value, digits)) if value == at => out.extend_from_within(digits.clone()),
            _ => {
                let from = out.len();
                push_i64(out, *at);
                last = Some((*at, from..out.len()));
            }
        }
    }
    out.extend_from_slice(b"],\"userId\":");
    push_json_string(out, user_id);
    out.push(b'}');
}

/// Appends `value` in decimal, as `{value}` formats it (`itoa`, without the formatting
/// machinery).
fn push_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// True for the bytes a JSON string escapes (all ASCII: a UTF-8 sequence never holds them).
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Appends `text` as a JSON string, escaped as `serde_json` escapes it (quote, backslash and
/// control characters; everything else as is). Every byte that needs an escape is ASCII, so
/// the bytes are scanned, and the runs between escapes copied whole.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.push(b'"');
    if !bytes.iter().copied().any(needs_escape) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut plain_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..at]);
        if escaped.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escaped);
        }
        plain_from = at + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// The gateway reply for a single-user push that succeeded: OK(cmd 16) carrying the result
/// JSON, the same bytes as [`single_reply`] with [`result_json`], written into one buffer.
pub fn success_reply(
    session_id: i32,
    user_id: &str,
    client_type: Option<ClientType>,
    timeline: &TimeLine,
) -> Packet {
    let mut body = Vec::with_capacity(4 + result_json_capacity(user_id, timeline));
    // The OK's cmd and code, then the JSON's length, set below.
    body.extend_from_slice(&[Command::GatewayPush.code(), 0, 0, 0]);
    write_result_json(&mut body, user_id, client_type, timeline);
    let json_len = body.len() - 4;
    match i16::try_from(json_len) {
        Ok(len) if len < crate::codec::EXTENDED_LENGTH_MARKER => {
            body[2..4].copy_from_slice(&len.to_be_bytes());
            Packet::new(Command::Ok.code(), Flags::NONE, session_id, body)
        }
        // A JSON this long needs the extended length form.
        _ => single_reply(
            session_id,
            PushStatus::Success,
            None,
            result_json(user_id, client_type, timeline),
        ),
    }
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
    fn a_status_index_is_its_place_in_all() {
        for (place, status) in PushStatus::ALL.iter().enumerate() {
            assert_eq!(status.index(), place, "{status:?}");
        }
    }

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

    proptest::proptest! {
        /// Any user id and any time points: the JSON serde_json writes.
        #[test]
        fn result_json_is_serde_jsons_for_any_values(
            user in ".{0,12}",
            points in proptest::collection::vec(proptest::num::i64::ANY, 0..5),
            repeat_first in proptest::bool::ANY,
        ) {
            let mut t = TimeLine::default();
            let mut values = Vec::new();
            let first = points.first().copied();
            for at in points {
                let at = if repeat_first { first.unwrap_or(at) } else { at };
                t.add("point", at);
                values.push(serde_json::Value::from("point"));
                values.push(serde_json::Value::from(at));
            }
            let expected = serde_json::json!({ "timePoints": values, "userId": user });
            proptest::prop_assert_eq!(result_json(&user, None, &t), expected.to_string());
        }
    }

    #[test]
    fn success_reply_is_the_ok_single_reply_writes() {
        let mut t = TimeLine::begin(1795553844669);
        t.add("before-send", -1);
        t.add("success-end", i64::MIN);
        let long = "x".repeat(40_000);
        for user in ["user-1", "", "quote\" \u{01}", long.as_str()] {
            for ct in [None, Some(ClientType::Web), Some(ClientType::Unknown)] {
                let expected =
                    single_reply(9, PushStatus::Success, None, result_json(user, ct, &t));
                assert_eq!(success_reply(9, user, ct, &t), expected, "{}", user.len());
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
