//! A thread that will serve the rings itself for its answer (`Links::serve_until`) need not
//! wake the shared-memory thread when it sends: the wake-ups its sends would make are held
//! back, and made when it stops serving unless it got its answer (then it also delivered
//! the node's messages to itself, and the answers of its other messages come as frames,
//! which wake a sleeping consumer anyway).
//!
//! Async-signal-safe: constant-initialised thread-local cells, which a SIGBUS handler may
//! use.

use std::cell::Cell;
use std::marker::PhantomData;

use super::Links;

thread_local! {
    /// A [`Serving`] guard is alive on this thread.
    static SERVING: Cell<bool> = const { Cell::new(false) };
    /// The links whose thread this thread's sends did not wake, since it last got an answer.
    static HELD_BACK: Cell<*const Links> = const { Cell::new(std::ptr::null()) };
}

/// While alive, this thread's sends do not wake the shared-memory thread to poll for their
/// answers, nor to deliver the node's messages to itself: this thread serves the rings and
/// those messages itself. Dropped without an answer, it makes the wake-up held back.
#[derive(Debug)]
pub(crate) struct Serving {
    /// Thread-bound: the cells are this thread's.
    _not_send: PhantomData<*const ()>,
}

impl Serving {
    pub(crate) fn start() -> Serving {
        SERVING.with(|s| s.set(true));
        Serving {
            _not_send: PhantomData,
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.with(|s| s.set(false));
        let held = HELD_BACK.with(|h| h.replace(std::ptr::null()));
        // SAFETY: set by `hold_back` during this guard's life from the links of a transport
        // the guard's holder uses for the whole guarded scope (the node's transport, which
        // outlives every call that takes a guard).
        if let Some(links) = unsafe { held.as_ref() } {
            dsm_core::wakes::Wake::wake_now(links);
        }
    }
}

/// Whether this thread serves for itself; if so, records that `links`' thread was not woken.
pub(super) fn hold_back(links: &Links) -> bool {
    if !SERVING.with(Cell::get) {
        return false;
    }
    HELD_BACK.with(|h| h.set(links));
    true
}

/// This thread got its answer and delivered its own messages: nothing held back is owed.
pub(super) fn settled() {
    HELD_BACK.with(|h| h.set(std::ptr::null()));
}
