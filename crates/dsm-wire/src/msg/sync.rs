//! Synchronisation: Ricart–Agrawala and home-queue locks, barriers. Grants carry write notices.

use crate::codec::{Reader, Writer};
use crate::{Error, NodeId, PageId, Result};

/// One node's arrival at a barrier, as a dissemination round passes it on: who arrived,
/// from which collective call (the runtime's barrier, allocation or free), and the pages it
/// wrote. Kept per node so that every node ends with each node's notices, a page written by
/// two nodes included twice, and can check that everyone came from the same call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarrierArrival {
    /// The node that arrived.
    pub node: NodeId,
    /// The kind of collective call it arrived from (0 for a plain barrier).
    pub kind: u32,
    /// Pages it wrote since its previous barrier.
    pub notices: Vec<PageId>,
}

/// Lock and barrier messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMsg {
    /// Ricart–Agrawala REQUEST: (Lamport timestamp, sender) orders competing requests.
    LockRequest {
        /// Lock id.
        lock: u32,
        /// Lamport timestamp of the request.
        timestamp: u64,
    },
    /// Ricart–Agrawala REPLY, with the write notices of the replier's last release of the lock.
    LockReply {
        /// Lock id.
        lock: u32,
        /// Timestamp of the request answered.
        timestamp: u64,
        /// Pages the acquirer must invalidate.
        notices: Vec<PageId>,
    },
    /// Home-queue lock: ask the lock's home for the lock.
    LockAcquire {
        /// Lock id.
        lock: u32,
        /// Requester's request sequence number for this lock (1, 2, ...).
        seq: u64,
    },
    /// Home-queue lock: the home grants request `seq` to the receiver.
    LockGrant {
        /// Lock id.
        lock: u32,
        /// Sequence number of the request granted.
        seq: u64,
        /// Pages the acquirer must invalidate (released by others since its last grant).
        notices: Vec<PageId>,
    },
    /// Home-queue lock: the holder gives the lock back to its home.
    LockRelease {
        /// Lock id.
        lock: u32,
        /// Sequence number of the request whose hold ends.
        seq: u64,
        /// Pages written while holding it.
        notices: Vec<PageId>,
    },
    /// Home-queue lock: the home tells the holder of request `seq` that others are queued, so
    /// it stops handing the lock between its own threads.
    LockRecall {
        /// Lock id.
        lock: u32,
        /// Sequence number of the hold recalled.
        seq: u64,
    },
    /// A node reached barrier `epoch` (round `round` of a dissemination barrier).
    BarrierArrive {
        /// Barrier instance.
        epoch: u64,
        /// Dissemination round.
        round: u32,
        /// Write notices gathered so far.
        notices: Vec<PageId>,
    },
    /// Dissemination barrier, round `round` of barrier `epoch`: every arrival the sender has
    /// heard of so far, its own included.
    BarrierRound {
        /// Barrier instance.
        epoch: u64,
        /// Dissemination round.
        round: u32,
        /// Arrivals gathered so far, one per node, in node order.
        arrivals: Vec<BarrierArrival>,
    },
    /// Everyone reached barrier `epoch` (central barrier's release).
    BarrierRelease {
        /// Barrier instance.
        epoch: u64,
        /// Write notices from every node.
        notices: Vec<PageId>,
    },
    /// Central barrier: rank 0 refuses barrier instance `epoch` because the nodes arrived
    /// from different collective calls (`round` carries each call's kind); every waiter
    /// fails.
    BarrierAbort {
        /// Barrier instance.
        epoch: u64,
    },
}

pub(crate) const LOCK_REQUEST: u16 = 0x0301;
pub(crate) const LOCK_REPLY: u16 = 0x0302;
pub(crate) const LOCK_ACQUIRE: u16 = 0x0303;
pub(crate) const LOCK_GRANT: u16 = 0x0304;
pub(crate) const LOCK_RELEASE: u16 = 0x0305;
pub(crate) const BARRIER_ARRIVE: u16 = 0x0306;
pub(crate) const BARRIER_RELEASE: u16 = 0x0307;
pub(crate) const LOCK_RECALL: u16 = 0x0308;
pub(crate) const BARRIER_ABORT: u16 = 0x0309;
pub(crate) const BARRIER_ROUND: u16 = 0x030a;

/// Most arrivals one round may carry (a cluster's nodes; `NodeId` is a u32, but a round of a
/// larger cluster than this is refused before anything is allocated for it).
const MAX_ARRIVALS: usize = 1 << 16;

