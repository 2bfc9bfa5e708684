//! The node's side of shared files that answers peers: rank 0's directory of masters and,
//! on a master, dsm-views' [`Master`] service. The driver hands it every shared-file request
//! and sends what it returns; answers to this node's own requests go to the waiting thread.
//!
//! Requests are served one at a time on the driver thread, in arrival order: that order is
//! the order merges land in the master copy (a merge's `fsync` delays the driver by a few
//! milliseconds, well under the failure timeout).

use std::collections::HashMap;
use std::path::PathBuf;

use dsm_views::{Access, Durability, FileId, Master, Reply, Request, Run, ViewId};
use dsm_wire::{Message, NodeId, ViewMsg};

/// Largest merge a node may stage before its commit: as large as the largest file a view can
/// cover, bounded so that a peer cannot make the master hold unbounded memory.
const MAX_STAGED_BYTES: u64 = 1 << 32;

/// What answers a request.
pub(crate) type Answer = (NodeId, Message);

/// Rank 0's directory and this node's master service (created at the first request).
#[derive(Debug, Default)]
pub(crate) struct ViewService {
    /// Rank 0 only: path → master (the first node that asked).
    masters: HashMap<String, NodeId>,
    master: Option<Master>,
    /// Merge runs received and not yet committed, by (sender, release request).
    staged: HashMap<(NodeId, u64), Staged>,
}

#[derive(Debug, Default)]
struct Staged {
    view: u32,
    runs: Vec<Run>,
    bytes: u64,
}

/// True for the messages that answer a request (they go to the waiting thread).
pub(crate) fn is_answer(message: &ViewMsg) -> bool {
    matches!(
        message,
        ViewMsg::Located { .. }
            | ViewMsg::Opened { .. }
            | ViewMsg::Data { .. }
            | ViewMsg::Status { .. }
    )
}

/// The request id an answer repeats.
pub(crate) fn answer_req(message: &ViewMsg) -> u64 {
    match message {
        ViewMsg::Locate { req, .. }
        | ViewMsg::Located { req, .. }
        | ViewMsg::Open { req, .. }
        | ViewMsg::Opened { req, .. }
        | ViewMsg::Define { req, .. }
        | ViewMsg::Read { req, .. }
        | ViewMsg::Data { req, .. }
        | ViewMsg::Merge { req, .. }
        | ViewMsg::MergeRuns { req, .. }
        | ViewMsg::Commit { req, .. }
        | ViewMsg::CloseView { req, .. }
        | ViewMsg::Close { req, .. }
        | ViewMsg::Status { req, .. } => *req,
    }
}

impl ViewService {
    /// Serves one request from `from` (rank `local` is this node); returns the answer to
    /// send, if any (staged merge runs get none).
    pub(crate) fn handle(
        &mut self,
        local: NodeId,
        from: NodeId,
        message: ViewMsg,
    ) -> Option<Answer> {
        let req = answer_req(&message);
        let reply = match message {
            ViewMsg::Locate { path, .. } if local == 0 => {
                let master = *self.masters.entry(normalize(&path)).or_insert(from);
                return Some((from, Message::View(ViewMsg::Located { req, master })));
            }
            ViewMsg::Merge {
                view, offset, data, ..
            } => return self.stage(from, req, view, vec![(offset, data)]),
            ViewMsg::MergeRuns { view, runs, .. } => return self.stage(from, req, view, runs),
            ViewMsg::Read {
                file, offset, len, ..
            } => self.read(req, file, offset, len),
            other => self.request(from, other),
        };
        Some((from, Message::View(reply)))
    }

    /// A node failed: its opens, views and staged merges go.
    pub(crate) fn node_failed(&mut self, node: NodeId) {
        self.staged.retain(|(from, _), _| *from != node);
        if let Some(master) = &mut self.master {
            master.node_failed(node);
        }
    }

