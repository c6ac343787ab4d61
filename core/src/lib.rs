//! pushgate-core: everything in pushgate that decides, with no I/O.
//!
//! This crate is sans-IO: it never touches a socket, a clock or ambient randomness. Time comes
//! in as a millisecond count, randomness as an `&mut impl RngCore`, and every effect goes out as
//! a value. That keeps the wire protocol and the push engine testable with plain unit and
//! property tests, and makes the simulator deterministic.
//!
//! Layers, bottom up:
//! - [`frame`]: the 13-byte MPush packet header, the 1-byte heartbeat, a streaming decoder.
//! - [`codec`]: the field encodings used inside bodies (strings, byte arrays, ints).
//! - [`command`]: the command codes.
//! - [`message`]: one typed struct per message body, each with `decode` and `encode`.
//! - [`crypto`]: RSA for the handshake, AES-128-CBC for sessions, zlib/gzip.
//! - [`pipeline`]: applies the crypto and compression a packet's flags call for.
//!
//! The engine, on top:
//! - [`conn`]: [`PhoneConn`], one phone connection as its connection task runs it: framing,
//!   decryption, the handshake, heartbeats, idle checks, sealing, the slow-consumer marks.
//! - [`web_conn`]: [`WebConn`], the same for a web connection: MPush's JSON packets over
//!   WebSocket, keep-alive pings, size limits.
//! - [`session`]: one phone connection as the node sees it (device facts, bound user).
//! - [`route`]: local routes (user id + client type → connection).
//! - [`push`]: push requests and broadcast filters; [`condition`]: the filter language.
//! - [`flow`]: flow control; [`in_flight`]: pushes awaiting a write result or an ACK.
//! - [`status`]: the terminal statuses and how a PushClient is told.
//! - [`store`]: the route-store operations the core asks the driver to perform;
//!   [`store_state`]: what each operation does to a store (every store applies it).
//! - [`timer`]: the node's timer heap.
//! - [`node`]: [`Node`], the composition, with its `handle` / `poll_output` / `poll_timeout`
//!   / `handle_timeout` drain contract.
#![forbid(unsafe_code)]

pub mod codec;
pub mod command;
pub mod condition;
pub mod config;
pub mod conn;
pub mod crypto;
pub mod flow;
pub mod frame;
pub mod ids;
pub mod in_flight;
pub mod message;
pub mod node;
pub mod pipeline;
pub mod push;
pub mod route;
pub mod session;
pub mod spare;
pub mod status;
pub mod store;
pub mod store_packed;
pub mod store_state;
pub mod timer;
pub mod web_conn;
pub mod write_marks;

pub use config::{NodeAddr, NodeConfig};
pub use conn::{ConnConfig, PhoneConn, PhoneMessage, QueueMarks};
pub use ids::{ConnId, GatewayId, Millis, PushId, RequestId};
pub use node::{
    BindCheck, BindCheckOutcome, BindField, BindVerdict, CloseReason, Event, Input, KickCause,
    Node, NodeStats, OutFrame, Output, Seal,
};
pub use status::PushStatus;
pub use web_conn::{WebConfig, WebConn, WsMessage};
