//! The record buffer: a fixed array of slots allocated once, filled lock-free by any thread
//! (SIGBUS handlers included), read once when the trace is written.
//!
//! A writer claims the next slot with one `fetch_add`; past the end it counts the record as
//! dropped and returns. It never waits, never allocates, and touches only atomics, so a
//! handler that interrupted another writer (even one mid-record on the same thread) cannot
//! deadlock or corrupt it: each claims its own slot. A slot is published by storing its
//! timestamp last (`Release`); a reader that sees a zero timestamp skips the slot (a
//! writer was still filling it).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::Hop;

/// One recorded hand-off, as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    /// Monotonic clock (`CLOCK_MONOTONIC`), nanoseconds.
    pub(crate) ns: u64,
    pub(crate) hop: Hop,
    /// The page (`region << 32 | page`), lock id or barrier epoch.
    pub(crate) id: u64,
    /// The other node of a message hop (the destination of a send, the sender of a receipt).
    pub(crate) peer: Option<u16>,
    /// Kernel thread id of the recording thread.
    pub(crate) tid: u32,
}

/// Three words per record: timestamp (published last), id, and hop (8 bits) | peer + 1 (24
/// bits, 0: none) | tid (32 bits) packed.
#[derive(Debug, Default)]
struct Slot {
    ns: AtomicU64,
    id: AtomicU64,
    word: AtomicU64,
}

/// A fixed-capacity, lock-free, allocation-free (after `new`) record buffer.
#[derive(Debug)]
pub(crate) struct Buffer {
    slots: Box<[Slot]>,
    /// Slots claimed so far (may run past the capacity: the excess was dropped).
    next: AtomicUsize,
    dropped: AtomicU64,
}

impl Buffer {
    /// A buffer of `capacity` records, allocated and zeroed now.
    pub(crate) fn new(capacity: usize) -> Self {
        Buffer {
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Records one hand-off at `ns` (> 0); when full, counts it as dropped instead.
    /// Async-signal-safe: atomics only.
    pub(crate) fn push(&self, ns: u64, hop: Hop, id: u64, peer: Option<u16>, tid: u32) {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.slots.get(index) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let peer = peer.map_or(0, |p| u64::from(p) + 1);
        let word = u64::from(hop as u8) << 56 | peer << 32 | u64::from(tid);
        slot.id.store(id, Ordering::Relaxed);
        slot.word.store(word, Ordering::Relaxed);
        // Zero means "not written yet" to the reader: a clock that says 0 becomes 1 ns.
        slot.ns.store(ns.max(1), Ordering::Release);
    }

    /// Every published record, in slot order (about time order; sort by `ns` for exact).
    pub(crate) fn records(&self) -> Vec<Record> {
        let claimed = self.next.load(Ordering::Acquire).min(self.slots.len());
        self.slots[..claimed]
            .iter()
            .filter_map(|slot| {
                let ns = slot.ns.load(Ordering::Acquire);
                if ns == 0 {
                    return None;
                }
                let word = slot.word.load(Ordering::Relaxed);
                let hop = Hop::from_u8(u8::try_from(word >> 56).ok()?)?;
                // 24 bits hold every rank + 1 (ranks are u16).
                let peer = ((word >> 32) & 0xff_ffff).checked_sub(1);
                Some(Record {
                    ns,
                    hop,
                    id: slot.id.load(Ordering::Relaxed),
                    peer: peer.and_then(|p| u16::try_from(p).ok()),
                    tid: u32::try_from(word & 0xffff_ffff).ok()?,
                })
            })
            .collect()
    }

    /// Records that found the buffer full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Slots in all.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn records_come_back_as_pushed() {
        let buffer = Buffer::new(4);
        buffer.push(10, Hop::FaultRaisedRead, 7 << 32 | 3, None, 42);
        buffer.push(11, Hop::FaultRequestSent, 7 << 32 | 3, Some(1), 42);
        buffer.push(12, Hop::LockGrantReceived, 9, Some(u16::MAX), u32::MAX);
        let records = buffer.records();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0],
            Record {
                ns: 10,
                hop: Hop::FaultRaisedRead,
                id: 7 << 32 | 3,
                peer: None,
                tid: 42
            }
        );
        assert_eq!(records[1].peer, Some(1));
        assert_eq!(records[2].peer, Some(u16::MAX));
        assert_eq!(records[2].tid, u32::MAX);
        assert_eq!(buffer.dropped(), 0);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_without_blocking() {
        let buffer = Buffer::new(3);
        for i in 0..10 {
            buffer.push(i + 1, Hop::BarrierEnter, i, None, 1);
        }
        assert_eq!(buffer.records().len(), 3, "the first three are kept");
        assert_eq!(buffer.records()[2].id, 2);
        assert_eq!(buffer.dropped(), 7);
        assert_eq!(buffer.capacity(), 3);
    }

    #[test]
    fn an_empty_buffer_keeps_nothing_and_drops_everything() {
        let buffer = Buffer::new(0);
        buffer.push(1, Hop::LockCalled, 0, None, 1);
        assert!(buffer.records().is_empty());
        assert_eq!(buffer.dropped(), 1);
    }

    #[test]
    fn threads_recording_at_once_lose_nothing_that_fits_and_count_the_rest() {
        const THREADS: u64 = 4;
        const EACH: u64 = 10_000;
        let buffer = Arc::new(Buffer::new(30_000));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let buffer = Arc::clone(&buffer);
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let tid = u32::try_from(t).unwrap();
                        buffer.push(i + 1, Hop::FaultInstalled, t << 32 | i, None, tid);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        let records = buffer.records();
        assert_eq!(records.len(), 30_000);
        assert_eq!(buffer.dropped(), THREADS * EACH - 30_000);
        // Every record is whole: its id names its own thread, and no slot holds two.
        let mut seen = std::collections::HashSet::new();
        for record in &records {
            assert_eq!(u64::from(record.tid), record.id >> 32);
            assert_eq!(record.ns, (record.id & 0xffff_ffff) + 1);
            assert!(seen.insert(record.id), "record {:#x} twice", record.id);
        }
    }
}