    /// Stages `runs` of release `req`; applied together at its `Commit`.
    fn stage(
        &mut self,
        from: NodeId,
        req: u64,
        view: u32,
        runs: Vec<(u64, Vec<u8>)>,
    ) -> Option<Answer> {
        let staged = self.staged.entry((from, req)).or_default();
        staged.view = view;
        for (offset, bytes) in runs {
            staged.bytes = staged.bytes.saturating_add(bytes.len() as u64);
            staged.runs.push(Run { offset, bytes });
        }
        if staged.bytes > MAX_STAGED_BYTES {
            self.staged.remove(&(from, req));
            let detail = format!("merge {req} stages more than {MAX_STAGED_BYTES} bytes");
            return Some((from, Message::View(refusal(req, Refusal::Invalid, detail))));
        }
        None
    }

    fn read(&mut self, req: u64, file: u32, offset: u64, len: u32) -> ViewMsg {
        let master = match self.master() {
            Ok(master) => master,
            Err(e) => return refusal_of(req, &e),
        };
        let mut data = vec![0; len as usize];
        match master.read_at(FileId(file), offset, &mut data) {
            Ok(()) => ViewMsg::Data { req, data },
            Err(e) => refusal_of(req, &e),
        }
    }

    /// Open, define, commit, close: through dsm-views' master.
    fn request(&mut self, from: NodeId, message: ViewMsg) -> ViewMsg {
        let req = answer_req(&message);
        let staged = match &message {
            ViewMsg::Commit { .. } => self.staged.remove(&(from, req)).unwrap_or_default(),
            _ => Staged::default(),
        };
        let master = match self.master() {
            Ok(master) => master,
            Err(e) => return refusal_of(req, &e),
        };
        let result = match message {
            ViewMsg::Open {
                path,
                writable,
                create_len,
                ..
            } => master.handle(
                from,
                Request::Open {
                    path: &path,
                    access: if writable {
                        Access::ReadWrite
                    } else {
                        Access::Read
                    },
                    create_len: (create_len > 0).then_some(create_len),
                },
            ),
            ViewMsg::Define {
                file, offset, len, ..
            } => master.handle(
                from,
                Request::Define {
                    file: FileId(file),
                    offset,
                    len,
                },
            ),
            ViewMsg::Commit { file, view, .. } if view == staged.view || staged.runs.is_empty() => {
                master.handle(
                    from,
                    Request::Merge {
                        file: FileId(file),
                        view: ViewId(view),
                        runs: &staged.runs,
                    },
                )
            }
            ViewMsg::Commit { view, .. } => {
                let detail = format!("commit names view {view}, its runs view {}", staged.view);
                return refusal(req, Refusal::Invalid, detail);
            }
            ViewMsg::CloseView { file, view, .. } => master.handle(
                from,
                Request::CloseView {
                    file: FileId(file),
                    view: ViewId(view),
                },
            ),
            ViewMsg::Close { handle, .. } => master.handle(
                from,
                Request::Close {
                    file: FileId(handle),
                },
            ),
            other => {
                let detail = format!("{other:?} is not a request this node serves");
                return refusal(req, Refusal::Invalid, detail);
            }
        };
        match result {
            Ok(reply) => answer(req, reply),
            Err(e) => refusal_of(req, &e),
        }
    }

    /// This node's master service, created at the first request it gets.
    fn master(&mut self) -> dsm_views::Result<&mut Master> {
        if self.master.is_none() {
            self.master = Some(Master::new(&views_root(), durability())?);
        }
        Ok(self.master.as_mut().expect("set just above"))
    }
}

/// The directory served to peers: `DSM_VIEWS_ROOT`, else the working directory.
pub(crate) fn views_root() -> PathBuf {
    std::env::var_os("DSM_VIEWS_ROOT").map_or_else(|| PathBuf::from("."), PathBuf::from)
}

/// `DSM_VIEWS_SYNC=0` merges without `fsync` (atomic against a killed process, not against a
/// power loss); the default syncs every merge before it is acknowledged.
fn durability() -> Durability {
    match std::env::var("DSM_VIEWS_SYNC").as_deref() {
        Ok("0") => Durability::NoSync,
        _ => Durability::Fsync,
    }
}

