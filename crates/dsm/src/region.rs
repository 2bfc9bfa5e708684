//! [`Region`]: a shared array, at the same address on every node.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use crate::raw;
use crate::runtime::Core;
use crate::stats::{RegionCounters, RegionStats};
use crate::{Consistency, Error, Result};

/// A shared array of `len` elements of `T`, allocated collectively by
/// [`Node::alloc`](crate::Node::alloc). It sits at the same virtual address on every node, so
/// pointers into it mean the same everywhere.
///
/// A region shares its node's runtime (it does not borrow the [`Node`](crate::Node)), so a
/// program can [`leave`](crate::Node::leave) with regions still in scope. Give one back
/// early with [`Node::free`](crate::Node::free) (collective); dropping it only stops serving
/// its faults here. After `leave` a region must not be used: element and slice calls panic or
/// return [`Error::Closed`], and a load or store through a pointer or slice kills the process
/// with a message (its pages are unmapped at `leave`, so it can never read zeros).
///
/// # Access
/// - [`get`](Self::get)/[`set`](Self::set): one element, bounds-checked.
/// - [`read_slice`](Self::read_slice)/[`write_slice`](Self::write_slice): a run of elements
///   copied to or from a buffer of yours, bounds-checked, safe; the buffer is plain memory,
///   so a stencil reads its rows, computes on them (the compiler vectorises), and writes back.
/// - [`as_slice`](Self::as_slice)/[`as_mut_slice`](Self::as_mut_slice): borrow region memory
///   directly (no copy), `unsafe`: see their `# Safety`.
/// - [`as_ptr`](Self::as_ptr): the raw base address.
///
/// # What a program may assume
/// Every access, whichever way it is made, goes through the same coherence path (a page that
/// is not valid here faults and is fetched). The guarantees depend on the [`Consistency`]:
/// - `Sequential`: every page is single-writer/multiple-reader; a load returns the latest
///   store to that page (per-page sequential consistency). Word-sized aligned accesses are
///   not torn. Races are still races: use a lock for read-modify-write.
/// - `Release`: writes by another node become visible only after a synchronisation point
///   that orders them before the reader (that node released a lock the reader then acquired,
///   or both passed a barrier). A program with no data races between synchronisation points
///   gets the same results as under `Sequential`.
///
/// Never pass region memory to a system call (`read(2)` into it, say) before touching its
/// pages from user space: the kernel's own accesses are not routed through the fault path.
/// [`read_slice`](Self::read_slice) into a buffer of yours, then the system call, is safe.
#[derive(Debug)]
pub struct Region<T: Copy> {
    pub(crate) id: u32,
    pub(crate) base: *mut T,
    pub(crate) len: usize,
    pub(crate) consistency: Consistency,
    /// Serves the region's faults; dropped (stopping the service) before the mapping goes.
    /// It holds the mapping and its userfaultfd open, so that after `leave` an access still
    /// faults (and fails loudly) instead of finding an unregistered zero page.
    pub(crate) server: Option<dsm_uffd::FaultServer>,
    /// The node's runtime, shared: the region may outlive the `Node` value.
    pub(crate) core: Arc<Core>,
    pub(crate) counters: Arc<RegionCounters>,
    pub(crate) _elements: PhantomData<T>,
}

/// Per-region settings for [`Node::alloc_with`](crate::Node::alloc_with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegionOptions {
    /// The consistency model (the same on every node).
    pub consistency: Consistency,
    /// Prefetch: a read fault on a page homed elsewhere that comes right after a fault on the
    /// page before it (an in-order scan) fetches up to this many pages (itself included) from
    /// that home at once. In sequential mode a write fault on a read-only copy also asks write
    /// access to up to as many pages after it (itself included) that this node wrote before
    /// and another node read since, so that their invalidations share one round trip (a
    /// stencil's boundary row). 1 turns both off.
    pub prefetch: u32,
}

