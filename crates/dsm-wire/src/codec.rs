//! Little-endian body encoding: a growing writer and a bounds-checked reader.
//!
//! The reader is the only place bytes from outside become values. Every read checks the bytes
//! left first and every count is checked against a limit before anything is allocated from it.

use crate::{Error, Limits, PAGE_SIZE, Page, PageId, Result};

/// Appends little-endian fields to a body, or only counts them (see [`Writer::counter`]).
#[derive(Debug, Default)]
pub struct Writer {
    bytes: Vec<u8>,
    written: usize,
    count_only: bool,
}

impl Writer {
    /// A writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            bytes: Vec::with_capacity(capacity),
            ..Writer::default()
        }
    }
    /// A writer that stores nothing and only counts the bytes it is given: a body's length
    /// from the encoder itself, so it cannot drift from what `encode` produces.
    pub fn counter() -> Self {
        Writer {
            count_only: true,
            ..Writer::default()
        }
    }
    /// Bytes appended so far (counted or stored).
    pub fn written(&self) -> usize {
        self.written
    }
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.raw(&[v]);
    }
    /// Appends a u16.
    pub fn u16(&mut self, v: u16) {
        self.raw(&v.to_le_bytes());
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) {
        self.raw(&v.to_le_bytes());
    }
    /// Appends raw bytes with no length prefix (fixed-size fields).
    pub fn raw(&mut self, v: &[u8]) {
        self.written += v.len();
        if !self.count_only {
            self.bytes.extend_from_slice(v);
        }
    }
    /// Appends a u32 length prefix then the bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(len_u32(v.len()));
        self.raw(v);
    }
    /// Appends a page id.
    pub fn page_id(&mut self, p: PageId) {
        self.u32(p.region);
        self.u32(p.page);
    }
    /// Appends a list of page ids with a u32 count.
    pub fn page_ids(&mut self, pages: &[PageId]) {
        self.u32(len_u32(pages.len()));
        for p in pages {
            self.page_id(*p);
        }
    }
    /// Appends an optional u32: a presence byte, then the value (0 when absent).
    pub fn opt_u32(&mut self, v: Option<u32>) {
        self.u8(u8::from(v.is_some()));
        self.u32(v.unwrap_or(0));
    }
    /// Appends an optional page: a presence byte, then 4096 bytes.
    pub fn opt_page(&mut self, page: Option<&Page>) {
        match page {
            Some(p) => {
                self.u8(1);
                self.raw(&p[..]);
            }
            None => self.u8(0),
        }
    }
    /// The encoded body (empty for a [`Writer::counter`]).
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

pub(crate) fn len_u32(len: usize) -> u32 {
    // Encoders are called on values this process built; a 4 GiB field is a programming error.
    u32::try_from(len).expect("field longer than u32::MAX")
}

/// Reads little-endian fields from a body, never past its end.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
    limits: &'a Limits,
}

impl<'a> Reader<'a> {
    /// A reader over `body`, validating against `limits`.
    pub fn new(body: &'a [u8], limits: &'a Limits) -> Self {
        Reader { rest: body, limits }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(Error::Truncated {
                what,
                needed: n,
                available: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
    /// Reads one byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    /// Reads a u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// Reads a u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// Reads a u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// Reads a fixed-size array.
    pub fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        self.array(what)
    }
    /// Reads a 0/1 flag; anything else is rejected.
    pub fn flag(&mut self, what: &'static str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Error::InvalidField {
                field: what,
                value: u64::from(v),
            }),
        }
    }
    /// Reads an optional u32 as [`Writer::opt_u32`] writes it: an absent value must be 0, so
    /// that every value has one encoding.
    pub fn opt_u32(&mut self, what: &'static str) -> Result<Option<u32>> {
        let present = self.flag(what)?;
        let value = self.u32(what)?;
        match (present, value) {
            (true, v) => Ok(Some(v)),
            (false, 0) => Ok(None),
            (false, v) => Err(Error::InvalidField {
                field: what,
                value: u64::from(v),
            }),
        }
    }
    /// Reads a u32 count and checks it against `limit` before anything is allocated from it.
    pub fn count(&mut self, what: &'static str, limit: usize) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n > limit {
            return Err(Error::CountTooLarge {
                field: what,
                count: n as u64,
                limit: limit as u64,
            });
        }
        Ok(n)
    }
    /// Reads a length-prefixed byte string of at most `limit` bytes.
    pub fn bytes(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8]> {
        let n = self.count(what, limit)?;
        self.take(n, what)
    }
    /// Reads a length-prefixed UTF-8 string of at most `limit` bytes.
    pub fn string(&mut self, what: &'static str, limit: usize) -> Result<String> {
        let bytes = self.bytes(what, limit)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| Error::InvalidField {
                field: what,
                value: e.valid_up_to() as u64,
            })
    }
    /// Reads a page id, checking the index against the cluster's largest region.
    pub fn page_id(&mut self) -> Result<PageId> {
        let region = self.u32("region")?;
        let page = self.u32("page index")?;
        if page >= self.limits.max_pages_per_region {
            return Err(Error::PageOutOfRange {
                page,
                limit: self.limits.max_pages_per_region,
            });
        }
        Ok(PageId { region, page })
    }
    /// Reads a counted list of page ids.
    pub fn page_ids(&mut self) -> Result<Vec<PageId>> {
        let n = self.count("page list", self.limits.max_list_len)?;
        // The count is bounded and each id needs 8 bytes: reject early on a short body.
        self.expect_at_least(n * 8, "page list")?;
        (0..n).map(|_| self.page_id()).collect()
    }
    /// Fails unless at least `needed` bytes are left: a list whose count promises more than
    /// the body holds is refused before anything is allocated for it.
    pub fn expect_at_least(&self, needed: usize, what: &'static str) -> Result<()> {
        if self.rest.len() < needed {
            return Err(Error::Truncated {
                what,
                needed,
                available: self.rest.len(),
            });
        }
        Ok(())
    }
    /// Reads a page (4096 bytes).
    pub fn page(&mut self) -> Result<Page> {
        let bytes = self.take(PAGE_SIZE, "page data")?;
        let mut page: Page = Box::new([0u8; PAGE_SIZE]);
        page.copy_from_slice(bytes);
        Ok(page)
    }
    /// Reads an optional page written by [`Writer::opt_page`].
    pub fn opt_page(&mut self) -> Result<Option<Page>> {
        if self.flag("page present")? {
            self.page().map(Some)
        } else {
            Ok(None)
        }
    }
    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        self.limits
    }
    /// Fails unless every byte was consumed.
    pub fn finish(self, command: u16) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                command,
                extra: self.rest.len(),
            })
        }
    }
}
