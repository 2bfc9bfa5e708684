//! Releases and acquires of regions whose writes are found by scanning
//! ([`CoherenceConfig::scan_writes`](crate::CoherenceConfig::scan_writes)).
//!
//! At a release one scan over the tracked copies gives the pages written since the last one
//! (and write-protects them again, atomically). Each is then read once, as a snapshot: the
//! diff against the twin goes home (or, for a home page, is merged into the master in place)
//! and the twin becomes exactly that snapshot. A write that lands after the scan is either in
//! the snapshot (then in this diff, and in the twin) or only after it (then the next scan
//! reports the page and the next diff carries it): never lost. Copies stay installed and
//! tracked across releases; only write notices drop them, and the twin limit
//! ([`CoherenceConfig::twin_limit`](crate::CoherenceConfig::twin_limit)), oldest first. A
//! copy is dropped by taking it away ([`Memory::take_away`]: `UFFDIO_MOVE` in the runtime),
//! then publishing its last bytes, so a store another thread makes meanwhile is either in
//! those bytes or faults and waits.

use dsm_wire::{PAGE_SIZE, PageId};

use super::{SyncWait, Syncs, changed_runs};
use crate::cache::{Cache, LocalState};
use crate::collections::HashMap;
use crate::config::MutationPoint;
use crate::engine::Ctx;
use crate::error::Result;
use crate::memory::Memory;
use crate::region::Located;

impl Syncs {
    /// Release: publishes every tracked copy the scan finds written; past the twin limit the
    /// oldest copies are published and dropped too. `SyncDone` with the notices once the
    /// diffs are acknowledged.
    pub(crate) fn release_scanned(
        &mut self,
        token: u64,
        tracked: &[(PageId, Located)],
        cache: &mut Cache,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        self.check_token(token)?;
        let carried = std::mem::take(&mut self.carried).into_iter().collect();
        let mut wait = SyncWait::new(carried, ctx);
        let located: HashMap<PageId, Located> = tracked.iter().copied().collect();
        let mut written = written_of(&located, mem);
        if ctx.config.mutated(MutationPoint::ScanMissesPage) && !written.is_empty() {
            written.remove(0);
        }
        for (page, loc) in written {
            let mut snapshot = [0u8; PAGE_SIZE];
            mem.snapshot(page, &mut snapshot);
            if self.publish_scanned(page, loc, &snapshot, ctx, mem) {
                wait.notices.push(page);
            }
        }
        if ctx.config.twin_limit > 0 {
            for page in cache.over_limit(ctx.config.twin_limit) {
                let Some(loc) = located.get(&page).copied() else {
                    continue;
                };
                if self.drop_copy(page, loc, cache, ctx, mem) {
                    wait.notices.push(page);
                }
            }
        }
        self.send_batches(token, &mut wait, ctx);
        if ctx.config.mutated(MutationPoint::ForgetNotices) {
            wait.notices.clear();
        }
        self.register(token, wait, ctx);
        Ok(())
    }

    /// Acquire: invalidates the pages named by `notices`; what this node wrote to a named
    /// copy (false sharing) is published first and announced at this node's next release.
    pub(crate) fn acquire_scanned(
        &mut self,
        token: u64,
        notices: &[(PageId, Located)],
        cache: &mut Cache,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        self.check_token(token)?;
        let mut wait = SyncWait::new(Vec::new(), ctx);
        for (page, loc) in notices {
            cache.mark_refetch(*page);
            if cache.state(*page) == LocalState::Invalid {
                continue;
            }
            cache.note_noticed(*page, ctx, *loc);
            if self.drop_copy(*page, *loc, cache, ctx, mem) {
                self.carried.insert(*page);
            }
        }
        self.send_batches(token, &mut wait, ctx);
        self.register(token, wait, ctx);
        Ok(())
    }

    /// Drops this node's copy of `page`, taking it away first (so that no store of another
    /// thread is lost between reading and unmapping) and publishing what changed since its
    /// twin. Returns whether anything changed.
    fn drop_copy(
        &mut self,
        page: PageId,
        loc: Located,
        cache: &mut Cache,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> bool {
        let mut changed = false;
        if cache.tracked.contains(&page) {
            let mut last = [0u8; PAGE_SIZE];
            if mem.take_away(page, &mut last) {
                changed = self.publish_scanned(page, loc, &last, ctx, mem);
            }
        }
        cache.drop_tracked(page, ctx);
        changed
    }

    /// Publishes `current`, the bytes of a written copy: its diff against the twin is queued
    /// for its home, or (home page) merged into the master; the twin becomes `current`.
    /// Returns whether anything changed.
    fn publish_scanned(
        &mut self,
        page: PageId,
        loc: Located,
        current: &[u8; PAGE_SIZE],
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> bool {
        if loc.home == ctx.config.node {
            return self.merge_home(page, current, ctx, mem);
        }
        let runs = changed_runs(mem.twin(page), current, loc.home, ctx);
        if runs.is_empty() {
            return false;
        }
        self.queue_diff(dsm_wire::PageDiff { page, runs }, loc.home, ctx);
        if !ctx.config.mutated(MutationPoint::StaleTwin) {
            mem.twin_mut(page).copy_from_slice(current);
        }
        true
    }
}

/// The pages of `located` the memory reports written (write-protecting them again).
fn written_of(located: &HashMap<PageId, Located>, mem: &mut dyn Memory) -> Vec<(PageId, Located)> {
    if located.is_empty() {
        return Vec::new();
    }
    let mut pages: Vec<PageId> = located.keys().copied().collect();
    pages.sort_unstable();
    mem.take_written(&pages)
        .into_iter()
        .filter_map(|page| Some((page, *located.get(&page)?)))
        .collect()
}
