//! MPush's alloc answer from `pushgate serve` (reference §17): `GET /` on `--alloc-port` (and
//! `GET /v1/alloc` on the admin API) lists the live connection servers, least loaded first, in
//! MPush's text; a node killed leaves the list within the registry's TTL; a Java node's
//! connection server registered in ZooKeeper joins it with the size of its `mp:oul:` set.
use pushgate_tests::redis::{node_on, RedisServer};
use pushgate_tests::zookeeper::ZooKeeper;
use pushgate_tests::{bounded, eventually, http, TestServer};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use zookeeper_client as zk;

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until `addr` answers `path` with exactly `want`.
async fn alloc_until(addr: SocketAddr, path: &str, want: &str) -> http::Response {
    eventually(WAIT, &format!("alloc {want:?}"), || async move {
        let response = http::get(addr, path).await.ok()?;
        (response.status == 200 && response.text() == want).then_some(response)
    })
    .await
}

fn connect_addr(node: &TestServer) -> String {
    format!("127.0.0.1:{}", node.connect.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alloc_lists_live_nodes_least_loaded_first_and_a_dead_node_leaves() {
    let redis = RedisServer::start();
    let zookeeper = ZooKeeper::start();
    bounded(LIMIT, async {
        let alloc_port = free_port();
        let ttl = "[store]\nnode_ttl_ms = 1500\n";
        let a = pushgate_tests::TestServer::start_with(pushgate_tests::ServerOptions {
            args: vec![
                "--redis".into(),
                redis.url(),
                "--zookeeper".into(),
                zookeeper.connect_string(),
                "--alloc-port".into(),
                alloc_port.to_string(),
            ],
            toml: ttl.into(),
        })
        .await;
        let b = node_on(&redis.url(), ttl).await;
        let c = node_on(&redis.url(), ttl).await;
        let _b1 = b.bound_device("device-b1", "user-b1", &[]).await;
        let _b2 = b.bound_device("device-b2", "user-b2", &[]).await;
        let _c1 = c.bound_device("device-c1", "user-c1", &[]).await;

        // A Java node, known only from ZooKeeper, with 5 users online on its public IP.
        let session = zk::Client::connector()
            .with_auth("digest", b"mpush")
            .connect(&zookeeper.connect_string())
            .await
            .unwrap();
        eventually(WAIT, "node A in ZooKeeper", || {
            let session = &session;
            async move {
                let names = session.list_children("/mpush/cluster/cs").await.ok()?;
                (names.len() == 1).then_some(())
            }
        })
        .await;
        session
            .create(
                "/mpush/cluster/cs/2ab351e1-ace2-4de6-9426-07d379ae6a0d",
                br#"{"attrs":{"public_ip":"10.9.9.9","weight":1},"host":"10.0.0.9","port":3000}"#,
                &zk::CreateMode::Ephemeral.with_acls(zk::Acls::creator_all()),
            )
            .await
            .unwrap();
        for user in ["j1", "j2", "j3", "j4", "j5"] {
            redis.command(&["ZADD", "mp:oul:10.9.9.9", "0.0", user]);
        }

        // A (no users), C (1), B (2), the Java node (5): MPush's text on both paths.
        let want = format!(
            "{},{},{},10.9.9.9:3000",
            connect_addr(&a),
            connect_addr(&c),
            connect_addr(&b)
        );
        let alloc = SocketAddr::from(([127, 0, 0, 1], alloc_port));
        let response = alloc_until(alloc, "/", &want).await;
        assert!(
            response
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "{:?}",
            response.headers
        );
        alloc_until(a.admin, "/v1/alloc", &want).await;
        alloc_until(
            b.admin,
            "/",
            &format!(
                "{},{},{}",
                connect_addr(&a),
                connect_addr(&c),
                connect_addr(&b)
            ),
        )
        .await;

        // C dies (SIGKILL, no goodbye): it leaves within the registry's TTL.
        let c_addr = connect_addr(&c);
        drop(c);
        let want = format!("{},{},10.9.9.9:3000", connect_addr(&a), connect_addr(&b));
        let response = alloc_until(alloc, "/", &want).await;
        assert!(!response.text().contains(&c_addr));
    })
    .await;
}
