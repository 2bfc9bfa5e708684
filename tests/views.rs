//! Shared files (`dsm::views`) with real processes: disjoint views merged round after round
//! by 3 and 5 nodes with a reader checking each round, refusals that change nothing, and
//! nodes SIGKILLed during merges (the master among them) with the file recovered to whole
//! merges by the next cluster.
//!
//! The node programs are the ignored `child_*` tests of this binary, run by `dsm-run` or
//! started directly with `DSM_RANK`/`DSM_SIZE`; `DSM_VIEWS_ROOT` is a fresh directory.

#![allow(clippy::cast_possible_truncation)] // Test offsets are far below usize::MAX.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dsm::views::{Access, SharedFile, ViewErrorKind};
use dsm::{Config, Error, Node};

use crate::util::{dsm_run, free_address, run_bounded, run_child_nodes, text};

const FILE: &str = "shared/grid.bin";
/// Not a multiple of anything: views start and end at unaligned bytes.
const FILE_LEN: u64 = 100_003;

/// Writer `w`'s view of `writers`: unaligned boundaries moved by `shift`, a few bytes left
/// to nobody.
fn stripe(w: u64, writers: u64, shift: u64) -> (u64, u64) {
    let edge = |k: u64| match k {
        0 => 5,
        k if k == writers => FILE_LEN - 3,
        k => k * FILE_LEN / writers + (k * 37 + shift) % 997,
    };
    (edge(w), edge(w + 1) - edge(w))
}

/// The byte writer `w` stores at file offset `i` in round `round` (never 0 after round 0).
fn pattern(w: u64, round: u64, i: u64) -> u8 {
    if round == 0 {
        return 0;
    }
    u8::try_from((w * 31 + round * 7 + i * 13) % 251).expect("below 251") + 1
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsm-views-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("shared")).expect("scratch dir");
    dir
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} unset"))
}

/// Runs the node program `child` on `nodes` nodes with `DSM_VIEWS_ROOT=root` and `env`.
fn run_nodes(child: &str, nodes: u32, root: &Path, env: &[(&str, String)]) -> String {
    let root = root.display().to_string();
    let mut all: Vec<(&str, &str)> = vec![("DSM_VIEWS_ROOT", root.as_str())];
    all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    run_child_nodes(child, nodes, &all)
}

