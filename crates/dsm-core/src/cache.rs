//! Requester side: this node's copy of every page it touched, and its outstanding fetches.
//!
//! A page has at most one request in flight; faults on it meanwhile join as waiters. When the
//! data arrives the page is installed, every waiter whose access is now allowed is woken, and
//! the others start the next request (a write fault that joined a read fetch).
//!
//! An invalidation or downgrade that reaches a page whose data is not settled yet (a one-sided
//! read in flight, or an install emitted in this very call and not yet applied by the driver)
//! is held and answered by [`CoherenceEngine::poll`](crate::CoherenceEngine::poll): answering reads the local
//! copy, which must be the installed one, with the woken thread's access done.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use dsm_wire::{Coherence, MAX_BATCH_PAGES, NodeId, Page, PageId};

use crate::actions::{Access, Action};
use crate::collections::{HashMap, HashSet};
use crate::config::{Consistency, MutationPoint};
use crate::engine::Ctx;
use crate::error::{Error, Result};
use crate::memory::Memory;
use crate::region::Located;

mod failure;
mod lock_log;
mod scanned;

/// This node's copy of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LocalState {
    /// Not here: any access faults.
    #[default]
    Invalid,
    /// Read-only (sequential S; release mode: clean).
    Shared,
    /// Writable (sequential M; release mode: dirty, with a twin).
    Modified,
    /// Sequential mode: the only copy, mapped read-only, as the home sees a writable one. A
    /// read fault on a page that migrates between writers asks it so (see `Entry::migrates`);
    /// this node's first write makes it Modified here, with no message.
    Exclusive,
}

impl LocalState {
    fn allows(self, access: Access) -> bool {
        match access {
            Access::Read => self != LocalState::Invalid,
            Access::Write => self == LocalState::Modified,
        }
    }
}

/// The pages right after `page` in its region that a prefetch of `loc.prefetch` pages (the
/// faulting one included) may ask for, in order.
fn pages_after(page: PageId, loc: Located) -> impl Iterator<Item = PageId> {
    let last = page
        .page
        .saturating_add(loc.prefetch.max(1) - 1)
        .min(loc.pages.saturating_sub(1));
    (page.page.saturating_add(1)..=last).map(move |index| PageId {
        region: page.region,
        page: index,
    })
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    token: u64,
    access: Access,
}

/// Which pages a read fault prefetches ([`Cache::prefetch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefetch {
    /// The fault continues an in-order scan: the missing pages after it.
    Scan,
    /// Another node's write took the faulting page from this node (dropped at a barrier,
    /// or named by a write notice): the pages after it taken alike, the run this node read
    /// before, likely read again in the same order.
    Taken,
}

/// The request in flight for a page.
#[derive(Debug)]
struct Pending {
    req: u64,
    /// What was asked of the home (a write request, or a read request).
    asked: Access,
    waiters: Vec<Waiter>,
    /// A one-sided read of the home copy is in flight.
    reading: bool,
    /// Sequential mode: asked writable for a read fault (the page migrates): installed
    /// Exclusive unless a write joined.
    for_read: bool,
    /// Release mode: an acquire named this page while the fetch was in flight, so the data
    /// may predate the writes it announced; fetch again.
    refetch: bool,
    home: NodeId,
    since: u64,
}

#[derive(Debug, Default)]
struct Entry {
    state: LocalState,
    pending: Option<Pending>,
    /// Sequential mode: read-only because this node's writable copy was downgraded (another
    /// node read the page after this node wrote it), since no other change of state. Such a
    /// page is likely written here again (see [`Cache::prefetch_upgrades`]).
    downgraded: bool,
    /// Sequential mode: another node's write took this node's copy of a page this node wrote
    /// (its writable copy, or the read-only one left when another node read it): the page
    /// migrates between writers (read, then written, under a lock say), so the next read fault
    /// asks it writable (read for ownership) and saves the write fault's round trip after it.
    migrates: bool,
    /// Sequential mode: another node's write took this node's read-only copy (it was
    /// invalidated while shared): the page is likely written again before this node reads
    /// it next, so a copy of it is dropped at the next barrier ([`Cache::drop_consumed`]).
    consumed: bool,
    /// The home's version of the read-only copy held or last held here.
    version: u64,
    /// The version of the copy dropped at a barrier, until the page is granted again.
    dropped_at: Option<u64>,
    /// Release mode: a write notice took this node's copy, and the page was not granted
    /// again since.
    noticed: bool,
}

