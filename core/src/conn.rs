//! One phone connection as its connection task runs it ([`PhoneConn`]): the per-connection
//! half of the engine, beside the socket, on whichever core the task runs.
//!
//! It turns the bytes a phone sends into decoded, authenticated messages for the [`Node`]
//! ([`PhoneMessage`], handed out as [`Input`]s), and the frames the node sends into sealed wire
//! bytes. Everything expensive and everything that concerns only this connection happens
//! here: framing, RSA for the HANDSHAKE, AES and inflate for every body, the handshake's key
//! mixing, heartbeat echoes, idle checks, compression and encryption of outbound frames, and
//! the count of bytes sealed and not yet written, with the slow-consumer marks on it.
//!
//! Like the node it is sans-IO: time comes in as monotonic milliseconds, randomness as an
//! argument, and the driver moves bytes. Vocabulary and drain contract as the node's: after
//! any `handle_*`, drain [`PhoneConn::poll_input`] (into the node) until `None`, write
//! [`PhoneConn::poll_transmit`] and report it with [`PhoneConn::handle_written`], end the
//! connection when [`PhoneConn::is_finished`], and arm one timer at
//! [`PhoneConn::poll_timeout`].
//!
//! # Slow consumers
//! A phone that stops reading makes its sealed bytes pile up. The marks of [`WriteMarks`]
//! (shared with web connections) decide what happens:
//! - above `high_water_bytes` the node is told the phone is not writable
//!   ([`Input::PhoneWritable`] false): pushes to it fail at once instead of queueing, as in
//!   MPush;
//! - once written down to `low_water_bytes` it is writable again (told once per crossing);
//! - above `hard_limit_bytes` the connection is dropped without flushing, and the node hears
//!   [`Input::PhoneClosed`] with [`CloseReason::SlowConsumer`].
//!
//! [`Node`]: crate::Node
use crate::command::Command;
use crate::config::NodeConfig;
use crate::crypto::{mix_keys, AesCipher, ServerRsaKey};
use crate::frame::{Flags, Frame, FrameDecoder, FrameError, Packet};
use crate::ids::{ConnId, Millis};
use crate::message::{
    Ack, Bind, Body, ErrorCode, ErrorMessage, FastConnect, Handshake, HandshakeOk, HttpResponse,
    Push,
};
use crate::node::{CloseReason, Input, OutFrame, Seal};
use crate::pipeline::{self, OpenKey};
use crate::store::CachedSession;
pub use crate::write_marks::QueueMarks;
use crate::write_marks::{Crossing, WriteMarks, WriteReports};
use bytes::{Buf, Bytes, BytesMut};
use rand_core::CryptoRngCore;
use std::collections::VecDeque;

/// Reason text MPush sends with an invalid HANDSHAKE.
const PARAM_INVALID: &str = "Param invalid";
/// Longest a closed connection keeps writing what it still holds to a peer.
pub const CLOSE_FLUSH_TIMEOUT_MS: Millis = 5_000;

/// What every phone connection of a node runs with (shared by all of them).
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// The RSA key that opens handshakes.
    pub rsa_key: ServerRsaKey,
    pub min_heartbeat_ms: u64,
    pub max_heartbeat_ms: u64,
    /// Closed when this many consecutive idle checks found no traffic, plus one.
    pub max_heartbeat_misses: u32,
    /// The handshake (or fast connect) must complete within this time.
    pub handshake_deadline_ms: Millis,
    /// A handshaken connection must send a BIND within this time (0: no deadline).
    pub bind_deadline_ms: Millis,
    /// Reusable sessions live this long (told to the phone in HANDSHAKE-ok).
    pub session_expire_ms: u64,
    /// Largest frame body accepted, and largest inflated body.
    pub max_body_bytes: usize,
    /// Outbound bodies larger than this are zlib-compressed.
    pub compress_threshold_bytes: usize,
    /// Epoch milliseconds at monotonic time 0 (for the session expiry told to the phone).
    pub epoch_offset_ms: i64,
    pub marks: QueueMarks,
}

