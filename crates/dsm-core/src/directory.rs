//! Home side: the directory entry of every page homed here, and the master copies.
//!
//! Sequential pages: the home serialises requests per page. While a transaction (waiting for
//! invalidation acks or a write-back) is in flight, later requests queue; each node has at most
//! one request per page outstanding, so a queue never holds more than `nodes` entries.
//! Release pages: no copy tracking; the home serves reads and applies diffs in arrival order.
//! After a node fails, see [`failure`].

mod failure;

use std::collections::{BTreeSet, VecDeque};

use dsm_wire::{Coherence, DiffRun, NodeId, PAGE_SIZE, Page, PageDiff, PageId};

use crate::actions::Access;
use crate::collections::HashMap;
use crate::config::MutationPoint;
use crate::engine::Ctx;
use crate::error::{Error, Result};
use crate::memory::Memory;

/// Who holds copies of a sequential page, as the home knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Holders {
    #[default]
    None,
    Shared(BTreeSet<NodeId>),
    Modified(NodeId),
}

#[derive(Debug, Clone, Copy)]
struct Request {
    from: NodeId,
    req: u64,
    access: Access,
    /// Nobody asked: the home pushes the page to `from` ([`Directory::push`]).
    pushed: bool,
    /// A read whose requester maps the master itself (`Coherence::ReadRequest::maps_master`).
    maps_master: bool,
}

/// A request being served: waiting for the nodes in `awaiting`.
#[derive(Debug)]
struct Txn {
    id: u64,
    request: Request,
    awaiting: BTreeSet<NodeId>,
    /// The writer holds a current read-only copy (an upgrade: the grant needs no data).
    had_copy: bool,
    since: u64,
}

#[derive(Debug, Default)]
struct DirEntry {
    holders: Holders,
    txn: Option<Txn>,
    queue: VecDeque<Request>,
    version: u64,
    /// The node the page was last pushed to, while it is the writer and no other
    /// transaction ran since: a request of that node crossed the push and is answered
    /// without data.
    pushed_to: Option<NodeId>,
    /// Readers granted the page while this node, its home, holds it writable: each maps the
    /// master, which is this node's copy, so the hardware keeps them current and the home
    /// writes on without a fault. Empty unless the holders are `Modified(this node)`; they
    /// join the readers when the home is downgraded, and are invalidated with it.
    mapped_readers: BTreeSet<NodeId>,
}

/// What a recalled holder gave back with its answer.
#[derive(Debug)]
pub(crate) enum Returned {
    /// Nothing: it held the page read-only.
    Nothing,
    /// Its writable copy, to put in the master.
    Page(Page),
    /// Its writable copy, already written into the master in place (`MasterWritten`).
    InPlace,
}

impl Returned {
    fn is_data(&self) -> bool {
        !matches!(self, Returned::Nothing)
    }

    /// Makes the master copy of `page` what the holder gave back.
    fn store(self, page: PageId, mem: &mut dyn Memory) {
        if let Returned::Page(data) = self {
            mem.home_page_mut(page).copy_from_slice(&data[..]);
        }
    }
}

/// Directory entries of the pages homed on this node (created on first request).
#[derive(Debug, Default)]
pub(crate) struct Directory {
    entries: HashMap<PageId, DirEntry>,
    next_txn: u64,
    /// Nodes declared failed: no grant goes to them any more.
    failed: BTreeSet<NodeId>,
    /// Sequential pages lost with the failed node that held them writable.
    lost: HashMap<PageId, NodeId>,
    /// Requests that crossed a push of their page to their sender (answered without data).
    pub(crate) requests_crossing_pushes: u64,
    /// Reads granted to readers of the master while this node writes it (no downgrade).
    pub(crate) reads_sharing_the_writers_page: u64,
}

impl Directory {
    /// A read or write request for a sequential page: queue it, and serve it if the page is
    /// idle.
    pub(crate) fn request(
        &mut self,
        from: NodeId,
        page: PageId,
        req: u64,
        (access, maps_master): (Access, bool),
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        if let Some(&writer) = self.lost.get(&page) {
            ctx.out
                .send(from, Coherence::PageLost { req, page, writer });
            return Ok(());
        }
        if let Some(entry) = self.entries.get(&page) {
            let queued = entry.queue.iter().any(|r| r.from == from)
                || (entry.txn.as_ref())
                    .is_some_and(|t| t.request.from == from && !t.request.pushed);
            let writer = entry.txn.is_none() && entry.holders == Holders::Modified(from);
            let crossed_push = entry.pushed_to == Some(from);
            if queued || (writer && !crossed_push) {
                return Err(Error::Unexpected {
                    from,
                    page,
                    what: "request while one is queued or from the page's writer",
                });
            }
        }
        let request = Request {
            from,
            req,
            access,
            pushed: false,
            maps_master: maps_master && access == Access::Read,
        };
        self.entries
            .entry(page)
            .or_default()
            .queue
            .push_back(request);
        self.run(page, ctx, mem);
        Ok(())
    }

