//! [`DeviceClient`]: a phone on the connection port, behaving like MPush's Java client SDK
//! (reference §7.3, §9, §18).
//!
//! - Connect: with a stored, unexpired [`StoredSession`] it sends FAST_CONNECT in plaintext and
//!   switches to the stored cipher; an ERROR to it (session expired, invalid device) makes it
//!   fall back to a full handshake on the same connection. Otherwise (or then) it sends an
//!   RSA-encrypted HANDSHAKE with a random client key and IV, reads the HANDSHAKE-ok under
//!   AES(clientKey, iv), and from then on uses AES(clientKey XOR serverKey, iv).
//! - Requests (BIND, UNBIND, upstream PUSH) carry a per-connection sessionId counter starting at
//!   1, and wait for the answer with the same sessionId (OK / ERROR / ACK).
//! - A reader task opens every body and turns PUSH and KICK (and unsolicited ERRORs) into
//!   [`DeviceEvent`]s; it ACKs pushes as the [`AckPolicy`] says.
//! - A writer task sends the heartbeat byte whenever nothing was written for
//!   `heartbeat - 1000` ms (what the Android SDK's `healthCheck` alarm does).
//!
//! Unlike the SDK it never reconnects on its own: the caller connects again, passing
//! [`DeviceClient::stored_session`] to fast-connect.
use super::{
    connect_tcp, lock, now_epoch_ms, read_frame, run_writer, take_pending, ClientError, Outbound,
    Pending, CLIENT_MAX_BODY_BYTES,
};
use bytes::{Bytes, BytesMut};
use pushgate_core::command::Command;
use pushgate_core::crypto::{mix_keys, AesCipher, ClientRsaKey, AES_IV_BYTES, AES_KEY_BYTES};
use pushgate_core::frame::{Flags, Frame, FrameDecoder, Packet};
use pushgate_core::message::{
    Ack, Bind, Body, ErrorMessage, FastConnect, FastConnectOk, Handshake, HandshakeOk, Kick, Push,
};
use pushgate_core::pipeline::{
    open, raw_packet, seal_rsa, sealed_packet, OpenKey, CLIENT_COMPRESS_THRESHOLD_BYTES,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The SDK's default min/max heartbeat (4 minutes).
pub const SDK_HEARTBEAT_MS: i32 = 240_000;
/// The SDK's handshake / fast-connect answer timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 3000;
/// The SDK's bind / unbind timeout.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 3000;

/// Which pushes the client acknowledges by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    /// Like the SDK: AUTO_ACK pushes are acknowledged on delivery; BIZ_ACK pushes wait for the
    /// application's [`DeviceClient::ack`].
    #[default]
    Auto,
    /// Like `Auto`, and BIZ_ACK pushes are acknowledged on delivery too (an application that
    /// acks everything at once; the CLI's `--ack biz`).
    Biz,
    /// Never acknowledge (to test ack timeouts).
    None,
}

impl AckPolicy {
    /// Whether a push with these flags is acknowledged as soon as it is delivered.
    pub fn acks_on_delivery(self, flags: Flags) -> bool {
        match self {
            AckPolicy::Auto => flags.contains(Flags::AUTO_ACK),
            AckPolicy::Biz => flags.needs_ack(),
            AckPolicy::None => false,
        }
    }

    /// The lower-case name (`auto`, `biz`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            AckPolicy::Auto => "auto",
            AckPolicy::Biz => "biz",
            AckPolicy::None => "none",
        }
    }
}

/// A reusable session from a handshake, for fast connect (the SDK's `token.dat`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The server's reusable-session id (32 hex characters).
    pub session_id: String,
    /// The session key (clientKey XOR serverKey).
    pub session_key: [u8; AES_KEY_BYTES],
    pub iv: [u8; AES_IV_BYTES],
    /// When the server forgets the session (epoch ms).
    pub expire_time_ms: i64,
}

impl StoredSession {
    /// Whether the SDK would try a fast connect with it at `now_ms`.
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        !self.session_id.is_empty() && self.expire_time_ms > now_ms
    }

    /// The session cipher.
    pub fn cipher(&self) -> AesCipher {
        AesCipher::new(self.session_key, self.iv)
    }
}