impl ConnConfig {
    /// The connection settings of a node with `cfg`, whose clock starts at `epoch_offset_ms`.
    pub fn from_node(cfg: &NodeConfig, epoch_offset_ms: i64, marks: QueueMarks) -> Self {
        Self {
            rsa_key: cfg.rsa_key.clone(),
            min_heartbeat_ms: cfg.min_heartbeat_ms,
            max_heartbeat_ms: cfg.max_heartbeat_ms,
            max_heartbeat_misses: cfg.max_heartbeat_misses,
            handshake_deadline_ms: cfg.handshake_deadline_ms,
            bind_deadline_ms: cfg.bind_deadline_ms,
            session_expire_ms: cfg.session_expire_ms,
            max_body_bytes: cfg.max_body_bytes,
            compress_threshold_bytes: cfg.compress_threshold_bytes,
            epoch_offset_ms,
            marks,
        }
    }

    /// The heartbeat a client asking for at most `client_max_ms` gets (the client's minimum
    /// is ignored, as in MPush).
    pub fn negotiate_heartbeat_ms(&self, client_max_ms: i32) -> u64 {
        let client_max = u64::try_from(client_max_ms).unwrap_or(0);
        self.min_heartbeat_ms
            .max(client_max.min(self.max_heartbeat_ms))
    }
}

/// A decoded, authenticated message from a phone, for the node.
#[derive(Debug, Clone, PartialEq)]
pub enum PhoneMessage {
    /// A full handshake completed here: HANDSHAKE-ok was sealed and the connection runs
    /// under the new session key. The node takes on the session and stores it for fast
    /// connects under `reusable_session_id`.
    Handshaken(Box<Handshaken>),
    /// FAST_CONNECT: the node looks the session up in the store and answers with FAST_CONNECT-ok
    /// and a [`Resume`], or an ERROR.
    FastConnect {
        session_id: i32,
        request: FastConnect,
    },
    Bind {
        session_id: i32,
        bind: Bind,
    },
    Unbind {
        session_id: i32,
        bind: Bind,
    },
    /// The phone acknowledged the PUSH with `session_id`.
    Ack {
        session_id: i32,
    },
    /// An upstream PUSH (an AUTO_ACK one was acknowledged already).
    Upstream {
        content: Bytes,
    },
}

/// The session a full handshake set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshaken {
    /// The id under which the session is stored for fast connects; `None` for a session that
    /// is never resumed (a web connection's: it has no keys).
    pub reusable_session_id: Option<String>,
    pub session: CachedSession,
    pub heartbeat_ms: u64,
}

/// A fast connect the node accepted: the connection takes on this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub session_key: [u8; 16],
    pub iv: [u8; 16],
    pub device_id: String,
    pub heartbeat_ms: u64,
}

/// `PhoneConn::bind_by_ms` when no bind deadline runs.
const NO_BIND_DEADLINE: Millis = Millis::MAX;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Writing what is queued, then closing (nothing is read or queued any more).
    Closing,
    /// Done: the driver drops the socket.
    Closed,
}

/// One phone connection (see the module docs).
#[derive(Debug)]
pub struct PhoneConn {
    conn: ConnId,
    phase: Phase,
    /// The session cipher once a handshake or fast connect completed.
    cipher: Option<AesCipher>,
    /// The session's device, hashed ([`device_hash`]): a repeated HANDSHAKE of the same device
    /// is refused. (The node keeps the id itself; 8 bytes here, not a string per phone.)
    device: u64,
    /// Negotiated heartbeat; 0 before the handshake (at most `ConnConfig::max_heartbeat_ms`,
    /// held in 32 bits beside the misses: every phone holds one of these).
    heartbeat_ms: u32,
    /// Consecutive idle checks that found no traffic.
    heartbeat_misses: u32,
    last_read_ms: Millis,
    /// When the next idle check (or the handshake deadline) is due.
    idle_check_at_ms: Millis,
    /// Once a session started without a BIND since, when the bind deadline
    /// ([`ConnConfig::bind_deadline_ms`]) passes; [`NO_BIND_DEADLINE`] otherwise.
    bind_by_ms: Millis,
    /// Sealed bytes not yet written.
    outbound: BytesMut,
    /// The slow-consumer marks on `outbound`'s length.
    marks: WriteMarks,
    /// Bytes sealed since the connection opened (while it is open, the bytes written are these
    /// less the ones still queued).
    sealed_bytes: u64,
    /// Messages for the node and the pushes whose write it wants to hear of, while there are
    /// any ([`Backlog`]).
    backlog: Option<Box<Backlog>>,
}

