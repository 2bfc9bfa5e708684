//! dsm: kernel-assisted distributed shared memory.
//!
//! A program links this crate and starts one process per node (`dsm-run`, `mpirun` or
//! `srun`). Each process joins the cluster, allocates shared arrays that sit at the same
//! virtual address on every node, and then just uses memory: touching a page that is not
//! valid here raises a userfaultfd fault, which the coherence engine (dsm-core) serves by
//! fetching the page from its home node over the io_uring TCP transport (dsm-tcp-fallback).
//! Locks (dsm-locks, Ricart–Agrawala) and barriers are the synchronisation points.
//!
//! ```no_run
//! use dsm::{Config, Consistency, Node};
//!
//! let node = Node::join(Config::from_env()?)?; // blocks until every node has joined
//! let n = 1 << 16;
//! let grid = node.alloc::<f64>("grid", n, Consistency::Sequential)?; // collective
//! let mine = node.rank() as usize * n / node.size() as usize;
//! grid.set(mine, 1.0); // one element through the coherence path
//! grid.write_slice(mine + 1, &[2.0, 3.0])?; // or a run of them
//! node.barrier()?;
//! {
//!     let _guard = node.lock(7).acquire()?; // released on drop
//!     grid.set(0, grid.get(0) + 1.0);
//! }
//! node.barrier()?;
//! println!("{}", node.stats()); // one line: faults, pages, messages, latency
//! node.leave()?; // collective clean shutdown; regions need no explicit free
//! # Ok::<(), dsm::Error>(())
//! ```
//!
//! # Membership and failures
//! Rank 0 coordinates the boot-up on `DSM_COORDINATOR`; nodes may start in any order within
//! the join timeout, after which every node fails with [`Error::JoinTimeout`] naming the
//! missing ranks. Each node heartbeats its successor on a ring; a node silent for the failure
//! timeout (or whose connections break) is declared failed, and every barrier, lock or
//! collective call waiting returns [`Error::NodeFailed`]. A thread blocked in a page fault
//! cannot be handed an error: its fault is failed and the process exits with a message
//! naming the failed node. dsm does not recover from failures: the cluster is fail-stop.
//!
//! # What programs may assume
//! See [`Region`] for the memory model of `as_ptr` access in each [`Consistency`] mode.
//!
//! # Requirements
//! - Linux 6.1 or later (io_uring multishot receive; userfaultfd write-protect, 5.7).
//! - userfaultfd: root, read-write access to `/dev/userfaultfd`, or
//!   `vm.unprivileged_userfaultfd=1`.
//! - x86-64 (fixed region addresses in the 47-bit user address space).
//! - Every thread that touches a region must leave SIGBUS unblocked.
//! - Faults reach the runtime from the faulting thread's own SIGBUS handler (the default,
//!   [`FaultDelivery::Signal`]), which runs the coherence engine and waits for its page on a
//!   preallocated slot; or, with `DSM_FAULT_DELIVERY=thread` ([`FaultDelivery::Thread`]),
//!   through a reader thread per region. Under the default a system call whose buffer is a
//!   region page not present on this node fails with `EFAULT` (touch the buffer first, or
//!   copy with [`Region::read_at`]/[`Region::write_at`]). A fault that waits past
//!   `DSM_OP_TIMEOUT_MS` fails after an error naming the page and its home: the process
//!   dies (SIGBUS under signal delivery, abort under thread delivery).
//! - `DSM_TRANSPORT=rdma` (or `rdma!`): an RDMA device with an active port on every node (see
//!   dsm-rdma's requirements: RoCE GID, locked memory). Pages then move by one-sided RDMA
//!   READ from the home's registered master copy; control messages stay on TCP.
//!
//! # Tracing
//! `DSM_TRACE=/tmp/trace.json` ([`ConfigBuilder::trace`]) makes each node stamp every hand-off
//! of its faults, lock waits and barriers and write them at [`Node::leave`] as a Chrome trace
//! (`/tmp/trace.rank<r>.json`, one per node; open it at <https://ui.perfetto.dev>).
//! Recording is lock-free and allocation-free (the SIGBUS handler records too), bounded
//! (later records are dropped and counted), and costs one relaxed atomic load per hand-off
//! when off; [`Node::set_tracing`] pauses and resumes it.
//!
//! # Cargo features
//! - `rdma` (default): the verbs transport (dsm-rdma over rdma-sys; building it needs
//!   `libibverbs-dev` and `librdmacm-dev`). Without it (`default-features = false`) nothing
//!   of RDMA is compiled, pages move over TCP, and `DSM_TRANSPORT=rdma!` fails
//!   [`Node::join`] with [`Error::RdmaUnavailable`]. `libclang-dev` is needed either way
//!   (userfaultfd-sys runs bindgen).
//!
//! The launcher `dsm-run` is a package of its own (`crates/dsm-run`), so a program linking
//! this crate never compiles its command-line parser.

/// The README's code blocks, compiled and run as doctests (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

mod coherence;
mod config;
mod coordinator;
mod error;
mod fault;
mod lock;
mod log;
mod membership;
mod node;
mod raw;
mod region;
mod runtime;
mod sched;
mod stats;
mod trace;
mod transport;
pub mod views;

pub use config::{
    BarrierChoice, CENTRAL_BARRIER_UP_TO, Config, ConfigBuilder, DEFAULT_COORDINATOR, DEFAULT_SPIN,
    FaultDelivery, ServicePriority, TransportChoice, WriteTracking,
};
pub use coordinator::free_coordinator_address;
pub use dsm_core::Consistency;
pub use dsm_locks::LockKind;
pub use error::{Error, Result};
pub use lock::{Lock, LockGuard};
pub use node::{LEAVE_LINGER, Node};
pub use region::{DEFAULT_PREFETCH, Region, RegionOptions};
pub use stats::{RegionStats, Stats};
