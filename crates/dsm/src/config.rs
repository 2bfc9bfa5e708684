//! Node configuration: from the environment a launcher sets, or from a builder.
//!
//! `DSM_*` variables win; when `DSM_RANK`/`DSM_SIZE` are absent the launchers' own variables
//! are used: Open MPI (`OMPI_COMM_WORLD_RANK/SIZE`), PMI (`PMI_RANK/SIZE`), Slurm
//! (`SLURM_PROCID/NTASKS`). A process started with none of them runs as a cluster of one
//! (rank 0 of 1), as an MPI program started without `mpirun` does.
//!
//! The cluster key comes from `DSM_CLUSTER_KEY`, else from the per-user key file (created on
//! first use); only `DSM_INSECURE=1` runs without one. The membership module's `key` docs
//! say how each is used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dsm_wire::NodeId;

use crate::membership::key::{self, Secret};
use crate::{Error, Result};

/// Variable that runs a cluster without a key when set to `1`.
pub const INSECURE_ENV: &str = "DSM_INSECURE";

/// Which transports carry a node's messages and pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// Shared memory with the peers on this host, RDMA for pages when every node has a
    /// device, TCP otherwise (`DSM_TRANSPORT=auto`, the default).
    Auto,
    /// Shared memory with every peer, or `join` fails naming a peer it could not pair with
    /// (`DSM_TRANSPORT=shm`): every node must run on this host, as this user.
    Shm,
    /// io_uring TCP with every peer (`DSM_TRANSPORT=tcp`).
    Tcp,
    /// RDMA when every node has a device, TCP otherwise (`DSM_TRANSPORT=rdma`).
    PreferRdma,
    /// RDMA or fail (`DSM_TRANSPORT=rdma!`).
    RequireRdma,
}

/// How userfaultfd faults reach the runtime (`DSM_FAULT_DELIVERY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultDelivery {
    /// A reader thread per region takes each fault and runs the coherence engine
    /// (`DSM_FAULT_DELIVERY=thread`). For programs that block SIGBUS, or that pass region
    /// memory to system calls before touching it.
    Thread,
    /// `UFFD_FEATURE_SIGBUS` (`DSM_FAULT_DELIVERY=signal`, the default; x86-64): the
    /// faulting thread runs the coherence engine from its own SIGBUS handler (handing the
    /// fault to the driver thread only when the engine's lock stays taken), so its request
    /// leaves with no hand-over between threads, and it waits on a preallocated slot,
    /// looking at it for a while before it sleeps. Measured faster than `Thread` (see
    /// docs/architecture.md). What it asks of a program:
    /// - every thread that touches a region must leave SIGBUS unblocked;
    /// - a system call whose buffer is a region page not present here fails with `EFAULT`
    ///   instead of fetching it (the kernel does not raise the signal for its own
    ///   accesses): touch the buffer first, or use `Region::read_at`/`write_at`, which do;
    /// - a program whose allocator keeps its own data in a region must use `Thread`.
    #[default]
    Signal,
}

/// Default of `DSM_TWIN_LIMIT_MB`: twin memory kept past a release with scanned writes.
pub const DEFAULT_TWIN_LIMIT_MB: u64 = 1024;

/// How a release-mode region learns which pages a node wrote (`DSM_WRITE_TRACKING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteTracking {
    /// Writes never fault: the kernel marks written pages (`UFFD_FEATURE_WP_ASYNC`) and a
    /// release finds them with one `PAGEMAP_SCAN` (Linux 6.7). Only pages another node
    /// fetched are tracked at all. Falls back to [`WriteTracking::Faults`] (saying so once on
    /// stderr and in [`Stats`](crate::Stats)) where the kernel or a seccomp filter lacks it
    /// (`DSM_WRITE_TRACKING=scan`, the default).
    Scan,
    /// The first write to a page in each interval faults, twins the page and unprotects it
    /// (`DSM_WRITE_TRACKING=faults`; any kernel with userfaultfd write-protect, 5.7).
    #[default]
    Faults,
}

/// The barrier algorithm of every collective call (`DSM_BARRIER`; every node of a cluster
/// must choose the same). Both are `dsm_locks::BarrierEngine`, the type the simulator checks,
/// and both carry every node's write notices and refuse an epoch the nodes reached from
/// different calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BarrierChoice {
    /// Central up to [`CENTRAL_BARRIER_UP_TO`] nodes, where it was measured faster;
    /// dissemination in larger clusters (`DSM_BARRIER=auto`, the default).
    #[default]
    Auto,
    /// Every node tells rank 0, rank 0 releases everyone: two hops whatever the size, but
    /// rank 0 takes N−1 arrivals in sequence (`DSM_BARRIER=central`).
    Central,
    /// ⌈log₂ N⌉ rounds of one message per node, no coordinator (`DSM_BARRIER=dissemination`).
    Dissemination,
}

/// Largest cluster [`BarrierChoice::Auto`] gives the central barrier. Measured on a 2-vCPU
/// VM (`dsm-bench latency`, 3 interleaved runs each): at 2 pinned nodes a barrier took
/// 22–25 µs central against 22–33 µs dissemination over TCP and 5.1–5.9 against 11.5–15.8 µs
/// over shared memory; at 4 nodes on 2 CPUs 76–94 against 135–147 µs. Where wake-ups are
/// dear, the coordinator's head start wins: rank 0 learns of its own release first, so it is
/// already waiting, polling, when the next arrivals come, while the symmetric rounds of a
/// dissemination barrier often reach a node that has not arrived yet and whose transport
/// sleeps. Beyond 4 nodes nothing was measured (this machine has 2 CPUs): there rank 0's
/// N−1 arrivals in sequence and its N−1 releases outgrow ⌈log₂ N⌉ hops.
pub const CENTRAL_BARRIER_UP_TO: u32 = 4;

