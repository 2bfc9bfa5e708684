//! State shared by the API side (any thread) and the transport thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dsm_core::{EventSink, TransportError, TransportEvent};
use dsm_wire::{Alloc, Limits, Message, NodeId, PAGE_SIZE, PageId};

use super::connector::peer_tag;
use crate::raw::{
    CompletionQueue, Context, MemoryRegion, Op, ProtectionDomain, QueuePair, RemoteAccess, Slot,
    SlotPool,
};
use crate::remote::RemoteRegion;
use crate::{Error, RdmaConfig, Result};

/// Pool ids carried in work request ids.
pub(crate) const STAGING_POOL: u8 = 1;
pub(crate) const SEND_POOL: u8 = 2;
pub(crate) const RECV_POOL: u8 = 3;

/// Most frames queued for SEND slots; beyond it `send` fails `Exhausted`.
const BACKLOG_LIMIT: usize = 4096;
/// Most regions one peer may have announced at once: its keys are kept until withdrawn, so
/// a peer announcing without end must not grow this node's memory without end.
const MAX_REGIONS_PER_PEER: usize = 1 << 16;

/// The registered buffers: page-sized staging slots for READ/WRITE, message slots for SEND
/// and RECV.
#[derive(Debug)]
pub(crate) struct Pools {
    pub(crate) staging: Arc<SlotPool>,
    pub(crate) send: Arc<SlotPool>,
    pub(crate) recv: Arc<SlotPool>,
}

impl Pools {
    pub(crate) fn new(pd: &ProtectionDomain, config: &RdmaConfig, peers: u32) -> Result<Self> {
        Ok(Pools {
            staging: SlotPool::new(pd, STAGING_POOL, PAGE_SIZE, config.staging_slots)?,
            send: SlotPool::new(pd, SEND_POOL, config.message_len, config.send_slots)?,
            recv: SlotPool::new(
                pd,
                RECV_POOL,
                config.message_len,
                config.recv_depth * peers.max(1),
            )?,
        })
    }
}

/// A connected peer.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) node: NodeId,
    pub(crate) qp: QueuePair,
    failed: AtomicBool,
}

impl Peer {
    pub(crate) fn new(node: NodeId, qp: QueuePair) -> Self {
        Peer {
            node,
            qp,
            failed: AtomicBool::new(false),
        }
    }
}

/// Everything the transport owns. Field order is drop order: queue pairs go first (each also
/// keeps the pools and CQ it uses alive), the context last.
pub(crate) struct Shared {
    pub(crate) local: NodeId,
    cluster: u64,
    pub(crate) limits: Limits,
    pub(crate) peers: Vec<Option<Peer>>,
    exposed: Mutex<HashMap<u32, MemoryRegion>>,
    remote: RwLock<HashMap<(NodeId, u32), RemoteRegion>>,
    /// Frames waiting for a SEND slot, oldest first.
    backlog: Mutex<VecDeque<(NodeId, Vec<u8>)>>,
    /// Token of the READ or WRITE using each staging slot.
    tokens: Mutex<Vec<u64>>,
    pub(crate) pools: Pools,
    pub(crate) cq: CompletionQueue,
    pd: ProtectionDomain,
    _context: Context,
    pub(crate) sink: Arc<dyn EventSink>,
    pub(crate) stop: AtomicBool,
    pub(crate) spin: std::time::Duration,
}

impl Shared {
    #[allow(clippy::too_many_arguments)] // one call site, the connector handing everything over
    pub(crate) fn new(
        local: NodeId,
        config: &RdmaConfig,
        peers: Vec<Option<Peer>>,
        pools: Pools,
        cq: CompletionQueue,
        pd: ProtectionDomain,
        context: Context,
        sink: Arc<dyn EventSink>,
    ) -> Self {
        Shared {
            local,
            cluster: config.cluster,
            limits: Limits::new(config.cluster),
            peers,
            exposed: Mutex::new(HashMap::new()),
            remote: RwLock::new(HashMap::new()),
            backlog: Mutex::new(VecDeque::new()),
            tokens: Mutex::new(vec![0; pools.staging.capacity()]),
            pools,
            cq,
            pd,
            _context: context,
            sink,
            stop: AtomicBool::new(false),
            spin: config.spin,
        }
    }

    /// A connected, live peer.
    pub(crate) fn peer(&self, node: NodeId) -> std::result::Result<&Peer, TransportError> {
        let peer = self
            .peers
            .get(node as usize)
            .and_then(Option::as_ref)
            .ok_or(TransportError::UnknownPeer(node))?;
        if peer.failed.load(Ordering::Acquire) {
            return Err(TransportError::PeerFailed {
                node,
                reason: "its queue pair failed".into(),
            });
        }
        Ok(peer)
    }

