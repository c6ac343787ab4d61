//! Every path of the push engine, driven through the harness: the status of a single push
//! (reference §13.1), stale-route cleanup (§12.6), multi-device rules and kicks (§9.6, §12.3,
//! §12.4), phone sessions (§9), flow control (§13.2), broadcasts (§13.3), the gateway link
//! (§11) and a snapshot of the gateway reply for each status.
//!
//! Tests marked `#[ignore = "BUG: …"]` assert the correct behaviour and fail on the engine as
//! it is; they document a defect until it is fixed.
mod harness;

use bytes::Bytes;
use harness::{FakeStore, Reply, StoreMode, World, EPOCH0_MS};
use pushgate_core::command::Command;
use pushgate_core::config::TagMatch;
use pushgate_core::frame::{Flags, Frame, Packet};
use pushgate_core::message::{
    Body, ErrorMessage, FastConnectOk, GatewayPush, Handshake, HandshakeOk, HttpRequest,
    HttpResponse, Kick, OkMessage, Push,
};
use pushgate_core::pipeline;
use pushgate_core::route::ClientType;
use pushgate_core::status::{PushStatus, Reason};
use pushgate_core::store::{
    KickNotice, RouteRecord, StoreOp, TaskControl, MAX_CLOCK_DISAGREEMENT_US,
};
use pushgate_core::{CloseReason, ConnId, Event, GatewayId, Input, KickCause, OutFrame, Output};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

const GW: GatewayId = GatewayId(1);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The ERROR body of a reply (panics on an OK).
fn error_of(reply: &Reply) -> ErrorMessage {
    assert_eq!(
        reply.packet.cmd,
        Command::Error.code(),
        "not an ERROR: {reply:#?}"
    );
    ErrorMessage::decode(&reply.packet.body).expect("ERROR body")
}

/// The OK body of a reply (panics on an ERROR).
fn ok_of(reply: &Reply) -> OkMessage {
    assert_eq!(
        reply.packet.cmd,
        Command::Ok.code(),
        "not an OK: {reply:#?}"
    );
    OkMessage::decode(&reply.packet.body).expect("OK body")
}

/// The time points of a reply's data JSON, as (name, epoch ms).
fn time_points(data: &str) -> Vec<(String, i64)> {
    let json: serde_json::Value = serde_json::from_str(data).expect("data is JSON");
    let list = json["timePoints"].as_array().expect("timePoints array");
    list.chunks(2)
        .map(|pair| {
            (
                pair[0].as_str().expect("point name").to_owned(),
                pair[1].as_i64().expect("point time"),
            )
        })
        .collect()
}

/// Just the names of the time points.
fn point_names(data: &str) -> Vec<String> {
    time_points(data).into_iter().map(|(n, _)| n).collect()
}

/// Epoch ms of virtual time `now`.
fn epoch(now: u64) -> i64 {
    EPOCH0_MS + now as i64
}

/// Every `PushFinished` event as (status, reason, delivered).
fn finished(w: &World) -> Vec<(PushStatus, Option<Reason>, bool)> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::PushFinished {
                status,
                reason,
                delivered,
                ..
            } => Some((*status, reason.clone(), *delivered)),
            _ => None,
        })
        .collect()
}

/// Every `BroadcastFinished` event as (sent, status, reason).
fn broadcasts_finished(w: &World) -> Vec<(u64, PushStatus, Option<Reason>)> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::BroadcastFinished {
                sent,
                status,
                reason,
                ..
            } => Some((*sent, *status, reason.clone())),
            _ => None,
        })
        .collect()
}

/// Stores user u1's Mobile route of device dev-A on node 10.0.0.2 (connection `conn_id`;
/// `None`: offline), stamped by a clock `ahead_ms` ahead of this node's; returns its
/// connection age (µs).
fn store_device_route_elsewhere(w: &mut World, conn_id: Option<&str>, ahead_ms: i64) -> u64 {
    let ahead_us = u64::try_from(EPOCH0_MS + ahead_ms).unwrap() * 1000;
    let mut route = FakeStore::route("10.0.0.2", 3001, conn_id);
    route.device_id = "dev-A".into();
    route.conn_version = ahead_us;
    route.version = ahead_us + 5_000;
    w.store
        .state
        .routes
        .insert(("u1".into(), ClientType::Mobile), route);
    ahead_us
}

/// Stores a route of user `u1` by another device ("dev-B") on another node, bound
/// `ahead_ms` after this node's clock start; `conn_id` `None` for a bind that has ended.
/// Answers its version.
fn store_other_device_route_elsewhere(w: &mut World, conn_id: Option<&str>, ahead_ms: i64) -> u64 {
    let ahead_us = u64::try_from(EPOCH0_MS + ahead_ms).unwrap() * 1000;
    let mut route = FakeStore::route("10.0.0.2", 3001, conn_id);
    route.device_id = "dev-B".into();
    route.conn_version = ahead_us - 1_000_000;
    route.version = ahead_us;
    w.store
        .state
        .routes
        .insert(("u1".into(), ClientType::Mobile), route);
    ahead_us
}

/// Asserts that `phone` kept user u1 (Mobile), unkicked, and that the store names this node
/// for it, online; answers the stored route.
fn assert_holds_u1_here(w: &World, phone: ConnId) -> RouteRecord {
    assert!(w.received(phone, Command::Kick).is_empty());
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);
    let stored = stored_route(w, "u1", ClientType::Mobile);
    assert!(stored.is_online(), "{stored:?}");
    assert_eq!(stored.host, w.node.config().node_addr.host);
    stored
}

/// The store's route of (user, client type); the test expects one.
fn stored_route(w: &World, user: &str, ct: ClientType) -> RouteRecord {
    w.store
        .state
        .routes
        .get(&(user.to_owned(), ct))
        .expect("a stored route")
}

fn store_token(w: &World, user: &str, ct: ClientType) -> Option<String> {
    w.store
        .state
        .routes
        .get(&(user.to_owned(), ct))
        .and_then(|r| r.conn_id.clone())
}

/// The phone's OK/ERROR answers.
fn answers(w: &World, conn: ConnId) -> Vec<(u8, u8, String)> {
    w.phones[&conn].answers()
}

/// True when the node closed the connection.
fn closed(w: &World, conn: ConnId) -> bool {
    w.closed_by_node.contains(&conn)
}

/// The close reason the node reported for `conn`.
fn close_reason(w: &World, conn: ConnId) -> Option<CloseReason> {
    w.events.iter().find_map(|e| match e {
        Event::Closed { conn: c, reason } if *c == conn => Some(*reason),
        _ => None,
    })
}

/// A broadcast GATEWAY_PUSH (user id empty), shaped by `f`.
fn broadcast(w: &mut World, session_id: i32, f: impl FnOnce(&mut GatewayPush)) {
    let mut push = GatewayPush {
        content: Bytes::from_static(b"to everyone"),
        ..Default::default()
    };
    f(&mut push);
    w.gateway_push(GW, session_id, Flags::NONE, &push);
}

/// The set of users (by connection) whose phone received at least one PUSH.
fn reached(w: &World, phones: &[(String, ConnId)]) -> BTreeSet<String> {
    phones
        .iter()
        .filter(|(_, c)| !w.pushes(*c).is_empty())
        .map(|(u, _)| u.clone())
        .collect()
}

/// A handshake body as the harness's phone would send it, for tweaking.
fn handshake_body(w: &World, conn: ConnId) -> Handshake {
    let phone = &w.phones[&conn];
    Handshake {
        device_id: phone.device_id.clone(),
        os_name: phone.os_name.clone(),
        os_version: "6.0".into(),
        client_version: "2.0".into(),
        iv: Bytes::copy_from_slice(&phone.iv),
        client_key: Bytes::copy_from_slice(&phone.client_key),
        min_heartbeat_ms: 240_000,
        max_heartbeat_ms: 240_000,
        timestamp_ms: 0,
    }
}

/// Sends `hs` RSA-encrypted (as every client SDK does) with packet session id `sid`.
fn send_rsa_handshake(w: &mut World, conn: ConnId, sid: i32, hs: &Handshake) {
    let mut rng = ChaCha8Rng::seed_from_u64(sid as u64);
    let (flags, body) = pipeline::seal_rsa(
        &hs.to_bytes(),
        &harness::server_key().public_key(),
        &mut rng,
    )
    .unwrap();
    w.send_packet(
        conn,
        Packet::new(Command::Handshake.code(), flags, sid, body),
    );
}

/// Sends `body` under the phone's current cipher with an explicit packet session id.
fn send_sealed_sid(
    w: &mut World,
    conn: ConnId,
    cmd: Command,
    flags: Flags,
    sid: i32,
    body: &impl Body,
) {
    let cipher = w.phones[&conn].cipher.clone();
    let packet = pipeline::sealed_packet(
        cmd.code(),
        flags,
        sid,
        body,
        cipher.as_ref(),
        pipeline::CLIENT_COMPRESS_THRESHOLD_BYTES,
    );
    w.send_packet(conn, packet);
}

/// `n` phones online as users `name(i)` (android, no tags); returns (user, conn).
fn many_online(w: &mut World, n: usize, name: impl Fn(usize) -> String) -> Vec<(String, ConnId)> {
    (0..n)
        .map(|i| {
            let user = name(i);
            let conn = w.online(&format!("dev-{user}"), "android", &user, "");
            (user, conn)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Status paths of a single push (§13.1)
// ---------------------------------------------------------------------------------------------

#[test]
fn no_ack_push_succeeds_only_once_the_write_is_confirmed() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.auto_write = false;
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "hello");
    let pushes = w.pushes(phone);
    assert_eq!(pushes.len(), 1);
    assert_eq!(&pushes[0].body[..], b"hello");
    assert!(
        !pushes[0].flags.intersects(Flags::ACK_MASK),
        "no ack bits asked"
    );
    assert!(pushes[0].flags.contains(Flags::CRYPTO), "sealed");
    assert!(
        w.replies_to(GW, 1).is_empty(),
        "no status before the write is confirmed"
    );

    w.advance(5);
    w.confirm_writes(true);
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::Success);
    assert_eq!(ok_of(&reply).cmd, Command::GatewayPush.code());
    assert_eq!(
        time_points(&reply.data),
        vec![
            ("push-center-begin".to_owned(), epoch(0)),
            ("before-send".to_owned(), epoch(0)),
            ("success-end".to_owned(), epoch(5)),
        ]
    );
    assert_eq!(finished(&w), vec![(PushStatus::Success, None, true)]);
    assert_eq!(w.node.stats().pushes(PushStatus::Success), 1);
    assert_eq!(w.node.stats().in_flight, 0);
}

#[test]
fn auto_ack_and_biz_ack_pushes_end_in_ack_success_when_the_phone_acks() {
    for (sid, flags) in [(1, Flags::AUTO_ACK), (2, Flags::BIZ_ACK)] {
        let mut w = World::new(|_| {});
        let phone = w.online("dev-A", "android", "u1", "");
        w.push_to(GW, sid, "u1", 1, 3000, flags, "needs an ack");
        let push = w.pushes(phone)[0].clone();
        assert!(push.flags.contains(flags), "ack bit travels to the phone");
        assert!(
            w.replies_to(GW, sid).is_empty(),
            "written, but waiting for the ACK"
        );
        assert_eq!(w.node.stats().in_flight, 1);

        w.advance(7);
        w.ack(phone, push.session_id);
        let reply = w.reply(GW, sid).clone();
        assert_eq!(reply.status, PushStatus::Success);
        assert_eq!(
            point_names(&reply.data),
            [
                "push-center-begin",
                "before-send",
                "waiting-ack",
                "success-end"
            ]
        );
        assert_eq!(time_points(&reply.data)[3].1, epoch(7));
        assert_eq!(finished(&w), vec![(PushStatus::AckSuccess, None, true)]);
        assert_eq!(w.node.stats().pushes(PushStatus::AckSuccess), 1);
        assert_eq!(w.node.stats().in_flight, 0);
    }
}

