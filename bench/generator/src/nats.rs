//! A minimal NATS core client for the benchmark (INFO, CONNECT, SUB, PUB, MSG, PING/PONG), for
//! driving nats-server with the same workloads as pushgate and mosquitto.
//!
//! Hand-written on purpose, like the MQTT client beside it and the pushgate driver: the
//! client-side work per message is then the same for every target. Each connection has exactly
//! one reader, which decodes operations straight out of its read buffer (no per-message
//! allocation) and reads into a buffer that exists only while bytes are arriving, so 19,000 idle
//! subscribers in one process hold no read buffers. Writes are coalesced: a publisher appends
//! `PUB` operations to one buffer and writes the whole batch with a single `write_all` in
//! [`NatsPublisher::flush`]. The server PINGs every client (every 2 minutes by default) and
//! closes it after unanswered PINGs: every reader answers them, the subscriber's directly, the
//! publisher's through the write half it shares with the publisher behind a mutex (held only for
//! one write, so neither side can wait on the other for long).
//!
//! The decoder ([`decode_op`]) is a pure function over a byte buffer: it returns an operation and
//! the bytes it used, `None` for an incomplete one, or an error for bytes no server sends; it
//! never buffers more than one control line of [`MAX_CONTROL_LINE_BYTES`] plus one payload of
//! [`MAX_PAYLOAD_BYTES`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

/// Largest MSG payload the client accepts and the largest it publishes (nats-server's default
/// `max_payload`, 1 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Longest control line accepted (an INFO can list cluster URLs, so it is longer than the
/// server's own 4 KiB bound for client lines). Bytes without a line end beyond it are an error.
pub const MAX_CONTROL_LINE_BYTES: usize = 64 * 1024;

/// Longest subject the client sends (keeps every PUB/SUB line under the server's 4 KiB
/// `max_control_line`).
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// Bound on TCP connect plus the INFO, CONNECT, (SUB,) PING/PONG exchange.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on [`NatsPublisher::ping_pong`]: the PONG comes after the server has handled every
/// earlier PUB, which during a large fan-out can take a while.
pub const PING_PONG_TIMEOUT: Duration = Duration::from_secs(120);

/// Smallest and largest read chunk: the reader starts small and doubles while reads fill it.
const READ_CHUNK_MIN_BYTES: usize = 512;
const READ_CHUNK_MAX_BYTES: usize = 64 * 1024;

/// The subscription id of a subscriber's one SUB.
const SID: &str = "1";

/// A server-to-client operation, borrowing from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// `INFO {json}`: the JSON text.
    Info(&'a [u8]),
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload.
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        reply_to: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    /// `+OK` (only in verbose mode, which the client turns off).
    PlusOk,
    /// `-ERR <message>`: the message, quotes included.
    MinusErr(&'a [u8]),
}

/// Bytes that no NATS server sends to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("no line end within {MAX_CONTROL_LINE_BYTES} bytes")]
    ControlLineTooLong,
    #[error("control line ends in a bare LF")]
    MissingCr,
    #[error("unknown operation {0:?}")]
    UnknownOp(String),
    #[error("malformed {op}: {reason}")]
    Malformed {
        op: &'static str,
        reason: &'static str,
    },
    #[error("MSG payload of {payload_bytes} bytes exceeds {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge { payload_bytes: u64 },
    #[error("MSG payload not followed by CRLF")]
    MissingPayloadTerminator,
}

fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn trim_blanks(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if !is_blank(*first) {
            break;
        }
        bytes = rest;
    }
    while let [rest @ .., last] = bytes {
        if !is_blank(*last) {
            break;
        }
        bytes = rest;
    }
    bytes
}

