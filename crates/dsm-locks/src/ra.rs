//! Ricart–Agrawala mutual exclusion for one lock, as seen by one node.
//!
//! To acquire, the node stamps a request with its Lamport clock and sends REQUEST to every
//! other node; it enters when all have replied. A node that holds the lock, or wants it with
//! an earlier `(timestamp, node)`, defers its REPLY until it releases. Exactly 2(N−1)
//! messages per acquire; the requests go out together, so an uncontended acquire costs one
//! round trip.

use std::collections::{BTreeMap, BTreeSet};

use dsm_wire::{NodeId, PageId, SyncMsg};

use crate::engine::Ctx;
use crate::notices::NoticeLog;
use crate::{Action, Error, Result};

/// Largest REQUEST timestamp adopted: a Lamport clock ticking once per message never gets
/// near it, and the clock stays far from overflow after adopting one.
const MAX_TIMESTAMP: u64 = u64::MAX / 2;

/// One lock's Ricart–Agrawala state at one node.
#[derive(Debug, Clone)]
pub(crate) struct RaLock {
    lock: u32,
    state: State,
    /// Requests answered at release: node → timestamp of its request.
    deferred: BTreeMap<NodeId, u64>,
    /// This node's released pages, per peer cursor.
    log: NoticeLog,
}

#[derive(Debug, Clone)]
enum State {
    Idle,
    Wanting {
        timestamp: u64,
        awaiting: BTreeSet<NodeId>,
        notices: BTreeSet<PageId>,
    },
    Held,
}

impl RaLock {
    pub(crate) fn new(lock: u32, nodes: u32) -> Self {
        RaLock {
            lock,
            state: State::Idle,
            deferred: BTreeMap::new(),
            log: NoticeLog::new(nodes),
        }
    }

    /// True when nothing is requested, held or deferred (the state may be dropped or
    /// reconfigured).
    pub(crate) fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle) && self.deferred.is_empty()
    }

    /// Whether a REQUEST of `from` stamped `timestamp` is answered at once (this node neither
    /// holds the lock nor asked for it earlier), rather than deferred to the release.
    pub(crate) fn replies_at_once(&self, from: NodeId, timestamp: u64, me: NodeId) -> bool {
        match &self.state {
            State::Held => false,
            State::Wanting {
                timestamp: ours, ..
            } => (*ours, me) > (timestamp, from),
            State::Idle => true,
        }
    }

    /// The deferred request served first: the oldest timestamp, ties to the lower node.
    pub(crate) fn first_deferred(&self) -> Option<NodeId> {
        let first = self.deferred.iter().min_by_key(|(node, ts)| (**ts, **node));
        first.map(|(node, _)| *node)
    }

    pub(crate) fn acquire(&mut self, cx: &mut Ctx<'_>) -> Result<()> {
        if !matches!(self.state, State::Idle) {
            return Err(Error::AlreadyRequested(self.lock));
        }
        *cx.clock += 1;
        let timestamp = *cx.clock;
        let awaiting: BTreeSet<NodeId> = (0..cx.nodes)
            .filter(|n| *n != cx.me && !cx.failed.contains(n))
            .collect();
        for to in &awaiting {
            cx.send(
                *to,
                SyncMsg::LockRequest {
                    lock: self.lock,
                    timestamp,
                },
            );
        }
        self.state = State::Wanting {
            timestamp,
            awaiting,
            notices: BTreeSet::new(),
        };
        self.enter_if_all_replied(cx);
        Ok(())
    }

    pub(crate) fn release(&mut self, notices: &[PageId], cx: &mut Ctx<'_>) -> Result<()> {
        if !matches!(self.state, State::Held) {
            return Err(Error::NotHeld(self.lock));
        }
        self.log.record(cx.me, notices);
        self.state = State::Idle;
        for (to, timestamp) in std::mem::take(&mut self.deferred) {
            self.reply(to, timestamp, cx);
        }
        Ok(())
    }

    pub(crate) fn on_request(
        &mut self,
        from: NodeId,
        timestamp: u64,
        cx: &mut Ctx<'_>,
    ) -> Result<()> {
        if self.deferred.contains_key(&from) {
            return Err(self.unexpected(from, "second REQUEST while one is deferred"));
        }
        if timestamp > MAX_TIMESTAMP {
            // Adopting it would overflow the clock (`+ 1` below, or at our next request).
            return Err(self.unexpected(from, "REQUEST timestamp beyond any real clock"));
        }
        *cx.clock = (*cx.clock).max(timestamp) + 1;
        let defer = !self.replies_at_once(from, timestamp, cx.me);
        if defer {
            self.deferred.insert(from, timestamp);
            cx.out.push(Action::RemoteWaiting { lock: self.lock });
        } else {
            self.reply(from, timestamp, cx);
        }
        Ok(())
    }

    pub(crate) fn on_reply(
        &mut self,
        from: NodeId,
        timestamp: u64,
        notices: &[PageId],
        cx: &mut Ctx<'_>,
    ) -> Result<()> {
        let State::Wanting {
            timestamp: ours,
            awaiting,
            notices: gathered,
        } = &mut self.state
        else {
            return Err(self.unexpected(from, "REPLY while not requesting"));
        };
        if *ours != timestamp || !awaiting.remove(&from) {
            return Err(self.unexpected(from, "stale or duplicate REPLY"));
        }
        gathered.extend(notices.iter().copied());
        self.enter_if_all_replied(cx);
        Ok(())
    }

    /// The lock id.
    pub(crate) fn id(&self) -> u32 {
        self.lock
    }

    /// `node` failed: its deferred request is dropped and its REPLY no longer awaited.
    pub(crate) fn node_failed(&mut self, node: NodeId, cx: &mut Ctx<'_>) {
        self.deferred.remove(&node);
        if let State::Wanting { awaiting, .. } = &mut self.state {
            awaiting.remove(&node);
        }
        self.enter_if_all_replied(cx);
    }

    /// Nodes whose REPLY this node still waits for.
    pub(crate) fn awaiting(&self) -> Vec<NodeId> {
        match &self.state {
            State::Wanting { awaiting, .. } => awaiting.iter().copied().collect(),
            _ => Vec::new(),
        }
    }

    fn enter_if_all_replied(&mut self, cx: &mut Ctx<'_>) {
        let State::Wanting {
            awaiting, notices, ..
        } = &mut self.state
        else {
            return;
        };
        if awaiting.is_empty() {
            let notices = std::mem::take(notices).into_iter().collect();
            self.state = State::Held;
            cx.out.push(Action::Granted {
                lock: self.lock,
                notices,
            });
        }
    }

    fn reply(&mut self, to: NodeId, timestamp: u64, cx: &mut Ctx<'_>) {
        let notices = self.log.take_for(to);
        cx.send(
            to,
            SyncMsg::LockReply {
                lock: self.lock,
                timestamp,
                notices,
            },
        );
    }

    fn unexpected(&self, from: NodeId, what: &'static str) -> Error {
        Error::Unexpected {
            from,
            id: u64::from(self.lock),
            what,
        }
    }
}
