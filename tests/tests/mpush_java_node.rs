//! A two-node cluster where one node is a pushgate node and the other is a Java MPush node
//! played by the test through its footprint only: its znodes in ZooKeeper (MPush's layout and
//! bytes), a route in Redis in MPush's format, its kick channel subscription, and its gateway
//! port — a listener that answers GATEWAY_PUSH as MPush's gateway does (reference §11.2, §11.3).
//! The pushgate node lists it in alloc and `/v1/nodes`, forwards a single push for a user it
//! holds to its gateway, includes it in a cluster broadcast, and kicks its connection through
//! MPush's kick notice when the user binds on pushgate.
use bytes::{BufMut, BytesMut};
use pushgate_core::frame::{Frame, FrameDecoder, Packet};
use pushgate_tests::redis::{node_on, RedisServer};
use pushgate_tests::zookeeper::ZooKeeper;
use pushgate_tests::{bounded, eventually};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use zookeeper_client as zk;

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);
/// MPush's command codes (reference §4).
const OK: u8 = 11;
const GATEWAY_PUSH: u8 = 16;

/// `str` of MPush's body encoding (short form).
fn put_str(out: &mut BytesMut, text: &str) {
    out.put_i16(text.len() as i16);
    out.put_slice(text.as_bytes());
}

/// The user id a GATEWAY_PUSH body starts with (`None`: a broadcast).
fn push_user(body: &[u8]) -> Option<String> {
    let len = i16::from_be_bytes([body[0], body[1]]) as usize;
    (len > 0).then(|| String::from_utf8_lossy(&body[2..2 + len]).into_owned())
}

/// The Java node's gateway: answers every GATEWAY_PUSH with MPush's OK (single pushes with
/// the GatewayPushResult JSON, broadcasts with null data) and reports the user ids it got.
async fn java_gateway(listener: TcpListener, seen: mpsc::UnboundedSender<Option<String>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(serve_gateway(stream, seen.clone()));
    }
}

