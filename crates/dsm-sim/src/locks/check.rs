//! What the lock simulation checks, fed by the world as events happen.

use std::collections::{BTreeMap, BTreeSet};

use dsm_wire::{NodeId, PageId};

/// The checker's state; each method returns a violation's description.
#[derive(Debug)]
pub(super) struct Checker {
    nodes: u32,
    handoff_bound: u32,
    /// Engine-level owner per lock.
    owner: Vec<Option<NodeId>>,
    /// Thread-level holder per lock.
    holder: Vec<Option<(NodeId, u32)>>,
    /// `stale[node][lock]`: pages others released under the lock since `node` last held it.
    stale: Vec<Vec<BTreeSet<PageId>>>,
    /// `handoffs[node][lock]`: thread grants since a remote waiter was reported.
    handoffs: Vec<Vec<Option<u32>>>,
    /// Per open barrier epoch: nodes arrived, their notices, nodes left.
    barriers: BTreeMap<u64, (BTreeSet<NodeId>, Vec<PageId>, u32)>,
    /// Ricart–Agrawala messages per acquire, keyed by (requester, lock, timestamp).
    ra_messages: BTreeMap<(NodeId, u32, u64), u64>,
    /// A node crashed: notices it carried may be lost with it.
    crashed: bool,
}

type Check = std::result::Result<(), String>;

impl Checker {
    pub(super) fn new(nodes: u32, locks: usize, handoff_bound: u32) -> Self {
        let n = nodes as usize;
        Checker {
            nodes,
            handoff_bound,
            owner: vec![None; locks],
            holder: vec![None; locks],
            stale: vec![vec![BTreeSet::new(); locks]; n],
            handoffs: vec![vec![None; locks]; n],
            barriers: BTreeMap::new(),
            ra_messages: BTreeMap::new(),
            crashed: false,
        }
    }

    /// `node` crashed: what it owned or held is void (nobody will see it again), and from now
    /// on notices may be lost (those it held, or carried in messages lost with it).
    pub(super) fn crashed(&mut self, node: NodeId) {
        self.crashed = true;
        for owner in &mut self.owner {
            if *owner == Some(node) {
                *owner = None;
            }
        }
        for holder in &mut self.holder {
            if holder.is_some_and(|(n, _)| n == node) {
                *holder = None;
            }
        }
    }

    /// At the end of a crash run: no lock is owned or held. (Message counts and barriers are
    /// not checked: the dead node's share is missing from both.)
    pub(super) fn end_after_crash(&self) -> Check {
        if self.owner.iter().any(Option::is_some) || self.holder.iter().any(Option::is_some) {
            return Err(format!("locks still owned at the end: {:?}", self.owner));
        }
        Ok(())
    }

    /// The engine granted `lock` to `node` with `notices`.
    pub(super) fn granted(&mut self, node: NodeId, lock: u32, notices: &[PageId]) -> Check {
        let l = lock as usize;
        if let Some(other) = self.owner[l] {
            return Err(format!(
                "lock {lock} granted to node {node} while node {other} owns it"
            ));
        }
        self.owner[l] = Some(node);
        let got: BTreeSet<PageId> = notices.iter().copied().collect();
        let expected = std::mem::take(&mut self.stale[node as usize][l]);
        // After a crash, notices the dead node carried may be missing, never extra ones.
        let lost_some = self.crashed && got.is_subset(&expected);
        if got != expected && !lost_some {
            return Err(format!(
                "lock {lock} granted to node {node} with notices {got:?}, expected {expected:?}"
            ));
        }
        Ok(())
    }

    /// `node` gave `lock` up after writing `written` (what it really wrote).
    pub(super) fn released(
        &mut self,
        node: NodeId,
        lock: u32,
        written: &BTreeSet<PageId>,
    ) -> Check {
        let l = lock as usize;
        if self.owner[l] != Some(node) {
            return Err(format!(
                "node {node} released lock {lock} owned by {:?}",
                self.owner[l]
            ));
        }
        self.owner[l] = None;
        self.handoffs[node as usize][l] = None;
        for (other, stale) in self.stale.iter_mut().enumerate() {
            if other != node as usize {
                stale[l].extend(written.iter().copied());
            }
        }
        Ok(())
    }