/// Parses a decimal byte count of at most 10 digits (no sign, no blanks).
fn parse_count(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Decodes one operation from the front of `buf`: `Ok(Some((op, bytes_used)))`, `Ok(None)` if
/// `buf` holds only part of one, or an error for bytes no server sends. Any split of a valid
/// stream decodes to the same operations; no input panics.
pub fn decode_op(buf: &[u8]) -> Result<Option<(Op<'_>, usize)>, DecodeError> {
    let searched = &buf[..buf.len().min(MAX_CONTROL_LINE_BYTES)];
    let Some(newline) = searched.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CONTROL_LINE_BYTES {
            Err(DecodeError::ControlLineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .ok_or(DecodeError::MissingCr)?;
    let line_bytes = newline + 1;
    let name_end = line.iter().position(|&b| is_blank(b)).unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    let rest = trim_blanks(rest);
    let no_args = |op: &'static str, value: Op<'static>| {
        if rest.is_empty() {
            Ok(Some((value, line_bytes)))
        } else {
            Err(DecodeError::Malformed {
                op,
                reason: "unexpected arguments",
            })
        }
    };
    if name.eq_ignore_ascii_case(b"MSG") {
        let mut args = rest.split(|&b| is_blank(b)).filter(|a| !a.is_empty());
        let (Some(subject), Some(sid), Some(third)) = (args.next(), args.next(), args.next())
        else {
            return Err(DecodeError::Malformed {
                op: "MSG",
                reason: "fewer than 3 arguments",
            });
        };
        let (reply_to, count) = match (args.next(), args.next()) {
            (None, _) => (None, third),
            (Some(count), None) => (Some(third), count),
            (Some(_), Some(_)) => {
                return Err(DecodeError::Malformed {
                    op: "MSG",
                    reason: "more than 4 arguments",
                })
            }
        };
        let payload_bytes = parse_count(count).ok_or(DecodeError::Malformed {
            op: "MSG",
            reason: "byte count is not a decimal number",
        })?;
        if payload_bytes > MAX_PAYLOAD_BYTES as u64 {
            return Err(DecodeError::PayloadTooLarge { payload_bytes });
        }
        let payload_end = line_bytes + payload_bytes as usize;
        let total_bytes = payload_end + 2;
        if buf.len() < total_bytes {
            return Ok(None);
        }
        if &buf[payload_end..total_bytes] != b"\r\n" {
            return Err(DecodeError::MissingPayloadTerminator);
        }
        return Ok(Some((
            Op::Msg {
                subject,
                sid,
                reply_to,
                payload: &buf[line_bytes..payload_end],
            },
            total_bytes,
        )));
    }
    if name.eq_ignore_ascii_case(b"PING") {
        return no_args("PING", Op::Ping);
    }
    if name.eq_ignore_ascii_case(b"PONG") {
        return no_args("PONG", Op::Pong);
    }
    if name.eq_ignore_ascii_case(b"+OK") {
        return no_args("+OK", Op::PlusOk);
    }
    if name.eq_ignore_ascii_case(b"-ERR") {
        return Ok(Some((Op::MinusErr(rest), line_bytes)));
    }
    if name.eq_ignore_ascii_case(b"INFO") {
        return Ok(Some((Op::Info(rest), line_bytes)));
    }
    let shown = &name[..name.len().min(32)];
    Err(DecodeError::UnknownOp(
        String::from_utf8_lossy(shown).into_owned(),
    ))
}

/// Appends `n` in decimal.
fn put_decimal(buf: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[at..]);
}

/// Appends `PUB <subject> <#bytes>\r\n<payload>\r\n`; the caller has checked both.
fn encode_pub(buf: &mut BytesMut, subject: &[u8], payload: &[u8]) {
    buf.reserve(4 + subject.len() + 1 + 20 + 2 + payload.len() + 2);
    buf.put_slice(b"PUB ");
    buf.put_slice(subject);
    buf.put_u8(b' ');
    put_decimal(buf, payload.len());
    buf.put_slice(b"\r\n");
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
}

/// Appends `CONNECT {...}\r\n`: not verbose (no +OK per operation), not pedantic, no headers.
fn encode_connect(buf: &mut BytesMut, name: &str) {
    let options = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": false,
        "name": name,
        "lang": "rust",
        "version": "pushgate-bench",
        "protocol": 1,
        "headers": false,
    });
    buf.put_slice(b"CONNECT ");
    buf.put_slice(options.to_string().as_bytes());
    buf.put_slice(b"\r\n");
}

