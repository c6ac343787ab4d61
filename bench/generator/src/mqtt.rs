//! A minimal MQTT 3.1.1 client for the benchmark: QoS 0 subscribers and a QoS 0 publisher, for
//! driving mosquitto with the same workloads as pushgate and nats-server.
//!
//! Hand-written on purpose, like the NATS client beside it and the pushgate driver: the
//! client-side work per message is then the same for every target. Each connection has exactly
//! one reader, which decodes packets straight out of its read buffer (no per-message allocation)
//! and reads into a buffer that exists only while bytes are arriving, so 19,000 idle subscribers
//! in one process hold no read buffers. Writes are coalesced: a publisher appends packets to one
//! buffer and writes the whole batch with a single `write_all` in [`MqttPublisher::flush`].
//!
//! The decoder ([`decode_packet`]) is a pure function over a byte buffer: it returns a packet and
//! the bytes it used, `None` for an incomplete packet, or an error for bytes no broker sends; it
//! never buffers beyond one packet of at most [`MAX_REMAINING_LENGTH_BYTES`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

/// Largest PUBLISH payload the client accepts from the broker or sends to it (1 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Largest remaining length accepted: a PUBLISH with the longest topic, a packet id and the
/// largest payload. A header announcing more is an error before anything is buffered.
pub const MAX_REMAINING_LENGTH_BYTES: usize = 2 + u16::MAX as usize + 2 + MAX_PAYLOAD_BYTES;

/// Keep-alive sent in CONNECT, in seconds. Zero turns MQTT's keep-alive off, so the broker never
/// expects a PINGREQ and idle subscribers stay connected for any length of run without timers.
pub const KEEPALIVE_SECS: u16 = 0;

/// Bound on TCP connect plus the CONNECT/CONNACK (and SUBSCRIBE/SUBACK) exchange.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Smallest and largest read chunk: the reader starts small and doubles while reads fill it.
const READ_CHUNK_MIN_BYTES: usize = 512;
const READ_CHUNK_MAX_BYTES: usize = 64 * 1024;

/// Packet id of the one SUBSCRIBE a subscriber sends.
const SUBSCRIBE_PACKET_ID: u16 = 1;

const PACKET_CONNECT: u8 = 1;
const PACKET_CONNACK: u8 = 2;
const PACKET_PUBLISH: u8 = 3;
const PACKET_PUBACK: u8 = 4;
const PACKET_PUBREC: u8 = 5;
const PACKET_PUBREL: u8 = 6;
const PACKET_PUBCOMP: u8 = 7;
const PACKET_SUBSCRIBE: u8 = 8;
const PACKET_SUBACK: u8 = 9;
const PACKET_UNSUBACK: u8 = 11;
const PACKET_PINGRESP: u8 = 13;

/// A broker-to-client packet, borrowing from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        session_present: bool,
        return_code: u8,
    },
    Publish {
        qos: u8,
        /// Present for QoS 1 and 2 only.
        packet_id: Option<u16>,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    SubAck {
        packet_id: u16,
        return_codes: &'a [u8],
    },
    PingResp,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK: well-formed, but never provoked by a QoS 0
    /// client, so readers reject them.
    Ack {
        packet_type: u8,
        packet_id: u16,
    },
}

/// Bytes that no MQTT 3.1.1 broker sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet type {packet_type} with flags {flags:#06b} is not one a broker sends")]
    UnexpectedPacket { packet_type: u8, flags: u8 },
    #[error("remaining length is longer than 4 bytes")]
    InvalidRemainingLength,
    #[error("packet of {remaining_length_bytes} bytes exceeds the bound of {max_bytes}")]
    TooLarge {
        remaining_length_bytes: usize,
        max_bytes: usize,
    },
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// Decodes the remaining-length field (1 to 4 bytes, 7 bits each, least significant first).
/// Returns the value and the field's length, `None` if `bytes` ends inside the field.
fn decode_remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = bytes.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::InvalidRemainingLength)
}

