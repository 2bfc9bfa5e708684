//! An in-process cluster: one `LockTable` per node, messages over channels, and a protocol
//! thread per node feeding them to `LockTable::handle` (what the node runtime does over a
//! transport).

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use dsm_locks::{
    BarrierEngine, BarrierKind, LockEngine, LockKind, LockTable, NoConsistency, Outbox,
    ReleaseConsistency, TableConfig,
};
use dsm_wire::{NodeId, SyncMsg};

type Envelope = Option<(NodeId, SyncMsg)>;

/// Sends to the other nodes' channels.
struct Channels {
    me: NodeId,
    peers: Vec<Mutex<Sender<Envelope>>>,
}

impl Outbox for Channels {
    fn send(&self, to: NodeId, message: SyncMsg) {
        let peer = self.peers[to as usize].lock().unwrap();
        // A stopped node's channel is closed: the message is lost, as on a failed link.
        let _ = peer.send(Some((self.me, message)));
    }
}

/// The nodes of a cluster and their protocol threads.
#[derive(Debug)]
pub struct Cluster {
    /// One table per node.
    pub tables: Vec<Arc<LockTable>>,
    senders: Vec<Sender<Envelope>>,
    threads: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// `nodes` nodes; `running(n)` false leaves node n without a protocol thread (it never
    /// answers, like a hung process).
    pub fn start(
        nodes: u32,
        kind: LockKind,
        consistency: impl Fn(NodeId) -> Box<dyn ReleaseConsistency>,
        running: impl Fn(NodeId) -> bool,
    ) -> Cluster {
        let (senders, receivers): (Vec<_>, Vec<Receiver<Envelope>>) =
            (0..nodes).map(|_| mpsc::channel()).unzip();
        let tables: Vec<Arc<LockTable>> = (0..nodes)
            .map(|me| {
                let outbox = Channels {
                    me,
                    peers: senders.iter().map(|s| Mutex::new(s.clone())).collect(),
                };
                Arc::new(LockTable::new(
                    LockEngine::new(me, nodes, kind),
                    BarrierEngine::new(me, nodes, BarrierKind::Dissemination),
                    Box::new(outbox),
                    consistency(me),
                    TableConfig::default(),
                ))
            })
            .collect();
        let threads = receivers
            .into_iter()
            .enumerate()
            .filter(|(n, _)| running(u32::try_from(*n).unwrap()))
            .map(|(n, rx)| {
                let table = tables[n].clone();
                std::thread::spawn(move || {
                    while let Ok(Some((from, message))) = rx.recv() {
                        table
                            .handle(from, &message)
                            .expect("a correct peer's message");
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

    /// A cluster without release consistency where every node runs.
    pub fn simple(nodes: u32, kind: LockKind) -> Cluster {
        Cluster::start(nodes, kind, |_| Box::new(NoConsistency), |_| true)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for sender in &self.senders {
            let _ = sender.send(None);
        }
        for thread in self.threads.drain(..) {
            thread.join().expect("protocol thread panicked");
        }
    }
}
