//! The lock and barrier simulation: N nodes (2 to 16) run dsm-locks' engines over a
//! [`SimNet`](crate::net::SimNet) driven by one seed, each with 1 to 3 application threads
//! queued locally on every lock (one node-level request for all of them, bounded local
//! handoffs while a remote node waits — the policy of `dsm_locks::LockTable`).
//!
//! Every thread runs rounds of critical sections on random locks (each lock Ricart–Agrawala or
//! home-queue, drawn per lock), writing random pages guarded by the lock; a node enters the
//! barrier when all its threads finished the round. After every step the checker asserts:
//!
//! * **mutual exclusion**: at most one node owns a lock and at most one thread holds it;
//! * **no starvation**: every waiting thread is granted within [`SimConfig::wait_bound`] steps,
//!   and every barrier completes within it;
//! * **write notices**: each grant carries exactly the pages other nodes released under the
//!   lock since this node last held it; each barrier exit carries every node's notices;
//! * **barriers**: no node leaves barrier `e` before every node arrived at `e` (the barrier is
//!   `BarrierEngine`, dissemination (the runtime's) or central in half the seeds each; each
//!   barrier is entered from a collective call of a kind every node agrees on, as the
//!   runtime's barriers, allocations and frees are);
//! * **engines**: every engine call succeeds and every message goes to a cluster member.
//!
//! At the end (drained network), every Ricart–Agrawala acquire cost exactly 2(N−1) messages.
//!
//! **Crashes** ([`SimConfig::with_crash`]): one node crashes at a random step (what it had in
//! flight is lost); each survivor's engine is told (`LockEngine::node_failed`) a random number
//! of steps later and then behaves as the runtime does: every lock or barrier wait ends in
//! `NodeFailed`, a thread holding a lock leaves it normally, and no new acquire or barrier
//! starts. Checked besides the above: no survivor's wait outlives the bound (none hangs),
//! mutual exclusion among survivors, grants carry no notice nobody released, every engine
//! call succeeds, and at the end no lock is owned or held.
//!
//! ```
//! use dsm_sim::locks::{SimConfig, run};
//!
//! let report = run(&SimConfig::random(3, 500)).expect("the protocols hold");
//! assert!(report.acquires > 0);
//! ```

mod check;
mod world;

use dsm_locks::{BarrierKind, LockKind};

pub use crate::crash::Crash;
use crate::error::Result;
use crate::net::NetConfig;
use crate::rng::Rng;
use world::World;

/// One simulated scenario.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Cluster size.
    pub nodes: u32,
    /// Application threads per node.
    pub threads: u32,
    /// Algorithm of each lock (the lock id is the index).
    pub locks: Vec<LockKind>,
    /// Barrier algorithm (the runtime's is [`BarrierKind::Dissemination`]).
    pub barrier: BarrierKind,
    /// Rounds (critical sections per thread, then a barrier).
    pub rounds: u32,
    /// Critical sections per thread per round (0: barriers only).
    pub sections_per_round: u32,
    /// Ticks a thread holds a lock: 0..=this.
    pub max_hold: u64,
    /// Ticks a thread thinks between sections: 0..=this.
    pub max_think: u64,
    /// Local critical sections a remote waiter may wait through.
    pub handoff_bound: u32,
    /// Chance per step, in thousandths, that some node is paused.
    pub pause_per_mille: u64,
    /// A thread waiting (or a barrier open) more steps than this is a failure.
    pub wait_bound: u64,
    /// Network behaviour.
    pub net: NetConfig,
    /// Deliberately broken driver (mutation tests).
    pub mutation: Mutation,
    /// A node that crashes during the run.
    pub crash: Option<Crash>,
}

/// Deliberate faults, to prove the checker bites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mutation {
    /// None.
    #[default]
    None,
    /// Nodes release locks without their write notices.
    ForgetNotices,
    /// Nodes take a barrier's notices as a set (a page two nodes wrote once, as the old
    /// dissemination barrier merged them; the runtime needs each writer's).
    BarrierNoticesAsSet,
    /// Nodes ignore `RemoteWaiting` and hand a lock between their own threads forever.
    UnboundedHandoffs,
    /// Crash runs: the survivors' engines are never told (no `node_failed`), so waits on
    /// the dead node are never given up.
    NeverTold,
}

