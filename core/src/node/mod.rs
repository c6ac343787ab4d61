//! The node: every rule of a pushgate server, as one sans-IO state machine.
//!
//! The driver feeds it what happened with [`Node::handle`] (decoded messages from phones, handed
//! over by their connections' [`PhoneConn`]s, frames from PushClients, connections opening and
//! closing, write results, route-store answers)
//! and then drains what to do with [`Node::poll_output`] until it returns `None`, and arms one
//! timer at [`Node::poll_timeout`]; when that timer fires it calls [`Node::handle_timeout`]
//! and drains again. Time handed to the node never goes back.
//!
//! [`PhoneConn`]: crate::conn::PhoneConn
//!
//! Inside: phone sessions (`phone.rs`, with one file per concept: `handshake.rs`,
//! `fast_connect.rs`, `bind.rs`, `bind_check.rs`, `versioning.rs`, `repair.rs`, `kicks.rs`), single-user push tasks (`single.rs`) and broadcasts
//! (`broadcast.rs`) share the route table, the in-flight table of pushes awaiting a write
//! result or an ACK, flow control, the timer heap and the pending store requests. Every
//! table is bounded by [`NodeConfig`]; work beyond a bound is refused with a status, never
//! queued.
mod bind;
mod bind_check;
mod broadcast;
mod fast_connect;
mod handshake;
mod kicks;
mod phone;
mod repair;
mod single;
mod versioning;

use crate::config::NodeConfig;
use crate::conn::{PhoneMessage, Resume};
use crate::crypto::AesCipher;
use crate::flow::FlowControl;
use crate::frame::{Flags, Frame, FrameError, Packet};
use crate::ids::{ConnId, GatewayId, Millis, PushId, RequestId};
use crate::in_flight::InFlightTable;
use crate::push::{Origin, PushRequest};
use crate::route::{ClientType, RouteTable};
use crate::session::Session;
use crate::status::{PushStatus, Reason, TimeLine};
use crate::store::{KickNotice, RouteRecord, StoreError, StoreOp, StoreReply, StoreRequest};
use crate::timer::{Timer, TimerQueue};
use bytes::{BufMut, Bytes};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use bind_check::{BindCheck, BindCheckOutcome, BindVerdict, BIND_FAILED};
pub use broadcast::BroadcastTask;
pub use single::SingleTask;

/// Something that happened, fed to [`Node::handle`].
#[derive(Debug, Clone)]
pub enum Input {
    /// A phone connected.
    PhoneConnected { conn: ConnId },
    /// A decoded, authenticated message from a phone's connection.
    PhoneMessage { conn: ConnId, message: PhoneMessage },
    /// The phone's connection closed itself, or is gone, for `reason`.
    PhoneClosed { conn: ConnId, reason: CloseReason },
    /// The phone's outbound queue crossed its high-water mark (false) or drained (true).
    PhoneWritable { conn: ConnId, writable: bool },
    /// A PUSH sent with `report_write` was written (`ok`) or could not be.
    PhoneWritten {
        conn: ConnId,
        push_session_id: i32,
        ok: bool,
    },
    /// A PushClient connected to the gateway port.
    GatewayConnected { gw: GatewayId },
    /// A frame arrived on a gateway connection.
    GatewayFrame { gw: GatewayId, frame: Frame },
    /// A gateway connection's stream could not be framed.
    GatewayFrameError { gw: GatewayId, error: FrameError },
    /// A gateway connection is gone.
    GatewayClosed { gw: GatewayId },
    /// A push from the node's own API.
    LocalPush { token: u64, request: PushRequest },
    /// The answer to a store request.
    StoreReply {
        request: RequestId,
        reply: Result<StoreReply, StoreError>,
    },
    /// Another node asks this one to kick a connection.
    KickNotice { notice: KickNotice },
    /// Kick a user's local connections (all client types when `None`).
    KickUser {
        user_id: String,
        client_type: Option<ClientType>,
    },
    /// The link to the route store came up (again): the store may have lost writes or restarted
    /// empty, so the node writes every local route again.
    StoreConnected,
    /// The verdict on the bind check `check` ([`Output::BindCheck`]).
    BindVerdict { check: u64, verdict: BindVerdict },
    /// The node is stopping: answer every pending push and close every phone.
    Shutdown,
}

/// How a frame to a phone is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seal {
    /// Sent as encoded (OK, ERROR, FAST_CONNECT-ok, ACK).
    Raw,
    /// Compressed above the threshold, then encrypted with this cipher (the connection's own
    /// frames under a key it has not switched to yet: HANDSHAKE-ok under the client's key).
    Aes(AesCipher),
    /// Compressed above the threshold, then encrypted with the connection's session cipher,
    /// the one current when the connection seals the frame (as MPush encodes with the
    /// session's cipher at write time). Everything the node sends a Ready connection: the node
    /// does not hold the cipher, the connection does.
    Session,
}

/// A frame for a phone, still in plaintext: the phone's connection ([`crate::conn::PhoneConn`])
/// compresses and encrypts it (the expensive part) with [`OutFrame::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    Heartbeat,
    Packet {
        cmd: u8,
        flags: Flags,
        session_id: i32,
        body: Bytes,
        seal: Seal,
    },
}

