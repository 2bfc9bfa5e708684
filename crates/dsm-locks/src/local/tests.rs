//! The local part under real threads (the loom models are in `loom_tests.rs`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{LocalLock, NodeSide};

/// A node side that records calls; `instant` grants inside `request`.
struct Node<'a> {
    local: &'a LocalLock,
    instant: bool,
    requests: AtomicUsize,
    releases: AtomicUsize,
    pending: AtomicBool,
}

impl<'a> Node<'a> {
    fn new(local: &'a LocalLock, instant: bool) -> Self {
        Node {
            local,
            instant,
            requests: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
            pending: AtomicBool::new(false),
        }
    }
}

impl NodeSide for Node<'_> {
    fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if self.instant {
            self.local.granted(self);
        } else {
            self.pending.store(true, Ordering::SeqCst);
        }
    }
    fn release(&self) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

#[test]
fn threads_exclude_each_other_and_the_node_ends_released() {
    let local = LocalLock::new(64, 4);
    let node = Node::new(&local, true);
    let inside = AtomicUsize::new(0);
    let total = Mutex::new(0u64);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..2000 {
                    let waiter = local.enqueue(&node).unwrap();
                    assert!(waiter.wait(far()));
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    *total.lock().unwrap() += 1;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    local.unlock(&node);
                }
            });
        }
    });
    assert_eq!(*total.lock().unwrap(), 16_000);
    assert_eq!(
        node.requests.load(Ordering::SeqCst),
        node.releases.load(Ordering::SeqCst)
    );
    assert_eq!(local.state.load(Ordering::SeqCst), 0, "idle at the end");
}

#[test]
fn a_remote_waiter_waits_through_at_most_the_bound() {
    let local = LocalLock::new(64, 3);
    let node = Node::new(&local, true);
    let first = local.enqueue(&node).unwrap();
    assert!(first.is_granted());
    // Five more threads queue behind the holder, then a remote node asks.
    let queued: Vec<_> = (0..5).map(|_| local.enqueue(&node).unwrap()).collect();
    local.remote_waiting();
    local.unlock(&node);
    let granted_before_release = queued.iter().take_while(|w| w.is_granted()).count();
    assert_eq!(granted_before_release, 1);
    for (i, waiter) in queued.iter().enumerate().take(2) {
        assert!(waiter.is_granted(), "local handoff {i}");
        local.unlock(&node);
    }
    // Three handoffs happened: the third holder's unlock gave the lock up.
    assert!(queued[2].is_granted());
    local.unlock(&node);
    assert_eq!(
        node.releases.load(Ordering::SeqCst),
        1,
        "released after the bound"
    );
    assert_eq!(
        node.requests.load(Ordering::SeqCst),
        2,
        "and asked again for the rest"
    );
    for waiter in &queued[3..] {
        assert!(waiter.is_granted());
        local.unlock(&node);
    }
    assert_eq!(node.releases.load(Ordering::SeqCst), 2);
}

#[test]
fn a_cancelled_waiter_is_skipped_and_the_lock_not_kept() {
    let local = LocalLock::new(4, 4);
    let node = Node::new(&local, false);
    let waiter = local.enqueue(&node).unwrap();
    assert!(!waiter.wait(Instant::now() + Duration::from_millis(10)));
    assert!(waiter.cancel());
    assert!(!local.is_owned());
    assert!(node.pending.load(Ordering::SeqCst));
    // The grant arrives after the only waiter left: the node gives the lock straight back.
    local.granted(&node);
    assert!(!waiter.is_granted());
    assert_eq!(node.releases.load(Ordering::SeqCst), 1);
    assert_eq!(local.state.load(Ordering::SeqCst), 0);
}

#[test]
fn the_queue_is_bounded() {
    let local = LocalLock::new(2, 4);
    let node = Node::new(&local, false);
    let _a = local.enqueue(&node).unwrap();
    let _b = local.enqueue(&node).unwrap();
    assert!(local.enqueue(&node).is_err());
    assert_eq!(
        node.requests.load(Ordering::SeqCst),
        1,
        "one request for all local waiters"
    );
}

#[test]
fn grants_from_another_thread_wake_waiters() {
    let local = LocalLock::new(64, 2);
    let node = Node::new(&local, false);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..500 {
                    let waiter = local.enqueue(&node).unwrap();
                    assert!(waiter.wait(far()));
                    local.unlock(&node);
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        s.spawn(|| {
            let deadline = far();
            while done.load(Ordering::SeqCst) < 4 {
                assert!(
                    Instant::now() < deadline,
                    "protocol thread: waiters never finished"
                );
                if node.pending.swap(false, Ordering::SeqCst) {
                    local.remote_waiting();
                    local.granted(&node);
                } else {
                    std::thread::yield_now();
                }
            }
        });
    });
    assert_eq!(
        node.requests.load(Ordering::SeqCst),
        node.releases.load(Ordering::SeqCst)
    );
    assert_eq!(local.state.load(Ordering::SeqCst), 0);
}
