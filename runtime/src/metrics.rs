//! Prometheus metrics: counters and histograms fed from the core's events. The exporter only
//! renders text for the admin API's `GET /metrics`; it opens no listener of its own. In the
//! simulator (`cfg(madsim)`) every function here is a no-op.
use pushgate_core::Event;

/// Metric names, so tests and dashboards agree.
pub mod names {
    pub const CONNECTIONS: &str = "pushgate_connections";
    pub const CONNECTIONS_TOTAL: &str = "pushgate_connections_opened_total";
    pub const HANDSHAKES: &str = "pushgate_handshakes_total";
    pub const BINDS: &str = "pushgate_binds_total";
    pub const KICKS: &str = "pushgate_kicks_total";
    pub const PUSHES: &str = "pushgate_pushes_total";
    pub const BROADCASTS: &str = "pushgate_broadcasts_total";
    pub const ACK_LATENCY: &str = "pushgate_ack_latency_seconds";
    pub const FLOW_DELAYS: &str = "pushgate_flow_control_delays_total";
    pub const FLOW_DELAY_SECONDS: &str = "pushgate_flow_control_delay_seconds";
    pub const DECODE_ERRORS: &str = "pushgate_decode_errors_total";
    /// Phone connections closed by the server, by reason (label `reason`: slow-consumer,
    /// idle-timeout, ...).
    pub const CLOSES: &str = "pushgate_connection_closes_total";
    /// Phones dropped for not reading (queued bytes over the hard limit).
    pub const SLOW_CONSUMERS: &str = "pushgate_slow_consumers_total";
    pub const STORE_FAILURES: &str = "pushgate_store_failures_total";
    /// Redis store: op latency in seconds (label `op`), failed ops (labels `op`, `kind`:
    /// timeout or unavailable), links opened after the first, outages, and 1 while linked.
    pub const STORE_LATENCY: &str = "pushgate_store_latency_seconds";
    pub const STORE_ERRORS: &str = "pushgate_store_errors_total";
    pub const STORE_RECONNECTS: &str = "pushgate_store_reconnects_total";
    pub const STORE_OUTAGES: &str = "pushgate_store_outages_total";
    pub const STORE_CONNECTED: &str = "pushgate_store_connected";
    /// ZooKeeper membership (with `cluster.zookeeper`): 1 while this node's znodes are
    /// registered, and the sessions opened (more than one: sessions expired and replaced).
    pub const ZOOKEEPER_REGISTERED: &str = "pushgate_zookeeper_registered";
    pub const ZOOKEEPER_SESSIONS: &str = "pushgate_zookeeper_sessions_total";
    /// The node task (see [`super::NodeLoad`]): the fraction of the last window it was busy
    /// handling (0 to 1), its busy time in total, the messages waiting in its queue at its last
    /// wake-up and the most seen at a wake-up in the last window, and the timers its core holds.
    pub const NODE_BUSY_RATIO: &str = "pushgate_node_busy_ratio";
    pub const NODE_BUSY_MICROSECONDS: &str = "pushgate_node_busy_microseconds_total";
    pub const NODE_QUEUE_DEPTH: &str = "pushgate_node_queue_depth";
    pub const NODE_QUEUE_DEPTH_MAX: &str = "pushgate_node_queue_depth_max";
    pub const NODE_TIMERS: &str = "pushgate_node_timers";
    /// A limit was hit (label `limit`: see [`crate::limits::Limit::name`]).
    pub const LIMIT_HITS: &str = "pushgate_limit_hits_total";
    /// Phone groups (`net.phone_io = "groups"`): turns that stopped at their bound
    /// ([`crate::phone_group::MAX_POLLS_PER_TURN`] phones polled) with phones still woken. Rising
    /// steadily, the groups' cores are saturated.
    pub const PHONE_GROUP_FULL_TURNS: &str = "pushgate_phone_group_full_turns_total";
    /// TLS handshakes that failed (label `port`: gateway, admin, connection).
    pub const TLS_FAILURES: &str = "pushgate_tls_handshake_failures_total";
    /// Bind checks (`security.bind_check_url`) by outcome (label `outcome`: allowed, refused,
    /// error).
    pub const BIND_CHECKS: &str = "pushgate_bind_checks_total";
    /// The embedded store (published by the housekeeping, `crate::housekeeping`): reusable
    /// sessions and routes held, and approximately their bytes (records, keys, table slots).
    pub const STORE_SESSIONS: &str = "pushgate_store_sessions";
    pub const STORE_ROUTES: &str = "pushgate_store_routes";
    pub const STORE_BYTES: &str = "pushgate_store_bytes";
    /// The process's resident memory (the Prometheus process collector's name).
    pub const RESIDENT_BYTES: &str = "process_resident_memory_bytes";
}

