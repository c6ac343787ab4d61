//! A small world for driving a [`Node`] in tests, in the spirit of quinn-proto's `Pair`:
//! a virtual clock that jumps to the next timeout, fake phones that really encrypt and
//! decrypt, fake PushClients, and a fake route store that answers at once, holds requests
//! until told, or never answers.
//!
//! Each phone talks to the node through its own [`PhoneConn`], as in the runtime: the phone's
//! frames go into the connection, its decoded messages into the node, the node's frames back
//! through the connection, sealed, as wire bytes the phone decodes. [`Engine`] holds the node
//! and the connections and reads as the node (it derefs to it).
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use pushgate_core::command::Command;
use pushgate_core::config::{NodeAddr, NodeConfig};
use pushgate_core::conn::{ConnConfig, PhoneConn, QueueMarks};
use pushgate_core::crypto::{mix_keys, AesCipher, ClientRsaKey, ServerRsaKey};
use pushgate_core::frame::{Flags, Frame, FrameDecoder, FrameError, Packet};
use pushgate_core::message::{
    Bind, Body, ErrorMessage, FastConnect, GatewayPush, Handshake, HandshakeOk, OkMessage,
};
use pushgate_core::pipeline::{self, OpenKey};
use pushgate_core::status::{status_of_reply, PushStatus};
use pushgate_core::store::{KickNotice, RouteRecord, StoreOp, StoreReply, StoreRequest};
use pushgate_core::store_state::StoreState;
use pushgate_core::{ConnId, Event, GatewayId, Input, Millis, Node, Output};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

/// Epoch ms at virtual time 0.
pub const EPOCH0_MS: i64 = 1_795_553_838_618;

/// The key pair, loaded once (loading recovers the primes).
pub fn server_key() -> ServerRsaKey {
    static KEY: OnceLock<ServerRsaKey> = OnceLock::new();
    KEY.get_or_init(ServerRsaKey::mpush_default).clone()
}

/// A node configuration for tests: this node is 127.0.0.1:3001, other defaults are MPush's.
pub fn test_config() -> NodeConfig {
    NodeConfig::new(NodeAddr::new("127.0.0.1", 3001), server_key())
}

/// One frame a phone received, opened with the phone's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub cmd: u8,
    pub flags: Flags,
    pub session_id: i32,
    pub body: Bytes,
}

/// A fake phone.
#[derive(Debug)]
pub struct Phone {
    pub conn: ConnId,
    pub device_id: String,
    pub os_name: String,
    pub client_key: [u8; 16],
    pub iv: [u8; 16],
    /// The cipher for frames the node seals (AES(clientKey, iv) until HANDSHAKE-ok is read).
    pub cipher: Option<AesCipher>,
    /// Reusable session from the last HANDSHAKE-ok: (id, session key).
    pub reusable: Option<(String, [u8; 16])>,
    pub inbox: Vec<Received>,
    pub heartbeats: usize,
    pub closed: bool,
    next_sid: i32,
}

/// How the fake store answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Answer every request as soon as it is seen.
    Immediate,
    /// Keep requests in `held` until [`World::release_store`].
    Hold,
    /// Never answer.
    Drop,
}

/// The route store around the node: the core's own store semantics ([`StoreState`]) behind a
/// switch that answers at once, holds requests, or drops them.
#[derive(Debug)]
pub struct FakeStore {
    pub mode: StoreMode,
    pub state: StoreState,
    /// Every kick notice published, in order.
    pub kicks: Vec<KickNotice>,
    pub held: Vec<StoreRequest>,
    pub requests_seen: usize,
}

impl FakeStore {
    fn new() -> Self {
        Self {
            mode: StoreMode::Immediate,
            state: StoreState::new(),
            kicks: Vec::new(),
            held: Vec::new(),
            requests_seen: 0,
        }
    }

