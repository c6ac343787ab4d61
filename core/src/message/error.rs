//! ERROR (cmd 10): failure answer, always sent raw, on both links (§8, §10).
use super::{Body, DecodeError};
use crate::codec::{put_string, Reader};
use crate::command::Command;
use bytes::BufMut;

/// MPush's error codes (§10). Code 0 carries free-text validation errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    /// Free-text validation errors ("Param invalid", "not handshake", ...).
    Validation = 0,
    /// Gateway: the user has no live connection.
    Offline = 1,
    /// Gateway: the write to the phone failed or the connection was not writable.
    PushClientFailure = 2,
    /// Gateway: the user is now on another node; look the route up again.
    RouterChange = 3,
    /// Gateway: the phone's ACK did not come in time (defined by MPush, never sent by it).
    AckTimeout = 4,
    DispatchError = 100,
    UnsupportedCmd = 101,
    RepeatHandshake = 102,
    SessionExpired = 103,
    InvalidDevice = 104,
}

impl ErrorCode {
    /// The reason text MPush sends with this code (empty for [`ErrorCode::Validation`]).
    pub const fn reason(self) -> &'static str {
        match self {
            ErrorCode::Validation => "",
            ErrorCode::Offline => "user offline",
            ErrorCode::PushClientFailure => "push to client failure",
            ErrorCode::RouterChange => "router change",
            ErrorCode::AckTimeout => "ack timeout",
            ErrorCode::DispatchError => "handle message error",
            ErrorCode::UnsupportedCmd => "unsupported command",
            ErrorCode::RepeatHandshake => "repeat handshake",
            ErrorCode::SessionExpired => "session expired",
            ErrorCode::InvalidDevice => "invalid device",
        }
    }

    /// The code for a wire byte, if MPush defines it.
    pub const fn from_code(code: u8) -> Option<ErrorCode> {
        Some(match code {
            0 => ErrorCode::Validation,
            1 => ErrorCode::Offline,
            2 => ErrorCode::PushClientFailure,
            3 => ErrorCode::RouterChange,
            4 => ErrorCode::AckTimeout,
            100 => ErrorCode::DispatchError,
            101 => ErrorCode::UnsupportedCmd,
            102 => ErrorCode::RepeatHandshake,
            103 => ErrorCode::SessionExpired,
            104 => ErrorCode::InvalidDevice,
            _ => return None,
        })
    }
}

/// An ERROR body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorMessage {
    /// The raw command byte of the request answered (may be a code MPush does not know).
    pub cmd: u8,
    pub code: u8,
    pub reason: String,
    pub data: String,
}

impl ErrorMessage {
    /// An error for `cmd` with `code` and its standard reason text.
    pub fn new(cmd: u8, code: ErrorCode) -> Self {
        Self {
            cmd,
            code: code as u8,
            reason: code.reason().to_owned(),
            data: String::new(),
        }
    }

    /// A code-0 validation error with free text, as MPush sends for bad parameters.
    pub fn validation(cmd: Command, reason: impl Into<String>) -> Self {
        Self {
            cmd: cmd.code(),
            code: 0,
            reason: reason.into(),
            data: String::new(),
        }
    }

    /// The same error carrying `data`.
    pub fn with_data(mut self, data: impl Into<String>) -> Self {
        self.data = data.into();
        self
    }
}

impl Body for ErrorMessage {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            cmd: r.u8("cmd")?,
            code: r.u8("code")?,
            reason: r.string("reason")?,
            data: r.string("data")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u8(self.cmd);
        out.put_u8(self.code);
        put_string(out, &self.reason);
        put_string(out, &self.data);
    }
}
