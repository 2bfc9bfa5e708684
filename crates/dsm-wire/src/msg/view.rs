//! File-level views: open a shared file, define disjoint views, merge updates, close.

use crate::codec::{Reader, Writer};
use crate::{Error, Result};

/// Longest file path carried.
pub const MAX_PATH_LEN: usize = 4096;
/// Largest merge payload in one message.
pub const MAX_MERGE_LEN: usize = 512 * 1024;

/// Longest `detail` text of a refusal.
pub const MAX_DETAIL_LEN: usize = 1024;
/// Most runs one `MergeRuns` carries.
pub const MAX_MERGE_RUNS: usize = 16 * 1024;
/// Largest byte range one `Read` asks for (its `Data` answer carries at most this).
pub const MAX_READ_LEN: u32 = 512 * 1024;

/// Shared-file messages: a node asks rank 0 which node is a path's master, then sends the
/// master its requests; every request carries a `req` id its answer repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewMsg {
    /// To rank 0: which node is the master of `path`? The first node to ask becomes it.
    Locate {
        /// Request id.
        req: u64,
        /// Path relative to the master's root.
        path: String,
    },
    /// Rank 0's answer to `Locate`.
    Located {
        /// Request id.
        req: u64,
        /// The master's rank.
        master: u32,
    },
    /// To the master: open a shared file.
    Open {
        /// Request id.
        req: u64,
        /// Path relative to the master's root.
        path: String,
        /// Open for writing.
        writable: bool,
        /// Create the file with this many bytes when it does not exist (0: do not create).
        create_len: u64,
    },
    /// A file was opened.
    Opened {
        /// Request id.
        req: u64,
        /// File handle.
        file: u32,
        /// File length in bytes.
        len: u64,
    },
    /// Define a view: a byte range of an open file that only this node updates. Answered by
    /// `Status` with the view's handle.
    Define {
        /// Request id.
        req: u64,
        /// File handle.
        file: u32,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Read bytes of the master copy.
    Read {
        /// Request id.
        req: u64,
        /// File handle.
        file: u32,
        /// Byte offset in the file.
        offset: u64,
        /// Bytes wanted, at most [`MAX_READ_LEN`].
        len: u32,
    },
    /// The bytes a `Read` asked for.
    Data {
        /// Request id.
        req: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// One run of changed bytes of a view; the runs of one release share `req` and are
    /// applied together, atomically, when its `Commit` arrives.
    Merge {
        /// Request id (the release's).
        req: u64,
        /// View handle.
        view: u32,
        /// Offset within the view.
        offset: u64,
        /// New bytes.
        data: Vec<u8>,
    },
    /// Several runs of changed bytes of a view in one message (at most [`MAX_MERGE_RUNS`]
    /// runs and [`MAX_MERGE_LEN`] bytes in all); staged with `Merge` runs of the same `req`.
    MergeRuns {
        /// Request id (the release's).
        req: u64,
        /// View handle.
        view: u32,
        /// (offset within the view, new bytes) per run.
        runs: Vec<(u64, Vec<u8>)>,
    },
    /// Apply every `Merge` run of release `req` to the master copy, all or nothing; answered
    /// by `Status` once it is written (and synced).
    Commit {
        /// Request id (the release's).
        req: u64,
        /// File handle.
        file: u32,
        /// View handle.
        view: u32,
    },
    /// Close one view of an open file.
    CloseView {
        /// Request id.
        req: u64,
        /// File handle.
        file: u32,
        /// View handle.
        view: u32,
    },
    /// Close a file handle (and this node's views on it).
    Close {
        /// Request id.
        req: u64,
        /// Handle.
        handle: u32,
    },
    /// Outcome of a request: code 0 = ok (with a handle where one was made), else the kind
    /// of refusal and a text saying what was refused and why.
    Status {
        /// Request id.
        req: u64,
        /// 0 or an error code.
        code: u16,
        /// Handle made, if any.
        handle: u32,
        /// What went wrong (empty when ok).
        detail: String,
    },
}

pub(crate) const OPEN: u16 = 0x0501;
pub(crate) const OPENED: u16 = 0x0502;
pub(crate) const DEFINE: u16 = 0x0503;
pub(crate) const MERGE: u16 = 0x0504;
pub(crate) const CLOSE: u16 = 0x0505;
pub(crate) const STATUS: u16 = 0x0506;
pub(crate) const LOCATE: u16 = 0x0507;
pub(crate) const LOCATED: u16 = 0x0508;
pub(crate) const READ: u16 = 0x0509;
pub(crate) const DATA: u16 = 0x050a;
pub(crate) const COMMIT: u16 = 0x050b;
pub(crate) const CLOSE_VIEW: u16 = 0x050c;
pub(crate) const MERGE_RUNS: u16 = 0x050d;

impl ViewMsg {
    pub(crate) fn command(&self) -> u16 {
        match self {
            ViewMsg::Locate { .. } => LOCATE,
            ViewMsg::Located { .. } => LOCATED,
            ViewMsg::Open { .. } => OPEN,
            ViewMsg::Opened { .. } => OPENED,
            ViewMsg::Define { .. } => DEFINE,
            ViewMsg::Read { .. } => READ,
            ViewMsg::Data { .. } => DATA,
            ViewMsg::Merge { .. } => MERGE,
            ViewMsg::MergeRuns { .. } => MERGE_RUNS,
            ViewMsg::Commit { .. } => COMMIT,
            ViewMsg::CloseView { .. } => CLOSE_VIEW,
            ViewMsg::Close { .. } => CLOSE,
            ViewMsg::Status { .. } => STATUS,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        match self {
            ViewMsg::Locate { req, path } => {
                w.u64(*req);
                w.bytes(path.as_bytes());
            }
            ViewMsg::Located { req, master } => {
                w.u64(*req);
                w.u32(*master);
            }
            ViewMsg::Open {
                req,
                path,
                writable,
                create_len,
            } => {
                w.u64(*req);
                w.bytes(path.as_bytes());
                w.u8(u8::from(*writable));
                w.u64(*create_len);
            }
            ViewMsg::Opened { req, file, len } => {
                w.u64(*req);
                w.u32(*file);
                w.u64(*len);
            }
            ViewMsg::Define {
                req,
                file,
                offset,
                len,
            } => {
                w.u64(*req);
                w.u32(*file);
                w.u64(*offset);
                w.u64(*len);
            }
            ViewMsg::Read {
                req,
                file,
                offset,
                len,
            } => {
                w.u64(*req);
                w.u32(*file);
                w.u64(*offset);
                w.u32(*len);
            }
            ViewMsg::Data { req, data } => {
                w.u64(*req);
                w.bytes(data);
            }
            ViewMsg::Merge {
                req,
                view,
                offset,
                data,
            } => {
                w.u64(*req);
                w.u32(*view);
                w.u64(*offset);
                w.bytes(data);
            }
            ViewMsg::MergeRuns { req, view, runs } => {
                w.u64(*req);
                w.u32(*view);
                w.u32(u32::try_from(runs.len()).unwrap_or(u32::MAX));
                for (offset, data) in runs {
                    w.u64(*offset);
                    w.bytes(data);
                }
            }
            ViewMsg::Commit { req, file, view } | ViewMsg::CloseView { req, file, view } => {
                w.u64(*req);
                w.u32(*file);
                w.u32(*view);
            }
            ViewMsg::Close { req, handle } => {
                w.u64(*req);
                w.u32(*handle);
            }
            ViewMsg::Status {
                req,
                code,
                handle,
                detail,
            } => {
                w.u64(*req);
                w.u16(*code);
                w.u32(*handle);
                w.bytes(detail.as_bytes());
            }
        }
    }

    pub(crate) fn decode(command: u16, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match command {
            LOCATE => ViewMsg::Locate {
                req: r.u64("req")?,
                path: r.string("path", MAX_PATH_LEN)?,
            },
            LOCATED => ViewMsg::Located {
                req: r.u64("req")?,
                master: r.u32("master")?,
            },
            OPEN => ViewMsg::Open {
                req: r.u64("req")?,
                path: r.string("path", MAX_PATH_LEN)?,
                writable: r.flag("writable")?,
                create_len: r.u64("create_len")?,
            },
            OPENED => ViewMsg::Opened {
                req: r.u64("req")?,
                file: r.u32("file")?,
                len: r.u64("len")?,
            },
            DEFINE => decode_define(r)?,
            READ => decode_read(r)?,
            DATA => ViewMsg::Data {
                req: r.u64("req")?,
                data: r.bytes("read data", MAX_READ_LEN as usize)?.to_vec(),
            },
            MERGE => ViewMsg::Merge {
                req: r.u64("req")?,
                view: r.u32("view")?,
                offset: r.u64("offset")?,
                data: r.bytes("merge data", MAX_MERGE_LEN)?.to_vec(),
            },
            MERGE_RUNS => decode_merge_runs(r)?,
            COMMIT => ViewMsg::Commit {
                req: r.u64("req")?,
                file: r.u32("file")?,
                view: r.u32("view")?,
            },
            CLOSE_VIEW => ViewMsg::CloseView {
                req: r.u64("req")?,
                file: r.u32("file")?,
                view: r.u32("view")?,
            },
            CLOSE => ViewMsg::Close {
                req: r.u64("req")?,
                handle: r.u32("handle")?,
            },
            STATUS => ViewMsg::Status {
                req: r.u64("req")?,
                code: r.u16("code")?,
                handle: r.u32("handle")?,
                detail: r.string("detail", MAX_DETAIL_LEN)?,
            },
            other => return Err(Error::UnknownCommand(other)),
        })
    }
}

fn decode_define(r: &mut Reader<'_>) -> Result<ViewMsg> {
    let (req, file) = (r.u64("req")?, r.u32("file")?);
    let (offset, len) = (r.u64("offset")?, r.u64("len")?);
    if offset.checked_add(len).is_none() {
        return Err(Error::InvalidField {
            field: "view range",
            value: offset,
        });
    }
    Ok(ViewMsg::Define {
        req,
        file,
        offset,
        len,
    })
}

fn decode_merge_runs(r: &mut Reader<'_>) -> Result<ViewMsg> {
    let (req, view) = (r.u64("req")?, r.u32("view")?);
    let count = r.count("merge runs", MAX_MERGE_RUNS)?;
    let mut runs = Vec::with_capacity(count.min(1024));
    let mut total = 0usize;
    for _ in 0..count {
        let offset = r.u64("run offset")?;
        let data = r.bytes("run data", MAX_MERGE_LEN - total)?;
        total += data.len();
        runs.push((offset, data.to_vec()));
    }
    Ok(ViewMsg::MergeRuns { req, view, runs })
}

fn decode_read(r: &mut Reader<'_>) -> Result<ViewMsg> {
    let (req, file, offset) = (r.u64("req")?, r.u32("file")?, r.u64("offset")?);
    let len = r.u32("read length")?;
    if len > MAX_READ_LEN || offset.checked_add(u64::from(len)).is_none() {
        return Err(Error::InvalidField {
            field: "read length",
            value: u64::from(len),
        });
    }
    Ok(ViewMsg::Read {
        req,
        file,
        offset,
        len,
    })
}
