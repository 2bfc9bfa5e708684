//! Collective calls that do not match across nodes (a barrier on one node while the others
//! allocate or free) fail on every node, and no later collective call succeeds: the nodes can
//! no longer agree on which call is which. Real processes under dsm-run; the node programs
//! are the ignored `child_*` tests of this binary.

use std::time::Duration;

use dsm::{Config, Consistency, Error, Node};

use crate::util::run_child_nodes;

/// Runs `child` on `nodes` nodes under each barrier algorithm; their outputs, joined.
fn run_nodes(child: &str, nodes: u32) -> String {
    ["central", "dissemination"]
        .map(|barrier| {
            let env = [("DSM_OP_TIMEOUT_MS", "2000"), ("DSM_BARRIER", barrier)];
            let out = run_child_nodes(child, nodes, &env);
            for rank in 0..nodes {
                assert!(
                    out.contains(&format!("rank {rank}: refused as it must")),
                    "{barrier}: {out}"
                );
            }
            out
        })
        .join("\n")
}

#[test]
fn a_barrier_against_an_alloc_fails_everywhere_and_nothing_pairs_up_later() {
    run_nodes("collectives::child_barrier_against_alloc", 3);
}

#[test]
fn a_barrier_against_a_free_is_refused_as_a_mismatch() {
    let out = run_nodes("collectives::child_barrier_against_free", 3);
    assert!(out.contains("CollectiveMismatch"), "{out}");
}

/// Every later collective call fails with `CollectiveFailed`, at once.
fn later_calls_fail(node: &Node) {
    let started = std::time::Instant::now();
    assert!(matches!(
        node.barrier(),
        Err(Error::CollectiveFailed { .. })
    ));
    let alloc = node.alloc::<u64>("later", 16, Consistency::Sequential);
    assert!(matches!(alloc, Err(Error::CollectiveFailed { .. })));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refusals must not wait"
    );
    println!("rank {}: refused as it must", node.rank());
}

#[test]
#[ignore = "node program of a_barrier_against_an_alloc_fails_everywhere_and_nothing_pairs_up_later"]
fn child_barrier_against_alloc() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let first = if node.rank() == 0 {
        node.barrier().map(drop)
    } else {
        node.alloc::<u64>("mine", 1024, Consistency::Sequential)
            .map(drop)
    };
    println!("rank {}: first call: {first:?}", node.rank());
    assert!(first.is_err(), "a barrier paired with an alloc");
    later_calls_fail(&node);
}

#[test]
#[ignore = "node program of a_barrier_against_a_free_is_refused_as_a_mismatch"]
fn child_barrier_against_free() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let region = node
        .alloc::<u64>("freed", 1024, Consistency::Sequential)
        .unwrap();
    // Rank 0 calls barrier twice where the others free (a barrier, then the free's own
    // rendezvous): the second barrier meets the free's rendezvous at rank 0.
    let first = if node.rank() == 0 {
        node.barrier().and_then(|()| node.barrier())
    } else {
        node.free(region)
    };
    println!("rank {}: first call: {first:?}", node.rank());
    assert!(first.is_err(), "a barrier paired with a free");
    later_calls_fail(&node);
}
