//! The oracle: what really happened in the world (every push request and its status, every
//! frame each phone received and every ACK it sent, binds, kicks, closes, faults), and the
//! invariants checked against it — continuously where cheap, and at the end of the run.
use crate::params::{FaultKind, Params};
use pushgate_core::frame::Flags;
use pushgate_core::push::AckMode;
use pushgate_core::status::PushStatus;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

/// The oracle as the world's tasks share it (everything runs on one thread under madsim).
pub type Shared = Arc<Mutex<Oracle>>;

/// Locks the oracle (never held across an `.await`).
pub fn lock(shared: &Shared) -> MutexGuard<'_, Oracle> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Something a fault touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Node(usize),
    Store,
    Phone(usize),
    PushClient(usize),
    /// Every link (latency, loss).
    Global,
}

/// A fault while it is in force (and until `settle_ms` after it ended).
#[derive(Debug, Clone)]
pub struct Disturbance {
    pub kind: FaultKind,
    pub touches: Vec<Entity>,
    pub start: u64,
    pub end: Option<u64>,
    pub settle_ms: u64,
    /// For a clog: when the earliest clog of the same link that it follows began (see
    /// [`Oracle::fault_ended`]); its own start otherwise.
    pub episode_start: u64,
}

impl Disturbance {
    /// Whether it (plus its settle time) overlaps `[from, to]`.
    fn overlaps(&self, from: u64, to: u64) -> bool {
        self.start <= to
            && self
                .end
                .map_or(u64::MAX, |e| e.saturating_add(self.settle_ms))
                >= from
    }

    fn touches_any(&self, entities: &[Entity]) -> bool {
        self.touches
            .iter()
            .any(|t| *t == Entity::Global || entities.contains(t))
    }

    /// Whether the two faults clog a link in common: one touches everything (loss), or what
    /// one touches is part of what the other touches (a store outage clogs every node's store
    /// link; a node-store partition clogs that one; a phone's partitions all clog its links).
    fn shares_a_link(&self, other: &Disturbance) -> bool {
        let within = |a: &[Entity], b: &[Entity]| a.iter().all(|e| b.contains(e));
        self.touches.contains(&Entity::Global)
            || other.touches.contains(&Entity::Global)
            || within(&self.touches, &other.touches)
            || within(&other.touches, &self.touches)
    }

    /// A fault that stops bytes on a link: they are retried with madsim's backoff.
    fn clogs(&self) -> bool {
        matches!(
            self.kind,
            FaultKind::PhonePartition
                | FaultKind::PhoneOneWay
                | FaultKind::NodeStorePartition
                | FaultKind::NodeStoreOneWay
                | FaultKind::PushClientPartition
                | FaultKind::StoreOutage
                | FaultKind::PacketLoss
                | FaultKind::NodePause
        )
    }
}

/// How a push request ended, as its PushClient saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A status; `replied` is false when the PushClient gave up waiting (no answer came).
    Status {
        status: PushStatus,
        reason: Option<String>,
        replied: bool,
    },
    /// The gateway connection failed (connect refused, closed while waiting).
    Error(String),
}

/// One single-user push request (one gateway attempt; a router change makes a new one).
#[derive(Debug, Clone)]
pub struct PushRec {
    pub id: usize,
    pub user: String,
    pub client_type: Option<i32>,
    pub ack: AckMode,
    pub timeout_ms: u64,
    pub node: usize,
    pub push_client: usize,
    pub incarnation: u32,
    pub start: u64,
    pub end: Option<u64>,
    pub outcome: Option<Outcome>,
    /// Sent in the liveness phase (everything healed).
    pub liveness: bool,
    /// Its PushClient died while it was in flight.
    pub abandoned: bool,
}

/// One broadcast request.
#[derive(Debug, Clone)]
pub struct BroadcastRec {
    pub id: usize,
    pub node: usize,
    pub push_client: usize,
    pub incarnation: u32,
    pub tags: Vec<String>,
    /// `userId in [...]` condition.
    pub users: Option<Vec<String>>,
    pub task: bool,
    pub start: u64,
    pub end: Option<u64>,
    pub outcome: Option<Outcome>,
    pub abandoned: bool,
}

/// One bind on a phone connection.
#[derive(Debug, Clone)]
pub struct BindRec {
    pub user: String,
    pub tags: Vec<String>,
    pub requested: u64,
    pub ok: Option<u64>,
    /// When the phone started to give it up (unbind, rebind, close), was kicked, or lost the
    /// connection.
    pub ended: Option<u64>,
}

/// What a phone received on one connection.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// The client library ACKed it on arrival, before the phone's app saw it (so before this
    /// oracle heard of it: no time is known, only that it preceded the receipt).
    pub auto_acked: bool,
    /// When the phone's app sent its business ACK, if it did.
    pub acked_at: Option<u64>,
}

impl Receipt {
    /// Whether the phone had ACKed it by `at`.
    fn acked_by(&self, at: u64) -> bool {
        self.auto_acked || self.acked_at.is_some_and(|acked| acked <= at)
    }
}

/// One phone connection.
#[derive(Debug, Clone)]
pub struct ConnRec {
    pub id: usize,
    pub phone: usize,
    pub node: usize,
    pub client_type: i32,
    pub opened: u64,
    /// When the phone began connecting (the node made the connection ready after it).
    pub connecting_since: u64,
    pub closed: Option<u64>,
    pub close_cause: &'static str,
    pub binds: Vec<BindRec>,
    /// Indices of the binds a frame arriving now may be addressed to.
    accept: Vec<usize>,
    pub kicked: Option<u64>,
    pub received: BTreeMap<String, Receipt>,
    by_session: HashMap<i32, String>,
}

