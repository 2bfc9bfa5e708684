//! The coherence simulation: N engines (1 to 16) in one thread over a
//! [`SimNet`](crate::net::SimNet), one seed.
//!
//! * **Sequential** runs: every thread reads and writes random words of a few pages (page 0 is
//!   hot). After every step: each mapping agrees with its engine's state; at most one writable
//!   copy per page and none beside read-only ones; every readable copy holds the latest write
//!   of every word (so every read returns the latest write: per-page linearizability).
//! * **Release** runs: barrier-separated phases; in each phase a pure function of
//!   `(seed, phase, page, word)` says which node may write each word (or that nobody does),
//!   so nodes write disjoint words of the same pages (false sharing on every page) and the
//!   program is data-race free. Every read must return the reference execution's value; after
//!   the last barrier every home copy must equal the reference.
//! * **Hand-backs and pushes** (sequential, [`SimConfig::hand_back_per_mille`]): at random
//!   steps a node gives a page it holds writable back to its home unasked, or a home pushes
//!   a page writable to a random node, as a contended lock release does, crossing the
//!   home's recalls and the node's own requests.
//! * **Barrier drops** (sequential, [`SimConfig::drop_per_mille`]): at random steps a node
//!   drops the read-only copies other nodes' writes took from it before
//!   (`CoherenceEngine::drop_consumed_copies`, as at a barrier), crossing the homes'
//!   invalidations and grants and its own requests.
//! * **Crashes** (sequential, [`SimConfig::with_crash`]): one node crashes at a random step;
//!   each survivor is told (`node_failed`) a random number of steps later, and messages the
//!   dead node sent before may still arrive. Every survivor's fault ends served or failed,
//!   never hangs; a fault fails only when its page is homed on the dead node or was writable
//!   there when its home was told (lost); no survivor ever reads a stale copy.
//! * **One-sided pages** (every mode): a world is one-sided or not (RDMA: grants carry no
//!   data), and besides picks [`OneSidedPairs`]: which requesters read which homes' master
//!   copies themselves (the runtime's same-host pairs, with the requester sometimes knowing
//!   before the home, so grants with data reach readers), and whether each one-sided read
//!   completes later (a request and its data on the network) or at once, copied as its action
//!   is applied and given to the engine right after that batch (the runtime's same-host read).
//! * **Mapped masters** (sequential, [`SimConfig::map_masters`]): half the worlds model the
//!   runtime mapping same-host masters: a node's copy of a page homed on itself or on a home
//!   it reads at once is the master itself, so the engine copies nothing to give it back.
//! * **Both**: every fault and sync completes within [`SimConfig::fault_bound`] steps; every
//!   send goes to a member of the cluster; every engine call succeeds; at the end the cluster
//!   drains to quiescence.
//!
//! ```
//! use dsm_core::Consistency;
//! use dsm_sim::coherence::{SimConfig, run};
//!
//! let config = SimConfig::random(7, Consistency::Sequential, 2_000);
//! let report = run(7, &config).expect("the protocol holds");
//! assert!(report.reads > 0);
//! ```

mod check;
mod memory;
mod pairs;
mod workload;
mod world;

pub use memory::{NodeMemory, Perm};
pub use pairs::OneSidedPairs;
pub use workload::Op;
pub use world::Report;

use dsm_core::{CoherenceEngine, Consistency, Mutation, Placement};

pub use crate::crash::Crash;
use crate::error::Result;
use crate::net::NetConfig;
use crate::rng::Rng;
use world::World;

/// One simulated scenario.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Cluster size (1 to 16).
    pub nodes: u32,
    /// Pages of the one region (few, so races are frequent).
    pub pages: u32,
    /// Words (8 bytes) used per page.
    pub words: usize,
    /// Coherence model of the region.
    pub consistency: Consistency,
    /// Home placement.
    pub placement: Placement,
    /// Grants without data; requesters read the home copy one-sided (the RDMA path).
    pub one_sided: bool,
    /// Besides `one_sided`: which requesters read which homes' master copies themselves (the
    /// runtime's same-host pairs), and which one-sided reads complete at once.
    pub pairs: OneSidedPairs,
    /// Application threads per node.
    pub threads: u32,
    /// Network behaviour.
    pub net: NetConfig,
    /// Workload steps before the drain.
    pub steps: u64,
    /// Chance per step, in thousandths, that some node is paused.
    pub pause_per_mille: u64,
    /// A fault or sync waiting more steps than this is a failure (deadlock or livelock).
    pub fault_bound: u64,
    /// Release mode: accesses per node between barriers.
    pub ops_per_phase: u64,
    /// Deliberately broken engine variant (mutation tests).
    pub mutation: Mutation,
    /// Read prefetch of the region (pages per read fault; 1 = off).
    pub prefetch: u32,
    /// Release mode: written pages are found by a scan (asynchronous write-protect and
    /// `PAGEMAP_SCAN` in the runtime): a write to a write-protected copy does not fault, it
    /// marks the page written, and the engine's `take_written` reports and clears the marks.
    pub scan_writes: bool,
    /// With `scan_writes`: tracked copies kept past a release (0: no limit).
    pub twin_limit: usize,
    /// A node that crashes during the run (sequential mode).
    pub crash: Option<Crash>,
    /// Sequential mode: chance per step, in thousandths, that a random node gives a random
    /// page back to its home unasked (`CoherenceEngine::hand_back`) or pushes a page it is
    /// the home of to a random node (`CoherenceEngine::push`), as a contended lock release
    /// does, racing the home's recalls and the node's requests.
    pub hand_back_per_mille: u64,
    /// Sequential mode: chance per step, in thousandths, that a random node drops its
    /// consumed read-only copies (`CoherenceEngine::drop_consumed_copies`), as the runtime
    /// does at every barrier.
    pub drop_per_mille: u64,
    /// Sequential mode: a node's copy of a page homed on itself, or on a home it reads at once
    /// (the runtime's same-host pair), *is* that page's master copy, as when the runtime maps
    /// same-host masters (`Config::map_masters`): a write lands in the master, an install
    /// makes the master hold the installed data, an invalidation unmaps and leaves the master,
    /// and every node mapping the page sees every change at once.
    pub map_masters: bool,
}

