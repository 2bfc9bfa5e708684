//! Whether an application thread of this node sleeps on an answer from the network that has
//! not come yet. The transport thread polls its ring (`DSM_SPIN_US`) only then: the answer
//! is expected soon and the CPU is otherwise idle, so polling saves the cross-CPU wake-up a
//! sleeping transport thread would need (~30 µs on a virtual machine). Otherwise it sleeps
//! at once: a service thread that polls and yields while the application computes on the
//! same CPU stays runnable without being woken, and the scheduler runs it only at its next
//! tick, up to 4 ms later (see `crate::sched`), however urgent the message that came meanwhile.
//!
//! Both flags are hints: a stale one costs at most one spin window or one wake-up, never
//! correctness.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Awaiting {
    /// A thread started waiting (a barrier, a lock, an allocation...) and nothing answered
    /// since: set by the waiter before it sleeps, cleared by whoever delivers an answer.
    sleeping: AtomicBool,
    /// Faults whose page was asked of another node and is not installed yet (the coherence
    /// state's count, published under its lock).
    faults: AtomicBool,
}

impl Awaiting {
    /// The calling thread is about to sleep until an answer comes.
    pub(crate) fn sleep(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
    }

    /// An answer was delivered (the thread it wakes runs next), or the waiter stopped waiting.
    pub(crate) fn answered(&self) {
        crate::sched::before_waking();
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Whether faults of this node wait for pages (async-signal-safe: one atomic store).
    pub(crate) fn set_faults(&self, pending: bool) {
        self.faults.store(pending, Ordering::Relaxed);
    }

    /// Whether anything of this node waits on the network.
    pub(crate) fn any(&self) -> bool {
        self.sleeping.load(Ordering::Relaxed) || self.faults.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_ends_sleeping_but_not_pending_faults() {
        let awaiting = Awaiting::default();
        assert!(!awaiting.any());
        awaiting.sleep();
        assert!(awaiting.any());
        awaiting.answered();
        assert!(!awaiting.any());
        awaiting.set_faults(true);
        awaiting.answered();
        assert!(awaiting.any(), "a delivered answer does not install a page");
        awaiting.set_faults(false);
        assert!(!awaiting.any());
    }
}
