//! The bind check (MPush's `BindValidator`, reference §9.4 step 3) through the harness: a
//! BIND of a new user waits for the driver's verdict; allowed it binds, refused the phone gets
//! `ERROR("bind failed")` and is closed, a check without a verdict follows the fallback, and a
//! connection that closes, unbinds or binds again meanwhile is handled. Also the events that
//! count over-long user ids and tags.
mod harness;

use harness::World;
use pushgate_core::command::Command;
use pushgate_core::config::BindCheckFallback;
use pushgate_core::frame::Flags;
use pushgate_core::message::Bind;
use pushgate_core::route::ClientType;
use pushgate_core::{
    BindCheckOutcome, BindField, BindVerdict, CloseReason, ConnId, Event, Input, NodeConfig,
};

fn checking(configure: impl FnOnce(&mut NodeConfig)) -> World {
    World::new(|c| {
        c.bind_check = true;
        configure(c);
    })
}

fn answers(w: &World, conn: ConnId) -> Vec<(u8, u8, String)> {
    w.phones[&conn].answers()
}

fn close_reason(w: &World, conn: ConnId) -> Option<CloseReason> {
    w.events.iter().find_map(|e| match e {
        Event::Closed { conn: c, reason } if *c == conn => Some(*reason),
        _ => None,
    })
}

/// Every `BindChecked` event as (user, outcome, allowed).
fn checked(w: &World) -> Vec<(String, BindCheckOutcome, bool)> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Event::BindChecked {
                user_id,
                outcome,
                allowed,
                ..
            } => Some((user_id.clone(), *outcome, *allowed)),
            _ => None,
        })
        .collect()
}

/// Answers the oldest unanswered check.
fn verdict(w: &mut World, verdict: BindVerdict) {
    let check = w.bind_checks.remove(0);
    w.input(Input::BindVerdict {
        check: check.id,
        verdict,
    });
}

fn bind_success() -> (u8, u8, String) {
    (Command::Bind.code(), 0, "bind success".to_owned())
}

fn bind_failed() -> (u8, u8, String) {
    (Command::Bind.code(), 0, "bind failed".to_owned())
}

#[test]
fn an_allowed_bind_waits_for_its_verdict_then_binds() {
    let mut w = checking(|_| {});
    let phone = w.connect("dev-A", "android");
    w.handshake(phone);
    w.send_sealed(
        phone,
        Command::Bind,
        Flags::NONE,
        &Bind {
            user_id: "u1".into(),
            data: "sig=abc".into(),
            tags: "vip,beta".into(),
        },
    );
    assert!(
        answers(&w, phone).is_empty(),
        "no answer before the verdict"
    );
    assert!(w.node.routes_of("u1").is_empty());
    assert_eq!(w.bind_checks.len(), 1);
    let check = &w.bind_checks[0];
    assert_eq!(check.conn, phone);
    assert_eq!(check.user_id, "u1");
    assert_eq!(check.client_type, ClientType::Mobile);
    assert_eq!(check.device_id, "dev-A");
    assert_eq!(check.tags, "vip,beta");
    assert_eq!(check.data, "sig=abc");

    verdict(&mut w, BindVerdict::Allow);
    assert_eq!(answers(&w, phone), vec![bind_success()]);
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);
    assert_eq!(
        checked(&w),
        vec![("u1".to_owned(), BindCheckOutcome::Allowed, true)]
    );
    assert_eq!(w.node.bind_checks_in_flight(), 0);

    // New tags for the same user take MPush's shortcut: no second check.
    w.bind(phone, "u1", "vip");
    assert!(w.bind_checks.is_empty());
    assert_eq!(answers(&w, phone), vec![bind_success(), bind_success()]);
}

#[test]
fn a_refused_bind_gets_bind_failed_and_closes_without_a_route() {
    let mut w = checking(|_| {});
    let other = w.online("dev-B", "android", "u2", "");
    verdict(&mut w, BindVerdict::Allow);
    let phone = w.online("dev-A", "android", "u1", "");
    verdict(&mut w, BindVerdict::Refuse);
    assert_eq!(answers(&w, phone), vec![bind_failed()]);
    assert!(w.closed_by_node.contains(&phone));
    assert_eq!(close_reason(&w, phone), Some(CloseReason::BadRequest));
    assert!(w.node.routes_of("u1").is_empty());
    assert!(!w
        .store
        .state
        .routes
        .contains_key(&("u1".to_owned(), ClientType::Mobile)));
    assert_eq!(
        checked(&w)[1],
        ("u1".to_owned(), BindCheckOutcome::Refused, false)
    );
    // Another connection is untouched.
    assert!(!w.closed_by_node.contains(&other));
    assert_eq!(w.node.routes_of("u2"), vec![(ClientType::Mobile, other)]);
}

