//! Every raw call of the crate: anonymous mappings, the provided-buffer ring shared with the
//! kernel, raw access to a home's exposed memory, and a sender's own non-blocking `sendmsg`.
//!
//! Buffer lifetime contract (used by every SQE the worker submits): memory named in an SQE
//! must stay valid and unmoved until that SQE's last completion is reaped. The worker keeps
//! send buffers and the wake-up word in its connections and itself, and waits for every
//! in-flight completion before dropping them (see `Ring::close`); if the
//! kernel does not answer in time it leaks them rather than free memory the kernel may write.

use std::io;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use dsm_wire::PAGE_SIZE;
use io_uring::types::BufRingEntry;

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access is through `&`/`&mut self`.
unsafe impl Send for Mmap {}

impl Mmap {
    /// Maps `len` zeroed bytes (rounded up to whole pages by the kernel).
    pub(crate) fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping aliases nothing; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mmap { ptr, len })
    }

    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing borrows the mapping once
        // its owner is dropped (the worker waits for the kernel first, see the module docs).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A ring of provided receive buffers (`IORING_REGISTER_PBUF_RING`): the kernel picks a free
/// buffer for each multishot-recv completion; the worker hands it back with [`recycle`].
///
/// Field order is drop order: the ring of entries and the buffers are unmapped only after the
/// worker unregistered the group or the io_uring was dropped (the worker owns both and drops
/// the ring first).
///
/// [`recycle`]: BufRing::recycle
#[derive(Debug)]
pub(crate) struct BufRing {
    entries: Mmap,
    buffers: Mmap,
    count: u16,
    buf_len: u32,
    tail: u16,
}

impl BufRing {
    /// `count` buffers (a power of two, at most 32768) of `buf_len` bytes each, all free.
    pub(crate) fn new(count: u16, buf_len: u32) -> io::Result<Self> {
        assert!(
            count.is_power_of_two(),
            "buffer ring size must be a power of two"
        );
        let entries = Mmap::anonymous(usize::from(count) * size_of::<BufRingEntry>())?;
        let buffers = Mmap::anonymous(usize::from(count) * buf_len as usize)?;
        let mut ring = BufRing {
            entries,
            buffers,
            count,
            buf_len,
            tail: 0,
        };
        for bid in 0..count {
            ring.put(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Registers the ring as buffer group `group` of `submitter`'s io_uring.
    pub(crate) fn register(
        &self,
        submitter: &io_uring::Submitter<'_>,
        group: u16,
    ) -> io::Result<()> {
        // SAFETY: the entries mapping is page-aligned and lives as long as `self`, which the
        // worker keeps until the io_uring is gone (field order of `Worker`).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.as_ptr() as u64,
                self.count,
                group,
                0,
            )
        }
    }

    /// The first `len` bytes of buffer `bid`, as filled by a completion, to read and
    /// overwrite (frames are opened in place).
    pub(crate) fn filled(&mut self, bid: u16, len: usize) -> &mut [u8] {
        assert!(
            bid < self.count && len <= self.buf_len as usize,
            "buffer out of range"
        );
        let start = usize::from(bid) * self.buf_len as usize;
        // SAFETY: in range of the buffers mapping (checked above); the kernel handed this
        // buffer to us in a completion and will not touch it until `recycle`, and `&mut self`
        // makes this the only slice of it.
        unsafe { std::slice::from_raw_parts_mut(self.buffers.as_ptr().add(start), len) }
    }

    /// Hands buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        self.put(bid);
        self.publish();
    }

