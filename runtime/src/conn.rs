//! Connection tasks: one per phone and one per PushClient. Each owns its socket. It reads,
//! splits frames and hands them to the node task; it receives frames to send, encodes (and for
//! phones compresses and encrypts) them, and writes every frame that is ready in one write.
//! Buffers are allocated while a connection is active and released when it goes idle, so an
//! idle connection holds little memory.
use crate::driver::{GatewayCmd, NodeHandle, NodeMsg, PhoneCmd, PhoneLink};
use bytes::BytesMut;
use pushgate_core::frame::{Frame, FrameDecoder, FrameError};
use pushgate_core::{ConnId, GatewayId, Input};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Most frames coalesced into one write.
pub const MAX_FRAMES_PER_WRITE: usize = 256;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 4096;

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub max_body_bytes: usize,
    pub compress_threshold_bytes: usize,
    pub low_water_bytes: usize,
}

/// Runs a phone connection until either side closes it.
pub async fn run_phone(
    conn: ConnId,
    mut stream: TcpStream,
    node: NodeHandle,
    link: PhoneLink,
    mut rx: mpsc::UnboundedReceiver<PhoneCmd>,
    settings: ConnSettings,
) {
    let decoder = FrameDecoder::new(settings.max_body_bytes);
    let mut inbound = BytesMut::new();
    let mut reading = true;
    loop {
        if inbound.capacity() - inbound.len() < 64 {
            inbound.reserve(READ_CHUNK_BYTES);
        }
        tokio::select! {
            biased;
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                if !write_phone_batch(conn, &mut stream, &node, &link, &mut rx, cmd, settings).await {
                    break;
                }
            }
            read = stream.read_buf(&mut inbound), if reading => {
                match forward_frames(Side::Phone(conn), read, &decoder, &mut inbound, &node).await {
                    ReadOutcome::Open => {}
                    ReadOutcome::StopReading => reading = false,
                    ReadOutcome::Closed => break,
                    ReadOutcome::NodeGone => return,
                }
            }
        }
    }
}

/// Writes `first` and every other ready command in one batch; false when the task must end.
async fn write_phone_batch(
    conn: ConnId,
    stream: &mut TcpStream,
    node: &NodeHandle,
    link: &PhoneLink,
    rx: &mut mpsc::UnboundedReceiver<PhoneCmd>,
    first: PhoneCmd,
    settings: ConnSettings,
) -> bool {
    let mut out = BytesMut::new();
    let mut reports = Vec::new();
    let mut accounted = 0usize;
    let mut close = false;
    let mut next = Some(first);
    let mut frames = 0;
    while let Some(cmd) = next.take() {
        match cmd {
            PhoneCmd::Frame {
                frame,
                report_write,
                bytes,
            } => {
                frame.encode(settings.compress_threshold_bytes, &mut out);
                accounted += bytes;
                if let Some(sid) = report_write {
                    reports.push(sid);
                }
                frames += 1;
            }
            PhoneCmd::Close => {
                close = true;
                break;
            }
        }
        if frames < MAX_FRAMES_PER_WRITE {
            next = rx.try_recv().ok();
        }
    }
    let written =
        out.is_empty() || (stream.write_all(&out).await.is_ok() && stream.flush().await.is_ok());
    let before = link.queued_bytes.fetch_sub(accounted, Ordering::Relaxed);
    let after = before.saturating_sub(accounted);
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
    if close {
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
        if inbound.capacity() - inbound.len() < 64 {
            inbound.reserve(READ_CHUNK_BYTES);
        }
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
            read = stream.read_buf(&mut inbound), if reading => {
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
/// buffer when it is empty and large, so an idle connection holds little memory.
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
    if inbound.is_empty() && inbound.capacity() > READ_CHUNK_BYTES {
        *inbound = BytesMut::new();
    }
    outcome
}
