//! `dsm-bench latency --json` (issues #10 and #14): the latency of a remote read fault, an in-order
//! scan, a lock hand-off and a barrier through the public `dsm` API, each beside the floors it
//! is judged against, measured between the same processes in the same run.
//!
//! Nodes are real processes on one host (this binary re-executed in the node role, see
//! `latency/node.rs`), started by the suite with `DSM_RANK`, `DSM_SIZE` and
//! `DSM_COORDINATOR` on a free loopback port, and `DSM_TRANSPORT` as each cluster says
//! (`transport` in its report). Eight clusters, each shared-memory one right after its TCP
//! twin, and each thread-delivery one right after its default-delivery twin:
//! - `n2`: 2 nodes, `DSM_TRANSPORT=tcp`, rank `r` pinned to CPU `r % ncpus`
//!   (`sched_setaffinity`), with issue #10's targets and the traced pass (below);
//! - `n2_shm`: the same 2 pinned nodes with `DSM_TRANSPORT=shm` (issue #14: shared memory
//!   between same-host nodes; `SAME_HOST_TRANSPORT`), with its own floors and issue #14's
//!   targets and the traced pass;
//! - `n2_shm_copied`: `n2_shm` with `DSM_MAP_MASTERS=0` (pages of same-host homes copied in
//!   and out of private memory instead of mapped from the masters), untraced, no targets;
//!   the top level's `ratio_shm_mapped_to_copied_<figure>` compare `n2_shm` with it;
//! - `n2_thread`, `n2_shm_thread`: `n2` and `n2_shm` with `DSM_FAULT_DELIVERY=thread` (the
//!   reader-thread delivery the default replaced), untraced, no targets; the top level's
//!   `ratio_signal_to_thread_<figure>` and `ratio_shm_signal_to_thread_<figure>` compare them;
//! - `n2_service_nice0`: `n2` with `DSM_SERVICE_PRIORITY=0` (service threads at the
//!   application's priority), no targets; `n2`'s `ratio_*_realtime_to_nice0` compare the two;
//! - `n4_oversubscribed`: 4 nodes pinned `r % ncpus` on this 2-CPU machine (nodes outnumber
//!   CPUs), `DSM_TRANSPORT=tcp`, the same code, no targets;
//! - `n4_oversubscribed_shm`: the same with `DSM_TRANSPORT=shm`, no targets.
//!
//! A cluster that fails fails the suite, naming the cluster and the failed rank's error.
//! `DSM_BENCH_CLUSTERS=n2_shm,n2` (keys, comma-separated) runs only those clusters, for
//! working on one path; the comparisons between clusters are then left out (each cluster's
//! figures stay under its key at the top level, as in the full report).
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
//! - `barrier_us`: every node passes barriers in a row;
//! - `release_one_diff_us`: rank 0 holds a lock of its own, writes one word of a release-mode
//!   page homed on rank 1 and releases: the release publishes the diff (over TCP a message
//!   and its acknowledgement; over shared memory merged into rank 1's master in place).
//!
//! Floors, in every cluster between its ranks 0 and 1 (the processes the figures run in),
//! before the first figure and after each: `rtt_blocking_us` and `rtt_busy_poll_us`, a std TCP round trip (64 B request,
//! 4 KiB reply, `TCP_NODELAY`) on an extra connection the two nodes open between them, both
//! ends blocking in `read` or busy-polling `recv(MSG_DONTWAIT)`; `rtt_floor_us` is the faster
//! median; `local_sigbus_fault_us`, an in-thread SIGBUS read fault on rank 0, measured by the
//! `uffd` suite's own code (`uffd::fault_service`). `floor_rounds` shows each round's medians.
//!
//! Ratios of medians, in every cluster's report: `ratio_remote_read_fault_to_floor` = remote
//! read fault / (round-trip floor + local floor), `ratio_lock_handoff_to_rtt`,
//! `ratio_barrier_to_rtt`, `ratio_scan_per_page_to_floor`,
//! `ratio_remote_read_fault_to_local_floor` = remote read fault / local SIGBUS floor,
//! `ratio_remote_read_fault_home_computing_to_local_floor`, and
//! `ratio_remote_read_fault_to_rtt_floor` = remote read fault / round-trip floor. Targets
//! (`target_*` beside each ratio judged, `meets_targets` says which hold): in `n2` (issue #10,
//! TCP) the first ≤ 2, the lock hand-off ≤ 4, the barrier ≤ 3; in `n2_shm` (issue #14, shared
//! memory) the remote read fault ≤ 3× the local floor and strictly below the round-trip floor
//! (< 1). The others have `targets` saying why none.
//!
//! Shared memory against TCP, at the top level: `ratio_shm_to_tcp_<figure>` for
//! `remote_read_fault`, `remote_read_fault_home_computing`, `scan_per_page`, `lock_handoff`,
//! `barrier` and `release_one_diff`, the median in `n2_shm` over the median in `n2` (two clusters of one run).
//! The default fault delivery against thread delivery likewise: `n2` over `n2_thread`, and
//! `n2_shm` over `n2_shm_thread` (issue #10: the default is the faster, measured).
//!
//! Per-hop breakdown and tracing overhead (`n2` only): the nodes run with `DSM_TRACE` in a
//! scratch directory but turn tracing off after `join`; after the figures above they run the
//! remote read fault (on pages between the first pass's), the lock hand-off and the barriers
//! again with tracing on (`Node::set_tracing`), then a floor round. `n2` and `n2_shm` get
//! those as `*_traced_us` and `ratio_{fault,lock_handoff,barrier}_traced_to_untraced` (what
//! tracing costs, same run, passes seconds apart); then four rounds of short blocks of remote
//! read faults and of barriers alternate between tracing off and on
//! (`latency/tracing_cost.rs`), which give `tracing_cost_interleaved` and
//! `ratio_{fault,barrier}_traced_to_untraced_interleaved` (the machine's drift cancels out
//! there); `hops` (`n2`) and `hops_shm` (`n2_shm`) give the median and p99
//! of every hop of the traced pass, read from both ranks' trace files (see
//! `latency/hops.rs`), and name the files (one directory per cluster), which stay for a
//! viewer (<https://ui.perfetto.dev>).
//!
//! Nothing waits unboundedly: nodes run with `DSM_OP_TIMEOUT_MS` and `DSM_JOIN_TIMEOUT_MS`,
//! the floor connection's reads and spins are bounded, and the parent kills the nodes after a
//! deadline (or as soon as one fails), naming the phase each rank was in.

