//! A registered buffer cut into equal slots, each lent to at most one work request at a time.

use std::sync::{Arc, Mutex};

use rdma_sys as ffi;

use super::buffer::AlignedBuffer;
use super::cq::Completion;
use super::mr::{MemoryRegion, ProtectionDomain};
use super::qp::{QueuePair, RemoteAccess};
use crate::{Error, Result};

/// What a posted slot does; carried in the work request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// RDMA READ from the peer into the slot.
    Read = 1,
    /// RDMA WRITE of the slot to the peer.
    Write = 2,
    /// SEND of the slot.
    Send = 3,
    /// RECV into the slot.
    Recv = 4,
}

impl Op {
    /// The verbs name, for errors.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "RDMA_READ",
            Op::Write => "RDMA_WRITE",
            Op::Send => "SEND",
            Op::Recv => "RECV",
        }
    }

    fn from_u8(value: u8) -> Option<Self> {
        [Op::Read, Op::Write, Op::Send, Op::Recv]
            .into_iter()
            .find(|op| *op as u8 == value)
    }
}

/// One slot of a pool, held by whoever may touch its bytes. Not `Clone`: while a work request
/// uses the slot, nobody holds it.
#[derive(Debug)]
pub struct Slot {
    index: u32,
}

impl Slot {
    /// Index in its pool.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// What a work request id says: pool, operation, peer and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrTag {
    /// Pool id.
    pub pool: u8,
    /// Operation.
    pub op: Op,
    /// Peer rank (the QP it was posted on).
    pub peer: u16,
    /// Slot index.
    pub slot: u32,
}

impl WrTag {
    fn encode(self) -> u64 {
        (u64::from(self.pool) << 56)
            | (u64::from(self.op as u8) << 48)
            | (u64::from(self.peer) << 32)
            | u64::from(self.slot)
    }

    /// Decodes a work request id this crate made.
    pub fn decode(wr_id: u64) -> Option<Self> {
        let byte = |shift: u32| u8::try_from((wr_id >> shift) & 0xff).unwrap_or(0);
        Some(WrTag {
            pool: byte(56),
            op: Op::from_u8(byte(48))?,
            peer: u16::try_from((wr_id >> 32) & 0xffff).unwrap_or(0),
            slot: u32::try_from(wr_id & 0xffff_ffff).unwrap_or(0),
        })
    }
}

struct SlotState {
    free: Vec<u32>,
    in_flight: Vec<bool>,
}

/// A registered buffer of `count` slots of `slot_len` bytes.
pub struct SlotPool {
    id: u8,
    slot_len: usize,
    count: u32,
    // Drop order: the MR is deregistered before the buffer it names is freed.
    mr: MemoryRegion,
    buffer: AlignedBuffer,
    state: Mutex<SlotState>,
}

impl SlotPool {
    /// Allocates and registers `count` slots of `slot_len` bytes; `id` tags its work requests.
    pub fn new(pd: &ProtectionDomain, id: u8, slot_len: usize, count: u32) -> Result<Arc<Self>> {
        assert!(count > 0 && slot_len > 0, "empty slot pool");
        let buffer = AlignedBuffer::new(slot_len * count as usize);
        // SAFETY: the MR is a field declared before `buffer`, so it is deregistered before the
        // buffer is freed; slots are only posted under the buffer contract (see `post`).
        let mr = unsafe {
            MemoryRegion::register(
                pd,
                buffer.as_ptr(),
                buffer.len(),
                super::mr::remote_access(),
            )
        }?;
        Ok(Arc::new(SlotPool {
            id,
            slot_len,
            count,
            mr,
            buffer,
            state: Mutex::new(SlotState {
                free: (0..count).rev().collect(),
                in_flight: vec![false; count as usize],
            }),
        }))
    }

    /// Bytes per slot.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.count as usize
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a free slot, if any.
    pub fn acquire(&self) -> Option<Slot> {
        self.state().free.pop().map(|index| Slot { index })
    }

