//! The engine: one node's coherence state, fed events, producing actions.

use std::collections::BTreeSet;

use dsm_wire::{Coherence, NodeId, Page, PageId};

use crate::actions::{Access, Action, Outbox};
use crate::cache::{Cache, LocalState};
use crate::collections::HashSet;
use crate::config::{CoherenceConfig, Consistency, RegionLayout};
use crate::directory::{self, Directory, Returned};
use crate::error::{Error, Result};
use crate::memory::Memory;
use crate::region::{Located, Regions};
use crate::release::Syncs;

/// What the parts of the engine share while handling one event.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) config: &'a CoherenceConfig,
    pub(crate) now: u64,
    pub(crate) out: &'a mut Outbox,
}

/// Borrows the shared parts of an engine as a [`Ctx`], leaving the others free.
macro_rules! ctx {
    ($engine:ident) => {
        Ctx {
            config: &$engine.config,
            now: $engine.now,
            out: &mut $engine.out,
        }
    };
}

/// One node's coherence engine (sans-IO). See the [crate docs](crate) for how a driver uses it.
#[derive(Debug)]
pub struct CoherenceEngine {
    config: CoherenceConfig,
    regions: Regions,
    directory: Directory,
    cache: Cache,
    syncs: Syncs,
    out: Outbox,
    now: u64,
    /// Nodes declared failed ([`CoherenceEngine::node_failed`]): their messages are dropped.
    failed: BTreeSet<NodeId>,
}

/// Loopback messages one call may generate; far above what the protocol produces (a few per
/// page touched), so hitting it means an engine bug.
const LOOPBACK_BOUND: usize = 1 << 20;

impl CoherenceEngine {
    /// An engine with no regions.
    pub fn new(config: CoherenceConfig) -> Self {
        assert!(config.node < config.nodes, "node rank outside the cluster");
        CoherenceEngine {
            out: Outbox::new(config.node),
            config,
            regions: Regions::default(),
            directory: Directory::default(),
            cache: Cache::default(),
            syncs: Syncs::default(),
            now: 0,
            failed: BTreeSet::new(),
        }
    }

    /// This engine's configuration.
    pub fn config(&self) -> &CoherenceConfig {
        &self.config
    }

    /// Adds a region (after MALLOC); every node adds the same layout.
    pub fn add_region(&mut self, layout: RegionLayout) -> Result<()> {
        self.regions.add(layout)
    }

    /// Forgets a region (after FREE) and every state of its pages.
    pub fn remove_region(&mut self, id: u32) -> Result<()> {
        let page = PageId {
            region: id,
            page: 0,
        };
        self.regions
            .remove(id)
            .ok_or(Error::UnknownRegion { page })?;
        self.directory.remove_region(id);
        self.cache.remove_region(id);
        self.syncs.remove_region(id);
        Ok(())
    }

    /// The home node of `page`.
    pub fn home_of(&self, page: PageId) -> Result<NodeId> {
        Ok(self.locate(page)?.home)
    }

    /// Sequential mode: read faults that asked their page writable because it migrates
    /// between writers (read for ownership; `Cache::fault`).
    pub fn reads_for_ownership(&self) -> u64 {
        self.cache.reads_for_ownership
    }

    /// Sequential mode: write requests sent ahead of a write fault so far (the pages after
    /// an upgraded one that this node wrote before, see [`CoherenceEngine::fault`]).
    pub fn upgrades_prefetched(&self) -> u64 {
        self.cache.upgrades_prefetched
    }

    /// Release mode: pages whose changes this node published so far (diffs sent to homes,
    /// home pages merged into their master in place).
    pub fn pages_published(&self) -> u64 {
        self.syncs.published
    }

    /// This node's copy of `page` as the engine sees it (for invariant checks and debugging).
    pub fn local_state(&self, page: PageId) -> LocalState {
        self.cache.state(page)
    }

