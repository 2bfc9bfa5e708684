//! Feeds arbitrary bytes to every decoder of outside bytes in dsm-wire.
//!
//! Raw input exercises the header checks; the same input resealed with a valid header (the
//! first two bytes pick the command) reaches every body decoder past the checksums. A frame
//! that decodes must re-encode to exactly the bytes it came from.
#![no_main]

use dsm_wire::{HEADER_LEN, Header, Limits, decode, decode_prefix, encode};
use libfuzzer_sys::fuzz_target;

const CLUSTER: u64 = 0xf022;

fuzz_target!(|data: &[u8]| {
    let mut limits = Limits::new(CLUSTER);
    limits.max_pages_per_region = 1 << 12;
    let _ = decode(data, &limits);
    let _ = decode_prefix(data, &limits);

    if data.len() >= 2 {
        let command = u16::from_le_bytes([data[0], data[1]]);
        let body = &data[2..];
        let header = Header::seal(command, CLUSTER, 7, body);
        let mut frame = header.to_bytes().to_vec();
        frame.extend_from_slice(body);
        if let Ok(decoded) = decode(&frame, &limits) {
            assert_eq!(encode(&decoded.message, CLUSTER, 7), frame, "re-encoding differs");
            assert_eq!(frame.len() - HEADER_LEN, body.len());
        }
    }
});