#[test]
fn ack_arriving_before_the_write_confirmation_still_gives_ack_success() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.auto_write = false;
    w.push_to(GW, 1, "u1", 1, 3000, Flags::AUTO_ACK, "fast phone");
    let sid = w.pushes(phone)[0].session_id;
    w.ack(phone, sid); // MPush registers its ack wait after the write and loses this ACK
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(finished(&w), vec![(PushStatus::AckSuccess, None, true)]);

    w.confirm_writes(true);
    w.settle();
    assert_eq!(
        w.replies_to(GW, 1).len(),
        1,
        "the late write confirmation adds nothing"
    );
    assert_eq!(finished(&w).len(), 1);
}

#[test]
fn failed_write_gives_failure() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.auto_write = false;
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    assert_eq!(w.pushes(phone).len(), 1);
    w.confirm_writes(false);
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::Failure);
    let error = error_of(&reply);
    assert_eq!((error.cmd, error.code), (16, 2));
    assert_eq!(error.reason, "write to phone failed");
    assert_eq!(point_names(&reply.data).last().unwrap(), "failure-end");
    w.settle();
    assert_eq!(w.replies_to(GW, 1).len(), 1, "the deadline adds nothing");
}

#[test]
fn unwritable_connection_gives_failure_without_sending() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.input(Input::PhoneWritable {
        conn: phone,
        writable: false,
    });
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::Failure);
    assert_eq!(error_of(&reply).code, 2);
    assert_eq!(reply.reason, "connection not writable");
    assert!(w.pushes(phone).is_empty());

    // Drained again: pushes flow.
    w.input(Input::PhoneWritable {
        conn: phone,
        writable: true,
    });
    w.push_to(GW, 2, "u1", 1, 3000, Flags::NONE, "y");
    assert_eq!(w.reply(GW, 2).status, PushStatus::Success);
}

#[test]
fn connection_closing_while_the_push_awaits_its_ack_gives_failure() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.push_to(GW, 1, "u1", 1, 3000, Flags::AUTO_ACK, "x");
    assert_eq!(w.pushes(phone).len(), 1);
    assert!(w.replies_to(GW, 1).is_empty());
    w.drop_phone(phone);
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::Failure);
    assert_eq!(reply.reason, "connection closed");
    assert_eq!(w.node.stats().in_flight, 0);
    w.settle();
    assert_eq!(w.replies_to(GW, 1).len(), 1);
}

#[test]
fn connection_closing_before_the_write_is_confirmed_gives_failure() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.auto_write = false;
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    w.drop_phone(phone);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Failure);
    w.settle();
    assert_eq!(w.replies_to(GW, 1).len(), 1);
    assert_eq!(w.node.stats().in_flight, 0);
}

#[test]
fn unknown_user_is_offline() {
    let mut w = World::new(|_| {});
    w.push_to(GW, 1, "nobody", 1, 3000, Flags::NONE, "x");
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::Offline);
    let error = error_of(&reply);
    assert_eq!(
        (error.cmd, error.code, error.reason.as_str()),
        (16, 1, "user offline")
    );
    assert_eq!(
        point_names(&reply.data),
        ["push-center-begin", "offline-end"]
    );
    assert_eq!(w.store.requests_seen, 1, "one route lookup");
}

#[test]
fn offline_store_route_is_offline() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Mobile),
        FakeStore::route("127.0.0.1", 3001, None),
    );
    w.store.state.routes.insert(
        ("u2".into(), ClientType::Mobile),
        FakeStore::route("10.0.0.2", 3001, None),
    );
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    w.push_to(GW, 2, "u2", 1, 3000, Flags::NONE, "x");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Offline);
    assert_eq!(
        w.reply(GW, 2).status,
        PushStatus::Offline,
        "an offline route elsewhere is offline, not a router change"
    );
}

#[test]
fn store_route_on_another_node_is_router_change() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Mobile),
        FakeStore::route("10.0.0.2", 3001, Some("abc")),
    );
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::RouterChange);
    let error = error_of(&reply);
    assert_eq!((error.code, error.reason.as_str()), (3, "router change"));
    assert_eq!(
        point_names(&reply.data),
        ["push-center-begin", "redirect-end"]
    );
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile).as_deref(),
        Some("abc"),
        "another node's route is left alone"
    );
    // The finished push names the route the store read, so whoever follows the change can
    // push there without reading the store again; other statuses name none.
    let moved: Vec<_> = w
        .events
        .iter()
        .filter_map(|e| match e {
            Event::PushFinished {
                status, moved_to, ..
            } => Some((
                *status,
                moved_to
                    .as_ref()
                    .map(|r| (r.host.clone(), r.conn_id.clone())),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        moved,
        [(
            PushStatus::RouterChange,
            Some(("10.0.0.2".to_owned(), Some("abc".to_owned())))
        )]
    );
    w.push_to(GW, 2, "nobody", 1, 3000, Flags::NONE, "x");
    assert!(w.events.iter().all(|e| match e {
        Event::PushFinished {
            status, moved_to, ..
        } => (*status == PushStatus::RouterChange) == moved_to.is_some(),
        _ => true,
    }));
}

#[test]
fn missing_business_ack_times_out_with_ack_timeout() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.push_to(GW, 1, "u1", 1, 2000, Flags::BIZ_ACK, "x");
    assert_eq!(w.pushes(phone).len(), 1);
    w.advance(1999);
    assert!(w.replies_to(GW, 1).is_empty());
    w.advance(1);
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::Timeout);
    let error = error_of(&reply);
    assert_eq!((error.code, error.reason.as_str()), (2, "ack timeout"));
    assert_eq!(
        time_points(&reply.data),
        vec![
            ("push-center-begin".to_owned(), epoch(0)),
            ("before-send".to_owned(), epoch(0)),
            ("waiting-ack".to_owned(), epoch(0)),
            ("timeout-end".to_owned(), epoch(2000)),
        ]
    );
    assert_eq!(w.node.stats().in_flight, 0);
}

#[test]
fn store_that_never_answers_gives_push_timeout_when_the_deadline_comes_first() {
    let mut w = World::new(|c| c.store_timeout_ms = 3000);
    w.store.mode = StoreMode::Drop;
    w.push_to(GW, 1, "u1", 1, 1000, Flags::NONE, "x");
    w.advance(999);
    assert!(w.replies_to(GW, 1).is_empty());
    w.advance(1);
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::Timeout);
    assert_eq!(reply.reason, "push timeout");
    assert_eq!(
        point_names(&reply.data),
        ["push-center-begin", "timeout-end"]
    );
    w.settle();
    assert_eq!(
        w.replies_to(GW, 1).len(),
        1,
        "the store deadline adds nothing"
    );
    assert_eq!(w.node.stats().pending_store_requests, 0);
}

#[test]
fn store_that_never_answers_gives_route_lookup_failure_when_the_store_deadline_comes_first() {
    let mut w = World::new(|c| c.store_timeout_ms = 3000);
    w.store.mode = StoreMode::Drop;
    w.push_to(GW, 1, "u1", 1, 10_000, Flags::NONE, "x");
    w.advance(2999);
    assert!(w.replies_to(GW, 1).is_empty());
    w.advance(1);
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::Failure);
    assert!(
        reply.reason.starts_with("route lookup failed"),
        "{:?}",
        reply.reason
    );
    w.settle();
    assert_eq!(
        w.replies_to(GW, 1).len(),
        1,
        "the push deadline adds nothing"
    );
}

#[test]
fn late_ack_after_the_timeout_is_ignored() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.push_to(GW, 1, "u1", 1, 1000, Flags::BIZ_ACK, "x");
    let sid = w.pushes(phone)[0].session_id;
    w.advance(1500);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Timeout);
    w.ack(phone, sid);
    assert_eq!(w.replies_to(GW, 1).len(), 1, "no second reply");
    assert_eq!(finished(&w).len(), 1);
    assert_eq!(w.node.stats().pushes(PushStatus::AckSuccess), 0);
    assert!(!closed(&w, phone), "a late ACK is not an error");
}

#[test]
fn duplicate_ack_is_ignored() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.push_to(GW, 1, "u1", 1, 3000, Flags::AUTO_ACK, "x");
    let sid = w.pushes(phone)[0].session_id;
    w.ack(phone, sid);
    w.ack(phone, sid);
    assert_eq!(w.replies_to(GW, 1).len(), 1);
    assert_eq!(w.node.stats().pushes(PushStatus::AckSuccess), 1);

    // The next push is not finished by the stale duplicate either.
    w.push_to(GW, 2, "u1", 1, 3000, Flags::AUTO_ACK, "y");
    w.ack(phone, sid);
    assert!(w.replies_to(GW, 2).is_empty());
    assert!(!closed(&w, phone));
}

#[test]
fn ack_from_another_connection_with_the_same_session_id_does_not_count() {
    let mut w = World::new(|_| {});
    let a = w.online("dev-A", "android", "u1", "");
    let b = w.online("dev-B", "android", "u2", "");
    w.push_to(GW, 1, "u1", 1, 3000, Flags::AUTO_ACK, "for A");
    let sid = w.pushes(a)[0].session_id;
    w.ack(b, sid);
    assert!(w.replies_to(GW, 1).is_empty(), "B cannot ack A's push");
    w.ack(a, sid);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(finished(&w), vec![(PushStatus::AckSuccess, None, true)]);
}

// ---------------------------------------------------------------------------------------------
// Stale routes (§12.6, §9.10)
// ---------------------------------------------------------------------------------------------

#[test]
fn closed_connection_drops_its_local_route_and_marks_the_store_route_offline() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    assert!(store_token(&w, "u1", ClientType::Mobile).is_some());
    w.drop_phone(phone);
    assert!(w.node.routes_of("u1").is_empty());
    let route = stored_route(&w, "u1", ClientType::Mobile);
    assert_eq!(route.conn_id, None, "rewritten offline, not deleted");
    assert_eq!((route.host.as_str(), route.port), ("127.0.0.1", 3001));
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Offline);
}

#[test]
fn store_route_to_this_node_without_a_local_connection_is_offline_and_marked_offline() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Mobile),
        FakeStore::route("127.0.0.1", 3001, Some("stale-conn")),
    );
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Offline);
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile),
        None,
        "SetRouteOffline cleaned the stale route"
    );
    // Same with "any client type" (0).
    w.store.state.routes.insert(
        ("u2".into(), ClientType::Pc),
        FakeStore::route("127.0.0.1", 3001, Some("stale-2")),
    );
    w.push_to(GW, 2, "u2", 0, 3000, Flags::NONE, "x");
    assert_eq!(w.reply(GW, 2).status, PushStatus::Offline);
    assert_eq!(store_token(&w, "u2", ClientType::Pc), None);
}

#[test]
fn broadcast_meeting_a_closed_connection_skips_it_and_finishes() {
    let mut w = World::new(|c| c.broadcast_batch_size = 2);
    let phones = many_online(&mut w, 4, |i| format!("u{}", i + 1));
    let conn = |u: &str| phones.iter().find(|(n, _)| n == u).unwrap().1;
    w.auto_write = false;
    broadcast(&mut w, 50, |_| {});
    assert_eq!(
        reached(&w, &phones),
        ["u1", "u2"].map(String::from).into(),
        "first batch"
    );
    // u3 goes away before the broadcast reaches it; u1 goes away with its write unconfirmed.
    w.drop_phone(conn("u3"));
    w.drop_phone(conn("u1"));
    w.advance(0);
    assert!(w.pushes(conn("u3")).is_empty());
    assert_eq!(w.pushes(conn("u4")).len(), 1);
    assert!(
        w.replies_to(GW, 50).is_empty(),
        "u2's and u4's writes are pending"
    );
    w.confirm_writes(true);
    assert_eq!(w.reply(GW, 50).status, PushStatus::Success);
    let finished = broadcasts_finished(&w);
    assert_eq!(finished.len(), 1);
    assert_eq!(
        finished[0].0, 3,
        "u1, u2 and u4 were sent to; u3 is not counted"
    );
    assert_eq!(w.node.stats().broadcast_deliveries, 3);
    assert_eq!(w.node.stats().in_flight, 0);
}

