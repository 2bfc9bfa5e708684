//! Applying an engine's actions as a node's driver would: sends onto the simulated network,
//! installs and protections into the node's memory, wakes, and the barrier built on syncs.

use std::collections::BTreeSet;

use dsm_core::{Action, Consistency};
use dsm_wire::{Coherence, NodeId, PageId};

use super::super::memory::{POISON, Perm};
use super::super::workload::Op;
use super::{SYNC_TOKEN, Stage, Wire, World};
use crate::error::Result;

impl World {
    /// Like the runtime's barrier, each node is sent the notices of the *other* nodes: a page
    /// only it wrote stays valid (and, homed there, writable) across the barrier.
    pub(super) fn barrier_arrive(&mut self, from: NodeId, notices: Vec<PageId>) -> Result<()> {
        self.arrived += 1;
        self.arrived_notices
            .extend(notices.into_iter().map(|page| (from, page)));
        if self.arrived < self.config.nodes {
            return Ok(());
        }
        self.arrived = 0;
        self.report.barriers += 1;
        let all = std::mem::take(&mut self.arrived_notices);
        for to in 0..self.config.nodes {
            let notices: BTreeSet<PageId> = all
                .iter()
                .filter(|(writer, _)| *writer != to)
                .map(|(_, page)| *page)
                .collect();
            let notices = notices.into_iter().collect();
            self.send(0, to, Wire::BarrierRelease { notices })?;
        }
        Ok(())
    }

    /// Applies every action of node `n`'s engine in order, then runs the woken threads, then
    /// polls for held work, until the engine has nothing left.
    pub(super) fn apply(&mut self, n: usize) -> Result<()> {
        for _ in 0..10_000 {
            let mut actions = self.nodes[n].engine.take_actions();
            if actions.is_empty() && self.nodes[n].engine.has_deferred() {
                let node = &mut self.nodes[n];
                let result = node.engine.poll(&mut node.mem);
                self.engine_result(n, result)?;
                actions = self.nodes[n].engine.take_actions();
            }
            if actions.is_empty() {
                self.show_masters();
                return Ok(());
            }
            let mut woken = Vec::new();
            for action in actions {
                if let Some(token) = self.apply_one(n, action)? {
                    woken.push(token);
                }
            }
            self.complete_reads_at_once(n)?;
            // The engine may have written masters (a write-back stored, a page given back):
            // whoever maps them sees it.
            self.show_masters();
            for token in woken {
                self.wake(n, token)?;
            }
        }
        Err(self.invariant(format!("node {n}: actions did not settle")))
    }

    /// The kernel installs only into a page that is not mapped (`UFFDIO_COPY` and
    /// `UFFDIO_CONTINUE` fail with `EEXIST` on a mapped one), so an engine that installs over
    /// its own copy asks the runtime for something it cannot do as asked.
    fn refuse_install_over_mapped(&self, n: usize, i: usize) -> Result<()> {
        match self.nodes[n].mem.perm[i] {
            Perm::None => Ok(()),
            perm => Err(self.invariant(format!(
                "node {n}: install of page {i}, which is mapped {perm:?} already"
            ))),
        }
    }

