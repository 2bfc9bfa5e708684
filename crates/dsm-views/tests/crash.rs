//! Crash tests with real processes and real `SIGKILL`s.
//!
//! The parent re-executes this test binary, filtered to [`child_role`], with `CHILD_ENV` set;
//! the child merges generations of recognisable content into a master file until it is killed
//! (or kills itself at a named step). The parent then opens the file, which recovers it, and
//! checks byte for byte that it holds exactly some generation: every range of generation `k`,
//! never a mix of two.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dsm_views::{CrashPoint, Durability, MasterFile, Recovery};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{TempDir, seed};

const CHILD_ENV: &str = "DSM_VIEWS_CRASH_CHILD";
const DIR_ENV: &str = "DSM_VIEWS_CRASH_DIR";
const LAYOUT_ENV: &str = "DSM_VIEWS_CRASH_LAYOUT";
const FIRST_GEN_ENV: &str = "DSM_VIEWS_CRASH_FIRST_GEN";
const DURABILITY_ENV: &str = "DSM_VIEWS_CRASH_DURABILITY";
const READY: &str = "DSM_VIEWS_CHILD_READY";
const FILE: &str = "crash.bin";
const FILE_LEN: u64 = 256 * 1024;
const RANGES: u64 = 6;
const SIGKILL: i32 = 9;
const KILLS: u32 = 100;

/// `RANGES` disjoint ranges at random unaligned offsets, at least 16 bytes each, in a random
/// order (so a batch's records are not sorted by offset).
fn layout(seed: u64) -> Vec<(u64, u64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let slot = FILE_LEN / RANGES;
    let mut ranges: Vec<(u64, u64)> = (0..RANGES)
        .map(|i| {
            let len = rng.random_range(16..slot / 2);
            let offset = i * slot + rng.random_range(0..slot - len);
            (offset, len)
        })
        .collect();
    for i in (1..ranges.len()).rev() {
        ranges.swap(i, rng.random_range(0..=i));
    }
    ranges
}

/// Generation `generation`'s bytes for range `r`: the generation number first (so any two
/// generations differ in every range), then bytes that differ from the previous generation's at
/// every position (so a range torn between two generations matches neither).
fn pattern(generation: u64, r: usize, len: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len)
        .map(|i| {
            (generation
                .wrapping_mul(7)
                .wrapping_add(i)
                .wrapping_add(r as u64)) as u8
        })
        .collect();
    bytes[..8].copy_from_slice(&(generation ^ ((r as u64) << 56)).to_le_bytes());
    bytes
}

/// The whole file after generation `generation` (0: as created, all zeros).
fn expected(ranges: &[(u64, u64)], generation: u64) -> Vec<u8> {
    let mut file = vec![0u8; FILE_LEN as usize];
    if generation > 0 {
        for (r, &(offset, len)) in ranges.iter().enumerate() {
            file[offset as usize..(offset + len) as usize]
                .copy_from_slice(&pattern(generation, r, len));
        }
    }
    file
}

/// The generation `file` holds exactly, if any.
fn generation_of(ranges: &[(u64, u64)], file: &[u8]) -> Option<u64> {
    let (offset, _) = ranges[0];
    let mut head = [0u8; 8];
    head.copy_from_slice(&file[offset as usize..offset as usize + 8]);
    let generation = u64::from_le_bytes(head);
    (file == expected(ranges, generation)).then_some(generation)
}

fn merge_generation(m: &mut MasterFile, ranges: &[(u64, u64)], generation: u64, d: Durability) {
    let patterns: Vec<Vec<u8>> = ranges
        .iter()
        .enumerate()
        .map(|(r, &(_, len))| pattern(generation, r, len))
        .collect();
    let batch: Vec<(u64, &[u8])> = ranges
        .iter()
        .zip(&patterns)
        .map(|(&(offset, _), p)| (offset, &p[..]))
        .collect();
    m.merge(&batch, d).expect("child merge");
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name).expect(name).parse().expect(name)
}

fn crash_point(name: &str) -> Option<CrashPoint> {
    POINTS
        .iter()
        .map(|&(p, _)| p)
        .find(|p| format!("{p:?}") == name)
}

/// Every crash point and whether recovery must give the new generation (the journal was
/// complete) or the old one.
const POINTS: [(CrashPoint, bool); 5] = [
    (CrashPoint::MidJournal, false),
    (CrashPoint::AfterJournalWrite, true),
    (CrashPoint::AfterJournalSync, true),
    (CrashPoint::MidApply, true),
    (CrashPoint::AfterApply, true),
];

/// The child's side: does nothing unless the parent set `CHILD_ENV`.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::env::var(DIR_ENV).expect(DIR_ENV);
    let ranges = layout(env_u64(LAYOUT_ENV));
    let mut m = MasterFile::open(Path::new(&dir), FILE, Some(FILE_LEN)).expect("child open");
    if role == "random" {
        let first = env_u64(FIRST_GEN_ENV);
        println!("\n{READY}"); // own line: libtest has written "test ... " before it
        // Bounded; the parent kills the child long before.
        for generation in first..first + 1_000_000 {
            let d = if generation % 3 == 0 {
                Durability::Fsync
            } else {
                Durability::NoSync
            };
            merge_generation(&mut m, &ranges, generation, d);
        }
        std::process::exit(0);
    }
    let d = match std::env::var(DURABILITY_ENV).as_deref() {
        Ok("NoSync") => Durability::NoSync,
        _ => Durability::Fsync,
    };
    merge_generation(&mut m, &ranges, 1, d);
    m.set_crash_point(Some(crash_point(&role).expect("known crash point")));
    merge_generation(&mut m, &ranges, 2, d);
    std::process::exit(3); // the crash point was not reached
}