impl OutFrame {
    /// Appends the frame's wire bytes to `out`, compressing bodies above
    /// `compress_threshold_bytes` when sealed, with `session` as the connection's session
    /// cipher. False, and nothing appended, for a [`Seal::Session`] frame without one.
    pub fn encode<B: BufMut>(
        &self,
        compress_threshold_bytes: usize,
        session: Option<&AesCipher>,
        out: &mut B,
    ) -> bool {
        let OutFrame::Packet {
            cmd,
            flags,
            session_id,
            body,
            seal,
        } = self
        else {
            crate::frame::encode_heartbeat(out);
            return true;
        };
        let cipher = match seal {
            Seal::Raw => None,
            Seal::Aes(cipher) => Some(cipher),
            Seal::Session => match session {
                Some(cipher) => Some(cipher),
                None => return false,
            },
        };
        let packet = match cipher {
            None => Packet::new(*cmd, *flags, *session_id, body.clone()),
            Some(cipher) => {
                let (extra, wire) =
                    crate::pipeline::seal(body, Some(cipher), compress_threshold_bytes);
                Packet::new(*cmd, flags.with(extra), *session_id, wire)
            }
        };
        packet.encode(out);
        true
    }
}

/// Why the node closes a phone connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    IdleTimeout,
    HandshakeTimeout,
    /// Handshaken, but no BIND within the bind deadline.
    BindTimeout,
    /// The frame stream broke (too large, negative length).
    BadFrame,
    /// A body could not be decrypted or decoded (ERROR 100 was sent).
    BadBody,
    /// An unknown or unsupported command (ERROR 101 was sent).
    UnsupportedCommand,
    /// Invalid handshake or bind parameters, or a request before the handshake.
    BadRequest,
    /// The node holds its maximum of connections.
    ServerFull,
    Shutdown,
    /// The connection was gone (the peer closed it, or it broke).
    PeerClosed,
    /// The phone did not read: its queued bytes passed the hard limit.
    SlowConsumer,
}

impl CloseReason {
    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle-timeout",
            CloseReason::HandshakeTimeout => "handshake-timeout",
            CloseReason::BindTimeout => "bind-timeout",
            CloseReason::BadFrame => "bad-frame",
            CloseReason::BadBody => "bad-body",
            CloseReason::UnsupportedCommand => "unsupported-command",
            CloseReason::BadRequest => "bad-request",
            CloseReason::ServerFull => "server-full",
            CloseReason::Shutdown => "shutdown",
            CloseReason::PeerClosed => "peer-closed",
            CloseReason::SlowConsumer => "slow-consumer",
        }
    }
}

/// Why a connection lost its user to a KICK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickCause {
    /// A newer bind of the same user and client type took the route (here, through the
    /// store's answer, or by a kick notice from another node).
    NewerBind,
    /// Its own bind came late: a newer connection of the same device holds the user.
    LateBind,
    /// An operator kicked the user (admin API).
    Operator,
}

/// The part of a BIND that was longer than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindField {
    /// Longer than [`NodeConfig::max_user_id_bytes`].
    UserId,
    /// Longer than [`NodeConfig::max_tags_bytes`].
    Tags,
}

/// Things worth logging or counting; the node's behaviour does not depend on them.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A push request reached its terminal status. `delivered` is false when its gateway
    /// connection was already gone and the status could not be told.
    PushFinished {
        id: PushId,
        origin: Origin,
        user_id: String,
        client_type: Option<ClientType>,
        status: PushStatus,
        reason: Option<Reason>,
        timeline: TimeLine,
        delivered: bool,
        /// For a router-change: the route the store named, where the user is bound now (whoever
        /// follows the change can push there without reading the store again).
        moved_to: Option<Box<RouteRecord>>,
    },
    /// A broadcast finished.
    BroadcastFinished {
        id: PushId,
        origin: Origin,
        sent: u64,
        status: PushStatus,
        reason: Option<Reason>,
        delivered: bool,
    },
    HandshakeDone {
        conn: ConnId,
        device_id: String,
        fast: bool,
    },
    Bound {
        conn: ConnId,
        user_id: String,
        client_type: ClientType,
    },
    Unbound {
        conn: ConnId,
        user_id: String,
    },
    /// A BIND was refused (ERROR "invalid param", closed): its `field` was too long.
    BindTooLong {
        conn: ConnId,
        field: BindField,
    },
    /// A bind check ended; `allowed` says whether the bind went on (a check without a verdict
    /// follows [`NodeConfig::bind_check_fallback`]).
    BindChecked {
        conn: ConnId,
        user_id: String,
        outcome: BindCheckOutcome,
        allowed: bool,
    },
    /// A KICK was sent to `conn`: it lost its user.
    Kicked {
        conn: ConnId,
        user_id: String,
        device_id: String,
        cause: KickCause,
    },
    Closed {
        conn: ConnId,
        reason: CloseReason,
    },
    /// An upstream PUSH from a phone (MPush hands these to a plug-in; pushgate reports them).
    Upstream {
        conn: ConnId,
        user_id: Option<String>,
        content: Bytes,
    },
    /// A frame or body could not be decoded.
    DecodeError {
        kind: &'static str,
    },
    /// A push waited for flow control.
    FlowDelayed {
        id: PushId,
        delay_ms: u64,
    },
    /// A store request failed.
    StoreFailed {
        op: &'static str,
        error: StoreError,
    },
    /// A push request became a task (single or broadcast); a single push's deadline is
    /// `timeout_ms` (the timeout it runs with) from now (0 for a broadcast: it has none).
    PushAccepted {
        id: PushId,
        user_id: String,
        broadcast: bool,
        timeout_ms: Millis,
    },
    /// A PUSH frame of push `id` was handed to `conn` (single or broadcast).
    PushSent {
        id: PushId,
        conn: ConnId,
        session_id: i32,
        broadcast: bool,
    },
    /// The driver reported a phone's outbound queue over its mark (false) or drained (true).
    WritableChanged {
        conn: ConnId,
        writable: bool,
    },
    /// A kick notice addressed to this node arrived; `kicked` is the connection it kicked (its
    /// connection token and bind version), `None` when it named no connection here.
    KickNoticeHandled {
        notice: KickNotice,
        kicked: Option<(ConnId, String, u64)>,
    },
}