#[test]
fn a_check_without_a_verdict_refuses_by_default() {
    let mut w = checking(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    verdict(&mut w, BindVerdict::Failed);
    assert_eq!(answers(&w, phone), vec![bind_failed()]);
    assert!(w.closed_by_node.contains(&phone));
    assert!(w.node.routes_of("u1").is_empty());
    assert_eq!(
        checked(&w),
        vec![("u1".to_owned(), BindCheckOutcome::Failed, false)]
    );
}

#[test]
fn a_check_without_a_verdict_allows_when_the_fallback_says_so() {
    let mut w = checking(|c| c.bind_check_fallback = BindCheckFallback::Allow);
    let phone = w.online("dev-A", "android", "u1", "");
    verdict(&mut w, BindVerdict::Failed);
    assert_eq!(answers(&w, phone), vec![bind_success()]);
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, phone)]);
    assert_eq!(
        checked(&w),
        vec![("u1".to_owned(), BindCheckOutcome::Failed, true)]
    );
}

#[test]
fn beyond_the_checks_in_flight_a_bind_gets_the_fallback_at_once() {
    let mut w = checking(|c| c.max_bind_checks = 1);
    let first = w.online("dev-A", "android", "u1", "");
    let second = w.online("dev-B", "android", "u2", "");
    assert_eq!(w.bind_checks.len(), 1, "only one check asked");
    assert_eq!(answers(&w, second), vec![bind_failed()]);
    assert!(w.closed_by_node.contains(&second));
    assert_eq!(
        checked(&w),
        vec![("u2".to_owned(), BindCheckOutcome::Busy, false)]
    );
    verdict(&mut w, BindVerdict::Allow);
    assert_eq!(answers(&w, first), vec![bind_success()]);
    assert_eq!(w.node.routes_of("u1"), vec![(ClientType::Mobile, first)]);
}

#[test]
fn a_connection_closed_while_checking_ignores_the_late_verdict() {
    let mut w = checking(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    assert_eq!(w.node.bind_checks_in_flight(), 1);
    w.drop_phone(phone);
    assert_eq!(w.node.bind_checks_in_flight(), 0, "the close cancels it");
    // The harness fails on any frame sent to a closed connection.
    verdict(&mut w, BindVerdict::Allow);
    assert!(w.node.routes_of("u1").is_empty());
    assert!(checked(&w).is_empty());
    assert!(w.store.state.routes.is_empty());
    assert_eq!(w.node.stats().connections, 0);
}

#[test]
fn the_same_bind_again_waits_for_the_same_check_and_a_different_one_replaces_it() {
    let mut w = checking(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.bind(phone, "u1", ""); // the Java SDK's retry after 3 s
    assert_eq!(w.bind_checks.len(), 1);
    assert_eq!(w.node.bind_checks_in_flight(), 1);
    w.bind(phone, "u9", "");
    assert_eq!(w.bind_checks.len(), 2);
    assert_eq!(w.node.bind_checks_in_flight(), 1, "u1's check was replaced");
    verdict(&mut w, BindVerdict::Allow); // u1's: ignored
    assert!(answers(&w, phone).is_empty());
    assert!(w.node.routes_of("u1").is_empty());
    verdict(&mut w, BindVerdict::Allow); // u9's
    assert_eq!(answers(&w, phone), vec![bind_success()]);
    assert_eq!(w.node.routes_of("u9"), vec![(ClientType::Mobile, phone)]);
}

#[test]
fn an_unbind_while_checking_cancels_the_bind() {
    let mut w = checking(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    w.unbind(phone, "u1");
    assert_eq!(w.node.bind_checks_in_flight(), 0);
    verdict(&mut w, BindVerdict::Allow);
    assert!(w.node.routes_of("u1").is_empty());
    assert_eq!(
        answers(&w, phone),
        vec![(Command::Unbind.code(), 0, "unbind success".to_owned())]
    );
}

#[test]
fn without_the_check_no_check_is_asked() {
    let mut w = World::new(|_| {});
    let phone = w.online("dev-A", "android", "u1", "");
    assert!(w.bind_checks.is_empty());
    assert_eq!(answers(&w, phone), vec![bind_success()]);
}

#[test]
fn over_long_user_ids_and_tags_are_reported_apart() {
    let mut w = World::new(|c| {
        c.max_user_id_bytes = 8;
        c.max_tags_bytes = 4;
    });
    let long_user = w.online("dev-A", "android", "123456789", "");
    let long_tags = w.online("dev-B", "android", "u2", "a,b,c");
    let fine = w.online("dev-C", "android", "12345678", "a,bc");
    let too_long: Vec<(ConnId, BindField)> = w
        .events
        .iter()
        .filter_map(|e| match e {
            Event::BindTooLong { conn, field } => Some((*conn, *field)),
            _ => None,
        })
        .collect();
    assert_eq!(
        too_long,
        vec![(long_user, BindField::UserId), (long_tags, BindField::Tags)]
    );
    for conn in [long_user, long_tags] {
        assert_eq!(
            answers(&w, conn),
            vec![(Command::Bind.code(), 0, "invalid param".to_owned())]
        );
        assert!(w.closed_by_node.contains(&conn));
    }
    assert_eq!(answers(&w, fine), vec![bind_success()]);
}