    /// Applies one action; returns the token of a thread to wake.
    fn apply_one(&mut self, n: usize, action: Action) -> Result<Option<u64>> {
        let node_id = u32::try_from(n).expect("fits");
        let mem = &mut self.nodes[n].mem;
        match action {
            Action::Send { to, message } => {
                if let Coherence::DiffBatch { diffs, .. } = &message {
                    self.report.diffs += diffs.len() as u64;
                }
                self.send(node_id, to, Wire::Coherence(message))?;
            }
            Action::WriteMaster { home, page, data } => {
                // The runtime's same-host write-back: into the home's master at once (a dead
                // home's masters stay mapped, so they are written all the same).
                self.report.masters_written += 1;
                self.nodes[home as usize].mem.home[page.page as usize] = data;
            }
            Action::MergeMaster { home, diff } => {
                // The runtime's same-host diff: its bytes into the home's master at once.
                self.report.diffs_merged_in_place += 1;
                let master = &mut self.nodes[home as usize].mem.home[diff.page.page as usize];
                for run in &diff.runs {
                    let at = usize::from(run.offset);
                    let end = at + run.bytes.len();
                    let Some(bytes) = master.get_mut(at..end) else {
                        return Err(self.invariant(format!("node {n}: a diff run past its page")));
                    };
                    bytes.copy_from_slice(&run.bytes);
                }
            }
            Action::ReadPage { home, page, token } => {
                self.report.one_sided_reads += 1;
                if self.config.pairs.reads_at_once(node_id, home) {
                    self.read_at_once(n, home, page, token)?;
                } else {
                    let page = page.page;
                    self.send(node_id, home, Wire::ReadRequest { page, token })?;
                }
            }
            Action::Install {
                page,
                data,
                writable,
            } => {
                let i = page.page as usize;
                let release = self.config.consistency == Consistency::Release;
                if release && !self.nodes[n].installed_in_phase.insert(page.page) {
                    return Err(self.invariant(format!(
                        "node {n}: page {i} fetched twice in one phase (ping-pong)"
                    )));
                }
                self.refuse_install_over_mapped(n, i)?;
                let mem = &mut self.nodes[n].mem;
                mem.local[i] = data;
                mem.perm[i] = if writable { Perm::Write } else { Perm::Read };
                mem.written[i] = false;
                // A mapped master takes the installed data (the runtime's compare-and-write).
                self.write_through(n, page.page);
                self.run_unblocked(n, page.page)?;
            }
            Action::MapMaster { page, writable } => {
                // The runtime's `UFFDIO_CONTINUE` of the master this copy is.
                let i = page.page as usize;
                if !self.nodes[n].mem.aliased[i] {
                    return Err(self.invariant(format!(
                        "node {n}: page {i} mapped from its master, which it does not map"
                    )));
                }
                self.refuse_install_over_mapped(n, i)?;
                self.report.masters_mapped += 1;
                let master = self.nodes[self.home_of(page.page)].mem.home[i].clone();
                let mem = &mut self.nodes[n].mem;
                mem.local[i] = master;
                mem.perm[i] = if writable { Perm::Write } else { Perm::Read };
                mem.written[i] = false;
                self.run_unblocked(n, page.page)?;
            }
            Action::Upgrade { page } => {
                let i = page.page as usize;
                if mem.perm[i] != Perm::Read {
                    let perm = mem.perm[i];
                    return Err(self.invariant(format!(
                        "node {n}: upgrade of page {i} mapped {perm:?}, not read-only"
                    )));
                }
                mem.perm[i] = Perm::Write;
                self.report.upgrades += 1;
                self.run_unblocked(n, page.page)?;
            }
            Action::Invalidate { page } => {
                self.report.invalidations += 1;
                let i = page.page as usize;
                mem.perm[i] = Perm::None;
                mem.written[i] = false;
                mem.local[i].fill(POISON);
            }
            Action::MakeTwin { page } => {
                self.report.twins += 1;
                let i = page.page as usize;
                mem.twin[i] = Some(mem.local[i].clone());
            }
            Action::Twin { page, data } => {
                self.report.twins += 1;
                mem.twin[page.page as usize] = Some(data);
            }
            Action::DropTwin { page } => mem.twin[page.page as usize] = None,
            Action::Wake { token } => return Ok(Some(token)),
            Action::FaultFailed { token, error } => self.fault_failed(n, token, &error)?,
            Action::SyncDone { token, notices } => self.sync_done(n, token, notices)?,
        }
        Ok(None)
    }

    /// The runtime's same-host read: `home`'s master copies are mapped here, so the page is
    /// copied right as the action is applied; the engine is told once the whole batch is
    /// applied ([`complete_reads_at_once`](Self::complete_reads_at_once)), as it wants a
    /// batch applied whole before its next call. A dead home's masters stay mapped (the memfd
    /// outlives its process), so they are read all the same.
    fn read_at_once(&mut self, n: usize, home: NodeId, page: PageId, token: u64) -> Result<()> {
        self.report.reads_at_once += 1;
        let data = self.nodes[home as usize].mem.home[page.page as usize].clone();
        self.nodes[n].read_at_once.push((token, data));
        Ok(())
    }

    /// Gives node `n`'s engine the pages read at once during the batch just applied.
    fn complete_reads_at_once(&mut self, n: usize) -> Result<()> {
        for (token, data) in std::mem::take(&mut self.nodes[n].read_at_once) {
            let node = &mut self.nodes[n];
            let result = node.engine.on_page_read(token, data, &mut node.mem);
            self.engine_result(n, result)?;
        }
        Ok(())
    }

    /// Node `n`'s copy of `page` changed: if it is a mapped master, the master holds the same
    /// bytes, and so does every other copy mapping it.
    pub(super) fn write_through(&mut self, n: usize, page: u32) {
        let i = page as usize;
        if !self.nodes[n].mem.aliased[i] {
            return;
        }
        let home = self.home_of(page);
        let data = self.nodes[n].mem.local[i].clone();
        self.nodes[home].mem.home[i] = data;
        self.show_masters();
    }

