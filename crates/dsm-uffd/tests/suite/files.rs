//! Regions with runs mapped from a file (a same-host home's master copies): an install maps
//! the file's page, which takes the installed data; writes through the region land in the
//! file; invalidation unmaps and leaves the file alone; faults on both kinds of page are served
//! under both deliveries; bad runs are refused.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use dsm_uffd::{Delivery, Error, FaultServer, FileRun, Installed, Protection, UffdRegion};
use dsm_wire::PAGE_SIZE;

use super::common::{LocalSource, page_of, pattern, test_address, write_byte};

/// A memfd of `pages` pages and a shared view of it to check what it holds.
struct File {
    fd: OwnedFd,
    view: usize,
    pages: usize,
}

impl File {
    fn new(pages: usize) -> File {
        let len = pages * PAGE_SIZE;
        // SAFETY: a NUL-terminated name; the result is checked.
        let raw = unsafe { libc::memfd_create(c"dsm-test-masters".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0, "memfd_create");
        // SAFETY: just created, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain arguments on a descriptor we own.
        assert_eq!(unsafe { libc::ftruncate(raw, len as libc::off_t) }, 0);
        // SAFETY: a fresh shared mapping of the file, anywhere.
        let view = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        assert_ne!(view, libc::MAP_FAILED, "mmap");
        File {
            fd,
            view: view as usize,
            pages,
        }
    }

    fn page(&self, index: usize) -> &[u8] {
        assert!(index < self.pages);
        // SAFETY: inside the live view, which is never registered (reads never fault to us).
        unsafe {
            std::slice::from_raw_parts((self.view + index * PAGE_SIZE) as *const u8, PAGE_SIZE)
        }
    }

    fn fill(&self, index: usize, page: usize, generation: usize) {
        for offset in 0..PAGE_SIZE {
            // SAFETY: inside the live view.
            unsafe {
                ((self.view + index * PAGE_SIZE + offset) as *mut u8)
                    .write(pattern(page, offset, generation))
            }
        }
    }

    fn run(&self, first: u32, count: u32, file_page: u64) -> FileRun<'_> {
        FileRun {
            first,
            count,
            fd: self.fd.as_fd(),
            offset: file_page * PAGE_SIZE as u64,
            populate: first.is_multiple_of(2),
        }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // SAFETY: the view this value mapped; nothing refers to it any more.
        unsafe { libc::munmap(self.view as *mut libc::c_void, self.pages * PAGE_SIZE) };
    }
}

fn generation(page: usize, generation: usize) -> [u8; PAGE_SIZE] {
    std::array::from_fn(|offset| pattern(page, offset, generation))
}

#[test]
fn an_install_maps_the_file_page_and_a_write_lands_in_the_file() {
    let file = File::new(8);
    for page in 2..5 {
        file.fill(page - 1, page, 0);
    }
    // Region pages 2..5 are file pages 1..4; pages 0, 1 and 5 are anonymous.
    let region =
        UffdRegion::new_with_files(test_address(50), 6, Delivery::Thread, &[file.run(2, 3, 1)])
            .expect("map and register");
    assert!(region.is_file_backed(2) && region.is_file_backed(4));
    assert!(!region.is_file_backed(1) && !region.is_file_backed(5));

    // Same data as the file holds: mapped as is.
    region.install_read_only(2, &generation(2, 0)).unwrap();
    assert_eq!(page_of(&region, 2), &generation(2, 0)[..]);
    // Other data: the file page takes it.
    region.install_read_write(3, &generation(3, 1)).unwrap();
    assert_eq!(
        file.page(2),
        &generation(3, 1)[..],
        "the file holds the installed data"
    );
    write_byte(&region, 3, 7, 0x5A);
    assert_eq!(
        file.page(2)[7],
        0x5A,
        "a write through the region lands in the file"
    );
    // An anonymous page is copied in, and the file is not touched.
    region.install_read_only(0, &generation(0, 0)).unwrap();
    assert_eq!(page_of(&region, 0), &generation(0, 0)[..]);
    assert!(
        file.page(0).iter().all(|&b| b == 0),
        "file page 0 is not the region's"
    );

    // A file page the kernel unmapped by itself (reclaim) is mapped again as it is.
    region.invalidate_mapping(3, 1).unwrap();
    assert_eq!(
        region.map_again(3, Protection::ReadWrite),
        Ok(Installed::New)
    );
    assert_eq!(page_of(&region, 3)[7], 0x5A);
    assert_eq!(
        region.map_again(3, Protection::ReadWrite),
        Ok(Installed::AlreadyPresent)
    );
    assert!(
        region.map_again(0, Protection::ReadOnly).is_err(),
        "anonymous"
    );
    // A page that is a hole in the file (never written) maps as zeros.
    let holes = File::new(2);
    let sparse =
        UffdRegion::new_with_files(test_address(55), 2, Delivery::Thread, &[holes.run(0, 2, 0)])
            .expect("map and register");
    assert_eq!(
        sparse.map_again(1, Protection::ReadOnly),
        Ok(Installed::New)
    );
    assert!(
        page_of(&sparse, 1).iter().all(|&b| b == 0),
        "a hole reads as zeros"
    );

    region.invalidate(0, 6).expect("invalidate all");
    assert_eq!(file.page(2)[7], 0x5A, "invalidation leaves the file alone");
    assert_eq!(file.page(1), &generation(2, 0)[..]);
    drop(region);
    assert_eq!(
        file.page(2)[7],
        0x5A,
        "dropping the region leaves the file alone"
    );
}

