//! The golden wire vectors captured from real MPush software (`../shared/vectors/`), and
//! helpers to replay their client side against the binary over [`RawConn`]s.
//!
//! Random values differ per run (server keys, reusable session ids, timestamps, push session
//! ids), so frames that carry them are compared field by field; the others byte for byte.
use crate::{shared_path, RawConn};
use pushgate_core::command::Command;
use pushgate_core::crypto::{mix_keys, AesCipher};
use pushgate_core::frame::{Flags, Packet};
use pushgate_core::message::{Body, HandshakeOk};
use serde_json::Value;
use std::time::Duration;

/// How long a replay waits for one answer.
pub const WAIT: Duration = Duration::from_secs(5);

/// A vector file, parsed.
pub fn load(name: &str) -> Value {
    let path = shared_path(&format!("vectors/{name}"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// One captured connection's frames.
#[derive(Debug, Clone, Copy)]
pub struct Capture<'a> {
    pub frames: &'a [Value],
}

impl<'a> Capture<'a> {
    /// The frames of connection `connection` of a vector file.
    pub fn of(file: &'a Value, connection: usize) -> Self {
        Self {
            frames: file["connections"][connection]["frames"]
                .as_array()
                .expect("frames"),
        }
    }

    pub fn frame(&self, index: usize) -> &'a Value {
        let frame = &self.frames[index];
        assert_eq!(frame["index"], index, "frames are in index order");
        frame
    }

    /// A hex field of frame `index`, decoded.
    pub fn bytes(&self, index: usize, field: &str) -> Vec<u8> {
        let text = self.frame(index)[field]
            .as_str()
            .unwrap_or_else(|| panic!("frame {index} has no {field}"));
        hex::decode(text).expect("hex")
    }

    /// The whole frame as on the wire.
    pub fn raw(&self, index: usize) -> Vec<u8> {
        self.bytes(index, "raw_hex")
    }

    /// The final plaintext body.
    pub fn plain(&self, index: usize) -> Vec<u8> {
        self.bytes(index, "plaintext_body_hex")
    }

    /// A header field.
    pub fn header(&self, index: usize, field: &str) -> i64 {
        self.frame(index)["header"][field]
            .as_i64()
            .unwrap_or_else(|| panic!("frame {index} header.{field}"))
    }

    pub fn flags(&self, index: usize) -> Flags {
        Flags(u8::try_from(self.header(index, "flags")).expect("flags byte"))
    }
}

/// A 16-byte hex value of the key material.
pub fn key16(hex_text: &Value) -> [u8; 16] {
    hex::decode(hex_text.as_str().expect("hex string"))
        .expect("hex")
        .try_into()
        .expect("16 bytes")
}

/// Replaces every run of 10 or more digits (epoch milliseconds) with `#`.
pub fn without_times(text: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 10 {
            out.push('#');
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

/// An encoded frame with its sessionId field replaced.
pub fn with_session_id(mut frame: Vec<u8>, session_id: i32) -> Vec<u8> {
    frame[8..12].copy_from_slice(&session_id.to_be_bytes());
    frame
}

/// Reads as many bytes as `expected` holds and checks they are exactly those.
pub async fn expect_exact(conn: &mut RawConn, expected: &[u8], what: &str) {
    let got = conn.read_exact(expected.len(), WAIT).await;
    assert_eq!(
        hex::encode(&got),
        hex::encode(expected),
        "{what}: not the captured bytes"
    );
}

/// A captured phone connection: its frames and its key material.
#[derive(Debug, Clone, Copy)]
pub struct Phone<'a> {
    pub cap: Capture<'a>,
    pub client_key: [u8; 16],
    pub iv: [u8; 16],
}

impl<'a> Phone<'a> {
    /// Connection `connection` of a vector file.
    pub fn of(file: &'a Value, connection: usize) -> Self {
        let keys = &file["connections"][connection]["key_material"];
        Self {
            cap: Capture::of(file, connection),
            client_key: key16(&keys["clientKey"]),
            iv: key16(&keys["iv"]),
        }
    }

    /// Sends the captured HANDSHAKE (frame `index`) verbatim, checks the HANDSHAKE-ok (and its
    /// heartbeat) and returns the new session cipher and the reusable session id.
    pub async fn handshake(
        &self,
        conn: &mut RawConn,
        index: usize,
        heartbeat_ms: i32,
    ) -> (AesCipher, String) {
        conn.send(&self.cap.raw(index)).await;
        let sid = i32::try_from(self.cap.header(index, "sessionId")).expect("sessionId");
        let reply = conn.expect_packet(WAIT).await;
        assert_eq!(
            (reply.cmd, reply.flags, reply.session_id),
            (Command::Handshake.code(), Flags::CRYPTO, sid),
            "{reply:?}"
        );
        let plain = AesCipher::new(self.client_key, self.iv)
            .decrypt(&reply.body)
            .expect("HANDSHAKE-ok under AES(clientKey, iv)");
        let ok = HandshakeOk::decode(&plain).expect("HANDSHAKE-ok body");
        assert_eq!(ok.heartbeat_ms, heartbeat_ms, "negotiated heartbeat");
        let server_key: [u8; 16] = ok.server_key[..].try_into().expect("a 16-byte server key");
        (
            AesCipher::new(mix_keys(&self.client_key, &server_key), self.iv),
            ok.session_id,
        )
    }

    /// Sends the captured plaintext of frame `index` re-encrypted under `session`, with the
    /// captured cmd, flags and sessionId.
    pub async fn send_sealed(&self, conn: &mut RawConn, session: &AesCipher, index: usize) {
        let cmd = u8::try_from(self.cap.header(index, "cmd")).expect("cmd");
        let sid = i32::try_from(self.cap.header(index, "sessionId")).expect("sessionId");
        let packet = Packet::new(
            cmd,
            self.cap.flags(index),
            sid,
            session.encrypt(&self.cap.plain(index)),
        );
        conn.send(&packet.to_bytes()).await;
    }

    /// Handshake (frame 0), BIND (frame 2) re-encrypted, and the captured OK (frame 3): the
    /// opening of every captured phone connection. Returns the session cipher.
    pub async fn connect_and_bind(&self, conn: &mut RawConn, heartbeat_ms: i32) -> AesCipher {
        let (session, _) = self.handshake(conn, 0, heartbeat_ms).await;
        self.send_sealed(conn, &session, 2).await;
        expect_exact(conn, &self.cap.raw(3), "OK to BIND").await;
        session
    }
}
