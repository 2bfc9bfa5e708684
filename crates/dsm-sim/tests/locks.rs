//! Seeds of the lock and barrier simulation, the mutation tests that prove its checker bites,
//! and the crossover of Ricart–Agrawala against the home-queue lock.
//!
//! `DSM_SIM_SEEDS=N DSM_SIM_STEPS=M cargo test -p dsm-sim --release --test locks` runs N seeds
//! of about M critical sections each; a failure prints its seed; `DSM_SIM_SEED=S` replays
//! exactly that seed.

use std::time::Instant;

use dsm_locks::{BarrierKind, LockKind};
use dsm_sim::locks::{Mutation, Report, SimConfig, measure, measure_barrier, run};

/// Seeds when `DSM_SIM_SEEDS` is not set.
const DEFAULT_SEEDS: u64 = 4_000;
/// Critical sections per seed (all threads together) when `DSM_SIM_STEPS` is not set.
const DEFAULT_SECTIONS: u64 = 400;

/// The seeds to run (see [`dsm_sim::seeds`]).
fn seeds() -> Vec<u64> {
    dsm_sim::seeds::seeds(DEFAULT_SEEDS).unwrap_or_else(|e| panic!("{e}"))
}

fn sections() -> u32 {
    let sections = dsm_sim::seeds::steps(DEFAULT_SECTIONS).unwrap_or_else(|e| panic!("{e}"));
    u32::try_from(sections).expect("DSM_SIM_STEPS fits in u32")
}