/// What a connection holds only while it has some: messages for the node, and the pushes whose
/// write the node wants to hear of (offset their frame ends at, sessionId). Boxed apart and
/// dropped once both are empty: an idle connection holds one pointer for them, where the two
/// queues inline took 64 bytes of every phone.
#[derive(Debug, Default)]
struct Backlog {
    to_node: VecDeque<Input>,
    reports: WriteReports,
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.to_node.is_empty() && self.reports.is_empty()
    }
}

/// A device id as the connection keeps it: SipHash-1-3 under fixed keys. Two ids of one
/// connection that collide only make its second handshake look repeated (refused, as a
/// repeat is); the connection's own phone chooses both.
fn device_hash(device_id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<siphasher::sip::SipHasher13>::default().hash_one(device_id)
}

impl PhoneConn {
    /// A connection accepted at `now_ms`.
    pub fn new(conn: ConnId, cfg: &ConnConfig, now_ms: Millis) -> Self {
        Self {
            conn,
            phase: Phase::Open,
            cipher: None,
            device: 0,
            heartbeat_ms: 0,
            heartbeat_misses: 0,
            last_read_ms: now_ms,
            idle_check_at_ms: now_ms.saturating_add(cfg.handshake_deadline_ms),
            bind_by_ms: NO_BIND_DEADLINE,
            outbound: BytesMut::new(),
            marks: WriteMarks::new(),
            sealed_bytes: 0,
            backlog: None,
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.conn
    }

    /// Sealed bytes not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.outbound.len()
    }

    /// False while the queued bytes are over the high-water mark (until they drain to the
    /// low-water mark).
    pub fn is_writable(&self) -> bool {
        self.marks.is_writable()
    }

    /// True once a handshake or fast connect gave the connection its session cipher.
    pub fn has_session(&self) -> bool {
        self.cipher.is_some()
    }

    /// True while the connection reads and takes frames.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// True when the connection is over: the driver closes the socket (after writing nothing
    /// more) and ends its task.
    pub fn is_finished(&self) -> bool {
        match self.phase {
            Phase::Open => false,
            Phase::Closing => self.outbound.is_empty(),
            Phase::Closed => true,
        }
    }

    /// True when the connection finished by writing everything it held: the driver closes
    /// the socket gracefully (TLS: close_notify). A connection dropped (peer gone, slow
    /// consumer, flush deadline passed) gets no goodbye: writing one could wait forever.
    pub fn wants_goodbye(&self) -> bool {
        self.phase == Phase::Closing && self.outbound.is_empty()
    }

    /// Feeds the bytes read from the socket: every whole frame at the front of `inbound` is
    /// taken off and handled; a partial frame stays for the next read.
    pub fn handle_bytes(
        &mut self,
        cfg: &ConnConfig,
        now_ms: Millis,
        inbound: &mut BytesMut,
        rng: &mut impl CryptoRngCore,
    ) {
        let decoder = FrameDecoder::new(cfg.max_body_bytes);
        while self.is_open() {
            match decoder.decode(inbound) {
                Ok(Some(frame)) => self.handle_frame(cfg, now_ms, frame, rng),
                Ok(None) => break,
                Err(error) => {
                    inbound.clear();
                    self.handle_frame_error(now_ms, error);
                }
            }
        }
    }

    /// The byte stream could not be framed (oversized or negative length): the connection is
    /// closed with [`CloseReason::BadFrame`].
    pub fn handle_frame_error(&mut self, now_ms: Millis, _error: FrameError) {
        self.close_after_flush(now_ms, CloseReason::BadFrame);
    }

