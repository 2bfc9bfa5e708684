//! Every system call of the crate, each behind a safe or narrowly `unsafe` wrapper.
//!
//! Nothing here allocates, takes a lock or prints: every function may be called from the
//! SIGBUS handler (they are thin wrappers over async-signal-safe syscalls and atomics).
//! Errors come back as a bare [`Errno`]; callers turn them into [`crate::Error`] variants.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use userfaultfd_sys as sys;

use crate::error::Errno;

/// `_IO(USERFAULTFD_IOC, 0x00)`: asks `/dev/userfaultfd` for a new uffd (Linux 6.1). A
/// function-like macro, so the bindings cannot carry it.
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xAA00;

/// `UFFD_USER_MODE_ONLY`: a uffd that only handles faults raised by user-space accesses
/// (Linux 5.11). Allowed to ordinary users even with `vm.unprivileged_userfaultfd=0`.
pub(crate) const USER_MODE_ONLY: libc::c_int = 1;

fn last_errno() -> Errno {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    Errno(unsafe { *libc::__errno_location() })
}

/// Reads this thread's `errno` (the SIGBUS handler saves and restores it).
pub(crate) fn errno_get() -> libc::c_int {
    // SAFETY: as in `last_errno`.
    unsafe { *libc::__errno_location() }
}

/// Writes this thread's `errno`.
pub(crate) fn errno_set(value: libc::c_int) {
    // SAFETY: as in `last_errno`; the slot is writable by its own thread.
    unsafe { *libc::__errno_location() = value }
}

/// `ioctl(fd, request, arg)` on a struct the kernel reads and writes back.
fn ioctl<T>(fd: RawFd, request: u32, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: `arg` is a valid, exclusive `T`, and every caller pairs `request` with the
    // struct type the kernel expects for it (uffdio_api, uffdio_copy, ...).
    let rc = unsafe { libc::ioctl(fd, libc::c_ulong::from(request), arg as *mut T) };
    if rc < 0 { Err(last_errno()) } else { Ok(()) }
}

// ---------------------------------------------------------------------------------------------
// Opening a uffd

