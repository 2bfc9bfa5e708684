//! Shared files with disjoint views: the part of `dsm::views` that does no network I/O.
//!
//! Programs on several nodes share one copy of a file, each updates its own disjoint *views*
//! (byte ranges) of it, and the updates are *merged* into the master copy at release. This
//! crate holds the logic the runtime drives:
//!
//! - [`ViewTable`]: the cluster-wide table of one file's views, kept by the file's master.
//!   Writable views never overlap; a view never reaches past the end of the file (files do not
//!   grow through views: a range beyond the end is refused with [`Error::BeyondEnd`]).
//! - [`confine`]: turns a peer's relative path into a path under the master's root, refusing
//!   `..`, absolute paths and symlinks that lead out.
//! - [`diff`] and [`apply`]: the exact byte runs a node changed in a view since its twin, at
//!   any byte alignment.
//! - [`MasterFile`]: the master copy and its redo journal; [`MasterFile::merge`] is atomic
//!   across a `SIGKILL` at any instant, and [`MasterFile::open`] recovers.
//! - [`Master`]: the master's service, requests in and replies out, so that the runtime only
//!   ferries messages.
//!
//! # Design
//!
//! The master copy is a plain file on the master node: the first node to open a path becomes
//! its master, and only the master's local file is ever written (on one host or on a shared
//! file system every node sees that same file; other nodes never write their view of it). It
//! is written in place with `pwrite(2)`. The
//! runtime may map it (`MAP_SHARED`) as the home copy of a release-mode region: on Linux a
//! `pwrite` to a file is coherent with every shared mapping of it, since both go through the
//! same page cache.
//!
//! That mapping is why a merge cannot be made atomic by copy-and-rename (write a new file,
//! `rename(2)` it over the old one): a mapping keeps the old inode, so every mapper would go on
//! seeing the file from before the rename, and each merge would copy the whole file. Instead a
//! merge is written twice, first into a *redo journal* beside the file, then in place:
//!
//! 1. encode the batch into the journal (`.<name>.dsm-journal`, same directory) and
//!    `fdatasync` it: the commit point;
//! 2. `pwrite` each record into the file and `fdatasync` it;
//! 3. truncate the journal to zero and `fsync` it.
//!
//! A kill before the journal is complete leaves the file untouched and a journal that does not
//! decode, which recovery throws away. A kill after it leaves a complete journal, which
//! recovery applies again. *Redo* (journal the new bytes) rather than *undo* (journal the old
//! bytes) because the new bytes are already in hand, as the merge message carried them: undo
//! would first read every old byte back from the file, and its commit point would be the
//! journal's removal after the file's `fsync`, so a crash just before it would roll back a
//! merge that was already wholly in the file. Replaying is idempotent: writing bytes that are
//! already there changes nothing, so a merge applied wholly or partly before the kill is
//! simply finished. With [`Durability::NoSync`] no `fsync` is issued; merges stay atomic
//! against a killed process (its writes are in the page cache), not against a power loss.
//!
//! # Journal layout
//!
//! Little-endian, fixed layout (see also the [`journal`] module):
//!
//! ```text
//! header   magic "DSMVJRNL" (8) | version 1 (u16) | reserved 0 (u16) | record_count (u32)
//!          | sequence (u64) | records_len (u64)                                  = 32 bytes
//! records  record_count × ( file offset (u64) | len (u64) | len bytes )
//! trailer  crc32c of header + records (u32) | commit marker "CMIT" (4)          =  8 bytes
//! ```
//!
//! The journal is outside input: [`decode_journal`] returns a typed [`Error`] on any byte
//! string, never panics, and never allocates more than the input's size. A committed journal
//! whose records fall outside the file is refused ([`Error::JournalRecordOutOfBounds`]), not
//! applied.
//!
//! # Quick start
//!
//! ```
//! use dsm_views::{Durability, MasterFile, ViewTable, apply, diff};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let root = std::env::temp_dir().join(format!("dsm-views-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&root)?;
//! // Opening recovers the journal left by a crashed merge, if any.
//! let mut master = MasterFile::open(&root, "grid.bin", Some(1 << 20))?;
//!
//! // Node 2 owns bytes 1000..6000; nobody else may define an overlapping view.
//! let mut table = ViewTable::new(master.len());
//! let id = table.define(2, 1000, 5000)?;
//! let view = *table.get(id).expect("just defined");
//! assert!(table.define(3, 5999, 10).is_err());
//!
//! // On node 2: twin at map time, diff at release.
//! let twin = vec![0u8; 5000];
//! let mut current = twin.clone();
//! current[17..40].fill(0xab);
//! let runs = diff(&twin, &current);
//!
//! // On the master: all of the release lands, or none of it.
//! let batch = runs
//!     .iter()
//!     .map(|r| Ok((view.file_offset(r.offset, r.bytes.len() as u64)?, &r.bytes[..])))
//!     .collect::<dsm_views::Result<Vec<_>>>()?;
//! master.merge(&batch, Durability::Fsync)?;
//!
//! // A reader applying the same runs to its copy of the view sees the same bytes.
//! let mut copy = twin.clone();
//! apply(&mut copy, &runs)?;
//! assert_eq!(copy, current);
//!
//! let mut check = [0u8; 23];
//! master.read_at(1017, &mut check)?;
//! assert_eq!(check, [0xab; 23]);
//! # drop(master);
//! # std::fs::remove_dir_all(&root)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Requirements
//!
//! Linux (or another Unix with `flock(2)` and `O_NOFOLLOW`). The root directory and the
//! files' directories must be writable by the master, on a file system where `fdatasync`
//! means durable. One master per file: the journal is locked with `flock(2)` and a second
//! [`MasterFile`] of the same file fails with [`Error::Busy`].
//!
//! # Cargo features
//!
//! None.

mod confine;
mod diff;
mod error;
pub mod journal;
mod master;
mod master_file;
mod table;

pub use confine::{MAX_PATH_LEN, confine};
pub use diff::{Run, apply, diff};
pub use error::{Error, Result};
pub use journal::{MAX_JOURNAL_LEN, decode_journal, encode_journal};
pub use master::{FileId, Master, Reply, Request};
#[doc(hidden)]
pub use master_file::CrashPoint;
pub use master_file::{Durability, MasterFile, MergeReport, Recovery};
pub use table::{Access, View, ViewId, ViewTable};

/// A node's rank in the cluster.
pub type NodeId = u32;
