//! The synchronisation primitives of the ring, in one place: std atomics and the Linux futex
//! normally, loom's models under `cfg(loom)` so that the model checker sees every atomic and
//! every sleep and wake (`RUSTFLAGS="--cfg loom" cargo test -p dsm-shm --release --test loom`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Futex wait and wake on a word of the shared area.
///
/// Outside loom these are the kernel's shared (not `FUTEX_PRIVATE`) futex calls, so that a
/// process waits on a word the peer process wakes. Under loom, a modelled mutex and condition
/// variable with the futex's contract: `wait` compares the word and sleeps atomically with
/// respect to `wake`, so a wake between the compare and the sleep is not lost.
pub(crate) mod futex {
    use super::AtomicU32;
    use std::time::Duration;

    /// Sleeps while `word == expected`, until woken, spuriously, or after `timeout` (loom has
    /// no time: its models wait for the wake).
    pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        #[cfg(not(loom))]
        crate::sys::futex_wait(word, expected, timeout);
        #[cfg(loom)]
        {
            let _ = timeout;
            let (lock, condvar) = &*model::FUTEX;
            let guard = lock.lock().unwrap();
            if word.load(super::Ordering::SeqCst) == expected {
                drop(condvar.wait(guard).unwrap());
            }
        }
    }

    /// Wakes every waiter on `word`.
    pub(crate) fn wake(word: &AtomicU32) {
        #[cfg(not(loom))]
        crate::sys::futex_wake(word);
        #[cfg(loom)]
        {
            let _ = word;
            let (lock, condvar) = &*model::FUTEX;
            let _guard = lock.lock().unwrap();
            condvar.notify_all();
        }
    }

    #[cfg(loom)]
    mod model {
        use loom::sync::{Condvar, Mutex};

        loom::lazy_static! {
            /// One futex queue for the whole model (the kernel hashes words to queues; one
            /// queue only adds spurious wake-ups, which callers handle anyway).
            pub(super) static ref FUTEX: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
        }
    }
}
