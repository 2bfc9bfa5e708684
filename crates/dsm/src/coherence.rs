//! Glue between the coherence engine (dsm-core), the userfaultfd regions (dsm-uffd) and the
//! transport: faults and messages go in, the engine's actions are applied here.
//!
//! Everything runs under one lock ([`Coherence`] in a `Mutex`), taken by the fault workers,
//! the driver thread and application threads at sync points, never by a thread while it
//! touches region memory. Lock order: this lock, then `Shared`'s.

use std::collections::{HashMap, HashSet};
use std::iter::Peekable;
use std::sync::Arc;
use std::time::Instant;

use dsm_core::{Access, Action, CoherenceEngine, Memory, RegionLayout, Transport};
use dsm_uffd::{PageSlots, SlotId};
use dsm_wire::{Coherence as Msg, Message, NodeId, PAGE_SIZE, Page, PageId};

use crate::raw::masters::Arena;
use crate::raw::{HomeCopies, installed_page, snapshot_page};
use crate::runtime::Shared;
use crate::runtime::driver::send_counted;
use crate::stats::{Counters, RegionCounters};
use crate::{Error, Result};

/// One mapped region: the application's mapping, the master copies homed here, twins.
#[derive(Debug)]
struct Mapped {
    region: Arc<dsm_uffd::UffdRegion>,
    home: HomeCopies,
    twins: HashMap<u32, Page>,
    /// Release regions: the data of the last writable install of each page, which is what
    /// its twin must be. The engine asks `Install { writable }` and then `MakeTwin`, but the
    /// install wakes the faulting thread, which may write before the twin could be read back
    /// from the mapping; the twin is taken from the installed data instead.
    installed: HashMap<u32, Page>,
    release: bool,
    /// The region's own counters (pages fetched; faults are counted by its resolver).
    counters: Arc<RegionCounters>,
}

/// The engine and what it needs to act.
#[derive(Debug)]
pub(crate) struct Coherence {
    engine: CoherenceEngine,
    regions: HashMap<u32, Mapped>,
    /// Outstanding faults: token → page and start time (for the latency histogram).
    faults: HashMap<u64, (PageId, Instant)>,
    /// Sync tokens nobody waits for (acquires started by the lock table).
    detached: HashSet<u64>,
    /// Pages whose fault timed out or needed a failed node (home failed, page lost), with the
    /// error: every later fault on them fails with it (the threads blocked on them are woken
    /// to fault again and fail).
    timed_out: HashMap<PageId, Error>,
    /// Home transactions and syncs already reported as overdue (logged once each).
    reported: HashSet<String>,
    /// Signal delivery: where faulting threads wait (shared with their SIGBUS handlers).
    slots: Arc<PageSlots>,
    /// Signal delivery: the slot of each outstanding fault's thread, by fault token.
    signal_faults: HashMap<u64, SlotId>,
    next_token: u64,
    /// Where home copies go when same-host peers map them (else private memory).
    arena: Option<Arc<Arena>>,
    /// Pages of same-host homes read during the batch being applied, by read token.
    read_at_once: Vec<(u64, Page)>,
    /// Pages installed or upgraded by the actions being applied (see `map_again_if_lost`).
    mapped_now: Vec<PageId>,
}

/// What applying actions needs besides the engine.
pub(crate) struct Ctx<'a> {
    pub(crate) transport: &'a dyn Transport,
    pub(crate) shared: &'a Shared,
}

/// Threads that may wait on a fault at once with signal delivery (one slot each).
const SIGNAL_SLOTS: usize = 64;

/// Most distinct overdue home transactions and syncs logged (the rest only count as one).
const MAX_REPORTED: usize = 1024;

/// Bound on poll rounds after one call (the engine defers only while pages settle).
const MAX_POLLS: usize = 1024;

impl Coherence {
    pub(crate) fn new(engine: CoherenceEngine, arena: Option<Arc<Arena>>) -> Self {
        Coherence {
            arena,
            read_at_once: Vec::new(),
            mapped_now: Vec::new(),
            engine,
            regions: HashMap::new(),
            faults: HashMap::new(),
            detached: HashSet::new(),
            timed_out: HashMap::new(),
            reported: HashSet::new(),
            slots: Arc::new(PageSlots::new(SIGNAL_SLOTS)),
            signal_faults: HashMap::new(),
            next_token: 1,
        }
    }

