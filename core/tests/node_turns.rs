//! Bounded turns and bounded timers of the node: a broadcast yields after every batch, so an
//! input that arrives during a big broadcast waits behind at most one batch of its work; a
//! finished push takes its timers with it, so the timer set holds only live work however many
//! pushes went through.
mod harness;

use harness::World;
use pushgate_core::command::Command;
use pushgate_core::frame::{Flags, Frame};
use pushgate_core::message::GatewayPush;
use pushgate_core::status::PushStatus;
use pushgate_core::{ConnId, Event, GatewayId, Input, Millis, Node, Output, PhoneMessage, PushId};
use std::collections::{BTreeMap, VecDeque};

const GW: GatewayId = GatewayId(1);

/// `n` phones online as `user-0` … `user-{n-1}`.
fn online(w: &mut World, n: usize) -> Vec<ConnId> {
    (0..n)
        .map(|i| w.online(&format!("dev-{i}"), "android", &format!("user-{i}"), ""))
        .collect()
}

fn gateway_push(session_id: i32, flags: Flags, push: &GatewayPush) -> Input {
    let packet =
        pushgate_core::pipeline::raw_packet(Command::GatewayPush.code(), flags, session_id, push);
    Input::GatewayFrame {
        gw: GW,
        frame: Frame::Packet(packet),
    }
}

fn single_push(session_id: i32, user: &str, timeout_ms: i32, flags: Flags) -> Input {
    let push = GatewayPush {
        user_id: user.into(),
        client_type: 1,
        timeout_ms,
        content: bytes::Bytes::from_static(b"single"),
        ..Default::default()
    };
    gateway_push(session_id, flags, &push)
}

fn broadcast_to_everyone(session_id: i32) -> Input {
    let push = GatewayPush {
        content: bytes::Bytes::from_static(b"to everyone"),
        ..Default::default()
    };
    gateway_push(session_id, Flags::NONE, &push)
}

/// What one call into the node handed out.
#[derive(Debug, Default)]
struct CallOutput {
    /// PUSH frames of broadcasts, in order.
    broadcast_frames: usize,
    /// Single pushes whose PUSH went out, with the broadcast frames handed out before it in
    /// the same call.
    singles_sent: Vec<(PushId, usize)>,
    /// Writes to confirm (what the connection tasks report back).
    writes: Vec<(ConnId, i32)>,
    /// Gateway replies (statuses).
    statuses: usize,
    /// Store requests, answered by the caller.
    store: Vec<pushgate_core::store::StoreRequest>,
}

/// Drains every output of the node.
fn drain(node: &mut Node) -> CallOutput {
    let mut out = CallOutput::default();
    // Whether the last push frame went out as bulk work: a broadcast's deliveries do, a single
    // push does not (the driver writes it ahead of them).
    let mut last_bulk = None;
    while let Some(output) = node.poll_output() {
        match output {
            Output::Transmit {
                conn,
                report_write: Some(sid),
                bulk,
                ..
            } => {
                out.writes.push((conn, sid));
                last_bulk = Some(bulk);
            }
            Output::Event(Event::PushSent { id, broadcast, .. }) => {
                assert_eq!(
                    last_bulk.take(),
                    Some(broadcast),
                    "a push frame is bulk exactly when it is a broadcast's"
                );
                if broadcast {
                    out.broadcast_frames += 1;
                } else {
                    out.singles_sent.push((id, out.broadcast_frames));
                }
            }
            Output::GatewayTransmit { .. } => out.statuses += 1,
            Output::Store(request) => out.store.push(request),
            _ => {}
        }
    }
    out
}

/// A driver as the runtime's node task runs one: the inputs that arrived first, then one
/// bounded turn (`handle_timeout`), and so on. Inputs that arrive during a turn are queued.
struct Driver {
    node: Node,
    now: Millis,
    arrived: VecDeque<Input>,
    /// Turns run.
    turns: usize,
}

