//! The pushgate side of the benchmark, built from the project's own clients: phones are
//! [`DeviceClient`]s (RSA handshake, AES session, bind — what MPush's SDK does), the sender is
//! one [`PushClient`] on the gateway port.
//!
//! Per message the PushClient encodes one GATEWAY_PUSH frame and its writer task writes
//! whatever is queued in one write; each phone's reader task reads what the socket has, splits
//! frames, decrypts the body and (for AUTO_ACK / BIZ_ACK pushes) queues the ACK. That is the
//! same framing and batching effort as the MQTT and NATS clients of this tool, plus what the
//! protocol itself demands (AES, ACKs, statuses).
use crate::payload::{now_ns, Stamp};
use crate::tracker::{Outcome, Tracker};
use anyhow::Context;
use bytes::Bytes;
use pushgate::client::cluster::ClusterPushClient;
use pushgate::client::{
    AckPolicy, BroadcastRequest, DeviceClient, DeviceEvent, DeviceOptions, PushClient,
    SinglePushRequest,
};
use pushgate_core::push::AckMode;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// How long a phone waits for its handshake and bind answers (a server busy with thousands of
/// RSA handshakes answers late, not never).
const PHONE_TIMEOUT_MS: u64 = 20_000;
/// The timeout of every push and broadcast request.
pub const PUSH_TIMEOUT_MS: u64 = 10_000;

/// A connected, bound phone whose pushes go to the tracker. Dropping it closes it.
pub struct Phone {
    _client: DeviceClient,
    events: JoinHandle<()>,
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.events.abort();
    }
}

impl Phone {
    /// Connects (full handshake), binds `user_id` with `tags` and starts handing pushes to
    /// `tracker`. The phone ACKs AUTO_ACK and BIZ_ACK pushes as soon as they arrive (an app
    /// that acknowledges business pushes at once).
    pub async fn connect(
        addr: SocketAddr,
        device_id: String,
        user_id: &str,
        tags: &[&str],
        tracker: Arc<Tracker>,
    ) -> anyhow::Result<Phone> {
        let mut opts = DeviceOptions::new(device_id);
        opts.ack_policy = AckPolicy::Biz;
        opts.handshake_timeout_ms = PHONE_TIMEOUT_MS;
        opts.request_timeout_ms = PHONE_TIMEOUT_MS;
        opts.connect_timeout_ms = PHONE_TIMEOUT_MS;
        let timeout = std::time::Duration::from_millis(opts.connect_timeout_ms);
        let stream = tokio::time::timeout(timeout, crate::loopback_source::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("phone {user_id}: TCP connect timed out"))??;
        let local_addr = stream.local_addr().ok();
        let client = DeviceClient::connect_over(stream, local_addr, opts)
            .await
            .with_context(|| format!("phone {user_id}: connect"))?;
        client
            .bind(user_id, tags)
            .await
            .with_context(|| format!("phone {user_id}: bind"))?;
        let mut rx = client
            .take_events()
            .await
            .context("phone events already taken")?;
        let events = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                match event {
                    DeviceEvent::Push { content, .. } => tracker.on_delivery(&content),
                    DeviceEvent::Closed => break,
                    DeviceEvent::Kick { .. } | DeviceEvent::Error(_) => {}
                }
            }
        });
        Ok(Phone {
            _client: client,
            events,
        })
    }
}

/// How long the cluster PushClient keeps a user's routes (longer than a benchmark point: after
/// the first push to a user its pushes read nothing from Redis, as MPush's PushClient caches).
const ROUTE_CACHE_MS: u64 = 600_000;

/// The PushClient side: one PushClient on one gateway, or the cluster PushClient.
pub struct Pusher {
    client: Client,
    tracker: Arc<Tracker>,
}

enum Client {
    Direct(Arc<PushClient>),
    /// Reads routes from Redis (cached) and pushes to the gateway each route names.
    Cluster(ClusterPushClient),
}

impl Pusher {
    pub async fn connect(gateway: SocketAddr, tracker: Arc<Tracker>) -> anyhow::Result<Self> {
        let client = PushClient::connect(gateway)
            .await
            .with_context(|| format!("PushClient: connect {gateway}"))?;
        Ok(Self {
            client: Client::Direct(Arc::new(client)),
            tracker,
        })
    }

    /// The cluster PushClient over the Redis at `redis_url`, with a route cache.
    pub fn cluster(redis_url: &str, tracker: Arc<Tracker>) -> anyhow::Result<Self> {
        let client = ClusterPushClient::new(redis_url)
            .with_context(|| format!("cluster PushClient: {redis_url}"))?
            .with_route_cache(std::time::Duration::from_millis(ROUTE_CACHE_MS));
        Ok(Self {
            client: Client::Cluster(client),
            tracker,
        })
    }

