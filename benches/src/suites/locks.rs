//! `dsm-bench locks --json` (issue #5): lock and barrier latency over the real io_uring TCP
//! transport between separate processes on this machine (loopback), each beside the
//! transport's round trip measured in the same run, with ratios; plus the simulator's
//! messages-per-acquire crossover of Ricart–Agrawala against the home-queue lock.
//!
//! For N = 2 and 4 processes (this one is rank 0, the others are this binary re-run as
//! children), it measures:
//! * `rtt_one_us`: one ping to node 1 and its echo (the transport's one-message round trip);
//!   `rtt_all_us`: a ping to every other node at once, until all echoed;
//! * uncontended acquire+release from rank 0: Ricart–Agrawala, home-queue with a remote home,
//!   home-queue homed here (no messages);
//! * contended throughput: every node acquires and releases one lock in a loop for a second
//!   (the home-queue lock's home, node 1, acquires without messages while the lock is free,
//!   so it gets most of the acquisitions: see `acquires_per_node`);
//! * barrier latency, dissemination and central.

mod node;

use std::time::{Duration, Instant};

use anyhow::Context;
use dsm_core::Transport;
use dsm_locks::{BarrierKind, LockKind, LockTable};
use dsm_wire::{Membership, Message};
use serde_json::{Value, json};

use crate::stats::{Summary, round, summarize};
use node::{ChildNode, LOCK_HOME_LOCAL, LOCK_HOME_REMOTE, LOCK_RA, Node};

const SAMPLES: usize = 2_000;
const WARMUP: usize = 200;
const BARRIERS: u32 = 500;
const CONTENDED: Duration = Duration::from_secs(1);

/// Runs the suite and returns its JSON report (in a child process: serves, then exits).
pub fn run() -> anyhow::Result<Value> {
    if let Ok(spec) = std::env::var(node::CHILD_ENV) {
        node::child(&spec)?;
        std::process::exit(0);
    }
    let mut report = json!({
        "suite": "locks",
        "transport": "dsm-tcp-fallback (io_uring TCP, loopback), one process per node",
        "unit": "microseconds unless named otherwise",
    });
    for size in [2u32, 4] {
        report[format!("n{size}")] =
            measure_cluster(size).with_context(|| format!("{size} processes"))?;
    }
    report["simulator_crossover"] = crossover()?;
    Ok(report)
}

fn us(summary: Summary) -> Value {
    json!({ "median": round(summary.median), "p99": round(summary.p99) })
}

fn measure_cluster(size: u32) -> anyhow::Result<Value> {
    let (node, mut children) = node::cluster(size, BarrierKind::Dissemination)?;
    let rtt_one = round_trips(&node, &[1])?;
    let peers: Vec<u32> = (1..size).collect();
    let rtt_all = round_trips(&node, &peers)?;
    let ra = acquire_release(&node.table, LOCK_RA)?;
    let home_remote = acquire_release(&node.table, LOCK_HOME_REMOTE)?;
    let home_local = acquire_release(&node.table, LOCK_HOME_LOCAL)?;
    let ra_contended = contended(&node, &mut children, LOCK_RA)?;
    let home_contended = contended(&node, &mut children, LOCK_HOME_REMOTE)?;
    let dissemination = barriers(&node, &mut children)?;
    drop((node, children));
    let (node, mut children) = node::cluster(size, BarrierKind::Central)?;
    let central = barriers(&node, &mut children)?;
    drop((node, children));
    let ratio = |a: Summary, b: Summary| round(a.median / b.median);
    Ok(json!({
        "rtt_one_us": us(rtt_one),
        "rtt_all_us": us(rtt_all),
        "ra_uncontended_acquire_release_us": us(ra),
        "home_queue_remote_home_acquire_release_us": us(home_remote),
        "home_queue_local_home_acquire_release_us": us(home_local),
        "ratio_ra_to_rtt_one": ratio(ra, rtt_one),
        "ratio_ra_to_rtt_all": ratio(ra, rtt_all),
        "ratio_home_queue_remote_to_rtt_one": ratio(home_remote, rtt_one),
        "ra_contended": ra_contended,
        "home_queue_contended": home_contended,
        "barrier_dissemination_us": us(dissemination),
        "barrier_central_us": us(central),
        "ratio_barrier_dissemination_to_rtt_one": ratio(dissemination, rtt_one),
        "ratio_barrier_central_to_rtt_one": ratio(central, rtt_one),
        "target_ra_to_rtt_one": 1.5,
    }))
}

