//! Integration tests of dsm-views: one binary, one module per concept.
//!
//! Every random choice comes from a seed that is printed first; set `DSM_VIEWS_SEED` to
//! replay a failure. The crash tests re-execute this binary as a child (see `crash.rs`).
// Test files are a few hundred KiB on a 64-bit host; patterns are bytes on purpose.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;
mod confine;
mod crash;
mod diff;
mod journal;
mod master;
mod master_file;
mod table;
