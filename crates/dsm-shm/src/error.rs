//! The one error type of dsm-shm. Every set-up failure is an [`Error`], so a caller can fall
//! back to the network for that peer.

/// Why setting up or using a shared-memory channel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed (`call` names it: `memfd_create`, `mmap`, `sendmsg`, `pidfd_open`…).
    #[error("{call}: {source}")]
    Io {
        /// The system call.
        call: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A ring or channel parameter is out of range.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A frame longer than the ring can ever hold.
    #[error("frame of {len} bytes exceeds the ring's {max}")]
    FrameTooLarge {
        /// Payload length asked for.
        len: usize,
        /// Longest payload of this ring.
        max: usize,
    },
    /// The ring has no room for the frame (back-pressure: nothing was written). From
    /// `try_send` at once, from `send_timeout` when the ring stayed full.
    #[error("ring full")]
    Full,
    /// The shared area holds values no honest peer writes (a head ahead of the tail, a frame
    /// longer than the ring): the peer is faulty or hostile and the channel is unusable.
    #[error("shared ring corrupt: {0}")]
    Corrupt(String),
    /// The process at the other end of the Unix socket runs as another user (`SO_PEERCRED`):
    /// shared memory is offered only within one user id, the trust boundary.
    #[error("peer pid {pid} runs as uid {uid}, this process as uid {ours}")]
    ForeignUser {
        /// Peer's pid.
        pid: i32,
        /// Peer's user id.
        uid: u32,
        /// This process's effective user id.
        ours: u32,
    },
    /// The peer failed the keyed challenge (MAC mismatch): not a member of this cluster.
    #[error("peer failed the cluster-key challenge (MAC mismatch)")]
    WrongKey,
    /// The set-up exchange went wrong: a malformed or unexpected message, another cluster or
    /// rank, a closed socket.
    #[error("shared-memory handshake failed: {0}")]
    Handshake(String),
    /// The memory offered is not usable: not sealed against shrinking and growing, a size
    /// other than announced, a bad header.
    #[error("shared memory offered is unusable: {0}")]
    BadMemory(String),
    /// The peer process has exited (its pidfd became readable).
    #[error("peer process {pid} exited")]
    PeerExited {
        /// The peer's pid.
        pid: i32,
    },
}

// The system-call helpers serve the set-up modules, which are not built under loom.
#[cfg(not(loom))]
impl Error {
    /// The error of system call `call`.
    pub(crate) fn io(call: &'static str, source: impl Into<std::io::Error>) -> Self {
        Error::Io {
            call,
            source: source.into(),
        }
    }

    /// The error of system call `call` from nix.
    pub(crate) fn nix(call: &'static str, errno: nix::errno::Errno) -> Self {
        Error::Io {
            call,
            source: std::io::Error::from_raw_os_error(errno as i32),
        }
    }
}

/// Result of dsm-shm operations.
pub type Result<T> = std::result::Result<T, Error>;
