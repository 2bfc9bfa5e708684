//! 2D heat stencil (Jacobi iteration) on a shared grid: rows split across nodes, a barrier
//! per iteration, the result checked against a single-process computation.
//!
//! ```sh
//! dsm-run -n 4 --attach 0 -- target/release/examples/jacobi --n 256 --iters 50 --mode release --progress
//! ```
//!
//! `--prefetch K` sets the grids' read prefetch (pages per read fault; 1 turns it off).
//!
//! Rows are read and written in place by default, borrowing region memory with
//! `as_slice`/`as_mut_slice` (see `step_zero_copy` for why that is sound here); `--copy` uses
//! the safe `Region::read_slice`/`write_slice` instead (a rolling window of three rows in
//! plain memory: the inner loop vectorises just the same, but every row crosses memory twice
//! more, which made 2048² iterations 2.4× slower on one node here).

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
    let options = dsm::RegionOptions::new(consistency)
        .prefetch(common::number("--prefetch", dsm::DEFAULT_PREFETCH));
    let grids = [
        node.alloc_with::<f64>("jacobi-a", n * n, options)?,
        node.alloc_with::<f64>("jacobi-b", n * n, options)?,
    ];
    let rows = rank * n / size..(rank + 1) * n / size;
    for grid in &grids {
        for i in rows.clone() {
            let row: Vec<f64> = (0..n).map(|j| initial(n, i, j)).collect();
            grid.write_slice(i * n, &row)?;
        }
    }
    node.barrier()?;
    let progress =
        (rank == 0 && std::env::args().any(|a| a == "--progress")).then(|| progress_bar(iters));
    let copy = std::env::args().any(|a| a == "--copy");
    let started = Instant::now();
    for t in 0..iters {
        let (from, to) = (&grids[t % 2], &grids[(t + 1) % 2]);
        if copy {
            step(from, to, n, rows.clone())?;
        } else {
            step_zero_copy(from, to, n, rows.clone());
        }
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
    println!(
        "rank {rank}: {iters} iterations in {:.1} ms ({:.1} us/iter); {}",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / iters.max(1) as f64,
        node.stats()
    );
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

/// One row of the update: `out[j]` from the rows above, at and below it (plain slices: the
/// loop vectorises).
fn update_row(above: &[f64], row: &[f64], below: &[f64], out: &mut [f64]) {
    let n = row.len();
    for j in 1..n - 1 {
        out[j] = 0.25 * (above[j] + below[j] + row[j - 1] + row[j + 1]);
    }
}

/// One iteration over `rows` with safe bulk copies: a window of three rows of `from`, read
/// once each, and each new row written back with one `write_slice`.
fn step(
    from: &Region<f64>,
    to: &Region<f64>,
    n: usize,
    rows: std::ops::Range<usize>,
) -> dsm::Result<()> {
    let inner = rows.start.max(1)..rows.end.min(n - 1);
    if inner.is_empty() {
        return Ok(());
    }
    let mut window = vec![vec![0.0; n]; 3];
    from.read_slice((inner.start - 1) * n, &mut window[0])?;
    from.read_slice(inner.start * n, &mut window[1])?;
    let mut out = vec![0.0; n];
    for i in inner {
        from.read_slice((i + 1) * n, &mut window[2])?;
        out[0] = window[1][0];
        out[n - 1] = window[1][n - 1];
        update_row(&window[0], &window[1], &window[2], &mut out);
        to.write_slice(i * n + 1, &out[1..n - 1])?;
        window.rotate_left(1);
    }
    Ok(())
}

/// The same iteration reading and writing region memory in place.
fn step_zero_copy(from: &Region<f64>, to: &Region<f64>, n: usize, rows: std::ops::Range<usize>) {
    let inner = rows.start.max(1)..rows.end.min(n - 1);
    if inner.is_empty() {
        return;
    }
    // SAFETY: (as_slice's contract) between the barriers around this iteration no node
    // writes `from` (every write goes to `to`), so the borrowed rows cannot change, and
    // the slice is dropped before the next barrier.
    let input = unsafe { from.as_slice((inner.start - 1) * n..(inner.end + 1) * n) };
    // SAFETY: (as_mut_slice's contract) only this node writes its rows of `to`, nobody reads
    // `to` during the iteration, and the slice is dropped before the next barrier.
    let output = unsafe { to.as_mut_slice(inner.start * n..inner.end * n) };
    for (k, out) in output.chunks_exact_mut(n).enumerate() {
        let rows = &input[k * n..(k + 3) * n];
        let (above, rest) = rows.split_at(n);
        let (row, below) = rest.split_at(n);
        out[0] = row[0];
        out[n - 1] = row[n - 1];
        update_row(above, row, below, out);
    }
}

fn check(result: &Region<f64>, n: usize, iters: usize) -> dsm::Result<()> {
    let expected = reference(n, iters);
    let mut got = vec![0.0; n * n];
    result.read_slice(0, &mut got)?;
    let worst = expected
        .iter()
        .zip(&got)
        .map(|(want, got)| (got - want).abs())
        .fold(0.0f64, f64::max);
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
