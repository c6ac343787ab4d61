//! OK (cmd 11): success answer to a request, on the phone link and the gateway link (§8, §11.2).
use super::{Body, DecodeError};
use crate::codec::{put_string, Reader};
use crate::command::Command;
use bytes::BufMut;

/// An OK body. `cmd` names the request answered; `data` is free text (for a gateway push: the
/// result JSON; for a finished broadcast: empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OkMessage {
    pub cmd: u8,
    pub code: u8,
    pub data: String,
}

impl OkMessage {
    /// An OK for `cmd` with code 0.
    pub fn new(cmd: Command, data: impl Into<String>) -> Self {
        Self {
            cmd: cmd.code(),
            code: 0,
            data: data.into(),
        }
    }
}

impl Body for OkMessage {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            cmd: r.u8("cmd")?,
            code: r.u8("code")?,
            data: r.string("data")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u8(self.cmd);
        out.put_u8(self.code);
        put_string(out, &self.data);
    }
}
