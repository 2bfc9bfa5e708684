//! [`Node`]: one process's membership in a dsm cluster.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dsm_locks::{LockEngine, LockKind, LockTable, TableConfig};
use dsm_tcp_fallback::{TcpConfig, TcpTransport};

use dsm_core::Transport;
use std::collections::{BTreeSet, HashMap};
use std::marker::PhantomData;

use dsm_core::{CoherenceConfig, CoherenceEngine, Consistency, Placement, RegionLayout};
use dsm_wire::{Alloc, Membership, Message, NodeId, PAGE_SIZE, PageId, RegionSpec};

use crate::coherence::Coherence;
use crate::fault::{Resolver, SIGNAL_WAIT_MARGIN, SignalPath};
use crate::lock::{Lock, LockConsistency, LockOutbox};
use crate::membership::bootstrap::{self, Booted};
use crate::membership::ring::Ring;
use crate::region::{Region, RegionOptions};
use crate::runtime::alloc::Allocator;
use crate::runtime::driver::{Driver, EVENT_QUEUE, Event, NetworkSink, Sink, send_counted};
use crate::runtime::views::ViewService;
use crate::runtime::{Core, Shared, monitor};
use crate::sched::{Role, ServiceThreads};
use crate::stats::{Counters, RegionCounters};
use crate::transport::shm::{self, PollPolicy};
use crate::transport::{Wire, rdma};
use crate::{Config, Error, FaultDelivery, Result, Stats, WriteTracking};

/// A node of a dsm cluster. Created by [`Node::join`]; every collective call (`alloc`,
/// `free`, `barrier`, `leave`) must be made by every node in the same order.
pub struct Node {
    config: Config,
    core: Arc<Core>,
    transport: Arc<Wire>,
    locks: Arc<LockTable>,
    events: SyncSender<Event>,
    /// Tells the driver to return (see `stop`).
    driver_stop: Arc<AtomicBool>,
    /// The driver thread; joined on leave/drop (after `events` got `Stop`).
    driver: Mutex<Option<JoinHandle<()>>>,
    /// The heartbeat and failure-detection thread; joined like the driver.
    monitor: Mutex<Option<JoinHandle<()>>>,
    barrier_epoch: AtomicU64,
    alloc_round: AtomicU64,
    gone: AtomicBool,
    /// How long a waiting thread (a SIGBUS handler, a barrier's waiter) looks for its answer
    /// before it sleeps: the transports' poll after activity (shorter where nodes share
    /// CPUs).
    wait_spin: Duration,
    /// How long a SIGBUS handler whose answer another thread of this node delivers (the TCP
    /// or RDMA thread) looks at its slot before it sleeps: the poll, but no longer than the
    /// transport thread stays real-time (`PollPolicy::polite_after`). The node's threads
    /// share its CPU when it is pinned; past that window the transport thread polls at the
    /// handler's priority, and a handler still spinning would keep it from the answer until
    /// the scheduler switched them: an in-order scan over TCP with 4 pages per fault,
    /// whose answers come after ~60 µs, took 48 µs per page against 42 without prefetch.
    slot_spin: Duration,
    /// Whether a barrier's waiter serves the same-host rings itself (`serve_for_answer`).
    serve_barriers: bool,
    /// The first failure of a collective call: every later one fails with it (the nodes may
    /// no longer agree on which call is which).
    collective_failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("rank", &self.config.rank)
            .field("size", &self.config.size)
            .finish_non_exhaustive()
    }
}

/// How long a node dropped without `leave` lets queued frames go before closing.
const DROP_FLUSH_GRACE: Duration = Duration::from_millis(200);

/// Longest `stop` waits for the driver thread to return. Its turns are bounded (it waits at
/// most 100 ms for an event, and a send into a full TCP queue at most 10 s), so it sees the
/// stop flag well within this.
const DRIVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest `leave` waits for the other nodes' `Leave`.
pub const LEAVE_LINGER: Duration = Duration::from_secs(5);

/// The engine configuration of this node (`one_sided`: pages move by RDMA READ; with the
/// same-host peers of `wire`, by copies out of each other's arenas).
fn engine_config(config: &Config, one_sided: bool, wire: &Wire) -> CoherenceConfig {
    let mut engine = CoherenceConfig::new(config.rank, config.size);
    engine.one_sided = one_sided;
    engine.readers_of_home = wire.shm_peers().to_vec();
    engine.homes_read = wire.shm_homes_read();
    engine.scan_writes = config.write_tracking == WriteTracking::Scan;
    let pages = config.twin_limit_bytes / PAGE_SIZE as u64;
    engine.twin_limit = usize::try_from(pages).unwrap_or(usize::MAX);
    engine
}

