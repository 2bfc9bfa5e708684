//! Seeds of the coherence simulation, and the mutation tests that prove the checker bites.
//!
//! `DSM_SIM_SEEDS=N DSM_SIM_STEPS=M cargo test -p dsm-sim --release` runs N seeds of M steps
//! per mode; a failure prints its seed; `DSM_SIM_SEED=S` replays exactly that seed.

use std::time::Instant;

use dsm_core::{Consistency, Mutation};
use dsm_sim::Error;
use dsm_sim::coherence::{OneSidedPairs, Report, SimConfig, run};

/// Seeds per mode when `DSM_SIM_SEEDS` is not set. Measured on a 2-core machine with per-pair
/// one-sided reads (about 2 ms of CPU per seed): 30,000 seeds x 2,000 steps of each of the
/// three modes, and the crash seeds beside them, take about 170 s of wall time, then the lock
/// simulation about 17 s.
const DEFAULT_SEEDS: u64 = 30_000;
/// Workload steps per seed when `DSM_SIM_STEPS` is not set.
const DEFAULT_STEPS: u64 = 2_000;

/// The seeds to run (see [`dsm_sim::seeds`]).
fn seeds() -> Vec<u64> {
    dsm_sim::seeds::seeds(DEFAULT_SEEDS).unwrap_or_else(|e| panic!("{e}"))
}

fn steps() -> u64 {
    dsm_sim::seeds::steps(DEFAULT_STEPS).unwrap_or_else(|e| panic!("{e}"))
}

fn run_seeds(consistency: Consistency) -> Report {
    run_seeds_with(consistency, false)
}

fn run_seeds_with(consistency: Consistency, scan_writes: bool) -> Report {
    let (seeds, steps) = (seeds(), steps());
    let started = Instant::now();
    let mut total = Report::default();
    for seed in &seeds {
        let mut config = SimConfig::random(*seed, consistency, steps);
        config.scan_writes = scan_writes;
        // A quarter of the seeds each: no twin limit, or 1 to 3 copies kept (evictions).
        config.twin_limit = if scan_writes { (*seed % 4) as usize } else { 0 };
        match run(*seed, &config) {
            Ok(report) => total.absorb(&report),
            Err(error) => panic!(
                "{consistency:?} seed {seed} failed (replay: DSM_SIM_SEED={seed} \
                 DSM_SIM_STEPS={steps}): {error}\nconfig: {config:?}"
            ),
        }
    }
    println!(
        "{consistency:?} (scanned writes: {scan_writes}): {} seeds x {steps} steps in {:.1?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(
        total.reads > 0 && total.writes > 0,
        "the workload did nothing"
    );
    total
}

#[test]
fn sequential_seeds() {
    let total = run_seeds(Consistency::Sequential);
    if seeds().len() >= 20 {
        // The interesting paths ran: in-place upgrades, invalidations, one-sided reads.
        assert!(total.upgrades > 0 && total.invalidations > 0 && total.one_sided_reads > 0);
        assert!(
            total.upgrades_prefetched > 0,
            "no write access was asked ahead of a write fault"
        );
        assert!(
            total.reads_for_ownership > 0,
            "no read fault asked a migrating page writable"
        );
        assert_pairs_ran(&total);
        assert!(
            total.masters_written > 0,
            "no writable holder wrote its same-host home's master in place"
        );
        assert!(
            total.copies_that_were_masters > 0,
            "no copy given back was its home's master itself (mapped masters)"
        );
        assert!(
            total.masters_mapped > 0,
            "no grant without data was taken by mapping the master"
        );
        assert!(
            total.reads_sharing_the_writers_page > 0,
            "no home granted a read of the page it writes to a reader mapping its master"
        );
        assert!(
            total.hand_backs > 0 && total.recalls_crossing_hand_backs > 0,
            "no page was handed back, or no recall crossed a hand-back"
        );
        assert!(
            total.pushes > 0 && total.requests_crossing_pushes > 0,
            "no home pushed a page, or no request crossed a push"
        );
        assert!(
            total.copies_dropped > 0 && total.drops_wasted > 0,
            "no read-only copy was dropped, or none was dropped for nothing"
        );
        assert!(
            total.invalidations_crossing_drops > 0,
            "no invalidation crossed a drop"
        );
    }
}

#[test]
fn release_seeds() {
    let total = run_seeds(Consistency::Release);
    if seeds().len() >= 20 {
        assert!(total.twins > 0 && total.diffs > 0 && total.barriers > 0);
        assert!(
            total.kept_writable > 0,
            "no home page was published in place"
        );
        assert!(total.invalidations > 0 && total.one_sided_reads > 0);
        assert!(
            total.diffs_merged_in_place > 0,
            "no same-host writer merged a diff into its home's master"
        );
        assert_pairs_ran(&total);
    }
}

