//! Unit tests of the engine as a whole: small clusters driven by hand, message by message.

use std::collections::{HashMap, VecDeque};

use dsm_wire::{Coherence, NodeId, PAGE_SIZE, Page, PageId};

use crate::{
    Access, Action, CoherenceConfig, CoherenceEngine, Consistency, Error, LocalState, Memory,
    Placement, RegionLayout,
};

/// Test memory: pages in hash maps (a mock of the runtime's mappings).
#[derive(Debug, Default)]
struct TestMemory {
    local: HashMap<PageId, Page>,
    twins: HashMap<PageId, Page>,
    home: HashMap<PageId, Page>,
    /// Answers `local_is_master` (the runtime's mapped masters; the copies stay apart here).
    maps_masters: bool,
}

impl Memory for TestMemory {
    fn local_page(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        &self.local[&page]
    }
    fn write_protect(&mut self, _page: PageId) {}
    fn twin(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        &self.twins[&page]
    }
    fn twin_mut(&mut self, page: PageId) -> &mut [u8; PAGE_SIZE] {
        self.twins.get_mut(&page).expect("twin made")
    }
    fn home_page(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        self.home.get(&page).expect("home page set up by the test")
    }
    fn home_page_mut(&mut self, page: PageId) -> &mut [u8; PAGE_SIZE] {
        self.home
            .get_mut(&page)
            .expect("home page set up by the test")
    }
    fn local_is_master(&self, _page: PageId) -> bool {
        self.maps_masters
    }
}

const P: PageId = PageId { region: 0, page: 1 };

/// `n` engines sharing region 0 (4 pages, cyclic: page 1 is homed on node 1).
struct Cluster {
    engines: Vec<CoherenceEngine>,
    mems: Vec<TestMemory>,
    /// Messages in flight, FIFO overall (so FIFO per pair).
    wire: VecDeque<(NodeId, NodeId, Coherence)>,
    /// Non-send actions each node produced, for the test to inspect.
    seen: Vec<Vec<Action>>,
}

impl Cluster {
    fn new(n: u32, consistency: Consistency, one_sided: bool) -> Self {
        Cluster::with(n, consistency, one_sided, false)
    }

    /// As [`Cluster::new`], with written pages found by scanning or not.
    fn with(n: u32, consistency: Consistency, one_sided: bool, scan_writes: bool) -> Self {
        Cluster::build(n, consistency, one_sided, scan_writes, false)
    }

    /// Every node on one host: each maps every other's master copies (reads them, writes
    /// back and merges diffs in place), as the runtime pairs same-host nodes.
    fn same_host(n: u32, consistency: Consistency, scan_writes: bool) -> Self {
        Cluster::build(n, consistency, false, scan_writes, true)
    }

    fn build(
        n: u32,
        consistency: Consistency,
        one_sided: bool,
        scan_writes: bool,
        same_host: bool,
    ) -> Self {
        let layout = RegionLayout {
            id: 0,
            pages: 4,
            consistency,
            placement: Placement::Cyclic,
            prefetch: 1,
        };
        let mut engines = Vec::new();
        let mut mems = Vec::new();
        for node in 0..n {
            let mut config = CoherenceConfig::new(node, n);
            config.one_sided = one_sided;
            config.scan_writes = scan_writes;
            if same_host {
                let others: Vec<NodeId> = (0..n).filter(|&o| o != node).collect();
                config.readers_of_home.clone_from(&others);
                config.homes_read = others;
            }
            let mut engine = CoherenceEngine::new(config);
            engine.add_region(layout).unwrap();
            engines.push(engine);
            let mut mem = TestMemory::default();
            for page in 0..4 {
                let id = PageId { region: 0, page };
                if engines[node as usize].home_of(id).unwrap() == node {
                    mem.home
                        .insert(id, Box::new([u8::try_from(page).unwrap(); PAGE_SIZE]));
                }
            }
            mems.push(mem);
        }
        Cluster {
            engines,
            mems,
            wire: VecDeque::new(),
            seen: (0..n).map(|_| Vec::new()).collect(),
        }
    }

    /// Node `n`'s application writes `value` at `offset` of its local copy of P.
    fn write(&mut self, n: usize, offset: usize, value: u8) {
        self.mems[n].local.get_mut(&P).unwrap()[offset] = value;
    }

    /// Node `n` releases with `token`; its actions are applied.
    fn release(&mut self, n: usize, token: u64) {
        self.engines[n].release(token, &mut self.mems[n]).unwrap();
        self.collect(n);
    }

    /// Node `n` acquires with `token` and the write notices `pages`; its actions are applied.
    fn acquire(&mut self, n: usize, token: u64, pages: &[PageId]) {
        self.engines[n]
            .acquire(token, pages, &mut self.mems[n])
            .unwrap();
        self.collect(n);
    }

    /// Applies node `n`'s actions like a driver would (one-sided reads complete at once).
    fn collect(&mut self, n: usize) {
        for _ in 0..100 {
            let mut actions = self.engines[n].take_actions();
            if actions.is_empty() && self.engines[n].has_deferred() {
                self.engines[n].poll(&mut self.mems[n]).unwrap();
                actions = self.engines[n].take_actions();
            }
            if actions.is_empty() {
                return;
            }
            let mut reads = Vec::new();
            for action in actions {
                let mem = &mut self.mems[n];
                match &action {
                    Action::Send { to, message } => {
                        self.wire
                            .push_back((NodeId::try_from(n).unwrap(), *to, message.clone()));
                        continue;
                    }
                    Action::Install { page, data, .. } => {
                        mem.local.insert(*page, data.clone());
                    }
                    Action::MakeTwin { page } => {
                        let copy = mem.local[page].clone();
                        mem.twins.insert(*page, copy);
                    }
                    Action::Twin { page, data } => {
                        mem.twins.insert(*page, data.clone());
                    }
                    Action::Invalidate { page } => {
                        mem.local.remove(page);
                    }
                    Action::ReadPage { home, page, token } => {
                        let data = self.mems[*home as usize].home[page].clone();
                        reads.push((*token, data));
                    }
                    Action::WriteMaster { home, page, data } => {
                        self.mems[*home as usize].home.insert(*page, data.clone());
                    }
                    Action::MergeMaster { home, diff } => {
                        let master = self.mems[*home as usize].home.get_mut(&diff.page);
                        let master = master.expect("a master copy at the home");
                        for run in &diff.runs {
                            let at = usize::from(run.offset);
                            master[at..at + run.bytes.len()].copy_from_slice(&run.bytes);
                        }
                    }
                    _ => {}
                }
                self.seen[n].push(action);
            }
            for (token, data) in reads {
                self.engines[n]
                    .on_page_read(token, data, &mut self.mems[n])
                    .unwrap();
            }
        }
        panic!("node {n} does not settle");
    }

