//! The figures, each run by every node in step (barriers around it); rank 0 measures,
//! rank 1 is the other party, further ranks only pass the barriers. Regions are homed in
//! blocks (node `r` is the home of the `r`-th block of pages), so the pages rank 1 writes in
//! its block are homed and last written there: rank 0's first touch of one is a remote fault
//! served by one request to rank 1. Every value read is checked against what rank 1 wrote.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use dsm::Region;

use super::node::{Bench, WORDS_PER_PAGE, micros_since, phase};

/// Pages per node block of the remote-fault region (128 MiB of address space per node;
/// only the sampled pages are ever touched).
pub(super) const REMOTE_BLOCK_PAGES: usize = 32_768;
/// Rank 0 reads every `REMOTE_STRIDE`-th page of rank 1's block, so a runtime that brings
/// up to 16 neighbouring pages per fault (prefetch) still takes one fault per read.
pub(super) const REMOTE_STRIDE: usize = 16;
/// Pages per node block of the scan region (32 MiB per node, every page read).
pub(super) const SCAN_BLOCK_PAGES: usize = 8_192;
/// Pages per timed slice of the scan (a sample is the slice's time per page).
const SCAN_SLICE: usize = 32;
/// Seed of the scattered order (splitmix64).
pub(super) const SEED: u64 = 0x1a7e_5eed;
/// The lock the hand-off passes, and its warm-up and measured cycles (2 hand-offs each).
pub(super) const LOCK_ID: u32 = 0x1a7e;
const LOCK_WARMUP: usize = 50;
const LOCK_CYCLES: usize = 1_000;

/// Where a node's turn of the lock hand-off goes (its own turns, after the warm-up): waiting
/// in `acquire`, the section (a read and a write of the word), and the release (`drop`).
#[derive(Debug, Default)]
pub(super) struct LockParts {
    pub(super) acquire_us: Vec<f64>,
    pub(super) section_us: Vec<f64>,
    pub(super) release_us: Vec<f64>,
}
/// Longest the hand-off may take in all before it fails.
const LOCK_PHASE_LIMIT: Duration = Duration::from_secs(60);
/// Measured barriers and the warm-up.
const BARRIERS: usize = 2_000;
const BARRIER_WARMUP: usize = 100;

/// Reads rank 0 makes while rank 1 computes, at most, and how long rank 1 computes (rank 0
/// stops [`WINDOW_MARGIN`] before, so that every sample is taken while it does).
const COMPUTING_SAMPLES: usize = 512;
const COMPUTE_WINDOW: Duration = Duration::from_millis(600);
const WINDOW_MARGIN: Duration = Duration::from_millis(100);

/// Keeps the CPU busy until `deadline` with arithmetic on a few cache lines of plain memory
/// (a computing application: no system call, no region access).
fn compute_until(deadline: Instant) {
    let mut cells = [1.0f64; 64];
    while Instant::now() < deadline {
        for _ in 0..1_000 {
            for i in 1..cells.len() {
                cells[i] = black_box(0.5 * (cells[i - 1] + cells[i]) + 1e-9);
            }
        }
    }
    black_box(cells);
}

/// Which run of a figure: the first, with tracing off, or the second, with the runtime's
/// per-hop tracing on (`DSM_TRACE`, 2 nodes only), to break the figure down and to measure
/// what tracing costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Untraced,
    Traced,
}

impl Pass {
    /// Appended to the figure's name (`remote_read_fault_traced`).
    pub(super) fn suffix(self) -> &'static str {
        match self {
            Pass::Untraced => "",
            Pass::Traced => "_traced",
        }
    }

    /// The traced pass reads the pages halfway between the first pass's, never touched yet.
    fn page_offset(self) -> usize {
        match self {
            Pass::Untraced => 0,
            Pass::Traced => REMOTE_STRIDE / 2,
        }
    }
}

/// One timed read of the traced pass: its page and the monotonic clock around it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Access {
    pub(super) page: usize,
    pub(super) start_ns: u64,
    pub(super) end_ns: u64,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the runtime's trace.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    secs * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// The value rank 1 writes in page `page`, which rank 0 checks.
fn stamp(page: usize) -> u64 {
    0xd5a0_0000_0000 | page as u64
}

