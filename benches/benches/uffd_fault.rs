//! Criterion bench `uffd_fault` (issue #3): read-fault and write-protect-fault service under
//! both deliveries, fault-around, and the kernel baselines (bare UFFDIO_COPY, memcpy of 4 KiB).
//! Only the faulting access is timed; re-arming the pages (invalidate) is not.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dsm_bench::suites::uffd::{AROUND, PAGES, ServeOptions, Served, bench_address};
use dsm_uffd::{Delivery, UffdRegion};
use dsm_wire::PAGE_SIZE;

/// Times `access(page)` on `iters` pages, after an untimed `prepare(page)`, invalidating the
/// region (untimed) each time every page has been used.
fn faults(
    served: &Served,
    iters: u64,
    mut prepare: impl FnMut(u32),
    mut access: impl FnMut(u32),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut page = PAGES;
    for _ in 0..iters {
        if page == PAGES {
            served
                .region
                .invalidate_mapping(0, PAGES)
                .expect("invalidate");
            page = 0;
        }
        prepare(page);
        let start = Instant::now();
        access(page);
        total += start.elapsed();
        page += 1;
    }
    total
}

fn read_and_wp_faults(c: &mut Criterion) {
    let mut group = c.benchmark_group("uffd_fault");
    for (name, options, slot) in [
        ("signal", ServeOptions::signal(), 4),
        ("thread", ServeOptions::thread(1), 5),
        ("thread_inline", ServeOptions::thread(0), 8),
        (
            "signal_zero_copy",
            ServeOptions {
                shared: true,
                ..ServeOptions::signal()
            },
            9,
        ),
    ] {
        let served = Served::new(bench_address(slot), options).expect("served region");
        group.bench_function(format!("read_fault/{name}"), |b| {
            b.iter_custom(|iters| {
                faults(&served, iters, drop, |page| {
                    black_box(served.read(page));
                })
            })
        });
        group.bench_function(format!("wp_fault/{name}"), |b| {
            b.iter_custom(|iters| {
                // Untimed read first: the timed write then meets a write-protected page.
                let read = |page| {
                    black_box(served.read(page));
                };
                faults(&served, iters, read, |page| served.write(page))
            })
        });
    }
    let options = ServeOptions {
        around: AROUND,
        ..ServeOptions::signal()
    };
    let around = Served::new(bench_address(6), options).expect("served region");
    group.bench_function("read_fault_around16_per_page/signal", |b| {
        b.iter_custom(|iters| {
            faults(&around, iters, drop, |page| {
                black_box(around.read(page));
            })
        })
    });
    group.finish();
}

fn baselines(c: &mut Criterion) {
    let mut group = c.benchmark_group("uffd_baseline");
    let region = UffdRegion::new(bench_address(7), PAGES, Delivery::Signal).expect("region");
    let data = [7u8; PAGE_SIZE];
    group.bench_function("bare_copy_wp", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let page = u32::try_from(i % u64::from(PAGES)).expect("below PAGES");
                if page == 0 {
                    region.invalidate(0, PAGES).expect("invalidate");
                }
                let start = Instant::now();
                region.install_read_only(page, &data).expect("UFFDIO_COPY");
                total += start.elapsed();
            }
            total
        })
    });
    let source = vec![3u8; PAGE_SIZE];
    let mut target = vec![0u8; PAGE_SIZE];
    group.bench_function("memcpy_4k", |b| {
        b.iter(|| target.copy_from_slice(black_box(&source)))
    });
    group.finish();
}

criterion_group!(benches, read_and_wp_faults, baselines);
criterion_main!(benches);