impl Driver {
    /// A node with `phones` phones online (`user-0` …), broadcasts in batches of `batch`
    /// routes without flow control, and a PushClient connected; `arrived` waits its turn.
    fn with_phones(phones: usize, batch: usize, arrived: impl IntoIterator<Item = Input>) -> Self {
        let mut w = World::new(|c| {
            c.broadcast_batch_size = batch;
            c.broadcast_flow_limit_per_window = 0;
        });
        online(&mut w, phones);
        let mut d = Driver {
            node: w.node.into_node(),
            now: w.now,
            arrived: arrived.into_iter().collect(),
            turns: 0,
        };
        d.node.handle(d.now, Input::GatewayConnected { gw: GW });
        d
    }

    /// Handles every input that arrived, in order; the write confirmations they cause arrive
    /// after them.
    fn take_arrived(&mut self) -> Vec<CallOutput> {
        let mut outs = Vec::new();
        while let Some(input) = self.arrived.pop_front() {
            self.node.handle(self.now, input);
            let out = drain(&mut self.node);
            self.confirm(&out);
            outs.push(out);
        }
        outs
    }

    fn confirm(&mut self, out: &CallOutput) {
        for (conn, sid) in &out.writes {
            self.arrived.push_back(Input::PhoneWritten {
                conn: *conn,
                push_session_id: *sid,
                ok: true,
            });
        }
    }

    /// One turn, if one is due now.
    fn turn(&mut self) -> Option<CallOutput> {
        let due = self.node.poll_timeout()?;
        if due > self.now {
            return None;
        }
        self.turns += 1;
        self.node.handle_timeout(self.now);
        let out = drain(&mut self.node);
        self.confirm(&out);
        Some(out)
    }
}

#[test]
fn one_turn_runs_at_most_one_broadcast_batch_and_a_push_arriving_meanwhile_goes_next() {
    const PHONES: usize = 600;
    const BATCH: usize = 16;
    let mut d = Driver::with_phones(PHONES, BATCH, []);
    // Three broadcasts to everyone, started together.
    for session_id in [-1, -2, -3] {
        d.arrived.push_back(broadcast_to_everyone(session_id));
    }
    let mut broadcast_frames = 0;
    for out in d.take_arrived() {
        assert!(
            out.broadcast_frames <= BATCH,
            "starting a broadcast runs one batch, not {}",
            out.broadcast_frames
        );
        broadcast_frames += out.broadcast_frames;
    }
    // A single push arrives during every turn, to a different user each time; it must go out
    // before any broadcast frame of the next turn.
    let mut session_id = 1;
    let mut singles_sent = 0;
    while let Some(turn) = d.turn() {
        assert!(
            turn.broadcast_frames <= BATCH,
            "turn {}: {} broadcast frames in one call",
            d.turns,
            turn.broadcast_frames
        );
        assert!(
            turn.singles_sent.is_empty(),
            "no single push is due in a turn"
        );
        broadcast_frames += turn.broadcast_frames;
        let user = format!("user-{}", (session_id as usize * 7) % PHONES);
        d.arrived
            .push_back(single_push(session_id, &user, 3000, Flags::NONE));
        session_id += 1;
        let arrived = d.take_arrived();
        let sent: Vec<_> = arrived.iter().flat_map(|o| &o.singles_sent).collect();
        assert_eq!(sent.len(), 1, "the push went out before the next turn");
        assert_eq!(
            arrived.iter().map(|o| o.broadcast_frames).sum::<usize>(),
            0,
            "no broadcast work between the turn and the push"
        );
        singles_sent += 1;
        // At most one batch of broadcast work ran since the push arrived (the turn during
        // which it arrived).
        assert!(turn.broadcast_frames + sent[0].1 <= BATCH);
        assert!(d.turns < 10 * PHONES, "the broadcasts never finished");
    }
    assert_eq!(
        broadcast_frames,
        3 * PHONES,
        "every broadcast reached everyone"
    );
    assert_eq!(singles_sent, session_id as usize - 1);
    assert!(
        d.turns >= 3 * PHONES / BATCH - 3,
        "the broadcasts yielded after every batch ({} turns)",
        d.turns
    );
    let stats = d.node.stats();
    assert_eq!(stats.broadcasts, 0, "all three finished");
    assert_eq!(stats.broadcasts(PushStatus::Success), 3);
    assert_eq!(stats.pushes(PushStatus::Success), singles_sent as u64);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(
        d.node.timer_count(),
        0,
        "nothing armed (the phones' idle checks run in their connections)"
    );
}

