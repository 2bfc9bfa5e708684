//! Region allocation and byte-range access: the seed's MALLOC/NMALLOC, FREE/NFREE, PREAD/PWRITE.

use crate::codec::{Reader, Writer};
use crate::{Error, Result};

/// Longest region name.
pub const MAX_NAME_LEN: usize = 256;
/// Largest PREAD/PWRITE payload in one message.
pub const MAX_RW_LEN: usize = 256 * 1024;

/// Region description shared by MALLOC and NMALLOC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    /// Name given by the program; the same collective call on every node uses the same name.
    pub name: String,
    /// Region length in pages.
    pub pages: u32,
    /// 0 = sequential (MSI), 1 = release (home-based lazy release consistency).
    pub consistency: u8,
    /// 0 = cyclic page placement, 1 = block placement.
    pub placement: u8,
}

/// Allocation and byte-range messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alloc {
    /// A node asks the coordinator for a region (collective: every node sends it).
    Malloc {
        /// Request id, echoed in the answer.
        req: u64,
        /// What to allocate.
        spec: RegionSpec,
    },
    /// The coordinator's answer to every node: region id and the address it sits at everywhere.
    NMalloc {
        /// Request id of the MALLOC answered.
        req: u64,
        /// Assigned region id.
        region: u32,
        /// Virtual address of the region on every node.
        base_addr: u64,
        /// The region.
        spec: RegionSpec,
    },
    /// A node asks to free a region (collective).
    Free {
        /// Region id.
        region: u32,
    },
    /// The coordinator confirms the region is gone on every node.
    NFree {
        /// Region id.
        region: u32,
    },
    /// Read `len` bytes at `offset` of a region from its home(s).
    PRead {
        /// Request id.
        req: u64,
        /// Region id.
        region: u32,
        /// Byte offset in the region.
        offset: u64,
        /// Bytes wanted.
        len: u32,
    },
    /// Answer to PREAD.
    PReadReply {
        /// Request id.
        req: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Write bytes at `offset` of a region through its home(s).
    PWrite {
        /// Request id.
        req: u64,
        /// Region id.
        region: u32,
        /// Byte offset in the region.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Answer to PWRITE.
    PWriteAck {
        /// Request id.
        req: u64,
    },
    /// A home's registered memory for a region, for one-sided access by RDMA.
    RegionKey {
        /// Region id.
        region: u32,
        /// Address of the home copy in the home's address space.
        addr: u64,
        /// Length registered.
        len: u64,
        /// Remote key.
        rkey: u32,
    },
}

pub(crate) const MALLOC: u16 = 0x0401;
pub(crate) const NMALLOC: u16 = 0x0402;
pub(crate) const FREE: u16 = 0x0403;
pub(crate) const NFREE: u16 = 0x0404;
pub(crate) const PREAD: u16 = 0x0405;
pub(crate) const PREAD_REPLY: u16 = 0x0406;
pub(crate) const PWRITE: u16 = 0x0407;
pub(crate) const PWRITE_ACK: u16 = 0x0408;
pub(crate) const REGION_KEY: u16 = 0x0409;

impl Alloc {
    pub(crate) fn command(&self) -> u16 {
        match self {
            Alloc::Malloc { .. } => MALLOC,
            Alloc::NMalloc { .. } => NMALLOC,
            Alloc::Free { .. } => FREE,
            Alloc::NFree { .. } => NFREE,
            Alloc::PRead { .. } => PREAD,
            Alloc::PReadReply { .. } => PREAD_REPLY,
            Alloc::PWrite { .. } => PWRITE,
            Alloc::PWriteAck { .. } => PWRITE_ACK,
            Alloc::RegionKey { .. } => REGION_KEY,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        match self {
            Alloc::Malloc { req, spec } => {
                w.u64(*req);
                encode_spec(w, spec);
            }
            Alloc::NMalloc {
                req,
                region,
                base_addr,
                spec,
            } => {
                w.u64(*req);
                w.u32(*region);
                w.u64(*base_addr);
                encode_spec(w, spec);
            }
            Alloc::Free { region } | Alloc::NFree { region } => w.u32(*region),
            Alloc::PRead {
                req,
                region,
                offset,
                len,
            } => {
                w.u64(*req);
                w.u32(*region);
                w.u64(*offset);
                w.u32(*len);
            }
            Alloc::PReadReply { req, data } => {
                w.u64(*req);
                w.bytes(data);
            }
            Alloc::PWrite {
                req,
                region,
                offset,
                data,
            } => {
                w.u64(*req);
                w.u32(*region);
                w.u64(*offset);
                w.bytes(data);
            }
            Alloc::PWriteAck { req } => w.u64(*req),
            Alloc::RegionKey {
                region,
                addr,
                len,
                rkey,
            } => {
                w.u32(*region);
                w.u64(*addr);
                w.u64(*len);
                w.u32(*rkey);
            }
        }
    }

    pub(crate) fn decode(command: u16, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match command {
            MALLOC => Alloc::Malloc {
                req: r.u64("req")?,
                spec: decode_spec(r)?,
            },
            NMALLOC => Alloc::NMalloc {
                req: r.u64("req")?,
                region: r.u32("region")?,
                base_addr: r.u64("base_addr")?,
                spec: decode_spec(r)?,
            },
            FREE => Alloc::Free {
                region: r.u32("region")?,
            },
            NFREE => Alloc::NFree {
                region: r.u32("region")?,
            },
            PREAD => {
                let (req, region, offset) = (r.u64("req")?, r.u32("region")?, r.u64("offset")?);
                let len = r.u32("len")?;
                if len as usize > MAX_RW_LEN {
                    return Err(Error::CountTooLarge {
                        field: "pread len",
                        count: u64::from(len),
                        limit: MAX_RW_LEN as u64,
                    });
                }
                Alloc::PRead {
                    req,
                    region,
                    offset,
                    len,
                }
            }
            PREAD_REPLY => Alloc::PReadReply {
                req: r.u64("req")?,
                data: r.bytes("data", MAX_RW_LEN)?.to_vec(),
            },
            PWRITE => Alloc::PWrite {
                req: r.u64("req")?,
                region: r.u32("region")?,
                offset: r.u64("offset")?,
                data: r.bytes("data", MAX_RW_LEN)?.to_vec(),
            },
            PWRITE_ACK => Alloc::PWriteAck { req: r.u64("req")? },
            REGION_KEY => Alloc::RegionKey {
                region: r.u32("region")?,
                addr: r.u64("addr")?,
                len: r.u64("len")?,
                rkey: r.u32("rkey")?,
            },
            other => return Err(Error::UnknownCommand(other)),
        })
    }
}

fn encode_spec(w: &mut Writer, spec: &RegionSpec) {
    w.bytes(spec.name.as_bytes());
    w.u32(spec.pages);
    w.u8(spec.consistency);
    w.u8(spec.placement);
}

fn decode_spec(r: &mut Reader<'_>) -> Result<RegionSpec> {
    let name = r.string("region name", MAX_NAME_LEN)?;
    let pages = r.u32("pages")?;
    if pages == 0 || pages > r.limits().max_pages_per_region {
        return Err(Error::InvalidField {
            field: "region pages",
            value: u64::from(pages),
        });
    }
    let consistency = r.u8("consistency")?;
    if consistency > 1 {
        return Err(Error::InvalidField {
            field: "consistency",
            value: u64::from(consistency),
        });
    }
    let placement = r.u8("placement")?;
    if placement > 1 {
        return Err(Error::InvalidField {
            field: "placement",
            value: u64::from(placement),
        });
    }
    Ok(RegionSpec {
        name,
        pages,
        consistency,
        placement,
    })
}
