//! The simulated cluster: nodes (engines, threads, local queues), timers and the network.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use dsm_locks::{Action, BarrierEngine, LockEngine, LockKind};
use dsm_wire::{NodeId, PageId, SyncMsg};

use super::check::Checker;
use super::{Mutation, Report, SimConfig};
use crate::error::{Error, Result};
use crate::net::SimNet;
use crate::rng::Rng;

mod crash;
mod local;

/// One application thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Thread {
    /// Thinking; a `Think` timer is set.
    Thinking,
    /// Queued for `lock` since `step`.
    Waiting { lock: u32, since: u64 },
    /// In `lock`'s critical section; a `Leave` timer is set.
    Holding { lock: u32 },
    /// Finished the round.
    Done,
}

/// A node's local part of one lock (mirrors `dsm_locks::LockTable`'s policy).
#[derive(Debug, Default)]
struct NodeLock {
    owned: bool,
    pending: bool,
    requested_at: u64,
    holder: Option<u32>,
    queue: VecDeque<u32>,
    remote: bool,
    handoffs: u32,
    /// Granted and no thread entered yet (the next entry is not a local handoff).
    fresh: bool,
    /// Pages written during the current ownership.
    written: BTreeSet<PageId>,
}

#[derive(Debug)]
struct Node {
    engine: LockEngine,
    barrier: BarrierEngine,
    threads: Vec<Thread>,
    sections_left: Vec<u32>,
    locks: Vec<NodeLock>,
    round: u32,
    in_barrier_since: Option<(u64, u64)>,
    /// Pages written since the last barrier.
    interval: BTreeSet<PageId>,
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    Think { node: NodeId, thread: u32 },
    Leave { node: NodeId, thread: u32 },
}

/// The whole simulation.
#[derive(Debug)]
pub(super) struct World {
    config: SimConfig,
    rng: Rng,
    net: SimNet<SyncMsg>,
    nodes: Vec<Node>,
    timers: BTreeMap<(u64, u64), Timer>,
    timer_seq: u64,
    step: u64,
    check: Checker,
    report: Report,
    /// The node that crashed, once it did.
    crashed: Option<NodeId>,
    /// Survivors not yet told of the crash: (step due, survivor), in order.
    failure_notices: crate::crash::FailureNotices,
    /// Nodes told of the crash (they behave as the runtime does after a failure).
    told: Vec<bool>,
}

fn kind_index(kind: LockKind) -> usize {
    usize::from(kind == LockKind::HomeQueue)
}

impl World {
    pub(super) fn new(config: SimConfig) -> Result<Self> {
        let mut rng = Rng::new(config.seed);
        let net = SimNet::new(config.net.clone(), rng.next_u64());
        let nodes = (0..config.nodes)
            .map(|me| Self::node(&config, me))
            .collect::<Result<_>>()?;
        let check = Checker::new(config.nodes, config.locks.len(), config.handoff_bound);
        let mut world = World {
            rng,
            net,
            nodes,
            timers: BTreeMap::new(),
            timer_seq: 0,
            step: 0,
            check,
            report: Report::default(),
            crashed: None,
            failure_notices: crate::crash::FailureNotices::default(),
            told: vec![false; config.nodes as usize],
            config,
        };
        for node in 0..world.config.nodes {
            world.start_round(node)?;
        }
        Ok(world)
    }

    fn node(config: &SimConfig, me: NodeId) -> Result<Node> {
        let mut engine = LockEngine::new(me, config.nodes, LockKind::RicartAgrawala);
        for (lock, kind) in config.locks.iter().enumerate() {
            let lock = u32::try_from(lock).expect("few locks");
            engine.set_kind(lock, *kind).map_err(|e| Error::Invariant {
                step: 0,
                detail: e.to_string(),
            })?;
        }
        let threads = config.threads as usize;
        Ok(Node {
            engine,
            barrier: BarrierEngine::new(me, config.nodes, config.barrier),
            threads: vec![Thread::Done; threads],
            sections_left: vec![0; threads],
            locks: (0..config.locks.len())
                .map(|_| NodeLock::default())
                .collect(),
            round: 0,
            in_barrier_since: None,
            interval: BTreeSet::new(),
        })
    }

    pub(super) fn report(&self) -> Report {
        let mut report = self.report.clone();
        report.steps = self.step;
        report
    }

    pub(super) fn invariant(&self, detail: String) -> Error {
        Error::Invariant {
            step: self.step,
            detail,
        }
    }