    /// Starts queued requests until one has to wait.
    fn run(&mut self, page: PageId, ctx: &mut Ctx<'_>, mem: &mut dyn Memory) {
        // Each pass pops one request, so the loop ends within the queue's length.
        loop {
            let entry = self.entries.get_mut(&page).expect("entry exists");
            if entry.txn.is_some() {
                return;
            }
            let Some(request) = entry.queue.pop_front() else {
                return;
            };
            if entry.pushed_to == Some(request.from)
                && entry.holders == Holders::Modified(request.from)
            {
                entry.pushed_to = None;
                answer_pushed(entry, page, request, ctx);
                self.requests_crossing_pushes += 1;
                continue;
            }
            if shares_the_writers_page(entry, &request, page, ctx, mem) {
                // The writer is this node, its copy is the master, and the reader maps that
                // master too: one physical page, kept coherent by the hardware, so nothing is
                // written back or write-protected. The writer stays as it is, so a request of
                // its that crossed its push is still to be recognised (`pushed_to` kept).
                entry.mapped_readers.insert(request.from);
                send_read_grant(request.from, request.req, page, entry.version, ctx, mem);
                self.reads_sharing_the_writers_page += 1;
                continue;
            }
            entry.pushed_to = None;
            self.next_txn += 1;
            let id = self.next_txn;
            match request.access {
                Access::Read => start_read(entry, page, request, id, ctx, mem),
                Access::Write => start_write(entry, page, request, id, ctx, mem),
            }
        }
    }

    /// An invalidation ack; the old writer's carries its modified page.
    pub(crate) fn invalidate_ack(
        &mut self,
        from: NodeId,
        page: PageId,
        id: u64,
        returned: Returned,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        let unexpected = Error::Unexpected {
            from,
            page,
            what: "invalidation ack of no transaction",
        };
        let Some(entry) = self.entries.get_mut(&page) else {
            return Err(unexpected);
        };
        let waiting = entry.txn.as_ref().is_some_and(|t| {
            t.id == id && t.request.access == Access::Write && t.awaiting.contains(&from)
        });
        if !waiting {
            if ctx.config.mutated(MutationPoint::GrantBeforeAcks) {
                return Ok(()); // The broken variant already granted; late acks are dropped.
            }
            return Err(unexpected);
        }
        let was_writer = entry.holders == Holders::Modified(from);
        if was_writer != returned.is_data() {
            return Err(Error::Unexpected {
                from,
                page,
                what: "invalidation ack with data from a reader or without from the writer",
            });
        }
        returned.store(page, mem);
        if let Holders::Shared(set) = &mut entry.holders {
            set.remove(&from);
        }
        entry.mapped_readers.remove(&from);
        let txn = entry.txn.as_mut().expect("checked above");
        txn.awaiting.remove(&from);
        if txn.awaiting.is_empty() {
            let txn = entry.txn.take().expect("checked above");
            finish_write(entry, page, txn, &self.failed, ctx, mem);
            self.run(page, ctx, mem);
        }
        Ok(())
    }

    /// The writer's answer to a downgrade: its page, after which it keeps a read-only copy.
    pub(crate) fn write_back(
        &mut self,
        from: NodeId,
        page: PageId,
        id: u64,
        returned: Returned,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        let entry = self.entries.get_mut(&page);
        let Some(entry) = entry.filter(|e| {
            e.holders == Holders::Modified(from)
                && e.txn.as_ref().is_some_and(|t| {
                    t.id == id && t.request.access == Access::Read && t.awaiting.contains(&from)
                })
        }) else {
            return Err(Error::Unexpected {
                from,
                page,
                what: "write-back of no downgrade",
            });
        };
        returned.store(page, mem);
        let mut readers = std::mem::take(&mut entry.mapped_readers);
        readers.insert(from);
        entry.holders = Holders::Shared(readers);
        let txn = entry.txn.take().expect("checked above");
        if !self.failed.contains(&txn.request.from) {
            grant_read(entry, page, txn.request, ctx, mem);
        }
        self.run(page, ctx, mem);
        Ok(())
    }

