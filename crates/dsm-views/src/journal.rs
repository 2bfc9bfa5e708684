//! The redo journal's byte layout: encoding a merge, decoding what a crash left behind.
//!
//! All integers little-endian.
//!
//! ```text
//! header (32 bytes)
//!   0  magic          8  b"DSMVJRNL"
//!   8  version        2  1
//!  10  reserved       2  0
//!  12  record_count   4  records that follow
//!  16  sequence       8  merge sequence number of this file (informational)
//!  24  records_len    8  bytes of all records together
//! records (records_len bytes), each:
//!   0  offset         8  file offset
//!   8  len            8  byte count
//!  16  bytes        len
//! trailer (8 bytes)
//!   0  crc32c         4  over the header and the records
//!   4  commit         4  b"CMIT"
//! ```
//!
//! A journal is committed only when all of it decodes: the declared length is exactly what the
//! file holds, the commit marker is in place and the checksum matches. The decoder trusts
//! nothing: every length is checked before it is used, so arbitrary bytes give an [`Error`],
//! never a panic or an allocation sized by the input.

use crate::{Error, Result};

/// First eight bytes of every journal.
pub const JOURNAL_MAGIC: [u8; 8] = *b"DSMVJRNL";
/// Layout version this build writes and reads.
pub const JOURNAL_VERSION: u16 = 1;
/// Bytes of the journal header.
pub const JOURNAL_HEADER_LEN: usize = 32;
/// Bytes of each record's header (offset, length).
pub const JOURNAL_RECORD_HEADER_LEN: usize = 16;
/// Bytes of the trailer (checksum, commit marker).
pub const JOURNAL_TRAILER_LEN: usize = 8;
/// Last four bytes of a committed journal.
pub const JOURNAL_COMMIT: [u8; 4] = *b"CMIT";
/// Largest journal written or read: one merge's records may not exceed it (about 1 GiB).
pub const MAX_JOURNAL_LEN: u64 = 1 << 30;

const FRAMING_LEN: u64 = (JOURNAL_HEADER_LEN + JOURNAL_TRAILER_LEN) as u64;

/// A decoded, committed journal: one merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal<'a> {
    /// The merge's sequence number.
    pub sequence: u64,
    /// Its records, in the order they apply (a later record wins where two overlap).
    pub records: Vec<Record<'a>>,
}

/// Bytes to write at a file offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// File offset.
    pub offset: u64,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// Bytes the journal of `batch` takes, refused when over [`MAX_JOURNAL_LEN`].
pub fn journal_len(batch: &[(u64, &[u8])]) -> Result<u64> {
    let records: u64 = batch
        .iter()
        .map(|(_, b)| JOURNAL_RECORD_HEADER_LEN as u64 + b.len() as u64)
        .sum();
    let len = records.saturating_add(FRAMING_LEN);
    if len > MAX_JOURNAL_LEN || u32::try_from(batch.len()).is_err() {
        return Err(Error::MergeTooLarge {
            records: batch.len(),
            len,
            limit: MAX_JOURNAL_LEN,
        });
    }
    Ok(len)
}

/// Encodes the journal of one merge.
pub fn encode_journal(sequence: u64, batch: &[(u64, &[u8])]) -> Result<Vec<u8>> {
    let len = journal_len(batch)?;
    let records_len = len - FRAMING_LEN;
    let count = u32::try_from(batch.len()).map_err(|_| Error::MergeTooLarge {
        records: batch.len(),
        len,
        limit: MAX_JOURNAL_LEN,
    })?;
    // len <= MAX_JOURNAL_LEN (1 GiB) fits in usize on every target dsm runs on (64-bit Linux).
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    out.extend_from_slice(&JOURNAL_MAGIC);
    out.extend_from_slice(&JOURNAL_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&records_len.to_le_bytes());
    for (offset, bytes) in batch {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&JOURNAL_COMMIT);
    Ok(out)
}

