//! What the engines ask their driver to do.

use dsm_wire::{NodeId, PageId, SyncMsg};

/// An output of [`LockEngine`](crate::LockEngine) or [`BarrierEngine`](crate::BarrierEngine).
/// The driver performs them in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to node `to`.
    Send {
        /// Destination.
        to: NodeId,
        /// The message.
        message: SyncMsg,
    },
    /// This node now holds `lock`. Invalidate `notices` before any thread enters.
    Granted {
        /// Lock id.
        lock: u32,
        /// Pages written by earlier holders that this node must invalidate.
        notices: Vec<PageId>,
    },
    /// Another node waits for `lock`, which this node holds or will hold first: stop handing
    /// it between local threads soon (bounded handoffs, no starvation).
    RemoteWaiting {
        /// Lock id.
        lock: u32,
    },
    /// Every node reached barrier `epoch`. Invalidate `notices` before threads go on.
    BarrierDone {
        /// Barrier instance.
        epoch: u64,
        /// Pages written by any node before the barrier.
        notices: Vec<PageId>,
    },
    /// The nodes reached barrier `epoch` from different kinds of collective call: every node
    /// is refused it (and every node leaves it, so the next barrier is `epoch + 1`).
    BarrierRefused {
        /// Barrier instance.
        epoch: u64,
    },
}

/// The algorithm of one lock. Every node must configure a lock with the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockKind {
    /// Ricart–Agrawala: 2(N−1) messages per acquire, one hop between holders, no single point.
    #[default]
    RicartAgrawala,
    /// Home-queue: the lock's home (`lock % N`) queues requests; 3 messages per acquire
    /// (acquire, grant, release) whatever N, two hops between holders.
    HomeQueue,
}