impl Entry {
    /// Whether another node's write took this node's copy of the page since it was last
    /// granted here (dropped at a barrier, or named by a write notice): a read fault on it
    /// prefetches the pages after it taken alike ([`Prefetch::Taken`]).
    fn taken(&self) -> bool {
        self.dropped_at.is_some() || self.noticed
    }

    /// Sequential mode: a read-only copy is granted at `version` by its home (elsewhere).
    /// Returns whether to drop it at the next barrier, and whether it had been dropped for
    /// nothing (granted back at the version it was dropped at: nobody wrote the page
    /// meanwhile, so it is no longer dropped).
    fn read_copy_granted(&mut self, version: u64) -> (bool, bool) {
        let wasted = self.dropped_at.take() == Some(version);
        if wasted {
            self.consumed = false;
        }
        self.version = version;
        (self.consumed, wasted)
    }
}

/// This node's pages.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    entries: HashMap<PageId, Entry>,
    /// Sequential mode: (region, home) pairs whose pages this node maps from their masters
    /// ([`Memory::local_is_master`], learnt at a fault; the runtime maps every page of a home
    /// in a region, or none), said in read requests, prefetched pages' included.
    maps_masters_of: HashSet<(u32, NodeId)>,
    /// One-sided reads in flight: token → page.
    reads: HashMap<u64, PageId>,
    /// Release mode: pages written since the last release (they have twins).
    pub(crate) dirty: BTreeSet<PageId>,
    /// Release mode with scanned writes: installed pages with a twin, whose writes the scans
    /// at releases and acquires find (see [`crate::scanned`]).
    pub(crate) tracked: BTreeSet<PageId>,
    /// Release mode with scanned writes: pages homed here that another node fetched.
    pub(crate) shared_home: HashSet<PageId>,
    /// Release mode with scanned writes: tracked pages in the order they were installed
    /// (entries of pages dropped since are skipped), to evict the oldest past the twin limit.
    pub(crate) tracked_order: VecDeque<PageId>,
    /// Pages whose install or upgrade was emitted in the current call.
    settling: BTreeSet<PageId>,
    /// Invalidations and downgrades waiting for their page to settle.
    held: VecDeque<(NodeId, PageId, Coherence)>,
    next_req: u64,
    /// Per region: the last page homed elsewhere a thread read-faulted on, to spot scans.
    last_demand: HashMap<u32, u32>,
    /// Write requests sent ahead of any write fault (`prefetch_upgrades`).
    pub(crate) upgrades_prefetched: u64,
    /// Read faults that asked their page writable because it migrates.
    pub(crate) reads_for_ownership: u64,
    /// Sequential mode: per lock, the pages made writable here under it, which its next
    /// holder gets ([`lock_log`]).
    pub(crate) lock_log: lock_log::LockLog,
    /// Pages given back unasked whose home may still have a recall of them in flight (it
    /// arrives before any later grant of the page: FIFO per pair).
    handed_back: HashSet<PageId>,
    /// Recalls that crossed a hand-back of their page (the home sent them first).
    pub(crate) recalls_crossing_hand_backs: u64,
    /// Pages installed writable because their home pushed them.
    pub(crate) pushes_taken: u64,
    /// Sequential mode: read-only copies granted while their page was `consumed`, to drop
    /// at the next barrier (each checked again then). A set in page order: bounded by the
    /// pages cached here however long a program goes without a barrier, and a drop's pages
    /// come out as runs (one `madvise` each).
    droppable: BTreeSet<PageId>,
    /// Read-only copies dropped at barriers ([`Cache::drop_consumed`]).
    pub(crate) copies_dropped: u64,
    /// Of those, copies granted back at the version they were dropped at (nobody wrote the
    /// page meanwhile: dropped for nothing, so the page is no longer dropped).
    pub(crate) drops_wasted: u64,
    /// Invalidations that reached this node after it had dropped their page (the home sent
    /// them before the drop reached it).
    pub(crate) invalidations_crossing_drops: u64,
}

impl Cache {
    pub(crate) fn state(&self, page: PageId) -> LocalState {
        self.entries
            .get(&page)
            .map_or(LocalState::Invalid, |e| e.state)
    }

    pub(crate) fn set_state(&mut self, page: PageId, state: LocalState) {
        let entry = self.entries.entry(page).or_default();
        entry.state = state;
        entry.downgraded = false;
    }

    /// Marks an in-flight release-mode fetch of `page` stale (see `Pending::refetch`).
    pub(crate) fn mark_refetch(&mut self, page: PageId) {
        if let Some(pending) = self.entries.get_mut(&page).and_then(|e| e.pending.as_mut()) {
            pending.refetch = true;
        }
    }

