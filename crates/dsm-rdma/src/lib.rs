//! dsm-rdma: dsm's RDMA verbs transport.
//!
//! Pages move by one-sided RDMA: a faulting node reads the page straight out of its home's
//! registered memory (one RDMA READ, no home CPU), write-backs are RDMA WRITEs, and control
//! messages are SENDs into receives kept posted per peer. [`RdmaTransport`] implements
//! [`dsm_core::Transport`]; [`RdmaConnector`] sets it up: one reliable-connected queue pair
//! per peer, moved INIT → RTR → RTS once the peer's [`RdmaConnInfo`](dsm_wire::RdmaConnInfo)
//! arrives out of band (the join protocol over the TCP control plane).
//!
//! The verbs themselves (rdma-sys) live in one private module behind RAII types
//! ([`Context`], [`ProtectionDomain`], [`MemoryRegion`], [`CompletionQueue`],
//! [`QueuePair`]); every error names the verb that failed. With no RDMA device,
//! [`RdmaConnector::open`] fails [`Error::NoDevice`] (one line, [`Error::is_no_device`]) so
//! the runtime can fall back to TCP.
//!
//! ```no_run
//! use std::sync::Arc;
//! use dsm_core::{EventSink, Transport, TransportEvent};
//! use dsm_rdma::{RdmaConfig, RdmaConnector};
//!
//! struct Print;
//! impl EventSink for Print {
//!     fn deliver(&self, event: TransportEvent) { println!("{event:?}") }
//! }
//!
//! # fn exchange(info: dsm_wire::RdmaConnInfo) -> dsm_wire::RdmaConnInfo { info }
//! let mut node = match RdmaConnector::open(0, 2, RdmaConfig::from_env(0xd5)) {
//!     Ok(node) => node,
//!     Err(e) if e.is_no_device() => panic!("{e}"), // a runtime would use TCP here
//!     Err(e) => panic!("{e}"),
//! };
//! // Send our data for node 1 out of band, get node 1's data for us back.
//! let theirs = exchange(node.conn_info(1)?);
//! node.connect(1, &theirs)?;
//! let transport = node.start(Arc::new(Print))?;
//! transport.read_page(1, dsm_wire::PageId { region: 0, page: 3 }, 42)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Requirements
//! - An RDMA device with an active port: a NIC, or Soft-RoCE (`rdma_rxe`) over an Ethernet
//!   device; `scripts/soft-roce-setup.sh` sets one up, or runs a command in a QEMU guest that
//!   has one where the host kernel has no RDMA.
//! - RoCE: an IPv4-mapped GID (found automatically, or `DSM_RDMA_GID_INDEX`); MTU 9000 on the
//!   netdev for 4096-byte RoCE MTU.
//! - Locked memory (`ulimit -l`) for the registered home memory, staging and message slots
//!   (about 6.5 MiB per peer with the default [`RdmaConfig`]); root is exempt.
//! - Build: `libibverbs-dev`, `librdmacm-dev`, `pkg-config`, `libclang-dev` (rdma-sys runs
//!   bindgen).
//!
//! # Cargo features
//! None.

mod config;
mod error;
mod raw;
mod remote;
mod transport;

pub use config::RdmaConfig;
pub use error::{Error, Result};
pub use raw::{
    Completion, CompletionQueue, Context, MemoryRegion, PortInfo, ProtectionDomain, QueuePair,
    RemoteAccess, device_names,
};
pub use remote::RemoteRegion;
pub use transport::{RdmaConnector, RdmaTransport};
