//! dsm-core: the protocol engines of dsm, with no I/O, and the [`Transport`] trait.
//!
//! The coherence [`CoherenceEngine`] keeps one node's view of every shared page: the directory entries
//! and master copies of the pages homed on this node, and this node's own copies. It takes
//! events and returns [`Action`]s; it owns no thread, socket or mapping, so the real runtime and
//! the deterministic simulator (dsm-sim) drive the very same code.
//!
//! * **Sequential** regions are MSI (one writer or many readers). The home serialises requests
//!   per page, invalidates every other copy (and collects the writer's data) before a write
//!   grant, and downgrades the writer before a read grant.
//! * **Release** regions are home-based lazy release consistency: the first write of an
//!   interval makes a twin, a release sends diffs to the homes and yields write notices, an
//!   acquire invalidates the pages the notices name. Several writers of one page never
//!   exchange it. A home writing its own pages publishes them in place at release (straight
//!   into the master copy, no message) and keeps them writable, so a page written interval
//!   after interval by its home faults once, not once per interval.
//!
//! The protocol, with diagrams, is in `docs/protocol.md`.
//!
//! # Driving an engine
//!
//! | event | call |
//! | --- | --- |
//! | userfaultfd fault (missing page, or write to a write-protected one) | [`CoherenceEngine::fault`] |
//! | coherence message from a peer ([`TransportEvent::Message`]) | [`CoherenceEngine::on_message`] |
//! | one-sided read done ([`TransportEvent::PageRead`]) | [`CoherenceEngine::on_page_read`] |
//! | lock granted / barrier released, with write notices | [`CoherenceEngine::acquire`] |
//! | lock released / barrier arrival | [`CoherenceEngine::release`] |
//! | timer | [`CoherenceEngine::tick`] |
//!
//! After every call, take the actions with [`CoherenceEngine::take_actions`] and apply them **in
//! order**; then, if [`CoherenceEngine::has_deferred`], call [`CoherenceEngine::poll`] and apply its actions
//! too. Page bytes the engine reads or writes (master copies, this node's copy, twins) go
//! through the [`Memory`] trait the driver implements.
//!
//! ```no_run
//! use dsm_core::{Access, Action, Consistency, CoherenceEngine, CoherenceConfig, Memory, Placement,
//!     RegionLayout};
//! use dsm_wire::{Message, PageId};
//!
//! fn drive(mem: &mut dyn Memory, send: impl Fn(u32, Message)) -> dsm_core::Result<()> {
//!     let mut engine = CoherenceEngine::new(CoherenceConfig::new(0, 4));
//!     engine.add_region(RegionLayout {
//!         id: 0,
//!         pages: 1024,
//!         consistency: Consistency::Sequential,
//!         placement: Placement::Cyclic,
//!         prefetch: 8, // a read fault may bring up to 8 pages of its home
//!     })?;
//!     // The fault handler saw a write to page 5 by the thread it calls token 7.
//!     engine.fault(PageId { region: 0, page: 5 }, Access::Write, 7, mem)?;
//!     loop {
//!         for action in engine.take_actions() {
//!             match action {
//!                 Action::Send { to, message } => send(to, Message::Coherence(message)),
//!                 Action::Wake { token } => { /* UFFDIO_WAKE for the thread `token` */ }
//!                 _ => { /* install, upgrade, invalidate, twins, one-sided reads, syncs */ }
//!             }
//!         }
//!         if !engine.has_deferred() {
//!             break;
//!         }
//!         engine.poll(mem)?;
//!     }
//!     // Later: transport events → engine.on_message(from, msg, mem), and so on.
//!     Ok(())
//! }
//! ```
//!
//! # Requirements
//! None: no I/O, no unsafe outside `transport.rs`'s `HomeMemory` contract.
//!
//! # Cargo features
//! * `mutation`: adds the `mutation` field of [`CoherenceConfig`], deliberately broken variants used by
//!   dsm-sim's mutation tests to prove its checker bites. Never for real nodes.

mod actions;
mod cache;
mod collections;
mod config;
mod directory;
mod engine;
mod error;
mod in_place;
mod memory;
mod region;
mod release;
pub mod transport;
pub mod wakes;

pub use actions::{Access, Action};
pub use cache::LocalState;
#[cfg(feature = "mutation")]
pub use config::Mutation;
pub use config::{CoherenceConfig, Consistency, Placement, RegionLayout};
pub use engine::CoherenceEngine;
pub use error::{Error, Result};
pub use memory::Memory;
pub use release::{KEEP_IDLE_RELEASES, diff};
pub use transport::{EventSink, HomeMemory, Polling, Transport, TransportError, TransportEvent};

#[cfg(test)]
mod tests;