impl Bench<'_> {
    /// `remote_read_fault_us`: rank 1 writes one word in each sampled page of its block
    /// (every [`REMOTE_STRIDE`]-th, from `pass`'s offset); rank 0, which never touched them,
    /// reads them in a random order, timing each read (one fault each) while rank 1 waits in
    /// the barrier. In the traced pass rank 0 also returns each read's page and the
    /// monotonic clock (the trace's) just before and after it, outside the timed interval.
    pub(super) fn remote_read_fault(
        &mut self,
        region: &Region<u64>,
        pass: Pass,
    ) -> anyhow::Result<(Vec<f64>, Vec<Access>)> {
        phase(&format!("remote_read_fault{}", pass.suffix()));
        let pages: Vec<usize> = (REMOTE_BLOCK_PAGES + pass.page_offset()..2 * REMOTE_BLOCK_PAGES)
            .step_by(REMOTE_STRIDE)
            .collect();
        self.write_pages_at_rank1(region, &pages)?;
        let mut accesses = Vec::new();
        let mut samples = Vec::new();
        if self.rank == 0 {
            let before = self.node.stats();
            let stamps = (pass == Pass::Traced).then_some(&mut accesses);
            samples = time_reads(region, pages, stamps)?;
            let figure = format!("remote_read_fault{}", pass.suffix());
            self.record_counters(&figure, before, samples.len());
        }
        self.node.barrier()?;
        Ok((samples, accesses))
    }

    /// `remote_read_fault_home_computing_us`: as `remote_read_fault_us`, but rank 1 computes
    /// (a loop on plain memory, no library call) for [`COMPUTE_WINDOW`] while rank 0 reads
    /// [`COMPUTING_SAMPLES`] pages from it (every [`REMOTE_STRIDE`]-th from a quarter stride
    /// on, never touched before): the home's service threads must take its CPU from the
    /// application to answer. Only reads that end inside the window count.
    pub(super) fn remote_read_fault_home_computing(
        &mut self,
        region: &Region<u64>,
    ) -> anyhow::Result<Vec<f64>> {
        phase("remote_read_fault_home_computing");
        let pages: Vec<usize> = (REMOTE_BLOCK_PAGES + REMOTE_STRIDE / 4..2 * REMOTE_BLOCK_PAGES)
            .step_by(REMOTE_STRIDE)
            .take(COMPUTING_SAMPLES)
            .collect();
        self.write_pages_at_rank1(region, &pages)?;
        let window = Instant::now();
        let mut samples = Vec::with_capacity(pages.len());
        match self.rank {
            0 => {
                let before = self.node.stats();
                for &page in &shuffled(pages, SEED) {
                    let started = Instant::now();
                    let value = black_box(region.get(page * WORDS_PER_PAGE));
                    if window.elapsed() >= COMPUTE_WINDOW - WINDOW_MARGIN {
                        break;
                    }
                    samples.push(micros_since(started));
                    ensure!(
                        value == stamp(page),
                        "remote read of page {page}: {value:#x}"
                    );
                }
                ensure!(
                    !samples.is_empty(),
                    "no read of a computing home's page ended within {COMPUTE_WINDOW:?}"
                );
                self.record_counters("remote_read_fault_home_computing", before, samples.len());
            }
            1 => compute_until(window + COMPUTE_WINDOW),
            _ => {}
        }
        self.node.barrier()?;
        Ok(samples)
    }

    /// `scan_per_page_us`: rank 1 writes one word in every page of its block; rank 0 reads
    /// them in order, one word per page, timing slices of [`SCAN_SLICE`] pages (a sample is
    /// a slice's time per page, so prefetching shows).
    pub(super) fn scan(&mut self, region: &Region<u64>) -> anyhow::Result<Vec<f64>> {
        phase("scan");
        let pages: Vec<usize> = (SCAN_BLOCK_PAGES..2 * SCAN_BLOCK_PAGES).collect();
        self.write_pages_at_rank1(region, &pages)?;
        let mut samples = Vec::with_capacity(pages.len() / SCAN_SLICE);
        if self.rank == 0 {
            let before = self.node.stats();
            let mut values = [0u64; SCAN_SLICE];
            for slice in pages.chunks(SCAN_SLICE) {
                let started = Instant::now();
                for (value, &page) in values.iter_mut().zip(slice) {
                    *value = region.get(page * WORDS_PER_PAGE);
                }
                samples.push(micros_since(started) / slice.len() as f64);
                for (&value, &page) in values.iter().zip(slice) {
                    ensure!(value == stamp(page), "scan of page {page}: {value:#x}");
                }
            }
            self.record_counters("scan", before, pages.len());
        }
        self.node.barrier()?;
        Ok(samples)
    }

    /// Rank 1 writes [`stamp`] into the first word of each of `pages`; everyone passes a
    /// barrier before (rank 0 is then waiting) and after (the pages are written).
    pub(super) fn write_pages_at_rank1(
        &self,
        region: &Region<u64>,
        pages: &[usize],
    ) -> anyhow::Result<()> {
        self.node.barrier()?;
        if self.rank == 1 {
            for &page in pages {
                region.set(page * WORDS_PER_PAGE, stamp(page));
            }
        }
        self.node.barrier()?;
        Ok(())
    }

    /// `lock_handoff_us`: ranks 0 and 1 take turns holding lock [`LOCK_ID`] and incrementing
    /// the word under it (rank 0 on even values, rank 1 on odd ones; an acquire that finds
    /// it is not its turn releases at once and is counted). A sample is half the time
    /// between two increments by rank 0: one hand-off, i.e. one acquire + increment +
    /// release by one node. Returns the samples and the acquires that found it not their
    /// turn (at rank 0).
    pub(super) fn lock_handoff(
        &mut self,
        word: &Region<u64>,
        pass: Pass,
    ) -> anyhow::Result<(Vec<f64>, u64, LockParts)> {
        phase(&format!("lock_handoff{}", pass.suffix()));
        self.node.barrier()?;
        let mut samples = Vec::with_capacity(LOCK_CYCLES);
        let mut not_my_turn = 0;
        let mut parts = LockParts::default();
        if self.rank < 2 {
            let before = self.node.stats();
            // The traced pass goes on from where the first left the word (an even count).
            let passes = if pass == Pass::Traced { 2 } else { 1 };
            let target = passes * 2 * (LOCK_WARMUP + LOCK_CYCLES) as u64;
            let lock = self.node.lock(LOCK_ID);
            let started = Instant::now();
            let mut last_turn: Option<Instant> = None;
            let mut turns = 0;
            loop {
                let called = Instant::now();
                let guard = lock.acquire()?;
                let acquired = Instant::now();
                let value = word.get(0);
                if value >= target {
                    break;
                }
                let mine = value % 2 == u64::from(self.rank);
                if mine {
                    word.set(0, value + 1);
                    let now = Instant::now();
                    if let Some(last) = last_turn.filter(|_| turns > LOCK_WARMUP) {
                        samples.push((now - last).as_secs_f64() * 1e6 / 2.0);
                    }
                    last_turn = Some(now);
                    turns += 1;
                } else {
                    not_my_turn += 1;
                }
                let section_done = Instant::now();
                drop(guard);
                if mine && turns > LOCK_WARMUP {
                    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
                    parts.acquire_us.push(us(acquired - called));
                    parts.section_us.push(us(section_done - acquired));
                    parts.release_us.push(us(section_done.elapsed()));
                }
                ensure!(
                    started.elapsed() < LOCK_PHASE_LIMIT,
                    "lock hand-off: the word is at {value} of {target} after {LOCK_PHASE_LIMIT:?}"
                );
            }
            if self.rank == 0 {
                let figure = format!("lock_handoff{}", pass.suffix());
                let turns = 2 * (LOCK_WARMUP + LOCK_CYCLES);
                self.record_counters(&figure, before, turns);
            }
        }
        self.node.barrier()?;
        Ok((samples, not_my_turn, parts))
    }

    /// `barrier_us`: every node passes [`BARRIERS`] barriers in a row; rank 0 times each.
    pub(super) fn barriers(&mut self, pass: Pass) -> anyhow::Result<Vec<f64>> {
        phase(&format!("barrier{}", pass.suffix()));
        self.node.barrier()?;
        let before = self.node.stats();
        let samples = self.time_barriers(BARRIER_WARMUP, BARRIERS)?;
        if self.rank == 0 {
            let figure = format!("barrier{}", pass.suffix());
            self.record_counters(&figure, before, BARRIER_WARMUP + BARRIERS);
        }
        Ok(samples)
    }

    /// Every node passes `warmup + count` barriers in a row; each node times the last `count`.
    pub(super) fn time_barriers(&self, warmup: usize, count: usize) -> anyhow::Result<Vec<f64>> {
        let mut samples = Vec::with_capacity(count);
        for i in 0..warmup + count {
            let started = Instant::now();
            self.node
                .barrier()
                .with_context(|| format!("barrier {i} of a timed block"))?;
            if i >= warmup {
                samples.push(micros_since(started));
            }
        }
        Ok(samples)
    }
}

