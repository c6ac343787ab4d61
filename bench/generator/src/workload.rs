//! The three workloads, the same for every target:
//!
//! - **idle**: open N receivers (pushgate: handshake + bind; the peers: CONNECT + SUBSCRIBE to
//!   a per-user topic), `connect_concurrency` at a time; report connects per second and the
//!   server's RSS growth per connection (VmRSS before, and after a settling pause).
//! - **storm**: a reconnect storm: N phones connect (pushgate: handshake + bind; the peers:
//!   CONNECT + SUBSCRIBE) with `storm_in_flight` connects under way at once, none given up on
//!   a failure; report each phone's time to bind, the failed connects and the kernel's
//!   listen-queue overflows and SYN retransmissions over the point.
//! - **single**: one sender, U receivers, message k to user k mod U. Closed loop: a fixed
//!   number of messages in flight (sent, and not yet both received by the phone and — for
//!   pushgate — answered with a status). Open loop: a fixed rate, each message stamped with
//!   its *intended* send time, so a server that falls behind shows it in the latencies (no
//!   coordinated omission). pushgate runs each point in every ack mode asked for.
//! - **fanout**: N receivers; closed loop over broadcasts (`window` broadcasts in flight, each
//!   complete when all N phones have it); deliveries per second, per-delivery latency and the
//!   time until the last phone had each broadcast.
//! - **interference**: single pushes at a fixed rate (open loop) to the single-push users while
//!   broadcasts to every fan-out phone (the largest fan-out size) run back to back, one after
//!   the other; the single pushes' status and delivery latencies show how much the broadcasts
//!   hold them up.
//!
//! Every point runs `warmup_ms`, then measures for `measure_ms`, then stops sending and waits
//! at most `drain_ms` for what is in flight. CPU use of both processes is taken over the
//! measurement window.
use crate::latency::Latency;
use crate::pacer::Pacer;
use crate::payload::{now_ns, Stamp, PAYLOAD_BYTES};
use crate::point::{Point, Workload};
use crate::resources::{rss_bytes, CpuMark};
use crate::store_stats;
use crate::targets::{user_address, Endpoints, Receiver, Role, Sender, TargetKind};
use crate::tracker::{Counts, Tracker, Window, BACKGROUND_SEQ};
use anyhow::Context;
use pushgate_core::push::AckMode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Most messages an open-loop point keeps in flight before it stops sending (bounded memory
/// when a target falls hopelessly behind; such messages are reported as `not_sent`).
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 200_000;
/// How long the closed loop sleeps at most before it looks at the clock again.
const CLOSED_LOOP_POLL: Duration = Duration::from_millis(20);
/// A publisher's buffer is written once it holds this much, even mid-batch: the same bound as
/// the PushClient writer's coalescing (256 KiB per write).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A drain past `drain_ms` ends once nothing completed for this long.
const DRAIN_STALL: Duration = Duration::from_millis(500);

/// Which workloads and points to run on one target.
#[derive(Debug, Clone)]
pub struct Plan {
    pub ends: Endpoints,
    pub server_pid: Option<u32>,
    pub idle_connections: usize,
    /// Storm: phones, and connects under way at once.
    pub storm_phones: usize,
    pub storm_in_flight: usize,
    pub users: usize,
    pub windows: Vec<usize>,
    pub rates_per_s: Vec<f64>,
    pub ack_modes: Vec<AckMode>,
    pub fanout_sizes: Vec<usize>,
    pub fanout_windows: Vec<usize>,
    /// Interference: the single pushes' offered rate (messages/s).
    pub interference_rate_per_s: f64,
    pub warmup_ms: u64,
    pub measure_ms: u64,
    pub drain_ms: u64,
    pub connect_concurrency: usize,
    /// Pause after opening or closing many connections, so the server settles (and its RSS
    /// is read after it).
    pub settle_ms: u64,
    /// Stop a single-push point after this many messages; 0: no limit.
    pub max_messages: u64,
    /// Stop a fan-out point after this many broadcasts; 0: no limit.
    pub max_broadcasts: u64,
    pub idle: bool,
    pub storm: bool,
    pub single: bool,
    pub fanout: bool,
    pub interference: bool,
    /// `host:port` of the Redis whose `INFO commandstats` is read around each point.
    pub redis_stats: Option<String>,
    /// The name the points carry (the target's, or `--label`).
    pub label: String,
    /// Where the fan-out receivers run ([`crate::bulk_thread`]); `None`: beside the rest.
    pub fan_runtime: Option<tokio::runtime::Handle>,
}

/// Redis's command counts now, when asked for.
fn store_mark(plan: &Plan) -> anyhow::Result<Option<store_stats::Calls>> {
    plan.redis_stats
        .as_deref()
        .map(store_stats::snapshot)
        .transpose()
}

/// Fills the point's store calls from `before` to now; `ops` is what they are divided by.
fn store_since(
    plan: &Plan,
    point: &mut Point,
    before: Option<store_stats::Calls>,
    ops: u64,
) -> anyhow::Result<()> {
    if let (Some(before), Some(after)) = (before, store_mark(plan)?) {
        point.store_calls = store_stats::diff(&before, &after);
        let total: u64 = point.store_calls.values().sum();
        point.store_calls_per_op = (ops > 0).then(|| total as f64 / ops as f64);
    }
    Ok(())
}

/// Runs the plan; each point is printed as it finishes.
pub async fn run(plan: &Plan) -> anyhow::Result<Vec<Point>> {
    let tracker = Arc::new(Tracker::new());
    let mut points = Vec::new();
    let target = plan.ends.kind;

    if plan.idle && plan.idle_connections > 0 {
        let mark = store_mark(plan)?;
        let mut point = idle_point(plan, &tracker).await?;
        store_since(plan, &mut point, mark, plan.idle_connections as u64)?;
        print_point(&point);
        points.push(point);
    }
    if plan.storm && plan.storm_phones > 0 {
        let mark = store_mark(plan)?;
        let mut point = storm_point(plan, &tracker).await?;
        store_since(plan, &mut point, mark, plan.storm_phones as u64)?;
        print_point(&point);
        points.push(point);
    }
    if !(plan.single || plan.fanout || plan.interference) {
        return Ok(points);
    }
    let mut sender = Sender::connect(plan.ends, tracker.clone()).await?;
    let mut users = Vec::new();
    if plan.single {
        users = connect_many(plan, Role::User, 0..plan.users, &tracker)
            .await
            .context("connecting the single-push receivers")?;
        let acks: Vec<AckMode> = if target == TargetKind::Pushgate {
            plan.ack_modes.clone()
        } else {
            vec![AckMode::None]
        };
        let addresses: Vec<String> = (0..plan.users)
            .map(|n| user_address(target, Role::User, n))
            .collect();
        for &ack in &acks {
            for &window in &plan.windows {
                let shape = Shape::Closed(window);
                let mark = store_mark(plan)?;
                let mut point =
                    single_point(plan, &tracker, &mut sender, &addresses, shape, ack, None)
                        .await
                        .with_context(|| format!("single, {window} in flight"))?;
                let sent = point.sent;
                store_since(plan, &mut point, mark, sent)?;
                print_point(&point);
                points.push(point);
            }
            for &rate in &plan.rates_per_s {
                let shape = Shape::Open(rate);
                let mark = store_mark(plan)?;
                let mut point =
                    single_point(plan, &tracker, &mut sender, &addresses, shape, ack, None)
                        .await
                        .with_context(|| format!("single, {rate}/s"))?;
                let sent = point.sent;
                store_since(plan, &mut point, mark, sent)?;
                print_point(&point);
                points.push(point);
            }
        }
    }
    if plan.fanout || plan.interference {
        // pushgate's broadcast reaches every bound phone: the single-push phones serve as the
        // first fan-out receivers. The peers' fan-out receivers hold the shared topic instead
        // (and their single-push receivers stay open for the interference point).
        let mut fans = if target == TargetKind::Pushgate {
            std::mem::take(&mut users)
        } else {
            Vec::new()
        };
        // pushgate: the single-push users (untagged) leading `fans`.
        let mut users_in_fans = fans.len();
        let mut sizes = plan.fanout_sizes.clone();
        sizes.sort_unstable();
        if !plan.fanout {
            sizes = sizes.last().copied().into_iter().collect();
        }
        for size in sizes {
            if fans.len() > size {
                fans.truncate(size);
                users_in_fans = users_in_fans.min(size);
                tokio::time::sleep(Duration::from_millis(plan.settle_ms)).await;
            }
            if fans.len() < size {
                let more = connect_many(plan, Role::Fan, fans.len()..size, &tracker)
                    .await
                    .with_context(|| format!("connecting {size} fan-out receivers"))?;
                fans.extend(more);
            }
            if !plan.fanout {
                continue;
            }
            for &window in &plan.fanout_windows {
                let mark = store_mark(plan)?;
                let mut point = fanout_point(plan, &tracker, &mut sender, size, window)
                    .await
                    .with_context(|| format!("fan-out to {size}, {window} in flight"))?;
                let sent = point.sent;
                store_since(plan, &mut point, mark, sent)?;
                print_point(&point);
                points.push(point);
            }
        }
        if plan.interference && !fans.is_empty() {
            // The broadcasts go to `size` fan-out phones that take no single push; the single
            // pushes to the users, who take no broadcast (pushgate: the fans' tag leaves them
            // out), so the latencies show what the server does, not a phone's queue.
            let size = fans.len();
            let mut audience = fans.len() - users_in_fans;
            if audience < size {
                let more = connect_many(
                    plan,
                    Role::Fan,
                    fans.len()..fans.len() + size - audience,
                    &tracker,
                )
                .await
                .context("connecting the interference point's fan-out receivers")?;
                audience += more.len();
                fans.extend(more);
            }
            if users_in_fans == 0 && users.is_empty() {
                users = connect_many(plan, Role::User, 0..plan.users, &tracker)
                    .await
                    .context("connecting the single-push receivers")?;
            }
            let singles = users_in_fans.max(users.len());
            let addresses: Vec<String> = (0..singles)
                .map(|n| user_address(target, Role::User, n))
                .collect();
            let rate = plan.interference_rate_per_s;
            let mark = store_mark(plan)?;
            let mut point = single_point(
                plan,
                &tracker,
                &mut sender,
                &addresses,
                Shape::Open(rate),
                AckMode::None,
                Some(audience),
            )
            .await
            .with_context(|| format!("interference, {rate}/s"))?;
            let sent = point.sent;
            store_since(plan, &mut point, mark, sent)?;
            print_point(&point);
            points.push(point);
        }
    }
    Ok(points)
}

/// Opens receivers `range` in `role`, `connect_concurrency` at a time.
async fn connect_many(
    plan: &Plan,
    role: Role,
    range: std::ops::Range<usize>,
    tracker: &Arc<Tracker>,
) -> anyhow::Result<Vec<Receiver>> {
    let mut out = Vec::with_capacity(range.len());
    let mut tasks = JoinSet::new();
    let mut next = range.start;
    let concurrency = plan.connect_concurrency.max(1);
    loop {
        while next < range.end && tasks.len() < concurrency {
            let (ends, tracker, n) = (plan.ends, tracker.clone(), next);
            let connect = async move { Receiver::connect(ends, role, n, tracker).await };
            // A receiver's reading tasks run on the runtime its connect ran on.
            match (&plan.fan_runtime, role) {
                (Some(fans), Role::Fan) => tasks.spawn_on(connect, fans),
                _ => tasks.spawn(connect),
            };
            next += 1;
        }
        match tasks.join_next().await {
            Some(joined) => out.push(joined.context("connect task failed")??),
            None => break,
        }
    }
    Ok(out)
}

async fn idle_point(plan: &Plan, tracker: &Arc<Tracker>) -> anyhow::Result<Point> {
    let n = plan.idle_connections;
    let rss_before = plan.server_pid.map(rss_bytes).transpose()?;
    let cpu = CpuMark::now(plan.server_pid);
    let started = Instant::now();
    let receivers = connect_many(plan, Role::Idle, 0..n, tracker)
        .await
        .with_context(|| format!("opening {n} idle connections"))?;
    let elapsed = started.elapsed();
    let cpu = cpu.since(plan.server_pid);
    tokio::time::sleep(Duration::from_millis(plan.settle_ms)).await;
    let rss_after = plan.server_pid.map(rss_bytes).transpose()?;
    let per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) => Some((after as f64 - before as f64) / n as f64),
        _ => None,
    };
    drop(receivers);
    tokio::time::sleep(Duration::from_millis(plan.settle_ms)).await;
    Ok(Point {
        target: plan.label.clone(),
        workload: Some(Workload::Idle),
        key: "idle".to_owned(),
        title: format!("idle, {n} connections"),
        payload_bytes: 0,
        connections: n,
        ack: ack_name(plan.ends.kind, AckMode::None),
        achieved_per_s: n as f64 / elapsed.as_secs_f64().max(1e-9),
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_per_connection_bytes: per_connection,
        cpu,
        ..Point::default()
    })
}