/// Opens `/dev/userfaultfd` and asks it for a uffd with `flags` (`O_CLOEXEC | O_NONBLOCK`).
pub(crate) fn userfaultfd_from_device(flags: libc::c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: a NUL-terminated path literal; `open` does not keep the pointer.
    let dev = unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev < 0 {
        return Err(last_errno());
    }
    // SAFETY: `dev` was just opened and is owned by nobody else.
    let dev = unsafe { OwnedFd::from_raw_fd(dev) };
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: the ioctl returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `userfaultfd(2)` system call.
pub(crate) fn userfaultfd_syscall(flags: libc::c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: userfaultfd takes one integer argument and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(last_errno());
    }
    let fd = RawFd::try_from(fd).map_err(|_| Errno(libc::EBADF))?;
    // SAFETY: the syscall returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `UFFDIO_API`: the handshake. Returns (features the kernel supports or enabled, ioctl bits).
pub(crate) fn api(fd: RawFd, features: u64) -> Result<(u64, u64), Errno> {
    let mut arg = sys::uffdio_api {
        api: sys::UFFD_API,
        features,
        ioctls: 0,
    };
    ioctl(fd, sys::UFFDIO_API, &mut arg)?;
    Ok((arg.features, arg.ioctls))
}

/// `UFFDIO_REGISTER` of `[start, start + len)` with `mode`; returns the range ioctl bits.
pub(crate) fn register(fd: RawFd, start: usize, len: usize, mode: u64) -> Result<u64, Errno> {
    let mut arg = sys::uffdio_register {
        range: range(start, len),
        mode,
        ioctls: 0,
    };
    ioctl(fd, sys::UFFDIO_REGISTER, &mut arg)?;
    Ok(arg.ioctls)
}

/// `UFFDIO_UNREGISTER` of `[start, start + len)`.
pub(crate) fn unregister(fd: RawFd, start: usize, len: usize) -> Result<(), Errno> {
    let mut arg = range(start, len);
    ioctl(fd, sys::UFFDIO_UNREGISTER, &mut arg)
}

fn range(start: usize, len: usize) -> sys::uffdio_range {
    sys::uffdio_range {
        start: start as u64,
        len: len as u64,
    }
}

// ---------------------------------------------------------------------------------------------
// Page operations

/// Outcome of one `UFFDIO_COPY`: bytes copied, or the errno with the bytes copied before it.
pub(crate) struct CopyError {
    pub errno: Errno,
    pub copied: usize,
}

/// `UFFDIO_COPY` of `len` bytes from `source` to the registered address `target`.
///
/// # Safety
/// `source` must be valid for reads of `len` bytes for the duration of the call, and must
/// not lie in a registered range that could fault (the kernel would raise a fault on behalf
/// of the handler). `target..target + len` must be inside a range registered on `fd`.
pub(crate) unsafe fn copy(
    fd: RawFd,
    target: usize,
    source: *const u8,
    len: usize,
    mode: u64,
) -> Result<usize, CopyError> {
    let mut arg = sys::uffdio_copy {
        dst: target as u64,
        src: source as u64,
        len: len as u64,
        mode,
        copy: 0,
    };
    let result = ioctl(fd, sys::UFFDIO_COPY, &mut arg);
    // `copy` holds bytes copied (>= 0) or a negated errno; only the former counts here.
    let copied = usize::try_from(arg.copy).unwrap_or(0);
    match result {
        Ok(()) => Ok(copied),
        Err(errno) => Err(CopyError { errno, copied }),
    }
}

/// `UFFDIO_WRITEPROTECT` of `[start, start + len)` with `mode` (WP set or clear, DONTWAKE).
pub(crate) fn write_protect(fd: RawFd, start: usize, len: usize, mode: u64) -> Result<(), Errno> {
    let mut arg = sys::uffdio_writeprotect {
        range: range(start, len),
        mode,
    };
    ioctl(fd, sys::UFFDIO_WRITEPROTECT, &mut arg)
}

/// `UFFDIO_WAKE` of `[start, start + len)`: resumes threads blocked on faults there.
pub(crate) fn wake(fd: RawFd, start: usize, len: usize) -> Result<(), Errno> {
    let mut arg = range(start, len);
    ioctl(fd, sys::UFFDIO_WAKE, &mut arg)
}

/// Copies `target.len()` bytes out of mapped memory at `source`.
///
/// # Safety
/// `source..source + target.len()` must be mapped and readable. Other threads may write it
/// concurrently (shared memory of a DSM is racy by nature); bytes read then may be torn,
/// which callers (twins, page reads for sending) tolerate by protocol.
pub(crate) unsafe fn read_bytes(source: usize, target: &mut [u8]) {
    // SAFETY: the caller guarantees the source is mapped; `target` is an exclusive buffer
    // that cannot overlap the registered region (it is a Rust reference, the region is
    // never referenced by Rust references).
    unsafe { std::ptr::copy_nonoverlapping(source as *const u8, target.as_mut_ptr(), target.len()) }
}

/// Copies `source` into mapped memory at `target`.
///
/// # Safety
/// `target..target + source.len()` must be mapped, present and writable (not
/// write-protected), or the calling thread faults.
pub(crate) unsafe fn write_bytes(target: usize, source: &[u8]) {
    // SAFETY: the caller guarantees the target is mapped and writable; see `read_bytes`
    // for why the two cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), target as *mut u8, source.len()) }
}

// ---------------------------------------------------------------------------------------------
// Mappings

/// Maps `len` bytes of private anonymous memory (no swap reserved: a region may be far larger
/// than what this node ever holds) exactly at `address`, failing with EEXIST if
/// anything is mapped there already. Kernels before 4.17 ignore `MAP_FIXED_NOREPLACE` and
/// may map elsewhere: that case is unmapped again and reported as EEXIST too.
pub(crate) fn map_fixed(address: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory in use
    // is affected; the result is checked before use.
    let got = unsafe {
        libc::mmap(
            address as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(last_errno());
    }
    if got as usize != address {
        // SAFETY: `got` is the mapping just created, of `len` bytes, used by nobody.
        unsafe { libc::munmap(got, len) };
        return Err(Errno(libc::EEXIST));
    }
    Ok(())
}

/// Maps `len` bytes of private anonymous memory wherever the kernel chooses.
pub(crate) fn map_anywhere(len: usize) -> Result<usize, Errno> {
    // SAFETY: a fresh mapping at an address of the kernel's choosing affects no memory in
    // use; the result is checked before use.
    let got = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(last_errno());
    }
    Ok(got as usize)
}

/// Unmaps `[address, address + len)`.
///
/// # Safety
/// No live reference may point into the range, and no one may use it afterwards.
pub(crate) unsafe fn unmap(address: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: the caller owns the mapping and promises it is no longer used.
    let rc = unsafe { libc::munmap(address as *mut libc::c_void, len) };
    if rc < 0 { Err(last_errno()) } else { Ok(()) }
}

/// `madvise(address, len, advice)`.
///
/// # Safety
/// For destructive advice (`MADV_DONTNEED`) the caller must accept that the range's contents
/// are dropped; the range must belong to the caller.
pub(crate) unsafe fn madvise(address: usize, len: usize, advice: libc::c_int) -> Result<(), Errno> {
    // SAFETY: the caller owns the range; madvise never makes memory invalid to access (on a
    // registered range a dropped page faults again and is served by the handler).
    let rc = unsafe { libc::madvise(address as *mut libc::c_void, len, advice) };
    if rc < 0 { Err(last_errno()) } else { Ok(()) }
}

// ---------------------------------------------------------------------------------------------
// Reading uffd events

/// Reads as many fault messages as are ready (the uffd is non-blocking); 0 when none.
pub(crate) fn read_messages(fd: RawFd, buffer: &mut [sys::uffd_msg]) -> Result<usize, Errno> {
    let bytes = std::mem::size_of_val(buffer);
    // SAFETY: `buffer` is valid for writes of `bytes`; uffd_msg is plain data for which any
    // bytes the kernel writes are a valid value.
    let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), bytes) };
    if n < 0 {
        let errno = last_errno();
        return if errno.0 == libc::EAGAIN {
            Ok(0)
        } else {
            Err(errno)
        };
    }
    // `n` is non-negative here and bounded by `bytes`.
    Ok(n.unsigned_abs() / std::mem::size_of::<sys::uffd_msg>())
}

