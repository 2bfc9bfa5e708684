//! The one error type of dsm-wire: every way a frame from outside can be malformed.

/// Why a frame or message was rejected. Decoding never panics: every malformed input maps to
/// one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer bytes than the header or the declared body needs.
    #[error("truncated {what}: need {needed} bytes, have {available}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The first four bytes are not dsm's magic: not a dsm peer, or a desynchronised stream.
    #[error("bad magic {0:#010x}: not a dsm frame")]
    BadMagic(u32),
    /// The peer speaks another protocol version.
    #[error("protocol version {got}, expected {expected}")]
    WrongVersion {
        /// Version in the frame.
        got: u16,
        /// Version this build speaks.
        expected: u16,
    },
    /// The frame belongs to another cluster.
    #[error("cluster id {got:#x}, expected {expected:#x}")]
    WrongCluster {
        /// Cluster id in the frame.
        got: u64,
        /// Our cluster id.
        expected: u64,
    },
    /// The header's crc32c does not match its bytes.
    #[error("header checksum {got:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        /// Checksum carried.
        got: u32,
        /// Checksum computed.
        computed: u32,
    },
    /// The body's crc32c does not match its bytes.
    #[error("body checksum {got:#010x}, computed {computed:#010x}")]
    BodyChecksum {
        /// Checksum carried.
        got: u32,
        /// Checksum computed.
        computed: u32,
    },
    /// The command code names no message this version knows.
    #[error("unknown command {0:#06x}")]
    UnknownCommand(u16),
    /// The declared body length exceeds the configured limit.
    #[error("body length {len} over the limit {limit}")]
    BodyTooLong {
        /// Declared length.
        len: u32,
        /// Limit in force.
        limit: u32,
    },
    /// A page index beyond the largest region the cluster allows.
    #[error("page index {page} out of range (limit {limit})")]
    PageOutOfRange {
        /// Index carried.
        page: u32,
        /// Exclusive upper bound.
        limit: u32,
    },
    /// A field holds a value outside its domain (an enum tag, a flag, an offset).
    #[error("invalid {field}: {value}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// Offending value.
        value: u64,
    },
    /// A count (list length, byte run) is larger than the message can hold.
    #[error("{field} count {count} over the limit {limit}")]
    CountTooLarge {
        /// Field name.
        field: &'static str,
        /// Count carried.
        count: u64,
        /// Limit.
        limit: u64,
    },
    /// Bytes left over after the message's last field.
    #[error("{extra} trailing bytes after command {command:#06x}")]
    TrailingBytes {
        /// Command decoded.
        command: u16,
        /// Bytes left.
        extra: usize,
    },
}

/// Result of dsm-wire operations.
pub type Result<T> = std::result::Result<T, Error>;
