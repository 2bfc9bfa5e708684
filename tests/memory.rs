//! Memory scales with a node's share, with real processes: a 64 GiB region on 4 nodes
//! allocates at once and costs each node about the pages it touched (VmRSS read inside each
//! node); an oversize `alloc` fails with `RegionTooLarge` on every node before anything is
//! sent and the cluster goes on; a node that cannot map a region (its `RLIMIT_AS` lowered)
//! fails the `alloc` on every node, promptly, leaving nothing mapped anywhere.
//!
//! The node programs are the ignored `child_*` tests of this binary, run by `dsm-run`.

#![allow(clippy::cast_possible_truncation)] // Page and word indices are far below usize::MAX.

use std::time::{Duration, Instant};

use dsm::{Config, Consistency, Error, Node};

use crate::util::run_child_nodes;

/// 64 GiB: the largest region the wire carries.
const BIG_BYTES: usize = 64 << 30;
const PAGE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE / 8;

/// A field of /proc/self/status in KiB (`VmRSS`, `VmSize`).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// The pages rank `rank` touches: `count` pseudo-random pages of `pages` (same on every node).
fn touched_pages(rank: usize, count: usize, pages: usize) -> impl Iterator<Item = usize> {
    let mut state =
        0x9e37_79b9_7f4a_7c15_u64 ^ (rank as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (0..count).map(move |_| {
        // xorshift64*: enough spread for page choice, deterministic per rank.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % pages as u64) as usize
    })
}

#[test]
fn a_64_gib_region_on_4_nodes_allocates_at_once_and_costs_the_pages_touched() {
    let out = run_child_nodes("memory::child_big_region", 4, &[]);
    for rank in 0..4 {
        assert!(out.contains(&format!("rank {rank}: 64 GiB ok")), "{out}");
    }
    // The figures, for whoever reads the log of a passing run.
    for line in out.lines().filter(|l| l.contains("alloc 64 GiB")) {
        println!("{line}");
    }
}

#[test]
#[ignore = "node program of a_64_gib_region_on_4_nodes_allocates_at_once_and_costs_the_pages_touched"]
fn child_big_region() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let (rank, size) = (node.rank() as usize, node.size() as usize);
    let touches = 3000;
    for consistency in [Consistency::Release, Consistency::Sequential] {
        let before_kib = status_kib("VmRSS");
        let started = Instant::now();
        let region = node
            .alloc::<u64>("big", BIG_BYTES / 8, consistency)
            .unwrap();
        let alloc_ms = started.elapsed().as_secs_f64() * 1e3;
        let allocated_kib = status_kib("VmRSS");
        let pages = BIG_BYTES / PAGE;
        // Each node writes word `rank` of its pages (nodes never write the same word).
        for page in touched_pages(rank, touches, pages) {
            region.set(page * WORDS_PER_PAGE + rank, rank as u64 + 1);
        }
        node.barrier().unwrap();
        let next = (rank + 1) % size;
        for page in touched_pages(next, touches, pages) {
            let got = region.get(page * WORDS_PER_PAGE + next);
            assert_eq!(got, next as u64 + 1, "page {page} written by rank {next}");
        }
        node.barrier().unwrap();
        let touched_kib = status_kib("VmRSS");
        let started = Instant::now();
        node.free(region).unwrap();
        let free_ms = started.elapsed().as_secs_f64() * 1e3;
        let freed_kib = status_kib("VmRSS");
        println!(
            "rank {rank} {consistency:?}: alloc 64 GiB in {alloc_ms:.1} ms, free in \
             {free_ms:.1} ms; VmRSS {before_kib} KiB before, {allocated_kib} after alloc, \
             {touched_kib} after writing {touches} and reading {touches} random pages, \
             {freed_kib} after free"
        );
        assert!(alloc_ms < 500.0, "alloc of 64 GiB took {alloc_ms:.1} ms");
        assert!(
            allocated_kib < before_kib + 8 * 1024,
            "the alloc alone committed {} KiB",
            allocated_kib - before_kib
        );
        // Per node: its written and read copies, the home copies of about its share of
        // everyone's writes, twins and bookkeeping; 4 KiB each, plus room for the heap.
        let bound_kib = before_kib + (4 * touches * PAGE / 1024) as u64 + 64 * 1024;
        assert!(
            touched_kib < bound_kib,
            "VmRSS {touched_kib} KiB after touching {touches} pages (bound {bound_kib} KiB; \
             S/N would be {} KiB)",
            BIG_BYTES / size / 1024
        );
    }
    println!("rank {rank}: 64 GiB ok");
    node.leave().unwrap();
}

#[test]
fn an_oversize_alloc_fails_on_every_node_and_the_cluster_goes_on() {
    let out = run_child_nodes("memory::child_oversize", 4, &[]);
    for rank in 0..4 {
        assert!(
            out.contains(&format!("rank {rank}: refused and went on")),
            "{out}"
        );
    }
}