    /// A fresh token for a fault or a sync call.
    pub(crate) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// The slots SIGBUS handlers wait on (signal delivery).
    pub(crate) fn slots(&self) -> Arc<PageSlots> {
        Arc::clone(&self.slots)
    }

    /// Node `failed` failed: only the faults that need it fail (pages homed there, pages it
    /// held writable), through the engine's [`Action::FaultFailed`]; the others go on.
    pub(crate) fn node_failed(&mut self, failed: NodeId, ctx: &Ctx<'_>) -> Result<()> {
        let mut mem = Mem::new(&mut self.regions);
        self.engine.node_failed(failed, &mut mem)?;
        self.apply(ctx)
    }

    /// Nobody will wait for `token`'s completion: drop it when it comes.
    pub(crate) fn detach(&mut self, token: u64) {
        self.detached.insert(token);
    }

    /// Adds a mapped region. Its home copies are mapped first (lazily committed: this takes
    /// the same time for any size, under the lock heartbeats also need), so a node that
    /// cannot get them fails with nothing added.
    pub(crate) fn add_region(
        &mut self,
        layout: RegionLayout,
        region: Arc<dsm_uffd::UffdRegion>,
        counters: Arc<RegionCounters>,
    ) -> Result<()> {
        let home = match &self.arena {
            // The region sits at the same address everywhere, and at the same offset in
            // every node's arena: peers find its master copies there.
            Some(arena) => Arena::offset_of(region.base() as u64)
                .and_then(|offset| HomeCopies::in_arena(arena, offset, layout.pages)),
            None => HomeCopies::new(layout.pages),
        }
        .map_err(|e| {
            Error::io(
                format!(
                    "mmap home copies of region {} ({} pages)",
                    layout.id, layout.pages
                ),
                e,
            )
        })?;
        let (node, nodes) = (self.engine.config().node, self.engine.config().nodes);
        home.populate(layout.homed_runs(node, nodes));
        self.engine.add_region(layout)?;
        let release = layout.consistency == dsm_core::Consistency::Release;
        self.regions.insert(
            layout.id,
            Mapped {
                region,
                home,
                twins: HashMap::new(),
                installed: HashMap::new(),
                release,
                counters,
            },
        );
        Ok(())
    }

    /// The master copies of region `id` homed here, for the transport to expose.
    pub(crate) fn home_memory(&self, id: u32) -> Option<dsm_core::HomeMemory> {
        self.regions.get(&id).map(|mapped| mapped.home.memory())
    }

    /// Drops every page of every region from the mappings (the node stopped): any later
    /// access faults, and the resolver fails it loudly instead of the kernel handing out a
    /// zero page. Errors are logged: the node is going away either way.
    pub(crate) fn unmap_all(&mut self) {
        for (id, mapped) in &self.regions {
            if let Err(e) = mapped.region.invalidate_mapping(0, mapped.region.pages()) {
                tracing::warn!(region = id, error = %e, "unmapping a region at stop");
            }
        }
    }

    /// Forgets a region; its mapping goes when the last `Arc` does.
    pub(crate) fn remove_region(&mut self, id: u32, counters: &Counters) -> Result<()> {
        self.engine.remove_region(id)?;
        self.regions.remove(&id);
        self.count_twins(counters);
        Ok(())
    }

