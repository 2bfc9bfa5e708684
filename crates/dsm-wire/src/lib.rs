//! dsm-wire: every message a dsm cluster sends, and the one place bytes from outside are
//! decoded.
//!
//! A frame is a fixed 32-byte [`Header`] (magic, protocol version, command, cluster id,
//! sender, body length, crc32c of the body, crc32c of the header) followed by a little-endian
//! body. On a sealed connection the body's checksum is 0 and not checked ([`BodyCheck`]): the
//! seal's tag authenticates the body already ([`encode_for`], [`decode_prefix_for`]).
//! [`decode`] and [`decode_prefix`] check everything — magic, checksums, version,
//! cluster, length limit, command, every field's domain, page indices, list lengths, trailing
//! bytes — and return a typed [`Error`]; they never panic and never allocate from a length they
//! have not bounded.
//!
//! ```
//! use dsm_wire::{Coherence, Limits, Message, PageId, decode, encode};
//!
//! let cluster = 0xd5;
//! let msg = Message::Coherence(Coherence::ReadRequest { req: 1, page: PageId { region: 0, page: 3 }, maps_master: false });
//! let bytes = encode(&msg, cluster, 2);
//! let frame = decode(&bytes, &Limits::new(cluster)).unwrap();
//! assert_eq!((frame.sender, frame.message), (2, msg));
//! ```
//!
//! # Cargo features
//! None.

pub mod codec;
mod error;
mod frame;
mod header;
pub mod msg;
mod types;

pub use error::{Error, Result};
pub use frame::{Frame, decode, decode_prefix, decode_prefix_for, encode, encode_for};
pub use header::{BodyCheck, HEADER_LEN, Header, MAGIC, PROTOCOL_VERSION};
pub use msg::{
    Alloc, BarrierArrival, Coherence, DiffRun, Endpoint, MAX_BATCH_PAGES, Membership, Message,
    PageDiff, PageStatus, RdmaConnInfo, RegionSpec, SyncMsg, Transport, ViewMsg,
};
pub use types::{Limits, NodeId, PAGE_SIZE, Page, PageId};

#[cfg(test)]
mod tests;
