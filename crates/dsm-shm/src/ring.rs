//! A bounded multi-producer single-consumer ring of variable-length frames in a shared area.
//!
//! ```text
//! one ring, in bytes (every part starts on its own 64-byte line):
//!   0   control   reserved (the memfd header describes the rings)
//!   64  head      u64: the consumer's position, published for producers' space checks
//!   128 state     u32: the consumer's futex word, AWAKE or SLEEPING
//!   192 seq       u64 × cells: publication marks, `position + 1` in the first cell of a frame
//!   …   data      64-byte cells: frame = header word (payload length) + payload words
//! ```
//!
//! Why cells of 64 bytes rather than fixed slots: dsm's control messages run from ~40 bytes (a
//! lock request) to a page and more (a read grant, a barrier release with its notices). Fixed
//! slots sized for a page would waste 64× the memory and cache lines on small messages, and
//! chunking would need reassembly. A frame here is a run of consecutive cells claimed by one
//! compare-and-swap of the producers' tail, so it is contiguous (wrapping at the end of the
//! area) and frames are consumed exactly in the order their runs were claimed: per-pair FIFO
//! even when several threads of the sending process send.
//!
//! Only the first cell of a frame gets a publication mark. A mark is the frame's position plus
//! one, unique over the ring's life, so a stale mark of an earlier lap never passes for a new
//! one, and payload bytes (which live in `data`, not `seq`) never pass for a mark.
//!
//! The price of claim order: a sending thread descheduled between its claim and its mark holds
//! up the frames claimed after it (never longer than it takes to copy one frame once it runs
//! again; nothing between claim and mark can fail or block).
//!
//! A producer wakes the consumer only if it announced its sleep (`state`), and a frame sent
//! quietly ([`Producer::try_send_quietly`], for a message nobody waits for) does not even
//! then: it waits in its place for the consumer's next poll, which any later frame's wake-up
//! (or the consumer's own timeout) brings. The loom model checks the wake of an ordinary
//! frame; a quiet one only skips it.
//!
//! The producers' claim counter (`tail`) is private to the sending process: the peer cannot
//! corrupt it. Everything the consumer reads (marks, headers, payload) and everything a
//! producer reads (`head`) comes from the peer and is validated: indices are reduced modulo the
//! ring, lengths are bounded, and a `head` that is not behind the tail is [`Error::Corrupt`].
//! Every access to the shared area is an atomic load or store, so a peer scribbling over it
//! concurrently cannot make this process's reads undefined, only wrong (and then rejected).
//!
//! [`Error::Corrupt`]: crate::Error::Corrupt

mod recv;
mod send;

pub use recv::Consumer;
pub use send::Producer;

use crate::primitive::{AtomicU32, AtomicU64};
use crate::{Error, Result};

/// Bytes of a cell, the unit of ring space.
pub const CELL_BYTES: usize = 64;
/// `u64` words in a cell.
pub(crate) const CELL_WORDS: usize = CELL_BYTES / 8;
/// Bytes of a frame's header (its first word: the payload length).
pub const FRAME_HEADER_BYTES: usize = 8;
/// Bytes before the marks: the control, head and state lines.
const LINES_BYTES: usize = 3 * CELL_BYTES;
/// Fewest and most cells of a ring (both powers of two: positions reduce by a mask).
pub const MIN_CELLS: u32 = 2;
/// See [`MIN_CELLS`]: 2^24 cells is 1 GiB of data, more than any pair needs.
pub const MAX_CELLS: u32 = 1 << 24;

/// The consumer's futex word: running, or about to sleep (producers must wake it).
pub const AWAKE: u32 = 0;
/// See [`AWAKE`].
pub const SLEEPING: u32 = 1;

/// The size of one ring: a number of 64-byte cells, a power of two in
/// [`MIN_CELLS`]`..=`[`MAX_CELLS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    cells: u32,
}

impl Geometry {
    /// A ring of `cells` cells; [`Error::Config`] unless a power of two in range.
    pub fn new(cells: u32) -> Result<Self> {
        if cells.is_power_of_two() && (MIN_CELLS..=MAX_CELLS).contains(&cells) {
            Ok(Geometry { cells })
        } else {
            Err(Error::Config(format!(
                "ring of {cells} cells: want a power of two in {MIN_CELLS}..={MAX_CELLS}"
            )))
        }
    }