/// The reconnect storm: every phone connects once, `storm_in_flight` at a time; a failed
/// connect is counted, not retried, and does not stop the point.
async fn storm_point(plan: &Plan, tracker: &Arc<Tracker>) -> anyhow::Result<Point> {
    let n = plan.storm_phones;
    let in_flight = plan.storm_in_flight.max(1);
    let kernel_before = crate::resources::tcp_ext_counters().ok();
    let cpu = CpuMark::now(plan.server_pid);
    let started = Instant::now();
    let mut connected = Vec::with_capacity(n);
    let mut to_bind = Latency::new();
    let mut failed = 0u64;
    let mut first_error = None;
    let mut tasks = JoinSet::new();
    let mut next = 0;
    loop {
        while next < n && tasks.len() < in_flight {
            let (ends, tracker, k) = (plan.ends, tracker.clone(), next);
            tasks.spawn(async move {
                let began = Instant::now();
                let result = Receiver::connect(ends, Role::Storm, k, tracker).await;
                (began.elapsed(), result)
            });
            next += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok((took, Ok(receiver))) => {
                to_bind.record_ns(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                connected.push(receiver);
            }
            Ok((_, Err(error))) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("connect task: {error}"));
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu.since(plan.server_pid);
    let kernel = match (kernel_before, crate::resources::tcp_ext_counters().ok()) {
        (Some(before), Some(after)) => {
            crate::resources::counter_growth(&before, &after, &crate::resources::STORM_COUNTERS)
        }
        _ => Default::default(),
    };
    drop(connected);
    tokio::time::sleep(Duration::from_millis(plan.settle_ms)).await;
    Ok(Point {
        target: plan.label.clone(),
        workload: Some(Workload::Storm),
        key: "storm".to_owned(),
        title: format!("storm, {n} phones, {in_flight} connecting"),
        connections: n,
        window: Some(in_flight),
        ack: ack_name(plan.ends.kind, AckMode::None),
        achieved_per_s: (n as u64 - failed) as f64 / elapsed.as_secs_f64().max(1e-9),
        sent: n as u64,
        delivered: n as u64 - failed,
        errors: failed,
        first_error,
        connect_to_bind: Some(to_bind.summary()),
        kernel,
        cpu,
        ..Point::default()
    })
}

/// How a single-push point drives its sender.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A fixed number in flight.
    Closed(usize),
    /// A fixed rate (per second).
    Open(f64),
}

fn ack_name(target: TargetKind, ack: AckMode) -> String {
    if target != TargetKind::Pushgate {
        return "qos0".to_owned();
    }
    match ack {
        AckMode::None => "none",
        AckMode::Auto => "auto",
        AckMode::Biz => "biz",
    }
    .to_owned()
}

fn ack_suffix(target: TargetKind, ack: AckMode) -> &'static str {
    match (target, ack) {
        (TargetKind::Pushgate, AckMode::Auto) => "/auto-ack",
        (TargetKind::Pushgate, AckMode::Biz) => "/biz-ack",
        _ => "",
    }
}

