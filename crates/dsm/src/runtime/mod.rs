//! The node runtime: state shared between application threads and the driver thread, and
//! the one wait primitive every blocking call uses.

pub(crate) mod alloc;
pub(crate) mod awaiting;
pub(crate) mod barrier;
pub(crate) mod driver;
pub(crate) mod monitor;
pub(crate) mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dsm_wire::{Message, NodeId, PageId, RegionSpec};

use std::sync::Arc;

use dsm_core::Transport;

use crate::coherence::{Coherence, Ctx};
use crate::membership::roster::Arrivals;
use crate::stats::Counters;
use crate::{Error, Result};

/// What the driver learns and application threads wait on.
#[derive(Debug)]
pub(crate) struct State {
    /// Nodes declared failed, in the order they were.
    pub(crate) failed: Vec<NodeId>,
    /// `Joined` announcements seen.
    pub(crate) arrivals: Arrivals,
    /// Nodes that left cleanly.
    pub(crate) left: Vec<bool>,
    /// Highest barrier epoch released.
    pub(crate) barrier_released: u64,
    /// Barrier epochs rank 0 refused (arrivals from different collective calls); bounded.
    pub(crate) barrier_aborted: BTreeSet<u64>,
    /// Write notices of released barrier epochs not yet taken by `Node::barrier` (bounded:
    /// see [`keep_answer`]).
    pub(crate) barrier_notices: BTreeMap<u64, Vec<PageId>>,
    /// Completed engine sync calls: token → write notices.
    pub(crate) syncs: HashMap<u64, Vec<PageId>>,
    /// Allocations decided by rank 0: request → (region id, base address, spec).
    /// Bounded like `barrier_notices`.
    pub(crate) allocs: BTreeMap<u64, (u32, u64, RegionSpec)>,
    /// The node is shutting down: every wait ends.
    pub(crate) closed: bool,
    /// Peers' RDMA queue pair data (or declines), from `RdmaHello` at join.
    pub(crate) rdma_hellos: HashMap<NodeId, dsm_wire::RdmaConnInfo>,
    /// Answers to this node's shared-file requests, by request id (bounded: see
    /// [`keep_view_answer`]).
    pub(crate) view_answers: BTreeMap<u64, dsm_wire::ViewMsg>,
}

/// Everything the node's threads share: the state, the coherence engine, the transport.
pub(crate) struct Core {
    pub(crate) shared: Shared,
    /// Pages this node published at lock releases since its last barrier: the lock's next
    /// holder learns of them from the grant, every other node from the next barrier.
    pub(crate) released: Mutex<BTreeSet<PageId>>,
    pub(crate) coherence: Mutex<Coherence>,
    pub(crate) transport: Arc<dyn Transport>,
    /// The membership ring: ticked by the monitor thread, told what was heard by the
    /// transport thread and of failures and departures by the driver.
    pub(crate) ring: Mutex<crate::membership::ring::Ring>,
    /// The barrier (`runtime::barrier`): its rounds are handled on whichever thread receives
    /// them.
    pub(crate) barrier: Mutex<dsm_locks::BarrierEngine>,
    /// Request ids of this node's shared-file requests.
    pub(crate) requests: AtomicU64,
    /// The node left (or was dropped): nothing serves faults any more. An atomic, not part
    /// of `State`, so that element access and SIGBUS handlers can read it without a lock.
    pub(crate) gone: AtomicBool,
    /// The priority the node's service threads take (see `crate::sched`).
    pub(crate) priority: Arc<crate::sched::ServiceThreads>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

impl Core {
    /// Sends `message` to every node not failed or gone (and to itself when `include_self`).
    pub(crate) fn broadcast(&self, include_self: bool, message: &Message) {
        let local = self.transport.local();
        let (failed, left) = self.shared.read(|s| (s.failed.clone(), s.left.clone()));
        for (to, gone) in (0..).zip(&left) {
            if failed.contains(&to) || *gone || (to == local && !include_self) {
                continue;
            }
            driver::send_counted(self.transport.as_ref(), &self.shared.counters, to, message);
        }
    }