fn check_subject(subject: &str) -> anyhow::Result<()> {
    ensure!(
        !subject.is_empty() && subject.len() <= MAX_SUBJECT_BYTES,
        "NATS subject must be 1 to {MAX_SUBJECT_BYTES} bytes, got {}",
        subject.len()
    );
    ensure!(
        !subject.bytes().any(|b| b.is_ascii_whitespace()),
        "NATS subject {subject:?} contains whitespace"
    );
    Ok(())
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

/// A connection after the hand-shake: both halves, and the bytes already read that belong to
/// the reader (any MSG that arrived before the hand-shake's PONG, then everything after it).
struct Connected {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buf: BytesMut,
    chunk_bytes: usize,
}

/// Connects, reads INFO, sends CONNECT, then whatever `then` appends, then PING, in one write,
/// and waits for the PONG: once it arrives the server has accepted CONNECT and everything `then`
/// sent (a refusal arrives as -ERR first).
async fn connect_and_handshake(
    addr: SocketAddr,
    name: &str,
    then: impl FnOnce(&mut BytesMut),
) -> anyhow::Result<Connected> {
    let stream = crate::loopback_source::connect(addr).await?;
    let (reader, mut writer) = stream.into_split();
    let mut buf = BytesMut::new();
    let mut chunk_bytes = READ_CHUNK_MIN_BYTES;

    loop {
        if let Some((op, used_bytes)) = decode_op(&buf)? {
            match op {
                Op::Info(_) => {}
                Op::MinusErr(message) => {
                    bail!("server error: {}", String::from_utf8_lossy(message))
                }
                other => bail!("expected INFO first, got {other:?}"),
            }
            buf.advance(used_bytes);
            break;
        }
        if read_some(&reader, &mut buf, &mut chunk_bytes).await? == 0 {
            bail!("server closed the connection before INFO");
        }
    }

    let mut out = BytesMut::with_capacity(256);
    encode_connect(&mut out, name);
    then(&mut out);
    out.put_slice(b"PING\r\n");
    writer.write_all(&out).await.context("sending CONNECT")?;

    // MSGs may follow the SUB before the PONG: they are kept, in order, for the reader.
    let mut early_msgs = BytesMut::new();
    loop {
        let mut used_total = 0;
        let mut pongs_owed = 0;
        let mut done = false;
        while let Some((op, used_bytes)) = decode_op(&buf[used_total..])? {
            let raw = &buf[used_total..used_total + used_bytes];
            used_total += used_bytes;
            match op {
                Op::Pong => {
                    done = true;
                    break;
                }
                Op::Info(_) | Op::PlusOk => {}
                Op::Ping => pongs_owed += 1,
                Op::Msg { .. } => early_msgs.extend_from_slice(raw),
                Op::MinusErr(message) => {
                    bail!("server refused: {}", String::from_utf8_lossy(message))
                }
            }
        }
        buf.advance(used_total);
        if pongs_owed > 0 {
            writer
                .write_all(&b"PONG\r\n".repeat(pongs_owed))
                .await
                .context("answering PING")?;
        }
        if done {
            break;
        }
        if read_some(&reader, &mut buf, &mut chunk_bytes).await? == 0 {
            bail!("server closed the connection during the hand-shake");
        }
    }
    if !early_msgs.is_empty() {
        early_msgs.extend_from_slice(&buf);
        buf = early_msgs;
    }
    Ok(Connected {
        reader,
        writer,
        buf,
        chunk_bytes,
    })
}

async fn handshake_with_timeout(
    addr: SocketAddr,
    name: &str,
    then: impl FnOnce(&mut BytesMut),
) -> anyhow::Result<Connected> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connect_and_handshake(addr, name, then))
        .await
        .map_err(|_| anyhow!("NATS hand-shake with {addr} exceeded {HANDSHAKE_TIMEOUT:?}"))?
}

/// A connection subscribed to one subject, ready to hand to [`Self::spawn_reader`].
pub struct NatsSubscriber {
    conn: Connected,
}

