//! Release mode's write tracking (issue #11): with `scan` (the default on Linux 6.7+) a page
//! is written without faults after its first touch, and only pages another node fetched are
//! scanned, diffed and announced; `faults` (forced by `DSM_WRITE_TRACKING`) takes a write
//! fault per page and interval (home pages: once, then published in place every release).
//! Both give the same bytes.

use dsm::{Config, Consistency, Node, WriteTracking};

use crate::util::run_child_nodes;

/// Pages per node's block of the region.
const PAGES_PER_NODE: usize = 16;
/// u64 words per 4 KiB page.
const WORDS: usize = 512;
/// Intervals (barrier-separated rounds of writes).
const ROUNDS: u64 = 6;

/// Runs on every node: each round, every node writes every word of its own block, and reads
/// the first word of each other block (so its neighbours' pages become shared); after the
/// barrier every node checks every word of every block. Prints the counters that matter.
#[test]
#[ignore = "a node program: run by the tests below under dsm-run"]
fn child_rounds_of_writes_and_checks() {
    let node = Node::join(Config::from_env().expect("config")).expect("join");
    let (rank, size) = (node.rank() as usize, node.size() as usize);
    let words = PAGES_PER_NODE * WORDS * size;
    let region = node
        .alloc::<u64>("tracked", words, Consistency::Release)
        .expect("alloc");
    let own = rank * PAGES_PER_NODE * WORDS..(rank + 1) * PAGES_PER_NODE * WORDS;
    let value = |round: u64, i: usize| round * 1_000_000_007 + i as u64;
    let mut faults_after_first = 0;
    for round in 1..=ROUNDS {
        let before = node.stats().write_faults;
        for i in own.clone() {
            region.set(i, value(round, i));
        }
        if round > 1 {
            faults_after_first += node.stats().write_faults - before;
        }
        for other in (0..size).filter(|&o| o != rank) {
            let _ = region.get(other * PAGES_PER_NODE * WORDS);
        }
        node.barrier().expect("barrier");
        for i in 0..words {
            assert_eq!(
                region.get(i),
                value(round, i),
                "rank {rank} round {round} word {i}"
            );
        }
        node.barrier().expect("barrier");
    }
    let stats = node.stats();
    println!(
        "rank {rank}: tracking {:?}, write faults after the first round {faults_after_first}, \
         found written {}, diffed {}, twin bytes {}",
        stats.write_tracking, stats.pages_found_written, stats.pages_diffed, stats.twin_bytes
    );
    node.leave().expect("leave");
}

fn figure(out: &str, rank: u32, name: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.contains(&format!("rank {rank}: tracking")))
        .unwrap_or_else(|| panic!("rank {rank} printed no figures: {out}"));
    let after = line
        .split(name)
        .nth(1)
        .unwrap_or_else(|| panic!("{name}: {line}"));
    after
        .trim()
        .split([',', ' '])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn scanned_writes_take_no_write_fault_after_the_first_touch() {
    let out = run_child_nodes("tracking::child_rounds_of_writes_and_checks", 3, &[]);
    for rank in 0..3 {
        assert!(
            out.contains(&format!("rank {rank}: tracking Scan")),
            "{out}"
        );
        assert_eq!(figure(&out, rank, "after the first round"), 0, "{out}");
        // Each node's own pages the others read are shared: found written and merged in
        // place every round; the rest of its block is never scanned or diffed.
        let found = figure(&out, rank, "found written");
        assert!(found > 0 && found < ROUNDS * PAGES_PER_NODE as u64, "{out}");
        assert!(figure(&out, rank, "diffed") > 0, "{out}");
    }
}

#[test]
fn forced_write_faults_give_the_same_bytes() {
    let env = [("DSM_WRITE_TRACKING", "faults")];
    let out = run_child_nodes("tracking::child_rounds_of_writes_and_checks", 3, &env);
    for rank in 0..3 {
        assert!(
            out.contains(&format!("rank {rank}: tracking Faults")),
            "{out}"
        );
        assert_eq!(figure(&out, rank, "found written"), 0, "{out}");
        // Without the shared/private split, every page of the block is published every
        // round (home pages stay writable between rounds, so they fault only once).
        let diffed = figure(&out, rank, "diffed");
        assert!(diffed >= ROUNDS * PAGES_PER_NODE as u64, "{out}");
    }
}

#[test]
fn the_configuration_names_the_tracking() {
    let faults = dsm::Config::builder(0, 1)
        .write_tracking(WriteTracking::Faults)
        .build()
        .expect("config");
    assert_eq!(faults.write_tracking(), WriteTracking::Faults);
}

/// Runs on 2 nodes: each reads and writes one word of every page of the other's block, far
/// more pages than the twin limit (`DSM_TWIN_LIMIT_MB=1`: 256 pages), then checks that the
/// twins were cut back at the release and that no write was lost.
#[test]
#[ignore = "a node program: run by the tests below under dsm-run"]
fn child_many_remote_pages_under_a_twin_limit() {
    const BLOCK: usize = 1024; // pages per node
    let node = Node::join(Config::from_env().expect("config")).expect("join");
    let (rank, other) = (node.rank() as usize, 1 - node.rank() as usize);
    let region = node
        .alloc::<u64>("limited", 2 * BLOCK * WORDS, Consistency::Release)
        .expect("alloc");
    for page in 0..BLOCK {
        region.set((rank * BLOCK + page) * WORDS, 1);
    }
    node.barrier().expect("barrier");
    for page in 0..BLOCK {
        let at = (other * BLOCK + page) * WORDS;
        assert_eq!(region.get(at), 1);
        region.set(at + 1 + rank, 7);
    }
    let before = node.stats().twin_bytes;
    node.barrier().expect("barrier");
    let after = node.stats().twin_bytes;
    for page in 0..2 * BLOCK {
        let at = page * WORDS;
        // The node not homing the page wrote word 1 + its rank.
        let writer = 1 - page / BLOCK;
        let want = if writer == 0 { (1, 7, 0) } else { (1, 0, 7) };
        let got = (region.get(at), region.get(at + 1), region.get(at + 2));
        assert_eq!(got, want, "page {page}");
    }
    println!("rank {rank}: twin bytes before the release {before}, after {after}");
    node.leave().expect("leave");
}

#[test]
fn twins_are_cut_back_to_the_limit_at_a_release_and_nothing_is_lost() {
    let env = [("DSM_TWIN_LIMIT_MB", "1")];
    let out = run_child_nodes(
        "tracking::child_many_remote_pages_under_a_twin_limit",
        2,
        &env,
    );
    for rank in 0..2 {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("rank {rank}: twin bytes")))
            .unwrap_or_else(|| panic!("{out}"));
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        let (before, after) = (numbers[numbers.len() - 2], numbers[numbers.len() - 1]);
        assert!(
            before > 1 << 20,
            "the node held more than the limit: {line}"
        );
        assert!(after <= 1 << 20, "cut back at the release: {line}");
    }
}