#[test]
fn disjoint_views_merge_round_after_round_and_a_reader_sees_each_round() {
    for nodes in [3u32, 5] {
        let root = scratch_dir(&format!("rounds{nodes}"));
        let rounds = 12;
        let out = run_nodes(
            "views::child_rounds",
            nodes,
            &root,
            &[("VIEWS_TEST_ROUNDS", rounds.to_string())],
        );
        assert!(
            out.contains(&format!("reader saw {rounds} rounds")),
            "{out}"
        );
        let bytes = std::fs::read(root.join(FILE)).expect("the master copy");
        assert_eq!(bytes.len() as u64, FILE_LEN);
        let writers = u64::from(nodes - 1);
        let mut expected = vec![0u8; FILE_LEN as usize];
        for w in 0..writers {
            let (offset, len) = stripe(w, writers, 0);
            for i in offset..offset + len {
                expected[i as usize] = pattern(w, rounds, i);
            }
        }
        assert!(
            bytes == expected,
            "{nodes} nodes: the file differs from the expected bytes"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}

#[test]
#[ignore = "node program of disjoint_views_merge_round_after_round_and_a_reader_sees_each_round"]
fn child_rounds() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let rounds = env_u64("VIEWS_TEST_ROUNDS");
    let writers = u64::from(node.size() - 1);
    let me = u64::from(node.rank());
    if me < writers {
        let file = SharedFile::create(&node, FILE, FILE_LEN).unwrap();
        let (offset, len) = stripe(me, writers, 0);
        let view = file.define_view(offset, len).unwrap();
        let mut m = file.map_view(view).unwrap();
        node.barrier().unwrap(); // the file exists: the reader may open it
        for round in 1..=rounds {
            for (k, byte) in m.as_mut_slice().iter_mut().enumerate() {
                *byte = pattern(me, round, offset + k as u64);
            }
            m.release_with_merge().unwrap();
            node.barrier().unwrap(); // merged
            node.barrier().unwrap(); // checked by the reader
        }
        drop(m);
        file.close_with_merge().unwrap();
    } else {
        node.barrier().unwrap();
        let file = SharedFile::open(&node, FILE, Access::Read).unwrap();
        let whole = file.define_view(0, FILE_LEN).unwrap(); // read views may overlap
        let mut m = file.map_view(whole).unwrap();
        for round in 1..=rounds {
            node.barrier().unwrap();
            m.acquire().unwrap();
            for w in 0..writers {
                let (offset, len) = stripe(w, writers, 0);
                let seen = &m.as_slice()[offset as usize..(offset + len) as usize];
                let torn = seen
                    .iter()
                    .enumerate()
                    .find(|(k, b)| **b != pattern(w, round, offset + *k as u64));
                assert!(torn.is_none(), "round {round}, writer {w}: {torn:?}");
            }
            node.barrier().unwrap();
        }
        println!("reader saw {rounds} rounds");
        drop(m);
        file.close_with_merge().unwrap();
    }
    node.leave().unwrap();
}

#[test]
fn refused_requests_are_typed_errors_and_change_nothing() {
    let root = scratch_dir("refusals");
    std::os::unix::fs::symlink("/etc", root.join("shared/out")).expect("symlink");
    let out = run_nodes("views::child_refusals", 2, &root, &[]);
    assert!(out.contains("refusals checked"), "{out}");
    // Only rank 0's one merged byte run is in the file: every refused call changed nothing.
    let bytes = std::fs::read(root.join(FILE)).expect("the master copy");
    let changed: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != 0).collect();
    assert_eq!(changed, (10..20).collect::<Vec<_>>(), "{out}");
    assert!(!root.join("shared/escape").exists());
    let _ = std::fs::remove_dir_all(&root);
}

fn refused<T: std::fmt::Debug>(result: dsm::Result<T>, kind: ViewErrorKind) -> String {
    match result {
        Err(Error::View { kind: got, detail }) if got == kind => detail,
        other => panic!("expected a {kind:?} refusal, got {other:?}"),
    }
}

#[test]
#[ignore = "node program of refused_requests_are_typed_errors_and_change_nothing"]
fn child_refusals() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    if node.rank() == 0 {
        let file = SharedFile::create(&node, FILE, FILE_LEN).unwrap();
        let mine = file.define_view(10, 100).unwrap();
        let mut m = file.map_view(mine).unwrap();
        m.as_mut_slice()[..10].fill(7);
        m.release_with_merge().unwrap();
        node.barrier().unwrap(); // rank 1 tries its refused calls
        node.barrier().unwrap();
        // A view closed on the master can no longer merge.
        file.close_view(mine).unwrap();
        m.as_mut_slice()[50] = 9;
        refused(m.release_with_merge(), ViewErrorKind::UnknownHandle);
        drop(m);
        drop(file); // discards the unmerged byte
    } else {
        node.barrier().unwrap();
        for path in ["../escape", "/etc/passwd", "shared/out/passwd", ""] {
            refused(
                SharedFile::open(&node, path, Access::Read),
                ViewErrorKind::PathRefused,
            );
        }
        refused(
            SharedFile::open(&node, "shared/none.bin", Access::ReadWrite),
            ViewErrorKind::NotFound,
        );
        let file = SharedFile::open(&node, FILE, Access::ReadWrite).unwrap();
        let detail = refused(file.define_view(105, 10), ViewErrorKind::Overlap);
        assert!(detail.contains("node 0"), "{detail}");
        refused(file.define_view(200, 0), ViewErrorKind::ZeroLength);
        refused(file.define_view(FILE_LEN - 5, 10), ViewErrorKind::BeyondEnd);
        refused(file.define_view(u64::MAX - 1, 10), ViewErrorKind::Invalid);
        let reader = SharedFile::open(&node, FILE, Access::Read);
        refused(reader, ViewErrorKind::Invalid); // this node has the file open already
        file.close_with_merge().unwrap();
        println!("refusals checked");
        node.barrier().unwrap();
    }
    node.leave().unwrap();
}