impl SimConfig {
    /// A scenario drawn from `seed`: 2 to 16 nodes, 1 to 3 threads, 1 to 3 locks of either
    /// kind, either barrier, delays of 1 to 1..40 ticks, occasional pauses; `sections` bounds
    /// the critical sections per thread.
    pub fn random(seed: u64, sections: u32) -> Self {
        let mut rng = Rng::new(seed ^ 0x10c5_5eed);
        let nodes = u32::try_from(rng.range(2, 16)).expect("fits");
        let mut net = NetConfig::new(nodes);
        net.max_delay = rng.range(1, 40);
        let lock_count = rng.range(1, 3);
        let locks = (0..lock_count)
            .map(|_| {
                if rng.chance(1, 2) {
                    LockKind::RicartAgrawala
                } else {
                    LockKind::HomeQueue
                }
            })
            .collect();
        let threads = u32::try_from(rng.range(1, 3)).expect("fits");
        let per_thread = (sections / (nodes * threads)).max(2);
        let rounds = u32::try_from(rng.range(1, 4)).expect("fits");
        let config = SimConfig {
            seed,
            nodes,
            threads,
            locks,
            barrier: if rng.chance(1, 2) {
                BarrierKind::Dissemination
            } else {
                BarrierKind::Central
            },
            rounds,
            sections_per_round: (per_thread / rounds).max(1),
            max_hold: rng.range(0, 30),
            max_think: rng.range(0, 60),
            handoff_bound: u32::try_from(rng.range(1, 4)).expect("fits"),
            pause_per_mille: rng.range(0, 10),
            wait_bound: 200_000,
            net,
            mutation: Mutation::None,
            crash: None,
        };
        // Drawn last, as a choice that no longer exists was: every other choice of a seed
        // is what it was before.
        let _ = rng.chance(1, 2);
        config
    }

    /// [`SimConfig::random`] with one node crashing at a random step.
    pub fn with_crash(seed: u64, sections: u32) -> Self {
        let mut config = SimConfig::random(seed, sections);
        let mut rng = Rng::new(seed ^ 0xc4a5_4ed0);
        config.crash = Some(Crash {
            node: u32::try_from(rng.below(u64::from(config.nodes))).expect("fits"),
            at_step: rng.range(1, u64::from(sections) * 8),
            notice_within: rng.range(1, 2_000),
            keep_sent: false,
        });
        config
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Critical sections entered (thread level).
    pub sections: u64,
    /// Node-level acquires (grants from the engines).
    pub acquires: u64,
    /// Node-level acquires per algorithm: Ricart–Agrawala, home-queue.
    pub acquires_by_kind: [u64; 2],
    /// Lock messages sent per algorithm: Ricart–Agrawala, home-queue.
    pub lock_messages_by_kind: [u64; 2],
    /// Barrier messages sent.
    pub barrier_messages: u64,
    /// Barriers completed (per node).
    pub barriers: u64,
    /// Local handoffs (a thread got the lock without a new node-level acquire).
    pub local_handoffs: u64,
    /// Sum of node-level acquire latencies, in ticks, per algorithm.
    pub acquire_ticks_by_kind: [u64; 2],
    /// Sum of barrier latencies (arrival to exit), in ticks.
    pub barrier_ticks: u64,
    /// Longest thread wait, in steps.
    pub longest_wait_steps: u64,
    /// Steps run.
    pub steps: u64,
    /// Nodes crashed.
    pub crashes: u64,
    /// Lock and barrier waits of survivors ended by `NodeFailed`.
    pub failed_waits: u64,
    /// Node-level grants to survivors after the crash (survivors' engines went on).
    pub grants_after_crash: u64,
}

impl Report {
    /// Adds another run's counts.
    pub fn absorb(&mut self, other: &Report) {
        self.sections += other.sections;
        self.acquires += other.acquires;
        for k in 0..2 {
            self.acquires_by_kind[k] += other.acquires_by_kind[k];
            self.lock_messages_by_kind[k] += other.lock_messages_by_kind[k];
            self.acquire_ticks_by_kind[k] += other.acquire_ticks_by_kind[k];
        }
        self.barrier_messages += other.barrier_messages;
        self.barriers += other.barriers;
        self.local_handoffs += other.local_handoffs;
        self.barrier_ticks += other.barrier_ticks;
        self.longest_wait_steps = self.longest_wait_steps.max(other.longest_wait_steps);
        self.steps += other.steps;
        self.crashes += other.crashes;
        self.failed_waits += other.failed_waits;
        self.grants_after_crash += other.grants_after_crash;
    }