/// The write tracking this process can use: `asked`, unless it asked for scanning and the
/// kernel (before 6.7) or a seccomp filter does not allow it; then write faults, said once.
fn write_tracking(asked: WriteTracking) -> WriteTracking {
    static PROBED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    if asked == WriteTracking::Faults {
        return asked;
    }
    let probed = PROBED.get_or_init(|| {
        let outcome = dsm_uffd::probe_write_tracking().map_err(|e| e.to_string());
        if let Err(why) = &outcome {
            eprintln!(
                "dsm: release-mode regions take a write fault per page per interval: \
                 asynchronous write tracking is unavailable here ({why})"
            );
        }
        outcome
    });
    if probed.is_ok() {
        WriteTracking::Scan
    } else {
        WriteTracking::Faults
    }
}

fn lock_table(config: &Config, core: &Arc<Core>) -> LockTable {
    let (rank, size) = (config.rank, config.size);
    // Locks only: `Node::barrier` has its own barrier (runtime/barrier.rs), which fails
    // promptly with NodeFailed and carries every node's write notices.
    LockTable::locks_only(
        LockEngine::new(rank, size, LockKind::RicartAgrawala),
        Box::new(LockOutbox {
            transport: Arc::clone(&core.transport),
            counters: Arc::clone(&core.shared.counters),
            trace: Arc::clone(&core.shared.trace),
        }),
        Box::new(LockConsistency {
            core: Arc::clone(core),
            timeout: config.op_timeout,
            hand_back: config.lock_hand_back,
        }),
        TableConfig {
            timeout: config.op_timeout,
            ..TableConfig::default()
        },
    )
}

/// Builds the io_uring TCP mesh on the listener and addresses boot-up produced; also gives
/// the polling policy the shared-memory thread follows too.
fn start_transport(
    config: &Config,
    booted: Booted,
    sink: Arc<NetworkSink>,
) -> Result<(TcpTransport, PollPolicy)> {
    let oversubscribed = crate::sched::oversubscribed(config.rank, &booted.peers);
    let mut tcp = TcpConfig::new(
        config.rank,
        booted.listener,
        booted.peers,
        config.cluster_id(),
    );
    // Explicit either way: keyless only when the configuration says insecure (or alone).
    tcp.key = config.key();
    tcp.connect_timeout = booted.deadline.saturating_duration_since(Instant::now());
    tcp.spin = config.spin;
    if oversubscribed {
        // Nodes share CPUs: the CPU a poll takes is another node's, so polls are short (see
        // `sched::OVERSUBSCRIBED_SPIN`), and real-time throughout.
        tcp.spin = config.spin.min(crate::sched::OVERSUBSCRIBED_SPIN);
        tcp.polite_after = tcp.spin;
        // And every frame goes through the transport thread (see the field's docs).
        tcp.send_from_caller = false;
    }
    let policy = PollPolicy {
        spin: tcp.spin,
        polite_after: tcp.polite_after,
        oversubscribed,
    };
    let tcp = TcpTransport::start(tcp, sink).map_err(|e| match e {
        dsm_tcp_fallback::Error::MeshTimeout { missing, .. } => Error::JoinTimeout { missing },
        other => Error::Transport(dsm_core::TransportError::Io {
            call: "start the TCP transport",
            detail: other.to_string(),
        }),
    })?;
    Ok((tcp, policy))
}

