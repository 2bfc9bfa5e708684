//! Every `unsafe` line of the crate: the rdma-sys calls and the RAII types that own verbs
//! objects. Each object keeps an `Arc` to its parent (MR → PD → context, QP → PD and CQ), so
//! whatever order the owners drop them in, children are destroyed before their parents.
//!
//! # The buffer contract
//! A buffer named in a posted work request is read or written by the device until that work
//! request's completion is polled. [`SlotPool`] enforces it: a slot posted to a queue pair is
//! moved out of the caller's hands and only comes back through [`SlotPool::reclaim`], which
//! takes the [`Completion`] of that very work request.

mod buffer;
mod context;
mod cq;
mod mr;
mod qp;
mod slots;

pub use context::{Context, PortInfo, device_names};
pub use cq::{Completion, CompletionQueue};
pub use mr::{MemoryRegion, ProtectionDomain};
pub(crate) use qp::PathTarget;
pub use qp::{QueuePair, RemoteAccess};
pub use slots::{Op, Slot, SlotPool, WrTag};
