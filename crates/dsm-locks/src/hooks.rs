//! What a [`LockTable`](crate::LockTable) needs from the node runtime: a way to send, and the
//! coherence engine's side of release consistency.

use dsm_wire::{NodeId, PageId, SyncMsg};

/// Sends the engines' messages. Must not block (queue and return, like
/// `dsm_core::Transport::send`); a message that cannot be delivered shows up as a timeout
/// naming the node.
pub trait Outbox: Send + std::marker::Sync {
    /// Queues `message` for node `to`.
    fn send(&self, to: NodeId, message: SyncMsg);

    /// Called before the engine's mutex is taken for a call that may send; what it returns
    /// is dropped after the mutex is let go. A transport may gather the sends meanwhile and
    /// let them leave on the drop, so that an answer racing back finds the mutex free.
    /// Nothing by default.
    fn hold(&self) -> Option<Box<dyn std::any::Any>> {
        None
    }
}

/// Where release consistency happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPoint {
    /// A lock changes node.
    Lock(u32),
    /// A barrier instance (epoch).
    Barrier(u64),
}

/// The coherence engine's side of a synchronisation point (release mode). In sequential mode
/// the pages are kept coherent by invalidation anyway: use [`NoConsistency`].
pub trait ReleaseConsistency: Send + std::marker::Sync {
    /// Before this node gives up a lock or enters a barrier: flush the diffs of the current
    /// interval to their homes (wait for the acks) and return the pages written.
    fn flush(&self, point: SyncPoint) -> Vec<PageId>;
    /// Before any thread of this node enters after a grant or leaves a barrier: invalidate
    /// the pages others wrote.
    fn invalidate(&self, point: SyncPoint, notices: &[PageId]);
    /// When `lock` goes from this node to node `next`: before [`flush`](Self::flush) at a
    /// release that `next` waits for, or before the REPLY to a REQUEST of `next` that this
    /// node answers at once (it released the lock before `next` asked). The pages written
    /// under the lock are likely `next`'s first accesses (sequential mode passes them on).
    /// Nothing by default.
    fn hand_over(&self, _lock: u32, _next: NodeId) {}
}

/// No release consistency (sequential mode, tests, benches).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoConsistency;

impl ReleaseConsistency for NoConsistency {
    fn flush(&self, _: SyncPoint) -> Vec<PageId> {
        Vec::new()
    }
    fn invalidate(&self, _: SyncPoint, _: &[PageId]) {}
}
