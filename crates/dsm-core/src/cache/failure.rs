//! The requester side after a node failed: only the faults that need it fail.
//!
//! A fetch from a failed home fails its waiters ([`Error::HomeFailed`]); a fetch the home
//! refused because the page is lost ([`Coherence::PageLost`]) fails its waiters with
//! [`Error::PageLost`]. Copies already here stay (reading them needs nobody), and recalls
//! held for the failed home are dropped (nobody awaits their answer).
//!
//! [`Coherence::PageLost`]: dsm_wire::Coherence::PageLost

use dsm_wire::{NodeId, PageId};

use super::Cache;
use crate::actions::Action;
use crate::engine::Ctx;
use crate::error::{Error, Result};

impl Cache {
    /// `home` failed: every fetch from it fails. Pages are visited in order, so a run replays
    /// exactly.
    pub(crate) fn home_failed(&mut self, home: NodeId, ctx: &mut Ctx<'_>) {
        let mut pages: Vec<PageId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.pending.as_ref().is_some_and(|p| p.home == home))
            .map(|(page, _)| *page)
            .collect();
        pages.sort_unstable();
        for page in pages {
            self.fail_fetch(page, &Error::HomeFailed { page, home }, ctx);
        }
        self.held.retain(|(from, _, _)| *from != home);
    }

    /// The home refused request `req` for `page`: the page is lost with `writer`.
    pub(crate) fn on_lost(
        &mut self,
        from: NodeId,
        page: PageId,
        (req, writer): (u64, NodeId),
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        let matches = self.entries.get(&page).is_some_and(|e| {
            e.pending
                .as_ref()
                .is_some_and(|p| p.req == req && !p.reading)
        });
        if !matches {
            return Err(Error::Unexpected {
                from,
                page,
                what: "PageLost without a matching request",
            });
        }
        self.fail_fetch(page, &Error::PageLost { page, writer }, ctx);
        Ok(())
    }

    /// Ends the fetch of `page`, failing every fault waiting on it with `error`.
    fn fail_fetch(&mut self, page: PageId, error: &Error, ctx: &mut Ctx<'_>) {
        let Some(pending) = self.entries.get_mut(&page).and_then(|e| e.pending.take()) else {
            return;
        };
        self.reads.remove(&pending.req);
        for waiter in pending.waiters {
            ctx.out.push(Action::FaultFailed {
                token: waiter.token,
                error: error.clone(),
            });
        }
    }
}
