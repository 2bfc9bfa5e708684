//! The examples as real multi-process runs under `dsm-run`, for 1, 2 and 4 nodes in both
//! consistency modes (release mode under both write trackings), both fault deliveries (a
//! reader thread, the default, and the faulting thread's SIGBUS handler) and both transports
//! between these same-host nodes (shared memory, the default, and TCP); each example checks
//! its own result and exits non-zero when wrong.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{dsm_run, example, free_address, run_bounded, text};

/// The transports the examples run under (issue #14: the examples under both, the other
/// tests under the default): `auto` pairs these same-host nodes by shared memory, `tcp` keeps
/// the network path tested now that nothing else takes it by default.
const TRANSPORTS: [&str; 2] = ["auto", "tcp"];

/// How one run is set up: `dsm-run --transport`, `DSM_FAULT_DELIVERY`, `DSM_WRITE_TRACKING`,
/// `DSM_BARRIER`.
#[derive(Debug, Clone, Copy)]
struct Setting {
    transport: &'static str,
    delivery: &'static str,
    tracking: &'static str,
    barrier: &'static str,
}

impl Setting {
    fn default_on(transport: &'static str) -> Self {
        Setting {
            transport,
            delivery: "signal",
            tracking: "scan",
            barrier: "auto",
        }
    }
}

/// Runs example `name` on `nodes` nodes under `setting`; asserts it succeeded and, under
/// `auto`, that no pair of nodes fell back to the network (which would test TCP twice).
fn run_example(name: &str, nodes: u32, args: &[&str], setting: Setting) -> String {
    let (out, _) = run_bounded(
        Command::new(dsm_run())
            .args(["-n", &nodes.to_string(), "--timeout-secs", "60"])
            .args(["--transport", setting.transport, "--"])
            .arg(example(name))
            .args(args)
            .env("DSM_FAULT_DELIVERY", setting.delivery)
            .env("DSM_WRITE_TRACKING", setting.tracking)
            .env("DSM_BARRIER", setting.barrier),
        Duration::from_secs(90),
    );
    let all = text(&out);
    assert!(
        out.status.success(),
        "{name} on {nodes} nodes {args:?}, {setting:?}: {all}"
    );
    // Every warning of a pair (or a node) left to the network says "same-host".
    let fell_back = all
        .lines()
        .any(|l| l.contains("WARN") && l.contains("same-host"));
    assert!(
        setting.transport != "auto" || !fell_back,
        "{name} on {nodes} nodes {args:?}, {setting:?}: same-host nodes did not pair: {all}"
    );
    all
}