impl BarrierChoice {
    /// The algorithm for a cluster of `nodes`.
    pub fn kind(self, nodes: u32) -> dsm_locks::BarrierKind {
        match self {
            BarrierChoice::Central => dsm_locks::BarrierKind::Central,
            BarrierChoice::Dissemination => dsm_locks::BarrierKind::Dissemination,
            BarrierChoice::Auto if nodes <= CENTRAL_BARRIER_UP_TO => {
                dsm_locks::BarrierKind::Central
            }
            BarrierChoice::Auto => dsm_locks::BarrierKind::Dissemination,
        }
    }
}

/// The scheduling priority a node's service threads ask for (`DSM_SERVICE_PRIORITY`; see
/// [`ConfigBuilder::service_priority`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServicePriority {
    /// `SCHED_FIFO` at priority 1 for the threads on the data path (the transport thread,
    /// the fault readers, the RDMA poller), nice -20 for the driver and the monitor
    /// (`DSM_SERVICE_PRIORITY=realtime`, the default). Where the process may not, the data
    /// path takes the highest nice value it may.
    #[default]
    Realtime,
    /// This nice value (-20 to 19) for every service thread (`DSM_SERVICE_PRIORITY=-20`, or
    /// `0` for the application's own priority).
    Nice(i32),
}

impl ServicePriority {
    /// The `DSM_SERVICE_PRIORITY` value that asks for this priority.
    pub fn env_value(&self) -> String {
        match self {
            ServicePriority::Realtime => "realtime".into(),
            ServicePriority::Nice(nice) => nice.to_string(),
        }
    }
}

impl std::fmt::Display for ServicePriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServicePriority::Realtime => f.write_str("real-time priority (SCHED_FIFO 1)"),
            ServicePriority::Nice(nice) => write!(f, "nice {nice}"),
        }
    }
}

/// Everything a node needs to join a cluster. Built only by [`Config::from_env`],
/// [`Config::from_vars`], [`Config::single`] or [`Config::builder`]: every one of them checks
/// it, so a `Config` in hand is a valid one (the fields are private; read them with the
/// methods of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's rank, `0..size`.
    pub(crate) rank: NodeId,
    /// Number of nodes.
    pub(crate) size: u32,
    /// `host:port` of rank 0's bootstrap listener (`DSM_COORDINATOR`). Rank 0 listens there.
    pub(crate) coordinator: String,
    /// Page transport (`DSM_TRANSPORT`).
    pub(crate) transport: TransportChoice,
    /// Shared secret authenticating peers and their frames (`DSM_CLUSTER_KEY` or the per-user
    /// key file). `None` only in a cluster of one or when [`insecure`](Self::insecure).
    pub(crate) cluster_key: Option<Secret>,
    /// Runs without a key (`DSM_INSECURE=1`): anyone who reaches the coordinator can join.
    pub(crate) insecure: bool,
    /// How long `Node::join` waits for every rank (`DSM_JOIN_TIMEOUT_MS`, default 30 s).
    pub(crate) join_timeout: Duration,
    /// Ring heartbeat period (`DSM_HEARTBEAT_MS`, default 200 ms).
    pub(crate) heartbeat_interval: Duration,
    /// Silence after which a node is declared failed (`DSM_FAILURE_TIMEOUT_MS`, default 1.5 s).
    pub(crate) failure_timeout: Duration,
    /// Bound on any other wait: a fault, a lock, a barrier (`DSM_OP_TIMEOUT_MS`, default 60 s).
    pub(crate) op_timeout: Duration,
    /// How faults are delivered (`DSM_FAULT_DELIVERY`, default signal).
    pub(crate) fault_delivery: FaultDelivery,
    /// How release-mode regions find written pages (`DSM_WRITE_TRACKING`, default scan).
    pub(crate) write_tracking: WriteTracking,
    /// Most twin memory a node keeps past a release with scanned writes
    /// (`DSM_TWIN_LIMIT_MB`, default 1024 MiB; 0: no limit).
    pub(crate) twin_limit_bytes: u64,
    /// How long the transport thread polls after activity before sleeping (`DSM_SPIN_US`).
    pub(crate) spin: Duration,
    /// Sequential mode: a lock released to a waiting node passes the pages written under it
    /// on (`DSM_LOCK_HAND_BACK`, default on).
    pub(crate) lock_hand_back: bool,
    /// Sequential mode: at a barrier, read-only copies that other nodes' writes took before
    /// are dropped (`DSM_BARRIER_DROPS`, default on).
    pub(crate) barrier_drops: bool,
    /// Sequential regions map the master copies of same-host homes instead of copying them
    /// (`DSM_MAP_MASTERS`, default on).
    pub(crate) map_masters: bool,
    /// Priority of the node's service threads (`DSM_SERVICE_PRIORITY`, default realtime).
    pub(crate) service_priority: ServicePriority,
    /// The barrier algorithm (`DSM_BARRIER`, default auto).
    pub(crate) barrier: BarrierChoice,
    /// Where the per-hop trace goes (`DSM_TRACE`); each node inserts its rank.
    pub(crate) trace: Option<PathBuf>,
}

/// Largest cluster: every node keeps per-node state sized by it, and the RDMA transport
/// carries ranks in 16 bits.
pub(crate) const MAX_NODES: u32 = u16::MAX as u32;

/// Default of [`ConfigBuilder::spin`]: long enough to catch a reply to a request just sent
/// on a loaded machine, short enough to cost little when nothing comes.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);

/// Port used when `DSM_COORDINATOR` is absent and the cluster runs on one host.
pub const DEFAULT_COORDINATOR: &str = "127.0.0.1:7470";

