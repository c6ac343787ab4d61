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
    pub const STORE_FAILURES: &str = "pushgate_store_failures_total";
    /// Redis store: op latency in seconds (label `op`), failed ops (labels `op`, `kind`:
    /// timeout or unavailable), links opened after the first, outages, and 1 while linked.
    pub const STORE_LATENCY: &str = "pushgate_store_latency_seconds";
    pub const STORE_ERRORS: &str = "pushgate_store_errors_total";
    pub const STORE_RECONNECTS: &str = "pushgate_store_reconnects_total";
    pub const STORE_OUTAGES: &str = "pushgate_store_outages_total";
    pub const STORE_CONNECTED: &str = "pushgate_store_connected";
}

#[cfg(not(madsim))]
mod imp {
    use super::names::*;
    use pushgate_core::{Event, PushStatus};
    use std::sync::OnceLock;

    pub use metrics_exporter_prometheus::PrometheusHandle;

    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

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

    pub fn record(event: &Event) {
        match event {
            Event::PushFinished {
                status, timeline, ..
            } => {
                metrics::counter!(PUSHES, "status" => status.name()).increment(1);
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
            _ => {}
        }
    }
}

#[cfg(madsim)]
mod imp {
    use pushgate_core::Event;

    pub fn connection_opened() {}
    pub fn connection_closed() {}
    pub fn record(_event: &Event) {}
}

pub use imp::*;

/// Keeps `Event` in the signature of both variants.
#[allow(dead_code)]
fn _uses(_: &Event) {}
