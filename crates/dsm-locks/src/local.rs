//! The local part of a lock: many threads of one node share the node's single place in the
//! distributed algorithm.
//!
//! Threads queue on a FIFO (a deque under a mutex: why, in `primitive::Queue`); one 64-bit
//! state word says what the node has and what is under way. Whoever changes the word in a
//! way that may allow progress calls [`LocalLock::dispatch`], which makes at most one move
//! per successful compare-exchange:
//!
//! * the node owns the lock, nobody holds it and a thread waits → hand it to the oldest waiter;
//! * the node owns it, nobody holds it, and nobody waits (or a remote node has waited through
//!   `handoff_bound` local handoffs) → give it up ([`NodeSide::release`]);
//! * the node does not own it, nothing is under way and a thread waits → ask for it
//!   ([`NodeSide::request`]).
//!
//! HELD, PENDING and RELEASING mark a move in progress; whoever set them calls `dispatch`
//! again when it ends (guard drop, grant, end of release), so no wake-up is lost. A waiter is
//! pushed onto the queue *before* it is counted in the word, so a counted waiter can always be
//! popped. A waiter that times out marks itself cancelled and stays queued; whoever pops it
//! takes the lock back and looks again.

use std::time::Instant;

use crate::primitive::thread::{self, Thread};
use crate::primitive::{Arc, AtomicU8, AtomicU64, Ordering, Queue};

/// The node owns the distributed lock.
const OWNED: u64 = 1;
/// A local thread holds it (or a dispatcher is handing it to one).
const HELD: u64 = 1 << 1;
/// The node's request is in flight.
const PENDING: u64 = 1 << 2;
/// The node is giving it up.
const RELEASING: u64 = 1 << 3;
/// A remote node waits for it.
const REMOTE: u64 = 1 << 4;
/// Local handoffs since REMOTE was set (8 bits).
const HANDOFF_SHIFT: u32 = 8;
const HANDOFF_ONE: u64 = 1 << HANDOFF_SHIFT;
const HANDOFF_MASK: u64 = 0xff << HANDOFF_SHIFT;
/// Counted waiters (32 bits).
const WAITER_SHIFT: u32 = 32;
const WAITER_ONE: u64 = 1 << WAITER_SHIFT;

/// Largest handoff bound the state word can count.
pub const MAX_HANDOFF_BOUND: u32 = 0xff;

/// The node's part in the distributed algorithm for one lock, as the local part sees it.
pub(crate) trait NodeSide {
    /// Ask the cluster for the lock; [`LocalLock::granted`] follows (maybe before this returns).
    fn request(&self);
    /// Give the lock up (flush, release); done when this returns.
    fn release(&self);
}

/// One queued thread.
#[derive(Debug)]
pub(crate) struct Waiter {
    state: AtomicU8,
    thread: Thread,
}

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
const CANCELLED: u8 = 2;

impl Waiter {
    fn new() -> Self {
        Waiter {
            state: AtomicU8::new(WAITING),
            thread: thread::current(),
        }
    }

