//! The fuzz targets of `fuzz/` run inside `cargo test`, for CI without cargo-fuzz.
//!
//! `fuzz/src/lib.rs` holds the checks; cargo-fuzz calls them from `fuzz/fuzz_targets/*.rs` and
//! this file compiles the very same source as a module. Each target gets:
//! - a replay of its seed corpus `fuzz/corpus/<target>/` (real captured MPush traffic), and
//! - a bolero run: any `corpus`/`crashes` files bolero keeps beside this file, then random inputs
//!   for one second (`BOLERO_RANDOM_TEST_TIME_MS` / `BOLERO_RANDOM_ITERATIONS` change that; a
//!   failure prints the `BOLERO_RANDOM_SEED` that replays it).
#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::PathBuf;

/// Runs `check` on every file of `fuzz/corpus/<target>/`; returns how many there were.
fn replay_corpus(target: &str, check: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    for path in &paths {
        let input = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        // Name the input if the check panics.
        eprintln!("replaying {}", path.display());
        check(&input);
    }
    paths.len()
}

#[test]
fn frame_corpus() {
    assert!(
        replay_corpus("frame", targets::frame) > 0,
        "empty frame corpus"
    );
}

#[test]
fn message_corpus() {
    assert!(
        replay_corpus("message", targets::message) > 0,
        "empty message corpus"
    );
}

#[test]
fn pipeline_corpus() {
    assert!(
        replay_corpus("pipeline", targets::pipeline) > 0,
        "empty pipeline corpus"
    );
}

#[test]
fn frame() {
    bolero::check!().for_each(|input: &[u8]| targets::frame(input));
}

#[test]
fn message() {
    bolero::check!().for_each(|input: &[u8]| targets::message(input));
}

#[test]
fn pipeline() {
    bolero::check!().for_each(|input: &[u8]| targets::pipeline(input));
}
