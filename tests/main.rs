//! Integration tests of the `dsm` crate: real processes on loopback.

mod api;
mod dsm_run;
mod examples;
mod membership;
mod mpirun;
mod util;
mod views;