impl NatsSubscriber {
    /// TCP connect, reads INFO, sends `CONNECT`, `SUB <subject> 1` and `PING` in one write and
    /// waits for the `PONG`, so the subscription is active when this returns. Bounded by
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn connect(addr: SocketAddr, name: &str, subject: &str) -> anyhow::Result<Self> {
        check_subject(subject)?;
        let conn = handshake_with_timeout(addr, name, |out| {
            out.put_slice(b"SUB ");
            out.put_slice(subject.as_bytes());
            out.put_u8(b' ');
            out.put_slice(SID.as_bytes());
            out.put_slice(b"\r\n");
        })
        .await
        .with_context(|| format!("NATS subscriber {name} on {subject} at {addr}"))?;
        Ok(NatsSubscriber { conn })
    }

    /// Spawns the connection's reader: calls `on_message(payload)` for every MSG (subject, sid and
    /// reply subject ignored) and answers each server PING with a PONG. The task returns `Ok(())`
    /// when the server closes the connection between operations, an error for anything else
    /// (`-ERR`, bytes no server sends, EOF inside an operation, an I/O error); it also ends when
    /// the handle is aborted.
    pub fn spawn_reader<F: FnMut(&[u8]) + Send + 'static>(
        self,
        mut on_message: F,
    ) -> JoinHandle<anyhow::Result<()>> {
        let Connected {
            reader,
            mut writer,
            mut buf,
            mut chunk_bytes,
        } = self.conn;
        tokio::spawn(async move {
            loop {
                let mut used_total = 0;
                let mut pongs_owed = 0;
                while let Some((op, used_bytes)) = decode_op(&buf[used_total..])? {
                    used_total += used_bytes;
                    match op {
                        Op::Msg { payload, .. } => on_message(payload),
                        Op::Ping => pongs_owed += 1,
                        Op::Pong | Op::PlusOk | Op::Info(_) => {}
                        Op::MinusErr(message) => {
                            bail!("server error: {}", String::from_utf8_lossy(message))
                        }
                    }
                }
                buf.advance(used_total);
                if pongs_owed > 0 {
                    writer
                        .write_all(&b"PONG\r\n".repeat(pongs_owed))
                        .await
                        .context("answering PING")?;
                }
                if read_some(&reader, &mut buf, &mut chunk_bytes).await? == 0 {
                    ensure!(
                        buf.is_empty(),
                        "server closed the connection inside an operation ({} bytes pending)",
                        buf.len()
                    );
                    return Ok(());
                }
            }
        })
    }
}

/// A publishing connection: [`Self::publish`] appends `PUB` operations to a buffer and
/// [`Self::flush`] writes them in one `write_all`; [`Self::ping_pong`] waits until the server
/// has handled everything written before it. A reader task answers the server's PINGs and
/// counts the PONGs.
pub struct NatsPublisher {
    /// Shared with the reader task, which writes PONGs; each side holds it for one write.
    writer: Arc<Mutex<OwnedWriteHalf>>,
    write_buf: BytesMut,
    pings_sent: u64,
    pongs_received: watch::Receiver<u64>,
    reader: JoinHandle<anyhow::Result<()>>,
}

impl NatsPublisher {
    /// TCP connect, reads INFO, sends `CONNECT` and `PING`, waits for the `PONG`. Bounded by
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn connect(addr: SocketAddr, name: &str) -> anyhow::Result<Self> {
        let Connected {
            reader,
            writer,
            buf,
            chunk_bytes,
        } = handshake_with_timeout(addr, name, |_| {})
            .await
            .with_context(|| format!("NATS publisher {name} at {addr}"))?;
        let writer = Arc::new(Mutex::new(writer));
        let (pongs_tx, pongs_received) = watch::channel(0u64);
        let reader = tokio::spawn(publisher_reader(
            reader,
            buf,
            chunk_bytes,
            Arc::clone(&writer),
            pongs_tx,
        ));
        Ok(NatsPublisher {
            writer,
            write_buf: BytesMut::with_capacity(READ_CHUNK_MAX_BYTES),
            pings_sent: 0,
            pongs_received,
            reader,
        })
    }

