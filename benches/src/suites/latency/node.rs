//! One node of the latency cluster: this binary re-executed with [`NODE_ENV`] set to the CPU
//! it pins itself to. It joins through the public API (`DSM_RANK`, `DSM_SIZE`,
//! `DSM_COORDINATOR` from the parent), allocates the regions every figure uses, and runs the
//! figures with the floors between them: before the first, after each. Rank 0 measures and
//! prints the report; rank 1 is the other party of every two-node figure and of the floor
//! connection; ranks 2.. (the oversubscribed run) take part in barriers only.

use std::time::Instant;

use anyhow::Context;
use dsm::{Config, Consistency, Node, Region, Stats};
use serde_json::{Value, json};

use super::figures::{self, Access, Pass};
use super::floor::{FloorLink, Wait};
use super::placement::pin_to;
use super::spawn::{ERROR_PREFIX, PHASE_PREFIX, RESULT_PREFIX};
use crate::stats::{Summary, round, summarize};
use crate::suites::uffd;

/// Set in the environment of node processes: the CPU to pin to, or `none`.
pub(super) const NODE_ENV: &str = "DSM_BENCH_LATENCY_NODE";
/// Bytes per page (x86-64, which dsm requires).
pub(super) const PAGE_BYTES: usize = 4096;
/// `u64` words per page.
pub(super) const WORDS_PER_PAGE: usize = PAGE_BYTES / size_of::<u64>();
/// Floor round trips per wait mode and round (after the warm-up), and the warm-up.
const FLOOR_SAMPLES: usize = 2_000;
const FLOOR_WARMUP: usize = 200;

/// The node role: pin, join, measure, report (rank 0), leave; a failure is also printed for
/// the parent, which names it in the cluster's failure (on stderr, every rank's interleave).
pub(super) fn main(cpu: &str) -> anyhow::Result<()> {
    let outcome = run(cpu);
    if let Err(e) = &outcome {
        println!("{ERROR_PREFIX}{e:#}");
    }
    outcome
}

fn run(cpu: &str) -> anyhow::Result<()> {
    if cpu != "none" {
        pin_to(cpu.parse().context("the CPU to pin to")?)?;
    }
    phase("join");
    let node = Node::join(Config::from_env()?)?;
    let report = measure(&node)?;
    if let Some(report) = report {
        println!("{RESULT_PREFIX}{report}");
    }
    phase("leave");
    node.leave()?;
    Ok(())
}

/// Tells the parent which phase this node enters (it names it if the node hangs).
pub(super) fn phase(name: &str) {
    // Stdout is line-buffered: the line reaches the parent now.
    println!("{PHASE_PREFIX}{name}");
}

/// The regions of every figure, allocated collectively in this order on every node.
struct Regions {
    /// One page per node: rank 1 publishes its floor port in its page.
    mailbox: Region<u64>,
    remote: Region<u64>,
    scan: Region<u64>,
    /// One page: the word the lock hand-off increments.
    lock_word: Region<u64>,
    /// One release-mode page per node: rank 0 writes rank 1's (`release_one_diff_us`).
    released: Region<u64>,
}

impl Regions {
    fn alloc(node: &Node) -> anyhow::Result<Regions> {
        let size = node.size() as usize;
        let sequential = Consistency::Sequential;
        let pages = |per_node: usize| size * per_node * WORDS_PER_PAGE;
        Ok(Regions {
            mailbox: node.alloc("latency-mailbox", pages(1), sequential)?,
            remote: node.alloc(
                "latency-remote",
                pages(figures::REMOTE_BLOCK_PAGES),
                sequential,
            )?,
            scan: node.alloc("latency-scan", pages(figures::SCAN_BLOCK_PAGES), sequential)?,
            lock_word: node.alloc("latency-lock", WORDS_PER_PAGE, sequential)?,
            released: node.alloc("latency-release", pages(1), Consistency::Release)?,
        })
    }
}

/// The measuring node's state: its role and the floors gathered so far.
pub(super) struct Bench<'a> {
    pub(super) node: &'a Node,
    pub(super) rank: u32,
    /// Ranks 0 and 1 only: the floor connection between them.
    link: Option<FloorLink>,
    /// Floor rounds begun, counted on every rank (both ends derive the wait order from it).
    floor_rounds: usize,
    floors: Floors,
    /// Rank 0: the runtime's counters per sample of each figure.
    pub(super) counters: serde_json::Map<String, Value>,
}

/// Floor samples pooled over every round, and each round's medians (to show drift).
#[derive(Default)]
struct Floors {
    blocking_us: Vec<f64>,
    busy_poll_us: Vec<f64>,
    local_sigbus_fault_us: Vec<f64>,
    rounds: Vec<Value>,
}