    fn fault(&mut self, n: usize, access: Access, token: u64) {
        self.engines[n]
            .fault(P, access, token, &mut self.mems[n])
            .unwrap();
        self.collect(n);
    }

    /// Delivers one message; returns it.
    fn deliver_one(&mut self) -> (NodeId, NodeId, Coherence) {
        let (from, to, message) = self.wire.pop_front().expect("a message in flight");
        let t = to as usize;
        self.engines[t]
            .on_message(from, message.clone(), &mut self.mems[t])
            .unwrap();
        self.collect(t);
        (from, to, message)
    }

    /// [`deliver_all`](Self::deliver_all), returning every message delivered.
    fn deliver_all_seen(&mut self) -> Vec<Coherence> {
        let mut seen = Vec::new();
        for _ in 0..1000 {
            if self.wire.is_empty() {
                return seen;
            }
            seen.push(self.deliver_one().2);
        }
        panic!("messages do not settle");
    }

    fn deliver_all(&mut self) {
        for _ in 0..1000 {
            if self.wire.is_empty() {
                return;
            }
            self.deliver_one();
        }
        panic!("messages do not settle");
    }

    fn woken(&self, n: usize, token: u64) -> bool {
        self.seen[n].contains(&Action::Wake { token })
    }
}

#[test]
fn read_fault_fetches_the_home_copy_and_wakes_the_thread() {
    let mut c = Cluster::new(2, Consistency::Sequential, false);
    c.fault(0, Access::Read, 7);
    assert!(matches!(
        c.wire.front(),
        Some((0, 1, Coherence::ReadRequest { page: P, .. }))
    ));
    let (_, _, grant) = {
        c.deliver_one();
        c.deliver_one()
    };
    assert!(matches!(grant, Coherence::ReadGrant { data: Some(_), .. }));
    assert_eq!(c.engines[0].local_state(P), LocalState::Shared);
    assert_eq!(c.mems[0].local[&P][0], 1, "installed the home copy");
    assert!(c.woken(0, 7));
    // A second read is served locally at once.
    c.fault(0, Access::Read, 8);
    assert!(c.woken(0, 8) && c.wire.is_empty());
}

#[test]
fn write_fault_waits_for_every_invalidation_ack() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Read, 1);
    c.fault(2, Access::Read, 2);
    c.deliver_all();
    c.fault(0, Access::Write, 3);
    c.deliver_one(); // WriteRequest reaches the home (node 1), which invalidates node 2.
    assert!(matches!(
        c.wire.front(),
        Some((1, 2, Coherence::Invalidate { .. }))
    ));
    assert_eq!(c.wire.len(), 1, "no grant before the ack");
    c.deliver_one(); // Node 2 drops its copy and acks.
    assert_eq!(c.engines[2].local_state(P), LocalState::Invalid);
    c.deliver_one(); // The ack: now the grant, without data (node 0 has a current copy).
    let (_, _, grant) = c.deliver_one();
    assert!(matches!(grant, Coherence::WriteGrant { data: None, .. }));
    assert_eq!(c.engines[0].local_state(P), LocalState::Modified);
    assert!(c.seen[0].contains(&Action::Upgrade { page: P }) && c.woken(0, 3));
}

#[test]
fn read_of_a_modified_page_downgrades_the_writer_first() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Write, 1);
    c.deliver_all();
    c.write(0, 5, 99); // The woken thread writes.
    c.fault(2, Access::Read, 2);
    c.deliver_all();
    assert_eq!(c.engines[0].local_state(P), LocalState::Shared);
    assert_eq!(c.engines[2].local_state(P), LocalState::Shared);
    assert_eq!(c.mems[2].local[&P][5], 99, "the reader sees the write");
    assert_eq!(c.mems[1].home[&P][5], 99, "the home copy was written back");
}

#[test]
fn concurrent_upgrades_both_complete() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Read, 1);
    c.fault(2, Access::Read, 2);
    c.deliver_all();
    c.fault(0, Access::Write, 3);
    c.fault(2, Access::Write, 4);
    c.deliver_all();
    assert!(c.woken(0, 3) && c.woken(2, 4));
    let states = [c.engines[0].local_state(P), c.engines[2].local_state(P)];
    assert!(states.contains(&LocalState::Modified) && states.contains(&LocalState::Invalid));
}

#[test]
fn one_sided_grants_carry_no_data() {
    let mut c = Cluster::new(2, Consistency::Sequential, true);
    c.fault(0, Access::Read, 1);
    c.deliver_all();
    assert!(
        c.seen[0]
            .iter()
            .any(|a| matches!(a, Action::ReadPage { home: 1, .. }))
    );
    assert!(c.woken(0, 1));
    assert_eq!(c.mems[0].local[&P][0], 1);
}

#[test]
fn release_sends_a_diff_and_notices_invalidate_readers() {
    let mut c = Cluster::new(3, Consistency::Release, false);
    c.fault(2, Access::Read, 1);
    c.fault(0, Access::Write, 2);
    c.deliver_all();
    assert!(c.seen[0].contains(&Action::MakeTwin { page: P }) && c.woken(0, 2));
    c.write(0, 10, 42);
    c.release(0, 100);
    assert!(matches!(
        c.wire.front(),
        Some((0, 1, Coherence::DiffBatch { diffs, .. }))
            if diffs.len() == 1 && diffs[0].runs.len() == 1 && diffs[0].runs[0].offset == 10
    ));
    c.deliver_all();
    assert_eq!(c.mems[1].home[&P][10], 42, "the home applied the diff");
    let done = c.seen[0].iter().find_map(|a| match a {
        Action::SyncDone {
            token: 100,
            notices,
        } => Some(notices.clone()),
        _ => None,
    });
    assert_eq!(done, Some(vec![P]));
    c.acquire(2, 5, &[P]);
    assert_eq!(c.engines[2].local_state(P), LocalState::Invalid);
    c.fault(2, Access::Read, 6);
    c.deliver_all();
    assert_eq!(c.mems[2].local[&P][10], 42);
}

