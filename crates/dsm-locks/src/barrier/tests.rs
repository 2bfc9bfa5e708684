//! Barrier unit tests: all arrival orders of small clusters, over an instant network.

use std::collections::VecDeque;

use dsm_wire::{NodeId, PageId, SyncMsg};

use crate::{Action, BarrierEngine, BarrierKind, Error};

fn pid(page: u32) -> PageId {
    PageId { region: 0, page }
}

struct Cluster {
    engines: Vec<BarrierEngine>,
    wire: VecDeque<(NodeId, NodeId, SyncMsg)>,
    sent: usize,
    done: Vec<(NodeId, u64, Vec<PageId>)>,
}

impl Cluster {
    fn new(nodes: u32, kind: BarrierKind) -> Self {
        Cluster {
            engines: (0..nodes)
                .map(|me| BarrierEngine::new(me, nodes, kind))
                .collect(),
            wire: VecDeque::new(),
            sent: 0,
            done: Vec::new(),
        }
    }

    fn take(&mut self, node: NodeId, out: Vec<Action>) {
        for action in out {
            match action {
                Action::Send { to, message } => {
                    self.sent += 1;
                    self.wire.push_back((node, to, message));
                }
                Action::BarrierDone { epoch, notices } => self.done.push((node, epoch, notices)),
                other => panic!("barrier produced {other:?}"),
            }
        }
    }

    fn arrive(&mut self, node: NodeId, notices: Vec<PageId>) {
        let mut out = Vec::new();
        self.engines[node as usize]
            .arrive(notices, &mut out)
            .unwrap();
        self.take(node, out);
    }

    fn deliver_all(&mut self) {
        while let Some((from, to, message)) = self.wire.pop_front() {
            let mut out = Vec::new();
            self.engines[to as usize]
                .on_message(from, &message, &mut out)
                .unwrap();
            self.take(to, out);
        }
    }
}

#[test]
fn nobody_leaves_before_the_last_arrives_and_all_get_every_notice() {
    for kind in [BarrierKind::Dissemination, BarrierKind::Central] {
        for nodes in 1..=9u32 {
            let mut c = Cluster::new(nodes, kind);
            // Everyone but the last arrives and all their messages are delivered.
            for node in 0..nodes - 1 {
                c.arrive(node, vec![pid(node)]);
            }
            c.deliver_all();
            assert!(
                c.done.is_empty() || nodes == 1,
                "{kind:?} {nodes}: left early"
            );
            c.arrive(nodes - 1, vec![pid(nodes - 1)]);
            c.deliver_all();
            assert_eq!(c.done.len(), nodes as usize, "{kind:?} {nodes}");
            let all: Vec<PageId> = (0..nodes).map(pid).collect();
            assert!(
                c.done
                    .iter()
                    .all(|(_, epoch, notices)| *epoch == 0 && *notices == all)
            );
            let rounds = nodes.next_power_of_two().trailing_zeros() as usize;
            let expected = match kind {
                BarrierKind::Dissemination => nodes as usize * rounds,
                BarrierKind::Central => 2 * (nodes as usize - 1),
            };
            assert_eq!(c.sent, expected, "{kind:?} {nodes} messages");
        }
    }
}

#[test]
fn a_node_one_barrier_ahead_is_buffered() {
    let mut c = Cluster::new(3, BarrierKind::Dissemination);
    for node in 0..3 {
        c.arrive(node, vec![]);
    }
    // Deliver until node 0 is done, then let it enter barrier 1 while others are in 0.
    while c.done.iter().all(|(n, _, _)| *n != 0) {
        let (from, to, message) = c.wire.pop_front().unwrap();
        let mut out = Vec::new();
        c.engines[to as usize]
            .on_message(from, &message, &mut out)
            .unwrap();
        c.take(to, out);
    }
    c.arrive(0, vec![pid(9)]);
    c.deliver_all();
    assert_eq!(c.done.len(), 3);
    assert!(c.done.iter().all(|(_, epoch, _)| *epoch == 0));
    c.arrive(1, vec![]);
    c.arrive(2, vec![]);
    c.deliver_all();
    assert_eq!(c.done.len(), 6);
    assert!(
        c.done[3..]
            .iter()
            .all(|(_, epoch, notices)| *epoch == 1 && *notices == vec![pid(9)])
    );
}

#[test]
fn bad_barrier_messages_are_rejected_and_change_nothing() {
    let mut e = BarrierEngine::new(1, 4, BarrierKind::Dissemination);
    let mut out = Vec::new();
    let from_wrong = SyncMsg::BarrierArrive {
        epoch: 0,
        round: 0,
        notices: vec![],
    };
    assert!(matches!(
        e.on_message(2, &from_wrong, &mut out),
        Err(Error::Unexpected { .. })
    ));
    let far_ahead = SyncMsg::BarrierArrive {
        epoch: 5,
        round: 0,
        notices: vec![],
    };
    assert!(e.on_message(0, &far_ahead, &mut out).is_err());
    let bad_round = SyncMsg::BarrierArrive {
        epoch: 0,
        round: 7,
        notices: vec![],
    };
    assert!(e.on_message(0, &bad_round, &mut out).is_err());
    let ok = SyncMsg::BarrierArrive {
        epoch: 0,
        round: 0,
        notices: vec![],
    };
    e.on_message(0, &ok, &mut out).unwrap();
    assert!(e.on_message(0, &ok, &mut out).is_err(), "duplicate");
    let release = SyncMsg::BarrierRelease {
        epoch: 0,
        notices: vec![],
    };
    assert!(
        e.on_message(0, &release, &mut out).is_err(),
        "dissemination has no release"
    );
    assert!(out.is_empty());
    e.arrive(vec![], &mut out).unwrap();
    assert_eq!(e.arrive(vec![], &mut out), Err(Error::BarrierBusy(0)));
    assert_eq!(e.awaiting(), vec![3], "round 1 comes from node 1 - 2");

    let mut central = BarrierEngine::new(1, 3, BarrierKind::Central);
    let early = SyncMsg::BarrierRelease {
        epoch: 0,
        notices: vec![],
    };
    assert!(
        central.on_message(0, &early, &mut out).is_err(),
        "release before arriving"
    );
    let lock = SyncMsg::LockRequest {
        lock: 0,
        timestamp: 0,
    };
    assert_eq!(
        central.on_message(0, &lock, &mut out),
        Err(Error::NotForEngine("lock"))
    );
}
