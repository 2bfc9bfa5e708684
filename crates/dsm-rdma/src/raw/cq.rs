//! Completion queue with its completion channel (`ibv_create_cq`, `ibv_poll_cq`,
//! `ibv_req_notify_cq`, `ibv_get_cq_event`).

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdma_sys as ffi;

use super::context::{Context, ContextInner};
use crate::{Error, Result};

/// A completion queue and the channel that signals it; both destroyed on drop, after every
/// queue pair using them (they hold an `Arc`).
#[derive(Clone)]
pub struct CompletionQueue {
    pub(crate) inner: Arc<CqInner>,
}

pub(crate) struct CqInner {
    pub(crate) raw: NonNull<ffi::ibv_cq>,
    channel: NonNull<ffi::ibv_comp_channel>,
    _context: Arc<ContextInner>,
}

// SAFETY: verbs objects may be used from any thread; polling is serialised by the provider.
unsafe impl Send for CqInner {}
// SAFETY: as above.
unsafe impl Sync for CqInner {}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: created below, destroyed once; the channel outlives the CQ it serves.
        unsafe {
            ffi::ibv_destroy_cq(self.raw.as_ptr());
            ffi::ibv_destroy_comp_channel(self.channel.as_ptr());
        }
    }
}

/// One polled work completion. Made only by [`CompletionQueue::poll`], so holding one proves
/// the device is done with the work request's buffers.
#[derive(Debug)]
pub struct Completion {
    wr_id: u64,
    status: u32,
    vendor_err: u32,
    byte_len: u32,
}

impl Completion {
    /// The work request id given when it was posted.
    pub fn wr_id(&self) -> u64 {
        self.wr_id
    }

    /// Bytes received (RECV) or transferred.
    pub fn byte_len(&self) -> u32 {
        self.byte_len
    }

    /// `IBV_WC_SUCCESS`.
    pub fn is_success(&self) -> bool {
        self.status == ffi::ibv_wc_status::IBV_WC_SUCCESS
    }

    /// `IBV_WC_WR_FLUSH_ERR`: the queue pair went to the error state before this ran.
    pub fn is_flushed(&self) -> bool {
        self.status == ffi::ibv_wc_status::IBV_WC_WR_FLUSH_ERR
    }

    /// The error this completion reports, naming the work request's `opcode`.
    pub fn error(&self, opcode: &'static str) -> Error {
        // SAFETY: `ibv_wc_status_str` returns a static C string for any value.
        let status = unsafe { CStr::from_ptr(ffi::ibv_wc_status_str(self.status)) };
        Error::Completion {
            opcode,
            status: status.to_string_lossy().into_owned(),
            vendor_err: self.vendor_err,
        }
    }
}

impl CompletionQueue {
    /// Creates a queue of `depth` entries and its channel on `context`.
    pub fn new(context: &Context, depth: u32) -> Result<Self> {
        let ctx = context.inner.raw.as_ptr();
        // SAFETY: the context is open.
        let channel = unsafe { ffi::ibv_create_comp_channel(ctx) };
        let channel =
            NonNull::new(channel).ok_or_else(|| Error::verb("ibv_create_comp_channel", 0))?;
        let depth = i32::try_from(depth).unwrap_or(i32::MAX);
        // SAFETY: the context and channel are live; no CQ context pointer is used.
        let raw =
            unsafe { ffi::ibv_create_cq(ctx, depth, std::ptr::null_mut(), channel.as_ptr(), 0) };
        let Some(raw) = NonNull::new(raw) else {
            let error = Error::verb("ibv_create_cq", 0);
            // SAFETY: the channel was created above and serves no CQ.
            unsafe { ffi::ibv_destroy_comp_channel(channel.as_ptr()) };
            return Err(error);
        };
        let cq = CompletionQueue {
            inner: Arc::new(CqInner {
                raw,
                channel,
                _context: context.inner.clone(),
            }),
        };
        cq.set_channel_nonblocking()?;
        Ok(cq)
    }

    fn set_channel_nonblocking(&self) -> Result<()> {
        let fd = self.channel_fd();
        // SAFETY: `fd` is the channel's open descriptor; F_GETFL/F_SETFL touch only its flags.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        };
        if rc < 0 {
            return Err(Error::verb("fcntl(comp_channel, O_NONBLOCK)", 0));
        }
        Ok(())
    }

    fn channel_fd(&self) -> i32 {
        // SAFETY: the channel lives as long as `self`; `fd` is never changed by the library.
        unsafe { self.inner.channel.as_ref().fd }
    }

    /// Polls up to `out.capacity() - out.len()` completions into `out` (`ibv_poll_cq`).
    pub fn poll(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize> {
        const BATCH: usize = 32;
        // SAFETY: all-zero is a valid `ibv_wc` (integers and a union of integers).
        let mut wcs: [ffi::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let want = i32::try_from(max.min(BATCH)).unwrap_or(0);
        // SAFETY: the CQ is live and `wcs` has room for `want` entries.
        let n = unsafe { ffi::ibv_poll_cq(self.inner.raw.as_ptr(), want, wcs.as_mut_ptr()) };
        let n = usize::try_from(n).map_err(|_| Error::verb("ibv_poll_cq", -n))?;
        out.extend(wcs[..n].iter().map(|wc| Completion {
            wr_id: wc.wr_id,
            status: wc.status,
            vendor_err: wc.vendor_err,
            byte_len: wc.byte_len,
        }));
        Ok(n)
    }

    /// Asks for an event on the next completion (`ibv_req_notify_cq`). Poll once more after
    /// arming: a completion that arrived before it raises no event.
    pub fn arm(&self) -> Result<()> {
        // SAFETY: the CQ is live.
        let rc = unsafe { ffi::ibv_req_notify_cq(self.inner.raw.as_ptr(), 0) };
        if rc != 0 {
            return Err(Error::verb("ibv_req_notify_cq", rc));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the armed event; true when it came (and was acknowledged).
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.channel_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(Error::Verb {
                verb: "poll(comp_channel)",
                source: error,
            });
        }
        if rc == 0 {
            return Ok(false);
        }
        self.take_event()
    }

    fn take_event(&self) -> Result<bool> {
        let mut cq = std::ptr::null_mut();
        let mut context = std::ptr::null_mut();
        // SAFETY: the channel is live and non-blocking; the out-pointers are valid.
        let rc =
            unsafe { ffi::ibv_get_cq_event(self.inner.channel.as_ptr(), &mut cq, &mut context) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(false);
            }
            return Err(Error::Verb {
                verb: "ibv_get_cq_event",
                source: error,
            });
        }
        // SAFETY: `cq` is ours (the only CQ on this channel); one event is acknowledged.
        unsafe { ffi::ibv_ack_cq_events(cq, 1) };
        Ok(true)
    }
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("raw", &self.inner.raw)
            .finish()
    }
}
