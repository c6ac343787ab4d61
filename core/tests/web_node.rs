//! Web connections ([`WebConn`], MPush's JSON packets) in front of the [`Node`], composed as the
//! runtime composes them: web clients take part in routes, kicks and single pushes in every ACK
//! mode through the node's one set of rules.
//!
//! The property test runs random clients (handshake, bind, ack, leave) against random pushes
//! and checks, from what the clients received and what the node reported: every push finishes
//! exactly once; success and ack-success only for a push its client received; ack-success only
//! after the client acknowledged it; a bind of a user that another page held kicks that page
//! with MPush's KICK packet; the node never holds two web routes for one user.
use bytes::Bytes;
use proptest::prelude::*;
use pushgate_core::crypto::ServerRsaKey;
use pushgate_core::push::{AckMode, Origin, PushRequest, SinglePush};
use pushgate_core::route::ClientType;
use pushgate_core::store_state::StoreState;
use pushgate_core::web_conn::{WebConfig, WebConn, WsMessage};
use pushgate_core::{
    ConnId, Event, Input, Millis, Node, NodeAddr, NodeConfig, Output, PushStatus, QueueMarks,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;

struct World {
    node: Node,
    store: StoreState,
    cfg: WebConfig,
    now: Millis,
    conns: BTreeMap<ConnId, WebConn>,
    /// Every JSON packet each client received.
    received: BTreeMap<ConnId, Vec<Value>>,
    /// Push statuses by token.
    finished: BTreeMap<u64, Vec<PushStatus>>,
    next_conn: u64,
    next_token: u64,
}

impl World {
    fn new() -> Self {
        let cfg = NodeConfig::new(
            NodeAddr::new("127.0.0.1", 3001),
            ServerRsaKey::mpush_default(),
        );
        let web = WebConfig::from_node(&cfg, QueueMarks::default(), 64 * 1024, 30_000, 90_000);
        Self {
            node: Node::new(cfg, [3; 32], 1_700_000_000_000),
            store: StoreState::new(),
            cfg: web,
            now: 0,
            conns: BTreeMap::new(),
            received: BTreeMap::new(),
            finished: BTreeMap::new(),
            next_conn: 1,
            next_token: 1,
        }
    }

    /// Runs connections, node and store until nothing moves; clients read everything.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            for conn in self.conns.values_mut() {
                while let Some(input) = conn.poll_input() {
                    self.node.handle(self.now, input);
                    moved = true;
                }
            }
            while let Some(output) = self.node.poll_output() {
                moved = true;
                match output {
                    Output::Transmit {
                        conn,
                        frame,
                        report_write,
                        ..
                    } => {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.handle_transmit(&self.cfg, self.now, frame, report_write);
                        }
                    }
                    Output::Close { conn, reason } => {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.handle_close(self.now, Some(reason));
                        }
                    }
                    Output::Store(request) => {
                        let reply = self.store.apply(self.now, request.op);
                        while self.store.poll_kick().is_some() {}
                        self.node.handle(
                            self.now,
                            Input::StoreReply {
                                request: request.id,
                                reply: Ok(reply),
                            },
                        );
                    }
                    Output::Event(Event::PushFinished {
                        origin: Origin::Local { token },
                        status,
                        ..
                    }) => self.finished.entry(token).or_default().push(status),
                    _ => {}
                }
            }
            for (id, conn) in &mut self.conns {
                while let Some(message) = conn.poll_transmit().cloned() {
                    if let WsMessage::Text(text) = message {
                        let packet = serde_json::from_str(&text).expect("JSON packet");
                        self.received.entry(*id).or_default().push(packet);
                    }
                    conn.handle_written(&self.cfg, self.now);
                    moved = true;
                }
            }
            self.conns.retain(|_, c| !c.is_finished());
            if !moved {
                break;
            }
        }
    }

    fn connect(&mut self, device: &str) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.node
            .handle(self.now, Input::PhoneConnected { conn: id });
        self.conns.insert(id, WebConn::new(id, self.now));
        self.send(
            id,
            json!({"cmd": 2, "flags": 16, "sessionId": 1,
            "body": {"deviceId": device, "osName": "web"}}),
        );
        id
    }

    fn send(&mut self, conn: ConnId, packet: Value) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.handle_text(&self.cfg, self.now, &packet.to_string());
        }
        self.drive();
    }

    fn push(&mut self, user: &str, ack: AckMode, content: &str) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        let request = PushRequest::Single(SinglePush {
            user_id: user.into(),
            client_type: Some(ClientType::Web),
            timeout_ms: 60_000,
            content: Bytes::copy_from_slice(content.as_bytes()),
            ack,
        });
        self.node
            .handle(self.now, Input::LocalPush { token, request });
        self.drive();
        token
    }

    fn pushes_to(&self, conn: ConnId) -> Vec<&Value> {
        self.received
            .get(&conn)
            .map(|r| r.iter().filter(|p| p["cmd"] == 15).collect())
            .unwrap_or_default()
    }
}

