//! Page coherence: fetches, ownership, invalidation, write-back, diffs and write notices.

use crate::codec::{Reader, Writer};
use crate::{Error, NodeId, PAGE_SIZE, Page, PageId, Result};

/// Bytes of a page that changed: `bytes` replace the page at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffRun {
    /// Byte offset in the page.
    pub offset: u16,
    /// New bytes; `offset + bytes.len() <= PAGE_SIZE`.
    pub bytes: Vec<u8>,
}

/// The changed runs of one page, in a [`Coherence::DiffBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageDiff {
    /// The page.
    pub page: PageId,
    /// Changed runs, in increasing, non-overlapping offsets.
    pub runs: Vec<DiffRun>,
}

/// Most pages one [`Coherence::DiffBatch`] may carry.
pub const MAX_BATCH_PAGES: usize = 4096;

/// Coherence messages between a node and a page's home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coherence {
    /// Read fault: ask the home for a read-only copy (the seed's NREAD).
    ReadRequest {
        /// Request id.
        req: u64,
        /// Page wanted.
        page: PageId,
        /// The requester's copy of the page is the home's master itself (a same-host node
        /// mapping it, sequential mode): a home writing that master may grant the read
        /// without write-protecting its own copy, since both map one physical page.
        maps_master: bool,
    },
    /// The home grants a read-only copy. `data` is absent when the requester fetches the home
    /// copy itself by one-sided RDMA READ.
    ReadGrant {
        /// Request id.
        req: u64,
        /// Page.
        page: PageId,
        /// Home's version of the page.
        version: u64,
        /// Page contents (two-sided transports).
        data: Option<Page>,
    },
    /// Write fault: ask the home for the only writable copy.
    WriteRequest {
        /// Request id.
        req: u64,
        /// Page.
        page: PageId,
        /// Requester already holds a current read-only copy (upgrade: no data needed).
        has_copy: bool,
    },
    /// The home grants the writable copy, after every other copy was invalidated.
    WriteGrant {
        /// Request id.
        req: u64,
        /// Page.
        page: PageId,
        /// Version after this write.
        version: u64,
        /// Page contents, unless the requester had a current copy or reads it one-sided.
        data: Option<Page>,
    },
    /// The home tells a holder to drop its copy (the seed's NINV).
    Invalidate {
        /// Home's request id.
        req: u64,
        /// Page.
        page: PageId,
    },
    /// A holder dropped its copy; a writable holder returns its data.
    InvalidateAck {
        /// Home's request id.
        req: u64,
        /// Page.
        page: PageId,
        /// The modified page, when the holder had it writable.
        data: Option<Page>,
    },
    /// The home asks the writable holder to write back and keep a read-only copy.
    Downgrade {
        /// Home's request id.
        req: u64,
        /// Page.
        page: PageId,
    },
    /// A writable holder's page, sent to the home (answer to Downgrade, or eviction).
    WriteBack {
        /// Request id (the Downgrade's, or the sender's own).
        req: u64,
        /// Page.
        page: PageId,
        /// Contents.
        data: Page,
    },
    /// Sequential mode: the writable holder answers an Invalidate or a Downgrade having
    /// written its page into the home's master copy itself (a same-host home whose master
    /// copies it maps): an InvalidateAck or WriteBack whose data is already in place.
    MasterWritten {
        /// Home's request id.
        req: u64,
        /// Page.
        page: PageId,
    },
    /// Sequential mode: a writable holder gives its page back to the home unasked and keeps
    /// no copy (it releases a lock another node waits for, and the page it wrote under the
    /// lock is likely that node's next fault). `data` is absent when the holder wrote the
    /// home's master copy in place (a same-host home).
    HandBack {
        /// Page.
        page: PageId,
        /// The page's contents, unless written into the master in place.
        data: Option<Page>,
        /// The node the lock goes to next, to which the home may push the page.
        next: Option<NodeId>,
    },
    /// Sequential mode: the home gives a node the only writable copy unasked (the node is
    /// about to get the lock the page was written under), after every other copy was
    /// recalled. A request of the node for the page that crossed it is answered without data.
    Push {
        /// Page.
        page: PageId,
        /// Version after this write.
        version: u64,
        /// The page's contents.
        data: Page,
    },
    /// Release mode: the bytes a node changed since their twins in pages with the same home,
    /// from one release, in one message; applied all or nothing and acknowledged by one
    /// [`Coherence::DiffAck`] naming the first page.
    DiffBatch {
        /// Request id, echoed by DiffAck.
        req: u64,
        /// The pages' diffs (at least one, at most [`MAX_BATCH_PAGES`]).
        diffs: Vec<PageDiff>,
    },
    /// The home applied a diff batch (`page` is its first page).
    DiffAck {
        /// Request id of the Diff.
        req: u64,
        /// Page.
        page: PageId,
    },
    /// Pages written in intervals the receiver has not seen: invalidate them.
    WriteNotices {
        /// The pages.
        pages: Vec<PageId>,
    },
    /// Sequential mode: the sender dropped its read-only copies of these pages, all homed at
    /// the receiver, unasked and kept nothing (at a barrier: pages that other nodes' writes
    /// took from it before, likely written again before it reads them). The home stops
    /// counting it among their readers, so the next write there needs no invalidation.
    Dropped {
        /// The pages (at least one, at most [`MAX_BATCH_PAGES`]).
        pages: Vec<PageId>,
    },
    /// Sequential mode: the home cannot serve a request, because the page's only current copy
    /// was writable on `writer`, which failed (the master copy is stale). Never followed by a
    /// grant: every later request for the page gets the same answer.
    PageLost {
        /// Request id of the refused request.
        req: u64,
        /// Page.
        page: PageId,
        /// The failed node that held the page writable.
        writer: u32,
    },
}