#[test]
fn a_broadcast_waiting_for_flow_control_arms_one_step_and_resumes_in_turns() {
    const PHONES: usize = 40;
    let mut w = World::new(|c| {
        c.broadcast_batch_size = 4;
        c.broadcast_flow_limit_per_window = 10;
        c.flow_window_ms = 100;
    });
    online(&mut w, PHONES);
    let timers_idle = w.node.timer_count();
    let (node, now) = (w.node.into_node(), w.now);
    let mut d = Driver {
        node,
        now,
        arrived: VecDeque::from([broadcast_to_everyone(-1)]),
        turns: 0,
    };
    d.node.handle(d.now, Input::GatewayConnected { gw: GW });
    let mut sent = d.take_arrived()[0].broadcast_frames;
    let mut windows = 0;
    while d.node.stats().broadcasts > 0 {
        while let Some(out) = d.turn() {
            assert!(out.broadcast_frames <= 4);
            sent += out.broadcast_frames;
            d.take_arrived();
        }
        if d.node.stats().broadcasts == 0 {
            break;
        }
        assert_eq!(
            d.node.timer_count(),
            timers_idle + 1,
            "idle checks and the broadcast's one flow-control step"
        );
        d.now = d.node.poll_timeout().expect("the step is armed");
        windows += 1;
        assert!(windows <= PHONES, "the broadcast never finished");
    }
    assert_eq!(sent, PHONES);
    assert_eq!(windows, PHONES / 10 - 1, "10 per window of 100 ms");
    assert_eq!(d.node.timer_count(), timers_idle);
}

#[test]
fn a_million_finished_pushes_leave_no_timers_behind() {
    const PUSHES: u32 = 1_000_000;
    const TIMEOUT_MS: i32 = 600_000;
    let mut w = World::new(|c| {
        c.global_flow_limit_per_window = 0;
        c.max_push_timeout_ms = 600_000;
    });
    online(&mut w, 1);
    let (mut node, now, mut store) = (w.node.into_node(), w.now, w.store);
    node.handle(now, Input::GatewayConnected { gw: GW });
    drain(&mut node);
    // Nothing armed before (a phone's idle checks run in its connection, not in the node).
    let timers_before = node.timer_count();
    assert_eq!(timers_before, 0);
    let mut now = now;
    let mut by_status: BTreeMap<&str, u32> = BTreeMap::new();
    let mut most_timers = 0;
    for i in 0..PUSHES {
        // 100 s pass over the run: no deadline of 600 s comes due, so only cancelling
        // keeps the set small.
        if i % 10_000 == 0 {
            now += 1000;
            if let Some(at) = node.poll_timeout().filter(|at| *at <= now) {
                node.handle_timeout(at.max(now));
                drain(&mut node);
            }
        }
        // Most succeed on the write; every 4th asks for an ACK, which comes; every 8th goes
        // to a user who is not here (the store is asked, and says offline).
        let (user, flags, expect) = match i % 8 {
            7 => ("nobody", Flags::NONE, "offline"),
            3 => ("user-0", Flags::AUTO_ACK, "acked"),
            _ => ("user-0", Flags::NONE, "success"),
        };
        node.handle(now, single_push(i as i32, user, TIMEOUT_MS, flags));
        let mut statuses = 0;
        let mut pending = VecDeque::from([drain(&mut node)]);
        while let Some(out) = pending.pop_front() {
            statuses += out.statuses;
            most_timers = most_timers.max(node.timer_count());
            for request in out.store {
                let reply = store.apply(&request.op);
                node.handle(
                    now,
                    Input::StoreReply {
                        request: request.id,
                        reply: Ok(reply),
                    },
                );
                pending.push_back(drain(&mut node));
            }
            for (conn, sid) in out.writes {
                node.handle(
                    now,
                    Input::PhoneWritten {
                        conn,
                        push_session_id: sid,
                        ok: true,
                    },
                );
                pending.push_back(drain(&mut node));
                if flags == Flags::AUTO_ACK {
                    let ack = PhoneMessage::Ack { session_id: sid };
                    node.handle(now, ack.into_input(conn));
                    pending.push_back(drain(&mut node));
                }
            }
        }
        assert_eq!(statuses, 1, "push {i} finished");
        *by_status.entry(expect).or_default() += 1;
    }
    let stats = node.stats();
    assert_eq!(stats.pending_pushes, 0);
    assert_eq!(stats.pending_store_requests, 0);
    assert_eq!(
        stats.pushes(PushStatus::Success) + stats.pushes(PushStatus::AckSuccess),
        u64::from(by_status["success"] + by_status["acked"])
    );
    assert_eq!(
        stats.pushes(PushStatus::Offline),
        u64::from(by_status["offline"])
    );
    assert!(
        most_timers <= timers_before + 2,
        "one push at a time: its deadline and its store request at most ({most_timers} timers)"
    );
    assert_eq!(
        node.timer_count(),
        timers_before,
        "after {PUSHES} finished pushes only the idle check is left"
    );
}