async fn serve_gateway(mut stream: TcpStream, seen: mpsc::UnboundedSender<Option<String>>) {
    let decoder = FrameDecoder::new(64 * 1024);
    let mut inbound = BytesMut::new();
    loop {
        while let Ok(Some(frame)) = decoder.decode(&mut inbound) {
            let Frame::Packet(packet) = frame else {
                continue;
            };
            if packet.cmd != GATEWAY_PUSH {
                continue;
            }
            let user = push_user(&packet.body);
            let mut body = BytesMut::new();
            body.put_u8(GATEWAY_PUSH);
            body.put_u8(0);
            match &user {
                Some(user) => put_str(
                    &mut body,
                    &format!(
                        "{{\"clientType\":1,\"timePoints\":[\"push-center-begin\",1,\"success-end\",2],\"userId\":\"{user}\"}}"
                    ),
                ),
                None => body.put_i16(0),
            }
            let reply = Packet::new(OK, Default::default(), packet.session_id, body.freeze());
            let _ = seen.send(user);
            if stream.write_all(&reply.to_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read_buf(&mut inbound).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushgate_node_and_a_java_node_share_one_cluster() {
    let redis = RedisServer::start();
    let zookeeper = ZooKeeper::start();
    bounded(LIMIT, async {
        let node = node_on(
            &redis.url(),
            &format!("[cluster]\nzookeeper = \"{}\"\n", zookeeper.connect_string()),
        )
        .await;

        // The Java node: gateway listener, znodes, kick subscription, a route.
        let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_port = gateway.local_addr().unwrap().port();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        tokio::spawn(java_gateway(gateway, seen_tx));
        let java_id = "e0034376-b768-4c5e-b230-e04b52c1d0ed";
        let session = zk::Client::connector()
            .with_auth("digest", b"mpush")
            .connect(&zookeeper.connect_string())
            .await
            .unwrap();
        eventually(WAIT, "the pushgate node's znodes", || {
            let session = &session;
            async move {
                let names = session.list_children("/mpush/cluster/gs").await.ok()?;
                (names.len() == 1).then_some(())
            }
        })
        .await;
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::creator_all());
        session
            .create(
                &format!("/mpush/cluster/cs/{java_id}"),
                br#"{"attrs":{"weight":1},"host":"127.0.0.2","port":26010}"#,
                &ephemeral,
            )
            .await
            .unwrap();
        session
            .create(
                &format!("/mpush/cluster/gs/{java_id}"),
                format!("{{\"host\":\"127.0.0.1\",\"port\":{gateway_port}}}").as_bytes(),
                &ephemeral,
            )
            .await
            .unwrap();
        let kick_channel = format!("/mpush/kick/127.0.0.1:{gateway_port}");
        let client = redis::Client::open(redis.url()).unwrap();
        let mut kicks = client.get_async_pubsub().await.unwrap();
        kicks.subscribe(&kick_channel).await.unwrap();
        let mut kicks = kicks.into_on_message();
        let route = format!(
            "{{\"port\":{gateway_port},\"host\":\"127.0.0.1\",\"deviceId\":\"device-J\",\"osName\":\"android\",\"clientVersion\":\"2.0\",\"connId\":\"354ef8e7\"}}"
        );
        redis.command(&["HSET", "mp:ur:user-j", "1", &route]);
        redis.command(&["ZADD", "mp:oul:127.0.0.2", "0.0", "user-j"]);

        // The pushgate node sees the Java node in ZooKeeper.
        let java_gateway = format!("127.0.0.1:{gateway_port}");
        eventually(WAIT, "the Java gateway on /v1/nodes", || {
            let (node, java_gateway) = (&node, &java_gateway);
            async move {
                let body = node.http_get("/v1/nodes").await.json();
                let gateways = body["zookeeper"]["gatewayServers"].as_array()?.clone();
                gateways
                    .iter()
                    .any(|g| g.as_str() == Some(java_gateway.as_str()))
                    .then_some(())
            }
        })
        .await;
        let alloc = eventually(WAIT, "the Java node in alloc", || {
            let node = &node;
            async move {
                let text = node.http_get("/v1/alloc").await.text();
                text.ends_with(",127.0.0.2:26010").then_some(text)
            }
        })
        .await;
        assert_eq!(
            alloc,
            format!("127.0.0.1:{},127.0.0.2:26010", node.connect.port())
        );

        // A push for the user the Java node holds goes on to its gateway.
        let answer = node
            .http_post(
                "/v1/push",
                &serde_json::json!({"userId": "user-j", "content": "via java"}),
            )
            .await
            .json();
        assert_eq!(answer["status"], "success", "{answer}");
        assert_eq!(
            tokio::time::timeout(WAIT, seen.recv()).await.unwrap(),
            Some(Some("user-j".to_owned()))
        );

        // A cluster broadcast reaches both nodes' gateways.
        let answer = node
            .http_post(
                "/v1/push",
                &serde_json::json!({"broadcast": true, "cluster": true, "content": "all"}),
            )
            .await
            .json();
        assert_eq!(answer["status"], "success", "{answer}");
        assert_eq!(answer["nodes"].as_array().unwrap().len(), 2, "{answer}");
        assert_eq!(
            tokio::time::timeout(WAIT, seen.recv()).await.unwrap(),
            Some(None),
            "a broadcast GATEWAY_PUSH (no user id)"
        );

        // The user binds on pushgate: the Java node's connection gets MPush's kick notice.
        let _phone = node.bound_device("device-P", "user-j", &[]).await;
        let message = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut kicks))
            .await
            .expect("a kick notice")
            .unwrap();
        let notice: serde_json::Value =
            serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(
            notice,
            serde_json::json!({
                "clientType": 1, "connId": "354ef8e7", "deviceId": "device-J",
                "targetPort": gateway_port, "targetServer": "127.0.0.1", "userId": "user-j"
            })
        );
    })
    .await;
}
