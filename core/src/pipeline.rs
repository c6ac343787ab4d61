//! The body pipeline (reference §6, §7.3): what a packet's CRYPTO and COMPRESS flags mean.
//!
//! Outbound ("processed" sends): compress when the body is larger than the threshold, then
//! encrypt when the connection has a session cipher; the flags record what was done. "Raw"
//! sends (OK, ERROR, FAST_CONNECT-ok, gateway replies) skip this module entirely.
//!
//! Inbound: decrypt when CRYPTO is set, with the key the connection state calls for ([`OpenKey`]:
//! RSA before the handshake, AES afterwards), then inflate when COMPRESS is set. Inflation is
//! bounded by the caller's limit, and an empty result after processing is an error, as in MPush.
//! Empty bodies are never processed, in either direction (MPush's `BaseMessage` skips them).
use crate::crypto::{self, AesCipher, ClientRsaKey, CryptoError, ServerRsaKey};
use crate::frame::{Flags, Packet};
use crate::message::Body;
use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

/// MPush's server compression threshold: bodies strictly larger are compressed.
pub const DEFAULT_COMPRESS_THRESHOLD_BYTES: usize = 10 * 1024;
/// The Java/Android client SDK's compression threshold.
pub const CLIENT_COMPRESS_THRESHOLD_BYTES: usize = 1024;

/// Why an inbound body could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The CRYPTO flag is set but the connection has no key in this state.
    #[error("encrypted body but no key in this connection state")]
    NoKey,
    /// Decryption or inflation produced nothing.
    #[error("empty body after decrypt/inflate")]
    EmptyBody,
}

/// The key that opens inbound encrypted bodies in the connection's current state.
#[derive(Debug, Clone, Copy)]
pub enum OpenKey<'a> {
    /// No cipher (a client before its handshake, or a gateway link).
    None,
    /// The server before the handshake: the client's HANDSHAKE is RSA-encrypted.
    Rsa(&'a ServerRsaKey),
    /// After the handshake (or a fast connect): the session cipher.
    Aes(&'a AesCipher),
}

/// Decrypts and inflates a received body as its flags say.
///
/// `rng` blinds the RSA operation and is not used otherwise. `max_inflated_bytes` bounds the
/// inflated size; a body that would inflate past it is an error before it is allocated.
pub fn open(
    flags: Flags,
    body: &Bytes,
    key: OpenKey<'_>,
    rng: &mut impl CryptoRngCore,
    max_inflated_bytes: usize,
) -> Result<Bytes, PipelineError> {
    // MPush processes only non-empty bodies: an empty one passes as it is, whatever the flags.
    if body.is_empty() {
        return Ok(Bytes::new());
    }
    let processed = flags.intersects(Flags::CRYPTO.with(Flags::COMPRESS));
    let mut data = body.clone();
    if flags.contains(Flags::CRYPTO) {
        data = match key {
            OpenKey::None => return Err(PipelineError::NoKey),
            OpenKey::Rsa(rsa) => rsa.decrypt(rng, &data)?.into(),
            OpenKey::Aes(aes) => aes.decrypt(&data)?.into(),
        };
    }
    if flags.contains(Flags::COMPRESS) {
        data = crypto::inflate(&data, max_inflated_bytes)?.into();
    }
    if processed && data.is_empty() {
        return Err(PipelineError::EmptyBody);
    }
    Ok(data)
}

/// Compresses (above `compress_threshold_bytes`) and encrypts (when `cipher` is given) a body.
/// Returns the flags describing what was done (CRYPTO, COMPRESS) and the wire body.
pub fn seal(
    plain: &[u8],
    cipher: Option<&AesCipher>,
    compress_threshold_bytes: usize,
) -> (Flags, Bytes) {
    // An empty body is sent as it is, with no flag added (as MPush does).
    if plain.is_empty() {
        return (Flags::NONE, Bytes::new());
    }
    let mut flags = Flags::NONE;
    let mut compressed = None;
    if plain.len() > compress_threshold_bytes {
        let deflated = crypto::deflate_zlib(plain);
        if !deflated.is_empty() {
            flags = flags.with(Flags::COMPRESS);
            compressed = Some(deflated);
        }
    }
    let stage: &[u8] = compressed.as_deref().unwrap_or(plain);
    match cipher {
        Some(aes) => (flags.with(Flags::CRYPTO), aes.encrypt(stage).into()),
        None => (
            flags,
            compressed
                .map(Bytes::from)
                .unwrap_or_else(|| Bytes::copy_from_slice(plain)),
        ),
    }
}

/// RSA-encrypts a client's HANDSHAKE body with the server's public key (client side).
pub fn seal_rsa(
    plain: &[u8],
    key: &ClientRsaKey,
    rng: &mut impl CryptoRngCore,
) -> Result<(Flags, Bytes), CryptoError> {
    Ok((Flags::CRYPTO, key.encrypt(rng, plain)?.into()))
}

/// Builds a processed packet: encodes `body`, compresses and encrypts it, and ORs `extra_flags`
/// (for example a push's ack bits) into the header flags.
pub fn sealed_packet(
    cmd: u8,
    extra_flags: Flags,
    session_id: i32,
    body: &impl Body,
    cipher: Option<&AesCipher>,
    compress_threshold_bytes: usize,
) -> Packet {
    let mut plain = BytesMut::new();
    body.encode(&mut plain);
    let (flags, wire) = seal(&plain, cipher, compress_threshold_bytes);
    Packet::new(cmd, flags.with(extra_flags), session_id, wire)
}

/// Builds a raw packet: the encoded body, no compression, no encryption.
pub fn raw_packet(cmd: u8, flags: Flags, session_id: i32, body: &impl Body) -> Packet {
    Packet::new(cmd, flags, session_id, body.to_bytes())
}