impl fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key and IV are secrets: not printed.
        f.debug_struct("StoredSession")
            .field("session_id", &self.session_id)
            .field("expire_time_ms", &self.expire_time_ms)
            .finish_non_exhaustive()
    }
}

/// How a [`DeviceClient`] presents itself and behaves.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub device_id: String,
    /// Decides the client type on the server: "android"/"ios" → mobile, "windows"/"mac"/
    /// "linux" → PC, "web"/"h5" → web.
    pub os_name: String,
    pub os_version: String,
    pub client_version: String,
    /// The server's RSA public key (MPush's published default unless configured).
    pub public_key: ClientRsaKey,
    pub min_heartbeat_ms: i32,
    pub max_heartbeat_ms: i32,
    /// A session from an earlier connection: tried with FAST_CONNECT when not expired.
    pub session: Option<StoredSession>,
    /// Time for the HANDSHAKE-ok / FAST_CONNECT-ok to arrive (each, when both are tried).
    pub handshake_timeout_ms: u64,
    /// Time for a BIND / UNBIND / upstream PUSH answer.
    pub request_timeout_ms: u64,
    /// Time for the TCP connection to be established.
    pub connect_timeout_ms: u64,
    pub ack_policy: AckPolicy,
    /// Send the heartbeat byte when idle (off: let the server's idle check close us).
    pub send_heartbeats: bool,
    /// Seeds the client key, IV and RSA padding (deterministic tests); `None`: OS randomness.
    pub rng_seed: Option<u64>,
}

impl DeviceOptions {
    /// The SDK's defaults for a device with this id.
    pub fn new(device_id: impl Into<String>) -> Self {
        Self {
            device_id: device_id.into(),
            os_name: "android".into(),
            os_version: "10".into(),
            client_version: "1.0".into(),
            public_key: ClientRsaKey::mpush_default(),
            min_heartbeat_ms: SDK_HEARTBEAT_MS,
            max_heartbeat_ms: SDK_HEARTBEAT_MS,
            session: None,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            ack_policy: AckPolicy::Auto,
            send_heartbeats: true,
            rng_seed: None,
        }
    }
}

impl Default for DeviceOptions {
    /// The SDK's defaults with a random device id (`device-<16 hex>`).
    fn default() -> Self {
        Self::new(random_device_id(&mut rand::rngs::OsRng))
    }
}

/// `device-` and 16 random hex digits.
pub fn random_device_id(rng: &mut impl RngCore) -> String {
    let mut raw = [0u8; 8];
    rng.fill_bytes(&mut raw);
    format!("device-{}", hex::encode(raw))
}

/// What the connection delivers to the application.
#[derive(Debug)]
pub enum DeviceEvent {
    /// A PUSH from the server. `session_id` is what [`DeviceClient::ack`] takes; `flags` are the
    /// header flags as received (ack bits, and CRYPTO/COMPRESS as the body travelled);
    /// `content` is the opened body.
    Push {
        session_id: i32,
        flags: Flags,
        content: Bytes,
    },
    /// Another device of the same client type bound the same user (the server does not close
    /// this connection; the Android SDK unbinds).
    Kick { device_id: String, user_id: String },
    /// An ERROR no request was waiting for ([`ClientError::Rejected`]), a body that could not
    /// be opened ([`ClientError::Protocol`]), or a socket error ([`ClientError::Io`]).
    Error(ClientError),
    /// The connection is closed; nothing follows.
    Closed,
}

/// State shared by the client handle and its tasks.
struct Shared {
    pending: Pending,
    closed: AtomicBool,
    heartbeats_received: AtomicU64,
    /// The only sender of the event channel: taken (so the channel ends) on close.
    events: Mutex<Option<mpsc::UnboundedSender<DeviceEvent>>>,
}

impl Shared {
    /// Delivers an event (dropped once the connection is closed).
    fn emit(&self, event: DeviceEvent) {
        if let Some(events) = lock(&self.events).as_ref() {
            let _ = events.send(event);
        }
    }

