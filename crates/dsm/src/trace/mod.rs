//! Per-hop tracing (`DSM_TRACE`): timestamps at each hand-off of a remote fault, a lock
//! acquire and a barrier, written per node as a Chrome trace (Perfetto opens it).
//!
//! The runtime calls one hook per hand-off (one line each in the files that own the hop:
//! `fault.rs`, `coherence.rs`, `lock.rs`, `node.rs`, `runtime/driver.rs`); every decision
//! is made here. A hook costs one relaxed atomic load and a branch when tracing is off.
//! When on, it reads `CLOCK_MONOTONIC` (vDSO), the thread's id (cached in a const
//! thread-local after one `gettid` per thread) and claims a slot of a buffer allocated at
//! `join` ([`buffer`]): no lock, no allocation, never a wait, so the SIGBUS handler records
//! too. A full buffer drops records and counts them (the file says how many).
//!
//! Hops (id: page, lock or barrier epoch):
//! - remote fault, requester: fault raised (the resolver got it: SIGBUS handler or uffd
//!   reader) → (signal delivery: the driver thread took it from the handler) → request
//!   handed to the transport → reply received (transport thread) →
//!   install issued (the page goes to the kernel: `UFFDIO_COPY`, which wakes the thread) →
//!   thread resumed (signal delivery only: under thread delivery the faulting thread wakes
//!   in the kernel, with no runtime code on it; `dsm-bench latency` stamps its return in
//!   the application instead);
//! - remote fault, home: request received → reply sent;
//! - lock: acquire called → request sent → grant received → acquire returns; the node that
//!   grants: request received → grant sent;
//! - barrier: barrier called → arrival sent (after the release flush; the first
//!   dissemination round) → (each round received) → all arrived (this node heard, directly
//!   or not, from every node) → barrier returns.

mod buffer;
mod chrome;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use dsm_core::{Action, TransportEvent};
use dsm_uffd::Resolution;
use dsm_wire::{Coherence, Message, NodeId, PageId, SyncMsg};

use crate::runtime::Shared;
use crate::{Error, Result};
use buffer::Buffer;

/// Records a node keeps (24 bytes each: 6 MiB, allocated at `join` when tracing). Later
/// records are dropped and counted.
pub(crate) const CAPACITY: usize = 1 << 18;

/// A hand-off point. The discriminant is what the buffer stores (0 is never used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Hop {
    FaultRaisedRead = 1,
    FaultRaisedWrite,
    FaultTaken,
    FaultRequestSent,
    FaultReplyReceived,
    FaultInstalled,
    FaultResumed,
    FaultDone,
    HomeReadReceived,
    HomeWriteReceived,
    HomeReplySent,
    LockCalled,
    LockRequestSent,
    LockGrantReceived,
    LockAcquired,
    LockRequestReceived,
    LockGrantSent,
    BarrierEnter,
    BarrierArriveSent,
    BarrierRoundReceived,
    BarrierComplete,
    BarrierReturn,
}

const HOPS: [Hop; 22] = [
    Hop::FaultRaisedRead,
    Hop::FaultRaisedWrite,
    Hop::FaultTaken,
    Hop::FaultRequestSent,
    Hop::FaultReplyReceived,
    Hop::FaultInstalled,
    Hop::FaultResumed,
    Hop::FaultDone,
    Hop::HomeReadReceived,
    Hop::HomeWriteReceived,
    Hop::HomeReplySent,
    Hop::LockCalled,
    Hop::LockRequestSent,
    Hop::LockGrantReceived,
    Hop::LockAcquired,
    Hop::LockRequestReceived,
    Hop::LockGrantSent,
    Hop::BarrierEnter,
    Hop::BarrierArriveSent,
    Hop::BarrierRoundReceived,
    Hop::BarrierComplete,
    Hop::BarrierReturn,
];

impl Hop {
    fn from_u8(value: u8) -> Option<Hop> {
        HOPS.iter().copied().find(|hop| *hop as u8 == value)
    }

