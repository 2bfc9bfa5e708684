//! The `Transport` trait: what the node runtime needs from a network, with both backends in
//! mind.
//!
//! * Control messages are two-sided: [`Transport::send`] queues a [`Message`]; the peer's
//!   transport hands it to its [`EventSink`].
//! * Page data is one-sided: a home [`expose`](Transport::expose)s the memory holding its
//!   master copies, and a node [`read_page`](Transport::read_page)s a page straight out of it.
//!   RDMA does exactly that (an RDMA READ, no home CPU); TCP emulates it with a request that the
//!   home's *transport thread* answers from the exposed memory, without involving the engine.
//!   [`write_page`](Transport::write_page) is the one-sided write for write-backs.
//!
//! The coherence engine decides *when* a one-sided access is safe (the home copy is current);
//! the transport only moves bytes.
//!
//! Every call returns at once; completions and arrivals come back through the sink, called on
//! the transport's own thread. Nothing in this trait blocks, so the fault path can use it.

use std::fmt;

use dsm_wire::{Message, NodeId, Page, PageId};

/// Why a transport operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer's connection closed, reset, or timed out; it is considered failed.
    #[error("node {node} failed: {reason}")]
    PeerFailed {
        /// The failed peer.
        node: NodeId,
        /// What was seen.
        reason: String,
    },
    /// No such node in the cluster.
    #[error("node {0} is not in the cluster")]
    UnknownPeer(NodeId),
    /// The home has not exposed memory for this region.
    #[error("region {region} is not exposed by node {home}")]
    NotExposed {
        /// Region id.
        region: u32,
        /// Home asked.
        home: NodeId,
    },
    /// The page lies outside the memory the home exposed.
    #[error("page {page:?} is outside the memory exposed by node {home}")]
    OutOfRange {
        /// Page asked for.
        page: PageId,
        /// Home asked.
        home: NodeId,
    },
    /// The transport was shut down.
    #[error("transport is shut down")]
    Closed,
    /// An operating-system or device error, with the call that failed.
    #[error("{call}: {detail}")]
    Io {
        /// The syscall or verb.
        call: &'static str,
        /// The error text.
        detail: String,
    },
}

/// Something that arrived or completed on a transport.
#[derive(Debug)]
pub enum TransportEvent {
    /// A control message from a peer.
    Message {
        /// Sender.
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// A [`Transport::read_page`] completed.
    PageRead {
        /// Token given to `read_page`.
        token: u64,
        /// The page, or why it could not be read.
        result: Result<Page, TransportError>,
    },
    /// A [`Transport::write_page`] completed.
    PageWritten {
        /// Token given to `write_page`.
        token: u64,
        /// Outcome.
        result: Result<(), TransportError>,
    },
    /// A peer failed (connection closed or reset, or heartbeats missed).
    PeerFailed {
        /// The peer.
        node: NodeId,
        /// What was seen.
        reason: String,
    },
}

/// Receives a transport's events. Called on the transport thread: implementations must not
/// block (push to a lock-free queue and wake the consumer).
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event.
    fn deliver(&self, event: TransportEvent);

    /// Whether a thread of the node waits for an answer from the network now. A transport
    /// that can poll for events (instead of sleeping until woken) polls only while this
    /// holds: the answer is expected soon and the waiting thread leaves the CPU idle.
    /// Polling while the application computes on the same CPU would delay both. The
    /// default, always, suits a sink with no such knowledge.
    fn awaiting(&self) -> bool {
        true
    }

    /// Called first on each thread the transport starts to deliver events (e.g. to set its
    /// scheduling priority). The default does nothing.
    fn on_thread_start(&self) {}

    /// The calling transport thread has polled for a while without finding anything (`true`:
    /// tens of microseconds, the transport says how long) or stops polling (`false`, before
    /// it sleeps). A sink may lower the thread's priority meanwhile, so that a long poll
    /// takes only a CPU nobody else wants. Called on changes only. The default does nothing.
    fn polling(&self, _on: bool) {}
}

/// Whether a transport thread polls for events now: tells its sink of each change
/// ([`EventSink::polling`]), and of nothing else.
#[derive(Debug, Default)]
pub struct Polling {
    on: bool,
}

impl Polling {
    /// Polling (`on`) or not from now on.
    pub fn set(&mut self, sink: &dyn EventSink, on: bool) {
        if self.on != on {
            self.on = on;
            sink.polling(on);
        }
    }
}