    /// Marks the connection closed, fails every waiting request, reports `Closed` once and
    /// closes the event channel.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        lock(&self.pending).clear();
        if let Some(events) = lock(&self.events).take() {
            let _ = events.send(DeviceEvent::Closed);
        }
    }
}

/// A connected, handshaken phone. Dropping it closes the connection.
pub struct DeviceClient {
    device_id: String,
    local_addr: Option<SocketAddr>,
    cipher: AesCipher,
    session: StoredSession,
    fast_connected: bool,
    heartbeat_ms: i32,
    request_timeout: Duration,
    next_session_id: AtomicI32,
    bound_user: Mutex<Option<String>>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outbound>,
    events: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<DeviceEvent>>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// How the connection became ready.
struct Ready {
    cipher: AesCipher,
    session: StoredSession,
    heartbeat_ms: i32,
    fast_connected: bool,
}

impl DeviceClient {
    /// Connects to a connection port and performs the fast connect or handshake. Returns once
    /// the session cipher is in place (the caller binds next, as the SDK does).
    ///
    /// Errors: [`ClientError::Timeout`] when no answer came in `handshake_timeout_ms`,
    /// [`ClientError::Rejected`] when the server refused the handshake.
    pub async fn connect(server: SocketAddr, opts: DeviceOptions) -> Result<Self, ClientError> {
        let stream = connect_tcp(server, Duration::from_millis(opts.connect_timeout_ms)).await?;
        let local_addr = stream.local_addr().ok();
        Self::connect_over(stream, local_addr, opts).await
    }

    /// [`DeviceClient::connect`] over a stream already open to the connection port: a TLS
    /// stream to a TLS connection port, for example. `local_addr` is what
    /// [`DeviceClient::local_addr`] reports.
    pub async fn connect_over<S>(
        mut stream: S,
        local_addr: Option<SocketAddr>,
        opts: DeviceOptions,
    ) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut rng = match opts.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let decoder = FrameDecoder::new(CLIENT_MAX_BODY_BYTES);
        let mut inbound = BytesMut::new();
        let mut next_session_id = 1i32;
        let handshake_timeout = Duration::from_millis(opts.handshake_timeout_ms);

        let mut ready = None;
        if let Some(session) = opts
            .session
            .clone()
            .filter(|s| s.is_valid_at(now_epoch_ms()))
        {
            let sid = next_session_id;
            next_session_id += 1;
            let request = FastConnect {
                session_id: session.session_id.clone(),
                device_id: opts.device_id.clone(),
                min_heartbeat_ms: opts.min_heartbeat_ms,
                max_heartbeat_ms: opts.max_heartbeat_ms,
            };
            // Sent in plaintext; then the stored session cipher is in force.
            write_now(
                &mut stream,
                &raw_packet(Command::FastConnect.code(), Flags::NONE, sid, &request),
            )
            .await?;
            let cipher = session.cipher();
            let reply =
                await_reply(&mut stream, &mut inbound, &decoder, sid, handshake_timeout).await?;
            let body = open_body(&reply, &cipher, &mut rng)?;
            if reply.cmd == Command::FastConnect.code() {
                let ok = FastConnectOk::decode(&body)
                    .map_err(|e| ClientError::Protocol(format!("FAST_CONNECT-ok: {e}")))?;
                ready = Some(Ready {
                    cipher,
                    session,
                    heartbeat_ms: ok.heartbeat_ms,
                    fast_connected: true,
                });
            } else if reply.cmd == Command::Error.code() {
                let error = decode_error(&body)?;
                if error.cmd != Command::FastConnect.code() {
                    return Err(rejected(error));
                }
                // Session expired or invalid device: the SDK drops the session and handshakes
                // on the same connection.
                tracing::debug!(code = error.code, reason = %error.reason, "fast connect refused; handshaking");
            } else {
                return Err(unexpected("FAST_CONNECT", reply.cmd));
            }
        }