/// The measurement window of a point starting now.
fn window_from_now(plan: &Plan) -> Window {
    let from_ns = now_ns() + plan.warmup_ms * 1_000_000;
    Window {
        from_ns,
        to_ns: from_ns + plan.measure_ms * 1_000_000,
    }
}

/// Runs one single-push point; with `background` (phones), broadcasts to that many phones run
/// back to back beside it until its measurement window ends (the interference point).
async fn single_point(
    plan: &Plan,
    tracker: &Arc<Tracker>,
    sender: &mut Sender,
    addresses: &[String],
    shape: Shape,
    ack: AckMode,
    background: Option<usize>,
) -> anyhow::Result<Point> {
    let target = plan.ends.kind;
    // With broadcasts beside, the fan-out receivers run: the measured path first.
    let _first = background.map(|_| crate::priority::MeasuredPathFirst::raise());
    let window = window_from_now(plan);
    let point_id = tracker.begin_single(sender.has_statuses(), window, background);
    let mut background_seq: u32 = 0;
    let start_ns = now_ns();
    let mut seq: u32 = 0;
    let mut not_sent = 0u64;
    let mut cpu_mark = None;
    let mut cpu = None;
    let limit = if plan.max_messages == 0 {
        u64::MAX
    } else {
        plan.max_messages
    };
    let pacer = match shape {
        // One tick per message interval (several messages per tick above 20,000/s).
        Shape::Open(rate) => Some(Pacer::start(Duration::from_secs_f64(1.0 / rate.max(1e-3)))?),
        Shape::Closed(_) => None,
    };
    // Open loop: how late the generator itself sent each message (part of every latency).
    let mut send_lag = Latency::new();
    loop {
        let now = now_ns();
        if cpu_mark.is_none() && now >= window.from_ns {
            cpu_mark = Some(CpuMark::now(plan.server_pid));
        }
        if now >= window.to_ns || u64::from(seq) >= limit {
            break;
        }
        if background.is_some() && tracker.background_in_flight() == 0 {
            let stamp = Stamp {
                sent_ns: now_ns(),
                point_id,
                seq: BACKGROUND_SEQ | background_seq,
            };
            background_seq = background_seq.wrapping_add(1) & !BACKGROUND_SEQ;
            tracker.sent_background(stamp.seq, stamp.sent_ns);
            sender.send_to_fans(stamp);
        }
        match shape {
            Shape::Closed(in_flight) => {
                let free = in_flight.saturating_sub(tracker.in_flight());
                for _ in 0..free {
                    if u64::from(seq) >= limit {
                        break;
                    }
                    send_one(tracker, sender, addresses, point_id, seq, now_ns(), ack);
                    seq += 1;
                    if sender.buffered_bytes() >= MAX_BATCH_BYTES {
                        sender.flush().await?;
                    }
                }
                sender.flush().await?;
                let _ = tokio::time::timeout(CLOSED_LOOP_POLL, tracker.progress()).await;
            }
            Shape::Open(rate) => {
                let interval_ns = 1e9 / rate.max(1e-3);
                // Message k is due at start + k * interval: every one whose time has come.
                let due = ((now - start_ns) as f64 / interval_ns) as u64 + 1;
                let backlog = tracker.in_flight();
                let mut room = OPEN_LOOP_MAX_IN_FLIGHT.saturating_sub(backlog);
                while u64::from(seq) < due.min(limit) {
                    let intended = start_ns + (f64::from(seq) * interval_ns) as u64;
                    if window.from_ns <= intended && intended < window.to_ns {
                        send_lag.record_ns(now_ns().saturating_sub(intended));
                    }
                    if room == 0 {
                        not_sent += 1;
                    } else {
                        room -= 1;
                        send_one(tracker, sender, addresses, point_id, seq, intended, ack);
                    }
                    seq += 1;
                    if sender.buffered_bytes() >= MAX_BATCH_BYTES {
                        sender.flush().await?;
                    }
                }
                sender.flush().await?;
                if let Some(pacer) = &pacer {
                    pacer.tick().await?;
                }
            }
        }
        if cpu.is_none() && now_ns() >= window.to_ns {
            cpu = cpu_mark.map(|m: CpuMark| m.since(plan.server_pid));
        }
    }
    let cpu = cpu
        .or_else(|| cpu_mark.map(|m| m.since(plan.server_pid)))
        .unwrap_or_default();
    drop(pacer);
    drain(plan, tracker).await;
    let counts = tracker.finish();
    let (mut key, mut title) = match shape {
        Shape::Closed(w) => (
            format!("single/closed/w{w}"),
            format!("single, closed loop, {w} in flight"),
        ),
        Shape::Open(rate) => (
            format!("single/open/{}", rate as u64),
            format!("single, open loop, {} msgs/s", rate as u64),
        ),
    };
    let workload = match background {
        Some(phones) => {
            key = format!(
                "interference/{phones}/{}",
                key.trim_start_matches("single/")
            );
            title = format!("{title}, broadcasts to {phones} back to back");
            Workload::Interference
        }
        None => Workload::Single,
    };
    let background_counts = counts.background;
    let mut point = point_from_counts(plan, workload, counts, window, sender, limit);
    if let Some(bg) = background_counts {
        point.background_broadcasts = Some(bg.completed);
        point.background_deliveries_per_s =
            Some(bg.delivered_in_window as f64 / (plan.measure_ms as f64 / 1000.0).max(1e-9));
    }
    point.key = format!("{key}{}", ack_suffix(target, ack));
    point.title = format!("{title}, ack {}", ack_name(target, ack));
    point.connections = addresses.len();
    point.ack = ack_name(target, ack);
    match shape {
        Shape::Closed(w) => point.window = Some(w),
        Shape::Open(rate) => {
            point.offered_per_s = Some(rate);
            point.send_lag = Some(send_lag.summary());
        }
    }
    point.not_sent = not_sent;
    point.cpu = cpu;
    Ok(point)
}

