//! The transport thread: one io_uring drives every connection of the node.
//!
//! Each turn of the loop takes queued work from application threads, batches every frame
//! queued for a peer into one send, submits all of it with one `io_uring_enter` that also
//! waits, and handles the completions: multishot receives (frames reassembled straight out of
//! the provided buffers), sends, and the eventfd wake-up.

use std::collections::VecDeque;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dsm_core::{EventSink, Polling, TransportError, TransportEvent};
use dsm_wire::msg::transport::{append_page_read_reply, append_page_write_request};
use dsm_wire::{
    Frame, Limits, Message, NodeId, PAGE_SIZE, Page, PageId, PageStatus, Transport, encode_for,
};

use crate::conn::{Conn, MAX_BACKLOG, Pending};
use crate::mesh::Mesh;
use crate::shared::{Op, Shared};
use crate::sys::{self, Completion, Ring, Tag};
use crate::{Error, Result};

/// Operations taken from the queue per turn, so completions are never starved.
const DRAIN_BATCH: usize = 4096;
/// Submission queue entries.
const RING_ENTRIES: u32 = 512;
/// Provided receive buffers: count and size. 256 KiB of data per buffer keeps a stream of
/// 4 KiB pages to a few completions per 64 pages.
const RECV_BUFFERS: u16 = 64;
const RECV_BUFFER_LEN: u32 = 64 << 10;
/// Why a connection whose peer closed it cleanly (end of stream) fails.
const CLOSED_BY_PEER: &str = "connection closed by peer";
/// How long shutdown waits for the kernel to return in-flight operations.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a poll that found nothing looks again without system calls before it yields
/// (a `sched_yield` or an empty `io_uring_enter` costs ~1 µs each here, and an answer that
/// lands during one waits for it to end).
const LOOK_BEFORE_YIELD: Duration = Duration::from_micros(2);

/// What the thread needs to start.
pub(crate) struct Setup {
    pub(crate) rank: NodeId,
    pub(crate) cluster: u64,
    pub(crate) limits: Limits,
    /// See `TcpConfig::spin`.
    pub(crate) spin: Duration,
    /// See `TcpConfig::polite_after`.
    pub(crate) polite_after: Duration,
    pub(crate) mesh: Mesh,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sink: Arc<dyn EventSink>,
}

/// Starts the transport thread; returns once its ring is set up and every receive armed.
pub(crate) fn spawn(setup: Setup) -> Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let rank = setup.rank;
    let thread = std::thread::Builder::new()
        .name(format!("dsm-tcp-{rank}"))
        .spawn(move || {
            let _stopped = StopOnExit(Arc::clone(&setup.shared));
            setup.sink.on_thread_start();
            match Worker::new(setup) {
                Ok(worker) => {
                    let _ = ready_tx.send(Ok(()));
                    worker.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| Error::io("spawn transport thread", e))?;
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(Error::io("io_uring setup", e)),
        Err(_) => Err(Error::ThreadPanicked(rank)),
    }
}

/// Marks the transport stopped when the thread ends, normally or by a panic (of the sink,
/// say), so application calls fail with `Closed` instead of queueing work nobody takes.
struct StopOnExit(Arc<Shared>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("transport thread panicked; the transport is stopped");
        }
        self.0.stop.store(true, Ordering::Release);
    }
}

/// Field order is drop order: the ring (which may still reference connection buffers) goes
/// first; `run` ends with an explicit, bounded `Ring::close`.
struct Worker {
    ring: Ring,
    conns: Vec<Option<Conn>>,
    shared: Arc<Shared>,
    sink: Arc<dyn EventSink>,
    rank: NodeId,
    /// Nodes in the cluster (`conns.len()`).
    size: NodeId,
    cluster: u64,
    completions: Vec<Completion>,
    frames: Vec<Frame>,
    /// Operations taken from the queue this turn (kept to reuse its allocation).
    taken: VecDeque<Op>,
    spin: Duration,
    polite_after: Duration,
    /// Messages this node sent itself this turn, delivered once the turn's frames are
    /// submitted: a local delivery can wake a thread that takes this CPU for milliseconds
    /// (an application thread leaving a barrier), and a frame queued beside it must not wait
    /// for that (rank 0's release of a barrier to the other nodes, say).
    local: Vec<Message>,
    /// Polling instead of sleeping (the sink is told of changes).
    polling: Polling,
}

