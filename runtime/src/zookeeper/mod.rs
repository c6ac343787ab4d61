//! ZooKeeper in MPush's layout (reference §11.1), for clusters where pushgate nodes stand
//! beside MPush Java nodes: MPush's PushClient and alloc find gateway and connection servers
//! in ZooKeeper, so a pushgate node registers there, and it reads the Java nodes' gateways
//! from there in turn. Off unless `cluster.zookeeper` is set; not in the simulator.
//!
//! - [`znode`]: the paths and MPush's JSON values;
//! - [`member`]: the session task (registration, re-registration after expiry, watches).
pub mod member;
pub mod znode;

pub use member::{Registration, Seen, ZkMember, ZkOptions, ZkView};
pub use znode::{ConnectServerNode, GatewayServerNode};