    /// A fault on `page`.
    pub(crate) fn fault(
        &mut self,
        page: PageId,
        loc: Located,
        waiter: (u64, Access),
        ctx: &mut Ctx<'_>,
    ) {
        let (token, access) = waiter;
        let entry = self.entries.entry(page).or_default();
        if entry.state.allows(access) {
            ctx.out.push(Action::Wake { token });
            return;
        }
        if let Some(pending) = &mut entry.pending {
            pending.waiters.push(Waiter { token, access });
            return;
        }
        if entry.state == LocalState::Exclusive {
            // The only copy already: writable here, with no message.
            ctx.out.push(Action::Upgrade { page });
            entry.state = LocalState::Modified;
            self.settling.insert(page);
            self.log_written(page, loc);
            ctx.out.push(Action::Wake { token });
            return;
        }
        let sequential = loc.consistency == Consistency::Sequential;
        if sequential && access == Access::Read && std::mem::take(&mut entry.migrates) {
            self.reads_for_ownership += 1;
            let waiters = vec![Waiter { token, access }];
            self.request_for(page, loc, (waiters, true), ctx).for_read = true;
            return;
        }
        let scanned = ctx.config.scan_writes;
        if loc.consistency == Consistency::Release && entry.state == LocalState::Shared && !scanned
        {
            // First write of the interval to a clean page: twin it, no message.
            self.start_writing(page, ctx);
            ctx.out.push(Action::Wake { token });
            return;
        }
        self.request(page, loc, vec![Waiter { token, access }], ctx);
    }

    fn start_writing(&mut self, page: PageId, ctx: &mut Ctx<'_>) {
        ctx.out.push(Action::MakeTwin { page });
        ctx.out.push(Action::Upgrade { page });
        self.settling.insert(page);
        self.dirty.insert(page);
        self.set_state(page, LocalState::Modified);
    }

    /// Read prefetch after a read fault on `page` (homed elsewhere): asks the same home for
    /// the pages after it, as reads with nobody waiting, while each is missing here, has no
    /// fetch in flight and has that home; at most `loc.prefetch` pages in all. When the fault
    /// continues an in-order scan ([`Prefetch::Scan`]: the previous fault in the region was
    /// on the page before, or the page before was the last one the previous prefetch asked),
    /// any such page; when another node's write took the faulting page from this node
    /// ([`Prefetch::Taken`]: dropped at a barrier, or named by a write notice), only pages
    /// taken alike: the run this node read before, likely read again in the same order (a
    /// stencil's neighbour row, in one round trip from its first fault instead of two).
    ///
    /// Not on every fault: whether a prefetched page is used cannot be seen (it is mapped
    /// before the access, which then does not fault), so a rule like "prefetch what was here
    /// before" keeps refetching pages that were touched once and never again (measured: 8
    /// pages per iteration instead of 1 on a row-split stencil whose setup read past its
    /// rows). A dropped page is one that was read here, then written elsewhere, then read
    /// here again; one granted back unchanged is not dropped again.
    pub(crate) fn prefetch(
        &mut self,
        page: PageId,
        (loc, rule): (Located, Prefetch),
        locate: impl Fn(PageId) -> Option<Located>,
        ctx: &mut Ctx<'_>,
    ) {
        let mut last_asked = None;
        for next in pages_after(page, loc) {
            let entry = self.entries.get(&next);
            let missing =
                entry.is_none_or(|e| e.state == LocalState::Invalid && e.pending.is_none());
            let wanted = match rule {
                Prefetch::Scan => true,
                Prefetch::Taken => entry.is_some_and(Entry::taken),
            };
            let same_home = locate(next).is_some_and(|l| l.home == loc.home);
            if !(missing && wanted && same_home) {
                break;
            }
            self.request(next, loc, Vec::new(), ctx);
            last_asked = Some(next);
        }
        // The scan goes on from the last page asked: the fault on the page after it
        // continues the scan (otherwise every other fault of a scan asks one page).
        if let Some(last) = last_asked {
            self.note_read_fault(last);
        }
    }

    /// Which read prefetch a read fault on `page` (homed elsewhere) starts, if any (see
    /// [`Cache::prefetch`]); call it before the fault is recorded.
    pub(crate) fn prefetch_rule(&self, page: PageId) -> Option<Prefetch> {
        let taken = self.entries.get(&page).is_some_and(Entry::taken);
        match (self.continues_scan(page), taken) {
            (true, _) => Some(Prefetch::Scan),
            (false, true) => Some(Prefetch::Taken),
            (false, false) => None,
        }
    }

