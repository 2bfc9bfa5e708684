//! `dsm-bench jacobi --json` (issue #6): the protocol's efficiency on a row-split 2D stencil.
//!
//! The suite runs a Jacobi heat stencil (grid `N`×`N` of f64, rows split in blocks across
//! `NODES` processes, a barrier per iteration) on 4 real nodes over loopback, in sequential and
//! release consistency, and reports per node and per iteration, counted over the iterations
//! only (allocation and initialisation excluded):
//! - `pages_fetched_per_iter` beside `boundary_pages_min`: the pages holding the neighbours'
//!   boundary rows, which a row-split stencil cannot avoid fetching each iteration (1 for the
//!   first and last node, 2 for the others); `ratio_pages_to_min` (target ≤ 1.25);
//! - `messages_per_iter` (every frame the node sent: page requests, invalidation traffic,
//!   barrier messages);
//! - `barrier_us_median`: the barrier's share of an iteration (release: diffs or in-place
//!   publication, the rendezvous at rank 0, invalidation by write notices);
//! - `iter_us_median`/`iter_us_p99` (step + barrier) beside `single_process_iter_us_median`:
//!   the same stencil on plain memory in one process, measured in the same run;
//!   `ratio_iter_to_single_process`.
//!
//! The nodes are this same binary re-executed with `DSM_BENCH_JACOBI_NODE` set; each prints
//! one JSON line that the parent collects.
//!
//! `versus_mpi` (issues #10 and #14): the same stencil at 2048×2048, 100 iterations, in place
//! (and, as `dsm_copy_seconds`, with bulk row copies), at 1, 2 and 4 nodes against a
//! hand-written MPI version (`benches/mpi/jacobi.c`, compiled with `mpicc -O2` at bench time)
//! over TCP and over shared memory, runs interleaved, medians of 3: `dsm_seconds` (dsm over
//! TCP), `dsm_shm_seconds` (dsm over shared memory, `DSM_TRANSPORT=shm`), `mpi_tcp_seconds`,
//! `mpi_shm_seconds` per node count, `ratio_dsm_speed_to_mpi_tcp_N` (MPI-TCP time / dsm-TCP
//! time; target ≥ 0.8 at 2 and 4), `ratio_dsm_shm_to_mpi_shm_speed_N` (MPI-shm time / dsm-shm
//! time; target ≥ 1.0 at 2 and 4), `dsm_2_not_slower_than_1`, and the grids' checksums
//! compared exactly. Without `mpicc` the MPI figures are `null` beside `mpi_error` (and a
//! warning on stderr). See `jacobi/versus_mpi.rs`.
//!
//! A node that fails fails the suite, naming the cluster and the node's error.

mod mpi;
mod versus_mpi;

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use dsm::{Consistency, Node, Region};
use serde_json::{Value, json};

use crate::stats::summarize;

/// Grid side: one row is exactly one 4 KiB page, so the boundary minimum is whole pages.
const N: usize = 512;
/// Iterations measured per mode.
const ITERS: usize = 60;
/// Nodes.
const NODES: u32 = 4;
/// Set in the environment of the node processes.
const NODE_ENV: &str = "DSM_BENCH_JACOBI_NODE";
/// A failing node prints its error as one line `ERROR <error>` on stdout.
const ERROR_PREFIX: &str = "ERROR ";

/// Runs the suite and returns its JSON report.
pub fn run() -> anyhow::Result<Value> {
    // A node process: run, print the figures, and end here (the parent prints the report).
    if let Ok(mode) = std::env::var(NODE_ENV) {
        print_outcome(node(&mode))?;
        std::process::exit(0);
    }
    if let Ok(cpu) = std::env::var(versus_mpi::NODE_ENV) {
        print_outcome(versus_mpi::node(&cpu))?;
        std::process::exit(0);
    }
    let single = single_process();
    let mut modes = serde_json::Map::new();
    for mode in ["sequential", "release"] {
        modes.insert(mode.to_owned(), cluster(mode, single)?);
    }
    let versus_mpi = versus_mpi::report()?;
    Ok(json!({
        "suite": "jacobi",
        "grid": N,
        "iterations": ITERS,
        "nodes": NODES,
        "single_process_iter_us_median": single,
        "modes": modes,
        "versus_mpi": versus_mpi,
    }))
}

