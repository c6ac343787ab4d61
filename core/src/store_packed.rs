//! Compact forms of what a [`crate::store_state::StoreState`] keeps for every phone: its route
//! and its reusable session, each packed into one allocation.
//!
//! The embedded store holds one route per user and one session per full handshake (kept a day,
//! as in MPush), so they dominate a node's memory per idle phone. As plain records a route is
//! 168 bytes plus six strings and a session 128 bytes plus four strings and its key, each string
//! its own allocation; packed, each is one byte string: fixed fields little-endian, strings
//! length-prefixed (LEB128). Session ids the nodes generate (32 lowercase hex digits) are kept
//! as their 16 bytes. Records are unpacked when read, which the store does only on binds, fast
//! connects and admin reads, never per push.
use crate::ids::Millis;
use crate::route::ClientType;
use crate::store::{CachedSession, EndedBind, NodeLink, RouteRecord};
use std::collections::BTreeMap;

/// A session id as the store keys it: the 16 bytes of a 32-hex-digit id (the form nodes
/// generate), any other id as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SessionKey {
    Hex([u8; 16]),
    Text(Box<str>),
}

impl SessionKey {
    /// Bytes this key holds on the heap (an id not in the short form keeps its text).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            SessionKey::Hex(_) => 0,
            SessionKey::Text(text) => text.len(),
        }
    }

    /// The key of `id`. Only lowercase digits take the short form, so two ids that differ in
    /// case stay two keys.
    pub(crate) fn new(id: &str) -> Self {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let bytes = id.as_bytes();
        if bytes.len() == 32 {
            let mut out = [0u8; 16];
            let parsed = out.iter_mut().zip(bytes.chunks_exact(2)).all(|(o, pair)| {
                match (digit(pair[0]), digit(pair[1])) {
                    (Some(high), Some(low)) => {
                        *o = high << 4 | low;
                        true
                    }
                    _ => false,
                }
            });
            if parsed {
                return SessionKey::Hex(out);
            }
        }
        SessionKey::Text(id.into())
    }
}

/// A reusable session and when it expires, packed: expiry (8 bytes), key (16), IV (16), then
/// OS name, OS version, client version and device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackedSession(Box<[u8]>);

impl PackedSession {
    pub(crate) fn pack(session: &CachedSession, expires_ms: Millis) -> Self {
        let mut out = Vec::with_capacity(
            40 + 4 * 2
                + session.os_name.len()
                + session.os_version.len()
                + session.client_version.len()
                + session.device_id.len(),
        );
        out.extend_from_slice(&expires_ms.to_le_bytes());
        out.extend_from_slice(&session.session_key);
        out.extend_from_slice(&session.iv);
        for text in [
            &session.os_name,
            &session.os_version,
            &session.client_version,
            &session.device_id,
        ] {
            put_str(&mut out, text);
        }
        Self(out.into_boxed_slice())
    }

    /// Bytes this record holds on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.len()
    }

    /// When the session expires (0 for a record that does not parse, which never happens:
    /// only [`PackedSession::pack`] makes them).
    pub(crate) fn expires_ms(&self) -> Millis {
        Reader::new(&self.0).u64().unwrap_or(0)
    }

    /// The session; `None` only for a record that does not parse.
    pub(crate) fn unpack(&self) -> Option<CachedSession> {
        let mut r = Reader::new(&self.0);
        r.u64()?;
        let session_key = r.array16()?;
        let iv = r.array16()?;
        Some(CachedSession {
            os_name: r.string()?,
            os_version: r.string()?,
            client_version: r.string()?,
            device_id: r.string()?,
            session_key,
            iv,
        })
    }
}

/// A route, packed: port (2 bytes), version and connection version (8 each), host, device id,
/// OS name, client version, then a byte saying whether a connection id follows (and it), then
/// the ended binds (a count, then host, port and version of each), then the nodes' links (a
/// count, then host, port and epoch of each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRoute(Box<[u8]>);