    fn put(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let base = self.entries.as_ptr().cast::<BufRingEntry>();
        // SAFETY: `index < count` entries were mapped; the slot at `tail` is free because the
        // kernel consumed it before returning `bid` (we never hand out more than `count`).
        let entry = unsafe { &mut *base.add(index) };
        let start = usize::from(bid) * self.buf_len as usize;
        entry.set_addr(self.buffers.as_ptr().wrapping_add(start) as u64);
        entry.set_len(self.buf_len);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        let base = self.entries.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the tail field overlays entry 0's reserved field inside the mapping, is
        // 2-byte aligned, and the kernel only reads it: an atomic store is the shared protocol.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(base).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }
}

/// Copies page `index` of exposed home memory out as a borrowed array.
///
/// Sound because of `HomeMemory::new`'s contract (valid until withdrawn, never registered with
/// userfaultfd) and because the caller holds the exposure table's read lock, which `withdraw`
/// needs to write.
pub(crate) fn with_home_page<R>(
    memory: &dsm_core::HomeMemory,
    index: u32,
    f: impl FnOnce(&[u8; PAGE_SIZE]) -> R,
) -> Option<R> {
    let ptr = memory.page_ptr(index)?;
    // SAFETY: see above; `page_ptr` checked the range, the base is page-aligned.
    Some(f(unsafe { &*ptr.cast::<[u8; PAGE_SIZE]>() }))
}

/// Writes `data` into page `index` of exposed home memory; `None` outside the range.
pub(crate) fn write_home_page(
    memory: &dsm_core::HomeMemory,
    index: u32,
    data: &[u8; PAGE_SIZE],
) -> Option<()> {
    let ptr = memory.page_ptr(index)?;
    // SAFETY: as for `with_home_page`; the coherence protocol orders writes to home copies,
    // the transport only moves bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, PAGE_SIZE) };
    Some(())
}

/// What a completion belongs to, packed into `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// The eventfd read that wakes the ring.
    Wake,
    /// Multishot receive on the connection to a peer.
    Recv(u32),
    /// Send to a peer.
    Send(u32),
    /// A cancellation request (its own completion carries nothing useful).
    Cancel,
}

impl Tag {
    fn encode(self) -> u64 {
        match self {
            Tag::Wake => 1 << 32,
            Tag::Recv(p) => (2 << 32) | u64::from(p),
            Tag::Send(p) => (3 << 32) | u64::from(p),
            Tag::Cancel => 4 << 32,
        }
    }

    fn decode(user_data: u64) -> Option<Tag> {
        let peer = (user_data & 0xffff_ffff) as u32;
        match user_data >> 32 {
            1 => Some(Tag::Wake),
            2 => Some(Tag::Recv(peer)),
            3 => Some(Tag::Send(peer)),
            4 => Some(Tag::Cancel),
            _ => None,
        }
    }
}

/// One reaped completion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) tag: Tag,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

impl Completion {
    /// The provided buffer a receive completion filled, if any.
    pub(crate) fn buffer(&self) -> Option<u16> {
        io_uring::cqueue::buffer_select(self.flags)
    }
    /// A multishot request stays armed after this completion.
    pub(crate) fn more(&self) -> bool {
        io_uring::cqueue::more(self.flags)
    }
}

/// The io_uring and every buffer the kernel may touch through it, so that ownership alone
/// guarantees the buffer lifetime contract (module docs): send buffers are moved in with the
/// send and handed back with its completion; the wake word and the provided buffers live here.
///
/// [`Ring::close`] waits (bounded) for every in-flight operation. Dropping a ring that still
/// has operations in flight (a timeout, or unwinding from a panic) leaks the buffers the kernel
/// could still touch instead of freeing them under it.
pub(crate) struct Ring {
    ring: io_uring::IoUring,
    buffers: ManuallyDrop<BufRing>,
    wake_word: ManuallyDrop<Box<u64>>,
    sends: ManuallyDrop<Vec<Option<Vec<u8>>>>,
    inflight: usize,
    /// The kernel flags pending task work in the SQ ring (`IORING_SETUP_TASKRUN_FLAG`).
    flags_task_work: bool,
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.inflight > 0 {
            tracing::error!(
                inflight = self.inflight,
                "io_uring operations outlived the transport; leaking their buffers"
            );
            return;
        }
        // SAFETY: no operation is in flight, so the kernel references none of these; each is
        // dropped exactly once, here, and never used again.
        unsafe {
            ManuallyDrop::drop(&mut self.sends);
            ManuallyDrop::drop(&mut self.wake_word);
            ManuallyDrop::drop(&mut self.buffers);
        }
    }
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}

/// Buffer group id of the provided receive buffers.
const BUFFER_GROUP: u16 = 0;

impl Ring {
    /// A ring with room for `entries` submissions, serving `peers` connections, with
    /// `buf_count` provided receive buffers of `buf_len` bytes.
    pub(crate) fn new(
        entries: u32,
        peers: usize,
        buf_count: u16,
        buf_len: u32,
    ) -> io::Result<Self> {
        let (ring, flags_task_work) = build_ring(entries)?;
        let buffers = BufRing::new(buf_count, buf_len)?;
        buffers.register(&ring.submitter(), BUFFER_GROUP)?;
        Ok(Ring {
            ring,
            buffers: ManuallyDrop::new(buffers),
            wake_word: ManuallyDrop::new(Box::new(0)),
            sends: ManuallyDrop::new((0..peers).map(|_| None).collect()),
            inflight: 0,
            flags_task_work,
        })
    }

