//! Cluster boot-up and monitoring: the seed's INIT/JOIN, heartbeats, failure notices, leave.

use crate::codec::{Reader, Writer};
use crate::{Error, NodeId, Result};

/// Transports a node offers, as a bit set in [`Endpoint::transports`].
pub mod transports {
    /// TCP (io_uring) is always offered.
    pub const TCP: u8 = 1;
    /// RDMA verbs (RC queue pairs).
    pub const RDMA: u8 = 2;
}

/// Where and how a node can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IPv6 or IPv4-mapped address of the node's listener.
    pub ip: [u8; 16],
    /// Listener port.
    pub port: u16,
    /// Bit set of [`transports`].
    pub transports: u8,
}

/// RDMA connection data for one RC queue pair (sent per peer over the TCP control plane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaConnInfo {
    /// Queue pair number.
    pub qp_num: u32,
    /// Initial packet sequence number.
    pub psn: u32,
    /// Port LID (0 on RoCE).
    pub lid: u16,
    /// GID index to address.
    pub gid_index: u8,
    /// Port GID.
    pub gid: [u8; 16],
}

/// Membership messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// A node subscribes to the coordinator (the seed's JOIN).
    Join {
        /// Rank the node claims.
        rank: NodeId,
        /// Cluster size it was started with.
        size: u32,
        /// How to reach it.
        endpoint: Endpoint,
    },
    /// The coordinator's node list (the seed's INIT), sent when every rank has joined.
    NodeList {
        /// Endpoint of every rank, indexed by rank.
        nodes: Vec<Endpoint>,
    },
    /// A node announces it has joined, to every other node.
    Joined {
        /// Its rank.
        rank: NodeId,
    },
    /// Liveness beat to the ring successor.
    Heartbeat {
        /// Sender's monotonically increasing beat number.
        beat: u64,
    },
    /// A node was declared failed.
    NodeFailed {
        /// The failed rank.
        rank: NodeId,
    },
    /// RDMA connection data for the queue pair the sender keeps towards the receiver.
    RdmaHello(RdmaConnInfo),
    /// Collective clean shutdown: the sender is leaving.
    Leave {
        /// Its rank.
        rank: NodeId,
    },
}

pub(crate) const JOIN: u16 = 0x0101;
pub(crate) const NODE_LIST: u16 = 0x0102;
pub(crate) const JOINED: u16 = 0x0103;
pub(crate) const HEARTBEAT: u16 = 0x0104;
pub(crate) const NODE_FAILED: u16 = 0x0105;
pub(crate) const RDMA_HELLO: u16 = 0x0106;
pub(crate) const LEAVE: u16 = 0x0107;

impl Membership {
    pub(crate) fn command(&self) -> u16 {
        match self {
            Membership::Join { .. } => JOIN,
            Membership::NodeList { .. } => NODE_LIST,
            Membership::Joined { .. } => JOINED,
            Membership::Heartbeat { .. } => HEARTBEAT,
            Membership::NodeFailed { .. } => NODE_FAILED,
            Membership::RdmaHello(_) => RDMA_HELLO,
            Membership::Leave { .. } => LEAVE,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        match self {
            Membership::Join {
                rank,
                size,
                endpoint,
            } => {
                w.u32(*rank);
                w.u32(*size);
                encode_endpoint(w, endpoint);
            }
            Membership::NodeList { nodes } => {
                w.u32(u32::try_from(nodes.len()).expect("node list over u32"));
                nodes.iter().for_each(|e| encode_endpoint(w, e));
            }
            Membership::Joined { rank }
            | Membership::NodeFailed { rank }
            | Membership::Leave { rank } => w.u32(*rank),
            Membership::Heartbeat { beat } => w.u64(*beat),
            Membership::RdmaHello(info) => {
                w.u32(info.qp_num);
                w.u32(info.psn);
                w.u16(info.lid);
                w.u8(info.gid_index);
                w.raw(&info.gid);
            }
        }
    }

    pub(crate) fn decode(command: u16, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match command {
            JOIN => Membership::Join {
                rank: r.u32("rank")?,
                size: r.u32("size")?,
                endpoint: decode_endpoint(r)?,
            },
            NODE_LIST => {
                let n = r.count("node list", r.limits().max_list_len)?;
                let nodes = (0..n).map(|_| decode_endpoint(r)).collect::<Result<_>>()?;
                Membership::NodeList { nodes }
            }
            JOINED => Membership::Joined {
                rank: r.u32("rank")?,
            },
            HEARTBEAT => Membership::Heartbeat {
                beat: r.u64("beat")?,
            },
            NODE_FAILED => Membership::NodeFailed {
                rank: r.u32("rank")?,
            },
            RDMA_HELLO => Membership::RdmaHello(RdmaConnInfo {
                qp_num: r.u32("qp_num")?,
                psn: r.u32("psn")?,
                lid: r.u16("lid")?,
                gid_index: r.u8("gid_index")?,
                gid: r.fixed("gid")?,
            }),
            LEAVE => Membership::Leave {
                rank: r.u32("rank")?,
            },
            other => return Err(Error::UnknownCommand(other)),
        })
    }
}

fn encode_endpoint(w: &mut Writer, e: &Endpoint) {
    w.raw(&e.ip);
    w.u16(e.port);
    w.u8(e.transports);
}

fn decode_endpoint(r: &mut Reader<'_>) -> Result<Endpoint> {
    let ip = r.fixed("ip")?;
    let port = r.u16("port")?;
    let transports = r.u8("transports")?;
    if transports & !(transports::TCP | transports::RDMA) != 0 {
        return Err(Error::InvalidField {
            field: "transports",
            value: u64::from(transports),
        });
    }
    Ok(Endpoint {
        ip,
        port,
        transports,
    })
}
