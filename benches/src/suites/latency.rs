//! `dsm-bench latency --json` (issue #10): the latency of a remote read fault, an in-order
//! scan, a lock hand-off and a barrier through the public `dsm` API, each beside the floors it
//! is judged against, measured between the same processes in the same run.
//!
//! Nodes are real processes on loopback (this binary re-executed in the node role, see
//! `latency/node.rs`), `DSM_TRANSPORT=tcp`, started by the suite with `DSM_RANK`, `DSM_SIZE`
//! and `DSM_COORDINATOR` on a free port. Two runs:
//! - `n2`: 2 nodes, rank `r` pinned to CPU `r % ncpus` (`sched_setaffinity`), with targets;
//! - `n2_service_nice0`: the same with `DSM_SERVICE_PRIORITY=0` (service threads at the
//!   application's priority), no targets; `n2`'s `ratio_*_realtime_to_nice0` compare the two;
//! - `n4_oversubscribed`: 4 nodes pinned `r % ncpus` on this 2-CPU machine (nodes outnumber
//!   CPUs), the same code, no targets.
//!
//! Figures (microseconds, median and p99, rank 0's samples):
//! - `remote_read_fault_us`: rank 1 writes one word in each of 2048 pages of its block
//!   (sequential mode; every 16th page, so a prefetch of up to 16 pages still leaves one fault
//!   per read), then waits in a barrier while rank 0 reads them in a random order, timing
//!   each read: the first touch of the page here, one fault;
//! - `remote_read_fault_home_computing_us`: the same (512 other pages) while rank 1, their
//!   home, computes instead of waiting (a loop on plain memory for 600 ms; reads that end
//!   later than 500 ms do not count): its service threads must take its CPU to answer;
//! - `scan_per_page_us`: the same with every page of a 32 MiB block read in order, one word
//!   per page, timed in slices of 32 pages (prefetch helps here);
//! - `lock_handoff_us`: ranks 0 and 1 take turns holding one lock and incrementing one word
//!   of a sequential region under it; half of rank 0's cycle (one acquire + increment +
//!   release by each node in turn);
//! - `barrier_us`: every node passes barriers in a row.
//!
//! Floors, between the same two pinned processes (ranks 0 and 1), before the first figure and
//! after each: `rtt_blocking_us` and `rtt_busy_poll_us`, a std TCP round trip (64 B request,
//! 4 KiB reply, `TCP_NODELAY`) on an extra connection the two nodes open between them, both
//! ends blocking in `read` or busy-polling `recv(MSG_DONTWAIT)`; `rtt_floor_us` is the faster
//! median; `local_sigbus_fault_us`, an in-thread SIGBUS read fault on rank 0, measured by the
//! `uffd` suite's own code (`uffd::fault_service`). `floor_rounds` shows each round's medians.
//!
//! Ratios of medians: `ratio_remote_read_fault_to_floor` = remote read fault / (round-trip
//! floor + local floor) (target ≤ 2 at 2 nodes), `ratio_lock_handoff_to_rtt` (≤ 4),
//! `ratio_barrier_to_rtt` (≤ 3), `ratio_scan_per_page_to_floor` (no target); `meets_targets`
//! says which hold.
//!
//! Per-hop breakdown and tracing overhead (2 nodes): the nodes run with `DSM_TRACE` in a
//! scratch directory but turn tracing off after `join`; after the figures above they run the
//! remote read fault (on pages between the first pass's), the lock hand-off and the barriers
//! again with tracing on (`Node::set_tracing`), then a floor round. `n2` gets those as
//! `*_traced_us` and `ratio_{fault,lock_handoff,barrier}_traced_to_untraced` (what tracing
//! costs, same run); `hops` gives the median and p99 of every hop of the traced pass, read
//! from both ranks' trace files (see `latency/hops.rs`), and names the files, which stay
//! for a viewer (<https://ui.perfetto.dev>).
//!
//! Nothing waits unboundedly: nodes run with `DSM_OP_TIMEOUT_MS` and `DSM_JOIN_TIMEOUT_MS`,
//! the floor connection's reads and spins are bounded, and the parent kills the nodes after a
//! deadline (or as soon as one fails), naming the phase each rank was in.