    /// Messages per node-level acquire of one algorithm (0 = RA, 1 = home-queue).
    pub fn messages_per_acquire(&self, kind: usize) -> f64 {
        ratio(
            self.lock_messages_by_kind[kind],
            self.acquires_by_kind[kind],
        )
    }

    /// Mean barrier latency in ticks (arrival to exit, per node).
    pub fn ticks_per_barrier(&self) -> f64 {
        ratio(self.barrier_ticks, self.barriers)
    }

    /// Mean node-level acquire latency in ticks of one algorithm (0 = RA, 1 = home-queue).
    pub fn ticks_per_acquire(&self, kind: usize) -> f64 {
        ratio(
            self.acquire_ticks_by_kind[kind],
            self.acquires_by_kind[kind],
        )
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    // Counts stay far below 2^53: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Steps allowed in total; a run that has not finished by then is stuck.
const STEP_BOUND: u64 = 20_000_000;

/// Runs one scenario to its end (every round done, network drained), checking after every
/// step.
pub fn run(config: &SimConfig) -> Result<Report> {
    let mut world = World::new(config.clone())?;
    for _ in 0..STEP_BOUND {
        if !world.step()? {
            world.check_end()?;
            return Ok(world.report());
        }
        world.check_step()?;
    }
    Err(world.invariant(format!("not finished after {STEP_BOUND} steps")))
}

/// The network of the measurements: every message takes 10 ticks, so ticks count round trips.
fn fixed_delay_net(nodes: u32) -> NetConfig {
    let mut net = NetConfig::new(nodes);
    net.min_delay = 10;
    net.max_delay = 10;
    net
}

/// Barrier latency (ticks from a node's arrival to its exit) and messages of one barrier
/// algorithm on `nodes` nodes, all arriving together, over 20 barriers.
pub fn measure_barrier(kind: BarrierKind, nodes: u32, seed: u64) -> Result<Report> {
    let config = SimConfig {
        seed,
        nodes,
        threads: 1,
        locks: vec![LockKind::RicartAgrawala],
        barrier: kind,
        rounds: 20,
        sections_per_round: 0,
        max_hold: 0,
        max_think: 0,
        handoff_bound: 1,
        pause_per_mille: 0,
        wait_bound: 2_000_000,
        net: fixed_delay_net(nodes),
        mutation: Mutation::None,
        crash: None,
    };
    run(&config)
}

/// The messages-per-acquire and latency of one lock algorithm on `nodes` nodes with `threads`
/// threads each (1 = one node wants the lock at a time more often than not; more = contended),
/// measured on a fixed workload: the crossover figures.
pub fn measure(kind: LockKind, nodes: u32, threads: u32, seed: u64) -> Result<Report> {
    let config = SimConfig {
        seed,
        nodes,
        threads,
        locks: vec![kind],
        barrier: BarrierKind::Dissemination,
        rounds: 1,
        sections_per_round: 200 / nodes.max(1),
        max_hold: 5,
        max_think: if threads == 1 {
            50 * u64::from(nodes) * 10
        } else {
            0
        },
        handoff_bound: 4,
        pause_per_mille: 0,
        wait_bound: 2_000_000,
        net: fixed_delay_net(nodes),
        mutation: Mutation::None,
        crash: None,
    };
    run(&config)
}