/// How long the node task's load is summed before its busy ratio and deepest queue are
/// published.
pub const NODE_LOAD_WINDOW_MS: u64 = 1000;

/// The node task's load: busy time and queue depth, summed over windows of
/// [`NODE_LOAD_WINDOW_MS`] and published as gauges (and a busy-time counter, from which a
/// dashboard takes rates over any span). One node task on one core is the ceiling of a node
/// (`docs/sharding.md`): a busy ratio near 1 or a queue that stays deep means it is reached.
#[derive(Debug)]
pub struct NodeLoad {
    window_start: tokio::time::Instant,
    busy_in_window: std::time::Duration,
    depth_max_in_window: usize,
    /// Busy time recorded but not yet added to the counter, in whole microseconds.
    busy_unpublished: std::time::Duration,
}

impl NodeLoad {
    /// A first window starting at `now`.
    pub fn new(now: tokio::time::Instant) -> Self {
        Self {
            window_start: now,
            busy_in_window: std::time::Duration::ZERO,
            depth_max_in_window: 0,
            busy_unpublished: std::time::Duration::ZERO,
        }
    }

    /// One wake-up of the node task: it woke at `woke` with `queue_depth` messages waiting,
    /// and was done at `done` with `timers` timers armed in its core. Publishes when the window
    /// is over.
    pub fn record(
        &mut self,
        woke: tokio::time::Instant,
        done: tokio::time::Instant,
        queue_depth: usize,
        timers: usize,
    ) {
        let busy = done.saturating_duration_since(woke);
        self.busy_in_window += busy;
        self.busy_unpublished += busy;
        self.depth_max_in_window = self.depth_max_in_window.max(queue_depth);
        imp::node_wake(queue_depth, timers);
        if done >= self.publish_at() {
            self.publish(done);
        }
    }

    /// When the current window ends.
    pub fn publish_at(&self) -> tokio::time::Instant {
        self.window_start + std::time::Duration::from_millis(NODE_LOAD_WINDOW_MS)
    }

    /// Publishes the window ending at `now` and starts the next one.
    pub fn publish(&mut self, now: tokio::time::Instant) {
        let span = now.saturating_duration_since(self.window_start);
        let ratio = if span.is_zero() {
            0.0
        } else {
            (self.busy_in_window.as_secs_f64() / span.as_secs_f64()).min(1.0)
        };
        let busy_us = u64::try_from(self.busy_unpublished.as_micros()).unwrap_or(u64::MAX);
        self.busy_unpublished -= std::time::Duration::from_micros(busy_us);
        imp::node_window(ratio, busy_us, self.depth_max_in_window);
        self.window_start = now;
        self.busy_in_window = std::time::Duration::ZERO;
        self.depth_max_in_window = 0;
    }
}

#[cfg(not(madsim))]
mod imp {
    use super::names::*;
    use pushgate_core::{CloseReason, Event, PushStatus};
    use std::sync::OnceLock;

    pub use metrics_exporter_prometheus::PrometheusHandle;

    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    /// Set once the recorder is installed; unset before (nothing is recorded then).
    static HOT: OnceLock<Hot> = OnceLock::new();

    /// The metrics touched on every push or every wake-up of the node task, looked up once
    /// (a lookup by name hashes the key, and one with a label allocates it).
    struct Hot {
        /// `pushgate_pushes_total`, one per status, in [`PushStatus::ALL`]'s order.
        pushes: [metrics::Counter; PushStatus::ALL.len()],
        queue_depth: metrics::Gauge,
        timers: metrics::Gauge,
    }

    impl Hot {
        fn new() -> Self {
            Self {
                pushes: PushStatus::ALL
                    .map(|status| metrics::counter!(PUSHES, "status" => status.name())),
                queue_depth: metrics::gauge!(NODE_QUEUE_DEPTH),
                timers: metrics::gauge!(NODE_TIMERS),
            }
        }
    }