        let ready = match ready {
            Some(ready) => ready,
            None => {
                let sid = next_session_id;
                next_session_id += 1;
                handshake(
                    &mut stream,
                    &mut inbound,
                    &decoder,
                    sid,
                    &opts,
                    &mut rng,
                    handshake_timeout,
                )
                .await?
            }
        };

        let (read_half, write_half) = tokio::io::split(stream);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending: Arc::new(Mutex::new(HashMap::new())),
            closed: AtomicBool::new(false),
            heartbeats_received: AtomicU64::new(0),
            events: Mutex::new(Some(events_tx)),
        });
        let heartbeat_every = opts
            .send_heartbeats
            .then(|| heartbeat_interval(ready.heartbeat_ms))
            .flatten();
        let writer_shared = shared.clone();
        let writer = tokio::spawn(run_writer(write_half, rx, heartbeat_every, move |error| {
            writer_shared.emit(DeviceEvent::Error(ClientError::Io(error)));
        }));
        let reader = tokio::spawn(run_reader(ReaderState {
            input: read_half,
            inbound,
            decoder,
            shared: shared.clone(),
            tx: tx.clone(),
            cipher: ready.cipher.clone(),
            policy: opts.ack_policy,
            rng: StdRng::seed_from_u64(rng.next_u64()),
        }));
        Ok(Self {
            device_id: opts.device_id,
            local_addr,
            cipher: ready.cipher,
            session: ready.session,
            fast_connected: ready.fast_connected,
            heartbeat_ms: ready.heartbeat_ms,
            request_timeout: Duration::from_millis(opts.request_timeout_ms),
            next_session_id: AtomicI32::new(next_session_id),
            bound_user: Mutex::new(None),
            shared,
            tx,
            events: tokio::sync::Mutex::new(Some(events_rx)),
            reader,
            writer,
        })
    }

    /// The device id sent in the handshake.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// This end of the TCP connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The session to pass as [`DeviceOptions::session`] to fast-connect later.
    pub fn stored_session(&self) -> StoredSession {
        self.session.clone()
    }

    /// True when this connection was resumed with FAST_CONNECT (no RSA handshake).
    pub fn fast_connected(&self) -> bool {
        self.fast_connected
    }

    /// The heartbeat the server negotiated (ms).
    pub fn heartbeat_ms(&self) -> i32 {
        self.heartbeat_ms
    }

    /// Heartbeat bytes received from the server (its echoes of ours).
    pub fn heartbeats_received(&self) -> u64 {
        self.shared.heartbeats_received.load(Ordering::Relaxed)
    }

    /// True once the connection is closed (by either side).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The user bound by the last successful [`bind`](Self::bind) (cleared by `unbind`).
    pub fn bound_user(&self) -> Option<String> {
        lock(&self.bound_user).clone()
    }

    /// Binds `user_id` with `tags` (sent as `"a,b"`); waits for OK (cmd 5) or ERROR.
    pub async fn bind(&self, user_id: &str, tags: &[&str]) -> Result<(), ClientError> {
        let body = Bind {
            user_id: user_id.to_owned(),
            data: String::new(),
            tags: tags.join(","),
        };
        let reply = self.request(Command::Bind, Flags::NONE, &body).await?;
        expect_ok(&reply)?;
        *lock(&self.bound_user) = Some(user_id.to_owned());
        Ok(())
    }

    /// Unbinds the bound user (the server uses the connection's own user; the body names the
    /// last bound one, or nobody); waits for OK (cmd 6) or ERROR.
    pub async fn unbind(&self) -> Result<(), ClientError> {
        let user_id = self.bound_user().unwrap_or_default();
        let body = Bind {
            user_id,
            data: String::new(),
            tags: String::new(),
        };
        let reply = self.request(Command::Unbind, Flags::NONE, &body).await?;
        expect_ok(&reply)?;
        *lock(&self.bound_user) = None;
        Ok(())
    }

    /// Acknowledges a push (for BIZ_ACK pushes under [`AckPolicy::Auto`]): ACK with the push's
    /// sessionId and an empty body.
    pub fn ack(&self, session_id: i32) -> Result<(), ClientError> {
        self.enqueue(Outbound::packet(&ack_packet(session_id)))
    }

    /// Sends a message upstream (PUSH to the server). With `auto_ack` the packet carries
    /// AUTO_ACK and this waits for the server's ACK; without, it returns once written.
    pub async fn push_upstream(
        &self,
        content: impl Into<Bytes>,
        auto_ack: bool,
    ) -> Result<(), ClientError> {
        let body = Push {
            content: content.into(),
        };
        if !auto_ack {
            let packet = self.seal(Command::Push, Flags::NONE, &body);
            return self.write_and_wait(packet.to_bytes()).await;
        }
        let reply = self.request(Command::Push, Flags::AUTO_ACK, &body).await?;
        if reply.cmd == Command::Ack.code() {
            Ok(())
        } else if reply.cmd == Command::Error.code() {
            Err(rejected(decode_error(&reply.body)?))
        } else {
            Err(unexpected("PUSH", reply.cmd))
        }
    }

    /// Queues one heartbeat byte.
    pub fn send_heartbeat(&self) -> Result<(), ClientError> {
        self.enqueue(Outbound::heartbeat())
    }

    /// Writes a packet exactly as given (no sealing): for tests (garbage, unknown commands,
    /// plaintext where ciphertext is expected).
    pub async fn send_raw(&self, packet: Packet) -> Result<(), ClientError> {
        self.write_and_wait(packet.to_bytes()).await
    }

    /// Writes arbitrary bytes (need not be a frame): for tests.
    pub async fn send_bytes(&self, bytes: impl Into<Bytes>) -> Result<(), ClientError> {
        self.write_and_wait(bytes.into()).await
    }

    /// The next event; `None` once the connection is closed and every event was taken (or the
    /// receiver was taken with [`take_events`](Self::take_events)).
    pub async fn next_event(&self) -> Option<DeviceEvent> {
        let mut guard = self.events.lock().await;
        guard.as_mut()?.recv().await
    }

    /// The next event within `within`: [`ClientError::Timeout`] if none came,
    /// [`ClientError::Closed`] if none will.
    pub async fn next_event_within(&self, within: Duration) -> Result<DeviceEvent, ClientError> {
        match tokio::time::timeout(within, self.next_event()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// The event receiver itself (for `select!` loops); afterwards `next_event` returns `None`.
    pub async fn take_events(&self) -> Option<mpsc::UnboundedReceiver<DeviceEvent>> {
        self.events.lock().await.take()
    }

    /// Flushes what is queued, closes the connection and reports [`DeviceEvent::Closed`].
    pub async fn close(&self) {
        let (done, flushed) = oneshot::channel();
        if self.tx.send(Outbound::Shutdown { done }).is_ok() {
            let _ = tokio::time::timeout(self.request_timeout, flushed).await;
        }
        self.writer.abort();
        self.reader.abort();
        self.shared.close();
    }

    fn next_session_id(&self) -> i32 {
        // Wraps like Java's int counter; 0 is left out (KICK uses it).
        loop {
            let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    fn seal(&self, cmd: Command, extra: Flags, body: &impl Body) -> Packet {
        let sid = self.next_session_id();
        sealed_packet(
            cmd.code(),
            extra,
            sid,
            body,
            Some(&self.cipher),
            CLIENT_COMPRESS_THRESHOLD_BYTES,
        )
    }

    fn enqueue(&self, message: Outbound) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        self.tx.send(message).map_err(|_| ClientError::Closed)
    }

    async fn write_and_wait(&self, bytes: Bytes) -> Result<(), ClientError> {
        let (written, done) = oneshot::channel();
        self.enqueue(Outbound::Bytes {
            bytes,
            written: Some(written),
        })?;
        match tokio::time::timeout(self.request_timeout, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Sends a sealed request and waits for the packet answering its sessionId (body opened).
    async fn request(
        &self,
        cmd: Command,
        extra: Flags,
        body: &impl Body,
    ) -> Result<Packet, ClientError> {
        let packet = self.seal(cmd, extra, body);
        let sid = packet.session_id;
        let (answer_tx, answer) = oneshot::channel();
        lock(&self.shared.pending).insert(sid, answer_tx);
        if let Err(error) = self.enqueue(Outbound::packet(&packet)) {
            take_pending(&self.shared.pending, sid);
            return Err(error);
        }
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                take_pending(&self.shared.pending, sid);
                Err(ClientError::Timeout)
            }
        }
    }
}

impl Drop for DeviceClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceClient")
            .field("device_id", &self.device_id)
            .field("local_addr", &self.local_addr)
            .field("fast_connected", &self.fast_connected)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .finish_non_exhaustive()
    }
}

