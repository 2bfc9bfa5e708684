//! Shared files: several nodes open one file, each updates its own disjoint views (byte
//! ranges) of it, and merges its updates into the master copy at release.
//!
//! ```no_run
//! use dsm::views::{Access, SharedFile};
//! # fn main() -> dsm::Result<()> {
//! let node = dsm::Node::join(dsm::Config::from_env()?)?;
//! let file = SharedFile::open(&node, "data/grid.bin", Access::ReadWrite)?;
//! let stripe = file.len() / u64::from(node.size());
//! let v = file.define_view(u64::from(node.rank()) * stripe, stripe)?; // disjoint, cluster-wide
//! let mut m = file.map_view(v)?;
//! m.as_mut_slice().fill(node.rank() as u8);
//! m.release_with_merge()?; // this node's changed bytes into the master copy, synced
//! drop(m);
//! node.barrier()?;
//! file.close_with_merge()?;
//! node.leave()
//! # }
//! ```
//!
//! # Design
//! The file lives on one node, its **master**: the first node to open a path (rank 0 keeps
//! the directory of masters), whose file under its root (`DSM_VIEWS_ROOT`, default its working
//! directory) is the master copy. Every later open of the path, on any node, goes to that
//! master, whether or not the opening node sees a file there: on one host or a shared file
//! system every node sees the same file, and only the master's is read or written. `open` is
//! not collective: any subset of the nodes may open a file, in any order.
//!
//! A mapped view is a private copy of the view's bytes on the mapping node, with a twin (the
//! bytes as last merged or fetched). `release_with_merge` sends exactly the bytes that differ
//! from the twin, at any byte alignment; the master applies one release's runs together
//! through a redo journal and `fsync`s before it acknowledges (dsm-views' `MasterFile`:
//! a process killed at any instant leaves the file with the whole merge or without it, and the
//! next open recovers it). `acquire` fetches the master copy of the view again, keeping bytes
//! this node changed and has not merged yet. This is release consistency at file level: a
//! node sees another's update after that node's `release_with_merge` returned and its own
//! `acquire` (or `map_view`) came after, e.g. across a barrier.
//!
//! Why not a release-mode region whose home copy maps the file: views start and end at any
//! byte, so page-granular regions would make neighbouring views share pages and every merge
//! would move whole pages; a private copy per view merged by exact byte runs moves only what
//! changed, and the master's journal (not page faults) is what makes a merge atomic.
//!
//! # Access
//! [`Access::Read`] opens give views that map read-only: [`MappedView`] has no mutable
//! access and no merge for them (it does not compile). Read views may overlap anything (they
//! change nothing); writable views ([`Access::ReadWrite`]) never overlap another view, and a
//! refused definition names the other view and its owner. A view never reaches past the end
//! of the file: files do not grow through views.
//!
//! ```compile_fail
//! # use dsm::views::{Access, SharedFile};
//! # fn f(node: &dsm::Node) -> dsm::Result<()> {
//! let file = SharedFile::open(node, "data/grid.bin", Access::Read)?;
//! let mut m = file.map_view(file.define_view(0, 8)?)?;
//! m.as_mut_slice()[0] = 1; // error: a read-only open's view has no mutable access
//! # Ok(())
//! # }
//! ```
//!
//! # Failures
//! Every request waits at most the node's operation timeout and ends with
//! [`Error::NodeFailed`] when the master fails. Refusals come back as [`Error::View`] with a
//! [`ViewErrorKind`] to branch on and the master's explanation.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dsm_wire::msg::view::{MAX_MERGE_LEN, MAX_MERGE_RUNS, MAX_READ_LEN};
use dsm_wire::{Message, NodeId, ViewMsg};

use crate::{Error, Node, Result};

/// Most `Read` requests one fetch keeps in flight (32 MiB): their answers wait in a table
/// bounded to 4,096 entries shared with every other request.
const READS_IN_FLIGHT: usize = 64;

/// The access modes of [`SharedFile::open`], as values of distinct types so that a view of a
/// read-only open has no mutable access at compile time: `Access::Read` is a [`Read`],
/// `Access::ReadWrite` a [`ReadWrite`].
#[derive(Debug, Clone, Copy)]
pub struct Access;