pub(crate) const READ_REQUEST: u16 = 0x0201;
pub(crate) const READ_GRANT: u16 = 0x0202;
pub(crate) const WRITE_REQUEST: u16 = 0x0203;
pub(crate) const WRITE_GRANT: u16 = 0x0204;
pub(crate) const INVALIDATE: u16 = 0x0205;
pub(crate) const INVALIDATE_ACK: u16 = 0x0206;
pub(crate) const DOWNGRADE: u16 = 0x0207;
pub(crate) const WRITE_BACK: u16 = 0x0208;
// 0x0209 was the one-page Diff, replaced by DiffBatch.
pub(crate) const DIFF_ACK: u16 = 0x020a;
pub(crate) const WRITE_NOTICES: u16 = 0x020b;
pub(crate) const DIFF_BATCH: u16 = 0x020c;
pub(crate) const PAGE_LOST: u16 = 0x020d;
pub(crate) const MASTER_WRITTEN: u16 = 0x020e;
pub(crate) const HAND_BACK: u16 = 0x020f;
pub(crate) const PUSH: u16 = 0x0210;
pub(crate) const DROPPED: u16 = 0x0211;

impl Coherence {
    pub(crate) fn command(&self) -> u16 {
        match self {
            Coherence::ReadRequest { .. } => READ_REQUEST,
            Coherence::ReadGrant { .. } => READ_GRANT,
            Coherence::WriteRequest { .. } => WRITE_REQUEST,
            Coherence::WriteGrant { .. } => WRITE_GRANT,
            Coherence::Invalidate { .. } => INVALIDATE,
            Coherence::InvalidateAck { .. } => INVALIDATE_ACK,
            Coherence::Downgrade { .. } => DOWNGRADE,
            Coherence::WriteBack { .. } => WRITE_BACK,
            Coherence::DiffBatch { .. } => DIFF_BATCH,
            Coherence::DiffAck { .. } => DIFF_ACK,
            Coherence::WriteNotices { .. } => WRITE_NOTICES,
            Coherence::PageLost { .. } => PAGE_LOST,
            Coherence::MasterWritten { .. } => MASTER_WRITTEN,
            Coherence::HandBack { .. } => HAND_BACK,
            Coherence::Push { .. } => PUSH,
            Coherence::Dropped { .. } => DROPPED,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        match self {
            Coherence::ReadRequest {
                req,
                page,
                maps_master: flag,
            }
            | Coherence::WriteRequest {
                req,
                page,
                has_copy: flag,
            } => {
                w.u64(*req);
                w.page_id(*page);
                w.u8(u8::from(*flag));
            }
            Coherence::MasterWritten { req, page }
            | Coherence::Invalidate { req, page }
            | Coherence::Downgrade { req, page }
            | Coherence::DiffAck { req, page } => {
                w.u64(*req);
                w.page_id(*page);
            }
            Coherence::ReadGrant {
                req,
                page,
                version,
                data,
            }
            | Coherence::WriteGrant {
                req,
                page,
                version,
                data,
            } => {
                w.u64(*req);
                w.page_id(*page);
                w.u64(*version);
                w.opt_page(data.as_ref());
            }
            Coherence::InvalidateAck { req, page, data } => {
                w.u64(*req);
                w.page_id(*page);
                w.opt_page(data.as_ref());
            }
            Coherence::WriteBack { req, page, data } => {
                w.u64(*req);
                w.page_id(*page);
                w.raw(&data[..]);
            }
            Coherence::HandBack { page, data, next } => {
                w.page_id(*page);
                w.opt_page(data.as_ref());
                w.opt_u32(*next);
            }
            Coherence::Push {
                page,
                version,
                data,
            } => {
                w.page_id(*page);
                w.u64(*version);
                w.raw(&data[..]);
            }
            Coherence::DiffBatch { req, diffs } => {
                w.u64(*req);
                w.u32(u32::try_from(diffs.len()).expect("batch pages over u32"));
                for diff in diffs {
                    w.page_id(diff.page);
                    encode_runs(w, &diff.runs);
                }
            }
            Coherence::WriteNotices { pages } | Coherence::Dropped { pages } => w.page_ids(pages),
            Coherence::PageLost { req, page, writer } => {
                w.u64(*req);
                w.page_id(*page);
                w.u32(*writer);
            }
        }
    }

    pub(crate) fn decode(command: u16, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match command {
            READ_REQUEST => Coherence::ReadRequest {
                req: r.u64("req")?,
                page: r.page_id()?,
                maps_master: r.flag("maps_master")?,
            },
            READ_GRANT => Coherence::ReadGrant {
                req: r.u64("req")?,
                page: r.page_id()?,
                version: r.u64("version")?,
                data: r.opt_page()?,
            },
            WRITE_REQUEST => Coherence::WriteRequest {
                req: r.u64("req")?,
                page: r.page_id()?,
                has_copy: r.flag("has_copy")?,
            },
            WRITE_GRANT => Coherence::WriteGrant {
                req: r.u64("req")?,
                page: r.page_id()?,
                version: r.u64("version")?,
                data: r.opt_page()?,
            },
            INVALIDATE => Coherence::Invalidate {
                req: r.u64("req")?,
                page: r.page_id()?,
            },
            INVALIDATE_ACK => Coherence::InvalidateAck {
                req: r.u64("req")?,
                page: r.page_id()?,
                data: r.opt_page()?,
            },
            DOWNGRADE => Coherence::Downgrade {
                req: r.u64("req")?,
                page: r.page_id()?,
            },
            MASTER_WRITTEN => Coherence::MasterWritten {
                req: r.u64("req")?,
                page: r.page_id()?,
            },
            WRITE_BACK => Coherence::WriteBack {
                req: r.u64("req")?,
                page: r.page_id()?,
                data: r.page()?,
            },
            PUSH => Coherence::Push {
                page: r.page_id()?,
                version: r.u64("version")?,
                data: r.page()?,
            },
            HAND_BACK => Coherence::HandBack {
                page: r.page_id()?,
                data: r.opt_page()?,
                next: r.opt_u32("next")?,
            },
            DIFF_BATCH => Coherence::DiffBatch {
                req: r.u64("req")?,
                diffs: decode_batch(r)?,
            },
            DIFF_ACK => Coherence::DiffAck {
                req: r.u64("req")?,
                page: r.page_id()?,
            },
            WRITE_NOTICES => Coherence::WriteNotices {
                pages: r.page_ids()?,
            },
            DROPPED => Coherence::Dropped {
                pages: decode_dropped(r)?,
            },
            PAGE_LOST => Coherence::PageLost {
                req: r.u64("req")?,
                page: r.page_id()?,
                writer: r.u32("writer")?,
            },
            other => return Err(Error::UnknownCommand(other)),
        })
    }
}

