//! Shared memory with the nodes on this host (`DSM_TRANSPORT=auto` or `shm`): every message
//! to a paired peer goes through a ring in a memfd both processes map, and the node's
//! shared-memory thread takes the peer's messages out of the other ring. Page data is
//! one-sided: each node keeps its master copies in an arena (`raw::masters`) that its
//! same-host peers map, so a grant from such a home carries no data and the faulting node
//! copies the page out of the home's arena itself ([`Shm::read_now`]). Pairs are set up at
//! join, before any protocol message, so each direction of a pair uses one transport for
//! good (per-pair FIFO holds). The TCP connection of a pair stays: its close is how a
//! peer's death is seen at once, besides the pidfd this thread checks.

mod inbox;
mod join;
mod pair;
mod receive;
mod send;
mod serving;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use dsm_core::{EventSink, RegionLayout, TransportError};
use dsm_shm::Doorbell;
use dsm_wire::{Limits, Message, NodeId, Page, PageId};

use crate::raw::masters::{Arena, Shared};

use inbox::{Inbound, Inboxes};
pub(crate) use join::{connect, listen};
use pair::{Listener, Paired, pair_up};
use receive::Service;
use send::Outbound;
pub(crate) use serving::Serving;

/// What senders need: the sending half of each paired peer's channel.
#[derive(Debug)]
pub(crate) struct Links {
    rank: NodeId,
    cluster: u64,
    /// By rank; `None` for peers reached by the network.
    out: Vec<Option<Outbound>>,
    /// Wakes the shared-memory thread (to flush a backlog, to stop, or to poll for the
    /// answer to a message just sent).
    doorbell: Doorbell,
    /// Messages sent so far, and whether the shared-memory thread sleeps: see `sent`.
    sends: AtomicU64,
    asleep: AtomicBool,
    /// Messages this node sent itself, delivered by the shared-memory thread (the thread
    /// that is awake and polling while the node waits, unlike the TCP thread).
    local: Mutex<Vec<Message>>,
    /// Some peer's pieces wait behind its full ring (so the thread's loop skips the
    /// per-peer locks otherwise).
    backlog: AtomicBool,
    /// The receiving side of every ring (`inbox.rs`).
    inboxes: Mutex<Inboxes>,
}

impl dsm_core::wakes::Wake for Links {
    fn wake_now(&self) {
        if self.asleep.load(Ordering::SeqCst) {
            self.doorbell.ring();
        }
    }
}

impl Links {
    fn new(rank: NodeId, cluster: u64, out: Vec<Option<Outbound>>, inboxes: Inboxes) -> Self {
        Links {
            rank,
            cluster,
            out,
            doorbell: Doorbell::new(),
            sends: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            local: Mutex::new(Vec::new()),
            backlog: AtomicBool::new(false),
            inboxes: Mutex::new(inboxes),
        }
    }

    /// Sends `message` to `to` on its channel, or to this node itself through the
    /// shared-memory thread: `None` when `to` is reached by the network. A message nobody
    /// waits for ([`Message::is_awaited`]) wakes neither the peer's sleeping thread nor this
    /// node's: it waits in the ring for the peer's next poll, in order.
    fn send(
        &self,
        to: NodeId,
        message: &Message,
    ) -> Option<std::result::Result<(), TransportError>> {
        if to == self.rank {
            self.local
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(message.clone());
            self.sent();
            return Some(Ok(()));
        }
        let outbound = self.out.get(to as usize)?.as_ref()?;
        let frame = dsm_wire::encode(message, self.cluster, self.rank);
        let quiet = !message.is_awaited();
        let sent = outbound.send(&frame, quiet).map(|backlog_started| {
            if backlog_started {
                self.backlog.store(true, Ordering::Release);
                self.doorbell.ring();
            }
        });
        if !quiet {
            self.sent();
        }
        Some(sent)
    }

    /// A message left: its answer will come through a ring, which the shared-memory thread
    /// polls only for a while after activity. If it sleeps, it is woken so that the answer
    /// is polled for, not a wake-up from another CPU. Dekker-style with the thread's
    /// [`will_sleep`](Self::will_sleep): either it sees this send, or this sees it asleep.
    /// Under the engine lock the wake waits until the lock is let go (`dsm_core::wakes`).
    /// Nor is it woken when the sending thread serves the rings itself (`serving`).
    fn sent(&self) {
        self.sends.fetch_add(1, Ordering::SeqCst);
        if serving::hold_back(self) {
            return;
        }
        if !dsm_core::wakes::defer(self) {
            dsm_core::wakes::Wake::wake_now(self);
        }
    }

