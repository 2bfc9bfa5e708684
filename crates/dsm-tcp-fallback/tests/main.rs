//! Integration tests of the io_uring TCP transport: real sockets on loopback, real processes.

// Test patterns fold ranks, indices and sequence numbers into bytes on purpose.
#![allow(clippy::cast_possible_truncation)]

mod common;
mod concurrent;
mod failure;
mod hostile;
mod mesh;
