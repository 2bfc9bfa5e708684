//! Criterion bench `tcp_page` (issue #4): a 4 KiB page round trip and a 64-deep page stream
//! between two processes on loopback, through the io_uring transport and through plain
//! blocking `std::net` sockets moving the same bytes (the baseline), in the same run.
//! `dsm-bench tcp --json` prints the medians, p99s and ratios.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group};
use dsm_bench::suites::tcp::{Pair, WINDOW, exit_if_child};
use dsm_wire::PAGE_SIZE;

fn round_trip(c: &mut Criterion) {
    let mut pair = Pair::start().expect("start the home process");
    let mut group = c.benchmark_group("tcp_page/rtt");
    group.bench_function("io_uring", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| pair.rtt_transport().expect("rtt")).sum())
    });
    group.bench_function("std", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| pair.rtt_std().expect("rtt")).sum())
    });
    group.finish();

    let mut group = c.benchmark_group("tcp_page/stream");
    let pages = 1024;
    group.throughput(Throughput::Bytes(pages * PAGE_SIZE as u64));
    group.bench_function("io_uring", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| pair.stream_transport(pages, WINDOW).expect("stream"))
                .sum::<Duration>()
        })
    });
    group.bench_function("std", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| pair.stream_std(pages, WINDOW).expect("stream"))
                .sum::<Duration>()
        })
    });
    group.finish();
    assert_eq!(pair.errors(), 0, "page reads failed");
}

criterion_group!(benches, round_trip);

fn main() {
    // The same executable serves as the home process.
    exit_if_child();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