#[test]
fn old_connection_closing_after_a_newer_one_took_its_route_leaves_the_route_alone() {
    let mut w = World::new(|_| {});
    let old = w.online("dev-A", "android", "u1", "");
    let old_token = store_token(&w, "u1", ClientType::Mobile).unwrap();
    let new = w.online("dev-B", "android", "u1", "");
    let new_token = store_token(&w, "u1", ClientType::Mobile).unwrap();
    assert_ne!(old_token, new_token);

    w.drop_phone(old);
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, new)]);
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile),
        Some(new_token),
        "store route compared by conn id: untouched"
    );
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "to the new one");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(w.pushes(new).len(), 1);

    // The same across nodes: the user bound again on another node (the store route names it),
    // then the local connection goes away. Its offline write must not touch the new route.
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Mobile),
        FakeStore::route("10.0.0.2", 3001, Some("remote")),
    );
    w.drop_phone(new);
    assert!(w.node.routes_of("u1").is_empty());
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile).as_deref(),
        Some("remote")
    );
    w.push_to(GW, 2, "u1", 1, 3000, Flags::NONE, "x");
    assert_eq!(w.reply(GW, 2).status, PushStatus::RouterChange);
}

// ---------------------------------------------------------------------------------------------
// Multi-device and kicks (§9.6, §12.3, §12.4)
// ---------------------------------------------------------------------------------------------

#[test]
fn second_device_of_the_same_type_kicks_the_first_and_takes_the_route() {
    let mut w = World::new(|_| {});
    let first = w.online("dev-A", "android", "u1", "");
    let second = w.online("dev-B", "ios", "u1", ""); // android and iOS are both mobile
    let kicks = w.received(first, Command::Kick);
    assert_eq!(kicks.len(), 1);
    let kick = kicks[0].clone();
    assert_eq!(kick.session_id, 0);
    assert!(kick.flags.contains(Flags::CRYPTO), "KICK is sealed");
    assert_eq!(
        Kick::decode(&kick.body).unwrap(),
        Kick {
            device_id: "dev-A".into(),
            user_id: "u1".into()
        }
    );
    assert!(w.received(second, Command::Kick).is_empty());
    assert!(!closed(&w, first), "the kicked connection stays open");
    assert!(w.events.iter().any(
        |e| matches!(e, Event::Kicked { conn, user_id, device_id, cause: KickCause::NewerBind } if *conn == first && user_id == "u1" && device_id == "dev-A")
    ));
    assert_eq!(w.node.stats().kicks, 1);
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, second)]);

    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(w.pushes(second).len(), 1);
    assert!(w.pushes(first).is_empty());
}

#[test]
fn devices_of_different_types_keep_both_routes_without_a_kick() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    let pc = w.online("dev-B", "windows", "u1", "");
    assert!(w.received(phone, Command::Kick).is_empty());
    assert!(w.received(pc, Command::Kick).is_empty());
    assert_eq!(
        w.node.routes_of("u1"),
        vec![(ClientType::Mobile, phone), (ClientType::Pc, pc)]
    );
    assert!(store_token(&w, "u1", ClientType::Mobile).is_some());
    assert!(store_token(&w, "u1", ClientType::Pc).is_some());
    w.push_to(GW, 1, "u1", 2, 3000, Flags::NONE, "to the PC");
    w.push_to(GW, 2, "u1", 1, 3000, Flags::NONE, "to the phone");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(w.reply(GW, 2).status, PushStatus::Success);
    assert_eq!(&w.pushes(pc)[0].body[..], b"to the PC");
    assert_eq!(&w.pushes(phone)[0].body[..], b"to the phone");
    assert_eq!(w.pushes(pc).len(), 1);
    assert_eq!(w.pushes(phone).len(), 1);
}

#[test]
fn binding_over_an_online_route_on_another_node_publishes_a_kick_notice() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Mobile),
        FakeStore::route("10.0.0.2", 3001, Some("abc")),
    );
    let phone = w.online("dev-A", "android", "u1", "");
    assert_eq!(
        w.store.kicks,
        vec![KickNotice {
            client_type: 1,
            conn_id: "abc".into(),
            device_id: "dev".into(),
            target_port: 3001,
            target_server: "10.0.0.2".into(),
            user_id: "u1".into(),
            version: 0,
        }]
    );
    assert!(w.received(phone, Command::Kick).is_empty());
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);

    // A stale route naming this very node is not "another node": no notice.
    w.store.state.routes.insert(
        ("u2".into(), ClientType::Mobile),
        FakeStore::route("127.0.0.1", 3001, Some("old-here")),
    );
    w.online("dev-B", "android", "u2", "");
    assert_eq!(w.store.kicks.len(), 1);
}

/// Found by the simulation (fresh seeds, B6): a BIND that waited in a paused node (or behind a
/// clogged link) while its phone gave up is read just before the phone's close. Its route
/// write displaced the user's live connection on another node, and the kick notice it sent
/// took the user from that connection, so nobody held the user. Now a bind whose connection
/// is gone when the store answers kicks nobody and puts the displaced route back.
#[test]
fn a_bind_whose_connection_closed_before_the_store_answered_gives_the_route_back() {
    let mut w = World::new(|_| {});
    let far = FakeStore::route("10.0.0.2", 3001, Some("far-conn"));
    w.store
        .state
        .routes
        .insert(("u1".into(), ClientType::Mobile), far.clone());
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.store.mode = StoreMode::Hold;
    w.bind(phone, "u1", "");
    w.drop_phone(phone);
    // The route write, then the offline mark of the closed connection, reach the store.
    w.release_store();
    assert!(w.store.kicks.is_empty(), "nobody is kicked for a dead bind");
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    w.settle();
    let back = stored_route(&w, "u1", ClientType::Mobile);
    assert_eq!(
        RouteRecord {
            ended: Vec::new(),
            links: Vec::new(),
            ..back.clone()
        },
        far,
        "the displaced connection's route is back"
    );
    assert_eq!(back.ended.len(), 1, "remembering the undone bind as ended");
    assert!(w.store.kicks.is_empty());
    assert!(w.node.routes_of("u1").is_empty());
}

/// A phone binds "u1" while the store holds the route of another device on another node
/// ("far-conn") and answers nothing: the bind's route write times out and is sent again, and
/// both wait in the store's queue.
fn bind_past_the_store_timeout() -> (World, ConnId) {
    let mut w = World::new(|_| {});
    let far = FakeStore::route("10.0.0.2", 3001, Some("far-conn"));
    w.store
        .state
        .routes
        .insert(("u1".into(), ClientType::Mobile), far);
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.store.mode = StoreMode::Hold;
    w.bind(phone, "u1", "");
    let timeout = w.node.config().store_timeout_ms;
    w.advance(timeout + 1);
    (w, phone)
}

/// Found by the simulation (fresh seeds, B11): a bind's route write reached the store only
/// after the node had given up waiting (a store link backed up after an outage). Its answer —
/// the displaced route of another device on another node — came late, and the retry of the
/// write found the bind itself stored, so no kick notice went out and two nodes kept the user.
/// A late answer to a bind's route write is still acted on.
#[test]
fn a_late_answer_to_a_bind_route_write_still_kicks_the_displaced_connection() {
    let (mut w, phone) = bind_past_the_store_timeout();
    let writes = w
        .store
        .held
        .iter()
        .filter(|r| matches!(r.op, StoreOp::PutRoute { .. }))
        .count();
    assert_eq!(writes, 2, "the write and its retry: {:?}", w.store.held);
    // The first one lands (displacing the far connection) and answers late; the retry finds
    // the bind itself.
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    assert_eq!(
        w.store.kicks,
        vec![KickNotice {
            client_type: 1,
            conn_id: "far-conn".into(),
            device_id: "dev".into(),
            target_port: 3001,
            target_server: "10.0.0.2".into(),
            user_id: "u1".into(),
            version: 0,
        }]
    );
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);
    assert!(w.received(phone, Command::Kick).is_empty());
}

/// The same late answer when the retry's answer is lost too: the late one alone names the
/// displaced connection, which gets exactly one kick notice (later retries find the bind
/// itself stored).
#[test]
fn a_late_answer_kicks_once_when_the_retry_is_lost() {
    let (mut w, phone) = bind_past_the_store_timeout();
    let timeout = w.node.config().store_timeout_ms;
    // The retry is lost on the way; the first write lands and answers late.
    let retry = w
        .store
        .held
        .iter()
        .rposition(|r| matches!(r.op, StoreOp::PutRoute { .. }))
        .expect("a retry");
    w.store.held.remove(retry);
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    // The lost retry times out and is sent once more.
    w.heartbeat(phone);
    w.advance(timeout + 1);
    let notices: Vec<&KickNotice> = w
        .store
        .kicks
        .iter()
        .filter(|k| k.conn_id == "far-conn")
        .collect();
    assert_eq!(notices.len(), 1, "{:?}", w.store.kicks);
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);
    assert!(store_token(&w, "u1", ClientType::Mobile).is_some());
    assert!(w.received(phone, Command::Kick).is_empty());
}

/// A late answer never puts the displaced route back (found by the simulation, seed
/// 12000984): the binding connection held the user (a retry of the write took effect) and
/// gave it up since, and the displaced connection may have ended meanwhile, beyond what the
/// store remembers of ended binds; putting its route back would leave it online with nobody
/// behind it. Only an answer that comes in time undoes a dead bind (B6).
#[test]
fn a_late_answer_never_puts_the_displaced_route_back() {
    let (mut w, phone) = bind_past_the_store_timeout();
    w.drop_phone(phone);
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    w.settle();
    assert!(w.store.kicks.is_empty(), "nobody is kicked for a dead bind");
    let stored = stored_route(&w, "u1", ClientType::Mobile);
    assert!(
        !stored.is_online(),
        "the dead bind stays offline: {stored:?}"
    );
}

/// The same race, and the displaced connection closed too before the route came back: its
/// offline mark reached the store while the dead bind was stored, so the route comes back
/// offline, never as a connection nobody holds.
#[test]
fn a_displaced_connection_that_closed_meanwhile_comes_back_offline() {
    let mut w = World::new(|_| {});
    let far = FakeStore::route("10.0.0.2", 3001, Some("far-conn"));
    w.store
        .state
        .routes
        .insert(("u1".into(), ClientType::Mobile), far.clone());
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.store.mode = StoreMode::Hold;
    w.bind(phone, "u1", "");
    w.drop_phone(phone);
    w.release_store(); // the route write and the offline mark; RestoreRoute is held
                       // The far node's connection closes; its mark finds the dead bind stored.
    w.store.apply(&StoreOp::SetRouteOffline {
        user_id: "u1".into(),
        client_type: ClientType::Mobile,
        node: far.node(),
        conn_id: "far-conn".into(),
        version: far.version,
    });
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    w.settle();
    let stored = stored_route(&w, "u1", ClientType::Mobile);
    assert!(stored.is_bind(&far.node(), far.version), "{stored:?}");
    assert!(!stored.is_online());
}

/// Found by the simulation (seed 175): a connection re-binds its user while the store drops
/// writes, then closes. Its offline mark names the newer bind, whose write never landed; the
/// store's route is the older bind of the same connection and must go offline too.
#[test]
fn closing_after_a_lost_rebind_takes_the_older_bind_offline() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    assert!(store_token(&w, "u1", ClientType::Mobile).is_some());
    w.store.mode = StoreMode::Drop;
    w.bind(phone, "u1", "t1"); // a new bind of the same user: its write is lost
    w.store.mode = StoreMode::Immediate;
    w.drop_phone(phone);
    w.settle();
    assert_eq!(store_token(&w, "u1", ClientType::Mobile), None);
}

/// The same race, but another bind of the user came in between: the store keeps the newer
/// bind, and the undo of the dead one touches nothing.
#[test]
fn undoing_a_dead_bind_never_touches_a_newer_one() {
    let mut w = World::new(|_| {});
    let far = FakeStore::route("10.0.0.2", 3001, Some("far-conn"));
    w.store
        .state
        .routes
        .insert(("u1".into(), ClientType::Mobile), far);
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.store.mode = StoreMode::Hold;
    w.bind(phone, "u1", "");
    w.drop_phone(phone);
    w.release_store(); // PutRoute (displaces far) and the offline mark; RestoreRoute is held
    let newer = RouteRecord {
        version: u64::MAX / 2,
        ..FakeStore::route("10.0.0.3", 3001, Some("newest"))
    };
    w.store
        .state
        .routes
        .insert(("u1".into(), ClientType::Mobile), newer.clone());
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    w.settle();
    assert_eq!(stored_route(&w, "u1", ClientType::Mobile), newer);
}