/// Waits until `a` or `b` is readable, up to `timeout`. Returns (a ready, b ready).
pub(crate) fn poll2(a: RawFd, b: RawFd, timeout: Duration) -> Result<(bool, bool), Errno> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if rc < 0 {
        let errno = last_errno();
        return if errno.0 == libc::EINTR {
            Ok((false, false))
        } else {
            Err(errno)
        };
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

// ---------------------------------------------------------------------------------------------
// eventfd, futex

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn eventfd() -> Result<OwnedFd, Errno> {
    // SAFETY: eventfd takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd (async-signal-safe: one `write`).
pub(crate) fn eventfd_ring(fd: RawFd) -> Result<(), Errno> {
    let one: u64 = 1;
    // SAFETY: writes the 8 bytes of `one`, valid for the call.
    let n = unsafe { libc::write(fd, (&raw const one).cast(), 8) };
    if n == 8 { Ok(()) } else { Err(last_errno()) }
}

/// Resets an eventfd to 0; returns the count it held (0 when it was not rung).
pub(crate) fn eventfd_drain(fd: RawFd) -> Result<u64, Errno> {
    let mut count: u64 = 0;
    // SAFETY: reads at most 8 bytes into `count`, valid for the call.
    let n = unsafe { libc::read(fd, (&raw mut count).cast(), 8) };
    if n == 8 {
        return Ok(count);
    }
    let errno = last_errno();
    if errno.0 == libc::EAGAIN {
        Ok(0)
    } else {
        Err(errno)
    }
}

/// `FUTEX_WAIT_PRIVATE`: sleeps while `*word == expected`, up to `timeout`. Spurious wake-ups,
/// EAGAIN (value changed) and EINTR all just return: callers re-check the word.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos().min(999_999_999) as i32),
    };
    // SAFETY: `word` is a valid aligned u32 for the call; the timeout is a valid timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &raw const ts,
        );
    }
}

/// `FUTEX_WAKE_PRIVATE`: wakes every thread waiting on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid aligned u32; FUTEX_WAKE does not dereference anything else.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            libc::c_int::MAX,
        );
    }
}

/// Writes `message` to stderr with one `write` (async-signal-safe; used before aborting).
pub(crate) fn write_stderr(message: &[u8]) {
    // SAFETY: `message` is valid for reads of its length.
    unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
}

