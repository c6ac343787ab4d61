//! Test support shared by the MQTT and NATS clients' checks against a running broker
//! (`#[ignore]`d tests in `mqtt.rs` and `nats.rs`): collecting deliveries per subscriber and
//! reading this process's memory.
use std::time::Duration;

/// Deliveries as (subscriber index, payload).
pub type Received = tokio::sync::mpsc::UnboundedReceiver<(usize, Vec<u8>)>;

/// Counts deliveries per subscriber until `expected` are all in, or panics after 30 s.
pub async fn collect(
    rx: &mut Received,
    subscribers: usize,
    expected: impl Fn(usize) -> usize,
) -> Vec<Vec<Vec<u8>>> {
    let mut got = vec![Vec::new(); subscribers];
    let total: usize = (0..subscribers).map(&expected).sum();
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen < total {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, payload))) => {
                got[i].push(payload);
                seen += 1;
            }
            Ok(None) => panic!("all readers ended with {seen} of {total} deliveries"),
            Err(_) => panic!("only {seen} of {total} deliveries within 30 s"),
        }
    }
    got
}

/// This process's resident memory in KiB.
pub fn own_rss_kib() -> u64 {
    crate::resources::rss_bytes(std::process::id()).expect("reading /proc/self/status") / 1024
}