/// Something to do, drained with [`Node::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a frame to a phone. When `report_write` is set, answer with
    /// [`Input::PhoneWritten`] once the frame was written (or could not be).
    Transmit {
        conn: ConnId,
        frame: OutFrame,
        report_write: Option<i32>,
        /// A broadcast's delivery: bulk work, which the driver may schedule after the
        /// connections that have other frames (a single push, an answer) to write, so a
        /// broadcast to every phone does not hold those up. Every frame to one connection
        /// still goes out in the order it was transmitted.
        bulk: bool,
    },
    /// A fast connect was accepted: the phone's connection takes on this session (after the
    /// frames transmitted before, FAST_CONNECT-ok last).
    Resume {
        conn: ConnId,
        resume: Box<Resume>,
    },
    /// Close a phone connection (after sending what was queued before).
    Close {
        conn: ConnId,
        reason: CloseReason,
    },
    /// Send a raw packet on a gateway connection.
    GatewayTransmit {
        gw: GatewayId,
        packet: Packet,
    },
    /// Close a gateway connection.
    GatewayClose {
        gw: GatewayId,
    },
    /// Perform a store operation and answer with [`Input::StoreReply`].
    Store(StoreRequest),
    /// Ask whether this bind may go on and answer with [`Input::BindVerdict`] (only with
    /// [`NodeConfig::bind_check`] on).
    BindCheck(BindCheck),
    Event(Event),
}

/// Counters for `/v1/stats` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub connections: usize,
    pub gateway_connections: usize,
    pub bound_routes: usize,
    pub pending_pushes: usize,
    pub broadcasts: usize,
    pub in_flight: usize,
    pub pending_store_requests: usize,
    pub handshakes: u64,
    pub fast_connects: u64,
    pub binds: u64,
    pub kicks: u64,
    /// Finished single-user pushes by status (index: [`PushStatus::ALL`]).
    pub pushes_by_status: [u64; 6],
    /// Finished broadcasts by status (success or failure).
    pub broadcasts_by_status: [u64; 6],
    pub broadcast_deliveries: u64,
    pub flow_delays: u64,
    pub decode_errors: u64,
}

impl NodeStats {
    /// Finished single-user pushes with `status`.
    pub fn pushes(&self, status: PushStatus) -> u64 {
        self.pushes_by_status[status_index(status)]
    }

    /// Finished broadcasts with `status`.
    pub fn broadcasts(&self, status: PushStatus) -> u64 {
        self.broadcasts_by_status[status_index(status)]
    }
}

fn status_index(status: PushStatus) -> usize {
    PushStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or(0)
}

/// What a pending store request was for.
#[derive(Debug, Clone)]
enum StorePurpose {
    /// Fire-and-forget writes, retried a bounded number of times on failure.
    Write {
        op: StoreOp,
        attempts: u32,
    },
    /// A bind's route write: the reply names the route it replaced.
    BindRoute {
        conn: ConnId,
        op: StoreOp,
        attempts: u32,
    },
    FastConnect {
        conn: ConnId,
    },
    /// A push's route lookup; the user is kept for the stale-route check of a late answer.
    PushRoute {
        push: PushId,
        user_id: String,
    },
    TaskControl {
        push: PushId,
    },
}

/// Store writes are retried this many times before they are reported as failed.
const STORE_WRITE_ATTEMPTS: u32 = 3;

/// How long after a route write or offline mark failed for good it is sent again (and again,
/// while it keeps failing), so a store outage or lost answers never leave a bound user without
/// a route, or a closed connection's route online, once the store answers again.
const ROUTE_REPAIR_INTERVAL_MS: Millis = 1000;

/// Most offline marks kept for the repair rounds; the oldest are dropped beyond it.
const MAX_OFFLINE_MARKS_TO_REPAIR: usize = 65_536;

/// Most timers one [`Node::handle_timeout`] call runs. Each timer does a bounded amount of
/// work (a push's deadline or next step, a store deadline, a repair round);
/// timers still due after these wait for the next call, which [`Node::poll_timeout`] asks for
/// at once.
pub const MAX_TIMERS_PER_TURN: usize = 1024;

/// Most broadcast batches one [`Node::handle_timeout`] call runs: a broadcast yields after
/// each batch (at most [`NodeConfig::broadcast_batch_size`] routes visited), so whatever the
/// driver received meanwhile is handled before the next batch.
pub const MAX_BROADCAST_BATCHES_PER_TURN: usize = 1;

/// A store request awaiting its answer.
#[derive(Debug, Clone)]
struct PendingStore {
    /// When its [`Timer::StoreDeadline`] fires.
    deadline_ms: Millis,
    purpose: StorePurpose,
}

/// Most bind route writes that timed out kept waiting for their late answer; the oldest are
/// dropped beyond it.
const MAX_LATE_BIND_ANSWERS: usize = 4_096;

/// Most timed-out push route reads whose late answers are still checked for stale routes.
const MAX_LATE_ROUTE_READS: usize = 4_096;