    /// Marks `node` failed and tells the sink, once.
    pub(crate) fn peer_failed(&self, node: NodeId, reason: String) {
        let Some(peer) = self.peers.get(node as usize).and_then(Option::as_ref) else {
            return;
        };
        if !peer.failed.swap(true, Ordering::AcqRel) {
            tracing::warn!(node, %reason, "rdma peer failed");
            self.sink
                .deliver(TransportEvent::PeerFailed { node, reason });
        }
    }

    pub(crate) fn set_token(&self, slot: &Slot, token: u64) {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())[slot.index() as usize] = token;
    }

    pub(crate) fn token(&self, slot: &Slot) -> u64 {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())[slot.index() as usize]
    }

    /// Encodes `message` and posts it as one SEND to `to`, or queues it behind earlier
    /// frames when every SEND slot is in flight (the transport thread posts it later).
    pub(crate) fn send(&self, to: NodeId, message: &Message) -> Result<()> {
        self.peer(to).map_err(|_| Error::UnknownPeer(to))?;
        let frame = dsm_wire::encode(message, self.cluster, self.local);
        let limit = self.pools.send.slot_len();
        if frame.len() > limit {
            return Err(Error::MessageTooLarge {
                len: frame.len(),
                limit,
            });
        }
        let mut backlog = self.backlog();
        // Never post around a non-empty backlog: that would reorder a peer's frames.
        if backlog.is_empty()
            && let Some(slot) = self.pools.send.acquire()
        {
            return self.post_frame(to, &frame, slot);
        }
        if backlog.len() >= BACKLOG_LIMIT {
            return Err(Error::Exhausted {
                what: "SEND backlog",
                capacity: BACKLOG_LIMIT,
            });
        }
        backlog.push_back((to, frame));
        Ok(())
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, VecDeque<(NodeId, Vec<u8>)>> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn post_frame(&self, to: NodeId, frame: &[u8], mut slot: Slot) -> Result<()> {
        let pool = &self.pools.send;
        let Ok(peer) = self.peer(to) else {
            pool.release(slot);
            return Err(Error::UnknownPeer(to));
        };
        pool.bytes_mut(&mut slot)[..frame.len()].copy_from_slice(frame);
        pool.post(&peer.qp, slot, Op::Send, frame.len(), peer_tag(to), None)
            .map_err(|(error, slot)| {
                pool.release(slot);
                error
            })
    }

    /// A SEND completed: its slot goes back, and queued frames take free slots, in order.
    /// Under the backlog lock, so a concurrent `send` either sees the slot or is drained here.
    pub(crate) fn send_done(&self, slot: Slot) {
        let mut backlog = self.backlog();
        self.pools.send.release(slot);
        while !backlog.is_empty() {
            let Some(slot) = self.pools.send.acquire() else {
                break;
            };
            let Some((to, frame)) = backlog.pop_front() else {
                self.pools.send.release(slot);
                break;
            };
            if let Err(error) = self.post_frame(to, &frame, slot) {
                self.peer_failed(to, error.to_string());
            }
        }
    }

    /// Posts a READ or WRITE of one page between a staging slot and `remote` on `home`.
    pub(crate) fn post_page(
        &self,
        home: NodeId,
        page: PageId,
        op: Op,
        data: Option<&[u8]>,
        token: u64,
    ) -> std::result::Result<(), TransportError> {
        let peer = self.peer(home)?;
        let remote = self.remote_page(home, page)?;
        let pool = &self.pools.staging;
        let mut slot = pool.acquire().ok_or(Error::Exhausted {
            what: "staging",
            capacity: pool.capacity(),
        })?;
        if let Some(data) = data {
            pool.bytes_mut(&mut slot).copy_from_slice(data);
        }
        // Before posting: the completion may be polled before `post` returns.
        self.set_token(&slot, token);
        pool.post(&peer.qp, slot, op, PAGE_SIZE, peer_tag(home), Some(remote))
            .map_err(|(error, slot)| {
                pool.release(slot);
                error.into()
            })
    }

    /// Where `page` lives on `home`, checked against the length `home` announced.
    fn remote_page(
        &self,
        home: NodeId,
        page: PageId,
    ) -> std::result::Result<RemoteAccess, TransportError> {
        let remote = self.remote.read().unwrap_or_else(|e| e.into_inner());
        let region = remote
            .get(&(home, page.region))
            .ok_or(TransportError::NotExposed {
                region: page.region,
                home,
            })?;
        region
            .page(page.page)
            .ok_or(TransportError::OutOfRange { page, home })
    }

    /// Registers `memory` and announces its key to every live peer.
    pub(crate) fn expose(&self, region: u32, memory: dsm_core::HomeMemory) -> Result<()> {
        let key = {
            let mut exposed = self.exposed.lock().unwrap_or_else(|e| e.into_inner());
            if exposed.contains_key(&region) {
                return Err(Error::AlreadyExposed(region));
            }
            let mr = MemoryRegion::register_home(&self.pd, memory)?;
            let key = Alloc::RegionKey {
                region,
                addr: mr.addr(),
                len: mr.len(),
                rkey: mr.rkey(),
            };
            exposed.insert(region, mr);
            key
        };
        self.announce(&Message::Alloc(key))
    }

    /// Deregisters `region` and announces a zero-length key (withdrawn) to every live peer.
    pub(crate) fn withdraw(&self, region: u32) -> std::result::Result<(), TransportError> {
        let removed = self
            .exposed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&region);
        if removed.is_none() {
            return Err(TransportError::NotExposed {
                region,
                home: self.local,
            });
        }
        let key = Alloc::RegionKey {
            region,
            addr: 0,
            len: 0,
            rkey: 0,
        };
        Ok(self.announce(&Message::Alloc(key))?)
    }

    fn announce(&self, message: &Message) -> Result<()> {
        let mut live = self
            .peers
            .iter()
            .flatten()
            .filter(|p| !p.failed.load(Ordering::Acquire));
        live.try_for_each(|peer| self.send(peer.node, message))
    }

    /// The key of a region this node exposes, as peers need it.
    pub(crate) fn region_key(&self, region: u32) -> Option<Alloc> {
        let exposed = self.exposed.lock().unwrap_or_else(|e| e.into_inner());
        exposed.get(&region).map(|mr| Alloc::RegionKey {
            region,
            addr: mr.addr(),
            len: mr.len(),
            rkey: mr.rkey(),
        })
    }

    /// True once `peer`'s key for `region` has arrived (READs of it can be posted).
    pub(crate) fn has_remote_region(&self, peer: NodeId, region: u32) -> bool {
        let remote = self.remote.read().unwrap_or_else(|e| e.into_inner());
        remote.contains_key(&(peer, region))
    }

    /// Deregisters every exposed region without telling peers (the node is going away):
    /// afterwards no peer can reach this node's memory, whatever it still has in flight.
    pub(crate) fn close(&self) {
        self.exposed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Records (or, with `len == 0`, forgets) `peer`'s announced region after checking it.
    pub(crate) fn add_remote_region(&self, peer: NodeId, key: &Alloc) -> Result<()> {
        let Alloc::RegionKey {
            region,
            addr,
            len,
            rkey,
        } = *key
        else {
            return Err(Error::BadRegionKey {
                peer,
                region: 0,
                reason: "not a RegionKey message",
            });
        };
        let mut remote = self.remote.write().unwrap_or_else(|e| e.into_inner());
        if len == 0 {
            remote.remove(&(peer, region));
            return Ok(());
        }
        let checked = RemoteRegion::new(peer, region, addr, len, rkey, &self.limits)?;
        record_remote(&mut remote, peer, region, checked, MAX_REGIONS_PER_PEER)
    }
}

