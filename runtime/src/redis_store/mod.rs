//! The route store on Redis (standalone, Sentinel or Cluster), in MPush's data model, so
//! pushgate nodes share routes, sessions, kick notices and broadcast task control with each
//! other and with MPush's Java servers and PushClient (reference §12).
//!
//! [`RedisStore`] has the shape of [`RemoteStore`](crate::store_net::RemoteStore): the driver
//! hands it `(id, op)` requests, answers come back as [`StoreLinkEvent::Message`](crate::store_net::StoreLinkEvent::Message)
//! with a reply, kick notices for this node as kicks, and
//! [`StoreLinkEvent::Connected`](crate::store_net::StoreLinkEvent::Connected) after every (re)connect (the node then writes its routes
//! again: Redis may have restarted empty or failed over without the last writes).
//!
//! - [`target`]: the URL forms; [`keys`]: MPush's key and channel names;
//! - [`conn`]: the command and pub/sub connections; [`scripts`]: the atomic route writes;
//! - [`ops`]: every op as Redis commands; [`link`]: the task that connects, bounds commands in
//!   flight, times them out, reconnects with backoff and logs each outage once.
//! - [`reader`]: a command connection for readers outside the link; [`registry`]: node
//!   discovery (announcements with a TTL, renewed by heartbeat).
pub mod conn;
pub mod keys;
pub mod link;
pub mod ops;
pub mod reader;
pub mod registry;
pub mod scripts;
pub mod target;

pub use link::{RedisOptions, RedisStore};
pub use reader::RedisReader;
pub use registry::NodeInfo;
pub use target::{BadRedisUrl, RedisTarget};
