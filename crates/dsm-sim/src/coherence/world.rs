//! The simulated cluster: N engines, their memories and threads, one [`SimNet`], one seed.

use std::collections::BTreeSet;

use dsm_core::{Access, CoherenceConfig, CoherenceEngine, Consistency, RegionLayout};
use dsm_wire::{Coherence, NodeId, PAGE_SIZE, Page, PageId};

use super::SimConfig;
use super::memory::{NodeMemory, Perm};
use super::workload::{Op, drf_op, random_op};
use crate::error::{Error, Result};
use crate::net::SimNet;
use crate::rng::Rng;

mod apply;
mod crash;

/// What travels on the simulated network.
#[derive(Debug)]
pub(crate) enum Wire {
    /// A coherence message between engines.
    Coherence(Coherence),
    /// The request half of a one-sided read: the home's "NIC" copies the master page when it
    /// arrives, without involving the home's engine.
    ReadRequest { page: u32, token: u64 },
    /// The data of a one-sided read.
    ReadData { token: u64, data: Page },
    /// Barrier arrival at the manager (node 0), with the arriving node's write notices.
    BarrierArrive { notices: Vec<PageId> },
    /// Barrier release to every node, with everyone's notices.
    BarrierRelease { notices: Vec<PageId> },
}

/// A simulated application thread.
#[derive(Debug, Default)]
pub(crate) struct Thread {
    /// The access it is doing (blocked on a fault when `blocked_since` is set).
    pub(crate) op: Option<Op>,
    pub(crate) blocked_since: Option<u64>,
    /// Token of its outstanding fault.
    pub(crate) token: u64,
}

/// Where a node is in the release-mode barrier cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Doing `left` more accesses in this phase.
    Working { left: u64 },
    /// Release in progress (diffs not yet acknowledged).
    Releasing,
    /// Arrived at the barrier, waiting for its release.
    Arrived,
    /// Acquire in progress.
    Acquiring,
    /// Finished (after the final barrier).
    Done,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) engine: CoherenceEngine,
    pub(crate) mem: NodeMemory,
    pub(crate) threads: Vec<Thread>,
    pub(crate) stage: Stage,
    pub(crate) phase: u64,
    pub(crate) stage_since: u64,
    next_token: u64,
    /// Release mode: pages installed in the current phase. Nothing invalidates a page between
    /// barriers, so a second install in one phase would be ping-pong.
    installed_in_phase: BTreeSet<u32>,
    /// Tokens of faults whose thread ran when the install woke it, before its `Wake`.
    ran_early: BTreeSet<u64>,
    /// Pages read at once during the batch being applied (token, copy of the master).
    read_at_once: Vec<(u64, dsm_wire::Page)>,
}

/// Counters of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Steps taken (workload and drain).
    pub steps: u64,
    /// Messages sent on the simulated network.
    pub messages: u64,
    /// Faults raised.
    pub faults: u64,
    /// Reads done and checked.
    pub reads: u64,
    /// Writes done.
    pub writes: u64,
    /// Barriers completed (release mode).
    pub barriers: u64,
    /// Read-only copies made writable in place (sequential upgrades, release first writes).
    pub upgrades: u64,
    /// Copies dropped (invalidations, write notices).
    pub invalidations: u64,
    /// Write requests engines sent ahead of a write fault (sequential mode, prefetch > 1).
    pub upgrades_prefetched: u64,
    /// Read faults that asked their page writable because it migrates (sequential mode).
    pub reads_for_ownership: u64,
    /// One-sided page reads.
    pub one_sided_reads: u64,
    /// Of those, reads completed at once, as the action was applied (same-host path).
    pub reads_at_once: u64,
    /// Pages a writable holder gave back by writing its home's master in place
    /// (`MasterWritten`, sequential mode).
    pub masters_written: u64,
    /// Copies given to their home that were its master copy (mapped masters), so nothing
    /// was copied (sequential mode).
    pub copies_that_were_masters: u64,
    /// Grants without data taken by mapping the master this node's copy is
    /// (`Action::MapMaster`, sequential mode).
    pub masters_mapped: u64,
    /// Grants that carried data although their requester reads that home's master copies
    /// itself (the home does not count it among its readers: late confirmation).
    pub data_grants_to_readers: u64,
    /// Twins made (release mode).
    pub twins: u64,
    /// Diffs sent (release mode).
    pub diffs: u64,
    /// Diffs a same-host writer merged into its home's master in place (release mode).
    pub diffs_merged_in_place: u64,
    /// Pages still writable after a release (release mode: home pages published in place).
    pub kept_writable: u64,
    /// Pages given back to their home unasked (sequential mode).
    pub hand_backs: u64,
    /// Recalls that reached a node after it had handed their page back.
    pub recalls_crossing_hand_backs: u64,
    /// Pages a home pushed writable to a node unasked (sequential mode).
    pub pushes: u64,
    /// Requests that crossed a push of their page to their sender.
    pub requests_crossing_pushes: u64,
    /// Reads a home granted while it kept writing the page, to readers mapping its master.
    pub reads_sharing_the_writers_page: u64,
    /// Read-only copies dropped as at a barrier (sequential mode).
    pub copies_dropped: u64,
    /// Of those, copies granted back unchanged (dropped for nothing).
    pub drops_wasted: u64,
    /// Invalidations that reached a node after it had dropped their page.
    pub invalidations_crossing_drops: u64,
    /// Nodes crashed.
    pub crashes: u64,
    /// Faults that failed because they needed the crashed node.
    pub failed_faults: u64,
    /// Of those, faults on pages lost with the crashed node (it held them writable).
    pub lost_faults: u64,
}