fn read_u16(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Decodes one packet from the front of `buf`: `Ok(Some((packet, bytes_used)))`, `Ok(None)` if
/// `buf` holds only part of a packet, or an error for bytes no broker sends. Any split of a
/// valid stream decodes to the same packets; no input panics.
pub fn decode_packet(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0f;
    let flags_valid = match packet_type {
        PACKET_PUBLISH => (flags >> 1) & 0b11 != 0b11,
        PACKET_PUBREL => flags == 0b0010,
        PACKET_CONNACK | PACKET_PUBACK | PACKET_PUBREC | PACKET_PUBCOMP | PACKET_SUBACK
        | PACKET_UNSUBACK | PACKET_PINGRESP => flags == 0,
        _ => false,
    };
    if !flags_valid {
        return Err(DecodeError::UnexpectedPacket { packet_type, flags });
    }
    let Some((remaining, length_field_bytes)) = decode_remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    if remaining > MAX_REMAINING_LENGTH_BYTES {
        return Err(DecodeError::TooLarge {
            remaining_length_bytes: remaining,
            max_bytes: MAX_REMAINING_LENGTH_BYTES,
        });
    }
    let header_bytes = 1 + length_field_bytes;
    let total_bytes = header_bytes + remaining;
    if buf.len() < total_bytes {
        return Ok(None);
    }
    let body = &buf[header_bytes..total_bytes];
    let packet = match packet_type {
        PACKET_CONNACK => {
            if body.len() != 2 {
                return Err(DecodeError::Malformed("CONNACK remaining length is not 2"));
            }
            if body[0] & 0xfe != 0 {
                return Err(DecodeError::Malformed("CONNACK reserved flag bits set"));
            }
            Packet::ConnAck {
                session_present: body[0] & 1 == 1,
                return_code: body[1],
            }
        }
        PACKET_PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            let topic_len = usize::from(
                read_u16(body).ok_or(DecodeError::Malformed("PUBLISH shorter than its topic"))?,
            );
            let mut at = 2 + topic_len;
            let topic = body
                .get(2..at)
                .ok_or(DecodeError::Malformed("PUBLISH shorter than its topic"))?;
            let packet_id = if qos > 0 {
                let id = body
                    .get(at..)
                    .and_then(read_u16)
                    .ok_or(DecodeError::Malformed("PUBLISH shorter than its packet id"))?;
                at += 2;
                Some(id)
            } else {
                None
            };
            let payload = &body[at..];
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(DecodeError::TooLarge {
                    remaining_length_bytes: remaining,
                    max_bytes: at + MAX_PAYLOAD_BYTES,
                });
            }
            Packet::Publish {
                qos,
                packet_id,
                topic,
                payload,
            }
        }
        PACKET_SUBACK => {
            if body.len() < 3 {
                return Err(DecodeError::Malformed("SUBACK shorter than 3 bytes"));
            }
            Packet::SubAck {
                packet_id: u16::from_be_bytes([body[0], body[1]]),
                return_codes: &body[2..],
            }
        }
        PACKET_PINGRESP => {
            if !body.is_empty() {
                return Err(DecodeError::Malformed("PINGRESP with a body"));
            }
            Packet::PingResp
        }
        _ => {
            // PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: a packet id and nothing else.
            if body.len() != 2 {
                return Err(DecodeError::Malformed(
                    "acknowledgement remaining length is not 2",
                ));
            }
            Packet::Ack {
                packet_type,
                packet_id: u16::from_be_bytes([body[0], body[1]]),
            }
        }
    };
    Ok(Some((packet, total_bytes)))
}

fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// Appends a length-prefixed string; the caller has checked `bytes.len() <= u16::MAX`.
fn put_string(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

fn check_string(what: &str, value: &str) -> anyhow::Result<()> {
    ensure!(
        value.len() <= usize::from(u16::MAX),
        "MQTT {what} of {} bytes exceeds 65,535 bytes",
        value.len()
    );
    Ok(())
}

/// Appends CONNECT: MQTT 3.1.1, clean session, no will, no credentials.
fn encode_connect(buf: &mut BytesMut, client_id: &str, keepalive_secs: u16) {
    const VARIABLE_HEADER: [u8; 8] = [0, 4, b'M', b'Q', b'T', b'T', 4, 0b0000_0010];
    buf.put_u8(PACKET_CONNECT << 4);
    put_remaining_length(buf, VARIABLE_HEADER.len() + 2 + 2 + client_id.len());
    buf.put_slice(&VARIABLE_HEADER);
    buf.put_u16(keepalive_secs);
    put_string(buf, client_id.as_bytes());
}

/// Appends SUBSCRIBE for one topic filter at QoS 0.
fn encode_subscribe(buf: &mut BytesMut, packet_id: u16, topic: &str) {
    buf.put_u8((PACKET_SUBSCRIBE << 4) | 0b0010);
    put_remaining_length(buf, 2 + 2 + topic.len() + 1);
    buf.put_u16(packet_id);
    put_string(buf, topic.as_bytes());
    buf.put_u8(0);
}

/// Appends a QoS 0 PUBLISH; the caller has checked the topic and payload sizes.
fn encode_publish_qos0(buf: &mut BytesMut, topic: &[u8], payload: &[u8]) {
    let remaining = 2 + topic.len() + payload.len();
    buf.reserve(5 + remaining);
    buf.put_u8(PACKET_PUBLISH << 4);
    put_remaining_length(buf, remaining);
    put_string(buf, topic);
    buf.put_slice(payload);
}

/// Reads what the socket has into `buf`, waiting for readability only when it has nothing. While
/// waiting with an empty buffer the buffer is released, so an idle connection holds none.
/// `chunk_bytes` adapts: it doubles while reads fill it and halves when they use under a quarter.
/// Returns 0 at end of stream.
async fn read_some(
    reader: &OwnedReadHalf,
    buf: &mut BytesMut,
    chunk_bytes: &mut usize,
) -> std::io::Result<usize> {
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK_MIN_BYTES {
            buf.reserve(*chunk_bytes);
        }
        let spare_bytes = buf.capacity() - buf.len();
        match reader.try_read_buf(buf) {
            Ok(n) => {
                if n == spare_bytes {
                    *chunk_bytes = (*chunk_bytes * 2).min(READ_CHUNK_MAX_BYTES);
                } else if n < *chunk_bytes / 4 {
                    *chunk_bytes = (*chunk_bytes / 2).max(READ_CHUNK_MIN_BYTES);
                }
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
                reader.readable().await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the hand-shake waits for, copied out of the read buffer.
enum HandshakeReply {
    ConnAck(u8),
    SubAck { packet_id: u16, return_code: u8 },
}

/// Reads until the next CONNACK or SUBACK and consumes it, leaving later bytes in `buf`.
async fn next_handshake_reply(
    reader: &OwnedReadHalf,
    buf: &mut BytesMut,
    chunk_bytes: &mut usize,
) -> anyhow::Result<HandshakeReply> {
    loop {
        if let Some((packet, used_bytes)) = decode_packet(buf)? {
            let reply = match packet {
                Packet::ConnAck { return_code, .. } => Some(HandshakeReply::ConnAck(return_code)),
                Packet::SubAck {
                    packet_id,
                    return_codes,
                } => Some(HandshakeReply::SubAck {
                    packet_id,
                    return_code: return_codes.first().copied().unwrap_or(0x80),
                }),
                Packet::PingResp => None,
                other => bail!("unexpected packet during the hand-shake: {other:?}"),
            };
            buf.advance(used_bytes);
            match reply {
                Some(reply) => return Ok(reply),
                None => continue,
            }
        }
        if read_some(reader, buf, chunk_bytes).await? == 0 {
            bail!("broker closed the connection during the hand-shake");
        }
    }
}

/// Connects, sends CONNECT (plus `then`, pipelined in the same write) and waits for CONNACK.
async fn connect_and_handshake(
    addr: SocketAddr,
    client_id: &str,
    then: impl FnOnce(&mut BytesMut),
) -> anyhow::Result<(OwnedReadHalf, OwnedWriteHalf, BytesMut, usize)> {
    check_string("client id", client_id)?;
    let stream = crate::loopback_source::connect(addr).await?;
    let (reader, mut writer) = stream.into_split();
    let mut out = BytesMut::with_capacity(64 + client_id.len());
    encode_connect(&mut out, client_id, KEEPALIVE_SECS);
    then(&mut out);
    writer.write_all(&out).await.context("sending CONNECT")?;
    let mut buf = BytesMut::new();
    let mut chunk_bytes = READ_CHUNK_MIN_BYTES;
    match next_handshake_reply(&reader, &mut buf, &mut chunk_bytes).await? {
        HandshakeReply::ConnAck(0) => {}
        HandshakeReply::ConnAck(code) => bail!("broker refused CONNECT with return code {code}"),
        HandshakeReply::SubAck { .. } => bail!("SUBACK before CONNACK"),
    }
    Ok((reader, writer, buf, chunk_bytes))
}

/// A connection subscribed to one topic at QoS 0, ready to hand to [`Self::spawn_reader`].
pub struct MqttSubscriber {
    reader: OwnedReadHalf,
    /// Kept open for the life of the reader: dropping it would half-close the connection.
    writer: OwnedWriteHalf,
    /// Bytes after the SUBACK (publishes may follow it at once).
    buf: BytesMut,
    chunk_bytes: usize,
}

impl MqttSubscriber {
    /// TCP connect, CONNECT (clean session, keep-alive off) and SUBSCRIBE at QoS 0 to `topic`
    /// pipelined in one write, then waits for CONNACK (return code 0) and SUBACK (granted QoS 0).
    /// Returns once the subscription is active. Bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn connect(addr: SocketAddr, client_id: &str, topic: &str) -> anyhow::Result<Self> {
        check_string("topic", topic)?;
        ensure!(!topic.is_empty(), "MQTT topic filter is empty");
        let handshake = async {
            let (reader, writer, mut buf, mut chunk_bytes) =
                connect_and_handshake(addr, client_id, |out| {
                    encode_subscribe(out, SUBSCRIBE_PACKET_ID, topic)
                })
                .await?;
            match next_handshake_reply(&reader, &mut buf, &mut chunk_bytes).await? {
                HandshakeReply::SubAck {
                    packet_id: SUBSCRIBE_PACKET_ID,
                    return_code: 0,
                } => {}
                HandshakeReply::SubAck {
                    packet_id,
                    return_code,
                } => bail!("SUBACK for packet {packet_id} with return code {return_code:#04x}"),
                HandshakeReply::ConnAck(_) => bail!("second CONNACK"),
            }
            Ok(MqttSubscriber {
                reader,
                writer,
                buf,
                chunk_bytes,
            })
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| anyhow!("MQTT hand-shake with {addr} exceeded {HANDSHAKE_TIMEOUT:?}"))?
            .with_context(|| format!("MQTT subscriber {client_id} on {topic} at {addr}"))
    }

    /// Spawns the connection's reader: calls `on_message(payload)` for every PUBLISH (the topic
    /// is ignored). The task returns `Ok(())` when the broker closes the connection between
    /// packets, an error for anything else (bytes no broker sends, a QoS 1/2 publish, EOF inside
    /// a packet, an I/O error); it also ends when the handle is aborted.
    pub fn spawn_reader<F: FnMut(&[u8]) + Send + 'static>(
        self,
        mut on_message: F,
    ) -> JoinHandle<anyhow::Result<()>> {
        let MqttSubscriber {
            reader,
            writer,
            mut buf,
            mut chunk_bytes,
        } = self;
        tokio::spawn(async move {
            let _writer = writer;
            loop {
                let mut used_bytes = 0;
                while let Some((packet, n)) = decode_packet(&buf[used_bytes..])? {
                    used_bytes += n;
                    match packet {
                        Packet::Publish {
                            qos: 0, payload, ..
                        } => on_message(payload),
                        Packet::PingResp => {}
                        Packet::Publish { qos, .. } => {
                            bail!("broker sent a QoS {qos} PUBLISH on a QoS 0 subscription")
                        }
                        other => bail!("unexpected packet from the broker: {other:?}"),
                    }
                }
                buf.advance(used_bytes);
                if read_some(&reader, &mut buf, &mut chunk_bytes).await? == 0 {
                    ensure!(
                        buf.is_empty(),
                        "broker closed the connection inside a packet ({} bytes pending)",
                        buf.len()
                    );
                    return Ok(());
                }
            }
        })
    }
}

/// A publishing connection: [`Self::publish`] appends QoS 0 PUBLISH packets to a buffer and
/// [`Self::flush`] writes them in one `write_all`. A drain task reads (and discards) whatever
/// the broker sends on this connection, so the broker never blocks writing to it.
pub struct MqttPublisher {
    writer: OwnedWriteHalf,
    write_buf: BytesMut,
    drain: JoinHandle<anyhow::Result<()>>,
}

impl MqttPublisher {
    /// TCP connect, CONNECT (clean session, keep-alive off), waits for CONNACK with return code 0.
    /// Bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn connect(addr: SocketAddr, client_id: &str) -> anyhow::Result<Self> {
        let (reader, writer, buf, chunk_bytes) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            connect_and_handshake(addr, client_id, |_| {}),
        )
        .await
        .map_err(|_| anyhow!("MQTT hand-shake with {addr} exceeded {HANDSHAKE_TIMEOUT:?}"))?
        .with_context(|| format!("MQTT publisher {client_id} at {addr}"))?;
        let drain = tokio::spawn(drain(reader, buf, chunk_bytes));
        Ok(MqttPublisher {
            writer,
            write_buf: BytesMut::with_capacity(READ_CHUNK_MAX_BYTES),
            drain,
        })
    }

    /// Appends a QoS 0 PUBLISH to the write buffer (no I/O).
    ///
    /// Panics if `topic` is empty or longer than 65,535 bytes or `payload` is longer than
    /// [`MAX_PAYLOAD_BYTES`]: those are the caller's constants, not data from the network.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) {
        assert!(
            !topic.is_empty() && topic.len() <= usize::from(u16::MAX),
            "MQTT topic must be 1 to 65,535 bytes, got {}",
            topic.len()
        );
        assert!(
            payload.len() <= MAX_PAYLOAD_BYTES,
            "MQTT payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
            payload.len()
        );
        encode_publish_qos0(&mut self.write_buf, topic.as_bytes(), payload);
    }

    /// Writes everything buffered in one `write_all`.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.writer.write_all(&self.write_buf).await {
            return Err(self.connection_error(e.into()).await);
        }
        self.write_buf.clear();
        if self.write_buf.capacity() > 16 * READ_CHUNK_MAX_BYTES {
            self.write_buf = BytesMut::with_capacity(READ_CHUNK_MAX_BYTES);
        }
        Ok(())
    }

    /// Buffered bytes not yet flushed (so callers can flush at a size threshold).
    pub fn buffered_bytes(&self) -> usize {
        self.write_buf.len()
    }

    /// A write error, explained by the drain task's outcome when the broker closed the
    /// connection.
    async fn connection_error(&mut self, write_error: anyhow::Error) -> anyhow::Error {
        if !self.drain.is_finished() {
            return write_error.context("MQTT publisher write");
        }
        match (&mut self.drain).await {
            Ok(Ok(())) => {
                write_error.context("MQTT publisher write: the broker closed the connection")
            }
            Ok(Err(e)) => e.context("MQTT publisher connection"),
            Err(join_error) => anyhow!("MQTT publisher drain task: {join_error}"),
        }
    }
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// The publisher's reader: discards PINGRESP, rejects anything else, returns at end of stream.
async fn drain(
    reader: OwnedReadHalf,
    mut buf: BytesMut,
    mut chunk_bytes: usize,
) -> anyhow::Result<()> {
    loop {
        while let Some((packet, used_bytes)) = decode_packet(&buf)? {
            if packet != Packet::PingResp {
                bail!("unexpected packet on the publisher's connection: {packet:?}");
            }
            buf.advance(used_bytes);
        }
        if read_some(&reader, &mut buf, &mut chunk_bytes).await? == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A decoded packet copied out of the buffer, for comparing decodes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        ConnAck(bool, u8),
        Publish(u8, Option<u16>, Vec<u8>, Vec<u8>),
        SubAck(u16, Vec<u8>),
        PingResp,
        Ack(u8, u16),
    }

    fn owned(packet: Packet<'_>) -> Owned {
        match packet {
            Packet::ConnAck {
                session_present,
                return_code,
            } => Owned::ConnAck(session_present, return_code),
            Packet::Publish {
                qos,
                packet_id,
                topic,
                payload,
            } => Owned::Publish(qos, packet_id, topic.to_vec(), payload.to_vec()),
            Packet::SubAck {
                packet_id,
                return_codes,
            } => Owned::SubAck(packet_id, return_codes.to_vec()),
            Packet::PingResp => Owned::PingResp,
            Packet::Ack {
                packet_type,
                packet_id,
            } => Owned::Ack(packet_type, packet_id),
        }
    }

    /// Feeds `chunks` through the decoder as a reader would: append, decode every complete
    /// packet, keep the rest. Also checks the buffer never holds more than one bounded packet.
    fn decode_chunks<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(Vec<Owned>, usize), DecodeError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some((packet, n)) = decode_packet(&buf)? {
                assert!(n > 0 && n <= buf.len());
                out.push(owned(packet));
                buf.advance(n);
            }
            assert!(buf.len() <= 5 + MAX_REMAINING_LENGTH_BYTES + chunk.len());
        }
        Ok((out, buf.len()))
    }

    fn publish_bytes(topic: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_publish_qos0(&mut buf, topic, payload);
        buf.to_vec()
    }

    #[test]
    fn encodes_connect_like_the_spec_example() {
        let mut buf = BytesMut::new();
        encode_connect(&mut buf, "ab", 600);
        assert_eq!(
            &buf[..],
            &[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x02, 0x58, 0, 2, b'a', b'b'][..]
        );
    }

    #[test]
    fn encodes_subscribe_at_qos0() {
        let mut buf = BytesMut::new();
        encode_subscribe(&mut buf, 1, "t/1");
        assert_eq!(&buf[..], &[0x82, 8, 0, 1, 0, 3, b't', b'/', b'1', 0][..]);
    }

    #[test]
    fn remaining_length_round_trips_at_every_width() {
        for len in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut buf = BytesMut::new();
            put_remaining_length(&mut buf, len);
            assert_eq!(decode_remaining_length(&buf), Ok(Some((len, buf.len()))));
            assert_eq!(decode_remaining_length(&buf[..buf.len() - 1]), Ok(None));
        }
        assert_eq!(
            decode_remaining_length(&[0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::InvalidRemainingLength)
        );
    }

    #[test]
    fn decodes_each_broker_packet() {
        let stream: Vec<u8> = [
            &[0x20, 2, 0, 0][..],
            &[0x90, 3, 0, 1, 0],
            &[0xd0, 0],
            &publish_bytes(b"t", b"hello"),
            // QoS 1 PUBLISH with packet id 7.
            &[0x32, 7, 0, 1, b't', 0, 7, b'h', b'i'],
            &[0x40, 2, 0, 9],
            &[0x62, 2, 0, 9],
        ]
        .concat();
        let (packets, rest) = decode_chunks([&stream[..]]).unwrap();
        assert_eq!(rest, 0);
        assert_eq!(
            packets,
            vec![
                Owned::ConnAck(false, 0),
                Owned::SubAck(1, vec![0]),
                Owned::PingResp,
                Owned::Publish(0, None, b"t".to_vec(), b"hello".to_vec()),
                Owned::Publish(1, Some(7), b"t".to_vec(), b"hi".to_vec()),
                Owned::Ack(PACKET_PUBACK, 9),
                Owned::Ack(PACKET_PUBREL, 9),
            ]
        );
    }

    #[test]
    fn rejects_client_packets_and_bad_flags() {
        for first in [0x10, 0x82, 0xc0, 0xe0, 0x00, 0xf0, 0x21, 0x60, 0x36, 0xd1] {
            assert!(
                matches!(
                    decode_packet(&[first, 0]),
                    Err(DecodeError::UnexpectedPacket { .. })
                ),
                "{first:#04x}"
            );
        }
    }

    #[test]
    fn rejects_oversized_packets_before_buffering_them() {
        // 200 MiB announced in five bytes.
        let mut buf = BytesMut::new();
        buf.put_u8(0x30);
        put_remaining_length(&mut buf, 200 << 20);
        assert!(matches!(
            decode_packet(&buf),
            Err(DecodeError::TooLarge { .. })
        ));
        // A payload one byte over the bound, with the shortest topic.
        let big = publish_bytes(b"t", &vec![0u8; MAX_PAYLOAD_BYTES + 1]);
        assert!(matches!(
            decode_packet(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        let ok = publish_bytes(b"t", &vec![7u8; MAX_PAYLOAD_BYTES]);
        assert!(matches!(decode_packet(&ok), Ok(Some(_))));
    }

    #[test]
    fn rejects_malformed_bodies() {
        for bytes in [
            &[0x20, 3, 0, 0, 0][..],
            &[0x20, 2, 2, 0],
            &[0x90, 2, 0, 1],
            &[0xd0, 1, 0],
            &[0x30, 1, 0],
            &[0x30, 3, 0, 5, b'x'],
            &[0x32, 3, 0, 1, b't'],
            &[0x40, 3, 0, 1, 0],
        ] {
            assert!(
                matches!(decode_packet(bytes), Err(DecodeError::Malformed(_))),
                "{bytes:?}"
            );
        }
    }

    fn arb_packet() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (any::<bool>(), 0u8..6).prop_map(|(sp, rc)| vec![0x20, 2, u8::from(sp), rc]),
            (any::<u16>(), prop::collection::vec(0u8..3, 1..4)).prop_map(|(id, codes)| {
                let mut v = vec![0x90, 2 + codes.len() as u8];
                v.extend_from_slice(&id.to_be_bytes());
                v.extend_from_slice(&codes);
                v
            }),
            Just(vec![0xd0, 0]),
            (
                prop::collection::vec(any::<u8>(), 1..40),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..200),
                    prop::collection::vec(any::<u8>(), 16_370..16_400),
                ]
            )
                .prop_map(|(topic, payload)| publish_bytes(&topic, &payload)),
        ]
    }

    proptest! {
        #[test]
        fn any_split_of_a_valid_stream_decodes_the_same(
            packets in prop::collection::vec(arb_packet(), 1..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let stream = packets.concat();
            let (whole, rest) = decode_chunks([&stream[..]]).unwrap();
            prop_assert_eq!(rest, 0);
            prop_assert_eq!(whole.len(), packets.len());
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for cut in cuts {
                chunks.push(&stream[at..cut]);
                at = cut;
            }
            chunks.push(&stream[at..]);
            let (split, rest) = decode_chunks(chunks).unwrap();
            prop_assert_eq!(rest, 0);
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn garbage_is_an_error_or_incomplete_never_a_panic(
            garbage in prop::collection::vec(any::<u8>(), 0..2048),
            chunk_bytes in 1usize..64,
        ) {
            let _ = decode_chunks(garbage.chunks(chunk_bytes));
        }

        #[test]
        fn a_valid_prefix_followed_by_garbage_never_panics(
            packets in prop::collection::vec(arb_packet(), 0..5),
            garbage in prop::collection::vec(any::<u8>(), 1..256),
        ) {
            let stream = [packets.concat(), garbage].concat();
            let _ = decode_chunks([&stream[..]]);
        }
    }

    // Against a running broker: `bench/peers.sh start mosquitto PORT CPU DIR`, then
    // `BENCH_MQTT_ADDR=127.0.0.1:PORT cargo test -p pushgate --bin pushgate-bench -- --ignored`.

    fn broker_addr() -> SocketAddr {
        std::env::var("BENCH_MQTT_ADDR")
            .expect("set BENCH_MQTT_ADDR to a running mosquitto (bench/peers.sh start mosquitto)")
            .parse()
            .expect("BENCH_MQTT_ADDR is host:port")
    }

    use crate::broker_check::{collect, own_rss_kib};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a running mosquitto at BENCH_MQTT_ADDR"]
    async fn against_mosquitto_one_message_per_topic_and_1000_on_a_shared_topic() {
        let addr = broker_addr();
        let run = std::process::id();
        let topics = 100;
        let shared_subscribers = 5;
        let shared_messages = 1000;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut readers = Vec::new();
        for i in 0..topics + shared_subscribers {
            let topic = if i < topics {
                format!("bench/{run}/t{i}")
            } else {
                format!("bench/{run}/shared")
            };
            let sub = MqttSubscriber::connect(addr, &format!("bench-{run}-s{i}"), &topic)
                .await
                .unwrap();
            let tx = tx.clone();
            readers.push(sub.spawn_reader(move |payload| {
                let _ = tx.send((i, payload.to_vec()));
            }));
        }
        let mut publisher = MqttPublisher::connect(addr, &format!("bench-{run}-p"))
            .await
            .unwrap();
        for i in 0..topics {
            publisher.publish(&format!("bench/{run}/t{i}"), format!("m{i}").as_bytes());
        }
        for n in 0..shared_messages {
            publisher.publish(&format!("bench/{run}/shared"), &(n as u32).to_be_bytes());
            if publisher.buffered_bytes() >= 4096 {
                publisher.flush().await.unwrap();
            }
        }
        publisher.flush().await.unwrap();
        let got = collect(&mut rx, topics + shared_subscribers, |i| {
            if i < topics {
                1
            } else {
                shared_messages
            }
        })
        .await;
        for (i, payloads) in got.iter().enumerate().take(topics) {
            assert_eq!(payloads, &vec![format!("m{i}").into_bytes()]);
        }
        for payloads in &got[topics..] {
            let expected: Vec<Vec<u8>> = (0..shared_messages)
                .map(|n| (n as u32).to_be_bytes().to_vec())
                .collect();
            assert_eq!(payloads, &expected, "shared topic in order");
        }
        for reader in &readers {
            assert!(!reader.is_finished(), "a reader ended early");
            reader.abort();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a running mosquitto at BENCH_MQTT_ADDR and ulimit -n above BENCH_CONNECTIONS"]
    async fn against_mosquitto_many_idle_subscribers() {
        let addr = broker_addr();
        let connections: usize = std::env::var("BENCH_CONNECTIONS")
            .ok()
            .map(|s| s.parse().expect("BENCH_CONNECTIONS is a number"))
            .unwrap_or(19_000);
        let in_flight: usize = std::env::var("BENCH_IN_FLIGHT")
            .ok()
            .map(|s| s.parse().expect("BENCH_IN_FLIGHT is a number"))
            .unwrap_or(64);
        let run = std::process::id();
        let topic = format!("bench/{run}/all");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let rss_before_kib = own_rss_kib();
        let started = std::time::Instant::now();
        let mut readers = Vec::with_capacity(connections);
        let mut pending = tokio::task::JoinSet::new();
        let mut next = 0;
        while readers.len() < connections {
            while next < connections && pending.len() < in_flight {
                let topic = topic.clone();
                let id = next;
                pending.spawn(async move {
                    let sub = MqttSubscriber::connect(addr, &format!("bench-{run}-i{id}"), &topic)
                        .await
                        .unwrap();
                    (id, sub)
                });
                next += 1;
            }
            let (id, sub) = pending.join_next().await.unwrap().unwrap();
            let tx = tx.clone();
            readers.push(sub.spawn_reader(move |_| {
                let _ = tx.send((id, Vec::new()));
            }));
        }
        let elapsed = started.elapsed();
        eprintln!(
            "mosquitto: {connections} subscribers in {elapsed:?} ({:.0} conn/s, {in_flight} in flight); \
             load generator RSS +{} KiB ({:.2} KiB/conn)",
            connections as f64 / elapsed.as_secs_f64(),
            own_rss_kib().saturating_sub(rss_before_kib),
            own_rss_kib().saturating_sub(rss_before_kib) as f64 / connections as f64,
        );
        let mut publisher = MqttPublisher::connect(addr, &format!("bench-{run}-p"))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        publisher.publish(&topic, b"to everyone");
        publisher.flush().await.unwrap();
        collect(&mut rx, connections, |_| 1).await;
        eprintln!(
            "mosquitto: one publish reached {connections} subscribers in {:?}",
            started.elapsed()
        );
        for reader in &readers {
            assert!(!reader.is_finished(), "a reader ended early");
            reader.abort();
        }
    }
}