impl SimConfig {
    /// A scenario drawn from `seed`: 1 to 16 nodes, 1 to 4 pages, either placement, one- or
    /// two-sided page transfer, one-sided pairs ([`OneSidedPairs::random`]), 1 or 2 threads
    /// per node, delays of 1 to 1..40 ticks, occasional pauses, read prefetch of 1 (off) to
    /// 4 pages.
    pub fn random(seed: u64, consistency: Consistency, steps: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5eed_c0de);
        let nodes = u32::try_from(rng.range(1, 16)).expect("fits");
        let mut net = NetConfig::new(nodes);
        net.max_delay = rng.range(1, 40);
        let mut config = SimConfig {
            nodes,
            pages: u32::try_from(rng.range(1, 4)).expect("fits"),
            words: usize::try_from(rng.range(1, 16)).expect("fits"),
            consistency,
            placement: if rng.chance(1, 2) {
                Placement::Cyclic
            } else {
                Placement::Block
            },
            one_sided: rng.chance(1, 2),
            pairs: OneSidedPairs::random(seed, nodes),
            threads: u32::try_from(rng.range(1, 2)).expect("fits"),
            net,
            steps,
            pause_per_mille: rng.range(0, 20),
            fault_bound: 50_000,
            ops_per_phase: rng.range(1, 12),
            mutation: Mutation::None,
            prefetch: 1,
            scan_writes: false,
            twin_limit: 0,
            crash: None,
            hand_back_per_mille: 0,
            drop_per_mille: 0,
            map_masters: false,
        };
        // Drawn last, so that every other choice of a seed is what it was before prefetch.
        config.prefetch = u32::try_from(rng.range(1, 4)).expect("fits");
        // Half the sequential worlds hand pages back, from rarely to often.
        if consistency == Consistency::Sequential && rng.chance(1, 2) {
            config.hand_back_per_mille = rng.range(5, 100);
        }
        // Most sequential worlds drop copies, from rarely to often (drawn after the rest).
        if consistency == Consistency::Sequential && rng.chance(3, 4) {
            config.drop_per_mille = rng.range(5, 200);
        }
        // Half the sequential worlds map masters (drawn after the rest).
        config.map_masters = consistency == Consistency::Sequential && rng.chance(1, 2);
        config
    }
}

impl SimConfig {
    /// [`SimConfig::random`] in sequential mode with one node crashing at a random step
    /// (clusters of at least 2 nodes: a 1-node draw becomes 2 nodes).
    pub fn with_crash(seed: u64, steps: u64) -> Self {
        let mut config = SimConfig::random(seed, Consistency::Sequential, steps);
        if config.nodes < 2 {
            config.nodes = 2;
            config.net.nodes = 2;
            config.pairs = OneSidedPairs::random(seed, 2);
        }
        let mut rng = Rng::new(seed ^ 0xc4a5_4ed0);
        config.crash = Some(Crash {
            node: u32::try_from(rng.below(u64::from(config.nodes))).expect("fits"),
            at_step: rng.range(1, steps.max(1)),
            notice_within: rng.range(1, 400),
            keep_sent: rng.chance(1, 2),
        });
        config
    }
}

/// Steps allowed for the drain after the workload; a cluster that does not go quiet within it
/// is stuck.
const DRAIN_BOUND: u64 = 1_000_000;

/// Runs one scenario: `config.steps` workload steps with every check after each, then a drain
/// to quiescence and the end checks.
pub fn run(seed: u64, config: &SimConfig) -> Result<Report> {
    let mut world = World::new(seed, config.clone())?;
    for _ in 0..config.steps {
        world.step()?;
        world.check_step()?;
    }
    world.start_drain()?;
    world.check_step()?;
    for _ in 0..DRAIN_BOUND {
        if !world.step()? {
            world.check_end()?;
            world.report.messages = world.net.stats().sent;
            let total = |count: fn(&CoherenceEngine) -> u64| -> u64 {
                world.nodes.iter().map(|n| count(&n.engine)).sum()
            };
            let mut report = world.report.clone();
            report.copies_that_were_masters =
                world.nodes.iter().map(|n| n.mem.found_mapped.get()).sum();
            report.upgrades_prefetched = total(CoherenceEngine::upgrades_prefetched);
            report.reads_for_ownership = total(CoherenceEngine::reads_for_ownership);
            report.recalls_crossing_hand_backs =
                total(CoherenceEngine::recalls_crossing_hand_backs);
            report.requests_crossing_pushes = total(CoherenceEngine::requests_crossing_pushes);
            report.reads_sharing_the_writers_page =
                total(CoherenceEngine::reads_sharing_the_writers_page);
            report.copies_dropped = total(CoherenceEngine::copies_dropped);
            report.drops_wasted = total(CoherenceEngine::drops_wasted);
            report.invalidations_crossing_drops =
                total(CoherenceEngine::invalidations_crossing_drops);
            return Ok(report);
        }
        world.check_step()?;
    }
    Err(world.invariant(format!("not quiescent {DRAIN_BOUND} steps into the drain")))
}