    /// The hop's name in the trace file (`args.hops[].hop`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Hop::FaultRaisedRead | Hop::FaultRaisedWrite => "fault raised",
            Hop::FaultTaken => "engine took it",
            Hop::FaultRequestSent => "request sent",
            Hop::FaultReplyReceived => "reply received",
            Hop::FaultInstalled => "install issued",
            Hop::FaultResumed => "thread resumed",
            Hop::FaultDone => "woken without install",
            Hop::HomeReadReceived | Hop::HomeWriteReceived | Hop::LockRequestReceived => {
                "request received"
            }
            Hop::HomeReplySent => "reply sent",
            Hop::LockCalled => "acquire called",
            Hop::LockRequestSent => "request sent",
            Hop::LockGrantReceived => "grant received",
            Hop::LockAcquired => "acquire returned",
            Hop::LockGrantSent => "grant sent",
            Hop::BarrierEnter => "barrier called",
            Hop::BarrierArriveSent => "arrival sent",
            Hop::BarrierRoundReceived => "round received",
            Hop::BarrierComplete => "all arrived",
            Hop::BarrierReturn => "barrier returned",
        }
    }
}

/// A node's tracer: off (and without a buffer) unless the node was configured with a trace
/// file.
#[derive(Debug, Default)]
pub(crate) struct Tracer {
    on: AtomicBool,
    buffer: OnceLock<Buffer>,
    setup: OnceLock<Setup>,
    /// The file was written (at `leave`, or at drop without `leave`).
    written: AtomicBool,
}

#[derive(Debug)]
struct Setup {
    rank: NodeId,
    file: PathBuf,
    /// Faults are resolved in SIGBUS handlers (a fault ends at "thread resumed").
    signal: bool,
}

impl Tracer {
    /// Allocates the buffer and starts recording, for node `rank` whose trace goes to
    /// `file` at `leave`.
    pub(crate) fn start(&self, rank: NodeId, file: PathBuf, signal: bool) {
        let _ = self.setup.set(Setup { rank, file, signal });
        self.buffer.get_or_init(|| Buffer::new(CAPACITY));
        self.on.store(true, Ordering::Relaxed);
    }

    /// Pauses or resumes recording; returns whether it records now (never without a
    /// buffer, i.e. without a trace file).
    pub(crate) fn set_on(&self, on: bool) -> bool {
        let on = on && self.buffer.get().is_some();
        self.on.store(on, Ordering::Relaxed);
        on
    }

    /// The one check every hook makes first.
    #[inline]
    fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Records `hop` now, on this thread. Async-signal-safe.
    fn record(&self, hop: Hop, id: u64, peer: Option<NodeId>) {
        if let Some(buffer) = self.buffer.get() {
            let peer = peer.and_then(|p| u16::try_from(p).ok());
            buffer.push(crate::raw::monotonic_ns(), hop, id, peer, thread_id());
        }
    }

    /// Writes the trace file once (later calls do nothing); `Ok` also when not tracing.
    pub(crate) fn write_once(&self) -> Result<()> {
        let (Some(setup), Some(buffer)) = (self.setup.get(), self.buffer.get()) else {
            return Ok(());
        };
        if self.written.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.on.store(false, Ordering::Relaxed);
        let trace = chrome::Trace {
            rank: setup.rank,
            signal: setup.signal,
            records: buffer.records(),
            dropped: buffer.dropped(),
            capacity: buffer.capacity(),
        };
        if trace.dropped > 0 {
            tracing::warn!(
                rank = setup.rank,
                dropped = trace.dropped,
                capacity = trace.capacity,
                "the trace buffer filled up: later records were dropped (the file says how many)"
            );
        }
        trace
            .write(&setup.file)
            .map_err(|e| Error::io(format!("write the trace {}", setup.file.display()), e))
    }
}

thread_local! {
    /// This thread's kernel id, 0 until first asked. Const-initialised and without drop, so
    /// reading it is a plain TLS load (nothing is registered or allocated: handler-safe).
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// The calling thread's kernel id (`gettid`, once per thread).
fn thread_id() -> u32 {
    TID.with(|tid| {
        if tid.get() == 0 {
            tid.set(crate::raw::gettid());
        }
        tid.get()
    })
}

/// The file node `rank` writes for `DSM_TRACE=path`: `.rank<r>` goes before the file name's
/// last extension (`trace.json` → `trace.rank0.json`), or at its end when it has none
/// (`trace` → `trace.rank0`).
pub(crate) fn rank_file(path: &Path, rank: NodeId) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.rank{rank}.{}", ext.to_string_lossy()),
        None => format!("{stem}.rank{rank}"),
    };
    path.with_file_name(name)
}