fn send_one(
    tracker: &Tracker,
    sender: &mut Sender,
    addresses: &[String],
    point_id: u32,
    seq: u32,
    sent_ns: u64,
    ack: AckMode,
) {
    let stamp = Stamp {
        sent_ns,
        point_id,
        seq,
    };
    tracker.sent(seq, sent_ns);
    let address = &addresses[seq as usize % addresses.len()];
    sender.send_single(address, stamp, ack);
}

/// Runs one fan-out point to `phones` receivers with `in_flight` broadcasts at a time.
async fn fanout_point(
    plan: &Plan,
    tracker: &Arc<Tracker>,
    sender: &mut Sender,
    phones: usize,
    in_flight: usize,
) -> anyhow::Result<Point> {
    // The fan-out receivers run: the measured path first.
    let _first = crate::priority::MeasuredPathFirst::raise();
    let window = window_from_now(plan);
    let point_id = tracker.begin_fanout(phones, sender.has_statuses(), window);
    let mut seq: u32 = 0;
    let mut cpu_mark = None;
    let mut cpu = None;
    let limit = if plan.max_broadcasts == 0 {
        u64::MAX
    } else {
        plan.max_broadcasts
    };
    loop {
        let now = now_ns();
        if cpu_mark.is_none() && now >= window.from_ns {
            cpu_mark = Some(CpuMark::now(plan.server_pid));
        }
        if now >= window.to_ns || u64::from(seq) >= limit {
            break;
        }
        let free = in_flight.saturating_sub(tracker.in_flight());
        for _ in 0..free {
            if u64::from(seq) >= limit {
                break;
            }
            let stamp = Stamp {
                sent_ns: now_ns(),
                point_id,
                seq,
            };
            tracker.sent(seq, stamp.sent_ns);
            sender.send_broadcast(stamp);
            seq += 1;
            if sender.buffered_bytes() >= MAX_BATCH_BYTES {
                sender.flush().await?;
            }
        }
        sender.flush().await?;
        let _ = tokio::time::timeout(CLOSED_LOOP_POLL, tracker.progress()).await;
        if cpu.is_none() && now_ns() >= window.to_ns {
            cpu = cpu_mark.map(|m: CpuMark| m.since(plan.server_pid));
        }
    }
    let cpu = cpu
        .or_else(|| cpu_mark.map(|m| m.since(plan.server_pid)))
        .unwrap_or_default();
    drain(plan, tracker).await;
    let counts = tracker.finish();
    let last = counts.last_delivery;
    let mut point = point_from_counts(plan, Workload::Fanout, counts, window, sender, limit);
    point.key = format!("fanout/{phones}/w{in_flight}");
    point.title = format!("fan-out to {phones}, {in_flight} broadcasts in flight");
    point.connections = phones;
    point.window = Some(in_flight);
    point.ack = ack_name(plan.ends.kind, AckMode::None);
    point.last_delivery = Some(last);
    point.cpu = cpu;
    Ok(point)
}

