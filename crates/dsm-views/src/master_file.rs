//! The master copy of a shared file and its redo journal.
//!
//! A merge is made atomic by writing it twice: first whole into the journal beside the file,
//! then in place. The journal is the commit point: until it is complete (length, commit marker,
//! checksum) the file has not been touched, and once it is, recovery finishes the merge by
//! writing it again. Rewriting bytes that are already there changes nothing, so replaying a merge
//! that had been fully or partly applied is always safe.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::confine::{JOURNAL_SUFFIX, confine};
use crate::journal::{MAX_JOURNAL_LEN, decode_journal, encode_journal};
use crate::{Error, Result};

/// How far a merge goes to make itself durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Durability {
    /// `fdatasync` the journal before the file is touched, the file before the journal is
    /// cleared, and the cleared journal: the merge survives a power loss once `merge` returns.
    Fsync,
    /// No `fsync` at all. The journal still makes the merge atomic against a killed process
    /// (the page cache survives it), but a power loss may lose or tear it.
    NoSync,
}

/// What a merge wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeReport {
    /// The merge's sequence number on this file.
    pub sequence: u64,
    /// Records in the batch.
    pub records: usize,
    /// Bytes written into the file.
    pub bytes: u64,
    /// Bytes written into the journal.
    pub journal_bytes: u64,
}

/// What `open` found in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// The journal was empty: the last merge finished (or there never was one).
    Clean,
    /// A committed merge was found and applied again.
    Replayed {
        /// Its sequence number.
        sequence: u64,
        /// Its records.
        records: usize,
    },
    /// An incomplete journal was found and thrown away: that merge never committed, and the
    /// file holds none of it.
    Discarded {
        /// Why it does not decode.
        reason: String,
    },
}

/// A place inside `merge` where a test can make the process die (see
/// [`MasterFile::set_crash_point`]). Not part of the stable API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    /// Half the journal's bytes written.
    MidJournal,
    /// The whole journal written, before its `fsync`.
    AfterJournalWrite,
    /// The journal written and synced, before the file is touched.
    AfterJournalSync,
    /// Half the records written into the file, and half of the next one.
    MidApply,
    /// The file written (and synced), before the journal is cleared.
    AfterApply,
}

/// The master copy of one shared file: the file, its journal, and the merges into it.
///
/// Fields drop in order: the file closes before the journal's lock is released, so no other
/// master can start recovering while this one still holds the file.
#[derive(Debug)]
pub struct MasterFile {
    path: PathBuf,
    file: File,
    len: u64,
    next_sequence: u64,
    recovery: Recovery,
    /// Set when a merge failed after its journal committed: the file may be torn until the
    /// journal is replayed by the next open.
    poisoned: bool,
    crash_point: Option<CrashPoint>,
    journal_path: PathBuf,
    journal: Flock<File>,
}

impl MasterFile {
    /// Opens `relative` under `root` (see [`confine`] for what is refused), creating it with
    /// `create_len` zero bytes when it does not exist and a length is given, and recovers its
    /// journal before returning. An existing file keeps its length; `create_len` is then
    /// ignored.
    pub fn open(root: &Path, relative: &str, create_len: Option<u64>) -> Result<Self> {
        let path = confine(root, relative)?;
        Self::open_confined(path, create_len)
    }