    /// Gives `to` the only writable copy of `page` unasked ([`Coherence::Push`]): every other
    /// copy is recalled first, as for a write request, and the grant goes as a push with the
    /// data. Only when the page is idle (no transaction, no request queued), not lost, and
    /// `to` holds no copy (a push never races a copy `to` is being granted or reading); else
    /// false, nothing changed.
    pub(crate) fn push(
        &mut self,
        page: PageId,
        to: NodeId,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> bool {
        if self.failed.contains(&to) || self.lost.contains_key(&page) {
            return false;
        }
        let entry = self.entries.entry(page).or_default();
        let holds = match &entry.holders {
            Holders::None => false,
            Holders::Shared(set) => set.contains(&to),
            Holders::Modified(writer) => *writer == to || entry.mapped_readers.contains(&to),
        };
        if holds || entry.txn.is_some() || !entry.queue.is_empty() {
            return false;
        }
        self.next_txn += 1;
        let request = Request {
            from: to,
            req: 0,
            access: Access::Write,
            pushed: true,
            maps_master: false,
        };
        entry.pushed_to = None;
        start_write(entry, page, request, self.next_txn, ctx, mem);
        true
    }

    /// The writable holder `from` gave its page back unasked ([`Coherence::HandBack`]) and
    /// kept no copy. A recall of it may be in flight, crossed with the hand-back: a
    /// downgrade's read transaction is served now (the holder ignores the downgrade, see
    /// `Cache::on_recall`); an invalidation's write transaction waits for its ack, which then
    /// comes without data. Then, if the page is idle, it is pushed to `next` (the node the
    /// lock goes to) when given.
    pub(crate) fn hand_back(
        &mut self,
        (from, next): (NodeId, Option<NodeId>),
        page: PageId,
        returned: Returned,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        let entry = self.entries.get_mut(&page);
        let Some(entry) = entry.filter(|e| e.holders == Holders::Modified(from)) else {
            return Err(Error::Unexpected {
                from,
                page,
                what: "hand-back of a page the sender does not hold writable",
            });
        };
        if !ctx.config.mutated(MutationPoint::HandBackLosesData) {
            returned.store(page, mem);
        }
        // Readers mapping the master keep their copies (only the home has any, and it does
        // not hand its own pages back; kept for safety).
        let readers = std::mem::take(&mut entry.mapped_readers);
        entry.holders = match readers.is_empty() {
            true => Holders::None,
            false => Holders::Shared(readers),
        };
        entry.pushed_to = None;
        let downgrading = entry
            .txn
            .as_ref()
            .is_some_and(|t| t.request.access == Access::Read && t.awaiting.contains(&from));
        if downgrading {
            let txn = entry.txn.take().expect("checked above");
            if !self.failed.contains(&txn.request.from) {
                grant_read(entry, page, txn.request, ctx, mem);
            }
            self.run(page, ctx, mem);
        }
        if let Some(next) = next {
            self.push(page, next, ctx, mem);
        }
        Ok(())
    }

    /// `from` dropped its read-only copies of `pages` unasked ([`Coherence::Dropped`]): it is
    /// no longer among their readers. An invalidation already on its way to it is still
    /// acknowledged (it answers one for a page it does not hold), so a transaction waiting
    /// for it keeps waiting. Every page must count `from` among its readers (FIFO per pair:
    /// its drop arrives before anything that changes that); else an error and nothing changes.
    pub(crate) fn dropped(&mut self, from: NodeId, pages: &[PageId]) -> Result<()> {
        let reader = |entry: Option<&DirEntry>| {
            entry.is_some_and(|e| {
                matches!(&e.holders, Holders::Shared(set) if set.contains(&from))
                    || e.mapped_readers.contains(&from)
            })
        };
        if let Some(page) = pages.iter().find(|p| !reader(self.entries.get(p))) {
            return Err(Error::Unexpected {
                from,
                page: *page,
                what: "drop of a copy the sender does not hold",
            });
        }
        for page in pages {
            let entry = self.entries.get_mut(page).expect("checked above");
            entry.mapped_readers.remove(&from);
            if let Holders::Shared(set) = &mut entry.holders {
                set.remove(&from);
                if set.is_empty() {
                    entry.holders = Holders::None;
                }
            }
        }
        Ok(())
    }

    /// The writable holder `from` answered this page's recall having written the master in
    /// place: an invalidation ack with data (a write transaction) or a write-back (a read
    /// transaction's downgrade), whichever the transaction waits for.
    pub(crate) fn master_written(
        &mut self,
        from: NodeId,
        page: PageId,
        id: u64,
        ctx: &mut Ctx<'_>,
        mem: &mut dyn Memory,
    ) -> Result<()> {
        let access = self
            .entries
            .get(&page)
            .and_then(|e| e.txn.as_ref())
            .filter(|t| t.id == id)
            .map(|t| t.request.access);
        match access {
            Some(Access::Write) => self.invalidate_ack(from, page, id, Returned::InPlace, ctx, mem),
            Some(Access::Read) => self.write_back(from, page, id, Returned::InPlace, ctx, mem),
            None => Err(Error::Unexpected {
                from,
                page,
                what: "master written in place for no transaction",
            }),
        }
    }

    /// Every transaction waiting longer than `limit` ticks, as timeout errors.
    pub(crate) fn overdue(&self, now: u64, limit: u64) -> impl Iterator<Item = Error> + '_ {
        self.entries.iter().filter_map(move |(page, entry)| {
            let txn = entry.txn.as_ref()?;
            let ticks = now.saturating_sub(txn.since);
            (ticks > limit).then(|| Error::Timeout {
                waiting_for: "invalidation acks or a write-back at the home",
                page: *page,
                peer: txn.awaiting.first().copied().unwrap_or(NodeId::MAX),
                ticks,
            })
        })
    }