#[allow(non_upper_case_globals)] // Written like enum variants, on purpose (see `Access`).
impl Access {
    /// Open for reading: views map read-only and never merge.
    pub const Read: Read = Read;
    /// Open for reading and writing: views map read-write and merge.
    pub const ReadWrite: ReadWrite = ReadWrite;
}

/// Read-only access (see [`Access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read;

/// Read-write access (see [`Access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadWrite;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Read {}
    impl Sealed for super::ReadWrite {}
}

/// An access mode: [`Read`] or [`ReadWrite`].
pub trait Mode: sealed::Sealed + Copy + std::fmt::Debug {
    /// Whether views of this mode are written and merged.
    const WRITABLE: bool;
}

impl Mode for Read {
    const WRITABLE: bool = false;
}

impl Mode for ReadWrite {
    const WRITABLE: bool = true;
}

/// Why the master refused a shared-file request ([`Error::View`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ViewErrorKind {
    /// A writable view overlaps another view (the detail names it and its owner).
    Overlap,
    /// The range reaches past the end of the file.
    BeyondEnd,
    /// A view of zero bytes.
    ZeroLength,
    /// The path is absolute, has `..`, or leads out of the master's root (symlinks included).
    PathRefused,
    /// No such file, and no length to create it with.
    NotFound,
    /// A write or merge through a read-only open or view.
    ReadOnly,
    /// The file or view is not open (closed, never defined, or another node's).
    UnknownHandle,
    /// The file is served by another master process already.
    Busy,
    /// The master's file system failed (open, write, `fsync`).
    Io,
    /// A malformed or inconsistent request.
    Invalid,
}

impl ViewErrorKind {
    /// The kind a `Status` code carries (`runtime::views::Refusal`).
    fn from_code(code: u16) -> Self {
        match code {
            1 => Self::Overlap,
            2 => Self::BeyondEnd,
            3 => Self::ZeroLength,
            4 => Self::PathRefused,
            5 => Self::NotFound,
            6 => Self::ReadOnly,
            7 => Self::UnknownHandle,
            8 => Self::Busy,
            9 => Self::Io,
            _ => Self::Invalid,
        }
    }
}

/// A view defined on a file: its handle and byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewHandle {
    id: u32,
    offset: u64,
    len: u64,
}

impl ViewHandle {
    /// The view's id on its file (cluster-wide).
    pub fn id(&self) -> u32 {
        self.id
    }
    /// First byte of the view in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True for an empty view (never: definitions refuse zero lengths).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A file shared through its master, opened on this node with access `M`.
#[derive(Debug)]
pub struct SharedFile<'n, M: Mode> {
    node: &'n Node,
    path: String,
    master: NodeId,
    file: u32,
    len: u64,
    /// Every view this node mapped, kept after its `MappedView` is dropped so that
    /// `close_with_merge` merges what was not merged yet.
    mapped: Mutex<Vec<Arc<ViewData>>>,
    /// Closed on the master (by `close_with_merge`); otherwise drop closes it.
    closed: AtomicBool,
    _mode: PhantomData<M>,
}

impl<'n, M: Mode> SharedFile<'n, M> {
    /// Opens `path` (relative to the master's root) on this node (not collective).
    pub fn open(node: &'n Node, path: &str, _access: M) -> Result<Self> {
        Self::open_with(node, path, 0)
    }

