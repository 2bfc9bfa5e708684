//! The crate's error type. No variant owns heap memory: errors are built and matched inside
//! the SIGBUS handler, where allocation is forbidden.

use std::fmt;

/// A raw `errno` value, displayed with the system's message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({})", self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// What went wrong in the fault engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No way to get a userfaultfd worked: `/dev/userfaultfd`, `userfaultfd(2)`, and
    /// `userfaultfd(UFFD_USER_MODE_ONLY)` all failed.
    #[error(
        "userfaultfd is unavailable: /dev/userfaultfd: {device}; userfaultfd(2): {syscall}; \
         userfaultfd(UFFD_USER_MODE_ONLY): {user_mode_only}. {}",
        unavailable_advice(*syscall, *user_mode_only)
    )]
    Unavailable {
        /// Opening `/dev/userfaultfd` or its `USERFAULTFD_IOC_NEW`.
        device: Errno,
        /// The plain system call.
        syscall: Errno,
        /// The system call with `UFFD_USER_MODE_ONLY` (Linux 5.11).
        user_mode_only: Errno,
    },
    /// `UFFDIO_API` (the handshake) failed.
    #[error("UFFDIO_API: {0}")]
    Api(Errno),
    /// The kernel lacks a feature this operation needs.
    #[error("the kernel lacks userfaultfd {feature} (needs Linux {kernel} or later)")]
    MissingFeature {
        /// The feature, as the kernel names it.
        feature: &'static str,
        /// First kernel version offering it.
        kernel: &'static str,
    },
    /// The requested address or size is not page-aligned or is empty.
    #[error("region at {address:#x} of {pages} pages: address must be page-aligned and size > 0")]
    BadGeometry {
        /// Requested address.
        address: usize,
        /// Requested pages.
        pages: u32,
    },
    /// `mmap(MAP_FIXED_NOREPLACE)` found something mapped in the range already.
    #[error(
        "cannot map region at {address:#x}..{end:#x}: the range overlaps an existing mapping \
         (see /proc/self/maps); choose another address",
        end = address + len
    )]
    AddressTaken {
        /// Requested address.
        address: usize,
        /// Requested length in bytes.
        len: usize,
    },
    /// `mmap` failed for another reason.
    #[error("mmap of {len} bytes at {address:#x}: {errno}")]
    Map {
        /// Requested address.
        address: usize,
        /// Requested length in bytes.
        len: usize,
        /// Why.
        errno: Errno,
    },
    /// `madvise` failed (`call` names the advice).
    #[error("madvise({call}): {errno}")]
    Madvise {
        /// The advice.
        call: &'static str,
        /// Why.
        errno: Errno,
    },
    /// `UFFDIO_REGISTER` failed.
    #[error("UFFDIO_REGISTER: {0}")]
    Register(Errno),
    /// A page index beyond the region.
    #[error("page {index} is outside the region of {pages} pages")]
    PageOutOfRange {
        /// Index asked for.
        index: u32,
        /// Pages in the region.
        pages: u32,
    },
    /// A source buffer whose length is not what the operation needs.
    #[error("buffer of {got} bytes where {want} were needed")]
    BadLength {
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        want: usize,
    },
    /// `UFFDIO_COPY` failed.
    #[error("UFFDIO_COPY of page {index}: {errno}")]
    Copy {
        /// First page of the copy.
        index: u32,
        /// Why.
        errno: Errno,
    },
    /// A run of file-backed pages that is empty, outside the region, overlaps or precedes
    /// the run before it, or starts at an unaligned offset of its file.
    #[error(
        "file-backed run of {count} pages from page {first} does not fit a region of {pages} \
         pages (runs must be non-empty, sorted, disjoint and page-aligned in their file)"
    )]
    BadFileRun {
        /// First page of the run.
        first: u32,
        /// Pages in the run.
        count: u32,
        /// Pages in the region.
        pages: u32,
    },
    /// `UFFDIO_CONTINUE` failed.
    #[error("UFFDIO_CONTINUE of page {index}: {errno}")]
    Continue {
        /// Page.
        index: u32,
        /// Why.
        errno: Errno,
    },
    /// `UFFDIO_WRITEPROTECT` failed.
    #[error("UFFDIO_WRITEPROTECT of page {index}: {errno}")]
    WriteProtect {
        /// Page.
        index: u32,
        /// Why.
        errno: Errno,
    },
    /// `UFFDIO_WAKE` failed.
    #[error("UFFDIO_WAKE of page {index}: {errno}")]
    Wake {
        /// Page.
        index: u32,
        /// Why.
        errno: Errno,
    },
    /// The kernel kept answering EAGAIN (the mapping was changing) past the retry bound.
    #[error("{call} of page {index}: still EAGAIN after {attempts} attempts")]
    Busy {
        /// The ioctl.
        call: &'static str,
        /// Page.
        index: u32,
        /// Attempts made.
        attempts: u32,
    },
    /// A diff run reaches past the end of the page (input from the wire: nothing applied).
    #[error("diff run at offset {offset} of {len} bytes reaches past the page end")]
    DiffOutOfBounds {
        /// Run offset.
        offset: u16,
        /// Run length.
        len: usize,
    },
    /// A call for setting up fault delivery failed (`call` names it).
    #[error("{call}: {errno}")]
    Setup {
        /// The syscall.
        call: &'static str,
        /// Why.
        errno: Errno,
    },
    /// Every slot of a fixed table is in use (`what` names the table).
    #[error("all {capacity} {what} are in use")]
    Exhausted {
        /// The table.
        what: &'static str,
        /// Its size.
        capacity: usize,
    },
    /// A wait ran out of time (`what` names what was waited for).
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        waited_ms: u64,
    },
    /// The transport reported that a page could not be fetched ([`crate::PageSlots::fail`]).
    #[error("the transport could not fetch the page")]
    FetchFailed,
    /// The region already has a fault engine serving it.
    #[error("the region already has a fault engine")]
    AlreadyServed,
    /// This configuration is not supported here (`what` says which).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// What to do when no userfaultfd could be had, from the errnos seen.