    /// Every mapped master's bytes in the copies that map it (mapped: not invalidated).
    pub(super) fn show_masters(&mut self) {
        if !self.config.map_masters {
            return;
        }
        for page in 0..self.config.pages {
            let i = page as usize;
            let home = self.home_of(page);
            for n in 0..self.nodes.len() {
                let mem = &self.nodes[n].mem;
                if mem.aliased[i]
                    && mem.perm[i] != Perm::None
                    && mem.local[i] != self.nodes[home].mem.home[i]
                {
                    let master = self.nodes[home].mem.home[i].clone();
                    self.nodes[n].mem.local[i] = master;
                }
            }
        }
    }

    fn home_of(&self, page: u32) -> usize {
        let layout = dsm_core::RegionLayout {
            id: 0,
            pages: self.config.pages,
            consistency: self.config.consistency,
            placement: self.config.placement,
            prefetch: self.config.prefetch,
        };
        layout.home_of(page, self.config.nodes) as usize
    }

    /// Like the kernel (`UFFDIO_COPY` and write-unprotect wake the faulting threads), an
    /// install or upgrade lets blocked threads whose access it now allows run at once, before
    /// the rest of the actions are applied. Their `Wake` comes later and is then a no-op.
    fn run_unblocked(&mut self, n: usize, page: u32) -> Result<()> {
        let perm = self.nodes[n].mem.perm(page);
        for t in 0..self.nodes[n].threads.len() {
            let thread = &self.nodes[n].threads[t];
            let Some(op) = thread.op.filter(|op| op.page() == page) else {
                continue;
            };
            let allowed = match op {
                Op::Read { .. } => perm != Perm::None,
                Op::Write { .. } => self.nodes[n].mem.writable(page),
            };
            if thread.blocked_since.is_some() && allowed {
                let token = thread.token;
                self.nodes[n].ran_early.insert(token);
                self.execute(n, t, op)?;
            }
        }
        Ok(())
    }

    fn wake(&mut self, n: usize, token: u64) -> Result<()> {
        if self.nodes[n].ran_early.remove(&token) {
            return self.advance_stage(n);
        }
        let thread = self.nodes[n]
            .threads
            .iter()
            .position(|t| t.op.is_some() && t.blocked_since.is_some() && t.token == token);
        let Some(t) = thread else {
            return Err(self.invariant(format!("node {n}: wake of unknown token {token}")));
        };
        self.try_op(n, t)?;
        self.advance_stage(n)
    }

    fn sync_done(&mut self, n: usize, token: u64, notices: Vec<PageId>) -> Result<()> {
        if token != SYNC_TOKEN {
            return Err(self.invariant(format!("node {n}: sync done for token {token}")));
        }
        let node = &mut self.nodes[n];
        node.stage_since = self.step;
        match node.stage {
            Stage::Releasing => {
                // Home pages published in place stay writable into the next phase.
                let pages = u32::try_from(node.mem.perm.len()).expect("fits");
                let kept = (0..pages)
                    .filter(|p| node.mem.perm(*p) == Perm::Write)
                    .count();
                self.report.kept_writable += kept as u64;
                let node = &mut self.nodes[n];
                node.stage = Stage::Arrived;
                let from = u32::try_from(n).expect("fits");
                self.send(from, 0, Wire::BarrierArrive { notices })
            }
            Stage::Acquiring => {
                node.phase += 1;
                node.installed_in_phase.clear();
                node.stage = if node.phase >= self.final_phase {
                    Stage::Done
                } else {
                    let left = if self.draining {
                        0
                    } else {
                        self.config.ops_per_phase
                    };
                    Stage::Working { left }
                };
                self.advance_stage(n)
            }
            stage => Err(self.invariant(format!("node {n}: sync done in stage {stage:?}"))),
        }
    }

    /// Release mode: a node that finished its accesses releases (barrier arrival).
    pub(crate) fn advance_stage(&mut self, n: usize) -> Result<()> {
        let release = self.release_mode();
        let node = &mut self.nodes[n];
        let idle = node.threads.iter().all(|t| t.op.is_none());
        if !release || node.stage != (Stage::Working { left: 0 }) || !idle {
            return Ok(());
        }
        node.stage = Stage::Releasing;
        node.stage_since = self.step;
        let result = node.engine.release(SYNC_TOKEN, &mut node.mem);
        self.engine_result(n, result)?;
        self.apply(n)
    }
}
