//! What the engine asks its driver to do, and the outbox it collects them in.

use std::collections::VecDeque;

use dsm_wire::{Coherence, NodeId, Page, PageDiff, PageId};

use crate::error::Error;

/// The kind of access that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
}

/// One thing for the driver to do, in the order given.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a coherence message to a peer (never to this node: the engine loops those back
    /// itself).
    Send {
        /// Receiver.
        to: NodeId,
        /// The message (wrap it in `Message::Coherence`).
        message: Coherence,
    },
    /// Read `page` from `home`'s master copy, one-sided (RDMA READ), then call
    /// [`CoherenceEngine::on_page_read`](crate::CoherenceEngine::on_page_read) with `token`.
    ReadPage {
        /// Home to read from.
        home: NodeId,
        /// The page.
        page: PageId,
        /// Token to pass back.
        token: u64,
    },
    /// Write `data` into `home`'s master copy of `page` in place (a same-host home whose
    /// master copies this node maps), before the `MasterWritten` that follows it is sent.
    WriteMaster {
        /// Home whose master copy is written.
        home: NodeId,
        /// The page.
        page: PageId,
        /// This node's copy, write-protected.
        data: Page,
    },
    /// Release mode: write the changed bytes of `diff` (exactly those, no others) into
    /// `home`'s master copy of `diff.page` in place (a same-host home whose master copies this
    /// node maps), instead of sending them in a `DiffBatch`. Nothing acknowledges it: the
    /// bytes are in the master once applied, before any later action (the `SyncDone` whose
    /// notices announce them among them).
    MergeMaster {
        /// Home whose master copy is written.
        home: NodeId,
        /// The page and its changed runs.
        diff: PageDiff,
    },
    /// Install `data` as this node's copy of `page` (`UFFDIO_COPY`), read-only unless
    /// `writable`.
    Install {
        /// The page.
        page: PageId,
        /// Contents.
        data: Page,
        /// Map it writable (else write-protected).
        writable: bool,
    },
    /// Sequential mode: this node's copy of `page` is its master copy itself
    /// ([`Memory::local_is_master`](crate::Memory::local_is_master)), which the home's grant
    /// (without data) says is current: map it as it is (`UFFDIO_CONTINUE`), read-only unless
    /// `writable`. Comes instead of [`Action::ReadPage`] and an [`Action::Install`] of a copy.
    MapMaster {
        /// The page.
        page: PageId,
        /// Map it writable (else write-protected).
        writable: bool,
    },
    /// Make the installed copy of `page` writable (clear write protection).
    Upgrade {
        /// The page.
        page: PageId,
    },
    /// Drop this node's copy of `page` (`MADV_DONTNEED`/zap): the next access faults.
    Invalidate {
        /// The page.
        page: PageId,
    },
    /// Copy this node's copy of `page` into a twin (before the first write of an interval).
    /// The page is mapped read-only when this comes, so no thread changes it meanwhile; an
    /// [`Upgrade`](Action::Upgrade) follows.
    MakeTwin {
        /// The page.
        page: PageId,
    },
    /// Keep `data` as the twin of `page` (release regions whose writes are found by scanning,
    /// [`CoherenceConfig::scan_writes`](crate::CoherenceConfig::scan_writes)): the bytes the
    /// page was installed or last published with. Taken from the data at hand, never read back
    /// from the mapping, where threads may already write.
    Twin {
        /// The page.
        page: PageId,
        /// The twin's bytes.
        data: Page,
    },
    /// Free the twin of `page`.
    DropTwin {
        /// The page.
        page: PageId,
    },
    /// Resume the thread that faulted with `token`: its access may now proceed (if it faults
    /// again, it simply calls `fault` again).
    Wake {
        /// The fault's token.
        token: u64,
    },
    /// The fault with `token` cannot be served: its page's home failed
    /// ([`Error::HomeFailed`]) or the page is lost ([`Error::PageLost`]). The driver fails the
    /// faulting thread's access with `error`; every later fault on the page fails the same way.
    FaultFailed {
        /// The fault's token.
        token: u64,
        /// Why, naming the page and the failed node.
        error: Error,
    },
    /// An `acquire` or `release` finished. For a release, `notices` are the pages this node
    /// wrote since its last release: the lock or barrier layer hands them to the next acquirer.
    SyncDone {
        /// The sync call's token.
        token: u64,
        /// Write notices (empty for an acquire and in sequential mode).
        notices: Vec<PageId>,
    },
}

/// Collects actions; messages to this node go to a loopback queue the engine drains itself.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) node: NodeId,
    pub(crate) actions: Vec<Action>,
    pub(crate) loopback: VecDeque<Coherence>,
}

impl Outbox {
    pub(crate) fn new(node: NodeId) -> Self {
        Outbox {
            node,
            actions: Vec::new(),
            loopback: VecDeque::new(),
        }
    }

    pub(crate) fn send(&mut self, to: NodeId, message: Coherence) {
        if to == self.node {
            self.loopback.push_back(message);
        } else {
            self.actions.push(Action::Send { to, message });
        }
    }

    pub(crate) fn push(&mut self, action: Action) {
        self.actions.push(action);
    }
}
