//! The simulated cluster over a range of seeds: `MADSIM_TEST_SEED` (first seed),
//! `MADSIM_TEST_NUM` (how many), `MADSIM_TEST_JOBS` (in parallel). See `sim/README.md`.
#![cfg(madsim)]

use pushgate_sim::summary;

#[madsim::test]
async fn world() {
    let report = pushgate_sim::run().await;
    let failed = summary::record(&report, "sim");
    let known = summary::known_bug(report.seed);
    if !report.violations.is_empty() && known.is_none() && !summary::keep_going() {
        panic!("{}", summary::failure(&report, "sim"));
    }
    if let Some(failed) = failed {
        panic!("seeds failed: {failed:?}");
    }
}
