//! The node's network: the io_uring TCP mesh always, plus RDMA for page data when every node
//! has a device and RDMA was asked for (`DSM_TRANSPORT=rdma` or `rdma!`).
//!
//! Control messages (coherence, locks, barriers, heartbeats) go through shared memory to
//! peers on this host that paired at join (`shm`), and by TCP to the others: its per-pair
//! FIFO order is what the engines rely on, and a control message is small, so one-sided
//! RDMA gains nothing there. The TCP connections stay either way: their close is how a
//! peer's death is seen. Page data is what
//! RDMA is for: homes expose their master copies, and a faulting node READs the page itself
//! (the engine's `one_sided` mode: grants carry no data).

#[cfg(not(feature = "rdma"))]
mod absent;
pub(crate) mod rdma;
pub(crate) mod shm;

use std::sync::OnceLock;

#[cfg(not(feature = "rdma"))]
use absent::RdmaTransport;
use dsm_core::{HomeMemory, RegionLayout, Transport, TransportError};
#[cfg(feature = "rdma")]
use dsm_rdma::RdmaTransport;
use dsm_tcp_fallback::TcpTransport;
use dsm_wire::{Message, NodeId, Page, PageId};

/// TCP for messages; RDMA, once connected, for page reads and writes.
pub(crate) struct Wire {
    tcp: TcpTransport,
    /// Channels with the peers on this host, when any paired at join.
    shm: Option<shm::Shm>,
    /// Set once at join, when every node offered RDMA and the queue pairs connected.
    rdma: OnceLock<RdmaTransport>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("rdma", &self.rdma.get().is_some())
            .field("shm", &self.shm.as_ref().map(shm::Shm::both_ways))
            .finish_non_exhaustive()
    }
}

impl Wire {
    pub(crate) fn new(tcp: TcpTransport, shm: Option<shm::Shm>) -> Self {
        Wire {
            tcp,
            shm,
            rdma: OnceLock::new(),
        }
    }

    /// The same-host transport, whose rings a thread that waits for an answer may serve
    /// itself (`shm::Links::serve_until`): `None` without same-host peers.
    pub(crate) fn shm(&self) -> Option<&shm::Shm> {
        self.shm.as_ref()
    }

    /// The node waits for answers it sent nothing for (rank 0 of a central barrier, waiting
    /// for the others' arrivals): the transports that carry them poll from now on, as they
    /// do after a send, instead of each answer waking a sleeping thread from another CPU.
    /// The shared-memory thread is left alone when the waiting thread serves the rings
    /// itself (`shm_served`).
    pub(crate) fn expect_answer(&self, shm_served: bool) {
        if self.shm_peers().len() + 1 < self.tcp.size() as usize {
            self.tcp.poll_for_answer();
        }
        if let Some(shm) = self.shm.as_ref().filter(|_| !shm_served) {
            shm.poll_for_answer();
        }
    }

    /// Peers this node both sends to and receives from by shared memory (they also read
    /// this node's master copies themselves).
    pub(crate) fn shm_peers(&self) -> &[NodeId] {
        self.shm.as_ref().map_or(&[], shm::Shm::both_ways)
    }

    /// Peers whose master copies this node reads itself, by shared memory.
    pub(crate) fn shm_homes_read(&self) -> Vec<NodeId> {
        self.shm
            .as_ref()
            .map_or_else(Vec::new, shm::Shm::homes_read)
    }

    /// The shared arena home copies go in, when same-host peers map them.
    pub(crate) fn arena(&self) -> Option<std::sync::Arc<crate::raw::masters::Arena>> {
        self.shm
            .as_ref()
            .map(|shm| std::sync::Arc::clone(shm.arena()))
    }

    /// The memfd of `node`'s master copies, when this node maps them: its own arena, or the
    /// arena of a same-host peer it holds.
    pub(crate) fn masters_fd(&self, node: NodeId) -> Option<std::os::fd::BorrowedFd<'_>> {
        let shm = self.shm.as_ref()?;
        shm.arena_of(node, self.tcp.local()).map(|arena| arena.fd())
    }

    /// Maps the same-host peers' master copies of a new region placed at `address`, each
    /// peer's own pages populated (see `shm::Shm::map_region`).
    pub(crate) fn map_masters(
        &self,
        layout: &RegionLayout,
        address: u64,
        nodes: u32,
    ) -> std::io::Result<()> {
        match &self.shm {
            Some(shm) => shm.map_region(layout, address, nodes),
            None => Ok(()),
        }
    }

    /// Unmaps the same-host peers' master copies of `region`.
    pub(crate) fn unmap_masters(&self, region: u32) {
        if let Some(shm) = &self.shm {
            shm.unmap_region(region);
        }
    }

    /// The RDMA transport, when pages move by RDMA.
    pub(crate) fn rdma(&self) -> Option<&RdmaTransport> {
        self.rdma.get()
    }

    /// Pages move by RDMA from now on (before any region exists).
    pub(crate) fn use_rdma(&self, rdma: RdmaTransport) {
        if self.rdma.set(rdma).is_err() {
            tracing::warn!("RDMA transport set twice; the first one stays");
        }
    }

    /// Closes all: the shared-memory thread, RDMA memory registrations (the home memory they
    /// cover is freed after this), then the TCP connections.
    pub(crate) fn shutdown(&self) -> dsm_tcp_fallback::Result<()> {
        if let Some(shm) = &self.shm {
            shm.shutdown();
        }
        if let Some(rdma) = self.rdma.get() {
            rdma.close();
        }
        self.tcp.shutdown()
    }

    fn pages(&self) -> &dyn Transport {
        match self.rdma.get() {
            Some(rdma) => rdma,
            None => &self.tcp,
        }
    }
}

impl Transport for Wire {
    fn local(&self) -> NodeId {
        self.tcp.local()
    }

    fn send(&self, to: NodeId, message: &Message) -> Result<(), TransportError> {
        if let Some(sent) = self.shm.as_ref().and_then(|shm| shm.send(to, message)) {
            return sent;
        }
        self.tcp.send(to, message)
    }

    fn expose(&self, region: u32, memory: HomeMemory) -> Result<(), TransportError> {
        self.pages().expose(region, memory)
    }

    fn withdraw(&self, region: u32) -> Result<(), TransportError> {
        self.pages().withdraw(region)
    }

    fn read_page(&self, home: NodeId, page: PageId, token: u64) -> Result<(), TransportError> {
        self.pages().read_page(home, page, token)
    }

    fn read_now(&self, home: NodeId, page: PageId) -> Option<Result<Page, TransportError>> {
        self.shm.as_ref()?.read_now(home, page)
    }

    fn write_now(
        &self,
        home: NodeId,
        page: PageId,
        data: &Page,
    ) -> Option<Result<(), TransportError>> {
        self.shm.as_ref()?.write_now(home, page, data)
    }

    fn merge_now(
        &self,
        home: NodeId,
        diff: &dsm_wire::PageDiff,
    ) -> Option<Result<(), TransportError>> {
        self.shm.as_ref()?.merge_now(home, diff)
    }

    fn write_page(
        &self,
        home: NodeId,
        page: PageId,
        data: Page,
        token: u64,
    ) -> Result<(), TransportError> {
        self.pages().write_page(home, page, data, token)
    }

    fn one_sided(&self) -> bool {
        self.rdma.get().is_some()
    }
}
