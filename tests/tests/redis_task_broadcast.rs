//! A broadcast with a task id across three `pushgate serve --redis …` nodes, sent through the
//! cluster PushClient: each node takes its per-second limit (`q`) and cancel flag (`c`) from
//! `mp:pt{taskId}` and adds its progress (`sc`, `{taskId}:sui`); the client gets one answer
//! folding the three nodes'.
use pushgate::client::cluster::ClusterPushClient;
use pushgate::client::{BroadcastRequest, DeviceEvent};
use pushgate_core::PushStatus;
use pushgate_tests::redis::node_on;
use pushgate_tests::redis::RedisServer;
use pushgate_tests::{bounded, eventually};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(5);
const PHONES_PER_NODE: usize = 10;
const PHONES: u64 = 3 * PHONES_PER_NODE as u64;

/// Pushes received per content, over every phone.
type Received = Arc<Mutex<HashMap<Vec<u8>, u64>>>;

fn received(counts: &Received, content: &str) -> u64 {
    counts
        .lock()
        .unwrap()
        .get(content.as_bytes())
        .copied()
        .unwrap_or(0)
}

/// The task's `sc` field (0 when absent).
fn sent_count(redis: &RedisServer, task: &str) -> u64 {
    let reply = redis.command(&["HGET", &format!("mp:pt{task}"), "sc"]);
    // A bulk string "$n\r\nVALUE\r\n", or a nil "$-1".
    reply
        .lines()
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn set_field(redis: &RedisServer, task: &str, field: &str, value: &str) {
    let reply = redis.command(&["HSET", &format!("mp:pt{task}"), field, value]);
    assert!(reply.starts_with(':'), "HSET {field}: {reply}");
}

async fn wait_sent(redis: &RedisServer, task: &str, at_least: u64, limit: Duration) -> u64 {
    eventually(limit, &format!("sc of {task} >= {at_least}"), || {
        let sent = sent_count(redis, task);
        async move { (sent >= at_least).then_some(sent) }
    })
    .await
}

fn task_broadcast(content: &str, task: &str) -> BroadcastRequest {
    BroadcastRequest {
        task_id: Some(task.into()),
        timeout_ms: 3000,
        ..BroadcastRequest::new(content.to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_broadcast_across_three_nodes_follows_qps_cancel_and_reports_progress() {
    let redis = RedisServer::start();
    bounded(LIMIT, async {
        let url = redis.url();
        let nodes = [
            node_on(&url, "[store]\nnode_ttl_ms = 1500\n").await,
            node_on(&url, "[store]\nnode_ttl_ms = 1500\n").await,
            node_on(&url, "[store]\nnode_ttl_ms = 1500\n").await,
        ];
        for node in &nodes {
            eventually(WAIT, "three nodes registered", || async {
                let listed = node.http_get("/v1/nodes").await.json();
                (listed["nodes"].as_array().map(Vec::len) == Some(3)).then_some(())
            })
            .await;
        }
        // Ten phones on each node, each counting what it receives.
        let counts: Received = Arc::default();
        let mut listeners = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for i in 0..PHONES_PER_NODE {
                let phone = node
                    .bound_device(&format!("phone-{n}-{i}"), &format!("user-{n}-{i}"), &[])
                    .await;
                let counts = counts.clone();
                listeners.push(tokio::spawn(async move {
                    loop {
                        match phone.next_event_within(Duration::from_secs(60)).await {
                            Ok(DeviceEvent::Push { content, .. }) => {
                                *counts.lock().unwrap().entry(content.to_vec()).or_default() += 1
                            }
                            Ok(_) => {}
                            Err(_) => return phone,
                        }
                    }
                }));
            }
        }
        let client = ClusterPushClient::new(&url).expect("a Redis URL");

        // Task "t-speed": 1 per second per node, so 10 s at that pace; sped up mid-run.
        set_field(&redis, "t-speed", "q", "1");
        let started = Instant::now();
        let result = client.broadcast(task_broadcast("speed", "t-speed")).await;
        // One answer for the three nodes, given once the request is written (as MPush's
        // PushClient does for task broadcasts), long before the task is done.
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        assert_eq!(result.nodes.len(), 3, "{result:?}");
        assert!(result.nodes.iter().all(|n| n.status == PushStatus::Success));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "answered on write (the task takes 10 s): {:?}",
            started.elapsed()
        );
        // Progress grows in Redis at the limit's pace.
        let first = wait_sent(&redis, "t-speed", 1, WAIT).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let second = sent_count(&redis, "t-speed");
        assert!(
            second > first && second < PHONES,
            "progress grows but the task is not done: {first} then {second}"
        );
        assert!(
            second <= 3 * 4,
            "at most 1 per second per node in the first seconds: {second}"
        );
        // Speed it up: every node re-reads q when over its limit, and finishes at once.
        let sped = Instant::now();
        set_field(&redis, "t-speed", "q", "1000");
        wait_sent(&redis, "t-speed", PHONES, Duration::from_millis(3000)).await;
        eprintln!(
            "t-speed: done {} ms after the q change ({} ms in all; 10 s at q=1)",
            sped.elapsed().as_millis(),
            started.elapsed().as_millis()
        );
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "the q change sped the task up"
        );
        eventually(WAIT, "every phone got the broadcast", || {
            let got = received(&counts, "speed");
            async move { (got >= PHONES).then_some(()) }
        })
        .await;
        assert_eq!(received(&counts, "speed"), PHONES, "each phone once");
        assert_eq!(sent_count(&redis, "t-speed"), PHONES);
        // `sc` and `{taskId}:sui` are separate commands of one progress update: the list may
        // trail the count by a moment.
        eventually(WAIT, "every user reached in t-speed:sui", || {
            let users = redis.command(&["LLEN", "t-speed:sui"]);
            async move { (users.trim_end() == format!(":{PHONES}")).then_some(()) }
        })
        .await;

        // Task "t-cancel": 1 per second per node, cancelled after the first sends.
        set_field(&redis, "t-cancel", "q", "1");
        let result = client.broadcast(task_broadcast("cancel", "t-cancel")).await;
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        assert_eq!(result.nodes.len(), 3, "{result:?}");
        wait_sent(&redis, "t-cancel", 3, WAIT).await;
        set_field(&redis, "t-cancel", "c", "1");
        // Grace: a node reads the flag when its current second is used up (then at most one
        // more send per node); a task still running would send 3 more per second after it.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let stopped_at = sent_count(&redis, "t-cancel");
        let got_at = received(&counts, "cancel");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let sent_later = sent_count(&redis, "t-cancel");
        let got_later = received(&counts, "cancel");
        assert_eq!(
            (sent_later, got_later),
            (stopped_at, got_at),
            "nothing sent after the cancel's grace"
        );
        assert!(
            stopped_at < PHONES,
            "the cancel stopped the task early: {stopped_at} of {PHONES}"
        );
        assert_eq!(got_later, sent_later, "every counted send reached a phone");

        // The gateways' late completions of the task broadcasts do not answer a later
        // broadcast: one without a task id waits for (and gets) its own three completions.
        let result = client.broadcast(BroadcastRequest::new("after")).await;
        assert_eq!(result.status, PushStatus::Success, "{result:?}");
        assert_eq!(result.nodes.len(), 3, "{result:?}");
        eventually(WAIT, "every phone got the plain broadcast", || {
            let got = received(&counts, "after");
            async move { (got >= PHONES).then_some(()) }
        })
        .await;
        assert_eq!(received(&counts, "after"), PHONES, "each phone once");
        for listener in listeners {
            listener.abort();
        }
        client.close();
    })
    .await;
}