/// Decodes a journal, refusing anything but a complete, committed one.
pub fn decode_journal(bytes: &[u8]) -> Result<Journal<'_>> {
    let mut r = Reader { bytes, at: 0 };
    let magic: [u8; 8] = r.array("header")?;
    if magic != JOURNAL_MAGIC {
        return Err(Error::JournalMagic(magic));
    }
    let version = u16::from_le_bytes(r.array("header")?);
    if version != JOURNAL_VERSION {
        return Err(Error::JournalVersion {
            got: version,
            expected: JOURNAL_VERSION,
        });
    }
    let reserved = u16::from_le_bytes(r.array("header")?);
    if reserved != 0 {
        return Err(Error::JournalField {
            field: "reserved",
            value: reserved.into(),
        });
    }
    let count = u32::from_le_bytes(r.array("header")?);
    let sequence = u64::from_le_bytes(r.array("header")?);
    let records_len = u64::from_le_bytes(r.array("header")?);
    let body = check_trailer(bytes, records_len)?;
    let records = decode_records(&body[JOURNAL_HEADER_LEN..], count)?;
    Ok(Journal { sequence, records })
}

/// Checks the length, commit marker and checksum; returns header and records.
fn check_trailer(bytes: &[u8], records_len: u64) -> Result<&[u8]> {
    let total = records_len
        .checked_add(FRAMING_LEN)
        .filter(|&t| t <= MAX_JOURNAL_LEN)
        .ok_or(Error::JournalField {
            field: "records_len",
            value: records_len,
        })?;
    let available = bytes.len() as u64;
    if available < total {
        return Err(Error::JournalTruncated {
            what: "records",
            needed: total,
            available,
        });
    }
    if available > total {
        return Err(Error::JournalField {
            field: "trailing bytes",
            value: available - total,
        });
    }
    // total == bytes.len() from here on, so these slices are in bounds.
    let (body, trailer) = bytes.split_at(bytes.len() - JOURNAL_TRAILER_LEN);
    let mut r = Reader {
        bytes: trailer,
        at: 0,
    };
    let crc = u32::from_le_bytes(r.array("trailer")?);
    let commit: [u8; 4] = r.array("trailer")?;
    if commit != JOURNAL_COMMIT {
        return Err(Error::JournalUncommitted(commit));
    }
    let computed = crc32c::crc32c(body);
    if crc != computed {
        return Err(Error::JournalChecksum { got: crc, computed });
    }
    Ok(body)
}

fn decode_records(region: &[u8], count: u32) -> Result<Vec<Record<'_>>> {
    // Every record takes at least its header, so a count the region cannot hold is refused
    // before it sizes an allocation.
    if u64::from(count) > (region.len() / JOURNAL_RECORD_HEADER_LEN) as u64 {
        return Err(Error::JournalField {
            field: "record_count",
            value: count.into(),
        });
    }
    let mut r = Reader {
        bytes: region,
        at: 0,
    };
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let offset = u64::from_le_bytes(r.array("record header")?);
        let len = u64::from_le_bytes(r.array("record header")?);
        if offset.checked_add(len).is_none() {
            return Err(Error::JournalField {
                field: "record range",
                value: offset,
            });
        }
        let bytes = r.take("record bytes", len)?;
        records.push(Record { offset, bytes });
    }
    if r.at != region.len() {
        return Err(Error::JournalField {
            field: "records_len",
            value: region.len() as u64,
        });
    }
    Ok(records)
}

/// A bounds-checked cursor over journal bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, len: u64) -> Result<&'a [u8]> {
        let available = (self.bytes.len() - self.at) as u64;
        if len > available {
            return Err(Error::JournalTruncated {
                what,
                needed: len,
                available,
            });
        }
        // len <= available, a usize.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let out = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(what, N as u64)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let batch: [(u64, &[u8]); 3] = [(5, b"abc"), (100, b""), (7, b"xyz!")];
        let bytes = encode_journal(42, &batch).unwrap();
        assert_eq!(bytes.len() as u64, journal_len(&batch).unwrap());
        let j = decode_journal(&bytes).unwrap();
        assert_eq!(j.sequence, 42);
        let got: Vec<_> = j.records.iter().map(|r| (r.offset, r.bytes)).collect();
        assert_eq!(got, batch);
    }

    #[test]
    fn every_prefix_is_refused() {
        let bytes = encode_journal(1, &[(0, b"hello"), (9, b"world")]).unwrap();
        for n in 0..bytes.len() {
            assert!(decode_journal(&bytes[..n]).is_err(), "prefix {n} decoded");
        }
    }
}
