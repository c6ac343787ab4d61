//! The world: a store node, K pushgate nodes built from the real runtime, P phones, Q
//! PushClients, the fault schedule, the liveness phase and the final checks.
use crate::actors::{self, PushSpec};
use crate::oracle::{lock, Entity, Oracle, Outcome, Shared};
use crate::params::{FaultKind, Params};
use crate::store_client::StoreClient;
use crate::store_node::StoreModel;
use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use pushgate::client::StoredSession;
use pushgate::config::Config;
use pushgate::driver::NodeHandle;
use pushgate::server::ServerHooks;
use pushgate_core::push::AckMode;
use pushgate_core::route::ClientType;
use pushgate_core::status::PushStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Locks a std mutex, ignoring poisoning.
pub fn lock_std<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The phases of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Workload and faults.
    Fault,
    /// Faults healed, no new workload: phones reconnect and bind their own user.
    Calm,
    /// Everybody disconnects.
    Stop,
}

/// One pushgate node's current incarnation, as the supervisor sees it.
#[derive(Default)]
pub struct ServerSlot {
    pub handle: Mutex<Option<NodeHandle>>,
    pub live_connections: AtomicUsize,
}

/// What the supervisor and the actors share besides the oracle.
///
/// (No `tokio::sync::watch` here: its waiters are spread over notifiers picked with tokio's
/// thread-local random generator, which madsim does not seed, so wake-up order would differ
/// between runs of one seed.)
pub struct Control {
    phase: AtomicU8,
    /// One per phone, then one per PushClient: told when the phase changes.
    pub wakeups: Vec<Arc<Notify>>,
    pub storms: Vec<Arc<Notify>>,
    /// Per phone: the node a storm aimed at one node sends it to next (`usize::MAX`: none).
    pub storm_targets: Vec<AtomicUsize>,
    /// Each phone's stored session (its `token.dat`: survives a phone crash).
    pub sessions: Mutex<Vec<Option<StoredSession>>>,
    pub servers: Vec<ServerSlot>,
    /// The users of phones that stopped reading (`slow-reader`): PushClients aim pushes at
    /// them, so their queues reach the marks while other pushes go through the same node.
    pub stalled_users: Mutex<Vec<String>>,
}

impl Control {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Fault,
            1 => Phase::Calm,
            _ => Phase::Stop,
        }
    }

    /// Takes the node a storm aimed at one node sends `phone` to, if any.
    pub fn take_storm_target(&self, phone: usize) -> Option<usize> {
        let target = self.storm_targets[phone].swap(usize::MAX, Ordering::SeqCst);
        (target != usize::MAX).then_some(target)
    }

    /// Sends `phones` to reconnect to `node` at once.
    fn storm_to(&self, phones: &[usize], node: usize) {
        for phone in phones {
            self.storm_targets[*phone].store(node, Ordering::SeqCst);
            self.storms[*phone].notify_one();
        }
    }

    /// Moves to `phase` and wakes every actor, in a fixed order.
    pub fn set_phase(&self, phase: Phase) {
        let code = match phase {
            Phase::Fault => 0,
            Phase::Calm => 1,
            Phase::Stop => 2,
        };
        self.phase.store(code, Ordering::SeqCst);
        for wakeup in &self.wakeups {
            wakeup.notify_one();
        }
    }

    /// The phase notifier of phone `i`.
    pub fn phone_wakeup(&self, phone: usize) -> Arc<Notify> {
        self.wakeups[phone].clone()
    }

    /// The phase notifier of PushClient `j`.
    pub fn push_client_wakeup(&self, phones: usize, pc: usize) -> Arc<Notify> {
        self.wakeups[phones + pc].clone()
    }
}

/// Settle times after a fault ends (store links reconnect with up to 2 s backoff, then the
/// routes are written again; clogged bytes are retried with up to 10 s backoff).
const SETTLE_MS: u64 = 3_000;
/// How long the world is left alone after healing before the liveness checks.
pub const HEAL_MS: u64 = 30_000;

fn node_config(params: &Params, node: usize) -> Config {
    let ip = params.node_ip(node);
    let mut config = Config::default();
    config.net.connect_bind = ip.clone();
    config.net.connect_port = 3000;
    config.net.gateway_bind = ip.clone();
    config.net.gateway_port = 3001;
    config.net.public_host = ip;
    config.net.shutdown_grace_ms = 1_000;
    config.core.min_heartbeat_ms = params.min_heartbeat_ms;
    config.core.max_heartbeat_ms = params.max_heartbeat_ms;
    config.core.store_timeout_ms = params.store_timeout_ms;
    config.core.default_push_timeout_ms = 3_000;
    config.flow.global_limit_per_second = params.global_flow_limit;
    config.flow.broadcast_limit_per_second = params.broadcast_flow_limit;
    config.flow.task_default_limit_per_second = params.broadcast_flow_limit;
    config.net.write_high_water_bytes = params.write_high_water_bytes;
    config.net.write_low_water_bytes = params.write_high_water_bytes / 2;
    config.net.write_hard_limit_bytes = params.write_hard_limit_bytes;
    config.store.address = params.store_addr().to_string();
    config
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("valid ip")
}

