//! dsm's benchmark library: the suites behind `dsm-bench SUITE --json` and the statistics they
//! share. Criterion benches live in `benches/`, one per hot path.

pub mod stats;
pub mod suites;
