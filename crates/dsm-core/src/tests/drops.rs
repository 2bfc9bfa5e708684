//! Copies other nodes' writes took: read-only copies dropped at a barrier
//! (`CoherenceEngine::drop_consumed_copies`), and the prefetch of a run taken alike.

use dsm_wire::{Coherence, PAGE_SIZE, PageId};

use super::{Cluster, P, TestMemory, node_of_two, pump};
use crate::{
    Access, CoherenceConfig, CoherenceEngine, Consistency, Error, LocalState, Placement,
    RegionLayout,
};

impl Cluster {
    /// Node `n` drops its consumed copies (a barrier); returns how many.
    fn drop_copies(&mut self, n: usize) -> usize {
        let dropped = self.engines[n]
            .drop_consumed_copies(&mut self.mems[n])
            .unwrap();
        self.collect(n);
        dropped
    }

    /// Node 0 reads P (homed on node 1) after node 1 wrote it; all delivered.
    fn read_after_home_writes(&mut self, token: u64) {
        self.fault(1, Access::Write, token);
        self.deliver_all();
        self.fault(0, Access::Read, token + 1);
        self.deliver_all();
    }
}

#[test]
fn a_copy_writes_took_before_is_dropped_and_the_homes_next_write_sends_nothing() {
    let mut c = Cluster::new(2, Consistency::Sequential, false);
    c.fault(0, Access::Read, 1);
    c.deliver_all();
    assert_eq!(c.drop_copies(0), 0, "no write took this copy yet");
    c.read_after_home_writes(2); // The write invalidated node 0's copy: P is consumed there.
    assert_eq!(c.drop_copies(0), 1);
    assert_eq!(c.engines[0].local_state(P), LocalState::Invalid);
    assert!(!c.mems[0].local.contains_key(&P), "unmapped");
    assert!(matches!(
        c.wire.front(),
        Some((0, 1, Coherence::Dropped { pages })) if pages == &[P]
    ));
    c.deliver_all();
    // The home writes again: no invalidation, the upgrade is local.
    c.fault(1, Access::Write, 4);
    assert!(c.wire.is_empty() && c.woken(1, 4));
    c.write(1, 0, 77);
    c.fault(0, Access::Read, 5);
    c.deliver_all();
    assert_eq!(
        c.mems[0].local[&P][0], 77,
        "the read after the drop sees the write"
    );
    assert_eq!(c.drop_copies(0), 1, "the drop paid off: dropped again");
    c.deliver_all();
    // Nobody writes before the next read: that drop was for nothing, and P is kept after it.
    c.fault(0, Access::Read, 6);
    c.deliver_all();
    assert_eq!(c.engines[0].drops_wasted(), 1);
    assert_eq!(c.drop_copies(0), 0);
    assert_eq!(c.engines[0].copies_dropped(), 2);
}

#[test]
fn a_drop_crossing_an_invalidation_is_acknowledged_and_the_write_completes() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Read, 1);
    c.deliver_all();
    c.read_after_home_writes(2);
    c.fault(2, Access::Write, 4); // Node 2's request reaches the home first...
    c.deliver_one();
    assert_eq!(c.drop_copies(0), 1); // ...while node 0 drops its copy.
    c.deliver_all();
    assert_eq!(c.engines[2].local_state(P), LocalState::Modified);
    assert!(c.woken(2, 4));
    assert_eq!(c.engines[0].local_state(P), LocalState::Invalid);
}

#[test]
fn a_drop_of_a_copy_the_sender_does_not_hold_is_refused_and_changes_nothing() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Read, 1);
    c.deliver_all();
    let dropped = Coherence::Dropped { pages: vec![P] };
    let refused = c.engines[1].on_message(2, dropped, &mut c.mems[1]);
    assert!(matches!(refused, Err(Error::Unexpected { from: 2, .. })));
    // Node 0 is still a reader: node 2's write invalidates it.
    c.fault(2, Access::Write, 2);
    c.deliver_all();
    assert_eq!(c.engines[0].local_state(P), LocalState::Invalid);
    assert!(c.woken(2, 2));
}

/// Node 0 (writes: the home) or node 1 (reads) touches pages 2..6 in order, each fault
/// delivered before the next; returns the pages node 1 asked for.
fn touch_run(
    engines: &mut [CoherenceEngine; 2],
    mems: &mut [TestMemory; 2],
    access: Access,
) -> Vec<u32> {
    let n = usize::from(access == Access::Read);
    let mut asked = Vec::new();
    for index in 2..6 {
        let page = PageId {
            region: 0,
            page: index,
        };
        engines[n]
            .fault(page, access, u64::from(index), &mut mems[n])
            .unwrap();
        asked.extend(pump(engines, mems));
    }
    asked
}

