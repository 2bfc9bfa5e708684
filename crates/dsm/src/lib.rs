//! dsm: kernel-assisted distributed shared memory.
//!
//! A program links this crate and starts one process per node (`dsm-run`, `mpirun` or
//! `srun`). Each process builds a [`Config`] (usually [`Config::from_env`], which reads the
//! variables the launcher set) and joins the cluster.
//!
//! ```no_run
//! let config = dsm::Config::from_env()?;
//! println!("rank {} of {}", config.rank, config.size);
//! # Ok::<(), dsm::Error>(())
//! ```
//!
//! # Requirements
//! Linux with userfaultfd (`/dev/userfaultfd` readable, or `vm.unprivileged_userfaultfd=1`).
//!
//! # Cargo features
//! None.

mod coherence;
mod config;
mod error;
mod fault;
mod lock;
mod membership;
mod node;
mod raw;
mod region;
mod runtime;
mod stats;

pub use config::{Config, ConfigBuilder, DEFAULT_COORDINATOR, TransportChoice};
pub use dsm_core::Consistency;
pub use error::{Error, Result};
pub use lock::{Lock, LockGuard};
pub use node::{LEAVE_LINGER, Node};
pub use region::Region;
pub use stats::Stats;