/// Pings `peers` at once and waits for every echo; per-round microseconds.
fn round_trips(node: &Node, peers: &[u32]) -> anyhow::Result<Summary> {
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let beat = i as u64;
        let start = Instant::now();
        for peer in peers {
            node.transport
                .send(*peer, &Message::Membership(Membership::Heartbeat { beat }))?;
        }
        let mut echoed = 0;
        while echoed < peers.len() {
            let (_, got) = node
                .pongs
                .recv_timeout(Duration::from_secs(5))
                .context("ping echo within 5 s")?;
            if got == beat {
                echoed += 1;
            }
        }
        if i >= WARMUP {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(summarize(&mut samples))
}

/// Uncontended acquire+release from this node; microseconds.
fn acquire_release(table: &LockTable, lock: u32) -> anyhow::Result<Summary> {
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let start = Instant::now();
        drop(table.acquire(lock)?);
        if i >= WARMUP {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(summarize(&mut samples))
}

/// Every node acquires `lock` in a loop for [`CONTENDED`]: acquisitions per second in all,
/// and per node (how fairly the lock went round).
fn contended(node: &Node, children: &mut [ChildNode], lock: u32) -> anyhow::Result<Value> {
    let millis = CONTENDED.as_millis();
    for child in children.iter_mut() {
        child.send(&format!("contend {lock} {millis}"))?;
    }
    let start = Instant::now();
    let mut per_node = vec![node::contend(&node.table, lock, CONTENDED)?];
    let elapsed = start.elapsed();
    for child in children.iter_mut() {
        per_node.push(child.expect("COUNT ")?.parse::<u64>()?);
    }
    let total: u64 = per_node.iter().sum();
    // `elapsed` spans both barriers around the loop: a slight underestimate of the rate.
    Ok(json!({
        "acquires_per_s": round(total as f64 / elapsed.as_secs_f64()),
        "acquires_per_node": per_node,
    }))
}

/// [`BARRIERS`] barriers across all nodes; per-barrier microseconds at rank 0.
fn barriers(node: &Node, children: &mut [ChildNode]) -> anyhow::Result<Summary> {
    for child in children.iter_mut() {
        child.send(&format!("barriers {}", BARRIERS + 1))?;
    }
    node.table.barrier()?; // line everyone up
    let mut samples = Vec::with_capacity(BARRIERS as usize);
    for _ in 0..BARRIERS {
        let start = Instant::now();
        node.table.barrier()?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    for child in children.iter_mut() {
        child.expect("DONE")?;
    }
    Ok(summarize(&mut samples))
}

/// Messages and simulated latency per node-level acquire, Ricart–Agrawala vs home-queue,
/// against N (10 ticks per message), lightly (1 thread per node) and heavily (3) contended.
fn crossover() -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for threads in [1u32, 3] {
        for nodes in [2u32, 3, 4, 8, 16] {
            let ra = dsm_sim::locks::measure(LockKind::RicartAgrawala, nodes, threads, 1)?;
            let hq = dsm_sim::locks::measure(LockKind::HomeQueue, nodes, threads, 1)?;
            rows.push(json!({
                "nodes": nodes,
                "threads_per_node": threads,
                "ra_messages_per_acquire": round(ra.messages_per_acquire(0)),
                "home_queue_messages_per_acquire": round(hq.messages_per_acquire(1)),
                "ra_ticks_per_acquire": round(ra.ticks_per_acquire(0)),
                "home_queue_ticks_per_acquire": round(hq.ticks_per_acquire(1)),
            }));
        }
    }
    Ok(Value::Array(rows))
}