#[test]
fn lock_and_barrier_seeds() {
    let (seeds, sections) = (seeds(), sections());
    let started = Instant::now();
    let mut total = Report::default();
    let mut dissemination_barriers = 0;
    for seed in &seeds {
        let config = SimConfig::random(*seed, sections);
        match run(&config) {
            Ok(report) => {
                if config.barrier == BarrierKind::Dissemination {
                    dissemination_barriers += report.barriers;
                }
                total.absorb(&report);
            }
            Err(error) => panic!(
                "locks seed {seed} failed (replay: DSM_SIM_SEED={seed} DSM_SIM_STEPS={sections}): \
                 {error}\nconfig: {config:?}"
            ),
        }
    }
    println!(
        "locks: {} seeds in {:.1?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(total.sections > 0 && total.barriers > 0);
    if seeds.len() >= 20 {
        // Both algorithms ran, threads were handed the lock locally, and nodes had to wait.
        assert!(total.acquires_by_kind[0] > 0 && total.acquires_by_kind[1] > 0);
        assert!(total.local_handoffs > 0);
        assert!(
            dissemination_barriers > 0,
            "the runtime's (dissemination) barrier never ran"
        );
    }
}

/// Runs seeds `0..bound` with `mutation`; the first one the checker catches.
fn first_caught(mutation: Mutation, bound: u64) -> Option<u64> {
    (0..bound).find(|seed| {
        let mut config = SimConfig::random(*seed, 400);
        config.mutation = mutation;
        match run(&config) {
            Ok(_) => false,
            Err(error) => {
                println!("{mutation:?} caught at seed {seed}: {error}");
                true
            }
        }
    })
}

#[test]
fn mutation_forgotten_notices_are_caught() {
    assert!(
        first_caught(Mutation::ForgetNotices, 50).is_some(),
        "releases without notices went unnoticed"
    );
}

#[test]
fn mutation_barrier_notices_merged_as_a_set_are_caught() {
    assert!(
        first_caught(Mutation::BarrierNoticesAsSet, 50).is_some(),
        "a page two nodes wrote, invalidated as if one had, went unnoticed"
    );
}

#[test]
fn mutation_unbounded_local_handoffs_are_caught() {
    assert!(
        first_caught(Mutation::UnboundedHandoffs, 200).is_some(),
        "a node starving remote waiters went unnoticed"
    );
}

/// The home-queue lock relies on per-pair FIFO (a RELEASE must not be overtaken by the same
/// node's next ACQUIRE); the simulator shows what breaks without it.
#[test]
fn reordering_within_a_pair_breaks_the_home_queue_lock() {
    let caught = (0..200).find(|seed| {
        let mut config = SimConfig::random(*seed, 400);
        config.locks = vec![LockKind::HomeQueue];
        config.net.reorder = true;
        run(&config).is_err()
    });
    assert!(caught.is_some(), "no seed showed what reordering breaks");
}

/// Messages per node-level acquire and acquire latency against N, both algorithms, lightly
/// and heavily contended: Ricart–Agrawala costs exactly 2(N−1), the home-queue lock about 3
/// whatever N (less when the home itself acquires).
#[test]
fn crossover_ricart_agrawala_vs_home_queue() {
    println!("nodes threads | RA msgs/acq  HQ msgs/acq | RA ticks/acq  HQ ticks/acq");
    for threads in [1, 3] {
        for nodes in [2, 3, 4, 6, 8, 12, 16] {
            let ra = measure(LockKind::RicartAgrawala, nodes, threads, 1).expect("RA run");
            let hq = measure(LockKind::HomeQueue, nodes, threads, 1).expect("HQ run");
            let (ra_msgs, hq_msgs) = (ra.messages_per_acquire(0), hq.messages_per_acquire(1));
            println!(
                "{nodes:5} {threads:7} | {ra_msgs:11.2} {hq_msgs:11.2} | {:12.1} {:12.1}",
                ra.ticks_per_acquire(0),
                hq.ticks_per_acquire(1)
            );
            assert_eq!(ra_msgs, f64::from(2 * (nodes - 1)), "RA is exactly 2(N-1)");
            assert!(
                hq_msgs <= 4.0,
                "home-queue stays O(1): {hq_msgs} at {nodes} nodes"
            );
        }
    }
}

/// Dissemination against central barrier: latency in ticks (10 ticks per message) and
/// messages per barrier against N.
#[test]
fn dissemination_vs_central_barrier() {
    println!("nodes | dissemination ticks msgs | central ticks msgs");
    for nodes in [2, 4, 8, 16] {
        let d = measure_barrier(BarrierKind::Dissemination, nodes, 1).expect("dissemination run");
        let c = measure_barrier(BarrierKind::Central, nodes, 1).expect("central run");
        let per = |r: &Report| r.barrier_messages as f64 / (r.barriers as f64 / f64::from(nodes));
        println!(
            "{nodes:5} | {:19.1} {:4.0} | {:13.1} {:4.0}",
            d.ticks_per_barrier(),
            per(&d),
            c.ticks_per_barrier(),
            per(&c)
        );
        let rounds = f64::from(nodes.next_power_of_two().trailing_zeros());
        assert_eq!(per(&d), f64::from(nodes) * rounds);
        assert_eq!(per(&c), 2.0 * f64::from(nodes - 1));
        assert!(
            d.ticks_per_barrier() <= 10.0 * rounds + 1.0,
            "one message delay per round"
        );
    }
}

/// Seeds of the crash test when `DSM_SIM_SEEDS` is not set.
const DEFAULT_CRASH_SEEDS: u64 = 2_000;

/// One node crashes at a random step of every seed; each survivor is told a random number of
/// steps later and then acts as the runtime does. No survivor's wait hangs: each ends granted
/// or in `NodeFailed`; mutual exclusion holds among the survivors.
#[test]
fn crash_seeds() {
    let seeds = dsm_sim::seeds::seeds(DEFAULT_CRASH_SEEDS).unwrap_or_else(|e| panic!("{e}"));
    let sections = sections();
    let started = Instant::now();
    let mut total = Report::default();
    for seed in &seeds {
        let config = SimConfig::with_crash(*seed, sections);
        match run(&config) {
            Ok(report) => total.absorb(&report),
            Err(error) => panic!(
                "locks crash seed {seed} failed (replay: DSM_SIM_SEED={seed} \
                 DSM_SIM_STEPS={sections} cargo test -p dsm-sim --release --test locks \
                 crash_seeds): {error}\nconfig: {config:?}"
            ),
        }
    }
    println!(
        "locks with a crash: {} seeds in {:.1?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    if seeds.len() >= 100 {
        // Most runs crashed, survivors' waits were ended, and their engines kept granting.
        assert!(total.crashes * 2 > seeds.len() as u64, "{total:?}");
        assert!(
            total.failed_waits > 0 && total.grants_after_crash > 0,
            "{total:?}"
        );
    }
}

/// Survivors never told of a crash wait for the dead node forever: caught.
#[test]
fn mutation_survivors_never_told_are_caught() {
    let caught = (0..200).find(|seed| {
        let mut config = SimConfig::with_crash(*seed, 400);
        config.mutation = Mutation::NeverTold;
        match run(&config) {
            Ok(_) => false,
            Err(error) => {
                println!("NeverTold caught at seed {seed}: {error}");
                true
            }
        }
    });
    assert!(
        caught.is_some(),
        "survivors never told of a crash went unnoticed"
    );
}
