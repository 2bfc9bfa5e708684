//! The runtime's barrier, rank 0's side (sans-IO): every node tells rank 0 it arrived at
//! epoch `e` from a collective call of some kind; when every live node has, rank 0 releases
//! `e` to everyone with every node's write notices. Arrivals are counted per sender, so a
//! duplicate cannot release early; arrivals from different kinds of call abort the epoch for
//! everyone rather than pairing them.
//!
//! The node side (send the arrival, wait for the release or a failure) is the runtime's;
//! `dsm-sim`'s lock simulation drives this same type.

use std::collections::{BTreeMap, BTreeSet};

use dsm_wire::{NodeId, PageId};

/// Rank 0's arrivals per epoch.
#[derive(Debug, Default)]
pub struct CentralBarrier {
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
pub enum CentralOutcome {
    /// Others are still awaited.
    Waiting,
    /// Every live node arrived from the same kind of call: their notices, concatenated (a
    /// page written by two nodes appears twice: each node removes its own once and
    /// invalidates what others wrote).
    Released(Vec<PageId>),
    /// This arrival came from another kind of call than the epoch's first (`expected`): the
    /// epoch fails everywhere.
    Mismatched {
        /// The kind of call of the epoch's first arrival.
        expected: u32,
    },
    /// The epoch was aborted before: this arrival is refused too.
    Aborted,
    /// Dropped: an unknown rank, or too many epochs open at once.
    Dropped,
}

/// Most epochs rank 0 tracks at once (each node is in at most one barrier at a time, so
/// more than a few means a peer is misbehaving).
const MAX_OPEN_EPOCHS: usize = 64;

impl CentralBarrier {
    /// Records that `from` reached `epoch` from a call of `kind` with its write `notices`,
    /// in a cluster where `gone[r]` marks nodes that left.
    pub fn arrive(
        &mut self,
        (epoch, kind): (u64, u32),
        from: NodeId,
        gone: &[bool],
        notices: Vec<PageId>,
    ) -> CentralOutcome {
        if self.aborted.contains(&epoch) {
            return CentralOutcome::Aborted;
        }
        if from as usize >= gone.len()
            || (!self.arrived.contains_key(&epoch) && self.arrived.len() >= MAX_OPEN_EPOCHS)
        {
            return CentralOutcome::Dropped;
        }
        let open = self.arrived.entry(epoch).or_insert_with(|| Open {
            seen: vec![false; gone.len()],
            notices: Vec::new(),
            kind,
        });
        if open.kind != kind {
            let expected = open.kind;
            self.arrived.remove(&epoch);
            self.aborted.insert(epoch);
            while self.aborted.len() > MAX_OPEN_EPOCHS {
                self.aborted.pop_first();
            }
            return CentralOutcome::Mismatched { expected };
        }
        if !open.seen[from as usize] {
            open.seen[from as usize] = true;
            open.notices.extend(notices);
        }
        if !open.seen.iter().zip(gone).all(|(s, g)| *s || *g) {
            return CentralOutcome::Waiting;
        }
        let open = self.arrived.remove(&epoch).expect("inserted above");
        CentralOutcome::Released(open.notices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_once_everyone_live_arrived_and_not_before() {
        let mut c = CentralBarrier::default();
        let gone = [false, false, true];
        let p = |page| PageId { region: 0, page };
        assert_eq!(
            c.arrive((1, 0), 1, &gone, vec![p(1)]),
            CentralOutcome::Waiting
        );
        assert_eq!(
            c.arrive((1, 0), 1, &gone, vec![p(9)]),
            CentralOutcome::Waiting,
            "duplicate must not count twice"
        );
        assert_eq!(
            c.arrive((1, 0), 0, &gone, vec![p(1), p(2)]),
            CentralOutcome::Released(vec![p(1), p(1), p(2)])
        );
        assert_eq!(c.arrive((2, 0), 0, &gone, vec![]), CentralOutcome::Waiting);
        assert_eq!(
            c.arrive((2, 0), 9, &gone, vec![]),
            CentralOutcome::Dropped,
            "unknown rank ignored"
        );
    }

    #[test]
    fn arrivals_from_different_calls_abort_the_epoch_for_everyone() {
        let mut c = CentralBarrier::default();
        let gone = [false, false, false];
        assert_eq!(c.arrive((5, 0), 0, &gone, vec![]), CentralOutcome::Waiting);
        assert_eq!(
            c.arrive((5, 1), 1, &gone, vec![]),
            CentralOutcome::Mismatched { expected: 0 }
        );
        // The third node, whatever it came from, is refused too; nothing is released.
        assert_eq!(c.arrive((5, 0), 2, &gone, vec![]), CentralOutcome::Aborted);
        assert_eq!(c.arrive((6, 1), 0, &gone, vec![]), CentralOutcome::Waiting);
    }
}