/// A same-host writer merges its diffs into the home's master itself: no `DiffBatch`, no ack,
/// and its release completes at once; readers see the bytes as over the network. Both ways
/// of finding written pages.
#[test]
fn same_host_diffs_are_merged_in_place_and_the_release_completes_at_once() {
    for scan_writes in [false, true] {
        let mut c = Cluster::same_host(3, Consistency::Release, scan_writes);
        c.fault(2, Access::Read, 1);
        c.fault(0, Access::Write, 2);
        c.deliver_all();
        c.write(0, 10, 42);
        c.write(0, 11, 43);
        c.release(0, 100);
        assert!(
            !c.wire
                .iter()
                .any(|(_, _, m)| matches!(m, Coherence::DiffBatch { .. })),
            "no diff message (scan_writes {scan_writes})"
        );
        let merged = c.seen[0].iter().any(|a| {
            matches!(a, Action::MergeMaster { home: 1, diff }
                if diff.page == P && diff.runs.len() == 1 && diff.runs[0].offset == 10)
        });
        assert!(merged, "one run merged into home 1's master");
        assert!(
            c.seen[0].contains(&Action::SyncDone {
                token: 100,
                notices: vec![P]
            }),
            "the release completed without waiting for an ack"
        );
        assert_eq!(&c.mems[1].home[&P][10..12], &[42, 43]);
        assert_eq!(c.mems[1].home[&P][9], 1, "the bytes around stay the home's");
        c.acquire(2, 5, &[P]);
        c.fault(2, Access::Read, 6);
        c.deliver_all();
        assert_eq!(&c.mems[2].local[&P][10..12], &[42, 43]);
    }
}

/// Scanned writes: no write fault after install, one batch per home at a release, and the
/// home's own private page needs no twin until another node fetches it.
#[test]
fn scanned_writes_batch_diffs_per_home() {
    let mut c = Cluster::with(3, Consistency::Release, false, true);
    let q = PageId { region: 0, page: 3 }; // homed on node 0 of 3 (cyclic)
    let r = PageId { region: 0, page: 1 }; // homed on node 1
    // Node 2 writes a page of each of two homes: two batches.
    for (token, page) in [(1, r), (2, q)] {
        c.engines[2]
            .fault(page, Access::Write, token, &mut c.mems[2])
            .unwrap();
        c.collect(2);
    }
    c.deliver_all();
    assert!(c.woken(2, 1) && c.woken(2, 2));
    assert!(
        c.seen[2]
            .iter()
            .any(|a| matches!(a, Action::Twin { page, .. } if *page == r))
    );
    assert!(
        !c.seen[2]
            .iter()
            .any(|a| matches!(a, Action::MakeTwin { .. } | Action::Upgrade { .. })),
        "no write fault path"
    );
    c.mems[2].local.get_mut(&r).unwrap()[5] = 55;
    c.mems[2].local.get_mut(&q).unwrap()[6] = 66;
    c.release(2, 100);
    let batches: Vec<_> = c
        .wire
        .iter()
        .filter_map(|(_, to, m)| match m {
            Coherence::DiffBatch { diffs, .. } => Some((*to, diffs.len())),
            _ => None,
        })
        .collect();
    assert_eq!(batches, vec![(0, 1), (1, 1)], "one batch per home");
    c.deliver_all();
    assert_eq!((c.mems[1].home[&r][5], c.mems[0].home[&q][6]), (55, 66));
}

#[test]
fn a_bad_diff_batch_is_refused_whole() {
    let mut c = Cluster::new(2, Consistency::Release, false);
    let mine = PageId { region: 0, page: 1 }; // homed on node 1
    let other = PageId { region: 0, page: 2 }; // homed on node 0
    let run = |offset: u16, len: usize| dsm_wire::DiffRun {
        offset,
        bytes: vec![9; len],
    };
    let batch = |second: PageId, len: usize| Coherence::DiffBatch {
        req: 1,
        diffs: vec![
            dsm_wire::PageDiff {
                page: mine,
                runs: vec![run(0, 1)],
            },
            dsm_wire::PageDiff {
                page: second,
                runs: vec![run(4095, len)],
            },
        ],
    };
    let before = c.mems[1].home[&mine].clone();
    for (message, refused) in [(batch(other, 1), "not home"), (batch(mine, 2), "bad run")] {
        let result = c.engines[1].on_message(0, message, &mut c.mems[1]);
        assert!(result.is_err(), "{refused}");
        assert_eq!(c.mems[1].home[&mine], before, "{refused}: nothing applied");
        assert!(
            c.engines[1].take_actions().is_empty(),
            "{refused}: nothing sent"
        );
    }
}

#[test]
fn false_sharing_writers_exchange_no_pages() {
    let mut c = Cluster::new(3, Consistency::Release, false);
    c.fault(0, Access::Write, 1);
    c.fault(2, Access::Write, 2);
    c.deliver_all();
    c.write(0, 0, 10);
    c.write(2, 1, 20);
    // More writes by both: no messages at all.
    c.fault(0, Access::Write, 3);
    c.fault(2, Access::Write, 4);
    assert!(c.wire.is_empty() && c.woken(0, 3) && c.woken(2, 4));
    for n in [0, 2] {
        c.release(n, 9);
    }
    c.deliver_all();
    assert_eq!(
        &c.mems[1].home[&P][..2],
        &[10, 20],
        "both diffs merged at the home"
    );
}

#[test]
fn bad_peer_input_is_a_typed_error_and_changes_nothing() {
    let mut c = Cluster::new(2, Consistency::Sequential, false);
    let page = |region, page| PageId { region, page };
    let cases: Vec<(NodeId, Coherence)> = vec![
        (
            7,
            Coherence::ReadRequest {
                req: 1,
                page: P,
                maps_master: false,
            },
        ),
        (
            0,
            Coherence::ReadRequest {
                req: 1,
                page: page(9, 1),
                maps_master: false,
            },
        ),
        (
            0,
            Coherence::ReadRequest {
                req: 1,
                page: page(0, 4),
                maps_master: false,
            },
        ),
        (
            0,
            Coherence::ReadRequest {
                req: 1,
                page: page(0, 0),
                maps_master: false,
            },
        ), // homed on node 0
        (0, Coherence::Invalidate { req: 1, page: P }), // node 1 is the home
        (
            0,
            Coherence::InvalidateAck {
                req: 9,
                page: P,
                data: None,
            },
        ),
        (0, Coherence::DiffAck { req: 1, page: P }),
        (0, Coherence::WriteNotices { pages: vec![P] }),
    ];
    for (from, message) in cases {
        let result = c.engines[1].on_message(from, message.clone(), &mut c.mems[1]);
        assert!(result.is_err(), "{message:?} was accepted");
        assert!(c.engines[1].take_actions().is_empty(), "{message:?} acted");
    }
    let grant = Coherence::ReadGrant {
        req: 1,
        page: PageId { region: 0, page: 0 },
        version: 0,
        data: None,
    };
    let result = c.engines[1].on_message(0, grant, &mut c.mems[1]);
    assert!(matches!(result, Err(Error::Unexpected { .. })));
    assert_eq!(c.engines[1].local_state(P), LocalState::Invalid);
    // The engine still works.
    c.fault(0, Access::Read, 1);
    c.deliver_all();
    assert!(c.woken(0, 1));
}

