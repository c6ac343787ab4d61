//! Latency histograms (`hdrhistogram`, ns, 3 significant digits, up to a minute) and the
//! percentile summary the report keeps of each (µs).
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest latency a histogram tells apart (longer ones are recorded as this).
const MAX_TRACKABLE_NS: u64 = 60_000_000_000;

/// One latency distribution.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // 1 ns .. 60 s at 3 significant digits: a fixed, bounded size (~200 KiB).
        let hist = Histogram::new_with_bounds(1, MAX_TRACKABLE_NS, 3)
            .unwrap_or_else(|_| unreachable!("constant, valid bounds"));
        Self { hist }
    }

    /// Records one latency in ns (clamped into the trackable range).
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record(ns.clamp(1, MAX_TRACKABLE_NS));
    }

    /// The percentiles in µs.
    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p90_us: us(self.hist.value_at_quantile(0.90)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
            mean_us: self.hist.mean() / 1000.0,
        }
    }
}

/// Percentiles of one distribution, in µs (all 0 when nothing was recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut latency = Latency::new();
        assert_eq!(latency.summary(), LatencySummary::default());
        for i in 1..=1000u64 {
            latency.record_ns(i * 1000);
        }
        latency.record_ns(u64::MAX);
        let s = latency.summary();
        assert_eq!(s.count, 1001);
        // Three significant digits: a percentile reads as the top of its bucket, within 1%.
        assert!((s.p50_us - 500.0).abs() < 5.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 10.0, "{s:?}");
        assert!(s.max_us >= 59_000_000.0, "clamped, not dropped: {s:?}");
    }
}
