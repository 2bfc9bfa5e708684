//! Helpers shared by the integration tests: locating binaries, running with a bound.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
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
    let out = wait_output(child, limit, &format!("{cmd:?}"));
    (out, start.elapsed())
}

/// Waits for `child` at most `limit` (then kills it and panics naming `what`); its output.
fn wait_output(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output().expect("wait");
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(limit).is_err() {
        signal(pid, libc::SIGKILL);
        panic!("{what} did not finish within {limit:?}");
    }
    waiter.join().expect("waiter")
}

/// Runs this test binary's ignored test `child` (a node program) on `nodes` nodes under
/// dsm-run with `env`, bounded; asserts every node succeeded and returns the output.
#[allow(dead_code)]
pub fn run_child_nodes(child: &str, nodes: u32, env: &[(&str, &str)]) -> String {
    let (out, _) = run_bounded(
        Command::new(dsm_run())
            .args(["-n", &nodes.to_string(), "--timeout-secs", "100", "--"])
            .arg(std::env::current_exe().expect("test binary"))
            .args(["--ignored", "--exact", "--nocapture", child])
            .envs(env.iter().copied()),
        Duration::from_secs(120),
    );
    let all = text(&out);
    assert!(out.status.success(), "{child} on {nodes} nodes: {all}");
    all
}

/// A loopback address free right now (for a coordinator), below the kernel's ephemeral
/// range so that no outgoing connection of a concurrent test takes its port before rank 0
/// binds it (`dsm::free_coordinator_address`, which `dsm-run` compiles in too).
#[allow(dead_code)]
pub fn free_address() -> String {
    dsm::free_coordinator_address().expect("a free loopback port")
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
pub fn finish(child: Child, limit: Duration) -> (bool, String) {
    let pid = child.id();
    let out = wait_output(child, limit, &format!("process {pid}"));
    (out.status.success(), text(&out))
}

/// [`finish`] for every node of a cluster, in order; when one does not finish in time, the
/// nodes not waited for yet are killed too before the panic goes on (else they outlive the
/// test: a node spinning on a fault it can never serve takes a CPU until someone notices).
#[allow(dead_code)]
pub fn finish_all(nodes: Vec<Child>, limit: Duration) -> Vec<(bool, String)> {
    let pids: Vec<u32> = nodes.iter().map(Child::id).collect();
    let mut outcomes = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.into_iter().enumerate() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish(node, limit))) {
            Ok(outcome) => outcomes.push(outcome),
            Err(panic) => {
                for &pid in &pids[i + 1..] {
                    signal(pid, libc::SIGKILL);
                }
                std::panic::resume_unwind(panic);
            }
        }
    }
    outcomes
}

/// A node a test keeps aside (a victim it stops or kills, a rank it waits for last): killed
/// and reaped when dropped, so that a panic on the way (a timeout, a failed assertion) leaves
/// no process behind.
#[allow(dead_code)]
pub struct KillOnDrop(Option<Child>);

#[allow(dead_code)]
impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        KillOnDrop(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// The child itself, for a caller that waits for it after all.
    pub fn into_child(mut self) -> Child {
        self.0.take().expect("a child until dropped")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Holding the `Child` (not yet reaped) means its pid cannot name another process.
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `sig` to the child process `pid`.
#[allow(dead_code)]
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child the test started and has not reaped yet.
    unsafe { libc::kill(i32::try_from(pid).expect("pid"), sig) };
}

/// The counter `name` of the stats rank `rank` printed (a line `rank R stats {json}`, as
/// `Stats::to_json` writes it) in `out`.
#[allow(dead_code)]
pub fn printed_counter(out: &str, rank: usize, name: &str) -> u64 {
    let tag = format!("rank {rank} stats ");
    let json = out
        .lines()
        .find_map(|l| l.find(&tag).map(|i| &l[i + tag.len()..]))
        .unwrap_or_else(|| panic!("rank {rank} printed no stats: {out}"));
    let stats: serde_json::Value = serde_json::from_str(json).expect("stats JSON");
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {json}"))
}