/// Memory a home exposes for one-sided access: the master copies of one region's pages, page
/// `i` at `base + i * PAGE_SIZE`.
#[derive(Clone, Copy)]
pub struct HomeMemory {
    base: *mut u8,
    pages: u32,
}

// SAFETY: `HomeMemory` is an address range; the contract of `HomeMemory::new` makes whoever
// creates it responsible for the memory staying valid, and the coherence protocol (not the
// transport) orders accesses to it.
unsafe impl Send for HomeMemory {}
// SAFETY: as above.
unsafe impl std::marker::Sync for HomeMemory {}

impl HomeMemory {
    /// Describes `pages` pages at `base`.
    ///
    /// # Safety
    /// `base` must be page-aligned and valid for reads and writes of `pages * PAGE_SIZE` bytes
    /// until the region is withdrawn from every transport it was exposed to (the node runtime
    /// drops transports before it unmaps home memory). The memory must never be registered
    /// with userfaultfd: a transport thread touching it must not fault.
    pub unsafe fn new(base: *mut u8, pages: u32) -> Self {
        assert_eq!(
            base as usize % dsm_wire::PAGE_SIZE,
            0,
            "home memory must be page-aligned"
        );
        HomeMemory { base, pages }
    }
    /// First byte.
    pub fn base(&self) -> *mut u8 {
        self.base
    }
    /// Number of pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }
    /// Address of page `index`, or `None` outside the range (never a wild pointer).
    pub fn page_ptr(&self, index: u32) -> Option<*mut u8> {
        // The product fits: `new`'s caller vouched for `pages * PAGE_SIZE` valid bytes.
        (index < self.pages).then(|| self.base.wrapping_add(index as usize * dsm_wire::PAGE_SIZE))
    }
}

impl fmt::Debug for HomeMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HomeMemory")
            .field("base", &self.base)
            .field("pages", &self.pages)
            .finish()
    }
}

/// A cluster network: TCP over io_uring, or RDMA verbs.
pub trait Transport: Send + std::marker::Sync {
    /// This node's rank.
    fn local(&self) -> NodeId;

    /// Queues a control message to `to`. Returns at once; delivery is FIFO per peer pair.
    fn send(&self, to: NodeId, message: &Message) -> Result<(), TransportError>;

    /// Exposes this node's home copies of `region` for one-sided access by peers.
    fn expose(&self, region: u32, memory: HomeMemory) -> Result<(), TransportError>;

    /// Withdraws a region exposed before (FREE); later reads of it fail `NotExposed`.
    fn withdraw(&self, region: u32) -> Result<(), TransportError>;

    /// Starts a one-sided read of `page` from `home`'s exposed memory. Completes with
    /// [`TransportEvent::PageRead`] carrying `token`.
    fn read_page(&self, home: NodeId, page: PageId, token: u64) -> Result<(), TransportError>;

    /// Reads `page` from `home`'s exposed memory at once, when this transport can do so
    /// without waiting (the home's memory is mapped in this process: a peer on the same
    /// host). `None`: it cannot; use [`read_page`](Self::read_page). The default cannot.
    fn read_now(&self, _home: NodeId, _page: PageId) -> Option<Result<Page, TransportError>> {
        None
    }

    /// Writes `data` into `home`'s exposed copy of `page` at once, when this transport can
    /// (the home's memory is mapped in this process). `None`: it cannot. The default cannot.
    fn write_now(
        &self,
        _home: NodeId,
        _page: PageId,
        _data: &Page,
    ) -> Option<Result<(), TransportError>> {
        None
    }

    /// Writes the changed bytes of `diff` (exactly those) into `home`'s exposed copy of its
    /// page at once, when this transport can (the home's memory is mapped in this process).
    /// `None`: it cannot. The default cannot.
    fn merge_now(
        &self,
        _home: NodeId,
        _diff: &dsm_wire::PageDiff,
    ) -> Option<Result<(), TransportError>> {
        None
    }

    /// Starts a one-sided write of `data` into `home`'s exposed copy of `page`. Completes with
    /// [`TransportEvent::PageWritten`] carrying `token`.
    fn write_page(
        &self,
        home: NodeId,
        page: PageId,
        data: Page,
        token: u64,
    ) -> Result<(), TransportError>;

    /// True when page reads and writes bypass the home's CPU (RDMA). The engine may then send
    /// grants without data and let the requester read the home copy itself.
    fn one_sided(&self) -> bool;
}
