//! Waiting for a remote page inside a SIGBUS resolver: preallocated page slots the faulting
//! thread waits on (futex, with a timeout) and the transport thread fills, plus a doorbell
//! (an eventfd) the faulting thread rings to get the transport thread's attention.
//!
//! The protocol, for one fault (every step is allocation-free and async-signal-safe):
//! 1. resolver: `let id = slots.claim()?` — a free slot, now `Waiting`;
//! 2. resolver: push `(page, id)` to a preallocated lock-free queue (e.g. crossbeam's
//!    `ArrayQueue`) and [`Doorbell::ring`] the transport thread;
//! 3. transport thread: fetch the page, then [`PageSlots::fill`]`(id, &data)` (or
//!    [`PageSlots::fail`]`(id)`); a fill for a slot whose waiter gave up is refused (the
//!    slot's generation moved on), so a late page never lands in a reused slot;
//! 4. resolver: `let page = slots.wait(id, timeout)?` and install `&*page`; dropping `page`
//!    frees the slot.

use std::cell::UnsafeCell;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dsm_wire::PAGE_SIZE;

use crate::error::{Error, Result};
use crate::raw;

// A slot's state word: generation << 3 | tag. Only the claimer moves Free→Waiting and
// back; only a filler holding the right generation moves Waiting→Filling→Ready/Failed.
const FREE: u32 = 0;
const WAITING: u32 = 1;
const FILLING: u32 = 2;
const READY: u32 = 3;
const FAILED: u32 = 4;
const TAG_BITS: u32 = 3;
const TAG_MASK: u32 = (1 << TAG_BITS) - 1;

fn word(generation: u32, tag: u32) -> u32 {
    (generation << TAG_BITS) | tag
}

/// A claimed slot: index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotId {
    index: u32,
    generation: u32,
}

impl SlotId {
    /// Packs the id into a u64 (to carry it as a transport token).
    pub fn to_token(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// Unpacks a token made by [`SlotId::to_token`].
    pub fn from_token(token: u64) -> SlotId {
        SlotId {
            index: (token & 0xffff_ffff) as u32,
            generation: (token >> 32) as u32,
        }
    }
}

#[repr(C, align(4096))]
struct PageBuffer(UnsafeCell<[u8; PAGE_SIZE]>);

struct Slot {
    state: AtomicU32,
    /// The waiter is (about to be) asleep on `state`: a filler must wake it. A waiter that
    /// spins is not woken, which saves the filler a `futex` call (Dekker-style: the waiter
    /// sets this and then looks at `state`, the filler publishes `state` and then looks at
    /// this, both `SeqCst`, so one of them sees the other).
    sleeper: AtomicBool,
    page: PageBuffer,
}

/// Preallocated page slots for faulting threads waiting on pages delivered by another thread.
pub struct PageSlots {
    slots: Box<[Slot]>,
}

// SAFETY: each slot's page is written only by the one filler that moved the state word
// Waiting→Filling, and read only after the state is Ready (Release/Acquire on the word).
unsafe impl Sync for PageSlots {}
// SAFETY: as above; the buffers are plain bytes.
unsafe impl Send for PageSlots {}

impl std::fmt::Debug for PageSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSlots")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl PageSlots {
    /// `count` slots of one page each (allocated now, never in the fault path). Size it to
    /// the number of application threads that may fault at once.
    pub fn new(count: usize) -> PageSlots {
        let slots = (0..count)
            .map(|_| Slot {
                state: AtomicU32::new(word(0, FREE)),
                sleeper: AtomicBool::new(false),
                page: PageBuffer(UnsafeCell::new([0; PAGE_SIZE])),
            })
            .collect();
        PageSlots { slots }
    }

