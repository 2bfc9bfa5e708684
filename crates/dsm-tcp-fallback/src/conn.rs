//! One connection of the mesh as the transport thread sees it.

use std::collections::VecDeque;
use std::net::TcpStream;

use dsm_wire::{Limits, NodeId, PageId};

use crate::reader::FrameReader;

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
    pub(crate) fn new(peer: NodeId, stream: TcpStream, limits: Limits) -> Self {
        Conn {
            peer,
            stream,
            reader: FrameReader::new(limits),
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
    /// copied (the latency case); later ones are appended (the batching case).
    pub(crate) fn queue_frame(&mut self, frame: Vec<u8>) {
        if self.out.is_empty() {
            let old = std::mem::replace(&mut self.out, frame);
            if self.spare.capacity() < old.capacity() {
                self.spare = old;
            }
        } else {
            self.out.extend_from_slice(&frame);
        }
    }

    /// True when the socket can be closed: failed and nothing in flight.
    pub(crate) fn finished(&self) -> bool {
        self.closing && !self.sending && !self.receiving
    }
}
