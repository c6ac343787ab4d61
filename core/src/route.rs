//! Local routes (reference §12): which connection of this node holds (user id, client type).
//!
//! One connection per (user, client type): a user may be online at once on one mobile, one PC,
//! one web and one unknown device. The user ids are also kept in order so that a broadcast can
//! walk them in resumable batches — a cursor is just the last key visited, valid however the
//! table changed in between; a push finds its user through a hash index. User ids are shared
//! (`Arc<str>`), so handing a batch or a cursor to a broadcast copies no strings.
use crate::ids::ConnId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

/// The device class a route is kept for, derived from the handshake's OS name (§12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClientType {
    Mobile,
    Pc,
    Web,
    Unknown,
}

impl ClientType {
    /// Lower-cased substring test in MPush's order: android/ios → mobile; windows/mac/linux →
    /// PC; web/h5 → web; anything else → unknown.
    pub fn from_os_name(os_name: &str) -> ClientType {
        let os = os_name.to_ascii_lowercase();
        if os.contains("android") || os.contains("ios") {
            ClientType::Mobile
        } else if os.contains("windows") || os.contains("mac") || os.contains("linux") {
            ClientType::Pc
        } else if os.contains("web") || os.contains("h5") {
            ClientType::Web
        } else {
            ClientType::Unknown
        }
    }

    /// MPush's wire code: 1, 2, 3 or -1.
    pub const fn code(self) -> i32 {
        match self {
            ClientType::Mobile => 1,
            ClientType::Pc => 2,
            ClientType::Web => 3,
            ClientType::Unknown => -1,
        }
    }

    /// The type for a wire code; `None` for 0 and other values ("any type").
    pub const fn from_code(code: i32) -> Option<ClientType> {
        match code {
            1 => Some(ClientType::Mobile),
            2 => Some(ClientType::Pc),
            3 => Some(ClientType::Web),
            -1 => Some(ClientType::Unknown),
            _ => None,
        }
    }
}

impl ClientType {
    /// Every type, in table order.
    pub const ALL: [ClientType; 4] = [
        ClientType::Mobile,
        ClientType::Pc,
        ClientType::Web,
        ClientType::Unknown,
    ];

    const fn slot(self) -> usize {
        match self {
            ClientType::Mobile => 0,
            ClientType::Pc => 1,
            ClientType::Web => 2,
            ClientType::Unknown => 3,
        }
    }
}

/// One route as a broadcast sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub user_id: Arc<str>,
    pub client_type: ClientType,
    pub conn: ConnId,
}

/// The hasher of the route index: SipHash-1-3 keyed per node (user ids are chosen by phones,
/// so a hash an attacker could predict would let them pile users into one bucket).
#[derive(Debug, Clone, Copy)]
pub struct RouteHasher {
    k0: u64,
    k1: u64,
}

impl std::hash::BuildHasher for RouteHasher {
    type Hasher = siphasher::sip::SipHasher13;

    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// A user's connections, one per client type. Almost every user is online on one device: that
/// route is held inline (its client type and connection, 16 bytes); a user on several types at
/// once holds a boxed slot per type ([`Packed`]). Every bound phone has one of these in each
/// of the table's two maps, so its size counts twice per phone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slots {
    One(ClientType, ConnId),
    Many(Box<Packed>),
}

/// One slot per client type, packed: a slot holds the connection id plus one, 0 when empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Packed([u64; 4]);

impl Packed {
    fn get(&self, client_type: ClientType) -> Option<ConnId> {
        match self.0[client_type.slot()] {
            0 => None,
            packed => Some(ConnId(packed - 1)),
        }
    }

    /// Puts `conn` in the slot of `client_type`; returns what it held.
    fn replace(&mut self, client_type: ClientType, conn: Option<ConnId>) -> Option<ConnId> {
        let previous = self.get(client_type);
        self.0[client_type.slot()] = match conn {
            // Connection ids count up from 0: the last id of the u64 range is never reached.
            Some(conn) => conn
                .0
                .checked_add(1)
                .expect("connection ids stay below u64::MAX"),
            None => 0,
        };
        previous
    }

    /// The routes held, in client-type order.
    fn routes(&self) -> impl Iterator<Item = (ClientType, ConnId)> + '_ {
        ClientType::ALL
            .into_iter()
            .filter_map(|ct| self.get(ct).map(|conn| (ct, conn)))
    }
}