    /// Claims a free slot (async-signal-safe).
    pub fn claim(&self) -> Result<SlotId> {
        for (index, slot) in self.slots.iter().enumerate() {
            let current = slot.state.load(Ordering::Acquire);
            if current & TAG_MASK != FREE {
                continue;
            }
            let generation = current >> TAG_BITS;
            let taken = slot.state.compare_exchange(
                current,
                word(generation, WAITING),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            if taken.is_ok() {
                // The table holds at most u32::MAX slots (checked by `new`'s callers' sizes).
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                return Ok(SlotId { index, generation });
            }
        }
        Err(Error::Exhausted {
            what: "page slots",
            capacity: self.slots.len(),
        })
    }

    /// Whether `id`'s page came or failed (its waiter will not sleep): for a waiter that
    /// does other work before [`wait`](Self::wait). True for an unknown id.
    pub fn is_settled(&self, id: SlotId) -> bool {
        self.slot(id).is_none_or(|slot| {
            let tag = slot.state.load(Ordering::SeqCst) & TAG_MASK;
            tag == READY || tag == FAILED
        })
    }

    fn slot(&self, id: SlotId) -> Option<&Slot> {
        self.slots.get(id.index as usize)
    }

    /// Delivers `data` to the thread waiting on `id`. False if that waiter gave up (timed
    /// out) or the id is unknown: the page is dropped, never written into a reused slot.
    pub fn fill(&self, id: SlotId, data: &[u8; PAGE_SIZE]) -> bool {
        self.publish(id, |slot| {
            // SAFETY: the Waiting→Filling transition makes this thread the page's only user
            // until it publishes Ready.
            unsafe { *slot.page.0.get() = *data };
        })
    }

    /// Tells the thread waiting on `id` that its page is ready elsewhere (installed in its
    /// mapping), without data. False as for [`fill`](Self::fill).
    pub fn mark_ready(&self, id: SlotId) -> bool {
        self.publish(id, |_| {})
    }

    fn publish(&self, id: SlotId, write: impl FnOnce(&Slot)) -> bool {
        let Some(slot) = self.slot(id) else {
            return false;
        };
        let claimed = slot.state.compare_exchange(
            word(id.generation, WAITING),
            word(id.generation, FILLING),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        if claimed.is_err() {
            return false;
        }
        write(slot);
        slot.state
            .store(word(id.generation, READY), Ordering::SeqCst);
        if slot.sleeper.load(Ordering::SeqCst) {
            raw::futex_wake_all(&slot.state);
        }
        true
    }

    /// Tells the thread waiting on `id` that the page cannot be had. False if it gave up.
    pub fn fail(&self, id: SlotId) -> bool {
        let Some(slot) = self.slot(id) else {
            return false;
        };
        let failed = slot.state.compare_exchange(
            word(id.generation, WAITING),
            word(id.generation, FAILED),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        raw::futex_wake_all(&slot.state);
        failed.is_ok()
    }

    /// Waits up to `timeout` for `id` to be filled (async-signal-safe: futex waits and
    /// `clock_gettime`). On success the page stays readable until the returned guard drops,
    /// which frees the slot. On failure or timeout the slot is freed before returning.
    pub fn wait(&self, id: SlotId, timeout: Duration) -> Result<FilledSlot<'_>> {
        self.wait_spinning(id, Duration::ZERO, timeout)
    }

    /// As [`wait`](Self::wait), looking at the slot for up to `spin` before sleeping: a page
    /// that comes meanwhile costs neither side a `futex` call, nor the waiter a wake-up
    /// (which costs ~30 µs from another CPU of a virtual machine).
    pub fn wait_spinning(
        &self,
        id: SlotId,
        spin: Duration,
        timeout: Duration,
    ) -> Result<FilledSlot<'_>> {
        let slot = self.slot(id).ok_or(Error::Exhausted {
            what: "page slots (unknown slot id)",
            capacity: self.slots.len(),
        })?;
        let start = Instant::now();
        let deadline = start + timeout;
        let spin_until = start + spin.min(timeout);
        loop {
            let current = slot.state.load(Ordering::SeqCst);
            match current & TAG_MASK {
                READY => return Ok(FilledSlot { slot, id }),
                FAILED => {
                    free(slot, id);
                    return Err(Error::FetchFailed);
                }
                _ => {}
            }
            let now = Instant::now();
            if now < spin_until {
                std::hint::spin_loop();
                continue;
            }
            if now >= deadline && give_up(slot, id) {
                return Err(Error::Timeout {
                    what: "a page delivered to a slot by the transport thread",
                    waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
            // A filler mid-copy (Filling) finishes in well under a millisecond.
            let remaining = deadline
                .saturating_duration_since(now)
                .max(Duration::from_micros(100));
            slot.sleeper.store(true, Ordering::SeqCst);
            if slot.state.load(Ordering::SeqCst) == current {
                raw::futex_wait(&slot.state, current, remaining);
            }
            slot.sleeper.store(false, Ordering::SeqCst);
        }
    }
}

/// Waiting→Free with the next generation, unless a filler got there first.
fn give_up(slot: &Slot, id: SlotId) -> bool {
    slot.state
        .compare_exchange(
            word(id.generation, WAITING),
            word(id.generation.wrapping_add(1), FREE),
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}

fn free(slot: &Slot, id: SlotId) {
    slot.state
        .store(word(id.generation.wrapping_add(1), FREE), Ordering::Release);
}

/// A filled slot: derefs to the page; frees the slot on drop.
pub struct FilledSlot<'a> {
    slot: &'a Slot,
    id: SlotId,
}

impl std::fmt::Debug for FilledSlot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilledSlot").field("id", &self.id).finish()
    }
}

impl std::ops::Deref for FilledSlot<'_> {
    type Target = [u8; PAGE_SIZE];
    fn deref(&self) -> &[u8; PAGE_SIZE] {
        // SAFETY: the state is Ready: no filler writes the page until this guard frees it.
        unsafe { &*self.slot.page.0.get() }
    }
}

impl Drop for FilledSlot<'_> {
    fn drop(&mut self) {
        free(self.slot, self.id);
    }
}

/// An eventfd a faulting thread rings to wake the transport thread (which polls [`fd`] with
/// `poll`/io_uring, or calls [`Doorbell::wait`]).
///
/// [`fd`]: Doorbell::fd
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new, unrung doorbell (non-blocking eventfd).
    pub fn new() -> Result<Doorbell> {
        let fd = raw::eventfd().map_err(|errno| Error::Setup {
            call: "eventfd",
            errno,
        })?;
        Ok(Doorbell { fd })
    }

    /// Rings it (one `write`: async-signal-safe).
    pub fn ring(&self) {
        // Only fails if the counter would overflow u64::MAX - 1: it is then rung anyway.
        let _ = raw::eventfd_ring(raw::fd_of(&self.fd));
    }

    /// The eventfd, readable while rung.
    pub fn fd(&self) -> RawFd {
        raw::fd_of(&self.fd)
    }

    /// Waits up to `timeout` for a ring; true if it was rung (and resets it).
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let setup = |call| move |errno| Error::Setup { call, errno };
        let rung = raw::eventfd_drain(self.fd()).map_err(setup("read(eventfd)"))?;
        if rung > 0 {
            return Ok(true);
        }
        let (ready, _) = raw::poll2(self.fd(), -1, timeout).map_err(setup("poll(eventfd)"))?;
        if !ready {
            return Ok(false);
        }
        Ok(raw::eventfd_drain(self.fd()).map_err(setup("read(eventfd)"))? > 0)
    }
}