/// Ids of the simulated hosts.
pub struct Hosts {
    pub store: NodeId,
    pub nodes: Vec<NodeId>,
    pub phones: Vec<NodeId>,
    pub push_clients: Vec<NodeId>,
    pub checker: madsim::runtime::NodeHandle,
}

fn build_hosts(
    handle: &Handle,
    params: &Arc<Params>,
    sh: &Shared,
    ctl: &Arc<Control>,
    model: &Arc<StoreModel>,
) -> Hosts {
    let store_addr = params.store_addr();
    let model = model.clone();
    let store = handle
        .create_node()
        .name("store")
        .ip(store_addr.ip())
        .init(move || {
            let model = model.clone();
            async move {
                let listener = tokio::net::TcpListener::bind(store_addr)
                    .await
                    .expect("store listens");
                crate::store_node::serve(listener, model).await;
            }
        })
        .build()
        .id();
    let observer = crate::capture::observer(sh.clone(), params.clone());
    let nodes = (0..params.nodes)
        .map(|k| {
            let config = node_config(params, k);
            let ctl = ctl.clone();
            let observer = observer.clone();
            handle
                .create_node()
                .name(format!("node{k}"))
                .ip(ip(&params.node_ip(k)))
                .init(move || {
                    let config = config.clone();
                    let ctl = ctl.clone();
                    let hooks = ServerHooks {
                        observer: Some(observer.clone()),
                    };
                    async move {
                        let server = match pushgate::server::start_with(&config, hooks).await {
                            Ok(server) => server,
                            Err(error) => panic!("node{k} did not start: {error}"),
                        };
                        *lock_std(&ctl.servers[k].handle) = Some(server.handle());
                        loop {
                            ctl.servers[k]
                                .live_connections
                                .store(server.live_connections(), Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                })
                .build()
                .id()
        })
        .collect();
    let phones = (0..params.phones.len())
        .map(|i| {
            let (sh, ctl, params2) = (sh.clone(), ctl.clone(), params.clone());
            handle
                .create_node()
                .name(format!("phone{i}"))
                .ip(ip(&params.phone_ip(i)))
                .init(move || actors::phone_actor(i, sh.clone(), ctl.clone(), params2.clone()))
                .build()
                .id()
        })
        .collect();
    let push_clients = (0..params.push_clients)
        .map(|j| {
            let (sh, ctl, params2) = (sh.clone(), ctl.clone(), params.clone());
            handle
                .create_node()
                .name(format!("pc{j}"))
                .ip(ip(&params.push_client_ip(j)))
                .init(move || {
                    actors::push_client_actor(j, sh.clone(), ctl.clone(), params2.clone())
                })
                .build()
                .id()
        })
        .collect();
    let checker = handle
        .create_node()
        .name("checker")
        .ip(ip("10.0.9.1"))
        .build();
    Hosts {
        store,
        nodes,
        phones,
        push_clients,
        checker,
    }
}

/// One scheduled fault.
#[derive(Debug, Clone)]
struct Planned {
    at: u64,
    duration: u64,
    kind: FaultKind,
    a: usize,
    b: usize,
    dir: u8,
    amount: u64,
}

fn plan_faults(params: &Params, rng: &mut StdRng) -> Vec<Planned> {
    let mut plan: Vec<Planned> = (0..params.fault_count)
        .map(|_| {
            let kind = params.enabled_faults[rng.gen_range(0..params.enabled_faults.len())];
            let at = rng.gen_range(1_000..params.fault_window_ms.saturating_sub(1_000).max(1_001));
            let duration = match kind {
                FaultKind::ReconnectStorm | FaultKind::NodeStorm => rng.gen_range(100..1_500),
                FaultKind::LatencySpike | FaultKind::PacketLoss => rng.gen_range(500..5_000),
                _ => rng.gen_range(300..9_000),
            };
            Planned {
                at,
                duration,
                kind,
                a: rng.gen(),
                b: rng.gen(),
                dir: rng.gen_range(0..3),
                amount: rng.gen_range(0..1_000),
            }
        })
        .collect();
    plan.sort_by_key(|p| p.at);
    plan
}

/// What a fault did, to undo it.
enum Undo {
    Nothing,
    Restart(NodeId, Option<usize>),
    Resume(NodeId, usize),
    Unclog(Vec<(NodeId, NodeId)>),
    UnclogNode(NodeId),
    NetDefaults,
    Storm(Vec<usize>),
    NodeStorm(Vec<usize>, usize),
    Unstall(IpAddr, String),
    StoreFast,
    Hear(usize),
}

struct Injector {
    handle: Handle,
    net: Arc<NetSim>,
    hosts: Hosts,
    params: Arc<Params>,
    sh: Shared,
    ctl: Arc<Control>,
    node_up: Vec<bool>,
    store_up: bool,
    pc_up: Vec<bool>,
    phone_up: Vec<bool>,
    global_busy: bool,
    clogged: BTreeSet<(NodeId, NodeId)>,
    active: Vec<(usize, Undo)>,
    model: Arc<StoreModel>,
    stalled: BTreeSet<IpAddr>,
}

impl Injector {
    fn clog(&mut self, src: NodeId, dst: NodeId, links: &mut Vec<(NodeId, NodeId)>) {
        self.net.clog_link(src, dst);
        self.clogged.insert((src, dst));
        links.push((src, dst));
    }

    /// Applies a fault; `None` when it does not apply now (target already down...).
    fn apply(&mut self, f: &Planned) -> Option<(usize, Undo)> {
        let nodes = self.params.nodes;
        let phones = self.params.phones.len();
        let pcs = self.params.push_clients;
        let settle = SETTLE_MS;
        let k = f.a % nodes;
        let p = f.a % phones;
        let j = f.a % pcs;
        let sh = self.sh.clone();
        let mut oracle = lock(&sh);
        let result = match f.kind {
            FaultKind::ReconnectStorm => {
                let count = 1 + f.b % phones;
                let start = f.a % phones;
                let who: Vec<usize> = (0..count).map(|i| (start + i) % phones).collect();
                for phone in &who {
                    self.ctl.storms[*phone].notify_one();
                }
                let id = oracle.fault_started(
                    f.kind,
                    Vec::new(),
                    0,
                    &format!("phones {who:?} reconnect"),
                );
                (id, Undo::Storm(who))
            }
            FaultKind::NodeStorm => {
                // Two phones in three; the rest stay where they are (the node's other phones,
                // whose pushes must not slow down).
                let who: Vec<usize> = (0..phones)
                    .filter(|i| !(i + f.b).is_multiple_of(3))
                    .collect();
                self.ctl.storm_to(&who, k);
                let id = oracle.fault_started(
                    f.kind,
                    Vec::new(),
                    0,
                    &format!("phones {who:?} reconnect to node{k}"),
                );
                (id, Undo::NodeStorm(who, k))
            }
            FaultKind::NodeCrash => {
                if !self.node_up[k] {
                    return None;
                }
                self.handle.kill(self.hosts.nodes[k]);
                self.node_up[k] = false;
                *lock_std(&self.ctl.servers[k].handle) = None;
                oracle.node_killed(k);
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Node(k)],
                    settle,
                    &format!("node{k} killed"),
                );
                (id, Undo::Restart(self.hosts.nodes[k], Some(k)))
            }
            FaultKind::NodePause => {
                if !self.node_up[k] {
                    return None;
                }
                self.handle.pause(self.hosts.nodes[k]);
                self.node_up[k] = false;
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Node(k)],
                    settle,
                    &format!("node{k} paused"),
                );
                (id, Undo::Resume(self.hosts.nodes[k], k))
            }
            FaultKind::PushClientCrash => {
                if !self.pc_up[j] {
                    return None;
                }
                self.handle.kill(self.hosts.push_clients[j]);
                self.pc_up[j] = false;
                oracle.push_client_crashed(j);
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::PushClient(j)],
                    settle,
                    &format!("pc{j} killed"),
                );
                (id, Undo::Restart(self.hosts.push_clients[j], None))
            }
            FaultKind::PhoneCrash => {
                if !self.phone_up[p] {
                    return None;
                }
                self.handle.kill(self.hosts.phones[p]);
                self.phone_up[p] = false;
                oracle.phone_crashed(p);
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Phone(p)],
                    settle,
                    &format!("phone{p} killed"),
                );
                (id, Undo::Restart(self.hosts.phones[p], None))
            }
            FaultKind::PhonePartition => {
                self.net.clog_node(self.hosts.phones[p]);
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Phone(p)],
                    settle,
                    &format!("phone{p} cut off"),
                );
                (id, Undo::UnclogNode(self.hosts.phones[p]))
            }
            FaultKind::PhoneOneWay => {
                let (ph, nd) = (self.hosts.phones[p], self.hosts.nodes[k]);
                let mut links = Vec::new();
                let what = if f.dir == 0 {
                    self.clog(ph, nd, &mut links);
                    format!("phone{p} -> node{k} clogged")
                } else {
                    self.clog(nd, ph, &mut links);
                    format!("node{k} -> phone{p} clogged")
                };
                let id = oracle.fault_started(f.kind, vec![Entity::Phone(p)], settle, &what);
                (id, Undo::Unclog(links))
            }
            FaultKind::NodeStorePartition | FaultKind::NodeStoreOneWay => {
                let (nd, st) = (self.hosts.nodes[k], self.hosts.store);
                let mut links = Vec::new();
                let what = if f.kind == FaultKind::NodeStorePartition || f.dir == 2 {
                    self.clog(nd, st, &mut links);
                    self.clog(st, nd, &mut links);
                    format!("node{k} <-> store cut")
                } else if f.dir == 0 {
                    self.clog(nd, st, &mut links);
                    format!("node{k} -> store clogged")
                } else {
                    self.clog(st, nd, &mut links);
                    format!("store -> node{k} clogged")
                };
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Node(k), Entity::Store],
                    settle,
                    &what,
                );
                (id, Undo::Unclog(links))
            }
            FaultKind::PushClientPartition => {
                let (pcn, nd) = (self.hosts.push_clients[j], self.hosts.nodes[k]);
                let mut links = Vec::new();
                if f.dir != 1 {
                    self.clog(pcn, nd, &mut links);
                }
                if f.dir != 0 {
                    self.clog(nd, pcn, &mut links);
                }
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::PushClient(j), Entity::Node(k)],
                    settle,
                    &format!("pc{j} / node{k} clogged (dir {})", f.dir),
                );
                (id, Undo::Unclog(links))
            }
            FaultKind::StoreOutage => {
                if !self.store_up {
                    return None;
                }
                self.net.clog_node(self.hosts.store);
                let id =
                    oracle.fault_started(f.kind, vec![Entity::Store], settle, "store unreachable");
                (id, Undo::UnclogNode(self.hosts.store))
            }
            FaultKind::SlowReader => {
                let phone_ip = ip(&self.params.phone_ip(p));
                if !self.stalled.insert(phone_ip) {
                    return None;
                }
                pushgate::sim_hooks::set_stalled(phone_ip, true);
                let user = self.params.phones[p].primary_user.clone();
                lock_std(&self.ctl.stalled_users).push(user.clone());
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Phone(p)],
                    settle,
                    &format!("phone{p} stops reading"),
                );
                (id, Undo::Unstall(phone_ip, user))
            }
            FaultKind::StoreFailover => {
                if !self.store_up {
                    return None;
                }
                let lag = 50 + f.amount * 2;
                let (age, resurrected) = self.model.prepare_failover(oracle.now(), lag);
                oracle.side.resurrected.extend(resurrected);
                self.handle.kill(self.hosts.store);
                self.store_up = false;
                let now = oracle.now();
                oracle.side.store_losses.push(now);
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Store],
                    settle + 1_000,
                    &format!("store fails over to a replica {age:?} ms behind"),
                );
                (id, Undo::Restart(self.hosts.store, None))
            }
            FaultKind::StoreSlow => {
                let max = 20 + f.amount;
                if self.model.slow_ms.load(Ordering::Relaxed) > 0 {
                    return None;
                }
                self.model.slow_ms.store(max, Ordering::Relaxed);
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Store],
                    settle,
                    &format!("store replies delayed up to {max} ms"),
                );
                (id, Undo::StoreFast)
            }
            FaultKind::KickNoticeLoss => {
                if !lock_std(&self.model.deaf).insert(k) {
                    return None;
                }
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Node(k), Entity::Store],
                    settle,
                    &format!("kick notices to node{k} are lost"),
                );
                (id, Undo::Hear(k))
            }
            FaultKind::StoreCrash => {
                if !self.store_up {
                    return None;
                }
                self.handle.kill(self.hosts.store);
                self.store_up = false;
                let now = oracle.now();
                oracle.side.store_losses.push(now);
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Store],
                    settle + 1_000,
                    "store killed (data lost)",
                );
                (id, Undo::Restart(self.hosts.store, None))
            }
            FaultKind::LatencySpike => {
                if self.global_busy {
                    return None;
                }
                self.global_busy = true;
                let low = 20 + f.amount % 200;
                let high = low + 50 + (f.b as u64) % 1_500;
                self.net.update_config(|c| {
                    c.send_latency = Duration::from_millis(low)..Duration::from_millis(high)
                });
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Global],
                    settle,
                    &format!("latency {low}..{high} ms"),
                );
                (id, Undo::NetDefaults)
            }
            FaultKind::PacketLoss => {
                if self.global_busy {
                    return None;
                }
                self.global_busy = true;
                let rate = 0.02 + (f.amount as f64 / 1_000.0) * 0.28;
                self.net.update_config(|c| c.packet_loss_rate = rate);
                let id = oracle.fault_started(
                    f.kind,
                    vec![Entity::Global],
                    settle,
                    &format!("packet loss {rate:.2}"),
                );
                (id, Undo::NetDefaults)
            }
        };
        Some(result)
    }

    fn undo(&mut self, id: usize, undo: Undo) {
        match undo {
            Undo::Nothing => {}
            Undo::Storm(who) => {
                for phone in who {
                    self.ctl.storms[phone].notify_one();
                }
            }
            Undo::NodeStorm(who, node) => self.ctl.storm_to(&who, node),
            Undo::Restart(host, node) => {
                self.handle.restart(host);
                if let Some(k) = node {
                    self.node_up[k] = true;
                }
                if host == self.hosts.store {
                    self.store_up = true;
                }
                if let Some(j) = self.hosts.push_clients.iter().position(|h| *h == host) {
                    self.pc_up[j] = true;
                }
                if let Some(p) = self.hosts.phones.iter().position(|h| *h == host) {
                    self.phone_up[p] = true;
                }
            }
            Undo::Resume(host, k) => {
                self.handle.resume(host);
                self.node_up[k] = true;
            }
            Undo::Unclog(links) => {
                for (src, dst) in links {
                    self.net.unclog_link(src, dst);
                    self.clogged.remove(&(src, dst));
                }
            }
            Undo::UnclogNode(host) => self.net.unclog_node(host),
            Undo::Unstall(phone, user) => {
                self.stalled.remove(&phone);
                pushgate::sim_hooks::set_stalled(phone, false);
                let mut users = lock_std(&self.ctl.stalled_users);
                if let Some(i) = users.iter().position(|u| *u == user) {
                    users.remove(i);
                }
            }
            Undo::StoreFast => self.model.slow_ms.store(0, Ordering::Relaxed),
            Undo::Hear(k) => {
                lock_std(&self.model.deaf).remove(&k);
            }
            Undo::NetDefaults => {
                self.net
                    .update_config(|c| *c = madsim::net::Config::default());
                self.global_busy = false;
            }
        }
        lock(&self.sh).fault_ended(id);
    }

    /// Undoes every fault still in force, and makes sure nothing stays clogged.
    fn heal(&mut self) {
        for (id, undo) in std::mem::take(&mut self.active) {
            self.undo(id, undo);
        }
        for (src, dst) in std::mem::take(&mut self.clogged) {
            self.net.unclog_link(src, dst);
        }
        let all: Vec<NodeId> = [self.hosts.store]
            .into_iter()
            .chain(self.hosts.nodes.iter().copied())
            .chain(self.hosts.phones.iter().copied())
            .chain(self.hosts.push_clients.iter().copied())
            .collect();
        for host in all {
            self.net.unclog_node(host);
        }
        self.net
            .update_config(|c| *c = madsim::net::Config::default());
        for phone in std::mem::take(&mut self.stalled) {
            pushgate::sim_hooks::set_stalled(phone, false);
        }
        lock_std(&self.ctl.stalled_users).clear();
        self.model.heal();
    }
}

