//! Core-only benchmark: how far one sans-IO `Node` goes with no I/O at all — the ceiling the
//! runtime should approach.
//!
//! 1. Binds N sessions (default 1,000,000; `BENCH_SESSIONS`) through fast connect (the store
//!    answers with a cached session, so no RSA) and an encrypted BIND, each opened by the
//!    phone's `PhoneConn` (which then goes: it lives in the connection task); reports binds/s
//!    and the heap bytes the node holds per bound session (a counting allocator).
//! 2. Single pushes (`BENCH_PUSHES`, default 1,000,000) to random bound users, NO_ACK: the
//!    GATEWAY_PUSH frame in, the PUSH out, the write confirmed, the status out; pushes/s without
//!    and with sealing each PUSH (AES, what a connection task does per push).
//! 3. A broadcast to every session: deliveries/s.
//!
//! After the pushes it reports the timers the node holds (one idle check per session: a
//! finished push leaves none behind) and the heap the pushes left.
//!
//! Rates are per second of wall time and per second of the thread's CPU time (on a shared
//! machine the second is the steadier one). The GATEWAY_PUSH bodies are encoded before the clock
//! starts (a PushClient's work), for a pool of random users.
//!
//! Run: `cargo bench -p pushgate --bench core_node` (release profile). Prints a table.
//! `BENCH_TRACE_EVENTS=1` also emits the events only an observer reads (as the simulator runs
//! the node), to see what they cost.
use bytes::Bytes;
use pushgate::core::command::Command;
use pushgate::core::config::{NodeAddr, NodeConfig};
use pushgate::core::crypto::{AesCipher, ServerRsaKey};
use pushgate::core::frame::{Flags, Frame, Packet};
use pushgate::core::message::{Bind, FastConnect, GatewayPush};
use pushgate::core::pipeline::{raw_packet, sealed_packet};
use pushgate::core::store::{CachedSession, StoreOp, StoreReply};
use pushgate::core::{
    ConnConfig, ConnId, GatewayId, Input, Node, OutFrame, Output, PhoneConn, QueueMarks,
};
use rand_chacha::rand_core::SeedableRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts live heap bytes.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Distinct GATEWAY_PUSH bodies encoded before the single-push runs.
const PUSH_POOL: usize = 65_536;

/// CPU time of this thread, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Wall and CPU seconds since `started`.
struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: thread_cpu_secs(),
        }
    }

    /// (per wall second, per CPU second) for `count` things done since the start.
    fn rates(&self, count: f64) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = thread_cpu_secs() - self.cpu;
        (count / wall, count / cpu)
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Drains the node, answering store requests from `session` and confirming writes.
/// Returns (frames transmitted, statuses sent).
fn drain(
    node: &mut Node,
    now: u64,
    session: &CachedSession,
    seal: bool,
    threshold: usize,
    mut phone: Option<(&mut PhoneConn, &ConnConfig)>,
) -> (u64, u64) {
    let mut frames = 0;
    let mut statuses = 0;
    // Sealed as the phone's connection seals: with its session cipher.
    let cipher = AesCipher::new(session.session_key, session.iv);
    let mut wire = bytes::BytesMut::new();
    while let Some(output) = node.poll_output() {
        match output {
            Output::Transmit {
                conn,
                frame,
                report_write,
                ..
            } => {
                frames += 1;
                if seal {
                    wire.clear();
                    frame.encode(threshold, Some(&cipher), &mut wire);
                    std::hint::black_box(&wire);
                }
                if let Some(sid) = report_write {
                    node.handle(
                        now,
                        Input::PhoneWritten {
                            conn,
                            push_session_id: sid,
                            ok: true,
                        },
                    );
                }
            }
            Output::Store(request) => {
                let reply = match request.op {
                    StoreOp::GetSession { .. } => StoreReply::Session(Some(session.clone())),
                    StoreOp::PutRoute { .. } => StoreReply::Previous(None),
                    StoreOp::GetRoute { .. } => StoreReply::Route(None),
                    _ => StoreReply::Done,
                };
                node.handle(
                    now,
                    Input::StoreReply {
                        request: request.id,
                        reply: Ok(reply),
                    },
                );
            }
            Output::GatewayTransmit { .. } => statuses += 1,
            Output::Resume { resume, .. } => {
                if let Some((phone, cfg)) = phone.as_mut() {
                    phone.handle_resume(cfg, now, *resume);
                }
            }
            _ => {}
        }
    }
    (frames, statuses)
}

