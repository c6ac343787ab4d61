//! The shape of one world, drawn from the seed (swarm testing: sizes, rates and which fault
//! kinds are switched on differ from seed to seed).
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt;

/// Every kind of fault the schedule can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Several phones drop their connection and reconnect at once (same or another node).
    ReconnectStorm,
    /// A pushgate node is killed (stale routes stay in the store) and restarted later.
    NodeCrash,
    /// A pushgate node freezes (no task runs) and resumes.
    NodePause,
    /// A PushClient dies with pushes in flight (its gateway connections close) and restarts.
    PushClientCrash,
    /// A phone is cut off from every node (both directions).
    PhonePartition,
    /// One direction between a phone and a node is clogged.
    PhoneOneWay,
    /// A node is cut off from the store (both directions).
    NodeStorePartition,
    /// One direction between a node and the store is clogged.
    NodeStoreOneWay,
    /// A PushClient is cut off from one node (one or both directions).
    PushClientPartition,
    /// The store node is unreachable (clogged) for a while; its data survives.
    StoreOutage,
    /// The store node crashes (its data is lost) and restarts empty.
    StoreCrash,
    /// Every packet is slow for a while.
    LatencySpike,
    /// Packets are lost (TCP retransmits: extra delay, and failed connects).
    PacketLoss,
    /// A phone process dies (its connection drops) and restarts with its stored session.
    PhoneCrash,
    /// A phone stops reading for seconds: its node's queue to it fills (high-water mark:
    /// pushes to it fail "not writable"; hard limit: the node closes it).
    SlowReader,
    /// The store fails over to a replica that lost the last writes (a snapshot some ms old).
    StoreFailover,
    /// The store answers slowly (each reply and notice delayed on its own: reordered).
    StoreSlow,
    /// Kick notices to one node are lost (its pub/sub subscriber is away).
    KickNoticeLoss,
    /// Most phones drop their connection and reconnect to one node at once (twice: when it
    /// starts and when it ends), the others left alone on it.
    NodeStorm,
}

impl FaultKind {
    /// The kinds drawn first (the newer ones are drawn after the rest of the world, so the
    /// shape of a seed's world did not change when they were added).
    pub const ORIGINAL: [FaultKind; 14] = [
        FaultKind::ReconnectStorm,
        FaultKind::NodeCrash,
        FaultKind::NodePause,
        FaultKind::PushClientCrash,
        FaultKind::PhonePartition,
        FaultKind::PhoneOneWay,
        FaultKind::NodeStorePartition,
        FaultKind::NodeStoreOneWay,
        FaultKind::PushClientPartition,
        FaultKind::StoreOutage,
        FaultKind::StoreCrash,
        FaultKind::LatencySpike,
        FaultKind::PacketLoss,
        FaultKind::PhoneCrash,
    ];

    /// Kinds added with the store model and the slow readers.
    pub const ADDED: [FaultKind; 4] = [
        FaultKind::SlowReader,
        FaultKind::StoreFailover,
        FaultKind::StoreSlow,
        FaultKind::KickNoticeLoss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ReconnectStorm => "reconnect-storm",
            FaultKind::NodeCrash => "node-crash",
            FaultKind::NodePause => "node-pause",
            FaultKind::PushClientCrash => "pushclient-crash",
            FaultKind::PhonePartition => "phone-partition",
            FaultKind::PhoneOneWay => "phone-one-way-clog",
            FaultKind::NodeStorePartition => "node-store-partition",
            FaultKind::NodeStoreOneWay => "node-store-one-way-clog",
            FaultKind::PushClientPartition => "pushclient-partition",
            FaultKind::StoreOutage => "store-outage",
            FaultKind::StoreCrash => "store-crash",
            FaultKind::LatencySpike => "latency-spike",
            FaultKind::PacketLoss => "packet-loss",
            FaultKind::PhoneCrash => "phone-crash",
            FaultKind::SlowReader => "slow-reader",
            FaultKind::StoreFailover => "store-failover",
            FaultKind::StoreSlow => "store-slow",
            FaultKind::KickNoticeLoss => "kick-notice-loss",
            FaultKind::NodeStorm => "node-storm",
        }
    }
}

/// How a phone's application acknowledges BIZ_ACK pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckBehavior {
    /// At once.
    Prompt,
    /// After a random delay up to this many ms (often later than the push's timeout).
    Slow(u64),
    /// Never, not even AUTO_ACK pushes (the client's `AckPolicy::None`).
    Never,
}

/// One phone.
#[derive(Debug, Clone)]
pub struct PhoneSpec {
    pub device_id: String,
    pub os_name: &'static str,
    /// Wire code of the client type the os name gives (1 mobile, 2 PC, 3 web).
    pub client_type: i32,
    /// The user it binds in the calm phase (unique per phone).
    pub primary_user: String,
    pub home_node: usize,
    pub ack: AckBehavior,
    /// Heartbeat it asks for.
    pub max_heartbeat_ms: i32,
    /// Mean time a connection is kept before the phone does something else (fault phase).
    pub churn_mean_ms: u64,
    /// Probability that a bind is for a shared user (two phones of one user: kicks).
    pub shared_bind_prob: f64,
}