#[test]
fn kick_notice_kicks_only_the_connection_it_names() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    let token = store_token(&w, "u1", ClientType::Mobile).unwrap();
    let notice = |conn_id: &str, host: &str| KickNotice {
        client_type: 1,
        conn_id: conn_id.into(),
        device_id: "dev-A".into(),
        target_port: 3001,
        target_server: host.into(),
        user_id: "u1".into(),
        version: 0,
    };
    w.input(Input::KickNotice {
        notice: notice("not-this-one", "127.0.0.1"),
    });
    w.input(Input::KickNotice {
        notice: notice(&token, "10.0.0.9"),
    });
    assert!(
        w.received(phone, Command::Kick).is_empty(),
        "wrong conn id or node"
    );

    w.input(Input::KickNotice {
        notice: notice(&token, "127.0.0.1"),
    });
    let kicks = w.received(phone, Command::Kick);
    assert_eq!(kicks.len(), 1);
    assert_eq!(kicks[0].session_id, 0);
    assert_eq!(
        Kick::decode(&kicks[0].body).unwrap(),
        Kick {
            device_id: "dev-A".into(),
            user_id: "u1".into()
        }
    );
    assert!(!closed(&w, phone), "a kick never closes");
}

// ---------------------------------------------------------------------------------------------
// Phone sessions (§9)
// ---------------------------------------------------------------------------------------------

/// Found by the churn soak (`bench/soak.sh --fast-reconnect`, 22 of 6,000 fast connects): the
/// node queued FAST_CONNECT-ok and then the session for the connection task; the task, on
/// another thread, wrote the OK out before the session reached it, the phone answered with its
/// sealed BIND, and the task, still without the cipher, answered ERROR 100 and closed. The
/// session goes to the connection before the OK.
#[test]
fn a_fast_connect_hands_the_connection_its_session_before_the_ok() {
    let mut w = World::new(|_| {});
    let first = w.connect("dev-A", "android");
    w.handshake(first);
    let (session_id, key, iv) = w.reusable_session(first);
    let second = w.connect("dev-A", "android");
    w.store.mode = StoreMode::Hold;
    w.fast_connect(second, &session_id, key, iv);
    // The session read is answered; the node's outputs are read as a connection task sees them.
    let request = w.store.held.pop().expect("the session read");
    let reply = w.store.apply(&request.op);
    w.node.handle(
        w.now,
        Input::StoreReply {
            request: request.id,
            reply: Ok(reply),
        },
    );
    let mut order = Vec::new();
    while let Some(output) = w.node.poll_output() {
        match &output {
            Output::Resume { conn, .. } if *conn == second => order.push("resume"),
            Output::Transmit {
                conn,
                frame: OutFrame::Packet { cmd, .. },
                ..
            } if *conn == second && *cmd == Command::FastConnect.code() => order.push("ok"),
            _ => {}
        }
    }
    assert_eq!(order, ["resume", "ok"]);
}

#[test]
fn fast_connect_with_a_cached_session_resumes_it() {
    let mut w = World::new(|_| {});
    let first = w.connect("dev-A", "android");
    w.handshake(first);
    let (session_id, key, iv) = w.reusable_session(first);
    assert!(
        w.store.state.has_session(&session_id),
        "cached in the store"
    );

    let second = w.connect("dev-A", "android");
    w.fast_connect(second, &session_id, key, iv);
    let replies = w.received(second, Command::FastConnect);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].flags, Flags::NONE, "FAST_CONNECT-ok is raw");
    assert_eq!(
        FastConnectOk::decode(&replies[0].body)
            .unwrap()
            .heartbeat_ms,
        180_000
    );
    assert!(w.events.iter().any(
        |e| matches!(e, Event::HandshakeDone { conn, fast: true, device_id } if *conn == second && device_id == "dev-A")
    ));
    assert_eq!(w.node.stats().fast_connects, 1);

    w.bind(second, "u1", "");
    assert_eq!(answers(&w, second), vec![(5, 0, "bind success".to_owned())]);
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "over the cached key");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(&w.pushes(second)[0].body[..], b"over the cached key");
}

#[test]
fn late_fast_connect_answer_after_a_full_handshake_is_ignored() {
    let mut w = World::new(|c| c.handshake_deadline_ms = 10_000);
    let first = w.connect("dev-A", "android");
    w.handshake(first);
    let (session_id, key, iv) = w.reusable_session(first);

    let phone = w.connect("dev-A", "android");
    w.store.mode = StoreMode::Hold;
    w.fast_connect(phone, &session_id, key, iv);
    w.handshake(phone); // the client gave up waiting and hand-shakes in full
    w.store.mode = StoreMode::Immediate;
    w.release_store(); // now the store answers the fast connect (a hit)
    assert!(
        w.received(phone, Command::FastConnect).is_empty(),
        "the stale answer is not acted on"
    );
    w.bind(phone, "u1", "");
    assert_eq!(answers(&w, phone), vec![(5, 0, "bind success".to_owned())]);
    w.advance(20_000);
    assert!(!closed(&w, phone), "the handshake stands");
    w.push_to(
        GW,
        1,
        "u1",
        1,
        3000,
        Flags::NONE,
        "over the new session key",
    );
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
}

#[test]
fn fast_connect_on_a_live_session_is_not_closed_while_the_store_answers() {
    let mut w = World::new(|c| {
        c.min_heartbeat_ms = 10_000;
        c.max_heartbeat_ms = 10_000;
    });
    let phone = w.online("dev-A", "android", "u1", "");
    let (session_id, key, iv) = w.reusable_session(phone);
    w.advance(9_000);
    w.store.mode = StoreMode::Hold;
    w.fast_connect(phone, &session_id, key, iv); // fresh traffic at 9 s
    w.advance(1_500); // the idle check at 10 s finds traffic 1 s old
    assert!(
        !closed(&w, phone),
        "closed as {:?}",
        close_reason(&w, phone)
    );
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    assert_eq!(w.received(phone, Command::FastConnect).len(), 1);
    assert!(!closed(&w, phone));
}

#[test]
fn fast_connect_miss_answers_103_and_a_full_handshake_follows_on_the_same_connection() {
    let mut w = World::new(|_| {});
    let phone = w.connect("dev-A", "android");
    w.fast_connect(phone, "no-such-session", [1; 16], [2; 16]);
    let errors = w.received(phone, Command::Error);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].flags, Flags::NONE, "raw");
    assert_eq!(
        answers(&w, phone),
        vec![(7, 103, "session expired".to_owned())]
    );
    assert!(!closed(&w, phone));

    w.handshake(phone);
    assert_eq!(w.received(phone, Command::Handshake).len(), 1);
    w.bind(phone, "u1", "");
    assert_eq!(
        answers(&w, phone).last().unwrap(),
        &(5, 0, "bind success".to_owned())
    );
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);
}

#[test]
fn fast_connect_from_another_device_answers_104() {
    let mut w = World::new(|_| {});
    let first = w.connect("dev-A", "android");
    w.handshake(first);
    let (session_id, key, iv) = w.reusable_session(first);
    let thief = w.connect("dev-B", "android");
    w.fast_connect(thief, &session_id, key, iv);
    assert_eq!(
        answers(&w, thief),
        vec![(7, 104, "invalid device".to_owned())]
    );
    assert!(!closed(&w, thief));
    assert!(w.received(thief, Command::FastConnect).is_empty());
    assert_eq!(w.node.stats().fast_connects, 0);
}

#[test]
fn repeat_rsa_handshake_from_the_same_device_answers_102_and_keeps_the_connection() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    let session_cipher = w.phones[&phone].cipher.clone();
    // The SDK resends its HANDSHAKE exactly as before: RSA-encrypted (MPush's HandshakeMessage
    // always decrypts with RSA, whatever the connection's state).
    let hs = handshake_body(&w, phone);
    send_rsa_handshake(&mut w, phone, 90, &hs);
    assert_eq!(
        answers(&w, phone).last().unwrap(),
        &(2, 102, "repeat handshake".to_owned())
    );
    assert!(!closed(&w, phone), "repeat handshake keeps the connection");
    // The session is unchanged: the phone still talks with the session key.
    w.phones.get_mut(&phone).unwrap().cipher = session_cipher;
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "still here");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
}

#[test]
fn rsa_handshake_from_another_device_on_a_ready_connection_replaces_the_context() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    // The same socket now hand-shakes as another device (MPush accepts it and overwrites
    // the connection's context, unbinding the old user).
    w.phones.get_mut(&phone).unwrap().device_id = "dev-B".into();
    w.handshake(phone);
    assert!(!closed(&w, phone));
    assert_eq!(
        w.received(phone, Command::Handshake).len(),
        2,
        "a second HANDSHAKE-ok"
    );
    assert!(w.node.routes_of("u1").is_empty(), "dev-A's user is unbound");
    assert_eq!(store_token(&w, "u1", ClientType::Mobile), None);
    w.bind(phone, "u2", "");
    assert_eq!(
        answers(&w, phone).last().unwrap(),
        &(5, 0, "bind success".to_owned())
    );
    w.push_to(GW, 1, "u2", 1, 3000, Flags::NONE, "to dev-B");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
}

#[test]
fn repeat_plaintext_handshake_from_the_same_device_answers_102_and_keeps_the_connection() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    let hs = handshake_body(&w, phone);
    w.send_packet(
        phone,
        pipeline::raw_packet(Command::Handshake.code(), Flags::NONE, 91, &hs),
    );
    let errors = w.received(phone, Command::Error);
    assert_eq!(errors.last().unwrap().session_id, 91);
    assert_eq!(
        answers(&w, phone).last().unwrap(),
        &(2, 102, "repeat handshake".to_owned())
    );
    assert!(!closed(&w, phone));
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "still bound");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
}

#[test]
fn handshake_with_a_15_byte_iv_is_param_invalid_and_closes() {
    let mut w = World::new(|_| {});
    let phone = w.connect("dev-A", "android");
    let mut hs = handshake_body(&w, phone);
    hs.iv = Bytes::copy_from_slice(&[7u8; 15]);
    send_rsa_handshake(&mut w, phone, 1, &hs);
    assert_eq!(answers(&w, phone), vec![(2, 0, "Param invalid".to_owned())]);
    assert!(closed(&w, phone));
    assert_eq!(close_reason(&w, phone), Some(CloseReason::BadRequest));
    assert_eq!(w.node.stats().handshakes, 0);
}

#[test]
fn bind_before_handshake_is_refused_and_closes() {
    let mut w = World::new(|_| {});
    let phone = w.connect("dev-A", "android");
    w.bind(phone, "u1", "");
    assert_eq!(answers(&w, phone), vec![(5, 0, "not handshake".to_owned())]);
    assert!(closed(&w, phone));
    assert!(w.node.routes_of("u1").is_empty());
}

#[test]
fn unknown_or_client_sent_server_commands_answer_101_and_close() {
    for cmd in [99u8, Command::Ok.code()] {
        let mut w = World::new(|_| {});
        let phone = w.connect("dev-A", "android");
        w.handshake(phone);
        w.send_packet(phone, Packet::new(cmd, Flags::NONE, 33, Bytes::new()));
        let error = w.received(phone, Command::Error)[0].clone();
        assert_eq!(error.session_id, 33);
        assert_eq!(
            answers(&w, phone),
            vec![(cmd, 101, "unsupported command".to_owned())]
        );
        assert!(closed(&w, phone), "cmd {cmd}");
        assert_eq!(
            close_reason(&w, phone),
            Some(CloseReason::UnsupportedCommand)
        );
    }
}

#[test]
fn http_proxy_request_gets_501_and_the_connection_stays_open() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    let request = HttpRequest {
        method: 0,
        uri: "http://example.com/".into(),
        headers: String::new(),
        body: Bytes::new(),
    };
    send_sealed_sid(&mut w, phone, Command::HttpProxy, Flags::NONE, 44, &request);
    let responses = w.received(phone, Command::HttpProxy);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].session_id, 44);
    let response = HttpResponse::decode(&responses[0].body).unwrap();
    assert_eq!(response.status_code, 501);
    assert!(!closed(&w, phone));
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
}

