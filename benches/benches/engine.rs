//! Criterion bench `engine`: the coherence engine's own CPU cost on the remote read fault's
//! path, in memory (no threads, no system calls): what the node pays besides the transport
//! and the kernel. The figures through the real runtime come from `dsm-bench latency --json`.
//!
//! Two sequential-mode engines; node 1 is the home of every page and node 0 reads the homes'
//! master copies itself (same-host peers, as `DSM_TRANSPORT=shm` pairs them). One iteration
//! takes one page through the cycle a stencil's boundary row goes through:
//! * node 1 write-faults the page (it takes it writable: invalidating node 0's copy);
//! * node 0 read-faults it: its request; the home's downgrade of its own copy into its
//!   master; the grant without data; node 0's copy out of the master; the install.
//!
//! `remote_read_cycle` runs it over 1024 pages in turn (maps of realistic size).

use std::collections::VecDeque;

use criterion::{Criterion, criterion_group, criterion_main};
use dsm_core::{
    Access, Action, CoherenceConfig, CoherenceEngine, Consistency, Memory, Placement, RegionLayout,
};
use dsm_wire::{Coherence, NodeId, PAGE_SIZE, Page, PageId};

const PAGES: u32 = 1024;

/// A node's pages in plain vectors, by page number: its copies and, at the home, the masters.
struct Pages {
    local: Vec<Page>,
    home: Vec<Page>,
}

impl Pages {
    fn new() -> Self {
        let zeroed = || (0..2 * PAGES).map(|_| Box::new([0u8; PAGE_SIZE])).collect();
        Pages {
            local: zeroed(),
            home: zeroed(),
        }
    }
}

impl Memory for Pages {
    fn local_page(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        &self.local[page.page as usize]
    }
    fn write_protect(&mut self, _page: PageId) {}
    fn twin(&self, _page: PageId) -> &[u8; PAGE_SIZE] {
        unreachable!("sequential mode makes no twins")
    }
    fn twin_mut(&mut self, _page: PageId) -> &mut [u8; PAGE_SIZE] {
        unreachable!("sequential mode makes no twins")
    }
    fn home_page(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        &self.home[page.page as usize]
    }
    fn home_page_mut(&mut self, page: PageId) -> &mut [u8; PAGE_SIZE] {
        &mut self.home[page.page as usize]
    }
}

struct Pair {
    engines: [CoherenceEngine; 2],
    pages: [Pages; 2],
    wire: VecDeque<(NodeId, NodeId, Coherence)>,
}

impl Pair {
    fn new() -> Self {
        let engines = [0, 1].map(|node| {
            let mut config = CoherenceConfig::new(node, 2);
            // Node 0 maps node 1's masters: grants come without data, write-backs in place.
            config.homes_read = if node == 0 { vec![1] } else { Vec::new() };
            config.readers_of_home = if node == 1 { vec![0] } else { Vec::new() };
            let mut engine = CoherenceEngine::new(config);
            engine
                .add_region(RegionLayout {
                    id: 0,
                    pages: 2 * PAGES,
                    consistency: Consistency::Sequential,
                    // Pages PAGES.. are node 1's.
                    placement: Placement::Block,
                    prefetch: 1,
                })
                .expect("a fresh region");
            engine
        });
        Pair {
            engines,
            pages: [Pages::new(), Pages::new()],
            wire: VecDeque::new(),
        }
    }

    /// Applies node `n`'s actions as a driver would; one-sided reads complete at once.
    fn apply(&mut self, n: usize) {
        loop {
            let actions = self.engines[n].take_actions();
            if actions.is_empty() {
                return;
            }
            let mut reads = Vec::new();
            for action in actions {
                match action {
                    Action::Send { to, message } => {
                        let from = NodeId::try_from(n).expect("two nodes");
                        self.wire.push_back((from, to, message));
                    }
                    Action::Install { page, data, .. } => {
                        self.pages[n].local[page.page as usize] = data;
                    }
                    Action::ReadPage { home, page, token } => {
                        let master = self.pages[home as usize].home[page.page as usize].clone();
                        reads.push((token, master));
                    }
                    _ => {}
                }
            }
            for (token, data) in reads {
                self.engines[n]
                    .on_page_read(token, data, &mut self.pages[n])
                    .expect("a read the engine asked for");
            }
        }
    }

    fn settle(&mut self) {
        while let Some((from, to, message)) = self.wire.pop_front() {
            let to = to as usize;
            self.engines[to]
                .on_message(from, message, &mut self.pages[to])
                .expect("a protocol message");
            self.apply(to);
        }
    }

    fn fault(&mut self, n: usize, page: u32, access: Access, token: u64) {
        let page = PageId {
            region: 0,
            page: PAGES + page,
        };
        self.engines[n]
            .fault(page, access, token, &mut self.pages[n])
            .expect("a fault in range");
        self.apply(n);
        self.settle();
    }
}

fn remote_read_cycle(c: &mut Criterion) {
    let mut pair = Pair::new();
    let mut page = 0;
    let mut token = 0;
    c.bench_function("remote_read_cycle", |b| {
        b.iter(|| {
            token += 2;
            pair.fault(1, page, Access::Write, token);
            pair.fault(0, page, Access::Read, token + 1);
            page = (page + 1) % PAGES;
        });
    });
    let settled = (0..PAGES).all(|p| {
        let id = PageId {
            region: 0,
            page: PAGES + p,
        };
        pair.engines[0].local_state(id) != dsm_core::LocalState::Modified
    });
    assert!(settled, "node 0 never holds node 1's pages writable here");
}

criterion_group!(benches, remote_read_cycle);
criterion_main!(benches);
