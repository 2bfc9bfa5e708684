//! Engine unit tests over an instant, FIFO, in-order network.

use std::collections::VecDeque;

use dsm_wire::{NodeId, PageId, SyncMsg};

use crate::{Action, Error, LockEngine, LockKind};

fn pid(page: u32) -> PageId {
    PageId { region: 1, page }
}

/// Engines of a cluster and the messages between them.
struct Cluster {
    engines: Vec<LockEngine>,
    wire: VecDeque<(NodeId, NodeId, SyncMsg)>,
    sent: usize,
    /// (node, lock, notices) per grant, in order.
    granted: Vec<(NodeId, u32, Vec<PageId>)>,
    remote_waiting: Vec<(NodeId, u32)>,
}

impl Cluster {
    fn new(nodes: u32, kind: LockKind) -> Self {
        Cluster {
            engines: (0..nodes)
                .map(|me| LockEngine::new(me, nodes, kind))
                .collect(),
            wire: VecDeque::new(),
            sent: 0,
            granted: Vec::new(),
            remote_waiting: Vec::new(),
        }
    }

    fn take(&mut self, node: NodeId, out: Vec<Action>) {
        for action in out {
            match action {
                Action::Send { to, message } => {
                    self.sent += 1;
                    self.wire.push_back((node, to, message));
                }
                Action::Granted { lock, notices } => self.granted.push((node, lock, notices)),
                Action::RemoteWaiting { lock } => self.remote_waiting.push((node, lock)),
                Action::BarrierDone { .. } | Action::BarrierRefused { .. } => {
                    panic!("lock engine finished a barrier")
                }
            }
        }
    }

    fn acquire(&mut self, node: NodeId, lock: u32) {
        let mut out = Vec::new();
        self.engines[node as usize].acquire(lock, &mut out).unwrap();
        self.take(node, out);
    }

