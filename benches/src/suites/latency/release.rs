//! `release_one_diff_us` (issue #14): what a release costs that publishes one changed word of
//! a page homed on the other node. Over TCP its diff travels to the home, and the release
//! waits for the home's acknowledgement; a same-host writer merges it into the home's master
//! copy itself (`diffs_merged_in_place` in the counters) and waits for nobody.

use std::time::Instant;

use anyhow::ensure;
use dsm::Region;

use super::node::{Bench, WORDS_PER_PAGE, micros_since, phase};

/// The lock only rank 0 takes here, its warm-up and measured releases.
const RELEASE_LOCK_ID: u32 = 0x1a7f;
const RELEASE_WARMUP: usize = 50;
const RELEASES: usize = 1_000;

impl Bench<'_> {
    /// `release_one_diff_us`: rank 0 takes lock [`RELEASE_LOCK_ID`], writes one word of the
    /// page rank 1 is the home of in `region` (release consistency, one page per node) and
    /// releases it; a sample is the release (the guard's drop, which returns once the write
    /// is published). Rank 1 waits in a barrier meanwhile.
    pub(super) fn release_one_diff(&mut self, region: &Region<u64>) -> anyhow::Result<Vec<f64>> {
        phase("release_one_diff");
        self.node.barrier()?;
        let mut samples = Vec::with_capacity(RELEASES);
        if self.rank == 0 {
            let before = self.node.stats();
            let lock = self.node.lock(RELEASE_LOCK_ID);
            let word = WORDS_PER_PAGE; // the first word of rank 1's page
            for i in 0..RELEASE_WARMUP + RELEASES {
                let guard = lock.acquire()?;
                region.set(word, i as u64 + 1);
                let started = Instant::now();
                drop(guard);
                if i >= RELEASE_WARMUP {
                    samples.push(micros_since(started));
                }
            }
            self.record_counters("release_one_diff", before, RELEASE_WARMUP + RELEASES);
        }
        self.node.barrier()?;
        let last = (RELEASE_WARMUP + RELEASES) as u64;
        ensure!(
            region.get(WORDS_PER_PAGE) == last,
            "rank {} reads {} after rank 0's last release of {last}",
            self.rank,
            region.get(WORDS_PER_PAGE)
        );
        Ok(samples)
    }
}