    /// `open` of a path that [`confine`] produced.
    pub(crate) fn open_confined(path: PathBuf, create_len: Option<u64>) -> Result<Self> {
        let file = open_or_create(&path, create_len)?;
        let meta = file.metadata().map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(Error::NotRegularFile(path));
        }
        let journal_path = journal_path(&path);
        let journal = open_journal(&journal_path)?;
        sync_parent(&path)?; // the file and journal names survive a power loss
        let mut master = Self {
            path,
            file,
            len: meta.len(),
            next_sequence: 0,
            recovery: Recovery::Clean,
            poisoned: false,
            crash_point: None,
            journal_path,
            journal,
        };
        master.recover()?;
        Ok(master)
    }

    /// Writes every `(file offset, bytes)` of `batch` into the file, all or nothing even if
    /// the process is killed midway: after the next [`open`](Self::open) the file holds either
    /// the whole batch or none of it. Later records win where records overlap.
    ///
    /// Refused, with nothing written: a record outside the file, a batch over
    /// [`MAX_JOURNAL_LEN`]. After an I/O error the merge may or may not be in the file (as
    /// with any failed write), but never in part once recovered: past the journal's commit the
    /// file refuses merges ([`Error::NeedsRecovery`]) until [`recover`](Self::recover) has
    /// replayed the journal (or the file is reopened).
    pub fn merge(&mut self, batch: &[(u64, &[u8])], durability: Durability) -> Result<MergeReport> {
        if self.poisoned {
            return Err(Error::NeedsRecovery {
                path: self.path.clone(),
            });
        }
        let mut bytes = 0u64;
        for &(offset, data) in batch {
            self.check_bounds(offset, data.len() as u64)?;
            bytes += data.len() as u64;
        }
        let journal = encode_journal(self.next_sequence, batch)?;
        self.commit_journal(&journal, durability)?;
        self.apply(batch, durability)?;
        self.clear_journal(durability)?;
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        Ok(MergeReport {
            sequence,
            records: batch.len(),
            bytes,
            journal_bytes: journal.len() as u64,
        })
    }

    /// Reads `buf.len()` bytes at `offset` of the file; refused when they are not all inside it.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(Error::BeyondEnd {
                    offset,
                    len,
                    file_len: self.len,
                });
            }
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::Read {
                path: self.path.clone(),
                source,
            })
    }

    /// Length of the file in bytes; it never changes while open.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's resolved path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal's path (`.<name>.dsm-journal` beside the file).
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// What the last recovery (the one `open` runs, or an explicit
    /// [`recover`](Self::recover)) found in the journal.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Whether a failed merge left the file needing [`recover`](Self::recover).
    pub fn needs_recovery(&self) -> bool {
        self.poisoned
    }

    /// Runs recovery again without reopening: replays a committed journal, discards an
    /// incomplete one. `open` does this first; call it after a merge failed with
    /// [`Error::NeedsRecovery`] or another I/O error.
    pub fn recover(&mut self) -> Result<&Recovery> {
        self.recovery = self.recover_journal()?;
        self.poisoned = false;
        Ok(&self.recovery)
    }

    /// Makes the process kill itself with `SIGKILL` when a later merge reaches `point`.
    /// For crash tests only.
    #[doc(hidden)]
    pub fn set_crash_point(&mut self, point: Option<CrashPoint>) {
        self.crash_point = point;
    }

    fn crash_at(&self, point: CrashPoint) {
        if self.crash_point == Some(point) {
            die();
        }
    }

    fn check_bounds(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::MergeOutOfBounds {
                offset,
                len,
                file_len: self.len,
            }),
        }
    }

    /// Writes the journal whole (it is empty between merges) and syncs it: the commit point.
    fn commit_journal(&mut self, journal: &[u8], durability: Durability) -> Result<()> {
        if self.crash_point == Some(CrashPoint::MidJournal) {
            let _ = self.journal.write_all_at(&journal[..journal.len() / 2], 0);
            die();
        }
        let written = self
            .journal
            .write_all_at(journal, 0)
            .map_err(|source| Error::Write {
                path: self.journal_path.clone(),
                source,
            });
        self.crash_at(CrashPoint::AfterJournalWrite);
        let synced = written.and_then(|()| match durability {
            Durability::Fsync => self.journal.sync_data().map_err(|source| Error::Sync {
                path: self.journal_path.clone(),
                source,
            }),
            Durability::NoSync => Ok(()),
        });
        if let Err(e) = synced {
            // The file is untouched; take the journal back so that no recovery replays a
            // merge reported as failed.
            self.poisoned = self.journal.set_len(0).is_err();
            return Err(e);
        }
        self.crash_at(CrashPoint::AfterJournalSync);
        Ok(())
    }

    fn apply(&mut self, batch: &[(u64, &[u8])], durability: Durability) -> Result<()> {
        let half = batch.len() / 2;
        for (i, &(offset, data)) in batch.iter().enumerate() {
            if i == half && self.crash_point == Some(CrashPoint::MidApply) {
                let _ = self.file.write_all_at(&data[..data.len() / 2], offset);
                die();
            }
            if let Err(source) = self.file.write_all_at(data, offset) {
                self.poisoned = true; // torn until the journal is replayed
                return Err(Error::Write {
                    path: self.path.clone(),
                    source,
                });
            }
        }
        if durability == Durability::Fsync
            && let Err(source) = self.file.sync_data()
        {
            self.poisoned = true;
            return Err(Error::Sync {
                path: self.path.clone(),
                source,
            });
        }
        self.crash_at(CrashPoint::AfterApply);
        Ok(())
    }

    /// Empties the journal. A failure poisons the file: the next journal would be written over
    /// a longer old one, and its trailing bytes would make a committed merge look torn.
    fn clear_journal(&mut self, durability: Durability) -> Result<()> {
        let result = self
            .journal
            .set_len(0)
            .map_err(|source| Error::Truncate {
                path: self.journal_path.clone(),
                source,
            })
            .and_then(|()| match durability {
                Durability::Fsync => self.journal.sync_all().map_err(|source| Error::Sync {
                    path: self.journal_path.clone(),
                    source,
                }),
                Durability::NoSync => Ok(()),
            });
        self.poisoned |= result.is_err();
        result
    }

    /// Replays a committed journal, discards an incomplete one.
    fn recover_journal(&mut self) -> Result<Recovery> {
        let journal_len = self
            .journal
            .metadata()
            .map_err(|source| Error::Read {
                path: self.journal_path.clone(),
                source,
            })?
            .len();
        if journal_len == 0 {
            return Ok(Recovery::Clean);
        }
        if journal_len > MAX_JOURNAL_LEN {
            return self.discard(format!("{journal_len} bytes, over the journal limit"));
        }
        // journal_len <= MAX_JOURNAL_LEN (1 GiB) fits in usize on 64-bit Linux.
        let mut bytes = vec![0; usize::try_from(journal_len).unwrap_or(0)];
        self.journal
            .read_exact_at(&mut bytes, 0)
            .map_err(|source| Error::Read {
                path: self.journal_path.clone(),
                source,
            })?;
        let journal = match decode_journal(&bytes) {
            Ok(journal) => journal,
            Err(e) => return self.discard(e.to_string()),
        };
        let batch: Vec<(u64, &[u8])> = journal
            .records
            .iter()
            .map(|r| (r.offset, r.bytes))
            .collect();
        for &(offset, data) in &batch {
            self.check_bounds(offset, data.len() as u64).map_err(|_| {
                Error::JournalRecordOutOfBounds {
                    offset,
                    len: data.len() as u64,
                    file_len: self.len,
                }
            })?;
        }
        self.apply(&batch, Durability::Fsync)?;
        self.clear_journal(Durability::Fsync)?;
        self.next_sequence = journal.sequence.wrapping_add(1);
        tracing::info!(path = %self.path.display(), sequence = journal.sequence, records = batch.len(), "replayed a committed merge");
        Ok(Recovery::Replayed {
            sequence: journal.sequence,
            records: batch.len(),
        })
    }

    fn discard(&mut self, reason: String) -> Result<Recovery> {
        tracing::warn!(path = %self.path.display(), %reason, "discarded an uncommitted merge journal");
        self.clear_journal(Durability::Fsync)?;
        Ok(Recovery::Discarded { reason })
    }
}