impl Config {
    /// Starts a builder for a node of rank `rank` in a cluster of `size` (at most 65535).
    pub fn builder(rank: NodeId, size: u32) -> ConfigBuilder {
        ConfigBuilder {
            key: KeySource::UserFile(None),
            config: Config {
                rank,
                size,
                coordinator: DEFAULT_COORDINATOR.to_owned(),
                transport: TransportChoice::Auto,
                cluster_key: None,
                insecure: false,
                join_timeout: Duration::from_secs(30),
                heartbeat_interval: Duration::from_millis(200),
                failure_timeout: Duration::from_millis(1500),
                op_timeout: Duration::from_secs(60),
                fault_delivery: FaultDelivery::default(),
                write_tracking: WriteTracking::Scan,
                twin_limit_bytes: DEFAULT_TWIN_LIMIT_MB << 20,
                spin: DEFAULT_SPIN,
                lock_hand_back: true,
                barrier_drops: true,
                map_masters: true,
                service_priority: ServicePriority::Realtime,
                barrier: BarrierChoice::Auto,
                trace: None,
            },
        }
    }

    /// A single-node cluster (rank 0 of 1), for tests and programs that run alone.
    pub fn single() -> Config {
        Config::builder(0, 1).build().expect("rank 0 of 1 is valid")
    }

    /// Reads the configuration from the process environment (see the module docs).
    pub fn from_env() -> Result<Config> {
        Config::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable name → its value); what
    /// [`from_env`](Self::from_env) does with the real environment.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let (rank, size) = rank_and_size(&lookup)?;
        let mut b = Config::builder(rank, size);
        if let Some(c) = lookup("DSM_COORDINATOR") {
            b = b.coordinator(c);
        }
        if let Some(t) = lookup("DSM_TRANSPORT") {
            b = b.transport(parse_transport(&t)?);
        }
        b.key = if let Some(k) = lookup("DSM_CLUSTER_KEY").filter(|k| !k.is_empty()) {
            KeySource::Given(Secret::new(k.into_bytes()))
        } else if lookup(INSECURE_ENV).is_some_and(|v| v.trim() == "1") {
            KeySource::Insecure
        } else {
            key::default_key_file(&lookup)
                .map_or(KeySource::Missing, |path| KeySource::UserFile(Some(path)))
        };
        let ms = |name: &str| millis(&lookup, name);
        if let Some(d) = ms("DSM_JOIN_TIMEOUT_MS")? {
            b = b.join_timeout(d);
        }
        if let Some(d) = ms("DSM_HEARTBEAT_MS")? {
            b = b.heartbeat_interval(d);
        }
        if let Some(d) = ms("DSM_FAILURE_TIMEOUT_MS")? {
            b = b.failure_timeout(d);
        }
        if let Some(d) = ms("DSM_OP_TIMEOUT_MS")? {
            b = b.op_timeout(d);
        }
        if let Some(us) = lookup("DSM_SPIN_US") {
            let us = us.trim().parse::<u64>().map_err(|_| {
                Error::Config(format!(
                    "DSM_SPIN_US={us:?} is not a number of microseconds"
                ))
            })?;
            b = b.spin(Duration::from_micros(us));
        }
        if let Some(on) = lookup("DSM_LOCK_HAND_BACK") {
            b = b.lock_hand_back(parse_switch("DSM_LOCK_HAND_BACK", &on)?);
        }
        if let Some(on) = lookup("DSM_BARRIER_DROPS") {
            b = b.barrier_drops(parse_switch("DSM_BARRIER_DROPS", &on)?);
        }
        if let Some(on) = lookup("DSM_MAP_MASTERS") {
            b = b.map_masters(parse_switch("DSM_MAP_MASTERS", &on)?);
        }
        if let Some(p) = lookup("DSM_SERVICE_PRIORITY") {
            b = b.service_priority(parse_priority(&p)?);
        }
        if let Some(v) = lookup("DSM_BARRIER") {
            b = b.barrier(parse_barrier(&v)?);
        }
        if let Some(d) = lookup("DSM_FAULT_DELIVERY") {
            b = b.fault_delivery(parse_delivery(&d)?);
        }
        if let Some(t) = lookup("DSM_WRITE_TRACKING") {
            b = b.write_tracking(parse_tracking(&t)?);
        }
        if let Some(mb) = lookup("DSM_TWIN_LIMIT_MB") {
            let mb = mb.trim().parse::<u64>().ok().filter(|mb| *mb < 1 << 30);
            let mb = mb.ok_or_else(|| {
                Error::Config("DSM_TWIN_LIMIT_MB is not a number of MiB (0: no limit)".into())
            })?;
            b = b.twin_limit(mb << 20);
        }
        if let Some(path) = lookup("DSM_TRACE") {
            b = b.trace(path);
        }
        b.build()
    }

    /// This node's rank, `0..size`.
    pub fn rank(&self) -> NodeId {
        self.rank
    }
    /// Number of nodes.
    pub fn size(&self) -> u32 {
        self.size
    }
    /// `host:port` of rank 0's bootstrap listener.
    pub fn coordinator(&self) -> &str {
        &self.coordinator
    }
    /// Page transport.
    pub fn transport(&self) -> TransportChoice {
        self.transport
    }
    /// Whether peers authenticate with a shared key (the key itself is not handed out).
    pub fn has_cluster_key(&self) -> bool {
        self.cluster_key.is_some()
    }
    /// Whether this node runs without a key although it has peers (`DSM_INSECURE=1`).
    pub fn insecure(&self) -> bool {
        self.insecure && self.size > 1
    }
    /// The 32-byte cluster key (`None` when keyless).
    pub(crate) fn key(&self) -> Option<[u8; 32]> {
        self.cluster_key.as_ref().map(Secret::key)
    }
    /// Bound on `Node::join`.
    pub fn join_timeout(&self) -> Duration {
        self.join_timeout
    }
    /// Ring heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }
    /// Silence after which a node is declared failed.
    pub fn failure_timeout(&self) -> Duration {
        self.failure_timeout
    }
    /// Bound on faults, locks, barriers and collectives.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }
    /// How faults are delivered.
    pub fn fault_delivery(&self) -> FaultDelivery {
        self.fault_delivery
    }
    /// How release-mode regions find written pages (asked for; see [`Stats`](crate::Stats)
    /// for what the kernel allowed).
    pub fn write_tracking(&self) -> WriteTracking {
        self.write_tracking
    }
    /// Most twin memory kept past a release with scanned writes, in bytes (0: no limit).
    pub fn twin_limit(&self) -> u64 {
        self.twin_limit_bytes
    }
    /// How long the transport thread polls after activity before sleeping.
    pub fn spin(&self) -> Duration {
        self.spin
    }
    /// Whether a lock released to a waiting node passes the pages written under it on.
    pub fn lock_hand_back(&self) -> bool {
        self.lock_hand_back
    }
    /// Whether a barrier drops the read-only copies other nodes' writes took before.
    pub fn barrier_drops(&self) -> bool {
        self.barrier_drops
    }
    /// Whether sequential regions map same-host homes' master copies instead of copying.
    pub fn map_masters(&self) -> bool {
        self.map_masters
    }
    /// The priority the node's service threads ask for.
    pub fn service_priority(&self) -> ServicePriority {
        self.service_priority
    }
    /// The barrier algorithm asked for.
    pub fn barrier(&self) -> BarrierChoice {
        self.barrier
    }
    /// The trace path as given (`DSM_TRACE`), when tracing.
    pub fn trace(&self) -> Option<&Path> {
        self.trace.as_deref()
    }
    /// The file this node writes its trace to: the trace path with `.rank<r>` inserted
    /// before the file name's last extension (`trace.json` → `trace.rank0.json`), or
    /// appended when it has none (`trace` → `trace.rank0`).
    pub fn trace_file(&self) -> Option<PathBuf> {
        self.trace
            .as_deref()
            .map(|path| crate::trace::rank_file(path, self.rank))
    }

    /// The wire's cluster id: every frame carries it and a node drops frames of other
    /// clusters. Derived (BLAKE3 `derive_key`) from the coordinator address and the key, which
    /// every node shares. It is sent in clear: a guessable passphrase can be tested against
    /// it offline, a random key (dsm-run's, the key file's) cannot.
    pub fn cluster_id(&self) -> u64 {
        key::cluster_id(&self.coordinator, self.key().as_ref())
    }
}

