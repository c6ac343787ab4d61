//! Connection tasks: one per phone and one per PushClient. Each owns its socket.
//!
//! A phone's [`PhoneTask`] is a future: spawned as a tokio task of its own (the simulator, the
//! TLS connection port, `net.phone_io = "tasks"`), or held in a slot of a phone group
//! ([`crate::phone_group`], the default on the plain port), which polls it the same way.
//!
//! A phone's task runs the phone's [`PhoneConn`] (the per-connection half of the core, sans-IO)
//! beside its socket, so framing, RSA, AES, inflate, compression and sealing happen here, on
//! whichever core the task runs, not on the node task. It feeds the connection what it reads,
//! what the node queued for it ([`PhoneQueue`]) and its timer (an entry on the node's wheel,
//! [`crate::phone_timers`], which fires through the queue), hands the node the decoded
//! messages, and writes what the connection sealed as the socket takes it. The slow-consumer
//! rule is the connection's: this task only reports how many bytes the socket took.
//!
//! A phone is idle almost all of the time, so an idle phone task holds no buffers: the read
//! buffer is allocated when the socket becomes readable and released as soon as it holds no
//! partial frame, the outbound queue owns no memory while empty, the connection releases its
//! write buffer once written, and a send to the node is boxed only while the node's queue is
//! full. What stays is the task ([`PhoneTask`], a future written by hand to hold each thing
//! once), the socket, the queue, the connection and its entry on the timer wheel.
//!
//! A PushClient's task reads frames and hands them to the node task, and writes what the node
//! sends it in batches.
use crate::driver::{GatewayCmd, GatewayOutbox, NodeGone, NodeHandle, NodeMsg, TrySend};
use crate::phone_queue::{PhoneQueue, ToPhone};
use crate::phone_timers::{PhoneTimers, WheelEntry};
use bytes::BytesMut;
use pushgate_core::conn::{ConnConfig, PhoneConn};
use pushgate_core::frame::{Frame, FrameDecoder};
use pushgate_core::{ConnId, GatewayId, Input, Millis};
use rand_chacha::rand_core::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most frames coalesced into one write on a PushClient connection.
pub const MAX_FRAMES_PER_WRITE: usize = 256;
/// Read buffer size: allocated when the socket has bytes, released when they are consumed.
const READ_CHUNK_BYTES: usize = 4096;

/// What every phone connection task of a node shares.
#[derive(Debug)]
pub struct PhoneSettings {
    /// The connections' rules and bounds.
    pub cfg: ConnConfig,
    /// Time 0 of the connections' clock (the node's).
    pub start: Instant,
    /// Secret key of the connections' random generators (one stream per connection).
    pub seed: [u8; 32],
    /// The connections' timers (one wheel, not a tokio timer per phone); its ticker runs
    /// beside the node ([`PhoneTimers::run`]).
    pub timers: Arc<PhoneTimers>,
}

impl PhoneSettings {
    /// The bound of a phone's [`PhoneQueue`]: the items that, sealed, would pass the hard
    /// limit whatever they hold (each is at least a frame header).
    pub fn max_queued_items(&self) -> usize {
        self.cfg.marks.hard_limit_bytes / pushgate_core::frame::HEADER_BYTES + 1
    }

    fn now_ms(&self) -> Millis {
        crate::node_clock::now_ms(self.start)
    }
}

/// A connection's random generator, keyed on first use: ChaCha20 under the node's secret
/// seed, stream = the connection, and a fresh 2^32-word window per use, so no two uses (on
/// any connection) share output. Only a HANDSHAKE draws from it.
struct ConnRng<'a> {
    settings: &'a PhoneSettings,
    conn: ConnId,
    uses: &'a mut u32,
    inner: Option<ChaCha20Rng>,
}

impl ConnRng<'_> {
    fn rng(&mut self) -> &mut ChaCha20Rng {
        self.inner.get_or_insert_with(|| {
            let mut rng = ChaCha20Rng::from_seed(self.settings.seed);
            rng.set_stream(self.conn.0);
            rng.set_word_pos(u128::from(*self.uses) << 32);
            *self.uses = self.uses.wrapping_add(1);
            rng
        })
    }
}

