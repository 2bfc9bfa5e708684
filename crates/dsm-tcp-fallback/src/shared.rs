//! State shared between application threads and the transport thread: the work queue
//! ([`WorkQueue`]: why not lock-free), the eventfd that wakes the ring, per-peer failure
//! flags and send lanes, and the exposure table.
//!
//! Wake-up protocol (no lost wake-ups, at most one eventfd write per sleep of the worker):
//! a producer pushes, fences, then `notified.swap(true)`; only the producer that flips it
//! from false writes the eventfd. The worker sets `notified` while it runs and, before
//! sleeping, clears it, fences, and looks at the queue once more; anything pushed before the
//! clear is seen by that look, anything pushed after it flips the flag and writes the eventfd.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use dsm_core::{HomeMemory, TransportError};
use dsm_wire::{Message, NodeId, Page, PageId};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::lane::Lane;
use crate::queue::WorkQueue;

/// Capacity of the work queue (operations not yet taken by the transport thread).
pub(crate) const QUEUE_CAPACITY: usize = 1 << 16;
/// How long a producer waits for room in a full queue before giving up.
const QUEUE_FULL_TIMEOUT: Duration = Duration::from_secs(10);

/// One unit of work for the transport thread.
#[derive(Debug)]
pub(crate) enum Op {
    /// Send an encoded frame to a peer.
    Send { to: NodeId, frame: Vec<u8> },
    /// Deliver a message to our own sink (a node sending to itself).
    Local { message: Message },
    /// Read a page from a home.
    Read {
        home: NodeId,
        page: PageId,
        token: u64,
    },
    /// Write a page to a home.
    Write {
        home: NodeId,
        page: PageId,
        data: Page,
        token: u64,
    },
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) queue: WorkQueue<Op>,
    pub(crate) wake: EventFd,
    pub(crate) notified: AtomicBool,
    pub(crate) stop: AtomicBool,
    pub(crate) failed: Vec<AtomicBool>,
    pub(crate) exposed: RwLock<HashMap<u32, HomeMemory>>,
    /// The sending side of each peer's connection (see [`Lane`]).
    pub(crate) lanes: Vec<Arc<Lane>>,
}

impl Shared {
    pub(crate) fn new(size: usize) -> std::io::Result<Self> {
        // Blocking on purpose: io_uring then waits on it by poll; with O_NONBLOCK its read
        // would complete at once with EAGAIN.
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?;
        Ok(Shared {
            queue: WorkQueue::new(QUEUE_CAPACITY),
            wake,
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            failed: (0..size).map(|_| AtomicBool::new(false)).collect(),
            exposed: RwLock::new(HashMap::new()),
            lanes: (0..size).map(|_| Arc::default()).collect(),
        })
    }

    /// Queues `op` and wakes the transport thread if it may be asleep.
    pub(crate) fn submit(&self, mut op: Op) -> Result<(), TransportError> {
        let mut deadline = None;
        while let Err(back) = self.queue.push(op) {
            op = back;
            self.submit_contended(&mut deadline)?;
        }
        // Pairs with the fence in `prepare_to_sleep`: a worker whose clear of `notified` comes
        // after our swap below sees this push when it looks at the queue.
        fence(Ordering::SeqCst);
        self.wake();
        Ok(())
    }

    /// The queue is full: the transport thread is behind. Make sure it is awake, then yield
    /// until it makes room, for at most `QUEUE_FULL_TIMEOUT`.
    #[cold]
    fn submit_contended(&self, deadline: &mut Option<Instant>) -> Result<(), TransportError> {
        if self.stop.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + QUEUE_FULL_TIMEOUT);
        if Instant::now() > deadline {
            return Err(TransportError::Io {
                call: "transport work queue",
                detail: format!("full ({QUEUE_CAPACITY} operations) for {QUEUE_FULL_TIMEOUT:?}"),
            });
        }
        // At once, held back or not: this thread waits for the room the woken thread makes.
        dsm_core::wakes::Wake::wake_now(self);
        std::thread::yield_now();
        Ok(())
    }

    /// Wakes the transport thread unless a wake-up is already pending; under a lock the
    /// thread may need, once the lock is let go (`dsm_core::wakes`).
    pub(crate) fn wake(&self) {
        if !dsm_core::wakes::defer(self) {
            dsm_core::wakes::Wake::wake_now(self);
        }
    }

    /// Worker: clears the wake-up flag before sleeping; true when work arrived meanwhile (then
    /// the worker must not sleep).
    pub(crate) fn prepare_to_sleep(&self) -> bool {
        self.notified.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let busy = !self.queue.is_empty() || self.stop.load(Ordering::SeqCst);
        if busy {
            self.notified.store(true, Ordering::SeqCst);
        }
        busy
    }

    /// Worker: running; producers need not write the eventfd.
    pub(crate) fn awake(&self) {
        self.notified.store(true, Ordering::SeqCst);
    }

    pub(crate) fn exposed(&self) -> RwLockReadGuard<'_, HashMap<u32, HomeMemory>> {
        self.exposed.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_failed(&self, node: NodeId) -> bool {
        self.failed
            .get(node as usize)
            .is_some_and(|f| f.load(Ordering::Acquire))
    }
}

impl dsm_core::wakes::Wake for Shared {
    fn wake_now(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            // Cannot fail short of a closed fd: the counter never nears u64::MAX because the
            // worker resets it on every wake-up.
            if let Err(e) = self.wake.write(1) {
                tracing::error!(error = %e, "eventfd write failed");
            }
        }
    }
}
