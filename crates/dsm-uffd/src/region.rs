//! `Region`: whole pages mapped at a caller-chosen address and registered with userfaultfd.

use std::sync::atomic::{AtomicBool, Ordering};

use dsm_wire::PAGE_SIZE;
use userfaultfd_sys as sys;

use crate::engine::Delivery;
use crate::error::{Error, Result};
use crate::raw;
use crate::uffd::{Features, Uffd};

/// Anonymous memory mapped at a fixed address; unmapped on drop.
#[derive(Debug)]
struct Mapping {
    base: usize,
    len: usize,
}

impl Mapping {
    fn new(address: usize, len: usize) -> Result<Mapping> {
        match raw::map_fixed(address, len) {
            Ok(()) => Ok(Mapping { base: address, len }),
            Err(errno) if errno.0 == libc::EEXIST => Err(Error::AddressTaken { address, len }),
            Err(errno) => Err(Error::Map {
                address,
                len,
                errno,
            }),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value and only reached through the Region
        // that owns it; the Region is being dropped, so nothing uses the range any more.
        let _ = unsafe { raw::unmap(self.base, self.len) };
    }
}

/// A shared region's local mapping: `pages` pages at a fixed address, registered with
/// userfaultfd for MISSING and write-protect faults.
///
/// Every node maps a region at the same address, so pointers stored inside it are valid on
/// every node. Share it as `Arc<Region>`: the fault engine, the resolver and the runtime's
/// transport thread all call its page operations (see [`crate::page_ops`]).
///
/// Dropping it unregisters the range, unmaps it, and closes the uffd, in that order (field
/// order below). Drop the [`crate::Engine`] serving it first (it holds an `Arc`).
#[derive(Debug)]
pub struct Region {
    /// Unmapped before the uffd closes: closing first would unregister the range and let
    /// missing pages read as zeros in between.
    mapping: Mapping,
    uffd: Uffd,
    pages: u32,
    delivery: Delivery,
    served: AtomicBool,
}

impl Region {
    /// Maps `pages` pages at `address` (page-aligned) with `MAP_FIXED_NOREPLACE` and
    /// `MADV_DONTFORK` (a forked child must not see the region: without EVENT_FORK it would
    /// read zero-filled pages), and registers it for faults delivered the `delivery` way.
    ///
    /// Fails with [`Error::AddressTaken`] if anything is mapped in the range already.
    pub fn new(address: usize, pages: u32, delivery: Delivery) -> Result<Region> {
        let len = (pages as usize)
            .checked_mul(PAGE_SIZE)
            .filter(|&len| {
                len > 0 && address % PAGE_SIZE == 0 && address.checked_add(len).is_some()
            })
            .ok_or(Error::BadGeometry { address, pages })?;
        let uffd = Uffd::open(delivery == Delivery::Signal)?;
        let mapping = Mapping::new(address, len)?;
        // SAFETY: the range is ours and empty; DONTFORK only changes what fork() copies.
        unsafe { raw::madvise(address, len, libc::MADV_DONTFORK) }.map_err(|errno| {
            Error::Madvise {
                call: "MADV_DONTFORK",
                errno,
            }
        })?;
        let mode = sys::UFFDIO_REGISTER_MODE_MISSING | sys::UFFDIO_REGISTER_MODE_WP;
        let ioctls = raw::register(uffd.raw(), address, len, mode).map_err(Error::Register)?;
        if ioctls & (1 << sys::_UFFDIO_WRITEPROTECT) == 0 {
            return Err(Error::MissingFeature {
                feature: "UFFDIO_WRITEPROTECT on anonymous memory",
                kernel: "5.7",
            });
        }
        Ok(Region {
            mapping,
            uffd,
            pages,
            delivery,
            served: AtomicBool::new(false),
        })
    }

    /// First byte of the region (the same address on every node).
    pub fn base(&self) -> *mut u8 {
        self.mapping.base as *mut u8
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.mapping.len
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// How faults of this region are delivered.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// What the kernel offers, and how the uffd was obtained.
    pub fn features(&self) -> Features {
        self.uffd.features()
    }

    /// The page holding `address`, if it lies in the region.
    pub fn page_of(&self, address: usize) -> Option<u32> {
        let offset = address.checked_sub(self.mapping.base)?;
        (offset < self.mapping.len)
            .then(|| u32::try_from(offset / PAGE_SIZE).ok())
            .flatten()
    }

    /// Address of page `index`, or [`Error::PageOutOfRange`].
    pub fn page_address(&self, index: u32) -> Result<usize> {
        self.check(index, 1)?;
        Ok(self.mapping.base + index as usize * PAGE_SIZE)
    }

    /// Checks that pages `index..index + count` lie in the region.
    pub(crate) fn check(&self, index: u32, count: u32) -> Result<()> {
        match index.checked_add(count) {
            Some(end) if count > 0 && end <= self.pages => Ok(()),
            _ => Err(Error::PageOutOfRange {
                index,
                pages: self.pages,
            }),
        }
    }

    pub(crate) fn uffd(&self) -> i32 {
        self.uffd.raw()
    }

    /// Claims the region for one engine; false if another engine serves it.
    pub(crate) fn claim(&self) -> bool {
        !self.served.swap(true, Ordering::AcqRel)
    }

    /// Gives the region back when its engine stops.
    pub(crate) fn release(&self) {
        self.served.store(false, Ordering::Release);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Unregistering first keeps the order explicit; unmapping would do it implicitly.
        let _ = raw::unregister(self.uffd.raw(), self.mapping.base, self.mapping.len);
    }
}
