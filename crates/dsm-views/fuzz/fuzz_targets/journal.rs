//! Feeds arbitrary bytes to the journal decoder, the one decoder of bytes from outside in
//! dsm-views (a journal is whatever a crash, a disk or a person left in the file).
//!
//! Raw input exercises the framing checks; the same input resealed with a valid checksum and
//! commit marker reaches the record parser. A journal that decodes must re-encode to exactly
//! the bytes it came from.
#![no_main]

use dsm_views::journal::{JOURNAL_COMMIT, JOURNAL_TRAILER_LEN};
use dsm_views::{decode_journal, encode_journal};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(journal) = decode_journal(bytes) {
        let batch: Vec<(u64, &[u8])> = journal.records.iter().map(|r| (r.offset, r.bytes)).collect();
        let again = encode_journal(journal.sequence, &batch).expect("a decoded journal re-encodes");
        assert_eq!(again, bytes, "re-encoding differs");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // Reseal: replace the last trailer's worth of bytes with a valid one.
    let body = &data[..data.len().saturating_sub(JOURNAL_TRAILER_LEN)];
    let mut sealed = body.to_vec();
    sealed.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    sealed.extend_from_slice(&JOURNAL_COMMIT);
    check(&sealed);
});

