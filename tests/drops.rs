//! Sequential mode: copies that other nodes' writes took before are dropped at barriers, so
//! the writers' next writes need no invalidation (`DSM_BARRIER_DROPS`). Real processes under
//! dsm-run; the node program is the ignored `child_*` test of this binary.

use dsm::{Config, Consistency, Node};

use crate::util::{printed_counter, run_child_nodes};

const NODES: u32 = 3;
/// Pages each node writes every round (and is the home of: regions are homed in blocks).
const PAGES: usize = 4;
const WORDS_PER_PAGE: usize = 4096 / 8;
const ROUNDS: u64 = 12;

/// What rank `rank` writes at `index` in `round`.
fn word(rank: usize, index: usize, round: u64) -> u64 {
    ((round + 1) << 40) | ((rank as u64) << 32) | index as u64
}

/// Runs on every node: each round it rewrites its block, then (after a barrier) reads and
/// checks every other node's block: a producer-consumer pattern, as a stencil's boundary
/// rows. Prints its stats.
#[test]
#[ignore = "node program of barrier_drops_take_the_invalidations_out_of_a_producer_consumer_loop"]
fn child_produce_and_consume() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let (rank, size) = (node.rank() as usize, node.size() as usize);
    let block = PAGES * WORDS_PER_PAGE;
    let region = node
        .alloc::<u64>("produced", block * size, Consistency::Sequential)
        .unwrap();
    for round in 0..ROUNDS {
        for i in rank * block..(rank + 1) * block {
            region.set(i, word(rank, i, round));
        }
        node.barrier().unwrap();
        for other in (0..size).filter(|&o| o != rank) {
            for i in other * block..(other + 1) * block {
                assert_eq!(region.get(i), word(other, i, round), "rank {rank} word {i}");
            }
        }
        node.barrier().unwrap();
    }
    println!("rank {rank} stats {}", node.stats().to_json());
    node.leave().unwrap();
}

/// Each rank's counter `name`, from the stats the node program printed.
fn counters(out: &str, name: &str) -> Vec<u64> {
    (0..NODES as usize)
        .map(|rank| printed_counter(out, rank, name))
        .collect()
}

#[test]
fn barrier_drops_take_the_invalidations_out_of_a_producer_consumer_loop() {
    let child = "drops::child_produce_and_consume";
    let readers = u64::from(NODES) - 1;
    let pages = PAGES as u64;
    for transport in ["tcp", "shm"] {
        // Private copies, as across hosts (same-host nodes map their masters by default,
        // below). Without drops every round after the first invalidates each reader's copies.
        let private = ("DSM_MAP_MASTERS", "0");
        let env = [
            ("DSM_TRANSPORT", transport),
            ("DSM_BARRIER_DROPS", "0"),
            private,
        ];
        let out = run_child_nodes(child, NODES, &env);
        for sent in counters(&out, "invalidations_sent") {
            assert_eq!(
                sent,
                (ROUNDS - 1) * readers * pages,
                "{transport}, no drops: {out}"
            );
        }
        assert!(counters(&out, "copies_dropped").iter().all(|&n| n == 0));
        // With them, only the second round's writes invalidate (the copies of the first
        // were never taken before); each later round's copies are dropped at a barrier. (A
        // drop that reached its home only after the home's next write would cost that write
        // its invalidations again: allowed, and bounded here.)
        let out = run_child_nodes(child, NODES, &[("DSM_TRANSPORT", transport), private]);
        for sent in counters(&out, "invalidations_sent") {
            assert!(
                sent <= 2 * readers * pages,
                "{transport}, drops: {sent}: {out}"
            );
        }
        let most = (ROUNDS - 1) * readers * pages;
        for dropped in counters(&out, "copies_dropped") {
            let expected = most - readers * pages..=most;
            assert!(expected.contains(&dropped), "{transport}: {dropped}: {out}");
        }
        // Mapped masters, drops off: the readers map the pages each home writes, so the
        // home goes on writing with no invalidation and no write fault, round after round.
        let env = [("DSM_TRANSPORT", transport), ("DSM_BARRIER_DROPS", "0")];
        let out = run_child_nodes(child, NODES, &env);
        for sent in counters(&out, "invalidations_sent") {
            assert_eq!(sent, 0, "{transport}, mapped masters: {out}");
        }
        for faults in counters(&out, "write_faults") {
            assert!(
                faults <= pages,
                "{transport}, mapped masters: {faults}: {out}"
            );
        }
    }
}
