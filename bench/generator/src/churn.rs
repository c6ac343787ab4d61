//! `pushgate-bench churn`: the churn soak (`bench/soak.sh`). Phones speaking MPush's protocol
//! (RSA handshake, AES session, bind) connect to one running pushgate, then for a bounded time
//! random phones drop their connection and come back as a new connection of the same user
//! (full handshake, bind; with `--fast-reconnect`, as the same device with FAST_CONNECT and the
//! session of its last connection, as MPush's SDK does), while single pushes go to random
//! users and broadcasts to everyone.
//! At the end every phone is closed and the server's file descriptors and resident memory are
//! read again. `--rounds N` runs all of it N times against the same server; with
//! `--fast-reconnect` a later round's phones come back with the sessions of the last one, so
//! the server's store holds the same sessions and routes round after round.
//!
//! What it checks: every push got exactly one status (counted here per push, and against the
//! server's own `pushgate_pushes_total` when `--admin` is given), and the server gives back
//! what the phones held: its descriptors return to their baseline every round, and from the
//! third round on its resident memory does not grow beyond what its store grew (a round that
//! leaked per connection or per push would). The growth over the baseline is printed, with the
//! store's share (the allocator keeps pages that still hold a few live records among the freed
//! ones; `bench/README.md`). It prints a short result per round and
//! exits 1 when a check fails.
//!
//! Bounded: `--duration-s`, `--phones`, `--max-pushes`; every push has a timeout, every
//! connect a deadline, and the in-flight reconnects are capped by `--connect-concurrency`.
use crate::resources;
use anyhow::Context;
use bytes::Bytes;
use pushgate::client::{
    BroadcastRequest, DeviceClient, DeviceEvent, DeviceOptions, PushClient, SinglePushRequest,
    StoredSession,
};
use rand::Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// A phone's handshake, bind and connect deadline.
const PHONE_TIMEOUT_MS: u64 = 20_000;
/// Every push's and broadcast's timeout.
const PUSH_TIMEOUT_MS: u64 = 10_000;
/// The server's descriptors count as back when within this many of the baseline.
const FD_SLACK: usize = 16;
/// The first round whose memory is judged: the first leaves the allocator's pages that still
/// hold a few live records (the store's, among the connections' freed ones), the second still
/// settles (about 4 MiB at 10,000 phones, half that in the third); from the third on a round
/// that kept memory per connection or per push would stand out.
const FIRST_JUDGED_ROUND: u32 = 3;
/// From [`FIRST_JUDGED_ROUND`] on, resident memory after a round counts as back when within the
/// last round's plus this many times what the server's embedded store grew by
/// (`pushgate_store_bytes`: reusable sessions of full handshakes, kept a day as in MPush, and
/// a route per user; the allocator's size classes and pages add about half again) ...
const RSS_STORE_FACTOR: f64 = 1.5;
/// ... plus this much (allocator caches, a table that doubled).
const RSS_ROUND_SLACK_BYTES: u64 = 4 << 20;

