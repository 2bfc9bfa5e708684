//! A central barrier (sans-IO): every node tells rank 0 it arrived at epoch `e`; when all live
//! nodes have, rank 0 releases epoch `e` to everyone.
//!
//! This is the runtime's own barrier until the dissemination barrier of `dsm-locks` is wired
//! in. Arrivals are counted per sender so a duplicate cannot release early.

use std::collections::BTreeMap;

use dsm_wire::NodeId;

/// Rank 0's arrivals per epoch.
#[derive(Debug, Default)]
pub(crate) struct Central {
    arrived: BTreeMap<u64, Vec<bool>>,
}

/// Most epochs rank 0 tracks at once (each node is in at most one barrier at a time, so
/// more than a few means a peer is misbehaving).
const MAX_OPEN_EPOCHS: usize = 64;

impl Central {
    /// Records that `from` reached `epoch` in a cluster of `size` where `gone[r]` marks nodes
    /// that left; returns true when the epoch is complete and must be released.
    pub(crate) fn arrive(&mut self, epoch: u64, from: NodeId, gone: &[bool]) -> bool {
        if from as usize >= gone.len()
            || (!self.arrived.contains_key(&epoch) && self.arrived.len() >= MAX_OPEN_EPOCHS)
        {
            tracing::warn!(epoch, from, "barrier arrival dropped");
            return false;
        }
        let seen = self
            .arrived
            .entry(epoch)
            .or_insert_with(|| vec![false; gone.len()]);
        seen[from as usize] = true;
        let complete = seen.iter().zip(gone).all(|(s, g)| *s || *g);
        if complete {
            self.arrived.remove(&epoch);
        }
        complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_once_everyone_live_arrived_and_not_before() {
        let mut c = Central::default();
        let gone = [false, false, true];
        assert!(!c.arrive(1, 1, &gone));
        assert!(!c.arrive(1, 1, &gone), "duplicate must not count twice");
        assert!(c.arrive(1, 0, &gone));
        assert!(!c.arrive(2, 0, &gone));
        assert!(!c.arrive(2, 9, &gone), "unknown rank ignored");
    }
}
