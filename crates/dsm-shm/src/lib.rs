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
//! * [`sleep_any`] and [`Doorbell`]: one thread sleeping on many rings (`futex_waitv`).
//! * [`pass_fd`] / [`take_fd`]: more descriptors over the set-up socket afterwards.
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
//! # Cost (indicative)
//! `cargo bench -p dsm-shm --bench round_trip`: 64-byte round trip between two processes
//! pinned to CPUs 0 and 1 of the shared 2-vCPU development VM, median of 20,000, TCP loopback
//! between the same processes in the same run: busy-polling 1.0 µs against 7.1 µs
//! (`ratio_shm_spin_to_tcp_spin` 0.14); sleeping 49.9 µs (futex) against 56.2 µs (blocking
//! `read`), ratio 0.89 — a sleeping receiver pays the cross-CPU wake-up (~30 µs here) either
//! way, so the runtime should poll a while before it sleeps, as its TCP thread does.
//!
//! # In the runtime
//! `dsm`'s `transport::shm` uses this crate for every same-host pair (`DSM_TRANSPORT=auto`
//! or `shm`; the README's "Same-host nodes share memory" says how): each node binds an
//! abstract Unix socket named after its cluster and rank before boot-up; the lower rank of a
//! pair [`offer`]s, the higher [`accept`]s, and the two trade their arenas of master copies
//! with [`pass_fd`] / [`take_fd`] before a confirmation byte. One thread per node serves all
//! of its rings: it polls while the node waits on the network and otherwise sleeps in
//! [`sleep_any`] on every ring's futex word plus a [`Doorbell`] its own process rings (a send
//! whose answer it should poll for, a backlog to write, stop). Senders use
//! [`Sender::try_send`] and queue behind [`Error::Full`] themselves, so nothing blocks.
//!
//! # Requirements
//! Linux ≥ 5.3 (`pidfd_open`; `SO_PEERPIDFD` from 6.5 is used when present), memfd sealing;
//! [`sleep_any`] needs 5.16 (`futex_waitv`).
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
pub use channel::{Channel, Doorbell, Receiver, Sender, Waker, sleep_any};
pub use error::{Error, Result};
#[cfg(not(loom))]
pub use memory::{Direction, SharedMemory};
#[cfg(not(loom))]
pub use pair::{PairOptions, accept, offer, pass_fd, take_fd};
#[cfg(not(loom))]
pub use peer::Peer;
