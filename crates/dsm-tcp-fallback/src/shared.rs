//! State shared between application threads and the transport thread: the lock-free work
//! queue, the eventfd that wakes the ring, per-peer failure flags and the exposure table.
//!
//! Wake-up protocol (no lost wake-ups, at most one eventfd write per sleep of the worker):
//! a producer pushes, then `notified.swap(true)`; only the producer that flips it from false
//! writes the eventfd. The worker sets `notified` while it runs and, before sleeping, clears
//! it, fences, and looks at the queue once more; anything pushed before the clear is seen by
//! that look, anything pushed after it flips the flag and writes the eventfd.
//!
//! Direct sends (the round-trip case): a caller whose peer has nothing queued or in flight
//! writes its frame to the socket itself, skipping the hand-off to the transport thread. Each
//! peer's [`Lane`] word keeps the byte stream in order: `DIRECT` is held by the one caller
//! writing, the low bits count frames the transport thread owns (queued, batched or in
//! flight). A caller may go direct only from 0; the thread does not send while `DIRECT` is
//! held. A direct write the socket cannot take whole leaves `DIRECT` set and queues the rest
//! as [`Op::Rest`], which the thread puts before everything else and then clears `DIRECT`.

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use dsm_core::{HomeMemory, TransportError};
use dsm_wire::{Message, NodeId, Page, PageId};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::conn::Pending;
use crate::sys;

/// Capacity of the work queue (operations not yet taken by the transport thread).
pub(crate) const QUEUE_CAPACITY: usize = 1 << 16;
/// How long a producer waits for room in a full queue before giving up.
const QUEUE_FULL_TIMEOUT: Duration = Duration::from_secs(10);

/// One unit of work for the transport thread.
#[derive(Debug)]
pub(crate) enum Op {
    /// Send an encoded frame to a peer.
    Send { to: NodeId, frame: Vec<u8> },
    /// Deliver a message to our own sink (a node sending to itself).
    Local { message: Message },
    /// Read a page from a home.
    Read {
        home: NodeId,
        page: PageId,
        token: u64,
    },
    /// Write a page to a home.
    Write {
        home: NodeId,
        page: PageId,
        data: Page,
        token: u64,
    },
    /// A caller sent a request directly: expect its reply.
    Expect { home: NodeId, pending: Pending },
    /// The part of a direct write the socket did not take; goes first, then ends `DIRECT`.
    Rest { to: NodeId, bytes: Vec<u8> },
}

/// Lane bit: a caller is writing to the socket directly.
pub(crate) const DIRECT: u32 = 1 << 31;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) queue: ArrayQueue<Op>,
    pub(crate) wake: EventFd,
    pub(crate) notified: AtomicBool,
    pub(crate) stop: AtomicBool,
    pub(crate) failed: Vec<AtomicBool>,
    pub(crate) exposed: RwLock<HashMap<u32, HomeMemory>>,
    /// Per peer: `DIRECT` and the count of frames the transport thread owns (module docs).
    pub(crate) lanes: Vec<AtomicU32>,
    /// Per peer: the socket for direct sends (a duplicate, so it stays open while a caller
    /// writes even if the thread drops its connection).
    sockets: Vec<Option<TcpStream>>,
    /// Per peer: page reads sent and not answered. Only a lone read goes direct (the
    /// latency case); a stream of them is batched by the thread, one send for many.
    pub(crate) reads: Vec<AtomicU32>,
    /// Set when a direct send ended while the thread had frames waiting for it.
    pub(crate) kick: AtomicBool,
}

impl Shared {
    pub(crate) fn new(sockets: Vec<Option<TcpStream>>) -> std::io::Result<Self> {
        let size = sockets.len();
        // Blocking on purpose: io_uring then waits on it by poll; with O_NONBLOCK its read
        // would complete at once with EAGAIN.
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?;
        Ok(Shared {
            queue: ArrayQueue::new(QUEUE_CAPACITY),
            wake,
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            failed: (0..size).map(|_| AtomicBool::new(false)).collect(),
            exposed: RwLock::new(HashMap::new()),
            lanes: (0..size).map(|_| AtomicU32::new(0)).collect(),
            sockets,
            reads: (0..size).map(|_| AtomicU32::new(0)).collect(),
            kick: AtomicBool::new(false),
        })
    }

    /// Queues `op` carrying a frame for `to` (counted in its lane), waking the thread.
    pub(crate) fn submit_for(&self, to: NodeId, op: Op) -> Result<(), TransportError> {
        self.lanes[to as usize].fetch_add(1, Ordering::SeqCst);
        self.submit(op)
    }