    /// The clock moved to `now_ms` (milliseconds since the node started); waits older than
    /// `timeout_ms` time out. Each fault that timed out is failed: its page is marked (later
    /// faults on it fail), its threads are woken so that they fault again and fail, and its
    /// error (naming the page and its home) is returned, once. Overdue home transactions and
    /// syncs are logged once each (syncs also time out in their waiter).
    pub(crate) fn tick(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<Error> {
        self.engine.set_timeout_ticks(timeout_ms);
        let _ = self.engine.tick(now_ms);
        let mut failed = Vec::new();
        for error in self.engine.overdue() {
            match error {
                dsm_core::Error::FaultTimeout { page, home, ticks } => {
                    if self.timed_out.contains_key(&page) {
                        continue;
                    }
                    let error = fault_timeout(page, home, ticks);
                    self.timed_out
                        .insert(page, fault_timeout(page, home, ticks));
                    self.wake_faults_on(page);
                    failed.push(error);
                }
                other => {
                    let text = other.to_string();
                    if self.reported.len() < MAX_REPORTED && self.reported.insert(text.clone()) {
                        tracing::error!(error = %text, "coherence wait overdue");
                    }
                }
            }
        }
        failed
    }

    /// Wakes the threads blocked on `page` (they fault again and find it failed).
    fn wake_faults_on(&mut self, page: PageId) {
        let tokens: Vec<u64> = self
            .faults
            .iter()
            .filter(|(_, (p, _))| *p == page)
            .map(|(token, _)| *token)
            .collect();
        for token in tokens {
            self.faults.remove(&token);
            if let Some(slot) = self.signal_faults.remove(&token) {
                if let Some(error) = self.timed_out.get(&page) {
                    // The SIGBUS handler cannot print: say here why its thread fails.
                    eprintln!("dsm: fault on {page:?} failed: {error}");
                }
                self.slots.fail(slot);
            }
        }
        if let Some(mapped) = self.regions.get(&page.region)
            && let Err(e) = mapped.region.wake(page.page)
        {
            tracing::warn!(?page, error = %e, "wake after a fault timeout");
        }
    }

    /// Signal delivery: a thread's SIGBUS handler handed over its fault and waits on `slot`;
    /// the wake of the fault's token marks the slot ready. A fault that cannot be served
    /// fails its slot (after saying why: the handler cannot print).
    pub(crate) fn fault_in_signal(
        &mut self,
        fault: (PageId, Access, SlotId, Instant),
        ctx: &Ctx<'_>,
    ) -> Result<()> {
        let (page, access, slot, since) = fault;
        let token = self.token();
        let started = self.check_timed_out(page).and_then(|()| {
            self.faults.insert(token, (page, since));
            self.signal_faults.insert(token, slot);
            let mut mem = Mem::new(&mut self.regions);
            Ok(self.engine.fault(page, access, token, &mut mem)?)
        });
        if let Err(e) = started {
            eprintln!("dsm: fault on {page:?} failed: {e}");
            self.faults.remove(&token);
            self.signal_faults.remove(&token);
            self.slots.fail(slot);
            return Ok(());
        }
        self.apply(ctx)
    }

    /// The error of a page whose fault timed out or needed a failed node before, if it did.
    fn check_timed_out(&self, page: PageId) -> Result<()> {
        match self.timed_out.get(&page) {
            Some(Error::Timeout { what, waited_ms }) => Err(Error::Timeout {
                what: what.clone(),
                waited_ms: *waited_ms,
            }),
            Some(Error::Coherence(error)) => Err(Error::Coherence(error.clone())),
            _ => Ok(()),
        }
    }

    /// A thread faulted.
    pub(crate) fn fault(&mut self, page: PageId, access: Access, ctx: &Ctx<'_>) -> Result<()> {
        self.check_timed_out(page)?;
        let token = self.token();
        self.faults.insert(token, (page, Instant::now()));
        let mut mem = Mem::new(&mut self.regions);
        self.engine.fault(page, access, token, &mut mem)?;
        self.apply(ctx)
    }

    /// A coherence message arrived.
    pub(crate) fn on_message(&mut self, from: NodeId, message: Msg, ctx: &Ctx<'_>) -> Result<()> {
        let mut mem = Mem::new(&mut self.regions);
        self.engine.on_message(from, message, &mut mem)?;
        self.apply(ctx)
    }

    /// A one-sided read completed.
    pub(crate) fn on_page_read(&mut self, token: u64, data: Page, ctx: &Ctx<'_>) -> Result<()> {
        let mut mem = Mem::new(&mut self.regions);
        self.engine.on_page_read(token, data, &mut mem)?;
        self.apply(ctx)
    }

    /// Starts a release (diffs to homes); completes as `SyncDone { token }` in `Shared`.
    pub(crate) fn release(&mut self, token: u64, ctx: &Ctx<'_>) -> Result<()> {
        let mut mem = Mem::new(&mut self.regions);
        let result = self.engine.release(token, &mut mem);
        let found = mem.found;
        self.count_sync(found, &ctx.shared.counters);
        result?;
        self.apply(ctx)
    }

    /// Sequential mode, `lock` going to node `next`: passes the pages written under it on
    /// (back to their homes, or pushed to `next` from here). Returns how many went.
    pub(crate) fn hand_back_written(
        &mut self,
        (lock, next): (u32, NodeId),
        ctx: &Ctx<'_>,
    ) -> Result<usize> {
        let mut mem = Mem::new(&mut self.regions);
        let given = self.engine.hand_back_written((lock, next), &mut mem)?;
        self.apply(ctx)?;
        Ok(given)
    }

    /// This node acquired (`true`) or released `lock`: the engine logs the pages made
    /// writable while it holds the lock (see `hand_back_written`).
    pub(crate) fn lock_held(&mut self, lock: u32, held: bool) {
        match held {
            true => self.engine.lock_acquired(lock),
            false => self.engine.lock_released(lock),
        }
    }

    /// Sequential mode, at a barrier: drops the read-only copies other nodes' writes took
    /// before (see `CoherenceEngine::drop_consumed_copies`).
    pub(crate) fn drop_consumed_copies(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let mut mem = Mem::new(&mut self.regions);
        let dropped = self.engine.drop_consumed_copies(&mut mem)?;
        Counters::add(&ctx.shared.counters.copies_dropped, dropped);
        self.apply(ctx)
    }

    /// A barrier: pages written under locks before it are passed on no more.
    pub(crate) fn forget_written(&mut self) {
        self.engine.forget_written();
    }

    /// Starts an acquire with `notices`; completes as `SyncDone { token }` in `Shared`.
    pub(crate) fn acquire(&mut self, token: u64, notices: &[PageId], ctx: &Ctx<'_>) -> Result<()> {
        let mut mem = Mem::new(&mut self.regions);
        let result = self.engine.acquire(token, notices, &mut mem);
        let found = mem.found;
        self.count_sync(found, &ctx.shared.counters);
        result?;
        self.apply(ctx)
    }

    /// Applies every pending action, polling deferred work, in order.
    fn apply(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        // Whether faults wait for pages, published under the coherence lock before the step's
        // requests leave (the transport then polls for their answers) and after it (an
        // install that ended the last one stops the polling).
        ctx.shared.awaiting.set_faults(!self.faults.is_empty());
        self.mapped_now.clear();
        let applied = self.apply_actions(ctx);
        ctx.shared.awaiting.set_faults(!self.faults.is_empty());
        applied
    }

    fn apply_actions(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        for _ in 0..MAX_POLLS {
            let actions = self.engine.take_actions();
            if actions.is_empty() {
                if !self.engine.has_deferred() {
                    return Ok(());
                }
                let mut mem = Mem::new(&mut self.regions);
                self.engine.poll(&mut mem)?;
            }
            let mut actions = actions.into_iter().peekable();
            while let Some(action) = actions.next() {
                self.act(action, &mut actions, ctx)?;
            }
            // Pages read at once go to the engine only now: it wants a batch applied whole
            // before its next call (`CoherenceEngine::take_actions`).
            for (token, data) in std::mem::take(&mut self.read_at_once) {
                let mut mem = Mem::new(&mut self.regions);
                self.engine.on_page_read(token, data, &mut mem)?;
            }
        }
        Err(Error::Protocol(format!(
            "engine still deferring after {MAX_POLLS} polls"
        )))
    }

    /// Applies `action`; an invalidation takes the invalidations of the pages right after
    /// its page off the front of `rest` and unmaps them together.
    fn act(
        &mut self,
        action: Action,
        rest: &mut Peekable<std::vec::IntoIter<Action>>,
        ctx: &Ctx<'_>,
    ) -> Result<()> {
        let counters = &ctx.shared.counters;
        if matches!(
            action,
            Action::Install { .. }
                | Action::MapMaster { .. }
                | Action::Upgrade { .. }
                | Action::Wake { .. }
                | Action::FaultFailed { .. }
        ) {
            // These resume a faulting thread.
            crate::sched::before_waking();
        }
        crate::trace::action(ctx.shared, &action, |token| {
            self.faults.get(&token).map(|f| f.0)
        });
        match action {
            Action::Send { to, message } => {
                match &message {
                    Msg::Invalidate { .. } => Counters::bump(&counters.invalidations_sent),
                    Msg::DiffBatch { diffs, .. } => {
                        let pages = u64::try_from(diffs.len()).unwrap_or(u64::MAX);
                        counters
                            .diffs_sent
                            .fetch_add(pages, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {}
                }
                send_counted(ctx.transport, counters, to, &Message::Coherence(message));
            }
            Action::ReadPage { home, page, token } => match ctx.transport.read_now(home, page) {
                // A same-host home's master is mapped here: copied now, no round trip; given
                // to the engine once this batch is applied (`apply_actions`).
                Some(data) => self.read_at_once.push((token, data?)),
                None => ctx.transport.read_page(home, page, token)?,
            },
            Action::WriteMaster { home, page, data } => {
                // A same-host home's master, mapped here: written before the answer leaves.
                let written = ctx.transport.write_now(home, page, &data);
                written.unwrap_or(Err(dsm_core::TransportError::NotExposed {
                    region: page.region,
                    home,
                }))?;
            }
            Action::MergeMaster { home, diff } => {
                // A same-host home's master, mapped here: merged before the release's
                // `SyncDone` (a later action) lets its notices go.
                let region = diff.page.region;
                let merged = ctx.transport.merge_now(home, &diff);
                merged.unwrap_or(Err(dsm_core::TransportError::NotExposed { region, home }))?;
                Counters::bump(&counters.diffs_merged_in_place);
            }
            Action::Install {
                page,
                data,
                writable,
            } => {
                self.count_install(page, ctx)?;
                let mapped = self.mapped_mut(page)?;
                let protection = protection_of(writable);
                if mapped.release {
                    if writable {
                        mapped.installed.insert(page.page, data.clone());
                    }
                    mapped
                        .region
                        .install_run(page.page, &data[..], protection)?;
                } else {
                    // The engine never installs over a page it has mapped (the simulator
                    // refuses that since two paths that did were fixed), but should a page
                    // be found mapped, the new install wins with its protection: kept, a
                    // read-only page the engine holds writable faults forever.
                    mapped.region.replace(page.page, &data, protection)?;
                }
            }
            Action::MapMaster { page, writable } => {
                // The grant says the master is current, and this copy is the master: mapped
                // with this protection, even if found mapped (see `Install`).
                self.count_install(page, ctx)?;
                let region = &self.mapped(page)?.region;
                region.remap(page.page, protection_of(writable))?;
            }
            Action::Upgrade { page } => {
                self.mapped_now.push(page);
                self.mapped(page)?.region.upgrade(page.page)?;
            }
            Action::Invalidate { page } => {
                // One `madvise` (3.4 µs a call here) for a run of pages: a row dropped at a
                // barrier or named by write notices.
                let mut count = 1;
                while rest.next_if(|a| extends_run(a, page, count)).is_some() {
                    count += 1;
                }
                // Counted here, not per message: release mode invalidates by write notices.
                Counters::add(&counters.invalidations_received, count as usize);
                self.mapped(page)?.region.invalidate(page.page, count)?;
            }
            Action::MakeTwin { page } => {
                let mapped = self.mapped_mut(page)?;
                let twin = match mapped.installed.remove(&page.page) {
                    Some(data) => data,
                    None => mapped.region.twin(page.page)?,
                };
                mapped.twins.insert(page.page, twin);
                self.count_twins(counters);
            }
            Action::Twin { page, data } => {
                self.mapped_mut(page)?.twins.insert(page.page, data);
                self.count_twins(counters);
            }
            Action::DropTwin { page } => {
                self.mapped_mut(page)?.twins.remove(&page.page);
                self.count_twins(counters);
            }
            Action::Wake { token } => self.wake(token, counters)?,
            Action::FaultFailed { token, error } => self.fault_failed(token, error),
            Action::SyncDone { token, notices } => {
                if !self.detached.remove(&token) {
                    ctx.shared.update(|s| s.syncs.insert(token, notices));
                }
            }
        }
        Ok(())
    }

    /// Publishes the memory twins take now ([`Stats::twin_bytes`](crate::Stats::twin_bytes)).
    fn count_twins(&self, counters: &Counters) {
        let twins: usize = self.regions.values().map(|m| m.twins.len()).sum();
        let bytes = u64::try_from(twins * PAGE_SIZE).unwrap_or(u64::MAX);
        counters
            .twin_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Publishes what a release or acquire found and published.
    fn count_sync(&self, found: u64, counters: &Counters) {
        use std::sync::atomic::Ordering::Relaxed;
        counters.pages_found_written.fetch_add(found, Relaxed);
        let published = self.engine.pages_published();
        counters.pages_diffed.store(published, Relaxed);
    }

    /// A fault needed a failed node: its page fails from now on, and its threads are woken to
    /// fault again and fail (the process exits naming the page and the node).
    fn fault_failed(&mut self, token: u64, error: dsm_core::Error) {
        let Some(&(page, _)) = self.faults.get(&token) else {
            return;
        };
        self.timed_out
            .entry(page)
            .or_insert(Error::Coherence(error));
        self.wake_faults_on(page);
    }

    fn wake(&mut self, token: u64, counters: &Counters) -> Result<()> {
        let Some((page, started)) = self.faults.remove(&token) else {
            return Ok(());
        };
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters.fault_latency.record(nanos);
        self.map_again_if_lost(page)?;
        if let Some(slot) = self.signal_faults.remove(&token) {
            // The install (or upgrade) is done: the handler returns and the access re-runs.
            self.slots.mark_ready(slot);
            return Ok(());
        }
        // The install or upgrade woke the thread already; this covers a fault the engine
        // resolved without touching the mapping (the thread retries its access).
        self.mapped(page)?.region.wake(page.page)?;
        Ok(())
    }

    /// `page` is being installed: counted as fetched if it is homed elsewhere, as mapped if
    /// its copy here is its master; remembered for `map_again_if_lost`.
    fn count_install(&mut self, page: PageId, ctx: &Ctx<'_>) -> Result<()> {
        self.mapped_now.push(page);
        let counters = &ctx.shared.counters;
        let fetched = page_home(&self.engine, page) != Some(ctx.transport.local());
        let mapped = self.mapped(page)?;
        if fetched {
            Counters::bump(&counters.pages_fetched);
            Counters::bump(&mapped.counters.pages_fetched);
        }
        if mapped.region.is_file_backed(page.page) {
            Counters::bump(&counters.pages_mapped);
        }
        Ok(())
    }

    /// A fault the engine ends with no install: the page is here already. A page mapped from
    /// a master copy may still have left the mapping (the kernel unmaps a shmem page it
    /// swaps out), and the thread would fault again and again: it is mapped again as the
    /// engine holds it. Pages installed by these very actions are left alone.
    fn map_again_if_lost(&self, page: PageId) -> Result<()> {
        use dsm_core::LocalState;
        use dsm_uffd::Protection;
        let region = &self.mapped(page)?.region;
        if !region.is_file_backed(page.page) || self.mapped_now.contains(&page) {
            return Ok(());
        }
        let protection = match self.engine.local_state(page) {
            LocalState::Modified => Protection::ReadWrite,
            LocalState::Shared | LocalState::Exclusive => Protection::ReadOnly,
            LocalState::Invalid => return Ok(()),
        };
        region.map_again(page.page, protection)?;
        Ok(())
    }

    fn mapped(&self, page: PageId) -> Result<&Mapped> {
        self.regions
            .get(&page.region)
            .ok_or_else(|| Error::Protocol(format!("action on unmapped region {}", page.region)))
    }

    fn mapped_mut(&mut self, page: PageId) -> Result<&mut Mapped> {
        self.regions
            .get_mut(&page.region)
            .ok_or_else(|| Error::Protocol(format!("action on unmapped region {}", page.region)))
    }
}

/// The protection an install asks for.
fn protection_of(writable: bool) -> dsm_uffd::Protection {
    match writable {
        true => dsm_uffd::Protection::ReadWrite,
        false => dsm_uffd::Protection::ReadOnly,
    }
}

/// The error of a fault on `page` that waited `waited_ms` for its home `home`.
fn fault_timeout(page: PageId, home: NodeId, waited_ms: u64) -> Error {
    Error::Timeout {
        what: format!(
            "page {} of region {} from its home, node {home}",
            page.page, page.region
        ),
        waited_ms,
    }
}

fn page_home(engine: &CoherenceEngine, page: PageId) -> Option<NodeId> {
    engine.home_of(page).ok()
}

/// The engine's view of page bytes.
struct Mem<'a> {
    regions: &'a mut HashMap<u32, Mapped>,
    /// Pages the scans of this call found written.
    found: u64,
}

impl<'a> Mem<'a> {
    fn new(regions: &'a mut HashMap<u32, Mapped>) -> Self {
        Mem { regions, found: 0 }
    }
}

/// Consecutive pages of one region, as `(region, first, count)`, from sorted `pages`.
fn runs(pages: &[PageId]) -> Vec<(u32, u32, u32)> {
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    for page in pages {
        match runs.last_mut() {
            Some((region, first, count))
                if *region == page.region && first.checked_add(*count) == Some(page.page) =>
            {
                *count += 1;
            }
            _ => runs.push((page.region, page.page, 1)),
        }
    }
    runs
}

impl Mem<'_> {
    fn get(&self, page: PageId) -> &Mapped {
        self.regions
            .get(&page.region)
            .expect("the engine asks only for known regions")
    }
}

impl Memory for Mem<'_> {
    fn local_page(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        let region = &self.get(page).region;
        let address = region.page_address(page.page).expect("page in range");
        // SAFETY: the engine asks only for installed pages of live regions (the `Arc` in
        // `Mapped` keeps the mapping), and write-protects writable ones before reading.
        unsafe { installed_page(address) }
    }

    fn write_protect(&mut self, page: PageId) {
        if let Err(e) = self.get(page).region.downgrade(page.page) {
            tracing::error!(?page, error = %e, "write-protect failed");
        }
    }

    fn twin(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        self.get(page)
            .twins
            .get(&page.page)
            .expect("twin made before use")
    }

    fn twin_mut(&mut self, page: PageId) -> &mut [u8; PAGE_SIZE] {
        self.regions
            .get_mut(&page.region)
            .expect("the engine asks only for known regions")
            .twins
            .get_mut(&page.page)
            .expect("twin made before use")
    }

    fn snapshot(&self, page: PageId, into: &mut [u8; PAGE_SIZE]) {
        let region = &self.get(page).region;
        let address = region.page_address(page.page).expect("page in range");
        // SAFETY: the engine asks only for installed pages of live regions (the `Arc` in
        // `Mapped` keeps the mapping); the page is writable and other threads may store to
        // it, which the raw copy tolerates (each byte read once, no reference kept).
        unsafe { snapshot_page(address, into) }
    }

    fn take_written(&mut self, pages: &[PageId]) -> Vec<PageId> {
        let mut written = Vec::new();
        let mut indices = Vec::new();
        for (region, first, count) in runs(pages) {
            indices.clear();
            let run = (first..first + count).map(|page| PageId { region, page });
            match self
                .get(PageId {
                    region,
                    page: first,
                })
                .region
                .take_written(first, count, &mut indices)
            {
                Ok(_) => written.extend(indices.iter().map(|&page| PageId { region, page })),
                Err(e) => {
                    // Never lose a write: an unchanged page only costs an empty diff.
                    tracing::error!(region, first, count, error = %e, "scan failed; diffing the whole run");
                    written.extend(run);
                }
            }
        }
        self.found += written.len() as u64;
        written
    }

    fn take_away(&mut self, page: PageId, last: &mut [u8; PAGE_SIZE]) -> bool {
        match self.get(page).region.take_page(page.page, last) {
            Ok(taken) => taken,
            Err(e) => {
                // Not taken: the Invalidate that follows unmaps it; its writes since the last
                // release are lost, and said so.
                tracing::error!(?page, error = %e, "taking a page away failed");
                false
            }
        }
    }

    fn store_local_as_master(&mut self, page: PageId) {
        let mapped = self
            .regions
            .get_mut(&page.region)
            .expect("the engine asks only for known regions");
        let address = mapped
            .region
            .page_address(page.page)
            .expect("page in range");
        // SAFETY: the engine asks only for installed pages of live regions (the `Arc` in
        // `Mapped` keeps the mapping), write-protected before this call; the master copy is
        // this node's own memory, which the mapping does not overlap.
        unsafe { snapshot_page(address, mapped.home.page_mut(page.page)) }
    }

    fn local_is_master(&self, page: PageId) -> bool {
        // Mapped from its home's master copies (`Config::map_masters`): the same memory.
        self.get(page).region.is_file_backed(page.page)
    }

    fn home_page(&self, page: PageId) -> &[u8; PAGE_SIZE] {
        self.get(page).home.page(page.page)
    }

    fn home_page_mut(&mut self, page: PageId) -> &mut [u8; PAGE_SIZE] {
        self.regions
            .get_mut(&page.region)
            .expect("the engine asks only for known regions")
            .home
            .page_mut(page.page)
    }
}

/// Whether `action` invalidates the page right after the run of `count` pages from `first`,
/// in its region.
fn extends_run(action: &Action, first: PageId, count: u32) -> bool {
    let Action::Invalidate { page } = action else {
        return false;
    };
    page.region == first.region && first.page.checked_add(count) == Some(page.page)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::Mutex;

    use dsm_core::{CoherenceConfig, Consistency, HomeMemory, Placement, TransportError};

    use super::*;

    /// Records what the engine sends (a mock of the network, for this unit test only).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(NodeId, Message)>>);

    impl Transport for Recorder {
        fn local(&self) -> NodeId {
            0
        }
        fn send(&self, to: NodeId, message: &Message) -> std::result::Result<(), TransportError> {
            self.0.lock().unwrap().push((to, message.clone()));
            Ok(())
        }
        fn expose(&self, _: u32, _: HomeMemory) -> std::result::Result<(), TransportError> {
            Ok(())
        }
        fn withdraw(&self, _: u32) -> std::result::Result<(), TransportError> {
            Ok(())
        }
        fn read_page(
            &self,
            _: NodeId,
            _: PageId,
            _: u64,
        ) -> std::result::Result<(), TransportError> {
            Ok(())
        }
        fn write_page(
            &self,
            _: NodeId,
            _: PageId,
            _: Page,
            _: u64,
        ) -> std::result::Result<(), TransportError> {
            Ok(())
        }
        fn one_sided(&self) -> bool {
            false
        }
    }

    #[test]
    fn invalidations_join_a_run_only_on_the_next_page_of_its_region() {
        let page = |region, page| PageId { region, page };
        let invalidate = |region, index| Action::Invalidate {
            page: page(region, index),
        };
        assert!(extends_run(&invalidate(1, 5), page(1, 4), 1));
        assert!(extends_run(&invalidate(1, 7), page(1, 4), 3));
        assert!(
            !extends_run(&invalidate(1, 6), page(1, 4), 3),
            "already in the run"
        );
        assert!(
            !extends_run(&invalidate(2, 5), page(1, 4), 1),
            "another region"
        );
        assert!(!extends_run(&invalidate(1, 4), page(1, 4), 1));
        assert!(
            !extends_run(&invalidate(1, 0), page(1, u32::MAX), 1),
            "no wrap-around"
        );
        let upgrade = Action::Upgrade { page: page(1, 5) };
        assert!(!extends_run(&upgrade, page(1, 4), 1), "not an invalidation");
    }

    #[test]
    fn a_fault_whose_home_never_answers_fails_naming_the_page_and_home() {
        let region =
            match dsm_uffd::UffdRegion::new(0x5e00_0000_0000, 4, dsm_uffd::Delivery::Thread) {
                Ok(region) => Arc::new(region),
                // Only a machine without userfaultfd skips; any other error is a failure.
                Err(e @ dsm_uffd::Error::Unavailable { .. }) => {
                    // Straight to stderr: libtest captures `eprintln!` of passing tests.
                    let _ = writeln!(std::io::stderr(), "SKIPPED fault timeout test: {e}");
                    return;
                }
                Err(e) => panic!("userfaultfd region: {e}"),
            };
        let mut c = Coherence::new(CoherenceEngine::new(CoherenceConfig::new(0, 2)), None);
        let layout = RegionLayout {
            id: 3,
            pages: 4,
            consistency: Consistency::Release,
            placement: Placement::Block,
            prefetch: 1,
        };
        c.add_region(layout, region, Arc::default()).unwrap();
        let (transport, shared) = (Recorder::default(), Shared::new(0, 2));
        let ctx = Ctx {
            transport: &transport,
            shared: &shared,
        };
        let page = PageId { region: 3, page: 2 }; // homed on node 1
        c.fault(page, Access::Read, &ctx).unwrap();
        assert_eq!(
            transport.0.lock().unwrap().len(),
            1,
            "a read request went out"
        );
        assert!(c.tick(1_000, 5_000).is_empty());
        let failed = c.tick(7_000, 5_000);
        assert_eq!(failed.len(), 1);
        let text = failed[0].to_string();
        assert!(
            text.contains("page 2 of region 3") && text.contains("node 1"),
            "{text}"
        );
        assert!(c.tick(8_000, 5_000).is_empty(), "reported once");
        let again = c.fault(page, Access::Read, &ctx).unwrap_err().to_string();
        assert_eq!(again, text, "a later fault on the page fails the same way");
    }

    #[test]
    fn the_pages_a_node_homes_come_as_runs_under_both_placements() {
        let layout = |placement| RegionLayout {
            id: 1,
            pages: 10,
            consistency: Consistency::Sequential,
            placement,
            prefetch: 1,
        };
        let block = layout(Placement::Block);
        let runs = |l: &RegionLayout, node| l.homed_runs(node, 3).collect::<Vec<_>>();
        assert_eq!(runs(&block, 0), [(0, 4)]);
        assert_eq!(runs(&block, 1), [(4, 4)]);
        assert_eq!(runs(&block, 2), [(8, 2)]);
        let cyclic = layout(Placement::Cyclic);
        assert_eq!(runs(&cyclic, 1), [(1, 1), (4, 1), (7, 1)]);
        assert!(
            runs(&block, 3).is_empty(),
            "a node outside the cluster homes nothing"
        );
    }
}
