//! Home-queue lock: O(1) messages per acquire whatever the cluster size.
//!
//! Lock `l` has a home, node `l % N`, which keeps the holder and a FIFO queue of requests. A
//! node sends ACQUIRE to the home; the home answers GRANT when the lock is free (at once if
//! uncontended: one round trip), and the holder sends RELEASE back. Three messages per
//! acquire (none when the home itself acquires), against Ricart–Agrawala's 2(N−1); the price
//! is two hops between consecutive holders instead of one. When a request queues behind a
//! holder, the home sends RECALL once so the holder bounds its local handoffs.
//!
//! The home also keeps the write notices: a page released under the lock is stamped with the
//! release's version, and a grant carries the pages stamped after the grantee's last hold.

use std::collections::{BTreeMap, VecDeque};

use dsm_wire::{NodeId, PageId, SyncMsg};

use crate::engine::Ctx;
use crate::{Action, Error, Result};

/// One lock's home-queue state at one node: the requester side, and the home side when this
/// node is the lock's home.
#[derive(Debug, Clone)]
pub(crate) struct HomeLock {
    lock: u32,
    home: NodeId,
    /// Sequence number of this node's latest request.
    seq: u64,
    state: State,
    /// Present on the lock's home only.
    queue: Option<HomeQueue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Wanting,
    Held,
}

/// The home's view: holder, waiters and notices.
#[derive(Debug, Clone)]
struct HomeQueue {
    holder: Option<(NodeId, u64)>,
    /// At most one request per node, so at most N entries.
    waiting: VecDeque<(NodeId, u64)>,
    /// The holder was told others wait.
    recalled: bool,
    version: u64,
    pages: BTreeMap<PageId, u64>,
    /// `seen[n]`: the version node `n` knew at its last grant or release.
    seen: Vec<u64>,
}

impl HomeLock {
    pub(crate) fn new(lock: u32, me: NodeId, nodes: u32) -> Self {
        let home = lock % nodes;
        HomeLock {
            lock,
            home,
            seq: 0,
            state: State::Idle,
            queue: (home == me).then(|| HomeQueue {
                holder: None,
                waiting: VecDeque::new(),
                recalled: false,
                version: 0,
                pages: BTreeMap::new(),
                seen: vec![0; nodes as usize],
            }),
        }
    }

    /// True when nothing is requested or held here, and (at the home) nobody holds or waits.
    pub(crate) fn is_idle(&self) -> bool {
        self.state == State::Idle
            && self
                .queue
                .as_ref()
                .is_none_or(|q| q.holder.is_none() && q.waiting.is_empty())
    }

    pub(crate) fn acquire(&mut self, cx: &mut Ctx<'_>) -> Result<()> {
        if self.state != State::Idle {
            return Err(Error::AlreadyRequested(self.lock));
        }
        self.seq += 1;
        self.state = State::Wanting;
        if self.home == cx.me {
            self.home_acquire(cx.me, self.seq, cx)
        } else {
            cx.send(
                self.home,
                SyncMsg::LockAcquire {
                    lock: self.lock,
                    seq: self.seq,
                },
            );
            Ok(())
        }
    }

    pub(crate) fn release(&mut self, notices: Vec<PageId>, cx: &mut Ctx<'_>) -> Result<()> {
        if self.state != State::Held {
            return Err(Error::NotHeld(self.lock));
        }
        self.state = State::Idle;
        if self.home == cx.me {
            self.home_release(cx.me, self.seq, &notices, cx)
        } else {
            let (lock, seq) = (self.lock, self.seq);
            cx.send(self.home, SyncMsg::LockRelease { lock, seq, notices });
            Ok(())
        }
    }

    /// Handles a home-queue message from `from`.
    pub(crate) fn on_message(
        &mut self,
        from: NodeId,
        msg: &SyncMsg,
        cx: &mut Ctx<'_>,
    ) -> Result<()> {
        match msg {
            SyncMsg::LockAcquire { seq, .. } => self.home_acquire(from, *seq, cx),
            SyncMsg::LockRelease { seq, notices, .. } => self.home_release(from, *seq, notices, cx),
            SyncMsg::LockGrant { seq, notices, .. } if from == self.home => {
                self.granted(*seq, notices.clone(), cx)
            }
            SyncMsg::LockRecall { seq, .. } if from == self.home => {
                self.recalled(*seq, cx);
                Ok(())
            }
            _ => Err(self.unexpected(from, "grant or recall from a node that is not the home")),
        }
    }

    /// The lock id.
    pub(crate) fn id(&self) -> u32 {
        self.lock
    }

