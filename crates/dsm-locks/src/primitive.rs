//! The synchronisation primitives of the local (thread-facing) part, in one place: std
//! normally, loom's models under `cfg(loom)` so that the model checker sees every
//! atomic, queue and park operation (`RUSTFLAGS="--cfg loom" cargo test -p dsm-locks --release
//! loom`).

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Threads: the current handle, and parking until a deadline (loom has no timed park; its
/// models wait for the unpark, and time out through an explicit cancel instead).
pub(crate) mod thread {
    #[cfg(loom)]
    pub(crate) use loom::thread::{Thread, current};
    #[cfg(not(loom))]
    pub(crate) use std::thread::{Thread, current};

    /// Parks the current thread until unparked, spuriously, or (outside loom) `deadline`.
    pub(crate) fn park_until(deadline: std::time::Instant) {
        #[cfg(loom)]
        {
            let _ = deadline;
            loom::thread::park();
        }
        #[cfg(not(loom))]
        {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                std::thread::park_timeout(left);
            }
        }
    }
}

/// A bounded MPMC FIFO: a deque under a mutex (loom's model of one under `cfg(loom)`).
///
/// Not lock-free on purpose. In a lock-free bounded queue (crossbeam's `ArrayQueue`) a pop
/// that meets a slot claimed but not yet written spins until the pushing thread writes it.
/// Pops run on the node's real-time transport thread too (a grant arriving hands the lock to
/// the next local waiter); a pusher at normal priority that it preempted mid-push on a shared
/// CPU would then not run again until the kernel's fair server let it (up to ~1 s, measured
/// on the TCP transport's queue). Over a mutex the pop sleeps on the futex instead, and
/// every item counted after its push returned is there to pop.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    items: Mutex<std::collections::VecDeque<T>>,
    capacity: usize,
}

#[cfg(loom)]
use loom::sync::Mutex;
#[cfg(not(loom))]
use std::sync::Mutex;

impl<T> Queue<T> {
    /// A queue of at most `capacity` (≥ 1) items.
    pub(crate) fn new(capacity: usize) -> Self {
        Queue {
            items: Mutex::new(std::collections::VecDeque::new()),
            capacity,
        }
    }

    /// Appends `item`, or gives it back when full.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if items.len() >= self.capacity {
            return Err(item);
        }
        items.push_back(item);
        Ok(())
    }

    /// Takes the oldest item.
    pub(crate) fn pop(&self) -> Option<T> {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}
