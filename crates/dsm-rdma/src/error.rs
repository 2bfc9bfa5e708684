//! The crate's one error type.

use dsm_core::TransportError;
use dsm_wire::NodeId;

/// Why an RDMA operation failed. Each variant says which verb or check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `ibv_get_device_list` failed or found nothing: this machine has no RDMA device. The
    /// runtime falls back to TCP on this error unless RDMA was required.
    #[error("no RDMA device ({detail}); use the TCP transport")]
    NoDevice {
        /// What `ibv_get_device_list` said.
        detail: String,
    },
    /// A verb returned an error.
    #[error("{verb} failed: {source}")]
    Verb {
        /// The verb (`ibv_open_device`, `ibv_modify_qp(RTR)`, `ibv_post_send(RDMA_READ)`, ...).
        verb: &'static str,
        /// The errno it returned or set.
        source: std::io::Error,
    },
    /// A work request completed with an error status.
    #[error("{opcode} work request completed with status {status} (vendor error {vendor_err:#x})")]
    Completion {
        /// The work request's operation (`RDMA_READ`, `SEND`, ...).
        opcode: &'static str,
        /// `ibv_wc_status_str` of the status.
        status: String,
        /// Provider-specific error code.
        vendor_err: u32,
    },
    /// The port is not `PORT_ACTIVE`.
    #[error("port {port} of {device} is not active")]
    PortNotActive {
        /// Device name.
        device: String,
        /// Port number.
        port: u8,
    },
    /// No IPv4-mapped (RoCE v2) GID on the port, and none was configured.
    #[error("port {port} of {device} has no IPv4-mapped GID; set DSM_RDMA_GID_INDEX")]
    NoGid {
        /// Device name.
        device: String,
        /// Port number.
        port: u8,
    },
    /// A peer's connection data is out of range.
    #[error("connection data from node {peer}: {field} = {value:#x} is out of range")]
    BadConnInfo {
        /// The peer.
        peer: NodeId,
        /// Offending field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A peer's announced region (address, length, key) is out of range.
    #[error("region key {region} from node {peer}: {reason}")]
    BadRegionKey {
        /// The peer.
        peer: NodeId,
        /// Region id.
        region: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A node outside `0..size`, this node itself, or one not connected yet.
    #[error("node {0} is not a connected peer")]
    UnknownPeer(NodeId),
    /// A bounded pool (staging slots, message slots) is empty: too many requests in flight.
    #[error("all {capacity} {what} slots are in flight")]
    Exhausted {
        /// Which pool.
        what: &'static str,
        /// Its size.
        capacity: usize,
    },
    /// A control message does not fit in one SEND slot.
    #[error("a {len}-byte frame exceeds the {limit}-byte message slot")]
    MessageTooLarge {
        /// Frame length.
        len: usize,
        /// Slot length.
        limit: usize,
    },
    /// The region is already exposed.
    #[error("region {0} is already exposed")]
    AlreadyExposed(u32),
    /// A wait ran out of time.
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        ms: u64,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps the current `errno` (or `code` when the verb returns it) for `verb`.
    pub(crate) fn verb(verb: &'static str, code: i32) -> Self {
        let source = if code > 0 {
            std::io::Error::from_raw_os_error(code)
        } else {
            std::io::Error::last_os_error()
        };
        Error::Verb { verb, source }
    }

    /// True when this machine has no RDMA device, so TCP is the way.
    pub fn is_no_device(&self) -> bool {
        matches!(self, Error::NoDevice { .. })
    }
}

impl From<Error> for TransportError {
    fn from(error: Error) -> Self {
        let call = match &error {
            Error::Verb { verb, .. } => verb,
            Error::Completion { opcode, .. } => opcode,
            Error::UnknownPeer(node) => return TransportError::UnknownPeer(*node),
            _ => "rdma",
        };
        TransportError::Io {
            call,
            detail: error.to_string(),
        }
    }
}