    /// A fresh request id.
    pub(crate) fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// True once the node stopped: regions still alive must not be used.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Runs `f` on the coherence engine (under its lock) with what applying actions needs.
    pub(crate) fn engine<R>(
        &self,
        f: impl FnOnce(&mut Coherence, &Ctx<'_>) -> Result<R>,
    ) -> Result<R> {
        let ctx = Ctx {
            transport: self.transport.as_ref(),
            shared: &self.shared,
        };
        // Dropped after the lock: sends made under it wake the shared-memory thread then.
        let _wakes = dsm_core::wakes::Held::new();
        let mut coherence = self.coherence.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut coherence, &ctx)
    }

    /// Runs `f` on the coherence engine if its lock comes free within `tries` attempts
    /// (`try_lock`, no blocking wait); `None` if it did not. A SIGBUS handler uses this: it
    /// must never block on a lock that the thread it interrupted might hold.
    pub(crate) fn try_engine<R>(
        &self,
        tries: u32,
        f: impl FnOnce(&mut Coherence, &Ctx<'_>) -> Result<R>,
    ) -> Option<Result<R>> {
        let _wakes = dsm_core::wakes::Held::new(); // as in `engine`
        for _ in 0..tries {
            let mut coherence = match self.coherence.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    std::hint::spin_loop();
                    continue;
                }
            };
            let ctx = Ctx {
                transport: self.transport.as_ref(),
                shared: &self.shared,
            };
            return Some(f(&mut coherence, &ctx));
        }
        None
    }

    /// Runs an engine sync call (`release` or `acquire`) under `token` and waits for its
    /// `SyncDone`, returning the write notices.
    pub(crate) fn sync(
        &self,
        timeout: Duration,
        what: &str,
        call: impl FnOnce(&mut Coherence, u64, &Ctx<'_>) -> Result<()>,
    ) -> Result<Vec<PageId>> {
        let token = self.engine(|c, ctx| {
            let token = c.token();
            call(c, token, ctx).map(|()| token)
        })?;
        let waited = self.shared.wait(
            timeout,
            |_| what.to_owned(),
            |s| s.syncs.get(&token).map(|_| ()),
        );
        if waited.is_err() {
            // Nobody takes this completion now: drop it if it came, or when it comes (it is
            // recorded under the engine lock, so one of the two holds).
            let _ = self.engine(|c, _| {
                if self.shared.update(|s| s.syncs.remove(&token)).is_none() {
                    c.detach(token);
                }
                Ok(())
            });
        }
        waited?;
        Ok(self
            .shared
            .update(|s| s.syncs.remove(&token))
            .unwrap_or_default())
    }
}

/// Most answers kept unclaimed in `State::barrier_notices` or `State::allocs`.
pub(crate) const MAX_UNCLAIMED: usize = 8;

/// Most shared-file answers kept for waiters: an answer nobody waits for (its wait timed
/// out, or the close of a dropped file) is dropped oldest first past this.
const MAX_VIEW_ANSWERS: usize = 4096;

/// Records the answer to shared-file request `req` for its waiter.
pub(crate) fn keep_view_answer(
    answers: &mut BTreeMap<u64, dsm_wire::ViewMsg>,
    req: u64,
    answer: dsm_wire::ViewMsg,
) {
    answers.insert(req, answer);
    while answers.len() > MAX_VIEW_ANSWERS {
        answers.pop_first();
    }
}

/// Records rank 0's answer for collective round `round` (a barrier epoch or an allocation
/// request), keeping only answers a waiter can still take. Rank 0 answers round `r` only once
/// every live node (this one included) asked for `r`, and a node asks for `r` only after its
/// wait for the round before ended; so when `r` comes, answers to earlier rounds are either
/// taken or belong to waits that timed out, and they go. A rank 0 that answers rounds
/// nobody asked for is bounded by `MAX_UNCLAIMED` (the oldest go first).
pub(crate) fn keep_answer<V>(answers: &mut BTreeMap<u64, V>, round: u64, answer: V) {
    answers.retain(|&r, _| r >= round);
    answers.insert(round, answer);
    while answers.len() > MAX_UNCLAIMED {
        answers.pop_first();
    }
}

/// Shared between the node's threads.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Counters behind `Node::stats` (shared with the lock outbox).
    pub(crate) counters: Arc<Counters>,
    /// Per-hop tracing (`DSM_TRACE`; shared with the lock outbox): off unless started.
    pub(crate) trace: Arc<crate::trace::Tracer>,
    /// Whether a thread of this node waits on the network (the transport polls only then).
    pub(crate) awaiting: awaiting::Awaiting,
}