    /// Applies an operation (at time 0: sessions never expire here) and returns its answer.
    pub fn apply(&mut self, op: &StoreOp) -> StoreReply {
        let reply = self.state.apply(0, op.clone());
        while let Some(notice) = self.state.poll_kick() {
            self.kicks.push(notice);
        }
        reply
    }

    /// A route as this node would write it, for seeding stale or remote routes.
    pub fn route(host: &str, port: u16, conn_id: Option<&str>) -> RouteRecord {
        RouteRecord {
            host: host.into(),
            port,
            device_id: "dev".into(),
            os_name: "android".into(),
            client_version: "1.0".into(),
            conn_id: conn_id.map(str::to_owned),
            // Older than any bind the node makes (like a route written by MPush).
            version: 0,
            conn_version: 0,
            ended: Vec::new(),
            links: Vec::new(),
        }
    }
}

/// A gateway reply as a PushClient reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub gw: GatewayId,
    pub session_id: i32,
    pub status: PushStatus,
    pub reason: String,
    pub data: String,
    pub packet: Packet,
}

/// The node and the phones' connections: what a runtime runs. Reads as the node.
pub struct Engine {
    node: Node,
    conn_cfg: ConnConfig,
    conns: BTreeMap<ConnId, PhoneConn>,
    /// Randomness for the connections' handshakes.
    rng: ChaCha8Rng,
}

impl std::ops::Deref for Engine {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Engine {
    /// Feeds an input to the node.
    pub fn handle(&mut self, now: Millis, input: Input) {
        self.node.handle(now, input);
    }

    /// The next output of the node.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.node.poll_output()
    }

    /// The earliest timeout of the node and the connections.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.conns
            .values()
            .filter_map(PhoneConn::poll_timeout)
            .chain(self.node.poll_timeout())
            .min()
    }

    /// Passes a wall-clock reading to the node ([`Node::follow_wall_clock`]).
    pub fn follow_wall_clock(&mut self, now: Millis, epoch_ms: i64) {
        self.node.follow_wall_clock(now, epoch_ms);
    }

    /// Runs the node's timers and the connections' idle checks due at `now`; what the
    /// connections tell the node is handed over at once (their bytes wait for the next drive).
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.node.poll_timeout().is_some_and(|at| at <= now) {
            self.node.handle_timeout(now);
        }
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.poll_timeout().is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.handle_timeout(&self.conn_cfg, now);
            }
            self.hand_over(now, id);
        }
    }

    /// The node alone, for tests that drive it directly (the connections go).
    pub fn into_node(self) -> Node {
        self.node
    }

    /// The connection of `conn`, while it is open.
    pub fn conn(&self, conn: ConnId) -> Option<&PhoneConn> {
        self.conns.get(&conn)
    }

    /// Hands what a connection decoded to the node.
    fn hand_over(&mut self, now: Millis, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while let Some(input) = conn.poll_input() {
            self.node.handle(now, input);
        }
    }

    /// The stream of the phone of `id` could not be framed.
    fn phone_frame_error(&mut self, now: Millis, id: ConnId, error: FrameError) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.handle_frame_error(now, error);
            self.hand_over(now, id);
        }
    }

    /// A frame from the phone of `id` into its connection, and what it decoded into the node.
    fn phone_frame(&mut self, now: Millis, id: ConnId, frame: Frame) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return; // the connection is closed: nothing reads
        };
        conn.handle_frame(&self.conn_cfg, now, frame, &mut self.rng);
        self.hand_over(now, id);
    }
}

/// The node and everything around it.
pub struct World {
    pub node: Engine,
    pub now: Millis,
    pub store: FakeStore,
    pub phones: HashMap<ConnId, Phone>,
    pub replies: Vec<Reply>,
    pub events: Vec<Event>,
    /// Confirm every reported write at once (`true`), or keep them in `unconfirmed`.
    pub auto_write: bool,
    pub unconfirmed: Vec<(ConnId, i32)>,
    /// Connections the server closed (the node, or the connection itself).
    pub closed_by_node: HashSet<ConnId>,
    pub gateway_closed: HashSet<GatewayId>,
    /// Phones that stopped reading: their connections' sealed bytes stay unwritten.
    pub stalled: HashSet<ConnId>,
    /// Bind checks the node asked for and the test has not answered yet.
    pub bind_checks: Vec<pushgate_core::BindCheck>,
    next_conn: u64,
    rng: ChaCha8Rng,
    client_key: ClientRsaKey,
}

