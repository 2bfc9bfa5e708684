//! dsm-locks: distributed locks and barriers for dsm, and the points where release
//! consistency happens.
//!
//! Two layers:
//!
//! * **Sans-IO engines** — [`LockEngine`] (every lock of one node) and [`BarrierEngine`]: events
//!   in (a local acquire or release, a peer's [`dsm_wire::SyncMsg`] message), [`Action`]s out
//!   (send a message, the lock is granted with write notices, a remote node waits, the barrier
//!   is done). No threads, sockets or clocks; `dsm-sim` runs many of them over a simulated
//!   network. Each lock uses one of two algorithms ([`LockKind`], chosen per lock, the same on
//!   every node):
//!   - Ricart–Agrawala: REQUEST (Lamport timestamp, node) to all others, enter on all REPLYs;
//!     2(N−1) messages per acquire, one round trip uncontended, one hop between holders.
//!   - Home-queue: the lock's home (`lock % N`) queues requests; 3 messages per acquire
//!     whatever N, one round trip uncontended, two hops between holders.
//!
//!   Barriers ([`BarrierKind`]) are a dissemination barrier (⌈log₂ N⌉ rounds, no coordinator)
//!   or a central counter at node 0. Both carry every node's notices (a page two nodes wrote
//!   twice) and the kind of collective call each node came from, and refuse an epoch the
//!   nodes reached from different calls. The runtime uses this same engine, central in small
//!   clusters (measured faster there) and dissemination above (`dsm::BarrierChoice`).
//! * **The thread-facing [`LockTable`]** — many threads of one node queue on one FIFO
//!   and the node takes part in the algorithm once for all of them. While a remote node waits,
//!   at most [`TableConfig::handoff_bound`] local critical sections pass before the node gives
//!   the lock up, so nobody starves. Guards release on drop; every wait has a timeout whose
//!   error names the lock and the nodes still awaited.
//!
//! # Release consistency
//! When a node gives a lock up (or enters a barrier) the table asks the runtime's
//! [`ReleaseConsistency::flush`] for the pages written in the interval (their diffs flushed to
//! the homes); the engine carries them in the REPLY / GRANT / barrier messages to the next
//! acquirers, each of which receives exactly the pages released since it last heard, and the
//! table calls [`ReleaseConsistency::invalidate`] with them before any thread enters.
//!
//! # Wiring (for the node runtime)
//! The runtime gives the table an [`Outbox`] — [`TransportOutbox`] sends over any
//! `dsm_core::Transport` — and feeds every incoming `Message::Sync` to [`LockTable::handle`]
//! from a thread that may block briefly: `handle` performs grants (calls
//! [`ReleaseConsistency::invalidate`], wakes the thread) and, when a grant arrives after every
//! local waiter timed out, gives the lock straight back (calls
//! [`ReleaseConsistency::flush`]). So `flush` must not wait for something only that same
//! thread delivers; with [`NoConsistency`] calling `handle` from the transport's sink is fine.
//! On `TransportEvent::PeerFailed` it calls [`LockTable::node_failed`], so that nobody waits
//! for the dead node any more.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use dsm_locks::{BarrierEngine, BarrierKind, LockEngine, LockKind, LockTable, NoConsistency,
//!                 Outbox, TableConfig};
//! use dsm_wire::{NodeId, SyncMsg};
//!
//! struct Net; // stands for the transport
//! impl Outbox for Net {
//!     fn send(&self, to: NodeId, message: SyncMsg) { /* transport.send(to, &Message::Sync(message)) */ }
//! }
//!
//! let (me, nodes) = (0, 4);
//! let table = Arc::new(LockTable::new(
//!     LockEngine::new(me, nodes, LockKind::RicartAgrawala),
//!     BarrierEngine::new(me, nodes, BarrierKind::Dissemination),
//!     Box::new(Net),
//!     Box::new(NoConsistency),
//!     TableConfig::default(),
//! ));
//! // Protocol thread: for each (from, Message::Sync(m)) received: table.handle(from, &m)?
//! {
//!     let _guard = table.try_acquire(7, Duration::from_secs(5))?; // critical section
//! } // released here
//! table.barrier()?;
//! # Ok::<(), dsm_locks::Error>(())
//! ```
//!
//! # Requirements
//! None beyond std: no kernel feature, no device.
//!
//! # Cargo features
//! None. Building with `RUSTFLAGS="--cfg loom"` swaps the local part's atomics and queue for
//! loom's models (see `primitive.rs`); `cargo test --release loom` then model-checks it.

mod action;
mod barrier;
mod engine;
mod error;
mod home;
mod hooks;
mod local;
mod notices;
mod primitive;
mod ra;
mod table;
mod transport;

pub use action::{Action, LockKind};
pub use barrier::{BarrierEngine, BarrierKind};
pub use engine::{DEFAULT_MAX_LOCKS, LockEngine};
pub use error::{Error, Result};
pub use hooks::{NoConsistency, Outbox, ReleaseConsistency, SyncPoint};
pub use local::MAX_HANDOFF_BOUND;
pub use table::{Guard, LockTable, TableConfig};
pub use transport::TransportOutbox;