impl Node {
    /// Joins the cluster `config` describes and blocks until every node has joined (or fails
    /// with [`Error::JoinTimeout`] naming the ranks that did not come).
    pub fn join(mut config: Config) -> Result<Node> {
        crate::log::install_default();
        config.write_tracking = write_tracking(config.write_tracking);
        if config.insecure() {
            tracing::warn!(
                rank = config.rank,
                "DSM_INSECURE=1: running without a cluster key; anyone who can reach {} or a \
                 node's port can join this cluster and read or write its memory",
                config.coordinator
            );
        }
        let connector = rdma::open(&config)?;
        let listener = shm::listen(&config)?;
        let booted = bootstrap::run(&config, rdma::offered(connector.as_ref()))?;
        let deadline = booted.deadline;
        let (events, receiver) = sync_channel(EVENT_QUEUE);
        let driver_stop = Arc::new(AtomicBool::new(false));
        let priority = Arc::new(ServiceThreads::new(config.service_priority));
        let sink = Arc::new(Sink::new(events.clone(), Arc::clone(&priority)));
        let network_sink = Arc::new(NetworkSink::new(Arc::clone(&sink)));
        let (tcp, policy) = start_transport(&config, booted, Arc::clone(&network_sink))?;
        let wait_spin = policy.spin;
        let slot_spin = policy.spin.min(policy.polite_after);
        // Where nodes share CPUs, a barrier's waiter spinning keeps its CPU from the node
        // that shares it, which may still have to arrive: 4 nodes on 2 CPUs, barrier
        // 87-93 us without against 96-99 us with, Jacobi 356 against 383 ms (medians of 5).
        let serve_barriers = !policy.oversubscribed;
        let shm = shm::connect(&config, listener.as_ref(), deadline, sink.clone(), policy)?;
        let transport = Arc::new(Wire::new(tcp, shm));
        if transport.shm_peers().len() + 1 == config.size as usize {
            network_sink.set_quiet();
        }
        let engine = CoherenceEngine::new(engine_config(&config, false, &transport));
        let core = Arc::new(Core {
            shared: Shared::new(config.rank, config.size),
            coherence: Mutex::new(Coherence::new(engine, transport.arena())),
            released: Mutex::new(BTreeSet::new()),
            transport: Arc::clone(&transport) as Arc<dyn Transport>,
            barrier: Mutex::new(dsm_locks::BarrierEngine::new(
                config.rank,
                config.size,
                config.barrier.kind(config.size),
            )),
            ring: Mutex::new(Ring::new(
                config.rank,
                config.size,
                config.heartbeat_interval,
                config.failure_timeout,
                Instant::now(),
            )),
            requests: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            priority,
        });
        let scan = config.write_tracking == WriteTracking::Scan;
        core.shared
            .counters
            .scan_writes
            .store(scan, Ordering::Relaxed);
        let locks = Arc::new(lock_table(&config, &core));
        sink.attach(Arc::clone(&core), Arc::clone(&locks));
        let driver = Driver {
            rank: config.rank,
            core: Arc::clone(&core),
            locks: Arc::clone(&locks),
            allocator: Allocator::default(),
            views: ViewService::default(),
            events: receiver,
            stop: Arc::clone(&driver_stop),
            fault_timeout: config.op_timeout,
            started: Instant::now(),
        };
        let driver = std::thread::Builder::new()
            .name(format!("dsm-driver-{}", config.rank))
            .spawn(move || {
                driver
                    .core
                    .priority
                    .apply_to_current_thread(Role::Background);
                driver.run()
            })
            .map_err(|e| Error::io("spawn driver thread", e))?;
        let monitor = monitor::spawn(
            config.rank,
            Arc::clone(&core),
            events.clone(),
            Arc::clone(&driver_stop),
        )
        .map_err(|e| Error::io("spawn monitor thread", e))?;
        let node = Node {
            config,
            core,
            transport,
            locks,
            events,
            driver_stop,
            driver: Mutex::new(Some(driver)),
            monitor: Mutex::new(Some(monitor)),
            barrier_epoch: AtomicU64::new(0),
            alloc_round: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            wait_spin,
            slot_spin,
            serve_barriers,
            collective_failure: Mutex::new(None),
        };
        node.select_rdma(connector, sink, deadline)?;
        node.announce(deadline)?;
        // Every peer has paired (it said `Joined`): nobody looks for this socket any more.
        drop(listener);
        crate::trace::start(&node.core.shared, &node.config);
        Ok(node)
    }

    /// Trades RDMA connection data with every node and, when all offered RDMA, connects and
    /// switches page movement to one-sided RDMA READs (before any region exists, so the
    /// engine is simply rebuilt in one-sided mode). Every node connects before it says
    /// `Joined`, so no queue pair is used before its peer's is ready.
    fn select_rdma(
        &self,
        connector: Option<rdma::RdmaConnector>,
        sink: Arc<Sink>,
        deadline: Instant,
    ) -> Result<()> {
        let send = |to, message| self.send(to, message);
        let hellos = rdma::trade_hellos(
            &self.config,
            connector.as_ref(),
            &self.core.shared,
            send,
            deadline,
        )?;
        let Some(rdma) = rdma::connect(&self.config, connector, &hellos, sink)? else {
            return Ok(());
        };
        self.transport.use_rdma(rdma);
        let engine = engine_config(&self.config, true, &self.transport);
        self.core.engine(|c, _| {
            *c = Coherence::new(CoherenceEngine::new(engine), self.transport.arena());
            Ok(())
        })
    }

    /// Release-mode regions find written pages by scanning.
    fn scan_writes(&self) -> bool {
        self.config.write_tracking == WriteTracking::Scan
    }

    /// Sends `Joined` to every other node and waits for theirs.
    fn announce(&self, deadline: Instant) -> Result<()> {
        let rank = self.rank();
        for to in (0..self.size()).filter(|&to| to != rank) {
            self.send(to, Message::Membership(Membership::Joined { rank }));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let waited = self.core.shared.wait(
            timeout,
            |s| format!("Joined from ranks {:?}", s.arrivals.missing()),
            |s| s.arrivals.complete().then_some(()),
        );
        match waited {
            Err(Error::Timeout { .. }) => Err(Error::JoinTimeout {
                missing: self.core.shared.read(|s| s.arrivals.missing()),
            }),
            other => other,
        }
    }

    /// This node's rank, `0..size`.
    pub fn rank(&self) -> NodeId {
        self.config.rank
    }

    /// Number of nodes in the cluster.
    pub fn size(&self) -> u32 {
        self.config.size
    }

    /// The configuration this node joined with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The runtime this node shares with its regions and files.
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// A snapshot of this node's counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.core.shared.counters.snapshot();
        stats.service_priority = self.core.priority.obtained();
        stats.shm_peers = u32::try_from(self.transport.shm_peers().len()).unwrap_or(u32::MAX);
        stats
    }