/// Records `peer`'s checked `region`, unless the peer already has `limit` other regions.
fn record_remote(
    remote: &mut HashMap<(NodeId, u32), RemoteRegion>,
    peer: NodeId,
    region: u32,
    checked: RemoteRegion,
    limit: usize,
) -> Result<()> {
    let known = remote.contains_key(&(peer, region));
    if !known && remote.keys().filter(|(p, _)| *p == peer).count() >= limit {
        return Err(Error::BadRegionKey {
            peer,
            region,
            reason: "the peer announced more regions than one peer may have",
        });
    }
    remote.insert((peer, region), checked);
    Ok(())
}

#[cfg(test)]
mod tests {
    use dsm_wire::Limits;

    use super::*;

    #[test]
    fn a_peer_cannot_announce_more_regions_than_the_limit() {
        let key =
            |region: u32| RemoteRegion::new(1, region, 0x10000, 4096, 7, &Limits::new(0)).unwrap();
        let mut remote = HashMap::new();
        for region in 0..3 {
            record_remote(&mut remote, 1, region, key(region), 3).unwrap();
        }
        let refused = record_remote(&mut remote, 1, 3, key(3), 3);
        assert!(matches!(
            refused,
            Err(Error::BadRegionKey {
                peer: 1,
                region: 3,
                ..
            })
        ));
        // Announcing a known region again (a new key) and other peers' regions still work.
        record_remote(&mut remote, 1, 2, key(2), 3).unwrap();
        record_remote(&mut remote, 2, 0, key(0), 3).unwrap();
        assert_eq!(remote.len(), 4);
    }
}
