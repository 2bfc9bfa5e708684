//! The lock the send lanes use: std's normally, loom's model under `cfg(loom)` so that the
//! model checker sees every interleaving of senders and the transport thread
//! (`RUSTFLAGS="--cfg loom" cargo test -p dsm-tcp-fallback --release --test loom`).

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