/// Decodes a [`Coherence::Dropped`] list: at least one page, at most [`MAX_BATCH_PAGES`].
fn decode_dropped(r: &mut Reader<'_>) -> Result<Vec<PageId>> {
    let pages = r.page_ids()?;
    if pages.is_empty() || pages.len() > MAX_BATCH_PAGES {
        return Err(Error::InvalidField {
            field: "dropped pages",
            value: pages.len() as u64,
        });
    }
    Ok(pages)
}

fn encode_runs(w: &mut Writer, runs: &[DiffRun]) {
    w.u32(u32::try_from(runs.len()).expect("diff runs over u32"));
    for run in runs {
        w.u16(run.offset);
        w.bytes(&run.bytes);
    }
}

/// Decodes a batch's page diffs: at least one, at most [`MAX_BATCH_PAGES`].
fn decode_batch(r: &mut Reader<'_>) -> Result<Vec<PageDiff>> {
    let n = r.count("batch pages", MAX_BATCH_PAGES)?;
    if n == 0 {
        return Err(Error::InvalidField {
            field: "batch pages",
            value: 0,
        });
    }
    let mut diffs = Vec::with_capacity(n);
    for _ in 0..n {
        let page = r.page_id()?;
        diffs.push(PageDiff {
            page,
            runs: decode_runs(r)?,
        });
    }
    Ok(diffs)
}

/// Decodes diff runs, rejecting any run that leaves the page or overlaps the one before.
fn decode_runs(r: &mut Reader<'_>) -> Result<Vec<DiffRun>> {
    let n = r.count("diff runs", PAGE_SIZE / 2)?;
    let mut runs = Vec::with_capacity(n);
    let mut next_free = 0usize;
    for _ in 0..n {
        let offset = r.u16("diff offset")?;
        let bytes = r.bytes("diff run", PAGE_SIZE)?;
        let start = usize::from(offset);
        if start < next_free || start + bytes.len() > PAGE_SIZE || bytes.is_empty() {
            return Err(Error::InvalidField {
                field: "diff run",
                value: u64::from(offset),
            });
        }
        next_free = start + bytes.len();
        runs.push(DiffRun {
            offset,
            bytes: bytes.to_vec(),
        });
    }
    Ok(runs)
}
