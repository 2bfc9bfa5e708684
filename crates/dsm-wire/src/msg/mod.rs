//! Every message the cluster sends, grouped by protocol. The command code's high byte names
//! the group, so each group's decoder owns its own range.

pub mod alloc;
pub mod coherence;
#[cfg(test)]
mod len_tests;
pub mod membership;
pub mod sync;
pub mod transport;
pub mod view;

use crate::codec::{Reader, Writer};
use crate::{Error, Result};

pub use alloc::{Alloc, RegionSpec};
pub use coherence::{Coherence, DiffRun, MAX_BATCH_PAGES, PageDiff};
pub use membership::{Endpoint, Membership, RdmaConnInfo};
pub use sync::{BarrierArrival, SyncMsg};
pub use transport::{PageStatus, Transport};
pub use view::ViewMsg;

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Boot-up, heartbeats, failures (0x01xx).
    Membership(Membership),
    /// Page coherence (0x02xx).
    Coherence(Coherence),
    /// Locks and barriers (0x03xx).
    Sync(SyncMsg),
    /// Allocation and byte-range access (0x04xx).
    Alloc(Alloc),
    /// File views (0x05xx).
    View(ViewMsg),
    /// Transport handshake and emulated one-sided page access (0x06xx).
    Transport(Transport),
}

impl Message {
    /// Whether anybody waits for this message: false for a node's drop of its read-only
    /// copies (`Coherence::Dropped`), which changes only how fast the home's next write
    /// goes. A transport may leave a sleeping receiver asleep for such a message and have it
    /// delivered with the receiver's next poll, still in order.
    pub fn is_awaited(&self) -> bool {
        !matches!(self, Message::Coherence(Coherence::Dropped { .. }))
    }

    /// The message's command code.
    pub fn command(&self) -> u16 {
        match self {
            Message::Membership(m) => m.command(),
            Message::Coherence(m) => m.command(),
            Message::Sync(m) => m.command(),
            Message::Alloc(m) => m.command(),
            Message::View(m) => m.command(),
            Message::Transport(m) => m.command(),
        }
    }

    /// Length of the whole frame [`encode`](crate::encode) makes of this message (header and
    /// body), found without building it: no buffer, no page copy, no checksum.
    pub fn encoded_len(&self) -> usize {
        let mut counter = Writer::counter();
        self.encode_body(&mut counter);
        crate::HEADER_LEN + counter.written()
    }

    /// Encodes the body (no header).
    pub fn encode_body(&self, w: &mut Writer) {
        match self {
            Message::Membership(m) => m.encode(w),
            Message::Coherence(m) => m.encode(w),
            Message::Sync(m) => m.encode(w),
            Message::Alloc(m) => m.encode(w),
            Message::View(m) => m.encode(w),
            Message::Transport(m) => m.encode(w),
        }
    }

    /// Decodes a body whose header announced `command`; every byte must be used.
    pub fn decode_body(command: u16, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match command >> 8 {
            0x01 => Message::Membership(Membership::decode(command, r)?),
            0x02 => Message::Coherence(Coherence::decode(command, r)?),
            0x03 => Message::Sync(SyncMsg::decode(command, r)?),
            0x04 => Message::Alloc(Alloc::decode(command, r)?),
            0x05 => Message::View(ViewMsg::decode(command, r)?),
            0x06 => Message::Transport(Transport::decode(command, r)?),
            _ => return Err(Error::UnknownCommand(command)),
        })
    }
}