impl Worker {
    fn new(setup: Setup) -> std::io::Result<Self> {
        let size = setup.mesh.len();
        let mut ring = Ring::new(RING_ENTRIES, size, RECV_BUFFERS, RECV_BUFFER_LEN)?;
        ring.read_wake(setup.shared.wake.as_raw_fd())?;
        let mut conns = Vec::with_capacity(size);
        for (peer, link) in (0..).zip(setup.mesh) {
            let lane = Arc::clone(&setup.shared.lanes[peer as usize]);
            let limits = setup.limits.clone();
            let conn = link.map(|l| Conn::new(peer, l.stream, limits, l.session, lane));
            if let Some(conn) = &conn {
                ring.recv_multi(conn.stream.as_raw_fd(), conn.peer)?;
            }
            conns.push(conn.map(|mut c| {
                c.receiving = true;
                c
            }));
        }
        Ok(Worker {
            ring,
            conns,
            shared: setup.shared,
            sink: setup.sink,
            rank: setup.rank,
            size: NodeId::try_from(size).unwrap_or(NodeId::MAX),
            cluster: setup.cluster,
            completions: Vec::with_capacity(256),
            frames: Vec::with_capacity(256),
            taken: VecDeque::with_capacity(256),
            spin: setup.spin,
            polite_after: setup.polite_after,
            local: Vec::new(),
            polling: Polling::default(),
        })
    }

