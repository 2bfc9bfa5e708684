//! The home directory after a node failed (sequential pages).
//!
//! A failed node's copies are gone. Read-only ones lose nothing: the invalidation acks it owes
//! count as given, and it leaves every sharer set. A writable one was the page's only current
//! copy (the master is stale): the page is *lost*. Its transaction and every queued request
//! get [`Coherence::PageLost`], and so does every later request, so no node is ever served the
//! stale master. Requests the failed node queued are dropped, and a transaction it asked for
//! completes without its grant.

use dsm_wire::{Coherence, NodeId, PageId};

use super::{Directory, Holders, finish_write};
use crate::config::MutationPoint;
use crate::engine::Ctx;
use crate::memory::Memory;

impl Directory {
    /// `rank` failed (idempotent). Pages are visited in order, so a run replays exactly.
    pub(crate) fn node_failed(&mut self, rank: NodeId, ctx: &mut Ctx<'_>, mem: &mut dyn Memory) {
        if !self.failed.insert(rank) {
            return;
        }
        let mut pages: Vec<PageId> = self.entries.keys().copied().collect();
        pages.sort_unstable();
        for page in pages {
            self.page_node_failed(page, rank, ctx, mem);
        }
    }

    /// The failed node that held `page` writable, if the page is lost.
    pub(crate) fn lost_to(&self, page: PageId) -> Option<NodeId> {
        self.lost.get(&page).copied()
    }

    /// The node the directory sees holding `page` writable (granted or being granted), for
    /// invariant checks.
    pub(crate) fn writer(&self, page: PageId) -> Option<NodeId> {
        match self.entries.get(&page)?.holders {
            Holders::Modified(owner) => Some(owner),
            _ => None,
        }
    }

    fn page_node_failed(
        &mut self,
        page: PageId,
        rank: NodeId,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) {
        let Some(entry) = self.entries.get_mut(&page) else {
            return;
        };
        entry.queue.retain(|request| request.from != rank);
        entry.mapped_readers.remove(&rank);
        if entry.holders == Holders::Modified(rank) {
            if ctx.config.mutated(MutationPoint::ServeLostPages) {
                // The broken variant: serve the stale master copy as if it were current.
                entry.holders = Holders::None;
                if let Some(txn) = entry.txn.take() {
                    entry.queue.push_front(txn.request);
                }
                self.run(page, ctx, mem);
                return;
            }
            self.lose(page, rank, ctx);
            return;
        }
        if let Holders::Shared(set) = &mut entry.holders {
            set.remove(&rank);
        }
        // Only a write waits for read-only holders (a read waits for the writer, above).
        let Some(txn) = entry.txn.as_mut() else {
            return;
        };
        if ctx.config.mutated(MutationPoint::ForgetFailedAcks) || !txn.awaiting.remove(&rank) {
            return;
        }
        if txn.awaiting.is_empty() {
            let txn = entry.txn.take().expect("checked above");
            finish_write(entry, page, txn, &self.failed, ctx, mem);
            self.run(page, ctx, mem);
        }
    }

    /// `page` was writable on the failed `writer`: refuse its transaction, its queue and every
    /// later request.
    fn lose(&mut self, page: PageId, writer: NodeId, ctx: &mut Ctx<'_>) {
        let Some(entry) = self.entries.remove(&page) else {
            return;
        };
        self.lost.insert(page, writer);
        let waiting = entry.txn.map(|txn| txn.request).into_iter();
        for request in waiting.chain(entry.queue) {
            // A push has no requester waiting for an answer.
            if !self.failed.contains(&request.from) && !request.pushed {
                let req = request.req;
                ctx.out
                    .send(request.from, Coherence::PageLost { req, page, writer });
            }
        }
    }
}