/// Confirms the first `n` writes the world holds.
fn confirm_some(w: &mut World, n: usize) {
    let confirmed: Vec<_> = w.unconfirmed.drain(..n).collect();
    for (conn, sid) in confirmed {
        w.node.handle(
            w.now,
            Input::PhoneWritten {
                conn,
                push_session_id: sid,
                ok: true,
            },
        );
    }
    w.drive();
}

#[test]
fn a_broadcast_keeps_at_most_a_batch_and_a_half_of_its_writes_awaited() {
    const PHONES: usize = 20;
    const BATCH: usize = 4;
    let mut w = World::new(|c| c.broadcast_batch_size = BATCH);
    let phones = online(&mut w, PHONES);
    w.auto_write = false;
    let reached = |w: &World| phones.iter().filter(|c| !w.pushes(**c).is_empty()).count();
    w.gateway_push(
        GW,
        9,
        Flags::NONE,
        &GatewayPush {
            content: bytes::Bytes::from_static(b"to everyone"),
            ..Default::default()
        },
    );
    w.advance(0);
    assert_eq!(
        reached(&w),
        BATCH,
        "a batch's worth awaited: the walk waits"
    );
    assert_eq!(w.node.stats().broadcasts, 1);
    confirm_some(&mut w, 1);
    w.advance(0);
    assert_eq!(reached(&w), BATCH, "3 awaited is more than half a batch");
    confirm_some(&mut w, 1);
    w.advance(0);
    assert_eq!(reached(&w), 2 * BATCH, "half written: the next batch went");
    assert_eq!(
        w.unconfirmed.len(),
        BATCH + BATCH / 2,
        "never more than 1.5 batches"
    );
    // Writes that fail count as done too: a closing connection never holds a broadcast.
    let failed: Vec<_> = w.unconfirmed.drain(..).collect();
    for (conn, sid) in failed {
        w.node.handle(
            w.now,
            Input::PhoneWritten {
                conn,
                push_session_id: sid,
                ok: false,
            },
        );
    }
    w.drive();
    w.auto_write = true;
    while w.node.stats().broadcasts > 0 {
        let pending = std::mem::take(&mut w.unconfirmed).len();
        w.advance(0);
        w.confirm_writes(true);
        assert!(pending <= 2 * BATCH);
    }
    assert_eq!(reached(&w), PHONES);
    assert_eq!(w.reply(GW, 9).status, PushStatus::Success);
}

#[test]
fn a_broadcast_whose_batch_reaches_the_end_of_the_routes_finishes_without_another_turn() {
    const PHONES: usize = 10;
    const BATCH: usize = 4;
    let mut d = Driver::with_phones(PHONES, BATCH, [broadcast_to_everyone(-1)]);
    let mut frames: usize = d.take_arrived().iter().map(|o| o.broadcast_frames).sum();
    while let Some(turn) = d.turn() {
        frames += turn.broadcast_frames;
        d.take_arrived();
    }
    assert_eq!(frames, PHONES);
    assert_eq!(d.node.stats().broadcasts(PushStatus::Success), 1);
    // 4 + 4 + 2 routes: the start's batch and two turns; the short last batch ends the walk.
    assert_eq!(d.turns, PHONES.div_ceil(BATCH) - 1);
}