#[derive(Debug, clap::Args)]
pub struct ChurnArgs {
    /// The server's connection port.
    #[arg(long)]
    connect: SocketAddr,
    /// The server's gateway port (one PushClient sends every push).
    #[arg(long)]
    gateway: SocketAddr,
    /// The server's admin API: its push counters are read before and after.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The server's pid: its descriptors and RSS are read from /proc.
    #[arg(long)]
    server_pid: u32,
    /// Phones (one user each).
    #[arg(long, default_value_t = 10_000)]
    phones: usize,
    /// How long the churn runs after every phone connected.
    #[arg(long, default_value_t = 240)]
    duration_s: u64,
    /// Phones dropped and reconnected per second.
    #[arg(long, default_value_t = 100)]
    reconnects_per_s: u64,
    /// A phone comes back as the same device with the session of its last connection
    /// (FAST_CONNECT), as MPush's SDK does; without it every reconnect is a new device with a
    /// full RSA handshake (and leaves one more reusable session in the store).
    #[arg(long)]
    fast_reconnect: bool,
    /// Single pushes per second, each to a random user.
    #[arg(long, default_value_t = 200)]
    pushes_per_s: u64,
    /// A broadcast to every phone this often (0: none).
    #[arg(long, default_value_t = 10)]
    broadcast_every_s: u64,
    /// Connects (handshake and bind) under way at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Single pushes at most (the run ends early when reached).
    #[arg(long, default_value_t = 1_000_000)]
    max_pushes: u64,
    /// Longest wait after the phones closed for the server's descriptors to come back (ms).
    #[arg(long, default_value_t = 30_000)]
    settle_ms: u64,
    /// Runs of the whole soak (connect, churn, close) against the same server.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Also write the result here (JSON, one entry per round).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A connected phone and the task reading its events.
struct Live {
    client: DeviceClient,
    events: tokio::task::JoinHandle<()>,
}

/// A phone's place: connected, being (re)connected, between rounds with its session (with
/// `--fast-reconnect`), or empty after a failed connect.
enum Slot {
    Live(Box<Live>),
    Busy,
    Parked(StoredSession),
    Empty,
}

/// What the run counts.
#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    connect_errors: AtomicU64,
    reconnects: AtomicU64,
    fast_connects: AtomicU64,
    deliveries: AtomicU64,
    pushes_sent: AtomicU64,
    broadcasts_sent: AtomicU64,
    /// Single-push outcomes by status name (or "client-error").
    push_statuses: Mutex<BTreeMap<String, u64>>,
    broadcast_statuses: Mutex<BTreeMap<String, u64>>,
    last_connect_error: Mutex<Option<String>>,
}

impl Counters {
    fn count(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        *map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_insert(0) += 1;
    }

    fn total(map: &Mutex<BTreeMap<String, u64>>) -> u64 {
        map.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }
}

/// The server's descriptors and RSS, sampled.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Usage {
    fds: usize,
    rss_bytes: u64,
}

fn usage(pid: u32) -> anyhow::Result<Usage> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd (the server's descriptors)"))?
        .count();
    Ok(Usage {
        fds,
        rss_bytes: resources::rss_bytes(pid)?,
    })
}

/// Runs the soak on a single-threaded runtime (the generator gets one core).
pub fn run(args: ChurnArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.phones > 0, "--phones must be > 0");
    anyhow::ensure!(
        args.connect_concurrency > 0,
        "--connect-concurrency must be > 0"
    );
    anyhow::ensure!(args.duration_s > 0, "--duration-s must be > 0");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let passed = runtime.block_on(soak(&args))?;
    drop(runtime);
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// What a round leaves for the next: the server's usage and store after it.
#[derive(Debug, Clone, Copy)]
struct AfterRound {
    usage: Usage,
    store: Option<StoreHeld>,
}

async fn soak(args: &ChurnArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.rounds >= 1, "--rounds must be >= 1");
    let slots: Arc<Vec<Mutex<Slot>>> =
        Arc::new((0..args.phones).map(|_| Mutex::new(Slot::Empty)).collect());
    let baseline = usage(args.server_pid)?;
    let mut last: Option<AfterRound> = None;
    let mut passed = true;
    let mut rounds_json = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("round {round} of {}", args.rounds);
        }
        let (round_passed, after, json) = soak_round(args, &slots, round, baseline, last).await?;
        passed &= round_passed;
        last = Some(after);
        rounds_json.push(json);
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&rounds_json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(passed)
}

