//! The summary of a run of many seeds (seeds, faults injected by kind, pushes by status,
//! invariant checks done), and the report of a failing seed with the command that replays it.
use crate::world::RunReport;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Default)]
struct Totals {
    seeds: u64,
    failed: Vec<u64>,
    known_failed: Vec<u64>,
    known_passed: Vec<u64>,
    faults: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
    checks: BTreeMap<String, u64>,
    virtual_ms: u64,
    pushes: u64,
    broadcasts: u64,
    connections: u64,
}

static TOTALS: Mutex<Option<Totals>> = Mutex::new(None);

/// The open bug `seed` is listed under (`PUSHGATE_SIM_IGNORE_KNOWN=1` ignores the list, to
/// regenerate it).
pub fn known_bug(seed: u64) -> Option<&'static str> {
    if std::env::var("PUSHGATE_SIM_IGNORE_KNOWN").is_ok_and(|v| !v.is_empty() && v != "0") {
        return None;
    }
    crate::known::known_failure(seed)
}

/// How many seeds this process runs (`MADSIM_TEST_NUM`, two runs for the determinism check).
fn expected_runs() -> u64 {
    let num = std::env::var("MADSIM_TEST_NUM")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1u64);
    if std::env::var("MADSIM_TEST_CHECK_DETERMINISM").is_ok() {
        num.max(2)
    } else {
        num
    }
}

/// The command that replays `seed` (add `PUSHGATE_SIM_TRACE=1` for the event trace).
pub fn replay_command(seed: u64, test: &str) -> String {
    format!("MADSIM_TEST_SEED={seed} RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim cargo test -p pushgate-sim --test {test} -- --nocapture")
}

/// Whether failing seeds are only reported and the run goes on (`PUSHGATE_SIM_KEEP_GOING=1`,
/// for soak runs): the test then fails once, after the last seed, listing every failed seed.
pub fn keep_going() -> bool {
    std::env::var("PUSHGATE_SIM_KEEP_GOING").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Adds a finished seed to the totals; prints the summary after the last one (or at a failure
/// that stops the run). Returns the failed seeds once the last run is in (keep-going mode).
pub fn record(report: &RunReport, test: &str) -> Option<Vec<u64>> {
    let mut guard = TOTALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let totals = guard.get_or_insert_with(Totals::default);
    totals.seeds += 1;
    let known = known_bug(report.seed);
    match (report.violations.is_empty(), known) {
        (false, Some(bug)) => {
            totals.known_failed.push(report.seed);
            println!(
                "seed {} fails as known ({bug}): {}",
                report.seed, report.violations[0]
            );
        }
        (false, None) => totals.failed.push(report.seed),
        (true, Some(bug)) => {
            totals.known_passed.push(report.seed);
            println!("seed {} is listed as failing ({bug}) but passes now: take it off sim/src/known.rs once the bug is fixed", report.seed);
        }
        (true, None) => {}
    }
    let failing = !report.violations.is_empty() && known.is_none();
    for (k, v) in &report.counts.faults {
        *totals.faults.entry((*k).to_owned()).or_default() += v;
    }
    for (k, v) in &report.counts.statuses {
        *totals.statuses.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &report.counts.checks {
        *totals.checks.entry((*k).to_owned()).or_default() += v;
    }
    totals.virtual_ms += report.virtual_ms;
    totals.pushes += report.pushes as u64;
    totals.broadcasts += report.broadcasts as u64;
    totals.connections += report.connections as u64;
    if std::env::var("PUSHGATE_SIM_STATS").is_ok() {
        // One machine-readable line per seed, for sim/soak.sh to add up.
        let join = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let faults: BTreeMap<String, u64> = report
            .counts
            .faults
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        let checks: BTreeMap<String, u64> = report
            .counts
            .checks
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        let status = match (report.violations.is_empty(), known) {
            (true, _) => "ok",
            (false, Some(_)) => "known",
            (false, None) => "FAILED",
        };
        println!(
            "SIMSTAT seed={} status={status} virtual_ms={} pushes={} broadcasts={} connections={} faults={} statuses={} checks={}",
            report.seed,
            report.virtual_ms,
            report.pushes,
            report.broadcasts,
            report.connections,
            join(&faults),
            join(&report.counts.statuses),
            join(&checks)
        );
    }
    if std::env::var("PUSHGATE_SIM_VERBOSE").is_ok() {
        println!(
            "seed {} {}: {} pushes, {} broadcasts, {} phone connections, {} virtual s | {}",
            report.seed,
            if report.violations.is_empty() {
                "ok"
            } else {
                "FAILED"
            },
            report.pushes,
            report.broadcasts,
            report.connections,
            report.virtual_ms / 1000,
            report.params
        );
    }
    if failing && keep_going() {
        println!(
            "seed {} FAILED: {} | replay: {}",
            report.seed,
            report.violations[0],
            replay_command(report.seed, test)
        );
    }
    let last = totals.seeds >= expected_runs();
    if last || (failing && !keep_going()) {
        println!("{}", render(totals, test));
    }
    (last && !totals.failed.is_empty()).then(|| totals.failed.clone())
}

fn render(t: &Totals, test: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== pushgate-sim summary ({test}) ==");
    let _ = writeln!(
        out,
        "seeds run: {} ({} failed{})",
        t.seeds,
        t.failed.len(),
        if t.failed.is_empty() {
            String::new()
        } else {
            format!(": {:?}", t.failed)
        }
    );
    if !t.known_failed.is_empty() || !t.known_passed.is_empty() {
        let _ = writeln!(
            out,
            "known open bugs: {} listed seeds failed as known, {} listed seeds passed",
            t.known_failed.len(),
            t.known_passed.len()
        );
    }
    let _ = writeln!(
        out,
        "simulated: {} virtual s, {} push requests, {} broadcasts, {} phone connections",
        t.virtual_ms / 1000,
        t.pushes,
        t.broadcasts,
        t.connections
    );
    let line = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(out, "faults injected: {}", line(&t.faults));
    let _ = writeln!(out, "pushes by status: {}", line(&t.statuses));
    let _ = write!(out, "invariant checks: {}", line(&t.checks));
    out
}

/// The failure message of a seed: its violations, the trace around the first one, and the
/// replay command.
pub fn failure(report: &RunReport, test: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pushgate-sim seed {} FAILED ({} violations); world: {}",
        report.seed,
        report.violations.len(),
        report.params
    );
    for v in report.violations.iter().take(10) {
        let _ = writeln!(out, "  - {v}");
    }
    let _ = writeln!(out, "trace around the first violation:\n{}", report.excerpt);
    let _ = writeln!(out, "replay: {}", replay_command(report.seed, test));
    let _ = write!(
        out,
        "trace:  PUSHGATE_SIM_TRACE=1 {}",
        replay_command(report.seed, test)
    );
    out
}