    /// Release mode: a write notice took this node's copy of `page`; see
    /// [`Prefetch::Taken`].
    pub(crate) fn note_noticed(&mut self, page: PageId, ctx: &Ctx<'_>, loc: Located) {
        if loc.home != ctx.config.node {
            self.entries.entry(page).or_default().noticed = true;
        }
    }

    /// Sequential mode, after a write fault on `page` that upgrades this node's read-only
    /// copy: asks the same home for write access to the pages right after it as well, with
    /// nobody waiting, while each is read-only here *because this node's writable copy was
    /// downgraded* (it wrote the page, another node read it since), has no request in flight
    /// and has that home; at most `loc.prefetch` pages in all. The invalidations of the other
    /// copies then travel together and one round trip upgrades the run.
    ///
    /// Why not only after two write faults in order, as reads do: a compiled row loop writes
    /// a row's pages 1st, 4th, 2nd, 3rd (peeled ends first). Why only downgraded pages: a
    /// page this node wrote and a neighbour then read is the producer-consumer pattern of
    /// every iteration; any other read-only copy may be one this node never writes, and
    /// taking it writable would only cost its readers their copies.
    pub(crate) fn prefetch_upgrades(
        &mut self,
        page: PageId,
        loc: Located,
        locate: impl Fn(PageId) -> Option<Located>,
        ctx: &mut Ctx<'_>,
    ) {
        for next in pages_after(page, loc) {
            let written_here = self.entries.get(&next).is_some_and(|e| {
                e.state == LocalState::Shared && e.downgraded && e.pending.is_none()
            });
            let same_home = locate(next).is_some_and(|l| l.home == loc.home);
            if !(written_here && same_home) {
                break;
            }
            self.upgrades_prefetched += 1;
            self.request_for(next, loc, (Vec::new(), true), ctx);
        }
    }

    /// Sequential mode, at a barrier: drops this node's read-only copies of pages homed
    /// elsewhere that other nodes' writes took from it before (`Entry::consumed`), and tells
    /// each home in one [`Coherence::Dropped`]. In a producer-consumer pattern (a stencil's
    /// boundary rows: read here in one iteration, written by their home in a later one) the
    /// home's next write then upgrades its copy with no invalidation round trip, instead of
    /// waiting for this node to answer one while it computes or sleeps. Dropping a read-only
    /// copy is always allowed; a page that nobody wrote before it is read here again cost a
    /// fetch, and stops being dropped (`Entry::read_copy_granted`). Copies with a request,
    /// a recall or an install in progress stay. Returns how many were dropped.
    pub(crate) fn drop_consumed(
        &mut self,
        locate: impl Fn(PageId) -> Option<Located>,
        ctx: &mut Ctx<'_>,
    ) -> usize {
        let mut by_home: BTreeMap<NodeId, Vec<PageId>> = BTreeMap::new();
        for page in std::mem::take(&mut self.droppable) {
            let Some(loc) = locate(page).filter(|l| l.consistency == Consistency::Sequential)
            else {
                continue; // Its region was freed (or its home failed).
            };
            let recalled = self.held.iter().any(|(_, p, _)| *p == page);
            let Some(entry) = self.entries.get_mut(&page) else {
                continue;
            };
            let idle = entry.state == LocalState::Shared && entry.pending.is_none();
            if !idle || !entry.consumed || recalled || self.settling.contains(&page) {
                continue;
            }
            // The broken variant tells the home but keeps its copy.
            if !ctx.config.mutated(MutationPoint::DropKeepsCopy) {
                entry.dropped_at = Some(entry.version);
                ctx.out.push(Action::Invalidate { page });
                self.set_state(page, LocalState::Invalid);
            }
            by_home.entry(loc.home).or_default().push(page);
        }
        let mut dropped = 0;
        for (home, pages) in by_home {
            dropped += pages.len();
            for chunk in pages.chunks(MAX_BATCH_PAGES) {
                let pages = chunk.to_vec();
                ctx.out.send(home, Coherence::Dropped { pages });
            }
        }
        self.copies_dropped += dropped as u64;
        dropped
    }

    /// True when a read fault on `page` comes right after a read fault on the page before
    /// it, or right after the last page a prefetch asked (asked before this fault is
    /// recorded with [`Cache::note_read_fault`]).
    pub(crate) fn continues_scan(&self, page: PageId) -> bool {
        page.page > 0 && self.last_demand.get(&page.region) == Some(&(page.page - 1))
    }

    /// Records that this node's copy of sequential `page` is its home's master itself (the
    /// same memory), and so are the other pages of that home in its region, for the read
    /// requests it sends.
    pub(crate) fn note_maps_master(&mut self, page: PageId, home: NodeId) {
        self.maps_masters_of.insert((page.region, home));
    }

