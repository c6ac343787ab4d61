//! Plain identifiers the core and the driver share. The driver allocates connection ids; the
//! core allocates request and push ids. None of them is ever reused within one [`crate::Node`].
use serde::{Deserialize, Serialize};

/// Milliseconds on the driver's monotonic clock. Time handed to the core never goes back.
pub type Millis = u64;

/// A phone connection (connection server side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// A PushClient connection (gateway server side), or a local API client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GatewayId(pub u64);

/// A route-store request; the driver answers it with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// One push request inside a node (single-user or broadcast).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PushId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

impl std::fmt::Display for GatewayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gw-{}", self.0)
    }
}