/// Kills the process now, from any context (async-signal-safe).
pub(crate) fn abort() -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

// ---------------------------------------------------------------------------------------------
// Signals

/// The SIGBUS handler's signature.
pub(crate) type SignalHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for SIGBUS (`SA_SIGINFO`, not on the alternate stack: the resolver gets
/// the thread's own stack, not std's 8 KiB alternate one). Returns the previous action.
pub(crate) fn install_sigbus(handler: SignalHandler) -> Result<libc::sigaction, Errno> {
    // SAFETY: all-zero is a valid sigaction (no handler, empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: as above, zeroed is a valid value to be overwritten by the kernel.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `action` and `previous` are valid for the call; the handler is a valid
    // `extern "C"` function for the process's lifetime.
    let rc = unsafe { libc::sigaction(libc::SIGBUS, &raw const action, &raw mut previous) };
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(previous)
    }
}

/// Resets SIGBUS to its default action (async-signal-safe). The faulting access then
/// re-executes and kills the process with SIGBUS.
pub(crate) fn reset_sigbus() {
    // SAFETY: all-zero with SIG_DFL is the default action.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = libc::SIG_DFL;
    // SAFETY: `action` is valid for the call; no previous action is asked for.
    unsafe { libc::sigaction(libc::SIGBUS, &raw const action, std::ptr::null_mut()) };
}

/// Calls a saved `SA_SIGINFO` handler, or restores a plain disposition and returns so that the
/// access re-executes under it.
///
/// # Safety
/// Only from the SIGBUS handler, with the arguments it received; `previous` must be the
/// action that was installed before ours.
pub(crate) unsafe fn chain(
    previous: &libc::sigaction,
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Ignoring a synchronous SIGBUS would loop forever: fall back to the default.
        reset_sigbus();
        return;
    }
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the saved value is a handler of this signature (SA_SIGINFO is set).
        let f: SignalHandler = unsafe { std::mem::transmute::<usize, SignalHandler>(handler) };
        f(signal, info, context);
    } else {
        // SAFETY: without SA_SIGINFO the saved value is a one-argument handler.
        let f: extern "C" fn(libc::c_int) =
            unsafe { std::mem::transmute::<usize, extern "C" fn(libc::c_int)>(handler) };
        f(signal);
    }
}

/// The faulting address and whether the signal came from the kernel for a memory access
/// (`si_code > 0`; a SIGBUS sent with `kill` has `si_code <= 0`).
///
/// # Safety
/// `info` must be the siginfo pointer the kernel passed to an `SA_SIGINFO` handler.
pub(crate) unsafe fn fault_address(info: *const libc::siginfo_t) -> Option<usize> {
    // SAFETY: the kernel passes a valid siginfo to the handler.
    let info = unsafe { &*info };
    if info.si_code <= 0 {
        return None;
    }
    // SAFETY: for a kernel-generated SIGBUS the union holds the fault address.
    Some(unsafe { info.si_addr() } as usize)
}

/// The x86-64 page-fault error code of the interrupted access: bit 0 = the page was present
/// (protection fault: write-protect), bit 1 = write.
///
/// # Safety
/// `context` must be the `ucontext_t` pointer the kernel passed to an `SA_SIGINFO` handler.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn fault_error_code(context: *const libc::c_void) -> u64 {
    // SAFETY: the kernel passes a valid ucontext_t to the handler.
    let context = unsafe { &*context.cast::<libc::ucontext_t>() };
    // REG_ERR holds the hardware error code (a small unsigned value in an i64 slot).
    context.uc_mcontext.gregs[libc::REG_ERR as usize].unsigned_abs()
}

