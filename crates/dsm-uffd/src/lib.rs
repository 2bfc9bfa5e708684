//! The userfaultfd fault engine of dsm: the kernel-facing half of a node.
//!
//! A [`UffdRegion`] maps whole pages at a fixed address (the same on every node) and registers them
//! with userfaultfd for MISSING and write-protect faults. An [`FaultServer`] catches every access to
//! a page that is not valid here and hands it, as a [`Fault`], to the node runtime's
//! [`FaultResolver`]; the resolver asks the coherence engine, fetches the page if needed, and
//! installs it with the region's page operations ([`UffdRegion::install_read_only`],
//! [`UffdRegion::install_read_write`], [`UffdRegion::upgrade`], [`UffdRegion::downgrade`],
//! [`UffdRegion::invalidate`], [`UffdRegion::read_page`], [`UffdRegion::twin`]/[`UffdRegion::diff_against`]/
//! [`UffdRegion::apply_diff`]). The thread then resumes.
//!
//! # Two ways to deliver faults
//! - [`Delivery::Signal`] (default): `UFFD_FEATURE_SIGBUS`; the faulting thread resolves its own
//!   fault inside a SIGBUS handler. No thread wake-up: the fastest here. The resolver then runs
//!   in signal context and must follow the rules on [`FaultResolver`] (no allocation, no locks
//!   an application thread may hold, async-signal-safe calls only). A remote fetch waits on a
//!   preallocated [`PageSlots`] slot that the transport thread fills (see [`slots`]).
//! - [`Delivery::Thread`]: a reader thread polls the uffd and calls the resolver itself, or
//!   queues faults (a crossbeam `ArrayQueue`) for worker threads that call it
//!   ([`FaultServer::start_with_workers`]). The resolver may defer with [`Resolution::Pending`]
//!   and install later from any thread; the faulting thread sleeps in the kernel until then.
//!   A runtime may also skip the engine and wait on [`UffdRegion::fault_fd`] in its own loop
//!   (e.g. io_uring `POLL_ADD` beside its network completions), reading faults with
//!   [`UffdRegion::read_faults`].
//!
//! # Zero-copy regions
//! [`UffdRegion::new_shared`] backs the region with a memfd mapped twice: the region itself and a
//! never-registered shadow ([`UffdRegion::shadow_address`]) where the transport, or the NIC, writes
//! a fetched page; [`UffdRegion::install_continue`] then maps it with `UFFDIO_CONTINUE`, no copy.
//! [`UffdRegion::invalidate_mapping`] unmaps pages but keeps their memory (the next access is a
//! MINOR fault), so memory registered with a NIC stays valid; [`UffdRegion::read_page`] and
//! [`UffdRegion::apply_diff`] go through the shadow and never fault.
//!
//! # Pages mapped from another process's file
//! [`UffdRegion::new_with_files`] maps given runs of the region from given files (a same-host
//! home's master copies: [`FileRun`]) and the rest as private anonymous memory. A file-backed
//! page *is* the file's page: an install makes it hold the data (written through a
//! never-faulting alias only when it differs) and maps it with `UFFDIO_CONTINUE`, a write through
//! the region lands in the file, and [`UffdRegion::invalidate`] only unmaps it.
//! [`UffdRegion::map_again`] maps such a page again after the kernel unmapped it by itself.
//!
//! # Measured here (`dsm-bench uffd --json`, medians, 2 vCPUs, nested guest)
//! Read-fault service ~4.6 µs with SIGBUS delivery against ~1.3 µs for a bare `UFFDIO_COPY`
//! (3.2–4.4×) and ≈1.0× the floor of in-thread resolution (first-touch fault + signal round
//! trip + COPY, measured in the same run); 1.5 µs per page with 16-page fault-around (1.2×
//! COPY). Thread delivery: ~8.5 µs when the reader resolves, ~18 µs through a worker.
//! Zero-copy (shadow write + CONTINUE): ~4.4 µs per read fault, with a lower p99; bare
//! CONTINUE ~0.9 µs against ~2.0 µs for COPY into shmem.
//!
//! # Quick start
//! ```no_run
//! use std::sync::Arc;
//! use dsm_uffd::{Delivery, FaultServer, Fault, FaultKind, FaultResolver, UffdRegion, Resolution};
//! use dsm_wire::PAGE_SIZE;
//!
//! /// Serves every page from memory prepared before (a home's copy, say).
//! struct Local(Box<[[u8; PAGE_SIZE]]>);
//!
//! impl FaultResolver for Local {
//!     fn resolve(&self, fault: Fault, region: &UffdRegion) -> Resolution {
//!         let page = &self.0[fault.page as usize];
//!         let done = match fault.kind {
//!             FaultKind::Read => region.install_read_only(fault.page, page).map(drop),
//!             FaultKind::Write => region.install_read_write(fault.page, page).map(drop),
//!             FaultKind::WriteProtect => region.upgrade(fault.page),
//!         };
//!         if done.is_ok() { Resolution::Resolved } else { Resolution::Fail }
//!     }
//! }
//!
//! # fn main() -> dsm_uffd::Result<()> {
//! let region = Arc::new(UffdRegion::new(0x7e00_0000_0000, 16, Delivery::Signal)?);
//! let source = Local(vec![[7u8; PAGE_SIZE]; 16].into_boxed_slice());
//! let engine = FaultServer::start(Arc::clone(&region), Arc::new(source))?;
//! // SAFETY: the region is mapped and served; page 3 is faulted in on first read.
//! let byte = unsafe { region.base().add(3 * PAGE_SIZE).read_volatile() };
//! assert_eq!(byte, 7);
//! drop(engine);
//! # Ok(()) }
//! ```
//!
//! # Requirements
//! - Linux with `CONFIG_USERFAULTFD`, 5.7 or later (write-protect on anonymous memory);
//!   `UFFD_FEATURE_SIGBUS` (4.14) for signal delivery, which reads the x86-64 page-fault error
//!   code (other architectures: use [`Delivery::Thread`]).
//! - Root, or read-write access to `/dev/userfaultfd` (Linux 6.1), or
//!   `vm.unprivileged_userfaultfd=1`; failing all three, an ordinary user gets a
//!   `UFFD_USER_MODE_ONLY` uffd (Linux 5.11), where kernel-side accesses to a missing page (a
//!   `read()`/`recv()` into it) fail with EFAULT instead of faulting: touch such buffers from
//!   user space first. [`Features::probe`] says which one this process gets; [`Error::Unavailable`]
//!   says why none worked and how to fix it. No memlock limit applies.
//! - Threads that touch a region served by signal delivery must leave SIGBUS unblocked.
//!
//! # Cargo features
//! None. `userfaultfd-sys` is built with `linux5_13` (write-protect and CONTINUE constants);
//! its build script runs bindgen, which needs libclang (`apt-get install libclang-dev`).

mod diff;
mod engine;
mod error;
mod fault;
mod files;
mod page_ops;
mod raw;
mod reader;
mod region;
mod signal;
pub mod slots;
pub mod thread;
mod uffd;
mod written;

pub use diff::{apply as apply_diff, compute as compute_diff, validate as validate_diff};
pub use engine::{Delivery, FaultServer};
pub use error::{Errno, Error, Result};
pub use fault::{Fault, FaultKind, FaultResolver, Resolution};
pub use files::FileRun;
pub use page_ops::{EAGAIN_RETRIES, Installed, Protection};
pub use region::UffdRegion;
pub use signal::MAX_REGIONS;
pub use slots::{Doorbell, FilledSlot, PageSlots, SlotId};
pub use uffd::{Features, Source};
pub use written::probe_write_tracking;