impl ConnRec {
    /// The bind in force (OK received, not ended).
    pub fn live_bind(&self) -> Option<&BindRec> {
        self.binds
            .last()
            .filter(|b| b.ok.is_some() && b.ended.is_none())
    }
}

/// Counters for the run summary.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub faults: BTreeMap<&'static str, u64>,
    pub statuses: BTreeMap<String, u64>,
    pub checks: BTreeMap<&'static str, u64>,
}

/// The oracle of one world.
pub struct Oracle {
    pub seed: u64,
    pub params: Arc<Params>,
    t0: Instant,
    /// The simulated wall clock at `t0`, in ms since the Unix epoch (route versions are read
    /// on it: a node stamps a bind with its clock in µs).
    t0_wall_ms: u64,
    trace_on: bool,
    pub lines: Vec<String>,
    pub first_violation_line: Option<usize>,
    pub violations: Vec<String>,
    pub pushes: Vec<PushRec>,
    pub broadcasts: Vec<BroadcastRec>,
    pub conns: Vec<ConnRec>,
    /// The open connection of each phone.
    pub phone_conn: Vec<Option<usize>>,
    pub phone_incarnation: Vec<u32>,
    pub disturbances: Vec<Disturbance>,
    pub node_incarnation: Vec<u32>,
    pub node_kills: Vec<(usize, u64)>,
    pub push_client_incarnation: Vec<u32>,
    /// (node, incarnation, push id) → status names reported by the node (from its log events).
    finished: HashMap<(usize, u32, u64, bool), u32>,
    pub counts: Counts,
    /// When the fault window ended and everything was healed.
    pub healed_at: Option<u64>,
    /// What the nodes reported through their events (see [`crate::events`]).
    pub side: crate::events::NodeSide,
}

/// Settle time after a bind's OK before the oracle calls the user definitely online.
const BIND_SETTLE_MS: u64 = 200;

/// How long a push on an undisturbed path may wait for its status (`9-others-not-slowed`):
/// a few network hops of a few ms each, with room to spare; whatever else the node is doing
/// (a slow reader's full queue, a storm of reconnects, a broadcast) must not hold it longer.
pub const PROMPT_STATUS_MS: u64 = 1_000;

impl Oracle {
    pub fn new(params: Arc<Params>, trace_on: bool) -> Self {
        let phones = params.phones.len();
        Self {
            seed: params.seed,
            t0: Instant::now(),
            t0_wall_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            trace_on,
            lines: Vec::new(),
            first_violation_line: None,
            violations: Vec::new(),
            pushes: Vec::new(),
            broadcasts: Vec::new(),
            conns: Vec::new(),
            phone_conn: vec![None; phones],
            phone_incarnation: vec![0; phones],
            disturbances: Vec::new(),
            node_incarnation: vec![0; params.nodes],
            node_kills: Vec::new(),
            push_client_incarnation: vec![0; params.push_clients],
            finished: HashMap::new(),
            counts: Counts::default(),
            healed_at: None,
            side: crate::events::NodeSide::default(),
            params,
        }
    }

