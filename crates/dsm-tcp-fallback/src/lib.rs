//! dsm-tcp-fallback: the io_uring TCP transport of dsm, the network every node has.
//!
//! It implements [`dsm_core::Transport`] over a full mesh of TCP connections among the
//! cluster's nodes:
//!
//! * **One io_uring thread per node** drives every connection: a multishot receive per socket
//!   into a shared ring of provided buffers, one send per peer carrying every frame queued for
//!   it, and all submissions of a turn in one `io_uring_enter` that also waits. Sockets use
//!   `TCP_NODELAY`.
//! * **A sending thread puts its own frame on the socket** when nothing sent to that peer
//!   before it still waits in the transport thread: one non-blocking `sendmsg`, no hand-off
//!   (a per-peer send lane: the order of the frames and of their tags holds with any number
//!   of sending threads; see `lane`, model-checked under loom). Otherwise, and for what a
//!   full socket did not take, it pushes work onto a bounded queue (a mutex held only to move
//!   items; why not lock-free: `queue`), waking the ring through an eventfd only when the
//!   thread may be asleep. Application threads never wait for the network. No sleep-polling
//!   anywhere on the data path.
//! * **Pages** move as request/response that the *home's transport thread* answers straight
//!   from the exposed [`HomeMemory`](dsm_core::HomeMemory), without the engine. The home copies
//!   the page once, into the send buffer; the requester's page is decoded straight out of the
//!   kernel-filled receive buffer into the `Page` handed to the sink. Registered (fixed)
//!   buffers are not used: plain `IORING_OP_SEND` cannot use them through io-uring 0.7, and
//!   `SEND_ZC`, which can, was measured several times slower on loopback (see the project's
//!   kernel notes).
//! * **Every connection is authenticated** (`dsm_wire::msg::transport` documents the flow):
//!   cluster id and protocol version in every header, ranks checked, and with a cluster key
//!   ([`TcpConfig::key`], [`cluster_key_from_env`]) a BLAKE3 keyed-hash challenge–response
//!   over fresh random nonces, both ways ([`handshake`]).
//! * **Every frame is sealed** after a keyed handshake: AES-256-GCM under a key of that
//!   connection and direction, the frame's sequence number as the nonce, the header
//!   authenticated in clear and the body encrypted, a 16-byte tag after each frame
//!   ([`session`]). An injected, altered, replayed or reordered frame closes that connection
//!   ([`ReadError::Forged`]).
//! * **Failures are reported, never hung**: a closed or reset connection, a malformed frame
//!   (typed [`dsm_wire::Error`], logged) or a protocol violation closes that one connection,
//!   fails its outstanding page requests and delivers `TransportEvent::PeerFailed` with the
//!   peer's rank; the other connections carry on.
//!
//! # Quick start
//!
//! ```no_run
//! use std::net::TcpListener;
//! use std::sync::Arc;
//! use dsm_core::{EventSink, Transport, TransportEvent};
//! use dsm_tcp_fallback::{TcpConfig, TcpTransport};
//! use dsm_wire::{Message, Membership};
//!
//! struct Print;
//! impl EventSink for Print {
//!     fn deliver(&self, event: TransportEvent) {
//!         println!("{event:?}");
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Each node binds its listener, the runtime exchanges the addresses (here: fixed ones).
//! let listener = TcpListener::bind("127.0.0.1:7001")?;
//! let peers = vec!["127.0.0.1:7000".parse()?, "127.0.0.1:7001".parse()?];
//! // The key comes from DSM_CLUSTER_KEY when set; `config.key` sets it in code.
//! let config = TcpConfig::new(1, listener, peers, 0xd5);
//! let transport = TcpTransport::start(config, Arc::new(Print))?; // waits for the mesh
//! transport.send(0, &Message::Membership(Membership::Heartbeat { beat: 1 }))?;
//! transport.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Requirements
//! Linux ≥ 6.1 for multishot receive with provided buffer rings (`SINGLE_ISSUER` and
//! `DEFER_TASKRUN` are used when offered, 6.1+). No privileges; a process's locked-memory
//! limit does not apply (buffers are ordinary memory). Each node maps 4 MiB of receive buffers.
//!
//! # Cargo features
//! None.

mod config;
mod conn;
mod cork;
mod error;
pub mod handshake;
mod lane;
mod mesh;
mod primitive;
mod queue;
pub mod reader;
pub mod session;
mod shared;
mod sys;
mod transport;
mod worker;

pub use config::{
    CLUSTER_KEY_ENV, PASSPHRASE_CONTEXT, TcpConfig, cluster_key_from_env, cluster_key_from_str,
};
pub use cork::{Cork, Suspended, flush_corked};
pub use error::{Error, Result};
pub use reader::{FrameReader, ReadError};
pub use session::{FrameSeal, Purpose, SessionKeys, TAG_LEN};
pub use transport::TcpTransport;