/// Builds a [`Config`] in code; [`build`](Self::build) validates it.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
    key: KeySource,
}

/// Where [`ConfigBuilder::build`] takes the cluster key from.
#[derive(Debug, Clone)]
enum KeySource {
    /// A passphrase or 64 hex digits given in code or in `DSM_CLUSTER_KEY`.
    Given(Secret),
    /// The per-user key file (the default); `None`: its default place, from `XDG_CONFIG_HOME`
    /// or `HOME` of the process environment.
    UserFile(Option<PathBuf>),
    /// No key (`DSM_INSECURE=1`).
    Insecure,
    /// None of the above can be had (no `HOME` in the variables `Config::from_vars` read).
    Missing,
}

impl ConfigBuilder {
    /// `host:port` of rank 0's bootstrap listener.
    pub fn coordinator(mut self, address: impl Into<String>) -> Self {
        self.config.coordinator = address.into();
        self
    }
    /// Page transport.
    pub fn transport(mut self, transport: TransportChoice) -> Self {
        self.config.transport = transport;
        self
    }
    /// Shared secret authenticating peers: 64 hex digits (the key itself) or a passphrase
    /// the key is derived from. Without one, the per-user key file is used.
    pub fn cluster_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = KeySource::Given(Secret::new(key.into()));
        self
    }
    /// Takes the key from this key file (created, mode 0600, with a random key if absent)
    /// instead of the per-user one.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key = KeySource::UserFile(Some(path.into()));
        self
    }
    /// Runs without a cluster key: no peer is authenticated, anyone who can reach the
    /// coordinator can join, read and write. `Node::join` says so on stderr.
    pub fn insecure(mut self) -> Self {
        self.key = KeySource::Insecure;
        self
    }
    /// Bound on `Node::join`.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.config.join_timeout = timeout;
        self
    }
    /// Ring heartbeat period.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }
    /// Silence after which a node is declared failed.
    pub fn failure_timeout(mut self, timeout: Duration) -> Self {
        self.config.failure_timeout = timeout;
        self
    }
    /// Bound on faults, locks and barriers.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.config.op_timeout = timeout;
        self
    }
    /// How faults are delivered.
    pub fn fault_delivery(mut self, delivery: FaultDelivery) -> Self {
        self.config.fault_delivery = delivery;
        self
    }
    /// How release-mode regions find written pages.
    pub fn write_tracking(mut self, tracking: WriteTracking) -> Self {
        self.config.write_tracking = tracking;
        self
    }
    /// Most twin memory (bytes, rounded down to pages) kept past a release with scanned
    /// writes: at each release the oldest cached copies beyond it are published and dropped
    /// (they are fetched again when touched). 0: no limit.
    pub fn twin_limit(mut self, bytes: u64) -> Self {
        self.config.twin_limit_bytes = bytes;
        self
    }
    /// How long the transport thread keeps polling after its last activity before it sleeps
    /// in the kernel (0: never polls). Bounded, and it yields the CPU between polls.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.config.spin = spin;
        self
    }
    /// Sequential mode: when this node releases a lock that another node waits for, the
    /// pages it made writable while holding the lock are passed on before the lock: those
    /// homed elsewhere go back to their homes (with no copy kept here), so that the next
    /// holder's fault on them is served by the home at once instead of recalling them from
    /// here; those homed here are pushed to the next holder, writable, so that it takes no
    /// fault on them at all. Default on; off suits a program whose lock holders write pages
    /// the next holder never touches and that this node writes again soon.
    pub fn lock_hand_back(mut self, on: bool) -> Self {
        self.config.lock_hand_back = on;
        self
    }
    /// Sequential mode: at every barrier this node drops its read-only copies of pages that
    /// other nodes' writes took from it before, and tells their homes, so that a home's next
    /// write needs no invalidation round trip to this node (a stencil's boundary rows: read
    /// here in one iteration, written by their home in the next, while this node computes
    /// and cannot answer at once). A page read again here before anybody wrote it costs one
    /// fetch, and is not dropped again until a write takes it. Default on; off keeps every
    /// copy until a write invalidates it.
    pub fn barrier_drops(mut self, on: bool) -> Self {
        self.config.barrier_drops = on;
        self
    }
    /// Sequential regions with same-host nodes: each node maps the pages a same-host node
    /// homes (and its own) from that home's master copies instead of private memory, so a
    /// read fault maps the master page itself (`UFFDIO_CONTINUE`) and a write lands in it:
    /// no page is copied between same-host nodes, and a home gives up a page it wrote
    /// without copying it. Coherence is unchanged (who may map which page how). Default on;
    /// off copies pages in and out of private memory as across hosts. Release regions
    /// always keep private copies (their twins and diffs need them).
    pub fn map_masters(mut self, on: bool) -> Self {
        self.config.map_masters = on;
        self
    }
    /// The barrier algorithm of every collective call (see [`BarrierChoice`]); every node of
    /// the cluster must choose the same, or barriers end in their timeout.
    pub fn barrier(mut self, choice: BarrierChoice) -> Self {
        self.config.barrier = choice;
        self
    }
    /// The scheduling priority of the node's service threads: the transport thread, the
    /// fault readers and the RDMA poller (the data path), the driver and the monitor. They
    /// run when a message or a fault comes, briefly. At the application's priority, a service
    /// thread that must answer a peer while the application computes on its CPU may wait for
    /// the scheduler's next tick (4 ms at 250 Hz), and the peer with it: with the default
    /// [`ServicePriority::Realtime`] the data path preempts the application at once (see
    /// docs/architecture.md, "Scheduling"). Real-time needs `CAP_SYS_NICE` or `RLIMIT_RTPRIO`
    /// ≥ 1 (`ulimit -r`), nice values below 0 `CAP_SYS_NICE` or `RLIMIT_NICE` (`ulimit -e`);
    /// without them the threads take the closest priority allowed, say so once on stderr,
    /// and [`Stats::service_priority`](crate::Stats) shows it. Nice values are clamped to
    /// -20..=19.
    pub fn service_priority(mut self, priority: ServicePriority) -> Self {
        self.config.service_priority = match priority {
            ServicePriority::Nice(nice) => ServicePriority::Nice(nice.clamp(-20, 19)),
            realtime => realtime,
        };
        self
    }
    /// Records per-hop timestamps of faults, lock waits and barriers (`DSM_TRACE`) and writes
    /// them at [`Node::leave`](crate::Node::leave) (or drop) as a Chrome trace (JSON; open it
    /// in <https://ui.perfetto.dev> or `chrome://tracing`) to
    /// [`Config::trace_file`]: `path` with this node's rank inserted. The directory must
    /// exist. [`Node::set_tracing`](crate::Node::set_tracing) pauses and resumes recording.
    pub fn trace(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.trace = Some(path.into());
        self
    }
    /// Checks the configuration and returns it. A cluster of more than one node gets its key
    /// here: with no key given, the per-user key file is read (created on first use).
    pub fn build(self) -> Result<Config> {
        let mut c = self.config;
        if c.size == 0 || c.rank >= c.size {
            return Err(Error::Config(format!(
                "rank {} is not in 0..{} (size)",
                c.rank, c.size
            )));
        }
        if c.size > MAX_NODES {
            return Err(Error::Config(format!(
                "a cluster of {} nodes is larger than {MAX_NODES}",
                c.size
            )));
        }
        if !c.coordinator.contains(':') {
            return Err(Error::Config(format!(
                "coordinator {:?} is not host:port",
                c.coordinator
            )));
        }
        if c.spin > Duration::from_millis(10) {
            return Err(Error::Config(format!(
                "a spin of {:?} would hold a CPU for too long (at most 10 ms)",
                c.spin
            )));
        }
        if c.heartbeat_interval.is_zero() || c.failure_timeout <= c.heartbeat_interval {
            return Err(Error::Config(format!(
                "failure timeout {:?} must exceed the heartbeat interval {:?} (> 0)",
                c.failure_timeout, c.heartbeat_interval
            )));
        }
        if let Some(path) = &c.trace {
            check_trace_path(path)?;
        }
        (c.cluster_key, c.insecure) = resolve_key(self.key, c.size)?;
        Ok(c)
    }
}