/// Raw file descriptor of an owned fd (re-exported to keep `AsRawFd` in one place).
pub(crate) fn fd_of(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

/// The (flags, address) of a page-fault message; `None` for other events.
pub(crate) fn page_fault_of(message: &sys::uffd_msg) -> Option<(u64, u64)> {
    if message.event != sys::UFFD_EVENT_PAGEFAULT {
        return None;
    }
    // SAFETY: for UFFD_EVENT_PAGEFAULT the kernel filled the `pagefault` member of the union.
    let fault = unsafe { message.arg.pagefault };
    Some((fault.flags, fault.address))
}

/// An all-zero message buffer for `read_messages`.
pub(crate) fn empty_message() -> sys::uffd_msg {
    // SAFETY: uffd_msg is plain integers and unions of integers: all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

// ---------------------------------------------------------------------------------------------
// Shared (memfd) regions: zero-copy installs with UFFDIO_CONTINUE

/// `UFFDIO_CONTINUE_MODE_WP` (Linux 6.4): map the page write-protected. Not in the headers
/// the bindings were generated from.
pub(crate) const CONTINUE_MODE_WP: u64 = 1 << 1;

/// `memfd_create(name, MFD_CLOEXEC)` sized to `len` bytes.
pub(crate) fn memfd(len: usize) -> Result<OwnedFd, Errno> {
    // SAFETY: a NUL-terminated name literal; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"dsm-region".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: a fresh fd that we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len).map_err(|_| Errno(libc::EFBIG))?;
    // SAFETY: sizes the memfd just created.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } < 0 {
        return Err(last_errno());
    }
    Ok(fd)
}

/// Maps `len` bytes of `fd` shared, exactly at `address` (`MAP_FIXED_NOREPLACE`) or, with
/// `address == 0`, wherever the kernel likes. Returns the address.
pub(crate) fn map_shared(address: usize, len: usize, fd: RawFd) -> Result<usize, Errno> {
    let fixed = if address == 0 {
        0
    } else {
        libc::MAP_FIXED_NOREPLACE
    };
    // SAFETY: MAP_FIXED_NOREPLACE (or no hint) never replaces an existing mapping.
    let got = unsafe { mmap_shared(address, len, fd, 0, fixed) }?;
    if address != 0 && got != address {
        // SAFETY: the mapping just created, used by nobody.
        unsafe { libc::munmap(got as *mut libc::c_void, len) };
        return Err(Errno(libc::EEXIST));
    }
    Ok(got)
}

/// `mmap` of `len` bytes of `fd` from `offset`, shared, read-write, at `address` with
/// `fixed` (0, `MAP_FIXED` or `MAP_FIXED_NOREPLACE`).
///
/// # Safety
/// With `MAP_FIXED`, `address..address + len` must be memory the caller owns and nothing
/// uses: it is replaced.
unsafe fn mmap_shared(
    address: usize,
    len: usize,
    fd: RawFd,
    offset: libc::off_t,
    fixed: libc::c_int,
) -> Result<usize, Errno> {
    // SAFETY: per the contract; the result is checked before use.
    let got = unsafe {
        libc::mmap(
            address as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE | fixed,
            fd,
            offset,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(last_errno());
    }
    Ok(got as usize)
}

/// Maps `len` bytes of `fd` from byte `offset`, shared: exactly over `[address, address +
/// len)` with `MAP_FIXED`, or wherever the kernel likes with `address == 0`. Returns the
/// address.
///
/// # Safety
/// A non-zero `address..address + len` must be memory the caller mapped and nothing uses
/// yet: `MAP_FIXED` replaces it.
pub(crate) unsafe fn map_file(
    address: usize,
    len: usize,
    fd: RawFd,
    offset: u64,
) -> Result<usize, Errno> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno(libc::EFBIG))?;
    let fixed = if address == 0 { 0 } else { libc::MAP_FIXED };
    // SAFETY: either no hint (a fresh range), or a range the caller owns and gives up.
    unsafe { mmap_shared(address, len, fd, offset, fixed) }
}

/// Whether the page at `address` holds `data`.
///
/// # Safety
/// `address` must be a mapped, readable page that never faults to this process's handler
/// (not in a registered range) and that nobody writes during the call.
pub(crate) unsafe fn page_equals(address: usize, data: &[u8]) -> bool {
    // SAFETY: per the contract: mapped, readable, not written meanwhile, and the slice lives
    // only for the comparison.
    let page = unsafe { std::slice::from_raw_parts(address as *const u8, data.len()) };
    page == data
}

/// Frees `[offset, offset + len)` of a memfd (`FALLOC_FL_PUNCH_HOLE`): the pages leave the
/// page cache; the next access to them through a mapping is a MISSING fault.
pub(crate) fn punch_hole(fd: RawFd, offset: usize, len: usize) -> Result<(), Errno> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno(libc::EFBIG))?;
    let len = libc::off_t::try_from(len).map_err(|_| Errno(libc::EFBIG))?;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on an fd we own; punching drops contents, which callers intend.
    let rc = unsafe { libc::fallocate(fd, mode, offset, len) };
    if rc < 0 { Err(last_errno()) } else { Ok(()) }
}