    /// Records a read fault on a page homed elsewhere, the only kind a scan is made of (a
    /// write fault on this node's own page next to a neighbour's row is not a scan).
    pub(crate) fn note_read_fault(&mut self, page: PageId) {
        self.last_demand.insert(page.region, page.page);
    }

    fn request(&mut self, page: PageId, loc: Located, waiters: Vec<Waiter>, ctx: &mut Ctx<'_>) {
        let wants_write = waiters.iter().any(|w| w.access == Access::Write);
        self.request_for(page, loc, (waiters, wants_write), ctx);
    }

    /// Asks `page`'s home for it: writable if `wants_write` (sequential mode), else readable.
    /// Returns the request now pending.
    fn request_for(
        &mut self,
        page: PageId,
        loc: Located,
        (waiters, wants_write): (Vec<Waiter>, bool),
        ctx: &mut Ctx<'_>,
    ) -> &mut Pending {
        self.next_req += 1;
        let req = self.next_req;
        let entry = self.entries.entry(page).or_default();
        let (asked, message) = if loc.consistency == Consistency::Sequential && wants_write {
            let has_copy = entry.state == LocalState::Shared;
            let message = Coherence::WriteRequest {
                req,
                page,
                has_copy,
            };
            (Access::Write, message)
        } else {
            let maps_master = self.maps_masters_of.contains(&(page.region, loc.home));
            let message = Coherence::ReadRequest {
                req,
                page,
                maps_master,
            };
            (Access::Read, message)
        };
        ctx.out.send(loc.home, message);
        entry.pending.insert(Pending {
            req,
            asked,
            waiters,
            reading: false,
            for_read: false,
            refetch: false,
            home: loc.home,
            since: ctx.now,
        })
    }

    /// A grant from the home. Everything is checked before anything changes. `mapped`: this
    /// node's copy of `page` is its master ([`Memory::local_is_master`]), so a grant without
    /// data maps it ([`Action::MapMaster`]) rather than reading it.
    pub(crate) fn on_grant(
        &mut self,
        from: NodeId,
        (page, mapped): (PageId, bool),
        loc: Located,
        grant: (Access, u64, u64, Option<Page>),
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        let (kind, req, version, data) = grant;
        let entry = self.entries.get_mut(&page);
        let Some(entry) = entry.filter(|e| {
            e.pending
                .as_ref()
                .is_some_and(|p| p.req == req && p.asked == kind && !p.reading)
        }) else {
            return Err(Error::Unexpected {
                from,
                page,
                what: "grant without a matching request",
            });
        };
        let sequential = loc.consistency == Consistency::Sequential;
        entry.noticed = false;
        if sequential && kind == Access::Read && from != ctx.config.node {
            let (droppable, wasted) = entry.read_copy_granted(version);
            if droppable {
                self.droppable.insert(page);
            }
            self.drops_wasted += u64::from(wasted);
        }
        let one_sided = ctx.config.reads_master_of(from);
        // A recall from before a hand-back would have come before this grant.
        self.handed_back.remove(&page);
        match data {
            // A request that crossed a push of the page: it is writable here already.
            None if entry.state == LocalState::Modified => self.finish(page, loc, ctx),
            Some(_) if entry.state == LocalState::Modified => {
                return Err(Error::Unexpected {
                    from,
                    page,
                    what: "grant with data of a page writable here",
                });
            }
            // A read request that crossed a push of the page and was served after another
            // request downgraded the pushed copy: this read-only copy is the one the home
            // just had written back, so there is nothing to install (installing would map
            // over a mapped page, which the kernel refuses).
            _ if sequential && entry.state == LocalState::Shared && kind == Access::Read => {
                self.finish(page, loc, ctx);
            }
            Some(data) => self.complete(page, loc, Some(data), ctx),
            None if kind == Access::Write && entry.state == LocalState::Shared => {
                // Upgrade: our read-only copy is current.
                ctx.out.push(Action::Upgrade { page });
                entry.state = LocalState::Modified;
                entry.downgraded = false;
                self.settling.insert(page);
                self.log_written(page, loc);
                self.finish(page, loc, ctx);
            }
            // Not installed here (a read-only copy upgrades above), and the copy is the
            // master itself: map it.
            None if one_sided && mapped && sequential => self.complete(page, loc, None, ctx),
            None if one_sided => {
                entry.pending.as_mut().expect("checked").reading = true;
                self.reads.insert(req, page);
                ctx.out.push(Action::ReadPage {
                    home: from,
                    page,
                    token: req,
                });
            }
            None => {
                return Err(Error::Unexpected {
                    from,
                    page,
                    what: "grant without data to a node that has no copy",
                });
            }
        }
        Ok(())
    }