/// Waits until nothing is in flight: at least up to `drain_ms`, and beyond it (to at most four
/// times that) while messages still complete, so the next point does not start on a backlog.
async fn drain(plan: &Plan, tracker: &Tracker) {
    let started = Instant::now();
    let soft = Duration::from_millis(plan.drain_ms);
    let hard = soft * 4;
    let mut last = tracker.in_flight();
    let mut last_progress = Instant::now();
    while last > 0 {
        let elapsed = started.elapsed();
        if elapsed >= hard || (elapsed >= soft && last_progress.elapsed() >= DRAIN_STALL) {
            break;
        }
        let _ = tokio::time::timeout(CLOSED_LOOP_POLL, tracker.progress()).await;
        let now = tracker.in_flight();
        if now < last {
            last_progress = Instant::now();
        }
        last = now;
    }
}

fn point_from_counts(
    plan: &Plan,
    workload: Workload,
    counts: Counts,
    window: Window,
    sender: &Sender,
    limit: u64,
) -> Point {
    // A point stopped early by a message limit ends its window at its last delivery.
    let end_ns = if counts.last_in_window_ns > 0 && counts.sent >= limit {
        counts.last_in_window_ns.min(window.to_ns)
    } else {
        window.to_ns
    };
    let seconds = (end_ns.saturating_sub(window.from_ns)) as f64 / 1e9;
    let errors = counts
        .statuses
        .iter()
        .filter(|(name, _)| name.as_str() != "success" && name.as_str() != "ack-success")
        .map(|(_, n)| *n)
        .sum();
    Point {
        target: plan.label.clone(),
        workload: Some(workload),
        payload_bytes: PAYLOAD_BYTES,
        warmup_ms: plan.warmup_ms,
        measure_ms: plan.measure_ms,
        achieved_per_s: if seconds > 0.0 {
            counts.delivered_in_window as f64 / seconds
        } else {
            0.0
        },
        sent: counts.sent,
        delivered: counts.delivered,
        lost: counts.lost,
        incomplete: counts.incomplete,
        unexpected: counts.unexpected,
        errors,
        first_error: counts.first_error,
        delivery: Some(counts.delivery),
        status: sender.has_statuses().then_some(counts.status),
        server_status: (counts.server_status.count > 0).then_some(counts.server_status),
        before_server: (counts.before_server.count > 0).then_some(counts.before_server),
        after_server: (counts.after_server.count > 0).then_some(counts.after_server),
        statuses: counts.statuses,
        rss_after_bytes: plan.server_pid.and_then(|pid| rss_bytes(pid).ok()),
        ..Point::default()
    }
}