/// One round: every phone connects, the churn runs, every phone closes; then the checks.
async fn soak_round(
    args: &ChurnArgs,
    slots: &Arc<Vec<Mutex<Slot>>>,
    round: u32,
    baseline: Usage,
    last: Option<AfterRound>,
) -> anyhow::Result<(bool, AfterRound, serde_json::Value)> {
    let before = usage(args.server_pid)?;
    let server_before = match args.admin {
        Some(admin) => Some(server_push_counts(admin).await?),
        None => None,
    };
    let counters = Arc::new(Counters::default());
    let slots = slots.clone();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let peak = Arc::new(Mutex::new(before));
    let sampler = {
        let (peak, pid) = (peak.clone(), args.server_pid);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if let Ok(now) = usage(pid) {
                    let mut peak = peak.lock().unwrap_or_else(|e| e.into_inner());
                    peak.fds = peak.fds.max(now.fds);
                    peak.rss_bytes = peak.rss_bytes.max(now.rss_bytes);
                }
            }
        })
    };

    // Every phone connects and binds.
    let started = Instant::now();
    let mut connecting = Vec::with_capacity(args.phones);
    for i in 0..args.phones {
        let permit = gate.clone().acquire_owned().await?;
        let (slots, counters) = (slots.clone(), counters.clone());
        let (addr, fast) = (args.connect, args.fast_reconnect);
        connecting.push(tokio::spawn(async move {
            // A phone parked by the last round comes back with its session.
            reconnect(addr, &slots, i, 0, fast, &counters).await;
            drop(permit);
        }));
    }
    for task in connecting {
        let _ = task.await;
    }
    let connected = counters.connects.load(Ordering::Relaxed);
    println!(
        "connected {connected} of {} phones in {:.1} s ({} errors)",
        args.phones,
        started.elapsed().as_secs_f64(),
        counters.connect_errors.load(Ordering::Relaxed)
    );

    // The churn, single pushes and broadcasts, for the run's time.
    let pusher = Arc::new(
        PushClient::connect(args.gateway)
            .await
            .with_context(|| format!("PushClient: connect {}", args.gateway))?,
    );
    let end = tokio::time::Instant::now() + Duration::from_secs(args.duration_s);
    let churn = {
        let (slots, counters, gate) = (slots.clone(), counters.clone(), gate.clone());
        let (addr, rate, phones) = (args.connect, args.reconnects_per_s, args.phones);
        let fast = args.fast_reconnect;
        tokio::spawn(async move {
            if rate == 0 {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let mut generation = 1u64;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                let Ok(permit) = gate.clone().try_acquire_owned() else {
                    continue; // as many reconnects under way as allowed: skip this one
                };
                let i = rand::thread_rng().gen_range(0..phones);
                generation += 1;
                let (slots, counters) = (slots.clone(), counters.clone());
                tokio::spawn(async move {
                    if reconnect(addr, &slots, i, generation, fast, &counters).await {
                        counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
        })
    };
    let mut push_tasks = tokio::task::JoinSet::new();
    let pushes_per_s = args.pushes_per_s.max(1);
    let mut push_tick = tokio::time::interval(Duration::from_micros(1_000_000 / pushes_per_s));
    let broadcast_every = Duration::from_secs(args.broadcast_every_s.max(1));
    let mut next_broadcast = tokio::time::Instant::now() + broadcast_every;
    let mut sent: u64 = 0;
    while tokio::time::Instant::now() < end && sent < args.max_pushes {
        push_tick.tick().await;
        if args.pushes_per_s > 0 {
            sent += 1;
            let user = format!("churn-{}", rand::thread_rng().gen_range(0..args.phones));
            let request = SinglePushRequest {
                timeout_ms: PUSH_TIMEOUT_MS,
                ..SinglePushRequest::new(user, Bytes::from_static(b"churn single"))
            };
            counters.pushes_sent.fetch_add(1, Ordering::Relaxed);
            let (pusher, counters) = (pusher.clone(), counters.clone());
            push_tasks.spawn(async move {
                let key = match pusher.push(request).await {
                    Ok(result) => result.status.name().to_owned(),
                    Err(error) => format!("client-error ({error})"),
                };
                Counters::count(&counters.push_statuses, &key);
            });
        }
        if args.broadcast_every_s > 0 && tokio::time::Instant::now() >= next_broadcast {
            next_broadcast += broadcast_every;
            counters.broadcasts_sent.fetch_add(1, Ordering::Relaxed);
            let request = BroadcastRequest {
                timeout_ms: PUSH_TIMEOUT_MS,
                ..BroadcastRequest::new(Bytes::from_static(b"churn broadcast"))
            };
            let (pusher, counters) = (pusher.clone(), counters.clone());
            push_tasks.spawn(async move {
                let key = match pusher.broadcast(request).await {
                    Ok(result) => result.status.name().to_owned(),
                    Err(error) => format!("client-error ({error})"),
                };
                Counters::count(&counters.broadcast_statuses, &key);
            });
        }
        // Finished push tasks are reaped as the run goes (memory stays bounded).
        while push_tasks.try_join_next().is_some() {}
    }
    let _ = churn.await;
    // Every push ends within its timeout; the margin covers a slow answer.
    let wait = Duration::from_millis(PUSH_TIMEOUT_MS + 5_000);
    let _ = tokio::time::timeout(wait, async {
        while push_tasks.join_next().await.is_some() {}
    })
    .await;
    push_tasks.abort_all();
    pusher.close();

    // Let reconnects under way finish, then close every phone.
    let _ = gate
        .acquire_many(u32::try_from(args.connect_concurrency).unwrap_or(u32::MAX))
        .await;
    let mut closed = 0usize;
    for slot in slots.iter() {
        let live = match std::mem::replace(
            &mut *slot.lock().unwrap_or_else(|e| e.into_inner()),
            Slot::Empty,
        ) {
            Slot::Live(live) => Some(*live),
            Slot::Busy | Slot::Parked(_) | Slot::Empty => None,
        };
        if let Some(live) = live {
            if args.fast_reconnect {
                // The next round's phone comes back as this device, with this session.
                *slot.lock().unwrap_or_else(|e| e.into_inner()) =
                    Slot::Parked(live.client.stored_session());
            }
            live.client.close().await;
            live.events.abort();
            closed += 1;
        }
    }
    let settle_end = Instant::now() + Duration::from_millis(args.settle_ms);
    let mut after = usage(args.server_pid)?;
    while after.fds > before.fds + FD_SLACK && Instant::now() < settle_end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = usage(args.server_pid)?;
    }
    // A last look once the server's housekeeping gave back what the connections left: two
    // rounds and a second (the allocator hands pages back a round after they were freed).
    tokio::time::sleep(Duration::from_millis(
        2 * pushgate::housekeeping::HOUSEKEEPING_INTERVAL_MS + 1_000,
    ))
    .await;
    after = usage(args.server_pid)?;
    sampler.abort();
    let peak = *peak.lock().unwrap_or_else(|e| e.into_inner());
    let server_after = match args.admin {
        Some(admin) => Some(server_push_counts(admin).await?),
        None => None,
    };
    let store = match args.admin {
        Some(admin) => server_store(admin).await?,
        None => None,
    };

    let pushes_sent = counters.pushes_sent.load(Ordering::Relaxed);
    let push_statuses = counters
        .push_statuses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let push_answered = Counters::total(&counters.push_statuses);
    let broadcasts_sent = counters.broadcasts_sent.load(Ordering::Relaxed);
    let broadcast_statuses = counters
        .broadcast_statuses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let broadcasts_answered = Counters::total(&counters.broadcast_statuses);
    let server_finished = match (&server_before, &server_after) {
        (Some(before), Some(after)) => Some(after.0.saturating_sub(before.0)),
        _ => None,
    };
    let server_broadcasts = match (&server_before, &server_after) {
        (Some(before), Some(after)) => Some(after.1.saturating_sub(before.1)),
        _ => None,
    };
    let lost = pushes_sent.saturating_sub(push_answered);
    let broadcasts_lost = broadcasts_sent.saturating_sub(broadcasts_answered);
    let client_errors: u64 = push_statuses
        .iter()
        .chain(broadcast_statuses.iter())
        .filter(|(k, _)| k.starts_with("client-error"))
        .map(|(_, v)| v)
        .sum();
    let one_status_each = lost == 0
        && broadcasts_lost == 0
        && client_errors == 0
        && push_answered == pushes_sent
        && server_finished.is_none_or(|n| n == pushes_sent)
        && server_broadcasts.is_none_or(|n| n == broadcasts_sent);
    let fds_back = after.fds <= before.fds + FD_SLACK;
    // From FIRST_JUDGED_ROUND on: the last round's RSS plus what the store grew by (without
    // the store's gauges, a store elsewhere or no admin port, nothing for it).
    let rss_bound = last.filter(|_| round >= FIRST_JUDGED_ROUND).map(|last| {
        let store_growth = match (store, last.store) {
            (Some(now), Some(then)) => now.bytes.saturating_sub(then.bytes),
            _ => 0,
        };
        last.usage.rss_bytes
            + (store_growth as f64 * RSS_STORE_FACTOR) as u64
            + RSS_ROUND_SLACK_BYTES
    });
    let rss_back = rss_bound.is_none_or(|bound| after.rss_bytes <= bound);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);

    let reconnects = counters.reconnects.load(Ordering::Relaxed);
    println!(
        "phones {} · connects {} (errors {}, fast connects {}) · reconnects {reconnects} in {} s · deliveries {} · closed at the end {closed}",
        args.phones,
        counters.connects.load(Ordering::Relaxed),
        counters.connect_errors.load(Ordering::Relaxed),
        counters.fast_connects.load(Ordering::Relaxed),
        args.duration_s,
        counters.deliveries.load(Ordering::Relaxed),
    );
    if let Some(error) = &*counters
        .last_connect_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
    {
        println!("last connect error: {error}");
    }
    println!(
        "pushes sent {pushes_sent} · statuses {} · lost {lost}{}",
        describe(&push_statuses),
        server_finished
            .map(|n| format!(" · server finished {n}"))
            .unwrap_or_default()
    );
    println!(
        "broadcasts sent {broadcasts_sent} · statuses {} · lost {broadcasts_lost}{}",
        describe(&broadcast_statuses),
        server_broadcasts
            .map(|n| format!(" · server finished {n}"))
            .unwrap_or_default()
    );
    println!(
        "server fds: before {} · peak {} · after {}",
        before.fds, peak.fds, after.fds
    );
    println!(
        "server RSS: before {:.1} MiB · peak {:.1} MiB · after {:.1} MiB",
        mib(before.rss_bytes),
        mib(peak.rss_bytes),
        mib(after.rss_bytes)
    );
    if let Some(store) = store {
        println!(
            "server store: sessions {} · routes {} · about {:.1} MiB · RSS over the first baseline {:.1} MiB, {:.1} MiB beyond the store",
            store.sessions,
            store.routes,
            mib(store.bytes),
            mib(after.rss_bytes.saturating_sub(baseline.rss_bytes)),
            mib(after.rss_bytes.saturating_sub(baseline.rss_bytes).saturating_sub(store.bytes)),
        );
    }
    let passed = one_status_each && fds_back && rss_back;
    let memory_verdict = match rss_bound {
        Some(bound) => format!(
            "RSS within {:.1} MiB (last round + {RSS_STORE_FACTOR} x store growth + {} MiB): {}",
            mib(bound),
            RSS_ROUND_SLACK_BYTES >> 20,
            yes(rss_back)
        ),
        None => format!("RSS judged from round {FIRST_JUDGED_ROUND} on"),
    };
    println!(
        "result: {} (every push one status: {}; descriptors back within {FD_SLACK} of the baseline: {}; {memory_verdict})",
        if passed { "PASS" } else { "FAIL" },
        yes(one_status_each),
        yes(fds_back),
    );
    let json = serde_json::json!({
        "round": round,
        "phones": args.phones,
        "durationS": args.duration_s,
        "connects": counters.connects.load(Ordering::Relaxed),
        "connectErrors": counters.connect_errors.load(Ordering::Relaxed),
        "reconnects": reconnects,
        "deliveries": counters.deliveries.load(Ordering::Relaxed),
        "pushesSent": pushes_sent,
        "pushStatuses": push_statuses,
        "pushesLost": lost,
        "serverPushesFinished": server_finished,
        "broadcastsSent": broadcasts_sent,
        "broadcastStatuses": broadcast_statuses,
        "broadcastsLost": broadcasts_lost,
        "before": before,
        "peak": peak,
        "after": after,
        "store": store,
        "rssBoundBytes": rss_bound,
        "passed": passed,
    });
    Ok((
        passed,
        AfterRound {
            usage: after,
            store,
        },
        json,
    ))
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

fn describe(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Takes phone `i` out of its slot (closing its connection), connects a new one as user
/// `churn-{i}` (with `fast`, as the same device resuming its last session) and puts it back.
/// False when the slot was busy or the connect failed.
async fn reconnect(
    addr: SocketAddr,
    slots: &[Mutex<Slot>],
    i: usize,
    generation: u64,
    fast: bool,
    counters: &Arc<Counters>,
) -> bool {
    let mut session = None;
    let old = {
        let mut slot = slots[i].lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *slot, Slot::Busy) {
            Slot::Busy => return false, // another reconnect of this phone is under way
            Slot::Live(live) => Some(live),
            Slot::Parked(parked) => {
                session = fast.then_some(parked);
                None
            }
            Slot::Empty => None,
        }
    };
    if let Some(old) = old {
        session = fast.then(|| old.client.stored_session());
        old.client.close().await;
        old.events.abort();
    }
    let result = connect_phone(addr, i, generation, session, counters).await;
    let ok = result.is_ok();
    let next = match result {
        Ok(live) => {
            counters.connects.fetch_add(1, Ordering::Relaxed);
            Slot::Live(Box::new(live))
        }
        Err(error) => {
            counters.connect_errors.fetch_add(1, Ordering::Relaxed);
            *counters
                .last_connect_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(format!("{error:#}"));
            Slot::Empty
        }
    };
    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = next;
    ok
}

/// A phone of user `churn-{i}`: full handshake (or, given the `session` of its last
/// connection, a fast connect as the same device), bind, and a task counting its pushes.
async fn connect_phone(
    addr: SocketAddr,
    i: usize,
    generation: u64,
    session: Option<StoredSession>,
    counters: &Arc<Counters>,
) -> anyhow::Result<Live> {
    let device_id = match &session {
        Some(_) => format!("churn-{i}-0"),
        None => format!("churn-{i}-{generation}"),
    };
    let mut options = DeviceOptions::new(device_id);
    options.session = session;
    options.handshake_timeout_ms = PHONE_TIMEOUT_MS;
    options.request_timeout_ms = PHONE_TIMEOUT_MS;
    options.connect_timeout_ms = PHONE_TIMEOUT_MS;
    let client = DeviceClient::connect(addr, options)
        .await
        .context("connect")?;
    if client.fast_connected() {
        counters.fast_connects.fetch_add(1, Ordering::Relaxed);
    }
    client
        .bind(&format!("churn-{i}"), &[])
        .await
        .context("bind")?;
    let mut events = client
        .take_events()
        .await
        .context("phone events already taken")?;
    let counters = counters.clone();
    let events = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                DeviceEvent::Push { .. } => {
                    counters.deliveries.fetch_add(1, Ordering::Relaxed);
                }
                DeviceEvent::Closed => break,
                DeviceEvent::Kick { .. } | DeviceEvent::Error(_) => {}
            }
        }
    });
    Ok(Live { client, events })
}