impl Slots {
    fn get(&self, client_type: ClientType) -> Option<ConnId> {
        match self {
            Slots::One(ct, conn) => (*ct == client_type).then_some(*conn),
            Slots::Many(packed) => packed.get(client_type),
        }
    }

    /// The routes held, in client-type order.
    fn routes(&self) -> impl Iterator<Item = (ClientType, ConnId)> + '_ {
        let (one, many) = match self {
            Slots::One(ct, conn) => (Some((*ct, *conn)), None),
            Slots::Many(packed) => (None, Some(packed.routes())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Puts `conn` in the slot of `client_type`; returns what it held.
    fn insert(&mut self, client_type: ClientType, conn: ConnId) -> Option<ConnId> {
        match self {
            Slots::One(ct, held) if *ct == client_type => Some(std::mem::replace(held, conn)),
            Slots::One(ct, held) => {
                let mut packed = Packed::default();
                packed.replace(*ct, Some(*held));
                packed.replace(client_type, Some(conn));
                *self = Slots::Many(Box::new(packed));
                None
            }
            Slots::Many(packed) => packed.replace(client_type, Some(conn)),
        }
    }

    /// Empties the slot of `client_type` if it holds `conn`; `None` when that left no route
    /// (the user's entry goes), else whether it was removed.
    fn remove_if(&mut self, client_type: ClientType, conn: ConnId) -> Option<bool> {
        if self.get(client_type) != Some(conn) {
            return Some(false);
        }
        let Slots::Many(packed) = self else {
            return None;
        };
        packed.replace(client_type, None);
        let (first, second) = {
            let mut left = packed.routes();
            (left.next(), left.next())
        };
        match (first, second) {
            (None, _) => None,
            // Back inline when one route is left: the box goes.
            (Some((ct, held)), None) => {
                *self = Slots::One(ct, held);
                Some(true)
            }
            (Some(_), Some(_)) => Some(true),
        }
    }
}

/// The node's local routes: user id → one slot per client type.
///
/// Point lookups (every single push) go through a hash index; the ordered map serves the
/// broadcasts' resumable walk. Both hold the same slots (16 bytes each: the index is a copy
/// kept in step, so the walk reads each user's routes in order instead of hashing every user
/// into the index, a cache miss each in a large table; asserted in debug builds).
#[derive(Debug, Clone)]
pub struct RouteTable {
    users: HashMap<Arc<str>, Slots, RouteHasher>,
    order: BTreeMap<Arc<str>, Slots>,
    len: usize,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::with_hash_keys(0x7075_7368_6761_7465, 0x726f_7574_6573_0001)
    }
}

impl RouteTable {
    /// An empty table (fixed hash keys; a node uses [`RouteTable::with_hash_keys`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty table whose index hashes with SipHash keys `k0`, `k1`.
    pub fn with_hash_keys(k0: u64, k1: u64) -> Self {
        Self {
            users: HashMap::with_hasher(RouteHasher { k0, k1 }),
            order: BTreeMap::new(),
            len: 0,
        }
    }

    /// Gives back capacity a crowd left behind ([`crate::spare`]).
    pub fn shrink_spare_capacity(&mut self) {
        crate::spare::shrink_map(&mut self.users);
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of users with at least one route.
    pub fn user_count(&self) -> usize {
        debug_assert_eq!(self.users.len(), self.order.len());
        self.users.len()
    }

    /// The connection of (user, client type).
    pub fn get(&self, user_id: &str, client_type: ClientType) -> Option<ConnId> {
        self.users
            .get(user_id)
            .and_then(|slots| slots.get(client_type))
    }

    /// Every route of a user, in client-type order.
    pub fn of_user(&self, user_id: &str) -> impl Iterator<Item = (ClientType, ConnId)> + '_ {
        self.users.get(user_id).into_iter().flat_map(Slots::routes)
    }

    /// Sets the route; returns the connection it replaced, if any.
    pub fn insert(
        &mut self,
        user_id: &str,
        client_type: ClientType,
        conn: ConnId,
    ) -> Option<ConnId> {
        let previous = match self.users.get_mut(user_id) {
            Some(slots) => {
                let previous = slots.insert(client_type, conn);
                let copy = slots.clone();
                match self.order.get_mut(user_id) {
                    Some(ordered) => *ordered = copy,
                    None => debug_assert!(false, "{user_id} indexed but not ordered"),
                }
                previous
            }
            None => {
                let user: Arc<str> = Arc::from(user_id);
                let slots = Slots::One(client_type, conn);
                self.users.insert(user.clone(), slots.clone());
                self.order.insert(user, slots);
                None
            }
        };
        if previous.is_none() {
            self.len += 1;
        }
        debug_assert_eq!(self.users.len(), self.order.len());
        previous
    }

