//! Tracked regions: writes resolved by the kernel, written pages found by `PAGEMAP_SCAN`.

use dsm_uffd::{Delivery, Error, UffdRegion, probe_write_tracking};
use dsm_wire::PAGE_SIZE;

use super::common::{test_address, write_byte};

fn written(region: &UffdRegion) -> Vec<u32> {
    let mut pages = Vec::new();
    region
        .take_written(0, region.pages(), &mut pages)
        .expect("scan");
    pages
}

#[test]
fn this_kernel_supports_write_tracking() {
    // CI runs on Linux 6.18: the probe must pass here (it falls back elsewhere).
    probe_write_tracking().expect("WP_ASYNC + PAGEMAP_SCAN on this kernel");
}

#[test]
fn a_scan_reports_exactly_the_pages_written_since_the_last_scan() {
    let region = UffdRegion::new_tracked(test_address(41), 8, Delivery::Thread).expect("region");
    // Every page installed: a scan reports missing pages as written (Linux 6.18), so callers
    // scan only runs of installed pages.
    for page in [0, 1, 2, 3, 4, 5, 7] {
        region
            .install_read_only(page, &[7; PAGE_SIZE])
            .expect("install");
    }
    region
        .install_read_write(6, &[7; PAGE_SIZE])
        .expect("install writable");
    // A page installed writable counts as written until a scan protects it.
    assert_eq!(written(&region), vec![6]);
    assert_eq!(
        written(&region),
        Vec::<u32>::new(),
        "the scan re-protected it"
    );
    // Writes to write-protected pages do not fault (nobody serves this region) and are seen.
    write_byte(&region, 1, 0, 1);
    write_byte(&region, 5, PAGE_SIZE - 1, 2);
    write_byte(&region, 5, 17, 3);
    assert_eq!(written(&region), vec![1, 5]);
    assert_eq!(written(&region), Vec::<u32>::new());
    // A write after the scan is reported by the next one.
    write_byte(&region, 1, 9, 4);
    assert_eq!(written(&region), vec![1]);
    let mut copy = [0u8; PAGE_SIZE];
    region.read_page(1, &mut copy).expect("read");
    assert_eq!(
        (copy[0], copy[9], copy[1]),
        (1, 4, 7),
        "writes kept, others untouched"
    );
}

#[test]
fn a_scan_can_cover_part_of_the_region_and_leaves_the_rest_alone() {
    let region = UffdRegion::new_tracked(test_address(42), 8, Delivery::Thread).expect("region");
    for page in 0..8 {
        region
            .install_read_write(page, &[0; PAGE_SIZE])
            .expect("install");
    }
    let mut pages = Vec::new();
    assert_eq!(region.take_written(2, 3, &mut pages).expect("scan"), 3);
    assert_eq!(pages, vec![2, 3, 4]);
    // Pages outside the scanned run stay unprotected (still reported as written).
    assert_eq!(written(&region), vec![0, 1, 5, 6, 7]);
}

#[test]
fn only_tracked_regions_can_be_scanned() {
    let region = UffdRegion::new(test_address(43), 2, Delivery::Thread).expect("region");
    let error = region
        .take_written(0, 2, &mut Vec::new())
        .expect_err("refused");
    assert!(matches!(error, Error::Unsupported(_)), "{error}");
    let tracked = UffdRegion::new_tracked(test_address(44), 2, Delivery::Thread).expect("r");
    assert!(matches!(
        tracked.take_written(1, 2, &mut Vec::new()),
        Err(Error::PageOutOfRange { .. })
    ));
}

#[test]
fn a_page_taken_away_keeps_every_store_and_faults_afterwards() {
    let region = UffdRegion::new_tracked(test_address(45), 4, Delivery::Thread).expect("region");
    region
        .install_read_only(1, &[5; PAGE_SIZE])
        .expect("install");
    write_byte(&region, 1, 100, 9);
    let mut last = [0u8; PAGE_SIZE];
    assert!(region.take_page(1, &mut last).expect("take"));
    assert_eq!(
        (last[0], last[100]),
        (5, 9),
        "the store is in the last contents"
    );
    // Gone: installing again works (the page is missing), and a missing page is not taken.
    assert!(!region.take_page(2, &mut last).expect("hole"));
    region
        .install_read_only(1, &[6; PAGE_SIZE])
        .expect("install again");
    let mut copy = [0u8; PAGE_SIZE];
    region.read_page(1, &mut copy).expect("read");
    assert_eq!(copy[100], 6);
    // The move is available here (Linux 6.18): no window where a store could be lost.
    assert!(dsm_uffd::Features::probe().expect("probe").move_pages());
}