/// Node 1 reads pages 2..6 (homed on node 0); returns the pages it asked for.
fn read_run(engines: &mut [CoherenceEngine; 2], mems: &mut [TestMemory; 2]) -> Vec<u32> {
    touch_run(engines, mems, Access::Read)
}

/// Node 0 writes pages 2..6, its own.
fn write_run(engines: &mut [CoherenceEngine; 2], mems: &mut [TestMemory; 2]) {
    touch_run(engines, mems, Access::Write);
}

#[test]
fn a_fault_on_a_dropped_page_prefetches_the_pages_dropped_after_it_at_once() {
    let mut engines = [0, 1].map(|node| node_of_two(node, 4));
    let mut mems = [TestMemory::default(), TestMemory::default()];
    for index in 0..8 {
        let page = PageId {
            region: 0,
            page: index,
        };
        mems[0].home.insert(page, Box::new([7; PAGE_SIZE]));
    }
    write_run(&mut engines, &mut mems);
    // A scan: page 2, then 3 with the 3 after it (page 6 too, never written).
    assert_eq!(read_run(&mut engines, &mut mems), [2, 3, 4, 5, 6]);
    write_run(&mut engines, &mut mems); // Takes node 1's copies: consumed.
    read_run(&mut engines, &mut mems);
    assert_eq!(engines[1].drop_consumed_copies(&mut mems[1]).unwrap(), 4);
    pump(&mut engines, &mut mems);
    write_run(&mut engines, &mut mems);
    assert_eq!(engines[0].take_actions(), [], "no invalidation went out");
    // The first fault asks the whole run dropped after it.
    let first = PageId { region: 0, page: 2 };
    engines[1]
        .fault(first, Access::Read, 50, &mut mems[1])
        .unwrap();
    assert_eq!(pump(&mut engines, &mut mems), [2, 3, 4, 5]);
    assert_eq!(
        engines[1].local_state(PageId { region: 0, page: 5 }),
        LocalState::Shared
    );
}

#[test]
fn release_mode_a_fault_on_a_page_a_notice_took_prefetches_the_pages_taken_with_it() {
    let mut engines = [0, 1].map(|node| {
        let mut engine = CoherenceEngine::new(CoherenceConfig::new(node, 2));
        let layout = RegionLayout {
            id: 0,
            pages: 16,
            consistency: Consistency::Release,
            placement: Placement::Block,
            prefetch: 4,
        };
        engine.add_region(layout).unwrap();
        engine
    });
    let mut mems = [TestMemory::default(), TestMemory::default()];
    let page = |index| PageId {
        region: 0,
        page: index,
    };
    for index in 0..8 {
        mems[0].home.insert(page(index), Box::new([7; PAGE_SIZE]));
    }
    assert_eq!(read_run(&mut engines, &mut mems), [2, 3, 4, 5, 6]);
    // An acquire names pages 2..6 (another node wrote them): taken.
    let notices = [page(2), page(3), page(4), page(5)];
    engines[1].acquire(1, &notices, &mut mems[1]).unwrap();
    pump(&mut engines, &mut mems);
    engines[1]
        .fault(page(2), Access::Read, 50, &mut mems[1])
        .unwrap();
    assert_eq!(pump(&mut engines, &mut mems), [2, 3, 4, 5]);
    // Page 6 was not named: still here.
    assert_eq!(engines[1].local_state(page(6)), LocalState::Shared);
}

#[test]
fn a_drop_naming_a_page_homed_elsewhere_or_of_release_mode_is_refused() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Read, 1);
    c.deliver_all();
    // P is homed on node 1; page 2 on node 2: node 1 is not its home.
    let elsewhere = PageId { region: 0, page: 2 };
    let dropped = Coherence::Dropped {
        pages: vec![P, elsewhere],
    };
    let refused = c.engines[1].on_message(0, dropped, &mut c.mems[1]);
    assert!(matches!(refused, Err(Error::NotHome { .. })), "{refused:?}");
    // Nothing changed: node 0 is still P's reader, and node 2's write invalidates it.
    c.fault(2, Access::Write, 2);
    c.deliver_all();
    assert_eq!(c.engines[0].local_state(P), LocalState::Invalid);
    let mut r = Cluster::new(2, Consistency::Release, false);
    let dropped = Coherence::Dropped { pages: vec![P] };
    let refused = r.engines[1].on_message(0, dropped, &mut r.mems[1]);
    assert!(
        matches!(refused, Err(Error::WrongMode { .. })),
        "{refused:?}"
    );
}
