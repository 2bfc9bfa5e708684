//! One module per suite; each `run` measures its figures and their baselines in the same run.

pub mod jacobi;
pub mod latency;
pub mod locks;
pub mod rdma;
pub mod tcp;
pub mod uffd;
pub mod views;
