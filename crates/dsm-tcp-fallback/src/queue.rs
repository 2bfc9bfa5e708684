//! The bounded work queue from the node's threads to the transport thread.
//!
//! Why a mutex and not a lock-free queue: in a lock-free bounded MPMC queue (crossbeam's
//! `ArrayQueue`, Vyukov's design) a producer first claims a slot, then writes it; a consumer
//! that finds the next slot claimed but not yet written must wait for it, and it waits by
//! spinning. The consumer here is a real-time thread; the producer is often an application
//! thread of the same node, at normal priority, on the same CPU when nodes share CPUs. When
//! the transport thread wakes (a message arrived) and preempts a producer between the claim
//! and the write, the spin keeps the producer off the CPU until the kernel's fair-server gives
//! normal threads their 50 ms of each second: 4-node Jacobi over TCP on 2 CPUs stalled
//! ~935 ms in about one run of twenty, the transport thread inside its queue drain.
//!
//! Here the consumer that meets a producer inside its push blocks on the mutex (a short
//! spin, then a futex wait), so the producer runs and finishes. Pushes never allocate (the
//! deque is allocated full size up front): a SIGBUS handler pushes. A handler never
//! interrupts a push of its own thread: its signal is raised by an access to region memory,
//! which pushes do not make.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// A FIFO of at most `capacity` items.
#[derive(Debug)]
pub(crate) struct WorkQueue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
}

impl<T> WorkQueue<T> {
    /// An empty queue with room for `capacity` items, allocated now.
    pub(crate) fn new(capacity: usize) -> Self {
        WorkQueue {
            items: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Appends `item`, or gives it back when the queue is full.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let mut items = self.lock();
        if items.len() >= self.capacity {
            return Err(item);
        }
        items.push_back(item);
        Ok(())
    }

    /// Moves up to `max` of the oldest items to the end of `out`; returns how many.
    pub(crate) fn take(&self, out: &mut VecDeque<T>, max: usize) -> usize {
        let mut items = self.lock();
        let count = items.len().min(max);
        out.extend(items.drain(..count));
        count
    }

    /// Takes the oldest item.
    pub(crate) fn pop(&self) -> Option<T> {
        self.lock().pop_front()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A panic elsewhere while holding the lock leaves the deque consistent (every operation
    /// on it is a single call that does not run foreign code): go on with it.
    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn items_come_out_in_order_and_a_full_queue_gives_the_item_back() {
        let queue = WorkQueue::new(3);
        for i in 0..3 {
            queue.push(i).unwrap();
        }
        assert_eq!(queue.push(3), Err(3), "full");
        let mut out = VecDeque::new();
        assert_eq!(queue.take(&mut out, 2), 2);
        assert_eq!(out, [0, 1]);
        queue.push(4).unwrap();
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(4));
        assert!(queue.is_empty());
        assert_eq!(queue.take(&mut out, 8), 0);
    }

    #[test]
    fn each_producers_items_keep_their_order_under_contention() {
        const PER_THREAD: u32 = 20_000;
        let queue = Arc::new(WorkQueue::new(1024));
        let producers: Vec<_> = (0..3u32)
            .map(|p| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let mut item = (p, i);
                        while let Err(back) = queue.push(item) {
                            item = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u32; 3];
        let mut out = VecDeque::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while next.iter().any(|n| *n < PER_THREAD) {
            assert!(
                std::time::Instant::now() < deadline,
                "producers stalled: taken so far {next:?} of {PER_THREAD} each"
            );
            queue.take(&mut out, 64);
            for (p, i) in out.drain(..) {
                assert_eq!(i, next[p as usize], "producer {p} out of order");
                next[p as usize] += 1;
            }
        }
        for producer in producers {
            producer.join().unwrap();
        }
        assert!(queue.is_empty());
    }
}