#[test]
fn a_lost_grant_times_out_naming_the_wait() {
    let mut config = CoherenceConfig::new(0, 2);
    config.timeout_ticks = 10;
    let mut engine = CoherenceEngine::new(config);
    engine
        .add_region(RegionLayout {
            id: 0,
            pages: 4,
            consistency: Consistency::Sequential,
            placement: Placement::Cyclic,
            prefetch: 1,
        })
        .unwrap();
    let mut mem = TestMemory::default();
    engine.fault(P, Access::Read, 1, &mut mem).unwrap();
    assert!(engine.tick(5).is_ok());
    assert!(matches!(
        engine.tick(50),
        Err(Error::FaultTimeout {
            home: 1,
            page: P,
            ..
        })
    ));
}

#[test]
fn acquire_during_a_fetch_fetches_again() {
    let mut c = Cluster::new(3, Consistency::Release, false);
    c.fault(2, Access::Read, 1);
    c.deliver_one(); // The home answers with the old copy...
    c.mems[1].home.get_mut(&P).unwrap()[3] = 77; // ...then another node's diff lands.
    c.acquire(2, 9, &[P]); // Its notice arrives first.
    c.deliver_all();
    assert!(c.woken(2, 1));
    assert_eq!(c.mems[2].local[&P][3], 77, "the stale grant was discarded");
}

#[test]
fn acquire_of_a_page_being_written_flushes_it_and_announces_it_later() {
    let mut c = Cluster::new(2, Consistency::Release, false);
    c.fault(0, Access::Write, 1);
    c.deliver_all();
    c.write(0, 8, 5);
    c.acquire(0, 2, &[P]);
    assert_eq!(c.engines[0].local_state(P), LocalState::Invalid);
    c.deliver_all();
    assert_eq!(
        c.mems[1].home[&P][8], 5,
        "the write reached the home before the drop"
    );
    assert!(c.seen[0].contains(&Action::SyncDone {
        token: 2,
        notices: vec![]
    }));
    c.release(0, 3);
    assert!(c.seen[0].contains(&Action::SyncDone {
        token: 3,
        notices: vec![P]
    }));
}

#[test]
fn overdue_lists_every_timed_out_fault_with_its_home() {
    let mut config = CoherenceConfig::new(0, 2);
    config.timeout_ticks = 10;
    let mut engine = CoherenceEngine::new(config);
    engine
        .add_region(RegionLayout {
            id: 0,
            pages: 4,
            consistency: Consistency::Release,
            placement: Placement::Cyclic,
            prefetch: 1,
        })
        .unwrap();
    let mut mem = TestMemory::default();
    let q = PageId { region: 0, page: 3 };
    engine.fault(P, Access::Read, 1, &mut mem).unwrap();
    engine.fault(q, Access::Write, 2, &mut mem).unwrap();
    engine.tick(5).unwrap();
    assert!(engine.overdue().is_empty());
    assert!(engine.tick(50).is_err());
    let mut late: Vec<(PageId, NodeId)> = engine
        .overdue()
        .into_iter()
        .map(|e| match e {
            Error::FaultTimeout { page, home, .. } => (page, home),
            other => panic!("not a timeout: {other}"),
        })
        .collect();
    late.sort();
    assert_eq!(late, vec![(P, 1), (q, 1)]);
}

#[test]
fn a_home_publishes_its_own_writes_in_place_and_keeps_the_page_writable() {
    let mut c = Cluster::new(2, Consistency::Release, false);
    c.fault(1, Access::Write, 1); // node 1 is P's home
    c.deliver_all();
    assert!(c.woken(1, 1));
    for (interval, value) in [(0u64, 7u8), (1, 8)] {
        c.write(1, 20, value);
        c.release(1, 100 + interval);
        assert!(c.wire.is_empty(), "a home's own release sends nothing");
        assert_eq!(c.mems[1].home[&P][20], value, "the master has the write");
        assert_eq!(c.engines[1].local_state(P), LocalState::Modified);
        assert!(c.seen[1].contains(&Action::SyncDone {
            token: 100 + interval,
            notices: vec![P]
        }));
    }
    // Another node's diff to other bytes, then the home writes again: both stay.
    c.fault(0, Access::Write, 2);
    c.deliver_all();
    c.write(0, 30, 3);
    c.release(0, 5);
    c.deliver_all();
    c.write(1, 21, 9);
    c.release(1, 200);
    let master = &c.mems[1].home[&P];
    assert_eq!((master[20], master[21], master[30]), (8, 9, 3));
    // Idle releases: after KEEP_IDLE_RELEASES unchanged ones the page is protected again.
    for token in 0..=u64::from(crate::KEEP_IDLE_RELEASES) {
        c.release(1, 300 + token);
    }
    assert_eq!(c.engines[1].local_state(P), LocalState::Shared);
    assert!(c.seen[1].contains(&Action::DropTwin { page: P }));
}

/// The pages a node asked its homes for in the actions of its last call.
fn read_requests(engine: &mut CoherenceEngine) -> Vec<(NodeId, u32)> {
    engine
        .take_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::Send {
                to,
                message: Coherence::ReadRequest { page, .. },
            } => Some((to, page.page)),
            _ => None,
        })
        .collect()
}

/// Node 1 of 2, 16 pages in blocks (0..8 homed on node 0), prefetch `prefetch`.
fn prefetching_node(prefetch: u32) -> CoherenceEngine {
    node_of_two(1, prefetch)
}

/// Node `node` of 2, 16 sequential pages in blocks (0..8 on node 0), prefetch `prefetch`.
fn node_of_two(node: NodeId, prefetch: u32) -> CoherenceEngine {
    let mut engine = CoherenceEngine::new(CoherenceConfig::new(node, 2));
    engine
        .add_region(RegionLayout {
            id: 0,
            pages: 16,
            consistency: Consistency::Sequential,
            placement: Placement::Block,
            prefetch,
        })
        .unwrap();
    engine
}

