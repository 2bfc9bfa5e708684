//! [`RdmaTransport`]: dsm-core's [`Transport`] over RC queue pairs.
//!
//! * `read_page`: one RDMA READ from the home's registered master copy into a registered
//!   staging slot, copied into the [`Page`](dsm_wire::Page) delivered with
//!   [`TransportEvent::PageRead`](dsm_core::TransportEvent::PageRead).
//! * `write_page`: the page copied into a staging slot, one RDMA WRITE.
//! * `send`: the frame (dsm-wire encoding) as one SEND; each peer has `recv_depth` receives
//!   posted, reposted as soon as a message is decoded.
//! * `expose` registers the home memory and SENDs its `Alloc::RegionKey` to every peer;
//!   receivers check it ([`RemoteRegion`](crate::RemoteRegion)) and keep it to bound every
//!   READ and WRITE. `withdraw` deregisters and SENDs a zero-length key.
//!
//! Every work request is signalled (no selective signalling or batching yet). The posting
//! calls take short internal locks (slot pools, tokens, the key table): call them from
//! threads, never from a SIGBUS fault handler — with userfaultfd, use thread delivery or hand
//! the request to a thread.

mod connector;
mod poller;
mod shared;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use dsm_core::{HomeMemory, Transport, TransportError};
use dsm_wire::{Alloc, Message, NodeId, Page, PageId};

pub use connector::RdmaConnector;
use shared::Shared;

use crate::raw::Op;
use crate::{Error, Result};

/// The RDMA transport: started by [`RdmaConnector::start`], stopped on drop (the transport
/// thread is joined, then queue pairs, memory regions and the device are released).
pub struct RdmaTransport {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RdmaTransport {
    fn spawn(shared: Arc<Shared>) -> Result<Self> {
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dsm-rdma-{}", shared.local))
            .spawn(move || poller::run(for_thread))
            .map_err(|source| Error::Verb {
                verb: "spawn transport thread",
                source,
            })?;
        Ok(RdmaTransport {
            shared,
            thread: Some(thread),
        })
    }

    /// The key of a region this node exposes, for a runtime that sends keys itself.
    pub fn region_key(&self, region: u32) -> Option<Alloc> {
        self.shared.region_key(region)
    }

    /// Records `peer`'s region key (an `Alloc::RegionKey`; zero length withdraws). Keys sent
    /// by `expose` on the peer's side are recorded by the transport thread already.
    pub fn add_remote_region(&self, peer: NodeId, key: &Alloc) -> Result<()> {
        self.shared.add_remote_region(peer, key)
    }

    /// True once `peer`'s key for `region` has arrived, so that reads of its pages can be
    /// posted (keys travel as SENDs, beside whatever control plane the runtime uses).
    pub fn has_remote_region(&self, peer: NodeId, region: u32) -> bool {
        self.shared.has_remote_region(peer, region)
    }

    /// Deregisters every exposed region without telling peers: call before the memory
    /// behind them is freed when the node goes away (peers can no longer reach it).
    pub fn close(&self) {
        self.shared.close();
    }
}

impl Transport for RdmaTransport {
    fn local(&self) -> NodeId {
        self.shared.local
    }

    fn send(&self, to: NodeId, message: &Message) -> std::result::Result<(), TransportError> {
        self.shared.peer(to)?;
        Ok(self.shared.send(to, message)?)
    }

    fn expose(&self, region: u32, memory: HomeMemory) -> std::result::Result<(), TransportError> {
        Ok(self.shared.expose(region, memory)?)
    }

    fn withdraw(&self, region: u32) -> std::result::Result<(), TransportError> {
        self.shared.withdraw(region)
    }

    fn read_page(
        &self,
        home: NodeId,
        page: PageId,
        token: u64,
    ) -> std::result::Result<(), TransportError> {
        self.shared.post_page(home, page, Op::Read, None, token)
    }

    fn write_page(
        &self,
        home: NodeId,
        page: PageId,
        data: Page,
        token: u64,
    ) -> std::result::Result<(), TransportError> {
        self.shared
            .post_page(home, page, Op::Write, Some(&data[..]), token)
    }

    fn one_sided(&self) -> bool {
        true
    }
}

impl Drop for RdmaTransport {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for RdmaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaTransport")
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}
