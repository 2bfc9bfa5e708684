//! Reading fault messages from a region's uffd yourself: for a runtime that waits on the uffd
//! in its own loop (poll, epoll, or io_uring `POLL_ADD` next to its network completions)
//! instead of running an [`crate::FaultServer`]. Thread delivery only: under SIGBUS delivery the
//! kernel queues no messages.

use std::os::fd::RawFd;

use userfaultfd_sys as sys;

use crate::engine::Delivery;
use crate::error::{Error, Result};
use crate::fault::{Fault, FaultKind};
use crate::raw;
use crate::region::UffdRegion;

/// Messages read per `read` call.
const BATCH: usize = 32;

impl UffdRegion {
    /// The uffd (non-blocking), readable when faults are queued. Poll it; do not close it.
    pub fn fault_fd(&self) -> RawFd {
        self.uffd()
    }

    /// Reads up to `out.len()` queued faults without blocking; returns how many (0: none).
    /// The faulting threads stay blocked until their pages are installed (or woken).
    /// Refused while an [`crate::FaultServer`] serves the region (it reads them itself), and under
    /// SIGBUS delivery.
    pub fn read_faults(&self, out: &mut [Fault]) -> Result<usize> {
        if self.delivery() != Delivery::Thread {
            return Err(Error::Unsupported(
                "reading faults of a SIGBUS-delivery region",
            ));
        }
        if self.is_served() {
            return Err(Error::AlreadyServed);
        }
        let mut messages = [raw::empty_message(); BATCH];
        let wanted = out.len().min(BATCH);
        let count = raw::read_messages(self.uffd(), &mut messages[..wanted]).map_err(|errno| {
            Error::Setup {
                call: "read(userfaultfd)",
                errno,
            }
        })?;
        let mut filled = 0;
        for message in &messages[..count] {
            if let Some(fault) = self.decode_fault(message) {
                out[filled] = fault;
                filled += 1;
            }
        }
        Ok(filled)
    }

    /// The fault a uffd message reports, if it is a page fault inside this region.
    pub(crate) fn decode_fault(&self, message: &sys::uffd_msg) -> Option<Fault> {
        let (flags, address) = raw::page_fault_of(message)?;
        let address = usize::try_from(address).ok()?;
        let page = self.page_of(address)?;
        let kind = if flags & sys::UFFD_PAGEFAULT_FLAG_WP != 0 {
            FaultKind::WriteProtect
        } else if flags & sys::UFFD_PAGEFAULT_FLAG_WRITE != 0 {
            FaultKind::Write
        } else {
            FaultKind::Read
        };
        Some(Fault {
            page,
            address,
            kind,
        })
    }
}
