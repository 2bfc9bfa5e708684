//! A local page source for the tests: a "home" holding every page of two generations of
//! content, prepared before any fault (the resolver runs in a signal handler and must not
//! allocate), and a resolver that serves faults from it and counts them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dsm_uffd::{Fault, FaultKind, FaultResolver, Protection, Resolution, UffdRegion};
use dsm_wire::PAGE_SIZE;

/// Each test maps its region at its own address so tests can run in parallel.
pub fn test_address(slot: usize) -> usize {
    0x7e00_0000_0000 + slot * 0x1_0000_0000
}

/// The byte at `offset` of `page` in `generation`: differs between pages, offsets and
/// generations, so a misplaced or stale page is caught.
pub fn pattern(page: usize, offset: usize, generation: usize) -> u8 {
    ((page * 31 + offset * 7 + generation * 101 + page / 251) % 253) as u8
}

/// Master copies of `pages` pages in two generations; `current` selects the one served.
pub struct Home {
    generations: [Box<[[u8; PAGE_SIZE]]>; 2],
    current: AtomicUsize,
}

impl Home {
    pub fn new(pages: usize) -> Home {
        let make = |generation| {
            (0..pages)
                .map(|page| std::array::from_fn(|offset| pattern(page, offset, generation)))
                .collect::<Vec<[u8; PAGE_SIZE]>>()
                .into_boxed_slice()
        };
        Home {
            generations: [make(0), make(1)],
            current: AtomicUsize::new(0),
        }
    }

    pub fn page(&self, index: u32) -> &[u8; PAGE_SIZE] {
        &self.generations[self.current.load(Ordering::Acquire)][index as usize]
    }

    pub fn set_generation(&self, generation: usize) {
        self.current.store(generation, Ordering::Release);
    }
}

/// Serves faults from a [`Home`]: read → read-only copy, write to a missing page →
/// writable copy, write-protect → upgrade. Counts each kind. With `zero_copy` (shared
/// regions) a page is written into the shadow and mapped with UFFDIO_CONTINUE instead.
pub struct LocalSource {
    pub home: Home,
    pub zero_copy: bool,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub write_protects: AtomicU64,
}

impl LocalSource {
    pub fn new(pages: usize) -> LocalSource {
        LocalSource::with_zero_copy(pages, false)
    }

    pub fn with_zero_copy(pages: usize, zero_copy: bool) -> LocalSource {
        LocalSource {
            home: Home::new(pages),
            zero_copy,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_protects: AtomicU64::new(0),
        }
    }

    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.reads.load(Ordering::SeqCst),
            self.writes.load(Ordering::SeqCst),
            self.write_protects.load(Ordering::SeqCst),
        )
    }
}

impl LocalSource {
    fn install(
        &self,
        region: &UffdRegion,
        index: u32,
        page: &[u8; PAGE_SIZE],
        protection: Protection,
    ) -> dsm_uffd::Result<()> {
        if self.zero_copy {
            region.write_shadow(index, page)?;
            region.install_continue(index, protection).map(drop)
        } else {
            region.install_run(index, page, protection).map(drop)
        }
    }
}

impl FaultResolver for LocalSource {
    fn resolve(&self, fault: Fault, region: &UffdRegion) -> Resolution {
        let page = self.home.page(fault.page);
        let done = match fault.kind {
            FaultKind::Read => {
                self.reads.fetch_add(1, Ordering::SeqCst);
                self.install(region, fault.page, page, Protection::ReadOnly)
            }
            FaultKind::Write => {
                self.writes.fetch_add(1, Ordering::SeqCst);
                self.install(region, fault.page, page, Protection::ReadWrite)
            }
            FaultKind::WriteProtect => {
                self.write_protects.fetch_add(1, Ordering::SeqCst);
                region.upgrade(fault.page)
            }
        };
        if done.is_ok() {
            Resolution::Resolved
        } else {
            Resolution::Fail
        }
    }
}

/// The region's page `index` as a slice. Reading it faults the page in if missing.
pub fn page_of(region: &UffdRegion, index: u32) -> &[u8] {
    let address = region.page_address(index).expect("page in range");
    // SAFETY: the page lies in the live mapping; a missing page is faulted in and served by
    // the engine the test started; the tests write it only through raw pointers between
    // such reads, never while a slice is alive.
    unsafe { std::slice::from_raw_parts(address as *const u8, PAGE_SIZE) }
}

/// Writes `value` at `offset` of page `index` (faults: missing or write-protect).
pub fn write_byte(region: &UffdRegion, index: u32, offset: usize, value: u8) {
    let address = region.page_address(index).expect("page in range") + offset;
    // SAFETY: inside the live mapping; the engine serves the faults this raises.
    unsafe { (address as *mut u8).write_volatile(value) }
}