    /// The table's own copy of `user_id`, while the user has a route here.
    pub fn shared_user_id(&self, user_id: &str) -> Option<Arc<str>> {
        self.users
            .get_key_value(user_id)
            .map(|(user, _)| user.clone())
    }

    /// Removes the route only if it still names `conn`; true when removed.
    pub fn remove_if(&mut self, user_id: &str, client_type: ClientType, conn: ConnId) -> bool {
        let Some(slots) = self.users.get_mut(user_id) else {
            return false;
        };
        let removed = match slots.remove_if(client_type, conn) {
            Some(removed) => {
                if removed {
                    let copy = slots.clone();
                    if let Some(ordered) = self.order.get_mut(user_id) {
                        *ordered = copy;
                    }
                }
                removed
            }
            None => {
                self.users.remove(user_id);
                self.order.remove(user_id);
                true
            }
        };
        if removed {
            self.len -= 1;
        }
        debug_assert_eq!(self.users.len(), self.order.len());
        removed
    }

    /// Up to `limit` routes strictly after `cursor` in (user id, client type) order, from the
    /// start when `None`. Resume with the last entry returned.
    pub fn batch_after(&self, cursor: Option<(&str, ClientType)>, limit: usize) -> Vec<RouteEntry> {
        let lower = match cursor {
            Some((user, _)) => Bound::Included(user),
            None => Bound::Unbounded,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        let range = self.order.range::<str, _>((lower, Bound::Unbounded));
        'users: for (index, (user, slots)) in range.enumerate() {
            debug_assert_eq!(self.users.get(user), Some(slots), "index in step");
            // The range starts at the cursor's user, so only its first user can be the cursor's.
            let done_through = match cursor {
                Some((cursor_user, cursor_ct)) if index == 0 && **user == *cursor_user => {
                    Some(cursor_ct)
                }
                _ => None,
            };
            for (ct, conn) in slots.routes() {
                if done_through.is_some_and(|done| ct <= done) {
                    continue;
                }
                if out.len() >= limit {
                    break 'users;
                }
                out.push(RouteEntry {
                    user_id: user.clone(),
                    client_type: ct,
                    conn,
                });
            }
        }
        out
    }

    /// Every route (for invariant checks and admin views), in (user id, client type) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ClientType, ConnId)> {
        self.order
            .iter()
            .flat_map(|(user, slots)| slots.routes().map(move |(ct, conn)| (&**user, ct, conn)))
    }
}

#[cfg(test)]
mod tests {
    /// The route index's hash is SipHash-1-3 (the published values under the all-zero key,
    /// written most significant byte first) and depends on its keys and on every byte.
    #[test]
    fn the_route_hash_is_keyed_siphash_1_3() {
        use std::hash::{BuildHasher, Hasher};
        for (input, output) in [
            (&b""[..], [0xd1, 0xfb, 0xa7, 0x62, 0x15, 0x0c, 0x53, 0x2c]),
            (b"siphash", [0x82, 0x64, 0xce, 0xec, 0xcb, 0x16, 0xbc, 0xbe]),
        ] {
            let mut h = RouteHasher { k0: 0, k1: 0 }.build_hasher();
            h.write(input);
            assert_eq!(h.finish(), u64::from_be_bytes(output), "{input:?}");
        }
        let hash = |k0, k1, text: &str| RouteHasher { k0, k1 }.hash_one(text);
        assert_ne!(hash(1, 2, "user-1"), hash(1, 3, "user-1"));
        assert_ne!(hash(1, 2, "user-1"), hash(1, 2, "user-2"));
        assert_ne!(hash(1, 2, "user-1"), hash(1, 2, "user-1\u{0}"));
    }

    use super::*;

    #[test]
    fn client_type_from_os_name() {
        assert_eq!(ClientType::from_os_name("Android"), ClientType::Mobile);
        assert_eq!(ClientType::from_os_name("iOS"), ClientType::Mobile);
        assert_eq!(ClientType::from_os_name("windows"), ClientType::Pc);
        assert_eq!(ClientType::from_os_name("MacOS"), ClientType::Pc);
        assert_eq!(ClientType::from_os_name("linux"), ClientType::Pc);
        assert_eq!(ClientType::from_os_name("web"), ClientType::Web);
        assert_eq!(ClientType::from_os_name("h5"), ClientType::Web);
        assert_eq!(ClientType::from_os_name("tizen"), ClientType::Unknown);
        for ct in [
            ClientType::Mobile,
            ClientType::Pc,
            ClientType::Web,
            ClientType::Unknown,
        ] {
            assert_eq!(ClientType::from_code(ct.code()), Some(ct));
        }
        assert_eq!(ClientType::from_code(0), None);
    }