    /// `node` failed: at the home, its request leaves the queue and its hold ends.
    pub(crate) fn node_failed(&mut self, node: NodeId, cx: &mut Ctx<'_>) -> Result<()> {
        let Some(q) = self.queue.as_mut() else {
            return Ok(());
        };
        q.waiting.retain(|(n, _)| *n != node);
        if q.holder.is_none_or(|(n, _)| n != node) {
            return Ok(());
        }
        q.holder = None;
        q.recalled = false;
        match q.waiting.pop_front() {
            Some((next, seq)) => self.grant(next, seq, cx),
            None => Ok(()),
        }
    }

    /// The node this one waits for: the home (or, at the home, the holder).
    pub(crate) fn awaiting(&self, me: NodeId) -> Vec<NodeId> {
        if self.state != State::Wanting {
            return Vec::new();
        }
        match &self.queue {
            Some(q) => q
                .holder
                .map(|(n, _)| n)
                .into_iter()
                .filter(|n| *n != me)
                .collect(),
            None => vec![self.home],
        }
    }

    fn granted(&mut self, seq: u64, notices: Vec<PageId>, cx: &mut Ctx<'_>) -> Result<()> {
        if self.state != State::Wanting || seq != self.seq {
            return Err(self.unexpected(self.home, "stale or duplicate GRANT"));
        }
        self.state = State::Held;
        cx.out.push(Action::Granted {
            lock: self.lock,
            notices,
        });
        Ok(())
    }

    fn recalled(&mut self, seq: u64, cx: &mut Ctx<'_>) {
        // A recall may cross our release; only the current hold or request heeds it.
        if self.state != State::Idle && seq == self.seq {
            cx.out.push(Action::RemoteWaiting { lock: self.lock });
        }
    }

    fn home_acquire(&mut self, from: NodeId, seq: u64, cx: &mut Ctx<'_>) -> Result<()> {
        let lock = self.lock;
        let Some(q) = self.queue.as_mut() else {
            return Err(self.unexpected(from, "ACQUIRE at a node that is not the home"));
        };
        let present = q
            .holder
            .iter()
            .chain(q.waiting.iter())
            .any(|(n, _)| *n == from);
        if present {
            return Err(self.unexpected(from, "second ACQUIRE while one is queued or held"));
        }
        if q.holder.is_none() {
            return self.grant(from, seq, cx);
        }
        q.waiting.push_back((from, seq));
        if !q.recalled {
            q.recalled = true;
            let (holder, held_seq) = q.holder.expect("checked above");
            self.recall(lock, holder, held_seq, cx);
        }
        Ok(())
    }

    fn home_release(
        &mut self,
        from: NodeId,
        seq: u64,
        notices: &[PageId],
        cx: &mut Ctx<'_>,
    ) -> Result<()> {
        let Some(q) = self.queue.as_mut() else {
            return Err(self.unexpected(from, "RELEASE at a node that is not the home"));
        };
        if q.holder != Some((from, seq)) {
            return Err(self.unexpected(from, "RELEASE of a hold it does not have"));
        }
        q.version += 1;
        for page in notices {
            q.pages.insert(*page, q.version);
        }
        q.seen[from as usize] = q.version;
        q.holder = None;
        q.recalled = false;
        let oldest = q.seen.iter().copied().min().unwrap_or(q.version);
        q.pages.retain(|_, stamp| *stamp > oldest);
        match q.waiting.pop_front() {
            Some((next, next_seq)) => self.grant(next, next_seq, cx),
            None => Ok(()),
        }
    }

    /// Home side: hands the free lock to `to`'s request `seq`.
    fn grant(&mut self, to: NodeId, seq: u64, cx: &mut Ctx<'_>) -> Result<()> {
        let lock = self.lock;
        let q = self.queue.as_mut().expect("grant runs at the home");
        let since = q.seen[to as usize];
        let notices: Vec<PageId> = q
            .pages
            .iter()
            .filter(|(_, s)| **s > since)
            .map(|(p, _)| *p)
            .collect();
        q.seen[to as usize] = q.version;
        q.holder = Some((to, seq));
        let others_wait = !q.waiting.is_empty();
        q.recalled = others_wait;
        if to == cx.me {
            self.granted(seq, notices, cx)?;
        } else {
            cx.send(to, SyncMsg::LockGrant { lock, seq, notices });
        }
        if others_wait {
            self.recall(lock, to, seq, cx);
        }
        Ok(())
    }

    fn recall(&mut self, lock: u32, holder: NodeId, seq: u64, cx: &mut Ctx<'_>) {
        if holder == cx.me {
            self.recalled(seq, cx);
        } else {
            cx.send(holder, SyncMsg::LockRecall { lock, seq });
        }
    }

    fn unexpected(&self, from: NodeId, what: &'static str) -> Error {
        Error::Unexpected {
            from,
            id: u64::from(self.lock),
            what,
        }
    }
}
