//! Wake-ups of a transport's thread held back while the sending thread holds a lock that
//! thread will need.
//!
//! A send wakes the node's transport thread if it sleeps (to send the frame, or to poll for
//! its answer). That thread is real-time and shares the sender's CPU when nodes are pinned:
//! woken while the sender still holds the engine lock, it preempts the sender at once, and
//! the moment it needs the engine (the answer came) it blocks on the lock the preempted
//! sender holds. Two context switches are lost that way per fault whose request leaves
//! under the lock (3–4 µs of a 20 µs same-host fault, seen in `DSM_TRACE`'s hops). So a
//! thread that holds such a lock takes a [`Held`] guard first: the transports record the
//! wake-ups due ([`defer`]) and the guard's drop, after the lock's, makes them.
//!
//! Async-signal-safe: thread-local cells with constant initialisers (no lazy
//! initialisation, no destructor), which a SIGBUS handler may use.

use std::cell::Cell;
use std::marker::PhantomData;

/// A thread that a deferred wake-up wakes.
pub trait Wake: Sync {
    /// Wakes it (if it sleeps).
    fn wake_now(&self);
}

/// Distinct wakers one guarded scope may defer (a node has at most two transport threads
/// that senders wake; more are woken at once).
const DUE_SLOTS: usize = 4;

type Due = Option<*const dyn Wake>;

thread_local! {
    /// How many [`Held`] guards this thread has alive.
    static HELD: Cell<u32> = const { Cell::new(0) };
    /// The wakers a send of this thread would have woken meanwhile.
    static DUE: [Cell<Due>; DUE_SLOTS] = const { [const { Cell::new(None) }; DUE_SLOTS] };
}

/// While alive, sends of this thread defer their wake-ups to the guard's drop. Take it
/// before the lock it covers, so that it drops after that lock.
#[derive(Debug)]
pub struct Held {
    /// Thread-bound: the count is this thread's.
    _not_send: PhantomData<*const ()>,
}

impl Held {
    /// Starts holding this thread's wake-ups back.
    pub fn new() -> Held {
        HELD.with(|held| held.set(held.get() + 1));
        Held {
            _not_send: PhantomData,
        }
    }
}

impl Default for Held {
    fn default() -> Self {
        Held::new()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let outermost = HELD.with(|held| {
            held.set(held.get().saturating_sub(1));
            held.get() == 0
        });
        if outermost {
            wake_due();
        }
    }
}

/// Makes the wake-ups this thread deferred so far, still holding later ones back: for a
/// thread about to block on an answer that a deferred wake-up's thread must send.
pub fn wake_due_now() {
    if HELD.with(Cell::get) > 0 {
        wake_due();
    }
}

fn wake_due() {
    DUE.with(|due| {
        for slot in due {
            // SAFETY: set by `defer` during the guarded scope, from a reference that the
            // caller of `defer` promised outlives that scope; used only within it (by the
            // outermost guard's drop, or by `wake_due_now` while a guard lives).
            if let Some(waker) = slot.take().and_then(|w| unsafe { w.as_ref() }) {
                waker.wake_now();
            }
        }
    });
}

/// Whether this thread holds its wake-ups back; if so, records that `waker` is due one when
/// the outermost guard drops (`false` when too many are due already: the caller wakes it
/// at once). `waker` must outlive the guarded scope: the transport of a node whose engine
/// lock the guard covers does.
pub fn defer(waker: &dyn Wake) -> bool {
    if HELD.with(Cell::get) == 0 {
        return false;
    }
    let pointer: *const (dyn Wake + '_) = waker;
    // SAFETY: only the lifetime bound is erased (same fat pointer); the caller promises the
    // waker outlives the guarded scope, the only time it is dereferenced (see `Held::drop`).
    let pointer: *const dyn Wake = unsafe { std::mem::transmute(pointer) };
    DUE.with(|due| {
        let same = |slot: &Cell<Due>| slot.get().is_some_and(|p| std::ptr::addr_eq(p, pointer));
        if due.iter().any(same) {
            return true;
        }
        match due.iter().find(|slot| slot.get().is_none()) {
            Some(free) => {
                free.set(Some(pointer));
                true
            }
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[derive(Default)]
    struct Counted(AtomicU32);

    impl Wake for Counted {
        fn wake_now(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn wakes_wait_for_the_outermost_guard_and_come_once_per_waker() {
        let (a, b) = (Counted::default(), Counted::default());
        assert!(!defer(&a), "no guard: the sender wakes at once");
        let outer = Held::new();
        let inner = Held::new();
        assert!(defer(&a) && defer(&a) && defer(&b));
        drop(inner);
        assert_eq!(
            a.0.load(Ordering::Relaxed),
            0,
            "the outer guard still holds them"
        );
        drop(outer);
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
        assert!(!defer(&a), "released: no guard any more");
    }

    #[test]
    fn a_thread_about_to_block_makes_its_deferred_wakes_and_keeps_holding() {
        let a = Counted::default();
        let held = Held::new();
        assert!(defer(&a));
        wake_due_now();
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        assert!(defer(&a), "still held");
        drop(held);
        assert_eq!(a.0.load(Ordering::Relaxed), 2);
        wake_due_now();
        assert_eq!(
            a.0.load(Ordering::Relaxed),
            2,
            "nothing due without a guard"
        );
    }

    #[test]
    fn more_wakers_than_slots_are_woken_by_their_senders() {
        let wakers: Vec<Counted> = (0..=DUE_SLOTS).map(|_| Counted::default()).collect();
        let held = Held::new();
        let deferred: Vec<bool> = wakers.iter().map(|w| defer(w)).collect();
        assert_eq!(deferred.iter().filter(|d| **d).count(), DUE_SLOTS);
        drop(held);
        for (waker, was_deferred) in wakers.iter().zip(deferred) {
            let expected = u32::from(was_deferred);
            assert_eq!(waker.0.load(Ordering::Relaxed), expected);
        }
    }
}
