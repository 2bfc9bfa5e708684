//! A node crash in a sequential run: the crash itself, telling each survivor, and the check
//! that a fault fails only when it needs the dead node.

use dsm_core::Error as EngineError;
use dsm_wire::{NodeId, PageId};

use super::World;
use crate::error::Result;

impl World {
    pub(crate) fn is_crashed(&self, n: usize) -> bool {
        self.crashed.is_some_and(|c| c as usize == n)
    }

    /// Crashes the configured node at its step: its threads die with it, and each survivor
    /// is scheduled to be told within `notice_within` steps.
    pub(super) fn maybe_crash(&mut self) -> Result<()> {
        let Some(crash) = self.config.crash else {
            return Ok(());
        };
        if self.crashed.is_some() || self.step < crash.at_step {
            return Ok(());
        }
        if crash.keep_sent {
            self.net.crash_after_sent(crash.node);
        } else {
            self.net.crash(crash.node);
        }
        self.crashed = Some(crash.node);
        self.report.crashes += 1;
        for thread in &mut self.nodes[crash.node as usize].threads {
            thread.op = None;
            thread.blocked_since = None;
        }
        let nodes = self.config.nodes;
        self.failure_notices
            .schedule(&crash, nodes, self.step, &mut self.rng);
        Ok(())
    }

    /// Tells `survivor` that the crashed node failed. As home, the pages it sees writable on
    /// the dead node at that moment are the only ones that may be lost.
    pub(super) fn tell_failure(&mut self, survivor: NodeId) -> Result<()> {
        let dead = self.crashed.expect("notices follow the crash");
        let n = survivor as usize;
        for page in 0..self.config.pages {
            let id = PageId { region: 0, page };
            if self.nodes[n].engine.home_writer(id) == Some(dead) {
                self.may_be_lost.insert(page);
            }
        }
        let node = &mut self.nodes[n];
        let result = node.engine.node_failed(dead, &mut node.mem);
        self.engine_result(n, result)?;
        self.apply(n)
    }

    /// A fault of node `n` failed: it must have needed the dead node; its thread gives up the
    /// access (the runtime's process would exit naming the page and the node).
    pub(super) fn fault_failed(&mut self, n: usize, token: u64, error: &EngineError) -> Result<()> {
        let dead = self.crashed;
        let needed_dead = match *error {
            EngineError::HomeFailed { page, home } => {
                Some(home) == dead && self.nodes[n].engine.home_of(page).ok() == Some(home)
            }
            EngineError::PageLost { page, writer } => {
                self.report.lost_faults += 1;
                Some(writer) == dead && self.may_be_lost.contains(&page.page)
            }
            _ => false,
        };
        if !needed_dead {
            return Err(self.invariant(format!(
                "node {n}: a fault that needs no dead node failed: {error}"
            )));
        }
        let thread = self.nodes[n]
            .threads
            .iter_mut()
            .find(|t| t.op.is_some() && t.blocked_since.is_some() && t.token == token);
        let Some(thread) = thread else {
            return Err(self.invariant(format!("node {n}: failed fault of unknown token {token}")));
        };
        thread.op = None;
        thread.blocked_since = None;
        self.report.failed_faults += 1;
        Ok(())
    }
}