    /// The messages this node sent itself since the last call.
    fn take_local(&self) -> Vec<Message> {
        std::mem::take(&mut *self.local.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Messages sent so far.
    fn sends(&self) -> u64 {
        self.sends.load(Ordering::SeqCst)
    }

    /// The shared-memory thread is about to sleep; `false` (do not) if a message left
    /// since it counted `sends` (it should poll for the answer instead).
    fn will_sleep(&self, sends: u64) -> bool {
        self.asleep.store(true, Ordering::SeqCst);
        if self.sends.load(Ordering::SeqCst) != sends {
            self.asleep.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn awake(&self) {
        self.asleep.store(false, Ordering::SeqCst);
    }

    /// Writes queued pieces; whether any are left. A sender that starts a backlog sets the
    /// flag after queueing, so a backlog is never missed: at worst flushed once more.
    fn flush(&self) -> bool {
        if !self.backlog.swap(false, Ordering::AcqRel) {
            return false;
        }
        let mut left = false;
        for outbound in self.out.iter().flatten() {
            left |= outbound.flush();
        }
        if left {
            self.backlog.store(true, Ordering::Release);
        }
        left
    }

    fn close(&self, peer: NodeId, reason: &str) {
        if let Some(Some(outbound)) = self.out.get(peer as usize) {
            outbound.close(reason);
        }
    }
}

/// The node's shared-memory transport: its links and its thread.
#[derive(Debug)]
pub(crate) struct Shm {
    links: Arc<Links>,
    /// Peers this node sends to and receives from by shared memory.
    both_ways: Vec<NodeId>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// This node's arena, where its master copies live.
    arena: Arc<Arena>,
    /// Each paired peer's arena.
    peer_arenas: HashMap<NodeId, Arena>,
    /// The mapped master copies of each peer's regions, by (peer, region).
    mapped: RwLock<HashMap<(NodeId, u32), Shared>>,
}

/// How the shared-memory thread polls (the TCP thread's settings, see `TcpConfig::spin`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollPolicy {
    pub(crate) spin: Duration,
    pub(crate) polite_after: Duration,
    /// This host runs more nodes than it has CPUs (`sched::oversubscribed`).
    pub(crate) oversubscribed: bool,
}

impl Shm {
    /// Starts the thread serving `paired`'s channels: `None` when there are none.
    pub(crate) fn start(
        paired: Paired,
        arena: Arena,
        rank: NodeId,
        size: u32,
        cluster: u64,
        sink: Arc<dyn EventSink>,
        policy: PollPolicy,
    ) -> std::io::Result<Option<Shm>> {
        let mut out: Vec<Option<Outbound>> = (0..size).map(|_| None).collect();
        let mut inbound = Vec::new();
        let mut both_ways = Vec::new();
        let mut peer_arenas = HashMap::new();
        for pair in paired.pairs {
            peer_arenas.insert(pair.peer, pair.masters);
            let (sender, receiver) = pair.channel.split(Duration::ZERO);
            if pair.send {
                out[pair.peer as usize] = Some(Outbound::new(pair.peer, sender));
                both_ways.push(pair.peer);
            }
            inbound.push(Inbound::new(pair.peer, receiver));
        }
        if inbound.is_empty() {
            return Ok(None);
        }
        let inboxes = Inboxes::new(inbound, Arc::clone(&sink), Limits::new(cluster));
        let links = Arc::new(Links::new(rank, cluster, out, inboxes));
        let stop = Arc::new(AtomicBool::new(false));
        let service = Service {
            links: Arc::clone(&links),
            sink,
            spin: policy.spin,
            polite_after: policy.polite_after,
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name(format!("dsm-shm-{rank}"))
            .spawn(move || service.run())?;
        both_ways.sort_unstable();
        Ok(Some(Shm {
            links,
            both_ways,
            stop,
            thread: Mutex::new(Some(thread)),
            arena: Arc::new(arena),
            peer_arenas,
            mapped: RwLock::new(HashMap::new()),
        }))
    }

    /// This node's arena, for its home copies.
    pub(crate) fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// The arena of `node` if this node holds it (`own` is this node's rank).
    pub(crate) fn arena_of(&self, node: NodeId, own: NodeId) -> Option<&Arena> {
        match node == own {
            true => Some(&self.arena),
            false => self.peer_arenas.get(&node),
        }
    }

    /// Peers whose arena this node holds: their grants may come without data.
    pub(crate) fn homes_read(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self.peer_arenas.keys().copied().collect();
        peers.sort_unstable();
        peers
    }

    /// Maps every paired peer's master copies of the region of `layout` at `address` (the
    /// region's agreed address, which fixes its place in every arena), and populates in each
    /// mapping the pages that peer homes, and no others: a copy out of them takes no fault,
    /// and no arena commits pages another node homes.
    pub(crate) fn map_region(
        &self,
        layout: &RegionLayout,
        address: u64,
        nodes: u32,
    ) -> std::io::Result<()> {
        let offset = Arena::offset_of(address)?;
        let mut maps = Vec::with_capacity(self.peer_arenas.len());
        for (&peer, arena) in &self.peer_arenas {
            let mapping = arena.map(offset, layout.pages)?;
            mapping.populate(layout.homed_runs(peer, nodes));
            maps.push(((peer, layout.id), mapping));
        }
        self.mapped
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(maps);
        Ok(())
    }

    /// Unmaps the peers' master copies of `region` (freed, or its set-up failed).
    pub(crate) fn unmap_region(&self, region: u32) {
        self.mapped
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&(_, r), _| r != region);
    }

    /// Writes `data` into `home`'s arena as `page`'s master copy, if `home` is a paired peer.
    pub(crate) fn write_now(
        &self,
        home: NodeId,
        page: PageId,
        data: &Page,
    ) -> Option<std::result::Result<(), TransportError>> {
        self.with_masters(home, page, |masters| masters.write_page(page.page, data))
    }

    /// Merges `diff` into `home`'s arena (exactly its changed bytes), if `home` is a paired
    /// peer.
    pub(crate) fn merge_now(
        &self,
        home: NodeId,
        diff: &dsm_wire::PageDiff,
    ) -> Option<std::result::Result<(), TransportError>> {
        self.with_masters(home, diff.page, |masters| {
            masters.write_runs(diff.page.page, &diff.runs)
        })
    }

    /// A copy of `page` out of `home`'s arena, if `home` is a paired peer.
    pub(crate) fn read_now(
        &self,
        home: NodeId,
        page: PageId,
    ) -> Option<std::result::Result<Page, TransportError>> {
        self.with_masters(home, page, |masters| masters.copy_page(page.page))
    }

    /// `access` on the mapping of `home`'s masters of `page`'s region: `None` when `home` is
    /// not a paired peer; `NotExposed` without a mapping, `OutOfRange` when `access` finds
    /// the page outside it.
    fn with_masters<R>(
        &self,
        home: NodeId,
        page: PageId,
        access: impl FnOnce(&Shared) -> Option<R>,
    ) -> Option<std::result::Result<R, TransportError>> {
        if !self.peer_arenas.contains_key(&home) {
            return None;
        }
        let mapped = self.mapped.read().unwrap_or_else(|p| p.into_inner());
        let Some(masters) = mapped.get(&(home, page.region)) else {
            return Some(Err(TransportError::NotExposed {
                region: page.region,
                home,
            }));
        };
        Some(access(masters).ok_or(TransportError::OutOfRange { page, home }))
    }

    /// Sends `message` to `to` if `to` is reached by shared memory (`None` otherwise).
    pub(crate) fn send(
        &self,
        to: NodeId,
        message: &Message,
    ) -> Option<std::result::Result<(), TransportError>> {
        self.links.send(to, message)
    }

    /// The node waits for an answer it sent nothing for: wakes the shared-memory thread if
    /// it sleeps, and its wake-up counts as activity, so it polls (see `Wire::expect_answer`).
    pub(crate) fn poll_for_answer(&self) {
        dsm_core::wakes::Wake::wake_now(&*self.links);
    }

    /// The calling thread serves the rings until `done` or `until` (`Links::serve_until`).
    pub(crate) fn serve_until(&self, done: &dyn Fn() -> bool, until: std::time::Instant) -> bool {
        self.links.serve_until(done, until)
    }

    /// Peers this node both sends to and receives from by shared memory.
    pub(crate) fn both_ways(&self) -> &[NodeId] {
        &self.both_ways
    }

    /// Stops the thread (idempotent). Messages still queued behind a full ring are dropped:
    /// the node is leaving.
    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.links.doorbell.ring();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}
