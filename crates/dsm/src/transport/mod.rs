//! The node's network: the io_uring TCP mesh always, plus RDMA for page data when every node
//! has a device and RDMA was asked for (`DSM_TRANSPORT=rdma` or `rdma!`).
//!
//! Control messages (coherence, locks, barriers, heartbeats) stay on TCP: its connections
//! are what failure detection watches, its per-pair FIFO order is what the engines rely on,
//! and a control message is small, so one-sided RDMA gains nothing there. Page data is what
//! RDMA is for: homes expose their master copies, and a faulting node READs the page itself
//! (the engine's `one_sided` mode: grants carry no data).

#[cfg(not(feature = "rdma"))]
mod absent;
pub(crate) mod rdma;

use std::sync::OnceLock;

#[cfg(not(feature = "rdma"))]
use absent::RdmaTransport;
use dsm_core::{HomeMemory, Transport, TransportError};
#[cfg(feature = "rdma")]
use dsm_rdma::RdmaTransport;
use dsm_tcp_fallback::TcpTransport;
use dsm_wire::{Message, NodeId, Page, PageId};

/// TCP for messages; RDMA, once connected, for page reads and writes.
pub(crate) struct Wire {
    tcp: TcpTransport,
    /// Set once at join, when every node offered RDMA and the queue pairs connected.
    rdma: OnceLock<RdmaTransport>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("rdma", &self.rdma.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Wire {
    pub(crate) fn new(tcp: TcpTransport) -> Self {
        Wire {
            tcp,
            rdma: OnceLock::new(),
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

    /// Closes both: RDMA memory registrations first (the home memory they cover is freed
    /// after this), then the TCP connections.
    pub(crate) fn shutdown(&self) -> dsm_tcp_fallback::Result<()> {
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