    /// One event: the earliest timer or message. False when nothing is left.
    pub(super) fn step(&mut self) -> Result<bool> {
        self.step += 1;
        if self.config.pause_per_mille > 0 && self.rng.chance(self.config.pause_per_mille, 1000) {
            let node = u32::try_from(self.rng.below(u64::from(self.config.nodes))).expect("node");
            let ticks = self.rng.range(1, 200);
            self.net.pause(node, ticks);
        }
        self.maybe_crash();
        let timer = self.timers.first_key_value().map(|(k, _)| *k);
        let idle = timer.is_none() && self.net.next_due().is_none();
        if let Some(survivor) = self.failure_notices.take_due(self.step, idle) {
            self.tell_failure(survivor)?;
            return Ok(true);
        }
        match (timer, self.net.next_due()) {
            (None, None) => Ok(false),
            (Some(key), due) if due.is_none_or(|d| key.0 < d) => {
                let timer = self.timers.remove(&key).expect("just seen");
                if key.0 > self.net.now() {
                    self.net.advance(key.0 - self.net.now());
                }
                self.on_timer(timer)?;
                Ok(true)
            }
            _ => {
                let envelope = self.net.step().expect("a message is due");
                self.on_message(envelope.from, envelope.to, &envelope.message)?;
                Ok(true)
            }
        }
    }

    /// Checks that hold after every step (the rest is checked as events happen).
    pub(super) fn check_step(&mut self) -> Result<()> {
        let bound = self.config.wait_bound;
        for (n, node) in self.nodes.iter().enumerate() {
            for (t, thread) in node.threads.iter().enumerate() {
                if let Thread::Waiting { lock, since } = thread {
                    let waited = self.step - since;
                    self.report.longest_wait_steps = self.report.longest_wait_steps.max(waited);
                    if waited > bound {
                        return Err(self.stuck(n, format!("thread {t} waiting for lock {lock}")));
                    }
                }
            }
            let barrier_since = node.in_barrier_since.map_or(self.step, |(since, _)| since);
            if self.step - barrier_since > bound {
                return Err(self.stuck(n, "barrier".into()));
            }
        }
        if self.net.stats().not_member > 0 {
            return Err(self.invariant("a message was sent outside the cluster".into()));
        }
        Ok(())
    }

    pub(super) fn check_end(&self) -> Result<()> {
        if self.crashed.is_some() {
            return self.check_end_after_crash();
        }
        for (n, node) in self.nodes.iter().enumerate() {
            if node.round < self.config.rounds || node.threads.iter().any(|t| *t != Thread::Done) {
                return Err(self.invariant(format!(
                    "node {n} stopped in round {} with {:?}",
                    node.round, node.threads
                )));
            }
        }
        self.check
            .end(self.report.acquires_by_kind[0])
            .map_err(|d| self.invariant(d))
    }

    fn stuck(&self, node: usize, what: String) -> Error {
        Error::Stuck {
            step: self.step,
            node: u32::try_from(node).expect("node"),
            what,
            bound: self.config.wait_bound,
        }
    }

    fn set_timer(&mut self, after: u64, timer: Timer) {
        self.timer_seq += 1;
        self.timers
            .insert((self.net.now() + after, self.timer_seq), timer);
    }

    /// Starts `node`'s next round, if any: every thread thinks, then acquires (with no
    /// sections per round, the node goes straight to the next barrier).
    fn start_round(&mut self, node: NodeId) -> Result<()> {
        if self.nodes[node as usize].round >= self.config.rounds {
            return Ok(());
        }
        if self.config.sections_per_round == 0 {
            return self.maybe_enter_barrier(node);
        }
        for thread in 0..self.config.threads {
            let n = &mut self.nodes[node as usize];
            n.threads[thread as usize] = Thread::Thinking;
            n.sections_left[thread as usize] = self.config.sections_per_round;
            let think = self.rng.range(0, self.config.max_think);
            self.set_timer(think, Timer::Think { node, thread });
        }
        Ok(())
    }

    fn on_timer(&mut self, timer: Timer) -> Result<()> {
        let (Timer::Think { node, .. } | Timer::Leave { node, .. }) = timer;
        if self.crashed == Some(node) {
            return Ok(()); // It died with its node.
        }
        match timer {
            Timer::Think { node, thread } if self.told[node as usize] => {
                // The acquire would return NodeFailed at once.
                self.nodes[node as usize].threads[thread as usize] = Thread::Done;
                self.report.failed_waits += 1;
                Ok(())
            }
            Timer::Think { node, thread } => {
                let locks = self.config.locks.len();
                let lock = u32::try_from(self.rng.index(locks)).expect("few locks");
                let since = self.step;
                let n = &mut self.nodes[node as usize];
                n.threads[thread as usize] = Thread::Waiting { lock, since };
                n.locks[lock as usize].queue.push_back(thread);
                self.dispatch(node, lock)
            }
            Timer::Leave { node, thread } => self.leave(node, thread),
        }
    }