impl RngCore for ConnRng<'_> {
    fn next_u32(&mut self) -> u32 {
        self.rng().next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.rng().next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.rng().fill_bytes(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_chacha::rand_core::Error> {
        self.rng().try_fill_bytes(dest)
    }
}

impl CryptoRng for ConnRng<'_> {}

/// What woke a phone task.
enum Wake {
    Wrote(usize),
    WriteFailed,
    Queue,
    Read(std::io::Result<usize>),
}

/// A phone's read buffer: bytes read and not yet framed. An idle phone holds one pointer for
/// it: the buffer (and the box around it) exists only from the moment its socket is readable
/// until no partial frame waits in it.
#[derive(Debug, Default)]
pub struct Inbound(Option<Box<BytesMut>>);

impl Inbound {
    /// The buffer, made when first asked for.
    pub fn buf(&mut self) -> &mut BytesMut {
        self.0.get_or_insert_with(Box::default)
    }

    /// Drops the buffer when it holds no partial frame.
    pub fn release_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|buf| buf.is_empty()) {
            self.0 = None;
        }
    }

    /// True while a buffer is held.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

/// A phone's byte stream: a TCP socket (read by readiness, so an idle phone holds no read
/// buffer), or TLS over one (the TLS connection port).
pub trait PhoneStream: AsyncWrite + Unpin + Send + 'static {
    /// Reads what the stream has into `inbound`; pending (waker registered) while nothing.
    /// The buffer is made only once there is something to read.
    fn poll_read_some(
        &mut self,
        inbound: &mut Inbound,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>>;

    /// The peer's address, if known.
    fn peer_ip(&self) -> Option<std::net::IpAddr>;
}

impl PhoneStream for TcpStream {
    fn poll_read_some(
        &mut self,
        inbound: &mut Inbound,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        poll_read_some(self, inbound, cx)
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.peer_addr().ok().map(|a| a.ip())
    }
}

#[cfg(not(madsim))]
impl PhoneStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_read_some(
        &mut self,
        inbound: &mut Inbound,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        poll_read_into(self, inbound, cx)
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.get_ref().0.peer_addr().ok().map(|a| a.ip())
    }
}

/// Runs a phone connection until either side closes it: a [`PhoneTask`], spawned as is.
pub fn run_phone<S: PhoneStream>(
    conn: ConnId,
    stream: S,
    node: NodeHandle,
    queue: Arc<PhoneQueue>,
    settings: Arc<PhoneSettings>,
) -> PhoneTask<S> {
    let now_ms = settings.now_ms();
    PhoneTask {
        phone: Box::new(Phone {
            machine: PhoneConn::new(conn, &settings.cfg, now_ms),
            inbound: Inbound::default(),
            rng_uses: 0,
        }),
        wheel: WheelEntry::default(),
        #[cfg(madsim)]
        peer: stream.peer_ip(),
        stream,
        node,
        queue,
        settings,
        stage: Stage::Admitting,
    }
}

/// A phone connection's task: its future, written out by hand rather than as an `async fn` so
/// that it holds each thing once (19,000 idle phones hold 19,000 of these; with tokio's task
/// header and trailer, the task of a future of at most [`PhoneTask::MAX_BYTES`] takes two
/// 128-byte lines, where the `async fn` it replaced took three). What the connection holds
/// while it waits is boxed apart ([`Phone`]); the socket and the shared handles stay here.
pub struct PhoneTask<S> {
    phone: Box<Phone>,
    /// The connection's idle checks, bind deadline and, once it closes with bytes still to
    /// write, its flush deadline (a peer that reads nothing holds the socket only so long):
    /// an entry on the node's timer wheel, disarmed when the task ends.
    wheel: WheelEntry,
    stream: S,
    node: NodeHandle,
    queue: Arc<PhoneQueue>,
    settings: Arc<PhoneSettings>,
    stage: Stage,
    #[cfg(madsim)]
    peer: Option<std::net::IpAddr>,
}

/// What one phone's task keeps between wake-ups.
struct Phone {
    /// The connection's machine (framing, ciphers, heartbeats, queued bytes).
    machine: PhoneConn,
    /// Bytes read and not yet framed; allocated only while the socket has some.
    inbound: Inbound,
    /// Uses of the connection's random generator ([`ConnRng`]).
    rng_uses: u32,
}

/// A send to the node that waits for room in its queue.
type NodeSend = Pin<Box<dyn std::future::Future<Output = Result<(), NodeGone>> + Send>>;

