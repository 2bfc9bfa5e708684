//! One connection of the mesh as the transport thread sees it.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use dsm_wire::{Limits, NodeId, PageId};

use crate::lane::Lane;
use crate::reader::FrameReader;
use crate::session::{SessionKeys, TAG_LEN};

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
    /// The sending side other threads share: it tags every frame, in send order, and counts
    /// what this connection still owes the peer (see `lane`).
    pub(crate) lane: Arc<Lane>,
    /// Frames queued since the last send was submitted: the next send takes them all at once.
    pub(crate) out: Vec<u8>,
    /// Units of the lane's count that `out` holds (frames, and a sender's stashed rest).
    pub(crate) out_units: usize,
    /// Units of the lane's count in the send in flight.
    pub(crate) flight_units: usize,
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
    /// A connection over `stream`, opening `lane` for the threads that send to `peer`.
    pub(crate) fn new(
        peer: NodeId,
        stream: TcpStream,
        limits: Limits,
        session: Option<SessionKeys>,
        lane: Arc<Lane>,
    ) -> Self {
        let (reader, seal) = match session {
            Some(keys) => (
                FrameReader::authenticated(limits, keys.receive),
                Some(keys.send),
            ),
            None => (FrameReader::new(limits), None),
        };
        lane.open(stream.as_raw_fd(), seal);
        Conn {
            peer,
            stream,
            reader,
            lane,
            out: Vec::with_capacity(64 << 10),
            out_units: 0,
            flight_units: 0,
            spare: Vec::with_capacity(64 << 10),
            sending: false,
            send_offset: 0,
            receiving: false,
            closing: false,
            pending: VecDeque::new(),
        }
    }

    /// Queues an encoded frame, `counted` in the lane when it was queued (a sender's) or not
    /// (this thread's own). The first frame of an idle connection is moved in, not copied
    /// (the latency case) unless its tag would make it grow while `out` has room for both (a
    /// copy of a small frame is cheaper than a reallocation); later ones are appended (the
    /// batching case).
    pub(crate) fn queue_frame(&mut self, frame: Vec<u8>, counted: bool) {
        let start = self.out.len();
        let fits = frame.len() + TAG_LEN <= frame.capacity()
            || frame.len() + TAG_LEN > self.out.capacity();
        if self.out.is_empty() && fits {
            let old = std::mem::replace(&mut self.out, frame);
            if self.spare.capacity() < old.capacity() {
                self.spare = old;
            }
        } else {
            self.out.extend_from_slice(&frame);
        }
        self.out_units += self.lane.seal(&mut self.out, start, counted);
    }

    /// Appends one frame that `write` encodes straight into the send buffer (a page copied
    /// from home memory, say), then its tag; `counted` as for [`queue_frame`](Self::queue_frame).
    pub(crate) fn append_frame(&mut self, write: impl FnOnce(&mut Vec<u8>), counted: bool) {
        let start = self.out.len();
        write(&mut self.out);
        self.out_units += self.lane.seal(&mut self.out, start, counted);
    }

    /// Before a send: a sender's stashed rest goes first (nothing was sealed since, or it
    /// would be in `out` already).
    pub(crate) fn take_stash(&mut self) {
        if self.lane.take_stash(&mut self.out) {
            self.out_units += 1;
        }
    }

    /// The send in flight went to the kernel whole.
    pub(crate) fn sent(&mut self) {
        self.lane.done(std::mem::take(&mut self.flight_units));
    }

    /// The connection failed: no thread sends to its socket any more, and what it owed is
    /// written off.
    pub(crate) fn close_lane(&mut self) {
        self.lane.close();
        self.out_units = 0;
        self.flight_units = 0;
    }

    /// True when the socket can be closed: failed and nothing in flight.
    pub(crate) fn finished(&self) -> bool {
        self.closing && !self.sending && !self.receiving
    }
}
