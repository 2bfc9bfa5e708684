//! The lock engine of one node: every lock's algorithm state, one Lamport clock, no I/O.

use std::collections::{BTreeSet, HashMap};

use dsm_wire::{NodeId, PageId, SyncMsg};

use crate::home::HomeLock;
use crate::ra::RaLock;
use crate::{Action, Error, LockKind, Result};

/// Default bound on distinct locks with state at one node.
pub const DEFAULT_MAX_LOCKS: usize = 1 << 16;

/// What an algorithm needs from the engine while it handles one event.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) me: NodeId,
    pub(crate) nodes: u32,
    pub(crate) clock: &'a mut u64,
    pub(crate) out: &'a mut Vec<Action>,
    /// Nodes declared failed: no longer asked, no longer waited for.
    pub(crate) failed: &'a BTreeSet<NodeId>,
}

impl Ctx<'_> {
    pub(crate) fn send(&mut self, to: NodeId, message: SyncMsg) {
        self.out.push(Action::Send { to, message });
    }
}

#[derive(Debug, Clone)]
enum LockState {
    Ra(RaLock),
    Home(HomeLock),
}

/// Sans-IO distributed locks for one node: feed it local acquires and releases and the peers'
/// lock messages; it appends [`Action`]s for the driver. One outstanding request per lock and
/// node: the driver (see [`LockTable`](crate::LockTable)) queues the node's threads locally.
#[derive(Debug, Clone)]
pub struct LockEngine {
    me: NodeId,
    nodes: u32,
    clock: u64,
    default_kind: LockKind,
    kinds: HashMap<u32, LockKind>,
    locks: HashMap<u32, LockState>,
    max_locks: usize,
    failed: BTreeSet<NodeId>,
}

impl LockEngine {
    /// The engine of node `me` in a cluster of `nodes`; locks use `default_kind` unless
    /// [`set_kind`](Self::set_kind) says otherwise. Panics if `me >= nodes` (a programming
    /// error of the caller, who knows the cluster).
    pub fn new(me: NodeId, nodes: u32, default_kind: LockKind) -> Self {
        assert!(me < nodes, "node {me} outside a cluster of {nodes}");
        LockEngine {
            me,
            nodes,
            clock: 0,
            default_kind,
            kinds: HashMap::new(),
            locks: HashMap::new(),
            max_locks: DEFAULT_MAX_LOCKS,
            failed: BTreeSet::new(),
        }
    }

