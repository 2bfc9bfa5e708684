//! Each node's local policy, as `dsm_locks::LockTable` applies it: threads queue per lock,
//! the node requests once for all of them, hands the lock between its threads, and gives it
//! up when nobody local waits or a remote node has waited through `handoff_bound` handoffs.

use dsm_wire::{NodeId, PageId};

use super::{Mutation, Thread, Timer, World};
use crate::error::Result;

impl World {
    /// A thread leaves its critical section, writing a few pages guarded by the lock.
    pub(super) fn leave(&mut self, node: NodeId, thread: u32) -> Result<()> {
        let Thread::Holding { lock } = self.nodes[node as usize].threads[thread as usize] else {
            return Err(self.invariant(format!(
                "leave timer for a thread of node {node} that holds nothing"
            )));
        };
        self.check
            .leave(node, thread, lock)
            .map_err(|d| self.invariant(d))?;
        let written: Vec<PageId> = (0..self.rng.range(0, 2))
            .map(|_| PageId {
                region: lock,
                page: u32::try_from(self.rng.below(4)).expect("page"),
            })
            .collect();
        let n = &mut self.nodes[node as usize];
        n.locks[lock as usize]
            .written
            .extend(written.iter().copied());
        n.interval.extend(written);
        n.locks[lock as usize].holder = None;
        n.sections_left[thread as usize] -= 1;
        if n.sections_left[thread as usize] > 0 {
            n.threads[thread as usize] = Thread::Thinking;
            let think = self.rng.range(0, self.config.max_think);
            self.set_timer(think, Timer::Think { node, thread });
        } else {
            n.threads[thread as usize] = Thread::Done;
        }
        self.dispatch(node, lock)?;
        self.maybe_enter_barrier(node)
    }

    /// The local policy: hand the lock to the next local thread, give it up, or ask for it.
    pub(super) fn dispatch(&mut self, node: NodeId, lock: u32) -> Result<()> {
        let bound = self.config.handoff_bound;
        let l = &mut self.nodes[node as usize].locks[lock as usize];
        if l.holder.is_some() || l.pending {
            return Ok(());
        }
        if !l.owned {
            if l.queue.is_empty() {
                return Ok(());
            }
            l.pending = true;
            l.requested_at = self.net.now();
            let mut out = Vec::new();
            let result = self.nodes[node as usize].engine.acquire(lock, &mut out);
            self.engine_result(node, result)?;
            return self.apply(node, out);
        }
        let yield_to_remote = l.remote && l.handoffs >= bound;
        match l.queue.front() {
            Some(&thread) if !yield_to_remote => {
                l.queue.pop_front();
                if l.remote {
                    l.handoffs += 1;
                }
                self.enter(node, thread, lock)
            }
            _ => self.release(node, lock),
        }
    }

    fn enter(&mut self, node: NodeId, thread: u32, lock: u32) -> Result<()> {
        let n = &mut self.nodes[node as usize];
        let l = &mut n.locks[lock as usize];
        if !std::mem::take(&mut l.fresh) {
            self.report.local_handoffs += 1;
        }
        l.holder = Some(thread);
        n.threads[thread as usize] = Thread::Holding { lock };
        self.report.sections += 1;
        self.check
            .enter(node, thread, lock)
            .map_err(|d| self.invariant(d))?;
        let hold = self.rng.range(0, self.config.max_hold);
        self.set_timer(hold, Timer::Leave { node, thread });
        Ok(())
    }

    fn release(&mut self, node: NodeId, lock: u32) -> Result<()> {
        let l = &mut self.nodes[node as usize].locks[lock as usize];
        let written = std::mem::take(&mut l.written);
        l.owned = false;
        l.remote = false;
        l.handoffs = 0;
        self.check
            .released(node, lock, &written)
            .map_err(|d| self.invariant(d))?;
        let notices = match self.config.mutation {
            Mutation::ForgetNotices => Vec::new(),
            _ => written.into_iter().collect(),
        };
        let mut out = Vec::new();
        let result = self.nodes[node as usize]
            .engine
            .release(lock, notices, &mut out);
        self.engine_result(node, result)?;
        self.apply(node, out)?;
        // Threads may have queued meanwhile: ask again.
        self.dispatch(node, lock)
    }

    pub(super) fn maybe_enter_barrier(&mut self, node: NodeId) -> Result<()> {
        let told = self.told[node as usize];
        let n = &mut self.nodes[node as usize];
        if told // After a failure the runtime's barriers fail at once.
            || n.in_barrier_since.is_some()
            || n.threads.iter().any(|t| *t != Thread::Done)
            || n.round >= self.config.rounds
        {
            return Ok(());
        }
        n.in_barrier_since = Some((self.step, self.net.now()));
        let notices: Vec<PageId> = std::mem::take(&mut n.interval).into_iter().collect();
        let epoch = n.barrier.epoch();
        self.check
            .arrive(node, epoch, &notices)
            .map_err(|d| self.invariant(d))?;
        // As the runtime's barriers, allocations and frees: every node the same call.
        let kind = u32::try_from(epoch % 3).expect("below 3");
        let mut out = Vec::new();
        let result = self.nodes[node as usize]
            .barrier
            .arrive(kind, notices, &mut out);
        self.engine_result(node, result)?;
        self.apply(node, out)
    }
}
