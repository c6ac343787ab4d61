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
#![forbid(unsafe_code)]

pub mod codec;
pub mod command;
pub mod condition;
pub mod crypto;
pub mod frame;
pub mod message;
pub mod pipeline;
