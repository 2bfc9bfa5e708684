//! The thread-facing handle: [`LockTable`] drives a [`LockEngine`] and a [`BarrierEngine`]
//! for one node, queues the node's threads locally, and calls the runtime's
//! [`Outbox`] and [`ReleaseConsistency`] hooks.
//!
//! Threads call [`LockTable::acquire`] and [`LockTable::barrier`]; the node's protocol thread
//! calls [`LockTable::handle`] with every lock or barrier message that arrives. Engine calls
//! are short and run under one mutex per engine; their `Send` actions are handed to the
//! outbox under that mutex, so the messages of one node leave in the order the engine made
//! them (a RELEASE before the next ACQUIRE), and everything else (grants, which wake threads
//! and may start the next request) runs after the mutex is dropped.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use dsm_wire::{NodeId, SyncMsg};

use crate::local::{LocalLock, NodeSide, Waiter};
use crate::primitive::Arc;
use crate::{
    Action, BarrierEngine, Error, LockEngine, LockKind, Outbox, ReleaseConsistency, Result,
    SyncPoint,
};

/// Bounds and defaults of a [`LockTable`].
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Timeout of [`LockTable::acquire`] and [`LockTable::barrier`].
    pub timeout: Duration,
    /// Threads of this node that may wait for one lock at once.
    pub max_waiters: usize,
    /// Local critical sections a remote waiter may have to wait through (≤ 255).
    pub handoff_bound: u32,
    /// Distinct locks this node may use.
    pub max_locks: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            timeout: Duration::from_secs(30),
            max_waiters: 1024,
            handoff_bound: 4,
            max_locks: 1 << 16,
        }
    }
}

/// Barrier progress shared with waiting threads.
#[derive(Debug)]
struct BarrierState {
    /// None for a table built by [`LockTable::locks_only`].
    engine: Option<BarrierEngine>,
    /// Barriers completed (epochs below this are done).
    completed: u64,
    /// The last barrier refused (its nodes came from different calls), if any.
    refused: Option<u64>,
}

impl BarrierState {
    fn engine(&mut self) -> Result<&mut BarrierEngine> {
        self.engine.as_mut().ok_or(Error::NoBarrier)
    }
}

/// Locks and the barrier of one node, for its threads. See the crate docs for an example.
pub struct LockTable {
    engine: Mutex<LockEngine>,
    barrier: Mutex<BarrierState>,
    barrier_done: Condvar,
    locals: RwLock<HashMap<u32, Arc<LocalLock>>>,
    outbox: Box<dyn Outbox>,
    consistency: Box<dyn ReleaseConsistency>,
    config: TableConfig,
    /// Node failures seen so far: a waiter that sees it change stops waiting.
    failures: AtomicU64,
    /// Threads waiting in an acquire, woken when a node fails.
    parked: Mutex<Vec<Arc<Waiter>>>,
}

impl fmt::Debug for LockTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockTable")
            .field("engine", &self.engine)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A held lock; dropping it releases the lock (to the next local thread or the cluster).
#[must_use = "the lock is released when the guard is dropped"]
pub struct Guard<'a> {
    table: &'a LockTable,
    lock: u32,
    local: Arc<LocalLock>,
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").field("lock", &self.lock).finish()
    }
}

impl Guard<'_> {
    /// The lock held.
    pub fn lock(&self) -> u32 {
        self.lock
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.local.unlock(&self.table.node(self.lock));
    }
}

/// [`NodeSide`] of one lock: the engine, under its mutex.
struct Node<'a> {
    table: &'a LockTable,
    lock: u32,
}

impl NodeSide for Node<'_> {
    fn request(&self) {
        let rest = self
            .table
            .with_engine(|engine, out| engine.acquire(self.lock, out));
        // The local part requests only when nothing is requested or held: a failure is a bug.
        self.table
            .perform(rest.expect("the local part requests once per hold"));
    }

    fn release(&self) {
        let next = lock_engine(&self.table.engine).next_holder(self.lock);
        if let Some(next) = next {
            self.table.consistency.hand_over(self.lock, next);
        }
        let notices = self.table.consistency.flush(SyncPoint::Lock(self.lock));
        let rest = self
            .table
            .with_engine(|engine, out| engine.release(self.lock, notices, out));
        self.table
            .perform(rest.expect("the local part releases only what the node owns"));
    }
}

