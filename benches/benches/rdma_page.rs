//! Criterion bench `rdma_page` (issue #7): one remote page read over RDMA
//! (`RdmaTransport::read_page` → RDMA READ → `PageRead` event at the caller). Needs an RDMA
//! device: `scripts/soft-roce-setup.sh run cargo bench -p dsm-bench --bench rdma_page`
//! (Soft-RoCE under TCG is slow; compare with `ib_read_lat -s 4096`, see `dsm-bench rdma`).

use std::io::Write;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dsm_bench::suites::rdma::{ChannelSink, PAGES, RdmaPair, read_one};

fn rdma_page(c: &mut Criterion) {
    if let Err(error) = dsm_rdma::device_names() {
        // Straight to stderr, past any capture: the skip must be seen.
        let _ = writeln!(std::io::stderr(), "SKIP bench rdma_page: {error}");
        return;
    }
    let (sink, events) = ChannelSink::pair();
    let pair = RdmaPair::open(sink).expect("connect the reader and the home");
    let mut group = c.benchmark_group("rdma_page");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    let mut page = 0;
    group.bench_function("read_page_4k", |b| {
        b.iter(|| {
            page = (page + 1) % PAGES;
            read_one(&pair, &events, page).expect("page read");
        })
    });
    group.finish();
}

criterion_group!(benches, rdma_page);
criterion_main!(benches);