/// Where a phone's task is.
enum Stage {
    /// Waiting for the node to take the connection in (under its connection limit).
    Admitting,
    /// Reading, writing, handing over: the connection is open.
    Running,
    /// The node's queue was full: this message goes first, when it has room. (Boxed: the node
    /// keeps up almost always, and an idle phone should not hold a send's state.)
    HandingOver(NodeSend),
    /// The connection ends with a goodbye: the socket's write side is being shut.
    ShuttingDown,
}

impl<S> PhoneTask<S> {
    /// The connection's stream (a phone group marks its socket's readiness here).
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The most bytes a phone's task may hold (a unit test checks it). tokio 1.54 on x86_64
    /// allocates a task in 128-byte lines: a spawned future of at most 151 bytes takes 256
    /// bytes, one of 159 already 384 (measured). The accept loop wraps this future with the
    /// address slot and the live-connection guard (40 bytes more).
    pub const MAX_BYTES: usize = 104;

    /// The most bytes the spawned future (this task, wrapped by the accept loop) may hold.
    pub const MAX_SPAWNED_BYTES: usize = 151;
}

impl<S: PhoneStream> std::future::Future for PhoneTask<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Admitting => {
                    std::task::ready!(this.queue.poll_admitted(cx));
                    this.stage = Stage::Running;
                }
                Stage::HandingOver(send) => {
                    if std::task::ready!(send.as_mut().poll(cx)).is_err() {
                        return Poll::Ready(()); // the node is gone
                    }
                    this.stage = Stage::Running;
                }
                Stage::ShuttingDown => {
                    let _ = std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx));
                    return Poll::Ready(());
                }
                Stage::Running => {
                    if let Err(blocked) = this.hand_over() {
                        match blocked {
                            HandOver::Wait(send) => {
                                this.stage = Stage::HandingOver(send);
                                continue;
                            }
                            HandOver::NodeGone => return Poll::Ready(()),
                        }
                    }
                    let machine = &this.phone.machine;
                    if machine.is_finished() {
                        if machine.wants_goodbye() {
                            this.stage = Stage::ShuttingDown;
                            continue;
                        }
                        return Poll::Ready(());
                    }
                    let wake = std::task::ready!(this.poll_wake(cx));
                    this.handle(wake);
                }
            }
        }
    }
}

/// Why the connection's messages could not all go to the node at once.
enum HandOver {
    /// The node's queue is full: the returned send finishes the message that did not fit.
    Wait(NodeSend),
    NodeGone,
}

impl<S: PhoneStream> PhoneTask<S> {
    /// Hands the node every message the connection has for it, in order, while its queue has
    /// room.
    fn hand_over(&mut self) -> Result<(), HandOver> {
        while let Some(input) = self.phone.machine.poll_input() {
            match self.node.try_send(NodeMsg::Input(input)) {
                Ok(()) => {}
                Err(TrySend::Full(msg)) => {
                    let node = self.node.clone();
                    return Err(HandOver::Wait(Box::pin(
                        async move { node.send(*msg).await },
                    )));
                }
                Err(TrySend::Gone) => return Err(HandOver::NodeGone),
            }
        }
        Ok(())
    }

