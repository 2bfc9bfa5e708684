//! Every raw call of the crate: the shared mapping, futex wait and wake, pidfds, and turning a
//! received descriptor into an owned one. Everything else calls these safe wrappers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

/// A shared (`MAP_SHARED`) read-write mapping of a whole file, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is memory owned by this value; the crate only accesses it through the
// atomic views below, which are `Sync`.
unsafe impl Send for Mapping {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared with every other mapping of the file.
    pub(crate) fn shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel aliases no Rust object; the result is
        // checked. The file is sealed against shrinking before anyone maps it (see
        // `memory.rs`), so no access within `len` can raise SIGBUS.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { ptr, len })
    }

    /// The `u64` at byte `offset`, as an atomic (the peer process writes it concurrently).
    pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        &self.u64_slice(offset, 1)[0]
    }

    /// The `u32` at byte `offset`, as an atomic.
    pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "u32 at {offset}"
        );
        // SAFETY: in bounds and aligned (checked above; the mapping is page-aligned); the
        // mapping lives as long as `&self`; `AtomicU32` has the layout of `u32` and all
        // accesses to shared memory in this crate are atomic.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// `count` `u64`s from byte `offset`, as atomics.
    pub(crate) fn u64_slice(&self, offset: usize, count: usize) -> &[AtomicU64] {
        let end = count.checked_mul(8).and_then(|b| b.checked_add(offset));
        assert!(
            offset.is_multiple_of(8) && end.is_some_and(|e| e <= self.len),
            "{count} u64s at {offset} in a mapping of {}",
            self.len
        );
        // SAFETY: in bounds and aligned (checked above); valid for the borrow of `self`;
        // `AtomicU64` has the layout of `u64`, and every access is atomic.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(offset).cast::<AtomicU64>(), count)
        }
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are what mmap returned; every view borrows `self`, so none
        // outlives this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Sleeps while `*word == expected`, until a wake, a signal, or `timeout`. A shared futex (no
/// `FUTEX_PRIVATE_FLAG`): the waker is another process mapping the same file.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos()),
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: `word` is a valid aligned u32 for the call; `ts_ptr` is null or points at a
    // timespec living across it. EAGAIN (value changed), EINTR and ETIMEDOUT all mean "look
    // again", which every caller does, so the result is not needed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        )
    };
}

/// Most words one `futex_waitv` call takes (the kernel's `FUTEX_WAITV_MAX`).
pub(crate) const FUTEX_WAITV_MAX: usize = 128;

/// `struct futex_waitv` of `<linux/futex.h>`.
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// `FUTEX2_SIZE_U32`: a 32-bit word, shared (no `FUTEX2_PRIVATE`).
const FUTEX2_SIZE_U32: u32 = 0x02;

/// Sleeps while every word of `words` holds its expected value, until one is woken, a
/// signal, or `timeout` (`futex_waitv`, Linux 5.16). At most [`FUTEX_WAITV_MAX`] words; an
/// empty list sleeps for `timeout`. Shared futexes, as [`futex_wait`].
pub(crate) fn futex_wait_any(words: &[(&AtomicU32, u32)], timeout: Duration) {
    if words.is_empty() {
        std::thread::sleep(timeout);
        return;
    }
    let waiters: Vec<FutexWaitv> = words
        .iter()
        .take(FUTEX_WAITV_MAX)
        .map(|(word, expected)| FutexWaitv {
            val: u64::from(*expected),
            uaddr: word.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        })
        .collect();
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let deadline = add(now, timeout);
    // SAFETY: `waiters` is a live array of `waiters.len()` kernel-layout entries, each naming
    // an aligned u32 borrowed for the call; `deadline` is a timespec living across it. Every
    // outcome (woken, EAGAIN: a value differs, EINTR, ETIMEDOUT) means "look again", which
    // every caller does; only ENOSYS (before Linux 5.16) is handled below.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            waiters.as_ptr(),
            waiters.len(),
            0,
            std::ptr::from_ref(&deadline),
            libc::CLOCK_MONOTONIC,
        )
    };
    if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        // No futex_waitv: nap briefly instead, so that callers poll at a bounded rate
        // rather than spin.
        std::thread::sleep(timeout.min(Duration::from_micros(200)));
    }
}

/// `at + by`, normalised.
fn add(at: libc::timespec, by: Duration) -> libc::timespec {
    let nanos = i128::from(at.tv_nsec) + i128::from(by.subsec_nanos());
    let secs = i128::from(at.tv_sec) + i128::from(by.as_secs()) + nanos / 1_000_000_000;
    libc::timespec {
        tv_sec: libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::try_from(nanos % 1_000_000_000).unwrap_or(0),
    }
}

/// Wakes every waiter on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a valid aligned u32; FUTEX_WAKE only reads the address.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process at the other end of a Unix socket, taken
/// when it connected, so it cannot name a recycled pid.
const SO_PEERPIDFD: libc::c_int = 77;

/// The pidfd of the peer of Unix socket `socket`.
pub(crate) fn peer_pidfd(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `fd` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            std::ptr::from_mut(&mut fd).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    owned(fd)
}

/// `pidfd_open(pid)`, for kernels without `SO_PEERPIDFD`.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is checked.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(rc).map_err(|_| io::Error::last_os_error())?;
    owned(fd)
}

/// Takes ownership of a descriptor the kernel just returned (or reports the errno).
pub(crate) fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel to this process (a syscall result or an
    // SCM_RIGHTS descriptor) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `fd` is readable within `timeout` (a pidfd is readable once its process exited).
pub(crate) fn readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