/// The default of [`RegionOptions::prefetch`]. ArgoDSM uses 8; 4 keeps the pages a row-split
/// stencil fetches within 1.25x of its halo rows (a scan is seen on the second page of a
/// row, so up to 3 pages past it may come along) while a scan takes one round trip per 4
/// pages.
pub const DEFAULT_PREFETCH: u32 = 4;

impl RegionOptions {
    /// `consistency` with the default prefetch.
    pub fn new(consistency: Consistency) -> Self {
        RegionOptions {
            consistency,
            prefetch: DEFAULT_PREFETCH,
        }
    }

    /// Sets the prefetch (pages per fault; 1 turns it off): see [`RegionOptions::prefetch`].
    pub fn prefetch(mut self, pages: u32) -> Self {
        self.prefetch = pages.max(1);
        self
    }
}

// SAFETY: the region is shared memory made coherent by the runtime; access to elements is
// through volatile reads/writes or copies of `Copy` values, and the element type must itself
// be Send.
unsafe impl<T: Copy + Send> Send for Region<T> {}
// SAFETY: as above; concurrent access from threads is what shared memory is for, and its
// meaning is documented on the type.
unsafe impl<T: Copy + Send> Sync for Region<T> {}

impl<T: Copy> Region<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a region of no elements (never: `alloc` rejects 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first element; see the type's docs for what accesses through it may assume.
    pub fn as_ptr(&self) -> *mut T {
        self.base
    }

    /// The region's consistency model.
    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// This region's faults and fetched pages on this node.
    pub fn stats(&self) -> RegionStats {
        self.counters.snapshot()
    }

    /// Element `index`. Panics when `index >= len()` or after the node left.
    pub fn get(&self, index: usize) -> T {
        self.check_index(index);
        // SAFETY: in bounds (checked) of a live mapping aligned for T (page-aligned base).
        unsafe { raw::read_element(self.base, index) }
    }

    /// Sets element `index`. Panics when `index >= len()` or after the node left.
    pub fn set(&self, index: usize, value: T) {
        self.check_index(index);
        // SAFETY: as in `get`.
        unsafe { raw::write_element(self.base, index, value) }
    }

    /// Copies elements `start..start + target.len()` into `target`.
    pub fn read_slice(&self, start: usize, target: &mut [T]) -> Result<()> {
        self.check_elements(start, target.len())?;
        // SAFETY: the range is inside the region (checked); `target` is the caller's memory,
        // not region memory (a `&mut` to region memory would need `as_mut_slice`, whose
        // contract forbids overlapping this call), so the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(start), target.as_mut_ptr(), target.len())
        };
        Ok(())
    }

    /// Copies `source` into elements `start..start + source.len()`.
    pub fn write_slice(&self, start: usize, source: &[T]) -> Result<()> {
        self.check_elements(start, source.len())?;
        // SAFETY: as in `read_slice`; the source is only read.
        unsafe {
            std::ptr::copy_nonoverlapping(source.as_ptr(), self.base.add(start), source.len())
        };
        Ok(())
    }

    /// Borrows elements `range` of region memory directly, with no copy. Panics when the
    /// range is out of bounds or the node left.
    ///
    /// # Safety
    /// Between two synchronisation points of this node (lock acquire/release, barrier), the
    /// caller must ensure:
    /// - No thread of this node writes the range meanwhile (through `set`, `write_slice`,
    ///   `as_mut_slice` or a pointer): a `&[T]` promises the bytes do not change under it.
    /// - `Sequential` regions: no other node writes a page under the slice while it lives.
    ///   A page under a live slice may be invalidated when another node wants to write it,
    ///   and the next load through the slice faults and refetches it with that node's bytes:
    ///   the slice would see values change, which `&[T]` forbids. Write-sharing pages under
    ///   a live slice is undefined behaviour.
    /// - `Release` regions: other nodes may write the range's pages only if this node
    ///   acquires nothing while the slice lives (their writes become visible here only at
    ///   this node's next acquire, which may invalidate and refetch the pages). Drop the
    ///   slice before the next `barrier` or `acquire`.
    /// - The node has not left, and the region is not freed while the slice lives.
    pub unsafe fn as_slice(&self, range: Range<usize>) -> &[T] {
        self.check_range_or_panic(&range);
        // SAFETY: in bounds (checked) of a live mapping aligned for T; the caller promises
        // the bytes do not change while the slice lives (see `# Safety`).
        unsafe { std::slice::from_raw_parts(self.base.add(range.start), range.len()) }
    }

    /// Borrows elements `range` of region memory mutably, with no copy. Panics when the
    /// range is out of bounds or the node left.
    ///
    /// # Safety
    /// As for [`as_slice`](Self::as_slice), and moreover no other access to the range by any
    /// thread of this node (reads included) while the mutable slice lives. Other nodes may
    /// write other bytes of the same pages only in `Release` regions (their writes merge
    /// byte-wise at the home); in `Sequential` regions a write by another node takes the page
    /// away, and this node's next store refetches it: stores made before stay in the home's
    /// copy, but the slice must not be relied on to hold only this node's values.
    #[allow(clippy::mut_from_ref)] // Shared memory: exclusivity is the caller's promise.
    pub unsafe fn as_mut_slice(&self, range: Range<usize>) -> &mut [T] {
        self.check_range_or_panic(&range);
        // SAFETY: in bounds (checked) of a live writable mapping aligned for T; the caller
        // promises exclusive access to the range while the slice lives (see `# Safety`).
        unsafe { std::slice::from_raw_parts_mut(self.base.add(range.start), range.len()) }
    }

    /// Copies bytes at `offset` of the region into `buffer`.
    pub fn read_at(&self, offset: usize, buffer: &mut [u8]) -> Result<()> {
        self.check_bytes(offset, buffer.len())?;
        // SAFETY: the range is inside the region (checked); the buffer is ours, not in it.
        unsafe {
            raw::copy_bytes(
                self.base.cast::<u8>().add(offset),
                buffer.as_mut_ptr(),
                buffer.len(),
                false,
            );
        }
        Ok(())
    }

    /// Copies `data` into the region at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_bytes(offset, data.len())?;
        // SAFETY: as in `read_at`; the source is only read.
        unsafe {
            raw::copy_bytes(
                self.base.cast::<u8>().add(offset),
                data.as_ptr().cast_mut(),
                data.len(),
                true,
            );
        }
        Ok(())
    }

    fn check_index(&self, index: usize) {
        assert!(
            !self.core.is_gone(),
            "dsm region used after its node left: {}",
            Error::Closed
        );
        assert!(
            index < self.len,
            "index {index} out of a region of {}",
            self.len
        );
    }

    fn check_range_or_panic(&self, range: &Range<usize>) {
        assert!(
            !self.core.is_gone(),
            "dsm region used after its node left: {}",
            Error::Closed
        );
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} out of a region of {}",
            self.len
        );
    }

    /// Elements `start..start + count` are in range and the node is still here.
    fn check_elements(&self, start: usize, count: usize) -> Result<()> {
        let size = size_of::<T>();
        let out_of_range = || Error::OutOfRange {
            offset: start.saturating_mul(size),
            len: count.saturating_mul(size),
            size: self.len * size,
        };
        match start.checked_add(count) {
            Some(end) if end <= self.len => self.check_open(),
            _ => Err(out_of_range()),
        }
    }

    /// Bytes `offset..offset + len` are in range and the node is still here.
    fn check_bytes(&self, offset: usize, len: usize) -> Result<()> {
        let size = self.len * size_of::<T>();
        match offset.checked_add(len) {
            Some(end) if end <= size => self.check_open(),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.core.is_gone() {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

impl<T: Copy> Drop for Region<T> {
    fn drop(&mut self) {
        // A region dropped without `Node::free` stops being served (its pointers must not
        // be used any more); its mapping and home copies stay until the node stops, since
        // other nodes may still fetch pages homed here.
        drop(self.server.take());
    }
}