/// Reads one word of each of `pages` (which rank 1 wrote) in a random order, timing each
/// read and checking its value; `stamps` gets each read's page and the monotonic clock (the
/// trace's) just before and after it, outside the timed interval.
pub(super) fn time_reads(
    region: &Region<u64>,
    pages: Vec<usize>,
    mut stamps: Option<&mut Vec<Access>>,
) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(pages.len());
    for page in shuffled(pages, SEED) {
        let start_ns = monotonic_ns();
        let started = Instant::now();
        let value = black_box(region.get(page * WORDS_PER_PAGE));
        samples.push(micros_since(started));
        let end_ns = monotonic_ns();
        if let Some(stamps) = stamps.as_deref_mut() {
            stamps.push(Access {
                page,
                start_ns,
                end_ns,
            });
        }
        ensure!(
            value == stamp(page),
            "remote read of page {page}: {value:#x}, rank 1 wrote {:#x}",
            stamp(page)
        );
    }
    Ok(samples)
}

/// `items` in a random order (Fisher–Yates driven by splitmix64 from `seed`).
fn shuffled<T>(mut items: Vec<T>, seed: u64) -> Vec<T> {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The modulus is at most i + 1, so the remainder fits a usize.
        let j = usize::try_from(z % (i as u64 + 1)).expect("below i + 1");
        items.swap(i, j);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_is_a_permutation_and_moves_things() {
        let order = shuffled((0..1000).collect::<Vec<_>>(), SEED);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(order, sorted);
    }
}
