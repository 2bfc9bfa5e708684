//! Failures stay contained (issue #12): SIGKILL one node of 4 at a random point, many times.
//! Survivors get `NodeFailed` from their next barrier or lock, and then their faults on pages
//! of live homes are served; a survivor aborts only when it touched a page that needed a dead
//! node (homed there, or lost with it: it held the page writable), and its last words name
//! the page and that node. Real processes on loopback; the node program is the ignored
//! `child_until_a_node_dies` test of this binary.
//!
//! A survivor that got `NodeFailed` waits for the test's word on stdin: once every survivor
//! has either got it or aborted, the test sends each the ranks still alive, and each reads one
//! page it never touched from every live home, in a sequential and in a release-mode region
//! (so each read is a fault served by that home).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dsm::{Config, Consistency, Error, Node};

use crate::util::{free_address, signal};

/// Nodes per run.
const NODES: u32 = 4;
/// Pages each node is home of (block placement): slot 0 is the node's own, 1 a counter every
/// node increments under lock 0, `2 + r` a page only rank `r` reads, after the failure.
const PAGES_PER_NODE: usize = 8;
/// u64 elements per page.
const WORDS: usize = 512;
/// Runs when `DSM_KILL_RUNS` is not set.
const DEFAULT_RUNS: u64 = 20;
/// Bound on each phase of a run (starting, winding down): a run past it is a hang.
const PHASE_BOUND: Duration = Duration::from_secs(45);

fn element(home: usize, slot: usize) -> usize {
    (home * PAGES_PER_NODE + slot) * WORDS
}

/// What the fresh page `2 + reader` homed on `home` holds.
fn fresh_value(home: usize, reader: usize) -> u64 {
    (home * 1000 + reader) as u64
}

#[test]
#[ignore = "node program of a_killed_node_fails_only_what_needs_it"]
fn child_until_a_node_dies() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let rank = node.rank() as usize;
    let nodes = node.size() as usize;
    let work = node
        .alloc::<u64>(
            "work",
            nodes * PAGES_PER_NODE * WORDS,
            Consistency::Sequential,
        )
        .unwrap();
    // The same fresh pages in a release-mode region: a fetch from a live home there too.
    let relaxed = node
        .alloc::<u64>(
            "relaxed",
            nodes * PAGES_PER_NODE * WORDS,
            Consistency::Release,
        )
        .unwrap();
    for reader in 0..nodes {
        work.set(element(rank, 2 + reader), fresh_value(rank, reader));
        relaxed.set(element(rank, 2 + reader), fresh_value(rank, reader));
    }
    node.barrier().unwrap();
    println!("rank {rank}: ready");
    let mut iteration = 0u64;
    let (dead, during) = loop {
        iteration += 1;
        let locked = node.lock(0).acquire();
        let guard = match locked {
            Ok(guard) => guard,
            Err(Error::NodeFailed { rank }) => break (rank, "lock"),
            Err(e) => panic!("rank {rank}: lock: {e}"),
        };
        for home in 0..nodes {
            work.set(element(home, 1), work.get(element(home, 1)) + 1);
        }
        drop(guard);
        work.set(element(rank, 0), iteration);
        match node.barrier() {
            Ok(()) => {}
            Err(Error::NodeFailed { rank }) => break (rank, "barrier"),
            Err(e) => panic!("rank {rank}: barrier: {e}"),
        }
        let neighbour = (rank + 1) % nodes;
        let seen = work.get(element(neighbour, 0));
        assert!(
            seen >= iteration,
            "rank {rank}: neighbour wrote {seen} < {iteration}"
        );
    };
    println!(
        "rank {rank}: NodeFailed {{ rank: {dead} }} from its {during} at iteration {iteration}"
    );
    let mut word = String::new();
    std::io::stdin().read_line(&mut word).unwrap();
    let live: Vec<usize> = word
        .split_whitespace()
        .skip(1)
        .map(|r| r.parse().unwrap())
        .collect();
    let mut served = 0;
    for home in live.into_iter().filter(|h| *h != rank) {
        assert_eq!(work.get(element(home, 2 + rank)), fresh_value(home, rank));
        assert_eq!(
            relaxed.get(element(home, 2 + rank)),
            fresh_value(home, rank)
        );
        served += 2;
    }
    println!("rank {rank}: live homes served {served} fresh pages");
    // Hold the node (its pages) until the test says every survivor is done.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    println!("rank {rank}: exiting");
}