/// How often the client sends a heartbeat when idle: `heartbeat - 1000` ms like the SDK, but
/// never less than half the heartbeat (short test heartbeats). `None` for a non-positive one.
pub fn heartbeat_interval(heartbeat_ms: i32) -> Option<Duration> {
    let heartbeat = u64::try_from(heartbeat_ms).ok().filter(|h| *h > 0)?;
    let every = heartbeat.saturating_sub(1000).max(heartbeat / 2).max(1);
    Some(Duration::from_millis(every))
}

/// A client ACK: raw, empty body, the push's sessionId.
fn ack_packet(session_id: i32) -> Packet {
    raw_packet(Command::Ack.code(), Flags::NONE, session_id, &Ack)
}

async fn write_now<S: AsyncWrite + Unpin>(
    stream: &mut S,
    packet: &Packet,
) -> Result<(), ClientError> {
    stream.write_all(&packet.to_bytes()).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads until the packet answering `sid` arrives (heartbeats and other packets are skipped).
async fn await_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    inbound: &mut BytesMut,
    decoder: &FrameDecoder,
    sid: i32,
    within: Duration,
) -> Result<Packet, ClientError> {
    let wait = async {
        loop {
            match read_frame(stream, inbound, decoder).await? {
                Frame::Packet(packet) if packet.session_id == sid => return Ok(packet),
                Frame::Packet(packet) => {
                    tracing::debug!(
                        cmd = packet.cmd,
                        sid = packet.session_id,
                        "ignored while connecting"
                    );
                }
                Frame::Heartbeat => {}
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    inbound: &mut BytesMut,
    decoder: &FrameDecoder,
    sid: i32,
    opts: &DeviceOptions,
    rng: &mut StdRng,
    within: Duration,
) -> Result<Ready, ClientError> {
    let mut client_key = [0u8; AES_KEY_BYTES];
    let mut iv = [0u8; AES_IV_BYTES];
    rng.fill_bytes(&mut client_key);
    rng.fill_bytes(&mut iv);
    let request = Handshake {
        device_id: opts.device_id.clone(),
        os_name: opts.os_name.clone(),
        os_version: opts.os_version.clone(),
        client_version: opts.client_version.clone(),
        iv: Bytes::copy_from_slice(&iv),
        client_key: Bytes::copy_from_slice(&client_key),
        min_heartbeat_ms: opts.min_heartbeat_ms,
        max_heartbeat_ms: opts.max_heartbeat_ms,
        timestamp_ms: 0,
    };
    let (flags, wire) = seal_rsa(&request.to_bytes(), &opts.public_key, rng)
        .map_err(|e| ClientError::Protocol(format!("RSA-encrypting the handshake: {e}")))?;
    write_now(
        stream,
        &Packet::new(Command::Handshake.code(), flags, sid, wire),
    )
    .await?;
    // The answer is encrypted with AES(clientKey, iv).
    let handshake_cipher = AesCipher::new(client_key, iv);
    let reply = await_reply(stream, inbound, decoder, sid, within).await?;
    let body = open_body(&reply, &handshake_cipher, rng)?;
    if reply.cmd == Command::Error.code() {
        return Err(rejected(decode_error(&body)?));
    }
    if reply.cmd != Command::Handshake.code() {
        return Err(unexpected("HANDSHAKE", reply.cmd));
    }
    let ok = HandshakeOk::decode(&body)
        .map_err(|e| ClientError::Protocol(format!("HANDSHAKE-ok: {e}")))?;
    let server_key: [u8; AES_KEY_BYTES] = ok.server_key[..].try_into().map_err(|_| {
        ClientError::Protocol(format!(
            "HANDSHAKE-ok server key has {} bytes, not 16",
            ok.server_key.len()
        ))
    })?;
    let session_key = mix_keys(&client_key, &server_key);
    Ok(Ready {
        cipher: AesCipher::new(session_key, iv),
        session: StoredSession {
            session_id: ok.session_id,
            session_key,
            iv,
            expire_time_ms: ok.expire_time_ms,
        },
        heartbeat_ms: ok.heartbeat_ms,
        fast_connected: false,
    })
}

fn open_body(packet: &Packet, cipher: &AesCipher, rng: &mut StdRng) -> Result<Bytes, ClientError> {
    open(
        packet.flags,
        &packet.body,
        OpenKey::Aes(cipher),
        rng,
        CLIENT_MAX_BODY_BYTES,
    )
    .map_err(|e| ClientError::Protocol(format!("cmd {}: {e}", packet.cmd)))
}

fn decode_error(body: &[u8]) -> Result<ErrorMessage, ClientError> {
    ErrorMessage::decode(body).map_err(|e| ClientError::Protocol(format!("ERROR body: {e}")))
}

fn rejected(error: ErrorMessage) -> ClientError {
    ClientError::Rejected {
        cmd: error.cmd,
        code: error.code,
        reason: error.reason,
    }
}

fn unexpected(request: &str, cmd: u8) -> ClientError {
    ClientError::Protocol(format!("unexpected answer cmd {cmd} to {request}"))
}

/// OK → `Ok(())`, ERROR → `Rejected`, anything else → `Protocol`.
fn expect_ok(reply: &Packet) -> Result<(), ClientError> {
    if reply.cmd == Command::Ok.code() {
        Ok(())
    } else if reply.cmd == Command::Error.code() {
        Err(rejected(decode_error(&reply.body)?))
    } else {
        Err(unexpected("request", reply.cmd))
    }
}

/// Whether a packet with this command answers a client request (and so may complete one).
/// PUSH and KICK never do, even when their sessionId equals a pending request's.
fn is_answer(cmd: u8) -> bool {
    cmd == Command::Ok.code()
        || cmd == Command::Error.code()
        || cmd == Command::Ack.code()
        || cmd == Command::HttpProxy.code()
}

struct ReaderState<R> {
    input: R,
    inbound: BytesMut,
    decoder: FrameDecoder,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outbound>,
    cipher: AesCipher,
    policy: AckPolicy,
    rng: StdRng,
}

async fn run_reader<R: AsyncRead + Unpin>(mut st: ReaderState<R>) {
    loop {
        let frame = match read_frame(&mut st.input, &mut st.inbound, &st.decoder).await {
            Ok(frame) => frame,
            Err(ClientError::Closed) => break,
            Err(error) => {
                st.shared.emit(DeviceEvent::Error(error));
                break;
            }
        };
        let packet = match frame {
            Frame::Heartbeat => {
                st.shared
                    .heartbeats_received
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Frame::Packet(packet) if packet.cmd == Command::Heartbeat.code() => {
                st.shared
                    .heartbeats_received
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Frame::Packet(packet) => packet,
        };
        let body = match open_body(&packet, &st.cipher, &mut st.rng) {
            Ok(body) => body,
            Err(error) => {
                // The SDK would reconnect; this client reports it and keeps reading.
                st.shared.emit(DeviceEvent::Error(error));
                continue;
            }
        };
        let packet = Packet { body, ..packet };
        if is_answer(packet.cmd) {
            if let Some(waiter) = take_pending(&st.shared.pending, packet.session_id) {
                let _ = waiter.send(packet);
                continue;
            }
        }
        dispatch(&st, packet);
    }
    st.shared.close();
}

fn dispatch<R>(st: &ReaderState<R>, packet: Packet) {
    match Command::try_from(packet.cmd) {
        Ok(Command::Push) => {
            // The ACK is queued before the application hears of the push: an application that
            // closes the connection at once must not overtake it (close is queued behind it).
            if st.policy.acks_on_delivery(packet.flags) {
                let _ = st.tx.send(Outbound::packet(&ack_packet(packet.session_id)));
            }
            st.shared.emit(DeviceEvent::Push {
                session_id: packet.session_id,
                flags: packet.flags,
                content: packet.body,
            });
        }
        Ok(Command::Kick) => match Kick::decode(&packet.body) {
            Ok(kick) => {
                st.shared.emit(DeviceEvent::Kick {
                    device_id: kick.device_id,
                    user_id: kick.user_id,
                });
            }
            Err(e) => {
                st.shared
                    .emit(DeviceEvent::Error(ClientError::Protocol(format!(
                        "KICK body: {e}"
                    ))));
            }
        },
        Ok(Command::Error) => {
            let event = match decode_error(&packet.body) {
                Ok(error) => rejected(error),
                Err(error) => error,
            };
            st.shared.emit(DeviceEvent::Error(event));
        }
        _ => {
            tracing::debug!(
                cmd = packet.cmd,
                sid = packet.session_id,
                "device: packet ignored"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_policy_decisions_follow_the_sdk() {
        let auto = Flags::AUTO_ACK | Flags::CRYPTO;
        let biz = Flags::BIZ_ACK | Flags::CRYPTO | Flags::COMPRESS;
        let none = Flags::CRYPTO;
        assert!(AckPolicy::Auto.acks_on_delivery(auto));
        assert!(
            !AckPolicy::Auto.acks_on_delivery(biz),
            "BIZ_ACK waits for the app"
        );
        assert!(!AckPolicy::Auto.acks_on_delivery(none));
        assert!(AckPolicy::Biz.acks_on_delivery(auto));
        assert!(AckPolicy::Biz.acks_on_delivery(biz));
        assert!(!AckPolicy::Biz.acks_on_delivery(none));
        for flags in [auto, biz, none] {
            assert!(!AckPolicy::None.acks_on_delivery(flags));
        }
    }

    #[test]
    fn heartbeat_interval_is_sdk_like() {
        assert_eq!(
            heartbeat_interval(180_000),
            Some(Duration::from_millis(179_000))
        );
        assert_eq!(heartbeat_interval(3000), Some(Duration::from_millis(2000)));
        assert_eq!(heartbeat_interval(1500), Some(Duration::from_millis(750)));
        assert_eq!(heartbeat_interval(1), Some(Duration::from_millis(1)));
        assert_eq!(heartbeat_interval(0), None);
        assert_eq!(heartbeat_interval(-5), None);
    }

    #[test]
    fn stored_session_validity_and_secrecy() {
        let session = StoredSession {
            session_id: "0123456789abcdef0123456789abcdef".into(),
            session_key: [7; 16],
            iv: [9; 16],
            expire_time_ms: 1000,
        };
        assert!(session.is_valid_at(999));
        assert!(!session.is_valid_at(1000));
        let printed = format!("{session:?}");
        assert!(
            !printed.contains("session_key") && !printed.contains("iv"),
            "{printed}"
        );
        let empty = StoredSession {
            session_id: String::new(),
            ..session
        };
        assert!(!empty.is_valid_at(0));
    }

    #[test]
    fn ack_packet_is_the_reference_form() {
        assert_eq!(
            hex::encode(ack_packet(1001).to_bytes()),
            "0000000017000000000003e900"
        );
    }

    #[test]
    fn answers_and_unsolicited_packets() {
        assert!(is_answer(Command::Ok.code()));
        assert!(is_answer(Command::Error.code()));
        assert!(is_answer(Command::Ack.code()));
        assert!(!is_answer(Command::Push.code()));
        assert!(!is_answer(Command::Kick.code()));
    }

    #[test]
    fn random_device_ids() {
        let mut rng = StdRng::seed_from_u64(1);
        let id = random_device_id(&mut rng);
        assert!(id.starts_with("device-") && id.len() == 7 + 16, "{id}");
        assert_ne!(id, random_device_id(&mut rng));
    }
}
