//! A central barrier (sans-IO): every node tells rank 0 it arrived at epoch `e`; when all live
//! nodes have, rank 0 releases epoch `e` to everyone.
//!
//! The runtime's own barrier rather than `dsm-locks`' (whose lock table is built without
//! one): it fails promptly with `NodeFailed` and carries every node's write notices.
//! Arrivals are counted per sender so a duplicate cannot release early.

use std::collections::BTreeMap;

use dsm_wire::{Message, NodeId, PageId, SyncMsg};

use super::Core;

/// Rank 0's arrivals per epoch.
#[derive(Debug, Default)]
pub(crate) struct Central {
    arrived: BTreeMap<u64, (Vec<bool>, Vec<PageId>)>,
}

/// Most epochs rank 0 tracks at once (each node is in at most one barrier at a time, so
/// more than a few means a peer is misbehaving).
const MAX_OPEN_EPOCHS: usize = 64;

impl Central {
    /// Records that `from` reached `epoch` with its write `notices`, in a cluster where
    /// `gone[r]` marks nodes that left. When the epoch is complete, returns every node's
    /// notices concatenated (a page written by two nodes appears twice: each node removes its
    /// own once and invalidates what others wrote).
    pub(crate) fn arrive(
        &mut self,
        epoch: u64,
        from: NodeId,
        gone: &[bool],
        notices: Vec<PageId>,
    ) -> Option<Vec<PageId>> {
        if from as usize >= gone.len()
            || (!self.arrived.contains_key(&epoch) && self.arrived.len() >= MAX_OPEN_EPOCHS)
        {
            tracing::warn!(epoch, from, "barrier arrival dropped");
            return None;
        }
        let (seen, all) = self
            .arrived
            .entry(epoch)
            .or_insert_with(|| (vec![false; gone.len()], Vec::new()));
        if !seen[from as usize] {
            seen[from as usize] = true;
            all.extend(notices);
        }
        let complete = seen.iter().zip(gone).all(|(s, g)| *s || *g);
        if complete {
            return self.arrived.remove(&epoch).map(|(_, all)| all);
        }
        None
    }
}

impl Core {
    /// A barrier message from `from`: rank 0 counts arrivals and, when every live node has
    /// arrived, releases the epoch to all (itself included); every node records releases
    /// from rank 0. Runs on the thread that received it.
    pub(crate) fn on_barrier(&self, from: NodeId, message: SyncMsg) {
        let local = self.transport.local();
        match message {
            SyncMsg::BarrierArrive { epoch, notices, .. } if local == 0 => {
                let gone = self.shared.read(|s| s.left.clone());
                let released = self
                    .central
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .arrive(epoch, from, &gone, notices);
                if let Some(all) = released {
                    let release = SyncMsg::BarrierRelease {
                        epoch,
                        notices: all,
                    };
                    self.broadcast(true, &Message::Sync(release));
                }
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
        assert!(c.arrive(1, 1, &gone, vec![p(1)]).is_none());
        assert!(
            c.arrive(1, 1, &gone, vec![p(9)]).is_none(),
            "duplicate must not count twice"
        );
        assert_eq!(
            c.arrive(1, 0, &gone, vec![p(1), p(2)]),
            Some(vec![p(1), p(1), p(2)])
        );
        assert!(c.arrive(2, 0, &gone, vec![]).is_none());
        assert!(
            c.arrive(2, 9, &gone, vec![]).is_none(),
            "unknown rank ignored"
        );
    }
}
