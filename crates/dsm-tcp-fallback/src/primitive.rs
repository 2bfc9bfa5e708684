//! The lock and flag the send lanes use: std's normally, loom's model under `cfg(loom)` so that the
//! model checker sees every interleaving of senders and the transport thread
//! (`RUSTFLAGS="--cfg loom" cargo test -p dsm-tcp-fallback --release --test loom`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
