//! Every seed that ever failed, run every time (also by the plain `cargo test` of the sim
//! package under `--cfg madsim`). A seed stays here after its bug is fixed. Seeds whose bug is
//! still open are also listed in `sim/src/known.rs`: their violations are printed, not failed.
//!
//! To add one: append `(seed, "what it found")` below. The descriptions say what the seed found
//! when it was added; a change of the simulator or of the nodes sends a seed down another path. Replay one with
//! `PUSHGATE_SIM_TRACE=1 MADSIM_TEST_SEED=<seed> ... cargo test -p pushgate-sim --test sim`.
#![cfg(madsim)]

use pushgate_sim::summary;

/// (seed, what it found).
const REGRESSIONS: &[(u64, &str)] = &[
    (
        8,
        "oracle: two concurrent binds of one user; the kick check must accept a concurrent binder",
    ),
    (
        25,
        "B1: delayed PutRoute from a partitioned node overwrote the newer route (liveness)",
    ),
    (
        38,
        "B2: broadcast delivered twice to a connection that re-bound during the broadcast",
    ),
    (
        43,
        "oracle: bytes that met a clog arrive up to 10 s after it (madsim retry backoff)",
    ),
    (
        68,
        "B1: a stale PutRoute's Previous made its node kick the live connection",
    ),
    (
        70,
        "B1: store route left offline while the user is bound elsewhere (offline for a live user)",
    ),
    (
        122,
        "B1: SetRouteOffline retried after a timeout landed after the same connection's re-bind",
    ),
    (
        179,
        "oracle: bytes to a phone lost when it closes while they are stuck in a clog",
    ),
    (
        309,
        "B1: a stale online route names a connection nobody holds",
    ),
    (
        21,
        "B1: republish_routes after the store came back overwrote a newer route and kicked it",
    ),
    (
        767,
        "oracle: a phone crashed after its client auto-ACKed a push, before its app saw it",
    ),
    (
        644,
        "B3: a BIND processed after a node pause outranked the device's newer connection elsewhere, kicked it, and left the route offline",
    ),
    (
        106,
        "B3: a late bind from a paused node (presumed like 644)",
    ),
    (
        661,
        "B4: a route write that timed out during a store outage was never written again (liveness)",
    ),
    (
        495,
        "B4: a node's route writes failed for good behind a stalled store link; pushes elsewhere saw the user offline until they were written again",
    ),
    (
        827,
        "B4: route writes lost to a partition and an outage; pushes elsewhere saw the user offline until they were written again",
    ),
    (
        175,
        "B5: an offline mark for a re-bind whose write never landed missed the same connection's older route (liveness)",
    ),
    (
        81246,
        "B5: an offline mark for a re-bind whose write never landed missed the same connection's older route (liveness)",
    ),
    (
        212,
        "B6: a kick although nobody bound that user and type after (2-kick-only-when-superseded)",
    ),
    (
        550,
        "oracle: a stale route read answered after its push timed out is dropped, not marked offline",
    ),
    (
        5000574,
        "B6: a bind read just before its phone's close (clogged link) kicked the live connection on another node",
    ),
    (
        5000784,
        "B6: a bind that waited in a paused node kicked the live connection on another node",
    ),
    (
        5001300,
        "B6: a bind that waited in a paused node kicked the live connection on another node",
    ),
    (
        6000838,
        "B6: a bind that waited in a paused node kicked the live connection on another node",
    ),
    (
        7001417,
        "B7: a displaced route put back after its own connection's offline mark (liveness)",
    ),
    (
        7001821,
        "B7: a displaced route put back after its own connection's offline mark (liveness)",
    ),
    (
        9100904,
        "B9 (oracle): a store outage then a node-store clog compound the retry backoff; a route landed 8 s after (offline)",
    ),
    (
        7001649,
        "B9: offline after a store outage (as first recorded; an older tree)",
    ),
    (
        12001266,
        "B9 (oracle): two node-store partitions in a row held the store link 6 s past the second (offline)",
    ),
    (
        9100504,
        "B10 (oracle): back-to-back PushClient-node clogs held pushes 7 s past the second (no status)",
    ),
    (
        5001475,
        "B10: no status on an open gateway connection after partition + loss (as first recorded; an older tree)",
    ),
    (
        12001709,
        "B10 (oracle): two PushClient-node partitions in a row held pushes 6.7 s past the second (no status)",
    ),
    (
        12002418,
        "B11: a bind's route write answered after its timeout; the retry found the bind itself, so no kick notice went out (liveness: two nodes hold the user)",
    ),
    (
        12000984,
        "B11: a late bind answer acted on after the connection gave the user up put back a route whose connection had ended (liveness)",
    ),
    (
        12002911,
        "B11: a late bind answer acted on after the connection gave the user up put back a route whose connection had ended (liveness)",
    ),
    (
        14001466,
        "B13 (harness): a push queued behind a KICK was auto-ACKed by the device's client but never recorded as received (ack-success without receipt)",
    ),
    (
        12001850,
        "B12 (oracle): a BIND held back by a one-way clog reached its node after the phone gave up and kicked the local holder (2-kick-only-when-superseded)",
    ),
    (
        1,
        "B16 (clock-skew): a device moved from a node whose clock was ahead to one behind; its old route, offline, kept the new connection out and the device was kicked from its user (2-kick-only-when-superseded)",
    ),
    (
        23000664,
        "B17 (clock-skew): the same move while the old route was still online (its node had crashed); the clocks, drifted apart, decided against the device (2-kick-only-when-superseded)",
    ),
    (
        26000030,
        "B17: a device moved off a crashed node whose clock had drifted ahead and was kicked from its user",
    ),
    (
        26000611,
        "B18: a push naming no client type answered offline from a stale route here while the user was online elsewhere",
    ),
    (
        26002162,
        "B19: a route answer after its push timed out was dropped, leaving a stale route online",
    ),
    (
        27000827,
        "B20: a bind write held up past its bind's end landed and put the route back online",
    ),
    (
        28000133,
        "B17 margin tried: a late write of a given-up connection displaced the device's live connection",
    ),
    (
        28000246,
        "oracle: a push to a user whose other connection there stopped reading may rightly wait",
    ),
    (
        30001436,
        "B21: a live bind refused as stale against a newer bind that had ended was kicked",
    ),
    (
        1791379,
        "B22: a late write of a connection its device had replaced got into the device's offline route once its ended mark was evicted",
    ),
    (
        37001080,
        "B23: a bind re-stamped above an ended bind with the clock displaced a bind made after the ended one",
    ),
    (
        44002400,
        "B25: a restore forgot that the undone bind had ended; a held-up retry of its write landed online",
    ),
    (
        62001643,
        "B26: a late route write stamped by a clock ahead displaced the device's live connection on another node",
    ),
    (
        66002216,
        "B27: a bind's write held on a store link its node had replaced landed online after the bind's mark, sent on the new link, left the route's memory",
    ),
    (
        69000987,
        "B27: the same, another seed (a held write landed 2 s after the marks of the node's later binds)",
    ),
    (
        85002247,
        "B28: a bind whose user a newer bind on its node took before its answer put the connection it displaced elsewhere back instead of kicking it; two phones kept one user and type",
    ),
];

fn run_seed(seed: u64) -> pushgate_sim::RunReport {
    std::thread::spawn(move || {
        let runtime =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.block_on(pushgate_sim::run())
    })
    .join()
    .unwrap_or_else(|_| {
        panic!(
            "seed {seed} panicked; replay: {}",
            summary::replay_command(seed, "sim")
        )
    })
}

#[test]
fn regressions() {
    let mut failed = Vec::new();
    for (seed, what) in REGRESSIONS {
        let report = run_seed(*seed);
        match (report.violations.is_empty(), summary::known_bug(*seed)) {
            (true, _) => println!("regression seed {seed} ok ({what})"),
            (false, Some(bug)) => println!(
                "regression seed {seed} fails as known ({bug}): {}",
                report.violations[0]
            ),
            (false, None) => {
                println!("{}", summary::failure(&report, "sim"));
                failed.push(*seed);
            }
        }
    }
    assert!(failed.is_empty(), "regression seeds failed: {failed:?}");
}
