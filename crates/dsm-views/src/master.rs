//! The master's side of shared files, without the network: requests in, replies out.
//!
//! The runtime decodes a peer's message into a [`Request`], calls [`Master::handle`] with the
//! sender's rank, and sends the [`Reply`] (or the error) back. Requests are handled one at a
//! time, in the order the runtime hands them over; that order is the order merges land in.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::confine::confine;
use crate::diff::Run;
use crate::master_file::{Durability, MasterFile, MergeReport};
use crate::table::{Access, ViewId, ViewTable};
use crate::{Error, NodeId, Result};

/// A file handle on the master, shared by every node that opened the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u32);

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file #{}", self.0)
    }
}

/// A request from a node to the master.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Request<'a> {
    /// Open a file under the master's root; create it with `create_len` bytes when it does
    /// not exist and a length is given.
    Open {
        /// Path relative to the root.
        path: &'a str,
        /// What the node may do with it.
        access: Access,
        /// Length of a file to create.
        create_len: Option<u64>,
    },
    /// Define a view (writable when the file was opened `ReadWrite`).
    Define {
        /// The file.
        file: FileId,
        /// First byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Merge one release's runs of a view into the master copy, atomically.
    Merge {
        /// The file.
        file: FileId,
        /// The view.
        view: ViewId,
        /// Changed bytes, offsets within the view.
        runs: &'a [Run],
    },
    /// Close one view.
    CloseView {
        /// The file.
        file: FileId,
        /// The view.
        view: ViewId,
    },
    /// Close the file for this node, with every view it has on it.
    Close {
        /// The file.
        file: FileId,
    },
}

/// The master's answer to a request that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// The file is open.
    Opened {
        /// Its handle.
        file: FileId,
        /// Its length in bytes.
        len: u64,
    },
    /// The view is defined.
    Defined {
        /// Its id.
        view: ViewId,
    },
    /// The merge is in the master copy (and synced, with [`Durability::Fsync`]).
    Merged(MergeReport),
    /// The view or file is closed.
    Closed,
}

/// One open file on the master.
#[derive(Debug)]
struct OpenFile {
    master: MasterFile,
    table: ViewTable,
    openers: BTreeMap<NodeId, Access>,
}

/// Every shared file this node is master of.
#[derive(Debug)]
pub struct Master {
    root: PathBuf,
    durability: Durability,
    next_file: u32,
    files: BTreeMap<FileId, OpenFile>,
    by_path: HashMap<PathBuf, FileId>,
}

impl Master {
    /// A master serving files under `root` (which must exist), merging with `durability`.
    pub fn new(root: &Path, durability: Durability) -> Result<Self> {
        let root = std::fs::canonicalize(root).map_err(|source| Error::Resolve {
            path: root.to_owned(),
            source,
        })?;
        Ok(Self {
            root,
            durability,
            next_file: 1,
            files: BTreeMap::new(),
            by_path: HashMap::new(),
        })
    }

    /// The canonical root files are served from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Handles one request from node `from`. A refused request changes nothing.
    pub fn handle(&mut self, from: NodeId, request: Request<'_>) -> Result<Reply> {
        match request {
            Request::Open {
                path,
                access,
                create_len,
            } => self.open(from, path, access, create_len),
            Request::Define { file, offset, len } => {
                let open = self.opened_by(file, from)?;
                let view = match open.openers[&from] {
                    Access::ReadWrite => open.table.define(from, offset, len)?,
                    Access::Read => open.table.define_read(from, offset, len)?,
                };
                Ok(Reply::Defined { view })
            }
            Request::Merge { file, view, runs } => self.merge(from, file, view, runs),
            Request::CloseView { file, view } => {
                let open = self.opened_by(file, from)?;
                open.table.owned(view, from)?;
                open.table.close(view)?;
                Ok(Reply::Closed)
            }
            Request::Close { file } => {
                self.opened_by(file, from)?;
                self.close(file, from);
                Ok(Reply::Closed)
            }
        }
    }

