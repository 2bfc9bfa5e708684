//! Serves userfaultfd faults through the coherence engine, delivered one of two ways
//! ([`FaultDelivery`](crate::FaultDelivery)):
//!
//! - **Thread**: the resolver runs on the fault engine's reader thread, takes the coherence
//!   lock, and returns `Pending`; the install that the engine's actions perform wakes the
//!   faulting thread.
//! - **Signal** (`UFFD_FEATURE_SIGBUS`): the resolver runs in the faulting thread's SIGBUS
//!   handler, so it takes no lock and allocates nothing. It claims a preallocated
//!   [`PageSlots`] slot, hands the fault to the driver thread through the driver's bounded
//!   queue (`try_send` of a plain-data event: no allocation; the channel's internal waker
//!   lock is never held by a thread that is touching region memory, the only place SIGBUS
//!   can interrupt), and waits on the slot (futex, bounded). The driver runs the engine,
//!   whose install maps the page; its wake marks the slot ready, and the access re-executes.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use dsm_core::Access;
use dsm_uffd::{Fault, FaultKind, FaultResolver, PageSlots, Region, Resolution};
use dsm_wire::PageId;

use crate::runtime::Core;
use crate::runtime::driver::Event;
use crate::stats::Counters;

/// The resolver of one region.
#[derive(Debug)]
pub(crate) struct Resolver {
    pub(crate) core: Arc<Core>,
    pub(crate) region: u32,
    /// Signal delivery only: how the handler reaches the driver.
    pub(crate) signal: Option<SignalPath>,
}

/// What a SIGBUS handler needs to hand a fault to the driver thread (all allocated before).
#[derive(Debug)]
pub(crate) struct SignalPath {
    pub(crate) events: SyncSender<Event>,
    pub(crate) slots: Arc<PageSlots>,
    /// Longest a handler waits for its page (beyond the engine's own fault timeout).
    pub(crate) timeout: Duration,
}

/// Extra wait a handler grants the driver beyond the fault timeout, so that the driver's
/// timeout (which prints the error naming the page and its home) comes first.
pub(crate) const SIGNAL_WAIT_MARGIN: Duration = Duration::from_secs(5);

/// Attempts to queue a fault while the driver's queue is full (each after a 100 µs nap).
const QUEUE_RETRIES: u32 = 10_000;

impl FaultResolver for Resolver {
    fn resolve(&self, fault: Fault, _region: &Region) -> Resolution {
        let counters = &self.core.shared.counters;
        let access = match fault.kind {
            FaultKind::Read => {
                Counters::bump(&counters.read_faults);
                Access::Read
            }
            FaultKind::Write | FaultKind::WriteProtect => {
                Counters::bump(&counters.write_faults);
                Access::Write
            }
        };
        let page = PageId {
            region: self.region,
            page: fault.page,
        };
        if let Some(signal) = &self.signal {
            return in_signal_handler(signal, page, access);
        }
        if let Some(rank) = self.core.shared.read(|s| s.failed.first().copied()) {
            eprintln!(
                "dsm: fault on page {} cannot be served: node {rank} failed",
                fault.page
            );
            return Resolution::Fail;
        }
        match self.core.engine(|c, ctx| c.fault(page, access, ctx)) {
            Ok(()) => Resolution::Pending,
            Err(e) => {
                eprintln!("dsm: fault on {page:?} failed: {e}");
                Resolution::Fail
            }
        }
    }
}

/// The SIGBUS handler's share (async-signal-safe: atomics, futex, `clock_gettime`, the
/// channel's non-allocating `try_send`). The driver prints why a fault failed.
fn in_signal_handler(signal: &SignalPath, page: PageId, access: Access) -> Resolution {
    let Ok(slot) = signal.slots.claim() else {
        return Resolution::Fail; // More threads faulting at once than slots.
    };
    let mut event = Event::Fault {
        page,
        access,
        slot,
        since: Instant::now(),
    };
    let mut queued = false;
    for _ in 0..QUEUE_RETRIES {
        match signal.events.try_send(event) {
            Ok(()) => {
                queued = true;
                break;
            }
            Err(std::sync::mpsc::TrySendError::Full(back)) => {
                event = back;
                std::thread::sleep(Duration::from_micros(100)); // nanosleep: signal-safe
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => break,
        }
    }
    if !queued {
        signal.slots.fail(slot);
        let _ = signal.slots.wait(slot, Duration::ZERO); // frees the slot
        return Resolution::Fail;
    }
    match signal.slots.wait(slot, signal.timeout) {
        Ok(_done) => Resolution::Retry, // Installed by the driver: the access re-executes.
        Err(_) => Resolution::Fail,
    }
}