/// Starts rank `rank` of `size` running this binary's ignored test `child`.
fn start_node(
    child: &str,
    rank: u32,
    size: u32,
    coordinator: &str,
    env: &[(&str, String)],
) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "--nocapture", child])
        .env("DSM_RANK", rank.to_string())
        .env("DSM_SIZE", size.to_string())
        .env("DSM_COORDINATOR", coordinator)
        .env("DSM_HEARTBEAT_MS", "100")
        .env("DSM_FAILURE_TIMEOUT_MS", "600")
        .env("DSM_OP_TIMEOUT_MS", "5000")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a node")
}

/// Waits for every child, killing any still running after `limit`.
fn reap(children: Vec<Child>, limit: Duration) {
    let deadline = Instant::now() + limit;
    for mut child in children {
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("a node still ran {limit:?} after the kill");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Each writer's stripe holds one whole generation (0 = never merged): never a mix.
fn check_whole_generations(bytes: &[u8], writers: u64, shift: u64) -> Vec<u64> {
    (0..writers)
        .map(|w| {
            let (offset, len) = stripe(w, writers, shift);
            let stripe_bytes = &bytes[offset as usize..(offset + len) as usize];
            let whole = |round: u64| {
                stripe_bytes
                    .iter()
                    .enumerate()
                    .all(|(k, b)| *b == pattern(w, round, offset + k as u64))
            };
            // The generation is in the first byte's pattern; the rest must agree with it.
            (0..=251)
                .find(|&round| stripe_bytes[0] == pattern(w, round, offset) && whole(round))
                .unwrap_or_else(|| panic!("writer {w}'s stripe is torn (shift {shift})"))
        })
        .collect()
}

#[test]
fn nodes_killed_during_merges_leave_whole_merges_after_recovery() {
    let rounds = 1_000_000;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    for iteration in 0..12u64 {
        let root = scratch_dir(&format!("kill{iteration}"));
        let shift = (seed >> 8).wrapping_add(iteration * 7919) % 997;
        let coordinator = free_address();
        let env = [
            ("DSM_VIEWS_ROOT", root.display().to_string()),
            ("VIEWS_TEST_ROUNDS", rounds.to_string()),
            ("VIEWS_TEST_SHIFT", shift.to_string()),
        ];
        let mut children: Vec<Child> = (0..3)
            .map(|rank| start_node("views::child_merge_forever", rank, 3, &coordinator, &env))
            .collect();
        // Wait for merges to be under way, then kill the master (even) or a writer (odd).
        let file = root.join(FILE);
        let started = Instant::now();
        while std::fs::read(&file).map_or(true, |b| b.iter().all(|x| *x == 0)) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no merge ever landed"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_micros(
            (seed.rotate_left(iteration as u32 * 5)) % 40_000,
        ));
        let victim = if iteration % 2 == 0 {
            0
        } else {
            1 + (iteration / 2) as usize % 2
        };
        children[victim].kill().expect("SIGKILL the victim");
        reap(children, Duration::from_secs(30));
        // A new cluster of one opens the file: recovery runs before anything is served.
        let recovery = start_node("views::child_recover", 0, 1, "127.0.0.1:0", &env);
        reap(vec![recovery], Duration::from_secs(30));
        let bytes = std::fs::read(&file).expect("the master copy");
        let generations = check_whole_generations(&bytes, 3, shift);
        assert!(
            generations.iter().any(|&g| g > 0),
            "seed {seed}: nothing merged"
        );
        println!("iteration {iteration}: killed rank {victim}, generations {generations:?}");
        let journal = root.join("shared/.grid.bin.dsm-journal");
        assert_eq!(
            std::fs::metadata(&journal).map_or(0, |m| m.len()),
            0,
            "journal left over"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}

#[test]
#[ignore = "node program of nodes_killed_during_merges_leave_whole_merges_after_recovery"]
fn child_merge_forever() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let (rounds, shift) = (env_u64("VIEWS_TEST_ROUNDS"), env_u64("VIEWS_TEST_SHIFT"));
    let me = u64::from(node.rank());
    if me == 0 {
        drop(SharedFile::create(&node, FILE, FILE_LEN).unwrap()); // rank 0 is the master
    }
    node.barrier().unwrap();
    let file = SharedFile::open(&node, FILE, Access::ReadWrite).unwrap();
    let (offset, len) = stripe(me, 3, shift);
    let mut m = file
        .map_view(file.define_view(offset, len).unwrap())
        .unwrap();
    for round in 1..=rounds {
        for (k, byte) in m.as_mut_slice().iter_mut().enumerate() {
            *byte = pattern(me, round, offset + k as u64);
        }
        // A failure (the victim, or the master gone) ends the run: what matters is the file.
        if m.release_with_merge().is_err() || (round % 50 == 0 && node.barrier().is_err()) {
            std::process::exit(3);
        }
    }
    println!("merged {rounds} rounds");
}

#[test]
#[ignore = "node program of nodes_killed_during_merges_leave_whole_merges_after_recovery"]
fn child_recover() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let file = SharedFile::open(&node, FILE, Access::Read).unwrap();
    assert_eq!(file.len(), FILE_LEN);
    file.close_with_merge().unwrap();
    node.leave().unwrap();
}