    /// Forgets the pages of a freed region.
    pub(crate) fn remove_region(&mut self, region: u32) {
        self.entries.retain(|page, _| page.region != region);
        self.lost.retain(|page, _| page.region != region);
    }
}

fn start_read(
    entry: &mut DirEntry,
    page: PageId,
    request: Request,
    id: u64,
    ctx: &mut Ctx<'_>,
    mem: &mut dyn Memory,
) {
    match entry.holders {
        Holders::Modified(owner) if owner != request.from => {
            // The master copy is stale: the writer writes back and keeps a read-only copy.
            entry.txn = Some(Txn {
                id,
                request,
                awaiting: BTreeSet::from([owner]),
                had_copy: false,
                since: ctx.now,
            });
            ctx.out.send(owner, Coherence::Downgrade { req: id, page });
        }
        Holders::Modified(_) => {} // Refused on arrival; cannot be reached.
        _ => grant_read(entry, page, request, ctx, mem),
    }
}

/// Whether `request` may share the page its writer writes, without a downgrade: a read, the
/// writer is this node (the home), whose copy of `page` is its master, and the requester
/// maps that master too and is granted without data (so it maps the master rather than
/// installing a snapshot of it, which would write stale bytes over the home's later writes).
fn shares_the_writers_page(
    entry: &DirEntry,
    request: &Request,
    page: PageId,
    ctx: &Ctx<'_>,
    mem: &dyn Memory,
) -> bool {
    let this_node = ctx.config.node;
    entry.holders == Holders::Modified(this_node)
        && request.from != this_node
        && request.maps_master
        && ctx.config.grants_without_data(request.from)
        && mem.local_is_master(page)
}

fn start_write(
    entry: &mut DirEntry,
    page: PageId,
    request: Request,
    id: u64,
    ctx: &mut Ctx<'_>,
    mem: &mut dyn Memory,
) {
    let (targets, had_copy): (BTreeSet<NodeId>, bool) = match &entry.holders {
        Holders::None => (BTreeSet::new(), false),
        Holders::Shared(set) => {
            let others = set.iter().copied().filter(|n| *n != request.from).collect();
            (others, set.contains(&request.from))
        }
        Holders::Modified(owner) if *owner == request.from => return, // Refused on arrival.
        Holders::Modified(owner) => {
            // Readers of the master go with the writer (each leaves the set with its ack,
            // or its drop if that crossed the invalidation); one asking to write has the page
            // current already.
            let had_copy = entry.mapped_readers.remove(&request.from);
            let mut targets = entry.mapped_readers.clone();
            if ctx.config.mutated(MutationPoint::MappedReadersKept) {
                targets.clear();
                entry.mapped_readers.clear();
            }
            targets.insert(*owner);
            (targets, had_copy)
        }
    };
    for target in &targets {
        ctx.out
            .send(*target, Coherence::Invalidate { req: id, page });
    }
    if targets.is_empty() || ctx.config.mutated(MutationPoint::GrantBeforeAcks) {
        grant_write(entry, page, request, had_copy, ctx, mem);
        return;
    }
    entry.txn = Some(Txn {
        id,
        request,
        awaiting: targets,
        had_copy,
        since: ctx.now,
    });
}

/// The page's data for a grant: none for a one-sided remote reader (it reads the master copy
/// itself), else a copy of the master.
fn grant_data(page: PageId, to: NodeId, ctx: &Ctx<'_>, mem: &dyn Memory) -> Option<Page> {
    (!ctx.config.grants_without_data(to)).then(|| Box::new(*mem.home_page(page)))
}

