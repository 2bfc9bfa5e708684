//! One connection of the mesh as the transport thread sees it.

use std::collections::VecDeque;
use std::net::TcpStream;

use dsm_wire::{Limits, NodeId, PageId};

use crate::reader::FrameReader;
use crate::session::{FrameMac, SessionKeys, TAG_LEN};

/// A page read or write sent to this peer and not answered yet. Homes answer in request order
/// (one stream, one thread), so replies must match the front of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    Read { token: u64, page: PageId },
    Write { token: u64, page: PageId },
}

/// Largest send backlog towards one peer before it is declared failed (it stopped reading).
pub(crate) const MAX_BACKLOG: usize = 256 << 20;

/// Socket, stream reassembly, send batching and outstanding requests of one peer.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) peer: NodeId,
    pub(crate) stream: TcpStream,
    pub(crate) reader: FrameReader,
    /// Tags every frame sent, in queue order (= send order); `None` on a keyless connection.
    seal: Option<FrameMac>,
    /// Frames queued since the last send was submitted: the next send takes them all at once.
    pub(crate) out: Vec<u8>,
    /// Spare buffer for `out`, so steady state allocates nothing.
    pub(crate) spare: Vec<u8>,
    pub(crate) sending: bool,
    /// Bytes of the in-flight send buffer already sent (after a short send).
    pub(crate) send_offset: usize,
    pub(crate) receiving: bool,
    /// Set when the connection failed: no new operations, waiting for the kernel to return
    /// the in-flight ones before the socket is closed.
    pub(crate) closing: bool,
    pub(crate) pending: VecDeque<Pending>,
}

impl Conn {
    pub(crate) fn new(
        peer: NodeId,
        stream: TcpStream,
        limits: Limits,
        session: Option<SessionKeys>,
    ) -> Self {
        let (reader, seal) = match session {
            Some(keys) => (
                FrameReader::authenticated(limits, keys.receive),
                Some(keys.send),
            ),
            None => (FrameReader::new(limits), None),
        };
        Conn {
            peer,
            stream,
            reader,
            seal,
            out: Vec::with_capacity(64 << 10),
            spare: Vec::with_capacity(64 << 10),
            sending: false,
            send_offset: 0,
            receiving: false,
            closing: false,
            pending: VecDeque::new(),
        }
    }

    /// Queues an encoded frame. The first frame of an idle connection is moved in, not
    /// copied (the latency case) unless its tag would make it grow while `out` has room for
    /// both (a copy of a small frame is cheaper than a reallocation); later ones are appended
    /// (the batching case).
    pub(crate) fn queue_frame(&mut self, frame: Vec<u8>) {
        let start = self.out.len();
        let tag = if self.seal.is_some() { TAG_LEN } else { 0 };
        let fits = frame.len() + tag <= frame.capacity() || frame.len() + tag > self.out.capacity();
        if self.out.is_empty() && fits {
            let old = std::mem::replace(&mut self.out, frame);
            if self.spare.capacity() < old.capacity() {
                self.spare = old;
            }
        } else {
            self.out.extend_from_slice(&frame);
        }
        self.seal_from(start);
    }

    /// Appends one frame that `write` encodes straight into the send buffer (a page copied
    /// from home memory, say), then its tag.
    pub(crate) fn append_frame(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.out.len();
        write(&mut self.out);
        self.seal_from(start);
    }

    /// Tags the frame at `out[start..]` (authenticated connections only).
    fn seal_from(&mut self, start: usize) {
        if let Some(seal) = &mut self.seal {
            let tag = seal.tag(&self.out[start..]);
            self.out.extend_from_slice(&tag);
        }
    }

    /// True when the socket can be closed: failed and nothing in flight.
    pub(crate) fn finished(&self) -> bool {
        self.closing && !self.sending && !self.receiving
    }
}
