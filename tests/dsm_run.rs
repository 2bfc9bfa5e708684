//! `dsm-run` with real processes: variables, prefixes, exit status, kill after failure.

use std::process::Command;
use std::time::Duration;

use crate::util::{dsm_run, run_bounded, text};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn every_node_gets_its_variables_and_a_prefix() {
    let (out, _) = run_bounded(
        Command::new(dsm_run()).args([
            "-n",
            "3",
            "--",
            "sh",
            "-c",
            "echo rank=$DSM_RANK size=$DSM_SIZE transport=$DSM_TRANSPORT coord=$DSM_COORDINATOR",
        ]),
        LIMIT,
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut coords = Vec::new();
    for rank in 0..3 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("[{rank}] rank={rank} size=3 transport=auto")))
            .unwrap_or_else(|| panic!("no line for rank {rank}:\n{all}"));
        coords.push(line.rsplit("coord=").next().unwrap().to_owned());
    }
    assert!(
        coords
            .iter()
            .all(|c| c == &coords[0] && c.starts_with("127.0.0.1:")),
        "{all}"
    );
}

#[test]
fn one_failure_fails_the_run_and_the_rest_are_killed_after_the_grace_period() {
    let (out, took) = run_bounded(
        Command::new(dsm_run()).args([
            "-n",
            "3",
            "--grace-ms",
            "300",
            "--",
            "sh",
            "-c",
            "if [ $DSM_RANK = 1 ]; then exit 3; fi; exec sleep 60",
        ]),
        LIMIT,
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("rank 1 exited with status 3"), "{all}");
    assert!(
        all.contains("killing rank 0") && all.contains("killing rank 2"),
        "{all}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn stderr_is_prefixed_too_and_success_is_zero() {
    let (out, _) = run_bounded(
        Command::new(dsm_run()).args(["-n", "2", "--", "sh", "-c", "echo oops >&2"]),
        LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[0] oops") && stderr.contains("[1] oops"),
        "{stderr}"
    );
}

#[test]
fn overall_timeout_kills_everything_with_124() {
    let (out, took) = run_bounded(
        Command::new(dsm_run()).args(["-n", "2", "--timeout-secs", "1", "--", "sleep", "60"]),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn a_missing_program_is_reported() {
    let (out, _) = run_bounded(
        Command::new(dsm_run()).args(["-n", "2", "--", "/nonexistent/program"]),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot start"));
}
