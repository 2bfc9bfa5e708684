//! `UffdRegion`: whole pages mapped at a caller-chosen address and registered with userfaultfd.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use dsm_wire::PAGE_SIZE;
use userfaultfd_sys as sys;

use crate::engine::Delivery;
use crate::error::{Error, Result};
use crate::files::{FileRun, FileSpans, span_range};
use crate::raw;
use crate::uffd::{Features, Uffd};

/// Memory mapped at an address this value owns; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) base: usize,
    pub(crate) len: usize,
}

impl Mapping {
    /// Anonymous memory at `address`, or `memfd` shared there.
    fn new(address: usize, len: usize, memfd: Option<&OwnedFd>) -> Result<Mapping> {
        let mapped = match memfd {
            None => raw::map_fixed(address, len),
            Some(fd) => raw::map_shared(address, len, raw::fd_of(fd)).map(drop),
        };
        match mapped {
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
        // SAFETY: the mapping is owned by this value and only reached through the UffdRegion
        // that owns it; the UffdRegion is being dropped, so nothing uses the range any more.
        let _ = unsafe { raw::unmap(self.base, self.len) };
    }
}

/// The second mapping of a shared (memfd) region: never registered, so writing or reading it
/// never faults. The transport (or the NIC) writes fetched pages here; `UFFDIO_CONTINUE` then
/// maps them into the region without a copy.
#[derive(Debug)]
struct Shadow {
    /// Unmapped before the memfd closes (field order).
    mapping: Mapping,
    memfd: OwnedFd,
}

/// A shared region's local mapping: `pages` pages at a fixed address, registered with
/// userfaultfd for MISSING and write-protect faults.
///
/// Every node maps a region at the same address, so pointers stored inside it are valid on
/// every node. Share it as `Arc<UffdRegion>`: the fault engine, the resolver and the runtime's
/// transport thread all call its page operations ([`UffdRegion::install_read_only`] and the rest).
///
/// Dropping it unregisters the range, unmaps it (and the shadow, and closes the memfd of a
/// shared region), and closes the uffd, in that order (field order below). Drop the [`crate::FaultServer`] serving it first (it holds an `Arc`).
#[derive(Debug)]
pub struct UffdRegion {
    /// Unmapped before the uffd closes: closing first would unregister the range and let
    /// missing pages read as zeros in between.
    mapping: Mapping,
    /// Runs mapped from files (see [`UffdRegion::new_with_files`]), with their aliases.
    files: FileSpans,
    /// Shared (memfd) regions only.
    shadow: Option<Shadow>,
    uffd: Uffd,
    /// Tracked regions only: `/proc/self/pagemap`, for `PAGEMAP_SCAN`.
    pagemap: Option<OwnedFd>,
    /// Tracked regions with `UFFDIO_MOVE`: one page registered with the same uffd, where
    /// [`UffdRegion::take_page`] moves a page to read it after it left the region.
    scratch: Option<Mapping>,
    pages: u32,
    delivery: Delivery,
    served: AtomicBool,
}

/// What backs a region and how its writes are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Private anonymous memory; write-protect faults reach the handler.
    Private,
    /// A memfd mapped twice (see [`UffdRegion::new_shared`]).
    Shared,
    /// Private anonymous memory; write-protect faults resolved by the kernel and written
    /// pages found by `PAGEMAP_SCAN` (see [`UffdRegion::new_tracked`]).
    Tracked,
}

impl UffdRegion {
    /// Maps `pages` pages of private anonymous memory at `address` (page-aligned) with
    /// `MAP_FIXED_NOREPLACE` and `MADV_DONTFORK` (a forked child must not see the region:
    /// without EVENT_FORK it would read zero-filled pages), and registers it for MISSING and
    /// write-protect faults delivered the `delivery` way. Pages are installed with
    /// `UFFDIO_COPY` ([`UffdRegion::install_read_only`] and friends).
    ///
    /// Fails with [`Error::AddressTaken`] if anything is mapped in the range already.
    pub fn new(address: usize, pages: u32, delivery: Delivery) -> Result<UffdRegion> {
        UffdRegion::map(address, pages, delivery, Kind::Private, &[])
    }