/// Skewed node clocks (`clock-skew`): each node's clock runs fast or slow (its timers fire
/// early or late) and its wall clock is off by an offset, so the bind versions it stamps are
/// off too.
#[derive(Debug, Clone)]
pub struct ClockPlan {
    /// The bound of every node's rate skew, in parts per million.
    pub max_rate_ppm: i64,
    /// The bound of every node's wall-clock offset, in ms.
    pub max_offset_ms: i64,
    /// Per node: (rate skew in ppm, wall-clock offset in ms).
    pub nodes: Vec<(i64, i64)>,
}

impl ClockPlan {
    /// How far apart two nodes' wall clocks can read at any moment of the run: a node re-reads
    /// its wall clock (off the true time by at most the offset bound) every
    /// `WALL_CLOCK_READ_INTERVAL_MS` and runs on its skewed monotonic clock in between, so
    /// twice the offset bound plus twice the drift over one interval (rounded up): at most
    /// 2 × (250 + 30) + 1 = 561 ms, as NTP keeps a real cluster's clocks.
    pub fn max_disagreement_ms(&self) -> u64 {
        let interval_ms = i128::from(pushgate::node_clock::WALL_CLOCK_READ_INTERVAL_MS);
        let drift = (interval_ms * i128::from(self.max_rate_ppm) + 999_999) / 1_000_000;
        u64::try_from(2 * (i128::from(self.max_offset_ms) + drift) + 1).unwrap_or(u64::MAX)
    }
}

/// Everything drawn from the seed.
#[derive(Debug, Clone)]
pub struct Params {
    pub seed: u64,
    pub nodes: usize,
    pub phones: Vec<PhoneSpec>,
    pub shared_users: usize,
    /// Users nobody binds (their pushes end offline).
    pub ghost_users: usize,
    pub push_clients: usize,
    /// Mean gap between two requests of one PushClient.
    pub push_gap_mean_ms: u64,
    pub broadcast_prob: f64,
    pub fault_window_ms: u64,
    pub enabled_faults: Vec<FaultKind>,
    pub fault_count: usize,
    pub store_timeout_ms: u64,
    pub min_heartbeat_ms: u64,
    pub max_heartbeat_ms: u64,
    pub global_flow_limit: u64,
    pub broadcast_flow_limit: u64,
    pub tags: Vec<String>,
    /// The nodes' queue marks per phone (`net.write_*_bytes`): tiny in some seeds, so slow
    /// readers reach them.
    pub write_high_water_bytes: usize,
    pub write_hard_limit_bytes: usize,
    /// Skewed node clocks, when that fault is on (drawn after everything else).
    pub clock: Option<ClockPlan>,
}

pub const OS_NAMES: [(&str, i32); 5] = [
    ("android", 1),
    ("ios", 1),
    ("windows", 2),
    ("mac", 2),
    ("web", 3),
];