impl SyncMsg {
    pub(crate) fn command(&self) -> u16 {
        match self {
            SyncMsg::LockRequest { .. } => LOCK_REQUEST,
            SyncMsg::LockReply { .. } => LOCK_REPLY,
            SyncMsg::LockAcquire { .. } => LOCK_ACQUIRE,
            SyncMsg::LockGrant { .. } => LOCK_GRANT,
            SyncMsg::LockRelease { .. } => LOCK_RELEASE,
            SyncMsg::BarrierArrive { .. } => BARRIER_ARRIVE,
            SyncMsg::BarrierRelease { .. } => BARRIER_RELEASE,
            SyncMsg::LockRecall { .. } => LOCK_RECALL,
            SyncMsg::BarrierAbort { .. } => BARRIER_ABORT,
            SyncMsg::BarrierRound { .. } => BARRIER_ROUND,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        match self {
            SyncMsg::LockRequest { lock, timestamp } => {
                w.u32(*lock);
                w.u64(*timestamp);
            }
            SyncMsg::LockReply {
                lock,
                timestamp,
                notices,
            } => {
                w.u32(*lock);
                w.u64(*timestamp);
                w.page_ids(notices);
            }
            SyncMsg::LockAcquire { lock, seq } => {
                w.u32(*lock);
                w.u64(*seq);
            }
            SyncMsg::LockGrant { lock, seq, notices }
            | SyncMsg::LockRelease { lock, seq, notices } => {
                w.u32(*lock);
                w.u64(*seq);
                w.page_ids(notices);
            }
            SyncMsg::LockRecall { lock, seq } => {
                w.u32(*lock);
                w.u64(*seq);
            }
            SyncMsg::BarrierArrive {
                epoch,
                round,
                notices,
            } => {
                w.u64(*epoch);
                w.u32(*round);
                w.page_ids(notices);
            }
            SyncMsg::BarrierRelease { epoch, notices } => {
                w.u64(*epoch);
                w.page_ids(notices);
            }
            SyncMsg::BarrierAbort { epoch } => w.u64(*epoch),
            SyncMsg::BarrierRound {
                epoch,
                round,
                arrivals,
            } => {
                w.u64(*epoch);
                w.u32(*round);
                w.u32(crate::codec::len_u32(arrivals.len()));
                for arrival in arrivals {
                    w.u32(arrival.node);
                    w.u32(arrival.kind);
                    w.page_ids(&arrival.notices);
                }
            }
        }
    }

    pub(crate) fn decode(command: u16, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match command {
            LOCK_REQUEST => SyncMsg::LockRequest {
                lock: r.u32("lock")?,
                timestamp: r.u64("timestamp")?,
            },
            LOCK_REPLY => SyncMsg::LockReply {
                lock: r.u32("lock")?,
                timestamp: r.u64("timestamp")?,
                notices: r.page_ids()?,
            },
            LOCK_ACQUIRE => SyncMsg::LockAcquire {
                lock: r.u32("lock")?,
                seq: r.u64("seq")?,
            },
            LOCK_GRANT => SyncMsg::LockGrant {
                lock: r.u32("lock")?,
                seq: r.u64("seq")?,
                notices: r.page_ids()?,
            },
            LOCK_RELEASE => SyncMsg::LockRelease {
                lock: r.u32("lock")?,
                seq: r.u64("seq")?,
                notices: r.page_ids()?,
            },
            LOCK_RECALL => SyncMsg::LockRecall {
                lock: r.u32("lock")?,
                seq: r.u64("seq")?,
            },
            BARRIER_ARRIVE => SyncMsg::BarrierArrive {
                epoch: r.u64("epoch")?,
                round: r.u32("round")?,
                notices: r.page_ids()?,
            },
            BARRIER_RELEASE => SyncMsg::BarrierRelease {
                epoch: r.u64("epoch")?,
                notices: r.page_ids()?,
            },
            BARRIER_ABORT => SyncMsg::BarrierAbort {
                epoch: r.u64("epoch")?,
            },
            BARRIER_ROUND => SyncMsg::BarrierRound {
                epoch: r.u64("epoch")?,
                round: r.u32("round")?,
                arrivals: decode_arrivals(r)?,
            },
            other => return Err(Error::UnknownCommand(other)),
        })
    }
}

/// A counted list of arrivals; each needs at least 12 bytes, checked before allocating.
fn decode_arrivals(r: &mut Reader<'_>) -> Result<Vec<BarrierArrival>> {
    let n = r.count("barrier arrivals", MAX_ARRIVALS)?;
    r.expect_at_least(n * 12, "barrier arrivals")?;
    (0..n)
        .map(|_| {
            Ok(BarrierArrival {
                node: r.u32("arrival node")?,
                kind: r.u32("arrival kind")?,
                notices: r.page_ids()?,
            })
        })
        .collect()
}
