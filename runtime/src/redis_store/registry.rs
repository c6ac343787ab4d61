//! Node discovery in Redis: every node on a Redis store announces itself under
//! `pushgate:node:{gatewayHost}:{gatewayPort}` (a JSON [`NodeInfo`], `SET … PX ttl`) and adds
//! that key to the set `pushgate:nodes`; a heartbeat renews both every `ttl / 3`, a clean
//! shutdown deletes them, and a node that died leaves with its key's TTL.
//!
//! Listing reads the set, then every key in it (one `GET` each, all in flight together: the
//! keys live in different slots of a Redis Cluster, so no multi-key command is used); keys
//! gone are removed from the set. Only the set's first [`MAX_LISTED_NODES`] members are read.
use super::reader::RedisReader;
use pushgate_core::NodeAddr;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The set of announced node keys.
pub const NODE_INDEX: &str = "pushgate:nodes";
/// Most nodes a listing reads.
pub const MAX_LISTED_NODES: usize = 1024;
/// Longest accepted announcement value.
const MAX_INFO_BYTES: usize = 16 * 1024;

/// The key a node announces itself under.
pub fn node_key(gateway: &NodeAddr) -> String {
    format!("pushgate:node:{}:{}", gateway.host, gateway.port)
}

/// What a node announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Random per process start.
    pub node_id: String,
    /// Where phones connect: `publicHost:connectPort`.
    pub connect_addr: String,
    /// The gateway address this node's routes name (what PushClients dial).
    pub gateway_host: String,
    pub gateway_port: u16,
    /// The HTTP admin API.
    pub admin_addr: String,
    /// Routes (user, client type) bound on the node at the last heartbeat.
    pub online_users: u64,
    /// Epoch ms of the node's start and of the last heartbeat.
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    /// How long the announcement lives without a heartbeat.
    pub ttl_ms: u64,
}

impl NodeInfo {
    /// The gateway address.
    pub fn gateway(&self) -> NodeAddr {
        NodeAddr::new(self.gateway_host.clone(), self.gateway_port)
    }
}

/// Epoch milliseconds now.
pub fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes (or renews) `info` with its TTL and lists it in the index.
pub async fn announce(
    reader: &RedisReader,
    info: &NodeInfo,
    limit: Duration,
) -> Result<(), String> {
    let value = serde_json::to_string(info).map_err(|e| e.to_string())?;
    let key = node_key(&info.gateway());
    let mut set = redis::cmd("SET");
    set.arg(&key).arg(value).arg("PX").arg(info.ttl_ms.max(1));
    let mut sadd = redis::cmd("SADD");
    sadd.arg(NODE_INDEX).arg(&key);
    let (written, listed) = futures_util::future::join(
        reader.query::<()>(&set, limit),
        reader.query::<i64>(&sadd, limit),
    )
    .await;
    written?;
    listed?;
    Ok(())
}

/// Removes a node's announcement (clean shutdown).
pub async fn withdraw(
    reader: &RedisReader,
    gateway: &NodeAddr,
    limit: Duration,
) -> Result<(), String> {
    let key = node_key(gateway);
    let mut del = redis::cmd("DEL");
    del.arg(&key);
    let mut srem = redis::cmd("SREM");
    srem.arg(NODE_INDEX).arg(&key);
    let (deleted, unlisted) = futures_util::future::join(
        reader.query::<i64>(&del, limit),
        reader.query::<i64>(&srem, limit),
    )
    .await;
    deleted?;
    unlisted?;
    Ok(())
}

/// The live nodes, sorted by gateway address.
pub async fn list(reader: &RedisReader, limit: Duration) -> Result<Vec<NodeInfo>, String> {
    let started = tokio::time::Instant::now();
    let mut smembers = redis::cmd("SMEMBERS");
    smembers.arg(NODE_INDEX);
    let mut keys: Vec<String> = reader.query(&smembers, limit).await?;
    keys.sort();
    keys.truncate(MAX_LISTED_NODES);
    let left = limit.saturating_sub(started.elapsed());
    let reads = keys.iter().map(|key| {
        let mut get = redis::cmd("GET");
        get.arg(key);
        async move { (key, reader.query::<Option<Vec<u8>>>(&get, left).await) }
    });
    let mut nodes = Vec::new();
    let mut gone = Vec::new();
    for (key, value) in futures_util::future::join_all(reads).await {
        match value? {
            None => gone.push(key.clone()),
            Some(bytes) if bytes.len() <= MAX_INFO_BYTES => {
                match serde_json::from_slice::<NodeInfo>(&bytes) {
                    Ok(info) => nodes.push(info),
                    Err(error) => tracing::debug!(%key, %error, "not a node announcement: skipped"),
                }
            }
            Some(_) => tracing::debug!(%key, "node announcement too long: skipped"),
        }
    }
    if !gone.is_empty() {
        let mut srem = redis::cmd("SREM");
        srem.arg(NODE_INDEX).arg(&gone);
        let left = limit.saturating_sub(started.elapsed());
        if let Err(error) = reader.query::<i64>(&srem, left).await {
            tracing::debug!(%error, "expired node keys not removed from the index");
        }
    }
    nodes.sort_by(|a, b| (&a.gateway_host, a.gateway_port).cmp(&(&b.gateway_host, b.gateway_port)));
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_json() {
        assert_eq!(
            node_key(&NodeAddr::new("10.0.0.1", 3001)),
            "pushgate:node:10.0.0.1:3001"
        );
        let info = NodeInfo {
            node_id: "n".into(),
            connect_addr: "10.0.0.1:3000".into(),
            gateway_host: "10.0.0.1".into(),
            gateway_port: 3001,
            admin_addr: "127.0.0.1:3002".into(),
            online_users: 2,
            started_at_ms: 1,
            updated_at_ms: 2,
            ttl_ms: 10_000,
        };
        let text = serde_json::to_string(&info).unwrap();
        assert!(text.contains("\"gatewayPort\":3001"), "{text}");
        assert_eq!(serde_json::from_str::<NodeInfo>(&text).unwrap(), info);
        assert_eq!(info.gateway(), NodeAddr::new("10.0.0.1", 3001));
    }
}
