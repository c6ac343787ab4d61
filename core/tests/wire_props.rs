//! Property tests for the MPush wire layer: field encodings (reference §3), the frame stream
//! (§2), every message body (§8, §11) and the body pipeline (§6, §7.2).
//!
//! Case counts are kept modest so the whole file runs in a few seconds in the test profile.
use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use pushgate_core::codec::{prefixed_len, put_bytes, put_string, Reader, EXTENDED_LENGTH_MARKER};
use pushgate_core::crypto::{self, AesCipher, ClientRsaKey, ServerRsaKey};
use pushgate_core::frame::{
    encode_heartbeat, Flags, Frame, FrameDecoder, FrameError, Packet, HEADER_BYTES,
};
use pushgate_core::message::{
    Ack, Bind, Body, ErrorMessage, FastConnect, FastConnectOk, GatewayKick, GatewayPush, Handshake,
    HandshakeOk, HttpRequest, HttpResponse, Kick, OkMessage, Push,
};
use pushgate_core::pipeline::{self, OpenKey, PipelineError};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::LazyLock;

/// The frame limit used by the stream properties: comfortably above the bodies generated.
const STREAM_LIMIT: usize = 16 * 1024;
/// MPush's server compression threshold.
const THRESHOLD: usize = 10 * 1024;
/// Inflation bound handed to `pipeline::open`.
const MAX_INFLATED: usize = 64 * 1024;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // proptest's default looks for lib.rs, which integration tests lack: keep regressions
        // beside this file.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// `len` pseudo-random bytes from a seed: much cheaper than a proptest `vec` of that size.
fn filled(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Field strategies
// ---------------------------------------------------------------------------------------------

/// A string needing the extended length form: at least 32767 UTF-8 bytes, sometimes exactly
/// on the boundary, sometimes made of multi-byte characters.
fn long_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![32767usize, 32768, 65535, 65536]).prop_map(|n| "x".repeat(n)),
        (32767usize..40000).prop_map(|n| "x".repeat(n)),
        // 2-byte and 3-byte characters: the prefix counts bytes, not characters.
        (16384usize..20000).prop_map(|n| "é".repeat(n)),
        (10923usize..13000).prop_map(|n| "漢".repeat(n)),
    ]
}

/// Any string: mostly short arbitrary unicode (including ""), rarely one in the extended form.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(String::new()),
        40 => any::<String>(),
        20 => "[a-z0-9,_-]{1,24}",
        // Right below the extended form: the largest short length.
        1 => Just("y".repeat(32766)),
        1 => long_text(),
    ]
}

/// Any byte array: mostly short, rarely one in the extended form.
fn blob() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        6 => Just(Bytes::new()),
        40 => vec(any::<u8>(), 1..64).prop_map(Bytes::from),
        2 => (64usize..2048, any::<u64>()).prop_map(|(n, s)| Bytes::from(filled(n, s))),
        1 => (32767usize..40000, any::<u64>()).prop_map(|(n, s)| Bytes::from(filled(n, s))),
    ]
}

// ---------------------------------------------------------------------------------------------
// One strategy per message type
// ---------------------------------------------------------------------------------------------

fn handshake() -> impl Strategy<Value = Handshake> {
    (
        text(),
        text(),
        text(),
        text(),
        blob(),
        blob(),
        any::<i32>(),
        any::<i32>(),
        any::<i64>(),
    )
        .prop_map(
            |(
                device_id,
                os_name,
                os_version,
                client_version,
                iv,
                client_key,
                min_hb,
                max_hb,
                ts,
            )| Handshake {
                device_id,
                os_name,
                os_version,
                client_version,
                iv,
                client_key,
                min_heartbeat_ms: min_hb,
                max_heartbeat_ms: max_hb,
                timestamp_ms: ts,
            },
        )
}