    /// Forgets a failed node: closes its views and its opens (a file nobody has open any
    /// more is closed).
    pub fn node_failed(&mut self, node: NodeId) {
        let files: Vec<FileId> = self
            .files
            .iter()
            .filter(|(_, f)| f.openers.contains_key(&node))
            .map(|(&id, _)| id)
            .collect();
        for file in files {
            self.close(file, node);
        }
    }

    /// Reads bytes of an open file, e.g. to answer a node mapping or acquiring a view.
    pub fn read_at(&self, file: FileId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let open = self.files.get(&file).ok_or(Error::UnknownFile(file))?;
        open.master.read_at(offset, buf)
    }

    /// The master copy of an open file.
    pub fn file(&self, file: FileId) -> Option<&MasterFile> {
        self.files.get(&file).map(|f| &f.master)
    }

    /// The view table of an open file.
    pub fn views(&self, file: FileId) -> Option<&ViewTable> {
        self.files.get(&file).map(|f| &f.table)
    }

    fn open(
        &mut self,
        from: NodeId,
        path: &str,
        access: Access,
        create_len: Option<u64>,
    ) -> Result<Reply> {
        let resolved = confine(&self.root, path)?;
        if let Some(&file) = self.by_path.get(&resolved) {
            let open = self.files.get_mut(&file).ok_or(Error::UnknownFile(file))?;
            if open.openers.contains_key(&from) {
                return Err(Error::AlreadyOpen { file, node: from });
            }
            open.openers.insert(from, access);
            let len = open.master.len();
            return Ok(Reply::Opened { file, len });
        }
        let file = FileId(self.next_file);
        let next_file = self
            .next_file
            .checked_add(1)
            .ok_or(Error::FileIdsExhausted)?;
        let master = MasterFile::open_confined(resolved.clone(), create_len)?;
        self.next_file = next_file;
        let len = master.len();
        let open = OpenFile {
            table: ViewTable::new(len),
            master,
            openers: BTreeMap::from([(from, access)]),
        };
        self.files.insert(file, open);
        self.by_path.insert(resolved, file);
        Ok(Reply::Opened { file, len })
    }

    fn merge(&mut self, from: NodeId, file: FileId, view: ViewId, runs: &[Run]) -> Result<Reply> {
        let durability = self.durability;
        let open = self.opened_by(file, from)?;
        if open.openers[&from] != Access::ReadWrite {
            return Err(Error::ReadOnly);
        }
        let view = *open.table.owned(view, from)?;
        if view.access != Access::ReadWrite {
            return Err(Error::ReadOnly);
        }
        let batch = runs
            .iter()
            .map(|run| {
                Ok((
                    view.file_offset(run.offset, run.bytes.len() as u64)?,
                    &run.bytes[..],
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        match open.master.merge(&batch, durability) {
            Ok(report) => Ok(Reply::Merged(report)),
            Err(e) => {
                if open.master.needs_recovery() {
                    // Make the file whole again now, so that the next request finds it so;
                    // if that fails too, the next merge says so.
                    if let Err(again) = open.master.recover() {
                        tracing::error!(path = %open.master.path().display(), error = %again, "recovery after a failed merge failed");
                    }
                }
                Err(e)
            }
        }
    }

    fn opened_by(&mut self, file: FileId, node: NodeId) -> Result<&mut OpenFile> {
        let open = self.files.get_mut(&file).ok_or(Error::UnknownFile(file))?;
        if !open.openers.contains_key(&node) {
            return Err(Error::NotOpen { file, node });
        }
        Ok(open)
    }

    fn close(&mut self, file: FileId, node: NodeId) {
        let Some(open) = self.files.get_mut(&file) else {
            return;
        };
        open.table.remove_owner(node);
        open.openers.remove(&node);
        if open.openers.is_empty()
            && let Some(closed) = self.files.remove(&file)
        {
            self.by_path.remove(closed.master.path());
        }
    }
}