    /// Arms a read of the eventfd `fd` into the wake word.
    pub(crate) fn read_wake(&mut self, fd: std::os::fd::RawFd) -> io::Result<()> {
        let ptr: *mut u64 = &mut **self.wake_word;
        let entry = io_uring::opcode::Read::new(io_uring::types::Fd(fd), ptr.cast(), 8).build();
        self.push(entry, Tag::Wake)
    }

    /// Arms a multishot receive on `fd` into the provided buffers.
    pub(crate) fn recv_multi(&mut self, fd: std::os::fd::RawFd, peer: u32) -> io::Result<()> {
        let entry = io_uring::opcode::RecvMulti::new(io_uring::types::Fd(fd), BUFFER_GROUP).build();
        self.push(entry, Tag::Recv(peer))
    }

    /// Sends `buf[offset..]` on `fd`; the ring keeps `buf` until the completion, then
    /// [`take_send`](Self::take_send) hands it back. One send per peer at a time.
    pub(crate) fn send(
        &mut self,
        fd: std::os::fd::RawFd,
        peer: u32,
        buf: Vec<u8>,
        offset: usize,
    ) -> io::Result<()> {
        let slot = &mut self.sends[peer as usize];
        assert!(slot.is_none(), "one send in flight per peer");
        let len = u32::try_from(buf.len() - offset).unwrap_or(u32::MAX);
        let ptr = buf[offset..].as_ptr();
        *slot = Some(buf); // the heap block does not move with the Vec
        let entry = io_uring::opcode::Send::new(io_uring::types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.push(entry, Tag::Send(peer)).inspect_err(|_| {
            // Not submitted: nothing in flight holds the buffer.
            self.sends[peer as usize] = None;
        })
    }

    /// The buffer of the completed send to `peer`.
    pub(crate) fn take_send(&mut self, peer: u32) -> Option<Vec<u8>> {
        self.sends.get_mut(peer as usize)?.take()
    }

    /// Asks the kernel to cancel the operation tagged `tag`.
    pub(crate) fn cancel(&mut self, tag: Tag) -> io::Result<()> {
        let entry = io_uring::opcode::AsyncCancel::new(tag.encode()).build();
        self.push(entry, Tag::Cancel)
    }

    /// The provided buffers.
    pub(crate) fn buffers(&mut self) -> &mut BufRing {
        &mut self.buffers
    }

    /// Submits everything queued and, when `wait`, blocks until at least one completion.
    /// A poll (`!wait`) with nothing to submit and no task work pending enters no system
    /// call: the kernel would find nothing to do, and an entry costs ~1 µs here (a nested
    /// guest), which a polling loop paid on every look.
    pub(crate) fn submit(&mut self, wait: bool) -> io::Result<()> {
        if !wait && !self.needs_enter() {
            return Ok(());
        }
        match self.ring.submit_and_wait(usize::from(wait)) {
            Ok(_) => Ok(()),
            // EINTR: a signal; EBUSY: completions must be reaped first. Both: reap and retry.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether a poll must enter the kernel: submissions queued, task work pending (the
    /// deferred completions of a ring built with `DEFER_TASKRUN` run only in an enter), or
    /// completions overflowed. Without the task-work flag the kernel cannot tell us: enter.
    fn needs_enter(&mut self) -> bool {
        let sq = self.ring.submission();
        !self.flags_task_work || !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
    }

    /// Whether a poll would find anything (see `needs_enter`) or completions wait to be
    /// reaped: a polling loop looks at this, which costs no system call, before it yields.
    pub(crate) fn has_news(&mut self) -> bool {
        self.needs_enter() || !self.ring.completion().is_empty()
    }

    /// Moves every available completion into `out`, keeping count of live operations.
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            let Some(tag) = Tag::decode(cqe.user_data()) else {
                continue;
            };
            let done = Completion {
                tag,
                result: cqe.result(),
                flags: cqe.flags(),
            };
            if !done.more() {
                self.inflight -= 1;
            }
            out.push(done);
        }
    }

    /// Waits up to `timeout` for every in-flight operation (sockets already shut down, the
    /// wake read cancelled). If the kernel still holds some, the buffers it could write are
    /// leaked rather than freed under it.
    pub(crate) fn close(mut self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut sink = Vec::new();
        while self.inflight > 0 && std::time::Instant::now() < deadline {
            let ts = io_uring::types::Timespec::from(std::time::Duration::from_millis(10));
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            sink.clear();
            self.reap(&mut sink);
        }
        // Drop leaks the buffers if the kernel still holds operations.
    }

    fn push(&mut self, entry: io_uring::squeue::Entry, tag: Tag) -> io::Result<()> {
        let entry = entry.user_data(tag.encode());
        if self.ring.submission().is_full() {
            self.ring.submit()?;
        }
        // SAFETY: every buffer named by the entries built above is owned by `self` (wake word,
        // provided buffers, send buffers parked in `sends`) and outlives the operation: it is
        // released only by `take_send` after the completion, or by `close` after all
        // completions (or leaked).
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("submission queue full after submit"))?;
        self.inflight += 1;
        Ok(())
    }
}