    /// One poll for every source: nothing but wakers is registered while the phone is idle.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let Phone {
            machine, inbound, ..
        } = &mut *self.phone;
        self.wheel.arm(
            &self.settings.timers,
            machine.id(),
            &self.queue,
            machine.poll_timeout(),
        );
        let pending = machine.poll_transmit();
        if !pending.is_empty() {
            #[cfg(madsim)]
            let stalled = crate::sim_hooks::poll_stalled(self.peer, cx);
            #[cfg(not(madsim))]
            let stalled = false;
            if !stalled {
                if let Poll::Ready(wrote) = poll_write_some(&mut self.stream, pending, cx) {
                    return Poll::Ready(wrote);
                }
            }
        }
        if self.queue.poll_ready(cx).is_ready() {
            return Poll::Ready(Wake::Queue);
        }
        if machine.is_open() {
            if let Poll::Ready(read) = self.stream.poll_read_some(inbound, cx) {
                return Poll::Ready(Wake::Read(read));
            }
        }
        Poll::Pending
    }

    /// Feeds the connection what woke it.
    fn handle(&mut self, wake: Wake) {
        let settings = &*self.settings;
        let cfg = &settings.cfg;
        let now = settings.now_ms();
        let Phone {
            machine,
            inbound,
            rng_uses,
        } = &mut *self.phone;
        match wake {
            Wake::Wrote(bytes) => machine.handle_written(cfg, now, bytes),
            Wake::WriteFailed => machine.handle_peer_closed(now),
            Wake::Queue => {
                let batch = self.queue.take();
                for item in batch.frames {
                    match item {
                        ToPhone::Frame {
                            frame,
                            report_write,
                        } => machine.handle_transmit(cfg, now, frame, report_write),
                        ToPhone::Resume(resume) => machine.handle_resume(cfg, now, *resume),
                    }
                }
                if batch.overflow {
                    machine.handle_queue_overflow(now);
                }
                if batch.close {
                    machine.handle_close(now);
                }
                if let Some(tick_ms) = self.wheel.fired(batch.timer_tick) {
                    // A deadline moved later since is armed again before the next wait.
                    if let Some(due) = machine.poll_timeout().filter(|due| *due <= tick_ms) {
                        machine.handle_timeout(cfg, now.max(due));
                    }
                }
            }
            Wake::Read(Ok(read)) if read > 0 => {
                let mut rng = ConnRng {
                    settings,
                    conn: machine.id(),
                    uses: rng_uses,
                    inner: None,
                };
                machine.handle_bytes(cfg, now, inbound.buf(), &mut rng);
                inbound.release_if_empty();
            }
            Wake::Read(_) => machine.handle_peer_closed(now),
        }
    }
}

impl<S> Drop for PhoneTask<S> {
    /// However the task ends (also when the runtime drops it), its timer goes with it, and a
    /// connection dropped while still open (a phone group that failed, a poll that panicked)
    /// tells the node it closed, so the node does not keep a session for a socket that is
    /// gone. Best effort: when the node's queue is full the message goes through a task of its
    /// own; when the node is gone there is nobody to tell.
    fn drop(&mut self) {
        let machine = &mut self.phone.machine;
        let conn = machine.id();
        self.wheel.disarm(&self.settings.timers, conn);
        if machine.is_open() {
            machine.handle_peer_closed(self.settings.now_ms());
        }
        while let Some(input) = machine.poll_input() {
            match self.node.try_send(NodeMsg::Input(input)) {
                Ok(()) => {}
                Err(TrySend::Gone) => return,
                #[cfg(not(madsim))]
                Err(TrySend::Full(msg)) => {
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let node = self.node.clone();
                        runtime.spawn(async move { node.send(*msg).await });
                    }
                }
                // In the simulator a task is dropped when its node is killed: nobody to tell.
                #[cfg(madsim)]
                Err(TrySend::Full(_)) => {}
            }
        }
    }
}

/// Writes what the socket takes of `pending` (and flushes it: the simulator's sockets send on
/// flush).
fn poll_write_some<S: AsyncWrite + Unpin>(
    stream: &mut S,
    pending: &[u8],
    cx: &mut Context<'_>,
) -> Poll<Wake> {
    match Pin::new(&mut *stream).poll_write(cx, pending) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Wake::WriteFailed),
        Poll::Ready(Ok(written)) => match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Err(_)) => Poll::Ready(Wake::WriteFailed),
            _ => Poll::Ready(Wake::Wrote(written)),
        },
    }
}

/// Reads what the socket has into `inbound`, which is given room only once the socket is
/// readable; pending (with the waker registered) while there is nothing to read.
#[cfg(not(madsim))]
fn poll_read_some(
    stream: &mut TcpStream,
    inbound: &mut Inbound,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    loop {
        if let Err(error) = std::task::ready!(stream.poll_read_ready(cx)) {
            return Poll::Ready(Err(error));
        }
        let buf = inbound.buf();
        make_room(buf);
        match stream.try_read_buf(buf) {
            // Readiness was stale (and is now cleared): poll again to register the waker.
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                inbound.release_if_empty();
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
    inbound: &mut Inbound,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    poll_read_into(stream, inbound, cx)
}

/// Reads what `stream` has into `inbound` through a chunk reserved for the read and given back
/// when nothing came (streams without a readiness API: the simulator's, TLS).
fn poll_read_into<R: AsyncRead + Unpin>(
    stream: &mut R,
    inbound: &mut Inbound,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let held = inbound.buf();
    let start = held.len();
    held.resize(start + READ_CHUNK_BYTES, 0);
    let mut buf = tokio::io::ReadBuf::new(&mut held[start..]);
    let polled = std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf);
    let read = buf.filled().len();
    held.truncate(start + read);
    match polled {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(read)),
        Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        Poll::Pending => {
            inbound.release_if_empty();
            Poll::Pending
        }
    }
}

