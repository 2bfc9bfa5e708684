//! Cluster membership with real processes on loopback: any start order, a rank that never
//! comes, a node killed or frozen mid-run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    KillOnDrop, dsm_run, example, finish_all, free_address, run_bounded, signal, text,
};

/// Starts rank `rank` of `size` of the `hello` example directly (no launcher).
fn start(rank: u32, size: u32, coordinator: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(example("hello"))
        .args(args)
        .env("DSM_RANK", rank.to_string())
        .env("DSM_SIZE", size.to_string())
        .env("DSM_COORDINATOR", coordinator)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hello example")
}

#[test]
fn hello_runs_on_1_2_and_4_nodes() {
    for n in ["1", "2", "4"] {
        let (out, _) = run_bounded(
            Command::new(dsm_run())
                .args(["-n", n, "--timeout-secs", "30", "--"])
                .arg(example("hello"))
                .args(["--iterations", "50"]),
            Duration::from_secs(40),
        );
        let all = text(&out);
        assert!(out.status.success(), "n={n}: {all}");
        assert!(all.contains(&format!("rank 0 of {n} joined")), "{all}");
        assert!(all.contains("rank 0 done: faults"), "{all}");
        assert!(all.contains(" 50 barriers"), "{all}");
    }
}

#[test]
fn nodes_started_in_shuffled_order_with_delays_all_join() {
    let coordinator = free_address();
    let order = [(2, 0), (3, 150), (0, 400), (1, 700)];
    let mut children = Vec::new();
    for (rank, delay_ms) in order {
        std::thread::sleep(Duration::from_millis(delay_ms));
        children.push((
            rank,
            start(rank, 4, &coordinator, &["--iterations", "5"], &[]),
        ));
    }
    let (ranks, nodes): (Vec<u32>, Vec<Child>) = children.into_iter().unzip();
    for (rank, (ok, out)) in ranks
        .into_iter()
        .zip(finish_all(nodes, Duration::from_secs(30)))
    {
        assert!(ok, "rank {rank}: {out}");
        assert!(out.contains(&format!("rank {rank} of 4 joined")), "{out}");
    }
}

#[test]
fn a_rank_that_never_starts_is_named_by_every_node() {
    let coordinator = free_address();
    let env = [("DSM_JOIN_TIMEOUT_MS", "1000")];
    let ranks = [0, 1, 3];
    let nodes = ranks.map(|r| start(r, 4, &coordinator, &[], &env)).into();
    for (rank, (ok, out)) in ranks
        .into_iter()
        .zip(finish_all(nodes, Duration::from_secs(20)))
    {
        assert!(!ok, "rank {rank} should fail: {out}");
        assert!(out.contains("ranks [2] never joined"), "rank {rank}: {out}");
    }
}

/// Starts 3 long-running nodes, hits rank 1 with `sig`, and checks that the others stop with
/// `node 1 failed` within `bound` of the signal.
fn others_see_node_1_fail(sig: i32, bound: Duration) {
    let coordinator = free_address();
    let args = ["--iterations", "100000", "--sleep-ms", "5"];
    let env = [
        ("DSM_HEARTBEAT_MS", "100"),
        ("DSM_FAILURE_TIMEOUT_MS", "1000"),
    ];
    let mut children: Vec<_> = (0..3)
        .map(|r| start(r, 3, &coordinator, &args, &env))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let victim = KillOnDrop::new(children.remove(1));
    signal(victim.id(), sig);
    let hit = Instant::now();
    let outcomes = finish_all(children, Duration::from_secs(20));
    // Waited in order: the last one's time bounds both.
    let took = hit.elapsed();
    for (rank, (ok, out)) in [0, 2].into_iter().zip(outcomes) {
        assert!(!ok, "rank {rank} should fail: {out}");
        assert!(out.contains("node 1 failed"), "rank {rank}: {out}");
    }
    assert!(took < bound, "ranks 0 and 2 took {took:?} to notice");
}

#[test]
fn a_killed_node_fails_the_others_promptly() {
    // The connection closes at once: noticed well within the heartbeat timeout.
    others_see_node_1_fail(libc::SIGKILL, Duration::from_secs(3));
}

#[test]
fn a_frozen_node_is_found_by_the_ring_heartbeats() {
    // SIGSTOP keeps the sockets open: only missed heartbeats can reveal it.
    others_see_node_1_fail(libc::SIGSTOP, Duration::from_secs(4));
}

#[test]
fn a_node_with_another_cluster_key_cannot_join() {
    let coordinator = free_address();
    let env_a = [
        ("DSM_JOIN_TIMEOUT_MS", "1000"),
        ("DSM_CLUSTER_KEY", "alpha"),
    ];
    let env_b = [("DSM_JOIN_TIMEOUT_MS", "1000"), ("DSM_CLUSTER_KEY", "beta")];
    let nodes = vec![
        start(0, 2, &coordinator, &[], &env_a),
        start(1, 2, &coordinator, &[], &env_b),
    ];
    let outcomes = finish_all(nodes, Duration::from_secs(20));
    let (ok, out) = &outcomes[0];
    assert!(
        !ok && out.contains("ranks [1] never joined"),
        "rank 0: {out}"
    );
    let (ok, out) = &outcomes[1];
    assert!(!ok && out.contains("rejected our Join"), "rank 1: {out}");
}