/// Every node count, delivery and transport, sequential mode and release mode under both
/// write trackings (scanned, and forced write faults: CI runs release mode both ways).
fn every_size_and_mode(name: &str, args: &[&str], passed: &str) {
    for transport in TRANSPORTS {
        for delivery in ["thread", "signal"] {
            for (mode, tracking) in [
                ("sequential", "scan"),
                ("release", "scan"),
                ("release", "faults"),
            ] {
                let setting = Setting {
                    transport,
                    delivery,
                    tracking,
                    barrier: "auto",
                };
                // A single node has no peer: its run is the same under every transport.
                let sizes: &[u32] = if transport == "auto" {
                    &[1, 2, 4]
                } else {
                    &[2, 4]
                };
                for &nodes in sizes {
                    let mut all_args = args.to_vec();
                    all_args.extend(["--mode", mode]);
                    let out = run_example(name, nodes, &all_args, setting);
                    assert!(
                        out.contains(passed),
                        "{name} {mode} {nodes} {setting:?}: {out}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_readme_program_is_the_quickstart_example_and_runs_on_two_nodes() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let file =
        std::fs::read_to_string(format!("{root}/examples/quickstart.rs")).expect("quickstart");
    // The example's own doc comment (the lint wants one) is not part of the README's copy.
    let source = file
        .split_once("\n\n")
        .filter(|(head, _)| head.lines().all(|l| l.starts_with("//!")))
        .map_or(file.as_str(), |(_, body)| body);
    let block = readme
        .split_once("```rust\n")
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .map(|(block, _)| block)
        .expect("the README has a rust block");
    assert_eq!(
        block, source,
        "README's program and examples/quickstart.rs differ"
    );
    for transport in TRANSPORTS {
        let out = run_example("quickstart", 2, &[], Setting::default_on(transport));
        for rank in 0..2 {
            assert!(
                out.contains(&format!("rank {rank}: quickstart passed")),
                "{transport}: {out}"
            );
        }
    }
}

#[test]
fn jacobi_matches_the_single_process_result() {
    every_size_and_mode(
        "jacobi",
        &["--n", "128", "--iters", "10"],
        "jacobi check passed",
    );
    for transport in TRANSPORTS {
        for mode in ["sequential", "release"] {
            let args = ["--n", "128", "--iters", "10", "--copy", "--mode", mode];
            let out = run_example("jacobi", 2, &args, Setting::default_on(transport));
            assert!(
                out.contains("jacobi check passed"),
                "--copy {mode} {transport}: {out}"
            );
        }
    }
}

/// The barrier the default does not pick at these sizes: dissemination at 3 nodes (not a
/// power of two: rounds overlap), central at 5; both modes (release mode's barriers carry
/// every node's write notices).
#[test]
fn jacobi_matches_under_either_barrier_at_any_size() {
    for transport in TRANSPORTS {
        for (barrier, nodes) in [("dissemination", 3), ("central", 5)] {
            for mode in ["sequential", "release"] {
                let setting = Setting {
                    barrier,
                    ..Setting::default_on(transport)
                };
                let args = ["--n", "128", "--iters", "10", "--mode", mode];
                let out = run_example("jacobi", nodes, &args, setting);
                assert!(
                    out.contains("jacobi check passed"),
                    "{barrier} {nodes} {mode} {transport}: {out}"
                );
            }
        }
    }
}

#[test]
fn counter_loses_no_increment_under_the_lock() {
    every_size_and_mode("counter", &["--increments", "100"], "counter check passed");
    for transport in TRANSPORTS {
        for nodes in [2, 4] {
            let args = ["--increments", "100", "--home-queue", "--mode", "release"];
            let out = run_example("counter", nodes, &args, Setting::default_on(transport));
            assert!(
                out.contains("counter check passed"),
                "home-queue {nodes} {transport}: {out}"
            );
        }
    }
}

/// Sequential mode, nodes contending for one lock: a release to a waiting node passes the
/// counter's page on (back to its home, or pushed to the next holder by the home; each rank
/// prints how many), and no increment is lost.
#[test]
fn contended_lock_releases_pass_the_page_on_and_lose_nothing() {
    for transport in TRANSPORTS {
        let args = ["--increments", "300", "--mode", "sequential"];
        let out = run_example("counter", 3, &args, Setting::default_on(transport));
        assert!(out.contains("counter check passed"), "{transport}: {out}");
        let handed_back: u64 = out
            .split(" pages passed on")
            .filter_map(|before| before.rsplit('(').next()?.trim().parse::<u64>().ok())
            .sum();
        assert!(handed_back > 0, "{transport}: no page was passed on: {out}");
    }
}

#[test]
fn matmul_matches_the_single_process_product() {
    every_size_and_mode("matmul", &["--n", "64"], "matmul check passed");
}

#[test]
fn jacobi_nodes_fail_promptly_when_one_is_killed_mid_run() {
    for transport in TRANSPORTS {
        jacobi_node_1_killed(transport, "auto");
    }
    // The survivors' dissemination rounds wait on each other, not on rank 0 alone.
    jacobi_node_1_killed("auto", "dissemination");
}

/// Kills node 1 of 3 mid-run under `transport` and `barrier`: the others stop, naming it.
fn jacobi_node_1_killed(transport: &str, barrier: &str) {
    let coordinator = free_address();
    let start = |rank: u32| {
        Command::new(example("jacobi"))
            .args(["--n", "128", "--iters", "1000000"])
            .env("DSM_RANK", rank.to_string())
            .env("DSM_SIZE", "3")
            .env("DSM_COORDINATOR", &coordinator)
            .env("DSM_FAILURE_TIMEOUT_MS", "1000")
            .env("DSM_TRANSPORT", transport)
            .env("DSM_BARRIER", barrier)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut nodes: Vec<_> = (0..3).map(start).collect();
    std::thread::sleep(Duration::from_millis(2000));
    let mut victim = nodes.remove(1);
    victim.kill().unwrap();
    let killed = Instant::now();
    victim.wait().unwrap();
    for (rank, node) in [0, 2].into_iter().zip(nodes) {
        let pid = node.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(node.wait_with_output().unwrap()));
        let Ok(out) = rx.recv_timeout(Duration::from_secs(20)) else {
            // SAFETY: kill(2) on our own child that has not been reaped.
            unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
            panic!("rank {rank} still running 20 s after node 1 was killed ({transport})");
        };
        let all = text(&out);
        assert!(
            !out.status.success(),
            "rank {rank} should fail ({transport}): {all}"
        );
        // Either a barrier returned NodeFailed, or a fault on a page of node 1 was failed.
        assert!(
            all.contains("node 1 failed"),
            "rank {rank} does not name node 1 ({transport}): {all}"
        );
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "rank {rank} took {:?} ({transport})",
            killed.elapsed()
        );
    }
}
