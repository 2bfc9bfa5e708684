//! Reliable-connected queue pair (`ibv_create_qp`, `ibv_modify_qp` INIT → RTR → RTS,
//! `ibv_post_send`, `ibv_post_recv`).

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use rdma_sys as ffi;

use super::cq::{CompletionQueue, CqInner};
use super::mr::{PdInner, ProtectionDomain, remote_access};
use super::slots::SlotPool;
use crate::{Error, Result};

/// Where a one-sided READ or WRITE lands in the peer's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAccess {
    /// Address in the peer's registered memory.
    pub addr: u64,
    /// The peer's remote key for it.
    pub rkey: u32,
}

/// The peer's side of a connection, as `ibv_modify_qp(RTR)` needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathTarget {
    pub(crate) port: u8,
    pub(crate) mtu: u32,
    pub(crate) sgid_index: u8,
    pub(crate) dgid: [u8; 16],
    pub(crate) dlid: u16,
    pub(crate) dest_qp_num: u32,
    pub(crate) rq_psn: u32,
}

/// An RC queue pair. Destroyed on drop, before the CQ, PD and any slot pool it used (it holds
/// `Arc`s to them), so the device never touches freed memory.
pub struct QueuePair {
    raw: NonNull<ffi::ibv_qp>,
    // Pools this QP has posted buffers of: kept alive until the QP is destroyed.
    pools: Mutex<Vec<Arc<SlotPool>>>,
    _cq: Arc<CqInner>,
    _pd: Arc<PdInner>,
}

// SAFETY: posting to a QP is thread-safe in libibverbs; state changes are made before sharing.
unsafe impl Send for QueuePair {}
// SAFETY: as above.
unsafe impl Sync for QueuePair {}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: created by `ibv_create_qp`, destroyed once; `pools` are dropped after.
        unsafe { ffi::ibv_destroy_qp(self.raw.as_ptr()) };
    }
}

impl QueuePair {
    /// Creates an RC queue pair whose sends and receives complete on `cq`.
    pub fn new_rc(
        pd: &ProtectionDomain,
        cq: &CompletionQueue,
        max_send_wr: u32,
        max_recv_wr: u32,
    ) -> Result<Self> {
        // SAFETY: all-zero is a valid `ibv_qp_init_attr` (null pointers, zero integers).
        let mut attr: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = cq.inner.raw.as_ptr();
        attr.recv_cq = cq.inner.raw.as_ptr();
        attr.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
        attr.sq_sig_all = 0;
        attr.cap.max_send_wr = max_send_wr;
        attr.cap.max_recv_wr = max_recv_wr;
        attr.cap.max_send_sge = 1;
        attr.cap.max_recv_sge = 1;
        // SAFETY: the PD and CQ are live; `attr` is fully initialised.
        let raw = unsafe { ffi::ibv_create_qp(pd.inner.raw.as_ptr(), &mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::verb("ibv_create_qp", 0))?;
        Ok(QueuePair {
            raw,
            pools: Mutex::new(Vec::new()),
            _cq: cq.inner.clone(),
            _pd: pd.inner.clone(),
        })
    }

    /// The queue pair number peers address.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP lives as long as `self`; `qp_num` never changes.
        unsafe { self.raw.as_ref().qp_num }
    }

    /// Moves the QP through RTR and RTS towards `target`, sending from `sq_psn`. It must be
    /// in INIT ([`QueuePair::to_init`]), where its receives can be posted first.
    pub(crate) fn connect(&self, target: &PathTarget, sq_psn: u32) -> Result<()> {
        self.to_rtr(target)?;
        self.to_rts(sq_psn)
    }

    /// RESET → INIT on `port`, with remote READ and WRITE allowed.
    pub(crate) fn to_init(&self, port: u8) -> Result<()> {
        let mut attr = zeroed_attr();
        attr.qp_state = ffi::ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = port;
        attr.qp_access_flags = remote_access().0;
        use ffi::ibv_qp_attr_mask as M;
        let mask = M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS;
        self.modify(&mut attr, mask, "ibv_modify_qp(INIT)")
    }

