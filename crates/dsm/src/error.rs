//! The one error type of the `dsm` crate.

use dsm_wire::NodeId;

/// Everything a dsm call can fail with. Every wait in the crate has a timeout, and the error
/// names what it waited for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node of the cluster failed (its heartbeats stopped or its connection broke); the
    /// operation waited on it and cannot complete.
    #[error("node {rank} failed")]
    NodeFailed {
        /// The failed node's rank.
        rank: NodeId,
    },
    /// Some ranks never joined within the join timeout (`DSM_JOIN_TIMEOUT_MS`).
    #[error("join timed out: ranks {missing:?} never joined")]
    JoinTimeout {
        /// The ranks that did not arrive, ascending.
        missing: Vec<NodeId>,
    },
    /// An operation waited longer than its bound for something other than a join.
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited, e.g. `barrier 3`, `lock 7 (replies from [2])` or `page 5 of
        /// region 1 from its home, node 2` (a fault).
        what: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The configuration (environment or builder) is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// RDMA was required (`DSM_TRANSPORT=rdma!`) but cannot be used: no device here, a node
    /// without one, or a verb that failed while connecting.
    #[error("rank {rank}: RDMA required but unavailable: {reason}")]
    RdmaUnavailable {
        /// The rank that found out.
        rank: NodeId,
        /// Why (the device error, or the ranks that offered no RDMA).
        reason: String,
    },
    /// Shared memory was required (`DSM_TRANSPORT=shm`) but a peer could not pair: it runs
    /// on another host (or in another network namespace), as another user, or with another
    /// key.
    #[error("rank {rank}: shared memory required but node {peer} could not pair: {reason}")]
    ShmUnavailable {
        /// The rank that found out.
        rank: NodeId,
        /// The peer it could not pair with.
        peer: NodeId,
        /// Why.
        reason: String,
    },
    /// The userfaultfd fault engine failed.
    #[error("userfaultfd: {0}")]
    Uffd(#[from] dsm_uffd::Error),
    /// The coherence engine rejected a call (an unknown page, a protocol violation).
    #[error("coherence: {0}")]
    Coherence(#[from] dsm_core::Error),
    /// A lock or barrier call failed (timeout naming the nodes awaited, protocol error).
    #[error("lock: {0}")]
    Lock(#[from] dsm_locks::Error),
    /// A byte range outside a region.
    #[error("bytes {offset}..{offset}+{len} are outside a region of {size} bytes")]
    OutOfRange {
        /// First byte asked.
        offset: usize,
        /// Length asked.
        len: usize,
        /// Region size in bytes.
        size: usize,
    },
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] dsm_core::TransportError),
    /// A malformed frame arrived (bootstrap sockets); the peer is dropped.
    #[error("malformed frame: {0}")]
    Wire(#[from] dsm_wire::Error),
    /// A socket or system call failed.
    #[error("{call}: {source}")]
    Io {
        /// The call that failed, e.g. "connect to coordinator 10.0.0.1:7470".
        call: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Nodes reached one barrier from different collective calls (a barrier on one node, an
    /// allocation on another, say): rank 0 refused to pair them and every node's call failed.
    #[error("collective calls disagree at barrier {epoch}: {detail}")]
    CollectiveMismatch {
        /// The barrier instance.
        epoch: u64,
        /// What this node was doing.
        detail: String,
    },
    /// An earlier collective call (barrier, alloc, free, leave) failed or timed out on this
    /// node, so the nodes may no longer agree on which call is which: every later collective
    /// call fails with this.
    #[error("an earlier collective call failed ({first}); no collective call can succeed now")]
    CollectiveFailed {
        /// The first failure.
        first: String,
    },
    /// The master of a shared file refused a request ([`crate::views`]).
    #[error("shared file: {detail}")]
    View {
        /// What kind of refusal, to branch on.
        kind: crate::views::ViewErrorKind,
        /// The master's explanation (names the other view and its owner for an overlap).
        detail: String,
    },
    /// A peer broke the protocol (an unexpected message or a disagreeing collective call).
    #[error("protocol: {0}")]
    Protocol(String),
    /// `alloc` asked for a region larger than the cluster can serve. Checked on every node
    /// before any message is sent (every node makes the same call, so every node refuses it
    /// alike): the cluster goes on, and the next collective call pairs up as usual.
    #[error("region {name:?} of {bytes} bytes is too large: at most {max_bytes} bytes ({limit})")]
    RegionTooLarge {
        /// The region's name.
        name: String,
        /// Bytes asked (elements times element size; may exceed `usize`).
        bytes: u128,
        /// The largest region allowed.
        max_bytes: u64,
        /// What sets the limit.
        limit: &'static str,
    },
    /// Rank 0 found no room left for the region in the window of addresses regions are
    /// placed in (addresses are not reused after `free`); every node fails the `alloc`.
    #[error(
        "no address space left for region {name:?} of {bytes} bytes (regions share a window \
         of {window_bytes} bytes; addresses are not reused after free)"
    )]
    AddressSpaceExhausted {
        /// The region's name.
        name: String,
        /// Bytes asked.
        bytes: u64,
        /// Size of the whole window.
        window_bytes: u64,
    },
    /// A collective `alloc` that rank 0 agreed to failed on other nodes (they could not map
    /// the region or its home copies, expose them or serve them). Every node failed it and
    /// none keeps anything of it; the node that failed returns its own error instead.
    #[error("alloc of region {name:?} failed on ranks {ranks:?}: {what}")]
    AllocFailed {
        /// The region's name.
        name: String,
        /// The ranks that failed, ascending.
        ranks: Vec<NodeId>,
        /// What failed on each, e.g. `rank 1 could not map the region at its address`.
        what: String,
    },
    /// The node has left the cluster (after `leave`, or after it was declared failed).
    #[error("node has left the cluster")]
    Closed,
}

/// Result of a dsm call.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the call that produced it.
    pub(crate) fn io(call: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            call: call.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed() {
        let e = Error::JoinTimeout {
            missing: vec![1, 3],
        };
        assert_eq!(e.to_string(), "join timed out: ranks [1, 3] never joined");
        assert_eq!(Error::NodeFailed { rank: 2 }.to_string(), "node 2 failed");
        let e = Error::Timeout {
            what: "barrier 4".into(),
            waited_ms: 60,
        };
        assert!(e.to_string().contains("barrier 4"));
    }
}
