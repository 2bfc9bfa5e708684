//! [`Region`]: a shared array, at the same address on every node.

use std::marker::PhantomData;

use crate::raw;
use crate::{Consistency, Error, Node, Result};

/// A shared array of `len` elements of `T`, allocated collectively by
/// [`Node::alloc`](crate::Node::alloc) and given back with [`Node::free`](crate::Node::free). It sits at the same virtual address on every node, so pointers into
/// it mean the same everywhere.
///
/// # What a program may assume about `as_ptr` access
/// Plain loads and stores through [`as_ptr`](Self::as_ptr) go through the same coherence
/// path as [`get`](Self::get)/[`set`](Self::set) (a page that is not valid here faults and is
/// fetched). The guarantees depend on the region's [`Consistency`]:
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
#[derive(Debug)]
pub struct Region<'node, T: Copy> {
    pub(crate) id: u32,
    pub(crate) base: *mut T,
    pub(crate) len: usize,
    pub(crate) consistency: Consistency,
    /// Serves the region's faults; dropped (stopping the service) before the mapping goes.
    pub(crate) server: Option<dsm_uffd::FaultServer>,
    /// Elements of `T`, borrowed from the node: a region cannot outlive the node that
    /// serves its faults (`leave` needs every region freed or dropped first).
    pub(crate) _elements: PhantomData<(T, &'node Node)>,
}

// SAFETY: the region is shared memory made coherent by the runtime; access to elements is
// through volatile reads/writes of `Copy` values, and the element type must itself be Send.
unsafe impl<T: Copy + Send> Send for Region<'_, T> {}
// SAFETY: as above; concurrent access from threads is what shared memory is for, and its
// meaning is documented on the type.
unsafe impl<T: Copy + Send> Sync for Region<'_, T> {}

impl<T: Copy> Region<'_, T> {
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

    /// Element `index`. Panics when `index >= len()`.
    pub fn get(&self, index: usize) -> T {
        assert!(
            index < self.len,
            "index {index} out of a region of {}",
            self.len
        );
        // SAFETY: in bounds (asserted) of a live mapping aligned for T (page-aligned base).
        unsafe { raw::read_element(self.base, index) }
    }

    /// Sets element `index`. Panics when `index >= len()`.
    pub fn set(&self, index: usize, value: T) {
        assert!(
            index < self.len,
            "index {index} out of a region of {}",
            self.len
        );
        // SAFETY: as in `get`.
        unsafe { raw::write_element(self.base, index, value) }
    }

    fn bytes(&self) -> usize {
        self.len * size_of::<T>()
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.bytes() => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len,
                size: self.bytes(),
            }),
        }
    }

    /// Copies bytes at `offset` of the region into `buffer` (the seed's PREAD).
    pub fn read_at(&self, offset: usize, buffer: &mut [u8]) -> Result<()> {
        self.check_range(offset, buffer.len())?;
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

    /// Copies `data` into the region at `offset` (the seed's PWRITE).
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
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
}

impl<T: Copy> Drop for Region<'_, T> {
    fn drop(&mut self) {
        // A region dropped without `Node::free` stops being served (its pointers must not
        // be used any more); its mapping and home copies stay until the node stops, since
        // other nodes may still fetch pages homed here.
        drop(self.server.take());
    }
}