mod figures;
mod floor;
mod hops;
mod node;
mod placement;
mod ratios;
mod release;
mod spawn;
mod tracing_cost;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Map, Value, json};

use crate::stats::round;
use crate::suites::SAME_HOST_TRANSPORT;
pub(crate) use placement::{allowed_cpus, cpu_for, pin_to};
use ratios::Targets;
use spawn::{Launch, Nodes};

/// Bound on any runtime wait in a node (a fault, a lock, a barrier), milliseconds.
const OP_TIMEOUT_MS: u64 = 30_000;
/// Bound on joining, milliseconds.
const JOIN_TIMEOUT_MS: u64 = 30_000;
/// How long one cluster may run before the suite kills it and fails.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(180);

/// The fault delivery the default (signal) is compared with.
const THREAD_DELIVERY: (&str, &str) = ("DSM_FAULT_DELIVERY", "thread");

/// One cluster of the suite: its key in the report and how its nodes run.
#[derive(Debug, Clone, Copy)]
struct Cluster {
    key: &'static str,
    size: u32,
    /// `DSM_TRANSPORT`.
    transport: &'static str,
    /// Further environment of every node.
    env: &'static [(&'static str, &'static str)],
    /// Whether the nodes also run the traced pass, for the per-hop breakdown (`hops`).
    traced: bool,
    targets: Targets,
}

