//! The three servers under test behind one interface: [`Receiver`] (a phone or subscriber
//! whose messages go to the [`Tracker`]) and [`Sender`] (the PushClient or publisher).
//!
//! Naming, the same shape on every target:
//! - idle connections: pushgate binds user `i<n>`; MQTT subscribes to `i/<n>`, NATS to `i.<n>`;
//! - single-user messages: user `u<n>`, topic `u/<n>`, subject `u.<n>`;
//! - fan-out: pushgate broadcasts to every bound phone (the `u<n>` phones, then `f<n>` phones
//!   bound with the tag `fan`); the peers publish to the one shared topic `fan`, which N fresh
//!   subscribers hold. The interference point's broadcasts go to the tag `fan` only, so the
//!   single-push users are not among their receivers on any target.
//!
//! Per message every sender encodes one frame into its output; frames queued together go out
//! in one write (the PushClient's writer task coalesces everything queued; the MQTT and NATS
//! publishers buffer until [`Sender::flush`], which the workloads call once per batch).
use crate::mqtt::{MqttPublisher, MqttSubscriber};
use crate::nats::{NatsPublisher, NatsSubscriber};
use crate::payload::Stamp;
use crate::pushgate_target::{Phone, Pusher};
use crate::tracker::Tracker;
use pushgate_core::push::AckMode;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Pushgate,
    Mosquitto,
    Nats,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Pushgate => "pushgate",
            TargetKind::Mosquitto => "mosquitto",
            TargetKind::Nats => "nats",
        }
    }
}

/// Where the server under test listens.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub kind: TargetKind,
    /// Phones / subscribers connect here (pushgate: the connection port).
    pub connect: SocketAddr,
    /// Where the sender connects (pushgate: the gateway port; the peers: `connect`).
    pub send: SocketAddr,
    /// pushgate cluster: further nodes' connection ports; receiver `n` connects to node
    /// `n % (1 + connect_more.len())` (`connect` is node 0).
    pub connect_more: &'static [SocketAddr],
    /// pushgate cluster: the Redis URL the sender's [`ClusterPushClient`] reads routes from
    /// (pushes then go to the gateway each route names); `None`: a plain PushClient on `send`.
    ///
    /// [`ClusterPushClient`]: pushgate::client::cluster::ClusterPushClient
    pub cluster_redis: Option<&'static str>,
}

impl Endpoints {
    /// The connection port receiver `n` uses.
    pub fn connect_for(&self, n: usize) -> SocketAddr {
        match n % (1 + self.connect_more.len()) {
            0 => self.connect,
            i => self.connect_more[i - 1],
        }
    }
}

/// What a receiving connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Idle,
    User,
    Fan,
    /// A phone of the reconnect storm (its own users, bound once).
    Storm,
}

/// The single-user destination `n` (user id, MQTT topic or NATS subject).
pub fn user_address(kind: TargetKind, role: Role, n: usize) -> String {
    let prefix = match role {
        Role::Idle => "i",
        Role::Storm => "s",
        Role::User => "u",
        Role::Fan => "f",
    };
    match kind {
        TargetKind::Pushgate => format!("{prefix}{n}"),
        TargetKind::Mosquitto => format!("{prefix}/{n}"),
        TargetKind::Nats => format!("{prefix}.{n}"),
    }
}

/// The shared fan-out topic of the peers, and the tag pushgate's fan-out phones bind with.
const FAN_TOPIC: &str = "fan";

/// One receiving connection; dropping it closes it.
pub struct Receiver {
    /// A [`Phone`] or a subscriber's reader task ([`AbortOnDrop`]): both close on drop.
    _held: Box<dyn Send>,
}