/// Most outputs one drive may process before it declares the node never goes quiet.
const MAX_DRIVE_STEPS: usize = 1_000_000;

impl World {
    /// A world around a node with `test_config()` changed by `configure`.
    pub fn new(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let mut cfg = test_config();
        configure(&mut cfg);
        Self::with_config(cfg, 7)
    }

    pub fn with_config(cfg: NodeConfig, seed: u64) -> Self {
        Self::with_marks(cfg, seed, QueueMarks::default())
    }

    /// A world whose phone connections apply `marks` to their queued bytes.
    pub fn with_marks(cfg: NodeConfig, seed: u64, marks: QueueMarks) -> Self {
        let mut node_seed = [0u8; 32];
        node_seed[..8].copy_from_slice(&seed.to_le_bytes());
        let conn_cfg = ConnConfig::from_node(&cfg, EPOCH0_MS, marks);
        let node = Engine {
            node: Node::new(cfg, node_seed, EPOCH0_MS),
            conn_cfg,
            conns: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xc0ff),
        };
        Self {
            node,
            now: 0,
            store: FakeStore::new(),
            phones: HashMap::new(),
            replies: Vec::new(),
            events: Vec::new(),
            auto_write: true,
            unconfirmed: Vec::new(),
            closed_by_node: HashSet::new(),
            gateway_closed: HashSet::new(),
            stalled: HashSet::new(),
            bind_checks: Vec::new(),
            next_conn: 1,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed),
            client_key: server_key().public_key(),
        }
    }

    /// Feeds an input and drives the node until it is quiet.
    pub fn input(&mut self, input: Input) {
        self.node.handle(self.now, input);
        self.drive();
    }

    /// Processes every output until none is left.
    pub fn drive(&mut self) {
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < MAX_DRIVE_STEPS, "the node never went quiet");
            if let Some(output) = self.node.poll_output() {
                self.apply_output(output);
                continue;
            }
            if self.pump_conns() || self.release_due_writes() {
                continue;
            }
            return;
        }
    }

    /// Moves what the connections hold: decoded messages into the node, sealed bytes to the
    /// phones (which read everything at once); a finished connection is closed. True when
    /// anything moved.
    fn pump_conns(&mut self) -> bool {
        let mut moved = false;
        let ids: Vec<ConnId> = self.node.conns.keys().copied().collect();
        for id in ids {
            let now = self.now;
            let engine = &mut self.node;
            let Some(conn) = engine.conns.get_mut(&id) else {
                continue;
            };
            while let Some(input) = conn.poll_input() {
                engine.node.handle(now, input);
                moved = true;
            }
            let bytes = conn.poll_transmit().to_vec();
            if !bytes.is_empty() && !self.stalled.contains(&id) {
                conn.handle_written(&engine.conn_cfg, now, bytes.len());
                moved = true;
                if let Some(phone) = self.phones.get_mut(&id) {
                    phone.read(&bytes);
                }
            }
            if self.node.conns.get(&id).is_some_and(PhoneConn::is_finished) {
                self.node.conns.remove(&id);
                self.closed_by_node.insert(id);
                self.connection_gone(id);
                moved = true;
            }
        }
        moved
    }

    fn release_due_writes(&mut self) -> bool {
        // A stalled phone's writes wait until it reads again.
        let (held, due): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unconfirmed)
            .into_iter()
            .partition(|(conn, _)| self.stalled.contains(conn));
        self.unconfirmed = held;
        if !self.auto_write || due.is_empty() {
            self.unconfirmed.extend(due);
            return false;
        }
        for (conn, sid) in due {
            self.node.handle(
                self.now,
                Input::PhoneWritten {
                    conn,
                    push_session_id: sid,
                    ok: true,
                },
            );
        }
        true
    }

    fn apply_output(&mut self, output: Output) {
        match output {
            Output::Transmit {
                conn,
                frame,
                report_write,
                ..
            } => {
                assert!(
                    !self.closed_by_node.contains(&conn),
                    "frame sent to {conn} after the node closed it"
                );
                if let Some(phone) = self.phones.get(&conn) {
                    assert!(!phone.closed, "frame sent to closed {conn}");
                }
                // Write reports are the world's to give (`auto_write`, `confirm_writes`).
                if let Some(c) = self.node.conns.get_mut(&conn) {
                    c.handle_transmit(&self.node.conn_cfg, self.now, frame, None);
                    if let Some(sid) = report_write {
                        self.unconfirmed.push((conn, sid));
                    }
                }
            }
            Output::Resume { conn, resume } => {
                if let Some(c) = self.node.conns.get_mut(&conn) {
                    c.handle_resume(&self.node.conn_cfg, self.now, *resume);
                }
            }
            Output::Close { conn, .. } => {
                self.closed_by_node.insert(conn);
                if let Some(c) = self.node.conns.get_mut(&conn) {
                    c.handle_close(self.now);
                }
            }
            Output::GatewayTransmit { gw, packet } => {
                let (status, reason, data) = read_reply(&packet);
                self.replies.push(Reply {
                    gw,
                    session_id: packet.session_id,
                    status,
                    reason,
                    data,
                    packet,
                });
            }
            Output::GatewayClose { gw } => {
                self.gateway_closed.insert(gw);
            }
            Output::Store(request) => {
                self.store.requests_seen += 1;
                match self.store.mode {
                    StoreMode::Immediate => {
                        let reply = self.store.apply(&request.op);
                        self.node.handle(
                            self.now,
                            Input::StoreReply {
                                request: request.id,
                                reply: Ok(reply),
                            },
                        );
                    }
                    StoreMode::Hold => self.store.held.push(request),
                    StoreMode::Drop => {}
                }
            }
            Output::BindCheck(check) => self.bind_checks.push(check),
            Output::Event(event) => self.events.push(event),
        }
    }

    /// Answers every held store request, in order.
    pub fn release_store(&mut self) {
        for request in std::mem::take(&mut self.store.held) {
            let reply = self.store.apply(&request.op);
            self.node.handle(
                self.now,
                Input::StoreReply {
                    request: request.id,
                    reply: Ok(reply),
                },
            );
        }
        self.drive();
    }

    /// Confirms (or fails) every write the node asked to hear about.
    pub fn confirm_writes(&mut self, ok: bool) {
        for (conn, sid) in std::mem::take(&mut self.unconfirmed) {
            self.node.handle(
                self.now,
                Input::PhoneWritten {
                    conn,
                    push_session_id: sid,
                    ok,
                },
            );
        }
        self.drive();
    }

    /// Moves the clock forward by `ms`, running every timer due on the way.
    pub fn advance(&mut self, ms: u64) {
        let target = self.now + ms;
        while let Some(at) = self.node.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.node.handle_timeout(self.now);
            self.drive();
        }
        self.now = target;
    }

    /// Runs timers until none is left (bounded).
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            match self.node.poll_timeout() {
                Some(at) => {
                    self.now = self.now.max(at);
                    self.node.handle_timeout(self.now);
                    self.drive();
                }
                None => return,
            }
        }
        panic!("timers never ran out");
    }

    /// A new phone connection.
    pub fn connect(&mut self, device_id: &str, os_name: &str) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let mut client_key = [0u8; 16];
        let mut iv = [0u8; 16];
        self.rng.fill_bytes(&mut client_key);
        self.rng.fill_bytes(&mut iv);
        self.phones.insert(
            conn,
            Phone {
                conn,
                device_id: device_id.into(),
                os_name: os_name.into(),
                client_key,
                iv,
                cipher: None,
                reusable: None,
                inbox: Vec::new(),
                heartbeats: 0,
                closed: false,
                next_sid: 1,
            },
        );
        let phone_conn = PhoneConn::new(conn, &self.node.conn_cfg, self.now);
        self.node.conns.insert(conn, phone_conn);
        self.input(Input::PhoneConnected { conn });
        conn
    }

    /// Sends a full RSA handshake and reads the answer.
    pub fn handshake(&mut self, conn: ConnId) {
        self.handshake_with(conn, 240_000);
    }

    pub fn handshake_with(&mut self, conn: ConnId, max_heartbeat_ms: i32) {
        let phone = &self.phones[&conn];
        let hs = Handshake {
            device_id: phone.device_id.clone(),
            os_name: phone.os_name.clone(),
            os_version: "6.0".into(),
            client_version: "2.0".into(),
            iv: Bytes::copy_from_slice(&phone.iv),
            client_key: Bytes::copy_from_slice(&phone.client_key),
            min_heartbeat_ms: max_heartbeat_ms,
            max_heartbeat_ms,
            timestamp_ms: 0,
        };
        let (flags, body) =
            pipeline::seal_rsa(&hs.to_bytes(), &self.client_key, &mut self.rng).unwrap();
        let phone = self.phones.get_mut(&conn).unwrap();
        phone.cipher = Some(AesCipher::new(phone.client_key, phone.iv));
        let sid = phone.next_sid();
        self.send_packet(
            conn,
            Packet::new(Command::Handshake.code(), flags, sid, body),
        );
    }

    /// Sends a plaintext FAST_CONNECT with the phone's stored session, switching the phone to
    /// that session's key as the Java SDK does.
    pub fn fast_connect(&mut self, conn: ConnId, session_id: &str, key: [u8; 16], iv: [u8; 16]) {
        let phone = self.phones.get_mut(&conn).unwrap();
        let fc = FastConnect {
            session_id: session_id.into(),
            device_id: phone.device_id.clone(),
            min_heartbeat_ms: 240_000,
            max_heartbeat_ms: 240_000,
        };
        phone.cipher = Some(AesCipher::new(key, iv));
        phone.iv = iv;
        let sid = phone.next_sid();
        self.send_packet(
            conn,
            pipeline::raw_packet(Command::FastConnect.code(), Flags::NONE, sid, &fc),
        );
    }

    /// The reusable session the phone on `conn` read from its HANDSHAKE-ok: id, key and IV.
    pub fn reusable_session(&self, conn: ConnId) -> (String, [u8; 16], [u8; 16]) {
        let phone = &self.phones[&conn];
        let (session_id, key) = phone.reusable.clone().expect("HANDSHAKE-ok read");
        (session_id, key, phone.iv)
    }

    /// Sends BIND (encrypted with the phone's session cipher).
    pub fn bind(&mut self, conn: ConnId, user_id: &str, tags: &str) {
        let body = Bind {
            user_id: user_id.into(),
            data: String::new(),
            tags: tags.into(),
        };
        self.send_sealed(conn, Command::Bind, Flags::NONE, &body);
    }

    pub fn unbind(&mut self, conn: ConnId, user_id: &str) {
        let body = Bind {
            user_id: user_id.into(),
            data: String::new(),
            tags: String::new(),
        };
        self.send_sealed(conn, Command::Unbind, Flags::NONE, &body);
    }

    /// Connect, hand-shake and bind: a phone online as `user_id`.
    pub fn online(&mut self, device_id: &str, os_name: &str, user_id: &str, tags: &str) -> ConnId {
        let conn = self.connect(device_id, os_name);
        self.handshake(conn);
        self.bind(conn, user_id, tags);
        conn
    }

    /// Sends a body sealed with the phone's current cipher.
    pub fn send_sealed(&mut self, conn: ConnId, cmd: Command, flags: Flags, body: &impl Body) {
        let phone = self.phones.get_mut(&conn).unwrap();
        let sid = phone.next_sid();
        let packet = pipeline::sealed_packet(
            cmd.code(),
            flags,
            sid,
            body,
            phone.cipher.as_ref(),
            pipeline::CLIENT_COMPRESS_THRESHOLD_BYTES,
        );
        self.send_packet(conn, packet);
    }

    /// Sends a packet as given.
    pub fn send_packet(&mut self, conn: ConnId, packet: Packet) {
        self.node.phone_frame(self.now, conn, Frame::Packet(packet));
        self.drive();
    }

    /// The phone's byte stream breaks (its connection cannot frame it).
    pub fn frame_error(&mut self, conn: ConnId, error: FrameError) {
        self.node.phone_frame_error(self.now, conn, error);
        self.drive();
    }

    pub fn heartbeat(&mut self, conn: ConnId) {
        self.node.phone_frame(self.now, conn, Frame::Heartbeat);
        self.drive();
    }

    /// The phone ACKs the PUSH with `push_session_id`.
    pub fn ack(&mut self, conn: ConnId, push_session_id: i32) {
        self.send_packet(
            conn,
            Packet::new(
                Command::Ack.code(),
                Flags::NONE,
                push_session_id,
                Bytes::new(),
            ),
        );
    }

    /// What a driver does when a connection is gone: the phone is closed, its unconfirmed
    /// writes are answered as failed, and its connection (if still open) tells the node.
    fn connection_gone(&mut self, conn: ConnId) {
        if let Some(phone) = self.phones.get_mut(&conn) {
            phone.closed = true;
        }
        let failed: Vec<_> = self
            .unconfirmed
            .iter()
            .filter(|(c, _)| *c == conn)
            .copied()
            .collect();
        self.unconfirmed.retain(|(c, _)| *c != conn);
        for (conn, sid) in failed {
            let written = Input::PhoneWritten {
                conn,
                push_session_id: sid,
                ok: false,
            };
            self.node.handle(self.now, written);
        }
        if let Some(mut c) = self.node.conns.remove(&conn) {
            c.handle_peer_closed(self.now);
            while let Some(input) = c.poll_input() {
                self.node.handle(self.now, input);
            }
        }
    }

    /// The phone of `conn` stops reading (`false`: reads again, and takes what waited).
    pub fn stall(&mut self, conn: ConnId, stalled: bool) {
        if stalled {
            self.stalled.insert(conn);
        } else {
            self.stalled.remove(&conn);
        }
        self.drive();
    }

    /// The phone's connection drops.
    pub fn drop_phone(&mut self, conn: ConnId) {
        self.connection_gone(conn);
        self.drive();
    }

    /// A PushClient sends GATEWAY_PUSH with `session_id` and `flags` (ack bits).
    pub fn gateway_push(
        &mut self,
        gw: GatewayId,
        session_id: i32,
        flags: Flags,
        push: &GatewayPush,
    ) {
        self.node.handle(self.now, Input::GatewayConnected { gw });
        let packet = pipeline::raw_packet(Command::GatewayPush.code(), flags, session_id, push);
        self.input(Input::GatewayFrame {
            gw,
            frame: Frame::Packet(packet),
        });
    }

    /// A single push to `user_id` (client type `ct`, 0 = any) with `timeout_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn push_to(
        &mut self,
        gw: GatewayId,
        session_id: i32,
        user_id: &str,
        ct: i32,
        timeout_ms: i32,
        flags: Flags,
        content: &str,
    ) {
        let push = GatewayPush {
            user_id: user_id.into(),
            client_type: ct,
            timeout_ms,
            content: Bytes::copy_from_slice(content.as_bytes()),
            ..Default::default()
        };
        self.gateway_push(gw, session_id, flags, &push);
    }

    /// The PUSH frames a phone received.
    pub fn pushes(&self, conn: ConnId) -> Vec<&Received> {
        self.phones[&conn]
            .inbox
            .iter()
            .filter(|r| r.cmd == Command::Push.code())
            .collect()
    }

    /// Frames of command `cmd` a phone received.
    pub fn received(&self, conn: ConnId, cmd: Command) -> Vec<&Received> {
        self.phones[&conn]
            .inbox
            .iter()
            .filter(|r| r.cmd == cmd.code())
            .collect()
    }

    /// The gateway replies to `session_id` on `gw`.
    pub fn replies_to(&self, gw: GatewayId, session_id: i32) -> Vec<&Reply> {
        self.replies
            .iter()
            .filter(|r| r.gw == gw && r.session_id == session_id)
            .collect()
    }

    /// The one reply to `session_id` on `gw` (panics unless exactly one).
    pub fn reply(&self, gw: GatewayId, session_id: i32) -> &Reply {
        let replies = self.replies_to(gw, session_id);
        assert_eq!(
            replies.len(),
            1,
            "expected exactly one reply to {session_id}, got {replies:#?}"
        );
        replies[0]
    }
}