#[test]
fn an_in_order_scan_prefetches_the_next_pages_of_the_same_home() {
    let mut engine = prefetching_node(4);
    let mut mem = TestMemory::default();
    let page = |page| PageId { region: 0, page };
    // The first fault is not a scan yet: one page.
    engine.fault(page(0), Access::Read, 1, &mut mem).unwrap();
    assert_eq!(read_requests(&mut engine), vec![(0, 0)]);
    // Right after it: a scan, so up to 4 pages in one burst.
    engine.fault(page(1), Access::Read, 2, &mut mem).unwrap();
    assert_eq!(
        read_requests(&mut engine),
        vec![(0, 1), (0, 2), (0, 3), (0, 4)]
    );
    // A fault on a page being prefetched joins that fetch: nothing new is asked.
    engine.fault(page(4), Access::Read, 3, &mut mem).unwrap();
    assert_eq!(read_requests(&mut engine), vec![]);
    // The scan goes on; the run stops where the home changes (page 8).
    engine.fault(page(5), Access::Read, 4, &mut mem).unwrap();
    assert_eq!(read_requests(&mut engine), vec![(0, 5), (0, 6), (0, 7)]);
}

#[test]
fn a_fault_right_after_a_prefetched_run_continues_the_scan() {
    let mut engine = node_of_two(1, 3);
    let mut mem = TestMemory::default();
    let page = |page| PageId { region: 0, page };
    engine.fault(page(0), Access::Read, 1, &mut mem).unwrap();
    assert_eq!(read_requests(&mut engine), vec![(0, 0)]);
    engine.fault(page(1), Access::Read, 2, &mut mem).unwrap();
    assert_eq!(read_requests(&mut engine), vec![(0, 1), (0, 2), (0, 3)]);
    // Pages 2 and 3 come without a fault each; the scan's next fault is on page 4: it
    // continues the scan (it used to count as a first fault and ask one page).
    engine.fault(page(4), Access::Read, 3, &mut mem).unwrap();
    assert_eq!(read_requests(&mut engine), vec![(0, 4), (0, 5), (0, 6)]);
}

/// Moves messages between two engines (node 0 the home of pages 0..8) until both are quiet;
/// installs go into the receiving node's local pages. Returns node 1's read requests.
fn pump(engines: &mut [CoherenceEngine; 2], mems: &mut [TestMemory; 2]) -> Vec<u32> {
    let mut asked = Vec::new();
    let mut wire = VecDeque::new();
    for _ in 0..1000 {
        for n in 0..2 {
            for action in engines[n].take_actions() {
                match action {
                    Action::Send { to, message } => {
                        if let (1, Coherence::ReadRequest { page, .. }) = (n, &message) {
                            asked.push(page.page);
                        }
                        wire.push_back((NodeId::try_from(n).expect("two nodes"), to, message));
                    }
                    Action::Install { page, data, .. } => {
                        mems[n].local.insert(page, data);
                    }
                    _ => {}
                }
            }
        }
        let Some((from, to, message)) = wire.pop_front() else {
            return asked;
        };
        let to = to as usize;
        engines[to]
            .on_message(from, message, &mut mems[to])
            .unwrap();
    }
    panic!("the engines never went quiet");
}

#[test]
fn a_page_faulted_on_once_is_not_prefetched_later_without_a_scan() {
    let mut engines = [0, 1].map(|node| node_of_two(node, 8));
    let mut mems = [TestMemory::default(), TestMemory::default()];
    let page = |page| PageId { region: 0, page };
    for index in 0..8 {
        mems[0].home.insert(page(index), Box::new([7; PAGE_SIZE]));
    }
    // Node 1 reads pages 3 then 2 (not in order: no scan), never page 4.
    engines[1]
        .fault(page(3), Access::Read, 1, &mut mems[1])
        .unwrap();
    assert_eq!(pump(&mut engines, &mut mems), vec![3]);
    engines[1]
        .fault(page(2), Access::Read, 2, &mut mems[1])
        .unwrap();
    assert_eq!(pump(&mut engines, &mut mems), vec![2]);
    // The home writes both: node 1's copies are invalidated.
    for (token, index) in [(3, 2), (4, 3)] {
        engines[0]
            .fault(page(index), Access::Write, token, &mut mems[0])
            .unwrap();
        let _ = pump(&mut engines, &mut mems);
    }
    assert_eq!(engines[1].local_state(page(3)), LocalState::Invalid);
    // A fault on page 2 does not bring page 3 back: without a scan, nothing is guessed.
    engines[1]
        .fault(page(2), Access::Read, 5, &mut mems[1])
        .unwrap();
    assert_eq!(pump(&mut engines, &mut mems), vec![2]);
    assert_eq!(engines[1].local_state(page(3)), LocalState::Invalid);
    // Then page 3 right after: a scan, so 4..8 come along (page 8 has another home).
    engines[1]
        .fault(page(3), Access::Read, 6, &mut mems[1])
        .unwrap();
    assert_eq!(pump(&mut engines, &mut mems), vec![3, 4, 5, 6, 7]);
    assert_eq!(engines[1].local_state(page(7)), LocalState::Shared);
}

#[test]
fn prefetch_one_fetches_only_the_faulting_page() {
    let mut engine = prefetching_node(1);
    let mut mem = TestMemory::default();
    for (token, index) in [(1, 0), (2, 1), (3, 2)] {
        let page = PageId {
            region: 0,
            page: index,
        };
        engine.fault(page, Access::Read, token, &mut mem).unwrap();
        assert_eq!(read_requests(&mut engine), vec![(0, index)]);
    }
}

#[test]
fn write_faults_and_pages_homed_here_never_prefetch() {
    let mut engine = prefetching_node(8);
    let mut mem = TestMemory::default();
    let page = |page| PageId { region: 0, page };
    engine.fault(page(0), Access::Read, 1, &mut mem).unwrap();
    let _ = read_requests(&mut engine);
    // A write fault right after: a write request for that page only.
    engine.fault(page(1), Access::Write, 2, &mut mem).unwrap();
    assert_eq!(read_requests(&mut engine), vec![]);
}