    /// A thread faulted on `page`; `token` names it in the [`Action::Wake`] that resumes it.
    ///
    /// A read fault on a page homed elsewhere that continues an in-order scan (the previous
    /// such read fault in its region was on the page before) also prefetches (region setting
    /// [`RegionLayout::prefetch`](crate::RegionLayout::prefetch)): the pages right after it
    /// that are missing here and have the same home are fetched as reads with nobody
    /// waiting, in the same burst of requests, so their round trips overlap. So does a read
    /// fault on a page another node's write took from this node (dropped at a barrier, see
    /// [`drop_consumed_copies`](Self::drop_consumed_copies), or named by a write notice),
    /// for the pages after it taken alike.
    ///
    /// In sequential mode a write fault that upgrades a read-only copy does the same for
    /// writes: the pages right after it (up to the same setting) that are read-only here
    /// because this node wrote them and another node read them since, with the same home,
    /// are asked writable with nobody waiting, so the invalidations of a row's pages go out
    /// together (see `Cache::prefetch_upgrades`).
    pub fn fault(
        &mut self,
        page: PageId,
        access: Access,
        token: u64,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        let loc = self.locate(page)?;
        self.begin_call();
        if self.failed.contains(&loc.home) && self.needs_home(page, loc, access) {
            let error = Error::HomeFailed {
                page,
                home: loc.home,
            };
            self.out.push(Action::FaultFailed { token, error });
            return self.end_call(mem);
        }
        let remote_read = access == Access::Read && loc.home != self.config.node;
        let prefetch = match remote_read && loc.prefetch > 1 {
            true => self.cache.prefetch_rule(page),
            false => None,
        };
        if remote_read {
            self.cache.note_read_fault(page);
            if loc.consistency == Consistency::Sequential && mem.local_is_master(page) {
                self.cache.note_maps_master(page, loc.home);
            }
        }
        let upgrading = access == Access::Write
            && loc.consistency == Consistency::Sequential
            && loc.prefetch > 1
            && self.cache.state(page) == LocalState::Shared;
        let mut ctx = ctx!(self);
        self.cache.fault(page, loc, (token, access), &mut ctx);
        if upgrading {
            let regions = &self.regions;
            let nodes = self.config.nodes;
            let locate = |p| regions.locate(p, nodes).ok();
            self.cache.prefetch_upgrades(page, loc, locate, &mut ctx);
        }
        if let Some(rule) = prefetch {
            let regions = &self.regions;
            let nodes = self.config.nodes;
            let locate = |p| regions.locate(p, nodes).ok();
            self.cache.prefetch(page, (loc, rule), locate, &mut ctx);
        }
        self.end_call(mem)
    }

    /// A coherence message from `from` (a peer; this node's own messages never leave it).
    /// Malformed for the protocol → a typed error and no state change.
    pub fn on_message(
        &mut self,
        from: NodeId,
        message: Coherence,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        self.begin_call();
        self.handle(from, message, mem)?;
        self.end_call(mem)
    }

    /// A one-sided read asked for by [`Action::ReadPage`] completed with `data`.
    pub fn on_page_read(&mut self, token: u64, data: Page, mem: &mut dyn Memory) -> Result<()> {
        let page = self.cache.read_page_of(token)?;
        let loc = self.locate(page)?;
        self.begin_call();
        let mut ctx = ctx!(self);
        self.cache.on_page_read(token, loc, data, &mut ctx)?;
        self.end_call(mem)
    }

    /// An acquire (lock grant, barrier release) carrying write notices: the named pages of
    /// release-mode regions are invalidated. Completes with [`Action::SyncDone`] for `token`.
    /// Unknown pages → error, nothing changed.
    pub fn acquire(&mut self, token: u64, notices: &[PageId], mem: &mut dyn Memory) -> Result<()> {
        let mut named = Vec::with_capacity(notices.len());
        let mut seen = HashSet::with_capacity_and_hasher(notices.len(), Default::default());
        for page in notices {
            let loc = self.locate(*page)?;
            if loc.consistency == Consistency::Release && seen.insert(*page) {
                named.push((*page, loc));
            }
        }
        self.begin_call();
        let mut ctx = ctx!(self);
        if self.config.scan_writes {
            self.syncs
                .acquire_scanned(token, &named, &mut self.cache, &mut ctx, mem)?;
        } else {
            self.syncs
                .acquire(token, &named, &mut self.cache, &mut ctx, mem)?;
        }
        self.end_call(mem)
    }