fn main() {
    let sessions = env_usize("BENCH_SESSIONS", 1_000_000);
    let pushes = env_usize("BENCH_PUSHES", 1_000_000);
    let mut cfg = NodeConfig::new(
        NodeAddr::new("127.0.0.1", 3001),
        ServerRsaKey::mpush_default(),
    );
    cfg.global_flow_limit_per_window = 0; // no rate limit: measure the engine
    cfg.broadcast_flow_limit_per_window = 0;
    cfg.broadcast_flow_max_total = 0;
    cfg.broadcast_batch_size = 4096;
    cfg.max_connections = sessions; // the default (100,000) refuses the rest
                                    // As the runtime runs it without an observer; BENCH_TRACE_EVENTS=1: as under the simulator.
    cfg.trace_events = env_usize("BENCH_TRACE_EVENTS", 0) != 0;
    let threshold = cfg.compress_threshold_bytes;
    let conn_cfg = ConnConfig::from_node(&cfg, 1_795_000_000_000, QueueMarks::default());
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([3; 32]);
    let mut node = Node::new(cfg, [7; 32], 1_795_000_000_000);
    let key = [0x11; 16];
    let iv = [0x22; 16];
    let cipher = AesCipher::new(key, iv);
    let session = CachedSession {
        os_name: "android".into(),
        os_version: "10".into(),
        client_version: "1.0".into(),
        device_id: "bench".into(),
        session_key: key,
        iv,
    };
    let fast = raw_packet(
        Command::FastConnect.code(),
        Flags::NONE,
        1,
        &FastConnect {
            session_id: "s".into(),
            device_id: "bench".into(),
            min_heartbeat_ms: 180_000,
            max_heartbeat_ms: 180_000,
        },
    );
    let users: Vec<String> = (0..sessions).map(|i| format!("user-{i}")).collect();

    // 1. Bind.
    let heap_before = LIVE_BYTES.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut now = 0u64;
    for (i, user) in users.iter().enumerate() {
        let conn = ConnId(i as u64 + 1);
        node.handle(now, Input::PhoneConnected { conn });
        let mut phone = PhoneConn::new(conn, &conn_cfg, now);
        // The phone's packet through its connection to the node, and the node's answers back.
        let mut feed = |node: &mut Node, phone: &mut PhoneConn, packet| {
            phone.handle_frame(&conn_cfg, now, Frame::Packet(packet), &mut rng);
            while let Some(input) = phone.poll_input() {
                node.handle(now, input);
            }
            let phone = Some((phone, &conn_cfg));
            drain(node, now, &session, false, threshold, phone);
        };
        feed(&mut node, &mut phone, fast.clone());
        let bind = sealed_packet(
            Command::Bind.code(),
            Flags::NONE,
            2,
            &Bind {
                user_id: user.clone(),
                ..Default::default()
            },
            Some(&cipher),
            1024,
        );
        feed(&mut node, &mut phone, bind);
        if i % 65_536 == 0 {
            now += 1;
        }
    }
    let bind_secs = started.elapsed().as_secs_f64();
    let heap_after = LIVE_BYTES.load(Ordering::Relaxed);
    let stats = node.stats();
    assert_eq!(stats.bound_routes, sessions, "every session bound");
    let users_bytes: usize = users
        .iter()
        .map(|u| u.capacity() + std::mem::size_of::<String>())
        .sum();
    let per_session =
        (heap_after - heap_before).saturating_sub(users_bytes) as f64 / sessions as f64;

    // 2. Single pushes, NO_ACK.
    let gw = GatewayId(1);
    node.handle(now, Input::GatewayConnected { gw });
    let content = Bytes::from(vec![b'x'; 64]);
    let mut rng_state = 0x9E37_79B9_7F4A_7C15u64;
    let pool: Vec<Bytes> = (0..PUSH_POOL)
        .map(|_| {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            let user = &users[(rng_state % sessions as u64) as usize];
            let push = GatewayPush {
                user_id: user.clone(),
                client_type: 1,
                timeout_ms: 3000,
                content: content.clone(),
                ..Default::default()
            };
            raw_packet(Command::GatewayPush.code(), Flags::NONE, 0, &push).body
        })
        .collect();
    let run_pushes = |node: &mut Node, seal: bool, count: usize| {
        let started = Clock::start();
        let mut statuses = 0;
        for i in 0..count {
            let packet = Packet::new(
                Command::GatewayPush.code(),
                Flags::NONE,
                i as i32,
                pool[i % PUSH_POOL].clone(),
            );
            node.handle(
                now,
                Input::GatewayFrame {
                    gw,
                    frame: Frame::Packet(packet),
                },
            );
            statuses += drain(node, now, &session, seal, threshold, None).1;
        }
        assert_eq!(statuses, count as u64, "one status per push");
        started.rates(count as f64)
    };
    let timers_before = node.timer_count();
    let heap_before_pushes = LIVE_BYTES.load(Ordering::Relaxed);
    let plain_rate = run_pushes(&mut node, false, pushes);
    let sealed_rate = run_pushes(&mut node, true, pushes / 4);
    let timers_after = node.timer_count();
    let heap_left_by_pushes = LIVE_BYTES.load(Ordering::Relaxed) as f64 - heap_before_pushes as f64;

    // 3. Broadcast to everyone.
    let broadcast = GatewayPush {
        content: content.clone(),
        ..Default::default()
    };
    let started = Clock::start();
    node.handle(
        now,
        Input::GatewayFrame {
            gw,
            frame: Frame::Packet(raw_packet(
                Command::GatewayPush.code(),
                Flags::NONE,
                -1,
                &broadcast,
            )),
        },
    );
    let mut delivered = drain(&mut node, now, &session, false, threshold, None).0;
    while let Some(at) = node.poll_timeout() {
        if at > now + 1 {
            break;
        }
        node.handle_timeout(now);
        delivered += drain(&mut node, now, &session, false, threshold, None).0;
    }
    let broadcast_rate = started.rates(delivered as f64);

    println!("core-only benchmark (one Node, no I/O, release build)");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| sessions bound (fast connect + AES bind) | {sessions} |");
    println!("| binds per second | {:.0} |", sessions as f64 / bind_secs);
    println!("| heap bytes per bound session (core state only) | {per_session:.0} |");
    println!(
        "| single pushes per second, NO_ACK (route, flow, in-flight, status), wall / CPU | {:.0} / {:.0} |",
        plain_rate.0, plain_rate.1
    );
    println!(
        "| single pushes per second, with the PUSH sealed (AES), wall / CPU | {:.0} / {:.0} |",
        sealed_rate.0, sealed_rate.1
    );
    println!("| timers before / after the pushes | {timers_before} / {timers_after} |");
    println!(
        "| heap left by the pushes, MiB | {:.1} |",
        heap_left_by_pushes / (1024.0 * 1024.0)
    );
    println!(
        "| broadcast deliveries per second ({delivered} phones), wall / CPU | {:.0} / {:.0} |",
        broadcast_rate.0, broadcast_rate.1
    );
    std::hint::black_box(OutFrame::Heartbeat);
}
