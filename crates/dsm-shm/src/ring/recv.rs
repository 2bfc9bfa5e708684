//! The consuming side: one thread of the receiving process takes frames in position order,
//! copying each out of the shared area before releasing its cells, and sleeps on the futex
//! word when the ring stays empty.

use std::time::{Duration, Instant};

use super::{AWAKE, CELL_BYTES, FRAME_HEADER_BYTES, Geometry, RingArea, SLEEPING};
use crate::primitive::{Ordering, futex};
use crate::{Error, Result};

/// The consumer's side of one ring. One thread at a time (`&mut self`).
#[derive(Debug, Default)]
pub struct Consumer {
    /// Next position to read. Authoritative here; the shared `head` is a copy for producers,
    /// which the peer could overwrite.
    head: u64,
}

impl Consumer {
    /// A consumer for a fresh ring (position 0).
    pub fn new() -> Self {
        Consumer { head: 0 }
    }

    /// Takes the next frame into `out` (cleared first): `Ok(true)`, or `Ok(false)` when none is
    /// published yet. [`Error::Corrupt`] when the peer wrote an impossible frame header; the
    /// ring cannot be trusted after that.
    pub fn try_recv(&mut self, area: &RingArea<'_>, out: &mut Vec<u8>) -> Result<bool> {
        let geometry = area.geometry;
        let cell = geometry.index(self.head);
        // Acquire: pairs with the producer's Release of the mark, so the frame's words are
        // visible. Anything but this position's own mark means "not published yet".
        if area.seq[cell].load(Ordering::Acquire) != self.head.wrapping_add(1) {
            return Ok(false);
        }
        let len = read_header(area, cell)?;
        read_payload(area, cell, len, out);
        self.head = self.head.wrapping_add(Geometry::cells_for(len) as u64);
        // Release: the copy above happens before any producer reuses these cells.
        area.head.store(self.head, Ordering::Release);
        Ok(true)
    }

    /// Takes the next frame, waiting for one up to `timeout` (forever with `None`): spins for
    /// `spin` first (worth it only while threads do not outnumber CPUs), then sleeps on the
    /// futex word. `Ok(false)` when the time ran out.
    pub fn recv_timeout(
        &mut self,
        area: &RingArea<'_>,
        out: &mut Vec<u8>,
        spin: Duration,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        if self.try_recv(area, out)? || self.spin(area, out, spin)? {
            return Ok(true);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(false);
            }
            if self.sleep(area, out, left)? {
                return Ok(true);
            }
        }
    }

    /// Polls for at most `spin`.
    fn spin(&mut self, area: &RingArea<'_>, out: &mut Vec<u8>, spin: Duration) -> Result<bool> {
        if spin.is_zero() {
            return Ok(false);
        }
        let start = Instant::now();
        while start.elapsed() < spin {
            std::hint::spin_loop();
            if self.try_recv(area, out)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The consumer's half of the sleep hand-shake (see `send::wake_if_sleeping`): announce,
    /// re-check, and only then wait on the word, which the kernel compares again.
    fn sleep(
        &mut self,
        area: &RingArea<'_>,
        out: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        if self.prepare_sleep(area, out)? {
            return Ok(true);
        }
        futex::wait(area.state, SLEEPING, timeout);
        self.finish_sleep(area);
        self.try_recv(area, out)
    }

    /// First half of a sleep for a caller that waits elsewhere (an event loop waiting on the
    /// futex word with io_uring's `FUTEX_WAIT` beside its other descriptors): announces sleep
    /// and re-checks. `Ok(true)`: a frame arrived meanwhile, it is in `out` and the caller
    /// must not sleep (the announcement is already withdrawn). `Ok(false)`: the caller may
    /// now wait while the word ([`RingArea::state_word`]) holds `SLEEPING` (a shared futex),
    /// then must call [`finish_sleep`](Self::finish_sleep).
    pub fn prepare_sleep(&mut self, area: &RingArea<'_>, out: &mut Vec<u8>) -> Result<bool> {
        // Swaps, never plain stores, on this word (here and in `finish_sleep`): see
        // `send::wake_if_sleeping`. A plain store would end the release sequence of a
        // producer's swap, and the next swap here would no longer acquire its frame.
        area.state.swap(SLEEPING, Ordering::AcqRel);
        let got = self.try_recv(area, out);
        if !matches!(got, Ok(false)) {
            self.finish_sleep(area);
        }
        got
    }

    /// Second half of a sleep: withdraws the announcement (producers stop waking us).
    pub fn finish_sleep(&mut self, area: &RingArea<'_>) {
        area.state.swap(AWAKE, Ordering::AcqRel);
    }

    /// Waits while the announcement made by [`prepare_sleep`](Self::prepare_sleep) stands,
    /// until a producer wakes the word, or `timeout`: for a caller that lets go of the
    /// consumer while it sleeps (another thread of the process may take frames meanwhile,
    /// withdrawing and renewing the announcement), as `crate::sleep_any` does for many
    /// rings. Then call [`finish_sleep`](Self::finish_sleep).
    pub fn wait_announced(area: &RingArea<'_>, timeout: Option<Duration>) {
        futex::wait(area.state, SLEEPING, timeout);
    }

    /// Wakes a consumer asleep on the ring from its own process (to stop it, say), as a
    /// producer's frame would.
    pub fn wake(area: &RingArea<'_>) {
        area.state.swap(AWAKE, Ordering::AcqRel);
        futex::wake(area.state);
    }
}

/// Reads and checks the header word of the frame at `cell`: the payload length, bounded by the
/// ring (so a word with any of its high bits set is refused too).
fn read_header(area: &RingArea<'_>, cell: usize) -> Result<usize> {
    let header = area.word(cell, 0).load(Ordering::Relaxed);
    let max = area.geometry.max_frame_len();
    let len = usize::try_from(header).unwrap_or(usize::MAX);
    if len > max {
        return Err(Error::Corrupt(format!(
            "frame header {header:#x} at cell {cell}: length above the ring's {max} bytes"
        )));
    }
    Ok(len)
}

/// Copies `len` payload bytes of the frame at `cell` into `out`, word by word (atomic loads:
/// the area is shared with another process).
fn read_payload(area: &RingArea<'_>, cell: usize, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(len);
    let words = len.div_ceil(8);
    for i in 0..words {
        let bytes = area.word(cell, 1 + i).load(Ordering::Relaxed).to_le_bytes();
        let take = (len - i * 8).min(8);
        out.extend_from_slice(&bytes[..take]);
    }
    debug_assert!(FRAME_HEADER_BYTES + len <= Geometry::cells_for(len) * CELL_BYTES);
}