impl LockTable {
    /// The table of a node whose engines are `engine` and `barrier` (same node and cluster).
    pub fn new(
        engine: LockEngine,
        barrier: BarrierEngine,
        outbox: Box<dyn Outbox>,
        consistency: Box<dyn ReleaseConsistency>,
        config: TableConfig,
    ) -> Self {
        Self::build(engine, Some(barrier), outbox, consistency, config)
    }

    /// A table of locks alone, for a runtime with a barrier of its own:
    /// [`LockTable::barrier`] and barrier messages fail with [`Error::NoBarrier`].
    pub fn locks_only(
        engine: LockEngine,
        outbox: Box<dyn Outbox>,
        consistency: Box<dyn ReleaseConsistency>,
        config: TableConfig,
    ) -> Self {
        Self::build(engine, None, outbox, consistency, config)
    }

    fn build(
        engine: LockEngine,
        barrier: Option<BarrierEngine>,
        outbox: Box<dyn Outbox>,
        consistency: Box<dyn ReleaseConsistency>,
        config: TableConfig,
    ) -> Self {
        LockTable {
            engine: Mutex::new(engine),
            barrier: Mutex::new(BarrierState {
                engine: barrier,
                refused: None,
                completed: 0,
            }),
            barrier_done: Condvar::new(),
            locals: RwLock::new(HashMap::new()),
            outbox,
            consistency,
            config,
            failures: AtomicU64::new(0),
            parked: Mutex::new(Vec::new()),
        }
    }

    /// Sets the algorithm of `lock` (every node must choose the same before any uses it);
    /// refused with [`Error::KindInUse`] while the lock is held or requested.
    pub fn set_kind(&self, lock: u32, kind: LockKind) -> Result<()> {
        lock_engine(&self.engine).set_kind(lock, kind)
    }