    /// Pauses (`false`) or resumes (`true`) per-hop tracing, and returns whether this node
    /// records now. Only a node with a trace file ([`Config::trace`]) records: from the end of
    /// [`join`](Self::join) until its trace is written at [`leave`](Self::leave) (or drop).
    /// Pausing keeps what was recorded; a program (or a benchmark) turns tracing on around
    /// the part it wants to see.
    pub fn set_tracing(&self, on: bool) -> bool {
        self.core.shared.trace.set_on(on)
    }

    /// Waits until every node has called `barrier` as many times as this one (collective).
    /// A barrier is a release and an acquire: writes to `Release` regions made before it by
    /// any node are visible after it on every node. Fails with [`Error::NodeFailed`] when a
    /// node fails meanwhile.
    pub fn barrier(&self) -> Result<()> {
        self.collective(|| self.barrier_unchecked())
    }

    /// Runs the collective call `call`: refused when an earlier one failed; a failure that
    /// may leave the nodes disagreeing on which call is which (a timeout, a mismatch, a
    /// failed node, a protocol error) is remembered for every later one. Failures every node
    /// sees alike before any message (a region too large, say) are not.
    fn collective<R>(&self, call: impl FnOnce() -> Result<R>) -> Result<R> {
        let failure = || {
            self.collective_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        };
        if let Some(first) = failure().clone() {
            return Err(Error::CollectiveFailed { first });
        }
        let result = call();
        if let Err(e) = &result {
            let sticky = matches!(
                e,
                Error::Timeout { .. }
                    | Error::CollectiveMismatch { .. }
                    | Error::NodeFailed { .. }
                    | Error::Protocol(_)
            );
            if sticky {
                failure().get_or_insert_with(|| e.to_string());
            }
        }
        result
    }

    fn barrier_unchecked(&self) -> Result<()> {
        self.check_open()?;
        let epoch = self.barrier_epoch.load(Ordering::Relaxed) + 1; // the one `rendezvous` takes
        crate::trace::barrier_enter(&self.core.shared, epoch);
        let timeout = self.config.op_timeout;
        let drops = self.config.barrier_drops;
        let mut mine = self
            .core
            .sync(timeout, "release before a barrier", |c, token, ctx| {
                if drops {
                    c.drop_consumed_copies(ctx)?;
                }
                c.release(token, ctx)
            })?;
        // Pages published at lock releases since the last barrier: the nodes that did not
        // take the lock after us learn of them here.
        let at_locks =
            std::mem::take(&mut *self.core.released.lock().unwrap_or_else(|p| p.into_inner()));
        for page in at_locks {
            if !mine.contains(&page) {
                mine.push(page);
            }
        }
        let notices = self.rendezvous(Collective::Barrier, mine.clone())?;
        let others = others_notices(notices, &mine);
        self.core
            .sync(timeout, "acquire after a barrier", |c, token, ctx| {
                c.acquire(token, &others, ctx)
            })?;
        Counters::bump(&self.core.shared.counters.barriers);
        crate::trace::barrier_return(&self.core.shared, epoch);
        Ok(())
    }

    /// The barrier's message round, for a call of `kind`: arrive at rank 0 with `notices`,
    /// wait for the release; returns every node's notices (taken, so nothing is left behind
    /// for this epoch). Rank 0 refuses an epoch that nodes reach from different calls.
    fn rendezvous(&self, kind: Collective, notices: Vec<PageId>) -> Result<Vec<PageId>> {
        let epoch = self.barrier_epoch.fetch_add(1, Ordering::Relaxed) + 1;
        // The release is served by this thread while it spins (`serve_for_answer`); the
        // arrival then does not wake the shared-memory thread.
        let serving = self
            .transport
            .shm()
            .filter(|_| self.serve_barriers)
            .map(|_| shm::Serving::start());
        // Before the arrival leaves: the transport keeps polling for the release from then on.
        self.core.shared.awaiting.sleep();
        if self.core.barrier_arrive(epoch, kind as u32, notices)? {
            self.transport.expect_answer(serving.is_some());
        }
        self.serve_for_answer(serving, |s| {
            s.barrier_aborted.contains(&epoch) || s.barrier_released >= epoch
        });
        let aborted = self.core.shared.wait(
            self.config.op_timeout,
            |_| {
                let awaiting = self
                    .core
                    .barrier
                    .lock()
                    .map(|b| b.awaiting())
                    .unwrap_or_default();
                format!("barrier {epoch} of {kind:?} (a round from node(s) {awaiting:?})")
            },
            |s| {
                let aborted = s.barrier_aborted.contains(&epoch);
                (aborted || s.barrier_released >= epoch).then_some(aborted)
            },
        )?;
        if aborted {
            return Err(Error::CollectiveMismatch {
                epoch,
                detail: format!("this node was in {kind:?}; another node was not"),
            });
        }
        let all = self
            .core
            .shared
            .update(|s| s.barrier_notices.remove(&epoch));
        Ok(all.unwrap_or_default())
    }

