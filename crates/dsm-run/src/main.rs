//! `dsm-run -n N [--transport auto|shm|tcp|rdma|rdma!] -- PROGRAM ARGS...`: runs a dsm program as N
//! local nodes.
//!
//! Rank `r` is bound to the `r`-th CPU the launcher may use, round the list (`--bind core`,
//! the default; `--bind none` leaves them to the scheduler, which piles waking nodes onto one
//! CPU: see `bind`). Each process gets `DSM_RANK`, `DSM_SIZE`, `DSM_COORDINATOR` (a free loopback port),
//! `DSM_TRANSPORT` and `DSM_CLUSTER_KEY`: a random key made for this run (unless the user set
//! one, or `DSM_INSECURE=1`), so no other process of the host can join it. Every line a node
//! prints is prefixed with `[rank]`. When a process fails the
//! others get a grace period to notice (they see `NodeFailed`) and are then killed. The exit
//! status is 0 only when every process exited 0.

mod bind;
// The library's own source, compiled in: the launcher does not link `dsm`.
#[path = "../../dsm/src/coordinator.rs"]
mod coordinator;
mod launch;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Command line of `dsm-run`.
#[derive(Debug, Parser)]
#[command(name = "dsm-run", about = "Run a dsm program as N local nodes")]
struct Args {
    /// Number of nodes (processes) to start.
    #[arg(short = 'n', long = "nodes", value_parser = clap::value_parser!(u32).range(1..=256))]
    nodes: u32,
    /// Transport: auto (shared memory between these local nodes, RDMA or TCP otherwise), shm
    /// (shared memory or fail), tcp, rdma (when available) or rdma! (required).
    #[arg(long, default_value = "auto", value_parser = ["auto", "shm", "tcp", "rdma", "rdma!"])]
    transport: String,
    /// Coordinator address (default: a free port on 127.0.0.1).
    #[arg(long)]
    coordinator: Option<String>,
    /// After the first failure, how long the others may run before they are killed (ms).
    #[arg(long, default_value_t = 5000)]
    grace_ms: u64,
    /// Kill every process and fail after this many seconds (0 = no limit).
    #[arg(long, default_value_t = 0)]
    timeout_secs: u64,
    /// Leave this rank's stderr attached to the terminal, unprefixed (for progress bars).
    #[arg(long)]
    attach: Option<u32>,
    /// CPU binding: core (rank r on the r-th CPU this launcher may use, round the list, as
    /// mpirun binds ranks to cores) or none.
    #[arg(long, default_value = "core", value_parser = ["core", "none"])]
    bind: String,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let coordinator = match args.coordinator.clone() {
        Some(c) => c,
        None => match coordinator::free_coordinator_address() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("dsm-run: no free port for the coordinator: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let key = match launch::run_key() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("dsm-run: cannot make a cluster key (/dev/urandom): {e}");
            return ExitCode::from(2);
        }
    };
    let bind = match args.bind.as_str() {
        "core" => match bind::allowed_cpus() {
            Ok(cpus) => cpus,
            Err(e) => {
                eprintln!("dsm-run: cannot read this process's CPUs, ranks stay unbound: {e}");
                Vec::new()
            }
        },
        _ => Vec::new(),
    };
    let plan = launch::Plan {
        nodes: args.nodes,
        transport: args.transport,
        coordinator,
        key,
        grace: Duration::from_millis(args.grace_ms),
        timeout: (args.timeout_secs > 0).then(|| Duration::from_secs(args.timeout_secs)),
        attach: args.attach,
        bind,
        command: args.command,
    };
    match launch::run(&plan) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("dsm-run: {e}");
            ExitCode::from(2)
        }
    }
}
