//! The properties checked after every step and at the end of a run.

use dsm_core::{Consistency, LocalState};
use dsm_wire::PageId;

use super::memory::{Perm, read_word};
use super::world::{Node, Stage, World};
use crate::error::{Error, Result};

impl World {
    /// After every step: mappings agree with the engines; sequential mode: one writer or many
    /// readers, and every readable copy holds the latest writes; both: no wait over the bound.
    pub(crate) fn check_step(&mut self) -> Result<()> {
        self.check_mappings()?;
        if self.config.consistency == Consistency::Sequential {
            for page in 0..self.config.pages {
                self.check_single_writer(page)?;
                self.check_copies_current(page)?;
            }
        }
        self.check_bounds()
    }

    fn check_mappings(&self) -> Result<()> {
        for (n, node) in self.nodes.iter().enumerate() {
            if self.is_crashed(n) {
                continue; // Its memory died with it.
            }
            for page in 0..self.config.pages {
                let state = node.engine.local_state(PageId { region: 0, page });
                let perm = node.mem.perm(page);
                // Scanned writes: a tracked copy is write-protected and still writable.
                let scanned = node.mem.scan && state == LocalState::Modified;
                let agree = scanned && perm == Perm::Read
                    || matches!(
                        (state, perm),
                        (LocalState::Invalid, Perm::None)
                            | (LocalState::Shared | LocalState::Exclusive, Perm::Read)
                            | (LocalState::Modified, Perm::Write)
                    );
                if !agree {
                    return Err(self.invariant(format!(
                        "node {n} page {page}: engine says {state:?}, mapping is {perm:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// One writer or many readers; or one writer and readers that all map the master, one
    /// page the hardware keeps coherent (a home writing its page while same-host readers map
    /// it).
    fn check_single_writer(&self, page: u32) -> Result<()> {
        let perms: Vec<Perm> = self.survivors().map(|(_, n)| n.mem.perm(page)).collect();
        let writers = perms.iter().filter(|p| **p == Perm::Write).count();
        let readers = perms.iter().filter(|p| **p == Perm::Read).count();
        let all_map_the_master = || {
            self.survivors()
                .all(|(_, n)| n.mem.perm(page) == Perm::None || n.mem.aliased[page as usize])
        };
        if writers > 1 || (writers == 1 && readers > 0 && !all_map_the_master()) {
            return Err(self.invariant(format!(
                "page {page}: {writers} writable and {readers} read-only copies: {perms:?}"
            )));
        }
        Ok(())
    }

    fn check_copies_current(&self, page: u32) -> Result<()> {
        let reference = &self.reference[page as usize];
        for (n, node) in self.survivors() {
            if node.mem.perm(page) == Perm::None {
                continue;
            }
            for word in 0..self.config.words {
                let (seen, want) = (node.mem.read_word(page, word), read_word(reference, word));
                if seen != want {
                    return Err(self.invariant(format!(
                        "node {n} page {page} word {word}: copy holds {seen}, latest write {want}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_bounds(&self) -> Result<()> {
        let bound = self.config.fault_bound;
        for (n, node) in self.survivors() {
            let node_id = u32::try_from(n).expect("fits");
            for thread in &node.threads {
                if let Some(since) = thread.blocked_since
                    && self.step - since > bound
                {
                    return Err(self.stuck(node_id, format!("fault {:?}", thread.op), bound));
                }
            }
            let syncing = matches!(
                node.stage,
                Stage::Releasing | Stage::Arrived | Stage::Acquiring
            );
            if syncing && self.step - node.stage_since > bound {
                return Err(self.stuck(node_id, format!("sync ({:?})", node.stage), bound));
            }
        }
        Ok(())
    }

    fn stuck(&self, node: u32, what: String, bound: u64) -> Error {
        Error::Stuck {
            step: self.step,
            node,
            what,
            bound,
        }
    }

    /// At quiescence: every access and sync finished, nothing in flight, and the memory equals
    /// the reference execution (sequential: the current copy of each page; release: every home
    /// copy after the final barrier, or, with scanned writes, the home's own copy of a page no
    /// other node fetched).
    pub(crate) fn check_end(&self) -> Result<()> {
        let release = self.config.consistency == Consistency::Release;
        let busy = self.survivors().find(|(_, node)| {
            node.threads.iter().any(|t| t.op.is_some()) || (release && node.stage != Stage::Done)
        });
        if let Some((n, node)) = busy {
            return Err(self.invariant(format!(
                "quiescent but node {n} is not done: stage {:?}",
                node.stage
            )));
        }
        if self.net.in_flight() > 0 {
            return Err(self.invariant("quiescent with messages in flight".into()));
        }
        for page in 0..self.config.pages {
            if self.gone_with_crash(page) {
                continue;
            }
            let current = self.current_copy(page);
            if current != &self.reference[page as usize][..] {
                return Err(self.invariant(format!(
                    "page {page}: final contents differ from the reference execution"
                )));
            }
        }
        Ok(())
    }

    /// The nodes that did not crash, with their index.
    fn survivors(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(n, _)| !self.is_crashed(*n))
    }

    /// True when the crashed node took `page` with it: it was the page's home, or the page's
    /// only current copy (lost).
    fn gone_with_crash(&self, page: u32) -> bool {
        let Some(dead) = self.crashed else {
            return false;
        };
        let id = PageId { region: 0, page };
        let home = self.nodes[0].engine.home_of(id).expect("known page");
        home == dead || self.nodes[home as usize].engine.lost_to(id).is_some()
    }

    /// Where the latest contents of `page` are: the writer's copy in sequential mode if there
    /// is one, else the home's master copy.
    fn current_copy(&self, page: u32) -> &[u8] {
        let writer = self
            .survivors()
            .find(|(_, n)| n.mem.perm(page) == Perm::Write);
        match writer {
            Some((_, node)) if self.config.consistency == Consistency::Sequential => {
                &node.mem.local[page as usize][..]
            }
            _ => {
                let id = PageId { region: 0, page };
                let home =
                    &self.nodes[self.nodes[0].engine.home_of(id).expect("known page") as usize];
                if home.mem.scan && home.mem.perm(page) == Perm::Write {
                    // Scanned writes: a home page no other node fetched is written in place
                    // in the home's own copy; its master is published only when fetched.
                    return &home.mem.local[page as usize][..];
                }
                &home.mem.home[page as usize][..]
            }
        }
    }
}