mod figures;
mod floor;
mod hops;
mod node;
mod placement;
mod spawn;

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::stats::round;
pub(crate) use placement::{allowed_cpus, cpu_for, pin_to};
use spawn::{Launch, Nodes};

/// Bound on any runtime wait in a node (a fault, a lock, a barrier), milliseconds.
const OP_TIMEOUT_MS: u64 = 30_000;
/// Bound on joining, milliseconds.
const JOIN_TIMEOUT_MS: u64 = 30_000;
/// How long one cluster may run before the suite kills it and fails.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(180);
/// Targets at 2 nodes (issue #10).
const TARGET_REMOTE_READ_FAULT_TO_FLOOR: f64 = 2.0;
const TARGET_LOCK_HANDOFF_TO_RTT: f64 = 4.0;
const TARGET_BARRIER_TO_RTT: f64 = 3.0;

/// Runs the suite and returns its JSON report (in a node process: runs the node, then exits).
pub fn run() -> anyhow::Result<Value> {
    if let Ok(cpu) = std::env::var(node::NODE_ENV) {
        node::main(&cpu)?;
        std::process::exit(0);
    }
    let started = Instant::now();
    let cpus = allowed_cpus()?;
    let traces = std::env::temp_dir().join(format!("dsm-bench-latency-{}", std::process::id()));
    std::fs::create_dir_all(&traces).with_context(|| format!("{}", traces.display()))?;
    let (mut two, hops) = cluster(2, &cpus, Some(&traces), &[]).context("latency, 2 nodes")?;
    let normal = [("DSM_SERVICE_PRIORITY", "0")];
    let (nice0, _) = cluster(2, &cpus, None, &normal).context("latency, 2 nodes at nice 0")?;
    compare_priorities(&mut two, &nice0)?;
    let (four, _) = cluster(4, &cpus, None, &[]).context("latency, 4 nodes (oversubscribed)")?;
    Ok(json!({
        "suite": "latency",
        "unit": "microseconds",
        "transport": "DSM_TRANSPORT=tcp, loopback, one process per node",
        "fault_delivery": std::env::var("DSM_FAULT_DELIVERY")
            .unwrap_or_else(|_| "runtime default".to_owned()),
        "cpus": cpus,
        "remote_read_fault_order": format!(
            "every {}th page of rank 1's block, random permutation (splitmix64 seed {:#x})",
            figures::REMOTE_STRIDE,
            figures::SEED
        ),
        "n2": two,
        "n2_service_nice0": nice0,
        "n4_oversubscribed": four,
        "hops": hops,
        "elapsed_s": round(started.elapsed().as_secs_f64()),
    }))
}

/// Runs `size` nodes pinned `rank % ncpus` and returns rank 0's report with its ratios (and,
/// at 2 nodes, the targets). With `traces`, the nodes also run the traced pass with
/// `DSM_TRACE` in that directory, and the per-hop breakdown comes back too.
/// The 2-node figures again with every service thread at the application's priority
/// (`DSM_SERVICE_PRIORITY=0`): `ratio_*_realtime_to_nice0` in `n2` (docs/architecture.md,
/// "Scheduling").
fn compare_priorities(two: &mut Value, nice0: &Value) -> anyhow::Result<()> {
    for figure in [
        "remote_read_fault_home_computing",
        "remote_read_fault",
        "barrier",
    ] {
        let median = |report: &Value| {
            report[format!("{figure}_us")]["median"]
                .as_f64()
                .with_context(|| format!("{figure}_us missing"))
        };
        let ratio = median(two)? / median(nice0)?;
        two[format!("ratio_{figure}_realtime_to_nice0")] = json!(round(ratio));
    }
    Ok(())
}