    /// Progress while waiting (issue #10): with same-host peers, the thread that waits for
    /// an answer serves their rings and the node's own messages itself for up to the spin
    /// (`shm::Links::serve_until`), so that the answer is taken where it is awaited, with no
    /// wake-up of the shared-memory thread and none of this thread. A failure or a close
    /// also ends it. Then (answered or not) the shared-memory thread is in charge again.
    /// `serving` was taken before the request left.
    fn serve_for_answer(
        &self,
        serving: Option<shm::Serving>,
        answered: impl Fn(&crate::runtime::State) -> bool,
    ) {
        let Some(shm) = self.transport.shm().filter(|_| serving.is_some()) else {
            return;
        };
        let done = || {
            self.core
                .shared
                .read(|s| answered(s) || !s.failed.is_empty() || s.closed)
        };
        shm.serve_until(&done, Instant::now() + self.wait_spin);
        drop(serving); // Without the answer, this wakes the shared-memory thread.
    }

    /// Chooses the algorithm of lock `id`: Ricart–Agrawala (the default: 2(N−1) messages per
    /// acquire, no node special) or the home-queue lock (3 messages per acquire whatever N,
    /// none at its home, node `id % size`). Every node must choose the same for a lock before
    /// any node uses it (e.g. right after `join`, before a barrier).
    pub fn set_lock_kind(&self, id: u32, kind: LockKind) -> Result<()> {
        Ok(self.locks.set_kind(id, kind)?)
    }

