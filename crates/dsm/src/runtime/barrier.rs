//! A central barrier (sans-IO): every node tells rank 0 it arrived at epoch `e`; when all live
//! nodes have, rank 0 releases epoch `e` to everyone.
//!
//! The runtime's own barrier rather than `dsm-locks`' (whose lock table is built without
//! one): it fails promptly with `NodeFailed` and carries every node's write notices.
//! Arrivals are counted per sender so a duplicate cannot release early.

use std::collections::{BTreeMap, BTreeSet};

use dsm_wire::{Message, NodeId, PageId, SyncMsg};

use super::Core;

/// Rank 0's arrivals per epoch.
#[derive(Debug, Default)]
pub(crate) struct Central {
    /// Per open epoch: who arrived, their notices, and the kind of call they came from.
    arrived: BTreeMap<u64, Open>,
    /// Epochs refused for mixing calls: a late arrival is refused again (bounded).
    aborted: BTreeSet<u64>,
}

#[derive(Debug)]
struct Open {
    seen: Vec<bool>,
    notices: Vec<PageId>,
    kind: u32,
}

/// What an arrival settles.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Others are still awaited.
    Waiting,
    /// Every live node arrived from the same kind of call: their notices.
    Released(Vec<PageId>),
    /// Nodes arrived from different calls (a barrier and an allocation's rendezvous, say):
    /// the epoch fails everywhere rather than pairing them.
    Aborted,
}

/// Most epochs rank 0 tracks at once (each node is in at most one barrier at a time, so
/// more than a few means a peer is misbehaving).
const MAX_OPEN_EPOCHS: usize = 64;

impl Central {
    /// Records that `from` reached `epoch` from a call of `kind` with its write `notices`,
    /// in a cluster where `gone[r]` marks nodes that left. When the epoch is complete, gives
    /// every node's notices concatenated (a page written by two nodes appears twice: each
    /// node removes its own once and invalidates what others wrote).
    pub(crate) fn arrive(
        &mut self,
        (epoch, kind): (u64, u32),
        from: NodeId,
        gone: &[bool],
        notices: Vec<PageId>,
    ) -> Outcome {
        if self.aborted.contains(&epoch) {
            return Outcome::Aborted;
        }
        if from as usize >= gone.len()
            || (!self.arrived.contains_key(&epoch) && self.arrived.len() >= MAX_OPEN_EPOCHS)
        {
            tracing::warn!(epoch, from, "barrier arrival dropped");
            return Outcome::Waiting;
        }
        let open = self.arrived.entry(epoch).or_insert_with(|| Open {
            seen: vec![false; gone.len()],
            notices: Vec::new(),
            kind,
        });
        if open.kind != kind {
            tracing::warn!(
                epoch,
                from,
                kind,
                expected = open.kind,
                "nodes reached one barrier from different collective calls: refused everywhere"
            );
            self.arrived.remove(&epoch);
            self.aborted.insert(epoch);
            while self.aborted.len() > MAX_OPEN_EPOCHS {
                self.aborted.pop_first();
            }
            return Outcome::Aborted;
        }
        if !open.seen[from as usize] {
            open.seen[from as usize] = true;
            open.notices.extend(notices);
        }
        if !open.seen.iter().zip(gone).all(|(s, g)| *s || *g) {
            return Outcome::Waiting;
        }
        let open = self.arrived.remove(&epoch).expect("inserted above");
        Outcome::Released(open.notices)
    }
}

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
                    Outcome::Waiting => {}
                    Outcome::Released(all) => {
                        let release = SyncMsg::BarrierRelease {
                            epoch,
                            notices: all,
                        };
                        self.broadcast(true, &Message::Sync(release));
                    }
                    Outcome::Aborted => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_once_everyone_live_arrived_and_not_before() {
        let mut c = Central::default();
        let gone = [false, false, true];
        let p = |page| PageId { region: 0, page };
        assert_eq!(c.arrive((1, 0), 1, &gone, vec![p(1)]), Outcome::Waiting);
        assert_eq!(
            c.arrive((1, 0), 1, &gone, vec![p(9)]),
            Outcome::Waiting,
            "duplicate must not count twice"
        );
        assert_eq!(
            c.arrive((1, 0), 0, &gone, vec![p(1), p(2)]),
            Outcome::Released(vec![p(1), p(1), p(2)])
        );
        assert_eq!(c.arrive((2, 0), 0, &gone, vec![]), Outcome::Waiting);
        assert_eq!(
            c.arrive((2, 0), 9, &gone, vec![]),
            Outcome::Waiting,
            "unknown rank ignored"
        );
    }

    #[test]
    fn arrivals_from_different_calls_abort_the_epoch_for_everyone() {
        let mut c = Central::default();
        let gone = [false, false, false];
        assert_eq!(c.arrive((5, 0), 0, &gone, vec![]), Outcome::Waiting);
        assert_eq!(c.arrive((5, 1), 1, &gone, vec![]), Outcome::Aborted);
        // The third node, whatever it came from, is refused too; nothing is released.
        assert_eq!(c.arrive((5, 0), 2, &gone, vec![]), Outcome::Aborted);
        assert_eq!(c.arrive((6, 1), 0, &gone, vec![]), Outcome::Waiting);
    }
}
