//! The one error type of dsm-locks.

use std::time::Duration;

use dsm_wire::NodeId;

use crate::LockKind;

/// Why a lock or barrier operation failed. Messages from peers that break the protocol get a
/// typed error and change nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An acquire waited `waited` without getting the lock.
    #[error(
        "lock {lock}: not acquired after {waited:?}; still awaiting nodes {awaiting:?}{}",
        if *held_locally { " (the node holds it: another thread of this node has it)" } else { "" }
    )]
    Timeout {
        /// Lock id.
        lock: u32,
        /// How long the caller waited.
        waited: Duration,
        /// Nodes whose reply or grant had not arrived (empty when the node owns the lock).
        awaiting: Vec<NodeId>,
        /// The node owned the lock and a local thread was holding it.
        held_locally: bool,
    },
    /// An acquire stopped waiting because a node failed ([`LockTable::node_failed`](crate::LockTable::node_failed)):
    /// the caller decides whether to wait again.
    #[error("lock {lock}: the wait was interrupted by a node failure")]
    Interrupted {
        /// Lock id.
        lock: u32,
    },
    /// A barrier wait timed out.
    #[error("barrier {epoch}: not complete after {waited:?}; still awaiting nodes {awaiting:?}")]
    BarrierTimeout {
        /// Barrier instance.
        epoch: u64,
        /// How long the caller waited.
        waited: Duration,
        /// Nodes whose arrival had not reached this node.
        awaiting: Vec<NodeId>,
    },
    /// The nodes reached this barrier from different kinds of collective call; every node
    /// was refused it.
    #[error("barrier {0}: refused, the nodes reached it from different collective calls")]
    BarrierRefused(u64),
    /// A peer sent a message the protocol does not allow in this state (stale, duplicate, or
    /// from the wrong node). Nothing changed.
    #[error("lock/barrier {id}: unexpected {what} from node {from}")]
    Unexpected {
        /// Sender.
        from: NodeId,
        /// Lock id or barrier epoch.
        id: u64,
        /// What was wrong.
        what: &'static str,
    },
    /// A message for one lock algorithm arrived for a lock configured with the other.
    #[error("lock {lock} is a {kind:?} lock; node {from} used the other algorithm")]
    WrongKind {
        /// Lock id.
        lock: u32,
        /// The kind configured here.
        kind: LockKind,
        /// Sender.
        from: NodeId,
    },
    /// A node id outside `0..nodes`.
    #[error("node {node} is not in the cluster of {nodes}")]
    UnknownNode {
        /// The id.
        node: NodeId,
        /// Cluster size.
        nodes: u32,
    },
    /// A message from a node declared failed ([`LockEngine::node_failed`](crate::LockEngine::node_failed)).
    #[error("node {0} was declared failed")]
    NodeFailed(NodeId),
    /// This node already has a request outstanding for the lock (one per node and lock).
    #[error("lock {0}: already requested or held by this node")]
    AlreadyRequested(u32),
    /// A release of a lock this node does not hold.
    #[error("lock {0}: released but not held")]
    NotHeld(u32),
    /// Changing the algorithm of a lock that is in use.
    #[error("lock {0}: kind changed while in use")]
    KindInUse(u32),
    /// More distinct locks than the configured bound.
    #[error("more than {limit} locks in use (lock {lock} refused)")]
    TooManyLocks {
        /// Lock refused.
        lock: u32,
        /// The bound.
        limit: usize,
    },
    /// More threads waiting for one lock on this node than the bound.
    #[error("lock {lock}: more than {limit} local waiters")]
    TooManyWaiters {
        /// Lock id.
        lock: u32,
        /// The bound.
        limit: usize,
    },
    /// A barrier arrival while this node is already in the barrier.
    #[error("barrier {0}: this node already arrived")]
    BarrierBusy(u64),
    /// A barrier message given to the lock engine, or a lock message to the barrier.
    #[error("message {0} is not for this engine")]
    NotForEngine(&'static str),
    /// A barrier call or message on a table built by `LockTable::locks_only`.
    #[error("this lock table has no barrier engine (built by LockTable::locks_only)")]
    NoBarrier,
}

/// Result of dsm-locks operations.
pub type Result<T> = std::result::Result<T, Error>;
