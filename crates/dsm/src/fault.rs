//! Serves userfaultfd faults through the coherence engine, delivered one of two ways
//! ([`FaultDelivery`](crate::FaultDelivery)):
//!
//! - **Thread**: the resolver runs on the fault engine's reader thread, takes the coherence
//!   lock, and returns `Pending`; the install that the engine's actions perform wakes the
//!   faulting thread.
//! - **Signal** (`UFFD_FEATURE_SIGBUS`): the resolver runs in the faulting thread's SIGBUS
//!   handler. It claims a preallocated [`PageSlots`] slot and runs the engine itself when
//!   the engine's lock is free (`try_lock`, a bounded number of attempts, never a blocking
//!   wait): the request leaves from the faulting thread, with no hand-over. When the lock
//!   stays taken it hands the fault to the driver thread through the driver's bounded queue
//!   (`try_send` of a plain-data event). Either way it then waits on the slot (futex,
//!   bounded); the engine's install maps the page, its wake marks the slot ready, and the
//!   access re-executes.
//!
//! Why the handler may run the engine (which takes the engine lock and allocates): the
//! SIGBUS of userfaultfd is synchronous. It interrupts exactly one thing, an access to a
//! missing or write-protected page of a region, and neither the allocator nor this library
//! touches region memory while holding a lock (the library moves region pages with
//! `UFFDIO_COPY`/`UFFDIO_WRITEPROTECT` and reads only pages it holds mapped). So the
//! interrupted thread holds none of the locks the engine takes; should it hold the engine's
//! own lock all the same (a bug), `try_lock` fails and the driver gets the fault, as before
//! this path existed. A program whose allocator keeps its own data in a region must use
//! thread delivery.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use dsm_core::Access;
use dsm_uffd::{Fault, FaultKind, FaultResolver, PageSlots, Resolution, SlotId, UffdRegion};
use dsm_wire::PageId;

use crate::runtime::Core;
use crate::runtime::driver::Event;
use crate::stats::{Counters, RegionCounters};
use crate::transport::Wire;

/// The resolver of one region.
#[derive(Debug)]
pub(crate) struct Resolver {
    pub(crate) core: Arc<Core>,
    pub(crate) region: u32,
    /// The region's own counters.
    pub(crate) counters: Arc<RegionCounters>,
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
    /// How long it serves the same-host rings for its answer before it sleeps on its slot.
    pub(crate) spin: Duration,
    /// How long it looks at its slot before it sleeps on it when another thread of the node
    /// delivers the answer (see `Node::slot_spin`).
    pub(crate) slot_spin: Duration,
    /// The node's transports: with same-host peers, the handler serves their rings itself
    /// while it looks at its slot.
    pub(crate) wire: Option<Arc<Wire>>,
}

/// Extra wait a handler grants the driver beyond the fault timeout, so that the driver's
/// timeout (which prints the error naming the page and its home) comes first.
pub(crate) const SIGNAL_WAIT_MARGIN: Duration = Duration::from_secs(5);

/// Attempts to queue a fault while the driver's queue is full (each after a 100 µs nap).
const QUEUE_RETRIES: u32 = 10_000;

impl FaultResolver for Resolver {
    fn on_thread_start(&self) {
        self.core
            .priority
            .apply_to_current_thread(crate::sched::Role::DataPath);
    }

