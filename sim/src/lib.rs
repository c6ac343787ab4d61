//! pushgate-sim: the deterministic simulation world (madsim) for pushgate clusters.
//!
//! Built with `RUSTFLAGS="--cfg madsim"`; in a plain build this crate is empty and the
//! simulation tests in `tests/` compile to nothing. See `README.md` for how to run, replay a
//! seed and read a trace.
//!
//! - [`params`]: the world drawn from the seed (sizes, rates, which faults).
//! - [`world`]: the store node, the pushgate nodes (the real runtime), the fault schedule, the
//!   liveness phase and the final checks; [`actors`]: phones (`DeviceClient`) and business
//!   servers (`PushClient`).
//! - [`oracle`]: what really happened, and the invariants; [`capture`]: hands the nodes' own
//!   core events to the oracle; [`events`]: the invariants judged from them;
//!   [`store_node`]: the store node, a model with Redis's faults; [`store_client`]: reads it.
//! - [`summary`]: the per-run summary and the failure report.
#[cfg(madsim)]
pub mod actors;
#[cfg(madsim)]
pub mod capture;
#[cfg(madsim)]
pub mod events;
#[cfg(madsim)]
pub mod known;
#[cfg(madsim)]
pub mod oracle;
#[cfg(madsim)]
pub mod params;
#[cfg(madsim)]
pub mod store_client;
#[cfg(madsim)]
pub mod store_node;
#[cfg(madsim)]
pub mod summary;
#[cfg(madsim)]
pub mod world;

#[cfg(madsim)]
pub use world::{run, RunReport};
