//! This node's part in a cluster on Redis: its announcement in the node registry
//! ([`crate::redis_store::registry`]), renewed by a heartbeat task every third of
//! `store.node_ttl_ms` with the node's bound-route count and withdrawn on clean shutdown; the
//! listing behind `GET /v1/nodes`; and the [`ClusterPushClient`] the admin API forwards a push
//! through when this node answers router change. Without Redis the node lists only itself and
//! forwards nothing.
//!
//! With `cluster.zookeeper` the node is also a member of MPush's ZooKeeper registry
//! ([`crate::zookeeper`]): registered there as MPush registers, and the gateways registered
//! there (MPush's Java nodes) join the targets of the cluster PushClient's broadcasts. The
//! alloc answer ([`crate::alloc`]) lists the connection servers of both registries.
use crate::alloc::AllocEntry;
use crate::client::cluster::ClusterPushClient;
use crate::driver::NodeHandle;
use crate::redis_store::registry::{self, epoch_ms, NodeInfo};
use crate::redis_store::{keys, RedisReader, RedisTarget};
use crate::zookeeper::{Registration, ZkMember, ZkOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Longest a registry read or write waits.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an alloc answer is reused: a reconnect storm of phones asking alloc costs the
/// registry one read per this period, not one per phone (MPush's alloc reuses its list for
/// 5 minutes).
pub const ALLOC_REUSE: Duration = Duration::from_secs(1);

/// The node's cluster membership.
#[derive(Debug)]
pub struct ClusterNode {
    /// This node's announcement (the online count and update time are filled when used).
    info: NodeInfo,
    redis: Option<(RedisReader, ClusterPushClient)>,
    heartbeat: Option<JoinHandle<()>>,
    zookeeper: Option<ZkMember>,
    /// The last alloc answer and when it was computed; held while one is computed, so
    /// concurrent askers wait for it instead of reading the registry each.
    alloc_cache: tokio::sync::Mutex<Option<(tokio::time::Instant, String)>>,
}

impl ClusterNode {
    /// Membership of a node on `redis` (announced now and every `ttl / 3`), or of a lone node;
    /// with `zookeeper`, also registered there. Pushes it forwards to other nodes carry
    /// `gateway_token`, over `gateway_tls` when the gateways serve TLS.
    pub fn start(
        info: NodeInfo,
        redis: Option<RedisTarget>,
        zookeeper: Option<(ZkOptions, Registration)>,
        node: NodeHandle,
        gateway_token: Option<String>,
        gateway_tls: Option<Arc<crate::client::GatewayTls>>,
    ) -> Arc<Self> {
        let zookeeper =
            zookeeper.map(|(options, registration)| ZkMember::start(options, Some(registration)));
        let Some(target) = redis else {
            return Arc::new(Self {
                info,
                redis: None,
                heartbeat: None,
                zookeeper,
                alloc_cache: Default::default(),
            });
        };
        let reader = RedisReader::new(target);
        let mut push = ClusterPushClient::with_reader(reader.clone())
            .with_gateway_token(gateway_token)
            .with_gateway_tls(gateway_tls);
        if let Some(member) = &zookeeper {
            push = push.with_zookeeper(member.subscribe());
        }
        let heartbeat = tokio::spawn(heartbeat(reader.clone(), info.clone(), node));
        Arc::new(Self {
            info,
            redis: Some((reader, push)),
            heartbeat: Some(heartbeat),
            zookeeper,
            alloc_cache: Default::default(),
        })
    }

    /// The ZooKeeper membership (with `cluster.zookeeper`).
    pub fn zookeeper(&self) -> Option<&ZkMember> {
        self.zookeeper.as_ref()
    }

    /// MPush's alloc text ([`crate::alloc::format`] of [`Self::alloc`]), reused for
    /// [`ALLOC_REUSE`].
    pub async fn alloc_text(&self, node: &NodeHandle) -> Result<String, String> {
        let mut cache = self.alloc_cache.lock().await;
        if let Some((at, text)) = cache.as_ref() {
            if at.elapsed() < ALLOC_REUSE {
                return Ok(text.clone());
            }
        }
        let text = crate::alloc::format(self.alloc(node).await?);
        *cache = Some((tokio::time::Instant::now(), text.clone()));
        Ok(text)
    }

    /// The connection servers for alloc: every live node of the Redis registry with its bound
    /// routes, then every connection server registered in ZooKeeper that is not one of them
    /// (MPush's Java nodes) with the size of `mp:oul:{its host}`, as MPush's alloc counts.
    pub async fn alloc(&self, node: &NodeHandle) -> Result<Vec<AllocEntry>, String> {
        let mut entries: Vec<AllocEntry> = self
            .nodes(node)
            .await?
            .into_iter()
            .map(|info| AllocEntry {
                addr: info.connect_addr,
                online: info.online_users,
            })
            .collect();
        let Some(member) = &self.zookeeper else {
            return Ok(entries);
        };
        let others: Vec<(String, String)> = member
            .view()
            .connect_servers
            .into_iter()
            .map(|seen| {
                let host = seen.node.public_host().to_owned();
                (format!("{host}:{}", seen.node.port), host)
            })
            .filter(|(addr, _)| !entries.iter().any(|e| &e.addr == addr))
            .collect();
        let counts = others.iter().map(|(_, host)| async move {
            let Some((reader, _)) = &self.redis else {
                return 0;
            };
            let mut zcard = redis::cmd("ZCARD");
            zcard.arg(keys::online_users(host));
            reader
                .query::<u64>(&zcard, REGISTRY_TIMEOUT)
                .await
                .unwrap_or(0)
        });
        let counts = futures_util::future::join_all(counts).await;
        for ((addr, _), online) in others.into_iter().zip(counts) {
            if !entries.iter().any(|e| e.addr == addr) {
                entries.push(AllocEntry { addr, online });
            }
        }
        Ok(entries)
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
        if let Some(member) = &self.zookeeper {
            member.leave().await;
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