/// A tiny deterministic generator (splitmix64): the kill points come from one printed seed.
struct Draw(u64);

impl Draw {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    }
}

/// One line of a node's stdout, or its end.
enum Seen {
    Line(usize, String),
    Closed(usize),
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: std::thread::JoinHandle<String>,
    stdout: Vec<String>,
    closed: bool,
}

fn start(rank: usize, coordinator: &str, delivery: &str, seen: &Sender<Seen>) -> Proc {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "--nocapture"])
        .arg("contain::child_until_a_node_dies")
        .env("DSM_RANK", rank.to_string())
        .env("DSM_SIZE", NODES.to_string())
        .env("DSM_COORDINATOR", coordinator)
        .env("DSM_HEARTBEAT_MS", "100")
        .env("DSM_FAILURE_TIMEOUT_MS", "1000")
        .env("DSM_OP_TIMEOUT_MS", "20000")
        .env("DSM_FAULT_DELIVERY", delivery)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a node");
    let stdout = child.stdout.take().expect("stdout");
    let lines = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = lines.send(Seen::Line(rank, line));
        }
        let _ = lines.send(Seen::Closed(rank));
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    Proc {
        stdin: child.stdin.take(),
        child,
        stderr,
        stdout: Vec::new(),
        closed: false,
    }
}

/// Takes stdout lines until `done` holds (or panics after `PHASE_BOUND`, naming `what`).
fn watch(procs: &mut [Proc], seen: &Receiver<Seen>, what: &str, done: impl Fn(&[Proc]) -> bool) {
    let deadline = Instant::now() + PHASE_BOUND;
    while !done(procs) {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(Seen::Line(rank, line)) => procs[rank].stdout.push(line),
            Ok(Seen::Closed(rank)) => procs[rank].closed = true,
            Err(_) => {
                for p in procs.iter_mut() {
                    let _ = p.child.kill();
                }
                let outs: Vec<_> = procs.iter().map(|p| p.stdout.join("\n")).collect();
                panic!("{what}: nothing for {PHASE_BOUND:?} (a hang); stdout: {outs:#?}");
            }
        }
    }
}

fn printed(p: &Proc, text: &str) -> bool {
    p.stdout.iter().any(|l| l.contains(text))
}

/// How one survivor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// `NodeFailed` from a barrier, then every fresh page of a live home was served.
    BarrierThenServed,
    /// `NodeFailed` from a lock, then every fresh page of a live home was served.
    LockThenServed,
    /// Aborted on a fault on a page homed on the killed node.
    AbortedOnItsPage,
    /// Aborted on a fault on a page lost with the killed node (it held it writable).
    AbortedOnALostPage,
    /// Aborted on a fault that needed another survivor that had aborted before.
    AbortedNeedingAnAborted,
}