    /// A release (lock release, barrier arrival): diffs go to the homes, and
    /// [`Action::SyncDone`] for `token` carries the write notices once they are applied. A
    /// barrier is a release, then an acquire with the notices of every node.
    pub fn release(&mut self, token: u64, mem: &mut dyn Memory) -> Result<()> {
        let pages = if self.config.scan_writes {
            &self.cache.tracked
        } else {
            &self.cache.dirty
        };
        let pages: Vec<(PageId, Located)> = pages
            .iter()
            .filter_map(|page| Some((*page, self.locate(*page).ok()?)))
            .collect();
        self.begin_call();
        let mut ctx = ctx!(self);
        if self.config.scan_writes {
            self.syncs
                .release_scanned(token, &pages, &mut self.cache, &mut ctx, mem)?;
        } else {
            self.syncs
                .release(token, &pages, &mut self.cache, &mut ctx, mem)?;
        }
        self.end_call(mem)
    }

    /// This node acquired `lock`: pages that become writable here until the matching
    /// [`lock_released`](Self::lock_released) are logged under it for
    /// [`hand_back_written`](Self::hand_back_written), and so are pages pushed here while
    /// it is held (or just before: a push comes ahead of the grant it goes with).
    pub fn lock_acquired(&mut self, lock: u32) {
        self.cache.lock_log.acquired(lock);
    }

    /// This node released `lock` (after passing its pages on, if a node waited). Its log is
    /// kept: when the lock goes to a node that asks for it later, what this node still
    /// holds writable goes with it.
    pub fn lock_released(&mut self, lock: u32) {
        self.cache.lock_log.released(lock);
    }

    /// Sequential mode, at a barrier (before the barrier's release): drops this node's
    /// read-only copies of pages homed elsewhere that other nodes' writes took from it
    /// before, telling each home in one message, so that the homes' next writes need no
    /// invalidation round trip (a stencil's boundary rows, read here, written there in the
    /// next iteration). A page read again before anybody wrote it costs one fetch and is not
    /// dropped again until another write takes it. Returns how many copies were dropped.
    pub fn drop_consumed_copies(&mut self, mem: &mut dyn Memory) -> Result<usize> {
        self.one_call(mem, |engine, _| {
            let regions = &engine.regions;
            let nodes = engine.config.nodes;
            let failed = &engine.failed;
            let locate = |p| {
                let loc = regions.locate(p, nodes).ok()?;
                (!failed.contains(&loc.home)).then_some(loc)
            };
            let mut ctx = ctx!(engine);
            engine.cache.drop_consumed(locate, &mut ctx)
        })
    }

    /// Read-only copies dropped at barriers ([`drop_consumed_copies`](Self::drop_consumed_copies)).
    pub fn copies_dropped(&self) -> u64 {
        self.cache.copies_dropped
    }

    /// Of [`copies_dropped`](Self::copies_dropped), those granted back unchanged (nobody
    /// wrote the page before it was read here again).
    pub fn drops_wasted(&self) -> u64 {
        self.cache.drops_wasted
    }

    /// Invalidations that reached this node after it had dropped their page at a barrier.
    pub fn invalidations_crossing_drops(&self) -> u64 {
        self.cache.invalidations_crossing_drops
    }

    /// Forgets every lock's log (a barrier: what was written under locks before it is no
    /// longer a hint for their next holders).
    pub fn forget_written(&mut self) {
        self.cache.lock_log.clear();
    }

