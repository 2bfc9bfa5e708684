//! Opening a userfaultfd (root or not) and probing what the kernel offers.

use std::os::fd::{OwnedFd, RawFd};

use userfaultfd_sys as sys;

use crate::error::{Errno, Error, Result};
use crate::raw;

/// How the uffd was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `/dev/userfaultfd` (Linux 6.1; needs read-write access to the node).
    Device,
    /// The `userfaultfd(2)` system call with full rights (root, `CAP_SYS_PTRACE`, or
    /// `vm.unprivileged_userfaultfd=1`).
    Syscall,
    /// The system call with `UFFD_USER_MODE_ONLY` (Linux 5.11, any user): faults raised by
    /// the kernel itself (a `read()` or `recv()` into a missing page) fail with EFAULT
    /// instead of being delivered, so touch such buffers from user space first.
    UserModeOnly,
}

/// What the kernel's userfaultfd offers, probed once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `UFFD_FEATURE_*` bits the kernel supports.
    pub bits: u64,
    /// How a uffd can be obtained by this process.
    pub source: Source,
}

impl Features {
    /// Opens a throw-away uffd to learn the kernel's feature bits.
    pub fn probe() -> Result<Features> {
        let (fd, source) = open_fd()?;
        let (bits, _) = raw::api(raw::fd_of(&fd), 0).map_err(Error::Api)?;
        Ok(Features { bits, source })
    }

    /// `UFFD_FEATURE_SIGBUS` (4.14): faults raise SIGBUS in the faulting thread.
    pub fn sigbus(&self) -> bool {
        self.has(sys::UFFD_FEATURE_SIGBUS)
    }

    /// `UFFD_FEATURE_PAGEFAULT_FLAG_WP` (5.7): write-protect faults on anonymous memory.
    pub fn write_protect(&self) -> bool {
        self.has(sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    }

    /// `UFFD_FEATURE_MINOR_SHMEM` (5.14): MINOR faults and `UFFDIO_CONTINUE` on shmem.
    pub fn minor_shmem(&self) -> bool {
        self.has(sys::UFFD_FEATURE_MINOR_SHMEM)
    }

    /// `UFFD_FEATURE_WP_ASYNC` (6.7): write-protect faults resolved by the kernel, the page
    /// marked written for `PAGEMAP_SCAN` (see [`UffdRegion::new_tracked`](crate::UffdRegion::new_tracked)).
    pub fn wp_async(&self) -> bool {
        self.has(raw::FEATURE_WP_ASYNC)
    }

    /// `UFFD_FEATURE_THREAD_ID` (4.14): fault messages carry the faulting thread's id.
    pub fn thread_id(&self) -> bool {
        self.has(sys::UFFD_FEATURE_THREAD_ID)
    }

    /// `UFFD_FEATURE_MOVE` (6.8): `UFFDIO_MOVE` ([`UffdRegion::take_page`](crate::UffdRegion::take_page)).
    pub fn move_pages(&self) -> bool {
        self.has(raw::FEATURE_MOVE)
    }

    fn has(&self, bit: u64) -> bool {
        self.bits & bit != 0
    }
}

/// An open, handshaken userfaultfd. Closing it silently unregisters every range (missing
/// pages would then read as zeros), so it lives exactly as long as its region.
#[derive(Debug)]
pub(crate) struct Uffd {
    fd: OwnedFd,
    features: Features,
}

impl Uffd {
    /// Opens a uffd and enables `sigbus` delivery or not, write-protect faults (resolved by
    /// the kernel itself for `wp_async`), and for `shared` (memfd) regions MINOR faults and
    /// write-protect on shmem.
    pub(crate) fn open(sigbus: bool, shared: bool, wp_async: bool) -> Result<Uffd> {
        let probed = Features::probe()?;
        if !probed.write_protect() {
            return Err(Error::MissingFeature {
                feature: "write-protect (UFFD_FEATURE_PAGEFAULT_FLAG_WP)",
                kernel: "5.7",
            });
        }
        if sigbus && !probed.sigbus() {
            return Err(Error::MissingFeature {
                feature: "UFFD_FEATURE_SIGBUS",
                kernel: "4.14",
            });
        }
        let mut wanted = sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP;
        if sigbus {
            wanted |= sys::UFFD_FEATURE_SIGBUS;
        }
        if shared {
            wanted |= shared_features(&probed)?;
        }
        if wp_async {
            if !probed.wp_async() {
                return Err(Error::MissingFeature {
                    feature: "UFFD_FEATURE_WP_ASYNC",
                    kernel: "6.7",
                });
            }
            wanted |= raw::FEATURE_WP_ASYNC;
            if probed.has(raw::FEATURE_MOVE) {
                // Lets a tracked region take a page away atomically (UffdRegion::take_page).
                wanted |= raw::FEATURE_MOVE;
            }
        }
        let (fd, source) = open_fd()?;
        raw::api(raw::fd_of(&fd), wanted).map_err(Error::Api)?;
        let features = Features {
            bits: probed.bits,
            source,
        };
        Ok(Uffd { fd, features })
    }

    pub(crate) fn raw(&self) -> RawFd {
        raw::fd_of(&self.fd)
    }

    pub(crate) fn features(&self) -> Features {
        self.features
    }
}

/// The features a shared (memfd) region needs, or which one is missing.
fn shared_features(probed: &Features) -> Result<u64> {
    if !probed.minor_shmem() {
        return Err(Error::MissingFeature {
            feature: "UFFD_FEATURE_MINOR_SHMEM",
            kernel: "5.14",
        });
    }
    if !probed.has(sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM) {
        return Err(Error::MissingFeature {
            feature: "UFFD_FEATURE_WP_HUGETLBFS_SHMEM",
            kernel: "5.19",
        });
    }
    Ok(sys::UFFD_FEATURE_MINOR_SHMEM | sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
}

/// Tries the device, then the full system call, then user-mode-only.
fn open_fd() -> Result<(OwnedFd, Source)> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let device = match raw::userfaultfd_from_device(flags) {
        Ok(fd) => return Ok((fd, Source::Device)),
        Err(errno) => errno,
    };
    let syscall = match raw::userfaultfd_syscall(flags) {
        Ok(fd) => return Ok((fd, Source::Syscall)),
        Err(errno) => errno,
    };
    let user_mode_only = match raw::userfaultfd_syscall(flags | raw::USER_MODE_ONLY) {
        Ok(fd) => return Ok((fd, Source::UserModeOnly)),
        Err(errno) => errno,
    };
    Err(unavailable(device, syscall, user_mode_only))
}

#[cold]
fn unavailable(device: Errno, syscall: Errno, user_mode_only: Errno) -> Error {
    Error::Unavailable {
        device,
        syscall,
        user_mode_only,
    }
}