impl PackedRoute {
    pub fn pack(route: &RouteRecord) -> Self {
        let mut out = Vec::with_capacity(
            24 + route.host.len()
                + route.device_id.len()
                + route.os_name.len()
                + route.client_version.len()
                + route.conn_id.as_ref().map_or(0, String::len)
                + route.ended.iter().map(|e| e.host.len() + 12).sum::<usize>()
                + route.links.iter().map(|l| l.host.len() + 12).sum::<usize>(),
        );
        out.extend_from_slice(&route.port.to_le_bytes());
        out.extend_from_slice(&route.version.to_le_bytes());
        out.extend_from_slice(&route.conn_version.to_le_bytes());
        for text in [
            &route.host,
            &route.device_id,
            &route.os_name,
            &route.client_version,
        ] {
            put_str(&mut out, text);
        }
        match &route.conn_id {
            Some(conn_id) => {
                out.push(1);
                put_str(&mut out, conn_id);
            }
            None => out.push(0),
        }
        put_len(&mut out, route.ended.len());
        for ended in &route.ended {
            put_str(&mut out, &ended.host);
            out.extend_from_slice(&ended.port.to_le_bytes());
            out.extend_from_slice(&ended.version.to_le_bytes());
        }
        put_len(&mut out, route.links.len());
        for link in &route.links {
            put_str(&mut out, &link.host);
            out.extend_from_slice(&link.port.to_le_bytes());
            out.extend_from_slice(&link.epoch.to_le_bytes());
        }
        Self(out.into_boxed_slice())
    }

    /// The route; `None` only for a record that does not parse (only
    /// [`PackedRoute::pack`] makes them).
    pub fn unpack(&self) -> Option<RouteRecord> {
        let mut r = Reader::new(&self.0);
        let port = r.u16()?;
        let version = r.u64()?;
        let conn_version = r.u64()?;
        let host = r.string()?;
        let device_id = r.string()?;
        let os_name = r.string()?;
        let client_version = r.string()?;
        let conn_id = match r.take(1)? {
            [0] => None,
            _ => Some(r.string()?),
        };
        let count = r.len()?;
        let mut ended = Vec::with_capacity(count.min(crate::store::MAX_ENDED_BINDS));
        for _ in 0..count {
            ended.push(EndedBind {
                host: r.string()?,
                port: r.u16()?,
                version: r.u64()?,
            });
        }
        let count = r.len()?;
        let mut links = Vec::with_capacity(count.min(crate::store::MAX_LINKS));
        for _ in 0..count {
            links.push(NodeLink {
                host: r.string()?,
                port: r.u16()?,
                epoch: r.u64()?,
            });
        }
        Some(RouteRecord {
            port,
            host,
            device_id,
            os_name,
            client_version,
            conn_id,
            version,
            conn_version,
            ended,
            links,
        })
    }
}

/// The store's routes by (user, client type), in key order, each kept packed: reads hand out
/// the unpacked record, writes pack it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RouteMap {
    map: BTreeMap<(Box<str>, ClientType), PackedRoute>,
    /// The heap bytes of every key's user id and every packed route (kept as they change).
    payload_bytes: usize,
}

impl RouteMap {
    fn key(key: &(String, ClientType)) -> (Box<str>, ClientType) {
        (key.0.as_str().into(), key.1)
    }

    /// The route of (user, client type).
    pub fn get(&self, key: &(String, ClientType)) -> Option<RouteRecord> {
        self.map.get(&Self::key(key)).and_then(PackedRoute::unpack)
    }

    /// True when a route of (user, client type) is kept.
    pub fn contains_key(&self, key: &(String, ClientType)) -> bool {
        self.map.contains_key(&Self::key(key))
    }

    /// Keeps `route` as the route of (user, client type), as it is (no version rules); answers
    /// the route it replaced.
    pub fn insert(&mut self, key: (String, ClientType), route: RouteRecord) -> Option<RouteRecord> {
        let packed = PackedRoute::pack(&route);
        let user_bytes = key.0.len();
        self.payload_bytes += packed.0.len();
        match self.map.insert((key.0.into(), key.1), packed) {
            Some(old) => {
                self.payload_bytes -= old.0.len();
                old.unpack()
            }
            None => {
                self.payload_bytes += user_bytes;
                None
            }
        }
    }

    /// Changes the route of (user, client type) with `change`; false when there is none.
    pub fn update(
        &mut self,
        key: &(String, ClientType),
        change: impl FnOnce(&mut RouteRecord),
    ) -> bool {
        let Some(packed) = self.map.get_mut(&Self::key(key)) else {
            return false;
        };
        let Some(mut route) = packed.unpack() else {
            return false;
        };
        change(&mut route);
        let repacked = PackedRoute::pack(&route);
        self.payload_bytes = self.payload_bytes - packed.0.len() + repacked.0.len();
        *packed = repacked;
        true
    }

