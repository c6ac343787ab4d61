//! Hands the nodes' own core events to the oracle: every node is started with an event
//! observer (`pushgate::server::ServerHooks`), so the oracle judges what a node decided from
//! the decision itself (a push's status, a PUSH frame sent, a kick notice applied...), never
//! from log text — renaming a log line cannot switch an invariant off.
//!
//! `PUSHGATE_SIM_LOG=<filter>` (an `EnvFilter`, e.g. `pushgate=debug`) prints the runtime's
//! log lines.
use crate::oracle::{lock, Shared};
use crate::params::Params;
use pushgate::driver::EventObserver;
use std::sync::Arc;
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

/// The observer every node of the world is started with.
pub fn observer(oracle: Shared, params: Arc<Params>) -> EventObserver {
    Arc::new(move |addr, node_ms, event| {
        let Some(node) = params.node_of_host(&addr.host) else {
            return;
        };
        lock(&oracle).node_event(node, node_ms, event);
    })
}

/// Installs the optional log printer for this thread (the seed's world).
pub fn install() -> Option<DefaultGuard> {
    let filter = std::env::var("PUSHGATE_SIM_LOG")
        .ok()
        .filter(|f| !f.is_empty())?;
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(true)
        .with_filter(tracing_subscriber::EnvFilter::new(filter));
    let subscriber = tracing_subscriber::registry().with(log);
    Some(tracing::subscriber::set_default(subscriber))
}
