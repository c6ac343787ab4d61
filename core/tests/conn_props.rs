//! Property tests of the phone connection machine ([`PhoneConn`]): every order of what a phone
//! sends (heartbeats, handshakes valid and not, fast connects, bodies sealed with the session
//! key, sent in plaintext or sealed with the wrong key, unknown commands, garbage), what the
//! node hands it (frames with and without write reports, resumptions, closes) and what the
//! driver reports (partial writes, the peer gone, time passing), in every cipher state (before
//! the handshake, after a full handshake, after a fast connect, closing, closed).
//!
//! What must hold, whatever the order:
//! - nothing panics, and bad input closes the connection with a reason;
//! - the node hears at most one close, and nothing after it;
//! - a body sealed with the key the connection holds (or sent in plaintext) reaches the node
//!   decoded, as the phone sent it; a full handshake hands the node the key the phone mixed;
//! - every byte the connection writes decodes, on the phone, into frames it can open with the
//!   keys it holds, and the node's frames arrive whole and in order, also across partial writes;
//! - a write report comes only once the phone has the whole frame, in order;
//! - the slow-consumer marks: the node hears "not writable" when the queued bytes pass the high
//!   mark, "writable" when they drain to the low mark (alternating), and a close with
//!   `SlowConsumer` when they pass the hard limit, after which nothing is queued or written;
//! - idle and handshake-deadline closes come only when due.
mod harness;

use bytes::{Bytes, BytesMut};
use harness::{server_key, test_config};
use proptest::prelude::*;
use pushgate_core::command::Command;
use pushgate_core::conn::{ConnConfig, PhoneConn, PhoneMessage, QueueMarks, Resume};
use pushgate_core::crypto::{mix_keys, AesCipher, ClientRsaKey};
use pushgate_core::frame::{Flags, Frame, FrameDecoder, Packet};
use pushgate_core::message::{Bind, Body, ErrorMessage, FastConnect, Handshake, HandshakeOk};
use pushgate_core::pipeline::{self, OpenKey};
use pushgate_core::{CloseReason, ConnId, Input, Millis, OutFrame, Seal};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use std::collections::VecDeque;
use std::sync::OnceLock;

const CONN: ConnId = ConnId(9);
/// Session ids of the node's test frames (phone-sent ones stay below).
const NODE_SID_BASE: i32 = 1_000_000;

fn rsa_public_key() -> &'static ClientRsaKey {
    static KEY: OnceLock<ClientRsaKey> = OnceLock::new();
    KEY.get_or_init(|| server_key().public_key())
}

/// What the phone (or the node, or the driver) does next.
#[derive(Debug, Clone)]
enum Act {
    Heartbeat,
    /// A full RSA handshake of device 0 or 1; `valid: false` sends a 15-byte IV.
    Handshake {
        device: u8,
        valid: bool,
    },
    /// A plaintext FAST_CONNECT.
    FastConnect,
    /// BIND / UNBIND / upstream PUSH / ACK, its body protected as `key` says.
    Body {
        kind: u8,
        key: Key,
        auto_ack: bool,
    },
    /// A command the server does not take (or HTTP_PROXY, which it answers with an error).
    Unknown(u8),
    /// Raw bytes (likely a broken frame).
    Garbage(Vec<u8>),
    /// The node sends a PUSH of `len` body bytes, sealed with the session key or raw, maybe
    /// asking for a write report.
    NodeFrame {
        len: usize,
        sealed: bool,
        report: bool,
    },
    /// The node accepted a fast connect (device 0 or 1).
    NodeResume {
        device: u8,
    },
    NodeClose,
    /// The socket takes at most this many bytes.
    Write(usize),
    PeerClosed,
    /// Time passes.
    Tick(u64),
}

#[derive(Debug, Clone, Copy)]
enum Key {
    /// The key the phone believes the connection holds.
    Session,
    /// No encryption (CRYPTO unset).
    Plain,
    /// A key the connection does not hold.
    Wrong,
}