    /// Appends `PUB <subject> <#bytes>\r\n<payload>\r\n` to the write buffer (no I/O).
    ///
    /// Panics if `subject` is empty, longer than [`MAX_SUBJECT_BYTES`] or holds whitespace, or
    /// `payload` is longer than [`MAX_PAYLOAD_BYTES`]: those are the caller's constants, not
    /// data from the network.
    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        if let Err(e) = check_subject(subject) {
            panic!("{e}");
        }
        assert!(
            payload.len() <= MAX_PAYLOAD_BYTES,
            "NATS payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
            payload.len()
        );
        encode_pub(&mut self.write_buf, subject.as_bytes(), payload);
    }

    /// Writes everything buffered in one `write_all`.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let written = self.writer.lock().await.write_all(&self.write_buf).await;
        if let Err(e) = written {
            return Err(self
                .connection_error(anyhow::Error::from(e).context("NATS publisher write"))
                .await);
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

    /// Flushes, sends PING and waits for its PONG: when this returns the server has handled
    /// every PUB written before. Bounded by [`PING_PONG_TIMEOUT`]; safe to cancel (a later call
    /// waits for its own PONG, counted from the PINGs actually sent).
    pub async fn ping_pong(&mut self) -> anyhow::Result<()> {
        self.write_buf.put_slice(b"PING\r\n");
        self.flush().await?;
        self.pings_sent += 1;
        let target = self.pings_sent;
        let waited = tokio::time::timeout(
            PING_PONG_TIMEOUT,
            self.pongs_received.wait_for(|&pongs| pongs >= target),
        )
        .await
        .map(|result| result.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(self
                .connection_error(anyhow!("NATS publisher connection closed before PONG"))
                .await),
            Err(_) => bail!("no PONG from the server within {PING_PONG_TIMEOUT:?}"),
        }
    }

    /// An error, explained by the reader task's outcome when it has ended.
    async fn connection_error(&mut self, error: anyhow::Error) -> anyhow::Error {
        if !self.reader.is_finished() {
            return error;
        }
        match (&mut self.reader).await {
            Ok(Ok(())) => error.context("the server closed the connection"),
            Ok(Err(e)) => e.context("NATS publisher connection"),
            Err(join_error) => anyhow!("NATS publisher reader task: {join_error}"),
        }
    }
}

