//! Release mode at sync points: diffs against twins at release, write notices out, and
//! invalidation of the pages named by notices at acquire.
//!
//! A release sends the diffs of its dirty pages to their homes, one batch per home, and completes (with
//! [`Action::SyncDone`]) once every diff is acknowledged, so that by the time the notices reach
//! an acquirer, the home copies hold the writes they announce. An acquire invalidates the named
//! pages; a named page this node is itself writing (false sharing) is diffed to its home first,
//! and announced at this node's next release.
//!
//! A page this node is the home of is published in place (see [`crate::in_place`]): its
//! changes go straight into the master copy, with no message, no write-protection and no
//! fresh twin, and the page stays writable into the next interval. A home page that no
//! release found changed [`KEEP_IDLE_RELEASES`] times in a row goes back to the ordinary
//! path (write-protected, twin dropped), so idle pages cost nothing at later releases.

use std::collections::{BTreeMap, BTreeSet};

use dsm_wire::{Coherence, DiffRun, MAX_BATCH_PAGES, NodeId, PAGE_SIZE, PageDiff, PageId};

use crate::actions::Action;
use crate::cache::{Cache, LocalState};
use crate::collections::HashMap;
use crate::config::{Consistency, MutationPoint};
use crate::engine::Ctx;
use crate::error::{Error, Result};
use crate::in_place;
use crate::memory::Memory;
use crate::region::Located;

mod scanned;

/// Releases in a row that may find a home page written in place unchanged before it is
/// write-protected again. Two covers pages written every other interval (double-buffered
/// stencils alternate between two grids).
pub const KEEP_IDLE_RELEASES: u32 = 2;

/// A sync call waiting for diff acks.
#[derive(Debug)]
struct SyncWait {
    remaining: usize,
    notices: Vec<PageId>,
    peer: NodeId,
    since: u64,
}

/// Sync calls in progress and diffs in flight.
#[derive(Debug, Default)]
pub(crate) struct Syncs {
    waits: HashMap<u64, SyncWait>,
    /// Diff request id → the sync token it belongs to.
    diffs: HashMap<u64, u64>,
    /// Pages diffed at an acquire, to announce at the next release.
    carried: BTreeSet<PageId>,
    /// Home pages kept writable across releases: releases in a row that found them unchanged.
    kept: HashMap<PageId, u32>,
    next_req: u64,
    /// Pages whose changes were published so far (diffs sent, home pages merged in place).
    pub(crate) published: u64,
    /// Scanned writes: diffs of the sync in progress, per home, to send as batches.
    batches: BTreeMap<NodeId, Vec<PageDiff>>,
}

impl SyncWait {
    /// A sync of this node starting now, announcing `notices`, with nothing in flight yet.
    fn new(notices: Vec<PageId>, ctx: &Ctx<'_>) -> Self {
        SyncWait {
            remaining: 0,
            notices,
            peer: ctx.config.node,
            since: ctx.now,
        }
    }
}

impl Syncs {
    /// A sync call may not reuse the token of one still in progress.
    fn check_token(&self, token: u64) -> Result<()> {
        if self.waits.contains_key(&token) {
            return Err(Error::SyncTokenInUse(token));
        }
        Ok(())
    }

    /// Release: diff every dirty page to its home; `SyncDone` with the notices once acked.
    pub(crate) fn release(
        &mut self,
        token: u64,
        dirty: &[(PageId, Located)],
        cache: &mut Cache,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        self.check_token(token)?;
        let carried = std::mem::take(&mut self.carried).into_iter().collect();
        let mut wait = SyncWait::new(carried, ctx);
        for (page, loc) in dirty {
            if self.keeps(*page, *loc, ctx) {
                if self.publish_in_place(*page, ctx, mem) {
                    wait.notices.push(*page);
                }
                continue; // Still writable, dirty, with its (refreshed) twin.
            }
            self.kept.remove(page);
            if self.flush(*page, *loc, cache, ctx, mem) {
                wait.notices.push(*page);
            }
            cache.set_state(*page, LocalState::Shared);
        }
        self.send_batches(token, &mut wait, ctx);
        if ctx.config.mutated(MutationPoint::ForgetNotices) {
            wait.notices.clear();
        }
        self.register(token, wait, ctx);
        Ok(())
    }