    /// A packed slot keeps every connection id, 0 included, apart from an empty slot.
    #[test]
    fn packed_slots_keep_every_connection_id() {
        let mut packed = Packed::default();
        assert_eq!(packed.routes().count(), 0);
        for (ct, id) in ClientType::ALL.into_iter().zip([0, 1, u64::MAX - 1, 7]) {
            assert_eq!(packed.replace(ct, Some(ConnId(id))), None);
        }
        assert_eq!(packed.get(ClientType::Mobile), Some(ConnId(0)));
        assert_eq!(packed.get(ClientType::Web), Some(ConnId(u64::MAX - 1)));
        assert_eq!(
            packed.replace(ClientType::Mobile, None),
            Some(ConnId(0)),
            "the slot gives back what it held"
        );
        assert_eq!(packed.get(ClientType::Mobile), None);
        for ct in [ClientType::Pc, ClientType::Web, ClientType::Unknown] {
            packed.replace(ct, None);
        }
        assert_eq!(packed.routes().count(), 0);
    }

    /// One route is held inline in 16 bytes; a second type boxes the slots, and they go back
    /// inline when one route is left.
    #[test]
    fn one_route_is_inline_and_more_are_boxed() {
        assert_eq!(std::mem::size_of::<Slots>(), 16);
        let mut slots = Slots::One(ClientType::Pc, ConnId(0));
        assert_eq!(slots.insert(ClientType::Pc, ConnId(1)), Some(ConnId(0)));
        assert_eq!(slots, Slots::One(ClientType::Pc, ConnId(1)));
        assert_eq!(slots.insert(ClientType::Mobile, ConnId(2)), None);
        assert!(matches!(slots, Slots::Many(_)));
        assert_eq!(
            slots.routes().collect::<Vec<_>>(),
            vec![(ClientType::Mobile, ConnId(2)), (ClientType::Pc, ConnId(1))]
        );
        assert_eq!(slots.remove_if(ClientType::Mobile, ConnId(9)), Some(false));
        assert_eq!(slots.remove_if(ClientType::Mobile, ConnId(2)), Some(true));
        assert_eq!(slots, Slots::One(ClientType::Pc, ConnId(1)));
        assert_eq!(slots.remove_if(ClientType::Web, ConnId(1)), Some(false));
        assert_eq!(
            slots.remove_if(ClientType::Pc, ConnId(1)),
            None,
            "no route left"
        );
    }

    #[test]
    fn one_connection_per_user_and_type_and_resumable_batches() {
        let mut t = RouteTable::new();
        assert_eq!(t.insert("u1", ClientType::Mobile, ConnId(1)), None);
        assert_eq!(t.insert("u1", ClientType::Pc, ConnId(2)), None);
        assert_eq!(
            t.insert("u1", ClientType::Mobile, ConnId(3)),
            Some(ConnId(1))
        );
        assert_eq!(t.get("u1", ClientType::Mobile), Some(ConnId(3)));
        assert!(
            !t.remove_if("u1", ClientType::Mobile, ConnId(1)),
            "stale owner cannot remove"
        );
        assert_eq!(
            t.of_user("u1").collect::<Vec<_>>(),
            vec![(ClientType::Mobile, ConnId(3)), (ClientType::Pc, ConnId(2))]
        );
        t.insert("u0", ClientType::Web, ConnId(4));
        t.insert("u2", ClientType::Web, ConnId(5));
        assert_eq!(t.len(), 4);
        let first = t.batch_after(None, 2);
        assert_eq!(
            first.iter().map(|e| e.conn).collect::<Vec<_>>(),
            vec![ConnId(4), ConnId(3)]
        );
        t.remove_if("u1", ClientType::Pc, ConnId(2));
        t.insert("u1", ClientType::Web, ConnId(6));
        let last = &first[1];
        let rest = t.batch_after(Some((&last.user_id, last.client_type)), 10);
        assert_eq!(
            rest.iter().map(|e| e.conn).collect::<Vec<_>>(),
            vec![ConnId(6), ConnId(5)]
        );
        assert_eq!(t.len(), 4);
        assert_eq!(t.user_count(), 3);
    }