fn unavailable_advice(syscall: Errno, user_mode_only: Errno) -> &'static str {
    match (syscall.0, user_mode_only.0) {
        (libc::ENOSYS, _) => {
            "The kernel has no userfaultfd: it needs CONFIG_USERFAULTFD (Linux 4.14+ for \
             SIGBUS, 5.7+ for write-protect, 5.11+ for unprivileged UFFD_USER_MODE_ONLY)."
        }
        (_, libc::EINVAL) => {
            "The kernel predates UFFD_USER_MODE_ONLY (Linux 5.11): run as root, give this user \
             read-write access to /dev/userfaultfd, or `sysctl vm.unprivileged_userfaultfd=1`."
        }
        _ => {
            "Give this user read-write access to /dev/userfaultfd, or `sysctl \
             vm.unprivileged_userfaultfd=1`, or run as root; if all fail, a seccomp filter \
             (container runtime) blocks the userfaultfd syscall: allow it in the profile."
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(syscall: i32, user_mode_only: i32) -> String {
        Error::Unavailable {
            device: Errno(libc::EACCES),
            syscall: Errno(syscall),
            user_mode_only: Errno(user_mode_only),
        }
        .to_string()
    }

    #[test]
    fn unavailable_says_how_to_fix_it() {
        let no_kernel_support = unavailable(libc::ENOSYS, libc::ENOSYS);
        assert!(
            no_kernel_support.contains("CONFIG_USERFAULTFD"),
            "{no_kernel_support}"
        );
        let old_kernel = unavailable(libc::EPERM, libc::EINVAL);
        assert!(old_kernel.contains("5.11"), "{old_kernel}");
        assert!(
            old_kernel.contains("vm.unprivileged_userfaultfd=1"),
            "{old_kernel}"
        );
        let blocked = unavailable(libc::EPERM, libc::EPERM);
        assert!(blocked.contains("/dev/userfaultfd"), "{blocked}");
        assert!(blocked.contains("seccomp"), "{blocked}");
    }
}