    fn run(mut self) {
        let mut active_at = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            let queued = self.drain_queue();
            self.flush();
            // Poll without sleeping while activity is recent and the node awaits an answer
            // (see `TcpConfig::spin`); the wake-up flag stays set meanwhile, so producers
            // skip the eventfd write too.
            let idle = active_at.elapsed();
            let polling = (idle < self.spin && self.sink.awaiting()) || !self.local.is_empty();
            // Messages to itself are work, delivered right after this submit, not polling.
            let long_poll = polling && idle >= self.polite_after && self.local.is_empty();
            self.polling.set(self.sink.as_ref(), long_poll);
            let wait = !polling && !self.shared.prepare_to_sleep();
            if let Err(e) = self.ring.submit(wait) {
                tracing::error!(rank = self.rank, error = %e, "io_uring_enter failed; transport stops");
                self.shared.stop.store(true, Ordering::Release);
                break;
            }
            self.shared.awake();
            self.deliver_local();
            let completed = self.handle_completions();
            if queued > 0 || completed > 0 {
                active_at = Instant::now();
            } else if polling && !self.look_briefly() {
                // Nothing yet: let any thread sharing this CPU run before the next poll.
                std::thread::yield_now();
            }
        }
        self.shutdown();
    }

    /// Looks for work without system calls for up to [`LOOK_BEFORE_YIELD`]: operations
    /// queued, task work or completions the kernel posted. Says whether it found any.
    fn look_briefly(&mut self) -> bool {
        let until = Instant::now() + LOOK_BEFORE_YIELD;
        loop {
            if self.ring.has_news() || !self.shared.queue.is_empty() {
                return true;
            }
            if Instant::now() >= until || self.shared.stop.load(Ordering::Acquire) {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    fn deliver_local(&mut self) {
        for message in self.local.drain(..) {
            self.sink.deliver(TransportEvent::Message {
                from: self.rank,
                message,
            });
        }
    }

    /// Applies queued work (at most a batch); returns how many operations.
    fn drain_queue(&mut self) -> usize {
        let mut taken = std::mem::take(&mut self.taken);
        let count = self.shared.queue.take(&mut taken, DRAIN_BATCH);
        for op in taken.drain(..) {
            self.apply(op);
        }
        self.taken = taken;
        count
    }

    fn apply(&mut self, op: Op) {
        match op {
            // Delivered after this turn's frames left (see `run`).
            Op::Local { message } => self.local.push(message),
            Op::Send { to, frame } => match open(&mut self.conns, to) {
                Some(conn) => conn.queue_frame(frame, true),
                // Dropped: PeerFailed was delivered already.
                None => self.written_off(to),
            },
            Op::Read { home, page, token } => self.start_read(home, page, token),
            Op::Write {
                home,
                page,
                data,
                token,
            } => self.start_write(home, page, data, token),
        }
    }

    fn start_read(&mut self, home: NodeId, page: PageId, token: u64) {
        if home == self.rank {
            let result = self.read_local(page);
            return self
                .sink
                .deliver(TransportEvent::PageRead { token, result });
        }
        let Some(conn) = open(&mut self.conns, home) else {
            self.written_off(home);
            let result = Err(peer_failed(home, "connection closed"));
            return self
                .sink
                .deliver(TransportEvent::PageRead { token, result });
        };
        conn.pending.push_back(Pending::Read { token, page });
        let request = Message::Transport(Transport::PageReadRequest { token, page });
        let frame = encode_for(&request, self.cluster, self.rank, conn.reader.body_check());
        conn.queue_frame(frame, true);
    }

    fn start_write(&mut self, home: NodeId, page: PageId, data: Page, token: u64) {
        if home == self.rank {
            let result = self.write_local(page, &data);
            return self
                .sink
                .deliver(TransportEvent::PageWritten { token, result });
        }
        let Some(conn) = open(&mut self.conns, home) else {
            self.written_off(home);
            let result = Err(peer_failed(home, "connection closed"));
            return self
                .sink
                .deliver(TransportEvent::PageWritten { token, result });
        };
        conn.pending.push_back(Pending::Write { token, page });
        let (cluster, rank, check) = (self.cluster, self.rank, conn.reader.body_check());
        let write = |out: &mut Vec<u8>| {
            append_page_write_request(out, cluster, rank, check, token, page, &data);
        };
        conn.append_frame(write, true);
    }

    /// An operation queued for `peer` (counted in its lane) was dropped with its connection.
    fn written_off(&self, peer: NodeId) {
        if let Some(lane) = self.shared.lanes.get(peer as usize) {
            lane.done(1);
        }
    }

    /// Submits one send per peer carrying everything queued for it.
    fn flush(&mut self) {
        for peer in 0..self.size {
            let Some(conn) = open(&mut self.conns, peer) else {
                continue;
            };
            if conn.sending {
                continue;
            }
            conn.take_stash();
            if conn.out.is_empty() {
                continue;
            }
            if conn.out.len() > MAX_BACKLOG {
                let reason = format!("send backlog over {MAX_BACKLOG} bytes: peer stopped reading");
                self.fail(peer, reason);
                continue;
            }
            let spare = std::mem::take(&mut conn.spare);
            let buf = std::mem::replace(&mut conn.out, spare);
            let fd = conn.stream.as_raw_fd();
            conn.sending = true;
            conn.flight_units = std::mem::take(&mut conn.out_units);
            if let Err(e) = self.ring.send(fd, peer, buf, 0) {
                conn.sending = false;
                self.fail(peer, format!("io_uring send: {e}"));
            }
        }
    }

    /// Handles every completion reaped; returns how many.
    fn handle_completions(&mut self) -> usize {
        let mut done = std::mem::take(&mut self.completions);
        self.ring.reap(&mut done);
        let count = done.len();
        for c in done.drain(..) {
            match c.tag {
                Tag::Wake => self.on_wake(c),
                Tag::Recv(peer) => self.on_recv(peer, c),
                Tag::Send(peer) => self.on_send(peer, c),
                Tag::Cancel => {}
            }
        }
        self.completions = done;
        count
    }

    fn on_wake(&mut self, c: Completion) {
        if c.result < 0 && c.result != -libc::EINTR {
            tracing::error!(rank = self.rank, errno = -c.result, "eventfd read failed");
        }
        if !self.shared.stop.load(Ordering::Acquire)
            && let Err(e) = self.ring.read_wake(self.shared.wake.as_raw_fd())
        {
            tracing::error!(rank = self.rank, error = %e, "cannot re-arm the wake-up read");
        }
    }

    fn on_recv(&mut self, peer: NodeId, c: Completion) {
        let result = match (c.result, c.buffer()) {
            (n, Some(bid)) if n > 0 => {
                let outcome = self.receive(peer, bid, n.unsigned_abs() as usize);
                self.ring.buffers().recycle(bid);
                outcome
            }
            (0, _) => Err(CLOSED_BY_PEER.to_owned()),
            (e, _) if e == -libc::ENOBUFS => Ok(()), // buffers ran out: re-armed below
            (e, _) => Err(format!("recv: {}", std::io::Error::from_raw_os_error(-e))),
        };
        if let Err(reason) = result {
            self.fail(peer, reason);
        }
        let Some(conn) = self.conns.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        if !c.more() {
            conn.receiving = false;
            if !conn.closing {
                let fd = conn.stream.as_raw_fd();
                conn.receiving = true;
                if let Err(e) = self.ring.recv_multi(fd, peer) {
                    conn.receiving = false;
                    self.fail(peer, format!("io_uring recv: {e}"));
                }
            }
        }
        self.reap_conn(peer);
    }

    /// Decodes the frames in buffer `bid` and acts on them. An error names why the connection
    /// must close; frames before the bad one have been handled.
    fn receive(&mut self, peer: NodeId, bid: u16, len: usize) -> std::result::Result<(), String> {
        let Some(conn) = self.conns.get_mut(peer as usize).and_then(Option::as_mut) else {
            return Ok(());
        };
        if conn.closing {
            return Ok(());
        }
        let fed = conn
            .reader
            .feed(self.ring.buffers().filled(bid, len), &mut self.frames);
        let mut frames = std::mem::take(&mut self.frames);
        let mut handled = Ok(());
        for frame in frames.drain(..) {
            if handled.is_ok() {
                handled = self.handle_frame(peer, frame);
            }
        }
        self.frames = frames;
        handled?;
        fed.map_err(|e| Error::from_read(peer, e).to_string())
    }

    fn handle_frame(&mut self, peer: NodeId, frame: Frame) -> std::result::Result<(), String> {
        if frame.sender != peer {
            return Err(protocol(
                peer,
                format!("frame claims sender {}", frame.sender),
            ));
        }
        match frame.message {
            Message::Transport(t) => self.handle_transport(peer, t),
            message => {
                self.sink.deliver(TransportEvent::Message {
                    from: peer,
                    message,
                });
                Ok(())
            }
        }
    }

    fn handle_transport(
        &mut self,
        peer: NodeId,
        message: Transport,
    ) -> std::result::Result<(), String> {
        match message {
            Transport::PageReadRequest { token, page } => self.serve_read(peer, token, page),
            Transport::PageWriteRequest { token, page, data } => {
                let status = status_of(self.write_local(page, &data));
                let reply = Transport::PageWriteReply {
                    token,
                    page,
                    status,
                };
                self.reply(peer, reply);
            }
            Transport::PageReadReply {
                token,
                page,
                status,
                data,
            } => {
                let expected = Pending::Read { token, page };
                self.expect_reply(peer, expected)?;
                let result = match (status, data) {
                    (PageStatus::Ok, Some(data)) => Ok(data),
                    (status, _) => Err(status_error(status, page, peer)),
                };
                self.sink
                    .deliver(TransportEvent::PageRead { token, result });
            }
            Transport::PageWriteReply {
                token,
                page,
                status,
            } => {
                self.expect_reply(peer, Pending::Write { token, page })?;
                let result = match status {
                    PageStatus::Ok => Ok(()),
                    status => Err(status_error(status, page, peer)),
                };
                self.sink
                    .deliver(TransportEvent::PageWritten { token, result });
            }
            other => return Err(protocol(peer, format!("{other:?} after the handshake"))),
        }
        Ok(())
    }

    /// Answers a page read from the exposed memory, copying the page once, straight into the
    /// send buffer.
    fn serve_read(&mut self, peer: NodeId, token: u64, page: PageId) {
        let (cluster, rank) = (self.cluster, self.rank);
        let Some(conn) = open(&mut self.conns, peer) else {
            return;
        };
        let check = conn.reader.body_check();
        let exposed = self.shared.exposed();
        let status = match exposed.get(&page.region) {
            None => PageStatus::NotExposed,
            Some(memory) => sys::with_home_page(memory, page.page, |data| {
                let write = |out: &mut Vec<u8>| {
                    append_page_read_reply(out, cluster, rank, check, token, page, data);
                };
                conn.append_frame(write, false);
            })
            .map_or(PageStatus::OutOfRange, |()| PageStatus::Ok),
        };
        drop(exposed);
        if status != PageStatus::Ok {
            self.reply(
                peer,
                Transport::PageReadReply {
                    token,
                    page,
                    status,
                    data: None,
                },
            );
        }
    }

    fn reply(&mut self, peer: NodeId, message: Transport) {
        if let Some(conn) = open(&mut self.conns, peer) {
            let message = Message::Transport(message);
            let frame = encode_for(&message, self.cluster, self.rank, conn.reader.body_check());
            conn.queue_frame(frame, false);
        }
    }

    fn expect_reply(&mut self, peer: NodeId, expected: Pending) -> std::result::Result<(), String> {
        let conn = open(&mut self.conns, peer).ok_or_else(|| "connection closed".to_owned())?;
        match conn.pending.front() {
            Some(front) if *front == expected => {
                conn.pending.pop_front();
                Ok(())
            }
            front => Err(protocol(
                peer,
                format!("reply {expected:?} while waiting for {front:?}"),
            )),
        }
    }

    fn read_local(&self, page: PageId) -> std::result::Result<Page, TransportError> {
        let exposed = self.shared.exposed();
        let memory = exposed
            .get(&page.region)
            .ok_or(TransportError::NotExposed {
                region: page.region,
                home: self.rank,
            })?;
        sys::with_home_page(memory, page.page, |data| Box::new(*data)).ok_or(
            TransportError::OutOfRange {
                page,
                home: self.rank,
            },
        )
    }

    fn write_local(
        &self,
        page: PageId,
        data: &[u8; PAGE_SIZE],
    ) -> std::result::Result<(), TransportError> {
        let exposed = self.shared.exposed();
        let memory = exposed
            .get(&page.region)
            .ok_or(TransportError::NotExposed {
                region: page.region,
                home: self.rank,
            })?;
        sys::write_home_page(memory, page.page, data).ok_or(TransportError::OutOfRange {
            page,
            home: self.rank,
        })
    }

    fn on_send(&mut self, peer: NodeId, c: Completion) {
        let buf = self.ring.take_send(peer);
        let Some(conn) = self.conns.get_mut(peer as usize).and_then(Option::as_mut) else {
            return;
        };
        conn.sending = false;
        match (c.result, buf) {
            (n, Some(buf)) if n >= 0 && !conn.closing => {
                let sent = conn.send_offset + n.unsigned_abs() as usize;
                if sent < buf.len() {
                    // Short send: the rest goes before anything queued since.
                    conn.send_offset = sent;
                    conn.sending = true;
                    let fd = conn.stream.as_raw_fd();
                    if let Err(e) = self.ring.send(fd, peer, buf, sent) {
                        conn.sending = false;
                        self.fail(peer, format!("io_uring send: {e}"));
                    }
                } else {
                    conn.send_offset = 0;
                    conn.sent();
                    let mut buf = buf;
                    buf.clear();
                    if buf.capacity() > conn.spare.capacity() {
                        conn.spare = buf;
                    }
                }
            }
            (n, _) if n < 0 => {
                let reason = format!("send: {}", std::io::Error::from_raw_os_error(-n));
                self.fail(peer, reason);
            }
            _ => {}
        }
        self.reap_conn(peer);
    }

    /// Declares `peer` failed: fails its outstanding requests, reports it once, and shuts the
    /// socket down so the kernel returns the in-flight operations.
    fn fail(&mut self, peer: NodeId, reason: String) {
        let Some(conn) = open(&mut self.conns, peer) else {
            return;
        };
        if reason == CLOSED_BY_PEER {
            // Also how every peer says goodbye at a clean leave: the runtime, which knows
            // whether the peer had left, reports it when it is a failure.
            tracing::debug!(rank = self.rank, peer, %reason, "closing connection");
        } else {
            tracing::warn!(rank = self.rank, peer, %reason, "closing connection");
        }
        conn.closing = true;
        conn.close_lane();
        let _ = conn.stream.shutdown(Shutdown::Both);
        conn.out = Vec::new();
        let pending: Vec<Pending> = conn.pending.drain(..).collect();
        self.shared.failed[peer as usize].store(true, Ordering::Release);
        for p in pending {
            self.sink
                .deliver(failed_completion(p, peer_failed(peer, &reason)));
        }
        self.sink
            .deliver(TransportEvent::PeerFailed { node: peer, reason });
        self.reap_conn(peer);
    }

    /// Closes the socket of a failed connection once the kernel holds nothing of it.
    fn reap_conn(&mut self, peer: NodeId) {
        if let Some(slot) = self.conns.get_mut(peer as usize)
            && slot.as_ref().is_some_and(Conn::finished)
        {
            *slot = None;
        }
    }

    /// Stops: completes every outstanding request with `Closed`, shuts the sockets down and
    /// waits (bounded) for the kernel to give back every buffer.
    fn shutdown(mut self) {
        for conn in self.conns.iter_mut().flatten() {
            conn.closing = true;
            conn.close_lane();
            let _ = conn.stream.shutdown(Shutdown::Both);
            for p in conn.pending.drain(..) {
                self.sink
                    .deliver(failed_completion(p, TransportError::Closed));
            }
        }
        while let Some(op) = self.shared.queue.pop() {
            closed_op(&*self.sink, op);
        }
        if let Err(e) = self
            .ring
            .cancel(Tag::Wake)
            .and_then(|()| self.ring.submit(false))
        {
            tracing::warn!(rank = self.rank, error = %e, "cancelling the wake-up read failed");
        }
        let Worker { ring, conns, .. } = self;
        ring.close(CLOSE_TIMEOUT);
        drop(conns);
    }
}

/// The connection to `peer` unless it failed.
fn open(conns: &mut [Option<Conn>], peer: NodeId) -> Option<&mut Conn> {
    conns
        .get_mut(peer as usize)?
        .as_mut()
        .filter(|c| !c.closing)
}

fn closed_op(sink: &dyn EventSink, op: Op) {
    match op {
        Op::Read { token, .. } => sink.deliver(TransportEvent::PageRead {
            token,
            result: Err(TransportError::Closed),
        }),
        Op::Write { token, .. } => sink.deliver(TransportEvent::PageWritten {
            token,
            result: Err(TransportError::Closed),
        }),
        Op::Send { .. } | Op::Local { .. } => {}
    }
}

fn failed_completion(pending: Pending, error: TransportError) -> TransportEvent {
    match pending {
        Pending::Read { token, .. } => TransportEvent::PageRead {
            token,
            result: Err(error),
        },
        Pending::Write { token, .. } => TransportEvent::PageWritten {
            token,
            result: Err(error),
        },
    }
}

pub(crate) fn peer_failed(node: NodeId, reason: &str) -> TransportError {
    TransportError::PeerFailed {
        node,
        reason: reason.to_owned(),
    }
}

fn status_of(result: std::result::Result<(), TransportError>) -> PageStatus {
    match result {
        Ok(()) => PageStatus::Ok,
        Err(TransportError::OutOfRange { .. }) => PageStatus::OutOfRange,
        Err(_) => PageStatus::NotExposed,
    }
}

fn status_error(status: PageStatus, page: PageId, home: NodeId) -> TransportError {
    match status {
        PageStatus::OutOfRange => TransportError::OutOfRange { page, home },
        _ => TransportError::NotExposed {
            region: page.region,
            home,
        },
    }
}

fn protocol(peer: NodeId, what: String) -> String {
    Error::Protocol { peer, what }.to_string()
}
