//! Helpers shared by the integration tests: locating binaries, running with a bound.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the `dsm-run` binary cargo built for these tests.
pub fn dsm_run() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dsm-run"))
}

/// Path of an example binary (cargo builds examples before integration tests).
#[allow(dead_code)]
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/examples/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test --workspace` builds the examples, `cargo test -p dsm-run` alone \
         does not (run `cargo build -p dsm --examples` with the same profile first)",
        path.display()
    );
    path
}

/// Runs `cmd` to completion, killing it after `limit`; returns its output and run time.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output().expect("wait");
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(limit).is_err() {
        // SAFETY: kill(2) on the pid of our own unreaped child (the waiter has not returned).
        unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGKILL) };
        panic!("{cmd:?} did not finish within {limit:?}");
    }
    (waiter.join().expect("waiter"), start.elapsed())
}

/// Stdout and stderr as one string, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits for `child` at most `limit` (then kills it and panics); returns (success, combined
/// output).
#[allow(dead_code)]
pub fn finish(child: std::process::Child, limit: Duration) -> (bool, String) {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output().expect("wait");
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(limit).is_err() {
        signal(pid, libc::SIGKILL);
        panic!("process {pid} still running after {limit:?}");
    }
    let out = waiter.join().expect("waiter");
    (out.status.success(), text(&out))
}

/// Sends `sig` to the child process `pid`.
#[allow(dead_code)]
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child the test started and has not reaped yet.
    unsafe { libc::kill(i32::try_from(pid).expect("pid"), sig) };
}