    /// The home pushes `page` writable ([`Coherence::Push`]): installed now, waking the
    /// faults waiting for it; a request of ours in flight stays pending until the home
    /// answers it (without data). The home pushes only to a node it sees without a copy.
    pub(crate) fn on_push(
        &mut self,
        from: NodeId,
        page: PageId,
        loc: Located,
        data: Page,
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        let entry = self.entries.entry(page).or_default();
        let reading = entry.pending.as_ref().is_some_and(|p| p.reading);
        if entry.state != LocalState::Invalid || reading || self.settling.contains(&page) {
            return Err(Error::Unexpected {
                from,
                page,
                what: "push of a page this node holds or is reading",
            });
        }
        ctx.out.push(Action::Install {
            page,
            data,
            writable: true,
        });
        self.settling.insert(page);
        entry.state = LocalState::Modified;
        entry.downgraded = false;
        let waiters = entry
            .pending
            .as_mut()
            .map(|p| std::mem::take(&mut p.waiters));
        for waiter in waiters.into_iter().flatten() {
            ctx.out.push(Action::Wake {
                token: waiter.token,
            });
        }
        self.handed_back.remove(&page);
        self.pushes_taken += 1;
        // Pushed for the lock about to come here (or held): a page to pass on with it.
        if loc.consistency == Consistency::Sequential {
            self.lock_log.pushed(page);
        }
        Ok(())
    }

    /// Which page a one-sided read token belongs to.
    pub(crate) fn read_page_of(&self, token: u64) -> Result<PageId> {
        self.reads
            .get(&token)
            .copied()
            .ok_or(Error::UnknownReadToken(token))
    }

    /// A one-sided read completed.
    pub(crate) fn on_page_read(
        &mut self,
        token: u64,
        loc: Located,
        data: Page,
        ctx: &mut Ctx<'_>,
    ) -> Result<()> {
        let page = self.read_page_of(token)?;
        self.reads.remove(&token);
        let pending = self.entries.get_mut(&page).and_then(|e| e.pending.as_mut());
        pending
            .expect("a read token belongs to a pending fetch")
            .reading = false;
        self.complete(page, loc, Some(data), ctx);
        Ok(())
    }

    /// The page's data is here (`None`: in this node's copy, which is the master itself):
    /// install it (or fetch again if it went stale).
    fn complete(&mut self, page: PageId, loc: Located, data: Option<Page>, ctx: &mut Ctx<'_>) {
        let entry = self.entries.get_mut(&page).expect("pending entry");
        let pending = entry.pending.as_mut().expect("pending entry");
        if pending.refetch {
            let waiters = std::mem::take(&mut pending.waiters);
            entry.pending = None;
            self.request(page, loc, waiters, ctx);
            return;
        }
        let scanned = loc.consistency == Consistency::Release && ctx.config.scan_writes;
        let data = match data {
            Some(data) if scanned => {
                self.install_scanned(page, loc, data, ctx);
                self.finish(page, loc, ctx);
                return;
            }
            // Only sequential pages are mapped from their masters (`Memory::local_is_master`).
            other => other,
        };
        let wants_write = pending.waiters.iter().any(|w| w.access == Access::Write);
        let writable = match loc.consistency {
            Consistency::Sequential => pending.asked == Access::Write,
            Consistency::Release => wants_write,
        };
        // Asked writable for a read fault, and nobody writes yet: the only copy, read-only.
        let exclusive = writable && pending.for_read && !wants_write;
        // Release mode installs read-only and twins before unprotecting: the install wakes the
        // faulting thread, whose writes must not reach the twin.
        let release = loc.consistency == Consistency::Release;
        let writable_now = writable && !release && !exclusive;
        ctx.out.push(match data {
            Some(data) => Action::Install {
                page,
                data,
                writable: writable_now,
            },
            None => Action::MapMaster {
                page,
                writable: writable_now,
            },
        });
        self.settling.insert(page);
        if writable && release {
            ctx.out.push(Action::MakeTwin { page });
            ctx.out.push(Action::Upgrade { page });
            self.dirty.insert(page);
        }
        entry.state = match (writable, exclusive) {
            (true, true) => LocalState::Exclusive,
            (true, false) => LocalState::Modified,
            (false, _) => LocalState::Shared,
        };
        entry.downgraded = false;
        if entry.state == LocalState::Modified {
            self.log_written(page, loc);
        }
        self.finish(page, loc, ctx);
    }

