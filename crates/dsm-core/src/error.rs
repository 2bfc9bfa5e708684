//! The coherence engine's errors. Anything a peer sent that does not fit the protocol is one of
//! these, and the engine's state is left as it was.

use dsm_wire::{NodeId, PageId};

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message came from a rank outside the cluster.
    #[error("message from node {0}, which is not in the cluster")]
    UnknownNode(NodeId),
    /// A page of a region this engine does not know.
    #[error("region {} is unknown (page {page:?})", page.region)]
    UnknownRegion {
        /// The page named.
        page: PageId,
    },
    /// A page index beyond its region.
    #[error("page {page:?} is beyond its region of {pages} pages")]
    PageOutOfRange {
        /// The page named.
        page: PageId,
        /// Pages in the region.
        pages: u32,
    },
    /// `add_region` for an id already known.
    #[error("region {0} already exists")]
    RegionExists(u32),
    /// A home-side message for a page whose home is another node.
    #[error("node {from} sent {what} for page {page:?}, whose home is node {home}")]
    NotHome {
        /// Sender.
        from: NodeId,
        /// The page.
        page: PageId,
        /// Its real home.
        home: NodeId,
        /// The message.
        what: &'static str,
    },
    /// A requester-side message that did not come from the page's home.
    #[error("node {from} sent {what} for page {page:?}, but only its home {home} may")]
    NotFromHome {
        /// Sender.
        from: NodeId,
        /// The page.
        page: PageId,
        /// Its home.
        home: NodeId,
        /// The message.
        what: &'static str,
    },
    /// A message of the other consistency model for this page's region.
    #[error("node {from} sent {what} for page {page:?}, whose region is in the other mode")]
    WrongMode {
        /// Sender.
        from: NodeId,
        /// The page.
        page: PageId,
        /// The message.
        what: &'static str,
    },
    /// A message the protocol does not allow in the page's current state (a grant nobody asked
    /// for, an acknowledgement of no transaction, a second request while one is queued).
    #[error("unexpected {what} from node {from} for page {page:?}")]
    Unexpected {
        /// Sender.
        from: NodeId,
        /// The page.
        page: PageId,
        /// The message and why it is unexpected.
        what: &'static str,
    },
    /// A diff run leaves the page.
    #[error("diff from node {from} for page {page:?} has a run outside the page")]
    BadDiff {
        /// Sender.
        from: NodeId,
        /// The page.
        page: PageId,
    },
    /// A one-sided read completed with a token the engine did not issue.
    #[error("page read completion with unknown token {0}")]
    UnknownReadToken(u64),
    /// A sync call reused the token of one still in progress.
    #[error("sync token {0} is already in use")]
    SyncTokenInUse(u64),
    /// A fault waited longer than [`CoherenceConfig::timeout_ticks`](crate::CoherenceConfig) for
    /// its page: the grant (or the one-sided read) from the page's home never came.
    #[error("timed out after {ticks} ticks waiting for page {page:?} from its home, node {home}")]
    FaultTimeout {
        /// The page faulted on.
        page: PageId,
        /// Its home, which should have answered.
        home: NodeId,
        /// How long it waited.
        ticks: u64,
    },
    /// A home transaction or a sync waited longer than
    /// [`CoherenceConfig::timeout_ticks`](crate::CoherenceConfig).
    #[error("timed out after {ticks} ticks waiting for {waiting_for} (page {page:?}, node {peer})")]
    Timeout {
        /// What was awaited.
        waiting_for: &'static str,
        /// The page concerned (`region: u32::MAX` for a sync).
        page: PageId,
        /// The node that should have answered.
        peer: NodeId,
        /// How long it waited.
        ticks: u64,
    },
    /// A fault on a page whose home failed ([`CoherenceEngine::node_failed`]): nothing can serve
    /// it any more.
    ///
    /// [`CoherenceEngine::node_failed`]: crate::CoherenceEngine::node_failed
    #[error(
        "page {} of region {} cannot be served: node {home} failed (its home)",
        page.page,
        page.region
    )]
    HomeFailed {
        /// The page faulted on.
        page: PageId,
        /// Its home, which failed.
        home: NodeId,
    },
    /// Sequential mode: a fault on a page whose only current copy was writable on a node that
    /// failed; the home's master copy is stale, so the page is lost (never served stale).
    #[error(
        "page {} of region {} is lost: node {writer} failed while it held the page writable",
        page.page,
        page.region
    )]
    PageLost {
        /// The page faulted on.
        page: PageId,
        /// The failed node that held it writable.
        writer: NodeId,
    },
}

/// Result of an engine call.
pub type Result<T> = std::result::Result<T, Error>;