    /// Sequential mode, when `lock` goes from this node to node `next`: passes on the pages
    /// logged under it (made writable here while it was held, or pushed here for it, since
    /// its last pass), the ones `next` most likely touches first. Pages homed elsewhere go
    /// back to their homes ([`Coherence::HandBack`] naming `next`, no copy kept), which push
    /// them on; pages homed here are pushed to `next` ([`Coherence::Push`], see
    /// [`push`](Self::push)). Either way `next` takes no fault on them.
    /// Returns how many pages went. Pages with a request or a recall in progress stay.
    pub fn hand_back_written(
        &mut self,
        (lock, next): (u32, NodeId),
        mem: &mut dyn Memory,
    ) -> Result<usize> {
        if next >= self.config.nodes {
            return Err(Error::UnknownNode(next));
        }
        let pages = self.cache.lock_log.take(lock);
        self.one_call(mem, |engine, mem| {
            let mut given = 0;
            for page in pages {
                // A page of a region freed since is skipped.
                let Ok(loc) = engine.locate(page) else {
                    continue;
                };
                given += usize::from(match loc.home == engine.config.node {
                    true => engine.push_page((page, loc), next, mem),
                    false => engine.give_back((page, loc), Some(next), mem),
                });
            }
            given
        })
    }

    /// Sequential mode, at the home of `page`: gives node `to` the only writable copy
    /// unasked ([`Coherence::Push`]), recalling every other copy first (this node's own
    /// included) as a write request would. For a page `to` is about to write (the lock it
    /// was written under goes to `to` next), this saves `to`'s fault and its round trip. A
    /// request of `to` that crossed the push is answered without data. False, nothing
    /// changed, when the page is not homed here, is busy (a transaction or a queued
    /// request), lost, or `to` holds a copy of it or failed.
    pub fn push(&mut self, page: PageId, to: NodeId, mem: &mut dyn Memory) -> Result<bool> {
        let loc = self.locate(page)?;
        if to >= self.config.nodes {
            return Err(Error::UnknownNode(to));
        }
        self.one_call(mem, |engine, mem| engine.push_page((page, loc), to, mem))
    }

    /// Reads this home granted without write-protecting its own writable copy, to same-host
    /// readers that map that copy, its master (sequential mode).
    pub fn reads_sharing_the_writers_page(&self) -> u64 {
        self.directory.reads_sharing_the_writers_page
    }

    /// Requests this home answered without data because they crossed a push of their page
    /// to their sender.
    pub fn requests_crossing_pushes(&self) -> u64 {
        self.directory.requests_crossing_pushes
    }

    /// Pages installed here because their home pushed them ([`push`](Self::push)).
    pub fn pushes_taken(&self) -> u64 {
        self.cache.pushes_taken
    }

    fn push_page(
        &mut self,
        (page, loc): (PageId, Located),
        to: NodeId,
        mem: &mut dyn Memory,
    ) -> bool {
        let sequential = loc.consistency == Consistency::Sequential;
        if !sequential || loc.home != self.config.node || self.failed.contains(&to) {
            return false;
        }
        let mut ctx = ctx!(self);
        self.directory.push(page, to, &mut ctx, mem)
    }

    /// Gives this node's writable copy of `page` back to its home unasked, as
    /// [`hand_back_written`](Self::hand_back_written) does; false (nothing changed) when the
    /// page is not writable here, is homed here or its request or recall is in progress.
    /// The home may then push it to `next` ([`push`](Self::push)).
    pub fn hand_back(
        &mut self,
        page: PageId,
        next: Option<NodeId>,
        mem: &mut dyn Memory,
    ) -> Result<bool> {
        let loc = self.locate(page)?;
        if let Some(node) = next.filter(|n| *n >= self.config.nodes) {
            return Err(Error::UnknownNode(node));
        }
        self.one_call(mem, |engine, mem| engine.give_back((page, loc), next, mem))
    }

    /// Recalls (invalidations, downgrades) that reached this node after it had handed their
    /// page back: the home sent them before the hand-back reached it.
    pub fn recalls_crossing_hand_backs(&self) -> u64 {
        self.cache.recalls_crossing_hand_backs
    }

    fn give_back(
        &mut self,
        (page, loc): (PageId, Located),
        next: Option<NodeId>,
        mem: &mut dyn Memory,
    ) -> bool {
        if self.failed.contains(&loc.home) {
            return false;
        }
        let mut ctx = ctx!(self);
        self.cache.hand_back((page, next), loc, &mut ctx, mem)
    }

