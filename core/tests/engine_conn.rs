//! The node and the phones' connections together (the [`harness`] composes them as the
//! runtime does): what the connection decides reaches the node, for the right reason.
mod harness;

use harness::{test_config, World};
use pushgate_core::conn::QueueMarks;
use pushgate_core::frame::Flags;
use pushgate_core::status::PushStatus;
use pushgate_core::{CloseReason, Event, GatewayId};

const GW: GatewayId = GatewayId(900);

fn close_reason(w: &World, conn: pushgate_core::ConnId) -> Option<CloseReason> {
    w.events.iter().find_map(|e| match e {
        Event::Closed { conn: c, reason } if *c == conn => Some(*reason),
        _ => None,
    })
}

/// A phone that stops reading: past the high mark its pushes fail "not writable" at once;
/// once it reads again they go through; past the hard limit it is closed as a slow consumer
/// (not as if it had closed itself), its route goes and its pushes in flight fail.
#[test]
fn a_phone_that_stops_reading_is_marked_then_closed_as_a_slow_consumer() {
    let marks = QueueMarks::new(1_000, 2_000, 2_600).expect("marks");
    let mut w = World::with_marks(test_config(), 7, marks);
    let phone = w.online("dev-A", "android", "u1", "");
    let other = w.online("dev-B", "android", "u2", "");
    w.stall(phone, true);
    let big = "x".repeat(550);
    // Four pushes of ~600 bytes sealed pass the 2,000-byte high mark.
    for sid in 1..=4 {
        w.push_to(GW, sid, "u1", 1, 3000, Flags::NONE, &big);
    }
    assert!(w.events.iter().any(|e| matches!(
        e,
        Event::WritableChanged { conn, writable: false } if *conn == phone
    )));
    w.push_to(GW, 10, "u1", 1, 3000, Flags::NONE, &big);
    let refused = w.reply(GW, 10);
    assert_eq!(refused.status, PushStatus::Failure);
    assert!(refused.reason.contains("not writable"), "{refused:?}");
    // The other phone is not slowed.
    w.push_to(GW, 5, "u2", 1, 3000, Flags::NONE, "hello");
    assert_eq!(w.reply(GW, 5).status, PushStatus::Success);
    assert_eq!(w.pushes(other).len(), 1);
    // It reads again: writable, pushes go through.
    w.stall(phone, false);
    assert!(w.events.iter().any(|e| matches!(
        e,
        Event::WritableChanged { conn, writable: true } if *conn == phone
    )));
    w.push_to(GW, 6, "u1", 1, 3000, Flags::NONE, &big);
    assert_eq!(w.reply(GW, 6).status, PushStatus::Success);
    // It stops for good: pushes fill it to the high mark, then the answers to its own requests
    // (OK to each BIND) pass the hard limit.
    w.stall(phone, true);
    for sid in 11..=14 {
        w.push_to(GW, sid, "u1", 1, 3000, Flags::NONE, &big);
        assert!(
            w.replies_to(GW, sid).is_empty(),
            "push {sid} waits for its write"
        );
    }
    let mut rebinds = 0;
    while close_reason(&w, phone).is_none() {
        rebinds += 1;
        assert!(rebinds < 100, "the hard limit never closed the connection");
        w.bind(phone, &format!("user-{rebinds}"), "");
    }
    assert_eq!(close_reason(&w, phone), Some(CloseReason::SlowConsumer));
    assert!(w.closed_by_node.contains(&phone));
    assert!(w.node.routes_of(&format!("user-{rebinds}")).is_empty());
    assert!(!w.node.connections().any(|c| c == phone));
    // The pushes it never read were in flight until the close, which failed them.
    for sid in 11..=14 {
        assert_eq!(w.reply(GW, sid).status, PushStatus::Failure, "push {sid}");
    }
    assert_eq!(w.node.stats().in_flight, 0);
}