fn faults_on_file_pages_are_served(delivery: Delivery, workers: usize, slot: usize) {
    const PAGES: u32 = 8;
    let file = File::new(4);
    let region =
        UffdRegion::new_with_files(test_address(slot), PAGES, delivery, &[file.run(2, 4, 0)])
            .expect("map and register");
    let region = Arc::new(region);
    let source = Arc::new(LocalSource::new(PAGES as usize));
    let engine = FaultServer::start_with_workers(Arc::clone(&region), source.clone(), workers)
        .expect("start engine");

    for index in 0..PAGES {
        assert_eq!(
            page_of(&region, index),
            source.home.page(index),
            "page {index}"
        );
    }
    assert_eq!(
        source.counts(),
        (u64::from(PAGES), 0, 0),
        "one read fault per page"
    );
    for file_page in 0..4 {
        assert_eq!(file.page(file_page), source.home.page(file_page as u32 + 2));
    }
    for index in 0..PAGES {
        write_byte(&region, index, 9, 0xC3);
    }
    assert_eq!(
        source.counts(),
        (u64::from(PAGES), 0, u64::from(PAGES)),
        "one WP fault per page"
    );
    assert!(
        (0..4).all(|p| file.page(p)[9] == 0xC3),
        "the writes are in the file"
    );

    // Invalidated file pages fault again (MINOR: the file still has them) and take the
    // home's new data; a write to one arrives as a write fault.
    source.home.set_generation(1);
    region.invalidate(0, PAGES).expect("invalidate all");
    write_byte(&region, 4, 0, 0x11);
    for index in 0..PAGES {
        let from = usize::from(index == 4);
        assert_eq!(
            page_of(&region, index)[from..],
            source.home.page(index)[from..],
            "page {index}"
        );
    }
    assert_eq!(file.page(2)[0], 0x11);
    assert_eq!(
        file.page(3),
        source.home.page(5),
        "the file took generation 1"
    );
    assert_eq!(
        source.counts(),
        (2 * u64::from(PAGES) - 1, 1, u64::from(PAGES))
    );
    drop(engine);
}

#[test]
fn faults_on_file_pages_are_served_in_signal_delivery() {
    faults_on_file_pages_are_served(Delivery::Signal, 1, 51);
}

#[test]
fn faults_on_file_pages_are_served_in_thread_delivery() {
    faults_on_file_pages_are_served(Delivery::Thread, 1, 52);
}

#[test]
fn bad_file_runs_are_refused() {
    let file = File::new(4);
    let address = test_address(53);
    let refused = |runs: &[FileRun<'_>]| {
        matches!(
            UffdRegion::new_with_files(address, 8, Delivery::Thread, runs),
            Err(Error::BadFileRun { .. })
        )
    };
    assert!(refused(&[file.run(0, 0, 0)]), "empty");
    assert!(refused(&[file.run(6, 3, 0)]), "past the end");
    assert!(
        refused(&[file.run(0, 3, 0), file.run(2, 2, 0)]),
        "overlapping"
    );
    assert!(refused(&[file.run(4, 1, 0), file.run(0, 1, 0)]), "unsorted");
    let mut unaligned = file.run(0, 1, 0);
    unaligned.offset = 100;
    assert!(refused(&[unaligned]), "unaligned in the file");
    // Nothing was left mapped by the refusals.
    let region = UffdRegion::new_with_files(address, 8, Delivery::Thread, &[file.run(0, 4, 0)]);
    assert!(region.is_ok(), "{region:?}");
}

#[test]
fn an_install_over_a_mapped_page_replaces_it() {
    const PAGES: u32 = 4;
    let file = File::new(2);
    let region = UffdRegion::new_with_files(
        test_address(54),
        PAGES,
        Delivery::Thread,
        &[file.run(2, 2, 0)],
    )
    .expect("map and register");
    let region = Arc::new(region);
    let source = Arc::new(LocalSource::new(PAGES as usize));
    let engine = FaultServer::start_with_workers(Arc::clone(&region), source.clone(), 1)
        .expect("start engine");
    // Anonymous: the new data and protection win over the mapped page.
    region.install_read_only(0, &generation(0, 0)).unwrap();
    region
        .replace(0, &generation(0, 1), Protection::ReadWrite)
        .unwrap();
    assert_eq!(page_of(&region, 0), &generation(0, 1)[..]);
    write_byte(&region, 0, 3, 0x44);
    assert_eq!(
        source.counts(),
        (0, 0, 0),
        "writable after the replace: no fault"
    );
    // File-backed: mapped read-only, then again writable; then replaced read-only.
    region.install_read_only(2, &generation(2, 0)).unwrap();
    region.remap(2, Protection::ReadWrite).unwrap();
    write_byte(&region, 2, 3, 0x55);
    assert_eq!(
        source.counts(),
        (0, 0, 0),
        "writable after the remap: no fault"
    );
    region
        .replace(2, &generation(2, 1), Protection::ReadOnly)
        .unwrap();
    assert_eq!(
        file.page(0),
        &generation(2, 1)[..],
        "the file holds the new data"
    );
    write_byte(&region, 2, 3, 0x66);
    assert_eq!(
        source.counts(),
        (0, 0, 1),
        "read-only after the replace: one WP fault"
    );
    drop(engine);
}
