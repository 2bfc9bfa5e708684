//! One module per suite; each `run` measures its figures and their baselines in the same run.

pub mod jacobi;
pub mod latency;
pub mod locks;
pub mod rdma;
pub mod tcp;
pub mod uffd;
pub mod views;

/// `DSM_TRANSPORT` of the runs that measure same-host nodes over shared memory (issue #14).
/// `shm`, not `auto`: `auto` falls back to the network for a pair that fails the shared-memory
/// hand-shake, and its figures would then be TCP's under the shared-memory name; `shm` fails
/// the join instead. Set it to `tcp` to exercise these runs' plumbing without shared memory.
pub(crate) const SAME_HOST_TRANSPORT: &str = "shm";