    /// Acquire: invalidate the pages named by `notices` (already located, release mode only).
    pub(crate) fn acquire(
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
            debug_assert_eq!(loc.consistency, Consistency::Release);
            cache.mark_refetch(*page);
            match cache.state(*page) {
                LocalState::Invalid => continue,
                LocalState::Modified => {
                    self.kept.remove(page);
                    if self.flush(*page, *loc, cache, ctx, mem) {
                        self.carried.insert(*page);
                    }
                }
                // Release-mode pages are never exclusive (sequential mode only).
                LocalState::Shared | LocalState::Exclusive => {}
            }
            cache.note_noticed(*page, ctx, *loc);
            ctx.out.push(Action::Invalidate { page: *page });
            cache.set_state(*page, LocalState::Invalid);
        }
        self.send_batches(token, &mut wait, ctx);
        self.register(token, wait, ctx);
        Ok(())
    }

    /// True when a dirty page is published in place at this release: it is homed here and has
    /// not been idle for [`KEEP_IDLE_RELEASES`] releases.
    fn keeps(&self, page: PageId, loc: Located, ctx: &Ctx<'_>) -> bool {
        loc.home == ctx.config.node
            && self
                .kept
                .get(&page)
                .is_none_or(|idle| *idle < KEEP_IDLE_RELEASES)
    }

    /// Merges the changes of a home page into its master copy and refreshes its twin, leaving
    /// the page writable. Returns whether anything changed.
    fn publish_in_place(&mut self, page: PageId, ctx: &Ctx<'_>, mem: &mut dyn Memory) -> bool {
        let mut snapshot = [0u8; PAGE_SIZE];
        mem.snapshot(page, &mut snapshot);
        let changed = self.merge_home(page, &snapshot, ctx, mem);
        let idle = self.kept.entry(page).or_default();
        *idle = if changed { 0 } else { *idle + 1 };
        changed
    }

    /// Merges the bytes where `current` differs from the twin of home page `page` into its
    /// master copy (other writers' diffs to other bytes stay) and makes `current` the twin.
    /// Returns whether anything changed.
    fn merge_home(
        &mut self,
        page: PageId,
        current: &[u8; PAGE_SIZE],
        ctx: &Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> bool {
        let twin = *mem.twin(page);
        let changed = in_place::merge(&twin, current, mem.home_page_mut(page));
        self.published += u64::from(changed);
        if changed && !ctx.config.mutated(MutationPoint::StaleTwin) {
            mem.twin_mut(page).copy_from_slice(current);
        }
        changed
    }

    /// Forgets the pages of a freed region.
    pub(crate) fn remove_region(&mut self, region: u32) {
        self.kept.retain(|page, _| page.region != region);
        self.carried.retain(|page| page.region != region);
    }

    /// Diffs a dirty page against its twin and queues the diff for its home (sent by
    /// [`Syncs::send_batches`]). Returns whether anything changed. The page stays installed,
    /// write-protected, without a twin.
    fn flush(
        &mut self,
        page: PageId,
        loc: Located,
        cache: &mut Cache,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> bool {
        mem.write_protect(page);
        let runs = changed_runs(mem.twin(page), mem.local_page(page), loc.home, ctx);
        ctx.out.push(Action::DropTwin { page });
        cache.dirty.remove(&page);
        if runs.is_empty() {
            return false;
        }
        self.queue_diff(PageDiff { page, runs }, loc.home, ctx);
        true
    }

    /// Queues `diff` for its `home` ([`Syncs::send_batches`]), or, for a same-host home whose
    /// master copies this node maps, has the driver merge it in place at once
    /// ([`Action::MergeMaster`]): no message, no ack to wait for.
    fn queue_diff(&mut self, diff: PageDiff, home: NodeId, ctx: &mut Ctx<'_>) {
        self.published += 1;
        if ctx.config.writes_master_of(home) {
            ctx.out.push(Action::MergeMaster { home, diff });
            return;
        }
        self.batches.entry(home).or_default().push(diff);
    }

    /// Sends the queued diffs for each home in as few messages as the frame size allows
    /// ([`Coherence::DiffBatch`]), each one more ack for sync `token` to wait for.
    fn send_batches(&mut self, token: u64, wait: &mut SyncWait, ctx: &mut Ctx<'_>) {
        for (home, diffs) in std::mem::take(&mut self.batches) {
            for diffs in split_batch(diffs) {
                self.next_req += 1;
                let req = self.next_req;
                self.diffs.insert(req, token);
                wait.remaining += 1;
                wait.peer = home;
                ctx.out.send(home, Coherence::DiffBatch { req, diffs });
            }
        }
    }

    fn register(&mut self, token: u64, wait: SyncWait, ctx: &mut Ctx<'_>) {
        if wait.remaining == 0 {
            ctx.out.push(Action::SyncDone {
                token,
                notices: wait.notices,
            });
        } else {
            self.waits.insert(token, wait);
        }
    }

    /// The home applied one of our diffs.
    pub(crate) fn diff_ack(
        &mut self,
        from: NodeId,
        page: PageId,
        req: u64,
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        let Some(token) = self.diffs.remove(&req) else {
            return Err(Error::Unexpected {
                from,
                page,
                what: "diff ack of no diff",
            });
        };
        let wait = self
            .waits
            .get_mut(&token)
            .expect("a diff belongs to a sync");
        wait.remaining -= 1;
        if wait.remaining == 0 {
            let wait = self.waits.remove(&token).expect("present");
            ctx.out.push(Action::SyncDone {
                token,
                notices: wait.notices,
            });
        }
        Ok(())
    }

    /// Every sync waiting longer than `limit` ticks, as timeout errors.
    pub(crate) fn overdue(&self, now: u64, limit: u64) -> impl Iterator<Item = Error> + '_ {
        self.waits.values().filter_map(move |wait| {
            let ticks = now.saturating_sub(wait.since);
            (ticks > limit).then_some(Error::Timeout {
                waiting_for: "diff acks of a release or acquire",
                page: PageId {
                    region: u32::MAX,
                    page: 0,
                },
                peer: wait.peer,
                ticks,
            })
        })
    }
}