    /// Returns a slot that was not posted (or whose completion was handled).
    pub fn release(&self, slot: Slot) {
        self.state().free.push(slot.index);
    }

    fn slot_ptr(&self, slot: &Slot) -> *mut u8 {
        self.buffer
            .as_ptr()
            .wrapping_add(slot.index as usize * self.slot_len)
    }

    /// The slot's bytes.
    pub fn bytes<'a>(&'a self, slot: &'a Slot) -> &'a [u8] {
        // SAFETY: the slot lies inside the buffer; holding the `Slot` means no work request
        // uses it and no one else holds it (slots are unique, not `Clone`).
        unsafe { std::slice::from_raw_parts(self.slot_ptr(slot), self.slot_len) }
    }

    /// The slot's bytes, writable.
    pub fn bytes_mut<'a>(&'a self, slot: &'a mut Slot) -> &'a mut [u8] {
        // SAFETY: as in `bytes`, and `&mut Slot` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.slot_ptr(slot), self.slot_len) }
    }

    /// Posts `op` on `qp` for the first `len` bytes of `slot`, towards `peer` (and `remote`
    /// for READ and WRITE). The slot is in flight until [`SlotPool::reclaim`] gets its
    /// completion; on a failed post it is handed back.
    pub fn post(
        self: &Arc<Self>,
        qp: &QueuePair,
        slot: Slot,
        op: Op,
        len: usize,
        peer: u16,
        remote: Option<RemoteAccess>,
    ) -> std::result::Result<(), (Error, Slot)> {
        assert!(len <= self.slot_len, "work request longer than its slot");
        let tag = WrTag {
            pool: self.id,
            op,
            peer,
            slot: slot.index,
        };
        let sge = ffi::ibv_sge {
            addr: self.slot_ptr(&slot) as u64,
            length: u32::try_from(len).expect("slot length fits u32"),
            lkey: self.mr.lkey(),
        };
        qp.retain_pool(self);
        self.state().in_flight[slot.index as usize] = true;
        // SAFETY: the slot leaves the caller's hands (buffer contract); the pool is retained
        // by the QP, so its memory outlives any work request on it.
        let posted = unsafe {
            match op {
                Op::Recv => qp.post_recv_wr(tag.encode(), sge),
                Op::Read => qp.post_send_wr(
                    tag.encode(),
                    ffi::ibv_wr_opcode::IBV_WR_RDMA_READ,
                    sge,
                    remote,
                    "ibv_post_send(RDMA_READ)",
                ),
                Op::Write => qp.post_send_wr(
                    tag.encode(),
                    ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                    sge,
                    remote,
                    "ibv_post_send(RDMA_WRITE)",
                ),
                Op::Send => qp.post_send_wr(
                    tag.encode(),
                    ffi::ibv_wr_opcode::IBV_WR_SEND,
                    sge,
                    None,
                    "ibv_post_send(SEND)",
                ),
            }
        };
        posted.map_err(|error| {
            self.state().in_flight[slot.index as usize] = false;
            (error, slot)
        })
    }

    /// Takes back the slot `completion` finished with, if it is this pool's and in flight.
    pub fn reclaim(&self, completion: &Completion) -> Option<(WrTag, Slot)> {
        let tag = WrTag::decode(completion.wr_id())?;
        if tag.pool != self.id || tag.slot >= self.count {
            return None;
        }
        let mut state = self.state();
        let in_flight = &mut state.in_flight[tag.slot as usize];
        if !*in_flight {
            return None;
        }
        *in_flight = false;
        Some((tag, Slot { index: tag.slot }))
    }
}

impl std::fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotPool")
            .field("id", &self.id)
            .field("slot_len", &self.slot_len)
            .field("count", &self.count)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_request_ids_round_trip() {
        let tag = WrTag {
            pool: 3,
            op: Op::Recv,
            peer: 513,
            slot: 0xdead_beef,
        };
        assert_eq!(WrTag::decode(tag.encode()), Some(tag));
        assert_eq!(WrTag::decode(0), None, "op 0 is no operation");
    }
}