#[test]
fn a_fault_on_an_own_page_next_to_a_remote_row_is_not_a_scan() {
    // Node 0 of 2: pages 0..8 homed here, 8..16 on node 1 (a row-split stencil's halo).
    let mut engine = node_of_two(0, 4);
    let mut mem = TestMemory::default();
    for index in 0..8 {
        mem.home.insert(
            PageId {
                region: 0,
                page: index,
            },
            Box::new([0; PAGE_SIZE]),
        );
    }
    let page = |page| PageId { region: 0, page };
    engine.fault(page(7), Access::Write, 1, &mut mem).unwrap();
    let _ = engine.take_actions();
    engine.fault(page(8), Access::Read, 2, &mut mem).unwrap();
    assert_eq!(read_requests(&mut engine), vec![(1, 8)]);
}

mod drops;
mod failure;

/// The pages a node's last call invalidated at `to`, in order.
fn invalidations_to(engine: &mut CoherenceEngine, to: NodeId) -> Vec<u32> {
    engine
        .take_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::Send {
                to: target,
                message: Coherence::Invalidate { page, .. },
            } if target == to => Some(page.page),
            _ => None,
        })
        .collect()
}

/// Two nodes, prefetch 4; node 0 wrote pages 0..5 (homed here) and node 1 read 1, 0 and 2
/// since (no scan), so node 0 holds 0..3 read-only by downgrade and 3, 4 writable.
fn written_then_read() -> ([CoherenceEngine; 2], [TestMemory; 2]) {
    let mut engines = [0, 1].map(|node| node_of_two(node, 4));
    let mut mems = [TestMemory::default(), TestMemory::default()];
    let page = |page| PageId { region: 0, page };
    for index in 0..8 {
        mems[0].home.insert(page(index), Box::new([0; PAGE_SIZE]));
    }
    for index in 0..5 {
        engines[0]
            .fault(page(index), Access::Write, u64::from(index), &mut mems[0])
            .unwrap();
        let _ = pump(&mut engines, &mut mems);
    }
    for index in [1, 0, 2] {
        engines[1]
            .fault(page(index), Access::Read, 10, &mut mems[1])
            .unwrap();
        assert_eq!(pump(&mut engines, &mut mems), vec![index], "no scan");
    }
    (engines, mems)
}

#[test]
fn a_write_fault_on_a_downgraded_page_asks_the_pages_written_here_before_too() {
    let (mut engines, mut mems) = written_then_read();
    let page = |page| PageId { region: 0, page };
    assert_eq!(engines[0].local_state(page(1)), LocalState::Shared);
    // The write fault on page 0 also asks 1 and 2 (read-only by downgrade), not 3
    // (writable already): node 1's three copies are invalidated in one burst.
    engines[0]
        .fault(page(0), Access::Write, 20, &mut mems[0])
        .unwrap();
    assert_eq!(invalidations_to(&mut engines[0], 1), vec![0, 1, 2]);
    assert_eq!(engines[0].upgrades_prefetched(), 2);
}

#[test]
fn read_only_copies_never_written_here_are_not_asked_ahead() {
    let (mut engines, mut mems) = written_then_read();
    let page = |page| PageId { region: 0, page };
    // Node 1 holds 0..3 read-only, but only read them: its write fault on page 0 asks for
    // page 0 alone.
    engines[1]
        .fault(page(0), Access::Write, 20, &mut mems[1])
        .unwrap();
    let asked: Vec<u32> = engines[1]
        .take_actions()
        .into_iter()
        .filter_map(|action| match action {
            Action::Send {
                message: Coherence::WriteRequest { page, .. },
                ..
            } => Some(page.page),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![0]);
    assert_eq!(engines[1].upgrades_prefetched(), 0);
}

#[test]
fn upgrades_asked_ahead_complete_with_nobody_waiting_and_wake_a_late_writer() {
    let (mut engines, mut mems) = written_then_read();
    let page = |page| PageId { region: 0, page };
    engines[0]
        .fault(page(0), Access::Write, 20, &mut mems[0])
        .unwrap();
    // The thread writes page 2 while its upgrade is in flight: it joins that request.
    engines[0]
        .fault(page(2), Access::Write, 21, &mut mems[0])
        .unwrap();
    let mut woken = Vec::new();
    let mut wire = VecDeque::new();
    for _ in 0..1000 {
        for (n, engine) in engines.iter_mut().enumerate() {
            for action in engine.take_actions() {
                match action {
                    Action::Send { to, message } => {
                        wire.push_back((NodeId::try_from(n).unwrap(), to, message));
                    }
                    Action::Wake { token } => woken.push(token),
                    _ => {}
                }
            }
        }
        let Some((from, to, message)) = wire.pop_front() else {
            break;
        };
        let to = to as usize;
        engines[to]
            .on_message(from, message, &mut mems[to])
            .unwrap();
    }
    for index in 0..3 {
        assert_eq!(engines[0].local_state(page(index)), LocalState::Modified);
        assert_eq!(engines[1].local_state(page(index)), LocalState::Invalid);
    }
    woken.sort_unstable();
    assert_eq!(woken, vec![20, 21]);
}

/// Two nodes, no prefetch, and page 8, homed at node 1 (zeros there), that both will use.
fn two_nodes_sharing_page_8() -> ([CoherenceEngine; 2], [TestMemory; 2], PageId) {
    let engines = [0, 1].map(|node| node_of_two(node, 1));
    let mut mems = [TestMemory::default(), TestMemory::default()];
    let page = PageId { region: 0, page: 8 };
    mems[1].home.insert(page, Box::new([0; PAGE_SIZE]));
    (engines, mems, page)
}

#[test]
fn a_page_read_then_written_in_turn_is_asked_writable_by_the_read_fault() {
    // Node 1 is the home of pages 8..16; nodes 0 and 1 take turns reading page 8 and then
    // writing it (a counter under a lock).
    let (mut engines, mut mems, page) = two_nodes_sharing_page_8();
    let mut token = 0;
    let mut turn = |engines: &mut [CoherenceEngine; 2], mems: &mut [TestMemory; 2], n: usize| {
        token += 2;
        engines[n]
            .fault(page, Access::Read, token, &mut mems[n])
            .unwrap();
        let _ = pump(engines, mems);
        engines[n]
            .fault(page, Access::Write, token + 1, &mut mems[n])
            .unwrap();
        let _ = pump(engines, mems);
    };
    turn(&mut engines, &mut mems, 0);
    turn(&mut engines, &mut mems, 1);
    // Node 0 wrote the page, node 1 read and wrote it since: it migrates. Node 0's read
    // fault asks it writable, and its write then needs no message.
    engines[0]
        .fault(page, Access::Read, 100, &mut mems[0])
        .unwrap();
    assert_eq!(engines[0].reads_for_ownership(), 1);
    let _ = pump(&mut engines, &mut mems);
    assert_eq!(engines[0].local_state(page), LocalState::Exclusive);
    assert_eq!(engines[1].local_state(page), LocalState::Invalid);
    engines[0]
        .fault(page, Access::Write, 101, &mut mems[0])
        .unwrap();
    let actions = engines[0].take_actions();
    assert!(actions.contains(&Action::Upgrade { page }), "{actions:?}");
    assert!(actions.iter().all(|a| !matches!(a, Action::Send { .. })));
    assert_eq!(engines[0].local_state(page), LocalState::Modified);
    assert_eq!(engines[0].reads_for_ownership(), 1);
}

#[test]
fn a_page_only_read_after_one_write_each_settles_as_shared_copies() {
    let (mut engines, mut mems, page) = two_nodes_sharing_page_8();
    for (n, token) in [(0, 1), (1, 2)] {
        engines[n]
            .fault(page, Access::Write, token, &mut mems[n])
            .unwrap();
        let _ = pump(&mut engines, &mut mems);
    }
    // From now on both only read: after at most one exclusive round each, copies are shared.
    for (n, token) in [(0, 3), (1, 4), (0, 5), (1, 6)] {
        engines[n]
            .fault(page, Access::Read, token, &mut mems[n])
            .unwrap();
        let _ = pump(&mut engines, &mut mems);
    }
    assert_eq!(engines[0].local_state(page), LocalState::Shared);
    assert_eq!(engines[1].local_state(page), LocalState::Shared);
}

/// Node 0 writes P (homed on node 1) and gives it back unasked: the master holds its write,
/// node 0 keeps no copy, and node 2's write is granted by the home with no recall.
#[test]
fn a_handed_back_page_is_served_by_its_home_without_a_recall() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Write, 1);
    c.deliver_all();
    c.write(0, 5, 77);
    assert!(c.engines[0].hand_back(P, None, &mut c.mems[0]).unwrap());
    c.collect(0);
    assert_eq!(c.engines[0].local_state(P), LocalState::Invalid);
    assert!(!c.mems[0].local.contains_key(&P), "no copy is kept");
    c.deliver_all();
    assert_eq!(c.mems[1].home[&P][5], 77, "the master holds the write");
    c.fault(2, Access::Write, 2);
    let (_, to, request) = c.deliver_one();
    assert!(matches!(request, Coherence::WriteRequest { .. }) && to == 1);
    let (_, to, grant) = c.deliver_one();
    assert!(
        matches!(grant, Coherence::WriteGrant { .. }) && to == 2,
        "{grant:?}"
    );
    assert!(c.woken(2, 2));
    assert_eq!(c.mems[2].local[&P][5], 77);
    assert!(
        !c.engines[0].hand_back(P, None, &mut c.mems[0]).unwrap(),
        "a page not held writable is not handed back"
    );
}

