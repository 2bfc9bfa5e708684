//! `LockTable` with real threads: many threads on several nodes, both algorithms.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsm_locks::{Error, LockKind, ReleaseConsistency, SyncPoint};
use dsm_wire::{NodeId, PageId};

use crate::cluster::Cluster;

/// Threads on every node increment a counter with a separate load and store (lost updates
/// without mutual exclusion); the total is exact.
fn counter_is_exact(kind: LockKind) {
    const NODES: u32 = 4;
    const THREADS: u64 = 3;
    const ROUNDS: u64 = 300;
    let cluster = Cluster::simple(NODES, kind);
    let counter = AtomicU64::new(0);
    let inside = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for table in &cluster.tables {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for _ in 0..ROUNDS {
                        let guard = table.acquire(3).expect("acquire");
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        let value = counter.load(Ordering::SeqCst);
                        std::thread::yield_now();
                        counter.store(value + 1, Ordering::SeqCst);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(guard);
                    }
                });
            }
        }
    });
    assert_eq!(
        counter.load(Ordering::SeqCst),
        u64::from(NODES) * THREADS * ROUNDS
    );
}

#[test]
fn ricart_agrawala_counter_is_exact() {
    counter_is_exact(LockKind::RicartAgrawala);
}

#[test]
fn home_queue_counter_is_exact() {
    counter_is_exact(LockKind::HomeQueue);
}

#[test]
fn barrier_lets_nobody_through_early() {
    const NODES: u32 = 5;
    const EPOCHS: usize = 50;
    let cluster = Cluster::simple(NODES, LockKind::RicartAgrawala);
    let arrived: Vec<AtomicUsize> = (0..EPOCHS).map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|s| {
        for table in &cluster.tables {
            s.spawn(|| {
                for (epoch, count) in arrived.iter().enumerate() {
                    count.fetch_add(1, Ordering::SeqCst);
                    table.barrier().expect("barrier");
                    assert_eq!(
                        count.load(Ordering::SeqCst),
                        NODES as usize,
                        "left barrier {epoch} early"
                    );
                }
            });
        }
    });
}

#[test]
fn a_timeout_names_the_lock_and_the_silent_node() {
    let cluster = Cluster::start(
        3,
        LockKind::RicartAgrawala,
        |_| Box::new(dsm_locks::NoConsistency),
        |n| n != 2,
    );
    let err = cluster.tables[0]
        .try_acquire(9, Duration::from_millis(200))
        .unwrap_err();
    match &err {
        Error::Timeout {
            lock: 9,
            awaiting,
            held_locally: false,
            ..
        } => assert_eq!(awaiting, &vec![2]),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("lock 9") && text.contains("[2]"), "{text}");
    // Once the runtime declares node 2 failed, nobody waits for it.
    cluster.tables[0].node_failed(2).unwrap();
    let guard = cluster.tables[0].try_acquire(9, Duration::from_secs(5));
    assert!(guard.is_ok(), "{:?}", guard.err());
}

/// Records the release-consistency calls of one node.
#[derive(Default)]
struct Recorder {
    writes: Mutex<Vec<PageId>>,
    invalidated: Mutex<BTreeMap<u32, Vec<PageId>>>,
}

struct Hooks(Arc<Recorder>);

impl ReleaseConsistency for Hooks {
    fn flush(&self, _: SyncPoint) -> Vec<PageId> {
        std::mem::take(&mut *self.0.writes.lock().unwrap())
    }
    fn invalidate(&self, point: SyncPoint, notices: &[PageId]) {
        if let SyncPoint::Lock(lock) = point {
            self.0
                .invalidated
                .lock()
                .unwrap()
                .entry(lock)
                .or_default()
                .extend_from_slice(notices);
        }
    }
}

#[test]
fn a_grant_invalidates_the_previous_holders_pages_before_returning() {
    for kind in [LockKind::RicartAgrawala, LockKind::HomeQueue] {
        let recorders: Vec<Arc<Recorder>> = (0..3).map(|_| Arc::default()).collect();
        let hooks = |n: NodeId| {
            Box::new(Hooks(recorders[n as usize].clone())) as Box<dyn ReleaseConsistency>
        };
        let cluster = Cluster::start(3, kind, hooks, |_| true);
        let page = PageId { region: 2, page: 5 };
        {
            let _guard = cluster.tables[1].acquire(4).unwrap();
            recorders[1].writes.lock().unwrap().push(page);
        }
        let _guard = cluster.tables[2].acquire(4).unwrap();
        let invalidated = recorders[2].invalidated.lock().unwrap().get(&4).cloned();
        assert_eq!(invalidated, Some(vec![page]), "{kind:?}");
    }
}
