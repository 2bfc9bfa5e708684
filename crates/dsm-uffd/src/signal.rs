//! SIGBUS delivery: with `UFFD_FEATURE_SIGBUS` the kernel raises SIGBUS in the faulting thread
//! instead of queueing a message, and the thread resolves its own fault in the handler. No
//! other thread is woken, which saves the cross-CPU wake-up (15–35 µs here) of a handler
//! thread.
//!
//! The handler finds the region in a fixed table of [`MAX_REGIONS`] slots (no allocation, no
//! lock), calls the resolver, and returns: the access re-executes. Addresses outside every
//! region go to the handler that was installed before ours (std's, which reports stack
//! overflows), so the process behaves as before for every other SIGBUS.
//!
//! Invariants kept here (see [`crate::FaultResolver`] for the resolver's share):
//! - the handler allocates nothing, takes no lock, and saves/restores `errno`;
//! - a slot's registration is freed only after no handler can still be reading it (the
//!   `active` count below), so a region can be deregistered while other threads fault.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::fault::{Fault, FaultKind, FaultResolver, Resolution};
use crate::raw;
use crate::region::UffdRegion;

/// Regions that can be served by SIGBUS delivery at once, per process.
pub const MAX_REGIONS: usize = 64;

/// How long deregistering waits for handlers still running in the region's resolver before
/// leaking the registration instead of freeing it under them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

struct Registration {
    region: Arc<UffdRegion>,
    resolver: Arc<dyn FaultResolver>,
}

/// One table entry. `start..end` is a hint for the scan; `registration` is the truth.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    /// Handlers currently between reading `registration` and being done with it.
    active: AtomicUsize,
    registration: AtomicPtr<Registration>,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            registration: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

static SLOTS: [Slot; MAX_REGIONS] = [const { Slot::new() }; MAX_REGIONS];
/// The SIGBUS action before ours, to chain to for addresses outside every region.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// Serialises installing the handler (never taken in the handler).
static INSTALL: Mutex<()> = Mutex::new(());

/// Serves a region's faults by SIGBUS until dropped.
pub(crate) struct Registered {
    slot: usize,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("slot", &self.slot)
            .finish()
    }
}

/// Installs the handler (once per process) and enters `region` in the table.
pub(crate) fn register(
    region: Arc<UffdRegion>,
    resolver: Arc<dyn FaultResolver>,
) -> Result<Registered> {
    if !cfg!(target_arch = "x86_64") {
        return Err(Error::Unsupported(
            "SIGBUS delivery reads the x86-64 page-fault error code; use Delivery::Thread",
        ));
    }
    install_handler()?;
    let (start, end) = (
        region.base() as usize,
        region.base() as usize + region.len(),
    );
    let registration = Box::into_raw(Box::new(Registration { region, resolver }));
    for (index, slot) in SLOTS.iter().enumerate() {
        let claimed = slot.registration.compare_exchange(
            std::ptr::null_mut(),
            registration,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        if claimed.is_ok() {
            slot.start.store(start, Ordering::SeqCst);
            slot.end.store(end, Ordering::SeqCst);
            return Ok(Registered { slot: index });
        }
    }
    // SAFETY: never published: this is still the only pointer to the box.
    drop(unsafe { Box::from_raw(registration) });
    Err(Error::Exhausted {
        what: "SIGBUS region slots",
        capacity: MAX_REGIONS,
    })
}

fn install_handler() -> Result<()> {
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if PREVIOUS.get().is_some() {
        return Ok(());
    }
    let previous = raw::install_sigbus(on_sigbus).map_err(|errno| Error::Setup {
        call: "sigaction(SIGBUS)",
        errno,
    })?;
    // Cannot fail: the lock is held and the cell was empty.
    let _ = PREVIOUS.set(previous);
    Ok(())
}

impl Drop for Registered {
    fn drop(&mut self) {
        let slot = &SLOTS[self.slot];
        slot.start.store(0, Ordering::SeqCst);
        slot.end.store(0, Ordering::SeqCst);
        let registration = slot
            .registration
            .swap(std::ptr::null_mut(), Ordering::SeqCst);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while slot.active.load(Ordering::SeqCst) != 0 {
            if Instant::now() >= deadline {
                // A resolver is stuck in the region: leaking beats freeing under it.
                return;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        // SAFETY: unpublished above, and no handler is between reading it and finishing
        // with it (SeqCst: a handler that loaded it incremented `active` first).
        drop(unsafe { Box::from_raw(registration) });
    }
}

/// The SIGBUS handler.
extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let saved_errno = raw::errno_get();
    // SAFETY: `info` is the kernel's siginfo for this SA_SIGINFO handler.
    let served = match unsafe { raw::fault_address(info) } {
        Some(address) => serve(address, context),
        None => false,
    };
    if !served {
        match PREVIOUS.get() {
            // SAFETY: called from the handler with its own arguments; `previous` is the
            // action that was installed before ours.
            Some(previous) => unsafe { raw::chain(previous, signal, info, context) },
            None => raw::reset_sigbus(),
        }
    }
    raw::errno_set(saved_errno);
}

/// Finds the region holding `address` and resolves the fault; false if no region holds it.
fn serve(address: usize, context: *mut libc::c_void) -> bool {
    for slot in &SLOTS {
        let inside = slot.start.load(Ordering::Acquire) <= address
            && address < slot.end.load(Ordering::Acquire);
        if !inside {
            continue;
        }
        slot.active.fetch_add(1, Ordering::SeqCst);
        let registration = slot.registration.load(Ordering::SeqCst);
        // SAFETY: non-null registrations are live until `active` drops to 0 (see Drop).
        let served = unsafe { registration.as_ref() }
            .is_some_and(|registration| resolve(registration, address, context));
        slot.active.fetch_sub(1, Ordering::SeqCst);
        if served {
            return true;
        }
    }
    false
}

fn resolve(registration: &Registration, address: usize, context: *mut libc::c_void) -> bool {
    let Some(page) = registration.region.page_of(address) else {
        return false;
    };
    let fault = Fault {
        page,
        address,
        kind: kind_of(context),
    };
    if registration.resolver.resolve(fault, &registration.region) == Resolution::Fail {
        raw::write_stderr(b"dsm-uffd: a fault could not be served (Resolution::Fail): SIGBUS\n");
        raw::reset_sigbus();
    }
    true
}

#[cfg(target_arch = "x86_64")]
fn kind_of(context: *mut libc::c_void) -> FaultKind {
    // SAFETY: `context` is the kernel's ucontext_t for this SA_SIGINFO handler.
    let code = unsafe { raw::fault_error_code(context) };
    match (code & 1 != 0, code & 2 != 0) {
        (true, _) => FaultKind::WriteProtect,
        (false, true) => FaultKind::Write,
        (false, false) => FaultKind::Read,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn kind_of(_context: *mut libc::c_void) -> FaultKind {
    // Unreachable: `register` refuses SIGBUS delivery off x86-64.
    FaultKind::Read
}