/// Every invalidation of a write transaction is acknowledged: grant the write, unless its
/// requester failed meanwhile (then nobody holds the page, and the master copy is current).
fn finish_write(
    entry: &mut DirEntry,
    page: PageId,
    txn: Txn,
    failed: &BTreeSet<NodeId>,
    ctx: &mut Ctx<'_>,
    mem: &dyn Memory,
) {
    if failed.contains(&txn.request.from) {
        entry.holders = Holders::None;
        return;
    }
    grant_write(entry, page, txn.request, txn.had_copy, ctx, mem);
}

/// A request of the node the page was pushed to, which crossed the push: it holds the page
/// writable, so the grant carries no data.
fn answer_pushed(entry: &DirEntry, page: PageId, request: Request, ctx: &mut Ctx<'_>) {
    let (req, version) = (request.req, entry.version);
    let message = match request.access {
        Access::Write => Coherence::WriteGrant {
            req,
            page,
            version,
            data: None,
        },
        Access::Read => Coherence::ReadGrant {
            req,
            page,
            version,
            data: None,
        },
    };
    ctx.out.send(request.from, message);
}

fn grant_read(
    entry: &mut DirEntry,
    page: PageId,
    request: Request,
    ctx: &mut Ctx<'_>,
    mem: &dyn Memory,
) {
    match &mut entry.holders {
        Holders::Shared(set) => {
            set.insert(request.from);
        }
        other => *other = Holders::Shared(BTreeSet::from([request.from])),
    }
    send_read_grant(request.from, request.req, page, entry.version, ctx, mem);
}

fn grant_write(
    entry: &mut DirEntry,
    page: PageId,
    request: Request,
    had_copy: bool,
    ctx: &mut Ctx<'_>,
    mem: &dyn Memory,
) {
    entry.holders = Holders::Modified(request.from);
    entry.version += 1;
    if request.pushed {
        // `to` held no copy: the push always carries the page (even to a one-sided reader).
        entry.pushed_to = Some(request.from);
        let message = Coherence::Push {
            page,
            version: entry.version,
            data: Box::new(*mem.home_page(page)),
        };
        ctx.out.send(request.from, message);
        return;
    }
    let data = if had_copy {
        None
    } else {
        grant_data(page, request.from, ctx, mem)
    };
    let message = Coherence::WriteGrant {
        req: request.req,
        page,
        version: entry.version,
        data,
    };
    ctx.out.send(request.from, message);
}

/// Release mode: a fetch. The home copy holds every diff applied so far.
pub(crate) fn serve_release_read(
    from: NodeId,
    page: PageId,
    req: u64,
    ctx: &mut Ctx<'_>,
    mem: &dyn Memory,
) {
    send_read_grant(from, req, page, 0, ctx, mem);
}

/// Grants `to` a read copy of `page` at `version` (with the data unless it reads one-sided).
fn send_read_grant(
    to: NodeId,
    req: u64,
    page: PageId,
    version: u64,
    ctx: &mut Ctx<'_>,
    mem: &dyn Memory,
) {
    let data = grant_data(page, to, ctx, mem);
    let message = Coherence::ReadGrant {
        req,
        page,
        version,
        data,
    };
    ctx.out.send(to, message);
}

/// Release mode: applies a batch of diffs to the master copies (every run of every page
/// checked first, so a bad batch changes nothing) and acknowledges it once.
pub(crate) fn apply_diff_batch(
    from: NodeId,
    req: u64,
    diffs: &[PageDiff],
    ctx: &mut Ctx<'_>,
    mem: &mut dyn Memory,
) -> Result<()> {
    let fits = |run: &DiffRun| usize::from(run.offset) + run.bytes.len() <= PAGE_SIZE;
    if let Some(bad) = diffs.iter().find(|d| !d.runs.iter().all(fits)) {
        return Err(Error::BadDiff {
            from,
            page: bad.page,
        });
    }
    let Some(first) = diffs.first() else {
        return Err(Error::Unexpected {
            from,
            page: PageId {
                region: u32::MAX,
                page: 0,
            },
            what: "an empty diff batch",
        });
    };
    for diff in diffs {
        let master = mem.home_page_mut(diff.page);
        for run in &diff.runs {
            let start = usize::from(run.offset);
            master[start..start + run.bytes.len()].copy_from_slice(&run.bytes);
        }
    }
    let page = first.page;
    ctx.out.send(from, Coherence::DiffAck { req, page });
    Ok(())
}