    fn open_with(node: &'n Node, path: &str, create_len: u64) -> Result<Self> {
        let master = located(request(node, 0, |req| ViewMsg::Locate {
            req,
            path: path.to_owned(),
        })?)?;
        let opened = request(node, master, |req| ViewMsg::Open {
            req,
            path: path.to_owned(),
            writable: M::WRITABLE,
            create_len,
        })?;
        let ViewMsg::Opened { file, len, .. } = opened else {
            return Err(status_error(opened));
        };
        Ok(SharedFile {
            node,
            path: path.to_owned(),
            master,
            file,
            len,
            mapped: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            _mode: PhantomData,
        })
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The path this file was opened by.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The rank of the file's master.
    pub fn master(&self) -> NodeId {
        self.master
    }

    /// Defines the view `offset..offset + len` for this node. A writable view must be
    /// disjoint from every view defined anywhere on the file ([`ViewErrorKind::Overlap`]
    /// names the other one and its owner); zero lengths and ranges past the end are refused.
    pub fn define_view(&self, offset: u64, len: u64) -> Result<ViewHandle> {
        if offset.checked_add(len).is_none() {
            return Err(Error::View {
                kind: ViewErrorKind::Invalid,
                detail: format!("view range {offset} + {len} overflows u64"),
            });
        }
        let answer = request(self.node, self.master, |req| ViewMsg::Define {
            req,
            file: self.file,
            offset,
            len,
        })?;
        Ok(ViewHandle {
            id: status_handle(answer)?,
            offset,
            len,
        })
    }

    /// Closes a view on the master: it can no longer merge, and its range is free again.
    pub fn close_view(&self, view: ViewHandle) -> Result<()> {
        status_handle(request(self.node, self.master, |req| ViewMsg::CloseView {
            req,
            file: self.file,
            view: view.id,
        })?)
        .map(drop)
    }

    /// Maps `view`: a private copy of its bytes, fetched from the master copy now.
    pub fn map_view(&self, view: ViewHandle) -> Result<MappedView<'_, M>> {
        let len = usize::try_from(view.len)
            .map_err(|_| Error::Config(format!("a view of {} bytes", view.len)))?;
        let data = self.fetch(view.offset, len)?;
        let twin = data.clone();
        let shared = Arc::new(ViewData {
            view,
            bytes: UnsafeCell::new(data.into_boxed_slice()),
            twin: Mutex::new(twin),
        });
        self.lock_mapped().push(Arc::clone(&shared));
        Ok(MappedView {
            file: self,
            data: shared,
        })
    }

    /// Reads `len` bytes at `offset` of the master copy: [`MAX_READ_LEN`] per request, up to
    /// [`READS_IN_FLIGHT`] requests in flight (answers wait in a bounded table).
    fn fetch(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut data = vec![0; len];
        let chunk = MAX_READ_LEN as usize;
        let window = chunk * READS_IN_FLIGHT;
        for (w, part) in data.chunks_mut(window).enumerate() {
            self.fetch_window(offset + (w * window) as u64, part)?;
        }
        Ok(data)
    }

    /// Fills `target` from the master copy at `offset`, its requests all in flight at once.
    fn fetch_window(&self, offset: u64, target: &mut [u8]) -> Result<()> {
        let chunk = MAX_READ_LEN as usize;
        let pending: Vec<u64> = target
            .chunks(chunk)
            .enumerate()
            .map(|(i, part)| {
                let len = u32::try_from(part.len()).expect("a chunk fits u32");
                send_request(self.node, self.master, |req| ViewMsg::Read {
                    req,
                    file: self.file,
                    offset: offset + (i * chunk) as u64,
                    len,
                })
            })
            .collect();
        for (req, part) in pending.into_iter().zip(target.chunks_mut(chunk)) {
            let answer = wait_answer(self.node, self.master, req, "Data")?;
            let ViewMsg::Data { data: got, .. } = answer else {
                return Err(status_error(answer));
            };
            if got.len() != part.len() {
                return Err(Error::Protocol(format!(
                    "the master sent {} bytes for a read of {}",
                    got.len(),
                    part.len()
                )));
            }
            part.copy_from_slice(&got);
        }
        Ok(())
    }

    fn lock_mapped(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ViewData>>> {
        self.mapped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the file on this node (its views with it) without merging.
    fn close_on_master(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        status_handle(request(self.node, self.master, |req| ViewMsg::Close {
            req,
            handle: self.file,
        })?)
        .map(drop)
    }
}

impl<'n> SharedFile<'n, ReadWrite> {
    /// Opens `path` read-write, creating it with `len` zero bytes on its master when it does
    /// not exist there (an existing file keeps its length).
    pub fn create(node: &'n Node, path: &str, len: u64) -> Result<Self> {
        if len == 0 {
            return Err(Error::Config(
                "a shared file is created with at least one byte".into(),
            ));
        }
        Self::open_with(node, path, len)
    }
}

impl<M: Mode> SharedFile<'_, M> {
    /// Merges every view of this node that has unmerged changes (writable opens), then
    /// closes the file here.
    pub fn close_with_merge(self) -> Result<()> {
        if M::WRITABLE {
            let views = std::mem::take(&mut *self.lock_mapped());
            for data in views {
                // SAFETY: `close_with_merge` owns the file, so every `MappedView` (which
                // borrows it) is gone: nothing else touches the bytes.
                let bytes = unsafe { &*data.bytes.get() };
                merge(&self, &data, bytes)?;
            }
        }
        self.close_on_master()
    }
}

impl<M: Mode> Drop for SharedFile<'_, M> {
    fn drop(&mut self) {
        // Dropped without `close_with_merge`: unmerged changes are discarded, and the master
        // is told (without waiting) so that the views' ranges are free again.
        if !self.closed.load(Ordering::Acquire) {
            send_request(self.node, self.master, |req| ViewMsg::Close {
                req,
                handle: self.file,
            });
        }
    }
}

