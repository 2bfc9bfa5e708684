//! Barriers across all nodes, sans-IO: a dissemination barrier (⌈log₂ N⌉ rounds, no
//! coordinator; the runtime's) and a central-counter barrier to measure it against.
//!
//! Both complete release consistency: each node arrives with the write notices of its
//! interval (diffs already flushed) and the kind of collective call it came from, and every
//! node leaves with every node's notices, in node order (a page two nodes wrote comes twice:
//! each node drops its own once and invalidates what the others wrote). When the nodes came
//! from different kinds of call, every node is refused the barrier instead
//! ([`Action::BarrierRefused`]).
//!
//! In the dissemination barrier, round `r` sends every arrival heard of so far to node
//! `me + 2^r` and waits for node `me − 2^r`; after ⌈log₂ N⌉ rounds each node has heard,
//! directly or not, from every node, so each one checks the kinds itself and all decide
//! alike. A peer may run one barrier ahead (it finished this one and entered the next), never
//! two, so early messages are kept for two epochs only. A round must carry exactly the
//! arrivals its sender can have heard of by then; anything else is refused.

use std::collections::BTreeMap;

use dsm_wire::{BarrierArrival, NodeId, PageId, SyncMsg};

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
    /// Arrivals at `epoch` heard of so far, by node (central: node 0's count of arrivals).
    gathered: BTreeMap<NodeId, BarrierArrival>,
    /// Dissemination: messages received per (epoch parity, round).
    inbox: [Vec<Option<Vec<BarrierArrival>>>; 2],
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
            gathered: BTreeMap::new(),
            inbox: [vec![None; rounds], vec![None; rounds]],
        }
    }

    /// The barrier this node is in or enters next (0, 1, ...).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// True between [`arrive`](Self::arrive) and [`Action::BarrierDone`] (or
    /// [`Action::BarrierRefused`]).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// This node reaches the barrier from a collective call of `kind` (any number every node
    /// agrees on; 0 for a plain barrier) with the pages it wrote; [`Action::BarrierDone`]
    /// follows when every node has arrived.
    pub fn arrive(&mut self, kind: u32, notices: Vec<PageId>, out: &mut Vec<Action>) -> Result<()> {
        if self.active {
            return Err(Error::BarrierBusy(self.epoch));
        }
        self.active = true;
        let mine = BarrierArrival {
            node: self.me,
            kind,
            notices,
        };
        match self.kind {
            BarrierKind::Dissemination => {
                self.gathered.insert(self.me, mine);
                self.round = 0;
                self.send_round(out);
                self.advance(out)?;
            }
            BarrierKind::Central if self.me == 0 => {
                self.gathered.insert(0, mine);
                self.release_if_all(out);
            }
            BarrierKind::Central => {
                let message = SyncMsg::BarrierArrive {
                    epoch: self.epoch,
                    round: kind,
                    notices: mine.notices,
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
                SyncMsg::BarrierRound {
                    epoch,
                    round,
                    arrivals,
                },
            ) => self.on_round(from, (*epoch, *round), arrivals, out),
            (
                BarrierKind::Central,
                SyncMsg::BarrierArrive {
                    epoch,
                    round: kind,
                    notices,
                },
            ) if self.me == 0 => self.on_central_arrive(from, *epoch, *kind, notices, out),
            (BarrierKind::Central, SyncMsg::BarrierRelease { epoch, notices }) if from == 0 => {
                self.check_released(from, *epoch)?;
                self.finish(Some(notices.clone()), out);
                Ok(())
            }
            (BarrierKind::Central, SyncMsg::BarrierAbort { epoch }) if from == 0 => {
                self.check_released(from, *epoch)?;
                self.finish(None, out);
                Ok(())
            }
            (
                _,
                SyncMsg::BarrierArrive { .. }
                | SyncMsg::BarrierRelease { .. }
                | SyncMsg::BarrierAbort { .. }
                | SyncMsg::BarrierRound { .. },
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
                .filter(|n| !self.gathered.contains_key(n))
                .collect(),
            BarrierKind::Central => vec![0],
        }
    }

    fn on_round(
        &mut self,
        from: NodeId,
        (epoch, round): (u64, u32),
        arrivals: &[BarrierArrival],
        out: &mut Vec<Action>,
    ) -> Result<()> {
        let ahead_ok = self.active && epoch == self.epoch + 1;
        if (epoch != self.epoch && !ahead_ok) || round >= rounds(self.nodes) {
            return Err(self.unexpected(from, "dissemination message for another barrier"));
        }
        if from != self.partner(round, false) {
            return Err(self.unexpected(from, "dissemination message from the wrong partner"));
        }
        if !self.carries_what_sender_heard(from, round, arrivals) {
            return Err(self.unexpected(from, "dissemination round with the wrong arrivals"));
        }
        let slot = &mut self.inbox[parity(epoch)][round as usize];
        if slot.is_some() {
            return Err(self.unexpected(from, "duplicate dissemination message"));
        }
        *slot = Some(arrivals.to_vec());
        if epoch == self.epoch && self.active {
            self.advance(out)?;
        }
        Ok(())
    }

    /// Before round `round`, node `from` has heard of exactly nodes `from`, `from − 1`, ...,
    /// `from − 2^round + 1` (all of them once 2^round ≥ N), each once, in node order.
    fn carries_what_sender_heard(
        &self,
        from: NodeId,
        round: u32,
        arrivals: &[BarrierArrival],
    ) -> bool {
        let n = u64::from(self.nodes);
        let heard = (1u64 << round).min(n);
        let mut expected: Vec<u64> = (0..heard).map(|j| (u64::from(from) + n - j) % n).collect();
        expected.sort_unstable();
        arrivals.len() == expected.len()
            && arrivals
                .iter()
                .zip(&expected)
                .all(|(arrival, node)| u64::from(arrival.node) == *node)
    }

    /// Takes every round whose message is here; sends the next; finishes after the last. A
    /// round that contradicts an arrival already heard of (another kind or other notices
    /// from the same node: no correct node sends that) is refused and left out.
    fn advance(&mut self, out: &mut Vec<Action>) -> Result<()> {
        let rounds = rounds(self.nodes);
        while self.round < rounds {
            let slot = &mut self.inbox[parity(self.epoch)][self.round as usize];
            let Some(arrivals) = slot.take() else {
                return Ok(());
            };
            let partner = self.partner(self.round, false);
            let clash = arrivals
                .iter()
                .any(|a| self.gathered.get(&a.node).is_some_and(|known| known != a));
            if clash {
                return Err(self.unexpected(partner, "arrival contradicting one already heard"));
            }
            for arrival in arrivals {
                self.gathered.entry(arrival.node).or_insert(arrival);
            }
            self.round += 1;
            if self.round < rounds {
                self.send_round(out);
            }
        }
        let all = self.agreed();
        self.finish(all, out);
        Ok(())
    }

    fn send_round(&mut self, out: &mut Vec<Action>) {
        if self.round >= rounds(self.nodes) {
            return;
        }
        let to = self.partner(self.round, true);
        let message = SyncMsg::BarrierRound {
            epoch: self.epoch,
            round: self.round,
            arrivals: self.gathered.values().cloned().collect(),
        };
        out.push(Action::Send { to, message });
    }

    fn on_central_arrive(
        &mut self,
        from: NodeId,
        epoch: u64,
        kind: u32,
        notices: &[PageId],
        out: &mut Vec<Action>,
    ) -> Result<()> {
        if epoch != self.epoch || self.gathered.contains_key(&from) {
            return Err(self.unexpected(from, "stale or duplicate arrival"));
        }
        let arrival = BarrierArrival {
            node: from,
            kind,
            notices: notices.to_vec(),
        };
        self.gathered.insert(from, arrival);
        self.release_if_all(out);
        Ok(())
    }

    fn release_if_all(&mut self, out: &mut Vec<Action>) {
        if !self.active || self.gathered.len() < self.nodes as usize {
            return;
        }
        let all = self.agreed();
        for to in 1..self.nodes {
            let message = match &all {
                Some(notices) => SyncMsg::BarrierRelease {
                    epoch: self.epoch,
                    notices: notices.clone(),
                },
                None => SyncMsg::BarrierAbort { epoch: self.epoch },
            };
            out.push(Action::Send { to, message });
        }
        self.finish(all, out);
    }

    /// Every node's notices in node order when every node arrived from the same kind of
    /// call; `None` when they did not.
    fn agreed(&self) -> Option<Vec<PageId>> {
        let mut kinds = self.gathered.values().map(|a| a.kind);
        let first = kinds.next();
        if kinds.any(|k| Some(k) != first) {
            return None;
        }
        Some(
            self.gathered
                .values()
                .flat_map(|a| a.notices.iter().copied())
                .collect(),
        )
    }

    fn check_released(&self, from: NodeId, epoch: u64) -> Result<()> {
        if !self.active || epoch != self.epoch {
            return Err(self.unexpected(from, "release of a barrier this node is not in"));
        }
        Ok(())
    }

    /// Leaves the barrier with every node's notices, or refused (`None`).
    fn finish(&mut self, all: Option<Vec<PageId>>, out: &mut Vec<Action>) {
        out.push(match all {
            Some(notices) => Action::BarrierDone {
                epoch: self.epoch,
                notices,
            },
            None => Action::BarrierRefused { epoch: self.epoch },
        });
        self.gathered.clear();
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