#[test]
fn heartbeat_is_echoed() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    assert_eq!(w.phones[&phone].heartbeats, 0);
    w.heartbeat(phone);
    w.heartbeat(phone);
    assert_eq!(w.phones[&phone].heartbeats, 2);
    // A HEARTBEAT packet (cmd 1) is answered the same way.
    w.send_packet(
        phone,
        Packet::new(Command::Heartbeat.code(), Flags::NONE, 0, Bytes::new()),
    );
    assert_eq!(w.phones[&phone].heartbeats, 3);
    assert!(!closed(&w, phone));
}

#[test]
fn handshake_ok_carries_the_negotiated_heartbeat() {
    let heartbeat_for = |configure: fn(&mut pushgate_core::NodeConfig), client_max: i32| {
        let mut w = World::new(configure);
        let phone = w.connect("dev-A", "android");
        w.handshake_with(phone, client_max);
        let ok = w.received(phone, Command::Handshake)[0].clone();
        let ok = HandshakeOk::decode(&ok.body).unwrap();
        assert_eq!(ok.expire_time_ms, EPOCH0_MS + 86_400_000, "one day");
        ok.heartbeat_ms
    };
    fn bounded(c: &mut pushgate_core::NodeConfig) {
        c.min_heartbeat_ms = 10_000;
        c.max_heartbeat_ms = 60_000;
    }
    assert_eq!(heartbeat_for(|_| {}, 240_000), 180_000, "MPush defaults");
    assert_eq!(
        heartbeat_for(|_| {}, 30_000),
        180_000,
        "client max below min"
    );
    assert_eq!(heartbeat_for(bounded, 30_000), 30_000);
    assert_eq!(heartbeat_for(bounded, 5_000), 10_000);
    assert_eq!(heartbeat_for(bounded, 240_000), 60_000);
}

#[test]
fn silent_connection_is_closed_on_the_third_missed_check_and_traffic_resets_the_count() {
    let mut w = World::new(|c| {
        c.min_heartbeat_ms = 10_000;
        c.max_heartbeat_ms = 10_000;
    });
    let silent = w.online("dev-A", "android", "u1", "");
    let chatty = w.online("dev-B", "android", "u2", "");
    w.advance(25_000);
    w.heartbeat(chatty);
    w.advance(5_000); // t = 30 s
    assert!(!closed(&w, silent), "two misses so far");
    assert!(!closed(&w, chatty));
    w.advance(15_000); // t = 45 s
    assert!(closed(&w, silent), "third miss at 40 s");
    assert_eq!(close_reason(&w, silent), Some(CloseReason::IdleTimeout));
    assert!(w.node.routes_of("u1").is_empty());
    assert!(!closed(&w, chatty), "its count restarted at 30 s");
    w.advance(10_000); // t = 55 s
    assert!(!closed(&w, chatty));
    w.advance(5_000); // t = 60 s
    assert!(closed(&w, chatty));
    assert_eq!(close_reason(&w, chatty), Some(CloseReason::IdleTimeout));
}

#[test]
fn connection_that_never_handshakes_is_closed_at_the_handshake_deadline() {
    let mut w = World::new(|c| c.handshake_deadline_ms = 5_000);
    let phone = w.connect("dev-A", "android");
    w.heartbeat(phone); // heartbeats do not count as a handshake
    w.advance(4_999);
    assert!(!closed(&w, phone));
    w.advance(1);
    assert!(closed(&w, phone));
    assert_eq!(close_reason(&w, phone), Some(CloseReason::HandshakeTimeout));
    assert_eq!(w.node.stats().connections, 0);
}

#[test]
fn handshaken_connection_that_never_binds_is_closed_at_the_bind_deadline() {
    let mut w = World::new(|c| c.bind_deadline_ms = 5_000);
    let idle = w.connect("dev-A", "android");
    w.handshake(idle);
    let binding = w.connect("dev-B", "android");
    w.handshake(binding);
    w.advance(4_000);
    w.bind(binding, "u1", "");
    w.heartbeat(idle); // traffic is no BIND
    w.advance(999);
    assert!(!closed(&w, idle));
    w.advance(1);
    assert!(closed(&w, idle));
    assert_eq!(close_reason(&w, idle), Some(CloseReason::BindTimeout));
    // The one that bound stays, long past the deadline.
    w.advance(60_000);
    w.heartbeat(binding);
    assert!(!closed(&w, binding));
    assert_eq!(w.node.stats().connections, 1);
}

#[test]
fn without_a_bind_deadline_a_handshaken_connection_may_wait_to_bind() {
    let mut w = World::new(|c| c.bind_deadline_ms = 0);
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    for _ in 0..10 {
        w.advance(30_000);
        w.heartbeat(phone);
    }
    assert!(!closed(&w, phone));
    w.bind(phone, "u1", "");
    assert!(!closed(&w, phone));
}

#[test]
fn upstream_push_is_reported_and_auto_ack_answered_with_the_same_session_id() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    let up = Push {
        content: Bytes::from_static(b"from the phone"),
    };
    send_sealed_sid(&mut w, phone, Command::Push, Flags::AUTO_ACK, 77, &up);
    let acks = w.received(phone, Command::Ack);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].session_id, 77);
    assert_eq!(acks[0].flags, Flags::NONE, "raw");
    assert!(w.events.contains(&Event::Upstream {
        conn: phone,
        user_id: Some("u1".into()),
        content: Bytes::from_static(b"from the phone"),
    }));
    // Without AUTO_ACK: reported, not acknowledged.
    send_sealed_sid(&mut w, phone, Command::Push, Flags::NONE, 78, &up);
    assert_eq!(w.received(phone, Command::Ack).len(), 1);
    let upstream = w
        .events
        .iter()
        .filter(|e| matches!(e, Event::Upstream { .. }))
        .count();
    assert_eq!(upstream, 2);
}

#[test]
fn unbind_drops_the_route_marks_the_store_offline_and_answers_ok() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.unbind(phone, "u1");
    assert_eq!(
        answers(&w, phone).last().unwrap(),
        &(6, 0, "unbind success".to_owned())
    );
    assert!(w.node.routes_of("u1").is_empty());
    assert_eq!(store_token(&w, "u1", ClientType::Mobile), None);
    assert!(w.events.iter().any(
        |e| matches!(e, Event::Unbound { conn, user_id } if *conn == phone && user_id == "u1")
    ));
    assert!(!closed(&w, phone));
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Offline);
}

#[test]
fn garbage_encrypted_body_answers_100_and_closes() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    let garbage = Bytes::from(
        (0u8..32)
            .map(|b| b.wrapping_mul(37) ^ 0xA5)
            .collect::<Vec<_>>(),
    );
    w.send_packet(
        phone,
        Packet::new(Command::Bind.code(), Flags::CRYPTO, 55, garbage),
    );
    assert_eq!(
        answers(&w, phone).last().unwrap(),
        &(5, 100, "handle message error".to_owned())
    );
    assert!(closed(&w, phone));
    assert_eq!(close_reason(&w, phone), Some(CloseReason::BadBody));
    assert!(w.node.routes_of("u1").is_empty());
    assert_eq!(w.node.stats().decode_errors, 1);
}

// ---------------------------------------------------------------------------------------------
// Flow control (§13.2)
// ---------------------------------------------------------------------------------------------

#[test]
fn global_flow_control_delays_pushes_over_the_limit_to_the_next_window() {
    let mut w = World::new(|c| c.global_flow_limit_per_window = 3);
    let phones = many_online(&mut w, 5, |i| format!("u{i}"));
    for (i, (user, _)) in phones.iter().enumerate() {
        w.push_to(GW, i as i32 + 1, user, 1, 5000, Flags::NONE, "x");
    }
    assert_eq!(reached(&w, &phones).len(), 3, "three pass in this window");
    assert_eq!(w.replies.len(), 3);
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, Event::FlowDelayed { delay_ms: 1000, .. })));
    assert!(w.node.stats().flow_delays > 0);
    w.advance(999);
    assert_eq!(reached(&w, &phones).len(), 3);
    w.advance(1);
    assert_eq!(
        reached(&w, &phones).len(),
        5,
        "the rest go in the next window"
    );
    for sid in 1..=5 {
        assert_eq!(w.reply(GW, sid).status, PushStatus::Success, "push {sid}");
    }
}