fn act() -> impl Strategy<Value = Act> {
    let key = prop_oneof![6 => Just(Key::Session), 2 => Just(Key::Plain), 1 => Just(Key::Wrong)];
    prop_oneof![
        6 => Just(Act::Heartbeat),
        6 => (0u8..2, prop::bool::weighted(0.85)).prop_map(|(device, valid)| Act::Handshake { device, valid }),
        3 => Just(Act::FastConnect),
        18 => (0u8..4, key, any::<bool>()).prop_map(|(kind, key, auto_ack)| Act::Body { kind, key, auto_ack }),
        1 => prop_oneof![Just(0u8), Just(11), Just(12), Just(14), Just(100), Just(200)].prop_map(Act::Unknown),
        1 => prop::collection::vec(any::<u8>(), 1..40).prop_map(Act::Garbage),
        18 => (0usize..3000, any::<bool>(), any::<bool>()).prop_map(|(len, sealed, report)| Act::NodeFrame { len, sealed, report }),
        3 => (0u8..2).prop_map(|device| Act::NodeResume { device }),
        1 => Just(Act::NodeClose),
        18 => (0usize..5000).prop_map(Act::Write),
        1 => Just(Act::PeerClosed),
        9 => prop_oneof![3 => 0u64..2_000, 1 => 5_000u64..20_000].prop_map(Act::Tick),
    ]
}

fn marks() -> impl Strategy<Value = QueueMarks> {
    (
        0usize..3000,
        0usize..6000,
        prop_oneof![0usize..4_000, 0usize..40_000],
    )
        .prop_map(|(a, b, c)| QueueMarks::new(a, a + b, a + b + c).expect("ordered marks"))
}

/// The world around one connection: a phone that really seals and opens, a model of what
/// the node must hear, and the checks.
struct Bench {
    cfg: ConnConfig,
    conn: PhoneConn,
    now: Millis,
    rng: ChaCha8Rng,
    /// The phone's handshake material per device: (client key, iv).
    devices: [([u8; 16], [u8; 16]); 2],
    /// The session the phone believes the connection holds: (device, key, iv).
    session: Option<(u8, [u8; 16], [u8; 16])>,
    /// HANDSHAKEs whose answer the phone has not read yet: (device, the session key the
    /// node was handed).
    awaiting_ok: VecDeque<(u8, [u8; 16])>,
    /// Bytes written, not yet decoded into whole frames by the phone.
    phone_buf: BytesMut,
    /// The node's frames in the order they were queued, not yet received: (session id, body
    /// length, the cipher they were sealed with).
    node_frames: VecDeque<(i32, usize, Option<AesCipher>)>,
    /// Node frames the phone received whole.
    received_node_frames: Vec<i32>,
    next_node_sid: i32,
    next_sid: i32,
    /// The node heard a close.
    closed: Option<CloseReason>,
    /// What the node was last told about writability.
    told_writable: bool,
    /// When the phone last sent anything.
    last_read: Millis,
    /// The connection is done (the driver dropped the socket).
    finished: bool,
    /// The node closed the connection (it is not told back).
    node_closed: bool,
}

impl Bench {
    fn new(seed: u64, marks: QueueMarks, heartbeat_ms: u64) -> Self {
        let mut node_cfg = test_config();
        node_cfg.min_heartbeat_ms = heartbeat_ms;
        node_cfg.max_heartbeat_ms = heartbeat_ms;
        node_cfg.handshake_deadline_ms = 10_000;
        let cfg = ConnConfig::from_node(&node_cfg, 1_700_000_000_000, marks);
        let conn = PhoneConn::new(CONN, &cfg, 0);
        let mut devices = [([0u8; 16], [0u8; 16]); 2];
        for (i, d) in devices.iter_mut().enumerate() {
            d.0 = [0x10 + i as u8; 16];
            d.1 = [0x20 + i as u8; 16];
        }
        Self {
            cfg,
            conn,
            now: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            devices,
            session: None,
            awaiting_ok: VecDeque::new(),
            phone_buf: BytesMut::new(),
            node_frames: VecDeque::new(),
            received_node_frames: Vec::new(),
            next_node_sid: NODE_SID_BASE,
            next_sid: 1,
            closed: None,
            told_writable: true,
            last_read: 0,
            finished: false,
            node_closed: false,
        }
    }