    /// As [`UffdRegion::new`], but the pages of each of `files` are mapped shared from that
    /// file (a same-host home's master copies) and registered for MISSING, MINOR and
    /// write-protect faults; the other pages are private anonymous memory as in `new`.
    ///
    /// Installing a file-backed page ([`UffdRegion::install_run`] and friends) makes the
    /// file page hold the data (written there through a never-faulting alias only when it
    /// differs) and maps it with `UFFDIO_CONTINUE`; a write through the region lands in the
    /// file; [`UffdRegion::invalidate`] unmaps it and leaves the file alone. So the home and
    /// every same-host node that maps the same file share one copy of each page, and
    /// coherence only decides who may map it how. Needs what [`UffdRegion::new_shared`]
    /// needs from the kernel; fails with [`Error::BadFileRun`] for runs that are empty,
    /// unsorted, overlapping, outside the region or unaligned in their file.
    pub fn new_with_files(
        address: usize,
        pages: u32,
        delivery: Delivery,
        files: &[FileRun<'_>],
    ) -> Result<UffdRegion> {
        FileSpans::check(files, pages)?;
        UffdRegion::map(address, pages, delivery, Kind::Private, files)
    }

    /// As [`UffdRegion::new`], but writes never fault: the uffd has `UFFD_FEATURE_WP_ASYNC`
    /// (Linux 6.7), so a write to a write-protected page is resolved by the kernel (0.5–0.7
    /// µs here) and the page marked written; [`UffdRegion::take_written`] reports the written
    /// pages and write-protects them again, atomically (`PAGEMAP_SCAN`). Missing pages still
    /// fault to the handler. [`probe_write_tracking`](crate::probe_write_tracking) says
    /// whether this kernel (and its seccomp filter) allows it.
    pub fn new_tracked(address: usize, pages: u32, delivery: Delivery) -> Result<UffdRegion> {
        UffdRegion::map(address, pages, delivery, Kind::Tracked, &[])
    }

    /// As [`UffdRegion::new`], but backed by a memfd mapped twice: the region (registered for
    /// MISSING, MINOR and write-protect faults) and a shadow mapping that is never registered
    /// ([`UffdRegion::shadow_address`]). A fetched page can be written straight into the shadow
    /// (by the transport, or by the NIC) and mapped with [`UffdRegion::install_continue`], with no
    /// copy; [`UffdRegion::read_page`] and [`UffdRegion::apply_diff`] go through the shadow and never
    /// fault. Needs `UFFD_FEATURE_MINOR_SHMEM` (5.14) and write-protect on shmem (5.19;
    /// `UFFDIO_CONTINUE_MODE_WP` needs 6.4).
    pub fn new_shared(address: usize, pages: u32, delivery: Delivery) -> Result<UffdRegion> {
        UffdRegion::map(address, pages, delivery, Kind::Shared, &[])
    }

    fn map(
        address: usize,
        pages: u32,
        delivery: Delivery,
        kind: Kind,
        files: &[FileRun<'_>],
    ) -> Result<UffdRegion> {
        let shared = kind == Kind::Shared;
        let tracked = kind == Kind::Tracked;
        let len = (pages as usize)
            .checked_mul(PAGE_SIZE)
            .filter(|&len| {
                len > 0 && address.is_multiple_of(PAGE_SIZE) && address.checked_add(len).is_some()
            })
            .ok_or(Error::BadGeometry { address, pages })?;
        let signal = delivery == Delivery::Signal;
        let uffd = Uffd::open(signal, shared || !files.is_empty(), tracked)?;
        let pagemap = tracked
            .then(raw::open_pagemap)
            .transpose()
            .map_err(|errno| Error::Setup {
                call: "open /proc/self/pagemap",
                errno,
            })?;
        let memfd = shared
            .then(|| raw::memfd(len))
            .transpose()
            .map_err(|errno| Error::Setup {
                call: "memfd_create/ftruncate",
                errno,
            })?;
        let mapping = Mapping::new(address, len, memfd.as_ref())?;
        // Over the anonymous range just mapped (before DONTFORK: a new mapping drops advice).
        let files = FileSpans::map(address, files)?;
        // SAFETY: the range is ours and untouched; DONTFORK only changes what fork() copies.
        unsafe { raw::madvise(address, len, libc::MADV_DONTFORK) }.map_err(|errno| {
            Error::Madvise {
                call: "MADV_DONTFORK",
                errno,
            }
        })?;
        let shadow = memfd.map(|fd| Shadow::new(fd, len)).transpose()?;
        if files.is_empty() {
            register(&uffd, address, len, shared)?;
        } else {
            for (first, count, file_backed) in files.runs(pages) {
                let (start, len) = span_range(address, first, count);
                register(&uffd, start, len, file_backed)?;
            }
        }
        let scratch = if tracked && uffd.features().move_pages() {
            Some(scratch_page(&uffd)?)
        } else {
            None
        };
        Ok(UffdRegion {
            mapping,
            files,
            shadow,
            uffd,
            pagemap,
            scratch,
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

    /// The shadow mapping's base and the memfd, for shared regions.
    pub(crate) fn shadow(&self) -> Option<(usize, i32)> {
        self.shadow
            .as_ref()
            .map(|shadow| (shadow.mapping.base, raw::fd_of(&shadow.memfd)))
    }

    /// `/proc/self/pagemap` of a tracked region.
    pub(crate) fn pagemap(&self) -> Option<i32> {
        self.pagemap.as_ref().map(raw::fd_of)
    }

    /// True for a region made by [`UffdRegion::new_tracked`].
    pub fn is_tracked(&self) -> bool {
        self.pagemap.is_some()
    }

    /// The never-faulting alias of page `index` if it is mapped from a file
    /// ([`UffdRegion::new_with_files`]).
    pub(crate) fn file_alias(&self, index: u32) -> Option<usize> {
        self.files.alias_of(index)
    }

    /// Whether page `index` is mapped from a file ([`UffdRegion::new_with_files`]): it is
    /// then the file's page itself, shared with every other mapping of it.
    pub fn is_file_backed(&self, index: u32) -> bool {
        self.files.alias_of(index).is_some()
    }

    /// Whether any of pages `index..index + count` is mapped from a file.
    pub(crate) fn any_file_backed(&self, index: u32, count: u32) -> bool {
        self.files.any_in(index, count)
    }

    /// True for a region made by [`UffdRegion::new_shared`].
    pub fn is_shared(&self) -> bool {
        self.shadow.is_some()
    }

    /// Claims the region for one engine; false if another engine serves it.
    pub(crate) fn claim(&self) -> bool {
        !self.served.swap(true, Ordering::AcqRel)
    }

    /// True while an engine serves the region.
    pub(crate) fn is_served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// Gives the region back when its engine stops.
    pub(crate) fn release(&self) {
        self.served.store(false, Ordering::Release);
    }
}

impl Shadow {
    /// Maps all `len` bytes of `memfd` a second time, anywhere.
    fn new(memfd: OwnedFd, len: usize) -> Result<Shadow> {
        let base = raw::map_shared(0, len, raw::fd_of(&memfd)).map_err(|errno| Error::Map {
            address: 0,
            len,
            errno,
        })?;
        Ok(Shadow {
            mapping: Mapping { base, len },
            memfd,
        })
    }
}

/// A page of anonymous memory anywhere, registered with `uffd` like a region (MISSING + WP,
/// so that its protection matches the region's, which `UFFDIO_MOVE` requires).
fn scratch_page(uffd: &Uffd) -> Result<Mapping> {
    let base = raw::map_anywhere(PAGE_SIZE).map_err(|errno| Error::Map {
        address: 0,
        len: PAGE_SIZE,
        errno,
    })?;
    let mapping = Mapping {
        base,
        len: PAGE_SIZE,
    };
    register(uffd, base, PAGE_SIZE, false)?;
    Ok(mapping)
}

impl UffdRegion {
    /// The scratch page of a tracked region, if the kernel can move pages.
    pub(crate) fn scratch(&self) -> Option<usize> {
        self.scratch.as_ref().map(|m| m.base)
    }
}

/// Registers the region: MISSING + WP, plus MINOR for shared regions.
fn register(uffd: &Uffd, address: usize, len: usize, shared: bool) -> Result<()> {
    let mut mode = sys::UFFDIO_REGISTER_MODE_MISSING | sys::UFFDIO_REGISTER_MODE_WP;
    if shared {
        mode |= sys::UFFDIO_REGISTER_MODE_MINOR;
    }
    let ioctls = raw::register(uffd.raw(), address, len, mode).map_err(Error::Register)?;
    if ioctls & (1 << sys::_UFFDIO_WRITEPROTECT) == 0 {
        return Err(Error::MissingFeature {
            feature: "UFFDIO_WRITEPROTECT on this memory",
            kernel: "5.7 (anonymous), 5.19 (shmem)",
        });
    }
    if shared && ioctls & (1 << sys::_UFFDIO_CONTINUE) == 0 {
        return Err(Error::MissingFeature {
            feature: "UFFDIO_CONTINUE on shmem",
            kernel: "5.14",
        });
    }
    Ok(())
}

impl Drop for UffdRegion {
    fn drop(&mut self) {
        // Unregistering first keeps the order explicit; unmapping would do it implicitly.
        let _ = raw::unregister(self.uffd.raw(), self.mapping.base, self.mapping.len);
    }
}
