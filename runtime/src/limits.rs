//! The node's limits as the runtime enforces and reports them: the per-source-address
//! connection limits of the connection port (open connections, new connections per second),
//! the count of every limit hit (the runtime's own and the core's, read from its events), one
//! rate-limited log line per limit, and the listing behind `GET /v1/limits`.
//!
//! Each hit adds one to `pushgate_limit_hits_total{limit=NAME}` and to the counter
//! `/v1/limits` shows; the first hit of a limit logs a warning, later ones at most one line
//! every [`LOG_INTERVAL_MS`] with the number of hits in between.
use crate::access::AllowList;
use pushgate_core::status::{Busy, Reason};
use pushgate_core::{BindCheckOutcome, BindField, CloseReason, Event};
use rustc_hash::FxHashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// Shortest time between two log lines of one limit.
pub const LOG_INTERVAL_MS: u64 = 10_000;

/// Most source addresses tracked for the new-connection rate in one second; beyond it the
/// window starts over early (memory stays bounded whatever the number of sources).
const MAX_RATE_ENTRIES: usize = 65_536;

/// Every limit that is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `net.max_connections`: the node holds its maximum of phones.
    Connections,
    /// `limits.max_connections_per_address`.
    ConnectionsPerAddress,
    /// `limits.new_connections_per_second_per_address`.
    NewConnectionsPerAddress,
    /// `core.handshake_deadline_ms`: a connection did not finish its handshake in time.
    HandshakeDeadline,
    /// `core.bind_deadline_ms`: a handshaken connection sent no BIND in time.
    BindDeadline,
    /// `core.max_packet_bytes`: a frame (phone or gateway) was too large or malformed.
    FrameSize,
    /// `limits.max_user_id_bytes`: a BIND's user id was too long.
    UserIdLength,
    /// `limits.max_tags_bytes`: a BIND's tags were too long.
    TagsLength,
    /// `security.bind_check_max_in_flight`: a bind found too many bind checks in flight.
    BindChecks,
    /// `net.write_hard_limit_bytes`: a phone did not read its queued bytes.
    PhoneQueuedBytes,
    /// `limits.max_gateway_queued_bytes`: a PushClient did not read its statuses.
    GatewayQueuedBytes,
    /// `limits.max_gateway_connections`.
    GatewayConnections,
    /// `limits.max_pending_pushes`: a push was refused as "server busy".
    PendingPushes,
    /// `limits.max_broadcasts`: a broadcast was refused as "server busy".
    Broadcasts,
    /// A gateway connection without a valid token (or from a source not allowed).
    GatewayAuth,
    /// An admin API request without a valid bearer token.
    AdminAuth,
}

impl Limit {
    pub const ALL: [Limit; 16] = [
        Limit::Connections,
        Limit::ConnectionsPerAddress,
        Limit::NewConnectionsPerAddress,
        Limit::HandshakeDeadline,
        Limit::BindDeadline,
        Limit::FrameSize,
        Limit::UserIdLength,
        Limit::TagsLength,
        Limit::BindChecks,
        Limit::PhoneQueuedBytes,
        Limit::GatewayQueuedBytes,
        Limit::GatewayConnections,
        Limit::PendingPushes,
        Limit::Broadcasts,
        Limit::GatewayAuth,
        Limit::AdminAuth,
    ];

