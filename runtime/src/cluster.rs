//! This node's part in a cluster on Redis: its announcement in the node registry
//! ([`crate::redis_store::registry`]), renewed by a heartbeat task every third of
//! `store.node_ttl_ms` with the node's bound-route count and withdrawn on clean shutdown; the
//! listing behind `GET /v1/nodes`; and the [`ClusterPushClient`] the admin API forwards a push
//! through when this node answers router change. Without Redis the node lists only itself and
//! forwards nothing.
use crate::client::cluster::ClusterPushClient;
use crate::driver::NodeHandle;
use crate::redis_store::registry::{self, epoch_ms, NodeInfo};
use crate::redis_store::{RedisReader, RedisTarget};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Longest a registry read or write waits.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);

/// The node's cluster membership.
#[derive(Debug)]
pub struct ClusterNode {
    /// This node's announcement (the online count and update time are filled when used).
    info: NodeInfo,
    redis: Option<(RedisReader, ClusterPushClient)>,
    heartbeat: Option<JoinHandle<()>>,
}

impl ClusterNode {
    /// Membership of a node on `redis` (announced now and every `ttl / 3`), or of a lone node.
    /// Pushes it forwards to other nodes carry `gateway_token`.
    pub fn start(
        info: NodeInfo,
        redis: Option<RedisTarget>,
        node: NodeHandle,
        gateway_token: Option<String>,
    ) -> Arc<Self> {
        let Some(target) = redis else {
            return Arc::new(Self {
                info,
                redis: None,
                heartbeat: None,
            });
        };
        let reader = RedisReader::new(target);
        let push = ClusterPushClient::with_reader(reader.clone()).with_gateway_token(gateway_token);
        let heartbeat = tokio::spawn(heartbeat(reader.clone(), info.clone(), node));
        Arc::new(Self {
            info,
            redis: Some((reader, push)),
            heartbeat: Some(heartbeat),
        })
    }

    /// The cluster PushClient (with Redis only).
    pub fn push_client(&self) -> Option<&ClusterPushClient> {
        self.redis.as_ref().map(|(_, push)| push)
    }

    /// The live nodes: the registry's, or this node alone without Redis.
    pub async fn nodes(&self, node: &NodeHandle) -> Result<Vec<NodeInfo>, String> {
        match &self.redis {
            Some((reader, _)) => registry::list(reader, REGISTRY_TIMEOUT).await,
            None => Ok(vec![current(&self.info, node).await]),
        }
    }

    /// Stops the heartbeat and removes the announcement (within [`REGISTRY_TIMEOUT`]).
    pub async fn leave(&self) {
        if let Some(task) = &self.heartbeat {
            task.abort();
        }
        if let Some((reader, push)) = &self.redis {
            match registry::withdraw(reader, &self.info.gateway(), REGISTRY_TIMEOUT).await {
                Ok(()) => tracing::info!("left the node registry"),
                Err(error) => {
                    tracing::warn!(%error, "could not remove this node from the node registry (it expires with its TTL)")
                }
            }
            push.close();
        }
    }
}

/// `info` with the node's bound-route count and the time now.
async fn current(info: &NodeInfo, node: &NodeHandle) -> NodeInfo {
    let mut info = info.clone();
    if let Ok(Ok(stats)) = tokio::time::timeout(REGISTRY_TIMEOUT, node.stats()).await {
        info.online_users = stats.bound_routes as u64;
    }
    info.updated_at_ms = epoch_ms();
    info
}

/// Announces the node every third of its TTL; a failure is logged once until one succeeds.
async fn heartbeat(reader: RedisReader, info: NodeInfo, node: NodeHandle) {
    let every = Duration::from_millis((info.ttl_ms / 3).max(100));
    let mut failing = false;
    loop {
        let now = current(&info, &node).await;
        match registry::announce(&reader, &now, every.min(REGISTRY_TIMEOUT)).await {
            Ok(()) if failing => {
                tracing::info!("node announcement written again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) if !failing => {
                tracing::warn!(%error, "cannot announce this node in the registry; retrying every heartbeat");
                failing = true;
            }
            Err(error) => tracing::debug!(%error, "node announcement failed again"),
        }
        tokio::time::sleep(every).await;
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(task) = &self.heartbeat {
            task.abort();
        }
    }
}
