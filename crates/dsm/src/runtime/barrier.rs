//! A central barrier: every node tells rank 0 it arrived at epoch `e`; when all live nodes
//! have, rank 0 releases epoch `e` to everyone.
//!
//! Rank 0's side is [`dsm_locks::CentralBarrier`] (sans-IO, also driven by dsm-sim's lock
//! simulation); the lock table is built without a barrier. It fails promptly with
//! `NodeFailed` and carries every node's write notices.

use dsm_locks::CentralOutcome;
use dsm_wire::{Message, NodeId, SyncMsg};

use super::Core;

impl Core {
    /// A barrier message from `from`: rank 0 counts arrivals and, when every live node has
    /// arrived, releases the epoch to all (itself included); every node records releases
    /// from rank 0. Runs on the thread that received it.
    pub(crate) fn on_barrier(&self, from: NodeId, message: SyncMsg) {
        let local = self.transport.local();
        match message {
            SyncMsg::BarrierArrive {
                epoch,
                round: kind,
                notices,
            } if local == 0 => {
                let gone = self.shared.read(|s| s.left.clone());
                let outcome = self
                    .central
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .arrive((epoch, kind), from, &gone, notices);
                match outcome {
                    CentralOutcome::Waiting => {}
                    CentralOutcome::Dropped => {
                        tracing::warn!(epoch, from, "barrier arrival dropped");
                    }
                    CentralOutcome::Released(all) => {
                        let release = SyncMsg::BarrierRelease {
                            epoch,
                            notices: all,
                        };
                        self.broadcast(true, &Message::Sync(release));
                    }
                    CentralOutcome::Mismatched { expected } => {
                        tracing::warn!(
                            epoch,
                            from,
                            kind,
                            expected,
                            "nodes reached one barrier from different collective calls: \
                             refused everywhere"
                        );
                        self.broadcast(true, &Message::Sync(SyncMsg::BarrierAbort { epoch }));
                    }
                    CentralOutcome::Aborted => {
                        self.broadcast(true, &Message::Sync(SyncMsg::BarrierAbort { epoch }));
                    }
                }
            }
            SyncMsg::BarrierAbort { epoch } if from == 0 => {
                self.shared.update(|s| {
                    s.barrier_aborted.insert(epoch);
                    while s.barrier_aborted.len() > super::MAX_UNCLAIMED {
                        s.barrier_aborted.pop_first();
                    }
                });
            }
            SyncMsg::BarrierRelease { epoch, notices } if from == 0 => {
                self.shared.update(|s| {
                    s.barrier_released = s.barrier_released.max(epoch);
                    super::keep_answer(&mut s.barrier_notices, epoch, notices);
                });
            }
            other => {
                tracing::warn!(from, message = ?other, "barrier message out of place; dropped")
            }
        }
    }
}