    /// Sends `frame` to `to` from the calling thread when the lane is idle, registering
    /// `expect` first; otherwise hands the frame back for the queue.
    pub(crate) fn send_direct(
        &self,
        to: NodeId,
        frame: Vec<u8>,
        expect: Option<Pending>,
    ) -> Result<(), Vec<u8>> {
        let (Some(lane), Some(Some(socket))) =
            (self.lanes.get(to as usize), self.sockets.get(to as usize))
        else {
            return Err(frame);
        };
        if lane
            .compare_exchange(0, DIRECT, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return Err(frame);
        }
        if let Some(pending) = expect {
            // Before the request leaves: the reply cannot overtake its registration. No
            // wake-up: the thread looks for it when the reply arrives.
            if !self.push_quiet(Op::Expect { home: to, pending }) {
                lane.fetch_and(!DIRECT, Ordering::SeqCst);
                return Err(frame); // stopping or stuck: the queue path reports it
            }
        }
        let sent = sys::send_now(socket.as_raw_fd(), &frame).unwrap_or_else(|e| {
            // The thread sees the connection fail on its receive and reports the peer.
            tracing::debug!(peer = to, error = %e, "direct send failed");
            frame.len()
        });
        if sent < frame.len() {
            lane.fetch_add(1, Ordering::SeqCst);
            let bytes = frame[sent..].to_vec();
            if self.submit(Op::Rest { to, bytes }).is_err() {
                lane.fetch_and(!DIRECT, Ordering::SeqCst);
            }
            return Ok(());
        }
        if lane.fetch_and(!DIRECT, Ordering::SeqCst) != DIRECT {
            // Frames were queued meanwhile and the thread held them back.
            self.kick.store(true, Ordering::SeqCst);
            self.wake();
        }
        Ok(())
    }

    /// The transport thread ended: shut every socket down, so peers see this node fail even
    /// though the duplicates for direct sends keep the descriptors open.
    pub(crate) fn shut_sockets(&self) {
        for socket in self.sockets.iter().flatten() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Queues `op` without waking the thread, waiting for room like `submit`.
    fn push_quiet(&self, mut op: Op) -> bool {
        let mut deadline = None;
        while let Err(back) = self.queue.push(op) {
            op = back;
            if self.submit_contended(&mut deadline).is_err() {
                return false;
            }
        }
        true
    }

    /// Queues `op` and wakes the transport thread if it may be asleep.
    pub(crate) fn submit(&self, mut op: Op) -> Result<(), TransportError> {
        let mut deadline = None;
        while let Err(back) = self.queue.push(op) {
            op = back;
            self.submit_contended(&mut deadline)?;
        }
        self.wake();
        Ok(())
    }

    /// The queue is full: the transport thread is behind. Make sure it is awake, then yield
    /// until it makes room, for at most `QUEUE_FULL_TIMEOUT`.
    #[cold]
    fn submit_contended(&self, deadline: &mut Option<Instant>) -> Result<(), TransportError> {
        if self.stop.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + QUEUE_FULL_TIMEOUT);
        if Instant::now() > deadline {
            return Err(TransportError::Io {
                call: "transport work queue",
                detail: format!("full ({QUEUE_CAPACITY} operations) for {QUEUE_FULL_TIMEOUT:?}"),
            });
        }
        self.wake();
        std::thread::yield_now();
        Ok(())
    }

    /// Wakes the transport thread unless a wake-up is already pending.
    pub(crate) fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            // Cannot fail short of a closed fd: the counter never nears u64::MAX because the
            // worker resets it on every wake-up.
            if let Err(e) = self.wake.write(1) {
                tracing::error!(error = %e, "eventfd write failed");
            }
        }
    }

    /// Worker: clears the wake-up flag before sleeping; true when work arrived meanwhile (then
    /// the worker must not sleep).
    pub(crate) fn prepare_to_sleep(&self) -> bool {
        self.notified.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let busy = !self.queue.is_empty()
            || self.stop.load(Ordering::SeqCst)
            || self.kick.swap(false, Ordering::SeqCst);
        if busy {
            self.notified.store(true, Ordering::SeqCst);
        }
        busy
    }

    /// Worker: running; producers need not write the eventfd.
    pub(crate) fn awake(&self) {
        self.notified.store(true, Ordering::SeqCst);
    }

    pub(crate) fn exposed(&self) -> RwLockReadGuard<'_, HashMap<u32, HomeMemory>> {
        self.exposed.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_failed(&self, node: NodeId) -> bool {
        self.failed
            .get(node as usize)
            .is_some_and(|f| f.load(Ordering::Acquire))
    }
}