impl Phone {
    fn next_sid(&mut self) -> i32 {
        let sid = self.next_sid;
        self.next_sid += 1;
        sid
    }

    /// Reads wire bytes from the node (whole frames: the world writes them whole).
    fn read(&mut self, bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        let decoder = FrameDecoder::new(1 << 20);
        while let Some(frame) = decoder.decode(&mut buf).expect("the node sent a bad frame") {
            match frame {
                Frame::Heartbeat => self.heartbeats += 1,
                Frame::Packet(packet) => self.receive(packet),
            }
        }
        assert!(buf.is_empty(), "a partial frame from the node");
    }

    fn receive(&mut self, packet: Packet) {
        let key = match &self.cipher {
            Some(cipher) => OpenKey::Aes(cipher),
            None => OpenKey::None,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let body = pipeline::open(packet.flags, &packet.body, key, &mut rng, 1 << 20)
            .expect("phone could not open a frame");
        if packet.cmd == Command::Handshake.code() {
            let ok = HandshakeOk::decode(&body).expect("HANDSHAKE-ok");
            let mut server_key = [0u8; 16];
            server_key.copy_from_slice(&ok.server_key);
            let session_key = mix_keys(&self.client_key, &server_key);
            self.cipher = Some(AesCipher::new(session_key, self.iv));
            self.reusable = Some((ok.session_id.clone(), session_key));
        }
        self.inbox.push(Received {
            cmd: packet.cmd,
            flags: packet.flags,
            session_id: packet.session_id,
            body,
        });
    }

    /// The OK / ERROR answers received, as (cmd answered, code, text).
    pub fn answers(&self) -> Vec<(u8, u8, String)> {
        self.inbox
            .iter()
            .filter_map(|r| {
                if r.cmd == Command::Ok.code() {
                    OkMessage::decode(&r.body).ok().map(|m| (m.cmd, 0, m.data))
                } else if r.cmd == Command::Error.code() {
                    ErrorMessage::decode(&r.body)
                        .ok()
                        .map(|m| (m.cmd, m.code, m.reason))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// Reads a gateway reply the way a PushClient does.
pub fn read_reply(packet: &Packet) -> (PushStatus, String, String) {
    if packet.cmd == Command::Ok.code() {
        let ok = OkMessage::decode(&packet.body).expect("OK body");
        (PushStatus::Success, String::new(), ok.data)
    } else {
        let error = ErrorMessage::decode(&packet.body).expect("ERROR body");
        (
            status_of_reply(packet.cmd, error.code, &error.reason),
            error.reason,
            error.data,
        )
    }
}

/// Encodes a packet stream the way a driver would (for byte-level checks).
pub fn wire(packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    packet.encode(&mut out);
    out
}
