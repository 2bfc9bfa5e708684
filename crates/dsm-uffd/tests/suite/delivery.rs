//! The same test bodies under both fault deliveries: a 64 MiB region read, written and
//! invalidated; four threads faulting the same pages at once.

use std::sync::{Arc, Barrier};

use dsm_uffd::{Delivery, FaultServer, UffdRegion};
use dsm_wire::PAGE_SIZE;

use super::common::{LocalSource, page_of, test_address, write_byte};

const PAGES_64_MIB: u32 = (64 << 20) / PAGE_SIZE as u32;

/// How a test body's region is made and served.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub delivery: Delivery,
    /// Worker threads for thread delivery (0: the reader resolves).
    pub workers: usize,
    /// A memfd region served zero-copy (shadow write + UFFDIO_CONTINUE).
    pub shared: bool,
}

impl Setup {
    fn start(self, address: usize, pages: u32) -> (Arc<UffdRegion>, Arc<LocalSource>, FaultServer) {
        let region = if self.shared {
            UffdRegion::new_shared(address, pages, self.delivery)
        } else {
            UffdRegion::new(address, pages, self.delivery)
        };
        let region = Arc::new(region.expect("map and register"));
        let source = Arc::new(LocalSource::with_zero_copy(pages as usize, self.shared));
        let engine =
            FaultServer::start_with_workers(Arc::clone(&region), source.clone(), self.workers)
                .expect("start engine");
        (region, source, engine)
    }
}

/// Reads every page (data checked), writes every page (write-protect faults), invalidates
/// all and reads them again with the home's new content. Shared with the unprivileged child.
pub fn read_write_invalidate(setup: Setup, address: usize, pages: u32) {
    let (region, source, engine) = setup.start(address, pages);

    for index in 0..pages {
        assert_eq!(
            page_of(&region, index),
            source.home.page(index),
            "page {index} after read"
        );
    }
    assert_eq!(
        source.counts(),
        (u64::from(pages), 0, 0),
        "one read fault per page"
    );

    for index in 0..pages {
        write_byte(&region, index, 5, 0xAB);
    }
    assert_eq!(
        source.counts(),
        (u64::from(pages), 0, u64::from(pages)),
        "one WP fault per page"
    );
    for index in (0..pages).step_by(97) {
        let page = page_of(&region, index);
        assert_eq!(page[5], 0xAB);
        assert_eq!(
            page[6..],
            source.home.page(index)[6..],
            "page {index} after write"
        );
    }

    source.home.set_generation(1);
    region.invalidate(0, pages).expect("invalidate all");
    // Writes to missing pages first: they arrive as write faults and are installed writable.
    for index in 0..8 {
        write_byte(&region, index, 0, 0xCD);
    }
    for index in 0..pages {
        let page = page_of(&region, index);
        let home = source.home.page(index);
        let from = if index < 8 { 1 } else { 0 };
        assert_eq!(page[from..], home[from..], "page {index} after invalidate");
    }
    assert_eq!(
        source.counts(),
        (2 * u64::from(pages) - 8, 8, u64::from(pages)),
        "second round: 8 write faults, the rest read faults, no extra WP fault"
    );
    drop(engine);
}

/// Four threads read the same pages in the same order at the same time, then each writes
/// its own byte of every page; every byte must be there at the end.
pub fn four_threads_same_pages(setup: Setup, address: usize) {
    const PAGES: u32 = 1024;
    const THREADS: usize = 4;
    let (region, source, engine) = setup.start(address, PAGES);
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (region, source, start) = (Arc::clone(&region), source.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                for index in 0..PAGES {
                    let page = page_of(&region, index);
                    assert_eq!(page[8 * THREADS..], source.home.page(index)[8 * THREADS..]);
                }
                start.wait();
                for index in 0..PAGES {
                    write_byte(&region, index, thread * 8, 0xE0 + thread as u8);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("application thread");
    }
    for index in 0..PAGES {
        let page = page_of(&region, index);
        for thread in 0..THREADS {
            assert_eq!(
                page[thread * 8],
                0xE0 + thread as u8,
                "page {index} thread {thread}"
            );
        }
    }
    let (reads, writes, write_protects) = source.counts();
    assert!(
        reads >= u64::from(PAGES),
        "every page faulted at least once: {reads}"
    );
    // Over shmem (MINOR + CONTINUE) the kernel may drop a mapped page's PTE on its own (seen
    // once in many CI runs); the next write then arrives as a missing-page write fault, which
    // the server answers correctly (the bytes are checked above). Private memory never does.
    let allowed = if setup.shared {
        u64::from(PAGES) / 100
    } else {
        0
    };
    assert!(
        writes <= allowed,
        "pages were present before the writes: {writes} missing-page write faults"
    );
    assert!(
        write_protects >= u64::from(PAGES),
        "every page upgraded: {write_protects}"
    );
    drop(engine);
}

macro_rules! both_deliveries {
    ($($mode:ident => $delivery:expr, $workers:expr, $shared:expr, $slot:expr;)*) => {$(
        mod $mode {
            use super::*;

            #[test]
            fn region_of_64_mib_read_written_invalidated_and_read_again() {
                let setup = Setup { delivery: $delivery, workers: $workers, shared: $shared };
                read_write_invalidate(setup, test_address($slot), PAGES_64_MIB);
            }

            #[test]
            fn four_threads_fault_the_same_pages_at_once() {
                let setup = Setup { delivery: $delivery, workers: $workers, shared: $shared };
                four_threads_same_pages(setup, test_address($slot + 1));
            }
        }
    )*};
}

both_deliveries! {
    signal => Delivery::Signal, 1, false, 0;
    thread => Delivery::Thread, 1, false, 2;
    thread_inline => Delivery::Thread, 0, false, 4;
    shared_signal => Delivery::Signal, 1, true, 6;
    shared_thread => Delivery::Thread, 0, true, 8;
}

#[test]
fn signal_delivery_is_the_default() {
    assert_eq!(Delivery::default(), Delivery::Signal);
}