    fn release(&mut self, node: NodeId, lock: u32, notices: Vec<PageId>) {
        let mut out = Vec::new();
        self.engines[node as usize]
            .release(lock, notices, &mut out)
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
fn ra_uncontended_acquire_costs_two_n_minus_one_messages() {
    for nodes in [1, 2, 3, 8] {
        let mut c = Cluster::new(nodes, LockKind::RicartAgrawala);
        c.acquire(1 % nodes, 5);
        c.deliver_all();
        assert_eq!(c.granted, vec![(1 % nodes, 5, vec![])]);
        assert_eq!(c.sent, 2 * (nodes as usize - 1));
        c.release(1 % nodes, 5, vec![]);
        assert_eq!(
            c.sent,
            2 * (nodes as usize - 1),
            "an uncontended release sends nothing"
        );
    }
}

/// The holder knows which node gets the lock at its release (the oldest deferred request)
/// until it releases; a home-queue holder never does.
#[test]
fn the_holder_knows_the_next_holder_until_its_release() {
    let mut c = Cluster::new(3, LockKind::RicartAgrawala);
    c.acquire(0, 3);
    c.deliver_all();
    assert_eq!(c.engines[0].next_holder(3), None, "nobody asked yet");
    c.acquire(2, 3);
    c.deliver_all();
    c.acquire(1, 3);
    c.deliver_all();
    assert_eq!(c.engines[0].next_holder(3), Some(2), "node 2 asked first");
    assert_eq!(c.engines[1].next_holder(3), None);
    c.release(0, 3, vec![]);
    assert_eq!(c.engines[0].next_holder(3), None);
    c.deliver_all();
    assert_eq!(c.granted.last(), Some(&(2, 3, vec![])));
    let mut h = Cluster::new(2, LockKind::HomeQueue);
    h.acquire(1, 3);
    h.deliver_all();
    h.acquire(0, 3);
    h.deliver_all();
    assert_eq!(h.engines[1].next_holder(3), None);
}

/// A REQUEST is answered at once by a node that neither holds the lock nor asked earlier.
#[test]
fn requests_answered_at_once_are_told_apart_from_deferred_ones() {
    let request = |timestamp| SyncMsg::LockRequest { lock: 3, timestamp };
    let mut c = Cluster::new(2, LockKind::RicartAgrawala);
    assert!(c.engines[0].replies_at_once(1, &request(1)), "idle");
    c.acquire(0, 3);
    assert!(
        c.engines[0].replies_at_once(1, &request(0)),
        "an earlier request wins"
    );
    assert!(
        !c.engines[0].replies_at_once(1, &request(5)),
        "ours is earlier"
    );
    c.deliver_all();
    assert!(!c.engines[0].replies_at_once(1, &request(0)), "held");
    assert!(!c.engines[0].replies_at_once(
        1,
        &SyncMsg::LockReply {
            lock: 3,
            timestamp: 0,
            notices: vec![],
        }
    ));
}

#[test]
fn ra_orders_concurrent_requests_by_timestamp_then_node() {
    let mut c = Cluster::new(3, LockKind::RicartAgrawala);
    c.acquire(2, 0);
    c.acquire(1, 0);
    c.deliver_all();
    // Equal timestamps: node 1 wins on its id, node 2 waits for node 1's deferred reply.
    assert_eq!(c.granted, vec![(1, 0, vec![])]);
    assert_eq!(c.engines[2].awaiting(0), vec![1]);
    assert_eq!(c.remote_waiting, vec![(1, 0)]);
    c.release(1, 0, vec![pid(4)]);
    c.deliver_all();
    assert_eq!(c.granted[1], (2, 0, vec![pid(4)]));
    assert_eq!(c.sent, 2 * 2 * 2);
}

#[test]
fn ra_notices_reach_each_later_acquirer_once() {
    let mut c = Cluster::new(3, LockKind::RicartAgrawala);
    c.acquire(0, 1);
    c.deliver_all();
    c.release(0, 1, vec![pid(1), pid(2)]);
    for (round, node) in [1, 2, 1].into_iter().enumerate() {
        c.acquire(node, 1);
        c.deliver_all();
        c.release(node, 1, vec![]);
        let expected = if round < 2 {
            vec![pid(1), pid(2)]
        } else {
            vec![]
        };
        assert_eq!(c.granted.last().unwrap(), &(node, 1, expected));
    }
}

#[test]
fn ra_stale_reply_is_rejected_and_changes_nothing() {
    let mut c = Cluster::new(2, LockKind::RicartAgrawala);
    c.acquire(0, 3);
    let stale = SyncMsg::LockReply {
        lock: 3,
        timestamp: 99,
        notices: vec![],
    };
    let mut out = Vec::new();
    let err = c.engines[0].on_message(1, &stale, &mut out).unwrap_err();
    assert!(
        matches!(err, Error::Unexpected { from: 1, id: 3, .. }),
        "{err}"
    );
    assert!(out.is_empty());
    assert_eq!(c.engines[0].awaiting(3), vec![1]);
    c.deliver_all();
    assert_eq!(c.granted, vec![(0, 3, vec![])]);
    let dup = SyncMsg::LockReply {
        lock: 3,
        timestamp: 1,
        notices: vec![],
    };
    assert!(c.engines[0].on_message(1, &dup, &mut out).is_err());
}

#[test]
fn double_acquire_and_release_unheld_are_errors() {
    let mut c = Cluster::new(2, LockKind::RicartAgrawala);
    let mut out = Vec::new();
    assert_eq!(
        c.engines[0].release(1, vec![], &mut out),
        Err(Error::NotHeld(1))
    );
    c.acquire(0, 1);
    assert_eq!(
        c.engines[0].acquire(1, &mut out),
        Err(Error::AlreadyRequested(1))
    );
    assert!(out.is_empty());
}

#[test]
fn home_queue_uncontended_costs_three_messages_or_none_at_home() {
    for nodes in [2, 4, 16] {
        let mut c = Cluster::new(nodes, LockKind::HomeQueue);
        let lock = 1; // home is node 1
        c.acquire(0, lock);
        c.deliver_all();
        c.release(0, lock, vec![]);
        c.deliver_all();
        assert_eq!(c.sent, 3, "{nodes} nodes");
        c.acquire(1, lock);
        c.release(1, lock, vec![]);
        assert_eq!(c.sent, 3, "the home acquires without messages");
        assert_eq!(c.granted.len(), 2);
    }
}

#[test]
fn home_queue_is_fifo_recalls_the_holder_and_carries_notices() {
    let mut c = Cluster::new(4, LockKind::HomeQueue);
    let lock = 0; // home is node 0
    c.acquire(1, lock);
    c.deliver_all();
    c.acquire(3, lock);
    c.acquire(2, lock);
    c.deliver_all();
    assert_eq!(c.granted, vec![(1, 0, vec![])]);
    assert_eq!(c.remote_waiting, vec![(1, 0)], "one recall to the holder");
    assert_eq!(c.engines[3].awaiting(lock), vec![0]);
    assert_eq!(
        c.engines[0].awaiting(lock),
        vec![],
        "the home itself does not want it"
    );
    c.release(1, lock, vec![pid(7)]);
    c.deliver_all();
    assert_eq!(c.granted[1], (3, 0, vec![pid(7)]));
    assert_eq!(
        c.remote_waiting[1],
        (3, 0),
        "node 2 still waits behind node 3"
    );
    c.release(3, lock, vec![pid(8)]);
    c.deliver_all();
    assert_eq!(c.granted[2], (2, 0, vec![pid(7), pid(8)]));
    c.release(2, lock, vec![]);
    c.acquire(1, lock);
    c.deliver_all();
    assert_eq!(
        c.granted[3],
        (1, 0, vec![pid(8)]),
        "node 1 knew its own page 7"
    );
}

#[test]
fn home_queue_rejects_forged_and_stale_messages() {
    let mut c = Cluster::new(3, LockKind::HomeQueue);
    let mut out = Vec::new();
    let grant = SyncMsg::LockGrant {
        lock: 0,
        seq: 1,
        notices: vec![],
    };
    // Node 2 is not lock 0's home: its grant is refused.
    assert!(matches!(
        c.engines[1].on_message(2, &grant, &mut out),
        Err(Error::Unexpected { .. })
    ));
    let release = SyncMsg::LockRelease {
        lock: 0,
        seq: 1,
        notices: vec![],
    };
    assert!(
        c.engines[0].on_message(1, &release, &mut out).is_err(),
        "release of nothing held"
    );
    let acquire = SyncMsg::LockAcquire { lock: 0, seq: 1 };
    assert!(
        c.engines[1].on_message(2, &acquire, &mut out).is_err(),
        "node 1 is not the home"
    );
    c.engines[0].on_message(1, &acquire, &mut out).unwrap();
    assert!(
        c.engines[0].on_message(1, &acquire, &mut out).is_err(),
        "second acquire"
    );
    assert_eq!(out.len(), 1, "only the one grant");
}

#[test]
fn wrong_kind_unknown_node_and_barrier_messages_are_rejected() {
    let mut e = LockEngine::new(0, 3, LockKind::RicartAgrawala);
    let mut out = Vec::new();
    let acquire = SyncMsg::LockAcquire { lock: 0, seq: 1 };
    assert!(matches!(
        e.on_message(1, &acquire, &mut out),
        Err(Error::WrongKind { lock: 0, .. })
    ));
    let request = SyncMsg::LockRequest {
        lock: 0,
        timestamp: 1,
    };
    assert!(matches!(
        e.on_message(3, &request, &mut out),
        Err(Error::UnknownNode { node: 3, .. })
    ));
    assert!(matches!(
        e.on_message(0, &request, &mut out),
        Err(Error::UnknownNode { .. })
    ));
    let barrier = SyncMsg::BarrierRelease {
        epoch: 0,
        notices: vec![],
    };
    assert!(matches!(
        e.on_message(1, &barrier, &mut out),
        Err(Error::NotForEngine(_))
    ));
    assert!(out.is_empty());
}

#[test]
fn kind_is_per_lock_and_fixed_while_in_use() {
    let mut c = Cluster::new(2, LockKind::RicartAgrawala);
    for e in &mut c.engines {
        e.set_kind(9, LockKind::HomeQueue).unwrap();
    }
    c.acquire(0, 9);
    c.acquire(0, 8);
    c.deliver_all();
    // Lock 9: ACQUIRE to its home (node 1) and GRANT; lock 8: REQUEST and REPLY.
    assert_eq!(c.sent, 4);
    assert_eq!(c.granted.len(), 2);
    assert_eq!(
        c.engines[0].set_kind(9, LockKind::RicartAgrawala),
        Err(Error::KindInUse(9))
    );
    assert_eq!(c.engines[0].kind(8), LockKind::RicartAgrawala);
}

#[test]
fn peers_cannot_create_unbounded_lock_state() {
    let mut e = LockEngine::new(0, 2, LockKind::RicartAgrawala).with_max_locks(2);
    let mut out = Vec::new();
    for lock in 0..2 {
        e.on_message(1, &SyncMsg::LockRequest { lock, timestamp: 1 }, &mut out)
            .unwrap();
    }
    let third = SyncMsg::LockRequest {
        lock: 2,
        timestamp: 1,
    };
    assert_eq!(
        e.on_message(1, &third, &mut out),
        Err(Error::TooManyLocks { lock: 2, limit: 2 })
    );
    assert_eq!(out.len(), 2, "the two replies");
    e.acquire(3, &mut out)
        .expect("this node's own locks are bounded by its driver");
}

#[test]
fn ra_stops_waiting_for_a_failed_node() {
    let mut c = Cluster::new(3, LockKind::RicartAgrawala);
    c.acquire(0, 1);
    // Node 2 never answers: deliver only what goes to node 1.
    let wire = std::mem::take(&mut c.wire);
    c.wire = wire.into_iter().filter(|(_, to, _)| *to == 1).collect();
    c.deliver_all();
    assert_eq!(c.engines[0].awaiting(1), vec![2]);
    let mut out = Vec::new();
    c.engines[0].node_failed(2, &mut out).unwrap();
    assert_eq!(
        out,
        vec![Action::Granted {
            lock: 1,
            notices: vec![]
        }]
    );
    c.release(0, 1, vec![]);
    // Later acquires ask only the live node, and the failed node's messages are refused.
    let sent = c.sent;
    c.acquire(0, 1);
    assert_eq!(c.sent - sent, 1);
    let late = SyncMsg::LockReply {
        lock: 1,
        timestamp: 1,
        notices: vec![],
    };
    assert_eq!(
        c.engines[0].on_message(2, &late, &mut out),
        Err(Error::NodeFailed(2))
    );
}

#[test]
fn home_queue_passes_a_failed_holders_lock_on() {
    let mut c = Cluster::new(3, LockKind::HomeQueue);
    c.acquire(1, 0);
    c.deliver_all();
    c.acquire(2, 0);
    c.deliver_all();
    assert_eq!(c.granted.len(), 1);
    let mut out = Vec::new();
    c.engines[0].node_failed(1, &mut out).unwrap();
    c.take(0, out);
    c.deliver_all();
    assert_eq!(c.granted[1], (2, 0, vec![]));
    let mut out = Vec::new();
    assert!(
        c.engines[0].node_failed(0, &mut out).is_err(),
        "a node cannot fail itself"
    );
}

#[test]
fn ra_request_with_a_timestamp_at_the_clock_end_is_rejected_and_changes_nothing() {
    let mut c = Cluster::new(2, LockKind::RicartAgrawala);
    let forged = SyncMsg::LockRequest {
        lock: 4,
        timestamp: u64::MAX,
    };
    let mut out = Vec::new();
    let err = c.engines[0].on_message(1, &forged, &mut out).unwrap_err();
    assert!(
        matches!(err, Error::Unexpected { from: 1, id: 4, .. }),
        "{err}"
    );
    assert!(out.is_empty());
    // The engine goes on as before: both nodes take the lock in turn.
    c.acquire(0, 4);
    c.acquire(1, 4);
    c.deliver_all();
    c.release(0, 4, vec![]);
    c.deliver_all();
    let holders: Vec<NodeId> = c.granted.iter().map(|(node, _, _)| *node).collect();
    assert_eq!(holders, vec![0, 1]);
}

#[test]
fn rejected_messages_for_unknown_locks_leave_no_state_behind() {
    let mut c = Cluster::new(2, LockKind::RicartAgrawala);
    c.engines[0] = LockEngine::new(0, 2, LockKind::RicartAgrawala).with_max_locks(1);
    let mut out = Vec::new();
    for lock in 10..20 {
        let stale = SyncMsg::LockReply {
            lock,
            timestamp: 1,
            notices: vec![],
        };
        let err = c.engines[0].on_message(1, &stale, &mut out).unwrap_err();
        assert!(matches!(err, Error::Unexpected { .. }), "{err}");
    }
    assert!(out.is_empty());
    assert!(c.engines[0].locks.is_empty());
    // The one lock peers may create state for is still free for a real request.
    let request = SyncMsg::LockRequest {
        lock: 30,
        timestamp: 1,
    };
    c.engines[0].on_message(1, &request, &mut out).unwrap();
    assert_eq!(c.engines[0].locks.len(), 1);
}
