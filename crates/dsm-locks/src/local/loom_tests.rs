//! loom models of the local part: every interleaving (up to the preemption bound) of threads
//! queueing, holding and timing out while a protocol thread grants the node's requests and
//! reports a remote waiter. Mutual exclusion is checked by a loom `UnsafeCell` (loom fails on
//! concurrent access), lost wake-ups by loom's deadlock detection (a parked waiter that nobody
//! unparks while the protocol thread blocks on its channel), and the end state: the node
//! released exactly as often as it requested, and the state word is back to zero.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p dsm-locks --release loom`

use std::time::{Duration, Instant};

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicUsize;
use loom::sync::{Mutex, mpsc};

use super::{LocalLock, NodeSide};
use crate::primitive::{Arc, Ordering};

enum ToProtocol {
    Request,
    Stop,
}

/// Records the node side; requests go to the protocol thread, or are granted inside
/// `request` when there is none.
struct Node {
    local: Arc<LocalLock>,
    protocol: Option<Mutex<mpsc::Sender<ToProtocol>>>,
    requests: AtomicUsize,
    releases: AtomicUsize,
}

impl NodeSide for Node {
    fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        match &self.protocol {
            Some(tx) => tx.lock().unwrap().send(ToProtocol::Request).unwrap(),
            None => self.local.granted(self),
        }
    }
    fn release(&self) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
}

type Counter = Arc<UnsafeCell<u32>>;

fn node(handoff_bound: u32, protocol: Option<mpsc::Sender<ToProtocol>>) -> Arc<Node> {
    Arc::new(Node {
        local: Arc::new(LocalLock::new(4, handoff_bound)),
        protocol: protocol.map(Mutex::new),
        requests: AtomicUsize::new(0),
        releases: AtomicUsize::new(0),
    })
}

/// The protocol thread: grants every request; reports a remote waiter before the first grant
/// when `remote`.
fn spawn_protocol(
    node: Arc<Node>,
    rx: mpsc::Receiver<ToProtocol>,
    remote: bool,
) -> loom::thread::JoinHandle<()> {
    loom::thread::spawn(move || {
        let mut first = true;
        while let Ok(ToProtocol::Request) = rx.recv() {
            if remote && first {
                node.local.remote_waiting();
            }
            first = false;
            node.local.granted(&*node);
        }
    })
}

/// Acquire (waiting as long as it takes), increment under the lock, release.
fn critical_section(node: &Node, counter: &UnsafeCell<u32>) {
    let waiter = node.local.enqueue(node).unwrap();
    // loom's park has no timeout: a waiter nobody grants is a deadlock loom reports.
    assert!(waiter.wait(Instant::now() + Duration::from_secs(3600)));
    increment(counter);
    node.local.unlock(node);
}

fn increment(counter: &UnsafeCell<u32>) {
    // SAFETY: loom's UnsafeCell fails the model if another thread accesses the cell
    // concurrently; the pointer is valid for the closure's duration.
    counter.with_mut(|c| unsafe { *c += 1 });
}

fn read(counter: &UnsafeCell<u32>) -> u32 {
    // SAFETY: as in `increment`; every writer has been joined.
    counter.with(|c| unsafe { *c })
}

fn check_idle(node: &Node) {
    assert_eq!(
        node.requests.load(Ordering::SeqCst),
        node.releases.load(Ordering::SeqCst)
    );
    assert_eq!(
        node.local.state.load(Ordering::SeqCst),
        0,
        "idle at the end"
    );
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn spawn_worker(node: &Arc<Node>, counter: &Counter) -> loom::thread::JoinHandle<()> {
    let (node, counter) = (node.clone(), counter.clone());
    loom::thread::spawn(move || critical_section(&node, &counter))
}

#[test]
fn loom_two_threads_instant_grant() {
    model(|| {
        let node = node(1, None);
        let counter: Counter = Arc::new(UnsafeCell::new(0));
        let workers = [spawn_worker(&node, &counter), spawn_worker(&node, &counter)];
        workers.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(read(&counter), 2);
        check_idle(&node);
    });
}

#[test]
fn loom_grants_and_remote_waiters_from_the_protocol_thread() {
    model(|| {
        let (tx, rx) = mpsc::channel();
        let node = node(1, Some(tx.clone()));
        let protocol = spawn_protocol(node.clone(), rx, true);
        let counter: Counter = Arc::new(UnsafeCell::new(0));
        let workers = [spawn_worker(&node, &counter), spawn_worker(&node, &counter)];
        workers.into_iter().for_each(|h| h.join().unwrap());
        tx.send(ToProtocol::Stop).unwrap();
        protocol.join().unwrap();
        assert_eq!(read(&counter), 2);
        check_idle(&node);
    });
}

#[test]
fn loom_timeout_races_the_grant() {
    model(|| {
        let (tx, rx) = mpsc::channel();
        let node = node(4, Some(tx.clone()));
        let protocol = spawn_protocol(node.clone(), rx, false);
        let counter: Counter = Arc::new(UnsafeCell::new(0));
        let quitter = {
            let (node, counter) = (node.clone(), counter.clone());
            loom::thread::spawn(move || {
                let waiter = node.local.enqueue(&*node).unwrap();
                // Time out at once: either the grant came first (we hold the lock) or we leave.
                if !waiter.cancel() {
                    increment(&counter);
                    node.local.unlock(&*node);
                }
            })
        };
        let worker = spawn_worker(&node, &counter);
        quitter.join().unwrap();
        worker.join().unwrap();
        tx.send(ToProtocol::Stop).unwrap();
        protocol.join().unwrap();
        assert!(read(&counter) >= 1);
        check_idle(&node);
    });
}