/// Drops a PushClient connection's read buffer when it holds no partial frame.
fn release_if_empty(inbound: &mut BytesMut) {
    if inbound.is_empty() && inbound.capacity() > 0 {
        *inbound = BytesMut::new();
    }
}

#[cfg(not(madsim))]
fn make_room(inbound: &mut BytesMut) {
    if inbound.capacity() - inbound.len() < 64 {
        inbound.reserve(READ_CHUNK_BYTES);
    }
}

/// What a PushClient connection task runs with.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub max_body_bytes: usize,
    /// Checks AUTH frames sent on a connection admitted without one.
    pub access: Arc<crate::access::GatewayAccess>,
    pub counters: Arc<crate::limits::LimitCounters>,
}

/// Runs a PushClient connection until either side closes it. `inbound` holds bytes already
/// read (after the connection's token).
pub async fn run_gateway<S: AsyncRead + AsyncWrite + Unpin>(
    gw: GatewayId,
    mut stream: S,
    node: NodeHandle,
    mut rx: mpsc::UnboundedReceiver<GatewayCmd>,
    outbox: Arc<GatewayOutbox>,
    settings: GatewaySettings,
    mut inbound: BytesMut,
) {
    let decoder = FrameDecoder::new(settings.max_body_bytes);
    let mut reading = true;
    if !inbound.is_empty() {
        match forward_frames(
            gw,
            Ok(inbound.len()),
            &decoder,
            &mut inbound,
            &node,
            &settings,
        )
        .await
        {
            ReadOutcome::Open => {}
            ReadOutcome::StopReading => reading = false,
            ReadOutcome::Refused(packet, refused) => {
                return refuse_gateway(gw, stream, &node, &packet, &refused, &settings).await;
            }
            ReadOutcome::Closed => return,
            ReadOutcome::NodeGone => return,
        }
    }
    loop {
        tokio::select! {
            biased;
            () = outbox.overflowed() => {
                tracing::debug!(%gw, queued_bytes = outbox.queued_bytes(), "PushClient reads nothing: closed");
                let _ = node.send(NodeMsg::Input(Input::GatewayClosed { gw })).await;
                break;
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else {
                    let _ = node.send(NodeMsg::Input(Input::GatewayClosed { gw })).await;
                    break;
                };
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
                let ok = out.is_empty() || tokio::select! {
                    biased;
                    () = outbox.overflowed() => false,
                    wrote = async {
                        stream.write_all(&out).await?;
                        stream.flush().await
                    } => wrote.is_ok(),
                };
                outbox.written(out.len());
                if !ok || close {
                    if close {
                        let _ = stream.shutdown().await;
                    }
                    let _ = node.send(NodeMsg::Input(Input::GatewayClosed { gw })).await;
                    break;
                }
            }
            read = read_buf_some(&mut stream, &mut inbound), if reading => {
                match forward_frames(gw, read, &decoder, &mut inbound, &node, &settings).await {
                    ReadOutcome::Open => {}
                    ReadOutcome::StopReading => reading = false,
                    ReadOutcome::Refused(packet, refused) => {
                        return refuse_gateway(gw, stream, &node, &packet, &refused, &settings).await;
                    }
                    ReadOutcome::Closed => break,
                    ReadOutcome::NodeGone => return,
                }
            }
        }
    }
}

/// Closes a connection that sent a wrong token after it was admitted.
async fn refuse_gateway<S: AsyncRead + AsyncWrite + Unpin>(
    gw: GatewayId,
    mut stream: S,
    node: &NodeHandle,
    packet: &pushgate_core::frame::Packet,
    refused: &crate::gateway_auth::Refused,
    settings: &GatewaySettings,
) {
    settings.counters.hit(
        crate::limits::Limit::GatewayAuth,
        &format_args!("{gw}: {refused}"),
    );
    crate::gateway_auth::refuse(&mut stream, packet, refused).await;
    let _ = node.send(NodeMsg::Input(Input::GatewayClosed { gw })).await;
}