    /// The cluster-wide lock `id` (any `u32`; every node names the same lock by the same
    /// id). `lock(id).acquire()` returns a guard that releases on drop.
    pub fn lock(&self, id: u32) -> Lock<'_> {
        Lock {
            id,
            table: &self.locks,
            core: &self.core,
            timeout: self.config.op_timeout,
        }
    }

    /// Allocates a shared array of `len` elements of `T` (collective: every node calls it
    /// with the same name, length and consistency, in the same order). The array sits at the
    /// same address on every node, zero-filled; pages are homed in blocks (node `r` is the
    /// home of the `r`-th block of pages), so rows a node works on are best placed in its
    /// block.
    pub fn alloc<T: Copy>(
        &self,
        name: &str,
        len: usize,
        consistency: Consistency,
    ) -> Result<Region<T>> {
        self.alloc_with(name, len, RegionOptions::new(consistency))
    }

    /// [`alloc`](Self::alloc) with every per-region setting (every node must pass the same
    /// consistency; the prefetch may differ per node).
    ///
    /// A region larger than the cluster can serve (64 GiB: page indices on the wire) fails
    /// with [`Error::RegionTooLarge`] on every node before anything is sent. Memory is
    /// committed lazily: a node pays for the home pages it writes and the pages it caches,
    /// and the call takes the same time for any size (over TCP). A node that cannot set the
    /// region up fails the call on every node ([`Error::AllocFailed`] on the others).
    pub fn alloc_with<T: Copy>(
        &self,
        name: &str,
        len: usize,
        options: RegionOptions,
    ) -> Result<Region<T>> {
        self.collective(|| self.alloc_unchecked(name, len, options))
    }

    fn alloc_unchecked<T: Copy>(
        &self,
        name: &str,
        len: usize,
        options: RegionOptions,
    ) -> Result<Region<T>> {
        use crate::runtime::alloc::{SetupStep, master_runs, placed, region_pages};
        let RegionOptions {
            consistency,
            prefetch,
        } = options;
        self.check_open()?;
        if len == 0 || size_of::<T>() == 0 || align_of::<T>() > PAGE_SIZE {
            return Err(Error::Config(format!(
                "cannot allocate {len} elements of {} bytes",
                size_of::<T>()
            )));
        }
        // The one size limit, before anything is sent: every node makes the same call and
        // refuses it alike, so no round is left half open.
        let pages = region_pages(name, len, size_of::<T>())?;
        let spec = RegionSpec {
            name: name.to_owned(),
            pages,
            consistency: match consistency {
                Consistency::Sequential => 0,
                Consistency::Release => 1,
            },
            placement: 1,
        };
        let (id, base) = self.agree_on_region(&spec)?;
        let base = placed(&spec, base)?;
        let layout = RegionLayout {
            id,
            pages,
            consistency,
            placement: Placement::Block,
            prefetch,
        };
        let counters = Arc::new(RegionCounters::default());
        // From here on, failed or not, this node goes to the rendezvous in `serve`, so that a
        // node that cannot get the memory fails the call on every node instead of leaving
        // the others waiting.
        let delivery = match self.config.fault_delivery {
            FaultDelivery::Thread => dsm_uffd::Delivery::Thread,
            FaultDelivery::Signal => dsm_uffd::Delivery::Signal,
        };
        let mapped = usize::try_from(base)
            .map_err(|_| Error::Protocol(format!("base address {base:#x}")))
            .and_then(|base| {
                let tracked = consistency == Consistency::Release && self.scan_writes();
                let masters = match self.config.map_masters {
                    true => master_runs(&self.transport, &layout, base as u64, self.size())
                        .map_err(|e| Error::io("find the master copies to map", e))?,
                    false => Vec::new(),
                };
                Ok(if tracked {
                    dsm_uffd::UffdRegion::new_tracked(base, pages, delivery)?
                } else if masters.is_empty() {
                    dsm_uffd::UffdRegion::new(base, pages, delivery)?
                } else {
                    dsm_uffd::UffdRegion::new_with_files(base, pages, delivery, &masters)?
                })
            })
            .map_err(|e| (SetupStep::Map, e))
            .and_then(|region| {
                let region = Arc::new(region);
                let home = self.core.engine(|c, _| {
                    c.add_region(layout, Arc::clone(&region), Arc::clone(&counters))?;
                    c.home_memory(id).ok_or_else(|| {
                        Error::Protocol(format!("region {id} added without home memory"))
                    })
                });
                home.map(|home| (region, home))
                    .map_err(|e| (SetupStep::Home, e))
            });
        let (region, server) = self.serve(&layout, name, mapped, &counters)?;
        Ok(Region {
            id,
            base: region.base().cast::<T>(),
            len,
            consistency,
            server: Some(server),
            core: Arc::clone(&self.core),
            counters,
            _elements: PhantomData,
        })
    }

    /// Exposes a newly added region's `home` copies, serves its faults, and waits until
    /// every node does (`mapped` is this node's region and home copies, or the step that
    /// failed). Every node goes to the rendezvous, saying whether it could set the region
    /// up; unless all could, every node takes the region back out of its NIC, engine and
    /// address space and fails: the one that failed with its own error, the others with
    /// [`Error::AllocFailed`] naming it.
    fn serve(
        &self,
        layout: &RegionLayout,
        name: &str,
        mapped: std::result::Result<
            (Arc<dsm_uffd::UffdRegion>, dsm_core::HomeMemory),
            (crate::runtime::alloc::SetupStep, Error),
        >,
        counters: &Arc<RegionCounters>,
    ) -> Result<(Arc<dsm_uffd::UffdRegion>, dsm_uffd::FaultServer)> {
        use crate::runtime::alloc::{SetupStep, failures};
        let id = layout.id;
        let started = mapped.and_then(|(region, home)| {
            // Half the operation timeout: a node whose peers' keys never come (a peer that
            // could not register) still reaches the rendezvous well within the others' wait.
            let timeout = self.config.op_timeout / 2;
            rdma::expose(
                &self.transport,
                &self.core.shared,
                self.size(),
                id,
                home,
                timeout,
            )
            .map_err(|e| (SetupStep::Expose, e))?;
            self.transport
                .map_masters(layout, region.base() as u64, self.size())
                .map_err(|e| {
                    (
                        SetupStep::Expose,
                        Error::io("map same-host peers' master copies", e),
                    )
                })?;
            let signal = match self.config.fault_delivery {
                FaultDelivery::Thread => None,
                FaultDelivery::Signal => Some(SignalPath {
                    events: self.events.clone(),
                    slots: self
                        .core
                        .engine(|c, _| Ok(c.slots()))
                        .map_err(|e| (SetupStep::Serve, e))?,
                    timeout: self.config.op_timeout + SIGNAL_WAIT_MARGIN,
                    spin: self.wait_spin,
                    slot_spin: self.slot_spin,
                    wire: Some(Arc::clone(&self.transport)),
                }),
            };
            let resolver = Arc::new(Resolver {
                core: Arc::clone(&self.core),
                region: id,
                counters: Arc::clone(counters),
                signal,
            });
            let server = dsm_uffd::FaultServer::start(Arc::clone(&region), resolver)
                .map_err(|e| (SetupStep::Serve, e.into()))?;
            Ok((region, server))
        });
        let notice = started
            .as_ref()
            .err()
            .map(|(step, _)| step.notice(self.rank()));
        // No node may fault on the region before every node can serve it, and none keeps it
        // unless every node could set it up.
        let everyone = self.rendezvous(Collective::Alloc, notice.into_iter().collect());
        let failed = match (started, everyone) {
            (Ok(served), Ok(notices)) => match failures(name, &notices) {
                None => return Ok(served),
                Some(error) => error,
            },
            (Ok((_region, server)), Err(error)) => {
                drop(server);
                error
            }
            (Err((step, error)), _) => {
                tracing::error!(rank = self.rank(), region = id, ?step, %error, "alloc failed");
                error
            }
        };
        // Nothing serves the region now (the server stopped when dropped): take it back out
        // of the NIC, then the engine (which unmaps its home copies and drops its mapping),
        // so a failed alloc leaves nothing behind. Either may never have held it.
        let _ = rdma::withdraw(&self.transport, id);
        self.transport.unmap_masters(id);
        let _ = self
            .core
            .engine(|c, _| c.remove_region(id, &self.core.shared.counters));
        Err(failed)
    }

    /// Sends `Malloc` to rank 0 and waits for its answer.
    fn agree_on_region(&self, spec: &RegionSpec) -> Result<(u32, u64)> {
        let req = self.alloc_round.fetch_add(1, Ordering::Relaxed) + 1;
        self.send(
            0,
            Message::Alloc(Alloc::Malloc {
                req,
                spec: spec.clone(),
            }),
        );
        // An answer that comes after this wait timed out is dropped when the next round is
        // answered (`keep_answer`).
        let (id, base, agreed) = self.core.shared.wait(
            self.config.op_timeout,
            |_| format!("allocation round {req} ({:?}) from rank 0", spec.name),
            |s| s.allocs.get(&req).cloned(),
        )?;
        self.core.shared.update(|s| s.allocs.remove(&req));
        if &agreed != spec {
            return Err(Error::Protocol(format!(
                "collective alloc disagrees: this node asked {spec:?}, rank 0 decided {agreed:?}"
            )));
        }
        Ok((id, base))
    }

    /// Frees a region (collective). Every node must be done with it: a barrier comes first.
    pub fn free<T: Copy>(&self, region: Region<T>) -> Result<()> {
        self.collective(|| self.free_unchecked(region))
    }

    fn free_unchecked<T: Copy>(&self, mut region: Region<T>) -> Result<()> {
        self.barrier()?;
        drop(region.server.take());
        rdma::withdraw(&self.transport, region.id)?;
        self.transport.unmap_masters(region.id);
        self.core
            .engine(|c, _| c.remove_region(region.id, &self.core.shared.counters))?;
        self.rendezvous(Collective::Free, Vec::new())?;
        Ok(())
    }

    /// Leaves the cluster cleanly (collective): a barrier, then every node says `Leave` and
    /// waits (at most [`LEAVE_LINGER`]) until every other node said it too or closed its
    /// connections, so that nothing still in flight to a peer (the barrier's release, say) is
    /// cut off; then the connections close without anyone being declared failed. A node
    /// tracing ([`Config::trace`]) writes its trace file first; when that fails, `leave`
    /// returns [`Error::Io`] naming the file, and the node has left all the same.
    pub fn leave(self) -> Result<()> {
        self.barrier()?;
        // From here peers may close at any moment: judging their silence would blame them.
        let _ = self.events.try_send(Event::Leaving);
        let rank = self.rank();
        for to in (0..self.size()).filter(|&to| to != rank) {
            self.send(to, Message::Membership(Membership::Leave { rank }));
        }
        let all_gone = self.core.shared.wait_quietly(LEAVE_LINGER, |s| {
            (0..self.size()).all(|r| r == rank || s.left[r as usize] || s.failed.contains(&r))
        });
        if !all_gone {
            tracing::warn!(rank, "leaving before every peer said Leave");
        }
        let traced = self.core.shared.trace.write_once();
        self.stop();
        traced
    }

    fn check_open(&self) -> Result<()> {
        if self.gone.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    pub(crate) fn send(&self, to: NodeId, message: Message) {
        send_counted(
            self.transport.as_ref(),
            &self.core.shared.counters,
            to,
            &message,
        );
    }

    /// Stops the driver and closes the connections (idempotent).
    fn stop(&self) {
        if self.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        crate::trace::finish(&self.core.shared, self.rank());
        // The flag stops the driver even when its queue is full; `Stop` (when it fits) only
        // wakes it sooner.
        self.driver_stop.store(true, Ordering::Release);
        let _ = self.events.try_send(Event::Stop);
        for thread in [&self.driver, &self.monitor] {
            let handle = thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(handle) = handle {
                join_within(handle, DRIVER_STOP_TIMEOUT, self.rank());
            }
        }
        self.core.shared.update(|s| s.closed = true);
        // Regions may outlive the node: unmap their pages so that any later access faults
        // and fails loudly (the resolver checks `gone`) instead of reading stale bytes.
        self.core.gone.store(true, Ordering::Release);
        let _ = self.core.engine(|c, _| {
            c.unmap_all();
            Ok(())
        });
        if let Err(e) = self.transport.shutdown() {
            tracing::warn!(rank = self.rank(), error = %e, "transport shutdown");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Without `leave`, peers see the connections close and declare this node failed:
        // that is what a crash looks like, and it is the honest signal. The transport drops
        // frames still queued when it shuts down, so give the last ones (a `NodeFailed`
        // broadcast, typically: the reason this node is going away) a moment to leave first.
        if !self.gone.load(Ordering::Acquire) {
            std::thread::sleep(DROP_FLUSH_GRACE);
        }
        self.stop();
    }
}

/// The collective call a barrier instance belongs to (carried in `BarrierArrive.round`), so
/// that rank 0 never pairs a barrier with an allocation's or a free's rendezvous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Collective {
    Barrier = 0,
    Alloc = 1,
    Free = 2,
}