    /// Hands the lock to this waiter; false if it already gave up.
    fn grant(&self) -> bool {
        let granted = self
            .state
            .compare_exchange(WAITING, GRANTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if granted {
            self.thread.unpark();
        }
        granted
    }

    /// True once the lock was handed to this waiter.
    pub(crate) fn is_granted(&self) -> bool {
        self.state.load(Ordering::Acquire) == GRANTED
    }

    /// Parks until granted or `deadline`; true if granted. Bounded: every park ends at the
    /// deadline at the latest.
    #[cfg(test)]
    pub(crate) fn wait(&self, deadline: Instant) -> bool {
        self.wait_or(deadline, || false)
    }

    /// As [`wait`](Self::wait), and also gives up when `stop` holds after a wake-up (see
    /// [`wake`](Self::wake)); true if granted.
    pub(crate) fn wait_or(&self, deadline: Instant, stop: impl Fn() -> bool) -> bool {
        while !self.is_granted() {
            if Instant::now() >= deadline || stop() {
                return false;
            }
            thread::park_until(deadline);
        }
        true
    }

    /// Unparks the waiting thread so that it looks at its `stop` condition again.
    pub(crate) fn wake(&self) {
        self.thread.unpark();
    }

    /// Gives up waiting; false if the lock was granted first (the caller then holds it).
    pub(crate) fn cancel(&self) -> bool {
        self.state
            .compare_exchange(WAITING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The local part of one lock at one node.
#[derive(Debug)]
pub(crate) struct LocalLock {
    state: AtomicU64,
    queue: Queue<Arc<Waiter>>,
    handoff_bound: u64,
}

/// What [`LocalLock::dispatch`] decided.
enum Move {
    HandOff,
    Request,
    Release,
}

/// The queue is full.
#[derive(Debug)]
pub(crate) struct Full;

impl LocalLock {
    /// At most `max_waiters` queued threads; a remote waiter waits for at most
    /// `handoff_bound` local critical sections (≤ [`MAX_HANDOFF_BOUND`]).
    pub(crate) fn new(max_waiters: usize, handoff_bound: u32) -> Self {
        assert!(
            max_waiters >= 1 && max_waiters <= u32::MAX as usize,
            "max_waiters out of range"
        );
        LocalLock {
            state: AtomicU64::new(0),
            queue: Queue::new(max_waiters),
            handoff_bound: u64::from(handoff_bound.min(MAX_HANDOFF_BOUND)),
        }
    }

    /// Queues the calling thread; the lock is handed to it (maybe at once) through the waiter.
    pub(crate) fn enqueue(&self, node: &impl NodeSide) -> Result<Arc<Waiter>, Full> {
        let waiter = Arc::new(Waiter::new());
        self.queue.push(waiter.clone()).map_err(|_| Full)?;
        self.state.fetch_add(WAITER_ONE, Ordering::AcqRel);
        self.dispatch(node);
        Ok(waiter)
    }

    /// The holder leaves (guard drop).
    pub(crate) fn unlock(&self, node: &impl NodeSide) {
        let previous = self.state.fetch_and(!HELD, Ordering::AcqRel);
        debug_assert!(previous & HELD != 0, "unlock without a holder");
        self.dispatch(node);
    }

    /// The node's request was granted.
    pub(crate) fn granted(&self, node: &impl NodeSide) {
        // PENDING is set and OWNED clear, so subtracting their difference swaps the two bits
        // in one atomic step (no instant where neither is set and a second request starts).
        let previous = self.state.fetch_sub(PENDING - OWNED, Ordering::AcqRel);
        debug_assert!(
            previous & (PENDING | OWNED) == PENDING,
            "grant without a request"
        );
        self.dispatch(node);
    }

    /// A remote node waits: from now on, at most `handoff_bound` more local handoffs.
    pub(crate) fn remote_waiting(&self) {
        self.state.fetch_or(REMOTE, Ordering::AcqRel);
    }

    /// The node owns the lock (a local thread has it or is about to).
    pub(crate) fn is_owned(&self) -> bool {
        self.state.load(Ordering::Acquire) & OWNED != 0
    }

    /// Makes every move the state allows; returns when a move is handed to someone who will
    /// call `dispatch` again, or none is possible.
    pub(crate) fn dispatch(&self, node: &impl NodeSide) {
        // Lock-free: a compare-exchange fails only when another thread changed the word, and
        // every other iteration pops a cancelled waiter (bounded by the queue) or ends a
        // release after which the next move is a hand-off or a request, both of which return.
        loop {
            let current = self.state.load(Ordering::Acquire);
            let Some((next, step)) = self.next_move(current) else {
                return;
            };
            if self
                .state
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            match step {
                Move::HandOff => {
                    let waiter = self.queue.pop().expect("a counted waiter is always queued");
                    if waiter.grant() {
                        return;
                    }
                    // It timed out and left: take the lock back and look again.
                    self.state.fetch_and(!HELD, Ordering::AcqRel);
                }
                Move::Request => {
                    node.request();
                    return;
                }
                Move::Release => {
                    node.release();
                    self.state.fetch_and(!RELEASING, Ordering::AcqRel);
                }
            }
        }
    }

    fn next_move(&self, s: u64) -> Option<(u64, Move)> {
        if s & (HELD | PENDING | RELEASING) != 0 {
            return None;
        }
        let waiters = s >> WAITER_SHIFT;
        if s & OWNED == 0 {
            return (waiters > 0).then_some((s | PENDING, Move::Request));
        }
        let remote = s & REMOTE != 0;
        let handoffs = (s & HANDOFF_MASK) >> HANDOFF_SHIFT;
        if waiters > 0 && !(remote && handoffs >= self.handoff_bound) {
            let counted = if remote { HANDOFF_ONE } else { 0 };
            Some(((s | HELD) - WAITER_ONE + counted, Move::HandOff))
        } else {
            Some((
                (s & !(OWNED | REMOTE | HANDOFF_MASK)) | RELEASING,
                Move::Release,
            ))
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