    /// Acquires `lock` within the configured timeout.
    pub fn acquire(&self, lock: u32) -> Result<Guard<'_>> {
        self.try_acquire(lock, self.config.timeout)
    }

    /// Acquires `lock` within `timeout`. The guard is returned after the write notices of
    /// earlier holders were invalidated. On timeout the error names the nodes still awaited.
    pub fn try_acquire(&self, lock: u32, timeout: Duration) -> Result<Guard<'_>> {
        let start = Instant::now();
        let local = self.local(lock)?;
        let node = self.node(lock);
        let waiter = local.enqueue(&node).map_err(|_| Error::TooManyWaiters {
            lock,
            limit: self.config.max_waiters,
        })?;
        let failures = self.failures.load(Ordering::Acquire);
        let interrupted = || self.failures.load(Ordering::Acquire) != failures;
        lock_parked(&self.parked).push(Arc::clone(&waiter));
        let granted = waiter.wait_or(start + timeout, interrupted);
        lock_parked(&self.parked).retain(|w| !Arc::ptr_eq(w, &waiter));
        if granted || !waiter.cancel() {
            return Ok(Guard {
                table: self,
                lock,
                local,
            });
        }
        if interrupted() {
            return Err(Error::Interrupted { lock });
        }
        Err(Error::Timeout {
            lock,
            waited: start.elapsed(),
            awaiting: lock_engine(&self.engine).awaiting(lock),
            held_locally: local.is_owned(),
        })
    }

    /// Waits until every node reached the barrier (configured timeout). Flushes this node's
    /// interval first and invalidates everyone's notices before returning. One thread per
    /// node at a time.
    pub fn barrier(&self) -> Result<()> {
        let start = Instant::now();
        let epoch = lock_barrier(&self.barrier).engine()?.epoch();
        // Flush without the mutex: the diffs' acks arrive through the protocol thread, which
        // must not block on it meanwhile.
        let notices = self.consistency.flush(SyncPoint::Barrier(epoch));
        let mut state = lock_barrier(&self.barrier);
        let engine = state.engine()?;
        if engine.epoch() != epoch || engine.is_active() {
            return Err(Error::BarrierBusy(epoch));
        }
        let mut out = Vec::new();
        engine.arrive(0, notices, &mut out)?;
        let rest = self.send_all(out);
        drop(state);
        self.perform(rest);
        let deadline = start + self.config.timeout;
        let mut state = lock_barrier(&self.barrier);
        while state.completed <= epoch {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let awaiting = state.engine()?.awaiting();
                return Err(Error::BarrierTimeout {
                    epoch,
                    waited: start.elapsed(),
                    awaiting,
                });
            }
            state = self
                .barrier_done
                .wait_timeout(state, left)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
        if state.refused == Some(epoch) {
            return Err(Error::BarrierRefused(epoch));
        }
        Ok(())
    }

    /// Handles a lock or barrier message from `from` (the node's protocol thread calls this).
    /// A message that breaks the protocol is rejected with a typed error and changes nothing.
    pub fn handle(&self, from: NodeId, message: &SyncMsg) -> Result<()> {
        let rest = match message {
            SyncMsg::BarrierArrive { .. }
            | SyncMsg::BarrierRelease { .. }
            | SyncMsg::BarrierAbort { .. }
            | SyncMsg::BarrierRound { .. } => {
                let mut state = lock_barrier(&self.barrier);
                let mut out = Vec::new();
                state.engine()?.on_message(from, message, &mut out)?;
                self.send_all(out)
            }
            _ => {
                if let SyncMsg::LockRequest { lock, .. } = message {
                    // Answered at once, the lock goes to `from`: what this node wrote under it
                    // (while nobody waited) goes first.
                    if lock_engine(&self.engine).replies_at_once(from, message) {
                        self.consistency.hand_over(*lock, from);
                    }
                }
                self.with_engine(|engine, out| engine.on_message(from, message, out))?
            }
        };
        self.perform(rest);
        Ok(())
    }

    /// `node` failed (the runtime saw `TransportEvent::PeerFailed`): nobody waits for it any
    /// more (see [`LockEngine::node_failed`]). Barriers are not repaired: a barrier waiting
    /// for it times out naming it.
    pub fn node_failed(&self, node: NodeId) -> Result<()> {
        let rest = self.with_engine(|engine, out| engine.node_failed(node, out))?;
        self.perform(rest);
        // Every acquire under way stops waiting with `Error::Interrupted`: its caller learns
        // of the failure now, not at its timeout.
        self.failures.fetch_add(1, Ordering::AcqRel);
        for waiter in lock_parked(&self.parked).iter() {
            waiter.wake();
        }
        Ok(())
    }

    /// Runs `f` on the engine; sends its messages under the mutex and returns the rest.
    fn with_engine(
        &self,
        f: impl FnOnce(&mut LockEngine, &mut Vec<Action>) -> Result<()>,
    ) -> Result<Vec<Action>> {
        // Taken first, dropped last: the sends leave once the mutex is free (`Outbox::hold`).
        let _held = self.outbox.hold();
        let mut engine = lock_engine(&self.engine);
        let mut out = Vec::new();
        f(&mut engine, &mut out)?;
        Ok(self.send_all(out))
    }

    /// Sends every `Send` action; returns the others in order.
    fn send_all(&self, actions: Vec<Action>) -> Vec<Action> {
        let mut rest = Vec::new();
        for action in actions {
            match action {
                Action::Send { to, message } => self.outbox.send(to, message),
                other => rest.push(other),
            }
        }
        rest
    }

    /// Performs the actions that touch threads (no engine mutex held).
    fn perform(&self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Granted { lock, notices } => {
                    self.consistency.invalidate(SyncPoint::Lock(lock), &notices);
                    if let Some(local) = self.existing_local(lock) {
                        local.granted(&self.node(lock));
                    }
                }
                Action::RemoteWaiting { lock } => {
                    if let Some(local) = self.existing_local(lock) {
                        local.remote_waiting();
                    }
                }
                Action::BarrierDone { epoch, notices } => {
                    self.consistency
                        .invalidate(SyncPoint::Barrier(epoch), &notices);
                    let mut state = lock_barrier(&self.barrier);
                    state.completed = state.completed.max(epoch + 1);
                    self.barrier_done.notify_all();
                }
                Action::BarrierRefused { epoch } => {
                    let mut state = lock_barrier(&self.barrier);
                    state.completed = state.completed.max(epoch + 1);
                    state.refused = Some(epoch);
                    self.barrier_done.notify_all();
                }
                Action::Send { .. } => unreachable!("sent under the engine mutex"),
            }
        }
    }

    fn node(&self, lock: u32) -> Node<'_> {
        Node { table: self, lock }
    }

    fn existing_local(&self, lock: u32) -> Option<Arc<LocalLock>> {
        let locals = self
            .locals
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        locals.get(&lock).cloned()
    }

    /// The local part of `lock`, created on first use (bounded by `max_locks`).
    fn local(&self, lock: u32) -> Result<Arc<LocalLock>> {
        if let Some(local) = self.existing_local(lock) {
            return Ok(local);
        }
        let mut locals = self
            .locals
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if !locals.contains_key(&lock) && locals.len() >= self.config.max_locks {
            return Err(Error::TooManyLocks {
                lock,
                limit: self.config.max_locks,
            });
        }
        let (max_waiters, bound) = (self.config.max_waiters, self.config.handoff_bound);
        let local = locals
            .entry(lock)
            .or_insert_with(|| Arc::new(LocalLock::new(max_waiters, bound)));
        Ok(local.clone())
    }
}

