//! pushgate runtime: the tokio driver around [`pushgate_core`], the embedded route store, the
//! HTTP admin API and metrics, the client libraries, and the `pushgate` binary's subcommands.
//!
//! - [`config`]: layered configuration (defaults, TOML, `PUSHGATE_*`, flags).
//! - [`server`]: listeners and start/shutdown; [`driver`]: the node task; [`conn`]: the
//!   per-connection tasks; [`store`]: the embedded in-memory route store; [`store_net`]: the
//!   store node several nodes share, and the driver's link to it; [`redis_store`]: the route
//!   store on Redis in MPush's data model (not in the simulator); [`link_epoch`]: the epoch
//!   each store connection carries, so nothing sent on a replaced one lands after it.
//! - [`http`] and [`metrics`]: the admin API and Prometheus metrics (not in the simulator);
//!   [`cluster`]: the node registry membership and push forwarding on Redis (not in the
//!   simulator); [`zookeeper`]: registration in MPush's ZooKeeper layout (not in the
//!   simulator).
//! - [`alloc`]: MPush's alloc answer (not in the simulator).
//! - [`access`], [`gateway_auth`] and [`limits`]: who may use the business ports (tokens,
//!   allow-list), and the limits on what one peer or the node may hold, with their counters.
//! - [`web`]: the WebSocket listener and the web connections' tasks (MPush's JSON packets;
//!   not in the simulator).
//! - [`tls`]: TLS on the gateway, admin and TLS connection ports (not in the simulator).
//! - [`client`]: `PushClient` and `DeviceClient`, and the `push` / `device` subcommands.
pub use pushgate_core as core;

pub mod access;
#[cfg(not(madsim))]
pub mod alloc;
pub mod bind_check;
pub mod bulk_wake;
pub mod client;
#[cfg(not(madsim))]
pub mod cluster;
pub mod config;
pub mod conn;
pub mod driver;
pub mod gateway_auth;
pub mod housekeeping;
#[cfg(not(madsim))]
pub mod http;
pub mod limits;
pub mod link_epoch;
pub mod metrics;
pub mod node_clock;
#[cfg(not(madsim))]
pub mod phone_group;
pub mod phone_queue;
pub mod phone_timers;
#[cfg(not(madsim))]
pub mod redis_store;
pub mod server;
#[cfg(madsim)]
pub mod sim_hooks;
pub mod store;
pub mod store_net;
#[cfg(not(madsim))]
pub mod tls;
#[cfg(not(madsim))]
pub mod web;
#[cfg(not(madsim))]
pub mod zookeeper;