impl Drop for NatsPublisher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The publisher's reader: answers PINGs, counts PONGs, fails on `-ERR` or a MSG (the publisher
/// never subscribes), returns at end of stream.
async fn publisher_reader(
    reader: OwnedReadHalf,
    mut buf: BytesMut,
    mut chunk_bytes: usize,
    writer: Arc<Mutex<OwnedWriteHalf>>,
    pongs: watch::Sender<u64>,
) -> anyhow::Result<()> {
    let mut pongs_received = 0u64;
    loop {
        let mut used_total = 0;
        let mut pongs_owed = 0;
        while let Some((op, used_bytes)) = decode_op(&buf[used_total..])? {
            used_total += used_bytes;
            match op {
                Op::Pong => pongs_received += 1,
                Op::Ping => pongs_owed += 1,
                Op::PlusOk | Op::Info(_) => {}
                Op::MinusErr(message) => {
                    bail!("server error: {}", String::from_utf8_lossy(message))
                }
                Op::Msg { subject, .. } => bail!(
                    "MSG on {} to a connection that never subscribed",
                    String::from_utf8_lossy(subject)
                ),
            }
        }
        buf.advance(used_total);
        if pongs_received != *pongs.borrow() {
            pongs.send_replace(pongs_received);
        }
        if pongs_owed > 0 {
            writer
                .lock()
                .await
                .write_all(&b"PONG\r\n".repeat(pongs_owed))
                .await
                .context("answering PING")?;
        }
        if read_some(&reader, &mut buf, &mut chunk_bytes).await? == 0 {
            ensure!(
                buf.is_empty(),
                "server closed the connection inside an operation ({} bytes pending)",
                buf.len()
            );
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A decoded operation copied out of the buffer, for comparing decodes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Info(Vec<u8>),
        Msg(Vec<u8>, Vec<u8>, Option<Vec<u8>>, Vec<u8>),
        Ping,
        Pong,
        PlusOk,
        MinusErr(Vec<u8>),
    }

    fn owned(op: Op<'_>) -> Owned {
        match op {
            Op::Info(json) => Owned::Info(json.to_vec()),
            Op::Msg {
                subject,
                sid,
                reply_to,
                payload,
            } => Owned::Msg(
                subject.to_vec(),
                sid.to_vec(),
                reply_to.map(<[u8]>::to_vec),
                payload.to_vec(),
            ),
            Op::Ping => Owned::Ping,
            Op::Pong => Owned::Pong,
            Op::PlusOk => Owned::PlusOk,
            Op::MinusErr(message) => Owned::MinusErr(message.to_vec()),
        }
    }

    /// Feeds `chunks` through the decoder as a reader would: append, decode every complete
    /// operation, keep the rest. Also checks the buffer never holds more than one bounded op.
    fn decode_chunks<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(Vec<Owned>, usize), DecodeError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some((op, n)) = decode_op(&buf)? {
                assert!(n > 0 && n <= buf.len());
                out.push(owned(op));
                buf.advance(n);
            }
            assert!(buf.len() <= MAX_CONTROL_LINE_BYTES + MAX_PAYLOAD_BYTES + 2 + chunk.len());
        }
        Ok((out, buf.len()))
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Owned>, DecodeError> {
        decode_chunks([bytes]).map(|(ops, _)| ops)
    }

    #[test]
    fn decodes_each_server_operation() {
        let stream = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576} \r\n\
            MSG a.b 1 5\r\nhello\r\n\
            msg\ta.b\t 1  reply.to 7\r\nhi\r\n\r\nx\r\n\
            MSG e 1 0\r\n\r\n\
            PING\r\nPONG\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\n";
        assert_eq!(
            decode_all(stream).unwrap(),
            vec![
                Owned::Info(b"{\"server_id\":\"x\",\"max_payload\":1048576}".to_vec()),
                Owned::Msg(b"a.b".to_vec(), b"1".to_vec(), None, b"hello".to_vec()),
                Owned::Msg(
                    b"a.b".to_vec(),
                    b"1".to_vec(),
                    Some(b"reply.to".to_vec()),
                    b"hi\r\n\r\nx".to_vec()
                ),
                Owned::Msg(b"e".to_vec(), b"1".to_vec(), None, Vec::new()),
                Owned::Ping,
                Owned::Pong,
                Owned::PlusOk,
                Owned::MinusErr(b"'Unknown Protocol Operation'".to_vec()),
            ]
        );
    }

    #[test]
    fn encodes_pub() {
        let mut buf = BytesMut::new();
        encode_pub(&mut buf, b"a.b", b"hello");
        encode_pub(&mut buf, b"c", b"");
        assert_eq!(&buf[..], b"PUB a.b 5\r\nhello\r\nPUB c 0\r\n\r\n");
        for n in [0, 9, 10, 99, 100, 1_048_576, usize::MAX] {
            let mut buf = BytesMut::new();
            put_decimal(&mut buf, n);
            assert_eq!(&buf[..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn encodes_connect_as_json() {
        let mut buf = BytesMut::new();
        encode_connect(&mut buf, "bench \"s1\"");
        let line = std::str::from_utf8(&buf).unwrap();
        let json = line
            .strip_prefix("CONNECT ")
            .and_then(|l| l.strip_suffix("\r\n"))
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["verbose"], false);
        assert_eq!(value["pedantic"], false);
        assert_eq!(value["name"], "bench \"s1\"");
    }

    #[test]
    fn rejects_what_no_server_sends() {
        for bytes in [
            &b"HELLO\r\n"[..],
            b"PING\n",
            b"PING extra\r\n",
            b"MSG a 1\r\n",
            b"MSG a 1 r s 5\r\n",
            b"MSG a 1 -5\r\n",
            b"MSG a 1 5x\r\n",
            b"MSG a 1 12345678901\r\n",
            b"MSG a 1 2\r\nhiXX",
            b"MSG a 1 2\r\nhi\n\r",
            b"\r\n",
        ] {
            assert!(
                decode_all(bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(
            decode_all(format!("MSG a 1 {}\r\n", MAX_PAYLOAD_BYTES + 1).as_bytes()),
            Err(DecodeError::PayloadTooLarge {
                payload_bytes: MAX_PAYLOAD_BYTES as u64 + 1
            })
        );
        assert_eq!(
            decode_all(&vec![b'x'; MAX_CONTROL_LINE_BYTES]),
            Err(DecodeError::ControlLineTooLong)
        );
        // Just under the bound without a line end: incomplete, not yet an error.
        assert_eq!(decode_op(&vec![b'x'; MAX_CONTROL_LINE_BYTES - 1]), Ok(None));
    }

    #[test]
    fn accepts_the_largest_payload() {
        let mut stream = format!("MSG a 1 {MAX_PAYLOAD_BYTES}\r\n").into_bytes();
        stream.extend(std::iter::repeat_n(7u8, MAX_PAYLOAD_BYTES));
        stream.extend_from_slice(b"\r\n");
        let ops = decode_all(&stream).unwrap();
        assert!(matches!(&ops[..], [Owned::Msg(_, _, None, p)] if p.len() == MAX_PAYLOAD_BYTES));
    }

    fn arb_subject() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(b"abcxyz.*>_-0123456789".to_vec()),
            1..20,
        )
    }

    fn arb_op() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"PING\r\n".to_vec()),
            Just(b"PONG\r\n".to_vec()),
            Just(b"+OK\r\n".to_vec()),
            Just(b"-ERR 'Stale Connection'\r\n".to_vec()),
            Just(b"INFO {\"a\":1}\r\n".to_vec()),
            (
                arb_subject(),
                1u32..1000,
                prop::option::of(arb_subject()),
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..200),
                    prop::collection::vec(any::<u8>(), 5000..5100),
                ]
            )
                .prop_map(|(subject, sid, reply_to, payload)| {
                    let mut v = b"MSG ".to_vec();
                    v.extend_from_slice(&subject);
                    v.extend_from_slice(format!(" {sid} ").as_bytes());
                    if let Some(reply_to) = reply_to {
                        v.extend_from_slice(&reply_to);
                        v.push(b' ');
                    }
                    v.extend_from_slice(format!("{}\r\n", payload.len()).as_bytes());
                    v.extend_from_slice(&payload);
                    v.extend_from_slice(b"\r\n");
                    v
                }),
        ]
    }

    proptest! {
        #[test]
        fn any_split_of_a_valid_stream_decodes_the_same(
            ops in prop::collection::vec(arb_op(), 1..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let stream = ops.concat();
            let (whole, rest) = decode_chunks([&stream[..]]).unwrap();
            prop_assert_eq!(rest, 0);
            prop_assert_eq!(whole.len(), ops.len());
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
        fn garbage_lines_are_errors(
            line in prop::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..100),
        ) {
            let upper = line.to_ascii_uppercase();
            let known = [&b"MSG"[..], b"PING", b"PONG", b"+OK", b"-ERR", b"INFO"]
                .iter()
                .any(|op| upper.starts_with(op));
            prop_assume!(!known);
            let mut bytes = line.clone();
            bytes.extend_from_slice(b"\r\n");
            prop_assert!(decode_op(&bytes).is_err());
        }

        #[test]
        fn a_valid_prefix_followed_by_garbage_never_panics(
            ops in prop::collection::vec(arb_op(), 0..5),
            garbage in prop::collection::vec(any::<u8>(), 1..256),
        ) {
            let stream = [ops.concat(), garbage].concat();
            let _ = decode_chunks([&stream[..]]);
        }
    }

    // Against a running server: `bench/peers.sh start nats PORT CPU DIR`, then
    // `BENCH_NATS_ADDR=127.0.0.1:PORT cargo test -p pushgate --bin pushgate-bench -- --ignored`.

    fn server_addr() -> SocketAddr {
        std::env::var("BENCH_NATS_ADDR")
            .expect("set BENCH_NATS_ADDR to a running nats-server (bench/peers.sh start nats)")
            .parse()
            .expect("BENCH_NATS_ADDR is host:port")
    }

    use crate::broker_check::{collect, own_rss_kib};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a running nats-server at BENCH_NATS_ADDR"]
    async fn against_nats_one_message_per_subject_and_1000_on_a_shared_subject() {
        let addr = server_addr();
        let run = std::process::id();
        let subjects = 100;
        let shared_subscribers = 5;
        let shared_messages = 1000;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut readers = Vec::new();
        for i in 0..subjects + shared_subscribers {
            let subject = if i < subjects {
                format!("bench.{run}.s{i}")
            } else {
                format!("bench.{run}.shared")
            };
            let sub = NatsSubscriber::connect(addr, &format!("bench-{run}-s{i}"), &subject)
                .await
                .unwrap();
            let tx = tx.clone();
            readers.push(sub.spawn_reader(move |payload| {
                let _ = tx.send((i, payload.to_vec()));
            }));
        }
        let mut publisher = NatsPublisher::connect(addr, &format!("bench-{run}-p"))
            .await
            .unwrap();
        for i in 0..subjects {
            publisher.publish(&format!("bench.{run}.s{i}"), format!("m{i}").as_bytes());
        }
        for n in 0..shared_messages {
            publisher.publish(&format!("bench.{run}.shared"), &(n as u32).to_be_bytes());
            if publisher.buffered_bytes() >= 4096 {
                publisher.flush().await.unwrap();
            }
        }
        publisher.ping_pong().await.unwrap();
        publisher.ping_pong().await.unwrap();
        let got = collect(&mut rx, subjects + shared_subscribers, |i| {
            if i < subjects {
                1
            } else {
                shared_messages
            }
        })
        .await;
        for (i, payloads) in got.iter().enumerate().take(subjects) {
            assert_eq!(payloads, &vec![format!("m{i}").into_bytes()]);
        }
        for payloads in &got[subjects..] {
            let expected: Vec<Vec<u8>> = (0..shared_messages)
                .map(|n| (n as u32).to_be_bytes().to_vec())
                .collect();
            assert_eq!(payloads, &expected, "shared subject in order");
        }
        for reader in &readers {
            assert!(!reader.is_finished(), "a reader ended early");
            reader.abort();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a running nats-server at BENCH_NATS_ADDR and ulimit -n above BENCH_CONNECTIONS"]
    async fn against_nats_many_idle_subscribers() {
        let addr = server_addr();
        let connections: usize = std::env::var("BENCH_CONNECTIONS")
            .ok()
            .map(|s| s.parse().expect("BENCH_CONNECTIONS is a number"))
            .unwrap_or(19_000);
        let in_flight: usize = std::env::var("BENCH_IN_FLIGHT")
            .ok()
            .map(|s| s.parse().expect("BENCH_IN_FLIGHT is a number"))
            .unwrap_or(64);
        let run = std::process::id();
        let subject = format!("bench.{run}.all");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let rss_before_kib = own_rss_kib();
        let started = std::time::Instant::now();
        let mut readers = Vec::with_capacity(connections);
        let mut pending = tokio::task::JoinSet::new();
        let mut next = 0;
        while readers.len() < connections {
            while next < connections && pending.len() < in_flight {
                let subject = subject.clone();
                let id = next;
                pending.spawn(async move {
                    let sub =
                        NatsSubscriber::connect(addr, &format!("bench-{run}-i{id}"), &subject)
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
            "nats: {connections} subscribers in {elapsed:?} ({:.0} conn/s, {in_flight} in flight); \
             load generator RSS +{} KiB ({:.2} KiB/conn)",
            connections as f64 / elapsed.as_secs_f64(),
            own_rss_kib().saturating_sub(rss_before_kib),
            own_rss_kib().saturating_sub(rss_before_kib) as f64 / connections as f64,
        );
        let mut publisher = NatsPublisher::connect(addr, &format!("bench-{run}-p"))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        publisher.publish(&subject, b"to everyone");
        publisher.ping_pong().await.unwrap();
        collect(&mut rx, connections, |_| 1).await;
        eprintln!(
            "nats: one publish reached {connections} subscribers in {:?}",
            started.elapsed()
        );
        for reader in &readers {
            assert!(!reader.is_finished(), "a reader ended early");
            reader.abort();
        }
    }
}