    fn device_id(device: u8) -> String {
        format!("device-{device}")
    }

    fn sid(&mut self) -> i32 {
        self.next_sid += 1;
        self.next_sid
    }

    /// Feeds a phone frame as wire bytes (split in two reads at a random point).
    fn phone_sends(&mut self, packet: &Packet, split: usize) -> Vec<Input> {
        let wire = packet.to_bytes();
        let cut = split % (wire.len() + 1);
        let mut inbound = BytesMut::from(&wire[..cut]);
        let was_open = self.conn.is_open();
        self.conn
            .handle_bytes(&self.cfg, self.now, &mut inbound, &mut self.rng);
        inbound.extend_from_slice(&wire[cut..]);
        self.conn
            .handle_bytes(&self.cfg, self.now, &mut inbound, &mut self.rng);
        if was_open {
            self.last_read = self.now;
        }
        self.drain()
    }

    /// Takes what the connection has for the node, checking the close and writability rules.
    fn drain(&mut self) -> Vec<Input> {
        let mut inputs = Vec::new();
        while let Some(input) = self.conn.poll_input() {
            assert!(
                self.closed.is_none(),
                "{input:?} after the close ({:?})",
                self.closed
            );
            match &input {
                Input::PhoneClosed { conn, reason } => {
                    assert_eq!(*conn, CONN);
                    self.closed = Some(*reason);
                }
                Input::PhoneWritable { writable, .. } => {
                    assert_ne!(*writable, self.told_writable, "writability told twice");
                    self.told_writable = *writable;
                }
                Input::PhoneWritten {
                    push_session_id,
                    ok,
                    ..
                } => {
                    assert!(ok);
                    assert!(
                        self.received_node_frames.contains(push_session_id),
                        "write of {push_session_id} reported before the phone had it"
                    );
                }
                Input::PhoneMessage { conn, .. } => assert_eq!(*conn, CONN),
                other => panic!("unexpected input {other:?}"),
            }
            inputs.push(input);
        }
        if self.conn.is_open() {
            assert_eq!(self.conn.is_writable(), self.told_writable);
            assert!(self.conn.queued_bytes() <= self.cfg.marks.hard_limit_bytes);
        } else {
            assert!(self.closed.is_some() || self.node_closed, "closed silently");
        }
        inputs
    }

