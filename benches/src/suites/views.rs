//! `dsm-bench views --json` (issue #13): shared files through the public `dsm::views` API,
//! two node processes on loopback (this binary re-run with `DSM_RANK`/`DSM_SIZE`).
//!
//! Rank 0 opens the file first, so it is the master; rank 1 writes a view and merges:
//! * `merge_mib_per_s`: changed bytes merged per second, one release of `MERGE_BYTES` changed
//!   bytes (a quarter of a 4 MiB view, in 64-byte runs every 256 bytes) at a time, with the
//!   master's `fsync`s and without (`DSM_VIEWS_SYNC=0`, a second cluster);
//! * `release_to_acquire_us`: from rank 1 starting `release_with_merge` of a 64-byte change to
//!   rank 0's `acquire` first showing it (rank 0 acquires in a loop; both clocks are this
//!   host's `CLOCK_MONOTONIC`);
//! * the baseline, in the same run on the same file system: `pwrite` of the same runs into a
//!   plain file plus one `fdatasync`, and `pwrite` alone.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dsm::views::{Access, ReadWrite, SharedFile};
use dsm::{Config, Node};
use serde_json::{Value, json};

use crate::stats::{Summary, round, summarize};

/// Makes `dsm-bench views` a node process.
const CHILD_ENV: &str = "DSM_BENCH_VIEWS_NODE";
const FILE: &str = "bench.bin";
const VIEW_BYTES: usize = 4 << 20;
const RUN: usize = 64;
const STRIDE: usize = 256;
const MERGE_BYTES: usize = VIEW_BYTES / STRIDE * RUN;
const MERGES: usize = 40;
const LATENCY_SAMPLES: usize = 300;
/// Where the latency probe's 64 bytes sit (after rank 1's big view).
const FLAG: u64 = VIEW_BYTES as u64;

/// Runs the suite (or, in a node process, the node's part).
pub fn run() -> anyhow::Result<Value> {
    if std::env::var(CHILD_ENV).is_ok() {
        node().context("views bench node")?;
        std::process::exit(0);
    }
    let root = std::env::temp_dir().join(format!("dsm-bench-views-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let synced = cluster(&root, true)?;
    let unsynced = cluster(&root, false)?;
    let baseline_sync = baseline(&root, true)?;
    let baseline_nosync = baseline(&root, false)?;
    let _ = std::fs::remove_dir_all(&root);
    let mib = |seconds: f64| MERGE_BYTES as f64 / f64::from(1 << 20) / seconds;
    let merge_sync = synced.merge_seconds;
    let merge_nosync = unsynced.merge_seconds;
    Ok(json!({
        "suite": "views",
        "setup": "2 node processes on loopback TCP; rank 0 is the master, rank 1 merges",
        "changed_bytes_per_merge": MERGE_BYTES,
        "merge_mib_per_s": { "fsync": round(mib(merge_sync.median)), "no_fsync": round(mib(merge_nosync.median)) },
        "merge_ms": { "fsync": ms(merge_sync), "no_fsync": ms(merge_nosync) },
        "baseline_pwrite_mib_per_s": { "fsync": round(mib(baseline_sync.median)), "no_fsync": round(mib(baseline_nosync.median)) },
        "baseline_pwrite_ms": { "fsync": ms(baseline_sync), "no_fsync": ms(baseline_nosync) },
        "ratio_merge_to_pwrite_fsync": round(merge_sync.median / baseline_sync.median),
        "ratio_merge_to_pwrite_no_fsync": round(merge_nosync.median / baseline_nosync.median),
        "release_to_acquire_us": { "fsync": us(synced.latency), "no_fsync": us(unsynced.latency) },
    }))
}

fn ms(s: Summary) -> Value {
    json!({ "median": round(s.median * 1e3), "p99": round(s.p99 * 1e3) })
}

fn us(s: Summary) -> Value {
    json!({ "median": round(s.median), "p99": round(s.p99) })
}

/// What one two-node run measured.
struct Figures {
    merge_seconds: Summary,
    latency: Summary,
}

/// Runs ranks 0 and 1 with the master syncing or not; parses their `RESULT` lines.
fn cluster(root: &Path, sync: bool) -> anyhow::Result<Figures> {
    // The file exists before the nodes start: rank 0's read-only open can then be the first.
    let file = File::create(root.join(FILE))?;
    file.set_len(FLAG + 64)?;
    drop(file);
    let coordinator = dsm::free_coordinator_address()?;
    let children: Vec<Child> = (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe()?)
                .args(["views", "--json"])
                .env(CHILD_ENV, "1")
                .env("DSM_RANK", rank.to_string())
                .env("DSM_SIZE", "2")
                .env("DSM_COORDINATOR", &coordinator)
                .env("DSM_TRANSPORT", "tcp")
                .env("DSM_VIEWS_ROOT", root)
                .env("DSM_VIEWS_SYNC", if sync { "1" } else { "0" })
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("start a node")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut merges = Vec::new();
    let mut latencies = Vec::new();
    for child in children {
        let out = wait_bounded(child, Duration::from_secs(300))?;
        for line in out.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("RESULT"), Some("merge_s"), Some(v)) => merges.push(v.parse()?),
                (Some("RESULT"), Some("latency_us"), Some(v)) => latencies.push(v.parse()?),
                _ => {}
            }
        }
    }
    if merges.is_empty() || latencies.is_empty() {
        bail!("the nodes reported no figures (sync {sync})");
    }
    Ok(Figures {
        merge_seconds: summarize(&mut merges),
        latency: summarize(&mut latencies),
    })
}

