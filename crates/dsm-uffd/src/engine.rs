//! `FaultServer`: serves one region's faults with a resolver, the chosen delivery way, until dropped.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fault::FaultResolver;
use crate::region::UffdRegion;
use crate::{signal, thread};

/// How faults reach the resolver. Fixed when the region is created (the kernel feature is
/// chosen in the uffd handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// `UFFD_FEATURE_SIGBUS`: the faulting thread resolves its own fault in a SIGBUS handler.
    /// The default: no other thread is woken, which measured about 1.7–2× faster here than
    /// thread delivery with the reader resolving, 4× faster than through a worker (read
    /// faults, `dsm-bench uffd --json`). x86-64 only. Every thread that touches the region
    /// must leave SIGBUS unblocked. The resolver runs in signal context: see
    /// [`crate::FaultResolver`] for what it may do.
    #[default]
    Signal,
    /// A reader thread on the uffd calls the resolver, or queues faults for worker threads
    /// (see [`crate::thread`]). The resolver may then defer ([`crate::Resolution::Pending`]).
    Thread,
}

/// Serves a region's faults until dropped. Dropping stops the delivery (joins the threads or
/// leaves the SIGBUS table) and lets another engine serve the region.
#[derive(Debug)]
pub struct FaultServer {
    /// Held for its `Drop` (stops delivery); see `Drop for FaultServer` for the order.
    running: Running,
    region: Arc<UffdRegion>,
}

#[derive(Debug)]
enum Running {
    Signal(#[allow(dead_code)] signal::Registered),
    Thread(#[allow(dead_code)] thread::Threads),
    /// Left behind by `Drop` once delivery has stopped.
    Stopped,
}

impl FaultServer {
    /// Starts serving `region` with `resolver`, delivered the region's way. For thread
    /// delivery, the uffd reader thread calls the resolver itself (no worker: measured about
    /// 2× faster than handing faults to a worker, `dsm-bench uffd --json`); a resolver that
    /// may block for long should use [`FaultServer::start_with_workers`] with one or more workers.
    pub fn start(region: Arc<UffdRegion>, resolver: Arc<dyn FaultResolver>) -> Result<FaultServer> {
        FaultServer::start_with_workers(region, resolver, 0)
    }

    /// As [`FaultServer::start`], with `workers` worker threads for thread delivery (ignored for
    /// SIGBUS delivery, where every faulting thread is its own worker). With 0 the uffd reader
    /// thread calls the resolver itself: one thread wake-up less per fault, for resolvers that
    /// return quickly (e.g. [`crate::Resolution::Pending`] after posting a request).
    pub fn start_with_workers(
        region: Arc<UffdRegion>,
        resolver: Arc<dyn FaultResolver>,
        workers: usize,
    ) -> Result<FaultServer> {
        if !region.claim() {
            return Err(Error::AlreadyServed);
        }
        let running = match region.delivery() {
            Delivery::Signal => {
                signal::register(Arc::clone(&region), resolver).map(Running::Signal)
            }
            Delivery::Thread => {
                thread::start(Arc::clone(&region), resolver, workers).map(Running::Thread)
            }
        };
        match running {
            Ok(running) => Ok(FaultServer { running, region }),
            Err(error) => {
                region.release();
                Err(error)
            }
        }
    }

    /// The region served.
    pub fn region(&self) -> &Arc<UffdRegion> {
        &self.region
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        // `running` is dropped after this body; swap it out first so the region is released
        // only once delivery has stopped.
        let running = std::mem::replace(&mut self.running, Running::Stopped);
        drop(running);
        self.region.release();
    }
}
