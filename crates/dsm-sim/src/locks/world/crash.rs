//! A node crash: the crash itself, telling each survivor, and what holds at the end.

use dsm_wire::NodeId;

use super::{Mutation, Thread, World};
use crate::error::Result;

impl World {
    /// Crashes the configured node at its step: what it had in flight is lost, its threads
    /// and timers die with it, and each survivor is scheduled to be told.
    pub(super) fn maybe_crash(&mut self) {
        let Some(crash) = self.config.crash else {
            return;
        };
        if self.crashed.is_some() || self.step < crash.at_step {
            return;
        }
        let dead = crash.node;
        if crash.keep_sent {
            self.net.crash_after_sent(dead);
        } else {
            self.net.crash(dead);
        }
        self.crashed = Some(dead);
        self.report.crashes += 1;
        self.check.crashed(dead);
        let node = &mut self.nodes[dead as usize];
        node.threads.iter_mut().for_each(|t| *t = Thread::Done);
        node.in_barrier_since = None;
        if self.config.mutation == Mutation::NeverTold {
            return;
        }
        let nodes = self.config.nodes;
        self.failure_notices
            .schedule(&crash, nodes, self.step, &mut self.rng);
    }

    /// Tells the next survivor, which then does what the runtime does: its waiting threads
    /// get `NodeFailed` (they leave the local queues), a barrier wait ends the same way, and
    /// its engine stops waiting for the dead node (which may grant it locks nobody local
    /// wants any more: it gives them up).
    pub(super) fn tell_failure(&mut self, survivor: NodeId) -> Result<()> {
        let dead = self.crashed.expect("notices follow the crash");
        let s = survivor as usize;
        self.told[s] = true;
        let node = &mut self.nodes[s];
        for thread in &mut node.threads {
            if let Thread::Waiting { .. } = thread {
                *thread = Thread::Done;
                self.report.failed_waits += 1;
            }
        }
        for lock in &mut node.locks {
            lock.queue.clear();
        }
        if node.in_barrier_since.take().is_some() {
            self.report.failed_waits += 1;
        }
        let mut out = Vec::new();
        let result = self.nodes[s].engine.node_failed(dead, &mut out);
        self.engine_result(survivor, result)?;
        self.apply(survivor, out)?;
        for lock in 0..self.config.locks.len() {
            self.dispatch(survivor, u32::try_from(lock).expect("few locks"))?;
        }
        Ok(())
    }

    /// At the end of a crash run: every survivor was told and has nothing in progress, and no
    /// lock is owned or held (the lock of a home-queue home that died is never granted).
    pub(super) fn check_end_after_crash(&self) -> Result<()> {
        let dead = self.crashed.expect("a crash run");
        for (n, node) in self.nodes.iter().enumerate() {
            let survivor = NodeId::try_from(n).expect("node") != dead;
            let busy = node.threads.iter().any(|t| *t != Thread::Done);
            if survivor && (!self.told[n] || busy || node.in_barrier_since.is_some()) {
                return Err(self.invariant(format!(
                    "survivor {n} not done at the end: told {}, threads {:?}",
                    self.told[n], node.threads
                )));
            }
        }
        self.check.end_after_crash().map_err(|d| self.invariant(d))
    }
}