/// One line per finished point, for the operator watching the run.
fn print_point(point: &Point) {
    let latency = |s: &Option<crate::latency::LatencySummary>| {
        s.map(|s| {
            format!(
                "p50 {:.3} p99 {:.3} p999 {:.3} ms",
                s.p50_us / 1000.0,
                s.p99_us / 1000.0,
                s.p999_us / 1000.0
            )
        })
        .unwrap_or_default()
    };
    let mut line = format!(
        "[{}] {}: {:.0}/s",
        point.target, point.title, point.achieved_per_s
    );
    if let Some(per_connection) = point.rss_per_connection_bytes {
        line += &format!(", RSS {:.2} KiB/conn", per_connection / 1024.0);
    }
    if point.workload == Some(Workload::Storm) {
        let bind = point.connect_to_bind.unwrap_or_default();
        line += &format!(
            ", time to bind p50 {:.1} p99 {:.1} max {:.1} ms, {} failed connects, kernel {:?}",
            bind.p50_us / 1000.0,
            bind.p99_us / 1000.0,
            bind.max_us / 1000.0,
            point.errors,
            point.kernel
        );
        if let Some(error) = &point.first_error {
            line += &format!(" (first failure: {error})");
        }
    } else if point.workload != Some(Workload::Idle) {
        line += &format!(
            ", sent {} delivered {} lost {}, delivery {}",
            point.sent,
            point.delivered,
            point.lost,
            latency(&point.delivery)
        );
        if point.status.is_some() {
            line += &format!(", status {}", latency(&point.status));
        }
        let whole_ms = |s: crate::latency::LatencySummary| {
            format!(
                "p99 {:.0} p999 {:.0} max {:.0} ms",
                s.p99_us / 1000.0,
                s.p999_us / 1000.0,
                s.max_us / 1000.0
            )
        };
        if let Some(server) = point.server_status {
            line += &format!(
                ", server's share (time line, whole ms) {}",
                whole_ms(server)
            );
        }
        if let (Some(before), Some(after)) = (point.before_server, point.after_server) {
            line += &format!(
                ", handed over → node {}, node → status read {}",
                whole_ms(before),
                whole_ms(after)
            );
        }
        if point.send_lag.is_some() {
            line += &format!(", generator send lag {}", latency(&point.send_lag));
        }
        if let Some(broadcasts) = point.background_broadcasts {
            line += &format!(
                ", {broadcasts} broadcasts beside ({:.0} deliveries/s), status max {:.3} ms",
                point.background_deliveries_per_s.unwrap_or(0.0),
                point.status.map_or(0.0, |s| s.max_us / 1000.0)
            );
        }
        if point.errors > 0 || point.not_sent > 0 {
            line += &format!(
                ", statuses {:?}, not sent {}",
                point.statuses, point.not_sent
            );
        }
    }
    line += &format!(
        ", CPU server {:.0}% generator {:.0}% others {:.0}%",
        point.cpu.server_pct, point.cpu.generator_pct, point.cpu.other_pct
    );
    eprintln!("{line}");
}