#[test]
fn push_whose_deadline_passes_while_flow_delayed_times_out() {
    let mut w = World::new(|c| c.global_flow_limit_per_window = 1);
    let a = w.online("dev-A", "android", "u1", "");
    let b = w.online("dev-B", "android", "u2", "");
    w.push_to(GW, 1, "u1", 1, 5000, Flags::NONE, "x");
    w.push_to(GW, 2, "u2", 1, 500, Flags::NONE, "y");
    assert_eq!(w.pushes(a).len(), 1);
    assert!(w.pushes(b).is_empty(), "delayed");
    w.advance(500);
    let reply = w.reply(GW, 2).clone();
    assert_eq!(reply.status, PushStatus::Timeout);
    assert_eq!(reply.reason, "push timeout");
    w.settle();
    assert!(w.pushes(b).is_empty(), "never sent after its deadline");
    assert_eq!(w.replies_to(GW, 2).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Broadcasts (§11.3, §13.3)
// ---------------------------------------------------------------------------------------------

#[test]
fn broadcast_reaches_every_bound_connection() {
    let mut w = World::new(|_| {});
    let phones = many_online(&mut w, 5, |i| format!("u{i}"));
    let pc = w.online("dev-pc", "windows", "u0", "");
    let idle = w.connect("dev-idle", "android");
    w.handshake(idle); // hand-shaken but not bound: no route, nothing received
    broadcast(&mut w, 9, |_| {});
    w.settle();
    for (_, conn) in &phones {
        let pushes = w.pushes(*conn);
        assert_eq!(pushes.len(), 1);
        assert_eq!(&pushes[0].body[..], b"to everyone");
        assert!(!pushes[0].flags.intersects(Flags::ACK_MASK));
    }
    assert_eq!(w.pushes(pc).len(), 1, "every client type of a user");
    assert!(w.pushes(idle).is_empty());
    let reply = w.reply(GW, 9).clone();
    assert_eq!(
        ok_of(&reply),
        OkMessage {
            cmd: 16,
            code: 0,
            data: String::new()
        }
    );
    assert_eq!(
        broadcasts_finished(&w),
        vec![(6, PushStatus::Success, None)]
    );
}

#[test]
fn broadcast_tags_match_exactly_by_default_and_by_substring_when_configured() {
    for (tag_match, expected) in [
        (TagMatch::Exact, vec!["a", "c"]),
        (TagMatch::Substring, vec!["a", "b", "c"]),
    ] {
        let mut w = World::new(|c| c.tag_match = tag_match);
        let phones = vec![
            ("a".to_owned(), w.online("dev-a", "android", "a", "tag-1")),
            ("b".to_owned(), w.online("dev-b", "android", "b", "tag-10")),
            (
                "c".to_owned(),
                w.online("dev-c", "android", "c", "tag-2,tag-1"),
            ),
            ("d".to_owned(), w.online("dev-d", "android", "d", "")),
        ];
        broadcast(&mut w, 1, |p| p.set_tags(&["tag-1"]));
        w.settle();
        let expected: BTreeSet<String> = expected.into_iter().map(String::from).collect();
        assert_eq!(reached(&w, &phones), expected, "{tag_match:?}");
        assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    }
}

#[test]
fn broadcast_condition_selects_exactly_the_matching_users() {
    let mut w = World::new(|_| {});
    let phones = many_online(&mut w, 100, |i| format!("{}", 1000 + i));
    broadcast(&mut w, 1, |p| p.condition = "userId % 100 < 20".into());
    w.settle();
    let expected: BTreeSet<String> = (1000..1020).map(|u| u.to_string()).collect();
    assert_eq!(reached(&w, &phones), expected);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(broadcasts_finished(&w)[0].0, 20);
}

#[test]
fn broadcast_by_client_type_reaches_only_that_type() {
    let mut w = World::new(|_| {});
    let phones = vec![
        ("android".to_owned(), w.online("dev-a", "android", "u1", "")),
        ("windows".to_owned(), w.online("dev-b", "windows", "u1", "")),
        ("ios".to_owned(), w.online("dev-c", "ios", "u2", "")),
        ("mac".to_owned(), w.online("dev-d", "MacOS", "u3", "")),
    ];
    broadcast(&mut w, 1, |p| p.client_type = 2);
    w.settle();
    assert_eq!(
        reached(&w, &phones),
        ["mac", "windows"].map(String::from).into()
    );
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
}

#[test]
fn broadcast_with_a_bad_condition_is_refused_with_the_parse_error() {
    let mut w = World::new(|_| {});
    let phones = many_online(&mut w, 3, |i| format!("u{i}"));
    broadcast(&mut w, 1, |p| p.condition = "userId ==".into());
    w.settle();
    let reply = w.reply(GW, 1).clone();
    assert_eq!(reply.status, PushStatus::Failure);
    let error = error_of(&reply);
    assert_eq!((error.cmd, error.code), (16, 2));
    assert!(
        error.reason.contains("condition parse error"),
        "{:?}",
        error.reason
    );
    assert!(reached(&w, &phones).is_empty());
    assert_eq!(w.node.stats().broadcasts, 0);
}

#[test]
fn broadcast_completes_only_after_every_write_is_confirmed() {
    let mut w = World::new(|_| {});
    let phones = many_online(&mut w, 3, |i| format!("u{i}"));
    w.auto_write = false;
    broadcast(&mut w, 7, |_| {});
    w.advance(0);
    w.advance(1000);
    assert_eq!(reached(&w, &phones).len(), 3);
    assert!(w.replies_to(GW, 7).is_empty(), "writes still pending");
    w.confirm_writes(true);
    let reply = w.reply(GW, 7).clone();
    assert_eq!(reply.packet.flags, Flags::NONE);
    assert_eq!(
        &reply.packet.body[..],
        &[0x10, 0x00, 0x00, 0x00],
        "OK(cmd 16, code 0, data null)"
    );
    assert_eq!(w.node.stats().broadcasts, 0);
}

#[test]
fn broadcast_resumes_across_batches_and_reaches_every_user_exactly_once() {
    let mut w = World::new(|c| c.broadcast_batch_size = 7);
    let phones = many_online(&mut w, 1000, |i| format!("user-{i:04}"));
    broadcast(&mut w, 1, |_| {});
    assert_eq!(reached(&w, &phones).len(), 7, "one batch, then it yields");
    w.settle();
    for (user, conn) in &phones {
        assert_eq!(w.pushes(*conn).len(), 1, "{user}");
    }
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(
        broadcasts_finished(&w),
        vec![(1000, PushStatus::Success, None)]
    );
}

#[test]
fn broadcast_flow_control_spreads_sends_over_windows() {
    let mut w = World::new(|c| c.broadcast_flow_limit_per_window = 10);
    let phones = many_online(&mut w, 35, |i| format!("u{i:02}"));
    broadcast(&mut w, 1, |_| {});
    assert_eq!(reached(&w, &phones).len(), 10);
    w.advance(999);
    assert_eq!(reached(&w, &phones).len(), 10);
    w.advance(1);
    assert_eq!(reached(&w, &phones).len(), 20);
    w.advance(1000);
    assert_eq!(reached(&w, &phones).len(), 30);
    w.advance(999);
    assert!(w.replies_to(GW, 1).is_empty(), "not before 3 s");
    w.advance(1);
    assert_eq!(reached(&w, &phones).len(), 35);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert!(w.node.stats().flow_delays >= 3);
}

#[test]
fn broadcast_stops_at_the_total_cap_and_still_completes() {
    let mut w = World::new(|c| c.broadcast_flow_max_total = 5);
    let phones = many_online(&mut w, 8, |i| format!("u{i}"));
    broadcast(&mut w, 1, |_| {});
    w.settle();
    assert_eq!(reached(&w, &phones).len(), 5);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(
        broadcasts_finished(&w),
        vec![(5, PushStatus::Success, None)]
    );
}

#[test]
fn task_broadcast_respects_the_stored_qps_and_records_progress() {
    let mut w = World::new(|_| {});
    let phones = many_online(&mut w, 12, |i| format!("u{i:02}"));
    w.store.state.tasks.insert(
        "t1".into(),
        TaskControl {
            qps: Some(5),
            cancelled: false,
        },
    );
    broadcast(&mut w, 1, |p| p.task_id = "t1".into());
    assert_eq!(reached(&w, &phones).len(), 5);
    w.advance(999);
    assert_eq!(reached(&w, &phones).len(), 5);
    w.advance(1);
    assert_eq!(reached(&w, &phones).len(), 10);
    w.advance(1000);
    assert_eq!(reached(&w, &phones).len(), 12);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    let progress = w.store.state.task_progress("t1");
    assert_eq!(progress.sent, 12);
    let mut sorted: Vec<String> = progress.user_ids.into_iter().collect();
    sorted.sort();
    let all: Vec<String> = phones.iter().map(|(u, _)| u.clone()).collect();
    assert_eq!(sorted, all, "every user recorded once");
}

#[test]
fn cancelled_task_broadcast_stops_and_completes() {
    let mut w = World::new(|_| {});
    let phones = many_online(&mut w, 12, |i| format!("u{i:02}"));
    w.store.state.tasks.insert(
        "t2".into(),
        TaskControl {
            qps: Some(5),
            cancelled: false,
        },
    );
    w.store.mode = StoreMode::Hold;
    broadcast(&mut w, 1, |p| p.task_id = "t2".into());
    w.release_store(); // task control → first window of 5; progress and a re-read are held
    assert_eq!(reached(&w, &phones).len(), 5);
    w.store.state.tasks.get_mut("t2").unwrap().cancelled = true;
    w.release_store();
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    w.store.mode = StoreMode::Immediate;
    w.settle();
    assert_eq!(reached(&w, &phones).len(), 5, "nothing after the cancel");
    assert_eq!(w.store.state.task_progress("t2").sent, 5);
    assert_eq!(w.node.stats().broadcasts, 0);
}

// ---------------------------------------------------------------------------------------------
// The gateway link (§11)
// ---------------------------------------------------------------------------------------------

#[test]
fn status_for_a_closed_gateway_connection_is_not_sent() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.push_to(GW, 1, "u1", 1, 3000, Flags::AUTO_ACK, "x");
    w.input(Input::GatewayClosed { gw: GW });
    let sid = w.pushes(phone)[0].session_id;
    w.ack(phone, sid);
    assert!(w.replies.is_empty());
    assert_eq!(finished(&w), vec![(PushStatus::AckSuccess, None, false)]);
}

#[test]
fn undecodable_gateway_push_gets_a_bad_request_failure() {
    let mut w = World::new(|_| {});
    w.input(Input::GatewayConnected { gw: GW });
    w.input(Input::GatewayFrame {
        gw: GW,
        frame: Frame::Packet(Packet::new(
            Command::GatewayPush.code(),
            Flags::NONE,
            5,
            Bytes::from_static(&[0xFF, 0xFF]),
        )),
    });
    let reply = w.reply(GW, 5).clone();
    assert_eq!(reply.status, PushStatus::Failure);
    let error = error_of(&reply);
    assert_eq!((error.cmd, error.code), (16, 2));
    assert!(
        error.reason.starts_with("bad request"),
        "{:?}",
        error.reason
    );
    assert!(!w.gateway_closed.contains(&GW));
}

#[test]
fn other_commands_on_the_gateway_answer_101_and_close_it() {
    let mut w = World::new(|_| {});
    w.input(Input::GatewayConnected { gw: GW });
    w.input(Input::GatewayFrame {
        gw: GW,
        frame: Frame::Packet(Packet::new(
            Command::Handshake.code(),
            Flags::NONE,
            6,
            Bytes::new(),
        )),
    });
    let error = error_of(w.reply(GW, 6));
    assert_eq!(
        (error.cmd, error.code, error.reason.as_str()),
        (2, 101, "unsupported command")
    );
    assert!(w.gateway_closed.contains(&GW));
    assert_eq!(w.node.stats().gateway_connections, 0);
}

#[test]
fn shutdown_fails_every_pending_push_and_closes_every_phone() {
    let mut w = World::new(|_| {});
    let a = w.online("dev-A", "android", "u1", "");
    let b = w.online("dev-B", "android", "u2", "");
    w.push_to(GW, 1, "u1", 1, 3000, Flags::AUTO_ACK, "awaiting ack");
    w.push_to(GW, 2, "u2", 1, 3000, Flags::BIZ_ACK, "awaiting ack");
    w.store.mode = StoreMode::Hold;
    w.push_to(GW, 3, "u3", 1, 3000, Flags::NONE, "awaiting the route");
    w.auto_write = false;
    broadcast(&mut w, 4, |_| {});
    assert!(w.replies.is_empty());
    assert_eq!(w.node.pending_push_count(), 4);

    w.input(Input::Shutdown);
    for sid in 1..=4 {
        let reply = w.reply(GW, sid).clone();
        assert_eq!(reply.status, PushStatus::Failure, "push {sid}");
        assert_eq!(error_of(&reply).code, 2);
    }
    assert!(closed(&w, a) && closed(&w, b));
    assert_eq!(close_reason(&w, a), Some(CloseReason::Shutdown));
    assert_eq!(w.node.stats().connections, 0);
    assert_eq!(w.node.pending_push_count(), 0);

    w.store.mode = StoreMode::Immediate;
    w.release_store();
    w.confirm_writes(true);
    w.settle();
    assert_eq!(w.replies.len(), 4, "nothing more after the shutdown");
    w.push_to(GW, 5, "u1", 1, 3000, Flags::NONE, "too late");
    assert_eq!(w.reply(GW, 5).status, PushStatus::Failure);
}

#[test]
fn pushes_beyond_max_pending_are_refused_as_busy() {
    let mut w = World::new(|c| c.max_pending_pushes = 2);
    let phone = w.online("dev-A", "android", "u1", "");
    w.push_to(GW, 1, "u1", 1, 3000, Flags::AUTO_ACK, "1");
    w.push_to(GW, 2, "u1", 1, 3000, Flags::AUTO_ACK, "2");
    w.push_to(GW, 3, "u1", 1, 3000, Flags::AUTO_ACK, "3");
    let reply = w.reply(GW, 3).clone();
    assert_eq!(reply.status, PushStatus::Failure);
    assert!(
        reply.reason.starts_with("server busy"),
        "{:?}",
        reply.reason
    );
    assert_eq!(w.pushes(phone).len(), 2, "the refused push was not sent");
    let sid = w.pushes(phone)[0].session_id;
    w.ack(phone, sid);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    w.push_to(GW, 4, "u1", 1, 3000, Flags::NONE, "room again");
    assert_eq!(w.reply(GW, 4).status, PushStatus::Success);
}

// ---------------------------------------------------------------------------------------------
// Snapshots: the gateway reply for each status
// ---------------------------------------------------------------------------------------------

/// A readable dump of a gateway reply: packet header, OK/ERROR body, data JSON and its time
/// line relative to virtual time 0.
fn dump(reply: &Reply) -> String {
    let p = &reply.packet;
    let mut out = format!(
        "read as: {}\npacket: cmd={} flags={} sessionId={}\n",
        reply.status.name(),
        p.cmd,
        p.flags.0,
        p.session_id
    );
    let data = if p.cmd == Command::Ok.code() {
        let ok = ok_of(reply);
        out += &format!("OK: cmd={} code={}\n", ok.cmd, ok.code);
        ok.data
    } else {
        let error = error_of(reply);
        out += &format!(
            "ERROR: cmd={} code={} reason={:?}\n",
            error.cmd, error.code, error.reason
        );
        error.data
    };
    out += &format!("data: {data}\n");
    for (name, at) in time_points(&data) {
        out += &format!("  +{:>5} ms  {name}\n", at - EPOCH0_MS);
    }
    out
}

#[test]
fn snapshot_success() {
    let mut w = World::new(|_| {});
    w.online("dev-A", "android", "u1", "");
    w.advance(10);
    w.auto_write = false;
    w.push_to(GW, 101, "u1", 1, 3000, Flags::NONE, "x");
    w.advance(2);
    w.confirm_writes(true);
    insta::assert_snapshot!("status_success", dump(w.reply(GW, 101)));
}

#[test]
fn snapshot_ack_success() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.advance(10);
    w.push_to(GW, 102, "u1", 1, 3000, Flags::AUTO_ACK, "x");
    w.advance(3);
    let sid = w.pushes(phone)[0].session_id;
    w.ack(phone, sid);
    insta::assert_snapshot!("status_ack_success", dump(w.reply(GW, 102)));
}