    fn on_message(&mut self, from: NodeId, to: NodeId, message: &SyncMsg) -> Result<()> {
        let mut out = Vec::new();
        let n = &mut self.nodes[to as usize];
        let result = match message {
            SyncMsg::BarrierArrive { .. }
            | SyncMsg::BarrierRelease { .. }
            | SyncMsg::BarrierAbort { .. }
            | SyncMsg::BarrierRound { .. } => n.barrier.on_message(from, message, &mut out),
            _ => n.engine.on_message(from, message, &mut out),
        };
        self.engine_result(to, result)?;
        self.apply(to, out)
    }

    fn engine_result(&self, node: NodeId, result: dsm_locks::Result<()>) -> Result<()> {
        result.map_err(|e| self.invariant(format!("node {node}: lock engine: {e}")))
    }

    fn apply(&mut self, node: NodeId, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            match action {
                Action::Send { to, message } => self.send(node, to, message)?,
                Action::Granted { lock, notices } => self.granted(node, lock, &notices)?,
                Action::RemoteWaiting { lock } => {
                    self.check.remote_waiting(node, lock);
                    if self.config.mutation != Mutation::UnboundedHandoffs {
                        self.nodes[node as usize].locks[lock as usize].remote = true;
                    }
                }
                Action::BarrierDone { epoch, mut notices } => {
                    if self.config.mutation == Mutation::BarrierNoticesAsSet {
                        notices.sort_unstable();
                        notices.dedup();
                    }
                    self.barrier_done(node, epoch, &notices)?
                }
                Action::BarrierRefused { epoch } => {
                    return Err(self.invariant(format!(
                        "node {node} refused barrier {epoch}, which every node entered from the \
                         same call"
                    )));
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: SyncMsg) -> Result<()> {
        match &message {
            SyncMsg::LockRequest { lock, timestamp } => {
                self.check.ra_message(from, *lock, *timestamp);
                self.report.lock_messages_by_kind[0] += 1;
            }
            SyncMsg::LockReply {
                lock, timestamp, ..
            } => {
                self.check.ra_message(to, *lock, *timestamp);
                self.report.lock_messages_by_kind[0] += 1;
            }
            SyncMsg::BarrierArrive { .. }
            | SyncMsg::BarrierRelease { .. }
            | SyncMsg::BarrierAbort { .. }
            | SyncMsg::BarrierRound { .. } => self.report.barrier_messages += 1,
            _ => self.report.lock_messages_by_kind[1] += 1,
        }
        self.net
            .send(from, to, message)
            .map_err(|error| Error::Net {
                step: self.step,
                node: from,
                error,
            })
    }

    fn granted(&mut self, node: NodeId, lock: u32, notices: &[PageId]) -> Result<()> {
        self.check
            .granted(node, lock, notices)
            .map_err(|d| self.invariant(d))?;
        if self.crashed.is_some() {
            self.report.grants_after_crash += 1;
        }
        let kind = kind_index(self.config.locks[lock as usize]);
        let now = self.net.now();
        let l = &mut self.nodes[node as usize].locks[lock as usize];
        if !l.pending {
            return Err(self.invariant(format!(
                "node {node} granted lock {lock} it did not ask for"
            )));
        }
        l.pending = false;
        l.owned = true;
        l.fresh = true;
        self.report.acquires += 1;
        self.report.acquires_by_kind[kind] += 1;
        self.report.acquire_ticks_by_kind[kind] += now - l.requested_at;
        self.dispatch(node, lock)
    }

    fn barrier_done(&mut self, node: NodeId, epoch: u64, notices: &[PageId]) -> Result<()> {
        if self.told[node as usize] {
            return Ok(()); // Its wait already ended in NodeFailed; it starts no more rounds.
        }
        self.check
            .left(node, epoch, notices)
            .map_err(|d| self.invariant(d))?;
        let now = self.net.now();
        let n = &mut self.nodes[node as usize];
        let Some((_, since_tick)) = n.in_barrier_since.take() else {
            return Err(self.invariant(format!("node {node} left barrier {epoch} it was not in")));
        };
        self.report.barriers += 1;
        self.report.barrier_ticks += now - since_tick;
        n.round += 1;
        self.start_round(node)
    }
}
