//! The journal decoder on arbitrary bytes: typed errors, never a panic.

use dsm_views::journal::{JOURNAL_COMMIT, JOURNAL_HEADER_LEN, JOURNAL_MAGIC, JOURNAL_VERSION};
use dsm_views::{Error, decode_journal, encode_journal};
use rand::rngs::StdRng;
use rand::{Rng, RngCore};

use crate::common::rng;

/// Decodes `bytes`; a success must re-encode to exactly the same bytes.
fn check(bytes: &[u8]) -> bool {
    match decode_journal(bytes) {
        Ok(j) => {
            let batch: Vec<(u64, &[u8])> = j.records.iter().map(|r| (r.offset, r.bytes)).collect();
            assert_eq!(encode_journal(j.sequence, &batch).unwrap(), bytes);
            true
        }
        Err(e) => {
            let _ = e.to_string(); // Display never panics either
            false
        }
    }
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let mut v = vec![0; rng.random_range(0..max)];
    rng.fill_bytes(&mut v);
    v
}

fn random_journal(rng: &mut StdRng) -> Vec<u8> {
    let payload = random_bytes(rng, 400);
    let mut batch = Vec::new();
    let mut at = 0;
    while at < payload.len() && batch.len() < 8 {
        let len = rng.random_range(0..=payload.len() - at);
        batch.push((rng.random::<u64>() >> 1, &payload[at..at + len]));
        at += len;
    }
    encode_journal(rng.random(), &batch).unwrap()
}

/// Seals `body` (header + records) with a valid checksum and commit marker, so that the
/// decoder gets past them to the record parser.
fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body.extend_from_slice(&JOURNAL_COMMIT);
    body
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = rng("journal::random_bytes_never_panic");
    for _ in 0..20_000 {
        let bytes = random_bytes(&mut rng, 300);
        assert!(!check(&bytes) || bytes.len() >= 40);
    }
}

#[test]
fn mutated_journals_never_panic() {
    let mut rng = rng("journal::mutated_journals_never_panic");
    let mut decoded = 0;
    for _ in 0..20_000 {
        let mut bytes = random_journal(&mut rng);
        match rng.random_range(0..4) {
            0 => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
                assert!(!check(&bytes), "a flipped bit went unnoticed");
            }
            1 => {
                let n = rng.random_range(0..bytes.len());
                bytes.truncate(n);
                assert!(!check(&bytes), "a prefix decoded");
            }
            2 => {
                bytes.extend_from_slice(&random_bytes(&mut rng, 20));
                decoded += usize::from(check(&bytes));
            }
            _ => decoded += usize::from(check(&bytes)),
        }
    }
    assert!(decoded > 0);
}

/// Valid framing around random header fields and record regions: reaches every check of
/// the record parser.
#[test]
fn sealed_random_records_never_panic() {
    let mut rng = rng("journal::sealed_random_records_never_panic");
    for _ in 0..20_000 {
        let region = random_bytes(&mut rng, 200);
        let mut body = Vec::with_capacity(JOURNAL_HEADER_LEN + region.len());
        body.extend_from_slice(&JOURNAL_MAGIC);
        body.extend_from_slice(&JOURNAL_VERSION.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        let count: u32 = if rng.random_bool(0.5) {
            rng.random_range(0..8)
        } else {
            rng.random()
        };
        body.extend_from_slice(&count.to_le_bytes());
        body.extend_from_slice(&rng.random::<u64>().to_le_bytes());
        let records_len = if rng.random_bool(0.8) {
            region.len() as u64
        } else {
            rng.random()
        };
        body.extend_from_slice(&records_len.to_le_bytes());
        body.extend_from_slice(&region);
        check(&seal(body));
    }
}

#[test]
fn typed_errors_for_each_kind_of_damage() {
    let good = encode_journal(3, &[(10, b"abc")]).unwrap();
    assert!(check(&good));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(decode_journal(&bad), Err(Error::JournalMagic(_))));
    let mut bad = good.clone();
    bad[8] = 9;
    assert!(matches!(
        decode_journal(&bad),
        Err(Error::JournalVersion { got: 9, .. })
    ));
    let mut bad = good.clone();
    bad[JOURNAL_HEADER_LEN + 1] ^= 1; // a record's offset
    assert!(matches!(
        decode_journal(&bad),
        Err(Error::JournalChecksum { .. })
    ));
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] = 0;
    assert!(matches!(
        decode_journal(&bad),
        Err(Error::JournalUncommitted(_))
    ));
    assert!(matches!(
        decode_journal(&good[..good.len() - 1]),
        Err(Error::JournalTruncated { .. })
    ));
    assert!(matches!(
        decode_journal(&good[..10]),
        Err(Error::JournalTruncated { .. })
    ));
    // A huge record count with valid framing: refused before it sizes an allocation.
    let mut body = good[..good.len() - 8].to_vec();
    body[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_journal(&seal(body)),
        Err(Error::JournalField {
            field: "record_count",
            ..
        })
    ));
    // A record whose offset + len overflows.
    let mut body = good[..good.len() - 8].to_vec();
    body[JOURNAL_HEADER_LEN..JOURNAL_HEADER_LEN + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        decode_journal(&seal(body)),
        Err(Error::JournalField {
            field: "record range",
            ..
        })
    ));
}