impl Shared {
    pub(crate) fn new(rank: NodeId, size: u32) -> Self {
        Shared {
            state: Mutex::new(State {
                failed: Vec::new(),
                arrivals: Arrivals::new(rank, size),
                left: vec![false; size as usize],
                barrier_released: 0,
                barrier_aborted: BTreeSet::new(),
                barrier_notices: BTreeMap::new(),
                syncs: HashMap::new(),
                allocs: BTreeMap::new(),
                closed: false,
                rdma_hellos: HashMap::new(),
                view_answers: BTreeMap::new(),
            }),
            changed: Condvar::new(),
            counters: Arc::new(Counters::default()),
            trace: Arc::default(),
            awaiting: awaiting::Awaiting::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the state and wakes every waiter.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.lock());
        self.awaiting.answered();
        self.changed.notify_all();
        r
    }

    /// Reads the state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock())
    }

    /// Waits until `ready` holds or `timeout` passes, whatever fails meanwhile; true when it
    /// held.
    pub(crate) fn wait_quietly(&self, timeout: Duration, ready: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !ready(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.sleep(state, left);
        }
        true
    }

    /// Sleeps until the state changes or `left` passes; the transport polls meanwhile.
    fn sleep<'a>(&self, state: MutexGuard<'a, State>, left: Duration) -> MutexGuard<'a, State> {
        self.awaiting.sleep();
        // A lock release holds its sends' wake-ups and gathers its frames (`LockGuard`'s
        // drop); what it waits for may need them.
        dsm_tcp_fallback::flush_corked();
        dsm_core::wakes::wake_due_now();
        let state = self
            .changed
            .wait_timeout(state, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        self.awaiting.answered();
        state
    }

    /// Waits until `ready` gives a value, for at most `timeout`. A failed node ends the wait
    /// with `NodeFailed`, a closed node with `Closed`, the timeout with `Timeout` naming
    /// `what()` (or `on_timeout`'s error when given).
    pub(crate) fn wait<R>(
        &self,
        timeout: Duration,
        what: impl Fn(&State) -> String,
        mut ready: impl FnMut(&State) -> Option<R>,
    ) -> Result<R> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut state = self.lock();
        loop {
            if let Some(r) = ready(&state) {
                return Ok(r);
            }
            if let Some(&rank) = state.failed.first() {
                return Err(Error::NodeFailed { rank });
            }
            if state.closed {
                return Err(Error::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: what(&state),
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            state = self.sleep(state, left);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_failure_ends_a_wait_with_node_failed() {
        let shared = Arc::new(Shared::new(0, 3));
        let s = Arc::clone(&shared);
        let waiter = std::thread::spawn(move || {
            s.wait(
                Duration::from_secs(10),
                |_| "x".into(),
                |st| (st.barrier_released >= 1).then_some(()),
            )
        });
        std::thread::sleep(Duration::from_millis(50));
        shared.update(|st| st.failed.push(2));
        assert!(matches!(
            waiter.join().unwrap(),
            Err(Error::NodeFailed { rank: 2 })
        ));
    }

    #[test]
    fn answers_to_earlier_rounds_go_when_a_later_one_comes() {
        let mut answers = BTreeMap::new();
        keep_answer(&mut answers, 3, "three");
        keep_answer(&mut answers, 5, "five");
        assert_eq!(answers.keys().copied().collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn answers_nobody_asked_for_stay_bounded() {
        let mut answers = BTreeMap::new();
        for round in (0..1000u64).rev() {
            keep_answer(&mut answers, 1_000_000 + round, ());
        }
        assert_eq!(answers.len(), MAX_UNCLAIMED);
        assert_eq!(answers.keys().next_back(), Some(&1_000_999));
    }

    #[test]
    fn a_timeout_names_what_was_awaited() {
        let shared = Shared::new(0, 1);
        let err = shared
            .wait(
                Duration::from_millis(20),
                |_| "barrier 9".into(),
                |_| None::<()>,
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { what, .. } if what == "barrier 9"),
            "{err}"
        );
    }
}
