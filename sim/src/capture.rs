//! Listens to the nodes' own "push finished" / "broadcast finished" log events (target
//! `pushgate::push`), so the oracle sees every terminal status a node decides — including a
//! second one for the same push that a PushClient would silently drop as unclaimed.
//!
//! `PUSHGATE_SIM_LOG=<filter>` (an `EnvFilter`, e.g. `pushgate=debug`) also prints the runtime's
//! log lines.
use crate::oracle::{lock, Shared};
use madsim::task::NodeId;
use std::collections::HashMap;
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::Layer;

struct Capture {
    oracle: Shared,
    nodes: HashMap<NodeId, usize>,
}

#[derive(Default)]
struct Fields {
    message: String,
    push: Option<u64>,
    status: String,
    user: String,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "push" {
            self.push = Some(value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "status" => self.status = value.to_owned(),
            "user" => self.user = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "user" => self.user = format!("{value:?}"),
            "status" => self.status = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let broadcast = match fields.message.as_str() {
            "push finished" => false,
            "broadcast finished" => true,
            _ => return,
        };
        let Some(push) = fields.push else { return };
        let Some(node) = self.nodes.get(&madsim::plugin::node()).copied() else {
            return;
        };
        lock(&self.oracle).node_finished(node, push, broadcast, &fields.status, &fields.user);
    }
}

/// Only the push-status events reach the capture layer.
struct PushEvents;

impl<S> Filter<S> for PushEvents {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        meta.is_event() && meta.target() == "pushgate::push"
    }
}

/// Installs the capture (and the optional log printer) for this thread: the seed's world.
pub fn install(oracle: Shared, nodes: HashMap<NodeId, usize>) -> DefaultGuard {
    let capture = Capture { oracle, nodes }.with_filter(PushEvents);
    let log = std::env::var("PUSHGATE_SIM_LOG")
        .ok()
        .filter(|f| !f.is_empty())
        .map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_target(true)
                .with_filter(tracing_subscriber::EnvFilter::new(filter))
        });
    let subscriber = tracing_subscriber::registry().with(capture).with(log);
    tracing::subscriber::set_default(subscriber)
}
