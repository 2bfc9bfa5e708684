//! dsm-sim: the deterministic simulator that proves dsm's protocol engines.
//!
//! Many nodes run in one thread over [`net::SimNet`], a simulated network driven by one `u64`
//! seed (random per-message delay, FIFO per pair unless reordering is asked for, pauses,
//! crashes). Every random choice comes from that seed, so a failing run replays exactly.
//!
//! * [`rng`]: the seeded PRNG.
//! * [`net`]: `SimNet<M>`, generic over the message type, shared by every protocol's simulation.
//! * [`coherence`]: the coherence engines (dsm-core) under random workloads, checked after
//!   every step; `tests/coherence.rs` runs many seeds.
//! * [`locks`]: the simulation of the lock and barrier engine (dsm-locks).
//! * [`seeds`]: which seeds and how many steps a test runs, from `DSM_SIM_SEED`,
//!   `DSM_SIM_SEEDS` and `DSM_SIM_STEPS`.
//!
//! ```
//! use dsm_sim::net::{NetConfig, SimNet};
//!
//! let mut net: SimNet<u32> = SimNet::new(NetConfig::new(2), 1);
//! net.send(0, 1, 7).unwrap();
//! assert_eq!(net.step().unwrap().message, 7);
//! ```
//!
//! # Cargo features
//! None.

pub mod coherence;
mod crash;
mod error;
pub mod locks;
pub mod net;
pub mod rng;
pub mod seeds;

pub use crash::Crash;
pub use error::{Error, Result};