impl Params {
    /// The world of `seed`.
    pub fn draw(seed: u64) -> Self {
        // A stream of its own: independent of madsim's random draws.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5157_5EED_0000_0001);
        let nodes = rng.gen_range(2..=5);
        let phone_count = rng.gen_range(4..=16);
        let shared_users = rng.gen_range(1..=3);
        let churn_mean_ms = *[3_000u64, 8_000, 20_000]
            .get(rng.gen_range(0..3))
            .unwrap_or(&8_000);
        let shared_bind_prob = [0.05, 0.25, 0.5][rng.gen_range(0..3)];
        let phones = (0..phone_count)
            .map(|i| {
                let (os_name, client_type) = OS_NAMES[rng.gen_range(0..OS_NAMES.len())];
                let ack = match rng.gen_range(0..10) {
                    0..=4 => AckBehavior::Prompt,
                    5..=7 => AckBehavior::Slow(rng.gen_range(100..6_000)),
                    _ => AckBehavior::Never,
                };
                PhoneSpec {
                    device_id: format!("dev-{i}"),
                    os_name,
                    client_type,
                    primary_user: format!("u{i}"),
                    home_node: i % nodes,
                    ack,
                    max_heartbeat_ms: rng.gen_range(2_000..=5_000),
                    churn_mean_ms,
                    shared_bind_prob,
                }
            })
            .collect();
        let mut enabled_faults: Vec<FaultKind> = FaultKind::ORIGINAL
            .into_iter()
            .filter(|_| rng.gen_bool(0.5))
            .collect();
        if enabled_faults.is_empty() {
            enabled_faults.push(FaultKind::ORIGINAL[rng.gen_range(0..FaultKind::ORIGINAL.len())]);
        }
        let fault_window_ms = rng.gen_range(15_000..=35_000);
        let mut params = Params {
            seed,
            nodes,
            phones,
            shared_users,
            ghost_users: rng.gen_range(1..=3),
            push_clients: rng.gen_range(1..=3),
            push_gap_mean_ms: *[30u64, 100, 300].get(rng.gen_range(0..3)).unwrap_or(&100),
            broadcast_prob: [0.0, 0.05, 0.15][rng.gen_range(0..3)],
            fault_window_ms,
            fault_count: rng.gen_range(2..=10),
            enabled_faults,
            store_timeout_ms: rng.gen_range(500..=2_000),
            min_heartbeat_ms: 2_000,
            max_heartbeat_ms: 5_000,
            global_flow_limit: if rng.gen_bool(0.2) {
                rng.gen_range(5..=50)
            } else {
                5_000
            },
            broadcast_flow_limit: if rng.gen_bool(0.2) {
                rng.gen_range(2..=10)
            } else {
                3_000
            },
            tags: (0..4).map(|i| format!("t{i}")).collect(),
            write_high_water_bytes: 64 * 1024,
            write_hard_limit_bytes: 1024 * 1024,
            clock: None,
        };
        // Drawn last, from a stream of their own: the rest of the world is as before.
        let mut more = StdRng::seed_from_u64(seed ^ 0x5157_5EED_0000_0002);
        for kind in FaultKind::ADDED {
            if more.gen_bool(0.4) {
                params.enabled_faults.push(kind);
            }
        }
        let tiny_queues = more.gen_bool(0.3);
        if tiny_queues || params.enabled_faults.contains(&FaultKind::SlowReader) {
            // A few PUSH frames (about 60 bytes each) reach the mark.
            let high = more.gen_range(100..800);
            params.write_high_water_bytes = high;
            params.write_hard_limit_bytes = high * more.gen_range(3..10);
        }
        if params.global_flow_limit == 5_000 && more.gen_bool(0.15) {
            params.global_flow_limit = more.gen_range(3..=20);
        }
        // Drawn after those, from a stream of its own: seeds without it are as before.
        let mut clocks = StdRng::seed_from_u64(seed ^ 0x5157_5EED_0000_0003);
        if clocks.gen_bool(0.4) {
            let max_rate_ppm = *[2_000i64, 10_000, 30_000]
                .get(clocks.gen_range(0..3))
                .unwrap_or(&10_000);
            let max_offset_ms = clocks.gen_range(1i64..=250);
            let nodes = (0..params.nodes)
                .map(|_| {
                    (
                        clocks.gen_range(-max_rate_ppm..=max_rate_ppm),
                        clocks.gen_range(-max_offset_ms..=max_offset_ms),
                    )
                })
                .collect();
            params.clock = Some(ClockPlan {
                max_rate_ppm,
                max_offset_ms,
                nodes,
            });
        }
        if clocks.gen_bool(0.4) {
            params.enabled_faults.push(FaultKind::NodeStorm);
        }
        params
    }

    pub fn node_ip(&self, node: usize) -> String {
        format!("10.0.1.{}", node + 1)
    }

    pub fn phone_ip(&self, phone: usize) -> String {
        format!("10.0.2.{}", phone + 1)
    }

    pub fn push_client_ip(&self, client: usize) -> String {
        format!("10.0.3.{}", client + 1)
    }

    pub fn store_addr(&self) -> std::net::SocketAddr {
        "10.0.0.1:7000".parse().expect("valid address")
    }

    pub fn connect_addr(&self, node: usize) -> std::net::SocketAddr {
        format!("{}:3000", self.node_ip(node))
            .parse()
            .expect("valid address")
    }

    pub fn gateway_addr(&self, node: usize) -> std::net::SocketAddr {
        format!("{}:3001", self.node_ip(node))
            .parse()
            .expect("valid address")
    }

    /// The node whose gateway host is `host`.
    pub fn node_of_host(&self, host: &str) -> Option<usize> {
        (0..self.nodes).find(|n| self.node_ip(*n) == host)
    }

    /// Every user id a push can target: primaries, shared users, ghosts.
    pub fn all_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.phones.iter().map(|p| p.primary_user.clone()).collect();
        users.extend((0..self.shared_users).map(|i| format!("s{i}")));
        users.extend((0..self.ghost_users).map(|i| format!("g{i}")));
        users
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<&str> = self.enabled_faults.iter().map(|k| k.name()).collect();
        write!(
            f,
            "nodes={} phones={} shared_users={} ghosts={} pushclients={} push_gap={}ms bcast={} window={}ms faults={}x[{}] store_timeout={}ms flow={}/{} queue={}/{}",
            self.nodes,
            self.phones.len(),
            self.shared_users,
            self.ghost_users,
            self.push_clients,
            self.push_gap_mean_ms,
            self.broadcast_prob,
            self.fault_window_ms,
            self.fault_count,
            faults.join(","),
            self.store_timeout_ms,
            self.global_flow_limit,
            self.broadcast_flow_limit,
            self.write_high_water_bytes,
            self.write_hard_limit_bytes,
        )?;
        if let Some(clock) = &self.clock {
            let nodes: Vec<String> = clock
                .nodes
                .iter()
                .map(|(rate, offset)| format!("{rate:+}ppm/{offset:+}ms"))
                .collect();
            write!(
                f,
                " clock-skew=±{}ppm/±{}ms[{}]",
                clock.max_rate_ppm,
                clock.max_offset_ms,
                nodes.join(",")
            )?;
        }
        Ok(())
    }
}