    /// Cells of the ring.
    pub fn cells(self) -> u32 {
        self.cells
    }

    /// Longest frame payload: the whole ring less one header.
    pub fn max_frame_len(self) -> usize {
        self.cells as usize * CELL_BYTES - FRAME_HEADER_BYTES
    }

    /// Bytes of shared area the ring occupies (a multiple of 64).
    pub fn ring_bytes(self) -> usize {
        self.data_offset() + self.cells as usize * CELL_BYTES
    }

    #[cfg(not(loom))]
    pub(crate) fn head_offset() -> usize {
        CELL_BYTES
    }

    #[cfg(not(loom))]
    pub(crate) fn state_offset() -> usize {
        2 * CELL_BYTES
    }

    #[cfg(not(loom))]
    pub(crate) fn seq_offset() -> usize {
        LINES_BYTES
    }

    pub(crate) fn data_offset(self) -> usize {
        (LINES_BYTES + self.cells as usize * 8).next_multiple_of(CELL_BYTES)
    }

    /// Cells a frame of `len` payload bytes takes.
    pub(crate) fn cells_for(len: usize) -> usize {
        (FRAME_HEADER_BYTES + len).div_ceil(CELL_BYTES)
    }

    /// Index of `position`'s cell.
    pub(crate) fn index(self, position: u64) -> usize {
        let index = position & u64::from(self.cells - 1);
        usize::try_from(index).expect("an index below `cells`, a u32, fits a usize")
    }
}

/// One ring's shared words, borrowed from wherever they live: a memfd mapping in production
/// ([`crate::SharedMemory`]), an [`OwnedRing`] in tests and loom models.
#[derive(Debug, Clone, Copy)]
pub struct RingArea<'a> {
    pub(crate) geometry: Geometry,
    pub(crate) head: &'a AtomicU64,
    pub(crate) state: &'a AtomicU32,
    pub(crate) seq: &'a [AtomicU64],
    pub(crate) data: &'a [AtomicU64],
}

impl<'a> RingArea<'a> {
    /// Assembles an area; the slices must have `cells` marks and `cells * 8` data words.
    pub(crate) fn new(
        geometry: Geometry,
        head: &'a AtomicU64,
        state: &'a AtomicU32,
        seq: &'a [AtomicU64],
        data: &'a [AtomicU64],
    ) -> Self {
        assert_eq!(seq.len(), geometry.cells as usize, "one mark per cell");
        assert_eq!(
            data.len(),
            geometry.cells as usize * CELL_WORDS,
            "8 words per cell"
        );
        RingArea {
            geometry,
            head,
            state,
            seq,
            data,
        }
    }

    /// The ring's size.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Data word `index` counted from `cell`'s first word, wrapping at the end of the area.
    pub(crate) fn word(&self, cell: usize, index: usize) -> &'a AtomicU64 {
        let at = (cell * CELL_WORDS + index) % self.data.len();
        &self.data[at]
    }

    /// Every shared word, for tests that fill the area with garbage.
    pub fn words(&self) -> impl Iterator<Item = &'a AtomicU64> + use<'a> {
        std::iter::once(self.head).chain(self.seq).chain(self.data)
    }

    /// The consumer's futex word: `SLEEPING` (1) while the consumer announced sleep (see
    /// [`Consumer::prepare_sleep`]); for event loops that wait on it, and tests that
    /// scribble on it.
    pub fn state_word(&self) -> &'a AtomicU32 {
        self.state
    }
}

/// A ring's words in ordinary memory: unit tests and loom models (where the atomics are
/// loom's). Zeroed, as a fresh memfd is.
#[derive(Debug)]
pub struct OwnedRing {
    geometry: Geometry,
    head: AtomicU64,
    state: AtomicU32,
    seq: Vec<AtomicU64>,
    data: Vec<AtomicU64>,
}

impl OwnedRing {
    /// A zeroed ring of `geometry`.
    pub fn new(geometry: Geometry) -> Self {
        let cells = geometry.cells as usize;
        OwnedRing {
            geometry,
            head: AtomicU64::new(0),
            state: AtomicU32::new(AWAKE),
            seq: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            data: (0..cells * CELL_WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The area to hand to a [`Producer`] or [`Consumer`].
    pub fn area(&self) -> RingArea<'_> {
        RingArea::new(
            self.geometry,
            &self.head,
            &self.state,
            &self.seq,
            &self.data,
        )
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