/// Bytes of diff data per batch: well inside the wire's 1 MiB body limit.
const BATCH_BYTES: usize = 512 * 1024;

/// Cuts `diffs` into batches of at most [`MAX_BATCH_PAGES`] pages and about
/// [`BATCH_BYTES`] bytes each.
fn split_batch(diffs: Vec<PageDiff>) -> Vec<Vec<PageDiff>> {
    let mut batches: Vec<Vec<PageDiff>> = Vec::new();
    let mut bytes = 0;
    for diff in diffs {
        let size = 16 + diff.runs.iter().map(|r| 6 + r.bytes.len()).sum::<usize>();
        match batches.last_mut() {
            Some(batch) if batch.len() < MAX_BATCH_PAGES && bytes + size <= BATCH_BYTES => {
                batch.push(diff);
            }
            _ => {
                batches.push(vec![diff]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    batches
}

/// The runs of a page's diff for `home`: [`diff`], or (mutation `MergeWholePage`, for a
/// home merged into in place) the whole page.
fn changed_runs(
    twin: &[u8; PAGE_SIZE],
    current: &[u8; PAGE_SIZE],
    home: NodeId,
    ctx: &Ctx<'_>,
) -> Vec<DiffRun> {
    let runs = diff(twin, current);
    if !runs.is_empty()
        && ctx.config.writes_master_of(home)
        && ctx.config.mutated(MutationPoint::MergeWholePage)
    {
        return vec![DiffRun {
            offset: 0,
            bytes: current.to_vec(),
        }];
    }
    runs
}

/// The runs of bytes where `current` differs from `twin`, exactly (no gap merging: an unchanged
/// byte written back could overwrite another writer's change at the home).
pub fn diff(twin: &[u8; PAGE_SIZE], current: &[u8; PAGE_SIZE]) -> Vec<DiffRun> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < PAGE_SIZE {
        if twin[i] == current[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < PAGE_SIZE && twin[i] != current[i] {
            i += 1;
        }
        runs.push(DiffRun {
            offset: u16::try_from(start).expect("page offsets fit in u16"),
            bytes: current[start..i].to_vec(),
        });
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::diff;
    use dsm_wire::PAGE_SIZE;

    #[test]
    fn diff_finds_exact_runs() {
        let twin = [0u8; PAGE_SIZE];
        let mut page = twin;
        assert!(diff(&twin, &page).is_empty());
        page[0] = 1;
        page[1] = 2;
        page[3] = 3;
        page[PAGE_SIZE - 1] = 4;
        let runs = diff(&twin, &page);
        let summary: Vec<(u16, Vec<u8>)> = runs.into_iter().map(|r| (r.offset, r.bytes)).collect();
        assert_eq!(
            summary,
            vec![(0, vec![1, 2]), (3, vec![3]), (4095, vec![4])]
        );
    }
}
