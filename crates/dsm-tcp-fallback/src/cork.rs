//! [`Cork`]: while a thread holds one, the frames it sends to a peer gather in that peer's
//! lane and leave together, in one `sendmsg`, when the cork ends: a lock release's page and
//! the lock's reply to the same next holder, say, then cost one system call and one trip
//! through the loopback stack instead of two. Order is the lane's (see `lane.rs`): the
//! gathered frames are its stash, which goes before anything else to that peer, whoever
//! sends it.
//!
//! Per thread. A SIGBUS handler that runs while its thread is corked suspends the cork
//! ([`Cork::suspend`]): its request must leave at once, and it never touches the list of
//! corked lanes (only a `Cell` flag is read on that path). A thread that is about to wait
//! for an answer lets its corked frames go first ([`flush_corked`]).

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::Arc;

use dsm_core::EventSink;

use crate::lane::{Lane, Sent};
use crate::shared::Shared;
use crate::sys;

thread_local! {
    /// Nesting depth of this thread's corks (0: not corked).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Lanes holding this thread's corked frames, with their transport's thread (to wake if
    /// the socket does not take them whole) and sink (to wake it for polling if the node
    /// awaits an answer, as a send does).
    static CORKED: RefCell<Vec<Corked>> = const { RefCell::new(Vec::new()) };
}

struct Corked {
    lane: Arc<Lane>,
    shared: Arc<Shared>,
    sink: Arc<dyn EventSink>,
}

/// Holds this thread's sends to each peer until dropped (see the module docs).
#[derive(Debug)]
#[must_use = "the frames leave when the cork is dropped"]
pub struct Cork {
    /// Per thread: neither `Send` nor `Sync`.
    _thread: PhantomData<*const ()>,
}

impl Cork {
    /// Corks this thread's sends over TCP until the returned guard is dropped.
    pub fn new() -> Cork {
        DEPTH.with(|d| d.set(d.get() + 1));
        Cork {
            _thread: PhantomData,
        }
    }

    /// Lets this thread send at once until the returned guard is dropped (a signal handler
    /// that interrupted a corked thread); the frames corked before stay gathered.
    pub fn suspend() -> Suspended {
        Suspended {
            depth: DEPTH.with(|d| d.replace(0)),
            _thread: PhantomData,
        }
    }
}

impl Default for Cork {
    fn default() -> Self {
        Cork::new()
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            let depth = d.get().saturating_sub(1);
            d.set(depth);
            depth
        });
        if depth == 0 {
            flush_corked();
        }
    }
}

/// See [`Cork::suspend`].
#[derive(Debug)]
#[must_use = "the cork is suspended until this is dropped"]
pub struct Suspended {
    depth: u32,
    _thread: PhantomData<*const ()>,
}

impl Drop for Suspended {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(self.depth));
    }
}

/// Writes every frame this thread corked so far (the thread is about to wait for something
/// they may bring). Does nothing when there are none.
pub fn flush_corked() {
    let lanes = CORKED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    for corked in lanes {
        let sent = corked.lane.flush_stash(sys::send_now);
        if sent == Sent::Stashed || corked.sink.awaiting() {
            corked.shared.wake();
        }
    }
}

/// Whether this thread's sends are corked now.
pub(crate) fn corked() -> bool {
    DEPTH.with(Cell::get) > 0
}

/// Remembers that `lane` holds this thread's corked frames.
pub(crate) fn remember(lane: &Arc<Lane>, shared: &Arc<Shared>, sink: &Arc<dyn EventSink>) {
    CORKED.with(|c| {
        let mut corked = c.borrow_mut();
        if !corked.iter().any(|k| Arc::ptr_eq(&k.lane, lane)) {
            corked.push(Corked {
                lane: Arc::clone(lane),
                shared: Arc::clone(shared),
                sink: Arc::clone(sink),
            });
        }
    });
}