    /// Wakes the waiters the page now allows; the rest start the next request.
    fn finish(&mut self, page: PageId, loc: Located, ctx: &mut Ctx<'_>) {
        let entry = self.entries.get_mut(&page).expect("pending entry");
        let pending = entry.pending.take().expect("pending entry");
        let state = entry.state;
        let (ready, rest): (Vec<Waiter>, Vec<Waiter>) = pending
            .waiters
            .into_iter()
            .partition(|w| state.allows(w.access));
        for waiter in ready {
            ctx.out.push(Action::Wake {
                token: waiter.token,
            });
        }
        for waiter in rest {
            self.fault(page, loc, (waiter.token, waiter.access), ctx);
        }
    }

    /// Records that `page` became writable here, under the locks this node holds.
    fn log_written(&mut self, page: PageId, loc: Located) {
        if loc.consistency == Consistency::Sequential {
            self.lock_log.written(page);
        }
    }

    /// Sequential mode: gives this node's writable copy of `page` back to its home unasked
    /// ([`Coherence::HandBack`]) and keeps no copy; the next read fault here asks it
    /// writable (it migrates). Returns false, changing nothing, unless the page is writable
    /// here, homed elsewhere, settled and has no request or recall waiting.
    pub(crate) fn hand_back(
        &mut self,
        (page, next): (PageId, Option<NodeId>),
        loc: Located,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> bool {
        let home = loc.home;
        let idle = self
            .entries
            .get(&page)
            .is_some_and(|e| e.state == LocalState::Modified && e.pending.is_none());
        let recalled = self.held.iter().any(|(_, p, _)| *p == page);
        let sequential = loc.consistency == Consistency::Sequential;
        if !idle || !sequential || home == ctx.config.node || recalled || self.unsettled(page) {
            return false;
        }
        let in_place = ctx.config.writes_master_of(home);
        let data = Cache::give_contents((page, home), in_place, ctx, mem);
        ctx.out.push(Action::Invalidate { page });
        self.set_state(page, LocalState::Invalid);
        self.entries.entry(page).or_default().migrates = true;
        self.handed_back.insert(page);
        ctx.out.send(home, Coherence::HandBack { page, data, next });
        true
    }

    /// Write-protects this node's copy of `page` (so no write of another thread is left out
    /// of what follows) and gives its contents to `home`: into the master copy in place
    /// (`None`: here, when this node is the home, else by [`Action::WriteMaster`] into a
    /// same-host home's master), or as a copy to send.
    fn give_contents(
        (page, home): (PageId, NodeId),
        in_place: bool,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Option<Page> {
        mem.write_protect(page);
        let mapped =
            mem.local_is_master(page) || ctx.config.mutated(MutationPoint::CopyTakenForMaster);
        if in_place && mapped {
            // Written where the home reads it already: the copy here is the master.
            return None;
        }
        if in_place && home == ctx.config.node {
            mem.store_local_as_master(page);
            return None;
        }
        let copy: Page = Box::new(*mem.local_page(page));
        if !in_place {
            return Some(copy);
        }
        ctx.out.push(Action::WriteMaster {
            home,
            page,
            data: copy,
        });
        None
    }

    /// Sequential mode: the home invalidates or downgrades our copy. Held while the page is
    /// not settled; else answered now.
    pub(crate) fn on_recall(
        &mut self,
        from: NodeId,
        page: PageId,
        message: Coherence,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        let state = self.state(page);
        if let Coherence::Downgrade { .. } = message {
            let pending = self.entries.get(&page).and_then(|e| e.pending.as_ref());
            let held = matches!(state, LocalState::Modified | LocalState::Exclusive);
            let handed_back = self.handed_back.contains(&page);
            if !held && !handed_back && !pending.is_some_and(|p| p.reading) {
                return Err(Error::Unexpected {
                    from,
                    page,
                    what: "downgrade of a page this node does not hold writable",
                });
            }
        }
        if self.unsettled(page) {
            self.held.push_back((from, page, message));
            return Ok(());
        }
        self.answer_recall(from, page, message, ctx, mem);
        Ok(())
    }

    fn unsettled(&self, page: PageId) -> bool {
        self.reading(page) || self.settling.contains(&page)
    }

    fn reading(&self, page: PageId) -> bool {
        let pending = self.entries.get(&page).and_then(|e| e.pending.as_ref());
        pending.is_some_and(|p| p.reading)
    }

    fn answer_recall(
        &mut self,
        home: NodeId,
        page: PageId,
        message: Coherence,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) {
        let state = self.state(page);
        // An exclusive copy is given back as a writable one would be (the home sees one).
        let modified = matches!(state, LocalState::Modified | LocalState::Exclusive);
        let handed_back = self.handed_back.remove(&page);
        self.recalls_crossing_hand_backs += u64::from(handed_back);
        if handed_back && !modified && matches!(message, Coherence::Downgrade { .. }) {
            // Crossed the hand-back, which the home took as this downgrade's answer.
            return;
        }
        let written = state == LocalState::Modified;
        // This node wrote the page, and since then another node read it (downgrade) or wants
        // to write it: read here and written there in turn, the page migrates.
        let was_downgraded = self.entries.get(&page).is_some_and(|e| e.downgraded);
        let migrates = written || (state == LocalState::Shared && was_downgraded);
        let own_home = home == ctx.config.node;
        // The answer carries no page when the master is written in place: here, by the
        // home itself, or by a same-host writer that maps its home's master copies.
        let in_place = modified && (own_home || ctx.config.writes_master_of(home));
        let downgrade = matches!(message, Coherence::Downgrade { .. });
        let data = match modified || downgrade {
            true => Cache::give_contents((page, home), in_place, ctx, mem),
            false => None,
        };
        match (message, data) {
            (Coherence::Invalidate { req, .. }, data) => {
                if state != LocalState::Invalid {
                    ctx.out.push(Action::Invalidate { page });
                }
                self.set_state(page, LocalState::Invalid);
                let entry = self.entries.entry(page).or_default();
                let crossed_drop = state == LocalState::Invalid && entry.dropped_at.is_some();
                self.invalidations_crossing_drops += u64::from(crossed_drop);
                entry.migrates = migrates || handed_back;
                // A copy only read here, taken by another node's write.
                entry.consumed |= state == LocalState::Shared && !was_downgraded && !own_home;
                let answer = match in_place {
                    true => Coherence::MasterWritten { req, page },
                    false => Coherence::InvalidateAck { req, page, data },
                };
                ctx.out.send(home, answer);
            }
            (Coherence::Downgrade { req, .. }, data) => {
                self.set_state(page, LocalState::Shared);
                self.entries.entry(page).or_default().downgraded = written;
                let answer = match data {
                    Some(data) => Coherence::WriteBack { req, page, data },
                    None => Coherence::MasterWritten { req, page },
                };
                ctx.out.send(home, answer);
            }
            _ => unreachable!("only invalidations and downgrades are recalls"),
        }
    }

    /// Ends a call: what was installed is now applied by the driver. Returns whether held
    /// recalls can be answered.
    pub(crate) fn settle(&mut self) -> bool {
        self.settling.clear();
        self.held.iter().any(|(_, page, _)| !self.unsettled(*page))
    }

    /// Answers the held recalls whose page has settled.
    pub(crate) fn answer_held(&mut self, ctx: &mut Ctx<'_>, mem: &mut dyn Memory) {
        let held = std::mem::take(&mut self.held);
        for (home, page, message) in held {
            if self.unsettled(page) {
                self.held.push_back((home, page, message));
            } else {
                self.answer_recall(home, page, message, ctx, mem);
            }
        }
    }

    /// True when recalls are held.
    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// True when a held recall can be answered once the driver applied this call's actions
    /// (those waiting for a one-sided read wait for `on_page_read` instead).
    pub(crate) fn has_answerable(&self) -> bool {
        self.held.iter().any(|(_, page, _)| !self.reading(*page))
    }

    /// Every request waiting longer than `limit` ticks, as timeout errors.
    pub(crate) fn overdue(&self, now: u64, limit: u64) -> impl Iterator<Item = Error> + '_ {
        self.entries.iter().filter_map(move |(page, entry)| {
            let pending = entry.pending.as_ref()?;
            let ticks = now.saturating_sub(pending.since);
            (ticks > limit).then_some(Error::FaultTimeout {
                page: *page,
                home: pending.home,
                ticks,
            })
        })
    }

    /// Forgets the pages of a freed region.
    pub(crate) fn remove_region(&mut self, region: u32) {
        self.entries.retain(|page, _| page.region != region);
        self.maps_masters_of.retain(|(r, _)| *r != region);
        self.reads.retain(|_, page| page.region != region);
        self.dirty.retain(|page| page.region != region);
        self.tracked.retain(|page| page.region != region);
        self.tracked_order.retain(|page| page.region != region);
        self.shared_home.retain(|page| page.region != region);
        self.held.retain(|(_, page, _)| page.region != region);
        self.last_demand.remove(&region);
        self.lock_log.remove_region(region);
        self.handed_back.retain(|page| page.region != region);
        self.droppable.retain(|page| page.region != region);
    }
}