    /// Pushes `payload` to `user_id`; the status goes to the tracker when it comes.
    pub fn push(&self, user_id: &str, stamp: Stamp, ack: AckMode) {
        let request = SinglePushRequest {
            ack,
            timeout_ms: PUSH_TIMEOUT_MS,
            ..SinglePushRequest::new(user_id, Bytes::copy_from_slice(&stamp.encode()))
        };
        let tracker = self.tracker.clone();
        // When the generator hands the push over (its send lag, counted apart, is behind it).
        let handed_ns = now_ns();
        match &self.client {
            Client::Direct(client) => {
                let client = client.clone();
                tokio::spawn(async move {
                    let outcome = match client.push(request).await {
                        Ok(result) => {
                            if let Some(times) = ServerTimes::read(&result.time_points, handed_ns) {
                                tracker.on_server_time(stamp.point_id, stamp.seq, times);
                            }
                            Outcome::Status(result.status)
                        }
                        Err(error) => Outcome::ClientError(error.to_string()),
                    };
                    tracker.on_status(stamp.point_id, stamp.seq, outcome);
                });
            }
            Client::Cluster(client) => {
                let client = client.clone();
                tokio::spawn(async move {
                    let result = client.push(request).await;
                    tracker.on_status(stamp.point_id, stamp.seq, Outcome::Status(result.status));
                });
            }
        }
    }

    /// Broadcasts `payload` to every bound phone; the finishing status goes to the tracker.
    /// A broadcast of `stamp` to every bound phone, or only to those bound with `tag`.
    pub fn broadcast(&self, stamp: Stamp, tag: Option<&str>) {
        let request = BroadcastRequest {
            timeout_ms: PUSH_TIMEOUT_MS,
            tags: tag.into_iter().map(str::to_owned).collect(),
            ..BroadcastRequest::new(Bytes::copy_from_slice(&stamp.encode()))
        };
        let tracker = self.tracker.clone();
        match &self.client {
            Client::Direct(client) => {
                let client = client.clone();
                tokio::spawn(async move {
                    let outcome = match client.broadcast(request).await {
                        Ok(result) => Outcome::Status(result.status),
                        Err(error) => Outcome::ClientError(error.to_string()),
                    };
                    tracker.on_status(stamp.point_id, stamp.seq, outcome);
                });
            }
            Client::Cluster(client) => {
                let client = client.clone();
                tokio::spawn(async move {
                    let result = client.broadcast(request).await;
                    tracker.on_status(stamp.point_id, stamp.seq, Outcome::Status(result.status));
                });
            }
        }
    }
}

/// Where a single push's status time went, read from the time line its status carries
/// (`push-center-begin`, when the node took the push in, to its end point; whole ms on the
/// server's wall clock) against this process's own clock (the same machine's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimes {
    /// The node's own time: its time line's first point to its last.
    pub node_ms: u64,
    /// From the generator handing the push to its PushClient to the node taking it in: the
    /// PushClient's write, loopback, and the server's socket read and hand-over to the node
    /// (the generator's send lag before it is measured apart).
    pub before_ms: u64,
    /// From the node's last point to the status read here: the server's status write,
    /// loopback, and the generator's read.
    pub after_ms: u64,
}

impl ServerTimes {
    /// The times of a status read now for a push handed to the PushClient at `sent_ns`
    /// ([`now_ns`]); `None` without two points (a client-side timeout has no time line).
    pub fn read(time_points: &[(String, i64)], sent_ns: u64) -> Option<Self> {
        let now_epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let since_sent_ms =
            i64::try_from(now_ns().saturating_sub(sent_ns) / 1_000_000).unwrap_or(i64::MAX);
        Self::from_points(time_points, now_epoch_ms - since_sent_ms, now_epoch_ms)
    }

    /// As [`ServerTimes::read`], with the send and read instants given in epoch ms.
    fn from_points(time_points: &[(String, i64)], sent_ms: i64, read_ms: i64) -> Option<Self> {
        let ms = |from: i64, to: i64| u64::try_from(to - from).unwrap_or(0);
        match time_points {
            [(_, first), .., (_, last)] => Some(Self {
                node_ms: ms(*first, *last),
                before_ms: ms(sent_ms, *first),
                after_ms: ms(*last, read_ms),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServerTimes;

    #[test]
    fn the_status_time_splits_at_the_time_line() {
        let points = |p: &[(&str, i64)]| -> Vec<(String, i64)> {
            p.iter().map(|(n, t)| (n.to_string(), *t)).collect()
        };
        let line = points(&[
            ("push-center-begin", 1_000),
            ("before-send", 1_001),
            ("success-end", 1_004),
        ]);
        assert_eq!(
            ServerTimes::from_points(&line, 997, 1_009),
            Some(ServerTimes {
                node_ms: 4,
                before_ms: 3,
                after_ms: 5
            })
        );
        // Whole-ms clocks may put the send after the node's first point: no negative times.
        assert_eq!(
            ServerTimes::from_points(&line, 1_001, 1_004).map(|t| (t.before_ms, t.after_ms)),
            Some((0, 0))
        );
        let one = points(&[("push-center-begin", 1_000)]);
        assert_eq!(ServerTimes::from_points(&one, 0, 0), None);
        assert_eq!(ServerTimes::from_points(&[], 0, 0), None);
    }
}
