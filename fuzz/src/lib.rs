//! The fuzz checks for pushgate-core, shared by two harnesses:
//!
//! - cargo-fuzz / libFuzzer: `fuzz/fuzz_targets/{frame,message,pipeline}.rs` call these functions
//!   (this file is the library `pushgate_fuzz` of the `fuzz/` crate);
//! - bolero under plain `cargo test`: `core/tests/fuzz_smoke.rs` compiles this same file as a
//!   module (`#[path = "../../fuzz/src/lib.rs"] mod targets;`).
//!
//! So this file may only use crates that pushgate-core has as dependencies or dev-dependencies
//! (`pushgate_core`, `bytes`, `rand_chacha`, `rand_core`), and no crate-level attributes.
//!
//! Every function takes arbitrary bytes and panics only when the library breaks one of its
//! documented invariants; malformed input must come back as an error value, never a panic.
use std::fmt::Debug;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use pushgate_core::crypto::{AesCipher, ServerRsaKey};
use pushgate_core::frame::{Flags, Frame, FrameDecoder, FrameError, HEADER_BYTES, HEARTBEAT_BYTE};
use pushgate_core::message::{
    Ack, Bind, Body, ErrorMessage, FastConnect, FastConnectOk, GatewayKick, GatewayPush, Handshake,
    HandshakeOk, HttpRequest, HttpResponse, Kick, OkMessage, Push,
};
use pushgate_core::pipeline::{self, OpenKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The body limit the frame decoder and the inflater are run with (MPush's default 10 KiB).
pub const MAX_BODY_BYTES: usize = 10 * 1024;

/// The fixed AES session key of the `pipeline` target: the `sessionKey` of the first connection in
/// `shared/vectors/handshake-bind-push.json`, so the encrypted bodies captured there are valid
/// ciphertexts for the fuzzer (see `fuzz/make_corpus.py`).
pub const FUZZ_AES_KEY: [u8; 16] = [
    0x30, 0x75, 0xfb, 0x1e, 0x70, 0x0d, 0x44, 0x16, 0x7b, 0x3a, 0x46, 0x6d, 0x1f, 0x04, 0xa9, 0x59,
];
/// The IV of that same connection.
pub const FUZZ_AES_IV: [u8; 16] = [
    0x11, 0x1d, 0x16, 0x7e, 0xdb, 0x8a, 0xc6, 0x64, 0x6b, 0x37, 0x55, 0x6c, 0x57, 0xc7, 0xb1, 0x88,
];

// ---------------------------------------------------------------------------------------------
// frame
// ---------------------------------------------------------------------------------------------

/// Chunk sizes for feeding the stream, from a seed byte: 0 feeds everything at once, any other
/// value drives a small xorshift generator (mostly 1..=16-byte chunks, sometimes up to 2 KiB).
struct Chunks {
    seed: u8,
    state: u32,
}

impl Chunks {
    fn new(seed: u8) -> Self {
        Self {
            seed,
            state: 0x9E37_79B9 ^ u32::from(seed),
        }
    }

    fn next_len(&mut self) -> usize {
        if self.seed == 0 {
            return usize::MAX;
        }
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        let r = (x >> 3) as usize;
        if x & 7 == 0 {
            1 + r % 2048
        } else {
            1 + r % 16
        }
    }
}

/// The body length a header announces, if 4 bytes are there.
fn announced_length(bytes: &[u8]) -> Option<i32> {
    bytes
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// First byte: how to chunk the rest. The rest is a byte stream fed to
/// `FrameDecoder::new(MAX_BODY_BYTES)` chunk by chunk, draining it after every chunk.
///
/// Checks: the buffer always holds exactly the stream bytes fed and not consumed yet; a heartbeat
/// consumes one `0xDF`; a packet's body is within the limit, it re-encodes to the bytes it was
/// read from (cc and lrc zeroed) and decodes back to itself; `Ok(None)` only when no whole frame
/// is buffered; an error is justified by the header, leaves the buffer as it was and repeats;
/// the buffer's capacity stays bounded.
pub fn frame(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let decoder = FrameDecoder::new(MAX_BODY_BYTES);
    let mut chunks = Chunks::new(seed);
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let capacity_bound = 4 * (HEADER_BYTES + MAX_BODY_BYTES + stream.len());

    while fed < stream.len() {
        let end = fed.saturating_add(chunks.next_len()).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            let result = decoder.decode(&mut buf);
            match result {
                Ok(None) => {
                    assert_eq!(
                        &buf[..],
                        &stream[consumed..fed],
                        "Ok(None) must not consume"
                    );
                    if let Some(&first) = buf.first() {
                        assert_ne!(
                            first, HEARTBEAT_BYTE,
                            "a buffered heartbeat was not returned"
                        );
                        if let Some(length) = announced_length(&buf) {
                            let body_len =
                                usize::try_from(length).expect("negative length accepted");
                            assert!(body_len <= MAX_BODY_BYTES, "oversized length accepted");
                            assert!(
                                buf.len() < HEADER_BYTES + body_len,
                                "whole frame buffered but Ok(None)"
                            );
                        }
                    }
                    break;
                }
                Ok(Some(Frame::Heartbeat)) => {
                    assert_eq!(
                        stream[consumed], HEARTBEAT_BYTE,
                        "heartbeat from a non-0xDF byte"
                    );
                    consumed += 1;
                }
                Ok(Some(Frame::Packet(packet))) => {
                    assert!(packet.body.len() <= MAX_BODY_BYTES, "body over the limit");
                    let wire = &stream[consumed..consumed + packet.encoded_len()];
                    let encoded = packet.to_bytes();
                    let mut expected = wire.to_vec();
                    expected[5] = 0; // cc
                    expected[6] = 0;
                    expected[12] = 0; // lrc
                    assert_eq!(
                        &encoded[..],
                        &expected[..],
                        "re-encoding differs from the wire"
                    );
                    let mut again = BytesMut::from(&encoded[..]);
                    assert_eq!(
                        decoder.decode(&mut again),
                        Ok(Some(Frame::Packet(packet.clone())))
                    );
                    assert!(again.is_empty());
                    consumed += packet.encoded_len();
                }
                Err(error) => {
                    assert_eq!(&buf[..], &stream[consumed..fed], "Err must not consume");
                    let length =
                        announced_length(&buf).expect("error before a length was readable");
                    match error {
                        FrameError::NegativeLength { length: l } => assert!(l == length && l < 0),
                        FrameError::TooLarge {
                            length: l,
                            max_body_bytes,
                        } => {
                            assert_eq!(max_body_bytes, MAX_BODY_BYTES);
                            assert!(l > MAX_BODY_BYTES && i32::try_from(l) == Ok(length));
                        }
                    }
                    assert_eq!(decoder.decode(&mut buf), Err(error), "error must repeat");
                    assert_eq!(
                        &buf[..],
                        &stream[consumed..fed],
                        "repeated Err must not consume"
                    );
                    return;
                }
            }
            assert_eq!(
                &buf[..],
                &stream[consumed..fed],
                "buffer out of step with the stream"
            );
        }
        assert!(
            buf.capacity() <= capacity_bound,
            "buffer capacity {} grew unbounded",
            buf.capacity()
        );
    }
    assert_eq!(consumed + buf.len(), stream.len());
}

// ---------------------------------------------------------------------------------------------
// message
// ---------------------------------------------------------------------------------------------

/// Decodes `body` as `T`; when that works, checks that encoding is canonical and stable: the
/// encoding is no longer than the input, decodes to the same value, and re-encodes identically.
fn roundtrip<T: Body + PartialEq + Debug>(body: &[u8]) {
    let Ok(value) = T::decode(body) else {
        return;
    };
    let encoded = value.to_bytes();
    assert!(
        encoded.len() <= body.len(),
        "encoding {} bytes longer than the input {}",
        encoded.len(),
        body.len()
    );
    let again = T::decode(&encoded).expect("an encoded body must decode");
    assert_eq!(again, value, "decode(encode(x)) != x");
    assert_eq!(again.to_bytes(), encoded, "encoding is not stable");
}

/// Number of body types [`message`] selects from.
pub const MESSAGE_KINDS: u8 = 14;

/// First byte (modulo [`MESSAGE_KINDS`]) selects the body type, the rest is its body:
/// 0 Handshake, 1 HandshakeOk, 2 FastConnect, 3 FastConnectOk, 4 Bind, 5 Push, 6 Ack, 7 Kick,
/// 8 OkMessage, 9 ErrorMessage, 10 GatewayPush, 11 GatewayKick, 12 HttpRequest, 13 HttpResponse.
pub fn message(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % MESSAGE_KINDS {
        0 => roundtrip::<Handshake>(body),
        1 => roundtrip::<HandshakeOk>(body),
        2 => roundtrip::<FastConnect>(body),
        3 => roundtrip::<FastConnectOk>(body),
        4 => roundtrip::<Bind>(body),
        5 => roundtrip::<Push>(body),
        6 => roundtrip::<Ack>(body),
        7 => roundtrip::<Kick>(body),
        8 => roundtrip::<OkMessage>(body),
        9 => roundtrip::<ErrorMessage>(body),
        10 => roundtrip::<GatewayPush>(body),
        11 => roundtrip::<GatewayKick>(body),
        12 => roundtrip::<HttpRequest>(body),
        _ => roundtrip::<HttpResponse>(body),
    }
}

// ---------------------------------------------------------------------------------------------
// pipeline
// ---------------------------------------------------------------------------------------------

fn aes() -> &'static AesCipher {
    static AES: OnceLock<AesCipher> = OnceLock::new();
    AES.get_or_init(|| AesCipher::new(FUZZ_AES_KEY, FUZZ_AES_IV))
}

fn rsa() -> &'static ServerRsaKey {
    // Loading recovers the primes: do it once per process, not once per input.
    static RSA: OnceLock<ServerRsaKey> = OnceLock::new();
    RSA.get_or_init(ServerRsaKey::mpush_default)
}