/// The key a node of a cluster of `size` runs with, and whether it runs keyless on purpose.
fn resolve_key(source: KeySource, size: u32) -> Result<(Option<Secret>, bool)> {
    match source {
        // Alone, a node talks to no one: it needs no key, and no file is made for it.
        _ if size == 1 => Ok((None, false)),
        KeySource::Given(secret) => Ok((Some(secret), false)),
        KeySource::Insecure => Ok((None, true)),
        KeySource::UserFile(path) => {
            let path = path
                .or_else(|| key::default_key_file(|n| std::env::var(n).ok()))
                .ok_or_else(no_key)?;
            Ok((Some(key::load_or_create(&path)?), false))
        }
        KeySource::Missing => Err(no_key()),
    }
}

/// A trace path names a file (not a directory) in a directory that exists, so that a long
/// run does not end with a trace nowhere to go.
fn check_trace_path(path: &Path) -> Result<()> {
    let text = path.to_string_lossy();
    if text.is_empty() || text.ends_with('/') || path.file_name().is_none() {
        return Err(Error::Config(format!(
            "DSM_TRACE={text:?} does not name a file (e.g. /tmp/trace.json)"
        )));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::Config(format!(
            "DSM_TRACE={text:?}: the directory {} does not exist",
            parent.display()
        )));
    }
    Ok(())
}