    /// One step of the model test: a bind or an unbind of (user, client type, connection).
    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, usize, u64),
        RemoveIf(u8, usize, u64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..6, 0usize..4, 0u64..8).prop_map(|(u, ct, c)| Step::Insert(u, ct, c)),
            (0u8..6, 0usize..4, 0u64..8).prop_map(|(u, ct, c)| Step::RemoveIf(u, ct, c)),
        ]
    }

    proptest::proptest! {
        /// Any sequence of binds and unbinds leaves the table answering as a plain ordered
        /// map of (user, client type) → connection: lookups, a user's routes, the walk in
        /// order, the counts; each call returns what the map says it replaced or removed.
        #[test]
        fn the_table_answers_as_an_ordered_map(steps in proptest::collection::vec(step(), 0..60)) {
            use std::collections::BTreeMap;
            let mut t = RouteTable::new();
            let mut model: BTreeMap<(String, ClientType), ConnId> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Insert(u, ct, c) => {
                        let key = (format!("u{u}"), ClientType::ALL[ct]);
                        let got = t.insert(&key.0, key.1, ConnId(c));
                        proptest::prop_assert_eq!(got, model.insert(key, ConnId(c)));
                    }
                    Step::RemoveIf(u, ct, c) => {
                        let key = (format!("u{u}"), ClientType::ALL[ct]);
                        let expected = model.get(&key) == Some(&ConnId(c));
                        if expected {
                            model.remove(&key);
                        }
                        proptest::prop_assert_eq!(t.remove_if(&key.0, key.1, ConnId(c)), expected);
                    }
                }
                proptest::prop_assert_eq!(t.len(), model.len());
                let users: std::collections::BTreeSet<&String> = model.keys().map(|(u, _)| u).collect();
                proptest::prop_assert_eq!(t.user_count(), users.len());
            }
            let walked: Vec<(String, ClientType, ConnId)> =
                t.iter().map(|(u, ct, c)| (u.to_owned(), ct, c)).collect();
            let expected: Vec<(String, ClientType, ConnId)> =
                model.iter().map(|((u, ct), c)| (u.clone(), *ct, *c)).collect();
            proptest::prop_assert_eq!(walked, expected);
            for u in 0u8..6 {
                let user = format!("u{u}");
                let routes: Vec<(ClientType, ConnId)> = t.of_user(&user).collect();
                let expected: Vec<(ClientType, ConnId)> = model
                    .iter()
                    .filter(|((mu, _), _)| *mu == user)
                    .map(|((_, ct), c)| (*ct, *c))
                    .collect();
                proptest::prop_assert_eq!(&routes, &expected);
                for ct in ClientType::ALL {
                    proptest::prop_assert_eq!(t.get(&user, ct), model.get(&(user.clone(), ct)).copied());
                }
            }
        }

        /// Walking the table in batches of any size, from the start or from any route,
        /// visits exactly the routes after the cursor, in (user, client type) order.
        #[test]
        fn batches_resume_after_the_cursor(
            routes in proptest::collection::vec((0u8..12, 0usize..4), 0..40),
            limit in 1usize..7,
            start in proptest::option::of((0u8..12, 0usize..4)),
        ) {
            let mut t = RouteTable::new();
            for (i, (user, ct)) in routes.iter().enumerate() {
                t.insert(&format!("u{user:02}"), ClientType::ALL[*ct], ConnId(i as u64));
            }
            let all: Vec<(String, ClientType, ConnId)> =
                t.iter().map(|(u, ct, c)| (u.to_owned(), ct, c)).collect();
            let start = start.map(|(user, ct)| (format!("u{user:02}"), ClientType::ALL[ct]));
            let expected: Vec<ConnId> = all
                .iter()
                .filter(|(u, ct, _)| start.as_ref().is_none_or(|(su, sct)| (u, ct) > (su, sct)))
                .map(|(_, _, c)| *c)
                .collect();
            let mut cursor = start;
            let mut walked = Vec::new();
            loop {
                let batch = t.batch_after(cursor.as_ref().map(|(u, ct)| (u.as_str(), *ct)), limit);
                proptest::prop_assert!(batch.len() <= limit);
                let Some(last) = batch.last() else { break };
                cursor = Some((last.user_id.to_string(), last.client_type));
                walked.extend(batch.iter().map(|e| e.conn));
            }
            proptest::prop_assert_eq!(walked, expected);
        }
    }
}