/// A panic while holding an engine mutex leaves the engine consistent (it returns errors
/// before changing state), so poisoning is ignored.
fn lock_engine(engine: &Mutex<LockEngine>) -> MutexGuard<'_, LockEngine> {
    engine.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn lock_barrier(barrier: &Mutex<BarrierState>) -> MutexGuard<'_, BarrierState> {
    barrier.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn lock_parked(parked: &Mutex<Vec<Arc<Waiter>>>) -> MutexGuard<'_, Vec<Arc<Waiter>>> {
    parked.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LockKind, NoConsistency};

    struct Nowhere;

    impl Outbox for Nowhere {
        fn send(&self, _to: NodeId, _message: SyncMsg) {}
    }

    fn locks_only() -> LockTable {
        LockTable::locks_only(
            LockEngine::new(0, 1, LockKind::RicartAgrawala),
            Box::new(Nowhere),
            Box::new(NoConsistency),
            TableConfig::default(),
        )
    }

    #[test]
    fn a_locks_only_table_locks_and_refuses_barriers() {
        let table = locks_only();
        drop(
            table
                .try_acquire(7, Duration::from_secs(5))
                .expect("one node locks alone"),
        );
        assert!(matches!(table.barrier(), Err(Error::NoBarrier)));
        let arrive = SyncMsg::BarrierArrive {
            epoch: 0,
            round: 0,
            notices: Vec::new(),
        };
        assert!(matches!(table.handle(1, &arrive), Err(Error::NoBarrier)));
    }

    #[test]
    fn a_node_failure_ends_a_waiting_acquire_at_once() {
        // Node 0 of 2; node 1 never answers (its messages go nowhere).
        let table = std::sync::Arc::new(LockTable::locks_only(
            LockEngine::new(0, 2, LockKind::RicartAgrawala),
            Box::new(Nowhere),
            Box::new(NoConsistency),
            TableConfig::default(),
        ));
        let waiting = std::sync::Arc::clone(&table);
        let started = Instant::now();
        let acquire = std::thread::spawn(move || {
            waiting
                .try_acquire(3, Duration::from_secs(30))
                .map(drop)
                .map_err(|e| (e, started.elapsed()))
        });
        std::thread::sleep(Duration::from_millis(100));
        table.node_failed(1).unwrap();
        let result = acquire.join().unwrap();
        // Either the failure freed the lock (the failed node's reply is no longer needed) or
        // the wait was interrupted; never the 30 s timeout.
        match result {
            Ok(()) => {}
            Err((Error::Interrupted { lock: 3 }, waited)) => {
                assert!(waited < Duration::from_secs(5), "{waited:?}");
            }
            Err(other) => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