/// Starts tracing on a node that joined with a trace file (`DSM_TRACE`).
pub(crate) fn start(shared: &Shared, config: &crate::Config) {
    if let Some(file) = config.trace_file() {
        let signal = config.fault_delivery() == crate::FaultDelivery::Signal;
        shared.trace.start(config.rank(), file, signal);
    }
}

/// The node stops: writes its trace if `leave` did not (a failure is logged: nothing can
/// be returned from a drop).
pub(crate) fn finish(shared: &Shared, rank: NodeId) {
    if let Err(error) = shared.trace.write_once() {
        tracing::error!(rank, %error, "trace not written");
    }
}

fn page_key(page: PageId) -> u64 {
    u64::from(page.region) << 32 | u64::from(page.page)
}

// The hooks: one call each at a hand-off point of the runtime.

/// A fault reached the runtime (SIGBUS handler or uffd reader thread).
#[inline]
pub(crate) fn fault_raised(shared: &Shared, page: PageId, kind: dsm_uffd::FaultKind) {
    if shared.trace.on() {
        let hop = match kind {
            dsm_uffd::FaultKind::Read => Hop::FaultRaisedRead,
            _ => Hop::FaultRaisedWrite,
        };
        shared.trace.record(hop, page_key(page), None);
    }
}

/// Signal delivery: the driver thread took the fault a SIGBUS handler handed over.
#[inline]
pub(crate) fn fault_taken(shared: &Shared, page: PageId) {
    if shared.trace.on() {
        shared.trace.record(Hop::FaultTaken, page_key(page), None);
    }
}

/// A SIGBUS handler is about to return `resolution` (the access re-executes); gives it back.
#[inline]
pub(crate) fn resumed(shared: &Shared, page: PageId, resolution: Resolution) -> Resolution {
    if shared.trace.on() {
        shared.trace.record(Hop::FaultResumed, page_key(page), None);
    }
    resolution
}

/// The engine is about to perform `action` (a request or a grant handed to the transport,
/// a page handed to the kernel, a fault completed); `fault_page` gives the page of an
/// outstanding fault's token.
#[inline]
pub(crate) fn action(
    shared: &Shared,
    action: &Action,
    fault_page: impl FnOnce(u64) -> Option<PageId>,
) {
    if shared.trace.on() {
        action_contended(&shared.trace, action, fault_page);
    }
}

fn action_contended(
    trace: &Tracer,
    action: &Action,
    fault_page: impl FnOnce(u64) -> Option<PageId>,
) {
    match action {
        Action::Send { to, message } => match message {
            Coherence::ReadRequest { page, .. } | Coherence::WriteRequest { page, .. } => {
                trace.record(Hop::FaultRequestSent, page_key(*page), Some(*to));
            }
            Coherence::ReadGrant { page, .. } | Coherence::WriteGrant { page, .. } => {
                trace.record(Hop::HomeReplySent, page_key(*page), Some(*to));
            }
            _ => {}
        },
        Action::ReadPage { home, page, .. } => {
            trace.record(Hop::FaultRequestSent, page_key(*page), Some(*home));
        }
        // Stamped as the page goes to the kernel, before the `UFFDIO_COPY` (or
        // write-protect clear) that wakes the faulting thread: stamped after, the woken
        // thread (on the same CPU) could run first and fault again before the stamp.
        Action::Install { page, .. }
        | Action::MapMaster { page, .. }
        | Action::Upgrade { page } => {
            trace.record(Hop::FaultInstalled, page_key(*page), None);
        }
        // The fault is complete. Only a fault the engine resolved without an install (its
        // page came meanwhile) ends here in the file: the others ended at their install.
        Action::Wake { token } => {
            if let Some(page) = fault_page(*token) {
                trace.record(Hop::FaultDone, page_key(page), None);
            }
        }
        _ => {}
    }
}

/// A transport event reached the thread that handles it.
#[inline]
pub(crate) fn received(shared: &Shared, event: &TransportEvent) {
    if shared.trace.on()
        && let TransportEvent::Message { from, message } = event
    {
        received_contended(&shared.trace, *from, message);
    }
}

