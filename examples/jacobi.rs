//! 2D heat stencil (Jacobi iteration) on a shared grid: rows split across nodes, a barrier
//! per iteration, the result checked against a single-process computation.
//!
//! ```sh
//! dsm-run -n 4 --attach 0 -- target/release/examples/jacobi --n 256 --iters 50 --mode release --progress
//! ```

use std::time::Instant;

use dsm::{Node, Region};

mod common;

fn main() {
    common::exit_on_error(run);
}

/// The value of cell (i, j) after one update from `get`.
fn stencil(get: impl Fn(usize, usize) -> f64, i: usize, j: usize) -> f64 {
    0.25 * (get(i - 1, j) + get(i + 1, j) + get(i, j - 1) + get(i, j + 1))
}

/// Starting temperature: a hot top edge and an uneven interior, so that every row changes
/// from the first iteration (the boundary rows between nodes carry real data at once).
fn initial(n: usize, i: usize, j: usize) -> f64 {
    if i == 0 {
        100.0
    } else {
        ((i * 31 + j * 17) % 97) as f64 + (n % 7) as f64
    }
}

/// The same computation in one process, for the check.
fn reference(n: usize, iters: usize) -> Vec<f64> {
    let mut a: Vec<f64> = (0..n * n).map(|k| initial(n, k / n, k % n)).collect();
    let mut b = a.clone();
    for _ in 0..iters {
        for i in 1..n - 1 {
            for j in 1..n - 1 {
                b[i * n + j] = stencil(|r, c| a[r * n + c], i, j);
            }
        }
        std::mem::swap(&mut a, &mut b);
    }
    a
}

fn run() -> dsm::Result<()> {
    let n = common::number("--n", 256);
    let iters = common::number("--iters", 40);
    let consistency = common::mode();
    let node = Node::join(dsm::Config::from_env()?)?;
    let (rank, size) = (node.rank() as usize, node.size() as usize);
    let grids = [
        node.alloc::<f64>("jacobi-a", n * n, consistency)?,
        node.alloc::<f64>("jacobi-b", n * n, consistency)?,
    ];
    let rows = rank * n / size..(rank + 1) * n / size;
    for grid in &grids {
        for i in rows.clone() {
            for j in 0..n {
                grid.set(i * n + j, initial(n, i, j));
            }
        }
    }
    node.barrier()?;
    let progress =
        (rank == 0 && std::env::args().any(|a| a == "--progress")).then(|| progress_bar(iters));
    let started = Instant::now();
    for t in 0..iters {
        let (from, to) = (&grids[t % 2], &grids[(t + 1) % 2]);
        step(from, to, n, rows.clone());
        node.barrier()?;
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    let elapsed = started.elapsed();
    if let Some(bar) = progress {
        bar.finish();
    }
    let result = &grids[iters % 2];
    if rank == 0 {
        check(result, n, iters)?;
    }
    let s = node.stats();
    println!(
        "rank {rank}: {iters} iterations in {:.1} ms ({:.1} us/iter); read_faults={} write_faults={} \
         pages_fetched={} messages_sent={} bytes_sent={} invalidations_sent={} invalidations_received={} \
         diffs_sent={} barriers={} fault_p50={}ns fault_p99={}ns",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / iters.max(1) as f64,
        s.read_faults,
        s.write_faults,
        s.pages_fetched,
        s.messages_sent,
        s.bytes_sent,
        s.invalidations_sent,
        s.invalidations_received,
        s.diffs_sent,
        s.barriers,
        s.fault_latency_p50_ns,
        s.fault_latency_p99_ns
    );
    for grid in grids {
        node.free(grid)?;
    }
    node.leave()
}

/// Rank 0's progress bar on stderr (`dsm-run --attach 0` keeps it on the terminal).
fn progress_bar(iters: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(iters as u64);
    let style = indicatif::ProgressStyle::with_template(
        "jacobi {bar:40.cyan/blue} {pos}/{len} iterations {elapsed_precise} ({per_sec})",
    )
    .expect("a valid template");
    bar.set_style(style);
    bar
}

fn step(from: &Region<'_, f64>, to: &Region<'_, f64>, n: usize, rows: std::ops::Range<usize>) {
    for i in rows.filter(|&i| i > 0 && i < n - 1) {
        for j in 1..n - 1 {
            to.set(i * n + j, stencil(|r, c| from.get(r * n + c), i, j));
        }
    }
}

fn check(result: &Region<'_, f64>, n: usize, iters: usize) -> dsm::Result<()> {
    let expected = reference(n, iters);
    let mut worst = 0.0f64;
    for (k, want) in expected.iter().enumerate() {
        worst = worst.max((result.get(k) - want).abs());
    }
    if worst == 0.0 {
        println!("jacobi check passed: {n}x{n}, {iters} iterations, max |diff| = 0");
        Ok(())
    } else {
        println!("jacobi check FAILED: max |diff| = {worst}");
        Err(dsm::Error::Protocol(format!(
            "jacobi result differs by up to {worst}"
        )))
    }
}
