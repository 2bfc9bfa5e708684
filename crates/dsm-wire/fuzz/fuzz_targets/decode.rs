//! Feeds arbitrary bytes to every decoder of outside bytes in dsm-wire.
//!
//! Raw input exercises the header checks; the same input resealed with a valid header (the
//! first two bytes pick the command) reaches every body decoder past the checksums, and so
//! does the same frame read as a sealed connection reads it (no body checksum); both reads must
//! agree. A frame that decodes must re-encode to exactly the bytes it came from.
#![no_main]

use dsm_wire::{
    BodyCheck, HEADER_LEN, Header, Limits, decode, decode_prefix, decode_prefix_for, encode,
    encode_for,
};
use libfuzzer_sys::fuzz_target;

const CLUSTER: u64 = 0xf022;

fuzz_target!(|data: &[u8]| {
    let mut limits = Limits::new(CLUSTER);
    limits.max_pages_per_region = 1 << 12;
    let _ = decode(data, &limits);
    let _ = decode_prefix(data, &limits);
    let _ = decode_prefix_for(data, &limits, BodyCheck::Sealed);

    if data.len() >= 2 {
        let command = u16::from_le_bytes([data[0], data[1]]);
        let body = &data[2..];
        let header = Header::seal(command, CLUSTER, 7, body);
        let mut frame = header.to_bytes().to_vec();
        frame.extend_from_slice(body);
        let sealed_read = decode_prefix_for(&frame, &limits, BodyCheck::Sealed);
        let checked_read = decode_prefix(&frame, &limits);
        assert_eq!(
            sealed_read, checked_read,
            "a sealed read differs on a checksummed frame"
        );
        if let Ok(decoded) = decode(&frame, &limits) {
            assert_eq!(
                encode(&decoded.message, CLUSTER, 7),
                frame,
                "re-encoding differs"
            );
            assert_eq!(frame.len() - HEADER_LEN, body.len());
            let sealed = encode_for(&decoded.message, CLUSTER, 7, BodyCheck::Sealed);
            assert_eq!(
                sealed[HEADER_LEN..],
                frame[HEADER_LEN..],
                "sealed body differs"
            );
        }
    }
});