/// What the server's embedded store holds (its `pushgate_store_*` gauges).
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct StoreHeld {
    sessions: u64,
    routes: u64,
    bytes: u64,
}

/// The server's store gauges; `None` when it publishes none (a store elsewhere).
async fn server_store(admin: SocketAddr) -> anyhow::Result<Option<StoreHeld>> {
    let text = server_metrics(admin).await?;
    let bytes = metric(&text, "pushgate_store_bytes");
    Ok(bytes.map(|bytes| StoreHeld {
        sessions: metric(&text, "pushgate_store_sessions").unwrap_or(0),
        routes: metric(&text, "pushgate_store_routes").unwrap_or(0),
        bytes,
    }))
}

/// The sum of every series of metric `name` in Prometheus text (`None`: no series).
fn metric(text: &str, name: &str) -> Option<u64> {
    let values: Vec<u64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The server's metrics text (`GET /metrics`).
async fn server_metrics(admin: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("--admin {admin}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: pushgate\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .context("GET /metrics timed out")??;
    Ok(text)
}

/// The server's finished single pushes and broadcasts so far (`GET /metrics`).
async fn server_push_counts(admin: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let text = server_metrics(admin).await?;
    Ok((
        metric(&text, "pushgate_pushes_total").unwrap_or(0),
        metric(&text, "pushgate_broadcasts_total").unwrap_or(0),
    ))
}
