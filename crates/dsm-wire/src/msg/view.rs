//! File-level views: open a shared file, define disjoint views, merge updates, close.

use crate::codec::{Reader, Writer};
use crate::{Error, Result};

/// Longest file path carried.
pub const MAX_PATH_LEN: usize = 4096;
/// Largest merge payload in one message.
pub const MAX_MERGE_LEN: usize = 512 * 1024;

/// View messages between a node and the master copy's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Open a shared file.
    Open {
        /// Request id.
        req: u64,
        /// Path on the master's file system.
        path: String,
        /// Open for writing.
        writable: bool,
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
    /// Define a view: a byte range of an open file that only this node updates.
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
    /// Merge a view's updates (bytes at `offset` within the view) into the master copy.
    Merge {
        /// Request id.
        req: u64,
        /// View handle.
        view: u32,
        /// Offset within the view.
        offset: u64,
        /// New bytes.
        data: Vec<u8>,
    },
    /// Close a file or view handle.
    Close {
        /// Request id.
        req: u64,
        /// Handle.
        handle: u32,
    },
    /// Outcome of a view request: 0 = ok (with a handle where one was made), else an error code.
    Status {
        /// Request id.
        req: u64,
        /// 0 or an error code.
        code: u16,
        /// Handle made, if any.
        handle: u32,
    },
}

pub(crate) const OPEN: u16 = 0x0501;
pub(crate) const OPENED: u16 = 0x0502;
pub(crate) const DEFINE: u16 = 0x0503;
pub(crate) const MERGE: u16 = 0x0504;
pub(crate) const CLOSE: u16 = 0x0505;
pub(crate) const STATUS: u16 = 0x0506;

impl View {
    pub(crate) fn command(&self) -> u16 {
        match self {
            View::Open { .. } => OPEN,
            View::Opened { .. } => OPENED,
            View::Define { .. } => DEFINE,
            View::Merge { .. } => MERGE,
            View::Close { .. } => CLOSE,
            View::Status { .. } => STATUS,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        match self {
            View::Open {
                req,
                path,
                writable,
            } => {
                w.u64(*req);
                w.bytes(path.as_bytes());
                w.u8(u8::from(*writable));
            }
            View::Opened { req, file, len } => {
                w.u64(*req);
                w.u32(*file);
                w.u64(*len);
            }
            View::Define {
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
            View::Merge {
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
            View::Close { req, handle } => {
                w.u64(*req);
                w.u32(*handle);
            }
            View::Status { req, code, handle } => {
                w.u64(*req);
                w.u16(*code);
                w.u32(*handle);
            }
        }
    }

    pub(crate) fn decode(command: u16, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match command {
            OPEN => View::Open {
                req: r.u64("req")?,
                path: r.string("path", MAX_PATH_LEN)?,
                writable: r.flag("writable")?,
            },
            OPENED => View::Opened {
                req: r.u64("req")?,
                file: r.u32("file")?,
                len: r.u64("len")?,
            },
            DEFINE => {
                let (req, file) = (r.u64("req")?, r.u32("file")?);
                let (offset, len) = (r.u64("offset")?, r.u64("len")?);
                if offset.checked_add(len).is_none() {
                    return Err(Error::InvalidField {
                        field: "view range",
                        value: offset,
                    });
                }
                View::Define {
                    req,
                    file,
                    offset,
                    len,
                }
            }
            MERGE => View::Merge {
                req: r.u64("req")?,
                view: r.u32("view")?,
                offset: r.u64("offset")?,
                data: r.bytes("merge data", MAX_MERGE_LEN)?.to_vec(),
            },
            CLOSE => View::Close {
                req: r.u64("req")?,
                handle: r.u32("handle")?,
            },
            STATUS => View::Status {
                req: r.u64("req")?,
                code: r.u16("code")?,
                handle: r.u32("handle")?,
            },
            other => return Err(Error::UnknownCommand(other)),
        })
    }
}
