//! A lock-protected shared counter and histogram: every node increments the counter under
//! one lock and counts the value it saw in a shared histogram; rank 0 checks the totals.
//!
//! ```sh
//! dsm-run -n 4 -- target/release/examples/counter --increments 200 --mode release
//! ```
//!
//! `--home-queue` uses the home-queue lock instead of Ricart–Agrawala.

use dsm::Node;

/// Histogram buckets: value `v` lands in bucket `v % BUCKETS`.
const BUCKETS: usize = 16;

mod common;

fn main() {
    common::exit_on_error(run);
}

fn run() -> dsm::Result<()> {
    let increments: u64 = common::number("--increments", 200);
    let consistency = common::mode();
    let node = Node::join(dsm::Config::from_env()?)?;
    // Element 0 is the counter, 1..=BUCKETS the histogram.
    let shared = node.alloc::<u64>("counter", 1 + BUCKETS, consistency)?;
    if std::env::args().any(|a| a == "--home-queue") {
        node.set_lock_kind(0, dsm::LockKind::HomeQueue)?;
    }
    node.barrier()?;
    let lock = node.lock(0);
    for _ in 0..increments {
        let _guard = lock.acquire()?;
        let seen = shared.get(0);
        shared.set(0, seen + 1);
        let bucket = 1 + usize::try_from(seen % BUCKETS as u64).expect("below BUCKETS");
        shared.set(bucket, shared.get(bucket) + 1);
    }
    node.barrier()?;
    let total = increments * u64::from(node.size());
    if node.rank() == 0 {
        check(&shared, total)?;
    }
    println!("rank {}: {}", node.rank(), node.stats());
    node.leave()
}

fn check(shared: &dsm::Region<u64>, total: u64) -> dsm::Result<()> {
    let counter = shared.get(0);
    let histogram: Vec<u64> = (1..=BUCKETS).map(|b| shared.get(b)).collect();
    let expected: Vec<u64> = (0..BUCKETS as u64)
        .map(|b| (0..total).filter(|v| v % BUCKETS as u64 == b).count() as u64)
        .collect();
    if counter == total && histogram == expected {
        println!("counter check passed: {counter} increments, histogram {histogram:?}");
        Ok(())
    } else {
        println!(
            "counter check FAILED: counter {counter} (want {total}), histogram {histogram:?} (want {expected:?})"
        );
        Err(dsm::Error::Protocol("lost increments".into()))
    }
}
