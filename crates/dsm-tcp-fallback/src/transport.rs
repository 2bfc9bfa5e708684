//! [`TcpTransport`]: the public face: start the mesh, implement `dsm_core::Transport`, stop.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use dsm_core::{EventSink, HomeMemory, Transport, TransportError};
use dsm_wire::{BodyCheck, Message, NodeId, Page, PageId, encode_for};

use crate::handshake::Credentials;
use crate::lane::Sent;
use crate::session::Purpose;
use crate::shared::{Op, Shared};
use crate::sys;
use crate::worker::{self, Setup, peer_failed};
use crate::{Error, Result, TcpConfig, mesh};

/// A node's TCP transport: a full mesh of authenticated connections driven by one io_uring
/// thread. See the [crate docs](crate) for the design and a quick start.
///
/// Every method returns at once; completions and arrivals go to the [`EventSink`] given to
/// [`start`](Self::start), on the transport thread. Dropping the transport stops the thread
/// (see [`shutdown`](Self::shutdown)).
///
/// * Backpressure: work waits in a bounded queue (65,536 operations). Only when it is full —
///   the transport thread is far behind — does a call yield until there is room, for at most
///   10 s, then fail with `TransportError::Io`.
/// * Failure: a peer whose connection closed, reset, timed out (keepalive, ~10 s) or sent a
///   bad frame stays failed: calls towards it fail at once with `PeerFailed`. The mesh is
///   formed once, in `start`; a restarted node cannot rejoin.
/// * No request timeouts: a page read completes when the home answers or fails; the engine
///   bounds its own waits.
pub struct TcpTransport {
    rank: NodeId,
    cluster: u64,
    size: u32,
    shared: Arc<Shared>,
    /// Says whether this node awaits an answer (see `send`).
    sink: Arc<dyn EventSink>,
    /// See [`TcpConfig::send_from_caller`].
    send_from_caller: bool,
    /// Frames travel sealed (a cluster key): no body checksum (see `dsm_wire::BodyCheck`).
    body_check: BodyCheck,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Connects this node to every other node of `config.peers`, authenticates each
    /// connection, and starts the transport thread delivering to `sink`.
    ///
    /// Returns once the whole mesh is up, or fails with [`Error::MeshTimeout`] naming the ranks
    /// that did not connect within `config.connect_timeout`. Incoming connections that fail
    /// the handshake are logged and dropped while waiting.
    pub fn start(config: TcpConfig, sink: Arc<dyn EventSink>) -> Result<Self> {
        config.check()?;
        let send_from_caller = config.send_from_caller;
        // Every mesh connection is sealed exactly when there is a key (`handshake`).
        let body_check = BodyCheck::sealed_if(config.key.is_some());
        let local = Credentials::new(config.rank, config.cluster, config.key, Purpose::Mesh);
        let mesh = mesh::connect(&config, &local)?;
        let shared =
            Arc::new(Shared::new(config.peers.len()).map_err(|e| Error::io("eventfd", e))?);
        let thread = worker::spawn(Setup {
            rank: config.rank,
            cluster: config.cluster,
            limits: config.limits.clone(),
            spin: config.spin,
            polite_after: config.polite_after,
            mesh,
            shared: Arc::clone(&shared),
            sink: Arc::clone(&sink),
        })?;
        tracing::debug!(
            rank = config.rank,
            size = config.size(),
            "tcp mesh connected"
        );
        Ok(TcpTransport {
            rank: config.rank,
            cluster: config.cluster,
            size: config.size(),
            shared,
            sink,
            send_from_caller,
            body_check,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the transport thread and closes every connection (peers see this node fail).
    /// Outstanding page reads and writes complete with [`TransportError::Closed`]. Idempotent;
    /// also run on drop.
    pub fn shutdown(&self) -> Result<()> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.notified.store(false, Ordering::SeqCst);
        self.shared.wake();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        match thread.map(JoinHandle::join) {
            Some(Err(_)) => Err(Error::ThreadPanicked(self.rank)),
            _ => Ok(()),
        }
    }

    /// The node waits for an answer it sent nothing over TCP for (rank 0 of a central
    /// barrier, its arrivals yet to come): wakes the transport thread, which then polls for
    /// `TcpConfig::spin` while the sink says it awaits, instead of sleeping until a frame
    /// wakes it from another CPU. A send to a peer does the same by itself.
    pub fn poll_for_answer(&self) {
        if self.sink.awaiting() {
            self.shared.wake();
        }
    }

    /// Number of nodes in the cluster.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// True once `node`'s connection failed (its `PeerFailed` event was delivered).
    pub fn is_failed(&self, node: NodeId) -> bool {
        self.shared.is_failed(node)
    }

    /// Checks that `node` can be addressed now.
    fn reachable(&self, node: NodeId) -> std::result::Result<(), TransportError> {
        if node >= self.size {
            return Err(TransportError::UnknownPeer(node));
        }
        if self.shared.stop.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        if self.shared.is_failed(node) {
            return Err(peer_failed(node, "connection closed"));
        }
        Ok(())
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(rank = self.rank, error = %e, "tcp transport shutdown");
        }
    }
}

impl Transport for TcpTransport {
    fn local(&self) -> NodeId {
        self.rank
    }