/// `UFFDIO_CONTINUE` of `[start, start + len)`: maps the page-cache pages already there.
pub(crate) fn continue_(fd: RawFd, start: usize, len: usize, mode: u64) -> Result<(), Errno> {
    let mut arg = sys::uffdio_continue {
        range: range(start, len),
        mode,
        mapped: 0,
    };
    ioctl(fd, sys::UFFDIO_CONTINUE, &mut arg)
}

// ---------------------------------------------------------------------------------------------
// Dirty tracking: asynchronous write-protect and PAGEMAP_SCAN (Linux 6.7)

/// `UFFD_FEATURE_WP_ASYNC` (Linux 6.7): the kernel resolves write-protect faults itself and
/// marks the page written. Missing from the 6.1 headers of this toolchain.
pub(crate) const FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)` (96 bytes).
const PAGEMAP_SCAN: u32 = (3 << 30) | (96 << 16) | (0x66 << 8) | 16;
/// Write-protect the pages the scan reports, atomically with reporting them.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail (EPERM) unless the range is registered with an async write-protect uffd.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// Page category: written since it was last write-protected.
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `struct page_region`: one run of pages the scan reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PageRun {
    pub(crate) start: u64,
    pub(crate) end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// Opens `/proc/self/pagemap` (the file `PAGEMAP_SCAN` is issued on).
pub(crate) fn open_pagemap() -> Result<OwnedFd, Errno> {
    // SAFETY: a NUL-terminated path literal; `open` does not keep the pointer.
    let fd = unsafe {
        libc::open(
            c"/proc/self/pagemap".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `PAGEMAP_SCAN` of `[start, end)`: fills `runs` with the written runs, write-protecting
/// them again in the same call. Returns the runs filled and where the walk stopped (`end`
/// unless `runs` filled up first).
pub(crate) fn scan_written(
    pagemap: RawFd,
    start: usize,
    end: usize,
    runs: &mut [PageRun],
) -> Result<(usize, usize), Errno> {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        start: start as u64,
        end: end as u64,
        vec: runs.as_mut_ptr() as u64,
        vec_len: runs.len() as u64,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..PmScanArg::default()
    };
    // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `runs.len()` writable
    // page_region structs that outlive the call; the kernel writes only within them.
    let rc = unsafe {
        libc::ioctl(
            pagemap,
            libc::c_ulong::from(PAGEMAP_SCAN),
            &mut arg as *mut PmScanArg,
        )
    };
    let filled = usize::try_from(rc).map_err(|_| last_errno())?;
    let walk_end = usize::try_from(arg.walk_end).unwrap_or(end);
    Ok((filled.min(runs.len()), walk_end))
}

// ---------------------------------------------------------------------------------------------
// Taking a page away atomically: UFFDIO_MOVE (Linux 6.8)

/// `UFFD_FEATURE_MOVE` (Linux 6.8).
pub(crate) const FEATURE_MOVE: u64 = 1 << 16;
/// `UFFDIO_MOVE` = `_IOWR(0xAA, 0x05, struct uffdio_move)` (40 bytes).
const UFFDIO_MOVE: u32 = (3 << 30) | (40 << 16) | (0xAA << 8) | 0x05;

/// `struct uffdio_move` (include/uapi/linux/userfaultfd.h).
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}

/// `UFFDIO_MOVE` of `len` bytes from `src` to `dst` (both registered with `fd`'s uffd, `dst`
/// empty): the page tables of `src` are emptied and its pages appear at `dst`, in one step for
/// every other thread (a store to `src` after the move faults as missing). Returns the bytes
/// moved; a hole at `src` fails with ENOENT.
pub(crate) fn move_pages(fd: RawFd, dst: usize, src: usize, len: usize) -> Result<usize, Errno> {
    let mut arg = UffdioMove {
        dst: dst as u64,
        src: src as u64,
        len: len as u64,
        mode: 0,
        moved: 0,
    };
    ioctl(fd, UFFDIO_MOVE, &mut arg)?;
    Ok(usize::try_from(arg.moved).unwrap_or(0))
}
