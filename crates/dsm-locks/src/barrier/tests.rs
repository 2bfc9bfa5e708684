//! Barrier unit tests: all arrival orders of small clusters, over an instant network.

use std::collections::VecDeque;

use dsm_wire::{BarrierArrival, NodeId, PageId, SyncMsg};

use crate::{Action, BarrierEngine, BarrierKind, Error};

fn pid(page: u32) -> PageId {
    PageId { region: 0, page }
}

struct Cluster {
    engines: Vec<BarrierEngine>,
    wire: VecDeque<(NodeId, NodeId, SyncMsg)>,
    sent: usize,
    done: Vec<(NodeId, u64, Vec<PageId>)>,
    refused: Vec<(NodeId, u64)>,
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
            refused: Vec::new(),
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
                Action::BarrierRefused { epoch } => self.refused.push((node, epoch)),
                other => panic!("barrier produced {other:?}"),
            }
        }
    }

    fn arrive(&mut self, node: NodeId, notices: Vec<PageId>) {
        self.arrive_from(node, 0, notices);
    }

    fn arrive_from(&mut self, node: NodeId, kind: u32, notices: Vec<PageId>) {
        let mut out = Vec::new();
        self.engines[node as usize]
            .arrive(kind, notices, &mut out)
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

fn round(epoch: u64, round: u32, nodes: &[NodeId]) -> SyncMsg {
    let arrivals = nodes
        .iter()
        .map(|&node| BarrierArrival {
            node,
            kind: 0,
            notices: vec![],
        })
        .collect();
    SyncMsg::BarrierRound {
        epoch,
        round,
        arrivals,
    }
}

#[test]
fn bad_barrier_messages_are_rejected_and_change_nothing() {
    let mut e = BarrierEngine::new(1, 4, BarrierKind::Dissemination);
    let mut out = Vec::new();
    assert!(matches!(
        e.on_message(2, &round(0, 0, &[2]), &mut out),
        Err(Error::Unexpected { .. })
    ));
    assert!(
        e.on_message(0, &round(5, 0, &[0]), &mut out).is_err(),
        "far ahead"
    );
    assert!(
        e.on_message(0, &round(0, 7, &[0]), &mut out).is_err(),
        "bad round"
    );
    // Round 0 from node 0 carries node 0's arrival alone.
    for wrong in [&[][..], &[1], &[0, 3], &[0, 0]] {
        assert!(
            e.on_message(0, &round(0, 0, wrong), &mut out).is_err(),
            "round 0 carrying {wrong:?}"
        );
    }
    let arrive = SyncMsg::BarrierArrive {
        epoch: 0,
        round: 0,
        notices: vec![],
    };
    assert!(
        e.on_message(0, &arrive, &mut out).is_err(),
        "dissemination has no central arrival"
    );
    e.on_message(0, &round(0, 0, &[0]), &mut out).unwrap();
    assert!(
        e.on_message(0, &round(0, 0, &[0]), &mut out).is_err(),
        "duplicate"
    );
    let release = SyncMsg::BarrierRelease {
        epoch: 0,
        notices: vec![],
    };
    assert!(
        e.on_message(0, &release, &mut out).is_err(),
        "dissemination has no release"
    );
    assert!(out.is_empty());
    e.arrive(0, vec![], &mut out).unwrap();
    assert_eq!(e.arrive(0, vec![], &mut out), Err(Error::BarrierBusy(0)));
    assert_eq!(e.awaiting(), vec![3], "round 1 comes from node 1 - 2");
    // Round 1 from node 3 carries nodes 2 and 3; one that contradicts what node 1 heard of
    // node 0 cannot come (node 3 has not heard of node 0 by then), so a wrong set is refused.
    assert!(e.on_message(3, &round(0, 1, &[0, 3]), &mut out).is_err());
    assert!(e.is_active());

    let mut central = BarrierEngine::new(1, 3, BarrierKind::Central);
    let early = SyncMsg::BarrierRelease {
        epoch: 0,
        notices: vec![],
    };
    assert!(
        central.on_message(0, &early, &mut out).is_err(),
        "release before arriving"
    );
    assert!(
        central
            .on_message(0, &SyncMsg::BarrierAbort { epoch: 0 }, &mut out)
            .is_err(),
        "abort before arriving"
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

#[test]
fn nodes_from_different_calls_are_all_refused_and_go_on_to_the_next_barrier() {
    for kind in [BarrierKind::Dissemination, BarrierKind::Central] {
        for nodes in 2..=9u32 {
            for odd in 0..nodes {
                let mut c = Cluster::new(nodes, kind);
                for node in 0..nodes {
                    c.arrive_from(node, u32::from(node == odd), vec![pid(node)]);
                }
                c.deliver_all();
                assert!(
                    c.done.is_empty(),
                    "{kind:?} {nodes} odd {odd}: {:?}",
                    c.done
                );
                let mut refused: Vec<_> = c.refused.clone();
                refused.sort_unstable();
                let all: Vec<_> = (0..nodes).map(|n| (n, 0)).collect();
                assert_eq!(refused, all, "{kind:?} {nodes} odd {odd}");
                // The next barrier works for everyone.
                for node in 0..nodes {
                    c.arrive(node, vec![]);
                }
                c.deliver_all();
                assert_eq!(c.done.len(), nodes as usize, "{kind:?} {nodes} odd {odd}");
                assert!(c.done.iter().all(|(_, epoch, _)| *epoch == 1));
            }
        }
    }
}

#[test]
fn a_page_two_nodes_wrote_comes_once_per_writer() {
    for kind in [BarrierKind::Dissemination, BarrierKind::Central] {
        for nodes in 2..=6u32 {
            let mut c = Cluster::new(nodes, kind);
            for node in 0..nodes {
                let notices = if node < 2 { vec![pid(7)] } else { vec![] };
                c.arrive(node, notices);
            }
            c.deliver_all();
            assert_eq!(c.done.len(), nodes as usize);
            assert!(
                c.done.iter().all(|(_, _, n)| *n == vec![pid(7), pid(7)]),
                "{kind:?} {nodes}: {:?}",
                c.done
            );
        }
    }
}
