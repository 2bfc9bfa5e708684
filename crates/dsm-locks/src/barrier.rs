//! Barriers across all nodes, sans-IO: a dissemination barrier (⌈log₂ N⌉ rounds, no
//! coordinator) and a central-counter barrier to measure it against.
//!
//! Both complete release consistency: each node arrives with the write notices of its
//! interval (diffs already flushed), and every node leaves with the union of all nodes'
//! notices. In the dissemination barrier, round `r` sends everything gathered so far to node
//! `me + 2^r` and waits for node `me − 2^r`; after ⌈log₂ N⌉ rounds each node has heard,
//! directly or not, from every node. A peer may run one barrier ahead (it finished this one and
//! entered the next), never two, so early messages are kept for two epochs only.

use std::collections::BTreeSet;

use dsm_wire::{NodeId, PageId, SyncMsg};

use crate::{Action, Error, Result};

/// Which barrier algorithm; every node must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BarrierKind {
    /// ⌈log₂ N⌉ rounds of one message per node: N⌈log₂ N⌉ messages, log N hops.
    #[default]
    Dissemination,
    /// Everyone tells node 0, node 0 releases everyone: 2(N−1) messages, 2 hops, but node 0
    /// handles N−1 messages in sequence.
    Central,
}

/// One node's barrier state.
#[derive(Debug, Clone)]
pub struct BarrierEngine {
    me: NodeId,
    nodes: u32,
    kind: BarrierKind,
    /// The barrier this node is in, or enters next.
    epoch: u64,
    /// This node has arrived at `epoch` and not yet left it.
    active: bool,
    /// Dissemination: the round whose message this node waits for.
    round: u32,
    gathered: BTreeSet<PageId>,
    /// Dissemination: messages received per (epoch parity, round).
    inbox: [Vec<Option<Vec<PageId>>>; 2],
    /// Central, at node 0: nodes arrived at `epoch`.
    arrived: BTreeSet<NodeId>,
}

impl BarrierEngine {
    /// The barrier of node `me` among `nodes`. Panics if `me >= nodes`.
    pub fn new(me: NodeId, nodes: u32, kind: BarrierKind) -> Self {
        assert!(me < nodes, "node {me} outside a cluster of {nodes}");
        let rounds = rounds(nodes) as usize;
        BarrierEngine {
            me,
            nodes,
            kind,
            epoch: 0,
            active: false,
            round: 0,
            gathered: BTreeSet::new(),
            inbox: [vec![None; rounds], vec![None; rounds]],
            arrived: BTreeSet::new(),
        }
    }

    /// The barrier this node is in or enters next (0, 1, ...).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// True between [`arrive`](Self::arrive) and [`Action::BarrierDone`].
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// This node reaches the barrier with the pages it wrote; [`Action::BarrierDone`] follows
    /// when every node has arrived.
    pub fn arrive(&mut self, notices: Vec<PageId>, out: &mut Vec<Action>) -> Result<()> {
        if self.active {
            return Err(Error::BarrierBusy(self.epoch));
        }
        self.active = true;
        self.gathered.extend(notices);
        match self.kind {
            BarrierKind::Dissemination => {
                self.round = 0;
                self.send_round(out);
                self.advance(out);
            }
            BarrierKind::Central if self.me == 0 => {
                self.arrived.insert(0);
                self.release_if_all(out);
            }
            BarrierKind::Central => {
                let notices = self.gathered.iter().copied().collect();
                let message = SyncMsg::BarrierArrive {
                    epoch: self.epoch,
                    round: 0,
                    notices,
                };
                out.push(Action::Send { to: 0, message });
            }
        }
        Ok(())
    }

    /// Handles a barrier message from `from`; one the protocol does not allow is rejected
    /// with a typed error and changes nothing.
    pub fn on_message(&mut self, from: NodeId, msg: &SyncMsg, out: &mut Vec<Action>) -> Result<()> {
        if from >= self.nodes || from == self.me {
            return Err(Error::UnknownNode {
                node: from,
                nodes: self.nodes,
            });
        }
        match (self.kind, msg) {
            (
                BarrierKind::Dissemination,
                SyncMsg::BarrierArrive {
                    epoch,
                    round,
                    notices,
                },
            ) => self.on_round(from, *epoch, *round, notices, out),
            (
                BarrierKind::Central,
                SyncMsg::BarrierArrive {
                    epoch,
                    round: 0,
                    notices,
                },
            ) if self.me == 0 => self.on_central_arrive(from, *epoch, notices, out),
            (BarrierKind::Central, SyncMsg::BarrierRelease { epoch, notices }) if from == 0 => {
                if !self.active || *epoch != self.epoch {
                    return Err(self.unexpected(from, "release of a barrier this node is not in"));
                }
                self.gathered.extend(notices.iter().copied());
                self.finish(out);
                Ok(())
            }
            (
                _,
                SyncMsg::BarrierArrive { .. }
                | SyncMsg::BarrierRelease { .. }
                | SyncMsg::BarrierAbort { .. },
            ) => Err(self.unexpected(from, "barrier message the algorithm does not use")),
            _ => Err(Error::NotForEngine("lock")),
        }
    }