fn no_key() -> Error {
    Error::Config(
        "no cluster key: set DSM_CLUSTER_KEY (or HOME or XDG_CONFIG_HOME for the per-user key \
         file), or DSM_INSECURE=1 to run without one"
            .into(),
    )
}

/// The rank/size pairs tried in order: dsm's own, then Open MPI, PMI, Slurm.
const RANK_SOURCES: [(&str, &str); 4] = [
    ("DSM_RANK", "DSM_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI_RANK", "PMI_SIZE"),
    ("SLURM_PROCID", "SLURM_NTASKS"),
];

fn rank_and_size(lookup: &impl Fn(&str) -> Option<String>) -> Result<(NodeId, u32)> {
    for (rank_var, size_var) in RANK_SOURCES {
        match (lookup(rank_var), lookup(size_var)) {
            (Some(r), Some(s)) => return Ok((number(rank_var, &r)?, number(size_var, &s)?)),
            (None, None) => continue,
            (Some(_), None) => {
                return Err(Error::Config(format!("{rank_var} set without {size_var}")));
            }
            (None, Some(_)) => {
                return Err(Error::Config(format!("{size_var} set without {rank_var}")));
            }
        }
    }
    // Started on its own, like an MPI singleton: a cluster of one.
    Ok((0, 1))
}

fn number(var: &str, value: &str) -> Result<u32> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("{var}={value:?} is not a number")))
}

fn millis(lookup: &impl Fn(&str) -> Option<String>, var: &str) -> Result<Option<Duration>> {
    lookup(var)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| Error::Config(format!("{var}={v:?} is not a number of milliseconds")))
        })
        .transpose()
}

fn parse_transport(value: &str) -> Result<TransportChoice> {
    match value.trim() {
        "auto" => Ok(TransportChoice::Auto),
        "shm" => Ok(TransportChoice::Shm),
        "tcp" => Ok(TransportChoice::Tcp),
        "rdma" => Ok(TransportChoice::PreferRdma),
        "rdma!" => Ok(TransportChoice::RequireRdma),
        other => Err(Error::Config(format!(
            "DSM_TRANSPORT={other:?}: expected auto, shm, tcp, rdma or rdma! (rdma required)"
        ))),
    }
}

/// An on/off variable: `1`/`on` or `0`/`off`.
fn parse_switch(name: &str, value: &str) -> Result<bool> {
    match value.trim() {
        "1" | "on" => Ok(true),
        "0" | "off" => Ok(false),
        _ => Err(Error::Config(format!(
            "{name}={value:?} is not 1/on or 0/off"
        ))),
    }
}

fn parse_priority(value: &str) -> Result<ServicePriority> {
    match value.trim() {
        "realtime" => Ok(ServicePriority::Realtime),
        other => match other.parse::<i32>() {
            Ok(nice) if (-20..=19).contains(&nice) => Ok(ServicePriority::Nice(nice)),
            _ => Err(Error::Config(format!(
                "DSM_SERVICE_PRIORITY={other:?}: expected realtime or a nice value (-20 to 19)"
            ))),
        },
    }
}

fn parse_barrier(value: &str) -> Result<BarrierChoice> {
    match value.trim() {
        "auto" => Ok(BarrierChoice::Auto),
        "central" => Ok(BarrierChoice::Central),
        "dissemination" => Ok(BarrierChoice::Dissemination),
        other => Err(Error::Config(format!(
            "DSM_BARRIER={other:?}: expected auto, central or dissemination"
        ))),
    }
}

fn parse_tracking(value: &str) -> Result<WriteTracking> {
    match value.trim() {
        "scan" => Ok(WriteTracking::Scan),
        "faults" => Ok(WriteTracking::Faults),
        other => Err(Error::Config(format!(
            "DSM_WRITE_TRACKING={other:?}: expected scan or faults"
        ))),
    }
}