    fn to_rtr(&self, target: &PathTarget) -> Result<()> {
        let mut attr = zeroed_attr();
        attr.qp_state = ffi::ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = target.mtu;
        attr.dest_qp_num = target.dest_qp_num;
        attr.rq_psn = target.rq_psn;
        attr.max_dest_rd_atomic = 16;
        // RNR NAK wait 163.84 ms (code 28): receives are reposted at once, so an RNR means the
        // peer's transport thread is starved; rnr_retry below bounds the total wait.
        attr.min_rnr_timer = 28;
        attr.ah_attr.is_global = 1;
        attr.ah_attr.dlid = target.dlid;
        attr.ah_attr.port_num = target.port;
        attr.ah_attr.grh.dgid = ffi::ibv_gid { raw: target.dgid };
        attr.ah_attr.grh.sgid_index = target.sgid_index;
        attr.ah_attr.grh.hop_limit = 64;
        use ffi::ibv_qp_attr_mask as M;
        let mask = M::IBV_QP_STATE
            | M::IBV_QP_AV
            | M::IBV_QP_PATH_MTU
            | M::IBV_QP_DEST_QPN
            | M::IBV_QP_RQ_PSN
            | M::IBV_QP_MAX_DEST_RD_ATOMIC
            | M::IBV_QP_MIN_RNR_TIMER;
        self.modify(&mut attr, mask, "ibv_modify_qp(RTR)")
    }

    fn to_rts(&self, sq_psn: u32) -> Result<()> {
        let mut attr = zeroed_attr();
        attr.qp_state = ffi::ibv_qp_state::IBV_QPS_RTS;
        attr.sq_psn = sq_psn;
        // Local ACK timeout 4.096 µs × 2^18 ≈ 1.07 s, 7 retries: a dead peer fails a work
        // request within ~8 s. Generous because Soft-RoCE under an emulated CPU is slow.
        attr.timeout = 18;
        attr.retry_cnt = 7;
        // 6 RNR retries (7 would mean forever): every wait is bounded.
        attr.rnr_retry = 6;
        attr.max_rd_atomic = 16;
        use ffi::ibv_qp_attr_mask as M;
        let mask = M::IBV_QP_STATE
            | M::IBV_QP_SQ_PSN
            | M::IBV_QP_TIMEOUT
            | M::IBV_QP_RETRY_CNT
            | M::IBV_QP_RNR_RETRY
            | M::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut attr, mask, "ibv_modify_qp(RTS)")
    }

    fn modify(
        &self,
        attr: &mut ffi::ibv_qp_attr,
        mask: ffi::ibv_qp_attr_mask,
        verb: &'static str,
    ) -> Result<()> {
        // SAFETY: the QP is live and `attr` is initialised for every bit in `mask`.
        let rc = unsafe { ffi::ibv_modify_qp(self.raw.as_ptr(), attr, mask.0 as i32) };
        if rc != 0 {
            return Err(Error::verb(verb, rc));
        }
        Ok(())
    }

    /// Keeps `pool` alive as long as this QP may have its buffers in flight.
    pub(crate) fn retain_pool(&self, pool: &Arc<SlotPool>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if !pools.iter().any(|p| Arc::ptr_eq(p, pool)) {
            pools.push(pool.clone());
        }
    }

    /// Posts one send-queue work request (signalled) with one scatter/gather entry.
    ///
    /// # Safety
    /// `sge` must name registered memory that follows the module's buffer contract, and the
    /// pool owning it must have been passed to [`QueuePair::retain_pool`].
    pub(crate) unsafe fn post_send_wr(
        &self,
        wr_id: u64,
        opcode: ffi::ibv_wr_opcode::Type,
        mut sge: ffi::ibv_sge,
        remote: Option<RemoteAccess>,
        verb: &'static str,
    ) -> Result<()> {
        // SAFETY: all-zero is a valid `ibv_send_wr` (null pointers, zero integers, unions).
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = opcode;
        wr.send_flags = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        if let Some(remote) = remote {
            wr.wr.rdma = ffi::rdma_t {
                remote_addr: remote.addr,
                rkey: remote.rkey,
            };
        }
        let mut bad = std::ptr::null_mut();
        // SAFETY: the QP is live, `wr` and `sge` outlive the call (the provider copies them),
        // and the caller upholds the buffer contract for the memory `sge` names.
        let rc = unsafe { ffi::ibv_post_send(self.raw.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::verb(verb, rc));
        }
        Ok(())
    }

    /// Posts one receive with one scatter/gather entry.
    ///
    /// # Safety
    /// As for [`QueuePair::post_send_wr`].
    pub(crate) unsafe fn post_recv_wr(&self, wr_id: u64, mut sge: ffi::ibv_sge) -> Result<()> {
        let mut wr = ffi::ibv_recv_wr {
            wr_id,
            next: std::ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad = std::ptr::null_mut();
        // SAFETY: as in `post_send_wr`.
        let rc = unsafe { ffi::ibv_post_recv(self.raw.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::verb("ibv_post_recv", rc));
        }
        Ok(())
    }
}

fn zeroed_attr() -> ffi::ibv_qp_attr {
    // SAFETY: all-zero is a valid `ibv_qp_attr` (integers and plain structs of integers).
    unsafe { std::mem::zeroed() }
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qp_num", &self.qp_num())
            .finish()
    }
}