    /// The metric label and the `/v1/limits` key.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::ConnectionsPerAddress => "connections-per-address",
            Limit::NewConnectionsPerAddress => "new-connections-per-second-per-address",
            Limit::HandshakeDeadline => "handshake-deadline",
            Limit::BindDeadline => "bind-deadline",
            Limit::FrameSize => "frame-size",
            Limit::UserIdLength => "user-id-length",
            Limit::TagsLength => "tags-length",
            Limit::BindChecks => "bind-checks",
            Limit::PhoneQueuedBytes => "phone-queued-bytes",
            Limit::GatewayQueuedBytes => "gateway-queued-bytes",
            Limit::GatewayConnections => "gateway-connections",
            Limit::PendingPushes => "pending-pushes",
            Limit::Broadcasts => "broadcasts",
            Limit::GatewayAuth => "gateway-auth",
            Limit::AdminAuth => "admin-auth",
        }
    }

    /// The configuration key that sets it.
    pub fn key(self) -> &'static str {
        match self {
            Limit::Connections => "net.max_connections",
            Limit::ConnectionsPerAddress => "limits.max_connections_per_address",
            Limit::NewConnectionsPerAddress => "limits.new_connections_per_second_per_address",
            Limit::HandshakeDeadline => "core.handshake_deadline_ms",
            Limit::BindDeadline => "core.bind_deadline_ms",
            Limit::FrameSize => "core.max_packet_bytes",
            Limit::UserIdLength => "limits.max_user_id_bytes",
            Limit::TagsLength => "limits.max_tags_bytes",
            Limit::BindChecks => "security.bind_check_max_in_flight",
            Limit::PhoneQueuedBytes => "net.write_hard_limit_bytes",
            Limit::GatewayQueuedBytes => "limits.max_gateway_queued_bytes",
            Limit::GatewayConnections => "limits.max_gateway_connections",
            Limit::PendingPushes => "limits.max_pending_pushes",
            Limit::Broadcasts => "limits.max_broadcasts",
            Limit::GatewayAuth => "security.gateway_tokens / security.gateway_allow",
            Limit::AdminAuth => "security.admin_tokens",
        }
    }

    /// The limit a core event reports as hit, if any.
    pub fn of_event(event: &Event) -> Option<Limit> {
        match event {
            Event::Closed { reason, .. } => match reason {
                CloseReason::ServerFull => Some(Limit::Connections),
                CloseReason::HandshakeTimeout => Some(Limit::HandshakeDeadline),
                CloseReason::BindTimeout => Some(Limit::BindDeadline),
                CloseReason::BadFrame => Some(Limit::FrameSize),
                CloseReason::SlowConsumer => Some(Limit::PhoneQueuedBytes),
                _ => None,
            },
            Event::DecodeError {
                kind: "gateway-frame",
            } => Some(Limit::FrameSize),
            Event::BindTooLong { field, .. } => Some(match field {
                BindField::UserId => Limit::UserIdLength,
                BindField::Tags => Limit::TagsLength,
            }),
            Event::BindChecked {
                outcome: BindCheckOutcome::Busy,
                ..
            } => Some(Limit::BindChecks),
            Event::PushFinished {
                reason: Some(Reason::Busy(busy)),
                ..
            }
            | Event::BroadcastFinished {
                reason: Some(Reason::Busy(busy)),
                ..
            } => Some(match busy {
                Busy::PendingPushes => Limit::PendingPushes,
                Busy::Broadcasts => Limit::Broadcasts,
            }),
            _ => None,
        }
    }
}

/// How many times each limit was hit, and when each last logged.
#[derive(Debug)]
pub struct LimitCounters {
    start: Instant,
    hits: [AtomicU64; Limit::ALL.len()],
    /// Per limit: the milliseconds since `start` of its last log line, plus one (0 = never).
    logged_at_ms: [AtomicU64; Limit::ALL.len()],
    /// Per limit: the hit count at its last log line.
    logged_hits: [AtomicU64; Limit::ALL.len()],
}

impl Default for LimitCounters {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            hits: Default::default(),
            logged_at_ms: Default::default(),
            logged_hits: Default::default(),
        }
    }
}

impl LimitCounters {
    /// One hit of `limit`, with what it concerns (`detail`: an address, a connection) for the
    /// log line.
    pub fn hit(&self, limit: Limit, detail: &dyn std::fmt::Display) {
        let i = limit as usize;
        let hits = self.hits[i].fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::limit_hit(limit.name());
        let now_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.logged_at_ms[i].load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < LOG_INTERVAL_MS {
            return;
        }
        if self.logged_at_ms[i]
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread logs this one
        }
        let before = self.logged_hits[i].swap(hits, Ordering::Relaxed);
        tracing::warn!(
            limit = limit.name(),
            key = limit.key(),
            hits_since_last_line = hits - before,
            hits_total = hits,
            "limit hit: {detail}"
        );
    }

    /// The hits of `limit` so far.
    pub fn hits(&self, limit: Limit) -> u64 {
        self.hits[limit as usize].load(Ordering::Relaxed)
    }

    /// Counts the limit a core event reports, if any.
    pub fn record_event(&self, event: &Event) {
        if let Some(limit) = Limit::of_event(event) {
            let detail: &dyn std::fmt::Display = match event {
                Event::Closed { conn, .. }
                | Event::BindTooLong { conn, .. }
                | Event::BindChecked { conn, .. } => conn,
                _ => &"refused",
            };
            self.hit(limit, detail);
        }
    }
}

/// Why a connection from some address was refused before it reached the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyOpen,
    TooFast,
}

impl Refusal {
    /// The limit that refused.
    pub fn limit(self) -> Limit {
        match self {
            Refusal::TooManyOpen => Limit::ConnectionsPerAddress,
            Refusal::TooFast => Limit::NewConnectionsPerAddress,
        }
    }
}

/// The per-source-address limits of the connection port.
#[derive(Debug)]
pub struct AddressLimits {
    max_open: usize,
    max_new_per_second: u32,
    exempt: AllowList,
    state: Mutex<AddressState>,
}

#[derive(Debug, Default)]
struct AddressState {
    /// Open connections by source (entries at zero are removed).
    open: FxHashMap<IpAddr, usize>,
    /// New connections by source in the current one-second window.
    window_start: Option<Instant>,
    new_in_window: FxHashMap<IpAddr, u32>,
}