    /// Bounds the number of distinct locks that peers' messages may create state for
    /// (default [`DEFAULT_MAX_LOCKS`]); this node's own acquires are bounded by its driver.
    pub fn with_max_locks(mut self, max_locks: usize) -> Self {
        self.max_locks = max_locks;
        self
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Cluster size.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// Chooses the algorithm of `lock`; every node must choose the same. Fails if the lock is
    /// in use here with another kind.
    pub fn set_kind(&mut self, lock: u32, kind: LockKind) -> Result<()> {
        if self.kind(lock) == kind {
            return Ok(());
        }
        let idle = match self.locks.get(&lock) {
            Some(LockState::Ra(l)) => l.is_idle(),
            Some(LockState::Home(l)) => l.is_idle(),
            None => true,
        };
        if !idle {
            return Err(Error::KindInUse(lock));
        }
        self.locks.remove(&lock);
        self.kinds.insert(lock, kind);
        Ok(())
    }

    /// The algorithm of `lock`.
    pub fn kind(&self, lock: u32) -> LockKind {
        self.kinds.get(&lock).copied().unwrap_or(self.default_kind)
    }

    /// Starts this node's request for `lock`; [`Action::Granted`] follows (maybe at once).
    pub fn acquire(&mut self, lock: u32, out: &mut Vec<Action>) -> Result<()> {
        let (state, mut cx) = self.state(lock, out, false)?;
        match state {
            LockState::Ra(l) => l.acquire(&mut cx),
            LockState::Home(l) => l.acquire(&mut cx),
        }
    }

    /// Ends this node's hold of `lock`; `notices` are the pages the node wrote (its diffs
    /// already flushed to their homes), carried to later acquirers.
    pub fn release(
        &mut self,
        lock: u32,
        notices: Vec<PageId>,
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let (state, mut cx) = self.state(lock, out, false)?;
        match state {
            LockState::Ra(l) => l.release(&notices, &mut cx),
            LockState::Home(l) => l.release(notices, &mut cx),
        }
    }

    /// Handles a lock message from `from`. A message the protocol does not allow here is
    /// rejected with a typed error and changes nothing.
    pub fn on_message(&mut self, from: NodeId, msg: &SyncMsg, out: &mut Vec<Action>) -> Result<()> {
        if from >= self.nodes || from == self.me {
            return Err(Error::UnknownNode {
                node: from,
                nodes: self.nodes,
            });
        }
        if self.failed.contains(&from) {
            return Err(Error::NodeFailed(from));
        }
        let (lock, kind) = match msg {
            SyncMsg::LockRequest { lock, .. } | SyncMsg::LockReply { lock, .. } => {
                (*lock, LockKind::RicartAgrawala)
            }
            SyncMsg::LockAcquire { lock, .. }
            | SyncMsg::LockGrant { lock, .. }
            | SyncMsg::LockRelease { lock, .. }
            | SyncMsg::LockRecall { lock, .. } => (*lock, LockKind::HomeQueue),
            SyncMsg::BarrierArrive { .. }
            | SyncMsg::BarrierRelease { .. }
            | SyncMsg::BarrierAbort { .. }
            | SyncMsg::BarrierRound { .. } => {
                return Err(Error::NotForEngine("barrier"));
            }
        };
        if self.kind(lock) != kind {
            return Err(Error::WrongKind {
                lock,
                kind: self.kind(lock),
                from,
            });
        }
        let fresh = !self.locks.contains_key(&lock);
        let (state, mut cx) = self.state(lock, out, true)?;
        let handled = match (state, msg) {
            (LockState::Ra(l), SyncMsg::LockRequest { timestamp, .. }) => {
                l.on_request(from, *timestamp, &mut cx)
            }
            (
                LockState::Ra(l),
                SyncMsg::LockReply {
                    timestamp, notices, ..
                },
            ) => l.on_reply(from, *timestamp, notices, &mut cx),
            (LockState::Home(l), msg) => l.on_message(from, msg, &mut cx),
            (LockState::Ra(_), _) => unreachable!("kind checked above"),
        };
        if handled.is_err() && fresh {
            // A rejected message changes nothing, not even the count of locks peers made
            // state for (else rejected messages could use up `max_locks`).
            self.locks.remove(&lock);
        }
        handled
    }

    /// `node` failed (the runtime saw its connection close or its heartbeats stop). From now
    /// on nobody waits for it: a Ricart–Agrawala request no longer needs its REPLY (nor is
    /// sent to it) and its deferred request is dropped; at a home-queue home, its request
    /// leaves the queue and, if it held the lock, the lock goes to the next waiter (the writes
    /// it had not flushed are lost with it). A home-queue lock whose home failed stays
    /// unavailable: acquires time out naming the home. Its later messages are refused.
    pub fn node_failed(&mut self, node: NodeId, out: &mut Vec<Action>) -> Result<()> {
        if node >= self.nodes || node == self.me {
            return Err(Error::UnknownNode {
                node,
                nodes: self.nodes,
            });
        }
        if !self.failed.insert(node) {
            return Ok(());
        }
        let mut cx = Ctx {
            me: self.me,
            nodes: self.nodes,
            clock: &mut self.clock,
            out,
            failed: &self.failed,
        };
        let mut locks: Vec<&mut LockState> = self.locks.values_mut().collect();
        // Deterministic order (the simulator replays): by lock id.
        locks.sort_by_key(|state| match state {
            LockState::Ra(l) => l.id(),
            LockState::Home(l) => l.id(),
        });
        for state in locks {
            match state {
                LockState::Ra(l) => l.node_failed(node, &mut cx),
                LockState::Home(l) => l.node_failed(node, &mut cx)?,
            }
        }
        Ok(())
    }

    /// Whether `message` (from `from`) is a Ricart–Agrawala REQUEST this node answers at once
    /// (it neither holds the lock nor asked for it earlier): the lock goes to `from` then,
    /// unless a third node asked earlier.
    pub fn replies_at_once(&self, from: NodeId, message: &SyncMsg) -> bool {
        let SyncMsg::LockRequest { lock, timestamp } = message else {
            return false;
        };
        match self.locks.get(lock) {
            Some(LockState::Ra(l)) => l.replies_at_once(from, *timestamp, self.me),
            Some(LockState::Home(_)) => false,
            None => self.kind(*lock) == LockKind::RicartAgrawala,
        }
    }

    /// The node that gets `lock` after this node's release, when one waits for it
    /// (Ricart–Agrawala: the deferred request with the oldest timestamp; a home-queue lock's
    /// holder does not know).
    pub fn next_holder(&self, lock: u32) -> Option<NodeId> {
        match self.locks.get(&lock) {
            Some(LockState::Ra(l)) => l.first_deferred(),
            _ => None,
        }
    }

    /// The nodes this node still waits for on `lock` (empty when not waiting).
    pub fn awaiting(&self, lock: u32) -> Vec<NodeId> {
        match self.locks.get(&lock) {
            Some(LockState::Ra(l)) => l.awaiting(),
            Some(LockState::Home(l)) => l.awaiting(self.me),
            None => Vec::new(),
        }
    }

    /// The lock's state (created on first use) and a context for one event. State created
    /// by peers' messages is `bounded` by `max_locks`; local use is bounded by the caller.
    fn state<'a>(
        &'a mut self,
        lock: u32,
        out: &'a mut Vec<Action>,
        bounded: bool,
    ) -> Result<(&'a mut LockState, Ctx<'a>)> {
        if bounded && !self.locks.contains_key(&lock) && self.locks.len() >= self.max_locks {
            return Err(Error::TooManyLocks {
                lock,
                limit: self.max_locks,
            });
        }
        let kind = self.kind(lock);
        let (me, nodes) = (self.me, self.nodes);
        let state = self.locks.entry(lock).or_insert_with(|| match kind {
            LockKind::RicartAgrawala => LockState::Ra(RaLock::new(lock, nodes)),
            LockKind::HomeQueue => LockState::Home(HomeLock::new(lock, me, nodes)),
        });
        let cx = Ctx {
            me,
            nodes,
            clock: &mut self.clock,
            out,
            failed: &self.failed,
        };
        Ok((state, cx))
    }
}

#[cfg(test)]
mod tests;