/// Reads what the stream has into `inbound` (a gateway connection: few of them, so its read
/// buffer is reserved as bytes come rather than only when readable).
async fn read_buf_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    inbound: &mut BytesMut,
) -> std::io::Result<usize> {
    if inbound.capacity() - inbound.len() < 64 {
        inbound.reserve(READ_CHUNK_BYTES);
    }
    stream.read_buf(inbound).await
}

/// What a read left the connection in.
enum ReadOutcome {
    Open,
    /// The stream could not be framed: the node was told and answers with a close.
    StopReading,
    /// The peer closed (or the socket broke): the node was told.
    Closed,
    /// An AUTH frame with a wrong token.
    Refused(pushgate_core::frame::Packet, crate::gateway_auth::Refused),
    NodeGone,
}

/// After a read: hands every whole frame buffered in `inbound` to the node, and releases the
/// buffer when no partial frame is left in it, so an idle connection holds no read buffer.
/// An AUTH frame is checked, never handed on.
async fn forward_frames(
    gw: GatewayId,
    read: std::io::Result<usize>,
    decoder: &FrameDecoder,
    inbound: &mut BytesMut,
    node: &NodeHandle,
    settings: &GatewaySettings,
) -> ReadOutcome {
    if !matches!(read, Ok(n) if n > 0) {
        let _ = node.send(NodeMsg::Input(Input::GatewayClosed { gw })).await;
        return ReadOutcome::Closed;
    }
    let mut outcome = ReadOutcome::Open;
    loop {
        match decoder.decode(inbound) {
            // PushClients send no heartbeats; a stray one is ignored.
            Ok(Some(Frame::Heartbeat)) => {}
            Ok(Some(Frame::Packet(packet)))
                if packet.cmd == crate::access::PUSHGATE_GATEWAY_AUTH =>
            {
                if !crate::gateway_auth::token_ok(&settings.access, &packet.body) {
                    return ReadOutcome::Refused(packet, crate::gateway_auth::Refused::WrongToken);
                }
            }
            Ok(Some(frame)) => {
                let input = Input::GatewayFrame { gw, frame };
                if node.send(NodeMsg::Input(input)).await.is_err() {
                    return ReadOutcome::NodeGone;
                }
            }
            Ok(None) => break,
            Err(error) => {
                let input = Input::GatewayFrameError { gw, error };
                let _ = node.send(NodeMsg::Input(input)).await;
                outcome = ReadOutcome::StopReading;
                break;
            }
        }
    }
    release_if_empty(inbound);
    outcome
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A phone's messages wait for room when the node's queue is full, and reach the node
    /// after what was queued before them.
    #[test]
    fn a_full_node_queue_holds_the_phones_message_until_there_is_room() {
        on_loopback(|phone, server_side| async move {
            let (node, mut rx) = NodeHandle::channel(1);
            let earlier = Input::PhoneConnected { conn: ConnId(9) };
            node.try_send(NodeMsg::Input(earlier))
                .expect("room for one");
            let queue = Arc::new(PhoneQueue::new(16));
            queue.admit();
            let task = tokio::spawn(run_phone(
                ConnId(1),
                server_side,
                node,
                queue,
                Arc::new(test_settings()),
            ));
            drop(phone); // the peer closes: the connection tells the node
            tokio::task::yield_now().await;
            assert!(
                !task.is_finished(),
                "the task waits for room in the node's queue"
            );
            let first = rx.recv().await.expect("the earlier message");
            assert!(
                matches!(
                    first,
                    NodeMsg::Input(Input::PhoneConnected { conn: ConnId(9) })
                ),
                "{first:?}"
            );
            let second = rx.recv().await.expect("the phone's message");
            assert!(
                matches!(
                    second,
                    NodeMsg::Input(Input::PhoneClosed {
                        conn: ConnId(1),
                        ..
                    })
                ),
                "{second:?}"
            );
            task.await
                .expect("the task ends once the node has its message");
        });
    }

    /// Runs `test` on a current-thread runtime with a connected loopback pair (the phone's
    /// end, the server's end).
    pub(crate) fn on_loopback<F, Fut>(test: F)
    where
        F: FnOnce(TcpStream, TcpStream) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let phone = TcpStream::connect(listener.local_addr().expect("addr"))
                .await
                .expect("connect");
            let (server_side, _) = listener.accept().await.expect("accept");
            test(phone, server_side).await;
        });
    }

    /// A phone task outside a server: its own queue (not admitted yet), [`test_settings`].
    fn test_task(conn: ConnId, stream: TcpStream, node: NodeHandle) -> PhoneTask<TcpStream> {
        run_phone(
            conn,
            stream,
            node,
            Arc::new(PhoneQueue::new(16)),
            Arc::new(test_settings()),
        )
    }

    /// Settings for a phone task outside a server (MPush's default key, default marks).
    pub(crate) fn test_settings() -> PhoneSettings {
        let cfg = pushgate_core::NodeConfig::new(
            pushgate_core::NodeAddr::new("127.0.0.1", 3001),
            pushgate_core::crypto::ServerRsaKey::mpush_default(),
        );
        PhoneSettings {
            cfg: ConnConfig::from_node(&cfg, 0, pushgate_core::QueueMarks::default()),
            start: Instant::now(),
            seed: [7; 32],
            timers: Arc::new(PhoneTimers::new()),
        }
    }

    /// A phone's task dropped while its connection is open (a phone group that failed, a poll
    /// that panicked) tells the node the connection closed: the node does not keep its session.
    #[test]
    fn a_phone_task_dropped_while_open_tells_the_node_it_closed() {
        on_loopback(|_phone, stream| async move {
            let (node, mut node_rx) = NodeHandle::channel(4);
            let task = test_task(ConnId(9), stream, node);
            drop(task);
            match node_rx.try_recv() {
                Ok(NodeMsg::Input(Input::PhoneClosed { conn, reason })) => {
                    assert_eq!(conn, ConnId(9));
                    assert_eq!(reason, pushgate_core::CloseReason::PeerClosed);
                }
                other => panic!(
                    "expected PhoneClosed, got {:?}",
                    other.map(|_| "another message")
                ),
            }
            assert!(node_rx.try_recv().is_err(), "told once");
        });
    }

    /// The read buffer exists only while it holds bytes: made on first use, kept while a
    /// partial frame waits in it, dropped once empty.
    #[test]
    fn a_read_buffer_is_held_only_while_it_holds_bytes() {
        let mut inbound = Inbound::default();
        assert!(!inbound.is_held());
        inbound.release_if_empty();
        assert!(!inbound.is_held());
        inbound.buf().extend_from_slice(b"partial");
        inbound.release_if_empty();
        assert!(inbound.is_held(), "a partial frame keeps it");
        assert_eq!(&inbound.buf()[..], b"partial");
        inbound.buf().clear();
        inbound.release_if_empty();
        assert!(!inbound.is_held());
    }

    /// An idle phone's task is this future plus tokio's task header and trailer: it must stay
    /// small, because 19,000 idle phones hold 19,000 of them.
    #[test]
    fn an_idle_phone_task_is_small() {
        use futures_util::FutureExt;
        on_loopback(|_phone, stream| async move {
            let (node, _rx) = NodeHandle::channel(1);
            let task = test_task(ConnId(1), stream, node);
            let bytes = std::mem::size_of_val(&task);
            eprintln!(
                "phone task {bytes} bytes; boxed apart: Phone {} bytes (PhoneConn {})",
                std::mem::size_of::<Phone>(),
                std::mem::size_of::<PhoneConn>(),
            );
            assert!(
                bytes <= PhoneTask::<TcpStream>::MAX_BYTES,
                "an idle phone task holds {bytes} bytes"
            );
            // As the accept loop spawns it.
            let slot = crate::limits::AddressSlot::unlimited();
            let live = crate::server::LiveGuard::new(&Arc::new(Default::default()));
            let spawned = task.map(move |()| drop(slot)).map(move |()| drop(live));
            let spawned_bytes = std::mem::size_of_val(&spawned);
            eprintln!("spawned future {spawned_bytes} bytes");
            assert!(
                spawned_bytes <= PhoneTask::<TcpStream>::MAX_SPAWNED_BYTES,
                "the spawned phone task holds {spawned_bytes} bytes"
            );
            assert!(
                std::mem::size_of::<Phone>() <= 160,
                "what a phone's task boxes apart should fit mimalloc's 160-byte class"
            );
        });
    }
}
