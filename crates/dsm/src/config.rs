//! Node configuration: from the environment a launcher sets, or from a builder.
//!
//! `DSM_*` variables win; when `DSM_RANK`/`DSM_SIZE` are absent the launchers' own variables
//! are used: Open MPI (`OMPI_COMM_WORLD_RANK/SIZE`), PMI (`PMI_RANK/SIZE`), Slurm
//! (`SLURM_PROCID/NTASKS`). A process started with none of them runs as a cluster of one
//! (rank 0 of 1), as an MPI program started without `mpirun` does.

use std::time::Duration;

use dsm_wire::NodeId;

use crate::{Error, Result};

/// Which network carries pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// io_uring TCP (`DSM_TRANSPORT=tcp`, the default).
    Tcp,
    /// RDMA when every node has a device, TCP otherwise (`DSM_TRANSPORT=rdma`).
    PreferRdma,
    /// RDMA or fail (`DSM_TRANSPORT=rdma!`).
    RequireRdma,
}

/// How userfaultfd faults reach the runtime (`DSM_FAULT_DELIVERY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDelivery {
    /// A reader thread per region takes each fault and runs the coherence engine
    /// (`DSM_FAULT_DELIVERY=thread`, the default).
    Thread,
    /// `UFFD_FEATURE_SIGBUS`: the faulting thread hands its fault to the driver thread from
    /// its SIGBUS handler, lock-free, and waits on a preallocated slot
    /// (`DSM_FAULT_DELIVERY=signal`; x86-64). Every thread that touches a region must leave
    /// SIGBUS unblocked.
    Signal,
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
    /// Shared secret authenticating peers (`DSM_CLUSTER_KEY`); `None` = no authentication.
    pub(crate) cluster_key: Option<Vec<u8>>,
    /// How long `Node::join` waits for every rank (`DSM_JOIN_TIMEOUT_MS`, default 30 s).
    pub(crate) join_timeout: Duration,
    /// Ring heartbeat period (`DSM_HEARTBEAT_MS`, default 200 ms).
    pub(crate) heartbeat_interval: Duration,
    /// Silence after which a node is declared failed (`DSM_FAILURE_TIMEOUT_MS`, default 1.5 s).
    pub(crate) failure_timeout: Duration,
    /// Bound on any other wait: a fault, a lock, a barrier (`DSM_OP_TIMEOUT_MS`, default 60 s).
    pub(crate) op_timeout: Duration,
    /// How faults are delivered (`DSM_FAULT_DELIVERY`, default thread).
    pub(crate) fault_delivery: FaultDelivery,
    /// How long the transport thread polls after activity before sleeping (`DSM_SPIN_US`).
    pub(crate) spin: Duration,
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
            config: Config {
                rank,
                size,
                coordinator: DEFAULT_COORDINATOR.to_owned(),
                transport: TransportChoice::Tcp,
                cluster_key: None,
                join_timeout: Duration::from_secs(30),
                heartbeat_interval: Duration::from_millis(200),
                failure_timeout: Duration::from_millis(1500),
                op_timeout: Duration::from_secs(60),
                fault_delivery: FaultDelivery::Thread,
                spin: DEFAULT_SPIN,
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
        if let Some(k) = lookup("DSM_CLUSTER_KEY").filter(|k| !k.is_empty()) {
            b = b.cluster_key(k.into_bytes());
        }
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
        if let Some(d) = lookup("DSM_FAULT_DELIVERY") {
            b = b.fault_delivery(parse_delivery(&d)?);
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
    /// How long the transport thread polls after activity before sleeping.
    pub fn spin(&self) -> Duration {
        self.spin
    }

    /// The wire's cluster id: every frame carries it and a node drops frames of other
    /// clusters. Derived from the coordinator address and the key, which every node shares.
    pub fn cluster_id(&self) -> u64 {
        let mut h = Fnv::new();
        h.write(self.coordinator.as_bytes());
        h.write(&[0]);
        h.write(self.cluster_key.as_deref().unwrap_or_default());
        h.finish()
    }
}

/// Builds a [`Config`] in code; [`build`](Self::build) validates it.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
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
    /// Shared secret authenticating peers.
    pub fn cluster_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.config.cluster_key = Some(key.into());
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
    /// How long the transport thread keeps polling after its last activity before it sleeps
    /// in the kernel (0: never polls). Bounded, and it yields the CPU between polls.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.config.spin = spin;
        self
    }
    /// Checks the configuration and returns it.
    pub fn build(self) -> Result<Config> {
        let c = self.config;
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
        Ok(c)
    }
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
        "tcp" => Ok(TransportChoice::Tcp),
        "rdma" => Ok(TransportChoice::PreferRdma),
        "rdma!" => Ok(TransportChoice::RequireRdma),
        other => Err(Error::Config(format!(
            "DSM_TRANSPORT={other:?}: expected tcp, rdma or rdma! (rdma required)"
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

/// FNV-1a: a stable hash for the cluster id (std's hasher is randomly seeded per process).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_vars(|name| map.get(name).cloned())
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
        assert_eq!(c.cluster_key.as_deref(), Some(&b"secret"[..]));
        assert_eq!(c.join_timeout, Duration::from_millis(1500));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.failure_timeout, Duration::from_millis(400));
    }

    #[test]
    fn fault_delivery_is_thread_unless_signal_is_asked() {
        let base = [("DSM_RANK", "0"), ("DSM_SIZE", "1")];
        assert_eq!(from(&base).unwrap().fault_delivery, FaultDelivery::Thread);
        let signal = from(&[base[0], base[1], ("DSM_FAULT_DELIVERY", "signal")]).unwrap();
        assert_eq!(signal.fault_delivery, FaultDelivery::Signal);
        let bad = from(&[base[0], base[1], ("DSM_FAULT_DELIVERY", "sigbus")]);
        assert!(matches!(bad, Err(Error::Config(m)) if m.contains("DSM_FAULT_DELIVERY")));
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
        let a = Config::builder(0, 2).coordinator("h:1").build().unwrap();
        let b = Config::builder(1, 2).coordinator("h:1").build().unwrap();
        let c = Config::builder(0, 2).coordinator("h:2").build().unwrap();
        let d = a.clone();
        let d = ConfigBuilder { config: d }
            .cluster_key("k")
            .build()
            .unwrap();
        assert_eq!(a.cluster_id(), b.cluster_id());
        assert_ne!(a.cluster_id(), c.cluster_id());
        assert_ne!(a.cluster_id(), d.cluster_id());
    }
}