/// Waits for `child` at most `limit` (then kills it) and returns its stdout.
fn wait_bounded(mut child: Child, limit: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("a views bench node still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("a views bench node failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A node: rank 0 opens the file first (so it is the master) read-only and watches the
/// flag bytes; rank 1 opens it read-write, merges, then signals.
fn node() -> anyhow::Result<()> {
    let node = Node::join(Config::from_env()?)?;
    if node.rank() == 0 {
        let file = SharedFile::open(&node, FILE, Access::Read)?;
        node.barrier()?;
        let mut flag = file.map_view(file.define_view(FLAG, 64)?)?;
        for sample in 1..=LATENCY_SAMPLES as u64 {
            node.barrier()?;
            let seen_at = loop {
                flag.acquire()?;
                if flag.as_slice()[..8] == sample.to_le_bytes() {
                    break monotonic_ns();
                }
            };
            let sent_at = u64::from_le_bytes(flag.as_slice()[8..16].try_into()?);
            let waited = seen_at.saturating_sub(sent_at) as f64 / 1e3;
            println!("RESULT latency_us {waited}");
            node.barrier()?;
        }
        drop(flag);
        file.close_with_merge()?;
    } else {
        node.barrier()?;
        let file = SharedFile::open(&node, FILE, Access::ReadWrite)?;
        let mut view = file.map_view(file.define_view(0, VIEW_BYTES as u64)?)?;
        for round in 0..MERGES {
            for chunk in view.as_mut_slice().chunks_mut(STRIDE) {
                chunk[..RUN].fill(u8::try_from(round % 250).unwrap_or(0) + 1);
            }
            let started = Instant::now();
            view.release_with_merge()?;
            println!("RESULT merge_s {}", started.elapsed().as_secs_f64());
        }
        drop(view);
        signal(&node, &file)?;
        file.close_with_merge()?;
    }
    node.leave()?;
    Ok(())
}

/// Rank 1: for each sample, once rank 0 watches (a barrier), writes the sample number and
/// the time into the flag bytes and merges them.
fn signal(node: &Node, file: &SharedFile<'_, ReadWrite>) -> anyhow::Result<()> {
    let mut flag = file.map_view(file.define_view(FLAG, 64)?)?;
    for sample in 1..=LATENCY_SAMPLES as u64 {
        node.barrier()?;
        flag.as_mut_slice()[..8].copy_from_slice(&sample.to_le_bytes());
        flag.as_mut_slice()[8..16].copy_from_slice(&monotonic_ns().to_le_bytes());
        flag.release_with_merge()?;
        node.barrier()?;
    }
    Ok(())
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC is always there.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Seconds to `pwrite` the same runs into a plain file (and `fdatasync` it when `sync`).
fn baseline(root: &Path, sync: bool) -> anyhow::Result<Summary> {
    let path: PathBuf = root.join("baseline.bin");
    let file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    file.set_len(VIEW_BYTES as u64)?;
    let mut samples = Vec::with_capacity(MERGES);
    for round in 0..MERGES {
        let run = [u8::try_from(round % 250).unwrap_or(0) + 1; RUN];
        let started = Instant::now();
        for offset in (0..VIEW_BYTES).step_by(STRIDE) {
            file.write_all_at(&run, offset as u64)?;
        }
        if sync {
            file.sync_data()?;
        }
        samples.push(started.elapsed().as_secs_f64());
    }
    Ok(summarize(&mut samples))
}
