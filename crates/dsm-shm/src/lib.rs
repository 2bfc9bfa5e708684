//! Shared-memory channels between dsm nodes on one host (issue #14): the foundation of a
//! transport that replaces TCP loopback for same-host peers.
//!
//! * [`ring`]: a bounded multi-producer single-consumer ring of variable-length frames in a
//!   shared area. Frames arrive in the order their space was claimed (per-pair FIFO with many
//!   sending threads); a full ring pushes back ([`Error::Full`]), never drops; the consumer
//!   sleeps on a futex word and a producer wakes it only if it said it would sleep (checked
//!   under loom: `RUSTFLAGS="--cfg loom" cargo test -p dsm-shm --release --test loom`).
//! * [`offer`] / [`accept`]: two processes of one user set up a pair over a connected Unix
//!   socket: `SO_PEERCRED` (same uid), a keyed challenge–response with the cluster key, then
//!   a sealed memfd holding both rings passes by `SCM_RIGHTS`. Nothing is left in `/dev/shm`.
//! * [`Peer`]: the other process's pidfd, readable the moment it dies.
//!
//! Any failure is an [`Error`], so a caller can fall back to the network.
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::time::Duration;
//! use dsm_shm::{Credentials, PairOptions, accept, offer};
//!
//! # fn main() -> dsm_shm::Result<()> {
//! let (a, b) = UnixStream::pair().expect("socketpair");
//! let options = PairOptions::default();
//! let key = Some([7u8; 32]);
//! let peer = std::thread::spawn(move || {
//!     accept(&b, &Credentials::new(1, 0xc1, key), |rank| rank == 0, &PairOptions::default())
//! });
//! let channel = offer(&a, &Credentials::new(0, 0xc1, key), 1, &options)?;
//! let (sender, _receiver) = channel.split(Duration::ZERO);
//! sender.send_timeout(b"hello", Duration::from_secs(1))?;
//! let (_s, mut receiver) = peer.join().unwrap()?.split(Duration::ZERO);
//! let mut frame = Vec::new();
//! assert!(receiver.recv_timeout(&mut frame, Duration::from_secs(1))?);
//! assert_eq!(frame, b"hello");
//! # Ok(())
//! # }
//! ```
//!
//! # Requirements
//! Linux ≥ 5.3 (`pidfd_open`; `SO_PEERPIDFD` from 6.5 is used when present), memfd sealing.
//! No privileges.
//!
//! # Cargo features
//! None. Under `--cfg loom` only [`ring`] is built, against loom's atomics and a modelled
//! futex.

mod error;
mod primitive;
pub mod ring;

#[cfg(not(loom))]
mod auth;
#[cfg(not(loom))]
mod channel;
#[cfg(not(loom))]
mod memory;
#[cfg(not(loom))]
mod pair;
#[cfg(not(loom))]
mod peer;
#[cfg(not(loom))]
mod sys;

#[cfg(not(loom))]
pub use auth::{Credentials, PROOF_CONTEXT};
#[cfg(not(loom))]
pub use channel::{Channel, Receiver, Sender, Waker};
pub use error::{Error, Result};
#[cfg(not(loom))]
pub use memory::{Direction, SharedMemory};
#[cfg(not(loom))]
pub use pair::{PairOptions, accept, offer};
#[cfg(not(loom))]
pub use peer::Peer;
