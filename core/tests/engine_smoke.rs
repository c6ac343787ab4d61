//! A first end-to-end walk through the engine with the harness: handshake, bind, one push in
//! each ack mode.
mod harness;

use harness::World;
use pushgate_core::frame::Flags;
use pushgate_core::status::PushStatus;
use pushgate_core::GatewayId;

#[test]
fn handshake_bind_and_push_in_each_ack_mode() {
    let mut w = World::new(|_| {});
    let phone = w.online("device-A", "android", "user-1", "tag-a,tag-b");
    assert_eq!(
        w.phones[&phone].answers(),
        vec![(5, 0, "bind success".to_owned())]
    );
    let gw = GatewayId(1);

    w.push_to(gw, 1, "user-1", 1, 4500, Flags::NONE, "no ack");
    assert_eq!(w.reply(gw, 1).status, PushStatus::Success);

    w.push_to(gw, 2, "user-1", 1, 4500, Flags::AUTO_ACK, "auto");
    assert!(w.replies_to(gw, 2).is_empty(), "waits for the ACK");
    let sid = w.pushes(phone).last().unwrap().session_id;
    w.ack(phone, sid);
    assert_eq!(w.reply(gw, 2).status, PushStatus::Success);
    assert!(w.reply(gw, 2).data.contains("waiting-ack"));

    w.push_to(gw, 3, "user-1", 1, 4500, Flags::BIZ_ACK, "biz, never acked");
    w.advance(5000);
    let reply = w.reply(gw, 3);
    assert_eq!(reply.status, PushStatus::Timeout);
    assert_eq!(reply.reason, "ack timeout");
    assert_eq!(w.pushes(phone).len(), 3);
    assert_eq!(w.node.stats().pushes(PushStatus::AckSuccess), 1);
}

#[test]
fn routes_are_written_again_when_the_store_link_comes_back() {
    use pushgate_core::Input;
    let mut w = World::new(|_| {});
    w.online("device-A", "android", "user-1", "");
    w.online("device-B", "windows", "user-1", "");
    assert_eq!(w.store.state.routes.len(), 2);
    // The store restarts empty; when the link is back the node writes its routes again.
    w.store.state.routes.clear();
    w.input(Input::StoreConnected);
    assert_eq!(w.store.state.routes.len(), 2);
    assert!(w.store.state.routes.values().all(|r| r.is_online()));
    let gw = GatewayId(1);
    w.push_to(gw, 1, "user-1", 2, 1000, Flags::NONE, "to the PC");
    assert_eq!(w.reply(gw, 1).status, PushStatus::Success);
}

#[test]
fn a_connection_that_rebinds_during_a_paused_broadcast_gets_it_once() {
    use bytes::Bytes;
    use pushgate_core::message::GatewayPush;
    let mut w = World::new(|cfg| {
        cfg.broadcast_flow_limit_per_window = 1;
        cfg.broadcast_batch_size = 1;
    });
    let a = w.online("device-A", "android", "a-user", "");
    w.online("device-B", "android", "b-user", "");
    let gw = GatewayId(1);
    let broadcast = GatewayPush {
        content: Bytes::from_static(b"news"),
        ..Default::default()
    };
    w.gateway_push(gw, 1, Flags::NONE, &broadcast);
    assert_eq!(w.pushes(a).len(), 1, "the walk reached a-user first");
    // Paused by flow control; the same connection re-binds as a user the walk has not reached.
    w.bind(a, "z-user", "");
    w.advance(5_000);
    assert_eq!(w.pushes(a).len(), 1, "not a second time");
    assert_eq!(w.reply(gw, 1).status, PushStatus::Success);
}