/// Writes `parts` to the socket `fd` in one non-blocking `sendmsg` (no SIGPIPE); returns the
/// bytes the kernel took (fewer than all when its send buffer is full; `WouldBlock` when it
/// took none).
pub(crate) fn send_now(fd: std::os::fd::RawFd, parts: &[&[u8]]) -> io::Result<usize> {
    let mut iov: [libc::iovec; 2] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2];
    let used = parts.len().min(iov.len());
    for (slot, part) in iov.iter_mut().zip(parts) {
        *slot = libc::iovec {
            iov_base: part.as_ptr().cast_mut().cast(),
            iov_len: part.len(),
        };
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = used as _;
    // SAFETY: `msg` names `used` iovecs over the borrowed `parts`, which outlive the call; the
    // kernel only reads them. A closed or foreign `fd` fails the call, nothing more.
    let sent = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// Builds the ring with the cheapest task-running mode the kernel offers: one issuer with
/// deferred task work (completions run only when we wait), else cooperative task running,
/// else plain.
/// Says whether the kernel flags pending task work (see `Ring::needs_enter`).
fn build_ring(entries: u32) -> io::Result<(io_uring::IoUring, bool)> {
    let cq = entries * 4;
    // TASKRUN_FLAG: the kernel flags pending task work in the SQ ring, so that a polling
    // `submit(false)` knows to enter with GETEVENTS (deferred completions run only then).
    io_uring::IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(cq)
        .build(entries)
        .or_else(|_| {
            io_uring::IoUring::builder()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_cqsize(cq)
                .build(entries)
        })
        .map(|ring| (ring, true))
        .or_else(|_| {
            let ring = io_uring::IoUring::builder()
                .setup_cqsize(cq)
                .build(entries)?;
            Ok((ring, false))
        })
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    use super::*;

    /// A poll skips the system call only while the kernel has nothing for it; the task-work
    /// flag it relies on must come up when a completion is pending (else a polling transport
    /// would see no answer until it slept).
    #[test]
    fn a_poll_enters_only_when_the_kernel_has_something() {
        let mut ring = Ring::new(8, 1, 4, 4096).unwrap();
        // SAFETY: eventfd returns a new descriptor (or -1, refused just below) that we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
        // SAFETY: `fd` is open and owned by nothing else.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        assert!(!ring.has_news(), "a fresh ring has news");
        ring.read_wake(event.as_raw_fd()).unwrap();
        assert!(ring.has_news(), "a queued submission is not news");
        ring.submit(false).unwrap();
        let mut done = Vec::new();
        ring.reap(&mut done);
        assert!(done.is_empty() && !ring.has_news(), "nothing happened yet");

        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to the eventfd we own.
        let wrote = unsafe { libc::write(event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        assert_eq!(wrote, 8);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ring.has_news() {
            assert!(
                Instant::now() < deadline,
                "the kernel never flagged the completion"
            );
            std::hint::spin_loop();
        }
        ring.submit(false).unwrap();
        ring.reap(&mut done);
        assert!(
            matches!(done.as_slice(), [c] if matches!(c.tag, Tag::Wake) && c.result == 8),
            "the eventfd read completed: {done:?}"
        );
        assert!(
            !ring.has_news(),
            "news left after the completion was reaped"
        );
    }
}
