//! The events only an observer reads (`NodeConfig::trace_events`): off, the node hands out the
//! same frames, statuses and store requests and the events the runtime acts on, but none of
//! the per-push and per-delivery trace events; on, every push and delivery is traced.
mod harness;

use harness::World;
use pushgate_core::frame::Flags;
use pushgate_core::message::GatewayPush;
use pushgate_core::status::PushStatus;
use pushgate_core::{Event, GatewayId};

const GW: GatewayId = GatewayId(1);

/// Two phones, a single push to each and a broadcast to both; the world's events.
fn pushes_and_a_broadcast(trace_events: bool) -> (World, Vec<Event>) {
    let mut w = World::new(|c| c.trace_events = trace_events);
    let a = w.online("dev-a", "android", "user-a", "");
    let b = w.online("dev-b", "android", "user-b", "");
    w.events.clear();
    w.push_to(GW, 1, "user-a", 0, 3_000, Flags::NONE, "to a");
    w.push_to(GW, 2, "user-b", 0, 3_000, Flags::AUTO_ACK, "to b");
    w.gateway_push(
        GW,
        3,
        Flags::NONE,
        &GatewayPush {
            content: bytes::Bytes::from_static(b"to everyone"),
            ..Default::default()
        },
    );
    let sid = w.pushes(b)[0].session_id;
    w.ack(b, sid);
    w.settle();
    for conn in [a, b] {
        assert_eq!(w.pushes(conn).len(), 2, "its single push and the broadcast");
    }
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(w.reply(GW, 2).status, PushStatus::Success, "after the ACK");
    assert_eq!(w.node.stats().in_flight, 0);
    let events = std::mem::take(&mut w.events);
    (w, events)
}

fn count(events: &[Event], what: fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| what(e)).count()
}

#[test]
fn without_tracing_a_push_emits_only_the_events_the_runtime_acts_on() {
    let (_, events) = pushes_and_a_broadcast(false);
    assert_eq!(
        count(&events, |e| matches!(
            e,
            Event::PushAccepted { .. } | Event::PushSent { .. } | Event::WritableChanged { .. }
        )),
        0,
        "{events:#?}"
    );
    assert_eq!(
        count(&events, |e| matches!(e, Event::PushFinished { .. })),
        2
    );
    assert_eq!(
        count(&events, |e| matches!(e, Event::BroadcastFinished { .. })),
        1
    );
}

#[test]
fn with_tracing_every_push_and_delivery_is_traced() {
    let (_, events) = pushes_and_a_broadcast(true);
    assert_eq!(
        count(&events, |e| matches!(e, Event::PushAccepted { .. })),
        3,
        "two single pushes and the broadcast"
    );
    assert_eq!(
        count(&events, |e| matches!(
            e,
            Event::PushSent {
                broadcast: false,
                ..
            }
        )),
        2
    );
    assert_eq!(
        count(&events, |e| matches!(
            e,
            Event::PushSent {
                broadcast: true,
                ..
            }
        )),
        2,
        "one delivery per phone"
    );
}