    /// Runs `f` as one engine call: actions emitted before it settle, and this node's
    /// messages to itself are delivered after it.
    fn one_call<R>(
        &mut self,
        mem: &mut dyn Memory,
        f: impl FnOnce(&mut Self, &mut dyn Memory) -> R,
    ) -> Result<R> {
        self.begin_call();
        let result = f(self, mem);
        self.end_call(mem)?;
        Ok(result)
    }

    /// Answers recalls that were held until their page settled. Call it after applying the
    /// actions of a call whenever [`has_deferred`](Self::has_deferred) is true.
    pub fn poll(&mut self, mem: &mut dyn Memory) -> Result<()> {
        self.begin_call();
        self.end_call(mem)
    }

    /// True when [`poll`](Self::poll) has work once the pending actions are applied. (Work
    /// waiting for a one-sided read is not counted: `on_page_read` resumes it.)
    pub fn has_deferred(&self) -> bool {
        self.cache.has_answerable()
    }

    /// Node `rank` failed (idempotent): the faults that need it fail, nothing else does.
    ///
    /// As home, the acks it owed for read-only copies count as given (its copy is gone, nothing
    /// is lost); pages it held writable are lost: their requests, now and later, are refused
    /// with [`Coherence::PageLost`], never served the stale master copy; its queued requests
    /// are dropped. As requester, every fetch from it fails its faults with
    /// [`Action::FaultFailed`] ([`Error::HomeFailed`](crate::Error::HomeFailed)), and so does
    /// every later fault that needs it. Its messages are dropped from now on. Release-mode
    /// syncs waiting on it are left to the sync layer, which fails them with the node.
    pub fn node_failed(&mut self, rank: NodeId, mem: &mut dyn Memory) -> Result<()> {
        if rank >= self.config.nodes || rank == self.config.node {
            return Err(Error::UnknownNode(rank));
        }
        if !self.failed.insert(rank) {
            return Ok(());
        }
        self.begin_call();
        let mut ctx = ctx!(self);
        self.cache.home_failed(rank, &mut ctx);
        self.directory.node_failed(rank, &mut ctx, mem);
        self.end_call(mem)
    }

    /// The failed node `page` was lost with, if this node is its home and it is lost.
    pub fn lost_to(&self, page: PageId) -> Option<NodeId> {
        self.directory.lost_to(page)
    }

    /// The node this home's directory sees holding `page` writable (granted, the grant maybe
    /// still in flight), for invariant checks and debugging; `None` elsewhere than at the home.
    pub fn home_writer(&self, page: PageId) -> Option<NodeId> {
        self.directory.writer(page)
    }

    /// The clock moved to `now` (any unit; [`CoherenceConfig::timeout_ticks`] is in it). Reports
    /// the first wait older than the timeout.
    pub fn tick(&mut self, now: u64) -> Result<()> {
        self.now = now;
        match self.overdue().into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Every wait older than [`CoherenceConfig::timeout_ticks`] at the last [`tick`](Self::tick):
    /// faults first ([`Error::FaultTimeout`], naming the page and its home), then home
    /// transactions and syncs ([`Error::Timeout`]). Empty when the timeout is 0. A driver that
    /// fails the threads of a timed-out fault uses this to find them all.
    pub fn overdue(&self) -> Vec<Error> {
        let (now, limit) = (self.now, self.config.timeout_ticks);
        if limit == 0 {
            return Vec::new();
        }
        let faults = self.cache.overdue(now, limit);
        let homes = self.directory.overdue(now, limit);
        faults
            .chain(homes)
            .chain(self.syncs.overdue(now, limit))
            .collect()
    }

    /// Changes [`CoherenceConfig::timeout_ticks`] (a runtime sets it from its own configuration,
    /// in the unit of its clock).
    pub fn set_timeout_ticks(&mut self, ticks: u64) {
        self.config.timeout_ticks = ticks;
    }

    /// The actions produced so far, in order. Apply them all before the next call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out.actions)
    }

    /// True when a fault on `page` would need its home (this node's copy does not allow the
    /// access, and a release-mode first write, which needs nobody, is not the case).
    fn needs_home(&self, page: PageId, loc: Located, access: Access) -> bool {
        match (self.cache.state(page), access) {
            (LocalState::Invalid, _) => true,
            (LocalState::Shared, Access::Write) => loc.consistency == Consistency::Sequential,
            // Modified and Exclusive (writable here with no message) allow any access.
            _ => false,
        }
    }