    /// Virtual milliseconds since the world started.
    pub fn now(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The run time (ms since the start) of the bind a route version stamps: nodes stamp
    /// binds with their wall clock in µs (bumped by 1 µs to stay unique).
    pub fn bind_time_of_version(&self, version: u64) -> u64 {
        (version / 1000).saturating_sub(self.t0_wall_ms)
    }

    /// How far apart two nodes' clocks can read (0 unless clocks are skewed): binds
    /// on different nodes closer than this are concurrent — their versions may order them
    /// either way.
    pub fn clock_slack_ms(&self) -> u64 {
        self.params
            .clock
            .as_ref()
            .map_or(0, |clock| clock.max_disagreement_ms())
    }

    /// One line of the event trace.
    pub fn trace(&mut self, line: impl AsRef<str>) {
        let text = format!("[{:>7}ms] {}", self.now(), line.as_ref());
        if self.trace_on {
            println!("{text}");
        }
        self.lines.push(text);
    }

    /// Records a broken invariant.
    pub fn violate(&mut self, invariant: &'static str, message: impl AsRef<str>) {
        let text = format!("invariant {invariant}: {}", message.as_ref());
        self.trace(format!("VIOLATION {text}"));
        if self.first_violation_line.is_none() {
            self.first_violation_line = Some(self.lines.len() - 1);
        }
        self.violations.push(text);
    }

    pub(crate) fn checked(&mut self, name: &'static str) {
        *self.counts.checks.entry(name).or_default() += 1;
    }

    /// The trace around the first violation.
    pub fn trace_excerpt(&self, before: usize, after: usize) -> String {
        let at = self
            .first_violation_line
            .unwrap_or(self.lines.len().saturating_sub(1));
        let from = at.saturating_sub(before);
        let to = (at + after + 1).min(self.lines.len());
        let mut out = String::new();
        for line in &self.lines[from..to] {
            let _ = writeln!(out, "    {line}");
        }
        out
    }

    // ----- faults -----

    pub fn fault_started(
        &mut self,
        kind: FaultKind,
        touches: Vec<Entity>,
        settle_ms: u64,
        what: &str,
    ) -> usize {
        let now = self.now();
        *self.counts.faults.entry(kind.name()).or_default() += 1;
        self.trace(format!("FAULT {} start: {what}", kind.name()));
        self.disturbances.push(Disturbance {
            kind,
            touches,
            start: now,
            end: None,
            settle_ms,
            episode_start: now,
        });
        self.disturbances.len() - 1
    }

    pub fn fault_ended(&mut self, id: usize) {
        let now = self.now();
        // A clog that begins while bytes stuck in an earlier clog of the same link are still
        // backing off (that clog's settle time not over) continues its episode: those bytes
        // have been retried since the episode began, so their next try can come up to that
        // long (at most 10 s) after this clog ends — back-to-back clogs compound the backoff.
        let episode_start = self.disturbances.get(id).map_or(now, |d| {
            if !d.clogs() {
                return d.start;
            }
            self.disturbances
                .iter()
                .enumerate()
                .filter(|(j, e)| {
                    *j != id
                        && e.clogs()
                        && e.start <= d.start
                        && e.end
                            .is_none_or(|end| end.saturating_add(e.settle_ms) >= d.start)
                        && e.shares_a_link(d)
                })
                .map(|(_, e)| e.episode_start)
                .fold(d.start, u64::min)
        });
        if let Some(d) = self.disturbances.get_mut(id) {
            if d.end.is_none() {
                d.end = Some(now);
                d.episode_start = episode_start;
                // Bytes that met a clog are retried with a backoff that doubles up to 10 s, so
                // they can arrive that much after the clog is gone (counted from the start of
                // the episode of clogs of that link).
                if d.clogs() {
                    d.settle_ms = d.settle_ms.max((now - d.episode_start).min(10_000) + 1_500);
                }
                // A packet lost while its stream was already backing off (after an earlier
                // clog) waits up to the 10 s cap again, however short the loss was.
                if d.kind == FaultKind::PacketLoss {
                    d.settle_ms = d.settle_ms.max(11_500);
                }
                let kind = d.kind.name();
                self.trace(format!("FAULT {kind} end (#{id})"));
            }
        }
    }

    fn disturbed(&self, entities: &[Entity], from: u64, to: u64) -> bool {
        self.disturbances
            .iter()
            .any(|d| d.touches_any(entities) && d.overlaps(from, to))
    }

    fn disturbed_by(&self, kinds: &[FaultKind], entities: &[Entity], from: u64, to: u64) -> bool {
        self.disturbances
            .iter()
            .any(|d| kinds.contains(&d.kind) && d.touches_any(entities) && d.overlaps(from, to))
    }

    pub fn node_killed(&mut self, node: usize) {
        let now = self.now();
        self.node_incarnation[node] += 1;
        self.node_kills.push((node, now));
    }

    // ----- the node's own reports (captured from its log events) -----

    pub fn node_finished(
        &mut self,
        node: usize,
        push: u64,
        broadcast: bool,
        status: &str,
        user: &str,
    ) {
        let inc = self.node_incarnation[node];
        let key = (node, inc, push, broadcast);
        let seen = self.finished.entry(key).or_default();
        *seen += 1;
        let seen = *seen;
        self.checked("1-at-most-one-status");
        let what = if broadcast { "broadcast" } else { "push" };
        self.trace(format!(
            "node{node} {what} #{push} finished {status} user={user}"
        ));
        if seen > 1 {
            self.violate("1-at-most-one-status", format!("node{node} reported {seen} terminal statuses for its {what} #{push} (user {user:?}); the last was {status}"));
        }
    }

    // ----- pushes -----

    #[allow(clippy::too_many_arguments)]
    pub fn push_started(
        &mut self,
        user: &str,
        client_type: Option<i32>,
        ack: AckMode,
        timeout_ms: u64,
        node: usize,
        push_client: usize,
        liveness: bool,
    ) -> usize {
        let id = self.pushes.len();
        let incarnation = self
            .push_client_incarnation
            .get(push_client)
            .copied()
            .unwrap_or(0);
        let now = self.now();
        self.pushes.push(PushRec {
            id,
            user: user.to_owned(),
            client_type,
            ack,
            timeout_ms,
            node,
            push_client,
            incarnation,
            start: now,
            end: None,
            outcome: None,
            liveness,
            abandoned: false,
        });
        self.trace(format!("pc{push_client} push p-{id} -> user={user} type={client_type:?} ack={ack:?} timeout={timeout_ms} via node{node}"));
        id
    }

    pub fn push_ended(&mut self, id: usize, outcome: Outcome) {
        let now = self.now();
        let name = match &outcome {
            Outcome::Status {
                status,
                replied: true,
                ..
            } => status.name().to_owned(),
            Outcome::Status {
                status,
                replied: false,
                ..
            } => format!("{}-no-answer", status.name()),
            Outcome::Error(_) => "error".to_owned(),
        };
        *self.counts.statuses.entry(name.clone()).or_default() += 1;
        let p = &mut self.pushes[id];
        if p.outcome.is_some() {
            let text = format!("push p-{id} got a second outcome {outcome:?}");
            self.violate("1-at-most-one-status", text);
            return;
        }
        p.end = Some(now);
        p.outcome = Some(outcome.clone());
        self.trace(format!("push p-{id} => {name} {outcome:?}"));
    }

    pub fn broadcast_started(
        &mut self,
        node: usize,
        push_client: usize,
        tags: Vec<String>,
        users: Option<Vec<String>>,
        task: bool,
    ) -> usize {
        let id = self.broadcasts.len();
        let incarnation = self
            .push_client_incarnation
            .get(push_client)
            .copied()
            .unwrap_or(0);
        let now = self.now();
        self.trace(format!("pc{push_client} broadcast b-{id} via node{node} tags={tags:?} users={users:?} task={task}"));
        self.broadcasts.push(BroadcastRec {
            id,
            node,
            push_client,
            incarnation,
            tags,
            users,
            task,
            start: now,
            end: None,
            outcome: None,
            abandoned: false,
        });
        id
    }

    pub fn broadcast_ended(&mut self, id: usize, outcome: Outcome) {
        let now = self.now();
        let name = match &outcome {
            Outcome::Status {
                status,
                replied: true,
                ..
            } => format!("broadcast-{}", status.name()),
            Outcome::Status {
                status,
                replied: false,
                ..
            } => format!("broadcast-{}-no-answer", status.name()),
            Outcome::Error(_) => "broadcast-error".to_owned(),
        };
        *self.counts.statuses.entry(name.clone()).or_default() += 1;
        self.trace(format!("broadcast b-{id} => {name}"));
        let b = &mut self.broadcasts[id];
        b.end = Some(now);
        b.outcome = Some(outcome);
    }

    pub fn push_client_started(&mut self, pc: usize) -> u32 {
        self.trace(format!(
            "pc{pc} (re)started, incarnation {}",
            self.push_client_incarnation[pc]
        ));
        self.push_client_incarnation[pc]
    }

    /// A PushClient died: whatever it had in flight gets no status.
    pub fn push_client_crashed(&mut self, pc: usize) {
        let inc = self.push_client_incarnation[pc];
        for p in self
            .pushes
            .iter_mut()
            .filter(|p| p.push_client == pc && p.incarnation == inc && p.outcome.is_none())
        {
            p.abandoned = true;
        }
        for b in self
            .broadcasts
            .iter_mut()
            .filter(|b| b.push_client == pc && b.incarnation == inc && b.outcome.is_none())
        {
            b.abandoned = true;
        }
        self.push_client_incarnation[pc] += 1;
    }

    // ----- phone connections -----

    pub fn conn_opened(
        &mut self,
        phone: usize,
        node: usize,
        fast: bool,
        connecting_since: u64,
    ) -> usize {
        let id = self.conns.len();
        let now = self.now();
        let client_type = self.params.phones[phone].client_type;
        self.conns.push(ConnRec {
            id,
            phone,
            node,
            client_type,
            opened: now,
            connecting_since,
            closed: None,
            close_cause: "",
            binds: Vec::new(),
            accept: Vec::new(),
            kicked: None,
            received: BTreeMap::new(),
            by_session: HashMap::new(),
        });
        self.phone_conn[phone] = Some(id);
        self.trace(format!(
            "phone{phone} conn c{id} opened on node{node} fast={fast}"
        ));
        id
    }

    pub fn connect_failed(&mut self, phone: usize, node: usize, error: &str) {
        self.trace(format!(
            "phone{phone} connect to node{node} failed: {error}"
        ));
    }

    fn end_binds(&mut self, conn: usize) {
        let now = self.now();
        for b in &mut self.conns[conn].binds {
            if b.ended.is_none() {
                b.ended = Some(now);
            }
        }
    }

    pub fn bind_requested(&mut self, conn: usize, user: &str, tags: &[String]) {
        self.end_binds(conn);
        let now = self.now();
        let c = &mut self.conns[conn];
        c.binds.push(BindRec {
            user: user.to_owned(),
            tags: tags.to_vec(),
            requested: now,
            ok: None,
            ended: None,
        });
        let index = c.binds.len() - 1;
        c.accept.push(index);
        let phone = c.phone;
        self.trace(format!("phone{phone} c{conn} bind {user} tags={tags:?}"));
    }

    pub fn bind_answered(&mut self, conn: usize, result: Result<(), String>) {
        let now = self.now();
        let c = &mut self.conns[conn];
        let phone = c.phone;
        match &result {
            Ok(()) => {
                if let Some(b) = c.binds.last_mut() {
                    b.ok = Some(now);
                }
            }
            Err(_) => {
                if let Some(b) = c.binds.last_mut() {
                    b.ended = Some(now);
                }
            }
        }
        self.trace(format!("phone{phone} c{conn} bind answered {result:?}"));
    }

    /// After a bind/unbind answer, and the frames queued before it were handled: only the bind
    /// in force may receive from now on.
    pub fn settle_accept(&mut self, conn: usize) {
        let c = &mut self.conns[conn];
        c.accept = match c.binds.len().checked_sub(1) {
            Some(last) if c.binds[last].ok.is_some() && c.binds[last].ended.is_none() => vec![last],
            _ => Vec::new(),
        };
    }

    pub fn unbind_requested(&mut self, conn: usize) {
        self.end_binds(conn);
        let phone = self.conns[conn].phone;
        self.trace(format!("phone{phone} c{conn} unbind"));
    }

    pub fn unbind_answered(&mut self, conn: usize, result: Result<(), String>) {
        let phone = self.conns[conn].phone;
        self.trace(format!("phone{phone} c{conn} unbind answered {result:?}"));
    }

    pub fn kicked(&mut self, conn: usize, user: &str) {
        let now = self.now();
        self.end_binds(conn);
        let c = &mut self.conns[conn];
        c.accept.clear();
        c.kicked = Some(now);
        let phone = c.phone;
        let client_type = c.client_type;
        let node = c.node;
        // The KICK must be deserved: some other connection bound this user and client type
        // after this connection's binding of it began. A re-bind of the same user continues
        // the binding (the node gives it a new version), and a kick aimed at the version before
        // can cross the re-bind on the wire — so the binding dates from the first bind of the
        // unbroken run of binds of this user.
        let since = c
            .binds
            .iter()
            .rev()
            .skip_while(|b| b.user != user)
            .take_while(|b| b.user == user)
            .last()
            .map(|b| b.requested);
        self.trace(format!("phone{phone} c{conn} KICKED (user {user})"));
        self.checked("2-kick-only-when-superseded");
        match since {
            None => self.violate(
                "2-kick-only-when-superseded",
                format!("phone{phone} c{conn} got a KICK for {user:?}, a user it never bound"),
            ),
            Some(since) => {
                // Deserved when another connection asked for this user and type after this one,
                // or had asked before but was not answered yet (the store orders them).
                //
                // A bind's end is the phone's: when it gave the bind up (or closed). On the same
                // node, a BIND held back by a fault on its way (a clog, loss, a node pause) can
                // still reach the node after that, with the connection's close right behind it:
                // the node reads a bind on an open connection, the newest it has seen, and the
                // local holder loses the user at once — before anything tells the node that
                // connection is gone. Such a bind was in flight, so concurrent, when this one
                // was made. (On another node the store's answer comes after the close, and a
                // bind whose connection is gone by then kicks nobody: that stays strict.)
                //
                // With skewed clocks, binds of two devices on two nodes closer than the clocks
                // can disagree are concurrent: the store orders them by versions either way.
                // A device's own connections are ordered by their ages, stamped by their nodes'
                // clocks: a connection made ready less than the clocks' disagreement after the
                // device's connection on another node may count as the older one; and across
                // nodes a connection counts as the newer one only when its age reads newer by
                // more than the clocks may disagree (`MAX_CLOCK_DISAGREEMENT_US`). Within that,
                // its bind is kicked as late while the other route is online (its node crashed,
                // or has not read the close yet); a later connection of the device wins.
                let skew = self.clock_slack_ms();
                let age_margin_ms = pushgate_core::store::MAX_CLOCK_DISAGREEMENT_US / 1_000;
                let connecting_since = self.conns[conn].connecting_since;
                let own_clock_race = self.conns.iter().any(|o| {
                    o.id != conn
                        && o.phone == phone
                        && o.node != node
                        && o.client_type == client_type
                        && o.opened + skew + age_margin_ms >= connecting_since
                        && o.opened <= connecting_since
                        && o.binds.iter().any(|b| b.user == user)
                });
                let superseded = self.conns.iter().any(|o| {
                    let slack = if o.node == node || o.phone == phone {
                        0
                    } else {
                        skew
                    };
                    o.id != conn
                        && o.client_type == client_type
                        && o.binds.iter().any(|b| {
                            b.user == user
                                && (b.requested + slack >= since
                                    || b.ok.is_none_or(|ok| ok + slack >= since))
                                && (b.ended.is_none_or(|e| e + slack >= since)
                                    || (o.node == node
                                        && b.ok.is_none()
                                        && self.disturbed(
                                            &[Entity::Phone(o.phone), Entity::Node(o.node)],
                                            b.requested,
                                            since,
                                        )))
                        })
                });
                if !superseded && !own_clock_race {
                    self.violate(
                        "2-kick-only-when-superseded",
                        format!("phone{phone} c{conn} (type {client_type}) was kicked from {user:?} although no other connection bound that user and type after (or concurrently with) it (bound at {since}ms)"),
                    );
                }
            }
        }
    }

    /// The phone starts closing the connection (or lost it, or crashed).
    pub fn conn_closed(&mut self, conn: usize, cause: &'static str) {
        let now = self.now();
        self.end_binds(conn);
        let c = &mut self.conns[conn];
        if c.closed.is_some() {
            return;
        }
        c.closed = Some(now);
        c.close_cause = cause;
        c.accept.clear();
        let phone = c.phone;
        if self.phone_conn[phone] == Some(conn) {
            self.phone_conn[phone] = None;
        }
        self.trace(format!("phone{phone} c{conn} closed ({cause})"));
    }

    pub fn phone_crashed(&mut self, phone: usize) {
        if let Some(conn) = self.phone_conn[phone] {
            self.conn_closed(conn, "phone crashed");
        }
        self.phone_incarnation[phone] += 1;
    }

    /// A PUSH arrived on a phone connection. Returns what it is: a single push (its user) or
    /// a broadcast.
    pub fn received(
        &mut self,
        conn: usize,
        session_id: i32,
        flags: Flags,
        content: &[u8],
        auto_acked: bool,
    ) {
        let text = String::from_utf8_lossy(content).into_owned();
        let (phone, node, client_type) = {
            let c = &self.conns[conn];
            (c.phone, c.node, c.client_type)
        };
        self.trace(format!("phone{phone} c{conn} RECV {text} sid={session_id} flags={:#04x} auto_acked={auto_acked}", flags.0));
        let accepted: Vec<BindRec> = self.conns[conn]
            .accept
            .iter()
            .map(|i| self.conns[conn].binds[*i].clone())
            .collect();
        if let Some(id) = text
            .strip_prefix("p-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            self.checked("2-right-user");
            let Some(p) = self.pushes.get(id).cloned() else {
                return self.violate(
                    "2-right-user",
                    format!("phone{phone} c{conn} received unknown content {text:?}"),
                );
            };
            if !accepted.iter().any(|b| b.user == p.user) {
                let users: Vec<&str> = accepted.iter().map(|b| b.user.as_str()).collect();
                self.violate("2-right-user", format!("phone{phone} c{conn} (bound as {users:?}) received p-{id} addressed to {:?}", p.user));
            }
            if let Some(ct) = p.client_type {
                if ct != client_type {
                    self.violate("2-right-user", format!("phone{phone} c{conn} (type {client_type}) received p-{id} addressed to type {ct}"));
                }
            }
            self.checked("2-delivered-once");
            let elsewhere = self
                .conns
                .iter()
                .find(|c| c.received.contains_key(&text))
                .map(|c| c.id);
            if let Some(other) = elsewhere {
                self.violate(
                    "2-delivered-once",
                    format!("p-{id} delivered twice: on c{other} and now on c{conn}"),
                );
            }
            let expected = p.ack.flags();
            if flags.ack_bits() != expected {
                self.violate(
                    "2-right-user",
                    format!(
                        "p-{id} was asked with ack {:?} but arrived with flags {:#04x}",
                        p.ack, flags.0
                    ),
                );
            }
        } else if let Some(id) = text
            .strip_prefix("b-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            self.checked("2-broadcast-filter");
            let Some(b) = self.broadcasts.get(id).cloned() else {
                return self.violate(
                    "2-broadcast-filter",
                    format!("phone{phone} c{conn} received unknown content {text:?}"),
                );
            };
            if b.node != node {
                self.violate(
                    "2-broadcast-filter",
                    format!(
                        "b-{id} was sent through node{} but reached c{conn} on node{node}",
                        b.node
                    ),
                );
            }
            let matching = accepted.iter().any(|bind| {
                (b.tags.is_empty() || bind.tags.iter().any(|t| b.tags.contains(t)))
                    && b.users.as_ref().is_none_or(|u| u.contains(&bind.user))
            });
            if !matching {
                let binds: Vec<(&str, &Vec<String>)> = accepted
                    .iter()
                    .map(|b| (b.user.as_str(), &b.tags))
                    .collect();
                self.violate("2-broadcast-filter", format!("phone{phone} c{conn} bound as {binds:?} received b-{id} (tags {:?}, users {:?})", b.tags, b.users));
            }
            if self.conns[conn].received.contains_key(&text) {
                self.violate(
                    "2-delivered-once",
                    format!("b-{id} delivered twice on c{conn}"),
                );
            }
        } else {
            self.violate(
                "2-right-user",
                format!("phone{phone} c{conn} received unknown content {text:?}"),
            );
        }
        let c = &mut self.conns[conn];
        c.by_session.insert(session_id, text.clone());
        // A content received again (a re-push after a router change) keeps its first ACK.
        let receipt = c.received.entry(text).or_insert(Receipt {
            auto_acked: false,
            acked_at: None,
        });
        receipt.auto_acked |= auto_acked;
    }

    pub fn acked(&mut self, conn: usize, session_id: i32) {
        let now = self.now();
        let c = &mut self.conns[conn];
        let phone = c.phone;
        if let Some(content) = c.by_session.get(&session_id).cloned() {
            if let Some(r) = c.received.get_mut(&content) {
                r.acked_at.get_or_insert(now);
            }
            self.trace(format!(
                "phone{phone} c{conn} ACK {content} sid={session_id}"
            ));
        }
    }

    // ----- checks at the end -----

    fn receipt_of(&self, content: &str) -> Option<(&ConnRec, &Receipt)> {
        self.conns
            .iter()
            .find_map(|c| c.received.get(content).map(|r| (c, r)))
    }

    /// Whether some connection that may have held `user` during `[from, to]` was closed
    /// (bytes in flight to it may be lost) at or after `from` and soon enough to matter.
    fn lost_in_flight(&self, user: &str, client_type: Option<i32>, from: u64, to: u64) -> bool {
        self.conns.iter().any(|c| {
            // The phone's view of when a bind ended can be ahead of the server's (an unbind stuck
            // in a clog): any connection that bound the user before the push ended counts.
            let held = c.binds.iter().any(|b| b.user == user && b.requested <= to);
            let type_ok = client_type.is_none_or(|ct| ct == c.client_type);
            held && type_ok
                && c.closed.is_some_and(|t| {
                    t >= from
                        && (t <= to + 1_000
                            || self.disturbed(
                                &[Entity::Phone(c.phone), Entity::Node(c.node)],
                                from,
                                t,
                            ))
                })
        })
    }

    /// Whether a phone that had bound `user` crashed during `[from, to]`.
    fn holder_crashed(&self, user: &str, client_type: Option<i32>, from: u64, to: u64) -> bool {
        self.conns.iter().any(|c| {
            client_type.is_none_or(|ct| ct == c.client_type)
                && c.binds.iter().any(|b| b.user == user && b.requested <= to)
                && c.close_cause == "phone crashed"
                && c.closed.is_some_and(|t| t >= from && t <= to)
        })
    }

    /// Whether `user` (of `client_type`, any when `None`) had a connection that was certainly
    /// online, reachable and in the store during all of `[from, to]`, for a push through
    /// `via`; returns that connection.
    fn certainly_online(
        &self,
        user: &str,
        client_type: Option<i32>,
        via: usize,
        from: u64,
        to: u64,
    ) -> Option<usize> {
        'conns: for c in &self.conns {
            if client_type.is_some_and(|ct| ct != c.client_type) {
                continue;
            }
            for b in &c.binds {
                if b.user != user {
                    continue;
                }
                let Some(ok) = b.ok else { continue };
                if ok + BIND_SETTLE_MS > from
                    || b.ended.is_some_and(|e| e <= to)
                    || c.closed.is_some_and(|t| t <= to)
                {
                    continue;
                }
                // Nobody else took this user and type while it was bound (with skewed clocks: or
                // shortly before, on another node, whose clock may stamp that bind newer).
                let skew = self.clock_slack_ms();
                let contested = self.conns.iter().any(|o| {
                    let slack = if o.node == c.node || o.phone == c.phone {
                        0
                    } else {
                        skew
                    };
                    o.id != c.id
                        && o.client_type == c.client_type
                        && o.binds.iter().any(|ob| {
                            ob.user == user
                                && ob.requested <= to
                                && ob.ended.is_none_or(|e| e + slack >= b.requested)
                        })
                });
                if contested {
                    continue;
                }
                let entities = [
                    Entity::Phone(c.phone),
                    Entity::Node(c.node),
                    Entity::Node(via),
                    Entity::Store,
                ];
                if self.disturbed(&entities, b.requested, to) {
                    continue;
                }
                return Some(c.id);
            }
            continue 'conns;
        }
        None
    }

