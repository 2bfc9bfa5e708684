//! Setting up: open the device, make one RC queue pair per peer, exchange connection data,
//! connect, start the transport thread.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use dsm_core::EventSink;
use dsm_wire::{NodeId, RdmaConnInfo};

use super::RdmaTransport;
use super::shared::{Peer, Pools, Shared};
use crate::raw::{CompletionQueue, Context, Op, PathTarget, PortInfo, ProtectionDomain, QueuePair};
use crate::{Error, RdmaConfig, Result};

/// Queue pair numbers and PSNs are 24-bit.
const MAX_24: u32 = 0xff_ffff;

/// A node's RDMA resources before the transport starts: one queue pair per peer, waiting for
/// the peer's [`RdmaConnInfo`] (exchanged out of band: the join protocol over TCP, or a pipe
/// in tests).
pub struct RdmaConnector {
    local: NodeId,
    config: RdmaConfig,
    port: PortInfo,
    gid_index: u8,
    gid: [u8; 16],
    peers: Vec<Option<PendingPeer>>,
    pools: Pools,
    cq: CompletionQueue,
    pd: ProtectionDomain,
    context: Context,
}

struct PendingPeer {
    qp: QueuePair,
    psn: u32,
    connected: bool,
}

impl RdmaConnector {
    /// Opens the device for node `local` of a `size`-node cluster and makes a queue pair for
    /// every other node. [`Error::NoDevice`] when the machine has no RDMA device.
    pub fn open(local: NodeId, size: u32, config: RdmaConfig) -> Result<Self> {
        assert!(
            local < size && size <= u32::from(u16::MAX),
            "rank {local} of {size}"
        );
        let context = Context::open(config.device.as_deref())?;
        let port = context.query_port(config.port)?;
        if !port.active {
            return Err(Error::PortNotActive {
                device: context.name().into(),
                port: config.port,
            });
        }
        let gid_index = match config.gid_index {
            Some(index) => index,
            None => find_ipv4_gid(&context, config.port, port.gid_table_len)?,
        };
        let gid = context.query_gid(config.port, gid_index)?;
        let pd = ProtectionDomain::new(&context)?;
        let pools = Pools::new(&pd, &config, size - 1)?;
        let peer_count = size - 1;
        let send_depth = config.staging_slots + config.send_slots;
        let cq_depth = send_depth + config.recv_depth * peer_count + send_depth * peer_count;
        let cq = CompletionQueue::new(&context, cq_depth)?;
        let peers = (0..size)
            .map(|node| {
                (node != local)
                    .then(|| {
                        let qp = QueuePair::new_rc(&pd, &cq, send_depth, config.recv_depth)?;
                        // INIT now: receives can only be posted from INIT on.
                        qp.to_init(config.port)?;
                        Ok(PendingPeer {
                            qp,
                            psn: random_psn(node),
                            connected: false,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(RdmaConnector {
            local,
            config,
            port,
            gid_index,
            gid,
            peers,
            pools,
            cq,
            pd,
            context,
        })
    }

    /// The device in use.
    pub fn device(&self) -> &str {
        self.context.name()
    }

    /// The connection data `peer` needs to reach the queue pair kept for it.
    pub fn conn_info(&self, peer: NodeId) -> Result<RdmaConnInfo> {
        let pending = self.pending(peer)?;
        Ok(RdmaConnInfo {
            qp_num: pending.qp.qp_num(),
            psn: pending.psn,
            lid: self.port.lid,
            gid_index: self.gid_index,
            gid: self.gid,
        })
    }

    fn pending(&self, peer: NodeId) -> Result<&PendingPeer> {
        self.peers
            .get(peer as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::UnknownPeer(peer))
    }

    /// Connects the queue pair kept for `peer` to the peer's (INIT → RTR → RTS), after
    /// checking its data and posting the receives for its messages.
    pub fn connect(&mut self, peer: NodeId, remote: &RdmaConnInfo) -> Result<()> {
        check_conn_info(peer, remote)?;
        let target = PathTarget {
            port: self.config.port,
            mtu: self.port.mtu,
            sgid_index: self.gid_index,
            dgid: remote.gid,
            dlid: remote.lid,
            dest_qp_num: remote.qp_num,
            rq_psn: remote.psn,
        };
        let recv = self.pools.recv.clone();
        let pending = self
            .peers
            .get_mut(peer as usize)
            .and_then(Option::as_mut)
            .ok_or(Error::UnknownPeer(peer))?;
        if !pending.connected {
            for _ in 0..self.config.recv_depth {
                let slot = recv.acquire().ok_or(Error::Exhausted {
                    what: "receive",
                    capacity: recv.capacity(),
                })?;
                let len = recv.slot_len();
                recv.post(&pending.qp, slot, Op::Recv, len, peer_tag(peer), None)
                    .map_err(|(error, slot)| {
                        recv.release(slot);
                        error
                    })?;
            }
        }
        pending.qp.connect(&target, pending.psn)?;
        pending.connected = true;
        Ok(())
    }

    /// Starts the transport thread; events go to `sink`. Peers never connected are dropped
    /// (operations towards them fail `UnknownPeer`).
    pub fn start(self, sink: Arc<dyn EventSink>) -> Result<RdmaTransport> {
        let peers = self
            .peers
            .into_iter()
            .zip(0..)
            .map(|(pending, node)| {
                pending
                    .filter(|p| p.connected)
                    .map(|p| Peer::new(node, p.qp))
            })
            .collect();
        let shared = Shared::new(
            self.local,
            &self.config,
            peers,
            self.pools,
            self.cq,
            self.pd,
            self.context,
            sink,
        );
        RdmaTransport::spawn(Arc::new(shared))
    }
}

impl std::fmt::Debug for RdmaConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaConnector")
            .field("local", &self.local)
            .field("device", &self.context.name())
            .field("gid_index", &self.gid_index)
            .finish_non_exhaustive()
    }
}

/// The rank as carried in work request ids (`open` bounds clusters to `u16::MAX` nodes).
pub(crate) fn peer_tag(peer: NodeId) -> u16 {
    u16::try_from(peer).expect("rank fits u16 (checked at open)")
}

/// First GID of the form ::ffff:a.b.c.d (RoCE v2 over IPv4).
fn find_ipv4_gid(context: &Context, port: u8, table_len: u32) -> Result<u8> {
    let limit = u8::try_from(table_len.min(255)).unwrap_or(u8::MAX);
    for index in 0..limit {
        let Ok(gid) = context.query_gid(port, index) else {
            continue;
        };
        if gid[..10].iter().all(|&b| b == 0) && gid[10..12] == [0xff, 0xff] {
            return Ok(index);
        }
    }
    Err(Error::NoGid {
        device: context.name().into(),
        port,
    })
}

fn check_conn_info(peer: NodeId, info: &RdmaConnInfo) -> Result<()> {
    let bad = |field, value: u64| Error::BadConnInfo { peer, field, value };
    // QPs 0 and 1 are the special management QPs; numbers are 24-bit.
    if info.qp_num < 2 || info.qp_num > MAX_24 {
        return Err(bad("qp_num", u64::from(info.qp_num)));
    }
    if info.psn > MAX_24 {
        return Err(bad("psn", u64::from(info.psn)));
    }
    if info.gid == [0; 16] {
        return Err(bad("gid", 0));
    }
    Ok(())
}

fn random_psn(peer: NodeId) -> u32 {
    let bits = RandomState::new().hash_one((peer, std::process::id()));
    u32::try_from(bits & u64::from(MAX_24)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RdmaConnInfo {
        RdmaConnInfo {
            qp_num: 17,
            psn: 0x1234,
            lid: 0,
            gid_index: 1,
            gid: [1; 16],
        }
    }

    #[test]
    fn connection_data_out_of_range_is_refused() {
        assert!(check_conn_info(1, &info()).is_ok());
        let cases = [
            RdmaConnInfo {
                qp_num: 1,
                ..info()
            },
            RdmaConnInfo {
                qp_num: 1 << 24,
                ..info()
            },
            RdmaConnInfo {
                psn: 1 << 24,
                ..info()
            },
            RdmaConnInfo {
                gid: [0; 16],
                ..info()
            },
        ];
        for case in cases {
            assert!(
                matches!(
                    check_conn_info(1, &case),
                    Err(Error::BadConnInfo { peer: 1, .. })
                ),
                "{case:?}"
            );
        }
    }

    #[test]
    fn psns_are_24_bit() {
        assert!((0..100).all(|peer| random_psn(peer) <= MAX_24));
    }
}