/// The bytes of one mapped view and its twin.
#[derive(Debug)]
struct ViewData {
    view: ViewHandle,
    /// Written only through `&mut MappedView` or by `close_with_merge` after every mapped
    /// view is gone: never two accessors at once.
    bytes: UnsafeCell<Box<[u8]>>,
    /// The bytes as last merged or fetched.
    twin: Mutex<Vec<u8>>,
}

// SAFETY: `bytes` is accessed only as documented on the field (exclusive by construction);
// the rest is Sync.
unsafe impl Sync for ViewData {}

/// A mapped view of a [`SharedFile`], with access `M`.
#[derive(Debug)]
pub struct MappedView<'f, M: Mode> {
    file: &'f SharedFile<'f, M>,
    data: Arc<ViewData>,
}

impl<M: Mode> MappedView<'_, M> {
    /// The view's handle.
    pub fn view(&self) -> ViewHandle {
        self.data.view
    }

    /// The first byte of this node's copy.
    pub fn as_ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True for an empty view (never).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This node's copy of the view.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: shared reads while `&self` lives; writes need `&mut self` (see `ViewData`).
        unsafe { &*self.data.bytes.get() }
    }

    /// Fetches the master copy of the view again: updates merged by any node before are
    /// seen. Bytes this node changed and has not merged yet are kept.
    pub fn acquire(&mut self) -> Result<()> {
        let view = self.data.view;
        let fresh = self.file.fetch(view.offset, self.len())?;
        let mut twin = self.data.twin.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `&mut self`: this is the only accessor of the bytes (see `ViewData`).
        let bytes = unsafe { &mut *self.data.bytes.get() };
        for ((byte, old), new) in bytes.iter_mut().zip(twin.iter()).zip(&fresh) {
            if byte == old {
                *byte = *new;
            }
        }
        *twin = fresh;
        Ok(())
    }
}

impl MappedView<'_, ReadWrite> {
    /// The first byte of this node's copy, writable.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_slice().as_mut_ptr()
    }

    /// This node's copy of the view, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `&mut self`: this is the only accessor of the bytes (see `ViewData`).
        unsafe { &mut *self.data.bytes.get() }
    }

    /// Sends the bytes this node changed since its last merge (or the map) to the master,
    /// which applies them atomically and syncs them before this returns.
    pub fn release_with_merge(&mut self) -> Result<()> {
        let bytes = self.as_slice();
        merge(self.file, &self.data, bytes)
    }
}

/// Merges the runs of `bytes` that differ from the twin; the twin then equals `bytes`.
fn merge<M: Mode>(file: &SharedFile<'_, M>, data: &ViewData, bytes: &[u8]) -> Result<()> {
    let mut twin = data.twin.lock().unwrap_or_else(|p| p.into_inner());
    let runs = dsm_views::diff(&twin, bytes);
    if runs.is_empty() {
        return Ok(());
    }
    let node = file.node;
    let commit = next_req(node);
    for runs in batches(&runs) {
        let message = ViewMsg::MergeRuns {
            req: commit,
            view: data.view.id,
            runs,
        };
        node.send(file.master, Message::View(message));
    }
    node.send(
        file.master,
        Message::View(ViewMsg::Commit {
            req: commit,
            file: file.file,
            view: data.view.id,
        }),
    );
    status_handle(wait_answer(
        node,
        file.master,
        commit,
        "merge acknowledgement",
    )?)?;
    twin.copy_from_slice(bytes);
    Ok(())
}

