//! The one error type of dsm-tcp-fallback.

use dsm_wire::NodeId;

/// Why starting, running or stopping the TCP transport failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket or io_uring call failed (`call` names it).
    #[error("{call}: {source}")]
    Io {
        /// The syscall or io_uring operation.
        call: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A peer sent a frame dsm-wire rejects (bad magic, checksum, cluster, length, command…).
    #[error("malformed frame from node {peer}: {source}")]
    Wire {
        /// Peer the connection belongs to (or claimed to be, during the handshake).
        peer: NodeId,
        /// What was wrong.
        #[source]
        source: dsm_wire::Error,
    },
    /// A frame failed authentication: injected, altered, replayed or reordered on the path.
    #[error("frame from node {peer} rejected: {source}")]
    Forged {
        /// Peer the connection belongs to.
        peer: NodeId,
        /// Which frame and why.
        #[source]
        source: crate::reader::ReadError,
    },
    /// A well-formed frame that breaks the transport protocol (wrong sender rank, a reply
    /// nobody asked for, a handshake message after the handshake).
    #[error("protocol violation by node {peer}: {what}")]
    Protocol {
        /// Offending peer.
        peer: NodeId,
        /// What it did.
        what: String,
    },
    /// The handshake with a connecting or dialled socket failed (bad MAC, unexpected rank…).
    #[error("handshake with {who} failed: {reason}")]
    Handshake {
        /// The peer's address or claimed rank.
        who: String,
        /// Why.
        reason: String,
    },
    /// A peer said nothing within the handshake timeout (the connection is dropped).
    #[error("handshake with {who}: no answer within the handshake timeout")]
    HandshakeSilent {
        /// The peer's address or claimed rank.
        who: String,
    },
    /// The mesh did not complete within the connect timeout.
    #[error(
        "mesh not connected after {waited_ms} ms: ranks {missing:?} never connected ({last_error})"
    )]
    MeshTimeout {
        /// Ranks with no connection.
        missing: Vec<NodeId>,
        /// Milliseconds waited.
        waited_ms: u128,
        /// The last error seen while connecting, if any.
        last_error: String,
    },
    /// The configuration is inconsistent (rank out of range, empty peer list).
    #[error("bad configuration: {0}")]
    Config(String),
    /// The transport thread panicked or could not be joined.
    #[error("transport thread of node {0} panicked")]
    ThreadPanicked(NodeId),
}

impl Error {
    /// The error of a connection to `peer` whose stream could not be read on.
    pub(crate) fn from_read(peer: NodeId, error: crate::reader::ReadError) -> Self {
        match error {
            crate::reader::ReadError::Wire(source) => Error::Wire { peer, source },
            forged => Error::Forged {
                peer,
                source: forged,
            },
        }
    }

    /// Whether this says only that nobody answered (a connection refused or timed out, a
    /// silent peer), as opposed to a peer's answer that was wrong (a bad key, another
    /// cluster): the second says more about why a mesh did not form.
    pub(crate) fn is_silence(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::HandshakeSilent { .. })
    }

    /// Wraps the current OS error for `call`.
    pub(crate) fn io(call: &'static str, source: std::io::Error) -> Self {
        Error::Io { call, source }
    }
}

/// Result of dsm-tcp-fallback operations.
pub type Result<T> = std::result::Result<T, Error>;