/// First byte: the low 5 bits are the packet flags (CRYPTO 0x01, COMPRESS 0x02, ...), the top 3
/// bits pick the key: 0..=5 the fixed AES session cipher, 6 the default RSA key, 7 no key. The
/// rest is the wire body, opened with `pipeline::open(.., MAX_BODY_BYTES)`.
///
/// Checks: no panic; the result is never larger than the limit when inflated, never larger than
/// the wire body otherwise, empty exactly when the wire body is (an empty body passes whatever
/// the flags), and unchanged when no flag applies; a non-empty result re-sealed with the AES key
/// (compressing above 1 KiB) opens back to itself; it is then handed to the GATEWAY_PUSH and BIND
/// decoders.
pub fn pipeline(data: &[u8]) {
    let Some((&head, wire)) = data.split_first() else {
        return;
    };
    let flags = Flags(head & 0x1F);
    let key = match head >> 5 {
        0..=5 => OpenKey::Aes(aes()),
        6 => OpenKey::Rsa(rsa()),
        _ => OpenKey::None,
    };
    let body = Bytes::copy_from_slice(wire);
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(head));
    let Ok(plain) = pipeline::open(flags, &body, key, &mut rng, MAX_BODY_BYTES) else {
        return;
    };
    let processed = flags.intersects(Flags::CRYPTO.with(Flags::COMPRESS));
    if flags.contains(Flags::COMPRESS) {
        assert!(
            plain.len() <= MAX_BODY_BYTES,
            "inflated {} bytes past the limit",
            plain.len()
        );
    } else {
        assert!(plain.len() <= body.len(), "decryption grew the body");
    }
    if body.is_empty() {
        // MPush passes an empty body through unprocessed, whatever the flags.
        assert!(plain.is_empty(), "empty body opened to something");
    } else if processed {
        assert!(!plain.is_empty(), "processed body opened to nothing");
    } else {
        assert_eq!(plain, body, "unprocessed body changed");
    }

    // An empty body cannot travel processed (it would open to nothing), and a larger one than
    // the limit would not inflate back.
    if !plain.is_empty() && plain.len() <= MAX_BODY_BYTES {
        let (sealed_flags, sealed) = pipeline::seal(
            &plain,
            Some(aes()),
            pipeline::CLIENT_COMPRESS_THRESHOLD_BYTES,
        );
        let reopened = pipeline::open(
            sealed_flags,
            &sealed,
            OpenKey::Aes(aes()),
            &mut rng,
            MAX_BODY_BYTES,
        );
        assert_eq!(
            reopened.as_ref(),
            Ok(&plain),
            "seal then open is not the identity"
        );
    }

    let _ = GatewayPush::decode(&plain);
    let _ = Bind::decode(&plain);
}
