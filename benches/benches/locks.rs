//! Criterion bench `locks` (issue #5), in-process: the cost of the lock path itself, beside
//! the channel round trip it rides on. The figures over the real TCP transport between
//! processes come from `dsm-bench locks --json`.
//!
//! * `local_acquire_release`: a one-node `LockTable` (no messages): the local queue, state word
//!   and engine call.
//! * `engine_ra_acquire_4_nodes`: Ricart–Agrawala engines of four nodes exchanging their six
//!   messages in memory, no threads: the protocol's CPU cost per acquire.
//! * `channel_round_trip` vs `ra_acquire_release_2_nodes`: a ping-pong between two threads
//!   over std channels, and an uncontended acquire+release on a two-node cluster whose
//!   messages travel over the same kind of channels (one REQUEST, one REPLY: one round trip).

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use criterion::{Criterion, criterion_group, criterion_main};
use dsm_locks::{
    Action, BarrierEngine, BarrierKind, LockEngine, LockKind, LockTable, NoConsistency, Outbox,
    TableConfig,
};
use dsm_wire::{NodeId, SyncMsg};

type Envelope = Option<(NodeId, SyncMsg)>;

struct Channels {
    me: NodeId,
    peers: Vec<Mutex<Sender<Envelope>>>,
}

impl Outbox for Channels {
    fn send(&self, to: NodeId, message: SyncMsg) {
        let _ = self.peers[to as usize]
            .lock()
            .unwrap()
            .send(Some((self.me, message)));
    }
}

/// Tables of `nodes` nodes over channels, each with a protocol thread; stopped on drop.
struct Cluster {
    tables: Vec<Arc<LockTable>>,
    senders: Vec<Sender<Envelope>>,
    threads: Vec<JoinHandle<()>>,
}

impl Cluster {
    fn start(nodes: u32) -> Cluster {
        let (senders, receivers): (Vec<_>, Vec<Receiver<Envelope>>) =
            (0..nodes).map(|_| mpsc::channel()).unzip();
        let tables: Vec<Arc<LockTable>> = (0..nodes)
            .map(|me| {
                let peers = senders.iter().map(|s| Mutex::new(s.clone())).collect();
                Arc::new(LockTable::new(
                    LockEngine::new(me, nodes, LockKind::RicartAgrawala),
                    BarrierEngine::new(me, nodes, BarrierKind::Dissemination),
                    Box::new(Channels { me, peers }),
                    Box::new(NoConsistency),
                    TableConfig::default(),
                ))
            })
            .collect();
        let threads = receivers
            .into_iter()
            .zip(tables.clone())
            .map(|(rx, table)| {
                std::thread::spawn(move || {
                    while let Ok(Some((from, message))) = rx.recv() {
                        table.handle(from, &message).expect("lock message");
                    }
                })
            })
            .collect();
        Cluster {
            tables,
            senders,
            threads,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &self.senders {
            let _ = s.send(None);
        }
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

fn local_acquire_release(c: &mut Criterion) {
    let cluster = Cluster::start(1);
    c.bench_function("local_acquire_release", |b| {
        b.iter(|| drop(cluster.tables[0].acquire(1).unwrap()))
    });
}

fn engine_ra_acquire(c: &mut Criterion) {
    let mut engines: Vec<LockEngine> = (0..4)
        .map(|me| LockEngine::new(me, 4, LockKind::RicartAgrawala))
        .collect();
    let mut wire: VecDeque<(NodeId, NodeId, SyncMsg)> = VecDeque::new();
    let mut out = Vec::new();
    c.bench_function("engine_ra_acquire_4_nodes", |b| {
        b.iter(|| {
            engines[0].acquire(1, &mut out).unwrap();
            let mut from = 0;
            // Deliver until quiet: three requests, three replies.
            loop {
                for action in out.drain(..) {
                    if let Action::Send { to, message } = action {
                        wire.push_back((from, to, message));
                    }
                }
                let Some((sender, to, message)) = wire.pop_front() else {
                    break;
                };
                engines[to as usize]
                    .on_message(sender, &message, &mut out)
                    .unwrap();
                from = to;
            }
            engines[0].release(1, Vec::new(), &mut out).unwrap();
            out.clear();
        })
    });
}

fn channel_round_trip(c: &mut Criterion) {
    let (ping_tx, ping_rx) = mpsc::channel::<u64>();
    let (pong_tx, pong_rx) = mpsc::channel::<u64>();
    let echo = std::thread::spawn(move || {
        while let Ok(v) = ping_rx.recv() {
            if pong_tx.send(v).is_err() {
                break;
            }
        }
    });
    c.bench_function("channel_round_trip", |b| {
        b.iter(|| {
            ping_tx.send(1).unwrap();
            pong_rx.recv().unwrap()
        })
    });
    drop(ping_tx);
    echo.join().unwrap();
}

fn ra_two_nodes(c: &mut Criterion) {
    let cluster = Cluster::start(2);
    c.bench_function("ra_acquire_release_2_nodes", |b| {
        b.iter(|| drop(cluster.tables[0].acquire(1).unwrap()))
    });
}

criterion_group!(
    benches,
    local_acquire_release,
    engine_ra_acquire,
    channel_round_trip,
    ra_two_nodes
);
criterion_main!(benches);
