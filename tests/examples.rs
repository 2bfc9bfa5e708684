//! The examples as real multi-process runs under `dsm-run`, for 1, 2 and 4 nodes in both
//! consistency modes; each example checks its own result and exits non-zero when wrong.

use std::process::Command;
use std::time::Duration;

use crate::util::{dsm_run, example, run_bounded, text};

fn run_example(name: &str, nodes: u32, args: &[&str]) -> String {
    let (out, _) = run_bounded(
        Command::new(dsm_run())
            .args(["-n", &nodes.to_string(), "--timeout-secs", "60", "--"])
            .arg(example(name))
            .args(args),
        Duration::from_secs(90),
    );
    let all = text(&out);
    assert!(
        out.status.success(),
        "{name} on {nodes} nodes {args:?}: {all}"
    );
    all
}

#[test]
fn jacobi_matches_the_single_process_result() {
    for mode in ["sequential", "release"] {
        for nodes in [1, 2, 4] {
            let out = run_example(
                "jacobi",
                nodes,
                &["--n", "128", "--iters", "10", "--mode", mode],
            );
            assert!(out.contains("jacobi check passed"), "{mode} {nodes}: {out}");
            for rank in 0..nodes {
                assert!(
                    out.contains(&format!("[{rank}] rank {rank}: 10 iterations")),
                    "{out}"
                );
            }
        }
    }
}