    fn locate(&self, page: PageId) -> Result<Located> {
        self.regions.locate(page, self.config.nodes)
    }

    /// Starts a call: if the driver took every action so far, it applied them, so the pages
    /// installed by earlier calls have settled.
    fn begin_call(&mut self) {
        if self.out.actions.is_empty() {
            self.cache.settle();
        }
    }

    /// Delivers this node's messages to itself, and answers held recalls once nothing this
    /// engine emitted is waiting to be applied.
    fn end_call(&mut self, mem: &mut dyn Memory) -> Result<()> {
        for _ in 0..LOOPBACK_BOUND {
            if let Some(message) = self.out.loopback.pop_front() {
                self.handle(self.config.node, message, mem)?;
                continue;
            }
            if self.out.actions.is_empty() && self.cache.has_held() && self.cache.settle() {
                let mut ctx = ctx!(self);
                self.cache.answer_held(&mut ctx, mem);
                continue;
            }
            return Ok(());
        }
        panic!("coherence loopback does not settle: engine bug");
    }

    fn handle(&mut self, from: NodeId, message: Coherence, mem: &mut dyn Memory) -> Result<()> {
        if from >= self.config.nodes {
            return Err(Error::UnknownNode(from));
        }
        if self.failed.contains(&from) {
            return Ok(()); // Sent before it was declared failed; its state is written off.
        }
        let (page, what, side) = describe(&message);
        let Some(page) = page else {
            return Err(Error::Unexpected {
                from,
                page: PageId {
                    region: u32::MAX,
                    page: 0,
                },
                what,
            });
        };
        let loc = self.locate(page)?;
        self.check_sender(from, page, loc, what, side)?;
        match &message {
            Coherence::DiffBatch { diffs, .. } => {
                let pages = diffs.iter().map(|d| d.page);
                self.check_homed_here(from, pages, Consistency::Release, what)?;
            }
            Coherence::Dropped { pages } => {
                let pages = pages.iter().copied();
                self.check_homed_here(from, pages, Consistency::Sequential, what)?;
            }
            _ => {}
        }
        let mut ctx = ctx!(self);
        let dir = &mut self.directory;
        let seq = loc.consistency == Consistency::Sequential;
        let wrong_mode = Err(Error::WrongMode { from, page, what });
        match message {
            Coherence::ReadRequest {
                req, maps_master, ..
            } if seq => dir.request(from, page, req, (Access::Read, maps_master), &mut ctx, mem),
            Coherence::ReadRequest { req, .. } => {
                if self.config.scan_writes && from != self.config.node {
                    self.cache.share_home_page(page, &mut ctx, mem);
                }
                directory::serve_release_read(from, page, req, &mut ctx, mem);
                Ok(())
            }
            Coherence::WriteRequest { req, .. } if seq => {
                dir.request(from, page, req, (Access::Write, false), &mut ctx, mem)
            }
            Coherence::InvalidateAck { req, data, .. } if seq => {
                let returned = data.map_or(Returned::Nothing, Returned::Page);
                dir.invalidate_ack(from, page, req, returned, &mut ctx, mem)
            }
            Coherence::WriteBack { req, data, .. } if seq => {
                dir.write_back(from, page, req, Returned::Page(data), &mut ctx, mem)
            }
            Coherence::MasterWritten { req, .. } if seq => {
                dir.master_written(from, page, req, &mut ctx, mem)
            }
            Coherence::HandBack { data, next, .. } if seq => {
                if let Some(node) = next.filter(|n| *n >= self.config.nodes) {
                    return Err(Error::UnknownNode(node));
                }
                let returned = data.map_or(Returned::InPlace, Returned::Page);
                dir.hand_back((from, next), page, returned, &mut ctx, mem)
            }
            Coherence::Dropped { pages } if seq => dir.dropped(from, &pages),
            Coherence::ReadGrant {
                req, version, data, ..
            } => {
                let grant = (Access::Read, req, version, data);
                let mapped = seq && mem.local_is_master(page);
                self.cache
                    .on_grant(from, (page, mapped), loc, grant, &mut ctx)
            }
            Coherence::WriteGrant {
                req, version, data, ..
            } if seq => {
                let grant = (Access::Write, req, version, data);
                let mapped = mem.local_is_master(page);
                self.cache
                    .on_grant(from, (page, mapped), loc, grant, &mut ctx)
            }
            Coherence::Push { data, .. } if seq => {
                self.cache.on_push(from, page, loc, data, &mut ctx)
            }
            m @ (Coherence::Invalidate { .. } | Coherence::Downgrade { .. }) if seq => {
                self.cache.on_recall(from, page, m, &mut ctx, mem)
            }
            Coherence::DiffBatch { req, diffs } if !seq => {
                directory::apply_diff_batch(from, req, &diffs, &mut ctx, mem)
            }
            Coherence::DiffAck { req, .. } if !seq => {
                self.syncs.diff_ack(from, page, req, &mut ctx)
            }
            Coherence::PageLost { req, writer, .. } if seq => {
                self.cache.on_lost(from, page, (req, writer), &mut ctx)
            }
            _ => wrong_mode,
        }
    }