fn parse_delivery(value: &str) -> Result<FaultDelivery> {
    match value.trim() {
        "thread" => Ok(FaultDelivery::Thread),
        "signal" => Ok(FaultDelivery::Signal),
        other => Err(Error::Config(format!(
            "DSM_FAULT_DELIVERY={other:?}: expected thread or signal"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The configuration of `vars`, with a test key unless they say where the key comes from.
    fn from(vars: &[(&str, &str)]) -> Result<Config> {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let keyed = ["DSM_CLUSTER_KEY", "DSM_INSECURE", "XDG_CONFIG_HOME", "HOME"];
        if !keyed.iter().any(|k| map.contains_key(*k)) {
            map.insert("DSM_CLUSTER_KEY".into(), "test key".into());
        }
        Config::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn every_transport_is_named_and_auto_is_the_default() {
        let default = from(&[("DSM_RANK", "0"), ("DSM_SIZE", "2")]).unwrap();
        assert_eq!(default.transport, TransportChoice::Auto);
        for (name, choice) in [
            ("auto", TransportChoice::Auto),
            ("shm", TransportChoice::Shm),
            ("tcp", TransportChoice::Tcp),
            ("rdma", TransportChoice::PreferRdma),
            ("rdma!", TransportChoice::RequireRdma),
        ] {
            assert_eq!(parse_transport(name).unwrap(), choice, "{name}");
        }
        let err = parse_transport("ipc").unwrap_err().to_string();
        assert!(err.contains("auto, shm, tcp"), "{err}");
    }

    #[test]
    fn dsm_variables_are_read() {
        let c = from(&[
            ("DSM_RANK", "2"),
            ("DSM_SIZE", "4"),
            ("DSM_COORDINATOR", "10.0.0.1:9000"),
            ("DSM_TRANSPORT", "rdma!"),
            ("DSM_CLUSTER_KEY", "secret"),
            ("DSM_JOIN_TIMEOUT_MS", "1500"),
            ("DSM_HEARTBEAT_MS", "50"),
            ("DSM_FAILURE_TIMEOUT_MS", "400"),
        ])
        .unwrap();
        assert_eq!((c.rank, c.size), (2, 4));
        assert_eq!(c.coordinator, "10.0.0.1:9000");
        assert_eq!(c.transport, TransportChoice::RequireRdma);
        assert_eq!(
            c.cluster_key.as_ref().map(Secret::bytes),
            Some(&b"secret"[..])
        );
        assert!(!c.insecure());
        assert!(
            !format!("{c:?}").contains("secret"),
            "the key is printed: {c:?}"
        );
        assert_eq!(c.join_timeout, Duration::from_millis(1500));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.failure_timeout, Duration::from_millis(400));
    }

    #[test]
    fn write_tracking_is_scan_unless_faults_is_asked() {
        let base = [("DSM_RANK", "0"), ("DSM_SIZE", "1")];
        assert_eq!(from(&base).unwrap().write_tracking, WriteTracking::Scan);
        let faults = from(&[base[0], base[1], ("DSM_WRITE_TRACKING", "faults")]).unwrap();
        assert_eq!(faults.write_tracking, WriteTracking::Faults);
        let bad = from(&[base[0], base[1], ("DSM_WRITE_TRACKING", "wp")]);
        assert!(matches!(bad, Err(Error::Config(m)) if m.contains("DSM_WRITE_TRACKING")));
    }

    #[test]
    fn on_off_switches_are_on_by_default_and_refuse_other_values() {
        let base = [("DSM_RANK", "0"), ("DSM_SIZE", "1")];
        let default = from(&base).unwrap();
        assert!(default.barrier_drops() && default.lock_hand_back() && default.map_masters());
        for (name, read) in [
            (
                "DSM_BARRIER_DROPS",
                Config::barrier_drops as fn(&Config) -> bool,
            ),
            ("DSM_LOCK_HAND_BACK", Config::lock_hand_back),
            ("DSM_MAP_MASTERS", Config::map_masters),
        ] {
            for (value, on) in [("0", false), ("off", false), ("1", true), (" on ", true)] {
                let c = from(&[base[0], base[1], (name, value)]).unwrap();
                assert_eq!(read(&c), on, "{name}={value:?}");
            }
            let bad = from(&[base[0], base[1], (name, "yes")]);
            assert!(
                matches!(bad, Err(Error::Config(m)) if m.contains(name)),
                "{name}"
            );
        }
    }

    #[test]
    fn the_barrier_is_central_in_small_clusters_unless_asked_and_dissemination_above() {
        use dsm_locks::BarrierKind;
        let base = [("DSM_RANK", "0"), ("DSM_SIZE", "1")];
        let with = |value| from(&[base[0], base[1], ("DSM_BARRIER", value)]);
        assert_eq!(from(&base).unwrap().barrier, BarrierChoice::Auto);
        assert_eq!(BarrierChoice::Auto.kind(4), BarrierKind::Central);
        assert_eq!(BarrierChoice::Auto.kind(5), BarrierKind::Dissemination);
        let asked = with(" dissemination").unwrap().barrier;
        assert_eq!(asked.kind(2), BarrierKind::Dissemination);
        assert_eq!(
            with("central").unwrap().barrier.kind(64),
            BarrierKind::Central
        );
        let bad = with("tree");
        assert!(matches!(bad, Err(Error::Config(m)) if m.contains("DSM_BARRIER")));
    }

    #[test]
    fn service_priority_is_realtime_unless_a_nice_value_is_asked() {
        let base = [("DSM_RANK", "0"), ("DSM_SIZE", "1")];
        let with = |value| from(&[base[0], base[1], ("DSM_SERVICE_PRIORITY", value)]);
        assert_eq!(
            from(&base).unwrap().service_priority,
            ServicePriority::Realtime
        );
        assert_eq!(
            with("-20").unwrap().service_priority,
            ServicePriority::Nice(-20)
        );
        assert_eq!(
            with(" 0 ").unwrap().service_priority,
            ServicePriority::Nice(0)
        );
        for bad in ["-21", "20", "fifo", ""] {
            let refused = with(bad);
            assert!(
                matches!(&refused, Err(Error::Config(m)) if m.contains("DSM_SERVICE_PRIORITY")),
                "{bad:?}: {refused:?}"
            );
        }
        let clamped = Config::builder(0, 1).service_priority(ServicePriority::Nice(-99));
        assert_eq!(
            clamped.build().unwrap().service_priority,
            ServicePriority::Nice(-20)
        );
    }

    #[test]
    fn fault_delivery_is_signal_unless_thread_is_asked() {
        let base = [("DSM_RANK", "0"), ("DSM_SIZE", "1")];
        assert_eq!(from(&base).unwrap().fault_delivery, FaultDelivery::Signal);
        let thread = from(&[base[0], base[1], ("DSM_FAULT_DELIVERY", "thread")]).unwrap();
        assert_eq!(thread.fault_delivery, FaultDelivery::Thread);
        let bad = from(&[base[0], base[1], ("DSM_FAULT_DELIVERY", "sigbus")]);
        assert!(matches!(bad, Err(Error::Config(m)) if m.contains("DSM_FAULT_DELIVERY")));
    }

    #[test]
    fn a_trace_path_gets_the_rank_and_must_name_a_file_in_a_directory() {
        let base = [("DSM_RANK", "1"), ("DSM_SIZE", "2")];
        assert_eq!(from(&base).unwrap().trace_file(), None);
        let dir = std::env::temp_dir();
        let path = dir.join("dsm-trace.json");
        let path = path.to_str().unwrap();
        let c = from(&[base[0], base[1], ("DSM_TRACE", path)]).unwrap();
        assert_eq!(c.trace(), Some(Path::new(path)));
        assert_eq!(c.trace_file(), Some(dir.join("dsm-trace.rank1.json")));
        for bad in ["", "/tmp/", "/no/such/dir/trace.json"] {
            let err = from(&[base[0], base[1], ("DSM_TRACE", bad)]).unwrap_err();
            assert!(
                matches!(&err, Error::Config(m) if m.contains("DSM_TRACE")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn defaults_when_only_rank_and_size_are_set() {
        let c = from(&[("DSM_RANK", "0"), ("DSM_SIZE", "1")]).unwrap();
        assert_eq!(c, Config::single());
        assert_eq!(c.join_timeout, Duration::from_secs(30));
        assert!(c.failure_timeout <= Duration::from_secs(2));
    }

    #[test]
    fn no_rank_variables_make_a_cluster_of_one() {
        assert_eq!(from(&[]).unwrap(), Config::single());
    }

    #[test]
    fn launcher_variables_in_order() {
        let ompi = [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "3")];
        assert_eq!(from(&ompi).unwrap().rank, 1);
        let pmi = [("PMI_RANK", "2"), ("PMI_SIZE", "5")];
        assert_eq!(from(&pmi).unwrap().size, 5);
        let slurm = [("SLURM_PROCID", "3"), ("SLURM_NTASKS", "4")];
        assert_eq!(from(&slurm).unwrap().rank, 3);
        // DSM_ wins over a launcher's variables.
        let both = [("DSM_RANK", "0"), ("DSM_SIZE", "2"), ompi[0], ompi[1]];
        assert_eq!(from(&both).unwrap().rank, 0);
    }

    #[test]
    fn bad_values_are_config_errors() {
        let cases: &[&[(&str, &str)]] = &[
            &[("DSM_RANK", "1")],
            &[("DSM_RANK", "x"), ("DSM_SIZE", "2")],
            &[("DSM_RANK", "2"), ("DSM_SIZE", "2")],
            &[("DSM_RANK", "0"), ("DSM_SIZE", "0")],
            &[("DSM_RANK", "0"), ("DSM_SIZE", "4000000000")],
            &[
                ("DSM_RANK", "0"),
                ("DSM_SIZE", "2"),
                ("DSM_TRANSPORT", "udp"),
            ],
            &[
                ("DSM_RANK", "0"),
                ("DSM_SIZE", "2"),
                ("DSM_COORDINATOR", "nohost"),
            ],
            &[
                ("DSM_RANK", "0"),
                ("DSM_SIZE", "2"),
                ("DSM_JOIN_TIMEOUT_MS", "soon"),
            ],
            &[
                ("DSM_RANK", "0"),
                ("DSM_SIZE", "2"),
                ("DSM_HEARTBEAT_MS", "5000"),
            ],
        ];
        for vars in cases {
            let err = from(vars).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{vars:?} gave {err}");
        }
    }

    #[test]
    fn cluster_id_depends_on_coordinator_and_key() {
        let with = |rank, coordinator, key| {
            Config::builder(rank, 2)
                .coordinator(coordinator)
                .cluster_key(key)
                .build()
                .unwrap()
        };
        let a = with(0, "h:1", "k");
        assert_eq!(a.cluster_id(), with(1, "h:1", "k").cluster_id());
        assert_ne!(a.cluster_id(), with(0, "h:2", "k").cluster_id());
        assert_ne!(a.cluster_id(), with(0, "h:1", "j").cluster_id());
        let keyless = Config::builder(0, 2).coordinator("h:1").insecure();
        assert_ne!(a.cluster_id(), keyless.build().unwrap().cluster_id());
    }

    #[test]
    fn a_cluster_is_keyless_only_when_asked() {
        let base = [("DSM_RANK", "0"), ("DSM_SIZE", "2")];
        let insecure = from(&[base[0], base[1], ("DSM_INSECURE", "1")]).unwrap();
        assert!(insecure.insecure() && !insecure.has_cluster_key());
        // A key wins over DSM_INSECURE.
        let both = [
            base[0],
            base[1],
            ("DSM_INSECURE", "1"),
            ("DSM_CLUSTER_KEY", "k"),
        ];
        assert!(from(&both).unwrap().has_cluster_key());
        // Neither: the per-user key file, here under a scratch XDG_CONFIG_HOME.
        let dir = std::env::temp_dir().join(format!("dsm-config-{}", std::process::id()));
        let xdg = dir.to_str().unwrap();
        let filed = from(&[base[0], base[1], ("XDG_CONFIG_HOME", xdg)]).unwrap();
        assert!(filed.has_cluster_key() && !filed.insecure());
        assert!(dir.join("dsm").join("cluster.key").exists());
        let again = from(&[base[0], base[1], ("XDG_CONFIG_HOME", xdg)]).unwrap();
        assert_eq!(again.cluster_id(), filed.cluster_id());
        std::fs::remove_dir_all(&dir).unwrap();
        // Alone, no key and no file.
        let single = from(&[("DSM_RANK", "0"), ("DSM_SIZE", "1")]).unwrap();
        assert!(!single.has_cluster_key() && !single.insecure());
    }
}
