//! HTTP_PROXY (cmd 12): an HTTP request tunnelled over the push connection, and its response
//! (§8, §9.9). pushgate does not proxy HTTP; it decodes requests so it can answer them.
use super::{Body, DecodeError};
use crate::codec::{put_bytes, put_string, Reader};
use bytes::{BufMut, Bytes};

/// The request method byte. MPush treats any unknown value as GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Delete,
}

impl HttpMethod {
    /// The method for a wire byte (unknown values are GET, as in MPush).
    pub const fn from_code(code: u8) -> HttpMethod {
        match code {
            1 => HttpMethod::Post,
            2 => HttpMethod::Put,
            3 => HttpMethod::Delete,
            _ => HttpMethod::Get,
        }
    }
}

/// A client's HTTP_PROXY request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequest {
    /// Raw method byte (0 GET, 1 POST, 2 PUT, 3 DELETE); see [`HttpMethod::from_code`].
    pub method: u8,
    /// Absolute URL.
    pub uri: String,
    /// `name:value\n` per header.
    pub headers: String,
    pub body: Bytes,
}

impl Body for HttpRequest {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            method: r.u8("method")?,
            uri: r.string("uri")?,
            headers: r.string("headers")?,
            body: r.owned_bytes("body")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u8(self.method);
        put_string(out, &self.uri);
        put_string(out, &self.headers);
        put_bytes(out, &self.body);
    }
}

/// The server's HTTP_PROXY response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status_code: i32,
    pub reason_phrase: String,
    /// `name:value\n` per header.
    pub headers: String,
    pub body: Bytes,
}

impl Body for HttpResponse {
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        Ok(Self {
            status_code: r.i32("statusCode")?,
            reason_phrase: r.string("reasonPhrase")?,
            headers: r.string("headers")?,
            body: r.owned_bytes("body")?,
        })
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_i32(self.status_code);
        put_string(out, &self.reason_phrase);
        put_string(out, &self.headers);
        put_bytes(out, &self.body);
    }
}