fn handshake_ok() -> impl Strategy<Value = HandshakeOk> {
    (blob(), any::<i32>(), text(), any::<i64>()).prop_map(
        |(server_key, heartbeat_ms, session_id, expire)| HandshakeOk {
            server_key,
            heartbeat_ms,
            session_id,
            expire_time_ms: expire,
        },
    )
}

fn fast_connect() -> impl Strategy<Value = FastConnect> {
    (text(), text(), any::<i32>(), any::<i32>()).prop_map(
        |(session_id, device_id, min_hb, max_hb)| FastConnect {
            session_id,
            device_id,
            min_heartbeat_ms: min_hb,
            max_heartbeat_ms: max_hb,
        },
    )
}

fn fast_connect_ok() -> impl Strategy<Value = FastConnectOk> {
    any::<i32>().prop_map(|heartbeat_ms| FastConnectOk { heartbeat_ms })
}

fn bind() -> impl Strategy<Value = Bind> {
    (text(), text(), text()).prop_map(|(user_id, data, tags)| Bind {
        user_id,
        data,
        tags,
    })
}

fn kick() -> impl Strategy<Value = Kick> {
    (text(), text()).prop_map(|(device_id, user_id)| Kick { device_id, user_id })
}

fn ok_message() -> impl Strategy<Value = OkMessage> {
    (any::<u8>(), any::<u8>(), text()).prop_map(|(cmd, code, data)| OkMessage { cmd, code, data })
}

fn error_message() -> impl Strategy<Value = ErrorMessage> {
    (any::<u8>(), any::<u8>(), text(), text()).prop_map(|(cmd, code, reason, data)| ErrorMessage {
        cmd,
        code,
        reason,
        data,
    })
}

fn push() -> impl Strategy<Value = Push> {
    blob().prop_map(|content| Push { content })
}

fn ack() -> impl Strategy<Value = Ack> {
    Just(Ack)
}

fn gateway_push() -> impl Strategy<Value = GatewayPush> {
    (
        text(),
        any::<i32>(),
        any::<i32>(),
        blob(),
        text(),
        text(),
        text(),
    )
        .prop_map(
            |(user_id, client_type, timeout_ms, content, task_id, tags, condition)| GatewayPush {
                user_id,
                client_type,
                timeout_ms,
                content,
                task_id,
                tags,
                condition,
            },
        )
}

fn gateway_kick() -> impl Strategy<Value = GatewayKick> {
    (text(), text(), text(), any::<i32>(), text(), any::<i32>()).prop_map(
        |(user_id, device_id, conn_id, client_type, target_server, target_port)| GatewayKick {
            user_id,
            device_id,
            conn_id,
            client_type,
            target_server,
            target_port,
        },
    )
}

fn http_request() -> impl Strategy<Value = HttpRequest> {
    (any::<u8>(), text(), text(), blob()).prop_map(|(method, uri, headers, body)| HttpRequest {
        method,
        uri,
        headers,
        body,
    })
}