impl Report {
    /// Adds `other`'s counters to these (totals over seeds).
    pub fn absorb(&mut self, other: &Report) {
        self.steps += other.steps;
        self.messages += other.messages;
        self.faults += other.faults;
        self.reads += other.reads;
        self.writes += other.writes;
        self.barriers += other.barriers;
        self.upgrades += other.upgrades;
        self.invalidations += other.invalidations;
        self.copies_dropped += other.copies_dropped;
        self.drops_wasted += other.drops_wasted;
        self.invalidations_crossing_drops += other.invalidations_crossing_drops;
        self.upgrades_prefetched += other.upgrades_prefetched;
        self.reads_for_ownership += other.reads_for_ownership;
        self.one_sided_reads += other.one_sided_reads;
        self.reads_at_once += other.reads_at_once;
        self.masters_written += other.masters_written;
        self.copies_that_were_masters += other.copies_that_were_masters;
        self.masters_mapped += other.masters_mapped;
        self.data_grants_to_readers += other.data_grants_to_readers;
        self.twins += other.twins;
        self.diffs += other.diffs;
        self.diffs_merged_in_place += other.diffs_merged_in_place;
        self.kept_writable += other.kept_writable;
        self.hand_backs += other.hand_backs;
        self.recalls_crossing_hand_backs += other.recalls_crossing_hand_backs;
        self.pushes += other.pushes;
        self.requests_crossing_pushes += other.requests_crossing_pushes;
        self.reads_sharing_the_writers_page += other.reads_sharing_the_writers_page;
        self.crashes += other.crashes;
        self.failed_faults += other.failed_faults;
        self.lost_faults += other.lost_faults;
    }
}

pub(crate) struct World {
    pub(crate) config: SimConfig,
    pub(crate) seed: u64,
    rng: Rng,
    pub(crate) net: SimNet<Wire>,
    pub(crate) nodes: Vec<Node>,
    /// What every page must hold: each write is applied here when it is done.
    pub(crate) reference: Vec<Page>,
    next_value: u64,
    pub(crate) step: u64,
    pub(crate) draining: bool,
    /// Release mode drain: a node whose phase reaches this after a barrier is done.
    final_phase: u64,
    arrived: u32,
    /// Write notices of the nodes arrived at the barrier: (writer, page).
    arrived_notices: BTreeSet<(NodeId, PageId)>,
    pub(crate) report: Report,
    /// The node that crashed, once it did.
    pub(crate) crashed: Option<NodeId>,
    /// Survivors not yet told of the crash: (step due, survivor), in order.
    failure_notices: crate::crash::FailureNotices,
    /// Pages whose home saw them writable on the crashed node when it was told: the only pages
    /// a fault may find lost.
    pub(crate) may_be_lost: BTreeSet<u32>,
}

/// Whether `message` is a grant with the page's data.
fn carries_data(message: &Coherence) -> bool {
    matches!(
        message,
        Coherence::ReadGrant { data: Some(_), .. } | Coherence::WriteGrant { data: Some(_), .. }
    )
}