impl AddressLimits {
    /// Limits of `max_open` connections and `max_new_per_second` new ones per address (0 =
    /// none), sources in `exempt` skipped.
    pub fn new(max_open: usize, max_new_per_second: u32, exempt: AllowList) -> Arc<Self> {
        Arc::new(Self {
            max_open,
            max_new_per_second,
            exempt,
            state: Mutex::default(),
        })
    }

    /// Admits a new connection from `ip` at `now` (its slot is held until the returned guard
    /// drops), or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<AddressSlot, Refusal> {
        let ip = crate::access::canonical(ip);
        if (self.max_open == 0 && self.max_new_per_second == 0) || self.exempt.contains(ip) {
            return Ok(AddressSlot(None));
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.max_new_per_second > 0 {
            let window_over = state
                .window_start
                .is_none_or(|start| now.saturating_duration_since(start).as_millis() >= 1000);
            if window_over || state.new_in_window.len() >= MAX_RATE_ENTRIES {
                state.window_start = Some(now);
                state.new_in_window.clear();
            }
            let count = state.new_in_window.entry(ip).or_insert(0);
            if *count >= self.max_new_per_second {
                return Err(Refusal::TooFast);
            }
            *count += 1;
        }
        if self.max_open > 0 {
            let open = state.open.entry(ip).or_insert(0);
            if *open >= self.max_open {
                return Err(Refusal::TooManyOpen);
            }
            *open += 1;
            return Ok(AddressSlot(Some((self.clone(), ip))));
        }
        Ok(AddressSlot(None))
    }

    /// Connections open from `ip` (counted ones only).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.open.get(&ip).copied().unwrap_or(0)
    }

    fn release(&self, ip: IpAddr) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = state.open.get_mut(&ip) {
            *open -= 1;
            if *open == 0 {
                state.open.remove(&ip);
            }
        }
    }
}

/// A counted connection's place in its address's limit, given back when dropped.
#[derive(Debug)]
pub struct AddressSlot(Option<(Arc<AddressLimits>, IpAddr)>);

impl AddressSlot {
    /// A slot of no address limit (for tests of what holds one).
    #[cfg(test)]
    pub(crate) fn unlimited() -> Self {
        Self(None)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((limits, ip)) = self.0.take() {
            limits.release(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn open_connections_per_address_are_bounded_and_given_back() {
        let limits = AddressLimits::new(2, 0, AllowList::default());
        let now = Instant::now();
        let a = limits.admit(ip("192.0.2.1"), now).unwrap();
        let _b = limits.admit(ip("192.0.2.1"), now).unwrap();
        assert_eq!(
            limits.admit(ip("192.0.2.1"), now).unwrap_err(),
            Refusal::TooManyOpen
        );
        let _other = limits
            .admit(ip("192.0.2.2"), now)
            .expect("other sources unaffected");
        drop(a);
        let _c = limits
            .admit(ip("::ffff:192.0.2.1"), now)
            .expect("a slot came back");
        assert_eq!(limits.open_from(ip("192.0.2.1")), 2);
    }

    #[test]
    fn new_connections_per_second_are_bounded_per_window() {
        let limits = AddressLimits::new(0, 3, AllowList::default());
        let start = Instant::now();
        for _ in 0..3 {
            drop(limits.admit(ip("192.0.2.1"), start).unwrap());
        }
        assert_eq!(
            limits.admit(ip("192.0.2.1"), start).unwrap_err(),
            Refusal::TooFast
        );
        assert!(limits.admit(ip("192.0.2.9"), start).is_ok());
        let later = start + Duration::from_millis(1000);
        assert!(limits.admit(ip("192.0.2.1"), later).is_ok(), "a new second");
    }

    #[test]
    fn exempt_sources_skip_both_limits() {
        let exempt = AllowList::parse(&["127.0.0.0/8"], "k").unwrap();
        let limits = AddressLimits::new(1, 1, exempt);
        let now = Instant::now();
        let held: Vec<_> = (0..10)
            .map(|_| limits.admit(ip("127.0.0.1"), now).unwrap())
            .collect();
        assert_eq!(held.len(), 10);
        assert_eq!(limits.open_from(ip("127.0.0.1")), 0);
    }

    #[test]
    fn hits_are_counted_per_limit() {
        let counters = LimitCounters::default();
        for _ in 0..3 {
            counters.hit(Limit::GatewayAuth, &"203.0.113.1");
        }
        counters.record_event(&Event::Closed {
            conn: pushgate_core::ConnId(1),
            reason: CloseReason::HandshakeTimeout,
        });
        assert_eq!(counters.hits(Limit::GatewayAuth), 3);
        assert_eq!(counters.hits(Limit::HandshakeDeadline), 1);
        assert_eq!(counters.hits(Limit::AdminAuth), 0);
        counters.record_event(&Event::BindTooLong {
            conn: pushgate_core::ConnId(2),
            field: BindField::Tags,
        });
        assert_eq!(counters.hits(Limit::TagsLength), 1);
        assert_eq!(counters.hits(Limit::UserIdLength), 0);
    }
}
