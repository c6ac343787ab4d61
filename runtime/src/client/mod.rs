//! Client libraries: [`DeviceClient`] (a phone, behaving like MPush's Java client SDK) and
//! [`PushClient`] (a business server pushing through a gateway, like MPush's `PushClient`), and
//! the `pushgate push` / `pushgate device` subcommands built on them ([`cli`]).
//!
//! Both clients own their socket through two tasks: a reader that splits frames and completes
//! the requests waiting for them, and a writer that coalesces everything queued into one write
//! (and flushes every time, which the simulator's TCP needs). Reading never waits for writing,
//! so a peer that writes while it is blocked on our reads cannot deadlock the link.
pub mod cli;
#[cfg(not(madsim))]
pub mod cluster;
pub mod device;
pub mod push;
pub mod tls;

pub use device::{AckPolicy, DeviceClient, DeviceEvent, DeviceOptions, StoredSession};
pub use push::{
    BroadcastRequest, PushClient, PushClientOptions, PushResult, RouteResolver, SinglePushRequest,
};
pub use tls::GatewayTls;

use bytes::{Bytes, BytesMut};
use pushgate_core::frame::{Frame, FrameDecoder, Packet, HEARTBEAT_BYTE};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed (connect, read or write).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer sent something this client cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The connection is closed (by the peer, by [`DeviceClient::close`], or after an error).
    #[error("connection closed")]
    Closed,
    /// The server answered with an ERROR: `cmd` is the command it refers to, `code` MPush's
    /// error code (reference §10), `reason` its text.
    #[error("rejected by the server (cmd {cmd}, code {code}): {reason}")]
    Rejected { cmd: u8, code: u8, reason: String },
}

/// Largest body the clients accept (MPush's Java SDK has no limit; this only bounds memory).
pub(crate) const CLIENT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes coalesced into one write.
const MAX_WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Requests waiting for their answer, by packet sessionId. The lock is held only to insert or
/// remove an entry.
pub(crate) type Pending = Arc<Mutex<HashMap<i32, oneshot::Sender<Packet>>>>;

/// Takes the waiter of `session_id` out of `pending`, if any.
pub(crate) fn take_pending(pending: &Pending, session_id: i32) -> Option<oneshot::Sender<Packet>> {
    lock(pending).remove(&session_id)
}

/// Locks a std mutex, ignoring poisoning (the maps stay consistent: one insert or remove).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the writer task is asked to do.
pub(crate) enum Outbound {
    /// Write these bytes (one or more encoded frames); `written` learns how the write went.
    Bytes {
        bytes: Bytes,
        written: Option<oneshot::Sender<Result<(), ClientError>>>,
    },
    /// Flush and stop; `done` is told once everything before it was written.
    Shutdown { done: oneshot::Sender<()> },
}

impl Outbound {
    /// One frame to write, no completion wanted.
    pub(crate) fn packet(packet: &Packet) -> Self {
        Outbound::Bytes {
            bytes: packet.to_bytes(),
            written: None,
        }
    }

    /// The one-byte heartbeat.
    pub(crate) fn heartbeat() -> Self {
        Outbound::Bytes {
            bytes: Bytes::from_static(&[HEARTBEAT_BYTE]),
            written: None,
        }
    }
}

/// Runs the writer of a connection: coalesces what is queued into one write, flushes, and (when
/// `heartbeat_every` is set) writes a heartbeat byte whenever nothing was written for that long.
/// Returns on [`Outbound::Shutdown`], when every sender is gone, or on a write error (reported
/// through `on_error`).
pub(crate) async fn run_writer<W>(
    mut out: W,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    heartbeat_every: Option<Duration>,
    on_error: impl FnOnce(io::Error),
) where
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut waiters: Vec<oneshot::Sender<Result<(), ClientError>>> = Vec::new();
    let mut last_write = tokio::time::Instant::now();
    loop {
        let first = match heartbeat_every {
            Some(every) => {
                tokio::select! {
                    biased;
                    message = rx.recv() => message,
                    () = tokio::time::sleep_until(last_write + every) => {
                        Some(Outbound::heartbeat())
                    }
                }
            }
            None => rx.recv().await,
        };
        let Some(first) = first else { break };
        let mut shutdown = None;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Outbound::Bytes { bytes, written } => {
                    buf.extend_from_slice(&bytes);
                    waiters.extend(written);
                }
                Outbound::Shutdown { done } => {
                    shutdown = Some(done);
                    break;
                }
            }
            if buf.len() < MAX_WRITE_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            let result = async {
                out.write_all(&buf).await?;
                out.flush().await
            }
            .await;
            buf.clear();
            last_write = tokio::time::Instant::now();
            if let Err(error) = result {
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(Err(ClientError::Io(io::Error::new(
                        error.kind(),
                        error.to_string(),
                    ))));
                }
                on_error(error);
                return;
            }
            for waiter in waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }
        }
        if let Some(done) = shutdown {
            let _ = out.shutdown().await;
            let _ = done.send(());
            return;
        }
    }
    let _ = out.flush().await;
}

/// Reads until a whole frame is buffered. End of stream before one is [`ClientError::Closed`].
pub(crate) async fn read_frame<R>(
    input: &mut R,
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
) -> Result<Frame, ClientError>
where
    R: AsyncRead + Unpin,
{
    loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(error) => return Err(ClientError::Protocol(error.to_string())),
        }
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        if input.read_buf(buf).await? == 0 {
            return Err(ClientError::Closed);
        }
    }
}

/// Milliseconds since the Unix epoch (the wall clock, simulated under madsim).
pub(crate) fn now_epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Connects with a time limit.
pub(crate) async fn connect_tcp(
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, ClientError> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout)??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