    /// `9-others-not-slowed`: a push asking no ACK, through the node where its user was
    /// certainly bound for the whole push, with nothing disturbing its phone, that node, the
    /// store or its PushClient, gets its status within [`PROMPT_STATUS_MS`] — whatever other
    /// phones of that node do (stop reading, reconnect all at once). Not judged under a tiny
    /// global flow limit (a push may rightly wait for the next window there).
    fn check_not_slowed(&mut self, p: &PushRec, outcome: &Outcome, end: u64) {
        if p.ack.needs_ack() || p.abandoned || self.params.global_flow_limit < 5_000 {
            return;
        }
        let Some(conn) = self
            .certainly_online(&p.user, p.client_type, p.node, p.start, end)
            .filter(|c| self.conns[*c].node == p.node)
        else {
            return;
        };
        let path = [Entity::PushClient(p.push_client), Entity::Node(p.node)];
        if self.disturbed(&path, p.start.saturating_sub(1_000), end) {
            return;
        }
        // The node may deliver to any of the user's connections there that the push's client
        // type matches (with none named: the first it finds): one of them disturbed (a phone
        // that stopped reading) may rightly hold the push up.
        let other_path_disturbed = self.conns.iter().any(|o| {
            o.node == p.node
                && p.client_type.is_none_or(|ct| ct == o.client_type)
                && o.binds.iter().any(|b| {
                    b.user == p.user && b.requested <= end && b.ended.is_none_or(|e| e >= p.start)
                })
                && self.disturbed(
                    &[Entity::Phone(o.phone)],
                    p.start.saturating_sub(1_000),
                    end,
                )
        });
        if other_path_disturbed {
            return;
        }
        self.checked("9-others-not-slowed");
        let replied = matches!(outcome, Outcome::Status { replied: true, .. });
        if !replied || end.saturating_sub(p.start) > PROMPT_STATUS_MS {
            let phone = self.conns[conn].phone;
            let text = format!(
                "p-{} to {:?} via node{} [{}..{end}ms]: phone{phone} c{conn} was bound there with nothing disturbing its path, but the status ({outcome:?}) took {} ms (bound {PROMPT_STATUS_MS} ms)",
                p.id, p.user, p.node, p.start, end.saturating_sub(p.start)
            );
            self.violate("9-others-not-slowed", text);
        }
    }