/// The home downgrades node 0's copy for node 2's read while node 0's hand-back is on its
/// way: the hand-back answers the read, and node 0 ignores the downgrade that crossed it.
#[test]
fn a_downgrade_crossing_a_hand_back_is_answered_by_it() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Write, 1);
    c.deliver_all();
    c.write(0, 9, 55);
    c.fault(2, Access::Read, 2);
    let (_, to, _) = c.deliver_one(); // The read request reaches the home...
    assert_eq!(to, 1);
    assert!(c.engines[0].hand_back(P, None, &mut c.mems[0]).unwrap()); // ...as node 0 gives P back.
    c.collect(0);
    c.deliver_all();
    assert!(c.woken(2, 2));
    assert_eq!(
        c.mems[2].local[&P][9], 55,
        "the reader sees the handed-back write"
    );
    assert_eq!(c.engines[0].recalls_crossing_hand_backs(), 1);
    assert_eq!(c.engines[0].local_state(P), LocalState::Invalid);
    // Node 0 writes again: the home invalidates node 2's copy as usual.
    c.fault(0, Access::Write, 3);
    c.deliver_all();
    assert!(c.woken(0, 3));
    assert_eq!(c.engines[2].local_state(P), LocalState::Invalid);
}

/// Node 1, P's home, wrote P and pushes it to node 0: node 0 holds it writable with the
/// write, with no fault; node 1's own copy was recalled first.
#[test]
fn a_pushed_page_is_writable_at_its_new_holder_without_a_fault() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(1, Access::Write, 1);
    c.deliver_all();
    c.mems[1].local.get_mut(&P).unwrap()[3] = 42;
    assert!(c.engines[1].push(P, 0, &mut c.mems[1]).unwrap());
    c.collect(1);
    c.deliver_all();
    assert_eq!(c.engines[1].local_state(P), LocalState::Invalid);
    assert_eq!(c.engines[0].local_state(P), LocalState::Modified);
    assert_eq!(
        c.mems[0].local[&P][3], 42,
        "the push carries the home's write"
    );
    assert_eq!(c.engines[0].pushes_taken(), 1);
    assert!(
        !c.engines[1].push(P, 0, &mut c.mems[1]).unwrap(),
        "no push to the node that holds the page"
    );
    assert!(
        !c.engines[0].push(P, 2, &mut c.mems[0]).unwrap(),
        "only the home pushes"
    );
}

/// Node 0's write request is on its way when the home pushes it the page: the push wakes
/// the fault, and the request, answered without data, completes with nothing installed.
#[test]
fn a_request_crossing_a_push_is_answered_without_data() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    c.fault(0, Access::Write, 7);
    assert_eq!(c.wire.len(), 1, "the request is in flight");
    assert!(c.engines[1].push(P, 0, &mut c.mems[1]).unwrap());
    c.collect(1);
    // The push (home -> 0) overtakes nothing: the request (0 -> home) crosses it.
    let push = c.wire.pop_back().unwrap();
    assert!(matches!(push.2, Coherence::Push { .. }), "{push:?}");
    c.wire.push_front(push);
    c.deliver_one();
    assert!(c.woken(0, 7), "the push wakes the fault");
    let (_, _, request) = c.deliver_one();
    assert!(matches!(request, Coherence::WriteRequest { .. }));
    let (_, to, answer) = c.deliver_one();
    assert_eq!(to, 0);
    assert!(
        matches!(answer, Coherence::WriteGrant { data: None, .. }),
        "{answer:?}"
    );
    assert_eq!(c.engines[1].requests_crossing_pushes(), 1);
    assert_eq!(c.engines[0].local_state(P), LocalState::Modified);
    c.fault(2, Access::Read, 8);
    c.deliver_all();
    assert!(c.woken(2, 8), "later requests are served as usual");
}

