//! Connection tasks: one per phone and one per PushClient. Each owns its socket. It reads,
//! splits frames and hands them to the node task; it takes frames to send, encodes (and for
//! phones compresses and encrypts) them, and writes every frame that is ready in one write.
//!
//! A phone is idle almost all of the time, so an idle phone task holds no buffers: the read
//! buffer is allocated when the socket becomes readable and released as soon as it holds no
//! partial frame, the outbound queue ([`PhoneQueue`]) owns no memory while empty, and the
//! work done on activity runs in boxed futures that exist only while they run. What stays is
//! the socket, the queue and a small task.
use crate::driver::{GatewayCmd, NodeHandle, NodeMsg};
use crate::phone_queue::PhoneQueue;
use bytes::BytesMut;
use pushgate_core::frame::{Frame, FrameDecoder, FrameError};
use pushgate_core::{ConnId, GatewayId, Input};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Most frames coalesced into one write on a PushClient connection.
pub const MAX_FRAMES_PER_WRITE: usize = 256;
/// Read buffer size: allocated when the socket has bytes, released when they are consumed.
const READ_CHUNK_BYTES: usize = 4096;

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub max_body_bytes: usize,
    pub compress_threshold_bytes: usize,
    pub low_water_bytes: usize,
}

/// What woke a phone task.
enum Wake {
    Queue,
    Read(std::io::Result<usize>),
}

/// Runs a phone connection until either side closes it.
pub async fn run_phone(
    conn: ConnId,
    mut stream: TcpStream,
    node: NodeHandle,
    queue: Arc<PhoneQueue>,
    settings: ConnSettings,
) {
    let decoder = FrameDecoder::new(settings.max_body_bytes);
    let mut inbound = BytesMut::new();
    let mut reading = true;
    #[cfg(madsim)]
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    loop {
        // One poll for both sources, queue first: nothing but a waker is registered while the
        // phone is idle (no wait-list nodes or read futures kept in the task).
        let wake = std::future::poll_fn(|cx| {
            #[cfg(madsim)]
            let stalled = crate::sim_hooks::poll_stalled(peer, cx);
            #[cfg(not(madsim))]
            let stalled = false;
            if !stalled && queue.poll_ready(cx).is_ready() {
                return Poll::Ready(Wake::Queue);
            }
            if reading {
                if let Poll::Ready(read) = poll_read_some(&mut stream, &mut inbound, cx) {
                    return Poll::Ready(Wake::Read(read));
                }
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Queue => {
                let write = write_phone_batch(conn, &mut stream, &node, &queue, settings);
                if !Box::pin(write).await {
                    break;
                }
            }
            Wake::Read(read) => {
                let forward =
                    forward_frames(Side::Phone(conn), read, &decoder, &mut inbound, &node);
                match Box::pin(forward).await {
                    ReadOutcome::Open => {}
                    ReadOutcome::StopReading => reading = false,
                    ReadOutcome::Closed => break,
                    ReadOutcome::NodeGone => return,
                }
            }
        }
    }
}

/// Waits until the socket has bytes (or is closed) and reads them into `inbound`.
async fn read_some(stream: &mut TcpStream, inbound: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_some(stream, inbound, cx)).await
}

/// Reads what the socket has into `inbound`, which is given room only once the socket is
/// readable; pending (with the waker registered) while there is nothing to read.
#[cfg(not(madsim))]
fn poll_read_some(
    stream: &mut TcpStream,
    inbound: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    loop {
        if let Err(error) = std::task::ready!(stream.poll_read_ready(cx)) {
            return Poll::Ready(Err(error));
        }
        make_room(inbound);
        match stream.try_read_buf(inbound) {
            // Readiness was stale (and is now cleared): poll again to register the waker.
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                release_if_empty(inbound);
            }
            read => return Poll::Ready(read),
        }
    }
}

/// The simulator's sockets have no readiness API (and hold their own receive buffer): read
/// straight into `inbound`. Decoding, forwarding and release are the same as in production.
#[cfg(madsim)]
fn poll_read_some(
    stream: &mut TcpStream,
    inbound: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    use tokio::io::AsyncRead;
    let start = inbound.len();
    inbound.resize(start + READ_CHUNK_BYTES, 0);
    let mut buf = tokio::io::ReadBuf::new(&mut inbound[start..]);
    let polled = std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf);
    let read = buf.filled().len();
    inbound.truncate(start + read);
    match polled {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(read)),
        Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        Poll::Pending => {
            release_if_empty(inbound);
            Poll::Pending
        }
    }
}

#[cfg(not(madsim))]
fn make_room(inbound: &mut BytesMut) {
    if inbound.capacity() - inbound.len() < 64 {
        inbound.reserve(READ_CHUNK_BYTES);
    }
}

/// Drops the read buffer when it holds no partial frame.
fn release_if_empty(inbound: &mut BytesMut) {
    if inbound.is_empty() && inbound.capacity() > 0 {
        *inbound = BytesMut::new();
    }
}