    /// Installs the process-wide recorder (once) and returns the handle that renders it.
    pub fn install() -> PrometheusHandle {
        HANDLE
            .get_or_init(|| {
                let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(ACK_LATENCY.to_owned()),
                        &[
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                            2.5, 5.0, 10.0,
                        ],
                    )
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            metrics_exporter_prometheus::Matcher::Full(
                                FLOW_DELAY_SECONDS.to_owned(),
                            ),
                            &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0],
                        )
                    })
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            metrics_exporter_prometheus::Matcher::Full(STORE_LATENCY.to_owned()),
                            &[
                                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            ],
                        )
                    })
                    .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new());
                let recorder = builder.build_recorder();
                let handle = recorder.handle();
                // A second recorder in the same process (tests) keeps the first one.
                let _ = metrics::set_global_recorder(recorder);
                HOT.get_or_init(Hot::new);
                handle
            })
            .clone()
    }

    pub fn connection_opened() {
        metrics::gauge!(CONNECTIONS).increment(1.0);
        metrics::counter!(CONNECTIONS_TOTAL).increment(1);
    }

    pub fn connection_closed() {
        metrics::gauge!(CONNECTIONS).decrement(1.0);
    }

    pub fn limit_hit(limit: &'static str) {
        metrics::counter!(LIMIT_HITS, "limit" => limit).increment(1);
    }

    pub fn bind_check(outcome: &'static str) {
        metrics::counter!(BIND_CHECKS, "outcome" => outcome).increment(1);
    }

    /// A phone group's turn stopped at its bound with phones still to poll.
    pub fn phone_group_turn_full() {
        metrics::counter!(PHONE_GROUP_FULL_TURNS).increment(1);
    }

    pub fn tls_handshake_failed(port: &'static str) {
        metrics::counter!(TLS_FAILURES, "port" => port).increment(1);
    }

    pub fn node_wake(queue_depth: usize, timers: usize) {
        if let Some(hot) = HOT.get() {
            hot.queue_depth.set(queue_depth as f64);
            hot.timers.set(timers as f64);
        }
    }

    /// Publishes what the embedded store holds (none with a store elsewhere) and the
    /// process's resident memory.
    pub fn memory(store: Option<pushgate_core::store_state::StoreFootprint>) {
        if let Some(store) = store {
            metrics::gauge!(STORE_SESSIONS).set(store.sessions as f64);
            metrics::gauge!(STORE_ROUTES).set(store.routes as f64);
            metrics::gauge!(STORE_BYTES).set(store.approx_bytes as f64);
        }
        if let Some(bytes) = crate::housekeeping::resident_bytes() {
            metrics::gauge!(RESIDENT_BYTES).set(bytes as f64);
        }
    }

    pub fn node_window(busy_ratio: f64, busy_us: u64, queue_depth_max: usize) {
        metrics::gauge!(NODE_BUSY_RATIO).set(busy_ratio);
        metrics::counter!(NODE_BUSY_MICROSECONDS).increment(busy_us);
        metrics::gauge!(NODE_QUEUE_DEPTH_MAX).set(queue_depth_max as f64);
    }

    pub fn record(event: &Event) {
        match event {
            Event::PushFinished {
                status, timeline, ..
            } => {
                if let Some(hot) = HOT.get() {
                    hot.pushes[status.index()].increment(1);
                }
                if *status == PushStatus::AckSuccess {
                    let points = timeline.points();
                    let sent = points
                        .iter()
                        .find(|(name, _)| *name == "before-send")
                        .map(|(_, at)| *at);
                    if let (Some(sent), Some((_, end))) = (sent, points.last()) {
                        metrics::histogram!(ACK_LATENCY)
                            .record((end - sent).max(0) as f64 / 1000.0);
                    }
                }
            }
            Event::BroadcastFinished { status, .. } => {
                metrics::counter!(BROADCASTS, "status" => status.name()).increment(1);
            }
            Event::HandshakeDone { fast, .. } => {
                metrics::counter!(HANDSHAKES, "kind" => if *fast { "fast" } else { "full" })
                    .increment(1);
            }
            Event::Bound { .. } => metrics::counter!(BINDS).increment(1),
            Event::Kicked { .. } => metrics::counter!(KICKS).increment(1),
            Event::FlowDelayed { delay_ms, .. } => {
                metrics::counter!(FLOW_DELAYS).increment(1);
                metrics::histogram!(FLOW_DELAY_SECONDS).record(*delay_ms as f64 / 1000.0);
            }
            Event::DecodeError { kind } => {
                metrics::counter!(DECODE_ERRORS, "kind" => *kind).increment(1)
            }
            Event::StoreFailed { op, .. } => {
                metrics::counter!(STORE_FAILURES, "op" => *op).increment(1)
            }
            Event::Closed { reason, .. } => {
                metrics::counter!(CLOSES, "reason" => reason.name()).increment(1);
                if *reason == CloseReason::SlowConsumer {
                    metrics::counter!(SLOW_CONSUMERS).increment(1);
                }
            }
            _ => {}
        }
    }
}

#[cfg(madsim)]
mod imp {
    use pushgate_core::Event;

    pub fn connection_opened() {}
    pub fn connection_closed() {}
    pub fn limit_hit(_limit: &'static str) {}
    pub fn phone_group_turn_full() {}
    pub fn bind_check(_outcome: &'static str) {}
    pub fn record(_event: &Event) {}
    pub fn node_wake(_queue_depth: usize, _timers: usize) {}
    pub fn node_window(_busy_ratio: f64, _busy_us: u64, _queue_depth_max: usize) {}
    pub fn memory(_store: Option<pushgate_core::store_state::StoreFootprint>) {}
}

pub use imp::*;

/// Keeps `Event` in the signature of both variants.
#[allow(dead_code)]
fn _uses(_: &Event) {}
