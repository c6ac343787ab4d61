//! MPush's ZooKeeper layout (reference §11.1): the paths under the namespace (`/mpush` by
//! default) and the JSON a node writes into its ephemeral znode, so MPush's Java PushClient,
//! its alloc service and its servers find pushgate nodes, and pushgate finds theirs.
//!
//! - `/{namespace}/cluster/cs/{uuid}`: a connection server, `{"attrs":{"weight":1},"host":"…","port":3000}`;
//! - `/{namespace}/cluster/gs/{uuid}`: a gateway server, `{"host":"…","port":3001}`.
//!
//! MPush writes both through fastjson: keys in alphabetical order, numbers as JSON numbers,
//! nulls left out. The structs below serialise their fields in that order (`attrs` is a
//! sorted map), so the bytes equal MPush's. Reading is lenient: unknown keys are ignored, and
//! a connection server's `attrs.public_ip`, when present, is its public address (as MPush's
//! alloc reads it).
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest znode value read; a longer one is skipped (MPush's are under 100 bytes).
pub const MAX_ZNODE_BYTES: usize = 16 * 1024;
/// Most children of one directory read; the rest are skipped.
pub const MAX_CHILDREN: usize = 1024;
/// The connection servers' directory under the namespace.
pub const CONNECT_DIR: &str = "cluster/cs";
/// The gateway servers' directory under the namespace.
pub const GATEWAY_DIR: &str = "cluster/gs";

/// `/{namespace}/{dir}` (an empty namespace: `/{dir}`).
pub fn dir_path(namespace: &str, dir: &str) -> String {
    let namespace = namespace.trim_matches('/');
    if namespace.is_empty() {
        format!("/{dir}")
    } else {
        format!("/{namespace}/{dir}")
    }
}

/// A connection server's znode value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectServerNode {
    /// MPush's `connect-server-register-attr` (`{"weight":1}` by default).
    #[serde(default)]
    pub attrs: BTreeMap<String, serde_json::Value>,
    pub host: String,
    pub port: u16,
}

impl ConnectServerNode {
    /// A node at `host:port` with MPush's default attributes (`weight` 1).
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let mut attrs = BTreeMap::new();
        attrs.insert("weight".to_owned(), serde_json::Value::from(1));
        Self {
            attrs,
            host: host.into(),
            port,
        }
    }

    /// The host phones dial: `attrs.public_ip` when set (as MPush's alloc reads it), else `host`.
    pub fn public_host(&self) -> &str {
        self.attrs
            .get("public_ip")
            .and_then(serde_json::Value::as_str)
            .filter(|ip| !ip.is_empty())
            .unwrap_or(&self.host)
    }
}

/// A gateway server's znode value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayServerNode {
    pub host: String,
    pub port: u16,
}

/// The znode bytes of `value` (MPush's JSON).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and maps with string keys: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// A znode value read back; `None` for bytes that are not such a node (or too long).
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    if bytes.len() > MAX_ZNODE_BYTES {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_mpush_bytes() {
        // Captured from MPush 0.8.1 (../shared/vectors/cluster-data.json, "zookeeper").
        assert_eq!(
            encode(&ConnectServerNode::new("127.0.0.1", 26000)),
            br#"{"attrs":{"weight":1},"host":"127.0.0.1","port":26000}"#
        );
        assert_eq!(
            encode(&GatewayServerNode {
                host: "127.0.0.1".into(),
                port: 26001
            }),
            br#"{"host":"127.0.0.1","port":26001}"#
        );
    }

    #[test]
    fn reading_is_lenient_and_bounded() {
        let cs: ConnectServerNode = decode(
            br#"{"port":3000,"host":"10.0.0.1","attrs":{"public_ip":"1.2.3.4","weight":2},"x":1}"#,
        )
        .unwrap();
        assert_eq!((cs.public_host(), cs.port), ("1.2.3.4", 3000));
        let bare: ConnectServerNode = decode(br#"{"host":"10.0.0.1","port":3000}"#).unwrap();
        assert_eq!(bare.public_host(), "10.0.0.1");
        assert!(decode::<GatewayServerNode>(b"not json").is_none());
        assert!(decode::<GatewayServerNode>(br#"{"host":"h","port":70000}"#).is_none());
        let long = format!(r#"{{"host":"{}","port":1}}"#, "h".repeat(MAX_ZNODE_BYTES));
        assert!(decode::<GatewayServerNode>(long.as_bytes()).is_none());
    }

    #[test]
    fn paths_follow_the_namespace() {
        assert_eq!(dir_path("mpush", GATEWAY_DIR), "/mpush/cluster/gs");
        assert_eq!(dir_path("/mpush/", CONNECT_DIR), "/mpush/cluster/cs");
        assert_eq!(dir_path("", GATEWAY_DIR), "/cluster/gs");
    }
}