/// Writes everything queued in one write; false when the task must end.
async fn write_phone_batch(
    conn: ConnId,
    stream: &mut TcpStream,
    node: &NodeHandle,
    queue: &PhoneQueue,
    settings: ConnSettings,
) -> bool {
    let batch = queue.take();
    let mut out = BytesMut::new();
    let mut reports = Vec::new();
    let mut accounted = 0usize;
    for queued in &batch.frames {
        queued
            .frame
            .encode(settings.compress_threshold_bytes, &mut out);
        accounted += queued.bytes;
        if let Some(sid) = queued.report_write {
            reports.push(sid);
        }
    }
    drop(batch.frames);
    let written =
        out.is_empty() || (stream.write_all(&out).await.is_ok() && stream.flush().await.is_ok());
    drop(out);
    let (before, after) = queue.written(accounted);
    for sid in reports {
        let input = Input::PhoneWritten {
            conn,
            push_session_id: sid,
            ok: written,
        };
        if node.send(NodeMsg::Input(input)).await.is_err() {
            return false;
        }
    }
    if !written {
        let _ = node.send(NodeMsg::Input(Input::PhoneClosed { conn })).await;
        return false;
    }
    if before > settings.low_water_bytes && after <= settings.low_water_bytes {
        let _ = node
            .send(NodeMsg::Input(Input::PhoneWritable {
                conn,
                writable: true,
            }))
            .await;
    }
    if batch.close {
        let _ = stream.shutdown().await;
        return false;
    }
    true
}

/// Runs a PushClient connection until either side closes it.
pub async fn run_gateway(
    gw: GatewayId,
    mut stream: TcpStream,
    node: NodeHandle,
    mut rx: mpsc::UnboundedReceiver<GatewayCmd>,
    max_body_bytes: usize,
) {
    let decoder = FrameDecoder::new(max_body_bytes);
    let mut inbound = BytesMut::new();
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let mut out = BytesMut::new();
                let mut close = false;
                let mut next = Some(cmd);
                let mut frames = 0;
                while let Some(cmd) = next.take() {
                    match cmd {
                        GatewayCmd::Packet(packet) => packet.encode(&mut out),
                        GatewayCmd::Close => {
                            close = true;
                            break;
                        }
                    }
                    frames += 1;
                    if frames < MAX_FRAMES_PER_WRITE {
                        next = rx.try_recv().ok();
                    }
                }
                let ok = out.is_empty() || (stream.write_all(&out).await.is_ok() && stream.flush().await.is_ok());
                if !ok || close {
                    if close {
                        let _ = stream.shutdown().await;
                    }
                    let _ = node.send(NodeMsg::Input(Input::GatewayClosed { gw })).await;
                    break;
                }
            }
            read = read_some(&mut stream, &mut inbound), if reading => {
                match forward_frames(Side::Gateway(gw), read, &decoder, &mut inbound, &node).await {
                    ReadOutcome::Open => {}
                    ReadOutcome::StopReading => reading = false,
                    ReadOutcome::Closed => break,
                    ReadOutcome::NodeGone => return,
                }
            }
        }
    }
}

/// Which kind of connection a task serves: how its frames become node inputs.
#[derive(Debug, Clone, Copy)]
enum Side {
    Phone(ConnId),
    Gateway(GatewayId),
}

impl Side {
    fn frame(self, frame: Frame) -> Option<Input> {
        match (self, frame) {
            (Side::Phone(conn), frame) => Some(Input::PhoneFrame { conn, frame }),
            // PushClients send no heartbeats; a stray one is ignored.
            (Side::Gateway(_), Frame::Heartbeat) => None,
            (Side::Gateway(gw), frame) => Some(Input::GatewayFrame { gw, frame }),
        }
    }

    fn frame_error(self, error: FrameError) -> Input {
        match self {
            Side::Phone(conn) => Input::PhoneFrameError { conn, error },
            Side::Gateway(gw) => Input::GatewayFrameError { gw, error },
        }
    }

    fn closed(self) -> Input {
        match self {
            Side::Phone(conn) => Input::PhoneClosed { conn },
            Side::Gateway(gw) => Input::GatewayClosed { gw },
        }
    }
}

/// What a read left the connection in.
enum ReadOutcome {
    Open,
    /// The stream could not be framed: the node was told and answers with a close.
    StopReading,
    /// The peer closed (or the socket broke): the node was told.
    Closed,
    NodeGone,
}

/// After a read: hands every whole frame buffered in `inbound` to the node, and releases the
/// buffer when no partial frame is left in it, so an idle connection holds no read buffer.
async fn forward_frames(
    side: Side,
    read: std::io::Result<usize>,
    decoder: &FrameDecoder,
    inbound: &mut BytesMut,
    node: &NodeHandle,
) -> ReadOutcome {
    if !matches!(read, Ok(n) if n > 0) {
        let _ = node.send(NodeMsg::Input(side.closed())).await;
        return ReadOutcome::Closed;
    }
    let mut outcome = ReadOutcome::Open;
    loop {
        match decoder.decode(inbound) {
            Ok(Some(frame)) => {
                if let Some(input) = side.frame(frame) {
                    if node.send(NodeMsg::Input(input)).await.is_err() {
                        return ReadOutcome::NodeGone;
                    }
                }
            }
            Ok(None) => break,
            Err(error) => {
                let _ = node.send(NodeMsg::Input(side.frame_error(error))).await;
                outcome = ReadOutcome::StopReading;
                break;
            }
        }
    }
    release_if_empty(inbound);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle phone's task is this future plus a task header: it must stay small, because
    /// 19,000 idle phones hold 19,000 of them.
    #[test]
    fn an_idle_phone_task_is_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let stream = TcpStream::connect(listener.local_addr().expect("addr"))
                .await
                .expect("connect");
            let (node, _rx) = NodeHandle::channel(1);
            let settings = ConnSettings {
                max_body_bytes: 1024,
                compress_threshold_bytes: 1024,
                low_water_bytes: 1024,
            };
            let task = run_phone(
                ConnId(1),
                stream,
                node,
                Arc::new(PhoneQueue::new()),
                settings,
            );
            let bytes = std::mem::size_of_val(&task);
            eprintln!("run_phone future: {bytes} bytes");
            assert!(bytes <= 320, "an idle phone task holds {bytes} bytes");
        });
    }
}