    /// Handles one frame read from the phone.
    pub fn handle_frame(
        &mut self,
        cfg: &ConnConfig,
        now_ms: Millis,
        frame: Frame,
        rng: &mut impl CryptoRngCore,
    ) {
        if !self.is_open() {
            return; // closing: what the phone still sends is not read
        }
        self.last_read_ms = self.last_read_ms.max(now_ms);
        let packet = match frame {
            Frame::Heartbeat => return self.queue_frame(cfg, &OutFrame::Heartbeat, None),
            Frame::Packet(packet) if packet.cmd == Command::Heartbeat.code() => {
                return self.queue_frame(cfg, &OutFrame::Heartbeat, None)
            }
            Frame::Packet(packet) => packet,
        };
        let command = match Command::try_from(packet.cmd) {
            Ok(
                c @ (Command::Handshake
                | Command::FastConnect
                | Command::Bind
                | Command::Unbind
                | Command::Push
                | Command::Ack
                | Command::HttpProxy),
            ) => c,
            _ => {
                let error = ErrorMessage::new(packet.cmd, ErrorCode::UnsupportedCmd);
                self.send_raw(cfg, Command::Error, packet.session_id, &error);
                return self.close_after_flush(now_ms, CloseReason::UnsupportedCommand);
            }
        };
        // A HANDSHAKE is always RSA, whatever state the connection is in (as in MPush).
        let key = match &self.cipher {
            Some(cipher) if command != Command::Handshake => OpenKey::Aes(cipher),
            _ => OpenKey::Rsa(&cfg.rsa_key),
        };
        let opened = pipeline::open(packet.flags, &packet.body, key, rng, cfg.max_body_bytes)
            .map_err(|_| ())
            .and_then(|body| self.dispatch(cfg, now_ms, command, &packet, &body, rng));
        if opened.is_err() {
            let error = ErrorMessage::new(packet.cmd, ErrorCode::DispatchError);
            self.send_raw(cfg, Command::Error, packet.session_id, &error);
            self.close_after_flush(now_ms, CloseReason::BadBody);
        }
    }

    /// Handles an opened body; `Err` means it could not be decoded (ERROR 100 and close).
    fn dispatch(
        &mut self,
        cfg: &ConnConfig,
        now_ms: Millis,
        command: Command,
        packet: &Packet,
        body: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), ()> {
        let session_id = packet.session_id;
        let message = match command {
            Command::Handshake => {
                let hs = Handshake::decode(body).map_err(|_| ())?;
                self.on_handshake(cfg, now_ms, session_id, hs, rng);
                return Ok(());
            }
            Command::FastConnect => PhoneMessage::FastConnect {
                session_id,
                request: FastConnect::decode(body).map_err(|_| ())?,
            },
            Command::Bind => {
                let bind = Bind::decode(body).map_err(|_| ())?;
                // A BIND was sent: the node answers it (a refused one closes the connection).
                self.bind_by_ms = NO_BIND_DEADLINE;
                PhoneMessage::Bind { session_id, bind }
            }
            Command::Unbind => PhoneMessage::Unbind {
                session_id,
                bind: Bind::decode(body).map_err(|_| ())?,
            },
            Command::Push => {
                let push = Push::decode(body).map_err(|_| ())?;
                if packet.flags.contains(Flags::AUTO_ACK) {
                    self.send_raw(cfg, Command::Ack, session_id, &Ack);
                }
                PhoneMessage::Upstream {
                    content: push.content,
                }
            }
            Command::Ack => PhoneMessage::Ack { session_id },
            Command::HttpProxy => {
                // pushgate does not proxy HTTP. MPush (proxy disabled) answers ERROR 101 and
                // closes, which makes the SDK reconnect; answering the request with an HTTP
                // error keeps the client connected and tells the app what happened.
                let response = HttpResponse {
                    status_code: 501,
                    reason_phrase: "Not Implemented".into(),
                    headers: String::new(),
                    body: Bytes::from_static(b"HTTP proxy is not supported by this server"),
                };
                self.send_raw(cfg, Command::HttpProxy, session_id, &response);
                return Ok(());
            }
            _ => return Err(()),
        };
        self.hand_to_node(PhoneMessage::into_input(message, self.conn));
        Ok(())
    }

