//! The record of one measurement point and of one target's run: what the JSON files hold.
//! `pushgate-bench run` writes a [`TargetRun`]; `pushgate-bench report` merges them into a
//! [`RunReport`].
use crate::latency::LatencySummary;
use crate::resources::CpuUse;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which workload a point belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Idle,
    Single,
    Fanout,
    Storm,
    /// Single pushes at a fixed rate while broadcasts to every fan-out phone run back to back.
    Interference,
}

/// One measured point of one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub target: String,
    pub workload: Option<Workload>,
    /// Identifies the same point across targets, e.g. `single/closed/w1000` (pushgate's
    /// ack modes other than none add `/auto-ack` or `/biz-ack`: the peers have no row for them).
    pub key: String,
    /// Human-readable, e.g. `single closed, 1000 in flight, ack none`.
    pub title: String,
    // ---- parameters
    pub payload_bytes: usize,
    /// Idle: connections opened. Single: distinct users. Fan-out: receivers.
    pub connections: usize,
    /// Closed loop: messages (single) or broadcasts (fan-out) in flight.
    pub window: Option<usize>,
    /// Open loop: offered messages per second.
    pub offered_per_s: Option<f64>,
    /// pushgate: none / auto / biz; peers: qos0.
    pub ack: String,
    pub warmup_ms: u64,
    pub measure_ms: u64,
    // ---- results
    /// Idle: connections per second. Single / fan-out: deliveries per second in the window.
    pub achieved_per_s: f64,
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub incomplete: u64,
    pub unexpected: u64,
    /// Open loop only: messages not sent because the in-flight cap was reached (the target
    /// fell hopelessly behind).
    pub not_sent: u64,
    pub statuses: BTreeMap<String, u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub delivery: Option<LatencySummary>,
    pub status: Option<LatencySummary>,
    /// pushgate's single pushes: the server's own share of each status's latency, from the
    /// time line the status carries (`push-center-begin` to its end point, whole ms on the
    /// node's clock): what the server took between taking the push in and answering it,
    /// without the generator's queues and the trips over loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_status: Option<LatencySummary>,
    /// pushgate's single pushes: the rest of each status's latency on either side of the
    /// server's share — from the generator handing the push to its PushClient to the node
    /// taking it in (the write, loopback, the server's socket read and hand-over; the send lag
    /// before it is `send_lag`), and from the node's answer to the generator reading the status
    /// (the status write, loopback, the generator's read). Whole ms, the two processes' wall
    /// clocks (one machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_server: Option<LatencySummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_server: Option<LatencySummary>,
    pub last_delivery: Option<LatencySummary>,
    /// Open loop: how late the generator sent each message after its intended time (this
    /// delay is inside every latency of the point; it is the generator's, not the server's).
    #[serde(default)]
    pub send_lag: Option<LatencySummary>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    /// Idle: server RSS growth per connection.
    pub rss_per_connection_bytes: Option<f64>,
    /// With `--redis-stats`: the commands Redis served during the point (its own
    /// `INFO commandstats`, `INFO` itself left out), and their total per operation (per
    /// connection opened for idle, per push sent for single, per broadcast for fan-out).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub store_calls: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_calls_per_op: Option<f64>,
    pub cpu: CpuUse,
    /// Storm: each phone's time from the start of its connect until it was bound (pushgate) or
    /// subscribed (the peers); failed connects are `errors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_to_bind: Option<LatencySummary>,
    /// Storm: the kernel's TCP counters over the point (`/proc/net/netstat`, what `nstat`
    /// reads: `TcpExtListenOverflows`, `TcpExtListenDrops`, `TcpExtTCPSynRetrans`). They count
    /// the whole network namespace, not only this server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kernel: BTreeMap<String, u64>,
    /// Interference: broadcasts that completed while the single pushes ran, and their
    /// deliveries per second inside the measurement window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_broadcasts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_deliveries_per_s: Option<f64>,
}

/// One target's run (`pushgate-bench run`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetRun {
    pub target: String,
    pub server_pid: Option<u32>,
    pub started_unix_s: u64,
    pub duration_s: f64,
    /// The command line's parameters, as given.
    pub parameters: serde_json::Value,
    pub points: Vec<Point>,
}

/// A whole run (`pushgate-bench report`): every target, the target checks, and notes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub created_unix_s: u64,
    pub machine: BTreeMap<String, String>,
    pub notes: Vec<String>,
    pub runs: Vec<TargetRun>,
    pub checks: Vec<Check>,
}

/// One of the targets the issue sets, evaluated on this run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    /// `None` when the run lacks the points to decide.
    pub pass: Option<bool>,
    pub detail: String,
}

/// Seconds since the Unix epoch.
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