/// The runs as messages: each at most [`MAX_MERGE_RUNS`] runs and [`MAX_MERGE_LEN`] bytes
/// (a longer run is cut in pieces).
fn batches(runs: &[dsm_views::Run]) -> Vec<Vec<(u64, Vec<u8>)>> {
    let mut batches = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    let pieces = runs.iter().flat_map(|run| {
        run.bytes
            .chunks(MAX_MERGE_LEN)
            .enumerate()
            .map(move |(i, part)| (run.offset + (i * MAX_MERGE_LEN) as u64, part))
    });
    for (offset, part) in pieces {
        if batch.len() == MAX_MERGE_RUNS || bytes + part.len() > MAX_MERGE_LEN {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += part.len();
        batch.push((offset, part.to_vec()));
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

fn next_req(node: &Node) -> u64 {
    node.core().next_request()
}

/// Sends the request `make(req)` to `to` and returns its request id.
fn send_request(node: &Node, to: NodeId, make: impl FnOnce(u64) -> ViewMsg) -> u64 {
    let req = next_req(node);
    node.send(to, Message::View(make(req)));
    req
}

/// Sends a request and waits for its answer.
fn request(node: &Node, to: NodeId, make: impl FnOnce(u64) -> ViewMsg) -> Result<ViewMsg> {
    let req = send_request(node, to, make);
    wait_answer(node, to, req, "answer")
}

/// Waits (at most the operation timeout) for the answer to `req` from `from`.
fn wait_answer(node: &Node, from: NodeId, req: u64, what: &str) -> Result<ViewMsg> {
    let shared = &node.core().shared;
    let answer = shared.wait(
        node.config().op_timeout(),
        |_| format!("shared-file {what} to request {req} from node {from}"),
        |s| s.view_answers.contains_key(&req).then_some(()),
    );
    let taken = shared.update(|s| s.view_answers.remove(&req));
    answer?;
    taken.ok_or_else(|| Error::Protocol(format!("answer {req} vanished")))
}

fn located(answer: ViewMsg) -> Result<NodeId> {
    match answer {
        ViewMsg::Located { master, .. } => Ok(master),
        other => Err(status_error(other)),
    }
}

/// The handle of an ok `Status`, or its refusal as an error.
fn status_handle(answer: ViewMsg) -> Result<u32> {
    match answer {
        ViewMsg::Status {
            code: 0, handle, ..
        } => Ok(handle),
        other => Err(status_error(other)),
    }
}

fn status_error(answer: ViewMsg) -> Error {
    match answer {
        ViewMsg::Status { code, detail, .. } if code != 0 => Error::View {
            kind: ViewErrorKind::from_code(code),
            detail,
        },
        other => unexpected("Status", &other),
    }
}

fn unexpected(wanted: &str, got: &ViewMsg) -> Error {
    Error::Protocol(format!("expected {wanted}, the master answered {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_travel_in_messages_within_the_wire_limits_and_in_order() {
        let runs = vec![
            dsm_views::Run {
                offset: 3,
                bytes: vec![1; MAX_MERGE_LEN + 10],
            },
            dsm_views::Run {
                offset: 2 * MAX_MERGE_LEN as u64,
                bytes: vec![2; 5],
            },
        ];
        let messages = batches(&runs);
        for batch in &messages {
            assert!(batch.len() <= MAX_MERGE_RUNS);
            assert!(batch.iter().map(|(_, d)| d.len()).sum::<usize>() <= MAX_MERGE_LEN);
        }
        let flat: Vec<(u64, usize)> = messages
            .iter()
            .flatten()
            .map(|(offset, data)| (*offset, data.len()))
            .collect();
        let second = 3 + MAX_MERGE_LEN as u64;
        assert_eq!(
            flat,
            vec![
                (3, MAX_MERGE_LEN),
                (second, 10),
                (2 * MAX_MERGE_LEN as u64, 5)
            ]
        );
        let many: Vec<dsm_views::Run> = (0..MAX_MERGE_RUNS as u64 + 1)
            .map(|i| dsm_views::Run {
                offset: i * 2,
                bytes: vec![9],
            })
            .collect();
        assert_eq!(batches(&many).len(), 2);
    }
}
