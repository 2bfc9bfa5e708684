//! Protection domain (`ibv_alloc_pd`) and memory regions (`ibv_reg_mr`).

use std::ptr::NonNull;
use std::sync::Arc;

use dsm_core::HomeMemory;
use rdma_sys as ffi;

use super::context::{Context, ContextInner};
use crate::{Error, Result};

/// A protection domain; deallocated when the last object made in it is gone.
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(crate) inner: Arc<PdInner>,
}

pub(crate) struct PdInner {
    pub(crate) raw: NonNull<ffi::ibv_pd>,
    // Dropped after `raw` is deallocated (Drop runs before fields drop).
    _context: Arc<ContextInner>,
}

// SAFETY: verbs objects may be used from any thread.
unsafe impl Send for PdInner {}
// SAFETY: as above.
unsafe impl Sync for PdInner {}

impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: allocated by `ibv_alloc_pd`; every MR and QP holds an `Arc` to us.
        unsafe { ffi::ibv_dealloc_pd(self.raw.as_ptr()) };
    }
}

impl ProtectionDomain {
    /// Allocates a protection domain on `context` (`ibv_alloc_pd`).
    pub fn new(context: &Context) -> Result<Self> {
        // SAFETY: the context is open.
        let raw = unsafe { ffi::ibv_alloc_pd(context.inner.raw.as_ptr()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::verb("ibv_alloc_pd", 0))?;
        Ok(ProtectionDomain {
            inner: Arc::new(PdInner {
                raw,
                _context: context.inner.clone(),
            }),
        })
    }
}

impl std::fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtectionDomain")
            .field("raw", &self.inner.raw)
            .finish()
    }
}

/// A registered memory region; deregistered on drop (peers' accesses then fail remotely).
pub struct MemoryRegion {
    raw: NonNull<ffi::ibv_mr>,
    _pd: Arc<PdInner>,
}

// SAFETY: an MR handle is only read (keys) or deregistered once.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Registers a home's master copies for remote READ and WRITE (and local write).
    pub fn register_home(pd: &ProtectionDomain, memory: HomeMemory) -> Result<Self> {
        let len = memory.pages() as usize * dsm_wire::PAGE_SIZE;
        // SAFETY: `HomeMemory::new`'s contract keeps `base..base+len` valid until the region is
        // withdrawn, which drops this MR first.
        unsafe { Self::register(pd, memory.base(), len, remote_access()) }
    }

    /// Registers `len` bytes at `addr`.
    ///
    /// # Safety
    /// The memory must stay allocated until this region is dropped, and nothing may rely on
    /// its contents while a posted work request naming it is in flight (see the module's
    /// buffer contract).
    pub(crate) unsafe fn register(
        pd: &ProtectionDomain,
        addr: *mut u8,
        len: usize,
        access: ffi::ibv_access_flags,
    ) -> Result<Self> {
        // SAFETY: the caller keeps the memory valid for the region's life; the PD is live.
        let raw =
            unsafe { ffi::ibv_reg_mr(pd.inner.raw.as_ptr(), addr.cast(), len, access.0 as i32) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::verb("ibv_reg_mr", 0))?;
        Ok(MemoryRegion {
            raw,
            _pd: pd.inner.clone(),
        })
    }

    fn attr(&self) -> &ffi::ibv_mr {
        // SAFETY: the MR lives as long as `self`, and the library never changes these fields.
        unsafe { self.raw.as_ref() }
    }

    /// First byte's address, as peers name it.
    pub fn addr(&self) -> u64 {
        self.attr().addr as u64
    }

    /// Length registered.
    pub fn len(&self) -> u64 {
        self.attr().length as u64
    }

    /// True for a zero-length region (never made by this crate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Local key (for scatter/gather entries).
    pub fn lkey(&self) -> u32 {
        self.attr().lkey
    }

    /// Remote key (for peers' READ and WRITE).
    pub fn rkey(&self) -> u32 {
        self.attr().rkey
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered by `ibv_reg_mr`, deregistered once.
        unsafe { ffi::ibv_dereg_mr(self.raw.as_ptr()) };
    }
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .field("rkey", &format_args!("{:#x}", self.rkey()))
            .finish()
    }
}

/// Access for memory peers read and write: local write, remote read and write.
pub(crate) fn remote_access() -> ffi::ibv_access_flags {
    ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
        | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ
        | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
}
