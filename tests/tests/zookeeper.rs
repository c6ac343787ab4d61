//! `pushgate serve --zookeeper …` against Debian's real ZooKeeper: the node registers its
//! connection and gateway servers in MPush's layout, with MPush's bytes and ACLs (compared with
//! MPush's own znodes in `../shared/vectors/cluster-data.json`), registers again after its
//! session expired, leaves on a clean shutdown, and a cluster broadcast (`pushgate push
//! --zookeeper`, or `cluster: true` on a node's admin API) reaches a gateway registered there
//! only (as a Java node's is).
use pushgate_tests::redis::{node_on, RedisServer};
use pushgate_tests::zookeeper::ZooKeeper;
use pushgate_tests::{bounded, eventually, expect_push, CliProcess, ServerOptions, TestServer};
use std::time::Duration;
use zookeeper_client as zk;

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);

/// A session authenticated as MPush's servers are (`digest`, `mpush`).
async fn mpush_session(zookeeper: &ZooKeeper) -> zk::Client {
    zk::Client::connector()
        .with_auth("digest", b"mpush")
        .connect(&zookeeper.connect_string())
        .await
        .expect("a ZooKeeper session")
}

/// A node registered in `zookeeper` (session timeout 2 s), with `extra` flags.
async fn node_in(zookeeper: &ZooKeeper, extra: &[&str]) -> TestServer {
    let mut args = vec!["--zookeeper".to_owned(), zookeeper.connect_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    TestServer::start_with(ServerOptions {
        args,
        toml: "[cluster]\nzookeeper_session_timeout_ms = 2000\n".into(),
    })
    .await
}

/// The children of `dir` and their values, once there are `count`.
async fn children(session: &zk::Client, dir: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    eventually(
        WAIT,
        &format!("{count} znodes under {dir}"),
        || async move {
            let names = session.list_children(dir).await.unwrap_or_default();
            if names.len() != count {
                return None;
            }
            let mut out = Vec::new();
            for name in names {
                let (data, _) = session.get_data(&format!("{dir}/{name}")).await.ok()?;
                out.push((name, data));
            }
            Some(out)
        },
    )
    .await
}

/// An ACL entry as (perms, scheme, id).
type AclEntry = (i64, String, String);

/// MPush's znodes in the captured run: path → (ephemeral, data, ACL).
fn mpush_znodes() -> Vec<(String, bool, String, Vec<AclEntry>)> {
    let path = pushgate_tests::shared_path("vectors/cluster-data.json");
    let text = std::fs::read_to_string(&path).expect("cluster-data.json");
    let data: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    data["zookeeper"]
        .as_array()
        .expect("zookeeper znodes")
        .iter()
        .map(|z| {
            let acl = z["acl"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["perms"].as_i64().unwrap(),
                        a["scheme"].as_str().unwrap().to_owned(),
                        a["id"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            (
                z["path"].as_str().unwrap().to_owned(),
                z["ephemeral"].as_bool().unwrap(),
                z["data"].as_str().unwrap().to_owned(),
                acl,
            )
        })
        .collect()
}

async fn acl_of(session: &zk::Client, path: &str) -> Vec<AclEntry> {
    let (acls, _) = session.get_acl(path).await.expect("get_acl");
    acls.iter()
        .map(|a| {
            let perms = if a.permission() == zk::Permission::ALL {
                31
            } else {
                -1
            };
            (perms, a.scheme().to_owned(), a.id().to_owned())
        })
        .collect()
}

fn is_uuid(name: &str) -> bool {
    let parts: Vec<usize> = name.split('-').map(str::len).collect();
    parts == [8, 4, 4, 4, 12] && name.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_in_mpush_layout_with_mpush_bytes_and_acls() {
    let zookeeper = ZooKeeper::start();
    bounded(LIMIT, async {
        let mut node = node_in(&zookeeper, &[]).await;
        let session = mpush_session(&zookeeper).await;
        let cs = children(&session, "/mpush/cluster/cs", 1).await;
        let gs = children(&session, "/mpush/cluster/gs", 1).await;
        let (name, cs_data) = &cs[0];
        assert!(is_uuid(name), "MPush names the znodes by a UUID: {name}");
        assert_eq!(&gs[0].0, name, "one node id for both znodes");

        // MPush's bytes, with this node's ports in place of the captured ones.
        let mpush = mpush_znodes();
        let captured = |dir: &str, port: u16| {
            mpush
                .iter()
                .find(|(path, _, data, _)| {
                    path.starts_with(dir) && data.contains(&format!("\"port\":{port}"))
                })
                .map(|(_, _, data, _)| data.clone())
                .expect("a captured znode")
        };
        let want_cs = captured("/mpush/cluster/cs/", 26000)
            .replace("26000", &node.connect.port().to_string());
        let want_gs = captured("/mpush/cluster/gs/", 26001)
            .replace("26001", &node.gateway.port().to_string());
        assert_eq!(String::from_utf8_lossy(cs_data), want_cs);
        assert_eq!(String::from_utf8_lossy(&gs[0].1), want_gs);

        // MPush's ACLs on every znode of its layout, ephemeral where MPush's are.
        for (path, ephemeral, _, acl) in mpush.iter().filter(|z| z.0.starts_with("/mpush")) {
            let ours = match path.rsplit_once('/') {
                Some((dir, _)) if *ephemeral => format!("{dir}/{name}"),
                _ => path.clone(),
            };
            assert_eq!(&acl_of(&session, &ours).await, acl, "ACL of {ours}");
            let (_, stat) = session.get_data(&ours).await.expect("get_data");
            assert_eq!(stat.ephemeral_owner != 0, *ephemeral, "{ours} ephemeral");
        }

        // The node reports what it sees there.
        let seen = eventually(WAIT, "the ZooKeeper view on /v1/nodes", || {
            let node = &node;
            async move {
                let body = node.http_get("/v1/nodes").await.json();
                let zk = body["zookeeper"].clone();
                (zk["registered"] == true && zk["gatewayServers"].as_array()?.len() == 1)
                    .then_some(zk)
            }
        })
        .await;
        assert_eq!(seen["nodeId"], serde_json::json!(name));
        assert_eq!(
            seen["gatewayServers"],
            serde_json::json!([format!("127.0.0.1:{}", node.gateway.port())])
        );
        assert_eq!(
            seen["connectServers"],
            serde_json::json!([format!("127.0.0.1:{}", node.connect.port())])
        );

        // Without MPush's credential the znodes cannot be read.
        let stranger = zk::Client::connect(&zookeeper.connect_string())
            .await
            .unwrap();
        let denied = stranger
            .get_data(&format!("/mpush/cluster/gs/{name}"))
            .await;
        assert!(matches!(denied, Err(zk::Error::NoAuth)), "{denied:?}");

        // A clean shutdown removes the registration at once.
        node.sigterm();
        node.wait_exit(WAIT).await.expect("the node exits");
        let (_, stat) = session.get_data("/mpush/cluster/gs").await.unwrap();
        let left = session.list_children("/mpush/cluster/gs").await.unwrap();
        assert!(left.is_empty(), "{left:?} (children {})", stat.num_children);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_registers_again() {
    let zookeeper = ZooKeeper::start();
    bounded(LIMIT, async {
        let node = node_in(&zookeeper, &[]).await;
        let session = mpush_session(&zookeeper).await;
        let before = children(&session, "/mpush/cluster/gs", 1).await;
        let cs_before = children(&session, "/mpush/cluster/cs", 1).await;

        // The node stops answering for longer than its 2 s session: ZooKeeper expires the
        // session and deletes its ephemeral znodes.
        {
            let _stopped = Stopped::new(node.pid());
            children(&session, "/mpush/cluster/gs", 0).await;
            children(&session, "/mpush/cluster/cs", 0).await;
        }

        // Back: a new session, the same names and bytes.
        assert_eq!(children(&session, "/mpush/cluster/gs", 1).await, before);
        assert_eq!(children(&session, "/mpush/cluster/cs", 1).await, cs_before);
        let logs = node.logs();
        assert!(logs.contains("registering again"), "{logs}");
        let metrics = node.metrics().await;
        assert_eq!(metrics.count("pushgate_zookeeper_sessions_total", &[]), 2.0);
        assert_eq!(
            metrics.value("pushgate_zookeeper_registered", &[]),
            Some(1.0)
        );
        assert!(logs.contains("session=2"), "{logs}");
    })
    .await;
}

/// A process stopped (SIGSTOP) until dropped (SIGCONT), even when the test fails meanwhile.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        signal(pid, "-STOP");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_zookeeper_registers_when_it_comes() {
    let mut zookeeper = ZooKeeper::start();
    zookeeper.kill();
    bounded(LIMIT, async {
        let node = node_in(&zookeeper, &[]).await;
        eventually(WAIT, "the retry log line", || {
            let logs = node.logs();
            async move { logs.contains("cannot register in ZooKeeper").then_some(()) }
        })
        .await;
        assert_eq!(
            node.http_get("/healthz").await.status,
            200,
            "serving meanwhile"
        );
        zookeeper.restart();
        let session = mpush_session(&zookeeper).await;
        let gs = children(&session, "/mpush/cluster/gs", 1).await;
        assert_eq!(
            String::from_utf8_lossy(&gs[0].1),
            format!(
                "{{\"host\":\"127.0.0.1\",\"port\":{}}}",
                node.gateway.port()
            )
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_gateways_registered_only_in_zookeeper() {
    let zookeeper = ZooKeeper::start();
    let redis = RedisServer::start();
    bounded(LIMIT, async {
        // A: a pushgate node on Redis and ZooKeeper. J: plays a Java node — its gateway is
        // known only from a znode the test writes as MPush does (not in the Redis registry).
        let a = node_on(
            &redis.url(),
            &format!(
                "[cluster]\nzookeeper = \"{}\"\n",
                zookeeper.connect_string()
            ),
        )
        .await;
        let java = TestServer::start().await;
        let session = mpush_session(&zookeeper).await;
        children(&session, "/mpush/cluster/gs", 1).await;
        let java_gs = format!(
            "{{\"host\":\"127.0.0.1\",\"port\":{}}}",
            java.gateway.port()
        );
        session
            .create(
                "/mpush/cluster/gs/acdf470f-da65-41b5-b79c-9b7e35ca638a",
                java_gs.as_bytes(),
                &zk::CreateMode::Ephemeral.with_acls(zk::Acls::creator_all()),
            )
            .await
            .expect("the Java node's znode");

        let on_a = a.bound_device("device-a", "user-a", &[]).await;
        let on_java = java.bound_device("device-j", "user-j", &[]).await;
        let mut push = CliProcess::spawn(&[
            "push",
            "--redis",
            &redis.url(),
            "--zookeeper",
            &zookeeper.connect_string(),
            "--broadcast",
            "--content",
            "to everyone",
        ]);
        let status = push.finish(WAIT).await;
        let out = push.transcript();
        assert!(status.success(), "{out}");
        assert!(
            out.contains(&format!("127.0.0.1:{}", a.gateway.port())),
            "{out}"
        );
        assert!(
            out.contains(&format!("127.0.0.1:{}", java.gateway.port())),
            "{out}"
        );
        for phone in [&on_a, &on_java] {
            let got = expect_push(phone, WAIT).await;
            assert_eq!(got.content.as_ref(), b"to everyone");
        }

        // The same from node A's admin API: a cluster broadcast reaches the Java node too.
        let answer = a
            .http_post(
                "/v1/push",
                &serde_json::json!({"broadcast": true, "cluster": true, "content": "from a"}),
            )
            .await
            .json();
        assert_eq!(answer["status"], "success", "{answer}");
        let mut gateways: Vec<String> = answer["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["gateway"].as_str().unwrap().to_owned())
            .collect();
        gateways.sort();
        let mut want = vec![
            format!("127.0.0.1:{}", a.gateway.port()),
            format!("127.0.0.1:{}", java.gateway.port()),
        ];
        want.sort();
        assert_eq!(gateways, want, "each gateway once: {answer}");
        for phone in [&on_a, &on_java] {
            let got = expect_push(phone, WAIT).await;
            assert_eq!(got.content.as_ref(), b"from a");
        }
        let refused = a
            .http_post(
                "/v1/push",
                &serde_json::json!({"broadcast": true, "cluster": true, "content": "x", "userIds": ["u"]}),
            )
            .await;
        assert_eq!(refused.status, 400);
    })
    .await;
}