/// The push engine and phone sessions of one pushgate node.
pub struct Node {
    cfg: NodeConfig,
    rng: ChaCha20Rng,
    /// Epoch milliseconds at monotonic time 0 (for time lines and session expiry).
    epoch_offset_ms: i64,
    now: Millis,
    /// Boxed: the table keeps spare slots (up to half of it after a resize), and a spare slot
    /// of a pointer costs 16 bytes where one of a `Session` costs over 300.
    sessions: FxHashMap<ConnId, Box<Session>>,
    gateways: FxHashSet<GatewayId>,
    routes: RouteTable,
    singles: FxHashMap<PushId, SingleTask>,
    broadcasts: FxHashMap<PushId, BroadcastTask>,
    in_flight: InFlightTable,
    global_flow: FlowControl,
    timers: TimerQueue,
    store_pending: FxHashMap<RequestId, PendingStore>,
    /// Broadcasts whose next batch may run now, in turn order (each at most once; the task's
    /// `queued` flag says it is here). One batch runs per [`Node::handle_timeout`] call.
    broadcasts_ready: VecDeque<PushId>,
    outputs: VecDeque<Output>,
    next_request: u64,
    next_push: u64,
    /// The last bind version handed out (see `next_version`).
    last_route_version: u64,
    /// Bound connections whose route write failed for good: written again by the next
    /// [`Timer::RouteRepair`].
    routes_to_repair: BTreeSet<ConnId>,
    /// Offline marks (`SetRouteOffline`) that failed for good, sent again by the next repair
    /// round; at most [`MAX_OFFLINE_MARKS_TO_REPAIR`].
    offline_marks_to_repair: VecDeque<StoreOp>,
    /// A [`Timer::RouteRepair`] is armed.
    repair_armed: bool,
    /// Bind route writes that timed out, by request: the store may still have applied one
    /// (a slow or backed-up link), and then its answer alone names the route it displaced —
    /// a retry of the write finds the bind itself stored. A late answer is still acted on
    /// while the connection holds the user. At most [`MAX_LATE_BIND_ANSWERS`]; forgotten when
    /// the store link comes back (the old link's answers are lost).
    late_bind_answers: BTreeMap<RequestId, (ConnId, StoreOp)>,
    /// Push route reads that timed out or whose push ended first, by request, with their
    /// user: a late answer may still show a stale route of this node, which is then marked
    /// offline. At most [`MAX_LATE_ROUTE_READS`]; forgotten when the store link comes back.
    late_route_reads: BTreeMap<RequestId, String>,
    /// Bind checks in flight by id, at most [`NodeConfig::max_bind_checks`], and the check of
    /// each connection (one at most).
    bind_checks: FxHashMap<u64, bind_check::PendingBindCheck>,
    bind_check_of: FxHashMap<ConnId, u64>,
    next_bind_check: u64,
    stats: NodeStats,
    shut_down: bool,
}

