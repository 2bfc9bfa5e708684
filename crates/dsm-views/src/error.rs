//! The one error type of dsm-views: every way a request, a path, a merge or a journal can be
//! refused. Input from a peer or from a file always lands here, never in a panic.

use std::io;
use std::path::PathBuf;

use crate::{FileId, NodeId, ViewId};

/// Why an operation of dsm-views failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- view table -------------------------------------------------------------------------
    /// `define` of a view with zero length.
    #[error("view at offset {offset} has zero length")]
    ZeroLength {
        /// Requested offset.
        offset: u64,
    },
    /// `offset + len` does not fit in a `u64`.
    #[error("view range {offset} + {len} overflows u64")]
    RangeOverflow {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
    },
    /// The range reaches past the end of the file; files never grow through a view.
    #[error("range {offset}..{end} is beyond the end of the file ({file_len} bytes)", end = offset.saturating_add(*len))]
    BeyondEnd {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The range overlaps a writable view already defined on the file, by this node or another.
    #[error(
        "range {offset}..{end} overlaps view {other} ({other_offset}..{other_end}) owned by node {owner}",
        end = offset.saturating_add(*len),
        other_end = other_offset.saturating_add(*other_len)
    )]
    Overlap {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The view in the way.
        other: ViewId,
        /// Its offset.
        other_offset: u64,
        /// Its length.
        other_len: u64,
        /// The node that owns it.
        owner: NodeId,
    },
    /// Every view id of the table has been handed out.
    #[error("no view ids left on this file")]
    ViewIdsExhausted,
    /// No view with this id on the file (never defined, or closed).
    #[error("no view {0}")]
    UnknownView(ViewId),
    /// A node used a view another node owns.
    #[error("view {view} is owned by node {owner}, not node {node}")]
    NotOwner {
        /// The view.
        view: ViewId,
        /// Its owner.
        owner: NodeId,
        /// The node that asked.
        node: NodeId,
    },
    /// A merge through a read-only view, or a file opened `Read`.
    #[error("view or file is read-only")]
    ReadOnly,

    // ---- diffs and merges -------------------------------------------------------------------
    /// A run of a diff does not lie inside its view (`apply`, or a merge request).
    #[error("run {offset}+{len} is outside a view of {view_len} bytes")]
    RunOutOfBounds {
        /// Offset of the run within the view.
        offset: u64,
        /// Length of the run.
        len: u64,
        /// Length of the view.
        view_len: u64,
    },
    /// A merge record does not lie inside the master file.
    #[error("merge record {offset}+{len} is outside the file ({file_len} bytes)")]
    MergeOutOfBounds {
        /// File offset of the record.
        offset: u64,
        /// Length of the record.
        len: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The merge would need a journal larger than [`crate::MAX_JOURNAL_LEN`] (or more than
    /// `u32::MAX` records).
    #[error("merge of {records} records needs a {len}-byte journal, limit {limit}")]
    MergeTooLarge {
        /// Records in the batch.
        records: usize,
        /// Journal bytes it needs.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// An earlier merge failed after its journal committed: the file may hold part of it, so
    /// the journal must be replayed ([`crate::MasterFile::recover`], or a reopen) before the
    /// master copy serves again.
    #[error("{path}: an earlier merge failed half-applied; recover the file first")]
    NeedsRecovery {
        /// The master file.
        path: PathBuf,
    },

    // ---- journal decoding (a journal is input from a file) -----------------------------------
    /// The journal ends before the `what` it declares.
    #[error("journal truncated in {what}: need {needed} bytes, have {available}")]
    JournalTruncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The journal does not start with [`crate::journal::JOURNAL_MAGIC`].
    #[error("journal magic {0:02x?} is not dsm-views'")]
    JournalMagic([u8; 8]),
    /// The journal was written by another layout version.
    #[error("journal version {got}, expected {expected}")]
    JournalVersion {
        /// Version in the journal.
        got: u16,
        /// Version this build writes.
        expected: u16,
    },
    /// A field of the journal holds a value no writer produces (reserved bits, an impossible
    /// length or count).
    #[error("journal field {field} holds invalid value {value}")]
    JournalField {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The journal's crc32c does not match its bytes.
    #[error("journal checksum {got:#010x}, computed {computed:#010x}")]
    JournalChecksum {
        /// Checksum stored.
        got: u32,
        /// Checksum computed.
        computed: u32,
    },
    /// The commit marker is missing: the journal write never finished.
    #[error("journal commit marker {0:02x?} missing")]
    JournalUncommitted([u8; 4]),
    /// A committed journal names bytes outside the master file: the file was shrunk behind our
    /// back, or the journal belongs to another file. Recovery refuses to guess.
    #[error("journal record {offset}+{len} is outside the file ({file_len} bytes)")]
    JournalRecordOutOfBounds {
        /// File offset of the record.
        offset: u64,
        /// Length of the record.
        len: u64,
        /// Length of the file.
        file_len: u64,
    },

    // ---- paths ------------------------------------------------------------------------------
    /// The requested path is empty.
    #[error("empty path")]
    PathEmpty,
    /// The requested path contains a NUL byte.
    #[error("path contains a NUL byte")]
    PathNul,
    /// The requested path is absolute; only paths relative to the root are served.
    #[error("absolute path {0:?} refused")]
    PathAbsolute(String),
    /// The requested path has a `..` component.
    #[error("path {0:?} has a `..` component")]
    PathParent(String),
    /// The requested path is longer than [`crate::MAX_PATH_LEN`].
    #[error("path of {len} bytes is over the limit {limit}")]
    PathTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The requested path names a journal, which only dsm-views itself may touch.
    #[error("path {0:?} names a dsm-views journal")]
    PathReserved(String),
    /// A symlink on the path leads out of the root.
    #[error("{path} leads to {target}, outside the root")]
    PathEscapes {
        /// The symlink.
        path: PathBuf,
        /// Where it leads.
        target: PathBuf,
    },
    /// A symlink on the path points nowhere; following it could create a file anywhere.
    #[error("{0} is a dangling symlink")]
    DanglingSymlink(PathBuf),
    /// The path names a directory, a device or another non-regular file.
    #[error("{0} is not a regular file")]
    NotRegularFile(PathBuf),
    /// The file does not exist and no length to create it with was given.
    #[error("{0} does not exist")]
    NotFound(PathBuf),

    // ---- system calls -----------------------------------------------------------------------
    /// `realpath(3)` of the root or of a symlink on the path, or `lstat(2)` while confining.
    #[error("resolve {path}: {source}")]
    Resolve {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `open(2)` of the master file, its journal or its directory.
    #[error("open {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another process (or another `MasterFile` in this one) holds the journal's `flock(2)`:
    /// two masters of one file would tear each other's merges.
    #[error("{0} is already served by another master")]
    Busy(PathBuf),
    /// `flock(2)` of the journal failed for another reason.
    #[error("lock {path}: {source}")]
    Lock {
        /// The journal.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `pread(2)` or `fstat(2)` of the master file or its journal.
    #[error("read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `pwrite(2)` to the master file or its journal.
    #[error("write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `fsync(2)`/`fdatasync(2)` of the master file, its journal or its directory.
    #[error("sync {path}: {source}")]
    Sync {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `ftruncate(2)` of the master file (at creation) or of its journal.
    #[error("truncate {path}: {source}")]
    Truncate {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    // ---- master service ---------------------------------------------------------------------
    /// No open file with this handle.
    #[error("no open file {0}")]
    UnknownFile(FileId),
    /// The node has not opened this file (or closed it).
    #[error("node {node} has not opened file {file}")]
    NotOpen {
        /// The file.
        file: FileId,
        /// The node.
        node: NodeId,
    },
    /// The node already has this file open.
    #[error("node {node} already has file {file} open")]
    AlreadyOpen {
        /// The file.
        file: FileId,
        /// The node.
        node: NodeId,
    },
    /// Every file handle has been handed out.
    #[error("no file handles left")]
    FileIdsExhausted,
}

/// Result of dsm-views operations.
pub type Result<T> = std::result::Result<T, Error>;