#[test]
#[ignore = "node program of an_oversize_alloc_fails_on_every_node_and_the_cluster_goes_on"]
fn child_oversize() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let rank = node.rank() as usize;
    let cases: [(&str, usize); 3] = [
        ("64 GiB + 4 KiB", (BIG_BYTES + PAGE) / 8),
        ("1 TiB", (1 << 40) / 8),
        ("more bytes than usize holds", usize::MAX / 4),
    ];
    for (what, len) in cases {
        let sent = node.stats().messages_sent;
        match node.alloc::<u64>("huge", len, Consistency::Release) {
            Err(Error::RegionTooLarge {
                bytes, max_bytes, ..
            }) => {
                assert_eq!(bytes, len as u128 * 8, "{what}");
                assert_eq!(max_bytes, BIG_BYTES as u64, "{what}");
            }
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
        // Heartbeats may go out meanwhile; an allocation round is a Malloc and a rendezvous.
        let sent_since = node.stats().messages_sent - sent;
        assert!(sent_since < 3, "{what}: {sent_since} messages sent");
    }
    // Exactly at the limit is fine, and the cluster goes on.
    let big = node
        .alloc::<u64>("limit", BIG_BYTES / 8, Consistency::Release)
        .unwrap();
    big.set(big.len() - 1 - rank, rank as u64 + 7);
    node.barrier().unwrap();
    for r in 0..node.size() as usize {
        assert_eq!(big.get(big.len() - 1 - r), r as u64 + 7);
    }
    node.free(big).unwrap();
    let small = node
        .alloc::<u64>("small", 4096, Consistency::Release)
        .unwrap();
    small.set(rank, rank as u64 + 1);
    node.barrier().unwrap();
    for r in 0..node.size() as usize {
        assert_eq!(small.get(r), r as u64 + 1);
    }
    node.free(small).unwrap();
    println!("rank {rank}: refused and went on");
    node.leave().unwrap();
}

#[test]
fn a_node_that_cannot_map_a_region_fails_the_alloc_on_every_node() {
    let out = run_child_nodes("memory::child_one_node_short", 3, &[]);
    for rank in 0..3 {
        assert!(
            out.contains(&format!("rank {rank}: failed together")),
            "{out}"
        );
    }
}

/// Sets this process's soft `RLIMIT_AS` to what it maps now plus `room` bytes, or lifts it.
fn limit_address_space(room: Option<u64>) {
    let limit = room.map_or(libc::RLIM_INFINITY, |room| {
        status_kib("VmSize") * 1024 + room
    });
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; lowers the soft limit of this process only.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) }, 0);
}

#[test]
#[ignore = "node program of a_node_that_cannot_map_a_region_fails_the_alloc_on_every_node"]
fn child_one_node_short() {
    let node = Node::join(Config::from_env().unwrap()).unwrap();
    let rank = node.rank();
    let region_bytes: u64 = 32 << 30;
    // Rank 1 has room for neither the region's mapping nor its home copies, then for the
    // mapping but not the home copies: both steps fail on it.
    for room in [8u64 << 30, 48 << 30] {
        let vm_before = status_kib("VmSize");
        if rank == 1 {
            limit_address_space(Some(room));
        }
        let started = Instant::now();
        let result = node.alloc::<u64>("short", region_bytes as usize / 8, Consistency::Release);
        let waited = started.elapsed();
        if rank == 1 {
            limit_address_space(None);
        }
        match (rank, result) {
            (1, Err(Error::Uffd(_) | Error::Io { .. })) => {}
            (r, Err(Error::AllocFailed { ranks, what, .. })) if r != 1 => {
                assert_eq!(ranks, vec![1], "{what}");
                let step = if room < region_bytes {
                    "could not map the region at its agreed address"
                } else {
                    "could not map the region's home copies"
                };
                assert!(what.contains(step), "{what}");
            }
            (r, Err(e)) => panic!("rank {r}: unexpected error {e}"),
            (r, Ok(_)) => panic!("rank {r}: the alloc succeeded without rank 1"),
        }
        assert!(waited < Duration::from_secs(5), "failing took {waited:?}");
        let vm_after = status_kib("VmSize");
        assert!(
            vm_after < vm_before + (1 << 20),
            "{} KiB still mapped after the failed alloc",
            vm_after - vm_before
        );
        // The cluster goes on.
        let small = node
            .alloc::<u64>("small", 1024, Consistency::Release)
            .unwrap();
        small.set(rank as usize, u64::from(rank) + 1);
        node.barrier().unwrap();
        for r in 0..node.size() {
            assert_eq!(small.get(r as usize), u64::from(r) + 1);
        }
        node.free(small).unwrap();
    }
    println!("rank {rank}: failed together");
    node.leave().unwrap();
}
