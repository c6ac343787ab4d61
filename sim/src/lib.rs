//! pushgate-sim: the deterministic simulation world (madsim) for pushgate clusters.
//!
//! Built with `RUSTFLAGS="--cfg madsim"`; the simulation tests live in `tests/` and compile to
//! nothing in a plain build. The world itself arrives with the simulation suite.
