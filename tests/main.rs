//! Integration tests of the `dsm` crate: real processes on loopback.

mod api;
mod collectives;
mod contain;
mod drops;
mod dsm_run;
mod examples;
mod membership;
mod memory;
mod mpirun;
mod scheduling;
mod security;
mod shm;
mod trace;
mod tracking;
mod util;
mod views;