#[test]
fn the_views_example_renders_one_image_from_1_2_and_4_nodes() {
    for nodes in [1u32, 2, 4] {
        let root = scratch_dir(&format!("example{nodes}"));
        let (out, _) = run_bounded(
            Command::new(dsm_run())
                .args(["-n", &nodes.to_string(), "--timeout-secs", "60", "--"])
                .arg(crate::util::example("views"))
                .args(["--width", "203", "--height", "97"])
                .env("DSM_VIEWS_ROOT", &root),
            Duration::from_secs(90),
        );
        let all = text(&out);
        assert!(out.status.success(), "{nodes} nodes: {all}");
        assert!(all.contains("views check passed: 203x97"), "{all}");
        let image = std::fs::read(root.join("mandelbrot.pgm")).expect("the image");
        assert!(image.starts_with(b"P5\n203 97\n255\n"));
        assert_eq!(image.len(), "P5\n203 97\n255\n".len() + 203 * 97);
        let _ = std::fs::remove_dir_all(&root);
    }
}

#[test]
fn a_view_larger_than_one_fetch_window_maps_merges_and_acquires_whole() {
    let root = scratch_dir("large");
    let out = run_nodes("views::child_large_view", 1, &root, &[]);
    assert!(out.contains("large view checked"), "{out}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
#[ignore = "node program of a_view_larger_than_one_fetch_window_maps_merges_and_acquires_whole"]
fn child_large_view() {
    // 40 MiB: more than the 32 MiB a fetch keeps in flight, so it takes two windows.
    let len: u64 = 40 << 20;
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let file = SharedFile::create(&node, "shared/large.bin", len).unwrap();
    let mut m = file.map_view(file.define_view(0, len).unwrap()).unwrap();
    assert!(m.as_slice().iter().all(|b| *b == 0));
    for (k, byte) in m.as_mut_slice().iter_mut().enumerate().step_by(4093) {
        *byte = (k % 251) as u8 + 1;
    }
    m.release_with_merge().unwrap();
    m.acquire().unwrap();
    for (k, byte) in m.as_slice().iter().enumerate() {
        let want = if k % 4093 == 0 {
            (k % 251) as u8 + 1
        } else {
            0
        };
        assert_eq!(*byte, want, "byte {k}");
    }
    drop(m);
    file.close_with_merge().unwrap();
    println!("large view checked");
    node.leave().unwrap();
}