    /// Every page of a message about several (a diff batch, a drop) must be a page of
    /// `consistency` homed here (the first one was checked like any message's page).
    fn check_homed_here(
        &self,
        from: NodeId,
        pages: impl Iterator<Item = PageId>,
        consistency: Consistency,
        what: &'static str,
    ) -> Result<()> {
        for page in pages {
            let loc = self.locate(page)?;
            if loc.consistency != consistency {
                return Err(Error::WrongMode { from, page, what });
            }
            self.check_sender(from, page, loc, what, Side::Home)?;
        }
        Ok(())
    }

    /// Home-side messages must reach the page's home; requester-side ones must come from it.
    fn check_sender(
        &self,
        from: NodeId,
        page: PageId,
        loc: Located,
        what: &'static str,
        side: Side,
    ) -> Result<()> {
        match side {
            Side::Home if loc.home != self.config.node => Err(Error::NotHome {
                from,
                page,
                home: loc.home,
                what,
            }),
            Side::Requester if from != loc.home => Err(Error::NotFromHome {
                from,
                page,
                home: loc.home,
                what,
            }),
            _ => Ok(()),
        }
    }
}

/// Which side of the protocol handles a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Home,
    Requester,
}

/// The page a message is about, its name for errors, and which side handles it.
fn describe(message: &Coherence) -> (Option<PageId>, &'static str, Side) {
    use Coherence as C;
    match message {
        C::ReadRequest { page, .. } => (Some(*page), "ReadRequest", Side::Home),
        C::WriteRequest { page, .. } => (Some(*page), "WriteRequest", Side::Home),
        C::InvalidateAck { page, .. } => (Some(*page), "InvalidateAck", Side::Home),
        C::WriteBack { page, .. } => (Some(*page), "WriteBack", Side::Home),
        C::MasterWritten { page, .. } => (Some(*page), "MasterWritten", Side::Home),
        C::HandBack { page, .. } => (Some(*page), "HandBack", Side::Home),
        C::ReadGrant { page, .. } => (Some(*page), "ReadGrant", Side::Requester),
        C::WriteGrant { page, .. } => (Some(*page), "WriteGrant", Side::Requester),
        C::Invalidate { page, .. } => (Some(*page), "Invalidate", Side::Requester),
        C::Downgrade { page, .. } => (Some(*page), "Downgrade", Side::Requester),
        C::Push { page, .. } => (Some(*page), "Push", Side::Requester),
        C::DiffBatch { diffs, .. } => (diffs.first().map(|d| d.page), "DiffBatch", Side::Home),
        C::DiffAck { page, .. } => (Some(*page), "DiffAck", Side::Requester),
        C::PageLost { page, .. } => (Some(*page), "PageLost", Side::Requester),
        C::Dropped { pages } => (pages.first().copied(), "Dropped", Side::Home),
        C::WriteNotices { .. } => (
            None,
            "WriteNotices (they travel in sync messages)",
            Side::Home,
        ),
    }
}