    /// A full handshake: HANDSHAKE-ok under AES(clientKey, iv), then the mixed session key.
    fn on_handshake(
        &mut self,
        cfg: &ConnConfig,
        now_ms: Millis,
        session_id: i32,
        hs: Handshake,
        rng: &mut impl CryptoRngCore,
    ) {
        if hs.device_id.is_empty() || hs.iv.len() != 16 || hs.client_key.len() != 16 {
            let error = ErrorMessage::validation(Command::Handshake, PARAM_INVALID);
            self.send_raw(cfg, Command::Error, session_id, &error);
            return self.close_after_flush(now_ms, CloseReason::BadRequest);
        }
        if self.cipher.is_some() && self.device == device_hash(&hs.device_id) {
            let error = ErrorMessage::new(Command::Handshake.code(), ErrorCode::RepeatHandshake);
            return self.send_raw(cfg, Command::Error, session_id, &error);
        }
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&hs.iv);
        let mut client_key = [0u8; 16];
        client_key.copy_from_slice(&hs.client_key);
        let mut server_key = [0u8; 16];
        rng.fill_bytes(&mut server_key);
        let mut id_bytes = [0u8; 16];
        rng.fill_bytes(&mut id_bytes);
        let reusable_session_id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let heartbeat_ms = cfg.negotiate_heartbeat_ms(hs.max_heartbeat_ms);
        let expire_ms = i64::try_from(cfg.session_expire_ms).unwrap_or(i64::MAX);
        let epoch_ms = cfg
            .epoch_offset_ms
            .saturating_add(i64::try_from(now_ms).unwrap_or(i64::MAX));
        let ok = HandshakeOk {
            server_key: Bytes::copy_from_slice(&server_key),
            heartbeat_ms: i32::try_from(heartbeat_ms).unwrap_or(i32::MAX),
            session_id: reusable_session_id.clone(),
            expire_time_ms: epoch_ms.saturating_add(expire_ms),
        };
        let frame = OutFrame::Packet {
            cmd: Command::Handshake.code(),
            flags: Flags::NONE,
            session_id,
            body: ok.to_bytes(),
            seal: Seal::Aes(AesCipher::new(client_key, iv)),
        };
        self.queue_frame(cfg, &frame, None);
        let session_key = mix_keys(&client_key, &server_key);
        self.start_session(cfg, now_ms, session_key, iv, &hs.device_id, heartbeat_ms);
        let session = CachedSession {
            os_name: hs.os_name,
            os_version: hs.os_version,
            client_version: hs.client_version,
            device_id: hs.device_id,
            session_key,
            iv,
        };
        let handshaken = Handshaken {
            reusable_session_id: Some(reusable_session_id),
            session,
            heartbeat_ms,
        };
        self.hand_to_node(PhoneMessage::into_input(
            PhoneMessage::Handshaken(Box::new(handshaken)),
            self.conn,
        ));
    }

    /// Runs under a session from now on; idle checks every heartbeat.
    fn start_session(
        &mut self,
        cfg: &ConnConfig,
        now_ms: Millis,
        session_key: [u8; 16],
        iv: [u8; 16],
        device_id: &str,
        heartbeat_ms: u64,
    ) {
        self.cipher = Some(AesCipher::new(session_key, iv));
        self.device = device_hash(device_id);
        self.heartbeat_ms = u32::try_from(heartbeat_ms).unwrap_or(u32::MAX);
        self.heartbeat_misses = 0;
        self.idle_check_at_ms = now_ms.saturating_add(self.heartbeat().max(1));
        self.bind_by_ms = match cfg.bind_deadline_ms {
            0 => NO_BIND_DEADLINE,
            deadline_ms => now_ms.saturating_add(deadline_ms).min(NO_BIND_DEADLINE - 1),
        };
    }

    fn heartbeat(&self) -> Millis {
        Millis::from(self.heartbeat_ms)
    }

    /// When the bind deadline passes, if one runs.
    fn bind_by(&self) -> Option<Millis> {
        (self.bind_by_ms != NO_BIND_DEADLINE).then_some(self.bind_by_ms)
    }

    /// The node accepted a fast connect (its FAST_CONNECT-ok is queued just after: the cipher
    /// is in force before the phone can read the OK and send sealed packets).
    pub fn handle_resume(&mut self, cfg: &ConnConfig, now_ms: Millis, resume: Resume) {
        if !self.is_open() {
            return;
        }
        self.start_session(
            cfg,
            now_ms,
            resume.session_key,
            resume.iv,
            &resume.device_id,
            resume.heartbeat_ms,
        );
    }

    /// Seals a frame from the node. With `report_write`, the node hears
    /// [`Input::PhoneWritten`] once the frame is written.
    pub fn handle_transmit(
        &mut self,
        cfg: &ConnConfig,
        _now_ms: Millis,
        frame: OutFrame,
        report_write: Option<i32>,
    ) {
        self.queue_frame(cfg, &frame, report_write);
    }

    /// The node closed the connection: what is queued is written, then the socket closes.
    /// The node knows already; it hears nothing more.
    pub fn handle_close(&mut self, now_ms: Millis) {
        if self.is_open() {
            self.start_closing(now_ms);
            self.clear_reports();
        }
    }

    /// The driver wrote `bytes` from the front of [`PhoneConn::poll_transmit`].
    pub fn handle_written(&mut self, cfg: &ConnConfig, _now_ms: Millis, bytes: usize) {
        assert!(
            bytes <= self.outbound.len(),
            "{bytes} bytes written of {} queued",
            self.outbound.len()
        );
        self.outbound.advance(bytes);
        let crossing = self.marks.written(&cfg.marks, bytes);
        debug_assert_eq!(self.marks.queued_bytes(), self.outbound.len());
        if self.outbound.is_empty() {
            self.outbound = BytesMut::new(); // an idle connection holds no buffer
        }
        if !self.is_open() {
            return;
        }
        // While open, every byte sealed is written or still queued.
        let written_bytes = self.sealed_bytes - self.outbound.len() as u64;
        if let Some(backlog) = self.backlog.as_deref_mut() {
            let Backlog { to_node, reports } = backlog;
            reports.written_through(written_bytes, self.conn, to_node);
        }
        if let Some(input) = crossing.writable_input(self.conn) {
            self.hand_to_node(input);
        }
        self.release_backlog_if_empty();
    }

    /// The node handed over more frames than its hand-off to this connection holds (more than
    /// the hard limit's worth of frame headers): they would pass the hard limit once sealed, so
    /// the connection closes as a slow consumer.
    pub fn handle_queue_overflow(&mut self, _now_ms: Millis) {
        self.abort(CloseReason::SlowConsumer);
    }

    /// The peer closed the connection, or the socket broke (a read or write failed).
    pub fn handle_peer_closed(&mut self, _now_ms: Millis) {
        self.abort(CloseReason::PeerClosed);
    }

    /// The bytes to write next (empty when there are none).
    pub fn poll_transmit(&self) -> &[u8] {
        if self.phase == Phase::Closed {
            return &[];
        }
        &self.outbound
    }

    /// The next message for the node.
    pub fn poll_input(&mut self) -> Option<Input> {
        let input = self.backlog.as_mut()?.to_node.pop_front();
        self.release_backlog_if_empty();
        input
    }

    /// True when [`PhoneConn::poll_input`] has something.
    pub fn has_input(&self) -> bool {
        self.backlog
            .as_ref()
            .is_some_and(|backlog| !backlog.to_node.is_empty())
    }

    /// An idle connection holds no backlog.
    fn release_backlog_if_empty(&mut self) {
        if self
            .backlog
            .as_ref()
            .is_some_and(|backlog| backlog.is_empty())
        {
            self.backlog = None;
        }
    }

    /// No write is reported any more (the connection closes: the node answers its pushes).
    fn clear_reports(&mut self) {
        if let Some(backlog) = &mut self.backlog {
            backlog.reports.clear();
        }
        self.release_backlog_if_empty();
    }

    /// When [`PhoneConn::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        match self.phase {
            Phase::Open => Some(match self.bind_by() {
                Some(bind_by) => self.idle_check_at_ms.min(bind_by),
                None => self.idle_check_at_ms,
            }),
            // The flush deadline, while there is something to flush.
            Phase::Closing => (!self.outbound.is_empty()).then_some(self.idle_check_at_ms),
            Phase::Closed => None,
        }
    }

    /// Runs the idle check (or the handshake deadline) if it is due at `now_ms`: MPush's
    /// check (§9.3) counts a miss when nothing was read for more than heartbeat + 1 s, and
    /// closes after `max_heartbeat_misses` + 1 consecutive misses.
    pub fn handle_timeout(&mut self, cfg: &ConnConfig, now_ms: Millis) {
        if self.phase == Phase::Closing && now_ms >= self.idle_check_at_ms {
            // The closing connection's peer read nothing in time: what is left is dropped.
            self.phase = Phase::Closed;
            self.outbound = BytesMut::new();
            self.marks.clear();
            return;
        }
        if !self.is_open() {
            return;
        }
        if self.bind_by().is_some_and(|bind_by| now_ms >= bind_by) {
            // Handshaken, but no BIND within the bind deadline.
            debug_assert!(self.cipher.is_some());
            return self.close_after_flush(now_ms, CloseReason::BindTimeout);
        }
        if now_ms < self.idle_check_at_ms {
            return;
        }
        if self.cipher.is_none() {
            // Never completed a handshake or fast connect: the handshake deadline passed.
            return self.close_after_flush(now_ms, CloseReason::HandshakeTimeout);
        }
        if now_ms.saturating_sub(self.last_read_ms) > self.heartbeat().saturating_add(1000) {
            self.heartbeat_misses += 1;
        } else {
            self.heartbeat_misses = 0;
        }
        if self.heartbeat_misses > cfg.max_heartbeat_misses {
            return self.close_after_flush(now_ms, CloseReason::IdleTimeout);
        }
        self.idle_check_at_ms = now_ms.saturating_add(self.heartbeat().max(1));
    }

    /// Queues a message for the node; nothing goes to the node once the connection closes
    /// (a frame queued while handling the same input may have closed it).
    fn hand_to_node(&mut self, input: Input) {
        if self.is_open() {
            self.backlog
                .get_or_insert_with(Box::default)
                .to_node
                .push_back(input);
        }
    }

    fn send_raw(&mut self, cfg: &ConnConfig, cmd: Command, session_id: i32, body: &impl Body) {
        let frame = OutFrame::Packet {
            cmd: cmd.code(),
            flags: Flags::NONE,
            session_id,
            body: body.to_bytes(),
            seal: Seal::Raw,
        };
        self.queue_frame(cfg, &frame, None);
    }

    /// Seals a frame into the outbound bytes and applies the marks.
    fn queue_frame(&mut self, cfg: &ConnConfig, frame: &OutFrame, report_write: Option<i32>) {
        if !self.is_open() {
            return; // closing: later frames are dropped (a report is answered by the close)
        }
        let before = self.outbound.len();
        if !frame.encode(
            cfg.compress_threshold_bytes,
            self.cipher.as_ref(),
            &mut self.outbound,
        ) {
            // The node seals with the session cipher only for Ready sessions, and a connection
            // has its cipher before the node hears it is Ready (or with the Resume queued
            // ahead of the frame).
            debug_assert!(false, "a frame for the session cipher before there is one");
            return;
        }
        let added = self.outbound.len() - before;
        self.sealed_bytes += added as u64;
        if let Some(session_id) = report_write {
            self.backlog
                .get_or_insert_with(Box::default)
                .reports
                .expect(self.sealed_bytes, session_id);
        }
        match self.marks.queued(&cfg.marks, added) {
            Crossing::HardLimit => self.abort(CloseReason::SlowConsumer),
            other => {
                if let Some(input) = other.writable_input(self.conn) {
                    self.hand_to_node(input);
                }
            }
        }
    }

    /// Closes after writing what is queued; the node hears why.
    fn close_after_flush(&mut self, now_ms: Millis, reason: CloseReason) {
        if !self.is_open() {
            return;
        }
        self.tell_closed(reason);
        self.start_closing(now_ms);
    }

    /// From now on only what is queued is written, for at most [`CLOSE_FLUSH_TIMEOUT_MS`]: a
    /// peer that reads nothing does not hold the socket longer (the idle check's deadline
    /// serves as the flush deadline).
    fn start_closing(&mut self, now_ms: Millis) {
        self.phase = Phase::Closing;
        self.idle_check_at_ms = now_ms.saturating_add(CLOSE_FLUSH_TIMEOUT_MS);
        self.bind_by_ms = NO_BIND_DEADLINE;
    }

    /// Closes at once, dropping what is queued; the node hears why (unless it closed first).
    fn abort(&mut self, reason: CloseReason) {
        if self.is_open() {
            self.tell_closed(reason);
        }
        self.phase = Phase::Closed;
        self.outbound = BytesMut::new();
        self.marks.clear();
    }

    fn tell_closed(&mut self, reason: CloseReason) {
        self.clear_reports();
        self.hand_to_node(Input::PhoneClosed {
            conn: self.conn,
            reason,
        });
    }
}

impl PhoneMessage {
    /// The node input carrying this message from `conn`.
    pub fn into_input(self, conn: ConnId) -> Input {
        Input::PhoneMessage {
            conn,
            message: self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every phone holds one for as long as it is connected, idle or not. The connection
    /// task boxes it with its read buffer (a pointer) and a counter (4 bytes): at most 148
    /// bytes keep that box in the allocator's 160-byte class.
    #[test]
    fn an_idle_connection_is_small() {
        let bytes = std::mem::size_of::<PhoneConn>();
        eprintln!("PhoneConn: {bytes} bytes");
        assert!(bytes <= 148, "a PhoneConn holds {bytes} bytes");
    }
}
