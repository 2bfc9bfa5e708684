//! Requester and home side of release regions whose writes are found by scanning
//! ([`CoherenceConfig::scan_writes`](crate::CoherenceConfig::scan_writes)).
//!
//! No write ever faults, so every installed copy is writable as far as the engine knows
//! ([`LocalState::Modified`]). What differs is which copies are *tracked* (twinned, write-
//! protected asynchronously, found by the scan at each release):
//! - a page homed elsewhere: always, twinned with the bytes it is installed with;
//! - a page homed here: only once another node fetched it. Until then no other node can hold
//!   or write it, so the home writes it freely: no twin, no scan, no notice (what makes the
//!   bulk of a stencil's pages cost nothing), and its master copy may lag the home's writes.
//!   The first remote fetch therefore publishes the home's copy into the master before the
//!   grant: write-protect first, then snapshot, so a write racing the fetch is either in the
//!   snapshot (and the twin) or reported by the next scan.

use dsm_wire::{PAGE_SIZE, Page, PageId};

use super::{Cache, LocalState};
use crate::actions::Action;
use crate::collections::HashSet;
use crate::engine::Ctx;
use crate::memory::Memory;
use crate::region::Located;

impl Cache {
    /// Installs fetched `data` as a writable copy: write-protected and twinned if tracked,
    /// plainly writable if it is a home page no other node fetched.
    pub(super) fn install_scanned(
        &mut self,
        page: PageId,
        loc: Located,
        data: Page,
        ctx: &mut Ctx<'_>,
    ) {
        let private_home = loc.home == ctx.config.node && !self.shared_home.contains(&page);
        if private_home {
            ctx.out.push(Action::Install {
                page,
                data,
                writable: true,
            });
        } else {
            let twin = data.clone();
            ctx.out.push(Action::Install {
                page,
                data,
                writable: false,
            });
            ctx.out.push(Action::Twin { page, data: twin });
            self.track(page);
        }
        self.settling.insert(page);
        self.set_state(page, LocalState::Modified);
    }

    /// Home side, before granting `page` to another node: from now on the page is tracked
    /// here. A copy this node holds untracked is published into the master first and becomes
    /// tracked, with the published bytes as its twin.
    pub(crate) fn share_home_page(
        &mut self,
        page: PageId,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) {
        if !self.shared_home.insert(page) {
            return;
        }
        if self.state(page) == LocalState::Invalid || self.tracked.contains(&page) {
            return;
        }
        mem.write_protect(page);
        let mut snapshot = Box::new([0u8; PAGE_SIZE]);
        mem.snapshot(page, &mut snapshot);
        mem.home_page_mut(page).copy_from_slice(&snapshot[..]);
        ctx.out.push(Action::Twin {
            page,
            data: snapshot,
        });
        self.track(page);
    }

    fn track(&mut self, page: PageId) {
        self.tracked.insert(page);
        self.tracked_order.push_back(page);
        if self.tracked_order.len() > 2 * self.tracked.len() + 64 {
            // Forget entries of pages dropped since, so the queue stays near the set's size.
            let tracked = &self.tracked;
            let mut seen = HashSet::default();
            self.tracked_order
                .retain(|p| tracked.contains(p) && seen.insert(*p));
        }
    }

    /// The oldest-installed tracked pages beyond `limit`, to evict.
    pub(crate) fn over_limit(&mut self, limit: usize) -> Vec<PageId> {
        let mut victims = Vec::new();
        while self.tracked.len() - victims.len() > limit {
            let Some(page) = self.tracked_order.pop_front() else {
                break;
            };
            if self.tracked.contains(&page) && !victims.contains(&page) {
                victims.push(page);
            }
        }
        victims
    }

    /// Forgets a tracked copy (invalidated): its twin goes too.
    pub(crate) fn drop_tracked(&mut self, page: PageId, ctx: &mut Ctx<'_>) {
        if self.tracked.remove(&page) {
            ctx.out.push(Action::DropTwin { page });
        }
        ctx.out.push(Action::Invalidate { page });
        self.set_state(page, LocalState::Invalid);
    }
}