/// What a run produced.
pub struct RunReport {
    pub seed: u64,
    pub params: String,
    pub violations: Vec<String>,
    pub excerpt: String,
    pub counts: crate::oracle::Counts,
    pub virtual_ms: u64,
    pub pushes: usize,
    pub broadcasts: usize,
    pub connections: usize,
}

/// Builds the world of the current seed, runs it, checks it.
pub async fn run() -> RunReport {
    let handle = Handle::current();
    let seed = handle.seed();
    let params = Arc::new(Params::draw(seed));
    let trace_on = std::env::var("PUSHGATE_SIM_TRACE").is_ok_and(|v| !v.is_empty() && v != "0");
    let sh: Shared = Arc::new(Mutex::new(Oracle::new(params.clone(), trace_on)));
    {
        let mut o = lock(&sh);
        o.push_client_incarnation.push(0); // the liveness checker's PushClient
        o.trace(format!("seed {seed}: {params}"));
        for (i, p) in params.phones.iter().enumerate() {
            o.trace(format!(
                "phone{i}: {} os={} home=node{} ack={:?} hb={}",
                p.device_id, p.os_name, p.home_node, p.ack, p.max_heartbeat_ms
            ));
        }
    }
    let ctl = Arc::new(Control {
        phase: AtomicU8::new(0),
        wakeups: (0..params.phones.len() + params.push_clients)
            .map(|_| Arc::new(Notify::new()))
            .collect(),
        storms: (0..params.phones.len())
            .map(|_| Arc::new(Notify::new()))
            .collect(),
        storm_targets: (0..params.phones.len())
            .map(|_| AtomicUsize::new(usize::MAX))
            .collect(),
        sessions: Mutex::new(vec![None; params.phones.len()]),
        servers: (0..params.nodes).map(|_| ServerSlot::default()).collect(),
        stalled_users: Mutex::new(Vec::new()),
    });
    pushgate::sim_hooks::reset();
    let model = StoreModel::new(sh.clone(), params.clone());
    let hosts = build_hosts(&handle, &params, &sh, &ctl, &model);
    // Before any node task runs: a node reads its skewed clock from its first instant.
    if let Some(clock) = &params.clock {
        for (host, (rate_ppm, offset_ms)) in hosts.nodes.iter().zip(&clock.nodes) {
            pushgate::sim_hooks::set_clock_skew(
                *host,
                pushgate::sim_hooks::ClockSkew {
                    rate_ppm: *rate_ppm,
                    offset_ms: *offset_ms,
                },
            );
        }
        *lock(&sh).counts.faults.entry("clock-skew").or_default() += 1;
    }
    let _log = crate::capture::install();

    let mut rng = StdRng::seed_from_u64(seed ^ 0xFA17);
    let plan = plan_faults(&params, &mut rng);
    let net = NetSim::current();
    let mut injector = Injector {
        handle: handle.clone(),
        net,
        params: params.clone(),
        sh: sh.clone(),
        ctl: ctl.clone(),
        node_up: vec![true; params.nodes],
        store_up: true,
        pc_up: vec![true; params.push_clients],
        phone_up: vec![true; params.phones.len()],
        global_busy: false,
        clogged: BTreeSet::new(),
        active: Vec::new(),
        hosts,
        model,
        stalled: BTreeSet::new(),
    };
    let start = tokio::time::Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);

    // Fault phase: apply and undo on schedule.
    let mut timeline: Vec<(u64, usize, bool)> = Vec::new();
    for (i, f) in plan.iter().enumerate() {
        timeline.push((f.at, i, true));
        timeline.push((f.at + f.duration, i, false));
    }
    timeline.sort();
    let mut applied: HashMap<usize, usize> = HashMap::new();
    let mut samples = 0u64;
    for (when, i, apply) in timeline {
        if when >= params.fault_window_ms {
            break;
        }
        sample_until(&sh, &ctl, at(when), &mut samples).await;
        if apply {
            if let Some((id, undo)) = injector.apply(&plan[i]) {
                applied.insert(i, injector.active.len());
                injector.active.push((id, undo));
            }
        } else if let Some(slot) = applied.remove(&i) {
            let (id, undo) =
                std::mem::replace(&mut injector.active[slot], (usize::MAX, Undo::Nothing));
            if id != usize::MAX {
                injector.undo(id, undo);
            }
        }
    }
    sample_until(&sh, &ctl, at(params.fault_window_ms), &mut samples).await;
    injector.active.retain(|(id, _)| *id != usize::MAX);

    // Heal everything, let the world settle, check liveness.
    injector.heal();
    {
        let mut o = lock(&sh);
        let now = o.now();
        o.healed_at = Some(now);
        o.trace("HEALED: faults stopped, everything restarted and unclogged; calm phase");
    }
    ctl.set_phase(Phase::Calm);
    sample_until(
        &sh,
        &ctl,
        at(params.fault_window_ms + HEAL_MS),
        &mut samples,
    )
    .await;
    let checker = injector.hosts.checker.clone();
    let liveness = checker.spawn(liveness_checks(sh.clone(), ctl.clone(), params.clone()));
    if let Err(error) = liveness.await {
        lock(&sh).liveness_violation(format!("the liveness checker failed: {error}"));
    }

    // Everybody leaves: nothing may stay behind in the nodes.
    lock(&sh).trace("STOP: phones and PushClients disconnect");
    ctl.set_phase(Phase::Stop);
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    resource_checks(&sh, &ctl, &params).await;

    let mut o = lock(&sh);
    o.final_checks();
    let virtual_ms = o.now();
    RunReport {
        seed,
        params: params.to_string(),
        violations: o.violations.clone(),
        excerpt: o.trace_excerpt(60, 20),
        counts: o.counts.clone(),
        virtual_ms,
        pushes: o.pushes.len(),
        broadcasts: o.broadcasts.len(),
        connections: o.conns.len(),
    }
}

