//! dsm-rdma integration tests. They need an RDMA device: on a machine without one they print
//! a loud SKIP and pass, unless `DSM_REQUIRE_RDMA=1` (set by the Soft-RoCE rig, see
//! scripts/soft-roce-setup.sh), where a missing device fails them.

// Test patterns turn small page indices into bytes on purpose.
#![allow(clippy::cast_possible_truncation)]

mod support;

mod control;
mod errors;
mod pages;
mod processes;