fn measure(node: &Node) -> anyhow::Result<Option<Value>> {
    phase("alloc");
    let regions = Regions::alloc(node)?;
    phase("floor connection");
    let link = connect_floor(node, &regions.mailbox)?;
    let mut bench = Bench {
        node,
        rank: node.rank(),
        link,
        floor_rounds: 0,
        floors: Floors::default(),
        counters: serde_json::Map::new(),
    };
    // A node started with DSM_TRACE records only in the traced pass, at the end.
    node.set_tracing(false);
    let traced = node.config().trace_file().is_some();
    bench.floor_round("start")?;
    let (mut remote, _) = bench.remote_read_fault(&regions.remote, Pass::Untraced)?;
    bench.floor_round("remote_read_fault")?;
    let mut computing = bench.remote_read_fault_home_computing(&regions.remote)?;
    let mut scan = bench.scan(&regions.scan)?;
    bench.floor_round("scan")?;
    let (mut handoff, wasted, mut parts) =
        bench.lock_handoff(&regions.lock_word, Pass::Untraced)?;
    bench.floor_round("lock_handoff")?;
    let mut barrier = bench.barriers(Pass::Untraced)?;
    bench.floor_round("barrier")?;
    let mut release = bench.release_one_diff(&regions.released)?;
    let (traced, tracing_cost) = if traced {
        let pass = bench.traced_pass(&regions)?;
        (Some(pass), Some(bench.tracing_cost(&regions.remote)?))
    } else {
        (None, None)
    };
    if bench.rank != 0 {
        return Ok(None);
    }
    let figures = [
        ("remote_read_fault_us", summarize(&mut remote), remote.len()),
        (
            "remote_read_fault_home_computing_us",
            summarize(&mut computing),
            computing.len(),
        ),
        ("scan_per_page_us", summarize(&mut scan), scan.len()),
        ("lock_handoff_us", summarize(&mut handoff), handoff.len()),
        (
            "lock_turn_acquire_us",
            summarize(&mut parts.acquire_us),
            parts.acquire_us.len(),
        ),
        (
            "lock_turn_section_us",
            summarize(&mut parts.section_us),
            parts.section_us.len(),
        ),
        (
            "lock_turn_release_us",
            summarize(&mut parts.release_us),
            parts.release_us.len(),
        ),
        ("barrier_us", summarize(&mut barrier), barrier.len()),
        (
            "release_one_diff_us",
            summarize(&mut release),
            release.len(),
        ),
    ];
    let mut report = bench.floor_report();
    for (name, summary, samples) in figures {
        report[name] = us(summary, samples);
    }
    if let Some(traced) = traced {
        traced.report(&mut report);
    }
    if let Some(cost) = tracing_cost {
        cost.report(&mut report);
    }
    report["lock_acquires_not_my_turn"] = json!(wasted);
    report["counters_rank0_per_sample"] = Value::Object(bench.counters);
    Ok(Some(report))
}

/// The traced pass's figures (rank 0's samples) and the reads' clock stamps.
struct Traced {
    remote: Vec<f64>,
    accesses: Vec<Access>,
    handoff: Vec<f64>,
    barrier: Vec<f64>,
}

impl Traced {
    /// Adds the `*_traced_us` figures and `traced_fault_accesses` (`[page, start_ns, end_ns]`
    /// per read: the parent matches them with the trace files, then drops them).
    fn report(mut self, report: &mut Value) {
        let figures = [
            ("remote_read_fault_traced_us", &mut self.remote),
            ("lock_handoff_traced_us", &mut self.handoff),
            ("barrier_traced_us", &mut self.barrier),
        ];
        for (name, samples) in figures {
            report[name] = us(summarize(samples), samples.len());
        }
        report["traced_fault_accesses"] = self
            .accesses
            .iter()
            .map(|a| json!([a.page, a.start_ns, a.end_ns]))
            .collect();
    }
}

/// Rank 1 listens and publishes its port in its mailbox page; rank 0 reads it and connects.
fn connect_floor(node: &Node, mailbox: &Region<u64>) -> anyhow::Result<Option<FloorLink>> {
    let listener = match node.rank() {
        1 => Some(FloorLink::listen()?),
        _ => None,
    };
    if let Some(listener) = &listener {
        mailbox.set(WORDS_PER_PAGE, u64::from(listener.local_addr()?.port()));
    }
    node.barrier()?;
    let link = match (node.rank(), &listener) {
        (0, _) => {
            let port = u16::try_from(mailbox.get(WORDS_PER_PAGE)).context("rank 1's port")?;
            Some(FloorLink::connect(port)?)
        }
        (1, Some(listener)) => Some(FloorLink::accept(listener)?),
        _ => None,
    };
    node.barrier()?;
    Ok(link)
}

