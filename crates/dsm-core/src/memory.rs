//! Page contents the engine reads or writes, behind a trait the driver implements: the real
//! runtime over its mappings, the simulator over `Vec`s.

use dsm_wire::{PAGE_SIZE, PageId};

/// The bytes the engine needs. The engine only asks for pages it knows to exist (a known
/// region, in range; `home_page*` only for pages homed on this node; `twin` only after it
/// asked for [`Action::MakeTwin`](crate::Action::MakeTwin) or [`Action::Twin`](crate::Action::Twin) and before
/// [`Action::DropTwin`](crate::Action::DropTwin)), so implementations may panic on anything
/// else: that is an engine bug, not bad input.
pub trait Memory {
    /// This node's copy of `page` (the application's mapping, read through a non-faulting
    /// alias). Asked only while the page is installed.
    fn local_page(&self, page: PageId) -> &[u8; PAGE_SIZE];

    /// Makes this node's copy of `page` read-only *now* (before returning). The engine calls
    /// it right before it reads a writable page to send it (write-back, invalidation ack) or to
    /// diff it, so that no application thread changes the bytes while they are read; a thread
    /// that writes afterwards faults and waits.
    fn write_protect(&mut self, page: PageId);

    /// The twin made for `page` by the last `MakeTwin` action.
    fn twin(&self, page: PageId) -> &[u8; PAGE_SIZE];

    /// The twin of `page`, writable: a release that publishes a home page in place (without
    /// write-protecting it) replaces the twin with the snapshot it published.
    fn twin_mut(&mut self, page: PageId) -> &mut [u8; PAGE_SIZE];

    /// Copies this node's copy of `page` into `into` while it stays **writable**: application
    /// threads may store to it meanwhile, so an implementation over real memory must read each
    /// byte once, through a raw copy, never hand out a reference (the default does, and suits
    /// memories no other thread touches). Asked only for installed pages.
    fn snapshot(&self, page: PageId, into: &mut [u8; PAGE_SIZE]) {
        into.copy_from_slice(self.local_page(page));
    }

    /// Of `pages` (installed copies, sorted), the ones written since they were installed or
    /// last reported, each write-protected again in the same step, so that a write landing
    /// afterwards is reported by the next call ([`CoherenceConfig::scan_writes`](crate::CoherenceConfig::scan_writes):
    /// `PAGEMAP_SCAN` over async write-protect in the runtime). A memory that cannot tell
    /// must return every page: an unchanged page then only costs an empty diff. The default
    /// does that.
    fn take_written(&mut self, pages: &[PageId]) -> Vec<PageId> {
        pages.to_vec()
    }

    /// Takes this node's copy of `page` away and copies its last contents into `last`: every
    /// store a thread made to it is in `last`, and any later access faults (the runtime moves
    /// the page out with `UFFDIO_MOVE`). Returns false when the page was not installed. The
    /// default copies the copy and leaves unmapping to the [`Action::Invalidate`](crate::Action::Invalidate)
    /// that follows (right for memories no other thread writes).
    fn take_away(&mut self, page: PageId, last: &mut [u8; PAGE_SIZE]) -> bool {
        last.copy_from_slice(self.local_page(page));
        true
    }

    /// Copies this node's copy of `page`, a page homed here, into its master copy: the home
    /// answering its own recall of its writable copy (already write-protected), with no
    /// page in between. The default copies through a temporary.
    fn store_local_as_master(&mut self, page: PageId) {
        let copy = *self.local_page(page);
        self.home_page_mut(page).copy_from_slice(&copy);
    }

    /// Whether this node's copy of `page` *is* its master copy (the same memory: the page
    /// of a same-host home, or of this node, mapped from the master itself), so that giving
    /// its contents to the home in place copies nothing. Asked only for pages whose master
    /// this node writes in place. The default says no.
    fn local_is_master(&self, _page: PageId) -> bool {
        false
    }

    /// The master copy of a page homed here.
    fn home_page(&self, page: PageId) -> &[u8; PAGE_SIZE];

    /// The master copy of a page homed here, to apply a write-back or a diff.
    fn home_page_mut(&mut self, page: PageId) -> &mut [u8; PAGE_SIZE];
}