/// Per-pair one-sidedness ran every way: reads completed at once and later, and grants
/// with data reached requesters that read the home themselves (late confirmation).
fn assert_pairs_ran(total: &Report) {
    assert!(total.reads_at_once > 0 && total.reads_at_once < total.one_sided_reads);
    assert!(
        total.data_grants_to_readers > 0,
        "no grant with data reached a reader of the home"
    );
}

/// Release mode with written pages found by scanning (no write faults): the same workload
/// and checks, every read against the latest write of the reference.
#[test]
fn release_seeds_with_scanned_writes() {
    let total = run_seeds_with(Consistency::Release, true);
    if seeds().len() >= 20 {
        assert!(total.twins > 0 && total.diffs > 0 && total.barriers > 0);
        assert!(total.invalidations > 0 && total.one_sided_reads > 0);
        assert_pairs_ran(&total);
    }
}

/// Asserts that the checker catches `mutation` (described by `what`) in one of seeds 0..50.
fn assert_caught(consistency: Consistency, mutation: Mutation, what: &str) {
    assert_caught_with(consistency, false, mutation, what);
}

fn assert_caught_with(consistency: Consistency, scan: bool, mutation: Mutation, what: &str) {
    assert_caught_in(0..50, what, |seed| {
        let mut config = SimConfig::random(seed, consistency, 2_000);
        config.mutation = mutation;
        config.scan_writes = scan;
        config
    });
}

/// Asserts that a run of one of `seeds`, configured by `config`, fails its checks (the
/// mutation it carries, described by `what`, is caught).
fn assert_caught_in(seeds: std::ops::Range<u64>, what: &str, config: impl Fn(u64) -> SimConfig) {
    let caught = seeds.into_iter().find(|&seed| {
        let config = config(seed);
        match run(seed, &config) {
            Ok(_) => false,
            Err(error) => {
                println!("{:?} caught at seed {seed}: {error}", config.mutation);
                true
            }
        }
    });
    assert!(caught.is_some(), "{what} went unnoticed");
}

#[test]
fn mutation_a_hand_back_losing_its_data_is_caught() {
    assert_caught(
        Consistency::Sequential,
        Mutation::HandBackLosesData,
        "a home dropping a handed-back page's data",
    );
}

#[test]
fn mutation_a_drop_that_keeps_its_copy_is_caught() {
    assert_caught(
        Consistency::Sequential,
        Mutation::DropKeepsCopy,
        "a node telling its home it dropped a copy it kept",
    );
}

#[test]
fn mutation_a_private_copy_taken_for_its_master_is_caught() {
    assert_caught(
        Consistency::Sequential,
        Mutation::CopyTakenForMaster,
        "a copy given in place without writing the master",
    );
}

#[test]
fn mutation_mapped_readers_left_out_of_a_write_are_caught() {
    assert_caught(
        Consistency::Sequential,
        Mutation::MappedReadersKept,
        "readers of a mapped master left valid under a new writer",
    );
}

#[test]
fn mutation_grant_before_acks_is_caught() {
    assert_caught(
        Consistency::Sequential,
        Mutation::GrantBeforeAcks,
        "granting M before the acks",
    );
}

#[test]
fn mutation_forgotten_write_notices_are_caught() {
    assert_caught(
        Consistency::Release,
        Mutation::ForgetNotices,
        "releases without write notices",
    );
}

#[test]
fn mutation_stale_twin_of_a_home_page_is_caught() {
    assert_caught(
        Consistency::Release,
        Mutation::StaleTwin,
        "a home page published in place with a stale twin",
    );
}

#[test]
fn mutation_a_scan_missing_one_written_page_is_caught() {
    assert_caught_with(
        Consistency::Release,
        true,
        Mutation::ScanMissesPage,
        "a release whose scan misses a written page",
    );
}

#[test]
fn mutation_a_same_host_writer_merging_its_whole_page_is_caught() {
    for scan in [false, true] {
        assert_caught_with(
            Consistency::Release,
            scan,
            Mutation::MergeWholePage,
            "a same-host diff merged as the whole page",
        );
    }
}

#[test]
fn mutations_of_releases_are_caught_with_scanned_writes_too() {
    for (mutation, what) in [
        (Mutation::ForgetNotices, "releases without write notices"),
        (Mutation::StaleTwin, "a published page keeping a stale twin"),
    ] {
        assert_caught_with(Consistency::Release, true, mutation, what);
    }
}