    fn messages(inputs: &[Input]) -> Vec<&PhoneMessage> {
        inputs
            .iter()
            .filter_map(|i| match i {
                Input::PhoneMessage { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }

    fn closed_now(inputs: &[Input]) -> Option<CloseReason> {
        inputs.iter().find_map(|i| match i {
            Input::PhoneClosed { reason, .. } => Some(*reason),
            _ => None,
        })
    }

    /// The phone reads what was written: whole frames decode and open with the phone's keys.
    fn phone_reads(&mut self, bytes: &[u8]) {
        self.phone_buf.extend_from_slice(bytes);
        let decoder = FrameDecoder::new(1 << 20);
        while let Some(frame) = decoder
            .decode(&mut self.phone_buf)
            .expect("the connection wrote a broken frame")
        {
            let Frame::Packet(packet) = frame else {
                continue;
            };
            if packet.cmd == Command::Handshake.code() {
                let (device, handed) = self
                    .awaiting_ok
                    .pop_front()
                    .expect("HANDSHAKE-ok nobody asked for");
                let (client_key, iv) = self.devices[usize::from(device)];
                let cipher = AesCipher::new(client_key, iv);
                let body = open(&packet, Some(&cipher))
                    .expect("HANDSHAKE-ok opens with AES(clientKey, iv)");
                let ok = HandshakeOk::decode(&body).expect("HANDSHAKE-ok decodes");
                let mut server_key = [0u8; 16];
                server_key.copy_from_slice(&ok.server_key);
                assert_eq!(
                    mix_keys(&client_key, &server_key),
                    handed,
                    "the node was handed the key the phone mixes"
                );
                continue;
            }
            if packet.session_id >= NODE_SID_BASE {
                let (sid, len, cipher) = self
                    .node_frames
                    .pop_front()
                    .expect("a node frame nobody sent");
                assert_eq!(packet.session_id, sid, "node frames out of order");
                let body = open(&packet, cipher.as_ref()).expect("a node frame opens");
                assert_eq!(body.len(), len, "a node frame's body changed");
                assert!(body.iter().all(|b| *b == (sid as u8)));
                self.received_node_frames.push(sid);
                continue;
            }
            // ERROR, OK, ACK, HTTP_PROXY answers are raw.
            assert!(
                !packet.flags.contains(Flags::CRYPTO),
                "an answer of the connection itself is raw: {packet:?}"
            );
            if packet.cmd == Command::Error.code() {
                ErrorMessage::decode(&packet.body).expect("ERROR decodes");
            }
        }
    }

    fn step(&mut self, act: Act, split: usize) {
        if self.finished {
            return;
        }
        match act {
            Act::Heartbeat => {
                let wire = [pushgate_core::frame::HEARTBEAT_BYTE];
                let mut inbound = BytesMut::from(&wire[..]);
                let was_open = self.conn.is_open();
                self.conn
                    .handle_bytes(&self.cfg, self.now, &mut inbound, &mut self.rng);
                if was_open {
                    self.last_read = self.now;
                }
                let inputs = self.drain();
                if was_open {
                    assert!(Self::messages(&inputs).is_empty());
                    // A heartbeat echo can only close a connection by passing the hard limit.
                    if let Some(reason) = Self::closed_now(&inputs) {
                        assert_eq!(reason, CloseReason::SlowConsumer);
                    }
                }
            }
            Act::Handshake { device, valid } => {
                let (client_key, iv) = self.devices[usize::from(device)];
                let hs = Handshake {
                    device_id: Self::device_id(device),
                    os_name: "android".into(),
                    os_version: "10".into(),
                    client_version: "1.0".into(),
                    iv: if valid {
                        Bytes::copy_from_slice(&iv)
                    } else {
                        Bytes::copy_from_slice(&iv[..15])
                    },
                    client_key: Bytes::copy_from_slice(&client_key),
                    min_heartbeat_ms: 1000,
                    max_heartbeat_ms: 1000,
                    timestamp_ms: 0,
                };
                let (flags, body) =
                    pipeline::seal_rsa(&hs.to_bytes(), rsa_public_key(), &mut self.rng)
                        .expect("seal");
                let sid = self.sid();
                let packet = Packet::new(Command::Handshake.code(), flags, sid, body);
                let was_open = self.conn.is_open();
                let repeat = self.session.is_some_and(|(d, _, _)| d == device);
                let inputs = self.phone_sends(&packet, split);
                if !was_open {
                    assert!(inputs.is_empty(), "a closing connection reads nothing");
                    return;
                }
                let closed = Self::closed_now(&inputs);
                if closed == Some(CloseReason::SlowConsumer) {
                    return; // its own answer passed the hard limit: nothing else is handed over
                }
                if !valid {
                    assert_eq!(closed, Some(CloseReason::BadRequest));
                    return;
                }
                if repeat {
                    assert!(
                        Self::messages(&inputs).is_empty(),
                        "a repeated handshake is refused"
                    );
                    return;
                }
                let messages = Self::messages(&inputs);
                assert_eq!(messages.len(), 1, "{inputs:?}");
                let PhoneMessage::Handshaken(done) = messages[0] else {
                    panic!("expected Handshaken, got {:?}", messages[0]);
                };
                assert_eq!(done.session.device_id, Self::device_id(device));
                assert_eq!(done.session.iv, iv);
                assert_eq!(done.heartbeat_ms, self.cfg.negotiate_heartbeat_ms(1000));
                assert_eq!(closed, None);
                self.awaiting_ok
                    .push_back((device, done.session.session_key));
                self.session = Some((device, done.session.session_key, iv));
                assert!(self.conn.has_session());
            }
            Act::FastConnect => {
                let fc = FastConnect {
                    session_id: "reusable".into(),
                    device_id: Self::device_id(0),
                    min_heartbeat_ms: 1000,
                    max_heartbeat_ms: 1000,
                };
                let sid = self.sid();
                let packet =
                    pipeline::raw_packet(Command::FastConnect.code(), Flags::NONE, sid, &fc);
                let was_open = self.conn.is_open();
                let inputs = self.phone_sends(&packet, split);
                if was_open {
                    let messages = Self::messages(&inputs);
                    assert_eq!(
                        messages,
                        vec![&PhoneMessage::FastConnect {
                            session_id: sid,
                            request: fc
                        }]
                    );
                }
            }
            Act::Body {
                kind,
                key,
                auto_ack,
            } => {
                let sid = self.sid();
                let bind = Bind {
                    user_id: format!("user-{sid}"),
                    data: String::new(),
                    tags: "t".into(),
                };
                let (cmd, plain): (Command, Bytes) = match kind {
                    0 => (Command::Bind, bind.to_bytes()),
                    1 => (Command::Unbind, bind.to_bytes()),
                    2 => (Command::Push, Bytes::from(format!("up-{sid}"))),
                    _ => (Command::Ack, Bytes::new()),
                };
                let session = self.session.map(|(_, k, iv)| AesCipher::new(k, iv));
                let cipher = match key {
                    Key::Session => session.clone(),
                    Key::Plain => None,
                    Key::Wrong => Some(AesCipher::new([0xEE; 16], [0xEF; 16])),
                };
                let (flags, body) = pipeline::seal(&plain, cipher.as_ref(), 1024);
                let flags = if auto_ack && cmd == Command::Push {
                    flags.with(Flags::AUTO_ACK)
                } else {
                    flags
                };
                let packet = Packet::new(cmd.code(), flags, sid, body);
                let was_open = self.conn.is_open();
                let inputs = self.phone_sends(&packet, split);
                if !was_open {
                    assert!(inputs.is_empty());
                    return;
                }
                let closed = Self::closed_now(&inputs);
                let messages = Self::messages(&inputs);
                // Readable: plaintext, an empty body, or sealed with the key the connection holds
                // (without a session, an encrypted body is tried as RSA and fails).
                let readable = plain.is_empty()
                    || !flags.contains(Flags::CRYPTO)
                    || matches!(key, Key::Session) && session.is_some();
                if closed == Some(CloseReason::SlowConsumer) {
                    // An AUTO_ACK passed the hard limit: nothing else is handed over.
                    assert!(messages.is_empty());
                } else if readable {
                    let want = match cmd {
                        Command::Bind => PhoneMessage::Bind {
                            session_id: sid,
                            bind,
                        },
                        Command::Unbind => PhoneMessage::Unbind {
                            session_id: sid,
                            bind,
                        },
                        Command::Push => PhoneMessage::Upstream { content: plain },
                        _ => PhoneMessage::Ack { session_id: sid },
                    };
                    assert_eq!(messages, vec![&want], "{inputs:?}");
                    assert_eq!(closed, None);
                } else if messages.is_empty() {
                    assert_eq!(closed, Some(CloseReason::BadBody), "{inputs:?}");
                }
            }
            Act::Unknown(cmd) => {
                let sid = self.sid();
                let packet = Packet::new(cmd, Flags::NONE, sid, Bytes::new());
                let was_open = self.conn.is_open();
                let inputs = self.phone_sends(&packet, split);
                if was_open {
                    assert!(Self::messages(&inputs).is_empty());
                    let closed = Self::closed_now(&inputs);
                    if cmd == Command::HttpProxy.code() {
                        // Answered with an HTTP error; the connection stays.
                        assert!(matches!(closed, None | Some(CloseReason::SlowConsumer)));
                    } else {
                        assert!(matches!(
                            closed,
                            Some(CloseReason::UnsupportedCommand | CloseReason::SlowConsumer)
                        ));
                    }
                }
            }
            Act::Garbage(bytes) => {
                let mut inbound = BytesMut::from(&bytes[..]);
                self.conn
                    .handle_bytes(&self.cfg, self.now, &mut inbound, &mut self.rng);
                self.drain();
                // The stream is now out of step with the phone: nothing more is checked on it.
                self.finished = !self.conn.is_open();
                if self.conn.is_open() {
                    // Still open: the garbage was whole heartbeats, frames or a partial frame;
                    // keep the rest of the run honest by closing as a broken peer would.
                    self.conn.handle_peer_closed(self.now);
                    self.drain();
                    self.finished = true;
                }
            }
            Act::NodeFrame {
                len,
                sealed,
                report,
            } => {
                let sid = self.next_node_sid;
                self.next_node_sid += 1;
                let session = self.session.map(|(_, k, iv)| AesCipher::new(k, iv));
                // Sealed as the node seals: with the connection's session cipher.
                let seal = match (&session, sealed) {
                    (Some(_), true) => Seal::Session,
                    _ => Seal::Raw,
                };
                let frame = OutFrame::Packet {
                    cmd: Command::Push.code(),
                    flags: Flags::NONE,
                    session_id: sid,
                    body: Bytes::from(vec![sid as u8; len]),
                    seal: seal.clone(),
                };
                let was_open = self.conn.is_open();
                let before = self.conn.queued_bytes();
                self.conn
                    .handle_transmit(&self.cfg, self.now, frame, report.then_some(sid));
                let inputs = self.drain();
                if was_open && self.conn.is_open() {
                    let cipher = match &seal {
                        Seal::Session => session.clone(),
                        Seal::Aes(cipher) => Some(cipher.clone()),
                        Seal::Raw => None,
                    };
                    self.node_frames.push_back((sid, len, cipher));
                    assert!(self.conn.queued_bytes() > before);
                } else if was_open {
                    assert_eq!(Self::closed_now(&inputs), Some(CloseReason::SlowConsumer));
                    assert_eq!(
                        self.conn.queued_bytes(),
                        0,
                        "a slow consumer's bytes are dropped"
                    );
                    assert!(self.conn.is_finished());
                } else {
                    assert!(inputs.is_empty());
                }
            }
            Act::NodeResume { device } => {
                let (key, iv) = ([0x30 + device; 16], [0x40 + device; 16]);
                let was_open = self.conn.is_open();
                self.conn.handle_resume(
                    &self.cfg,
                    self.now,
                    Resume {
                        session_key: key,
                        iv,
                        device_id: Self::device_id(device),
                        heartbeat_ms: 1000,
                    },
                );
                assert!(self.drain().is_empty());
                if was_open {
                    self.session = Some((device, key, iv));
                }
            }
            Act::NodeClose => {
                self.node_closed = true;
                self.conn.handle_close(self.now);
                assert!(
                    self.drain().is_empty(),
                    "the node is not told of its own close"
                );
            }
            Act::Write(max) => {
                let pending = self.conn.poll_transmit();
                let n = max.min(pending.len());
                let bytes = pending[..n].to_vec();
                self.phone_reads(&bytes);
                self.conn.handle_written(&self.cfg, self.now, n);
                self.drain();
            }
            Act::PeerClosed => {
                let was_open = self.conn.is_open();
                self.conn.handle_peer_closed(self.now);
                let inputs = self.drain();
                if was_open {
                    assert_eq!(Self::closed_now(&inputs), Some(CloseReason::PeerClosed));
                }
                assert!(self.conn.is_finished());
                self.finished = true;
            }
            Act::Tick(ms) => {
                self.now += ms;
                if let Some(at) = self.conn.poll_timeout() {
                    if at <= self.now {
                        let had_session = self.conn.has_session();
                        self.conn.handle_timeout(&self.cfg, self.now);
                        let inputs = self.drain();
                        match Self::closed_now(&inputs) {
                            Some(CloseReason::HandshakeTimeout) => {
                                assert!(!had_session);
                                assert!(self.now >= self.cfg.handshake_deadline_ms);
                            }
                            Some(CloseReason::IdleTimeout) => {
                                assert!(had_session);
                                assert!(self.now - self.last_read > 1000 + 1000);
                            }
                            None => {}
                            Some(other) => panic!("a timer closed with {other:?}"),
                        }
                    }
                }
            }
        }
        if self.conn.is_finished() {
            self.finished = true;
            assert!(self.conn.poll_timeout().is_none());
        }
    }
}

fn open(packet: &Packet, cipher: Option<&AesCipher>) -> Option<Bytes> {
    let key = match cipher {
        Some(c) => OpenKey::Aes(c),
        None => OpenKey::None,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    pipeline::open(packet.flags, &packet.body, key, &mut rng, 1 << 20).ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_order_of_inputs_keeps_the_connection_rules(
        seed in any::<u64>(),
        marks in marks(),
        acts in prop::collection::vec((act(), any::<usize>()), 1..120),
    ) {
        let mut bench = Bench::new(seed, marks, 1000);
        for (act, split) in acts {
            bench.step(act, split);
        }
        // Draining the socket delivers every node frame queued while open.
        if !bench.finished {
            let pending = bench.conn.poll_transmit().to_vec();
            bench.phone_reads(&pending);
            let n = pending.len();
            bench.conn.handle_written(&bench.cfg, bench.now, n);
            bench.drain();
            if bench.conn.is_open() {
                prop_assert!(bench.node_frames.is_empty(), "frames left: {:?}", bench.node_frames);
            }
        }
    }
}

/// What the slow-consumer rule must do with a stream of frames and partial writes, as a model.
#[derive(Debug, Clone)]
enum Flow {
    /// The node queues a raw frame with this many body bytes.
    Frame(usize),
    /// The socket takes at most this many bytes.
    Write(usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The marks, exactly: "not writable" when the queued bytes pass the high mark, "writable"
    /// once they drain to the low mark, a `SlowConsumer` close (and nothing kept) when they
    /// pass the hard limit; nothing reaches the node after it.
    #[test]
    fn slow_consumer_marks_follow_the_queued_bytes(
        marks in marks(),
        flows in prop::collection::vec(prop_oneof![
            (0usize..4000).prop_map(Flow::Frame),
            (0usize..6000).prop_map(Flow::Write),
        ], 1..200),
    ) {
        let cfg = ConnConfig::from_node(&test_config(), 0, marks);
        let mut conn = PhoneConn::new(CONN, &cfg, 0);
        let mut queued = 0usize;
        let mut writable = true;
        let mut closed = false;
        for flow in flows {
            let mut want = Vec::new();
            match flow {
                Flow::Frame(len) => {
                    let frame = OutFrame::Packet {
                        cmd: Command::Push.code(),
                        flags: Flags::NONE,
                        session_id: 1,
                        body: Bytes::from(vec![0u8; len]),
                        seal: Seal::Raw,
                    };
                    conn.handle_transmit(&cfg, 0, frame, None);
                    if !closed {
                        queued += pushgate_core::frame::HEADER_BYTES + len;
                        if queued > marks.hard_limit_bytes {
                            closed = true;
                            queued = 0;
                            want.push(Input::PhoneClosed { conn: CONN, reason: CloseReason::SlowConsumer });
                        } else if writable && queued > marks.high_water_bytes {
                            writable = false;
                            want.push(Input::PhoneWritable { conn: CONN, writable: false });
                        }
                    }
                }
                Flow::Write(max) => {
                    let n = max.min(conn.poll_transmit().len());
                    prop_assert_eq!(conn.poll_transmit().len(), queued);
                    conn.handle_written(&cfg, 0, n);
                    queued -= n;
                    if !closed && !writable && queued <= marks.low_water_bytes {
                        writable = true;
                        want.push(Input::PhoneWritable { conn: CONN, writable: true });
                    }
                }
            }
            let got: Vec<Input> = std::iter::from_fn(|| conn.poll_input()).collect();
            prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
            prop_assert_eq!(conn.queued_bytes(), queued);
            prop_assert_eq!(conn.is_finished(), closed);
            if !closed {
                prop_assert_eq!(conn.is_writable(), writable);
            }
        }
    }
}

/// MPush's idle check (§9.3): a miss when nothing was read for more than heartbeat + 1 s;
/// closed on the third consecutive miss; traffic resets the count.
#[test]
fn third_consecutive_idle_miss_closes_and_traffic_resets_the_count() {
    let mut node_cfg = test_config();
    node_cfg.min_heartbeat_ms = 10_000;
    node_cfg.max_heartbeat_ms = 10_000;
    let cfg = ConnConfig::from_node(&node_cfg, 0, QueueMarks::default());
    let mut conn = PhoneConn::new(CONN, &cfg, 0);
    conn.handle_resume(
        &cfg,
        0,
        Resume {
            session_key: [1; 16],
            iv: [2; 16],
            device_id: "d".into(),
            heartbeat_ms: 10_000,
        },
    );
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let check = |conn: &mut PhoneConn, at: Millis| {
        assert_eq!(conn.poll_timeout(), Some(at));
        conn.handle_timeout(&cfg, at);
        std::iter::from_fn(|| conn.poll_input()).collect::<Vec<_>>()
    };
    assert!(
        check(&mut conn, 10_000).is_empty(),
        "within heartbeat + 1 s"
    );
    assert!(check(&mut conn, 20_000).is_empty(), "miss 1");
    assert!(check(&mut conn, 30_000).is_empty(), "miss 2");
    conn.handle_frame(&cfg, 35_000, Frame::Heartbeat, &mut rng);
    assert!(check(&mut conn, 40_000).is_empty(), "traffic resets");
    assert!(check(&mut conn, 50_000).is_empty(), "miss 1");
    assert!(check(&mut conn, 60_000).is_empty(), "miss 2");
    assert!(
        matches!(
            check(&mut conn, 70_000)[..],
            [Input::PhoneClosed {
                conn: CONN,
                reason: CloseReason::IdleTimeout
            }]
        ),
        "3rd consecutive miss"
    );
    // Closing: no more idle checks; only the flush deadline of what it still holds.
    let flush = (!conn.poll_transmit().is_empty())
        .then_some(70_000 + pushgate_core::conn::CLOSE_FLUSH_TIMEOUT_MS);
    assert_eq!(conn.poll_timeout(), flush);
}

/// A connection that never completes a handshake is closed at the deadline; heartbeats do not
/// count as one.
#[test]
fn the_handshake_deadline_closes_a_connection_without_a_session() {
    let cfg = ConnConfig::from_node(&test_config(), 0, QueueMarks::default());
    let mut conn = PhoneConn::new(CONN, &cfg, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    conn.handle_frame(&cfg, 5_000, Frame::Heartbeat, &mut rng);
    assert_eq!(conn.poll_timeout(), Some(cfg.handshake_deadline_ms));
    conn.handle_timeout(&cfg, cfg.handshake_deadline_ms - 1);
    assert!(conn.poll_input().is_none(), "not due yet");
    conn.handle_timeout(&cfg, cfg.handshake_deadline_ms);
    assert!(matches!(
        conn.poll_input(),
        Some(Input::PhoneClosed {
            conn: CONN,
            reason: CloseReason::HandshakeTimeout
        })
    ));
}

/// A closing connection writes what it holds for at most the flush deadline; a peer that
/// reads nothing meanwhile has the rest dropped and gets no goodbye. One that takes the bytes
/// is closed gracefully.
#[test]
fn a_closing_connection_whose_peer_reads_nothing_is_dropped_at_the_flush_deadline() {
    use pushgate_core::conn::CLOSE_FLUSH_TIMEOUT_MS;
    let cfg = ConnConfig::from_node(&test_config(), 0, QueueMarks::default());
    for peer_reads in [false, true] {
        let mut conn = PhoneConn::new(CONN, &cfg, 0);
        conn.handle_transmit(&cfg, 10, OutFrame::Heartbeat, None);
        conn.handle_close(20);
        assert!(
            !conn.is_open() && !conn.is_finished(),
            "a heartbeat to write"
        );
        assert_eq!(conn.poll_timeout(), Some(20 + CLOSE_FLUSH_TIMEOUT_MS));
        conn.handle_timeout(&cfg, 20 + CLOSE_FLUSH_TIMEOUT_MS - 1);
        assert!(!conn.is_finished(), "not due yet");
        if peer_reads {
            let written = conn.poll_transmit().len();
            conn.handle_written(&cfg, 30, written);
            assert!(conn.is_finished() && conn.wants_goodbye());
        } else {
            conn.handle_timeout(&cfg, 20 + CLOSE_FLUSH_TIMEOUT_MS);
            assert!(conn.is_finished() && !conn.wants_goodbye());
            assert!(conn.poll_transmit().is_empty());
            assert_eq!(conn.poll_timeout(), None);
        }
    }
}