impl AsFd for MasterFile {
    /// The master file's descriptor, e.g. to map it. Writes must go through
    /// [`MasterFile::merge`], or they are neither atomic nor recovered.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// `.<name>.dsm-journal` in the file's directory: the same file system, so the journal is
/// as durable as the file, and a name a peer cannot request.
fn journal_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(JOURNAL_SUFFIX);
    path.with_file_name(name)
}

fn open_or_create(path: &Path, create_len: Option<u64>) -> Result<File> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        // Refuse FIFOs, devices and directories before open(2) can block or act on them.
        if !meta.is_file() {
            return Err(Error::NotRegularFile(path.to_owned()));
        }
    }
    let open_error = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW);
    match options.open(path) {
        Ok(file) => return Ok(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(open_error(e)),
    }
    let Some(len) = create_len else {
        return Err(Error::NotFound(path.to_owned()));
    };
    let file = match options.clone().create_new(true).mode(0o644).open(path) {
        Ok(file) => file,
        // Somebody else created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return options.open(path).map_err(open_error);
        }
        Err(e) => return Err(open_error(e)),
    };
    file.set_len(len).map_err(|source| Error::Truncate {
        path: path.to_owned(),
        source,
    })?;
    file.sync_all().map_err(|source| Error::Sync {
        path: path.to_owned(),
        source,
    })?;
    Ok(file)
}

fn open_journal(path: &Path) -> Result<Flock<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            Error::Busy(path.to_owned())
        } else {
            Error::Lock {
                path: path.to_owned(),
                source: errno.into(),
            }
        }
    })
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let handle = File::open(dir).map_err(|source| Error::Open {
        path: dir.to_owned(),
        source,
    })?;
    handle.sync_all().map_err(|source| Error::Sync {
        path: dir.to_owned(),
        source,
    })
}

/// Dies the way a crash does: no destructors, no flushing, no unwinding.
fn die() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}
