//! A dsm node of the comparison: this binary re-executed with [`NODE_ENV`] (the CPU to pin
//! to, or `none`) and [`STYLE_ENV`] (how the stencil touches region memory).

use std::time::Instant;

use anyhow::{Context, bail};
use dsm::{Consistency, Node, Region};
use serde_json::{Value, json};

use super::{ITERATIONS, N};
use crate::suites::jacobi::initial;
use crate::suites::latency::pin_to;

/// Set in the environment of the dsm node processes: the CPU to pin to, or `none`.
pub(in crate::suites::jacobi) const NODE_ENV: &str = "DSM_BENCH_JACOBI_VS_MPI_NODE";
/// Set beside [`NODE_ENV`]: the [`Style`]'s name.
pub(super) const STYLE_ENV: &str = "DSM_BENCH_JACOBI_VS_MPI_STYLE";

/// How each node reads and writes the grids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    /// In place, through `Region::as_slice`/`as_mut_slice` (what `examples/jacobi` does by
    /// default, and what the MPI version does with its own memory).
    InPlace,
    /// Safe bulk copies: a window of three rows read with `read_slice`, each new row written
    /// with `write_slice` (`examples/jacobi --copy`).
    Copy,
    /// In place, as [`Style::InPlace`], in release consistency (issue #11).
    Release,
}

impl Style {
    pub(super) fn name(self) -> &'static str {
        match self {
            Style::InPlace => "in_place",
            Style::Copy => "copy",
            Style::Release => "release",
        }
    }

    fn parse(name: &str) -> anyhow::Result<Style> {
        Ok(match name {
            "in_place" => Style::InPlace,
            "copy" => Style::Copy,
            "release" => Style::Release,
            other => bail!("unknown stencil style {other:?}"),
        })
    }
}

/// Pin, join, allocate, initialise this node's rows, iterate, checksum this node's rows.
pub(in crate::suites::jacobi) fn main(cpu: &str) -> anyhow::Result<Value> {
    if cpu != "none" {
        pin_to(cpu.parse().context("the CPU to pin to")?)?;
    }
    let style = Style::parse(&std::env::var(STYLE_ENV).context("the stencil style")?)?;
    let node = Node::join(dsm::Config::from_env()?)?;
    let (rank, size) = (node.rank() as usize, node.size() as usize);
    let consistency = match style {
        Style::Release => Consistency::Release,
        Style::InPlace | Style::Copy => Consistency::Sequential,
    };
    let grids = [
        node.alloc::<f64>("versus-mpi-a", N * N, consistency)?,
        node.alloc::<f64>("versus-mpi-b", N * N, consistency)?,
    ];
    let rows = rank * N / size..(rank + 1) * N / size;
    for grid in &grids {
        for i in rows.clone() {
            let row: Vec<f64> = (0..N).map(|j| initial(i, j)).collect();
            grid.write_slice(i * N, &row)?;
        }
    }
    node.barrier()?;
    let before = node.stats();
    let mut window = [vec![0.0; N], vec![0.0; N], vec![0.0; N]];
    let mut out = vec![0.0; N];
    let started = Instant::now();
    for t in 0..ITERATIONS {
        let (from, to) = (&grids[t % 2], &grids[(t + 1) % 2]);
        match style {
            Style::InPlace | Style::Release => step_in_place(from, to, rows.clone()),
            Style::Copy => step_copy(from, to, rows.clone(), &mut window, &mut out)?,
        }
        node.barrier()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = node.stats();
    let (bits, sum) = checksum(&grids[ITERATIONS % 2], rows)?;
    node.leave()?;
    let per_iteration =
        |count: fn(&dsm::Stats) -> u64| (count(&after) - count(&before)) as f64 / ITERATIONS as f64;
    Ok(json!({
        "rank": rank,
        "seconds": seconds,
        "checksum_bits": format!("{bits:016x}"),
        "checksum_sum": sum,
        "pages_fetched_per_iteration": per_iteration(|s| s.pages_fetched),
        "write_faults_per_iteration": per_iteration(|s| s.write_faults),
        "pages_found_written_per_iteration": per_iteration(|s| s.pages_found_written),
        "pages_diffed_per_iteration": per_iteration(|s| s.pages_diffed),
        "messages_sent_per_iteration": per_iteration(|s| s.messages_sent),
        "invalidations_sent_per_iteration": per_iteration(|s| s.invalidations_sent),
        "copies_dropped_per_iteration": per_iteration(|s| s.copies_dropped),
        "write_tracking": format!("{:?}", after.write_tracking),
    }))
}

/// Cells 1..N-1 of one row from the rows above, at and below it, summed in the order of
/// jacobi.c and of the suite's `stencil` (above, below, left, right). The edge cells of
/// `out` are left alone: they keep their initial values, as in jacobi.c.
fn update_row(above: &[f64], row: &[f64], below: &[f64], out: &mut [f64]) {
    for j in 1..N - 1 {
        out[j] = 0.25 * (above[j] + below[j] + row[j - 1] + row[j + 1]);
    }
}

/// One iteration over `rows`, reading and writing region memory in place.
fn step_in_place(from: &Region<f64>, to: &Region<f64>, rows: std::ops::Range<usize>) {
    let inner = rows.start.max(1)..rows.end.min(N - 1);
    if inner.is_empty() {
        return;
    }
    // SAFETY: (as_slice's contract) between the barriers around this iteration no node
    // writes `from` (every write goes to `to`), so the borrowed rows cannot change; the
    // slice is dropped before the next barrier.
    let input = unsafe { from.as_slice((inner.start - 1) * N..(inner.end + 1) * N) };
    // SAFETY: (as_mut_slice's contract) only this node writes its rows of `to`, nobody reads
    // `to` during the iteration, and a row is 4 whole pages, so no page under the slice is
    // written by another node; the slice is dropped before the next barrier.
    let output = unsafe { to.as_mut_slice(inner.start * N..inner.end * N) };
    for (k, out) in output.chunks_exact_mut(N).enumerate() {
        let three = &input[k * N..(k + 3) * N];
        let (above, rest) = three.split_at(N);
        let (row, below) = rest.split_at(N);
        update_row(above, row, below, out);
    }
}

/// One iteration over `rows` with safe bulk copies: a window of three rows of `from`, read
/// once each, and each new row written back with one `write_slice`.
fn step_copy(
    from: &Region<f64>,
    to: &Region<f64>,
    rows: std::ops::Range<usize>,
    window: &mut [Vec<f64>; 3],
    out: &mut [f64],
) -> dsm::Result<()> {
    let inner = rows.start.max(1)..rows.end.min(N - 1);
    if inner.is_empty() {
        return Ok(());
    }
    from.read_slice((inner.start - 1) * N, &mut window[0])?;
    from.read_slice(inner.start * N, &mut window[1])?;
    for i in inner {
        from.read_slice((i + 1) * N, &mut window[2])?;
        let [above, row, below] = &*window;
        update_row(above, row, below, out);
        to.write_slice(i * N + 1, &out[1..N - 1])?;
        window.rotate_left(1);
    }
    Ok(())
}

/// The wrapping sum of the bit patterns of `rows`' cells, and their plain sum.
fn checksum(grid: &Region<f64>, rows: std::ops::Range<usize>) -> dsm::Result<(u64, f64)> {
    let mut row = vec![0.0; N];
    let (mut bits, mut sum) = (0u64, 0.0);
    for i in rows {
        grid.read_slice(i * N, &mut row)?;
        for &cell in &row {
            bits = bits.wrapping_add(cell.to_bits());
            sum += cell;
        }
    }
    Ok((bits, sum))
}