/// One run: kill `victim` `delay_ms` after every node is ready; the survivors' outcomes.
fn run_once(victim: usize, delay_ms: u64, delivery: &str) -> Vec<(usize, Outcome, String)> {
    let coordinator = free_address();
    let (tx, seen) = channel();
    let mut procs: Vec<Proc> = (0..NODES as usize)
        .map(|r| start(r, &coordinator, delivery, &tx))
        .collect();
    watch(&mut procs, &seen, "start", |ps| {
        ps.iter().all(|p| printed(p, "ready") || p.closed)
    });
    if !procs.iter().all(|p| printed(p, "ready")) {
        for p in procs.iter_mut() {
            let _ = p.child.kill();
        }
        let stdout: Vec<String> = procs.iter().map(|p| p.stdout.join("\n")).collect();
        let stderr: Vec<String> = procs
            .into_iter()
            .map(|p| p.stderr.join().unwrap_or_default())
            .collect();
        panic!("a node ended before the kill: stdout {stdout:#?}\nstderr {stderr:#?}");
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    signal(procs[victim].child.id(), libc::SIGKILL);
    watch(&mut procs, &seen, "after the kill", |ps| {
        ps.iter()
            .enumerate()
            .all(|(r, p)| r == victim || p.closed || printed(p, "NodeFailed"))
    });
    // Those still running wait on stdin: nothing more can die. Tell them who is alive.
    let live: Vec<usize> = (0..procs.len())
        .filter(|r| *r != victim && !procs[*r].closed)
        .collect();
    let word = format!(
        "check {}\n",
        live.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for r in &live {
        let stdin = procs[*r].stdin.as_mut().expect("stdin kept");
        stdin
            .write_all(word.as_bytes())
            .expect("tell a survivor who is alive");
    }
    watch(&mut procs, &seen, "the survivors' checks", |ps| {
        live.iter()
            .all(|r| ps[*r].closed || printed(&ps[*r], "live homes served"))
    });
    for p in &mut procs {
        drop(p.stdin.take()); // Every survivor is done: let them exit.
    }
    watch(&mut procs, &seen, "exit", |ps| ps.iter().all(|p| p.closed));
    let mut ended = Vec::new();
    for (rank, p) in procs.into_iter().enumerate() {
        let status = p.child.wait_with_output().expect("wait").status;
        let stderr = p.stderr.join().expect("stderr reader");
        if rank != victim {
            let all = format!("{}\n{stderr}", p.stdout.join("\n"));
            ended.push((rank, status.success(), all));
        }
    }
    judge(victim, &ended)
}

/// Checks each survivor's end; returns its outcome with its output.
fn judge(victim: usize, ended: &[(usize, bool, String)]) -> Vec<(usize, Outcome, String)> {
    let aborted: Vec<usize> = ended.iter().filter(|e| !e.1).map(|e| e.0).collect();
    let mut outcomes = Vec::new();
    for (rank, ok, all) in ended {
        assert!(
            !all.contains("timed out"),
            "rank {rank} waited out a timeout: {all}"
        );
        let outcome = if *ok {
            let failed = |n: usize| all.contains(&format!("NodeFailed {{ rank: {n} }}"));
            let first = failed(victim) || aborted.iter().any(|a| failed(*a));
            assert!(first, "rank {rank}: NodeFailed names no dead node: {all}");
            assert!(all.contains("live homes served"), "rank {rank}: {all}");
            if all.contains("from its barrier") {
                Outcome::BarrierThenServed
            } else {
                Outcome::LockThenServed
            }
        } else {
            let last_words = all
                .lines()
                .find(|l| l.starts_with("dsm: fault on"))
                .unwrap_or_else(|| panic!("rank {rank} died without naming a fault: {all}"));
            let names = |n: usize| last_words.contains(&format!("node {n}"));
            if names(victim) && last_words.contains("is lost") {
                Outcome::AbortedOnALostPage
            } else if names(victim) && last_words.contains("its home") {
                Outcome::AbortedOnItsPage
            } else if aborted.iter().any(|a| a != rank && names(*a)) {
                Outcome::AbortedNeedingAnAborted
            } else {
                panic!("rank {rank} aborted on a fault that needed no dead node: {all}");
            }
        };
        outcomes.push((*rank, outcome, all.clone()));
    }
    outcomes
}

#[test]
fn a_killed_node_fails_only_what_needs_it() {
    let runs = std::env::var("DSM_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RUNS);
    let seed = std::env::var("DSM_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
            u64::try_from(now.as_nanos() % 1_000_000_007).expect("fits")
        });
    println!("kill points from DSM_KILL_SEED={seed}, {runs} runs");
    let mut draw = Draw(seed);
    let mut tally = std::collections::BTreeMap::new();
    for run in 0..runs {
        let victim = usize::try_from(draw.next(u64::from(NODES))).expect("fits");
        let delay_ms = draw.next(400);
        let delivery = if run % 2 == 0 { "thread" } else { "signal" };
        let outcomes = run_once(victim, delay_ms, delivery);
        let short: Vec<_> = outcomes.iter().map(|(r, o, _)| (*r, *o)).collect();
        println!("run {run}: kill rank {victim} {delay_ms} ms in ({delivery}): {short:?}");
        let last_words = outcomes
            .iter()
            .flat_map(|(_, _, all)| all.lines())
            .filter(|l| l.starts_with("dsm: fault on"));
        for line in last_words {
            println!("    {line}");
        }
        for (_, outcome, _) in outcomes {
            *tally.entry(outcome).or_insert(0u64) += 1;
        }
    }
    println!("outcomes over {runs} runs: {tally:?}");
    let served = [Outcome::BarrierThenServed, Outcome::LockThenServed];
    let served: u64 = served.iter().filter_map(|o| tally.get(o)).sum();
    assert!(
        served > 0,
        "no survivor went on after the failure: {tally:?}"
    );
}