/// One spelling per path for rank 0's directory: `a//b` and `./a/b` name the same file as
/// `a/b` (the master's `confine` judges the path itself).
fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn answer(req: u64, reply: Reply) -> ViewMsg {
    match reply {
        Reply::Opened { file, len } => ViewMsg::Opened {
            req,
            file: file.0,
            len,
        },
        Reply::Defined { view } => status(req, view.0),
        _ => status(req, 0),
    }
}

fn status(req: u64, handle: u32) -> ViewMsg {
    ViewMsg::Status {
        req,
        code: 0,
        handle,
        detail: String::new(),
    }
}

/// Why the master refused a request, as carried on the wire (`Status.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum Refusal {
    Overlap = 1,
    BeyondEnd = 2,
    ZeroLength = 3,
    PathRefused = 4,
    NotFound = 5,
    ReadOnly = 6,
    UnknownHandle = 7,
    Busy = 8,
    Io = 9,
    Invalid = 10,
}

fn refusal(req: u64, kind: Refusal, detail: String) -> ViewMsg {
    let mut detail = detail;
    if detail.len() > dsm_wire::msg::view::MAX_DETAIL_LEN {
        let mut cut = dsm_wire::msg::view::MAX_DETAIL_LEN;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    ViewMsg::Status {
        req,
        code: kind as u16,
        handle: 0,
        detail,
    }
}

fn refusal_of(req: u64, error: &dsm_views::Error) -> ViewMsg {
    refusal(req, kind_of(error), error.to_string())
}

/// The wire kind of a dsm-views error.
fn kind_of(error: &dsm_views::Error) -> Refusal {
    use dsm_views::Error as E;
    match error {
        E::Overlap { .. } => Refusal::Overlap,
        E::BeyondEnd { .. } => Refusal::BeyondEnd,
        E::ZeroLength { .. } => Refusal::ZeroLength,
        E::PathEmpty
        | E::PathNul
        | E::PathAbsolute(_)
        | E::PathParent(_)
        | E::PathTooLong { .. }
        | E::PathReserved(_)
        | E::PathEscapes { .. }
        | E::DanglingSymlink(_)
        | E::NotRegularFile(_) => Refusal::PathRefused,
        E::NotFound(_) => Refusal::NotFound,
        E::ReadOnly => Refusal::ReadOnly,
        E::UnknownView(_) | E::UnknownFile(_) | E::NotOwner { .. } | E::NotOpen { .. } => {
            Refusal::UnknownHandle
        }
        E::Busy(_) => Refusal::Busy,
        E::Resolve { .. }
        | E::Open { .. }
        | E::Lock { .. }
        | E::Read { .. }
        | E::Write { .. }
        | E::Sync { .. }
        | E::Truncate { .. }
        | E::NeedsRecovery { .. } => Refusal::Io,
        _ => Refusal::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_for_the_directory() {
        assert_eq!(normalize("./a//b/"), "a/b");
        assert_eq!(normalize("a/./b"), "a/b");
        assert_eq!(normalize("../x"), "../x"); // refused by the master, not here
    }

    #[test]
    fn the_first_node_to_locate_a_path_is_its_master() {
        let mut service = ViewService::default();
        let locate = |req| ViewMsg::Locate {
            req,
            path: "d/f.bin".into(),
        };
        let first = service.handle(0, 2, locate(1));
        let second = service.handle(0, 1, locate(2));
        let master = |answer: Option<Answer>| match answer {
            Some((_, Message::View(ViewMsg::Located { master, .. }))) => master,
            other => panic!("{other:?}"),
        };
        assert_eq!(master(first), 2);
        assert_eq!(master(second), 2);
    }

    #[test]
    fn a_staged_merge_past_the_bound_is_refused_and_dropped() {
        let mut service = ViewService::default();
        let run = |offset| ViewMsg::Merge {
            req: 5,
            view: 1,
            offset,
            data: vec![1; 8],
        };
        assert!(service.handle(1, 3, run(0)).is_none());
        service.staged.get_mut(&(3, 5)).unwrap().bytes = MAX_STAGED_BYTES;
        let refused = service.handle(1, 3, run(8));
        assert!(matches!(
            refused,
            Some((3, Message::View(ViewMsg::Status { code, .. }))) if code == Refusal::Invalid as u16
        ));
        assert!(service.staged.is_empty());
    }
}
