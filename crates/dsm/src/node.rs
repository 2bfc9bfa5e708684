//! [`Node`]: one process's membership in a dsm cluster.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use dsm_core::Transport;
use dsm_wire::msg::membership::transports;
use dsm_wire::{Limits, Membership, Message, NodeId, Sync};

use crate::membership::bootstrap;
use crate::membership::ring::Ring;
use crate::mesh::Mesh;
use crate::runtime::Shared;
use crate::runtime::barrier::Central;
use crate::runtime::driver::{Driver, EVENT_QUEUE, Event, Sink, send_counted};
use crate::stats::Counters;
use crate::{Config, Error, Result, Stats};

/// A node of a dsm cluster. Created by [`Node::join`]; every collective call (`alloc`,
/// `free`, `barrier`, `leave`) must be made by every node in the same order.
pub struct Node {
    config: Config,
    shared: Arc<Shared>,
    mesh: Arc<Mesh>,
    events: SyncSender<Event>,
    /// The driver thread; joined on leave/drop (after `events` got `Stop`).
    driver: Mutex<Option<JoinHandle<()>>>,
    barrier_epoch: AtomicU64,
    gone: AtomicBool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("rank", &self.config.rank)
            .field("size", &self.config.size)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Joins the cluster `config` describes and blocks until every node has joined (or fails
    /// with [`Error::JoinTimeout`] naming the ranks that did not come).
    pub fn join(config: Config) -> Result<Node> {
        let booted = bootstrap::run(&config, transports::TCP)?;
        let (events, receiver) = sync_channel(EVENT_QUEUE);
        let sink = Arc::new(Sink {
            events: events.clone(),
        });
        let limits = Limits::new(config.cluster_id());
        let mesh = Arc::new(Mesh::start(
            config.rank,
            booted.listener,
            &booted.peers,
            &limits,
            booted.deadline,
            sink,
        )?);
        let shared = Arc::new(Shared::new(config.rank, config.size));
        let driver = Driver {
            rank: config.rank,
            size: config.size,
            shared: Arc::clone(&shared),
            transport: Arc::clone(&mesh) as Arc<dyn Transport>,
            ring: Ring::new(
                config.rank,
                config.size,
                config.heartbeat_interval,
                config.failure_timeout,
                Instant::now(),
            ),
            central: Central::default(),
            events: receiver,
        };
        let driver = std::thread::Builder::new()
            .name(format!("dsm-driver-{}", config.rank))
            .spawn(move || driver.run())
            .map_err(|e| Error::io("spawn driver thread", e))?;
        let node = Node {
            config,
            shared,
            mesh,
            events,
            driver: Mutex::new(Some(driver)),
            barrier_epoch: AtomicU64::new(0),
            gone: AtomicBool::new(false),
        };
        node.announce(booted.deadline)?;
        Ok(node)
    }

    /// Sends `Joined` to every other node and waits for theirs.
    fn announce(&self, deadline: Instant) -> Result<()> {
        let rank = self.rank();
        for to in (0..self.size()).filter(|&to| to != rank) {
            self.send(to, Message::Membership(Membership::Joined { rank }));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let waited = self.shared.wait(
            timeout,
            |s| format!("Joined from ranks {:?}", s.arrivals.missing()),
            |s| s.arrivals.complete().then_some(()),
        );
        match waited {
            Err(Error::Timeout { .. }) => Err(Error::JoinTimeout {
                missing: self.shared.read(|s| s.arrivals.missing()),
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

    /// A snapshot of this node's counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Waits until every node has called `barrier` as many times as this one (collective).
    /// Fails with [`Error::NodeFailed`] when a node fails meanwhile.
    pub fn barrier(&self) -> Result<()> {
        self.check_open()?;
        let epoch = self.barrier_epoch.fetch_add(1, Ordering::Relaxed) + 1;
        self.send(
            0,
            Message::Sync(Sync::BarrierArrive {
                epoch,
                round: 0,
                notices: Vec::new(),
            }),
        );
        self.shared.wait(
            self.config.op_timeout,
            |_| format!("barrier {epoch} (release from rank 0)"),
            |s| (s.barrier_released >= epoch).then_some(()),
        )?;
        Counters::bump(&self.shared.counters.barriers);
        Ok(())
    }

    /// Leaves the cluster cleanly (collective): a barrier, then every node says `Leave` and
    /// the connections close without anyone being declared failed.
    pub fn leave(self) -> Result<()> {
        self.barrier()?;
        let rank = self.rank();
        for to in (0..self.size()).filter(|&to| to != rank) {
            self.send(to, Message::Membership(Membership::Leave { rank }));
        }
        self.stop();
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        if self.gone.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    pub(crate) fn send(&self, to: NodeId, message: Message) {
        send_counted(self.mesh.as_ref(), &self.shared.counters, to, &message);
    }

    /// Stops the driver and closes the connections (idempotent).
    fn stop(&self) {
        if self.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.events.send(Event::Stop);
        let handle = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        self.shared.update(|s| s.closed = true);
        self.mesh.shutdown();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Without `leave`, peers see the connections close and declare this node failed:
        // that is what a crash looks like, and it is the honest signal.
        self.stop();
    }
}