    /// The checks made once the run is over.
    pub fn final_checks(&mut self) {
        let pushes = self.pushes.clone();
        for p in &pushes {
            let id = p.id;
            let Some(outcome) = &p.outcome else {
                self.checked("1-exactly-one-status");
                if !p.abandoned {
                    self.violate(
                        "1-exactly-one-status",
                        format!(
                            "p-{id} (pc{} via node{}) never ended",
                            p.push_client, p.node
                        ),
                    );
                }
                continue;
            };
            let end = p.end.unwrap_or(p.start);
            self.check_not_slowed(p, outcome, end);
            let path = [Entity::Node(p.node), Entity::PushClient(p.push_client)];
            let path_faults = [
                FaultKind::NodeCrash,
                FaultKind::NodePause,
                FaultKind::PushClientPartition,
                FaultKind::LatencySpike,
                FaultKind::PacketLoss,
                FaultKind::PushClientCrash,
            ];
            match outcome {
                Outcome::Status {
                    status,
                    replied,
                    reason,
                } => {
                    self.checked("1-exactly-one-status");
                    if !replied && !self.disturbed_by(&path_faults, &path, p.start, end) {
                        self.violate(
                            "1-exactly-one-status",
                            format!("p-{id} to {:?} via node{} (timeout {} ms, ack {:?}) got no status from the gateway although its connection stayed open: {reason:?}", p.user, p.node, p.timeout_ms, p.ack),
                        );
                    }
                    match status {
                        PushStatus::Success | PushStatus::AckSuccess => {
                            self.checked("2-success-means-received");
                            let content = format!("p-{id}");
                            match self.receipt_of(&content) {
                                // The ACK must have been sent before the status came back.
                                Some((_, r))
                                    if *status == PushStatus::AckSuccess && !r.acked_by(end) =>
                                {
                                    let text = format!("p-{id} to {:?} is ack-success but the phone had not ACKed it (ACK at {:?}, status at {end})", p.user, r.acked_at);
                                    self.violate("2-success-means-received", text);
                                }
                                Some(_) => {}
                                // The phone process died between the client library handing
                                // over the push (and auto-ACKing it) and the phone's app seeing it.
                                None if self.holder_crashed(
                                    &p.user,
                                    p.client_type,
                                    p.start,
                                    end,
                                ) => {}
                                None if *status == PushStatus::AckSuccess => {
                                    self.violate("2-success-means-received", format!("p-{id} to {:?} is ack-success but no phone received it", p.user));
                                }
                                None => {
                                    if !self.lost_in_flight(&p.user, p.client_type, p.start, end) {
                                        self.violate("2-success-means-received", format!("p-{id} to {:?} is success but no phone received it", p.user));
                                    }
                                }
                            }
                            if *status == PushStatus::AckSuccess && !p.ack.needs_ack() {
                                self.violate(
                                    "2-success-means-received",
                                    format!("p-{id} asked no ACK but is ack-success"),
                                );
                            }
                        }
                        PushStatus::RouterChange => {
                            self.checked("6-router-change-only-when-elsewhere");
                            if let Some(conn) = self
                                .certainly_online(&p.user, p.client_type, p.node, p.start, end)
                                .filter(|c| self.conns[*c].node == p.node)
                            {
                                let c = &self.conns[conn];
                                let text = format!(
                                    "p-{id} to {:?} (type {:?}) via node{} [{}..{}ms] is router-change, but phone{} c{conn} was bound as that user on that very node the whole time",
                                    p.user, p.client_type, p.node, p.start, end, c.phone
                                );
                                self.violate("6-router-change-only-when-elsewhere", text);
                            }
                        }
                        PushStatus::Offline => {
                            self.checked("3-offline-only-when-offline");
                            if let Some(conn) =
                                self.certainly_online(&p.user, p.client_type, p.node, p.start, end)
                            {
                                let c = &self.conns[conn];
                                let text = format!(
                                    "p-{id} to {:?} (type {:?}) via node{} [{}..{}ms] is offline, but phone{} c{conn} on node{} was bound as that user the whole time",
                                    p.user, p.client_type, p.node, p.start, end, c.phone, c.node
                                );
                                self.violate("3-offline-only-when-offline", text);
                            }
                        }
                        _ => {}
                    }
                }
                Outcome::Error(error) => {
                    self.checked("1-exactly-one-status");
                    if !self.disturbed_by(&path_faults, &path, p.start.saturating_sub(1_000), end) {
                        self.violate("1-exactly-one-status", format!("p-{id} via node{}: the gateway connection failed without any fault: {error}", p.node));
                    }
                }
            }
        }
        // A completed (non-task) broadcast reached every phone that was certainly bound and
        // matching on its node for the whole time.
        let broadcasts = self.broadcasts.clone();
        for b in &broadcasts {
            let Some(Outcome::Status {
                status: PushStatus::Success,
                replied: true,
                ..
            }) = &b.outcome
            else {
                continue;
            };
            if b.task {
                continue;
            }
            let end = b.end.unwrap_or(b.start);
            let content = format!("b-{}", b.id);
            let skew = self.clock_slack_ms();
            self.checked("2-broadcast-complete");
            let missed: Vec<usize> = self
                .conns
                .iter()
                .filter(|c| c.node == b.node && !c.received.contains_key(&content))
                .filter(|c| {
                    c.binds.iter().any(|bind| {
                        bind.ok.is_some_and(|ok| ok + BIND_SETTLE_MS <= b.start)
                            && bind.ended.is_none_or(|e| e > end + 1_000)
                            && (b.tags.is_empty() || bind.tags.iter().any(|t| b.tags.contains(t)))
                            && b.users.as_ref().is_none_or(|u| u.contains(&bind.user))
                            && !self.conns.iter().any(|o| {
                                let slack = if o.node == c.node || o.phone == c.phone {
                                    0
                                } else {
                                    skew
                                };
                                o.id != c.id
                                    && o.client_type == c.client_type
                                    && o.binds.iter().any(|ob| {
                                        ob.user == bind.user
                                            && ob.requested <= end
                                            && ob.ended.is_none_or(|e| e + slack >= bind.requested)
                                    })
                            })
                    }) && c.closed.is_none_or(|t| t > end + 1_000)
                        && !self.disturbed(
                            &[Entity::Phone(c.phone), Entity::Node(c.node)],
                            c.opened,
                            end,
                        )
                })
                .map(|c| c.id)
                .collect();
            if let Some(conn) = missed.first() {
                let text = format!("b-{} through node{} finished with success but bound, matching c{conn} never received it (missed: {missed:?})", b.id, b.node);
                self.violate("2-broadcast-complete", text);
            }
        }
    }

