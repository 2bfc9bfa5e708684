//! Locks: [`Node::lock`](crate::Node::lock) gives a [`Lock`]; [`Lock::acquire`] a guard that
//! releases on drop. The algorithm is dsm-locks' Ricart–Agrawala; this module connects its
//! table to the transport and to release consistency, and turns a failed node into
//! [`Error::NodeFailed`](crate::Error::NodeFailed) for the threads waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dsm_core::Transport;
use dsm_locks::{LockTable, Outbox, ReleaseConsistency, SyncPoint};
use dsm_wire::{Message, NodeId, PageId, SyncMsg};

use crate::runtime::Core;
use crate::runtime::driver::send_counted;
use crate::stats::Counters;
use crate::{Error, Result};

/// Sends the lock engines' messages on the transport, counted.
pub(crate) struct LockOutbox {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) trace: Arc<crate::trace::Tracer>,
}

impl Outbox for LockOutbox {
    /// Over TCP the lock engine's frames leave after its mutex is let go (a cork): a lock
    /// REQUEST's REPLY can come back while its sender is still in `sendmsg`, and the
    /// transport thread that takes it, real-time on the sender's CPU, would preempt the
    /// sender and block on the mutex it holds (5–7 µs of a 10–15 µs "grant received →
    /// acquire returns", timed in an experiment). The order stays the engine's: each frame
    /// takes its place in its lane as it is sealed, under the mutex.
    fn hold(&self) -> Option<Box<dyn std::any::Any>> {
        Some(Box::new(dsm_tcp_fallback::Cork::new()))
    }

    fn send(&self, to: NodeId, message: SyncMsg) {
        crate::trace::lock_sent(&self.trace, to, &message);
        send_counted(
            self.transport.as_ref(),
            &self.counters,
            to,
            &Message::Sync(message),
        );
    }
}

/// Release consistency at lock hand-overs, through the coherence engine.
pub(crate) struct LockConsistency {
    pub(crate) core: Arc<Core>,
    pub(crate) timeout: Duration,
    /// [`Config::lock_hand_back`](crate::Config::lock_hand_back).
    pub(crate) hand_back: bool,
}

impl ReleaseConsistency for LockConsistency {
    fn flush(&self, point: SyncPoint) -> Vec<PageId> {
        // Runs on the thread releasing the lock (never the driver, which delivers the acks).
        let what = format!("diff acks before releasing {point:?}");
        let done = self.core.sync(self.timeout, &what, |c, token, ctx| {
            match point {
                SyncPoint::Lock(lock) => c.lock_held(lock, false),
                SyncPoint::Barrier(_) => c.forget_written(),
            }
            c.release(token, ctx)
        });
        match done {
            Ok(notices) => {
                let mut released = self.core.released.lock().unwrap_or_else(|p| p.into_inner());
                released.extend(notices.iter().copied());
                notices
            }
            Err(e) => {
                tracing::error!(?point, error = %e, "release flush failed");
                Vec::new()
            }
        }
    }

    fn hand_over(&self, lock: u32, next: NodeId) {
        if !self.hand_back {
            return;
        }
        // Sequential pages written under the lock: the next holder's first accesses, most
        // likely. They leave before the lock's reply, which carries no page.
        match self
            .core
            .engine(|c, ctx| c.hand_back_written((lock, next), ctx))
        {
            Ok(pages) => Counters::add(&self.core.shared.counters.pages_passed_on, pages),
            Err(e) => tracing::error!(lock, error = %e, "hand-back at a lock release failed"),
        }
    }

    fn invalidate(&self, point: SyncPoint, notices: &[PageId]) {
        // A grant (or a barrier's end): the thread it wakes runs next, so the transport
        // stops polling for it.
        self.core.shared.awaiting.answered();
        // May run on the driver thread: start the acquire without waiting for its completion.
        // The named pages are invalidated by the time this returns; only the diffs of pages
        // this node itself was writing may still be in flight, and they reach their home
        // before any later request of ours (FIFO per peer).
        let done = self.core.engine(|c, ctx| {
            if let SyncPoint::Lock(lock) = point {
                c.lock_held(lock, true);
            }
            let token = c.token();
            c.detach(token);
            c.acquire(token, notices, ctx)
        });
        if let Err(e) = done {
            tracing::error!(?point, error = %e, "acquire invalidation failed");
        }
    }
}

/// A cluster-wide lock; see [`Node::lock`](crate::Node::lock).
#[derive(Debug)]
pub struct Lock<'a> {
    pub(crate) id: u32,
    pub(crate) table: &'a LockTable,
    pub(crate) core: &'a Core,
    pub(crate) timeout: Duration,
}

/// Holds a [`Lock`]; dropping it releases the lock (and, in release mode, publishes this
/// node's writes to the next holder).
#[derive(Debug)]
pub struct LockGuard<'a> {
    /// Taken by `drop`.
    guard: Option<dsm_locks::Guard<'a>>,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // The release sends the pages written under the lock, maybe a flush, and the lock's
        // reply: one wake-up of the transport thread for all of them, after the last (each
        // wake-up of that real-time thread preempts this one on a pinned node's CPU), and
        // over TCP one `sendmsg` per peer for all of them (the cork, dropped first). A wait
        // inside makes the wake-ups due and the frames leave first (`Shared::sleep`).
        let _held = dsm_core::wakes::Held::new();
        let _cork = dsm_tcp_fallback::Cork::new();
        drop(self.guard.take());
    }
}

impl<'a> Lock<'a> {
    /// This lock's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Waits for the lock (at most the node's operation timeout). Fails with
    /// [`Error::NodeFailed`] as soon as a node fails meanwhile (the lock table interrupts
    /// every wait then; no polling).
    pub fn acquire(&self) -> Result<LockGuard<'a>> {
        let started = Instant::now();
        crate::trace::lock_called(&self.core.shared, self.id);
        loop {
            if let Some(rank) = self.core.shared.read(|s| s.failed.first().copied()) {
                return Err(Error::NodeFailed { rank });
            }
            let left = self.timeout.saturating_sub(started.elapsed());
            self.core.shared.awaiting.sleep();
            let acquired = self.table.try_acquire(self.id, left);
            self.core.shared.awaiting.answered();
            match acquired {
                Ok(guard) => {
                    Counters::bump(&self.core.shared.counters.lock_acquires);
                    crate::trace::lock_acquired(&self.core.shared, self.id);
                    return Ok(LockGuard { guard: Some(guard) });
                }
                // A node failed: the check above says which.
                Err(dsm_locks::Error::Interrupted { .. }) => {}
                Err(mut e) => {
                    // The error names the lock and the nodes awaited; the wait it reports is
                    // the whole acquire's.
                    if let dsm_locks::Error::Timeout { waited, .. } = &mut e {
                        *waited = started.elapsed();
                    }
                    return Err(e.into());
                }
            }
        }
    }
}