fn http_response() -> impl Strategy<Value = HttpResponse> {
    (any::<i32>(), text(), text(), blob()).prop_map(
        |(status_code, reason_phrase, headers, body)| HttpResponse {
            status_code,
            reason_phrase,
            headers,
            body,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// encode → decode round trips
// ---------------------------------------------------------------------------------------------

/// encode → decode gives the value back; `to_bytes` equals `encode`; and (unless the body ends
/// in raw content) trailing bytes after a body are ignored, as MPush's decoders do.
fn check_round_trip<T: Body + PartialEq + std::fmt::Debug>(
    value: &T,
    trailing: &[u8],
    ignores_trailing: bool,
) -> Result<(), TestCaseError> {
    let mut encoded = BytesMut::new();
    value.encode(&mut encoded);
    prop_assert_eq!(&value.to_bytes()[..], &encoded[..]);
    let decoded =
        T::decode(&encoded).map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
    prop_assert_eq!(&decoded, value);
    if ignores_trailing {
        encoded.put_slice(trailing);
        let decoded =
            T::decode(&encoded).map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
        prop_assert_eq!(&decoded, value);
    }
    Ok(())
}

macro_rules! round_trip {
    ($name:ident, $strategy:expr, $ignores_trailing:expr) => {
        proptest! {
            #![proptest_config(config(1024))]
            #[test]
            fn $name(value in $strategy, trailing in vec(any::<u8>(), 0..16)) {
                check_round_trip(&value, &trailing, $ignores_trailing)?;
            }
        }
    };
}

round_trip!(handshake_round_trips, handshake(), true);
round_trip!(handshake_ok_round_trips, handshake_ok(), true);
round_trip!(fast_connect_round_trips, fast_connect(), true);
round_trip!(fast_connect_ok_round_trips, fast_connect_ok(), true);
round_trip!(bind_round_trips, bind(), true);
round_trip!(kick_round_trips, kick(), true);
round_trip!(ok_message_round_trips, ok_message(), true);
round_trip!(error_message_round_trips, error_message(), true);
// A PUSH body is the content itself: trailing bytes are content.
round_trip!(push_round_trips, push(), false);
round_trip!(ack_round_trips, ack(), true);
round_trip!(gateway_push_round_trips, gateway_push(), true);
round_trip!(gateway_kick_round_trips, gateway_kick(), true);
round_trip!(http_request_round_trips, http_request(), true);
round_trip!(http_response_round_trips, http_response(), true);

proptest! {
    #![proptest_config(config(128))]

    /// PUSH and ACK bodies are exactly the content / nothing.
    #[test]
    fn push_body_is_the_content(value in push()) {
        prop_assert_eq!(&value.to_bytes()[..], &value.content[..]);
        prop_assert!(Ack.to_bytes().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Both length forms (reference §3)
// ---------------------------------------------------------------------------------------------

fn field_length() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => 0usize..70000,
        1 => 0usize..300,
        1 => prop::sample::select(vec![
            0usize, 1, 255, 256, 32765, 32766, 32767, 32768, 65535, 65536, 69999
        ]),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// put_bytes → Reader::bytes round-trips, uses the short form below 32767 and the extended
    /// `0x7FFF` + int form from 32767 on, and consumes exactly `prefixed_len` bytes.
    #[test]
    fn length_prefixed_bytes_round_trip(
        len in field_length(),
        seed in any::<u64>(),
        trailing in vec(any::<u8>(), 0..8),
    ) {
        let data = filled(len, seed);
        let mut out = Vec::new();
        put_bytes(&mut out, &data);
        prop_assert_eq!(out.len(), prefixed_len(len));

        let short = i16::from_be_bytes([out[0], out[1]]);
        if len < 32767 {
            prop_assert_eq!(usize::try_from(short).unwrap(), len);
            prop_assert_eq!(&out[2..], &data[..]);
        } else {
            prop_assert_eq!(short, EXTENDED_LENGTH_MARKER);
            let extra = i32::from_be_bytes([out[2], out[3], out[4], out[5]]);
            prop_assert_eq!(usize::try_from(extra).unwrap() + 32767, len);
            prop_assert_eq!(&out[6..], &data[..]);
        }

        out.extend_from_slice(&trailing);
        let mut reader = Reader::new(&out);
        prop_assert_eq!(reader.bytes("f").unwrap(), &data[..]);
        prop_assert_eq!(reader.remaining(), trailing.len());
        prop_assert_eq!(reader.rest(), &trailing[..]);
    }

    /// The same for strings, whose prefix counts UTF-8 bytes.
    #[test]
    fn length_prefixed_strings_round_trip(
        len in field_length(),
        ch in prop::sample::select(vec!['a', 'é', '漢', '😀']),
    ) {
        let text: String = std::iter::repeat_n(ch, len / ch.len_utf8()).collect();
        let mut out = BytesMut::new();
        put_string(&mut out, &text);
        prop_assert_eq!(out.len(), prefixed_len(text.len()));
        let mut reader = Reader::new(&out);
        prop_assert_eq!(reader.string("s").unwrap(), text);
        prop_assert!(reader.is_empty());
    }

    /// A truncated field is an error, never a panic or a short read.
    #[test]
    fn truncated_fields_are_errors(len in field_length(), cut in any::<prop::sample::Index>()) {
        let data = vec![0x5Au8; len];
        let mut out = Vec::new();
        put_bytes(&mut out, &data);
        let cut = cut.index(out.len());
        let mut reader = Reader::new(&out[..cut]);
        prop_assert!(reader.bytes("f").is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// The frame stream (reference §2)
// ---------------------------------------------------------------------------------------------

fn packet_body() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        1 => Just(Bytes::new()),
        6 => vec(any::<u8>(), 1..64).prop_map(Bytes::from),
        2 => (64usize..4096, any::<u64>()).prop_map(|(n, s)| Bytes::from(filled(n, s))),
        // Right at the limit.
        1 => any::<u64>().prop_map(|s| Bytes::from(filled(STREAM_LIMIT, s))),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    (any::<u8>(), any::<u8>(), any::<i32>(), packet_body())
        .prop_map(|(cmd, flags, session_id, body)| Packet::new(cmd, Flags(flags), session_id, body))
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![1 => Just(Frame::Heartbeat), 3 => packet().prop_map(Frame::Packet)]
}

/// Chunk sizes to cut a stream into (cycled until the stream is used up).
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(
        prop_oneof![3 => Just(1usize), 3 => 1usize..14, 2 => 1usize..512, 1 => 1usize..20000],
        1..32,
    )
}

fn encode_frames(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        match frame {
            Frame::Heartbeat => encode_heartbeat(&mut out),
            Frame::Packet(packet) => packet.encode(&mut out),
        }
    }
    out
}

/// Feeds `stream` in chunks, draining the decoder after each chunk.
fn decode_chunked(
    decoder: &FrameDecoder,
    stream: &[u8],
    sizes: &[usize],
) -> Result<Vec<Frame>, FrameError> {
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    let mut offset = 0;
    for &size in sizes.iter().cycle() {
        if offset >= stream.len() {
            break;
        }
        let end = (offset + size).min(stream.len());
        buf.extend_from_slice(&stream[offset..end]);
        offset = end;
        while let Some(frame) = decoder.decode(&mut buf)? {
            decoded.push(frame);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    Ok(decoded)
}

proptest! {
    #![proptest_config(config(1024))]

    /// Any sequence of frames, cut anywhere, decodes back to the same sequence.
    #[test]
    fn frame_stream_splits_anywhere(frames in vec(frame(), 0..24), sizes in chunk_sizes()) {
        let stream = encode_frames(&frames);
        let expected_len: usize = frames
            .iter()
            .map(|f| match f {
                Frame::Heartbeat => 1,
                Frame::Packet(p) => p.encoded_len(),
            })
            .sum();
        prop_assert_eq!(stream.len(), expected_len);
        let decoded = decode_chunked(&FrameDecoder::new(STREAM_LIMIT), &stream, &sizes);
        prop_assert_eq!(decoded, Ok(frames));
    }

    /// A packet encodes to the 13-byte header of §2 (cc and lrc 0) followed by the body.
    #[test]
    fn packet_header_layout(packet in packet()) {
        let bytes = packet.to_bytes();
        prop_assert_eq!(bytes.len(), HEADER_BYTES + packet.body.len());
        prop_assert_eq!(&bytes[0..4], &(packet.body.len() as i32).to_be_bytes()[..]);
        prop_assert_eq!(bytes[4], packet.cmd);
        prop_assert_eq!(&bytes[5..7], &[0u8, 0][..]);
        prop_assert_eq!(bytes[7], packet.flags.0);
        prop_assert_eq!(&bytes[8..12], &packet.session_id.to_be_bytes()[..]);
        prop_assert_eq!(bytes[12], 0);
        prop_assert_eq!(&bytes[13..], &packet.body[..]);
    }

    /// cc and lrc are never validated: any values decode to the same packet.
    #[test]
    fn cc_and_lrc_are_ignored(
        packet in packet(),
        cc in any::<[u8; 2]>(),
        lrc in any::<u8>(),
        sizes in chunk_sizes(),
    ) {
        let mut bytes = packet.to_bytes().to_vec();
        bytes[5..7].copy_from_slice(&cc);
        bytes[12] = lrc;
        let decoded = decode_chunked(&FrameDecoder::new(STREAM_LIMIT), &bytes, &sizes);
        prop_assert_eq!(decoded, Ok(vec![Frame::Packet(packet)]));
    }

    /// A length above the limit is rejected from the header alone, and nothing is consumed.
    #[test]
    fn oversized_length_fails_at_the_header(
        limit in prop_oneof![Just(10240usize), Just(STREAM_LIMIT), 0usize..100_000],
        excess in prop_oneof![Just(1i64), 1i64..1000, 1i64..i64::from(i32::MAX)],
        rest in any::<[u8; 9]>(),
    ) {
        let length = (limit as i64 + excess).min(i64::from(i32::MAX));
        prop_assume!(length > limit as i64);
        let mut header = BytesMut::new();
        header.put_i32(length as i32);
        header.put_slice(&rest);
        let before = header.clone();
        let decoder = FrameDecoder::new(limit);
        let expected = Err(FrameError::TooLarge { length: length as usize, max_body_bytes: limit });
        prop_assert_eq!(decoder.decode(&mut header), expected.clone());
        prop_assert_eq!(&header, &before, "nothing consumed");
        // The error is sticky.
        prop_assert_eq!(decoder.decode(&mut header), expected);
    }

    /// A negative length is rejected from the header alone — unless its first byte is 0xDF,
    /// which the decoder takes as a heartbeat first (§2 step 1).
    #[test]
    fn negative_length_fails_at_the_header(length in i32::MIN..0, rest in any::<[u8; 9]>()) {
        let mut header = BytesMut::new();
        header.put_i32(length);
        header.put_slice(&rest);
        let decoder = FrameDecoder::default();
        if header[0] == 0xDF {
            prop_assert_eq!(decoder.decode(&mut header), Ok(Some(Frame::Heartbeat)));
            prop_assert_eq!(header.len(), HEADER_BYTES - 1);
        } else {
            let before = header.clone();
            let expected = Err(FrameError::NegativeLength { length });
            prop_assert_eq!(decoder.decode(&mut header), expected);
            prop_assert_eq!(&header, &before, "nothing consumed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary bytes never panic
// ---------------------------------------------------------------------------------------------

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..4096),
        1 => vec(any::<u8>(), 0..32),
        // Bytes that look like headers and length prefixes.
        1 => vec(prop::sample::select(vec![0x00u8, 0x01, 0x7F, 0x80, 0xDF, 0xFF]), 0..64),
    ]
}

fn decode_all_bodies(bytes: &[u8]) {
    let _ = Handshake::decode(bytes);
    let _ = HandshakeOk::decode(bytes);
    let _ = FastConnect::decode(bytes);
    let _ = FastConnectOk::decode(bytes);
    let _ = Bind::decode(bytes);
    let _ = Kick::decode(bytes);
    let _ = OkMessage::decode(bytes);
    let _ = ErrorMessage::decode(bytes);
    let _ = Push::decode(bytes);
    let _ = Ack::decode(bytes);
    let _ = GatewayPush::decode(bytes);
    let _ = GatewayKick::decode(bytes);
    let _ = HttpRequest::decode(bytes);
    let _ = HttpResponse::decode(bytes);
}

/// MPush's shipped key pair (loading it recovers p and q, so do it once).
static SERVER_RSA: LazyLock<ServerRsaKey> = LazyLock::new(ServerRsaKey::mpush_default);

fn test_cipher() -> AesCipher {
    AesCipher::new([0x11; 16], [0x22; 16])
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in garbage(),
        limit in prop_oneof![Just(10240usize), 0usize..64],
    ) {
        // Frame decoder: loop until it wants more bytes or gives up.
        let decoder = FrameDecoder::new(limit);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut frames = 0usize;
        while let Ok(Some(_)) = decoder.decode(&mut buf) {
            frames += 1;
            prop_assert!(frames <= bytes.len(), "decoder made no progress");
        }

        // Every body decoder, on the whole input and on every suffix start up to 16.
        decode_all_bodies(&bytes);
        for start in 1..bytes.len().min(16) {
            decode_all_bodies(&bytes[start..]);
        }

        // The pipeline with every flag combination, with and without a key.
        let cipher = test_cipher();
        let body = Bytes::from(bytes);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for flags in 0u8..=0x1F {
            let flags = Flags(flags);
            let _ = pipeline::open(flags, &body, OpenKey::Aes(&cipher), &mut rng, MAX_INFLATED);
            let plain = pipeline::open(flags, &body, OpenKey::None, &mut rng, MAX_INFLATED);
            if flags.contains(Flags::CRYPTO) {
                if !body.is_empty() {
                    prop_assert_eq!(plain, Err(PipelineError::NoKey));
                }
                // RSA is slow: only the two flag sets a handshake can carry.
                if flags.without(Flags::CRYPTO | Flags::COMPRESS) == Flags::NONE {
                    let rsa = OpenKey::Rsa(&SERVER_RSA);
                    let _ = pipeline::open(flags, &body, rsa, &mut rng, MAX_INFLATED);
                }
            } else if !flags.contains(Flags::COMPRESS) {
                prop_assert_eq!(plain, Ok(body.clone()));
            }
        }
    }

    /// Valid AES ciphertexts of garbage still never panic when they claim to be compressed.
    #[test]
    fn encrypted_garbage_never_panics(bytes in vec(any::<u8>(), 0..2048)) {
        let cipher = test_cipher();
        let wire = Bytes::from(cipher.encrypt(&bytes));
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let key = OpenKey::Aes(&cipher);
        let opened = pipeline::open(Flags::CRYPTO, &wire, key, &mut rng, MAX_INFLATED);
        if bytes.is_empty() {
            prop_assert_eq!(opened, Err(PipelineError::EmptyBody));
        } else {
            prop_assert_eq!(opened, Ok(Bytes::from(bytes)));
        }
        let both = Flags::CRYPTO | Flags::COMPRESS;
        let _ = pipeline::open(both, &wire, key, &mut rng, MAX_INFLATED);
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline (reference §6)
// ---------------------------------------------------------------------------------------------

/// Non-empty bodies: MPush never processes an empty one (see
/// `empty_bodies_are_left_unprocessed_like_mpush`).
fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Incompressible.
        (1usize..30000, any::<u64>()).prop_map(|(n, s)| filled(n, s)),
        // Small.
        vec(any::<u8>(), 1..64),
        // Compressible text.
        (1usize..30000, any::<u8>())
            .prop_map(|(n, b)| (0..n).map(|i| b.wrapping_add((i % 7) as u8)).collect()),
        // Around the threshold.
        (THRESHOLD - 2..THRESHOLD + 3, any::<u64>()).prop_map(|(n, s)| filled(n, s)),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// seal → open gives the plaintext back; COMPRESS is set iff the body is larger than the
    /// threshold, CRYPTO iff a cipher is given.
    #[test]
    fn seal_then_open_round_trips(
        plain in plaintext(),
        key in any::<[u8; 16]>(),
        iv in any::<[u8; 16]>(),
        encrypt in any::<bool>(),
    ) {
        let cipher = AesCipher::new(key, iv);
        let cipher = encrypt.then_some(&cipher);
        let (flags, wire) = pipeline::seal(&plain, cipher, THRESHOLD);
        prop_assert_eq!(flags.contains(Flags::COMPRESS), plain.len() > THRESHOLD);
        prop_assert_eq!(flags.contains(Flags::CRYPTO), encrypt);
        prop_assert_eq!(flags.without(Flags::COMPRESS | Flags::CRYPTO), Flags::NONE);
        if flags == Flags::NONE {
            prop_assert_eq!(&wire[..], &plain[..]);
        }
        if encrypt {
            prop_assert_eq!(wire.len() % 16, 0);
        }

        let key = match cipher {
            Some(aes) => OpenKey::Aes(aes),
            None => OpenKey::None,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let opened = pipeline::open(flags, &wire, key, &mut rng, MAX_INFLATED);
        prop_assert_eq!(opened, Ok(Bytes::from(plain)));
    }
}

/// MPush's `BaseMessage.encodeBody` / `decodeBody` (server and Java client SDK alike) only
/// process a body when it is non-empty: an empty body is sent with no CRYPTO/COMPRESS flag and
/// no bytes, and an empty received body is never decrypted or inflated, whatever its flags say.
/// (A non-empty body that decrypts to nothing is still an error, as tested above.)
#[test]
fn empty_bodies_are_left_unprocessed_like_mpush() {
    let cipher = test_cipher();
    let (flags, wire) = pipeline::seal(&[], Some(&cipher), THRESHOLD);
    assert_eq!(
        (flags, wire),
        (Flags::NONE, Bytes::new()),
        "empty body sealed"
    );

    // A PUSH with empty content keeps only its ack bit, and stays empty on the wire.
    let empty_push = Push {
        content: Bytes::new(),
    };
    let packet = pipeline::sealed_packet(
        15,
        Flags::AUTO_ACK,
        1,
        &empty_push,
        Some(&cipher),
        THRESHOLD,
    );
    assert_eq!(packet, Packet::new(15, Flags::AUTO_ACK, 1, Bytes::new()));

    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for flags in [
        Flags::CRYPTO,
        Flags::COMPRESS,
        Flags::CRYPTO | Flags::COMPRESS,
    ] {
        let opened = pipeline::open(
            flags,
            &Bytes::new(),
            OpenKey::Aes(&cipher),
            &mut rng,
            MAX_INFLATED,
        );
        assert_eq!(
            opened,
            Ok(Bytes::new()),
            "empty body with flags {flags:?} opened"
        );
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Inbound bodies may be gzip (iOS clients) as well as zlib: both inflate to the plaintext.
    #[test]
    fn open_inflates_zlib_and_gzip(
        plain in plaintext(),
        gz in any::<bool>(),
    ) {
        let compressed = if gz { crypto::gzip(&plain) } else { crypto::deflate_zlib(&plain) };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let wire = Bytes::from(compressed);
        let opened = pipeline::open(Flags::COMPRESS, &wire, OpenKey::None, &mut rng, MAX_INFLATED);
        prop_assert_eq!(opened, Ok(Bytes::from(plain)));
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// The client's RSA-sealed HANDSHAKE body (one 128-byte block per 117 plaintext bytes) opens
    /// with the server key.
    #[test]
    fn rsa_seal_then_open_round_trips(plain in vec(any::<u8>(), 1..400), seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let client_key = ClientRsaKey::mpush_default();
        let (flags, wire) = pipeline::seal_rsa(&plain, &client_key, &mut rng).unwrap();
        prop_assert_eq!(flags, Flags::CRYPTO);
        prop_assert_eq!(wire.len(), plain.len().div_ceil(117) * 128);
        let key = OpenKey::Rsa(&SERVER_RSA);
        let opened = pipeline::open(flags, &wire, key, &mut rng, MAX_INFLATED);
        prop_assert_eq!(opened, Ok(Bytes::from(plain)));
    }
}