/// Token of the (one at a time) sync call of a simulated node.
const SYNC_TOKEN: u64 = 1 << 48;

impl World {
    pub(crate) fn new(seed: u64, config: SimConfig) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let net = SimNet::new(config.net.clone(), rng.next_u64());
        let layout = RegionLayout {
            id: 0,
            pages: config.pages,
            consistency: config.consistency,
            placement: config.placement,
            prefetch: config.prefetch,
        };
        let pairs = &config.pairs;
        let sized = |lists: &Vec<Vec<NodeId>>| lists.len() == config.nodes as usize;
        assert!(
            sized(&pairs.readers_of_home) && sized(&pairs.homes_read) && sized(&pairs.read_at_once),
            "one-sided pairs drawn for another cluster size than {} nodes",
            config.nodes
        );
        let mut nodes = Vec::new();
        for node in 0..config.nodes {
            let mut engine_config = CoherenceConfig::new(node, config.nodes);
            engine_config.one_sided = config.one_sided;
            engine_config.readers_of_home = pairs.readers_of_home[node as usize].clone();
            engine_config.homes_read = pairs.homes_read[node as usize].clone();
            engine_config.timeout_ticks = config.fault_bound;
            engine_config.mutation = config.mutation;
            engine_config.scan_writes = config.scan_writes;
            engine_config.twin_limit = config.twin_limit;
            let mut engine = CoherenceEngine::new(engine_config);
            engine.add_region(layout).map_err(|error| Error::Engine {
                step: 0,
                node,
                error,
            })?;
            let mut mem = NodeMemory::with_scan(config.pages, config.scan_writes);
            if config.map_masters && config.consistency == Consistency::Sequential {
                for page in 0..config.pages {
                    let home = layout.home_of(page, config.nodes);
                    let same_host =
                        pairs.reads_master_of(node, home) && pairs.reads_at_once(node, home);
                    mem.aliased[page as usize] = home == node || same_host;
                }
            }
            nodes.push(Node {
                engine,
                mem,
                threads: (0..config.threads).map(|_| Thread::default()).collect(),
                stage: Stage::Working {
                    left: config.ops_per_phase,
                },
                phase: 0,
                stage_since: 0,
                next_token: 0,
                installed_in_phase: BTreeSet::new(),
                ran_early: BTreeSet::new(),
                read_at_once: Vec::new(),
            });
        }
        Ok(World {
            reference: (0..config.pages)
                .map(|_| Box::new([0; PAGE_SIZE]))
                .collect(),
            config,
            seed,
            rng,
            net,
            nodes,
            next_value: 1,
            step: 0,
            draining: false,
            final_phase: u64::MAX,
            arrived: 0,
            arrived_notices: BTreeSet::new(),
            report: Report::default(),
            crashed: None,
            failure_notices: crate::crash::FailureNotices::default(),
            may_be_lost: BTreeSet::new(),
        })
    }

    fn release_mode(&self) -> bool {
        self.config.consistency == Consistency::Release
    }

    /// One step: deliver a message, or let a thread start its next access. Returns false
    /// when nothing could happen (quiescent).
    pub(crate) fn step(&mut self) -> Result<bool> {
        self.step += 1;
        self.maybe_pause();
        self.maybe_crash()?;
        self.maybe_hand_back()?;
        self.maybe_drop_copies()?;
        let runnable = self.runnable();
        let deliver = self.net.in_flight() > 0 && (runnable.is_empty() || self.rng.chance(1, 2));
        let idle = runnable.is_empty() && self.net.in_flight() == 0;
        if let Some(survivor) = self.failure_notices.take_due(self.step, idle) {
            self.tell_failure(survivor)?;
        } else if deliver {
            let envelope = self.net.step().expect("in flight");
            self.deliver(envelope.from, envelope.to as usize, envelope.message)?;
        } else if !runnable.is_empty() {
            let (node, thread) = runnable[self.rng.index(runnable.len())];
            self.start_op(node, thread)?;
        } else {
            return Ok(false);
        }
        self.report.steps = self.step;
        self.tick()?;
        Ok(true)
    }

    /// Gives every engine the time (in steps), so its own timeouts are checked too.
    fn tick(&mut self) -> Result<()> {
        if !self.step.is_multiple_of(16) {
            return Ok(());
        }
        for n in 0..self.nodes.len() {
            if self.is_crashed(n) {
                continue;
            }
            let result = self.nodes[n].engine.tick(self.step);
            self.engine_result(n, result)?;
        }
        Ok(())
    }

    /// Sometimes a random node gives a random page back to its home (if it holds it
    /// writable and idle), or pushes a page it is the home of to a random node (if idle and
    /// that node holds no copy); else nothing happens.
    fn maybe_hand_back(&mut self) -> Result<()> {
        let rate = self.config.hand_back_per_mille;
        if rate == 0 || self.draining || self.release_mode() || !self.rng.chance(rate, 1000) {
            return Ok(());
        }
        let n = self.rng.index(self.nodes.len());
        let page = u32::try_from(self.rng.below(u64::from(self.config.pages))).expect("fits");
        if self.is_crashed(n) {
            return Ok(());
        }
        let to = u32::try_from(self.rng.index(self.nodes.len())).expect("fits");
        let push = self.rng.chance(1, 2);
        let node = &mut self.nodes[n];
        let id = PageId { region: 0, page };
        let result = if push {
            node.engine.push(id, to, &mut node.mem)
        } else {
            let next = self.rng.chance(1, 2).then_some(to);
            node.engine.hand_back(id, next, &mut node.mem)
        };
        if let Ok(true) = result {
            match push {
                true => self.report.pushes += 1,
                false => self.report.hand_backs += 1,
            }
        }
        self.engine_result(n, result.map(|_| ()))?;
        self.apply(n)
    }

    /// Sometimes a random node drops its consumed read-only copies, as at a barrier.
    fn maybe_drop_copies(&mut self) -> Result<()> {
        let rate = self.config.drop_per_mille;
        if rate == 0 || self.release_mode() || !self.rng.chance(rate, 1000) {
            return Ok(());
        }
        let n = self.rng.index(self.nodes.len());
        if self.is_crashed(n) {
            return Ok(());
        }
        let node = &mut self.nodes[n];
        let result = node.engine.drop_consumed_copies(&mut node.mem);
        self.engine_result(n, result.map(|_| ()))?;
        self.apply(n)
    }

    fn maybe_pause(&mut self) {
        if self.config.pause_per_mille > 0 && self.rng.chance(self.config.pause_per_mille, 1000) {
            let node = u32::try_from(self.rng.below(u64::from(self.config.nodes))).expect("fits");
            let ticks = self.rng.range(10, 200);
            self.net.pause(node, ticks);
        }
    }

    /// Threads that may start an access now.
    fn runnable(&self) -> Vec<(usize, usize)> {
        if self.draining && !self.release_mode() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            let working = matches!(node.stage, Stage::Working { left } if left > 0);
            let paused = self.net.is_paused(u32::try_from(n).expect("fits"));
            if paused || self.is_crashed(n) || (self.release_mode() && !working) {
                continue;
            }
            for (t, thread) in node.threads.iter().enumerate() {
                if thread.op.is_none() {
                    out.push((n, t));
                }
            }
        }
        out
    }

    fn start_op(&mut self, n: usize, t: usize) -> Result<()> {
        let value = self.next_value;
        self.next_value += 1;
        let (nodes, pages, words) = (self.config.nodes, self.config.pages, self.config.words);
        let op = if self.release_mode() {
            let phase = self.nodes[n].phase;
            let node = u32::try_from(n).expect("fits");
            if let Stage::Working { left } = &mut self.nodes[n].stage {
                *left -= 1;
            }
            drf_op(
                &mut self.rng,
                self.seed,
                phase,
                node,
                nodes,
                pages,
                words,
                value,
            )
        } else {
            Some(random_op(&mut self.rng, pages, words, value))
        };
        if let Some(op) = op {
            self.nodes[n].threads[t].op = Some(op);
            self.try_op(n, t)?;
        }
        self.advance_stage(n)
    }

    /// Does thread `t`'s access if the page allows it, else faults.
    fn try_op(&mut self, n: usize, t: usize) -> Result<()> {
        let op = self.nodes[n].threads[t].op.expect("thread has an op");
        let page = op.page();
        let perm = self.nodes[n].mem.perm(page);
        let allowed = match op {
            Op::Read { .. } => perm != Perm::None,
            Op::Write { .. } => self.nodes[n].mem.writable(page),
        };
        if allowed {
            return self.execute(n, t, op);
        }
        let node = &mut self.nodes[n];
        node.next_token += 1;
        let token = node.next_token;
        let thread = &mut node.threads[t];
        thread.token = token;
        thread.blocked_since.get_or_insert(self.step);
        let access = match op {
            Op::Read { .. } => Access::Read,
            Op::Write { .. } => Access::Write,
        };
        self.report.faults += 1;
        let id = PageId { region: 0, page };
        let result = node.engine.fault(id, access, token, &mut node.mem);
        self.engine_result(n, result)?;
        self.apply(n)
    }

    pub(super) fn execute(&mut self, n: usize, t: usize, op: Op) -> Result<()> {
        match op {
            Op::Read { page, word } => {
                let seen = self.nodes[n].mem.read_word(page, word);
                let want = super::memory::read_word(&self.reference[page as usize], word);
                if seen != want {
                    return Err(self.invariant(format!(
                        "node {n} read {seen} at page {page} word {word}, latest write is {want}"
                    )));
                }
                self.report.reads += 1;
            }
            Op::Write { page, word, value } => {
                self.nodes[n].mem.write_word(page, word, value);
                self.write_through(n, page);
                let bytes = &mut self.reference[page as usize][word * 8..word * 8 + 8];
                bytes.copy_from_slice(&value.to_le_bytes());
                self.report.writes += 1;
            }
        }
        let thread = &mut self.nodes[n].threads[t];
        thread.op = None;
        thread.blocked_since = None;
        Ok(())
    }

    fn deliver(&mut self, from: NodeId, n: usize, message: Wire) -> Result<()> {
        let node = &mut self.nodes[n];
        match message {
            Wire::Coherence(message) => {
                let to = u32::try_from(n).expect("fits");
                if self.config.pairs.reads_master_of(to, from) && carries_data(&message) {
                    self.report.data_grants_to_readers += 1;
                }
                let node = &mut self.nodes[n];
                let result = node.engine.on_message(from, message, &mut node.mem);
                self.engine_result(n, result)?;
            }
            Wire::ReadRequest { page, token } => {
                let data = node.mem.home[page as usize].clone();
                let to_node = u32::try_from(n).expect("fits");
                self.send(to_node, from, Wire::ReadData { token, data })?;
            }
            // A one-sided read of a dead node's memory fails in the NIC; the engine was told.
            Wire::ReadData { .. } if self.crashed == Some(from) => return Ok(()),
            Wire::ReadData { token, data } => {
                let result = node.engine.on_page_read(token, data, &mut node.mem);
                self.engine_result(n, result)?;
            }
            Wire::BarrierArrive { notices } => return self.barrier_arrive(from, notices),
            Wire::BarrierRelease { notices } => {
                node.stage = Stage::Acquiring;
                node.stage_since = self.step;
                let result = node.engine.acquire(SYNC_TOKEN, &notices, &mut node.mem);
                self.engine_result(n, result)?;
            }
        }
        self.apply(n)
    }

    /// Stops new work: sequential threads finish their access; release nodes finish the phase
    /// and meet at one last barrier.
    pub(crate) fn start_drain(&mut self) -> Result<()> {
        self.draining = true;
        // Phases of nodes differ by at most one; every node finishes the latest phase's
        // barrier, then stops.
        self.final_phase = self.nodes.iter().map(|n| n.phase).max().unwrap_or(0) + 1;
        for n in 0..self.nodes.len() {
            if let Stage::Working { left } = &mut self.nodes[n].stage {
                *left = 0;
            }
            self.advance_stage(n)?;
        }
        Ok(())
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: Wire) -> Result<()> {
        self.report.messages += 1;
        let step = self.step;
        self.net
            .send(from, to, message)
            .map_err(|error| Error::Net {
                step,
                node: from,
                error,
            })
    }

    fn engine_result(&self, n: usize, result: dsm_core::Result<()>) -> Result<()> {
        result.map_err(|error| Error::Engine {
            step: self.step,
            node: u32::try_from(n).expect("fits"),
            error,
        })
    }

    pub(crate) fn invariant(&self, detail: String) -> Error {
        Error::Invariant {
            step: self.step,
            detail,
        }
    }
}
