//! The producing side: any number of threads of one process claim runs of cells with one
//! compare-and-swap of a private tail, fill them, publish the first cell's mark, and wake the
//! consumer only if it announced it was going to sleep.

use super::{AWAKE, Geometry, RingArea, SLEEPING};
use crate::primitive::{AtomicU64, Ordering, futex};
use crate::{Error, Result};

/// The producers' side of one ring. Shared by the sending process's threads (`&self`).
#[derive(Debug)]
pub struct Producer {
    /// Next position to claim. Private to this process: the peer cannot move it.
    tail: AtomicU64,
}

impl Default for Producer {
    fn default() -> Self {
        Self::new()
    }
}

impl Producer {
    /// A producer for a fresh ring (position 0).
    pub fn new() -> Self {
        Producer {
            tail: AtomicU64::new(0),
        }
    }

    /// Appends one frame, or fails [`Error::Full`] (nothing written: back-pressure, never a
    /// drop), [`Error::FrameTooLarge`], or [`Error::Corrupt`] if the peer's published head is
    /// impossible. Frames of one thread arrive in the order it sent them; frames of several
    /// threads in the order their space was claimed.
    pub fn try_send(&self, area: &RingArea<'_>, payload: &[u8]) -> Result<()> {
        self.publish(area, payload)?;
        wake_if_sleeping(area);
        Ok(())
    }

    /// As [`try_send`](Self::try_send), but a sleeping consumer is left asleep: the frame
    /// waits for its next poll (a wake-up by a later frame, its own timeout, or another
    /// thread draining the ring), behind nothing and before every later frame. For a message
    /// nobody waits for, so that it does not cost the peer's CPU a wake-up now.
    pub fn try_send_quietly(&self, area: &RingArea<'_>, payload: &[u8]) -> Result<()> {
        self.publish(area, payload)
    }

    /// Claims space for `payload`, writes it and publishes it.
    fn publish(&self, area: &RingArea<'_>, payload: &[u8]) -> Result<()> {
        let geometry = area.geometry;
        if payload.len() > geometry.max_frame_len() {
            return Err(Error::FrameTooLarge {
                len: payload.len(),
                max: geometry.max_frame_len(),
            });
        }
        let cells = Geometry::cells_for(payload.len()) as u64;
        let position = self.claim(area, cells)?;
        write_frame(area, position, payload);
        // The mark goes last, with Release: whoever sees it sees the frame.
        area.seq[geometry.index(position)].store(position + 1, Ordering::Release);
        Ok(())
    }

    /// Claims `cells` consecutive cells, returning the first one's position. Lock-free: a
    /// failed compare-and-swap means another thread claimed, so the loop always makes
    /// progress somewhere.
    ///
    /// Why this order and these orderings: tail, then head, then (only if they look
    /// impossible) tail again, all Acquire, and a Release claim. The tail read carries the
    /// head its claimer saw, so the head read after it is at least that: `tail - head` is at
    /// most the capacity. A head ahead of the tail means our tail was stale (others claimed
    /// and the consumer already passed them): the tail has moved, so retry. Only a head
    /// ahead of, or more than a ring behind, a tail that did not move is the peer's doing.
    /// (Reading head first lets a stale head look more than a ring behind a fresh tail, and
    /// a single read of the tail lets a stale tail look behind the head: a loom model and
    /// the multi-process test caught one each.)
    fn claim(&self, area: &RingArea<'_>, cells: u64) -> Result<u64> {
        let capacity = u64::from(area.geometry.cells);
        loop {
            let tail = self.tail.load(Ordering::Acquire);
            // Acquire also orders the consumer's copies of the frames behind this head before
            // our overwriting them.
            let head = area.head.load(Ordering::Acquire);
            let used = tail.wrapping_sub(head);
            if used > capacity {
                if self.tail.load(Ordering::Acquire) != tail {
                    continue;
                }
                return Err(Error::Corrupt(format!(
                    "published head {head} is not within {capacity} cells behind tail {tail}"
                )));
            }
            if used + cells > capacity {
                return Err(Error::Full);
            }
            if self
                .tail
                .compare_exchange_weak(tail, tail + cells, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(tail);
            }
        }
    }
}

/// Writes header and payload words of a frame at `position` (the marks are not touched).
fn write_frame(area: &RingArea<'_>, position: u64, payload: &[u8]) {
    let cell = area.geometry.index(position);
    // `payload.len()` is at most `max_frame_len`, below 2^30: the cast is lossless.
    let header = payload.len() as u64;
    area.word(cell, 0).store(header, Ordering::Relaxed);
    for (i, chunk) in payload.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        area.word(cell, 1 + i)
            .store(u64::from_le_bytes(word), Ordering::Relaxed);
    }
}

/// The producer's half of the sleep hand-shake: after publishing, swap the consumer's word to
/// AWAKE, and wake it if it was SLEEPING. Both halves are read-modify-writes of the one word
/// (the consumer swaps SLEEPING in before its re-check), so they are totally ordered: if the
/// producer's swap comes second it reads SLEEPING and wakes; if it comes first, the consumer's
/// swap acquires it, the publication happens before the re-check, and the re-check finds the
/// frame. This needs only acquire/release, which loom models exactly (a store–fence–load
/// Dekker would need SeqCst fences). Every write of the word is such a swap, on both sides:
/// loom found that a plain store of AWAKE by the consumer after a wake-up breaks the chain. Costs one locked `xchg` per frame on x86, as a fence
/// would; the word's line stays with the producers while the consumer is awake.
fn wake_if_sleeping(area: &RingArea<'_>) {
    if area.state.swap(AWAKE, Ordering::AcqRel) == SLEEPING {
        futex::wake(area.state);
    }
}