fn received_contended(trace: &Tracer, from: NodeId, message: &Message) {
    let (hop, id) = match message {
        Message::Coherence(Coherence::ReadRequest { page, .. }) => {
            (Hop::HomeReadReceived, page_key(*page))
        }
        Message::Coherence(Coherence::WriteRequest { page, .. }) => {
            (Hop::HomeWriteReceived, page_key(*page))
        }
        Message::Coherence(Coherence::ReadGrant { page, .. })
        | Message::Coherence(Coherence::WriteGrant { page, .. }) => {
            (Hop::FaultReplyReceived, page_key(*page))
        }
        Message::Sync(SyncMsg::LockRequest { lock, .. })
        | Message::Sync(SyncMsg::LockAcquire { lock, .. }) => {
            (Hop::LockRequestReceived, u64::from(*lock))
        }
        Message::Sync(SyncMsg::LockReply { lock, .. })
        | Message::Sync(SyncMsg::LockGrant { lock, .. }) => {
            (Hop::LockGrantReceived, u64::from(*lock))
        }
        // The engine counts barriers from 0, the runtime from 1 (`runtime::barrier`).
        Message::Sync(SyncMsg::BarrierRound { epoch, .. }) => {
            (Hop::BarrierRoundReceived, epoch + 1)
        }
        _ => return,
    };
    trace.record(hop, id, Some(from));
}

/// The lock table sends `message` to `to`.
#[inline]
pub(crate) fn lock_sent(trace: &Tracer, to: NodeId, message: &SyncMsg) {
    if trace.on() {
        match message {
            SyncMsg::LockRequest { lock, .. } | SyncMsg::LockAcquire { lock, .. } => {
                trace.record(Hop::LockRequestSent, u64::from(*lock), Some(to));
            }
            SyncMsg::LockReply { lock, .. } | SyncMsg::LockGrant { lock, .. } => {
                trace.record(Hop::LockGrantSent, u64::from(*lock), Some(to));
            }
            _ => {}
        }
    }
}

/// `Lock::acquire` was called.
#[inline]
pub(crate) fn lock_called(shared: &Shared, lock: u32) {
    if shared.trace.on() {
        shared.trace.record(Hop::LockCalled, u64::from(lock), None);
    }
}

/// `Lock::acquire` returns the guard.
#[inline]
pub(crate) fn lock_acquired(shared: &Shared, lock: u32) {
    if shared.trace.on() {
        shared
            .trace
            .record(Hop::LockAcquired, u64::from(lock), None);
    }
}

/// `Node::barrier` was called for `epoch`.
#[inline]
pub(crate) fn barrier_enter(shared: &Shared, epoch: u64) {
    if shared.trace.on() {
        shared.trace.record(Hop::BarrierEnter, epoch, None);
    }
}

/// This node's arrival at `epoch` goes out (its first dissemination round).
#[inline]
pub(crate) fn barrier_arrive(shared: &Shared, epoch: u64) {
    if shared.trace.on() {
        shared.trace.record(Hop::BarrierArriveSent, epoch, None);
    }
}

/// This node heard, directly or not, from every node at `epoch`: the barrier is complete.
#[inline]
pub(crate) fn barrier_released(shared: &Shared, epoch: u64) {
    if shared.trace.on() {
        shared.trace.record(Hop::BarrierComplete, epoch, None);
    }
}

/// `Node::barrier` returns from `epoch`.
#[inline]
pub(crate) fn barrier_return(shared: &Shared, epoch: u64) {
    if shared.trace.on() {
        shared.trace.record(Hop::BarrierReturn, epoch, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rank_goes_before_the_extension() {
        let file = |p: &str, r| rank_file(Path::new(p), r);
        assert_eq!(file("trace.json", 0), Path::new("trace.rank0.json"));
        assert_eq!(
            file("/tmp/run/t.json", 12),
            Path::new("/tmp/run/t.rank12.json")
        );
        assert_eq!(file("out/trace", 3), Path::new("out/trace.rank3"));
        assert_eq!(file("a.b.json", 1), Path::new("a.b.rank1.json"));
    }

    #[test]
    fn every_hop_survives_its_byte() {
        for hop in HOPS {
            assert_eq!(Hop::from_u8(hop as u8), Some(hop));
        }
        assert_eq!(Hop::from_u8(0), None);
    }

    #[test]
    fn an_unstarted_tracer_records_nothing_and_writes_nothing() {
        let tracer = Tracer::default();
        assert!(!tracer.set_on(true), "no buffer: stays off");
        assert!(!tracer.on());
        tracer.record(Hop::LockCalled, 1, None);
        assert!(tracer.write_once().is_ok());
    }
}
