//! Seeds that fail today because of open bugs in `core/` or `runtime/` (see `sim/README.md`,
//! "Known bugs"). They still run, in CI too: their violations are printed but do not fail the
//! test, and a seed of this list that passes is reported so it can be taken off the list once
//! its bug is fixed.
//!
//! Which seeds hit a bug depends on the code: any change in the behaviour of the nodes (or of
//! the simulator) sends the seeds down other paths. While a bug is open, regenerate the list
//! with `sim/soak.sh 1000 1 --known` (it prints the entries to paste here). Runs are deterministic,
//! so a seed takes the same path alone and inside a multi-seed batch.

/// Fixed (kept for the record): B0 nondeterminism (unbiased `select!`, OS-seeded node), B1
/// route writes applied out of order (routes now carry bind versions; the store keeps the
/// newest; offline marks and kick notices name the binding they mean), B2 a broadcast
/// delivered twice to a connection that re-bound (a broadcast remembers whom it reached), B3 a
/// bind processed late by a paused node outranked the device's newer connection elsewhere
/// (routes now carry the connection's age too, and between two connections of one device the
/// newer connection wins), B4 a route write or offline mark that failed for good was never sent
/// again, and a kicked binding stayed online in the store when the newer bind's write never
/// landed (failed route writes and offline marks are repaired every second; a kick marks the
/// kicked binding offline).
///
/// B5 an offline mark missed the same connection's older route (a mark now also ends older
/// binds of that connection), B6 a kick for a bind whose connection was already gone (such a
/// bind now kicks nobody and puts the displaced route back), B7 a route back online after its
/// connection's offline mark (a mark that misses is remembered in the stored route).
///
/// B9 / B10 were oracle false alarms (back-to-back clogs of one link compound madsim's retry
/// backoff; the settle time now counts from the first), B11 a bind's store answer that came
/// after its timeout was dropped, so the displaced connection was never kicked (a late answer
/// is now acted on), B12 an oracle false alarm (a BIND held back on its way to the node counts
/// as in flight until it is processed).
///
/// B14 a node's link to the store stayed queued behind a partition's backlog seconds after the
/// network healed, so a bind's route write landed late and pushes through other nodes found the
/// user offline (the link now gives up a connection that leaves a request unanswered and opens
/// a new one, as the Redis link does after an unanswered PING), B15 an oracle false alarm (a
/// route write still on its way when its node crashed landed after the crash; the route's bind
/// time, read from its version, now decides whether the crash came after it).
///
/// B16 a device moving from a node whose clock was ahead to one behind lost its user to its
/// own offline route (an offline route of the same device keeps no bind out now; nodes never
/// stamp versions below the ones they read from the store).
///
/// B17 a device's old route, still online (its node crashed), stamped by a clock ahead kept
/// the device's next connection out (nodes re-read the wall clock every second, so their
/// clocks disagree by NTP's error only, not by drift; within it a live connection may still be
/// refused as late once, and the device's next connection wins — the oracle allows that kick),
/// B18 a push naming no client type was answered offline from a stale route of the answering
/// node while the user was online elsewhere with another client type (the store hands the
/// asker an online route elsewhere first), B19 a stale route of a node stayed online when the
/// store's answer naming it came after the push or the read had timed out (late answers are
/// checked too), B20 a late write of a connection's earlier bind put the route back online
/// after its later bind had ended (a re-bind marks the bind it ends; a late answer showing
/// such a write takes it offline again).
///
/// B21 a bind refused as stale against a newer bind that had ended gave the user to nobody
/// (it binds again above the ended one), B22 a late write of a connection the device had
/// replaced came back online after its mark was evicted (an offline route of the same device
/// keeps such a write out by connection age), B23 a re-stamped bind displaced a bind made
/// after the ended one (the re-stamp is the version just above the ended bind), B24 a late
/// write of a bind whose offline mark another node's ended binds had pushed out of the
/// route's bounded memory landed online (the memory keeps each node's own share), B26 a late
/// route write stamped by a clock ahead displaced the device's live connection on another node
/// (across nodes, connection ages order two connections only beyond the clocks' margin), B27 a
/// bind's write held on a store link its node had replaced landed after the bind's offline
/// mark, sent on the new link, had been pushed out of the route's memory (a route remembers
/// each node's newest link and refuses ops from older ones), B28 a bind whose user a newer bind
/// on its node took before its answer put the connection it displaced elsewhere back instead
/// of kicking it (the store held the newer bind; two phones kept one user and type).
pub const KNOWN_FAILURES: &[(u64, &str)] = &[];

/// The open bug a seed is known to hit, if any.
pub fn known_failure(seed: u64) -> Option<&'static str> {
    KNOWN_FAILURES
        .iter()
        .find(|(s, _)| *s == seed)
        .map(|(_, bug)| *bug)
}
