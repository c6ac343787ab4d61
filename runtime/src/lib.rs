//! pushgate runtime: the tokio driver around [`pushgate_core`], the route-store back ends, the
//! client libraries and the `pushgate` binary's subcommands.
//!
//! The driver is not written yet; today this crate re-exports the core so downstream crates
//! and the binary build against one name.
pub use pushgate_core as core;
