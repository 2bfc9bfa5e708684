//! The synchronisation primitives of the local (thread-facing) part, in one place: std and
//! crossbeam normally, loom's models under `cfg(loom)` so that the model checker sees every
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

/// A bounded lock-free MPMC FIFO (crossbeam's `ArrayQueue`); under loom, a modelled mutex
/// around a `VecDeque`, which has the same linearizable push/pop behaviour.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    #[cfg(not(loom))]
    items: crossbeam_queue::ArrayQueue<T>,
    #[cfg(loom)]
    items: loom::sync::Mutex<std::collections::VecDeque<T>>,
    #[cfg(loom)]
    capacity: usize,
}

impl<T> Queue<T> {
    /// A queue of at most `capacity` (≥ 1) items.
    pub(crate) fn new(capacity: usize) -> Self {
        #[cfg(not(loom))]
        {
            Queue {
                items: crossbeam_queue::ArrayQueue::new(capacity),
            }
        }
        #[cfg(loom)]
        {
            Queue {
                items: loom::sync::Mutex::new(std::collections::VecDeque::new()),
                capacity,
            }
        }
    }

    /// Appends `item`, or gives it back when full.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        #[cfg(not(loom))]
        {
            self.items.push(item)
        }
        #[cfg(loom)]
        {
            let mut items = self.items.lock().unwrap();
            if items.len() >= self.capacity {
                return Err(item);
            }
            items.push_back(item);
            Ok(())
        }
    }

    /// Takes the oldest item.
    pub(crate) fn pop(&self) -> Option<T> {
        #[cfg(not(loom))]
        {
            self.items.pop()
        }
        #[cfg(loom)]
        {
            self.items.lock().unwrap().pop_front()
        }
    }
}
