//! After a node fails: only the faults that need it fail.

use dsm_wire::{Coherence, NodeId, PageId};

use super::{Cluster, P};
use crate::{Access, Action, Consistency, Error, LocalState};

impl Cluster {
    /// `rank` crashes: what it had in flight is gone, and every other node is told.
    fn crash(&mut self, rank: NodeId) {
        self.wire
            .retain(|(from, to, _)| *from != rank && *to != rank);
        for n in 0..self.engines.len() {
            if n != rank as usize {
                self.engines[n]
                    .node_failed(rank, &mut self.mems[n])
                    .unwrap();
                self.collect(n);
            }
        }
    }

    fn failed(&self, n: usize, token: u64) -> Option<&Error> {
        self.seen[n].iter().find_map(|a| match a {
            Action::FaultFailed { token: t, error } if *t == token => Some(error),
            _ => None,
        })
    }
}

#[test]
fn a_page_whose_writer_failed_is_lost_and_never_served_stale() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(2, Access::Write, 1);
    c.deliver_all();
    assert_eq!(c.engines[1].home_writer(P), Some(2));
    c.fault(0, Access::Read, 2); // The home will downgrade node 2, which dies first.
    c.deliver_one();
    c.crash(2);
    c.deliver_all();
    let lost = Error::PageLost { page: P, writer: 2 };
    assert_eq!(c.failed(0, 2), Some(&lost));
    assert!(!c.woken(0, 2));
    assert_eq!(c.engines[1].lost_to(P), Some(2));
    // Later requests, even the home's own, are refused the same way.
    c.fault(0, Access::Write, 3);
    c.deliver_all();
    assert_eq!(c.failed(0, 3), Some(&lost));
    c.fault(1, Access::Read, 4);
    assert_eq!(c.failed(1, 4), Some(&lost));
    assert_eq!(c.engines[0].local_state(P), LocalState::Invalid);
    assert_eq!(c.engines[1].local_state(P), LocalState::Invalid);
}

#[test]
fn acks_a_failed_sharer_owed_count_as_given() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Read, 1);
    c.fault(2, Access::Read, 2);
    c.deliver_all();
    c.fault(0, Access::Write, 3);
    c.deliver_one(); // The home invalidates node 2, which dies before it acks.
    c.crash(2);
    c.deliver_all();
    assert!(
        c.woken(0, 3),
        "the write is granted without the dead node's ack"
    );
    assert_eq!(c.engines[0].local_state(P), LocalState::Modified);
}

#[test]
fn a_fault_on_a_page_homed_on_a_failed_node_fails_and_others_are_served() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Read, 1); // P is homed on node 1.
    c.crash(1);
    let gone = Error::HomeFailed { page: P, home: 1 };
    assert_eq!(c.failed(0, 1), Some(&gone), "the fetch in flight fails");
    c.fault(2, Access::Write, 2);
    assert_eq!(c.failed(2, 2), Some(&gone), "a later fault fails at once");
    assert!(c.wire.is_empty());
    let other = PageId { region: 0, page: 2 }; // Homed on node 2.
    c.engines[0]
        .fault(other, Access::Write, 3, &mut c.mems[0])
        .unwrap();
    c.collect(0);
    c.deliver_all();
    assert!(c.woken(0, 3));
}

#[test]
fn a_write_asked_by_a_node_that_failed_completes_without_its_grant() {
    let mut c = Cluster::new(4, Consistency::Sequential, false);
    c.fault(2, Access::Read, 1);
    c.deliver_all();
    c.fault(3, Access::Write, 2);
    c.deliver_one(); // The home invalidates node 2 for node 3.
    c.fault(0, Access::Read, 3);
    c.deliver_one(); // Node 0's read queues behind node 3's write.
    c.crash(3);
    c.deliver_all();
    assert!(c.woken(0, 3), "the queued read is served");
    assert_eq!(c.engines[2].local_state(P), LocalState::Invalid);
    assert_eq!(c.engines[1].home_writer(P), None);
}

#[test]
fn messages_of_a_failed_node_are_dropped() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.crash(2);
    let late = Coherence::ReadRequest {
        req: 9,
        page: P,
        maps_master: false,
    };
    c.engines[1].on_message(2, late, &mut c.mems[1]).unwrap();
    assert!(c.engines[1].take_actions().is_empty());
}
