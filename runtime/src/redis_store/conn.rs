//! One Redis connection for commands, whatever the deployment: a multiplexed connection to one
//! server (standalone, or the master a Sentinel named) or a Redis Cluster connection. Both
//! pipeline: commands from many tasks share the socket and answers come back in order, so a
//! clone per request costs no round trip. Opening one also opens the pub/sub connection that
//! receives this node's kick notices.
use super::target::RedisTarget;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::time::Duration;

/// A command connection (cheap to clone: clones share one socket or one cluster client).
#[derive(Clone)]
pub enum DataConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for DataConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            DataConn::Single(conn) => conn.req_packed_command(cmd),
            DataConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            DataConn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            DataConn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            DataConn::Single(conn) => conn.get_db(),
            DataConn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The commands connection and a pub/sub connection, both open.
pub struct Opened {
    pub data: DataConn,
    pub pubsub: PubSub,
    /// The server the pub/sub connection reached (for logs).
    pub server: String,
    /// For a Sentinel target: the client that asks the Sentinels which server is the master,
    /// kept to notice a failover while the old master still answers.
    pub sentinel: Option<redis::sentinel::SentinelClient>,
}

/// Asks the Sentinels which server is the master now (`host:port`).
pub async fn sentinel_master(
    sentinel: &mut redis::sentinel::SentinelClient,
    timeout: Duration,
) -> Result<String, String> {
    let client = tokio::time::timeout(timeout, sentinel.async_get_client())
        .await
        .map_err(|_| "the Sentinels did not answer in time".to_owned())?
        .map_err(|e| format!("asking the Sentinels: {e}"))?;
    Ok(client.get_connection_info().addr().to_string())
}

/// Opens both connections to `target` within `timeout` each. For a Sentinel target the
/// Sentinels are asked for the current master every time (so a reconnect follows a failover);
/// for a cluster the pub/sub connection goes to the first seed node that answers (PUBLISH
/// reaches every node of a cluster).
pub async fn open(target: &RedisTarget, timeout: Duration) -> Result<Opened, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    match target {
        RedisTarget::Standalone { url } => {
            let client = Client::open(url.as_str()).map_err(|e| e.to_string())?;
            open_single(client, &config, timeout).await
        }
        RedisTarget::Sentinel {
            sentinels,
            service,
            master_settings,
        } => {
            let settings =
                redis::IntoConnectionInfo::into_connection_info(master_settings.as_str())
                    .map_err(|e| e.to_string())?
                    .redis_settings()
                    .clone();
            let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(settings);
            let mut sentinel = redis::sentinel::SentinelClient::build(
                sentinels.clone(),
                service.clone(),
                Some(node),
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(|e| e.to_string())?;
            let client = tokio::time::timeout(timeout, sentinel.async_get_client())
                .await
                .map_err(|_| "the Sentinels did not answer in time".to_owned())?
                .map_err(|e| format!("asking the Sentinels for {service}: {e}"))?;
            let mut opened = open_single(client, &config, timeout).await?;
            opened.sentinel = Some(sentinel);
            Ok(opened)
        }
        RedisTarget::Cluster { nodes } => {
            // redis-rs sends a command again (up to `retries`) on a new socket to its shard
            // after a redirect or an I/O error, under the link's same epoch: the store's link
            // fence (`RouteRecord::is_fenced`) orders this link's connections, not one shard's
            // successive sockets inside it. A route write held on the old socket could land
            // after a mark sent on the new one; the route's ended-bind memory still keeps it
            // out unless four more marks of this node came between: a gap left on Cluster.
            let client = redis::cluster::ClusterClient::builder(nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .build()
                .map_err(|e| e.to_string())?;
            let data = tokio::time::timeout(timeout, client.get_async_connection())
                .await
                .map_err(|_| "the cluster did not answer in time".to_owned())?
                .map_err(|e| e.to_string())?;
            let mut last = String::from("no seed node");
            for node in nodes {
                let client = Client::open(node.as_str()).map_err(|e| e.to_string())?;
                match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
                    Ok(Ok(pubsub)) => {
                        return Ok(Opened {
                            data: DataConn::Cluster(data),
                            pubsub,
                            server: client.get_connection_info().addr().to_string(),
                            sentinel: None,
                        })
                    }
                    Ok(Err(error)) => last = error.to_string(),
                    Err(_) => last = "timed out".into(),
                }
            }
            Err(format!(
                "no cluster node took the pub/sub connection: {last}"
            ))
        }
    }
}

async fn open_single(
    client: Client,
    config: &AsyncConnectionConfig,
    timeout: Duration,
) -> Result<Opened, String> {
    let data = client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .map_err(|e| e.to_string())?;
    let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
        .await
        .map_err(|_| "the pub/sub connection timed out".to_owned())?
        .map_err(|e: RedisError| e.to_string())?;
    Ok(Opened {
        data: DataConn::Single(data),
        pubsub,
        server: client.get_connection_info().addr().to_string(),
        sentinel: None,
    })
}