/// Every cluster, run in this order: each shared-memory run right after its TCP twin, so that
/// the two meet the same load on the machine. The 2-node runs of both transports also run
/// the traced pass (`hops`, `hops_shm`).
const CLUSTERS: [Cluster; 8] = [
    Cluster {
        key: "n2",
        size: 2,
        transport: "tcp",
        env: &[],
        traced: true,
        targets: Targets::Tcp,
    },
    Cluster {
        key: "n2_thread",
        size: 2,
        transport: "tcp",
        env: &[THREAD_DELIVERY],
        traced: false,
        targets: Targets::None,
    },
    Cluster {
        key: "n2_shm",
        size: 2,
        transport: SAME_HOST_TRANSPORT,
        env: &[],
        traced: true,
        targets: Targets::SameHost,
    },
    Cluster {
        key: "n2_shm_copied",
        size: 2,
        transport: SAME_HOST_TRANSPORT,
        env: &[("DSM_MAP_MASTERS", "0")],
        traced: false,
        targets: Targets::None,
    },
    Cluster {
        key: "n2_shm_thread",
        size: 2,
        transport: SAME_HOST_TRANSPORT,
        env: &[THREAD_DELIVERY],
        traced: false,
        targets: Targets::None,
    },
    Cluster {
        key: "n2_service_nice0",
        size: 2,
        transport: "tcp",
        env: &[("DSM_SERVICE_PRIORITY", "0")],
        traced: false,
        targets: Targets::None,
    },
    Cluster {
        key: "n4_oversubscribed",
        size: 4,
        transport: "tcp",
        env: &[],
        traced: false,
        targets: Targets::None,
    },
    Cluster {
        key: "n4_oversubscribed_shm",
        size: 4,
        transport: SAME_HOST_TRANSPORT,
        env: &[],
        traced: false,
        targets: Targets::None,
    },
];

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
    let mut clusters = Map::new();
    let mut hops = Map::new();
    let chosen = chosen_clusters()?;
    for cluster in CLUSTERS.iter().filter(|c| chosen.contains(&c.key)) {
        let (report, traced) = cluster.run(&cpus, &traces)?;
        clusters.insert(cluster.key.to_owned(), report);
        if let Some(traced) = traced {
            hops.insert(cluster.key.to_owned(), traced);
        }
    }
    if chosen.len() < CLUSTERS.len() {
        // Each cluster under its key at the top level, as in the full report.
        let mut report = json!({
            "suite": "latency",
            "unit": "microseconds",
            "clusters_run": chosen,
            "hops": hops.get("n2"),
            "hops_shm": hops.get("n2_shm"),
            "elapsed_s": round(started.elapsed().as_secs_f64()),
        });
        report
            .as_object_mut()
            .expect("a JSON object")
            .extend(clusters);
        return Ok(report);
    }
    let nice0 = clusters["n2_service_nice0"].clone();
    ratios::compare_priorities(&mut clusters["n2"], &nice0)?;
    let shm_to_tcp = ratios::compare("shm_to_tcp", &clusters["n2_shm"], &clusters["n2"])?;
    let mapped_to_copied = ratios::compare(
        "shm_mapped_to_copied",
        &clusters["n2_shm"],
        &clusters["n2_shm_copied"],
    )?;
    let deliveries = [
        ("signal_to_thread", "n2", "n2_thread"),
        ("shm_signal_to_thread", "n2_shm", "n2_shm_thread"),
    ];
    let mut signal_to_thread = Map::new();
    for (name, default, thread) in deliveries {
        signal_to_thread.extend(ratios::compare(
            name,
            &clusters[default],
            &clusters[thread],
        )?);
    }
    let mut report = json!({
        "suite": "latency",
        "unit": "microseconds",
        "transport": format!(
            "loopback, one process per node; DSM_TRANSPORT per cluster (its `transport`): \
             tcp, or {SAME_HOST_TRANSPORT} for the *_shm clusters"
        ),
        "fault_delivery": std::env::var("DSM_FAULT_DELIVERY")
            .unwrap_or_else(|_| "runtime default".to_owned()),
        "cpus": cpus,
        "remote_read_fault_order": format!(
            "every {}th page of rank 1's block, random permutation (splitmix64 seed {:#x})",
            figures::REMOTE_STRIDE,
            figures::SEED
        ),
        "hops": hops.get("n2"),
        "hops_shm": hops.get("n2_shm"),
        "elapsed_s": round(started.elapsed().as_secs_f64()),
    });
    let fields = report.as_object_mut().expect("a JSON object");
    fields.extend(clusters);
    fields.extend(shm_to_tcp);
    fields.extend(mapped_to_copied);
    fields.extend(signal_to_thread);
    Ok(report)
}

/// The keys of the clusters to run: all, or those `DSM_BENCH_CLUSTERS` names (an unknown
/// key is an error naming the known ones).
fn chosen_clusters() -> anyhow::Result<Vec<&'static str>> {
    let all: Vec<&'static str> = CLUSTERS.iter().map(|c| c.key).collect();
    let Ok(asked) = std::env::var("DSM_BENCH_CLUSTERS") else {
        return Ok(all);
    };
    let mut chosen = Vec::new();
    for key in asked.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let Some(known) = all.iter().find(|k| **k == key) else {
            anyhow::bail!("DSM_BENCH_CLUSTERS: no cluster {key:?} (clusters: {all:?})");
        };
        chosen.push(*known);
    }
    Ok(chosen)
}

impl Cluster {
    /// Runs the nodes pinned `rank % ncpus` and returns rank 0's report with its ratios and
    /// targets. A traced cluster writes its trace files in `traces`, and the per-hop
    /// breakdown comes back too.
    fn run(self, cpus: &[usize], traces: &Path) -> anyhow::Result<(Value, Option<Value>)> {
        let placement: Vec<usize> = (0..self.size).map(|rank| cpu_for(rank, cpus)).collect();
        let label = format!(
            "latency {} ({} nodes, DSM_TRANSPORT={})",
            self.key, self.size, self.transport
        );
        let mut env = vec![
            ("DSM_TRANSPORT", self.transport.to_owned()),
            ("DSM_OP_TIMEOUT_MS", OP_TIMEOUT_MS.to_string()),
            ("DSM_JOIN_TIMEOUT_MS", JOIN_TIMEOUT_MS.to_string()),
        ];
        env.extend(self.env.iter().map(|&(k, v)| (k, v.to_owned())));
        let traces = traces.join(self.key);
        if self.traced {
            std::fs::create_dir_all(&traces).with_context(|| format!("{}", traces.display()))?;
            let path = hops::trace_path(&traces);
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
        let mut report: Value =
            serde_json::from_str(line).with_context(|| format!("{label}: rank 0's result"))?;
        report["nodes"] = json!(self.size);
        report["transport"] = json!(self.transport);
        report["placement_cpu_per_rank"] = json!(placement);
        ratios::add_ratios(&mut report, self.targets).with_context(|| label.clone())?;
        if !self.traced {
            return Ok((report, None));
        }
        ratios::add_tracing_overhead(&mut report).with_context(|| label.clone())?;
        let hops = hops::breakdown(&traces, &mut report).context("the per-hop breakdown")?;
        Ok((report, Some(hops)))
    }
}