    /// Nodes whose message this node still waits for.
    pub fn awaiting(&self) -> Vec<NodeId> {
        if !self.active {
            return Vec::new();
        }
        match self.kind {
            BarrierKind::Dissemination => vec![self.partner(self.round, false)],
            BarrierKind::Central if self.me == 0 => (0..self.nodes)
                .filter(|n| !self.arrived.contains(n))
                .collect(),
            BarrierKind::Central => vec![0],
        }
    }

    fn on_round(
        &mut self,
        from: NodeId,
        epoch: u64,
        round: u32,
        notices: &[PageId],
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let ahead_ok = self.active && epoch == self.epoch + 1;
        if (epoch != self.epoch && !ahead_ok) || round >= rounds(self.nodes) {
            return Err(self.unexpected(from, "dissemination message for another barrier"));
        }
        if from != self.partner(round, false) {
            return Err(self.unexpected(from, "dissemination message from the wrong partner"));
        }
        let slot = &mut self.inbox[parity(epoch)][round as usize];
        if slot.is_some() {
            return Err(self.unexpected(from, "duplicate dissemination message"));
        }
        *slot = Some(notices.to_vec());
        if epoch == self.epoch && self.active {
            self.advance(out);
        }
        Ok(())
    }

    /// Takes every round whose message is here; sends the next; finishes after the last.
    fn advance(&mut self, out: &mut Vec<Action>) {
        let rounds = rounds(self.nodes);
        while self.round < rounds {
            let slot = &mut self.inbox[parity(self.epoch)][self.round as usize];
            let Some(notices) = slot.take() else { return };
            self.gathered.extend(notices);
            self.round += 1;
            if self.round < rounds {
                self.send_round(out);
            }
        }
        self.finish(out);
    }

    fn send_round(&mut self, out: &mut Vec<Action>) {
        if self.round >= rounds(self.nodes) {
            return;
        }
        let to = self.partner(self.round, true);
        let notices = self.gathered.iter().copied().collect();
        let message = SyncMsg::BarrierArrive {
            epoch: self.epoch,
            round: self.round,
            notices,
        };
        out.push(Action::Send { to, message });
    }

    fn on_central_arrive(
        &mut self,
        from: NodeId,
        epoch: u64,
        notices: &[PageId],
        out: &mut Vec<Action>,
    ) -> Result<()> {
        if epoch != self.epoch || self.arrived.contains(&from) {
            return Err(self.unexpected(from, "stale or duplicate arrival"));
        }
        self.arrived.insert(from);
        self.gathered.extend(notices.iter().copied());
        self.release_if_all(out);
        Ok(())
    }

    fn release_if_all(&mut self, out: &mut Vec<Action>) {
        if !self.active || self.arrived.len() < self.nodes as usize {
            return;
        }
        let notices: Vec<PageId> = self.gathered.iter().copied().collect();
        for to in 1..self.nodes {
            let message = SyncMsg::BarrierRelease {
                epoch: self.epoch,
                notices: notices.clone(),
            };
            out.push(Action::Send { to, message });
        }
        self.arrived.clear();
        self.finish(out);
    }

    fn finish(&mut self, out: &mut Vec<Action>) {
        let notices = std::mem::take(&mut self.gathered).into_iter().collect();
        out.push(Action::BarrierDone {
            epoch: self.epoch,
            notices,
        });
        self.active = false;
        self.epoch += 1;
        self.round = 0;
    }

    /// Round `round`'s target (`forward`) or source.
    fn partner(&self, round: u32, forward: bool) -> NodeId {
        let n = u64::from(self.nodes);
        let step = (1u64 << round) % n;
        let me = u64::from(self.me);
        let node = if forward {
            (me + step) % n
        } else {
            (me + n - step) % n
        };
        NodeId::try_from(node).expect("a residue modulo a u32 fits in u32")
    }

    fn unexpected(&self, from: NodeId, what: &'static str) -> Error {
        Error::Unexpected {
            from,
            id: self.epoch,
            what,
        }
    }
}

/// ⌈log₂ nodes⌉.
fn rounds(nodes: u32) -> u32 {
    nodes.next_power_of_two().trailing_zeros()
}

fn parity(epoch: u64) -> usize {
    usize::from(epoch % 2 == 1)
}

#[cfg(test)]
mod tests;