fn spawn(dir: &Path, layout_seed: u64, role: &str, envs: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "crash::child_role",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, role)
    .env(DIR_ENV, dir)
    .env(LAYOUT_ENV, layout_seed.to_string())
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child")
}

fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn recover(dir: &Path) -> (Vec<u8>, Recovery) {
    let m = MasterFile::open(dir, FILE, None).expect("recovery open");
    let mut file = vec![0; m.len() as usize];
    m.read_at(0, &mut file).expect("read recovered file");
    assert_eq!(
        std::fs::metadata(m.journal_path()).unwrap().len(),
        0,
        "journal not cleared"
    );
    (file, m.recovery().clone())
}

/// SIGKILL at random moments of a child merging as fast as it can, over and over on one
/// file: each round recovers what the previous kill left and goes on from there.
#[test]
fn sigkill_at_random_moments_leaves_whole_generations() {
    let layout_seed = seed("crash::sigkill_at_random_moments_leaves_whole_generations");
    let mut rng = StdRng::seed_from_u64(layout_seed ^ 0x5eed_de1a_5eed_de1a); // the delays
    let ranges = layout(layout_seed);
    let dir = TempDir::new("crash-random");
    let (mut generation, mut replayed, mut discarded) = (0, 0, 0);
    for iteration in 0..KILLS {
        let first = (generation + 1).to_string();
        let mut child = spawn(dir.path(), layout_seed, "random", &[(FIRST_GEN_ENV, first)]);
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = lines
            .by_ref()
            .take(100)
            .any(|l| l.is_ok_and(|l| l.contains(READY)));
        assert!(
            ready,
            "child never got ready: {:?}",
            wait_bounded(&mut child)
        );
        std::thread::sleep(Duration::from_micros(rng.random_range(0..4000)));
        child.kill().expect("SIGKILL child");
        let status = wait_bounded(&mut child);
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "iteration {iteration}: {status:?}"
        );

        let (file, recovery) = recover(dir.path());
        let found = generation_of(&ranges, &file)
            .unwrap_or_else(|| panic!("iteration {iteration}: file holds no whole generation"));
        assert!(
            found >= generation,
            "iteration {iteration}: generation {found} < {generation}"
        );
        match recovery {
            Recovery::Replayed { sequence, .. } => {
                assert_eq!(sequence + 1, found - generation, "replayed the last merge");
                replayed += 1;
            }
            Recovery::Discarded { .. } => discarded += 1,
            _ => {}
        }
        generation = found;
    }
    println!(
        "{KILLS} kills: {generation} generations merged, {replayed} replayed, {discarded} discarded"
    );
    assert!(generation > 0, "no merge ever completed");
}

/// Each named step of a merge, with and without fsync: recovery gives exactly the old or the
/// new generation, as the step dictates.
#[test]
fn every_crash_point_recovers_old_or_new() {
    let layout_seed = seed("crash::every_crash_point_recovers_old_or_new");
    let ranges = layout(layout_seed);
    for (point, new) in POINTS {
        for durability in ["Fsync", "NoSync"] {
            let what = format!("{point:?} {durability}");
            let dir = TempDir::new("crash-point");
            let envs = [(DURABILITY_ENV, durability.to_string())];
            let mut child = spawn(dir.path(), layout_seed, &format!("{point:?}"), &envs);
            let status = wait_bounded(&mut child);
            assert_eq!(status.signal(), Some(SIGKILL), "{what}: {status:?}");

            let raw = std::fs::read(dir.path().join(FILE)).unwrap();
            let torn = generation_of(&ranges, &raw).is_none();
            assert_eq!(
                torn,
                point == CrashPoint::MidApply,
                "{what}: file before recovery"
            );

            let (file, recovery) = recover(dir.path());
            let want = if new { 2 } else { 1 };
            assert_eq!(generation_of(&ranges, &file), Some(want), "{what}");
            match recovery {
                Recovery::Replayed {
                    sequence: 1,
                    records,
                } if new => {
                    assert_eq!(records as u64, RANGES, "{what}");
                }
                Recovery::Discarded { .. } if !new => {}
                other => panic!("{what}: recovery {other:?}"),
            }
            // The file serves merges again, and a clean reopen finds nothing to do.
            let mut m = MasterFile::open(dir.path(), FILE, None).unwrap();
            assert_eq!(m.recovery(), &Recovery::Clean, "{what}");
            merge_generation(&mut m, &ranges, 3, Durability::Fsync);
            drop(m);
            assert_eq!(
                generation_of(&ranges, &recover(dir.path()).0),
                Some(3),
                "{what}"
            );
        }
    }
}
