//! The fixed 32-byte frame header. Every frame on every transport starts with one.

use bytemuck::{Pod, Zeroable};

use crate::{Error, Result};

/// "DSM1" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DSM1");
/// Protocol version this build speaks; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = 32;

/// Fixed-layout frame header, little-endian on the wire.
///
/// Both checksums are crc32c. `header_crc` covers the 32 header bytes with `header_crc` itself
/// zeroed, so a corrupted length is caught before the body is read; `body_crc` covers the body,
/// except on a connection whose seal authenticates every body ([`BodyCheck::Sealed`]), where
/// it is 0 and not checked.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`PROTOCOL_VERSION`].
    pub version: u16,
    /// Message command code (see [`Message::command`](crate::Message::command)).
    pub command: u16,
    /// Cluster id: a node never accepts a frame from another cluster.
    pub cluster: u64,
    /// Rank of the sending node.
    pub sender: u32,
    /// Length of the body that follows.
    pub body_len: u32,
    /// crc32c of the body ([`BodyCheck::Crc`]), or 0 ([`BodyCheck::Sealed`]).
    pub body_crc: u32,
    /// crc32c of the header with this field zero.
    pub header_crc: u32,
}

const _: () = assert!(size_of::<Header>() == HEADER_LEN);

/// What guards a frame's body on its way: its own checksum, or the seal of an authenticated
/// connection (an AEAD tag over header and body, which a checksum could only repeat: a 4 KiB
/// page's crc32c costs ~0.3 µs at each end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCheck {
    /// `body_crc` is the body's crc32c, and a reader checks it.
    Crc,
    /// The frame travels sealed: `body_crc` is 0, and a reader that opened the seal does not
    /// look at it.
    Sealed,
}

impl BodyCheck {
    /// [`BodyCheck::Sealed`] for a frame of a sealed connection, else [`BodyCheck::Crc`].
    pub fn sealed_if(sealed: bool) -> Self {
        if sealed {
            BodyCheck::Sealed
        } else {
            BodyCheck::Crc
        }
    }
}

impl Header {
    /// Builds a header for `body` and seals it with both checksums.
    pub fn seal(command: u16, cluster: u64, sender: u32, body: &[u8]) -> Self {
        Header::seal_for(command, cluster, sender, body, BodyCheck::Crc)
    }

    /// Builds a header for `body` with its header checksum, and its body checksum unless the
    /// frame travels sealed.
    pub fn seal_for(
        command: u16,
        cluster: u64,
        sender: u32,
        body: &[u8],
        check: BodyCheck,
    ) -> Self {
        // Bodies are bounded by `Limits::max_body_len` (u32) long before this point.
        let body_len = u32::try_from(body.len()).expect("body longer than u32::MAX");
        let mut header = Header {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            command,
            cluster,
            sender,
            body_len,
            body_crc: match check {
                BodyCheck::Crc => crc32c::crc32c(body),
                BodyCheck::Sealed => 0,
            },
            header_crc: 0,
        };
        header.header_crc = header.compute_crc();
        header
    }

    /// The header's bytes in wire order.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let le = Header {
            magic: self.magic.to_le(),
            version: self.version.to_le(),
            command: self.command.to_le(),
            cluster: self.cluster.to_le(),
            sender: self.sender.to_le(),
            body_len: self.body_len.to_le(),
            body_crc: self.body_crc.to_le(),
            header_crc: self.header_crc.to_le(),
        };
        bytemuck::cast(le)
    }

    /// Parses and checks a header: magic, version, checksum, cluster and body length limit.
    /// The command code is checked later, by the message decoder.
    pub fn parse(bytes: &[u8], cluster: u64, max_body_len: u32) -> Result<Self> {
        let raw: [u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::Truncated {
                what: "header",
                needed: HEADER_LEN,
                available: bytes.len(),
            })?;
        let wire: Header = bytemuck::cast(raw);
        let header = Header {
            magic: u32::from_le(wire.magic),
            version: u16::from_le(wire.version),
            command: u16::from_le(wire.command),
            cluster: u64::from_le(wire.cluster),
            sender: u32::from_le(wire.sender),
            body_len: u32::from_le(wire.body_len),
            body_crc: u32::from_le(wire.body_crc),
            header_crc: u32::from_le(wire.header_crc),
        };
        header.check(cluster, max_body_len)?;
        Ok(header)
    }

    fn check(&self, cluster: u64, max_body_len: u32) -> Result<()> {
        if self.magic != MAGIC {
            return Err(Error::BadMagic(self.magic));
        }
        let computed = self.compute_crc();
        if computed != self.header_crc {
            return Err(Error::HeaderChecksum {
                got: self.header_crc,
                computed,
            });
        }
        if self.version != PROTOCOL_VERSION {
            return Err(Error::WrongVersion {
                got: self.version,
                expected: PROTOCOL_VERSION,
            });
        }
        if self.cluster != cluster {
            return Err(Error::WrongCluster {
                got: self.cluster,
                expected: cluster,
            });
        }
        if self.body_len > max_body_len {
            return Err(Error::BodyTooLong {
                len: self.body_len,
                limit: max_body_len,
            });
        }
        Ok(())
    }

    /// Checks `body` against `body_crc`.
    pub fn check_body(&self, body: &[u8]) -> Result<()> {
        let computed = crc32c::crc32c(body);
        if computed == self.body_crc {
            Ok(())
        } else {
            Err(Error::BodyChecksum {
                got: self.body_crc,
                computed,
            })
        }
    }

    fn compute_crc(&self) -> u32 {
        let mut unsealed = *self;
        unsealed.header_crc = 0;
        crc32c::crc32c(&unsealed.to_bytes())
    }
}