    /// Routes the run ended with, for the summary and the liveness check.
    pub fn settled_phones(&self) -> Vec<(usize, usize, String, usize)> {
        // (phone, conn, user, node) of every phone whose connection is open and bound.
        self.phone_conn
            .iter()
            .enumerate()
            .filter_map(|(phone, conn)| {
                let c = &self.conns[(*conn)?];
                let bind = c.live_bind()?;
                (c.closed.is_none() && c.kicked.is_none())
                    .then(|| (phone, c.id, bind.user.clone(), c.node))
            })
            .collect()
    }

    /// Last bind request of (user, client type) on `node`.
    pub fn last_bind_on(&self, user: &str, client_type: i32, node: usize) -> Option<u64> {
        self.conns
            .iter()
            .filter(|c| c.node == node && c.client_type == client_type)
            .flat_map(|c| {
                c.binds
                    .iter()
                    .filter(|b| b.user == user)
                    .map(|b| b.requested)
            })
            .max()
    }

    pub fn liveness_violation(&mut self, message: String) {
        self.checked("4-liveness");
        self.violate("4-liveness", message);
    }

    pub fn liveness_checked(&mut self) {
        self.checked("4-liveness");
    }

    pub fn resource_checked(&mut self) {
        self.checked("5-bounded-no-leak");
    }

    pub fn resource_violation(&mut self, message: String) {
        self.checked("5-bounded-no-leak");
        self.violate("5-bounded-no-leak", message);
    }

    /// Users that received something while bound as someone else, etc. — used by the summary.
    pub fn distinct_users_bound(&self) -> usize {
        let users: HashSet<&str> = self
            .conns
            .iter()
            .flat_map(|c| c.binds.iter().map(|b| b.user.as_str()))
            .collect();
        users.len()
    }
}