/// Joins `driver` if it returns within `timeout`; otherwise leaves it running (detached: it
/// holds only shared `Arc`s) and says what was awaited, instead of hanging the caller.
fn join_within(driver: JoinHandle<()>, timeout: Duration, rank: NodeId) {
    let deadline = Instant::now() + timeout;
    while !driver.is_finished() {
        if Instant::now() >= deadline {
            tracing::error!(
                rank,
                ?timeout,
                "a runtime thread (driver or monitor) did not return after Stop; left running"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if driver.join().is_err() {
        tracing::error!(rank, "a runtime thread (driver or monitor) panicked");
    }
}

/// The notices of other nodes: `all` with one occurrence of each of `mine` removed (a page
/// only this node wrote needs no invalidation here; one also written elsewhere does).
fn others_notices(mut all: Vec<PageId>, mine: &[PageId]) -> Vec<PageId> {
    // Linear, not a search per page: a barrier carries every page every node wrote.
    let mut skip: HashMap<PageId, usize> = HashMap::with_capacity(mine.len());
    for page in mine {
        *skip.entry(*page).or_default() += 1;
    }
    all.retain(|page| match skip.get_mut(page) {
        Some(left) if *left > 0 => {
            *left -= 1;
            false
        }
        _ => true,
    });
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_that_does_not_return_is_left_after_the_timeout() {
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let stuck = std::thread::spawn(move || {
            let _ = hold.recv_timeout(Duration::from_secs(30));
        });
        let started = Instant::now();
        join_within(stuck, Duration::from_millis(50), 0);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(30), "{waited:?}");
        drop(release);
    }

    #[test]
    fn a_driver_that_returns_is_joined() {
        let done = std::thread::spawn(|| ());
        let started = Instant::now();
        join_within(done, Duration::from_secs(30), 0);
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn own_notices_are_removed_once_and_shared_pages_stay() {
        let p = |page| PageId { region: 1, page };
        // Page 1: only we wrote it; page 2: we and another node; page 3: another node.
        let all = vec![p(1), p(2), p(2), p(3)];
        let mut others = others_notices(all, &[p(1), p(2)]);
        others.sort();
        assert_eq!(others, vec![p(2), p(3)]);
    }
}

/// The runtime with SIGBUS fault delivery, in this process (the examples under both
/// deliveries run in the integration tests with `DSM_FAULT_DELIVERY`).
#[cfg(test)]
mod signal_delivery {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_single_node_serves_its_faults_from_sigbus_handlers() {
        let config = Config::builder(0, 1)
            .coordinator("127.0.0.1:0")
            .fault_delivery(FaultDelivery::Signal)
            .build()
            .unwrap();
        let node = match Node::join(config) {
            Ok(node) => node,
            // Only a machine without userfaultfd skips; any other join failure is a failure.
            Err(e @ Error::Uffd(dsm_uffd::Error::Unavailable { .. })) => {
                // Straight to stderr: libtest captures `eprintln!` of passing tests.
                let _ = writeln!(std::io::stderr(), "SKIPPED signal delivery test: {e}");
                return;
            }
            Err(e) => panic!("a one-node cluster could not start: {e}"),
        };
        for consistency in [Consistency::Sequential, Consistency::Release] {
            let region = node.alloc::<u64>("signal", 4096, consistency).unwrap();
            let ptr = region.as_ptr();
            for i in (0..4096).step_by(97) {
                // SAFETY: in bounds of a live region; every page faults first (SIGBUS path).
                unsafe { ptr.add(i).write_volatile(i as u64 * 3) };
            }
            node.barrier().unwrap();
            for i in (0..4096).step_by(97) {
                assert_eq!(region.get(i), i as u64 * 3);
            }
            node.free(region).unwrap();
        }
        let stats = node.stats();
        assert!(stats.write_faults > 0, "no fault went through the handler");
        node.leave().unwrap();
    }
}

/// `DSM_TRACE` on a single node, in this process: the file is written at `leave`, and a file
/// that cannot be written fails `leave` (after leaving).
#[cfg(test)]
mod tracing_file {
    use std::io::Write as _;

    use super::*;

    fn traced_node(file: &std::path::Path) -> Option<Node> {
        let config = Config::builder(0, 1)
            .coordinator("127.0.0.1:0")
            .trace(file)
            .build()
            .unwrap();
        match Node::join(config) {
            Ok(node) => Some(node),
            Err(e @ Error::Uffd(dsm_uffd::Error::Unavailable { .. })) => {
                let _ = writeln!(std::io::stderr(), "SKIPPED trace file test: {e}");
                None
            }
            Err(e) => panic!("a one-node cluster could not start: {e}"),
        }
    }

    #[test]
    fn leave_writes_the_trace_and_says_when_it_cannot() {
        let dir = std::env::temp_dir().join(format!("dsm-trace-leave-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let Some(node) = traced_node(&dir.join("t.json")) else {
            return;
        };
        node.barrier().unwrap();
        node.leave().unwrap();
        let text = std::fs::read_to_string(dir.join("t.rank0.json")).unwrap();
        assert!(text.contains("\"barrier\""), "{text}");
        let Some(node) = traced_node(&dir.join("gone.json")) else {
            return;
        };
        std::fs::remove_dir_all(&dir).unwrap();
        let err = node.leave().unwrap_err();
        assert!(
            matches!(&err, Error::Io { .. }) && err.to_string().contains("gone.rank0.json"),
            "{err}"
        );
    }
}