#[test]
fn snapshot_offline() {
    let mut w = World::new(|_| {});
    w.advance(10);
    w.push_to(GW, 103, "nobody", 0, 3000, Flags::NONE, "x");
    insta::assert_snapshot!("status_offline", dump(w.reply(GW, 103)));
}

#[test]
fn snapshot_failure() {
    let mut w = World::new(|_| {});
    w.online("dev-A", "android", "u1", "");
    w.advance(10);
    w.auto_write = false;
    w.push_to(GW, 104, "u1", 1, 3000, Flags::NONE, "x");
    w.advance(2);
    w.confirm_writes(false);
    insta::assert_snapshot!("status_failure", dump(w.reply(GW, 104)));
}

#[test]
fn snapshot_router_change() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Pc),
        FakeStore::route("10.0.0.2", 3001, Some("abc")),
    );
    w.advance(10);
    w.push_to(GW, 105, "u1", 2, 3000, Flags::NONE, "x");
    insta::assert_snapshot!("status_router_change", dump(w.reply(GW, 105)));
}

#[test]
fn snapshot_timeout() {
    let mut w = World::new(|_| {});
    w.online("dev-A", "android", "u1", "");
    w.advance(10);
    w.push_to(GW, 106, "u1", 1, 1500, Flags::BIZ_ACK, "x");
    w.advance(2000);
    insta::assert_snapshot!("status_timeout", dump(w.reply(GW, 106)));
}

// ---------------------------------------------------------------------------------------------
// Second nets: each rule the planted bugs of sim/mutants.sh break is held by more than one test
// ---------------------------------------------------------------------------------------------

/// A kick notice names a binding by its version: a connection that bound the user again since
/// holds a newer binding, which that notice does not end (`kick-version-check`).
#[test]
fn a_kick_notice_for_an_older_bind_of_the_connection_kicks_nothing() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    let key = ("u1".to_owned(), ClientType::Mobile);
    let token = store_token(&w, "u1", ClientType::Mobile).unwrap();
    let old_version = w.store.state.routes.get(&key).expect("stored").version;
    w.bind(phone, "u1", "vip"); // the same user again: a new binding
    let new_version = w.store.state.routes.get(&key).expect("stored").version;
    assert!(new_version > old_version);
    let notice = |version| KickNotice {
        client_type: 1,
        conn_id: token.clone(),
        device_id: "dev-A".into(),
        target_port: 3001,
        target_server: "127.0.0.1".into(),
        user_id: "u1".into(),
        version,
    };
    w.input(Input::KickNotice {
        notice: notice(old_version),
    });
    assert!(w.received(phone, Command::Kick).is_empty(), "an older bind");
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);
    w.input(Input::KickNotice {
        notice: notice(new_version),
    });
    assert_eq!(w.received(phone, Command::Kick).len(), 1);
    assert!(w.node.routes_of("u1").is_empty());
}

/// Routes marked offline are offline whatever node they name and whichever client type is
/// asked for: never a router change (`offline-marked-route`).
#[test]
fn a_user_whose_routes_are_all_offline_is_offline_for_any_client_type() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Mobile),
        FakeStore::route("10.0.0.2", 3001, None),
    );
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Pc),
        FakeStore::route("10.0.0.3", 3001, None),
    );
    w.push_to(GW, 1, "u1", 0, 3000, Flags::NONE, "any type");
    w.push_to(GW, 2, "u1", 2, 3000, Flags::BIZ_ACK, "the PC");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Offline);
    assert_eq!(w.reply(GW, 2).status, PushStatus::Offline);
    assert!(w.store.kicks.is_empty());
}

/// A stale route naming this node is cleaned for every client type, with any ack mode, and a
/// second push finds it offline without cleaning again (`stale-route-cleanup`).
#[test]
fn a_stale_web_route_naming_this_node_is_marked_offline_once() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u9".into(), ClientType::Web),
        FakeStore::route("127.0.0.1", 3001, Some("gone-web")),
    );
    w.push_to(GW, 1, "u9", 3, 3000, Flags::BIZ_ACK, "x");
    assert_eq!(w.reply(GW, 1).status, PushStatus::Offline);
    assert_eq!(store_token(&w, "u9", ClientType::Web), None);
    let seen = w.store.requests_seen;
    w.push_to(GW, 2, "u9", 3, 3000, Flags::NONE, "y");
    assert_eq!(w.reply(GW, 2).status, PushStatus::Offline);
    assert_eq!(w.store.requests_seen, seen + 1, "one read, no second mark");
}

/// A phone whose queue drained after crossing its mark takes ACKed pushes again
/// (`writable-stuck`).
#[test]
fn a_phone_that_drained_takes_acked_pushes_again() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    for writable in [false, true, false, true] {
        w.input(Input::PhoneWritable {
            conn: phone,
            writable,
        });
    }
    w.push_to(GW, 1, "u1", 1, 3000, Flags::BIZ_ACK, "after the drain");
    let pushes: Vec<i32> = w.pushes(phone).iter().map(|p| p.session_id).collect();
    assert_eq!(pushes.len(), 1);
    w.ack(phone, pushes[0]);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(finished(&w), vec![(PushStatus::AckSuccess, None, true)]);
}

/// A broadcast paused by flow control does not reach a connection a second time after that
/// connection re-bound under a user the broadcast has not passed yet (`broadcast-once`).
#[test]
fn a_paused_broadcast_skips_a_reached_connection_that_rebound_ahead_of_it() {
    let mut w = World::new(|c| c.broadcast_flow_limit_per_window = 2);
    let phones = many_online(&mut w, 6, |i| format!("u{i}"));
    broadcast(&mut w, 1, |_| {});
    let first: Vec<ConnId> = phones
        .iter()
        .filter(|(_, c)| !w.pushes(*c).is_empty())
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(first.len(), 2);
    // A reached connection re-binds as a user after the broadcast's cursor.
    w.bind(first[0], "zz-later", "");
    w.settle();
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(w.pushes(first[0]).len(), 1, "reached once");
    for (user, conn) in &phones {
        assert_eq!(w.pushes(*conn).len(), 1, "{user}");
    }
}

/// A binding that ended and a new one of the same user on the same connection: a notice for
/// the ended binding does not kick the new one (`kick-version-check`).
#[test]
fn a_kick_notice_for_a_binding_that_ended_spares_the_next_one() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    let key = ("u1".to_owned(), ClientType::Mobile);
    let token = store_token(&w, "u1", ClientType::Mobile).unwrap();
    let first = w.store.state.routes.get(&key).expect("stored").version;
    w.unbind(phone, "u1");
    w.bind(phone, "u1", "");
    assert!(w.store.state.routes.get(&key).expect("stored").version > first);
    w.input(Input::KickNotice {
        notice: KickNotice {
            client_type: 1,
            conn_id: token,
            device_id: "dev-A".into(),
            target_port: 3001,
            target_server: "127.0.0.1".into(),
            user_id: "u1".into(),
            version: first,
        },
    });
    assert!(w.received(phone, Command::Kick).is_empty());
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);
}

/// The user binds on this node while the push's store read is in flight: whatever the store
/// answers, the push goes to the local connection (`router-change-while-local`).
#[test]
fn a_user_who_binds_here_while_the_route_is_read_gets_the_push_locally() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Mobile),
        FakeStore::route("10.0.0.2", 3001, Some("elsewhere")),
    );
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.store.mode = StoreMode::Hold;
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    assert!(w.replies_to(GW, 1).is_empty(), "waiting for the route");
    w.bind(phone, "u1", "");
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    w.settle();
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
    assert_eq!(w.pushes(phone).len(), 1);
}

/// Found by the simulation with skewed node clocks (seed 1, and 8 more of seeds 1–300): a
/// device left a node whose clock was ahead — its connection's age stamped 300 ms in this
/// node's future —, that node marked the route offline, and the device connected here 34 ms
/// later and bound. The route write came back `Stale` (by the two clocks, an older connection
/// of the device) and the device was kicked from its own user. An offline route of the device
/// displaces nobody and keeps no bind out.
#[test]
fn a_device_moving_here_from_a_node_whose_clock_is_ahead_keeps_its_user() {
    let mut w = World::new(|_| {});
    store_device_route_elsewhere(&mut w, None, 300);
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.bind(phone, "u1", "");
    assert_holds_u1_here(&w, phone);
    assert!(store_token(&w, "u1", ClientType::Mobile).is_some());
}

/// Found by the simulation with skewed node clocks (seed 23000664): the device's old route was
/// still online — its node had crashed, so nobody marked it — and stamped by a node whose clock
/// was 900 ms ahead; the device connected here 350 ms later and was refused its user as a late
/// bind. A node takes in the versions it reads from the store and never stamps below them (a
/// hybrid logical clock): once a push through here has read the device's route, the device's
/// next connection here is the newer one.
#[test]
fn a_node_stamps_connections_after_the_versions_it_read_from_the_store() {
    let mut w = World::new(|_| {});
    let ahead_us = store_device_route_elsewhere(&mut w, Some("old-conn"), 900);
    // A push to u1 through this node reads the route (and answers router-change).
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "elsewhere");
    w.settle();
    assert_eq!(w.reply(GW, 1).status, PushStatus::RouterChange);
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.store.mode = StoreMode::Hold;
    w.bind(phone, "u1", "");
    let written = w
        .store
        .held
        .iter()
        .find_map(|request| match &request.op {
            StoreOp::PutRoute { route, .. } => Some(route.clone()),
            _ => None,
        })
        .expect("the bind's route write");
    assert!(
        written.conn_version > ahead_us && written.version > ahead_us + 5_000,
        "{written:?}"
    );
    // Stamped after the old connection, but not by more than two nodes' clocks may disagree:
    // while the old route is online the store keeps it, and this bind is kicked as late
    // (the device's connection made beyond that margin wins: the next test).
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    w.settle();
    assert_eq!(w.received(phone, Command::Kick).len(), 1, "kicked as late");
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile).as_deref(),
        Some("old-conn")
    );
}

/// Found by the simulation with skewed node clocks (seeds 23000664, 26000030): the device's
/// old route was still online — its node had crashed, so nobody marked it — and stamped by a
/// node whose clock was ahead; the device connected here sooner than that lead and bound. The
/// two clocks cannot order the connections: the stored route is kept (a late write of a
/// given-up connection must never displace a live one, seed 62001643), this bind is answered
/// and kicked as late, and the device's connection made more than the clocks' margin
/// (`MAX_CLOCK_DISAGREEMENT_US`) after the old one is the newer one and keeps the user.
#[test]
fn a_device_moving_here_off_a_crashed_node_whose_clock_was_ahead_wins_on_its_next_connection() {
    let mut w = World::new(|_| {});
    let ahead_us = store_device_route_elsewhere(&mut w, Some("old-conn"), 400);
    let first = w.connect("dev-A", "android");
    w.handshake(first);
    w.bind(first, "u1", "");
    assert_eq!(w.received(first, Command::Kick).len(), 1, "kicked as late");
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile).as_deref(),
        Some("old-conn")
    );
    w.drop_phone(first);
    // The device reconnects after its old connection's age plus the clocks' margin: across
    // nodes that is the newer connection.
    w.now += 400 + MAX_CLOCK_DISAGREEMENT_US / 1000;
    let next = w.connect("dev-A", "android");
    w.handshake(next);
    w.bind(next, "u1", "");
    assert!(w.received(next, Command::Kick).is_empty());
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, next)]);
    let stored = stored_route(&w, "u1", ClientType::Mobile);
    assert_eq!(stored.host, w.node.config().node_addr.host);
    assert!(
        stored.is_online() && stored.conn_version >= ahead_us + MAX_CLOCK_DISAGREEMENT_US,
        "{stored:?}"
    );
    assert!(w.store.kicks.iter().any(|k| k.conn_id == "old-conn"));
}