    /// Approximately the bytes the routes take: their packed records and user ids, and about
    /// one and a half times each entry's slot in the tree (nodes are not always full).
    pub fn approx_bytes(&self) -> usize {
        const SLOT_BYTES: usize =
            std::mem::size_of::<((Box<str>, ClientType), PackedRoute)>() * 3 / 2;
        self.payload_bytes + self.map.len() * SLOT_BYTES
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The tracked heap bytes of keys and records, and the same counted afresh.
    #[cfg(test)]
    pub(crate) fn payload_bytes_tracked_and_counted(&self) -> (usize, usize) {
        let counted = self
            .map
            .iter()
            .map(|((user, _), packed)| user.len() + packed.0.len());
        (self.payload_bytes, counted.sum())
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.payload_bytes = 0;
    }

    /// Every route, in key order.
    pub fn iter(&self) -> impl Iterator<Item = ((String, ClientType), RouteRecord)> + '_ {
        self.map.iter().filter_map(|((user, ct), packed)| {
            packed
                .unpack()
                .map(|route| ((user.to_string(), *ct), route))
        })
    }

    /// Every route, in key order, without the keys.
    pub fn values(&self) -> impl Iterator<Item = RouteRecord> + '_ {
        self.map.values().filter_map(PackedRoute::unpack)
    }
}

impl std::fmt::Debug for RouteMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a RouteMap {
    type Item = ((String, ClientType), RouteRecord);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

fn put_len(out: &mut Vec<u8>, mut len: usize) {
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Reads a packed record front to back; every read is `None` past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn array16(&mut self) -> Option<[u8; 16]> {
        self.take(16)?.try_into().ok()
    }

    fn len(&mut self) -> Option<usize> {
        let mut len = 0usize;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first()?;
            len |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(len);
            }
        }
        None
    }

    fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.len()?;
        self.take(len)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.str_bytes()?)
            .ok()
            .map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeAddr;

    #[test]
    fn sessions_and_routes_unpack_to_what_was_packed() {
        let session = CachedSession {
            os_name: "android".into(),
            os_version: "14".into(),
            client_version: "1.0.0".into(),
            device_id: "d".repeat(300),
            session_key: [7; 16],
            iv: [9; 16],
        };
        let packed = PackedSession::pack(&session, 12_345);
        assert_eq!(packed.expires_ms(), 12_345);
        assert_eq!(packed.unpack(), Some(session));

        let mut route = RouteRecord {
            port: 3001,
            host: "10.0.0.1".into(),
            device_id: "device-1".into(),
            os_name: "ios".into(),
            client_version: String::new(),
            conn_id: Some("c".repeat(200)),
            version: u64::MAX,
            conn_version: 17,
            ended: Vec::new(),
            links: Vec::new(),
        };
        let node = NodeAddr::new("10.0.0.1", 3001);
        let packed = PackedRoute::pack(&route);
        let back = packed.unpack().unwrap();
        assert!(back.is_online() && back.is_on(&node));
        assert!(!back.is_on(&NodeAddr::new("10.0.0.1", 3002)));
        assert_eq!(packed.unpack().as_ref(), Some(&route));
        route.conn_id = None;
        route.remember_ended(&node, 3);
        route.remember_ended(&NodeAddr::new("h", 1), 4);
        route.note_link(&node, 5);
        route.note_link(&NodeAddr::new("h", 1), u64::MAX);
        let packed = PackedRoute::pack(&route);
        assert!(!packed.unpack().unwrap().is_online());
        assert_eq!(packed.unpack(), Some(route));
    }

    #[test]
    fn generated_session_ids_take_the_short_key() {
        let id = "00ff10a0b1c2d3e4f5061728394a5b6c";
        assert!(matches!(SessionKey::new(id), SessionKey::Hex(_)));
        assert_ne!(SessionKey::new(id), SessionKey::new(&id.to_uppercase()));
        assert!(matches!(SessionKey::new("x"), SessionKey::Text(_)));
        assert!(matches!(
            SessionKey::new(&"g".repeat(32)),
            SessionKey::Text(_)
        ));
    }

    /// What the store keeps per phone beside each record's one allocation.
    #[test]
    fn packed_records_are_one_pointer() {
        assert_eq!(std::mem::size_of::<PackedRoute>(), 16);
        assert_eq!(std::mem::size_of::<PackedSession>(), 16);
        assert!(std::mem::size_of::<SessionKey>() <= 24);
    }
}