/// Waits until `until`, sampling the nodes' counters every second (bounded queues).
async fn sample_until(sh: &Shared, ctl: &Control, until: tokio::time::Instant, samples: &mut u64) {
    loop {
        let now = tokio::time::Instant::now();
        if now >= until {
            return;
        }
        let step = (until - now).min(Duration::from_millis(1_000));
        tokio::time::sleep(step).await;
        *samples += 1;
        if !(*samples).is_multiple_of(5) {
            continue;
        }
        for (k, slot) in ctl.servers.iter().enumerate() {
            let handle = lock_std(&slot.handle).clone();
            let Some(handle) = handle else { continue };
            let Ok(Ok(stats)) =
                tokio::time::timeout(Duration::from_millis(200), handle.stats()).await
            else {
                continue;
            };
            let mut o = lock(sh);
            o.resource_checked();
            if stats.pending_store_requests > 10_000
                || stats.pending_pushes > 10_000
                || stats.in_flight > 10_000
                || stats.broadcasts > 64
            {
                o.resource_violation(format!("node{k} queues grow: {stats:?}"));
            }
        }
    }
}

/// Liveness: every online phone's store route names its node and is online, no online route
/// names a connection that is gone, and a push to every online user succeeds.
async fn liveness_checks(sh: Shared, ctl: Arc<Control>, params: Arc<Params>) {
    let settled = lock(&sh).settled_phones();
    {
        let mut o = lock(&sh);
        o.trace(format!(
            "LIVENESS: {} phones online: {settled:?}",
            settled.len()
        ));
        let offline: Vec<usize> = (0..params.phones.len())
            .filter(|p| !settled.iter().any(|s| s.0 == *p))
            .collect();
        if !offline.is_empty() {
            o.liveness_violation(format!(
                "phones {offline:?} are not connected and bound {HEAL_MS} ms after healing"
            ));
        } else {
            o.liveness_checked();
        }
    }
    let mut store = match StoreClient::connect(params.store_addr(), Duration::from_secs(2)).await {
        Ok(store) => store,
        Err(error) => {
            return lock(&sh)
                .liveness_violation(format!("cannot reach the store after healing: {error}"))
        }
    };
    // Every (user, type) route in the store against the phones' state.
    let mut routes = BTreeMap::new();
    for user in params.all_users() {
        for ct in [ClientType::Mobile, ClientType::Pc, ClientType::Web] {
            match store
                .get_route(&user, Some(ct), Duration::from_secs(2))
                .await
            {
                Ok(Some((_, route))) => {
                    routes.insert((user.clone(), ct.code()), route);
                }
                Ok(None) => {}
                Err(error) => {
                    return lock(&sh)
                        .liveness_violation(format!("store read failed after healing: {error}"))
                }
            }
        }
    }
    let mut local: BTreeMap<(String, i32), Vec<usize>> = BTreeMap::new();
    for (k, slot) in ctl.servers.iter().enumerate() {
        let handle = lock_std(&slot.handle).clone();
        let Some(handle) = handle else {
            lock(&sh).liveness_violation(format!("node{k} is not running after healing"));
            continue;
        };
        for user in params.all_users() {
            match tokio::time::timeout(Duration::from_secs(1), handle.user(user.clone())).await {
                Ok(Ok(view)) => {
                    for route in view.local {
                        local
                            .entry((user.clone(), route.client_type))
                            .or_default()
                            .push(k);
                    }
                }
                _ => lock(&sh).liveness_violation(format!("node{k} does not answer after healing")),
            }
        }
    }
    {
        let mut o = lock(&sh);
        for (phone, conn, user, node) in &settled {
            let ct = params.phones[*phone].client_type;
            let host = params.node_ip(*node);
            match routes.get(&(user.clone(), ct)) {
                Some(route) if route.is_online() && route.host == host => o.liveness_checked(),
                other => o.liveness_violation(format!("phone{phone} c{conn} is bound as {user} (type {ct}) on node{node}, but the store route is {other:?}")),
            }
            match local.get(&(user.clone(), ct)) {
                Some(at) if at == &vec![*node] => o.liveness_checked(),
                other => o.liveness_violation(format!("phone{phone} c{conn} is bound as {user} (type {ct}) on node{node}, but nodes {other:?} hold a local route")),
            }
        }
        for ((user, ct), route) in &routes {
            if !route.is_online() {
                continue;
            }
            let holder = settled.iter().find(|(phone, _, u, node)| {
                u == user
                    && params.phones[*phone].client_type == *ct
                    && params.node_ip(*node) == route.host
            });
            if holder.is_some() {
                o.liveness_checked();
                continue;
            }
            // A node that crashed after this route was written never cleaned it (nothing can
            // until a push finds it stale): not a liveness failure of the survivors.
            let node = params.node_of_host(&route.host);
            // (When that very route was written, if the store model saw it; a later bind of the
            // same user on the restarted node does not make the old route its business.)
            let written = o
                .side
                .routes_written
                .get(&(user.clone(), *ct, route.conn_id.clone(), route.version))
                .copied();
            // The bind the route names happened before its node crashed, whenever its write
            // landed: a write still on its way when the node died lands after the crash.
            // (Read on the node's clock: with skewed clocks, up to the clocks' disagreement
            // off the true time.)
            let bound_at = o
                .bind_time_of_version(route.version)
                .saturating_sub(o.clock_slack_ms());
            let crashed_after = node.is_some_and(|k| {
                let last = written.unwrap_or_else(|| o.last_bind_on(user, *ct, k).unwrap_or(0));
                o.node_kills
                    .iter()
                    .any(|(n, t)| *n == k && *t >= last.min(bound_at))
            });
            // A store that failed over to a replica without the last writes can hold a route
            // whose offline mark (or newer route) it lost: nothing marks it again until a push
            // finds it stale on its node (lazy repair, as in MPush). Not a liveness failure of
            // the nodes (see the report: a gap for issue 11's failover convergence).
            let store_lost_after = o.side.resurrected.iter().any(|(u, c, conn, version)| {
                u == user && c == ct && *conn == route.conn_id && *version == route.version
            });
            if crashed_after || store_lost_after {
                // ...unless a node was handed this very route as its own after it restarted
                // (a push found it stale there) and never marked it offline.
                let found_stale = node.and_then(|k| {
                    o.side
                        .route_reads
                        .iter()
                        .find(|r| {
                            r.node == k
                                && r.user == *user
                                && r.route.as_ref().is_some_and(|(rct, seen)| {
                                    rct.code() == *ct
                                        && seen.host == route.host
                                        && seen.conn_id == route.conn_id
                                        && seen.version == route.version
                                })
                                && !o.node_kills.iter().any(|(n, t)| *n == k && *t >= r.at)
                                && !o.side.store_losses.iter().any(|t| *t >= r.at)
                            // ...and the node acted on it: the push that read it ended offline
                            // (a read answered after its push timed out is dropped).
                            && o.side.offline_answers.iter().any(|(t, n, u)| {
                                *n == k && u == user && *t >= r.at && *t <= r.at + 3_000
                            })
                        })
                        .map(|r| r.at)
                });
                o.checked("8-stale-route-cleaned");
                if let Some(at) = found_stale {
                    o.violate("8-stale-route-cleaned", format!("the store route of {user} (type {ct}) names node {node:?} conn {:?}, which the store handed to that node as its own at {at} ms (a stale route: nobody holds it), and it is still online", route.conn_id));
                }
                o.liveness_checked();
                continue;
            }
            o.liveness_violation(format!("the store route of {user} (type {ct}) is online and names node {:?} conn {:?}, but no phone is bound there", node, route.conn_id));
        }
        for ((user, ct), nodes) in &local {
            if !settled.iter().any(|(phone, _, u, node)| {
                u == user && params.phones[*phone].client_type == *ct && nodes.contains(node)
            }) {
                o.liveness_violation(format!("nodes {nodes:?} hold a local route for {user} (type {ct}) but no phone is bound there"));
            }
        }
    }
    // A push to every online user through the gateway its route names succeeds.
    let pc = params.push_clients;
    let clients: actors::Clients = Arc::new(Mutex::new(BTreeMap::new()));
    for (phone, _conn, user, node) in &settled {
        let ct = params.phones[*phone].client_type;
        let via = routes
            .get(&(user.clone(), ct))
            .and_then(|r| params.node_of_host(&r.host))
            .unwrap_or(*node);
        let spec = PushSpec {
            user: user.clone(),
            client_type: Some(ct),
            ack: AckMode::None,
            timeout_ms: 3_000,
            node: via,
        };
        let result =
            actors::single_push(sh.clone(), params.clone(), clients.clone(), pc, spec, true).await;
        match result {
            Some((
                _,
                Outcome::Status {
                    status: PushStatus::Success,
                    ..
                },
            )) => lock(&sh).liveness_checked(),
            other => lock(&sh).liveness_violation(format!(
                "push to online {user} (phone{phone} on node{node}) via node{via} gave {other:?}"
            )),
        }
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let mut o = lock(&sh);
    let liveness: Vec<(usize, String)> = o
        .pushes
        .iter()
        .filter(|p| {
            p.liveness
                && p.outcome.as_ref().is_some_and(|x| {
                    matches!(
                        x,
                        Outcome::Status {
                            status: PushStatus::Success,
                            ..
                        }
                    )
                })
        })
        .map(|p| (p.id, p.user.clone()))
        .collect();
    for (id, user) in liveness {
        let content = format!("p-{id}");
        let got = o
            .conns
            .iter()
            .any(|c| c.closed.is_none() && c.received.contains_key(&content));
        if got {
            o.liveness_checked();
        } else {
            o.liveness_violation(format!(
                "liveness push {content} to {user} succeeded but its phone did not receive it"
            ));
        }
    }
    lock_std(&clients).clear();
}

/// After everybody left: no connection, push, broadcast, ACK wait or store request remains.
async fn resource_checks(sh: &Shared, ctl: &Control, params: &Params) {
    for (k, slot) in ctl.servers.iter().enumerate() {
        let handle = lock_std(&slot.handle).clone();
        let Some(handle) = handle else { continue };
        let stats = match tokio::time::timeout(Duration::from_secs(1), handle.stats()).await {
            Ok(Ok(stats)) => stats,
            _ => {
                lock(sh).resource_violation(format!("node{k} does not answer at the end"));
                continue;
            }
        };
        let live = slot.live_connections.load(Ordering::Relaxed);
        let mut o = lock(sh);
        if stats.connections != 0
            || stats.gateway_connections != 0
            || stats.bound_routes != 0
            || stats.pending_pushes != 0
            || stats.broadcasts != 0
            || stats.in_flight != 0
            || stats.pending_store_requests != 0
            || live != 0
        {
            o.resource_violation(format!("node{k} still holds work after every client left (live connection tasks {live}): {stats:?}"));
        } else {
            o.resource_checked();
        }
    }
    let _ = params;
}