/// A reader task that is aborted (closing its socket) when dropped.
pub struct AbortOnDrop(JoinHandle<anyhow::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Receiver {
    /// Connects receiver `n` in `role`, handing what it receives to `tracker`.
    pub async fn connect(
        ends: Endpoints,
        role: Role,
        n: usize,
        tracker: Arc<Tracker>,
    ) -> anyhow::Result<Receiver> {
        let client_id = format!("bench-{}-{n}", role_tag(role));
        let topic = match role {
            Role::Fan => FAN_TOPIC.to_owned(),
            _ => user_address(ends.kind, role, n),
        };
        match ends.kind {
            TargetKind::Pushgate => {
                // Fan-out receivers of pushgate are ordinary bound phones (a broadcast without
                // a tag reaches every one), tagged so a broadcast can also leave the users out.
                let user = user_address(ends.kind, role, n);
                let tags: &[&str] = if role == Role::Fan { &[FAN_TOPIC] } else { &[] };
                let phone =
                    Phone::connect(ends.connect_for(n), client_id, &user, tags, tracker).await?;
                Ok(Receiver {
                    _held: Box::new(phone),
                })
            }
            TargetKind::Mosquitto => {
                let sub = MqttSubscriber::connect(ends.connect, &client_id, &topic).await?;
                let task = sub.spawn_reader(move |payload: &[u8]| tracker.on_delivery(payload));
                Ok(Receiver {
                    _held: Box::new(AbortOnDrop(task)),
                })
            }
            TargetKind::Nats => {
                let sub = NatsSubscriber::connect(ends.connect, &client_id, &topic).await?;
                let task = sub.spawn_reader(move |payload: &[u8]| tracker.on_delivery(payload));
                Ok(Receiver {
                    _held: Box::new(AbortOnDrop(task)),
                })
            }
        }
    }
}

fn role_tag(role: Role) -> &'static str {
    match role {
        Role::Idle => "idle",
        Role::User => "user",
        Role::Fan => "fan",
        Role::Storm => "storm",
    }
}

/// The sending side of a target.
pub enum Sender {
    Pushgate(Pusher),
    Mqtt(MqttPublisher),
    Nats(NatsPublisher),
}

impl Sender {
    pub async fn connect(ends: Endpoints, tracker: Arc<Tracker>) -> anyhow::Result<Sender> {
        Ok(match ends.kind {
            TargetKind::Pushgate => Sender::Pushgate(match ends.cluster_redis {
                Some(url) => Pusher::cluster(url, tracker)?,
                None => Pusher::connect(ends.send, tracker).await?,
            }),
            TargetKind::Mosquitto => {
                Sender::Mqtt(MqttPublisher::connect(ends.send, "bench-publisher").await?)
            }
            TargetKind::Nats => {
                let mut publisher = NatsPublisher::connect(ends.send, "bench-publisher").await?;
                // The server has processed the CONNECT once it answers a PING.
                publisher.ping_pong().await?;
                Sender::Nats(publisher)
            }
        })
    }

    /// Queues one single-user message to `address` (from [`user_address`]).
    pub fn send_single(&mut self, address: &str, stamp: Stamp, ack: AckMode) {
        match self {
            Sender::Pushgate(pusher) => pusher.push(address, stamp, ack),
            Sender::Mqtt(publisher) => publisher.publish(address, &stamp.encode()),
            Sender::Nats(publisher) => publisher.publish(address, &stamp.encode()),
        }
    }

    /// Queues one message to every fan-out receiver (pushgate: every bound phone).
    pub fn send_broadcast(&mut self, stamp: Stamp) {
        match self {
            Sender::Pushgate(pusher) => pusher.broadcast(stamp, None),
            Sender::Mqtt(publisher) => publisher.publish(FAN_TOPIC, &stamp.encode()),
            Sender::Nats(publisher) => publisher.publish(FAN_TOPIC, &stamp.encode()),
        }
    }

    /// Queues one message to the fan-out receivers only (pushgate: the phones bound with the
    /// tag `fan`, not the single-push users).
    pub fn send_to_fans(&mut self, stamp: Stamp) {
        match self {
            Sender::Pushgate(pusher) => pusher.broadcast(stamp, Some(FAN_TOPIC)),
            Sender::Mqtt(publisher) => publisher.publish(FAN_TOPIC, &stamp.encode()),
            Sender::Nats(publisher) => publisher.publish(FAN_TOPIC, &stamp.encode()),
        }
    }

    /// Bytes queued and not written yet (0 for pushgate, whose writer task writes by itself).
    pub fn buffered_bytes(&self) -> usize {
        match self {
            Sender::Pushgate(_) => 0,
            Sender::Mqtt(publisher) => publisher.buffered_bytes(),
            Sender::Nats(publisher) => publisher.buffered_bytes(),
        }
    }

    /// Writes what is queued (the PushClient's writer task does that by itself: this only
    /// lets it run).
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Sender::Pushgate(_) => {
                tokio::task::yield_now().await;
                Ok(())
            }
            Sender::Mqtt(publisher) => publisher.flush().await,
            Sender::Nats(publisher) => publisher.flush().await,
        }
    }

    /// Whether statuses come back (pushgate) or only deliveries (the peers' QoS 0).
    pub fn has_statuses(&self) -> bool {
        matches!(self, Sender::Pushgate(_))
    }
}
