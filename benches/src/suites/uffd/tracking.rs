//! Issue #11's figures: what release mode pays per page with asynchronous write tracking,
//! against the write fault it replaces (measured in the same run by the suite).
//!
//! - `async_write_first`: the first write to a write-protected page of a tracked region
//!   (the kernel resolves it, no message to user space);
//! - `scan_per_page`: one `PAGEMAP_SCAN` over the whole region with every other page
//!   written, per page scanned (it also write-protects the written pages again);
//! - `twin_copy`: copying one 4 KiB page into a fresh twin.

use dsm_uffd::{Delivery, UffdRegion};
use dsm_wire::PAGE_SIZE;
use serde_json::Value;

use super::{PAGES, bench_address, figure, time_ns};

/// Rounds of each figure.
const ROUNDS: usize = 3;

/// Adds the three figures to `report`; returns the medians (async write, scan per page).
pub(super) fn figures(
    slot: usize,
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<(f64, f64)> {
    let region = UffdRegion::new_tracked(bench_address(slot), PAGES, Delivery::Thread)?;
    let data = [1u8; PAGE_SIZE];
    for index in 0..PAGES {
        region.install_read_only(index, &data)?;
    }
    let mut writes = Vec::new();
    let mut scans = Vec::new();
    let mut written = Vec::with_capacity(PAGES as usize);
    for round in 0..ROUNDS {
        for index in (0..PAGES).step_by(2) {
            let address = region.page_address(index)? + round;
            // SAFETY: inside the installed, live mapping; a tracked region's writes never
            // fault to user space.
            writes.push(time_ns(|| unsafe {
                (address as *mut u8).write_volatile(2)
            }));
        }
        written.clear();
        let ns = time_ns(|| {
            region
                .take_written(0, PAGES, &mut written)
                .expect("PAGEMAP_SCAN");
        });
        anyhow::ensure!(
            written.len() == PAGES as usize / 2,
            "the scan found {} written pages, not {}",
            written.len(),
            PAGES / 2
        );
        scans.push(ns / f64::from(PAGES));
    }
    let mut twins: Vec<f64> = (0..PAGES as usize)
        .map(|_| {
            time_ns(|| {
                std::hint::black_box(Box::new(*std::hint::black_box(&data)));
            })
        })
        .collect();
    let write = figure("async_write_first", &mut writes, report).median;
    let scan = figure("scan_per_page", &mut scans, report).median;
    figure("twin_copy", &mut twins, report);
    Ok((write, scan))
}
