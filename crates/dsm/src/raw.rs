//! The crate's only unsafe code: page-aligned home memory, views of installed pages, and the
//! SIGBUS handler's one write to stderr.

use std::alloc::{Layout, alloc_zeroed, dealloc};

use dsm_wire::PAGE_SIZE;

/// Zeroed, page-aligned memory for the master copies of a region's pages (never registered
/// with userfaultfd, so any thread may touch it). Freed on drop.
#[derive(Debug)]
pub(crate) struct HomeCopies {
    base: *mut u8,
    layout: Layout,
}

// SAFETY: plain owned memory; the node runtime accesses it only under the coherence lock.
unsafe impl Send for HomeCopies {}

impl HomeCopies {
    /// `pages` zeroed pages (`pages > 0`).
    pub(crate) fn new(pages: u32) -> Self {
        let layout = Layout::from_size_align(pages as usize * PAGE_SIZE, PAGE_SIZE)
            .expect("region size fits the address space");
        assert!(layout.size() > 0, "empty home memory");
        // SAFETY: the layout has a non-zero size (asserted).
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        HomeCopies { base, layout }
    }

    fn pages(&self) -> usize {
        self.layout.size() / PAGE_SIZE
    }

    /// Page `index`.
    pub(crate) fn page(&self, index: u32) -> &[u8; PAGE_SIZE] {
        assert!((index as usize) < self.pages(), "home page out of range");
        // SAFETY: in range (asserted), aligned, initialised (zeroed), borrowed from `self`.
        unsafe {
            &*self
                .base
                .add(index as usize * PAGE_SIZE)
                .cast::<[u8; PAGE_SIZE]>()
        }
    }

    /// The whole memory, for a transport to expose (RDMA READ by peers).
    pub(crate) fn memory(&self) -> dsm_core::HomeMemory {
        let pages = u32::try_from(self.pages()).expect("made from a u32 page count");
        // SAFETY: `base` is page-aligned and valid for the whole layout while `self` lives;
        // the node withdraws the region from its transport before dropping it (`Node::free`)
        // and closes the transport's registrations before the node's memory goes. It is
        // plain heap memory, never registered with userfaultfd.
        unsafe { dsm_core::HomeMemory::new(self.base, pages) }
    }

    /// Page `index`, writable.
    pub(crate) fn page_mut(&mut self, index: u32) -> &mut [u8; PAGE_SIZE] {
        assert!((index as usize) < self.pages(), "home page out of range");
        // SAFETY: as in `page`, and `&mut self` makes the borrow unique.
        unsafe {
            &mut *self
                .base
                .add(index as usize * PAGE_SIZE)
                .cast::<[u8; PAGE_SIZE]>()
        }
    }
}

impl Drop for HomeCopies {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.base, self.layout) };
    }
}

/// The installed page at `address` of a userfaultfd region, as bytes.
///
/// # Safety
/// `address` must be the page-aligned start of a page of a live mapping that is installed
/// (not missing) and stays mapped for `'a`; no thread may write it meanwhile (the coherence
/// engine write-protects writable pages before it reads them).
pub(crate) unsafe fn installed_page<'a>(address: usize) -> &'a [u8; PAGE_SIZE] {
    // SAFETY: the caller's contract.
    unsafe { &*(address as *const [u8; PAGE_SIZE]) }
}

/// Copies the installed page at `address` into `into` while other threads may be storing to
/// it (a torn word is fine: the engine's next release sees the rest of it change).
///
/// # Safety
/// `address` must be the page-aligned start of an installed page of a live mapping.
pub(crate) unsafe fn snapshot_page(address: usize, into: &mut [u8; PAGE_SIZE]) {
    // SAFETY: the caller's contract; the source is read through a raw pointer (no reference
    // to memory other threads write), the destination is ours and does not overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(address as *const u8, into.as_mut_ptr(), PAGE_SIZE);
    }
}

/// Reads element `index` of a `T` array at `base` (through the mapping: may fault).
///
/// # Safety
/// `base` must point to a live mapping of at least `index + 1` `T`s, aligned for `T`.
pub(crate) unsafe fn read_element<T: Copy>(base: *const T, index: usize) -> T {
    // SAFETY: the caller's contract; volatile so that every access really goes to memory
    // (and through the coherence protocol), never to a register copy.
    unsafe { base.add(index).read_volatile() }
}

/// Writes element `index` of a `T` array at `base`.
///
/// # Safety
/// As for [`read_element`].
pub(crate) unsafe fn write_element<T: Copy>(base: *mut T, index: usize, value: T) {
    // SAFETY: the caller's contract.
    unsafe { base.add(index).write_volatile(value) }
}

/// Copies `len` bytes between region memory and a buffer, in the given direction.
///
/// # Safety
/// `region` must be valid for `len` bytes of a live mapping; `buffer` must not overlap it.
pub(crate) unsafe fn copy_bytes(region: *mut u8, buffer: *mut u8, len: usize, to_region: bool) {
    // SAFETY: the caller's contract.
    unsafe {
        if to_region {
            std::ptr::copy_nonoverlapping(buffer, region, len);
        } else {
            std::ptr::copy_nonoverlapping(region, buffer, len);
        }
    }
}

/// Writes `message` to stderr with one `write(2)` (async-signal-safe, unlike `eprintln!`,
/// which takes a lock and may allocate); a short or failed write is ignored, as there is
/// nowhere else to report it.
pub(crate) fn write_stderr(message: &[u8]) {
    // SAFETY: `message` is valid for reads of its length.
    unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
}