fn cluster(
    size: u32,
    cpus: &[usize],
    traces: Option<&std::path::Path>,
    extra_env: &[(&'static str, &str)],
) -> anyhow::Result<(Value, Option<Value>)> {
    let placement: Vec<usize> = (0..size).map(|rank| cpu_for(rank, cpus)).collect();
    let label = format!("latency, {size} nodes");
    let mut env = vec![
        ("DSM_TRANSPORT", "tcp".to_owned()),
        ("DSM_OP_TIMEOUT_MS", OP_TIMEOUT_MS.to_string()),
        ("DSM_JOIN_TIMEOUT_MS", JOIN_TIMEOUT_MS.to_string()),
    ];
    env.extend(extra_env.iter().map(|&(k, v)| (k, v.to_owned())));
    if let Some(dir) = traces {
        let path = hops::trace_path(dir);
        env.push(("DSM_TRACE", path.to_string_lossy().into_owned()));
    }
    let nodes = Nodes::start(&Launch {
        label: &label,
        args: &["latency", "--json"],
        cpus: placement.iter().copied().map(Some).collect(),
        role_env: node::NODE_ENV,
        env,
    })?;
    let results = nodes.wait(CLUSTER_DEADLINE)?;
    let line = results[0]
        .last()
        .with_context(|| format!("{label}: rank 0 printed no result"))?;
    let mut report: Value = serde_json::from_str(line).context("rank 0's result")?;
    report["nodes"] = json!(size);
    report["placement_cpu_per_rank"] = json!(placement);
    add_ratios(&mut report, size == 2 && extra_env.is_empty())?;
    let hops = match traces {
        Some(dir) => {
            add_tracing_overhead(&mut report)?;
            Some(hops::breakdown(dir, &mut report).context("the per-hop breakdown")?)
        }
        None => None,
    };
    Ok((report, hops))
}

/// What the runtime's tracing costs: `ratio_<figure>_traced_to_untraced`, the traced pass's
/// median over the first pass's, in the same run.
fn add_tracing_overhead(report: &mut Value) -> anyhow::Result<()> {
    for (ratio, figure) in [
        ("fault", "remote_read_fault"),
        ("lock_handoff", "lock_handoff"),
        ("barrier", "barrier"),
    ] {
        let median = |name: String| {
            report[&name]["median"]
                .as_f64()
                .with_context(|| format!("{name} missing from rank 0's result"))
        };
        let traced = median(format!("{figure}_traced_us"))?;
        let untraced = median(format!("{figure}_us"))?;
        report[format!("ratio_{ratio}_traced_to_untraced")] = json!(round(traced / untraced));
    }
    Ok(())
}

/// Adds the `ratio_*` fields (medians over medians) and, with `targets`, the targets and
/// whether each is met.
fn add_ratios(report: &mut Value, targets: bool) -> anyhow::Result<()> {
    let median = |name: &str| {
        report[name]["median"]
            .as_f64()
            .with_context(|| format!("{name} missing from rank 0's result"))
    };
    let remote = median("remote_read_fault_us")?;
    let scan = median("scan_per_page_us")?;
    let handoff = median("lock_handoff_us")?;
    let barrier = median("barrier_us")?;
    let local = median("local_sigbus_fault_us")?;
    let rtt = report["rtt_floor_us"]
        .as_f64()
        .context("rtt_floor_us missing")?;
    let ratios = [
        (
            "remote_read_fault_to_floor",
            remote / (rtt + local),
            TARGET_REMOTE_READ_FAULT_TO_FLOOR,
        ),
        (
            "lock_handoff_to_rtt",
            handoff / rtt,
            TARGET_LOCK_HANDOFF_TO_RTT,
        ),
        ("barrier_to_rtt", barrier / rtt, TARGET_BARRIER_TO_RTT),
    ];
    report["ratio_scan_per_page_to_floor"] = json!(round(scan / (rtt + local)));
    let mut met = serde_json::Map::new();
    for (name, ratio, target) in ratios {
        report[format!("ratio_{name}")] = json!(round(ratio));
        if targets {
            report[format!("target_{name}")] = json!(target);
            met.insert(name.to_owned(), json!(ratio <= target));
        }
    }
    if targets {
        report["meets_targets"] = Value::Object(met);
    } else {
        report["targets"] = json!("none: nodes outnumber CPUs (reported for comparison only)");
    }
    Ok(())
}
