//! What a fault is, and the trait the node runtime implements to serve one.

use crate::region::UffdRegion;

/// Why a thread faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultKind {
    /// Read of a missing page: install it (read-only for MSI's shared state).
    #[default]
    Read,
    /// Write to a missing page: install it (read-write if the coherence engine grants write
    /// access, else read-only and the retry raises a [`FaultKind::WriteProtect`] fault).
    Write,
    /// Write to a write-protected page: [`UffdRegion::upgrade`] it once write access is granted.
    WriteProtect,
}

/// One fault, as handed to the [`FaultResolver`] (the default value is a placeholder for
/// [`UffdRegion::read_faults`] buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fault {
    /// Page index within the region.
    pub page: u32,
    /// The exact faulting address.
    pub address: usize,
    /// Read, write, or write-protect.
    pub kind: FaultKind,
}

/// What the resolver did with a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The page is installed or upgraded: the thread resumes.
    Resolved,
    /// Thread delivery only: the resolver started something (a network fetch) and will
    /// install the page later from another thread; the install wakes the faulting thread,
    /// which stays blocked in the kernel until then. In SIGBUS delivery this means the same
    /// as [`Resolution::Retry`].
    Pending,
    /// Nothing installed: let the access re-execute (it faults again if the page is still
    /// not there). For a resolver that lost a race or must re-ask the coherence engine.
    Retry,
    /// The fault cannot be served (the home failed, the region was freed): the access fails
    /// like a bad pointer would. The process dies after a message on stderr: by SIGBUS under
    /// signal delivery, by `abort` (SIGABRT) under thread delivery.
    Fail,
}

/// Serves the faults of one region; the node runtime implements it around the coherence
/// engine.
///
/// # Where it runs, and what it may do there
///
/// **SIGBUS delivery ([`crate::Delivery::Signal`], the default)**: `resolve` runs *inside the
/// SIGBUS handler of the faulting thread*, which may be any application thread, interrupted
/// at any instruction: possibly while holding the allocator's lock, a `Mutex`, or stdout's
/// lock. So `resolve` must:
/// - not allocate or free (no `Box`, `Vec`, `String`, `format!`, `Arc::new`, cloning
///   collections), and not print or log;
/// - take no lock an application thread may hold (`Mutex`, `RwLock`, `std::io` handles,
///   `thread_local!` lazy initialisation) — a spin or futex wait on memory allocated before
///   is fine, and so are lock-free structures whose push/pop never allocate (crossbeam's
///   `ArrayQueue`);
/// - make only async-signal-safe calls: the page operations of [`UffdRegion`] that do not
///   allocate (install, upgrade, downgrade, invalidate, wake, read_page), raw syscalls
///   (`write` to an eventfd, `futex`), atomics;
/// - never touch a missing page of any registered region (SIGBUS is blocked inside its own
///   handler: the process would die); the source of an install must lie outside the region;
/// - bound every wait, and keep stack use modest (it runs on the faulting thread's stack).
///
/// A remote fetch fits as follows (see [`crate::slots`]): claim a preallocated
/// [`crate::PageSlots`] slot, push `(page, slot)` to a preallocated lock-free queue the
/// transport thread drains, ring its [`crate::Doorbell`] (one `write` to an eventfd, which
/// io_uring can poll), then [`crate::PageSlots::wait`] (a futex wait with a timeout) until
/// the transport thread has copied the page into the slot and called
/// [`crate::PageSlots::fill`]; install from the slot, release it, return `Resolved`.
///
/// **Thread delivery ([`crate::Delivery::Thread`])**: `resolve` runs on the uffd reader
/// thread ([`crate::FaultServer::start`]), or on one of the engine's worker threads, which take
/// faults from a lock-free queue the reader fills ([`crate::FaultServer::start_with_workers`]).
/// While it runs on the reader, no other fault is read: return quickly. It may allocate and
/// block briefly, but must not take a lock an application thread
/// may hold while faulting (that thread is stopped in the kernel until its page comes) and
/// must not touch missing pages of the region. A resolver waiting for the network should
/// return [`Resolution::Pending`] and install from the transport thread when the page comes:
/// the faulting thread stays blocked in the kernel until the install wakes it.
///
/// **In both**: faults race. Several threads may fault on one page, and a fault may be
/// handed over after the page was installed (a prefetch or another thread won). Installing
/// then yields [`crate::Installed::AlreadyPresent`] and wakes the waiters; a resolver that
/// finds the page already valid and installs nothing should return [`Resolution::Retry`]
/// (which wakes the thread so it re-executes the access).
pub trait FaultResolver: Send + Sync + 'static {
    /// Serves `fault` on `region` (install, upgrade, or defer), and says what it did.
    fn resolve(&self, fault: Fault, region: &UffdRegion) -> Resolution;

    /// Called first on each thread the fault server starts to call `resolve` (thread
    /// delivery: the reader and any workers), e.g. to set its scheduling priority. The
    /// default does nothing.
    fn on_thread_start(&self) {}
}
