//! What only the TCP transport speaks (0x06xx): the connection handshake, and the
//! request/response pairs that emulate one-sided page reads and writes of a home's exposed
//! memory. The engine never sees these; the transport answers them itself.
//!
//! Handshake, dialer D → acceptor A (cluster id and protocol version travel in every header):
//! 1. D → A [`Transport::Hello`]: D's rank and a fresh random nonce `n_d`.
//! 2. A → D [`Transport::Challenge`]: A's rank, a fresh nonce `n_a`, and a MAC over `n_d`
//!    proving A holds the cluster key.
//! 3. D → A [`Transport::Response`]: a MAC over `n_a` proving D holds the key.
//! 4. A → D [`Transport::Welcome`]: A accepted the connection.
//!
//! Both MACs are BLAKE3 keyed hashes under a key derived from the cluster key, over a role
//! label, the connection's purpose (mesh or boot-up), cluster id, both ranks and the nonce.
//! After the Welcome, each side derives a key per direction from the cluster key and both
//! nonces, and every later frame is sealed (AES-256-GCM: the body encrypted, the header
//! authenticated, the frame's sequence number on the connection as the nonce) and followed by
//! its 16-byte tag (dsm-tcp-fallback's `session` module): an injected, altered, replayed or
//! reordered frame closes the connection. Sealed frames carry no body checksum
//! ([`crate::BodyCheck`]).
//!
//! Without a cluster key the MACs are all zero, frames carry no tag, and only cluster, version
//! and ranks are checked.

use crate::codec::{Reader, Writer};
use crate::header::{BodyCheck, HEADER_LEN, Header};
use crate::{Error, NodeId, PAGE_SIZE, Page, PageId, Result};

/// Bytes in a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes in a handshake MAC.
pub const MAC_LEN: usize = 32;

/// Outcome of a page read or write at the home, carried as a u8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStatus {
    /// Done; a read reply carries the page.
    Ok,
    /// The home has not exposed the page's region.
    NotExposed,
    /// The page lies beyond the memory the home exposed.
    OutOfRange,
}

impl PageStatus {
    fn to_u8(self) -> u8 {
        match self {
            PageStatus::Ok => 0,
            PageStatus::NotExposed => 1,
            PageStatus::OutOfRange => 2,
        }
    }

    fn from_u8(v: u8) -> Result<Self> {
        match v {
            0 => Ok(PageStatus::Ok),
            1 => Ok(PageStatus::NotExposed),
            2 => Ok(PageStatus::OutOfRange),
            v => Err(Error::InvalidField {
                field: "page status",
                value: u64::from(v),
            }),
        }
    }
}

/// Transport-internal messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// First frame of a connection, from the dialer.
    Hello {
        /// Dialer's rank.
        rank: NodeId,
        /// Fresh random nonce the acceptor must MAC.
        nonce: [u8; NONCE_LEN],
    },
    /// The acceptor's answer to Hello.
    Challenge {
        /// Acceptor's rank.
        rank: NodeId,
        /// Fresh random nonce the dialer must MAC.
        nonce: [u8; NONCE_LEN],
        /// MAC over the dialer's nonce (zero without a cluster key).
        mac: [u8; MAC_LEN],
    },
    /// The dialer's proof of the key.
    Response {
        /// MAC over the acceptor's nonce (zero without a cluster key).
        mac: [u8; MAC_LEN],
    },
    /// The acceptor accepted the connection; frames of any group may follow.
    Welcome {
        /// Acceptor's rank.
        rank: NodeId,
    },
    /// Read a page of the receiver's exposed memory.
    PageReadRequest {
        /// Requester's token, echoed in the reply.
        token: u64,
        /// Page wanted.
        page: PageId,
    },
    /// A page read's outcome; `data` is present exactly when `status` is `Ok`.
    PageReadReply {
        /// The request's token.
        token: u64,
        /// Page asked for.
        page: PageId,
        /// Outcome.
        status: PageStatus,
        /// The page.
        data: Option<Page>,
    },
    /// Write a page into the receiver's exposed memory.
    PageWriteRequest {
        /// Requester's token, echoed in the reply.
        token: u64,
        /// Page written.
        page: PageId,
        /// Contents.
        data: Page,
    },
    /// A page write's outcome.
    PageWriteReply {
        /// The request's token.
        token: u64,
        /// Page written.
        page: PageId,
        /// Outcome.
        status: PageStatus,
    },
}

pub(crate) const HELLO: u16 = 0x0601;
pub(crate) const CHALLENGE: u16 = 0x0602;
pub(crate) const RESPONSE: u16 = 0x0603;
pub(crate) const WELCOME: u16 = 0x0604;
pub(crate) const PAGE_READ_REQUEST: u16 = 0x0605;
pub(crate) const PAGE_READ_REPLY: u16 = 0x0606;
pub(crate) const PAGE_WRITE_REQUEST: u16 = 0x0607;
pub(crate) const PAGE_WRITE_REPLY: u16 = 0x0608;