    fn resolve(&self, fault: Fault, _region: &UffdRegion) -> Resolution {
        if self.core.is_gone() {
            // Async-signal-safe: static text, one write(2), whichever delivery runs this.
            crate::raw::write_stderr(
                b"dsm: a region was touched after its node left (Node::leave or drop): \
                  nothing serves its pages any more\n",
            );
            return Resolution::Fail;
        }
        let counters = &self.core.shared.counters;
        let access = match fault.kind {
            FaultKind::Read => {
                Counters::bump(&counters.read_faults);
                Counters::bump(&self.counters.read_faults);
                Access::Read
            }
            FaultKind::Write | FaultKind::WriteProtect => {
                Counters::bump(&counters.write_faults);
                Counters::bump(&self.counters.write_faults);
                Access::Write
            }
        };
        let page = PageId {
            region: self.region,
            page: fault.page,
        };
        crate::trace::fault_raised(&self.core.shared, page, fault.kind);
        if let Some(signal) = &self.signal {
            let resolution = in_signal_handler(&self.core, signal, page, access);
            return crate::trace::resumed(&self.core.shared, page, resolution);
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
/// engine under `try_lock` (see the module's docs), the channel's non-allocating
/// `try_send`, `write(2)`). When the engine got the fault it prints why the fault failed;
/// when it did not, the handler says why itself (static text: no allocation).
fn in_signal_handler(core: &Core, signal: &SignalPath, page: PageId, access: Access) -> Resolution {
    // The request leaves at once even if this thread was corked (a `Cell` write, no more).
    let _sends_now = dsm_tcp_fallback::Cork::suspend();
    match hand_over(signal, page, access, Some(core)) {
        Ok(resolution) => resolution,
        Err(why) => {
            crate::raw::write_stderr(b"dsm: a fault under signal delivery cannot be served: ");
            crate::raw::write_stderr(why.as_bytes());
            crate::raw::write_stderr(b"\n");
            Resolution::Fail
        }
    }
}

/// Attempts at the engine's lock before a handler hands its fault to the driver instead.
const ENGINE_TRIES: u32 = 256;

/// Runs the fault on the engine from the handler (`here`) if its lock is free, otherwise
/// hands it to the driver, and waits for the page; `Err` says why the fault failed when the
/// engine did not report it.
fn hand_over(
    signal: &SignalPath,
    page: PageId,
    access: Access,
    here: Option<&Core>,
) -> Result<Resolution, &'static str> {
    let Ok(slot) = signal.slots.claim() else {
        return Err("every page slot is taken (more threads fault at once than there are slots)");
    };
    let fault = (page, access, slot, Instant::now());
    let shm = signal.wire.as_deref().and_then(Wire::shm);
    // The request's answer is taken by this thread if it comes from a same-host peer: the
    // send need not wake the shared-memory thread to poll for it.
    let serving = shm.map(|_| crate::transport::shm::Serving::start());
    let ran = here.and_then(|core| {
        core.try_engine(ENGINE_TRIES, |c, ctx| {
            crate::trace::fault_taken(&core.shared, page);
            c.fault_in_signal(fault, ctx)
        })
    });
    match ran {
        Some(Ok(())) => {}
        Some(Err(_)) => {
            signal.slots.fail(slot);
            let _ = signal.slots.wait(slot, Duration::ZERO); // frees the slot
            return Err("the engine could not send the fault's request");
        }
        None => {
            drop(serving);
            queue_for_driver(signal, fault)?;
            return wait(signal, slot, signal.slot_spin);
        }
    }
    let Some(shm) = shm else {
        return wait(signal, slot, signal.slot_spin);
    };
    let until = Instant::now() + signal.spin;
    // Given up or not, the guard's drop leaves the rings to the shared-memory thread.
    shm.serve_until(&|| signal.slots.is_settled(slot), until);
    drop(serving);
    wait(signal, slot, Duration::ZERO)
}

/// Waits for the page of `slot`, looking at it for `spin` first.
fn wait(signal: &SignalPath, slot: SlotId, spin: Duration) -> Result<Resolution, &'static str> {
    match signal.slots.wait_spinning(slot, spin, signal.timeout) {
        Ok(_done) => Ok(Resolution::Retry), // Installed: the access re-executes.
        // The engine failed the fault and printed why.
        Err(dsm_uffd::Error::FetchFailed) => Ok(Resolution::Fail),
        Err(_) => Err("the engine neither served nor failed it within the fault timeout"),
    }
}

/// Queues the fault for the driver thread; on failure frees its slot and says why.
fn queue_for_driver(
    signal: &SignalPath,
    fault: (PageId, Access, SlotId, Instant),
) -> Result<(), &'static str> {
    let (page, access, slot, since) = fault;
    let mut event = Event::Fault {
        page,
        access,
        slot,
        since,
    };
    let mut why = "the driver's event queue stayed full (10000 tries, 100 us apart)";
    for _ in 0..QUEUE_RETRIES {
        match signal.events.try_send(event) {
            Ok(()) => return Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(back)) => {
                event = back;
                std::thread::sleep(Duration::from_micros(100)); // nanosleep: signal-safe
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                why = "the driver thread is gone (the node is stopping)";
                break;
            }
        }
    }
    signal.slots.fail(slot);
    let _ = signal.slots.wait(slot, Duration::ZERO); // frees the slot
    Err(why)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;

    fn path(slots: usize) -> (SignalPath, std::sync::mpsc::Receiver<Event>) {
        let (events, receiver) = sync_channel(4);
        let slots = Arc::new(PageSlots::new(slots));
        let timeout = Duration::from_millis(10);
        (
            SignalPath {
                events,
                slots,
                timeout,
                spin: Duration::from_micros(100),
                slot_spin: Duration::from_micros(50),
                wire: None,
            },
            receiver,
        )
    }

    const PAGE: PageId = PageId { region: 1, page: 2 };

    #[test]
    fn a_fault_with_no_free_slot_says_so() {
        let (signal, _receiver) = path(1);
        let _taken = signal.slots.claim().unwrap();
        let why = hand_over(&signal, PAGE, Access::Read, None).unwrap_err();
        assert!(why.contains("page slot"), "{why}");
    }

    #[test]
    fn a_fault_after_the_driver_left_says_so_and_frees_its_slot() {
        let (signal, receiver) = path(1);
        drop(receiver);
        let why = hand_over(&signal, PAGE, Access::Write, None).unwrap_err();
        assert!(why.contains("driver thread is gone"), "{why}");
        assert!(signal.slots.claim().is_ok(), "the slot must be free again");
    }

    #[test]
    fn a_fault_nobody_serves_says_the_driver_never_answered() {
        let (signal, _receiver) = path(1);
        let why = hand_over(&signal, PAGE, Access::Read, None).unwrap_err();
        assert!(why.contains("neither served nor failed"), "{why}");
    }
}
