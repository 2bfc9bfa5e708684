//! Starts the nodes, watches them, and kills the rest after a failure.

use std::io::Read;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::output::{self, Sink};

/// What to run.
#[derive(Debug)]
pub struct Plan {
    /// Number of processes.
    pub nodes: u32,
    /// `DSM_TRANSPORT` value.
    pub transport: String,
    /// `DSM_COORDINATOR` value.
    pub coordinator: String,
    /// `DSM_CLUSTER_KEY` value for the nodes; `None` leaves the variable as inherited (set by
    /// the user, or `DSM_INSECURE=1`).
    pub key: Option<String>,
    /// Time the others get after a failure before they are killed.
    pub grace: Duration,
    /// Overall limit.
    pub timeout: Option<Duration>,
    /// Rank whose stderr stays on the terminal.
    pub attach: Option<u32>,
    /// CPUs to bind ranks to, round the list (`--bind core`); empty: unbound.
    pub bind: Vec<usize>,
    /// Program and arguments.
    pub command: Vec<String>,
}

/// How the run ended.
#[derive(Debug)]
pub struct Outcome {
    failed: bool,
    timed_out: bool,
}

impl Outcome {
    /// 0 when every node exited 0, 124 on the overall timeout, 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match (self.timed_out, self.failed) {
            (true, _) => ExitCode::from(124),
            (false, true) => ExitCode::from(1),
            (false, false) => ExitCode::SUCCESS,
        }
    }
}

/// The key the nodes of this run share: the user's `DSM_CLUSTER_KEY` (inherited, so `None`
/// here), none with `DSM_INSECURE=1`, else 64 random hex digits, new for every run.
pub fn run_key() -> std::io::Result<Option<String>> {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("DSM_CLUSTER_KEY") || std::env::var("DSM_INSECURE").is_ok_and(|v| v.trim() == "1") {
        return Ok(None);
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(Some(key.iter().map(|b| format!("{b:02x}")).collect()))
}

struct Node {
    rank: u32,
    child: Child,
    status: Option<ExitStatus>,
}

/// Runs the plan to completion.
pub fn run(plan: &Plan) -> std::io::Result<Outcome> {
    let mut nodes = Vec::with_capacity(plan.nodes as usize);
    let mut forwarders = Vec::new();
    for rank in 0..plan.nodes {
        match spawn(plan, rank, &mut forwarders) {
            Ok(child) => nodes.push(Node {
                rank,
                child,
                status: None,
            }),
            Err(e) => {
                kill_all(&mut nodes);
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot start {:?}: {e}", plan.command[0]),
                ));
            }
        }
    }
    let outcome = supervise(plan, &mut nodes);
    drain(forwarders);
    Ok(outcome)
}

/// How long the output of exited nodes may still take to drain.
const DRAIN: Duration = Duration::from_secs(2);

/// Waits (at most [`DRAIN`]) for the forwarders to reach the end of their pipes. A process a
/// node started may hold a pipe open long after the node exited: dsm-run does not wait for
/// it, it says so and leaves (its exit ends the forwarder threads).
fn drain(forwarders: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + DRAIN;
    while forwarders.iter().any(|f| !f.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    let open = forwarders.iter().filter(|f| !f.is_finished()).count();
    if open > 0 {
        eprintln!(
            "dsm-run: {open} output stream(s) still open {DRAIN:?} after the nodes ended \
             (a process they started holds them); not waiting for them"
        );
    }
    for f in forwarders.into_iter().filter(|f| f.is_finished()) {
        let _ = f.join();
    }
}

fn spawn(plan: &Plan, rank: u32, forwarders: &mut Vec<JoinHandle<()>>) -> std::io::Result<Child> {
    let attached = plan.attach == Some(rank);
    let mut cmd = Command::new(&plan.command[0]);
    cmd.args(&plan.command[1..])
        .env("DSM_RANK", rank.to_string())
        .env("DSM_SIZE", plan.nodes.to_string())
        .env("DSM_COORDINATOR", &plan.coordinator)
        .env("DSM_TRANSPORT", &plan.transport)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if attached {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
    if let Some(key) = &plan.key {
        cmd.env("DSM_CLUSTER_KEY", key);
    }
    if let Some(cpu) = crate::bind::cpu_for(rank, &plan.bind) {
        crate::bind::bind(&mut cmd, cpu);
    }
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        forwarders.push(output::forward(rank, out, Sink::Stdout));
    }
    if let Some(err) = child.stderr.take() {
        forwarders.push(output::forward(rank, err, Sink::Stderr));
    }
    Ok(child)
}

/// How often exits are checked. Polling `try_wait` keeps every `Child` owned here and
/// unreaped until seen, so a kill can never hit a recycled pid.
const POLL: Duration = Duration::from_millis(10);

fn supervise(plan: &Plan, nodes: &mut [Node]) -> Outcome {
    let start = Instant::now();
    let mut first_failure: Option<Instant> = None;
    let mut timed_out = false;
    while nodes.iter().any(|n| n.status.is_none()) {
        for node in nodes.iter_mut().filter(|n| n.status.is_none()) {
            if let Ok(Some(status)) = node.child.try_wait() {
                node.status = Some(status);
                if !status.success() {
                    eprintln!("dsm-run: rank {} {}", node.rank, describe(status));
                    first_failure.get_or_insert_with(Instant::now);
                }
            }
        }
        let grace_over = first_failure.is_some_and(|t| t.elapsed() >= plan.grace);
        let time_over = plan.timeout.is_some_and(|t| start.elapsed() >= t);
        if grace_over || time_over {
            if time_over {
                eprintln!(
                    "dsm-run: timeout after {:?}: killing every node",
                    start.elapsed()
                );
                timed_out = true;
            }
            kill_all(nodes);
            break;
        }
        std::thread::sleep(POLL);
    }
    let failed = nodes.iter().any(|n| !n.status.is_some_and(|s| s.success()));
    Outcome { failed, timed_out }
}

fn kill_all(nodes: &mut [Node]) {
    for node in nodes.iter_mut().filter(|n| n.status.is_none()) {
        eprintln!("dsm-run: killing rank {}", node.rank);
        let _ = node.child.kill();
        node.status = node.child.wait().ok();
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended: {status}"),
    }
}