impl Bench<'_> {
    /// The fault, lock and barrier figures again with the runtime's tracing on (every node in
    /// step), then a floor round with it off again.
    fn traced_pass(&mut self, regions: &Regions) -> anyhow::Result<Traced> {
        self.node.set_tracing(true);
        let (remote, accesses) = self.remote_read_fault(&regions.remote, Pass::Traced)?;
        let (handoff, _, _) = self.lock_handoff(&regions.lock_word, Pass::Traced)?;
        let barrier = self.barriers(Pass::Traced)?;
        self.node.set_tracing(false);
        self.floor_round("traced")?;
        Ok(Traced {
            remote,
            accesses,
            handoff,
            barrier,
        })
    }

    /// One round of the floors, all nodes in step: rank 0 times in-thread SIGBUS faults (the
    /// `uffd` suite's measurement) while the others wait in a barrier; then ranks 0 and 1 run
    /// the TCP round trip, blocking and busy-polling (in alternating order across rounds).
    fn floor_round(&mut self, after: &str) -> anyhow::Result<()> {
        phase(&format!("floors after {after}"));
        let round = self.floor_rounds;
        self.floor_rounds += 1;
        self.node.barrier()?;
        let mut local = Vec::new();
        if self.rank == 0 {
            let (reads_ns, _writes) = uffd::fault_service(uffd::ServeOptions::signal(), round)?;
            local = reads_ns.iter().map(|ns| ns / 1e3).collect();
        }
        self.node.barrier()?;
        let order = if round.is_multiple_of(2) {
            [Wait::Blocking, Wait::BusyPoll]
        } else {
            [Wait::BusyPoll, Wait::Blocking]
        };
        let mut rtt = [Vec::new(), Vec::new()];
        for wait in order {
            let index = usize::from(wait == Wait::BusyPoll);
            match (self.rank, &mut self.link) {
                (0, Some(link)) => rtt[index] = link.ping(wait, FLOOR_WARMUP, FLOOR_SAMPLES)?,
                (1, Some(link)) => link.serve(wait, FLOOR_WARMUP + FLOOR_SAMPLES)?,
                _ => {}
            }
        }
        self.node.barrier()?;
        if self.rank == 0 {
            let [blocking, busy] = rtt;
            self.floors.record(after, blocking, busy, local);
        }
        Ok(())
    }

    /// Rank 0: the pooled floors and their ratios' denominators.
    fn floor_report(&mut self) -> Value {
        let floors = &mut self.floors;
        let blocking = summarize(&mut floors.blocking_us);
        let busy = summarize(&mut floors.busy_poll_us);
        let local = summarize(&mut floors.local_sigbus_fault_us);
        let (rtt_floor, from) = if busy.median < blocking.median {
            (busy.median, "busy_poll")
        } else {
            (blocking.median, "blocking")
        };
        json!({
            "rtt_blocking_us": us(blocking, floors.blocking_us.len()),
            "rtt_busy_poll_us": us(busy, floors.busy_poll_us.len()),
            "rtt_floor_us": round(rtt_floor),
            "rtt_floor_from": from,
            "local_sigbus_fault_us": us(local, floors.local_sigbus_fault_us.len()),
            "floor_rounds": floors.rounds.clone(),
        })
    }

    /// Rank 0: the runtime's counters from `before` to now, per sample, under `figure`
    /// (only counters that moved).
    pub(super) fn record_counters(&mut self, figure: &str, before: Stats, samples: usize) {
        let after = self.node.stats();
        let per_sample: serde_json::Map<String, Value> = before
            .fields()
            .iter()
            .zip(after.fields())
            .filter(|((name, _), _)| !name.starts_with("fault_latency"))
            .filter(|((_, b), (_, a))| a > b)
            .map(|((name, b), (_, a))| {
                let per = (a - b) as f64 / samples.max(1) as f64;
                ((*name).to_owned(), json!(round(per)))
            })
            .collect();
        self.counters
            .insert(figure.to_owned(), Value::Object(per_sample));
    }
}

impl Floors {
    fn record(
        &mut self,
        after: &str,
        mut blocking: Vec<f64>,
        mut busy: Vec<f64>,
        mut local: Vec<f64>,
    ) {
        self.rounds.push(json!({
            "after": after,
            "rtt_blocking_us_median": round(summarize(&mut blocking).median),
            "rtt_busy_poll_us_median": round(summarize(&mut busy).median),
            "local_sigbus_fault_us_median": round(summarize(&mut local).median),
        }));
        self.blocking_us.append(&mut blocking);
        self.busy_poll_us.append(&mut busy);
        self.local_sigbus_fault_us.append(&mut local);
    }
}

/// A figure in microseconds: median, p99 and the number of samples.
pub(super) fn us(summary: Summary, samples: usize) -> Value {
    json!({
        "median": round(summary.median),
        "p99": round(summary.p99),
        "samples": samples,
    })
}

/// Microseconds since `started`.
pub(super) fn micros_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e6
}