/// Found by the simulation (seed 30001436): another device's bind of the user sat in the queue
/// of a node that stalled for 4.6 s; the device gave up and closed, and when the node resumed
/// it bound the user, stamped at that moment, and marked it offline at once. This node's bind
/// of a live connection, made before the resume but written through a slow link, then came
/// back `Stale` against that newer, already ended bind, and the live connection was kicked
/// for a bind nobody held. A newer bind that has ended holds nobody: the connection binds
/// again above it and keeps its user.
#[test]
fn a_bind_kept_out_only_by_a_newer_bind_that_already_ended_binds_again_and_keeps_its_user() {
    let mut w = World::new(|_| {});
    let ended_us = store_other_device_route_elsewhere(&mut w, None, 2_000);
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.bind(phone, "u1", "");
    let stored = assert_holds_u1_here(&w, phone);
    assert!(stored.version > ended_us, "{stored:?}");
    // A push finds the phone.
    w.push_to(GW, 1, "u1", 1, 3000, Flags::NONE, "x");
    w.settle();
    assert_eq!(w.reply(GW, 1).status, PushStatus::Success);
}

/// Found by the simulation (seed 37001080): a bind refused by a newer bind that had ended
/// binds again (the rule above), but it was re-stamped with the node's clock. Another device
/// bound the user between the ended bind and the re-stamped write, and the re-stamp, its
/// clock past that bind, displaced it: the later device was kicked by an earlier bind. The
/// re-stamp is the version just above the ended bind, so a bind made after that one keeps
/// the user and this connection, the earlier bind, is kicked.
#[test]
fn a_rebind_above_an_ended_bind_does_not_displace_a_bind_made_after_it() {
    let mut w = World::new(|_| {});
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    // The ended bind of dev-B is 1 s newer than this node's bind, which waits in the store.
    let ended_us = store_other_device_route_elsewhere(&mut w, None, 1_000);
    w.store.mode = StoreMode::Hold;
    w.bind(phone, "u1", "");
    // The store answers 1.5 s later (`Stale`, against the ended bind); the re-stamped write
    // waits in the store again.
    w.now += 1_500;
    w.release_store();
    let restamped = w
        .store
        .held
        .iter()
        .find_map(|r| match &r.op {
            StoreOp::PutRoute { route, .. } => Some(route.version),
            _ => None,
        })
        .expect("the bind is written again");
    // Meanwhile dev-C binds u1 on another node, after the ended bind.
    let mut live = FakeStore::route("10.0.0.3", 3001, Some("live-C"));
    live.device_id = "dev-C".into();
    live.conn_version = ended_us + 100_000;
    live.version = ended_us + 200_000;
    w.store
        .state
        .routes
        .insert(("u1".into(), ClientType::Mobile), live);
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile).as_deref(),
        Some("live-C")
    );
    assert!(
        w.store.kicks.is_empty(),
        "dev-C kept the user: {:?}",
        w.store.kicks
    );
    assert_eq!(
        w.received(phone, Command::Kick).len(),
        1,
        "the earlier bind gives the user up"
    );
    assert_eq!(restamped, ended_us + 1, "just above the ended bind");
}

/// The other side of the rule above: a newer bind of another device that still holds the user
/// wins, and this connection is kicked.
#[test]
fn a_bind_kept_out_by_a_newer_live_bind_elsewhere_is_kicked() {
    let mut w = World::new(|_| {});
    store_other_device_route_elsewhere(&mut w, Some("live-there"), 2_000);
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.bind(phone, "u1", "");
    assert_eq!(w.received(phone, Command::Kick).len(), 1);
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile).as_deref(),
        Some("live-there")
    );
}

/// A node re-reads the wall clock (`Node::follow_wall_clock`): the versions it stamps follow
/// the wall clock, not its own monotonic clock's drift, and never go back when the wall clock
/// is stepped back.
#[test]
fn a_node_stamps_versions_from_the_latest_wall_clock_reading() {
    let mut w = World::new(|_| {});
    let now = w.now;
    let wall_ms = EPOCH0_MS + 60_000;
    w.node.follow_wall_clock(now, wall_ms);
    let phone = w.online("dev-A", "android", "u1", "");
    let first = stored_route(&w, "u1", ClientType::Mobile);
    let wall_us = u64::try_from(wall_ms).unwrap() * 1000;
    assert!(
        first.conn_version >= wall_us && first.conn_version < wall_us + 1_000_000,
        "{first:?}"
    );
    // Stepped back by 10 s: versions keep increasing.
    w.node.follow_wall_clock(w.now, EPOCH0_MS + 50_000);
    w.bind(phone, "u1", "");
    let second = stored_route(&w, "u1", ClientType::Mobile);
    assert!(second.version > first.version, "{first:?} then {second:?}");
}

/// Found by the simulation (seed 26000611): a user bound on another node with one client
/// type and with a stale route naming this node (it had restarted) with another. A push that
/// named no client type read the stale route — the first online one — and was answered
/// offline. With no client type the store hands the asking node an online route elsewhere
/// first: router-change.
#[test]
fn a_push_naming_no_client_type_passes_a_stale_route_here_for_one_online_elsewhere() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("s1".into(), ClientType::Mobile),
        FakeStore::route("127.0.0.1", 3001, Some("gone")),
    );
    w.store.state.routes.insert(
        ("s1".into(), ClientType::Pc),
        FakeStore::route("10.0.0.2", 3001, Some("live")),
    );
    w.push_to(GW, 1, "s1", 0, 3000, Flags::NONE, "x");
    w.settle();
    assert_eq!(w.reply(GW, 1).status, PushStatus::RouterChange);
    // With the other route offline, the push is offline and the stale route marked.
    w.store.state.routes.insert(
        ("s1".into(), ClientType::Pc),
        FakeStore::route("10.0.0.2", 3001, None),
    );
    w.push_to(GW, 2, "s1", 0, 3000, Flags::NONE, "y");
    w.settle();
    assert_eq!(w.reply(GW, 2).status, PushStatus::Offline);
    assert_eq!(store_token(&w, "s1", ClientType::Mobile), None);
}

/// Found by the simulation (seed 26002162): the store answered a push's route read after the
/// push had timed out; the answer was a stale route naming this node (from before a
/// restart), and it was dropped with the push, so the route stayed online for good. A stale
/// route of this node is marked offline whenever its answer comes.
#[test]
fn a_route_answer_after_the_push_ended_still_cleans_a_stale_route_here() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Mobile),
        FakeStore::route("127.0.0.1", 3001, Some("gone")),
    );
    w.store.mode = StoreMode::Hold;
    w.push_to(GW, 1, "u1", 1, 100, Flags::NONE, "x");
    w.advance(200);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Timeout);
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    assert_eq!(store_token(&w, "u1", ClientType::Mobile), None);
    assert_eq!(w.replies_to(GW, 1).len(), 1, "one status");
}

/// A route read of a route this node holds live is no stale route: a late answer naming the
/// local connection leaves it online.
#[test]
fn a_late_route_answer_naming_a_live_local_connection_leaves_it() {
    let mut w = World::new(|_| {});
    w.store.mode = StoreMode::Hold;
    w.push_to(GW, 1, "u1", 1, 100, Flags::NONE, "x");
    w.advance(200);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Timeout);
    w.store.mode = StoreMode::Immediate;
    let phone = w.online("dev-A", "android", "u1", "");
    let token = store_token(&w, "u1", ClientType::Mobile).expect("bound");
    // The held read is answered with the live route.
    w.release_store();
    assert_eq!(store_token(&w, "u1", ClientType::Mobile), Some(token));
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);
}

/// The same when the answer comes after the read itself timed out (the store link was backed
/// up beyond the store timeout): the push failed, and the late answer still cleans the route.
#[test]
fn a_route_answer_after_its_read_timed_out_still_cleans_a_stale_route_here() {
    let mut w = World::new(|_| {});
    w.store.state.routes.insert(
        ("u1".into(), ClientType::Mobile),
        FakeStore::route("127.0.0.1", 3001, Some("gone")),
    );
    w.store.mode = StoreMode::Hold;
    w.push_to(GW, 1, "u1", 1, 60_000, Flags::NONE, "x");
    let store_timeout_ms = w.node.config().store_timeout_ms;
    w.advance(store_timeout_ms + 100);
    assert_eq!(w.reply(GW, 1).status, PushStatus::Failure);
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    assert_eq!(store_token(&w, "u1", ClientType::Mobile), None);
    assert_eq!(w.replies_to(GW, 1).len(), 1, "one status");
}

/// Found by the simulation (seed 27000827): a connection's bind write was held up in the
/// network past its timeout; the connection bound the same user again and then gave it up
/// (that bind's route went offline); then the first write landed and put the route back online
/// for a connection that no longer held the user. Its late answer shows it: the node takes that
/// bind offline again.
#[test]
fn a_bind_write_that_lands_after_its_bind_ended_is_taken_offline_again() {
    let mut w = World::new(|_| {});
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.store.mode = StoreMode::Hold;
    w.bind(phone, "u1", "");
    let store_timeout_ms = w.node.config().store_timeout_ms;
    for _ in 0..4 {
        w.advance(store_timeout_ms + 100);
    }
    w.store.mode = StoreMode::Immediate;
    w.bind(phone, "u1", "");
    w.unbind(phone, "u1");
    assert_eq!(store_token(&w, "u1", ClientType::Mobile), None);
    // The held writes of the first bind land now.
    w.release_store();
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile),
        None,
        "{:?}",
        stored_route(&w, "u1", ClientType::Mobile)
    );
    assert!(w.received(phone, Command::Kick).is_empty());
}

/// The same when the first write's answer never comes (it landed through a store link the
/// node had given up): the re-bind marks the bind it ends, so the late write finds it ended.
#[test]
fn a_rebind_marks_the_bind_it_ends_so_a_late_write_of_it_never_lands_online() {
    let mut w = World::new(|_| {});
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.store.mode = StoreMode::Hold;
    w.bind(phone, "u1", "");
    let held = std::mem::take(&mut w.store.held);
    assert!(!held.is_empty());
    w.store.mode = StoreMode::Immediate;
    w.bind(phone, "u1", "");
    w.unbind(phone, "u1");
    assert_eq!(store_token(&w, "u1", ClientType::Mobile), None);
    // The first bind's write lands now; its answer is lost with the old link.
    for request in held {
        w.store.apply(&request.op);
    }
    assert_eq!(
        store_token(&w, "u1", ClientType::Mobile),
        None,
        "{:?}",
        stored_route(&w, "u1", ClientType::Mobile)
    );
}

/// Found by the simulation (seed 85002247): two phones bound one user and type here one after
/// the other while the store held their writes. The first write displaced a connection on
/// another node (`far`); by its answer the first phone had lost the user to the second one
/// here, whose own write displaced only the first's route and so kicks nobody. Putting `far`
/// back would undo nothing (the store holds the second bind), and `far` would keep the user
/// beside the second phone for good: the first bind's answer kicks it instead.
#[test]
fn a_displaced_connection_elsewhere_is_kicked_when_a_newer_bind_here_took_the_user() {
    let mut w = World::new(|_| {});
    let far = FakeStore::route("10.0.0.2", 3001, Some("far-conn"));
    w.store
        .state
        .routes
        .insert(("u1".into(), ClientType::Mobile), far);
    let first = w.connect("dev-A", "android");
    w.handshake(first);
    let second = w.connect("dev-B", "android");
    w.handshake(second);
    w.store.mode = StoreMode::Hold;
    w.bind(first, "u1", "");
    w.bind(second, "u1", ""); // the first phone loses the user here
    w.store.mode = StoreMode::Immediate;
    w.release_store();
    let notices: Vec<&KickNotice> = w
        .store
        .kicks
        .iter()
        .filter(|k| k.conn_id == "far-conn")
        .collect();
    assert_eq!(notices.len(), 1, "{:?}", w.store.kicks);
    let stored = stored_route(&w, "u1", ClientType::Mobile);
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, second)]);
    assert!(
        stored.is_online() && stored.device_id == "dev-B",
        "{stored:?}"
    );
}