    /// A remote node waits for `lock`, which `node` owns or will own first.
    pub(super) fn remote_waiting(&mut self, node: NodeId, lock: u32) {
        self.handoffs[node as usize][lock as usize].get_or_insert(0);
    }

    /// A thread of `node` enters `lock`'s critical section.
    pub(super) fn enter(&mut self, node: NodeId, thread: u32, lock: u32) -> Check {
        let l = lock as usize;
        if self.owner[l] != Some(node) {
            return Err(format!(
                "thread {thread} of node {node} entered lock {lock} its node does not own"
            ));
        }
        if let Some((n, t)) = self.holder[l] {
            return Err(format!(
                "thread {thread} of node {node} entered lock {lock} held by thread {t} of node {n}"
            ));
        }
        self.holder[l] = Some((node, thread));
        if let Some(count) = &mut self.handoffs[node as usize][l] {
            *count += 1;
            if *count > self.handoff_bound {
                return Err(format!(
                    "node {node} handed lock {lock} to its threads {count} times while a remote node waited (bound {})",
                    self.handoff_bound
                ));
            }
        }
        Ok(())
    }

    /// The thread holding `lock` leaves.
    pub(super) fn leave(&mut self, node: NodeId, thread: u32, lock: u32) -> Check {
        let l = lock as usize;
        if self.holder[l] != Some((node, thread)) {
            return Err(format!(
                "thread {thread} of node {node} left lock {lock} it did not hold"
            ));
        }
        self.holder[l] = None;
        Ok(())
    }

    /// `node` arrived at barrier `epoch` with `notices`.
    pub(super) fn arrive(&mut self, node: NodeId, epoch: u64, notices: &[PageId]) -> Check {
        let entry = self.barriers.entry(epoch).or_default();
        if !entry.0.insert(node) {
            return Err(format!("node {node} arrived twice at barrier {epoch}"));
        }
        entry.1.extend(notices.iter().copied());
        Ok(())
    }

    /// `node` left barrier `epoch` with `notices`.
    pub(super) fn left(&mut self, node: NodeId, epoch: u64, notices: &[PageId]) -> Check {
        let nodes = self.nodes;
        let Some((arrived, all, left)) = self.barriers.get_mut(&epoch) else {
            return Err(format!(
                "node {node} left barrier {epoch} nobody arrived at"
            ));
        };
        if arrived.len() != nodes as usize {
            return Err(format!(
                "node {node} left barrier {epoch} early: only {arrived:?} arrived"
            ));
        }
        // Every node's notices, a page two nodes wrote as often as they did (each node
        // drops its own once and must still invalidate the others' writes).
        let mut got = notices.to_vec();
        got.sort_unstable();
        all.sort_unstable();
        if got != *all {
            return Err(format!(
                "node {node} left barrier {epoch} with {got:?}, expected {all:?}"
            ));
        }
        *left += 1;
        if *left == nodes {
            self.barriers.remove(&epoch);
        }
        Ok(())
    }

    /// A Ricart–Agrawala REQUEST or REPLY of the acquire `(requester, lock, timestamp)`.
    pub(super) fn ra_message(&mut self, requester: NodeId, lock: u32, timestamp: u64) {
        *self
            .ra_messages
            .entry((requester, lock, timestamp))
            .or_default() += 1;
    }

    /// At the end: every Ricart–Agrawala acquire cost exactly 2(N−1) messages, and there were
    /// `acquires` of them; nothing is owned, held or open.
    pub(super) fn end(&self, ra_acquires: u64) -> Check {
        let expected = 2 * u64::from(self.nodes - 1);
        if let Some((key, count)) = self.ra_messages.iter().find(|(_, c)| **c != expected) {
            return Err(format!(
                "Ricart–Agrawala acquire {key:?} cost {count} messages, not {expected}"
            ));
        }
        if self.ra_messages.len() as u64 != ra_acquires && self.nodes > 1 {
            return Err(format!(
                "{} Ricart–Agrawala requests for {ra_acquires} acquires",
                self.ra_messages.len()
            ));
        }
        if self.owner.iter().any(Option::is_some) || self.holder.iter().any(Option::is_some) {
            return Err(format!("locks still owned at the end: {:?}", self.owner));
        }
        if !self.barriers.is_empty() {
            return Err(format!(
                "barriers still open at the end: {:?}",
                self.barriers.keys()
            ));
        }
        Ok(())
    }
}