/// Node 0's read request is on its way when the home pushes it the page, and node 2's read
/// reaches the home first: node 2's read downgrades node 0's pushed copy (written back with
/// node 0's write), and node 0's request, served after it, finds a current read-only copy:
/// it completes without installing the page again (the kernel refuses an install over a
/// mapped page, and a reinstall would drop a write made since).
#[test]
fn a_request_crossing_a_push_served_after_a_downgrade_installs_nothing() {
    crossing_request_served_after_a_downgrade(Cluster::new(3, Consistency::Sequential, false));
    // Same-host nodes: the grants carry no data (the master is mapped).
    crossing_request_served_after_a_downgrade(Cluster::same_host(
        3,
        Consistency::Sequential,
        false,
    ));
}

fn crossing_request_served_after_a_downgrade(mut c: Cluster) {
    c.fault(0, Access::Read, 7);
    assert!(c.engines[1].push(P, 0, &mut c.mems[1]).unwrap());
    c.collect(1);
    c.fault(2, Access::Read, 8);
    // In flight: node 0's request, the push, node 2's request. The push arrives first,
    // then node 2's request, then node 0's.
    let mut wire: Vec<_> = c.wire.drain(..).collect();
    assert_eq!(wire.len(), 3, "{wire:?}");
    let (request_0, push, request_2) = (wire.remove(0), wire.remove(0), wire.remove(0));
    assert!(matches!(push.2, Coherence::Push { .. }), "{push:?}");
    c.wire.extend([push, request_2, request_0]);
    c.deliver_one();
    assert!(c.woken(0, 7), "the push wakes the fault");
    c.write(0, 3, 42);
    c.deliver_all();
    let installs = c.seen[0]
        .iter()
        .filter(|a| matches!(a, Action::Install { .. } | Action::MapMaster { .. }))
        .count();
    assert_eq!(installs, 1, "only the push installs the page");
    assert_eq!(c.engines[0].local_state(P), LocalState::Shared);
    assert_eq!(c.mems[0].local[&P][3], 42, "node 0's write is still there");
    assert_eq!(c.mems[1].home[&P][3], 42, "and written back to the master");
    assert!(c.woken(2, 8));
    assert_eq!(c.mems[2].local[&P][3], 42, "node 2 reads it");
}

/// Same-host nodes mapping the masters: a read of a page its home writes shares the home's
/// page (no downgrade: one physical page), and a later write by that reader invalidates the
/// home and upgrades the reader's mapped copy.
#[test]
fn a_reader_mapping_the_master_shares_the_page_its_home_writes() {
    let mut c = Cluster::same_host(3, Consistency::Sequential, false);
    for mem in &mut c.mems {
        mem.maps_masters = true;
    }
    c.fault(1, Access::Write, 1); // The home writes its own page.
    c.deliver_all();
    assert_eq!(c.engines[1].local_state(P), LocalState::Modified);
    c.fault(0, Access::Read, 2);
    assert!(
        matches!(
            c.wire.back(),
            Some((
                0,
                1,
                Coherence::ReadRequest {
                    maps_master: true,
                    ..
                }
            ))
        ),
        "{:?}",
        c.wire.back()
    );
    let answer = c.deliver_all_seen();
    assert!(
        !answer
            .iter()
            .any(|m| matches!(m, Coherence::Downgrade { .. })),
        "the home was downgraded: {answer:?}"
    );
    assert!(c.woken(0, 2));
    assert!(c.seen[0].contains(&Action::MapMaster {
        page: P,
        writable: false
    }));
    assert_eq!(
        c.engines[1].local_state(P),
        LocalState::Modified,
        "still writable"
    );
    assert_eq!(c.engines[1].reads_sharing_the_writers_page(), 1);
    // The reader writes: the home's copy is invalidated, the reader's mapped copy upgraded.
    c.fault(0, Access::Write, 3);
    c.deliver_all();
    assert!(c.woken(0, 3));
    assert!(c.seen[0].contains(&Action::Upgrade { page: P }));
    assert_eq!(c.engines[0].local_state(P), LocalState::Modified);
    assert_eq!(c.engines[1].local_state(P), LocalState::Invalid);
    // A node that does not map the master still downgrades the writer.
    c.mems[2].maps_masters = false;
    c.fault(2, Access::Read, 4);
    let answer = c.deliver_all_seen();
    assert!(
        answer
            .iter()
            .any(|m| matches!(m, Coherence::Downgrade { .. }))
    );
    assert_eq!(c.engines[0].local_state(P), LocalState::Shared);
}

/// Node 0 writes P under a lock and passes it on to node 2, which waits for the lock: P goes
/// back to its home (node 1), which pushes it to node 2. A page written outside any lock is
/// not passed on.
#[test]
fn a_page_written_under_a_lock_reaches_the_next_holder_through_its_home() {
    let mut c = Cluster::new(3, Consistency::Sequential, false);
    let outside = PageId { region: 0, page: 2 }; // Homed on node 2.
    c.engines[0]
        .fault(outside, Access::Write, 1, &mut c.mems[0])
        .unwrap();
    c.collect(0);
    c.deliver_all();
    c.engines[0].lock_acquired(5);
    c.fault(0, Access::Write, 2);
    c.deliver_all();
    c.write(0, 1, 13);
    c.engines[0].lock_released(5);
    assert_eq!(
        c.engines[0]
            .hand_back_written((6, 2), &mut c.mems[0])
            .unwrap(),
        0,
        "another lock's log is empty"
    );
    assert_eq!(
        c.engines[0]
            .hand_back_written((5, 2), &mut c.mems[0])
            .unwrap(),
        1
    );
    c.collect(0);
    c.deliver_all();
    assert_eq!(c.engines[0].local_state(P), LocalState::Invalid);
    assert_eq!(c.engines[0].local_state(outside), LocalState::Modified);
    assert_eq!(c.engines[2].local_state(P), LocalState::Modified);
    assert_eq!(c.mems[2].local[&P][1], 13);
    assert_eq!(
        c.engines[0]
            .hand_back_written((5, 2), &mut c.mems[0])
            .unwrap(),
        0,
        "the log was passed on"
    );
}