#[test]
fn a_web_client_binds_gets_pushes_in_every_ack_mode_and_is_kicked_by_a_second_page() {
    let mut w = World::new();
    let page = w.connect("page-1");
    w.send(
        page,
        json!({"cmd": 5, "flags": 16, "sessionId": 2, "body": {"userId": "alice"}}),
    );
    let none = w.push("alice", AckMode::None, "n");
    let auto = w.push("alice", AckMode::Auto, "a");
    let biz = w.push("alice", AckMode::Biz, "b");
    assert_eq!(w.finished[&none], [PushStatus::Success]);
    assert!(!w.finished.contains_key(&auto) && !w.finished.contains_key(&biz));
    let pushes: Vec<(i64, u64)> = w
        .pushes_to(page)
        .iter()
        .map(|p| {
            (
                p["sessionId"].as_i64().unwrap(),
                p["flags"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pushes.iter().map(|p| p.1).collect::<Vec<_>>(), [16, 24, 20]);
    for (sid, _) in &pushes[1..] {
        w.send(page, json!({"cmd": 23, "flags": 16, "sessionId": sid}));
    }
    assert_eq!(w.finished[&auto], [PushStatus::AckSuccess]);
    assert_eq!(w.finished[&biz], [PushStatus::AckSuccess]);

    let second = w.connect("page-2");
    w.send(
        second,
        json!({"cmd": 5, "flags": 16, "sessionId": 2, "body": {"userId": "alice"}}),
    );
    let kick = w.received[&page].last().unwrap().to_string();
    assert_eq!(
        kick,
        r#"{"body":{"deviceId":"page-1","userId":"alice"},"bodyLength":2,"cmd":13,"flags":16,"sessionId":0}"#
    );
    let next = w.push("alice", AckMode::None, "to the second page");
    assert_eq!(w.finished[&next], [PushStatus::Success]);
    assert_eq!(w.pushes_to(second).len(), 1);
    assert_eq!(
        w.pushes_to(page).len(),
        3,
        "the kicked page gets nothing more"
    );
}

#[derive(Debug, Clone)]
enum Step {
    Connect(u8),
    Bind(u8, u8),
    Push(u8, u8),
    AckLatest(u8),
    Leave(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..4).prop_map(Step::Connect),
        (0u8..4, 0u8..2).prop_map(|(c, u)| Step::Bind(c, u)),
        (0u8..2, 0u8..3).prop_map(|(u, a)| Step::Push(u, a)),
        (0u8..4).prop_map(Step::AckLatest),
        (0u8..4).prop_map(Step::Leave),
    ]
}

proptest! {
    #[test]
    fn web_clients_follow_the_nodes_push_and_route_rules(steps in proptest::collection::vec(step(), 1..40)) {
        let mut w = World::new();
        // Client slot → its current connection.
        let mut slots: BTreeMap<u8, ConnId> = BTreeMap::new();
        // Push token → (the content, the ack mode).
        let mut sent: BTreeMap<u64, (String, AckMode)> = BTreeMap::new();
        // Contents acknowledged by some client.
        let mut acked: Vec<String> = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            w.now += 10;
            match step {
                Step::Connect(c) => {
                    let conn = w.connect(&format!("device-{c}-{i}"));
                    slots.insert(c, conn);
                }
                Step::Bind(c, u) => {
                    if let Some(&conn) = slots.get(&c) {
                        w.send(conn, json!({"cmd": 5, "flags": 16, "sessionId": 2,
                            "body": {"userId": format!("user-{u}")}}));
                    }
                }
                Step::Push(u, a) => {
                    let ack = [AckMode::None, AckMode::Auto, AckMode::Biz][usize::from(a)];
                    let content = format!("push-{i}");
                    let token = w.push(&format!("user-{u}"), ack, &content);
                    sent.insert(token, (content, ack));
                }
                Step::AckLatest(c) => {
                    if let Some(&conn) = slots.get(&c) {
                        let latest = w.pushes_to(conn).last().map(|p| {
                            (p["sessionId"].clone(), p["body"]["content"].as_str().unwrap_or("").to_owned())
                        });
                        if let Some((sid, content)) = latest {
                            w.send(conn, json!({"cmd": 23, "flags": 16, "sessionId": sid}));
                            acked.push(content);
                        }
                    }
                }
                Step::Leave(c) => {
                    if let Some(conn) = slots.remove(&c) {
                        if let Some(web) = w.conns.get_mut(&conn) {
                            web.handle_peer_closed(w.now);
                        }
                        w.drive();
                    }
                }
            }
            // One web route per user at most.
            let routes = w.node.local_routes();
            for user in ["user-0", "user-1"] {
                let web_routes = routes.iter().filter(|(u, ct, _)| u == user && *ct == ClientType::Web).count();
                prop_assert!(web_routes <= 1);
            }
        }
        // Closing every client ends every push still waiting for an ACK.
        let open: Vec<ConnId> = w.conns.keys().copied().collect();
        for conn in open {
            if let Some(web) = w.conns.get_mut(&conn) {
                web.handle_peer_closed(w.now);
            }
        }
        w.drive();
        let delivered: Vec<String> = w
            .received
            .values()
            .flatten()
            .filter(|p| p["cmd"] == 15)
            .map(|p| p["body"]["content"].as_str().unwrap_or("").to_owned())
            .collect();
        for (token, (content, ack)) in &sent {
            let statuses = w.finished.get(token).cloned().unwrap_or_default();
            prop_assert_eq!(statuses.len(), 1, "push {} finished {:?}", content, statuses);
            match statuses[0] {
                PushStatus::Success => {
                    prop_assert_eq!(*ack, AckMode::None);
                    prop_assert!(delivered.contains(content));
                }
                PushStatus::AckSuccess => {
                    prop_assert!(*ack != AckMode::None);
                    prop_assert!(acked.contains(content), "{} ack-success without an ACK", content);
                }
                _ => {}
            }
        }
        // A kicked page was told with MPush's KICK packet.
        for packets in w.received.values() {
            for kick in packets.iter().filter(|p| p["cmd"] == 13) {
                prop_assert_eq!(kick["flags"].as_u64(), Some(16));
                prop_assert!(kick["body"]["userId"].as_str().is_some_and(|u| u.starts_with("user-")));
            }
        }
    }
}