impl Transport {
    pub(crate) fn command(&self) -> u16 {
        match self {
            Transport::Hello { .. } => HELLO,
            Transport::Challenge { .. } => CHALLENGE,
            Transport::Response { .. } => RESPONSE,
            Transport::Welcome { .. } => WELCOME,
            Transport::PageReadRequest { .. } => PAGE_READ_REQUEST,
            Transport::PageReadReply { .. } => PAGE_READ_REPLY,
            Transport::PageWriteRequest { .. } => PAGE_WRITE_REQUEST,
            Transport::PageWriteReply { .. } => PAGE_WRITE_REPLY,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        match self {
            Transport::Hello { rank, nonce } => {
                w.u32(*rank);
                w.raw(nonce);
            }
            Transport::Challenge { rank, nonce, mac } => {
                w.u32(*rank);
                w.raw(nonce);
                w.raw(mac);
            }
            Transport::Response { mac } => w.raw(mac),
            Transport::Welcome { rank } => w.u32(*rank),
            Transport::PageReadRequest { token, page } => {
                w.u64(*token);
                w.page_id(*page);
            }
            Transport::PageReadReply {
                token,
                page,
                status,
                data,
            } => {
                w.u64(*token);
                w.page_id(*page);
                w.u8(status.to_u8());
                if let Some(data) = data {
                    w.raw(&data[..]);
                }
            }
            Transport::PageWriteRequest { token, page, data } => {
                w.u64(*token);
                w.page_id(*page);
                w.raw(&data[..]);
            }
            Transport::PageWriteReply {
                token,
                page,
                status,
            } => {
                w.u64(*token);
                w.page_id(*page);
                w.u8(status.to_u8());
            }
        }
    }

    pub(crate) fn decode(command: u16, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match command {
            HELLO => Transport::Hello {
                rank: r.u32("rank")?,
                nonce: r.fixed("nonce")?,
            },
            CHALLENGE => Transport::Challenge {
                rank: r.u32("rank")?,
                nonce: r.fixed("nonce")?,
                mac: r.fixed("mac")?,
            },
            RESPONSE => Transport::Response {
                mac: r.fixed("mac")?,
            },
            WELCOME => Transport::Welcome {
                rank: r.u32("rank")?,
            },
            PAGE_READ_REQUEST => Transport::PageReadRequest {
                token: r.u64("token")?,
                page: r.page_id()?,
            },
            PAGE_READ_REPLY => {
                let (token, page) = (r.u64("token")?, r.page_id()?);
                let status = PageStatus::from_u8(r.u8("page status")?)?;
                // The status decides whether a page follows: no separate flag to disagree with.
                let data = match status {
                    PageStatus::Ok => Some(r.page()?),
                    _ => None,
                };
                Transport::PageReadReply {
                    token,
                    page,
                    status,
                    data,
                }
            }
            PAGE_WRITE_REQUEST => Transport::PageWriteRequest {
                token: r.u64("token")?,
                page: r.page_id()?,
                data: r.page()?,
            },
            PAGE_WRITE_REPLY => Transport::PageWriteReply {
                token: r.u64("token")?,
                page: r.page_id()?,
                status: PageStatus::from_u8(r.u8("page status")?)?,
            },
            other => return Err(Error::UnknownCommand(other)),
        })
    }
}

/// Appends a [`Transport::PageReadReply`] frame carrying `data` (status `Ok`) to `out`,
/// copying the page once, straight from wherever it lives (a home's exposed memory) into the
/// send buffer. Byte for byte what [`crate::encode_for`] produces for the same message.
pub fn append_page_read_reply(
    out: &mut Vec<u8>,
    cluster: u64,
    sender: NodeId,
    check: BodyCheck,
    token: u64,
    page: PageId,
    data: &[u8; PAGE_SIZE],
) {
    append_frame(out, PAGE_READ_REPLY, (cluster, sender, check), |body| {
        put_token_page(body, token, page);
        body.push(PageStatus::Ok.to_u8());
        body.extend_from_slice(data);
    });
}

/// Appends a [`Transport::PageWriteRequest`] frame to `out`, copying `data` once. Byte for
/// byte what [`crate::encode_for`] produces for the same message.
pub fn append_page_write_request(
    out: &mut Vec<u8>,
    cluster: u64,
    sender: NodeId,
    check: BodyCheck,
    token: u64,
    page: PageId,
    data: &[u8; PAGE_SIZE],
) {
    append_frame(out, PAGE_WRITE_REQUEST, (cluster, sender, check), |body| {
        put_token_page(body, token, page);
        body.extend_from_slice(data);
    });
}

fn put_token_page(body: &mut Vec<u8>, token: u64, page: PageId) {
    body.extend_from_slice(&token.to_le_bytes());
    body.extend_from_slice(&page.region.to_le_bytes());
    body.extend_from_slice(&page.page.to_le_bytes());
}

/// Writes the body in place after a header-sized gap, then seals the header over it.
fn append_frame(
    out: &mut Vec<u8>,
    command: u16,
    (cluster, sender, check): (u64, NodeId, BodyCheck),
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    body(out);
    let header = Header::seal_for(command, cluster, sender, &out[start + HEADER_LEN..], check);
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
}