    /// A frame to a peer leaves from the calling thread when nothing sent to that peer
    /// before it still waits in the transport thread (see `lane`): no hand-off, no wake-up
    /// for the send itself. The transport thread is woken anyway when this node awaits an
    /// answer, so that it polls for it (a reply to a sleeping thread pays a cross-CPU
    /// wake-up).
    fn send(&self, to: NodeId, message: &Message) -> std::result::Result<(), TransportError> {
        self.reachable(to)?;
        if to == self.rank {
            let message = message.clone();
            return self.shared.submit(Op::Local { message });
        }
        let frame = encode_for(message, self.cluster, self.rank, self.body_check);
        if !self.send_from_caller {
            return self.shared.lanes[to as usize]
                .queue(|| self.shared.submit(Op::Send { to, frame }));
        }
        let lane = &self.shared.lanes[to as usize];
        let queue = |frame| self.shared.submit(Op::Send { to, frame });
        if crate::cork::corked() {
            // Gathered in the lane; the cork's end writes it (`crate::Cork`).
            if lane.send_corked(frame, queue)? == Sent::Corked {
                crate::cork::remember(lane, &self.shared, &self.sink);
            }
            return Ok(());
        }
        match lane.send(frame, sys::send_now, queue)? {
            Sent::Now if !self.sink.awaiting() => {}
            Sent::Now | Sent::Stashed => self.shared.wake(),
            Sent::Queue | Sent::Corked => {} // `submit` woke it
        }
        Ok(())
    }

    fn expose(&self, region: u32, memory: HomeMemory) -> std::result::Result<(), TransportError> {
        let mut exposed = self
            .shared
            .exposed
            .write()
            .unwrap_or_else(|p| p.into_inner());
        exposed.insert(region, memory);
        Ok(())
    }

    /// Returns once the transport thread can no longer touch the region's memory.
    fn withdraw(&self, region: u32) -> std::result::Result<(), TransportError> {
        let mut exposed = self
            .shared
            .exposed
            .write()
            .unwrap_or_else(|p| p.into_inner());
        exposed.remove(&region);
        Ok(())
    }

    fn read_page(
        &self,
        home: NodeId,
        page: PageId,
        token: u64,
    ) -> std::result::Result<(), TransportError> {
        self.reachable(home)?;
        let op = Op::Read { home, page, token };
        match home == self.rank {
            true => self.shared.submit(op),
            false => self.shared.lanes[home as usize].queue(|| self.shared.submit(op)),
        }
    }

    fn write_page(
        &self,
        home: NodeId,
        page: PageId,
        data: Page,
        token: u64,
    ) -> std::result::Result<(), TransportError> {
        self.reachable(home)?;
        let op = Op::Write {
            home,
            page,
            data,
            token,
        };
        match home == self.rank {
            true => self.shared.submit(op),
            false => self.shared.lanes[home as usize].queue(|| self.shared.submit(op)),
        }
    }

    fn one_sided(&self) -> bool {
        false
    }
}