/// Per-pair one-sidedness rests on the runtime's guarantee that a home counts a requester
/// among its `readers_of_home` only once the requester counts the home among its
/// `homes_read`. Break it for one pair (node 1 reading node 0, the home of page 0 under
/// either placement): node 0's grants to node 1 go without data that node 1 does not know to
/// read, and the run stops on the engine's error.
#[test]
fn a_reader_of_home_that_does_not_read_it_is_caught() {
    let failure = (0..50).find_map(|seed| {
        let mut config = SimConfig::random(seed, Consistency::Sequential, 2_000);
        if config.nodes < 2 {
            return None;
        }
        config.one_sided = false;
        config.pairs = OneSidedPairs::none(config.nodes);
        config.pairs.readers_of_home[0].push(1);
        run(seed, &config).err().map(|error| (seed, error))
    });
    let Some((seed, error)) = failure else {
        panic!("a home granting without data to a node that does not read it went unnoticed");
    };
    println!("broken pair caught at seed {seed}: {error}");
    assert!(
        matches!(&error, Error::Engine { node: 1, .. })
            && error.to_string().contains("grant without data"),
        "seed {seed} failed otherwise: {error}"
    );
}

/// Per-pair FIFO is an assumption of the protocol (TCP and RC QPs give it): without it, an
/// invalidation can overtake the grant it follows. The simulator shows the break.
#[test]
fn reordering_within_a_pair_breaks_msi() {
    let caught = (0..200).find(|seed| {
        let mut config = SimConfig::random(*seed, Consistency::Sequential, 2_000);
        config.net.reorder = true;
        run(*seed, &config).is_err()
    });
    assert!(caught.is_some(), "no seed showed what reordering breaks");
}

/// One seed is one exact run: replaying it gives the same counters.
#[test]
fn a_seed_replays_exactly() {
    for consistency in [Consistency::Sequential, Consistency::Release] {
        let config = SimConfig::random(11, consistency, 1_000);
        assert_eq!(run(11, &config).unwrap(), run(11, &config).unwrap());
        let other = SimConfig::random(12, consistency, 1_000);
        assert_ne!(run(11, &config).unwrap(), run(12, &other).unwrap());
    }
}

/// Seeds per crash test when `DSM_SIM_SEEDS` is not set (sequential runs with one crash).
const DEFAULT_CRASH_SEEDS: u64 = 3_000;

/// One node crashes at a random step of every seed; each survivor is told at a random later
/// step, and what the dead node sent before may still arrive. Every survivor's fault ends,
/// served or failed; only faults that need the dead node fail; no stale copy is ever read.
#[test]
fn crash_seeds() {
    let seeds = dsm_sim::seeds::seeds(DEFAULT_CRASH_SEEDS).unwrap_or_else(|e| panic!("{e}"));
    let steps = steps();
    let started = Instant::now();
    let mut total = Report::default();
    for seed in &seeds {
        let config = SimConfig::with_crash(*seed, steps);
        match run(*seed, &config) {
            Ok(report) => total.absorb(&report),
            Err(error) => panic!(
                "crash seed {seed} failed (replay: DSM_SIM_SEED={seed} DSM_SIM_STEPS={steps} \
                 cargo test -p dsm-sim --release --test coherence crash_seeds): {error}\n\
                 config: {config:?}"
            ),
        }
    }
    println!(
        "crashes: {} seeds x {steps} steps in {:.1?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    assert_eq!(total.crashes, seeds.len() as u64);
    if seeds.len() >= 100 {
        // Both ways of failing ran, and survivors kept being served.
        assert!(total.failed_faults > total.lost_faults && total.lost_faults > 0);
        assert!(total.reads > 0 && total.writes > 0);
    }
}

/// Asserts that the crash checks catch `mutation` (described by `what`) in one of seeds 0..200.
fn assert_crash_caught(mutation: Mutation, what: &str) {
    assert_caught_in(0..200, what, |seed| {
        let mut config = SimConfig::with_crash(seed, 2_000);
        config.mutation = mutation;
        config
    });
}

/// A home that forgets the acks a crashed node owed leaves writes waiting forever: caught.
#[test]
fn mutation_forgotten_acks_of_a_crashed_node_are_caught() {
    assert_crash_caught(
        Mutation::ForgetFailedAcks,
        "forgotten acks of a crashed node",
    );
}

/// A home that serves its stale master copy of a page the crashed node held writable: caught.
#[test]
fn mutation_serving_a_lost_page_is_caught() {
    assert_crash_caught(Mutation::ServeLostPages, "a lost page served stale");
}
