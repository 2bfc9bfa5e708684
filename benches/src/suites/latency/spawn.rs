//! The parent's side of a latency cluster: starts the node processes (this binary again, in
//! the node role), follows the phase each announces, collects their results, and never waits
//! unboundedly: past the deadline, or as soon as one node fails, it kills the others and says
//! which phase each rank was in, and the failed rank's error.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A node announces the phase it enters with a line `PHASE <name>` on stdout.
pub(super) const PHASE_PREFIX: &str = "PHASE ";
/// A node prints its figures as one line `RESULT <json>` on stdout.
pub(super) const RESULT_PREFIX: &str = "RESULT ";
/// A failing node prints its error as one line `ERROR <error>` on stdout.
pub(super) const ERROR_PREFIX: &str = "ERROR ";
/// How often the parent looks at its children.
const POLL: Duration = Duration::from_millis(20);

/// What to start: one process per rank, each with the CPU it pins itself to (`None`:
/// unpinned) and the environment every node gets.
#[derive(Debug)]
pub(super) struct Launch<'a> {
    /// Names the cluster in errors (`"2 nodes"`).
    pub label: &'a str,
    /// Arguments that put the re-executed binary into this suite.
    pub args: &'a [&'a str],
    /// Per rank: the CPU to pin to.
    pub cpus: Vec<Option<usize>>,
    /// Environment variable naming the node role; its value is the CPU (or `none`).
    pub role_env: &'a str,
    /// Extra environment for every node.
    pub env: Vec<(&'a str, String)>,
}

/// The running nodes.
#[derive(Debug)]
pub(super) struct Nodes {
    label: String,
    children: Vec<Child>,
    readers: Vec<JoinHandle<Printed>>,
    phases: Arc<Mutex<Vec<String>>>,
}

impl Nodes {
    /// Starts every rank of `launch` on a fresh coordinator port.
    pub(super) fn start(launch: &Launch<'_>) -> anyhow::Result<Nodes> {
        // Below the ephemeral range: no outgoing connection takes it before rank 0 binds it.
        let coordinator = dsm::free_coordinator_address()?;
        let exe = std::env::current_exe()?;
        let size = launch.cpus.len();
        let phases = Arc::new(Mutex::new(vec!["start".to_owned(); size]));
        let mut nodes = Nodes {
            label: launch.label.to_owned(),
            children: Vec::with_capacity(size),
            readers: Vec::with_capacity(size),
            phases,
        };
        for (rank, cpu) in launch.cpus.iter().enumerate() {
            let role = cpu.map_or_else(|| "none".to_owned(), |c| c.to_string());
            let mut child = Command::new(&exe)
                .args(launch.args)
                .env(launch.role_env, role)
                .env("DSM_RANK", rank.to_string())
                .env("DSM_SIZE", size.to_string())
                .env("DSM_COORDINATOR", &coordinator)
                .envs(launch.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("{}: start rank {rank}", launch.label))?;
            let stdout = child.stdout.take().expect("stdout is piped");
            let phases = Arc::clone(&nodes.phases);
            nodes.children.push(child);
            nodes
                .readers
                .push(std::thread::spawn(move || follow(rank, stdout, &phases)));
        }
        Ok(nodes)
    }

    /// Waits until every node exited; returns each rank's `RESULT` lines (the JSON after the
    /// prefix). Fails, after killing the rest, when a node fails or `deadline` passes.
    pub(super) fn wait(mut self, deadline: Duration) -> anyhow::Result<Vec<Vec<String>>> {
        let started = Instant::now();
        let mut status: Vec<Option<ExitStatus>> = vec![None; self.children.len()];
        while status.iter().any(Option::is_none) {
            for (slot, child) in status.iter_mut().zip(&mut self.children) {
                if slot.is_none() {
                    *slot = child.try_wait()?;
                }
            }
            if let Some(rank) = status.iter().position(|s| s.is_some_and(|s| !s.success())) {
                let phases = self.kill_all();
                let code = status[rank].expect("exited");
                let error = self.error(rank);
                bail!(
                    "{}: rank {rank} failed ({code}) in phase {:?}: {error}; the others were \
                     killed (phases: {phases})",
                    self.label,
                    self.phase(rank)
                );
            }
            if started.elapsed() > deadline {
                let phases = self.kill_all();
                bail!(
                    "{}: nodes still running after {deadline:?}, killed; each rank was \
                     awaiting the end of: {phases}",
                    self.label
                );
            }
            std::thread::sleep(POLL);
        }
        self.readers
            .drain(..)
            .map(|r| {
                r.join()
                    .map(|printed| printed.results)
                    .map_err(|_| anyhow::anyhow!("stdout reader panicked"))
            })
            .collect()
    }

    /// The error rank `rank` printed. Only once every node is dead (`kill_all`): its stdout
    /// is then closed, so its reader has ended or is about to.
    fn error(&mut self, rank: usize) -> String {
        let printed = self.readers.remove(rank).join();
        printed
            .ok()
            .and_then(|printed| printed.error)
            .unwrap_or_else(|| "it printed no error (see stderr)".to_owned())
    }

    fn phase(&self, rank: usize) -> String {
        self.phases.lock().unwrap_or_else(|p| p.into_inner())[rank].clone()
    }

    /// Kills every node still running; returns "rank 0: phase, rank 1: phase, …".
    fn kill_all(&mut self) -> String {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        phases
            .iter()
            .enumerate()
            .map(|(rank, phase)| format!("rank {rank}: {phase:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        // An early return (an error while starting) must not leave nodes behind.
        self.kill_all();
    }
}

/// What one node printed on stdout besides its phases.
#[derive(Debug, Default)]
struct Printed {
    results: Vec<String>,
    error: Option<String>,
}

/// Reads one node's stdout: records each phase it enters, keeps its result lines and its
/// error, and passes anything else on to stderr.
fn follow(rank: usize, stdout: std::process::ChildStdout, phases: &Mutex<Vec<String>>) -> Printed {
    let mut printed = Printed::default();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(phase) = line.strip_prefix(PHASE_PREFIX) {
            phases.lock().unwrap_or_else(|p| p.into_inner())[rank] = phase.to_owned();
        } else if let Some(result) = line.strip_prefix(RESULT_PREFIX) {
            printed.results.push(result.to_owned());
        } else if let Some(error) = line.strip_prefix(ERROR_PREFIX) {
            printed.error = Some(error.to_owned());
        } else {
            eprintln!("rank {rank}: {line}");
        }
    }
    printed
}
