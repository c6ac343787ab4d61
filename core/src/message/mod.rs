//! Typed message bodies (reference §8 and §11), one file per message family.
//!
//! Each body type implements [`Body`]: `decode` from the plaintext body bytes (after the
//! pipeline has decrypted and inflated them) and `encode` back to exactly the bytes MPush
//! writes. Strings the wire cannot distinguish from null are `""` (see [`crate::codec`]).
//! Decoders ignore trailing bytes, as MPush's Java decoders do.
mod ack;
mod bind;
mod error;
mod fast_connect;
mod gateway_kick;
mod gateway_push;
mod handshake;
mod http_proxy;
mod kick;
mod ok;
mod push;

pub use ack::Ack;
pub use bind::Bind;
pub use error::{ErrorCode, ErrorMessage};
pub use fast_connect::{FastConnect, FastConnectOk};
pub use gateway_kick::GatewayKick;
pub use gateway_push::GatewayPush;
pub use handshake::{Handshake, HandshakeOk};
pub use http_proxy::{HttpMethod, HttpRequest, HttpResponse};
pub use kick::Kick;
pub use ok::OkMessage;
pub use push::Push;

pub use crate::codec::DecodeError;
use bytes::{BufMut, BytesMut};

/// A message body with MPush's binary encoding.
pub trait Body: Sized {
    /// Parses a plaintext body.
    fn decode(body: &[u8]) -> Result<Self, DecodeError>;

    /// Appends the encoded body to `out`.
    fn encode<B: BufMut>(&self, out: &mut B);

    /// The encoded body as a fresh buffer.
    fn to_bytes(&self) -> bytes::Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

/// An UNBIND body has the same layout as a BIND body.
pub type Unbind = Bind;
