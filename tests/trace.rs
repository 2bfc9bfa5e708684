//! `DSM_TRACE`, with real processes: two nodes read pages homed on each other, take turns
//! with a lock and pass barriers; each writes its own trace file (`trace.rank<r>.json`), which
//! must be Chrome trace JSON naming the pages read, with every event's hops in time order,
//! under both fault deliveries.
//!
//! The node program is the ignored `child_*` test of this binary, run by `dsm-run`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dsm::{Config, Consistency, Node};
use serde_json::Value;

use crate::util::run_child_nodes;

const WORDS_PER_PAGE: usize = 4096 / 8;
/// Pages each node homes (block placement: rank `r` homes block `r`).
const BLOCK_PAGES: usize = 64;
/// Each node reads every other page of the first half of the other node's block (never two
/// neighbours in a row, so no prefetch: every read is a fault).
fn pages_read_by(rank: usize) -> impl Iterator<Item = usize> {
    let other = 1 - rank;
    (other * BLOCK_PAGES..other * BLOCK_PAGES + BLOCK_PAGES / 2).step_by(2)
}
const LOCK: u32 = 17;
const LOCK_TURNS: u64 = 10;

/// A scratch directory for one run's trace files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsm-trace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

#[test]
fn each_node_writes_a_chrome_trace_of_its_faults_lock_waits_and_barriers() {
    for delivery in ["thread", "signal"] {
        let dir = scratch(delivery);
        let path = dir.join("trace.json");
        run_child_nodes(
            "trace::child_faults_locks_barriers",
            2,
            &[
                ("DSM_TRACE", path.to_str().expect("utf-8 path")),
                ("DSM_FAULT_DELIVERY", delivery),
            ],
        );
        for rank in 0..2 {
            let file = dir.join(format!("trace.rank{rank}.json"));
            check_trace(&file, rank, delivery == "signal");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The events of `file` (rank `rank`) that have `args` (the spans, not their segments).
fn spans(file: &Path, rank: usize) -> (Vec<Value>, Value) {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("rank {rank} wrote no trace {}: {e}", file.display()));
    let trace: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
    let events = trace["traceEvents"]
        .as_array()
        .expect("traceEvents")
        .clone();
    for event in &events {
        assert_eq!(event["pid"], rank, "pid is the rank: {event}");
    }
    let spans = events
        .into_iter()
        .filter(|e| e["ph"] == "X" && e["args"].is_object())
        .collect();
    (spans, trace["otherData"].clone())
}

/// The hop names of `span`, asserting their timestamps never go back.
fn ordered_hops(span: &Value) -> Vec<String> {
    let hops = span["args"]["hops"].as_array().expect("hops");
    let times: Vec<u64> = hops.iter().map(|h| h["ns"].as_u64().expect("ns")).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "hops out of order: {span}"
    );
    hops.iter()
        .map(|h| h["hop"].as_str().expect("hop name").to_owned())
        .collect()
}

fn check_trace(file: &Path, rank: usize, signal: bool) {
    let (spans, other) = spans(file, rank);
    assert_eq!(other["records_dropped"], 0, "{other}");
    let of = |cat: &str| -> Vec<&Value> { spans.iter().filter(|s| s["cat"] == cat).collect() };
    // Remote read faults: every page read, with the full path in order.
    let expected: BTreeSet<u64> = pages_read_by(rank).map(|p| p as u64).collect();
    let mut remote = BTreeSet::new();
    for fault in of("fault") {
        let hops = ordered_hops(fault);
        assert_eq!(hops[0], "fault raised", "{fault}");
        if fault["name"] != "read fault" || !hops.iter().any(|h| h == "request sent") {
            continue;
        }
        let mut path = vec![
            "fault raised",
            "request sent",
            "reply received",
            "install issued",
        ];
        if signal {
            path.insert(1, "engine took it");
            path.push("thread resumed");
        }
        assert_eq!(hops, path, "rank {rank}: {fault}");
        assert_eq!(fault["args"]["home"], 1 - rank, "{fault}");
        assert_eq!(fault["args"]["complete"], true, "{fault}");
        remote.insert(fault["args"]["page"].as_u64().expect("page"));
    }
    assert!(
        expected.is_subset(&remote),
        "rank {rank}: remote read faults on {remote:?}, expected at least {expected:?}"
    );
    // The other node's reads of this node's block, served here.
    let served: BTreeSet<u64> = of("fault.home")
        .iter()
        .filter(|s| ordered_hops(s) == ["request received", "reply sent"])
        .map(|s| s["args"]["page"].as_u64().expect("page"))
        .collect();
    let theirs: BTreeSet<u64> = pages_read_by(1 - rank).map(|p| p as u64).collect();
    assert!(theirs.is_subset(&served), "rank {rank} served {served:?}");
    // Lock waits: one per turn at least, from the call to the return, through a grant.
    let waits: Vec<_> = of("lock")
        .into_iter()
        .filter(|w| w["args"]["lock"] == LOCK)
        .collect();
    assert!(
        waits.len() as u64 >= LOCK_TURNS,
        "rank {rank}: {} lock waits",
        waits.len()
    );
    for wait in &waits {
        let hops = ordered_hops(wait);
        assert_eq!(
            hops.first().map(String::as_str),
            Some("acquire called"),
            "{wait}"
        );
        assert_eq!(
            hops.last().map(String::as_str),
            Some("acquire returned"),
            "{wait}"
        );
        assert!(hops.iter().any(|h| h == "request sent"), "{wait}");
        assert!(hops.iter().any(|h| h == "grant received"), "{wait}");
    }
    // Barriers: called, arrival sent, all arrived, returned.
    let barriers = of("barrier");
    assert!(
        barriers.len() >= 3,
        "rank {rank}: {} barriers",
        barriers.len()
    );
    for barrier in barriers {
        let hops = ordered_hops(barrier);
        for hop in [
            "barrier called",
            "arrival sent",
            "all arrived",
            "barrier returned",
        ] {
            assert!(hops.iter().any(|h| h == hop), "no {hop}: {barrier}");
        }
    }
}

#[test]
#[ignore = "node program of each_node_writes_a_chrome_trace_of_its_faults_lock_waits_and_barriers"]
fn child_faults_locks_barriers() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    assert!(node.config().trace_file().is_some(), "DSM_TRACE is set");
    let rank = node.rank() as usize;
    let region = node
        .alloc::<u64>(
            "traced",
            2 * BLOCK_PAGES * WORDS_PER_PAGE,
            Consistency::Sequential,
        )
        .unwrap();
    let counter = node
        .alloc::<u64>("counter", WORDS_PER_PAGE, Consistency::Sequential)
        .unwrap();
    for page in rank * BLOCK_PAGES..(rank + 1) * BLOCK_PAGES {
        region.set(page * WORDS_PER_PAGE, page as u64 + 1);
    }
    node.barrier().unwrap();
    for page in pages_read_by(rank) {
        assert_eq!(region.get(page * WORDS_PER_PAGE), page as u64 + 1);
    }
    node.barrier().unwrap();
    for _ in 0..LOCK_TURNS {
        let _guard = node.lock(LOCK).acquire().unwrap();
        counter.set(0, counter.get(0) + 1);
    }
    node.barrier().unwrap();
    assert_eq!(counter.get(0), 2 * LOCK_TURNS);
    node.leave().unwrap();
}