/// A node's figures as one line on stdout, or its error as an [`ERROR_PREFIX`] line there too:
/// the parent names it in the cluster's failure (on stderr, every rank's interleave).
fn print_outcome(outcome: anyhow::Result<Value>) -> anyhow::Result<()> {
    match outcome {
        Ok(line) => {
            println!("{line}");
            Ok(())
        }
        Err(e) => {
            println!("{ERROR_PREFIX}{e:#}");
            Err(e)
        }
    }
}

/// Starts the node processes for `mode` and summarises what they report.
fn cluster(mode: &str, single_us: f64) -> anyhow::Result<Value> {
    let coordinator = dsm::free_coordinator_address()?;
    let exe = std::env::current_exe()?;
    let children = (0..NODES)
        .map(|rank| {
            Command::new(&exe)
                .args(["jacobi", "--json"])
                .env(NODE_ENV, mode)
                .env("DSM_RANK", rank.to_string())
                .env("DSM_SIZE", NODES.to_string())
                .env("DSM_COORDINATOR", &coordinator)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("start a node")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outputs = wait_all(mode, children, NODE_DEADLINE)?;
    let mut nodes = Vec::new();
    for (rank, text) in outputs.iter().enumerate() {
        let line = text
            .lines()
            .last()
            .with_context(|| format!("{mode}: node {rank} printed nothing"))?;
        nodes.push(serde_json::from_str::<Value>(line)?);
    }
    let worst = nodes
        .iter()
        .filter_map(|n| n["ratio_pages_to_min"].as_f64())
        .fold(0.0f64, f64::max);
    let iter_us = nodes
        .iter()
        .filter_map(|n| n["iter_us_median"].as_f64())
        .fold(0.0f64, f64::max);
    Ok(json!({
        "per_node": nodes,
        "worst_ratio_pages_to_min": worst,
        "pages_target_met": worst <= 1.25,
        "iter_us_median_slowest_node": iter_us,
        "ratio_iter_to_single_process": iter_us / single_us,
    }))
}

/// How long a node process may run before the suite kills the cluster and fails.
const NODE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// Waits for every node (reading their stdout on threads so a full pipe cannot stall them);
/// past `deadline` kills the rest and fails naming the ranks still running; fails naming the
/// first node that failed and its error. `mode` names the cluster in errors.
fn wait_all(
    mode: &str,
    mut children: Vec<std::process::Child>,
    deadline: std::time::Duration,
) -> anyhow::Result<Vec<String>> {
    use std::io::Read;
    let readers: Vec<_> = children
        .iter_mut()
        .map(|child| {
            let mut stdout = child.stdout.take().expect("stdout is piped");
            std::thread::spawn(move || {
                let mut text = String::new();
                stdout.read_to_string(&mut text).map(|_| text)
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let mut status = vec![None; children.len()];
    while status.iter().any(Option::is_none) {
        for (slot, child) in status.iter_mut().zip(&mut children) {
            if slot.is_none() {
                *slot = child.try_wait()?;
            }
        }
        if started.elapsed() > deadline {
            let running: Vec<usize> = (0..status.len()).filter(|&r| status[r].is_none()).collect();
            children.iter_mut().for_each(|c| drop(c.kill()));
            bail!("{mode}: nodes {running:?} still running after {deadline:?}; killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Every node has exited, so every stdout is closed and every reader ends.
    let outputs = readers
        .into_iter()
        .map(|r| {
            r.join()
                .expect("stdout reader panicked")
                .context("read a node's stdout")
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    for (rank, (code, text)) in status.iter().zip(&outputs).enumerate() {
        let code = code.expect("every node exited");
        if !code.success() {
            let error = text
                .lines()
                .find_map(|line| line.strip_prefix(ERROR_PREFIX))
                .unwrap_or("it printed no error (see stderr)");
            bail!("{mode}: node {rank} failed ({code}): {error}");
        }
    }
    Ok(outputs)
}

/// One node: allocate, initialise, iterate, report.
fn node(mode: &str) -> anyhow::Result<Value> {
    let consistency = match mode {
        "release" => Consistency::Release,
        _ => Consistency::Sequential,
    };
    let node = Node::join(dsm::Config::from_env()?)?;
    let (rank, size) = (node.rank() as usize, node.size() as usize);
    let grids = [
        node.alloc::<f64>("bench-a", N * N, consistency)?,
        node.alloc::<f64>("bench-b", N * N, consistency)?,
    ];
    let rows = rank * N / size..(rank + 1) * N / size;
    for grid in &grids {
        for i in rows.clone() {
            for j in 0..N {
                grid.set(i * N + j, initial(i, j));
            }
        }
    }
    node.barrier()?;
    let before = node.stats();
    let mut iter_us = Vec::with_capacity(ITERS);
    let mut barrier_us = Vec::with_capacity(ITERS);
    for t in 0..ITERS {
        let started = Instant::now();
        step_shared(&grids[t % 2], &grids[(t + 1) % 2], rows.clone());
        let stepped = Instant::now();
        node.barrier()?;
        iter_us.push(started.elapsed().as_secs_f64() * 1e6);
        barrier_us.push(stepped.elapsed().as_secs_f64() * 1e6);
    }
    let after = node.stats();
    let iters = ITERS as f64;
    let fetched = (after.pages_fetched - before.pages_fetched) as f64 / iters;
    let messages = (after.messages_sent - before.messages_sent) as f64 / iters;
    let minimum = if rank == 0 || rank == size - 1 {
        1.0
    } else {
        2.0
    };
    let summary = summarize(&mut iter_us);
    let barrier = summarize(&mut barrier_us);
    for grid in grids {
        node.free(grid)?;
    }
    node.leave()?;
    Ok(json!({
        "rank": rank,
        "pages_fetched_per_iter": fetched,
        "boundary_pages_min": minimum,
        "ratio_pages_to_min": fetched / minimum,
        "messages_per_iter": messages,
        "write_faults_per_iter": (after.write_faults - before.write_faults) as f64 / iters,
        "invalidations_received_per_iter":
            (after.invalidations_received - before.invalidations_received) as f64 / iters,
        "iter_us_median": summary.median,
        "iter_us_p99": summary.p99,
        "barrier_us_median": barrier.median,
        "fault_latency_p50_ns": after.fault_latency_p50_ns,
        "fault_latency_p99_ns": after.fault_latency_p99_ns,
    }))
}

fn initial(i: usize, j: usize) -> f64 {
    if i == 0 {
        100.0
    } else {
        ((i * 31 + j * 17) % 97) as f64
    }
}

fn stencil(get: impl Fn(usize) -> f64, i: usize, j: usize) -> f64 {
    0.25 * (get((i - 1) * N + j) + get((i + 1) * N + j) + get(i * N + j - 1) + get(i * N + j + 1))
}

fn step_shared(from: &Region<f64>, to: &Region<f64>, rows: std::ops::Range<usize>) {
    for i in rows.filter(|&i| i > 0 && i < N - 1) {
        for j in 1..N - 1 {
            to.set(i * N + j, stencil(|k| from.get(k), i, j));
        }
    }
}

/// Median µs per iteration of the same stencil on plain memory in this process (`black_box`
/// keeps every load and store, like the shared run's volatile `get`/`set`).
fn single_process() -> f64 {
    let mut grids = [
        (0..N * N)
            .map(|k| initial(k / N, k % N))
            .collect::<Vec<f64>>(),
        (0..N * N)
            .map(|k| initial(k / N, k % N))
            .collect::<Vec<f64>>(),
    ];
    let mut iter_us = Vec::with_capacity(ITERS);
    for t in 0..ITERS {
        let started = Instant::now();
        let (left, right) = grids.split_at_mut(1);
        let (from, to) = if t % 2 == 0 {
            (&left[0], &mut right[0])
        } else {
            (&right[0], &mut left[0])
        };
        for i in 1..N - 1 {
            for j in 1..N - 1 {
                let value = stencil(|k| std::hint::black_box(from[k]), i, j);
                to[i * N + j] = std::hint::black_box(value);
            }
        }
        iter_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    summarize(&mut iter_us).median
}