impl Node {
    /// A node with `cfg`. `seed` feeds its random generator (server keys, session ids,
    /// connection tokens); `epoch_offset_ms` is the wall-clock time at monotonic time 0.
    pub fn new(cfg: NodeConfig, seed: [u8; 32], epoch_offset_ms: i64) -> Self {
        let global_flow = FlowControl::new(
            cfg.global_flow_limit_per_window,
            cfg.flow_window_ms,
            cfg.global_flow_max_total,
        );
        Self {
            cfg,
            rng: ChaCha20Rng::from_seed(seed),
            epoch_offset_ms,
            now: 0,
            sessions: FxHashMap::default(),
            gateways: FxHashSet::default(),
            routes: route_table(seed),
            singles: FxHashMap::default(),
            broadcasts: FxHashMap::default(),
            in_flight: InFlightTable::new(),
            global_flow,
            timers: TimerQueue::new(),
            store_pending: FxHashMap::default(),
            broadcasts_ready: VecDeque::new(),
            outputs: VecDeque::new(),
            next_request: 1,
            next_push: 1,
            last_route_version: 0,
            routes_to_repair: BTreeSet::new(),
            offline_marks_to_repair: VecDeque::new(),
            repair_armed: false,
            late_bind_answers: BTreeMap::new(),
            late_route_reads: BTreeMap::new(),
            bind_checks: FxHashMap::default(),
            bind_check_of: FxHashMap::default(),
            next_bind_check: 1,
            stats: NodeStats::default(),
            shut_down: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Feeds one input at `now_ms`.
    pub fn handle(&mut self, now_ms: Millis, input: Input) {
        self.advance(now_ms);
        match input {
            Input::PhoneConnected { conn } => self.on_phone_connected(conn),
            Input::PhoneMessage { conn, message } => self.on_phone_message(conn, message),
            Input::PhoneClosed { conn, reason } => self.on_phone_closed(conn, reason),
            Input::PhoneWritable { conn, writable } => {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.writable = writable;
                    self.trace(|| Event::WritableChanged { conn, writable });
                }
            }
            Input::PhoneWritten {
                conn,
                push_session_id,
                ok,
            } => self.on_written(conn, push_session_id, ok),
            Input::GatewayConnected { gw } => {
                self.on_gateway_connected(gw);
            }
            Input::GatewayFrame { gw, frame } => self.on_gateway_frame(gw, frame),
            Input::GatewayFrameError { gw, error: _ } => {
                self.stats.decode_errors += 1;
                self.emit(Event::DecodeError {
                    kind: "gateway-frame",
                });
                self.gateways.remove(&gw);
                self.outputs.push_back(Output::GatewayClose { gw });
            }
            Input::GatewayClosed { gw } => {
                self.gateways.remove(&gw);
            }
            Input::LocalPush { token, request } => self.submit(Origin::Local { token }, request),
            Input::StoreReply { request, reply } => {
                self.observe_versions(&reply);
                self.on_store_reply(request, reply)
            }
            Input::KickNotice { notice } => self.on_kick_notice(notice),
            Input::KickUser {
                user_id,
                client_type,
            } => self.kick_user(&user_id, client_type),
            Input::StoreConnected => {
                self.late_bind_answers.clear();
                self.late_route_reads.clear();
                self.republish_routes();
            }
            Input::BindVerdict { check, verdict } => self.on_bind_verdict(check, verdict),
            Input::Shutdown => self.shutdown(),
        }
        self.check_invariants();
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Node::handle_timeout`] should next be called: now (the last time handed in) while
    /// a broadcast has a batch ready to run or more timers are due than one call runs.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let next = self.timers.next_deadline();
        if self.broadcasts_ready.is_empty() {
            next
        } else {
            Some(next.map_or(self.now, |at| at.min(self.now)))
        }
    }

    /// Runs the timers due at `now_ms` (at most [`MAX_TIMERS_PER_TURN`]), then at most
    /// [`MAX_BROADCAST_BATCHES_PER_TURN`] broadcast batch. What is left waits for the next call:
    /// [`Node::poll_timeout`] then answers at once, and the driver handles the inputs that
    /// arrived meanwhile first, so no input waits behind more than one turn.
    pub fn handle_timeout(&mut self, now_ms: Millis) {
        self.advance(now_ms);
        for _ in 0..MAX_TIMERS_PER_TURN {
            let Some((at, timer)) = self.timers.pop_due(self.now) else {
                break;
            };
            debug_assert!(
                self.timer_is_wanted(at, timer),
                "{timer:?} at {at} ms fired, but its owner no longer waits for it"
            );
            match timer {
                Timer::PushDeadline(id) => self.on_push_deadline(id),
                Timer::PushStep(id) => self.on_push_step(id, at),
                Timer::StoreDeadline(request) => {
                    if self.store_pending.contains_key(&request) {
                        self.on_store_reply(request, Err(StoreError::Timeout));
                    }
                }
                Timer::RouteRepair => self.repair_routes(),
            }
        }
        for _ in 0..MAX_BROADCAST_BATCHES_PER_TURN {
            let Some(id) = self.broadcasts_ready.pop_front() else {
                break;
            };
            let task = self.broadcasts.get_mut(&id);
            assert!(
                task.as_ref().is_some_and(|t| t.queued),
                "a queued broadcast is live"
            );
            if let Some(task) = task {
                task.queued = false;
            }
            self.run_broadcast(id);
        }
        self.check_invariants();
    }

    /// Gives back the capacity a crowd left in the node's tables (connections, routes, pushes,
    /// ACKs, store requests, outputs; [`crate::spare`]). The driver calls it now and then, not
    /// per input.
    pub fn shrink_spare_capacity(&mut self) {
        crate::spare::shrink_map(&mut self.sessions);
        crate::spare::shrink_set(&mut self.gateways);
        self.routes.shrink_spare_capacity();
        crate::spare::shrink_map(&mut self.singles);
        crate::spare::shrink_map(&mut self.broadcasts);
        self.in_flight.shrink_spare_capacity();
        crate::spare::shrink_map(&mut self.store_pending);
        crate::spare::shrink_queue(&mut self.broadcasts_ready);
        crate::spare::shrink_queue(&mut self.outputs);
        crate::spare::shrink_map(&mut self.bind_checks);
        crate::spare::shrink_map(&mut self.bind_check_of);
    }

    /// Timers armed: the timers of live pushes, broadcasts and store requests,
    /// nothing else (finished work cancels its timers).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// True when the owner of `timer` still waits for it at `at` (every armed timer is).
    fn timer_is_wanted(&self, at: Millis, timer: Timer) -> bool {
        match timer {
            Timer::PushDeadline(id) => self.singles.get(&id).is_some_and(|t| t.deadline_ms == at),
            Timer::PushStep(id) => {
                self.singles
                    .get(&id)
                    .is_some_and(|t| t.step_at_ms == Some(at))
                    || self
                        .broadcasts
                        .get(&id)
                        .is_some_and(|t| t.step_at_ms == Some(at))
            }
            Timer::StoreDeadline(request) => self
                .store_pending
                .get(&request)
                .is_some_and(|p| p.deadline_ms == at),
            Timer::RouteRepair => self.repair_armed,
        }
    }

    /// Current counters.
    pub fn stats(&self) -> NodeStats {
        let mut stats = self.stats.clone();
        stats.connections = self.sessions.len();
        stats.gateway_connections = self.gateways.len();
        stats.bound_routes = self.routes.len();
        stats.pending_pushes = self.singles.len();
        stats.broadcasts = self.broadcasts.len();
        stats.in_flight = self.in_flight.len();
        stats.pending_store_requests = self.store_pending.len();
        stats
    }

    /// The local routes of a user.
    pub fn routes_of(&self, user_id: &str) -> Vec<(ClientType, ConnId)> {
        self.routes.of_user(user_id).collect()
    }

    /// Every local route (user, client type, connection).
    pub fn local_routes(&self) -> Vec<(String, ClientType, ConnId)> {
        self.routes
            .iter()
            .map(|(u, ct, c)| (u.to_owned(), ct, c))
            .collect()
    }

    /// Whether `conn` is a live connection (taken in under the connection limit).
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.sessions.contains_key(&conn)
    }

    /// The live connections.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.sessions.keys().copied()
    }

    /// Pushes (single and broadcast) not finished yet.
    pub fn pending_push_count(&self) -> usize {
        self.singles.len() + self.broadcasts.len()
    }

    fn advance(&mut self, now_ms: Millis) {
        debug_assert!(
            now_ms >= self.now,
            "time went back: {now_ms} < {}",
            self.now
        );
        self.now = self.now.max(now_ms);
    }

    /// Takes a fresh reading of the wall clock: `epoch_ms` (ms since the Unix epoch) is the
    /// time at `now_ms`. The node's wall-clock time follows it from then on, so its bind and
    /// connection versions stay within NTP's error of other nodes' however fast its monotonic
    /// clock runs (the store orders two connections of one device by them,
    /// [`crate::store::RouteRecord::supersedes`]); the runtime calls it about once a second.
    /// Versions never go back: a clock stepped back leaves them increasing
    /// ([`Node::next_version`]).
    pub fn follow_wall_clock(&mut self, now_ms: Millis, epoch_ms: i64) {
        self.advance(now_ms);
        self.epoch_offset_ms = epoch_ms.saturating_sub(i64::try_from(self.now).unwrap_or(i64::MAX));
    }

    fn epoch_ms(&self) -> i64 {
        self.epoch_offset_ms
            .saturating_add(i64::try_from(self.now).unwrap_or(i64::MAX))
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    /// Emits an event only an observer reads ([`NodeConfig::trace_events`]); `event` is built
    /// only when it is emitted.
    fn trace(&mut self, event: impl FnOnce() -> Event) {
        if self.cfg.trace_events {
            self.outputs.push_back(Output::Event(event()));
        }
    }

    fn transmit(&mut self, conn: ConnId, frame: OutFrame, report_write: Option<i32>) {
        self.outputs.push_back(Output::Transmit {
            conn,
            frame,
            report_write,
            bulk: false,
        });
    }

    fn next_push_id(&mut self) -> PushId {
        let id = PushId(self.next_push);
        self.next_push += 1;
        id
    }

    /// Sends a store request; `None` when the pending-request bound is reached.
    fn store(&mut self, op: StoreOp, purpose: StorePurpose) -> Option<RequestId> {
        if self.store_pending.len() >= self.cfg.max_store_requests {
            self.emit(Event::StoreFailed {
                op: op_name(&op),
                error: StoreError::Unavailable("too many pending store requests".into()),
            });
            return None;
        }
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let deadline_ms = self.now + self.cfg.store_timeout_ms;
        self.store_pending.insert(
            id,
            PendingStore {
                deadline_ms,
                purpose,
            },
        );
        self.timers.arm(deadline_ms, Timer::StoreDeadline(id));
        self.outputs
            .push_back(Output::Store(StoreRequest { id, op }));
        Some(id)
    }

    /// A store write whose answer only matters if it failed. An offline mark or restore the
    /// node cannot send (it holds its maximum of store requests) goes to the repair rounds, as
    /// one that failed does.
    fn store_write(&mut self, op: StoreOp) {
        let sent = self.store(
            op.clone(),
            StorePurpose::Write {
                op: op.clone(),
                attempts: 1,
            },
        );
        if sent.is_none()
            && matches!(
                op,
                StoreOp::SetRouteOffline { .. } | StoreOp::RestoreRoute { .. }
            )
        {
            self.schedule_offline_mark_repair(op);
        }
    }

    /// Keeps a push route read whose answer may still come (the read timed out, or its push
    /// ended first), so that answer is still checked for a stale route of this node.
    fn remember_late_route_read(&mut self, request: RequestId, user_id: String) {
        if self.late_route_reads.len() >= MAX_LATE_ROUTE_READS {
            self.late_route_reads.pop_first();
        }
        self.late_route_reads.insert(request, user_id);
    }

    /// A push ended while its route read was pending: the read is forgotten, and its answer
    /// only checked for a stale route.
    fn abandon_route_read(&mut self, request: RequestId) {
        if let Some(StorePurpose::PushRoute { user_id, .. }) = self.forget_store_request(request) {
            self.remember_late_route_read(request, user_id);
        }
    }

    /// Forgets a pending store request (its answer, if one comes, is ignored) and cancels its
    /// deadline.
    fn forget_store_request(&mut self, request: RequestId) -> Option<StorePurpose> {
        let pending = self.store_pending.remove(&request)?;
        self.timers
            .cancel(pending.deadline_ms, Timer::StoreDeadline(request));
        Some(pending.purpose)
    }

    fn on_store_reply(&mut self, request: RequestId, reply: Result<StoreReply, StoreError>) {
        let Some(purpose) = self.forget_store_request(request) else {
            // A late answer to a request that already timed out: a push's route read still
            // shows whether the store holds a stale route of this node, and a bind's route
            // write still matters while its connection still holds that user: the connection it
            // displaced elsewhere gets its kick notice (or, when the store kept a newer bind,
            // this one gives the user up). Once the connection gave the user up, its bind was
            // live for a while (answered, retried), so the displaced route is never put back
            // from a late answer, as the undo of a dead bind would: the displaced connection
            // may have ended since, beyond what the store remembers of ended binds. A write
            // that landed for a bind that has ended is taken offline again.
            if let Some(user_id) = self.late_route_reads.remove(&request) {
                if let Ok(StoreReply::Route(Some((route_type, route)))) = &reply {
                    self.clean_if_stale(&user_id, *route_type, route);
                }
            }
            if let Some((conn, op)) = self.late_bind_answers.remove(&request) {
                let holds_user = match &op {
                    StoreOp::PutRoute {
                        user_id,
                        client_type,
                        ..
                    } => self.sessions.get(&conn).is_some_and(|s| {
                        s.user_id() == Some(user_id.as_str()) && s.client_type == *client_type
                    }),
                    _ => false,
                };
                if holds_user && reply.is_ok() {
                    self.on_bind_route_reply(conn, op, STORE_WRITE_ATTEMPTS, reply);
                } else if let (
                    Ok(StoreReply::Previous(_)),
                    StoreOp::PutRoute {
                        user_id,
                        client_type,
                        route,
                    },
                ) = (&reply, op)
                {
                    // Written for a bind that has ended since (its offline mark may have reached
                    // the store first): that bind is taken offline again; the mark names it, so
                    // a newer route is never touched.
                    if let Some(conn_id) = route.conn_id {
                        self.mark_bind_offline(user_id, client_type, conn_id, route.version);
                    }
                }
            }
            return;
        };
        match purpose {
            StorePurpose::Write { op, attempts } => {
                if let Err(error) = reply {
                    if attempts < STORE_WRITE_ATTEMPTS {
                        self.store(
                            op.clone(),
                            StorePurpose::Write {
                                op,
                                attempts: attempts + 1,
                            },
                        );
                    } else {
                        let name = op_name(&op);
                        if matches!(
                            op,
                            StoreOp::SetRouteOffline { .. } | StoreOp::RestoreRoute { .. }
                        ) {
                            self.schedule_offline_mark_repair(op);
                        }
                        self.emit(Event::StoreFailed { op: name, error });
                    }
                }
            }
            StorePurpose::BindRoute { conn, op, attempts } => {
                if matches!(reply, Err(StoreError::Timeout)) {
                    if self.late_bind_answers.len() >= MAX_LATE_BIND_ANSWERS {
                        self.late_bind_answers.pop_first();
                    }
                    self.late_bind_answers.insert(request, (conn, op.clone()));
                }
                self.on_bind_route_reply(conn, op, attempts, reply)
            }
            StorePurpose::FastConnect { conn } => self.on_fast_connect_reply(conn, request, reply),
            StorePurpose::PushRoute { push, user_id } => {
                if matches!(reply, Err(StoreError::Timeout)) {
                    self.remember_late_route_read(request, user_id.clone());
                }
                self.on_push_route_reply(push, &user_id, reply)
            }
            StorePurpose::TaskControl { push } => self.on_task_control_reply(push, reply),
        }
    }

    /// Registers a PushClient connection; beyond the bound it is closed at once.
    fn on_gateway_connected(&mut self, gw: GatewayId) -> bool {
        if self.gateways.contains(&gw) {
            return true;
        }
        if self.gateways.len() >= self.cfg.max_gateway_connections {
            self.outputs.push_back(Output::GatewayClose { gw });
            return false;
        }
        self.gateways.insert(gw);
        true
    }

    fn on_gateway_frame(&mut self, gw: GatewayId, frame: Frame) {
        if !self.on_gateway_connected(gw) {
            return;
        }
        let Frame::Packet(packet) = frame else {
            return; // PushClients send no heartbeats; tolerate them
        };
        use crate::command::Command;
        use crate::message::{Body, ErrorCode, ErrorMessage, GatewayPush};
        if packet.cmd != Command::GatewayPush.code() {
            let error = ErrorMessage::new(packet.cmd, ErrorCode::UnsupportedCmd);
            self.gateway_send(
                gw,
                crate::pipeline::raw_packet(
                    Command::Error.code(),
                    Flags::NONE,
                    packet.session_id,
                    &error,
                ),
            );
            self.gateways.remove(&gw);
            self.outputs.push_back(Output::GatewayClose { gw });
            return;
        }
        let origin = Origin::Gateway {
            gw,
            session_id: packet.session_id,
        };
        let request = GatewayPush::decode(&packet.body)
            .map_err(|e| e.to_string())
            .and_then(|message| {
                PushRequest::from_gateway(message, packet.flags).map_err(|e| e.to_string())
            });
        match request {
            Ok(request) => self.submit(origin, request),
            Err(reason) => {
                self.stats.decode_errors += 1;
                self.emit(Event::DecodeError {
                    kind: "gateway-push",
                });
                self.refuse(origin, String::new(), None, Reason::BadRequest(reason));
            }
        }
    }

    fn gateway_send(&mut self, gw: GatewayId, packet: Packet) {
        self.outputs
            .push_back(Output::GatewayTransmit { gw, packet });
    }

    /// Starts a push request.
    fn submit(&mut self, origin: Origin, request: PushRequest) {
        if self.shut_down {
            let (user, client_type) = match &request {
                PushRequest::Single(s) => (s.user_id.clone(), s.client_type),
                PushRequest::Broadcast(_) => (String::new(), None),
            };
            self.refuse(origin, user, client_type, Reason::ShuttingDown);
            return;
        }
        match request {
            PushRequest::Single(push) => self.start_single(origin, push),
            PushRequest::Broadcast(broadcast) => self.start_broadcast(origin, broadcast),
        }
    }

    /// Answers a request that never became a task with a failure.
    fn refuse(
        &mut self,
        origin: Origin,
        user_id: String,
        client_type: Option<ClientType>,
        reason: Reason,
    ) {
        let id = self.next_push_id();
        let mut timeline = TimeLine::begin(self.epoch_ms());
        timeline.add(PushStatus::Failure.end_point(), self.epoch_ms());
        self.report_single(
            id,
            origin,
            user_id,
            client_type,
            PushStatus::Failure,
            Some(reason),
            timeline,
            None,
        );
    }

    fn shutdown(&mut self) {
        self.shut_down = true;
        let singles: Vec<PushId> = self.singles.keys().copied().collect();
        for id in singles {
            self.finish_single(id, PushStatus::Failure, Some(Reason::ShuttingDown));
        }
        let broadcasts: Vec<PushId> = self.broadcasts.keys().copied().collect();
        for id in broadcasts {
            self.finish_broadcast(id, Some(Reason::ShuttingDown));
        }
        let conns: Vec<ConnId> = self.sessions.keys().copied().collect();
        for conn in conns {
            self.teardown(conn, CloseReason::Shutdown);
        }
    }

    /// Checks the node's invariants: the bounds always (O(1)), the tables' agreement in debug
    /// builds and tests.
    fn check_invariants(&self) {
        // Every timer belongs to live work: a deadline and at most one step per single push, at
        // most one step per broadcast, one deadline per store request, one repair round.
        // (A connection's idle checks are its own: `crate::conn::PhoneConn`.)
        let live_timers_max =
            2 * self.singles.len() + self.broadcasts.len() + self.store_pending.len() + 1;
        assert!(
            self.timers.len() <= live_timers_max,
            "{} timers armed for at most {live_timers_max} of live work",
            self.timers.len()
        );
        assert!(self.broadcasts_ready.len() <= self.broadcasts.len());
        assert!(self.store_pending.len() <= self.cfg.max_store_requests);
        assert!(self.bind_checks.len() <= self.cfg.max_bind_checks);
        assert_eq!(self.bind_checks.len(), self.bind_check_of.len());
        if cfg!(debug_assertions) {
            for (at, timer) in self.timers.iter() {
                debug_assert!(
                    self.timer_is_wanted(at, timer),
                    "{timer:?} armed at {at} ms for nothing"
                );
            }
            let expected_timers = self.singles.len()
                + self
                    .singles
                    .values()
                    .filter(|t| t.step_at_ms.is_some())
                    .count()
                + self
                    .broadcasts
                    .values()
                    .filter(|t| t.step_at_ms.is_some())
                    .count()
                + self.store_pending.len()
                + usize::from(self.repair_armed);
            debug_assert_eq!(
                self.timers.len(),
                expected_timers,
                "a live timer is missing"
            );
            for id in &self.broadcasts_ready {
                debug_assert!(self.broadcasts.get(id).is_some_and(|t| t.queued));
            }
            debug_assert_eq!(
                self.broadcasts_ready.len(),
                self.broadcasts.values().filter(|t| t.queued).count()
            );
            for task in self.broadcasts.values() {
                // A live broadcast always has something that moves it on: its turn, its
                // flow-control step, the store's answer, or its awaited writes.
                debug_assert!(
                    task.queued
                        || task.step_at_ms.is_some()
                        || task.waiting_control.is_some()
                        || (task.waiting_writes && task.pending_writes > 0)
                        || (task.iteration_done && task.pending_writes > 0),
                    "broadcast {:?} is stuck: {task:?}",
                    task.id
                );
                debug_assert!(
                    task.pending_writes <= 2 * self.cfg.broadcast_batch_size.max(1) as u64,
                    "broadcast {:?} has more writes awaited than its window allows",
                    task.id
                );
            }
            for (user, ct, conn) in self.routes.iter() {
                let session = self.sessions.get(&conn);
                debug_assert!(session.is_some(), "route {user}/{ct:?} names closed {conn}");
                debug_assert!(
                    session.is_some_and(|s| s.user_id() == Some(user) && s.client_type == ct),
                    "route {user}/{ct:?} names {conn}, bound to someone else"
                );
            }
            for (conn, id) in &self.bind_check_of {
                debug_assert!(
                    self.sessions.contains_key(conn),
                    "bind check {id} of closed {conn}"
                );
            }
            for (sid, entry) in self.in_flight.iter() {
                debug_assert!(
                    self.sessions.contains_key(&entry.conn),
                    "in-flight push {sid} on closed {}",
                    entry.conn
                );
            }
            debug_assert!(self.sessions.len() <= self.cfg.max_connections);
            debug_assert!(self.singles.len() <= self.cfg.max_pending_pushes);
            debug_assert!(self.broadcasts.len() <= self.cfg.max_broadcasts);
            debug_assert!(self.gateways.len() <= self.cfg.max_gateway_connections);
        }
    }
}

/// The route table, its index keyed from `seed` on a stream of its own (the node's generator
/// is left as it was).
fn route_table(seed: [u8; 32]) -> RouteTable {
    use rand_chacha::rand_core::RngCore;
    let mut keys = ChaCha20Rng::from_seed(seed);
    keys.set_stream(0x726f_7574_6573);
    RouteTable::with_hash_keys(keys.next_u64(), keys.next_u64())
}

fn op_name(op: &StoreOp) -> &'static str {
    match op {
        StoreOp::PutRoute { .. } => "put-route",
        StoreOp::SetRouteOffline { .. } => "set-route-offline",
        StoreOp::RestoreRoute { .. } => "restore-route",
        StoreOp::GetRoute { .. } => "get-route",
        StoreOp::PutSession { .. } => "put-session",
        StoreOp::GetSession { .. } => "get-session",
        StoreOp::PublishKick { .. } => "publish-kick",
        StoreOp::GetTaskControl { .. } => "get-task-control",
        StoreOp::AddTaskProgress { .. } => "add-task-progress",
    }
}
