//! Feeds the transport's stream reader (`FrameReader`) arbitrary byte streams cut into
//! arbitrary chunks, as multishot receives deliver them.
//!
//! The input is read as segments: each is either raw bytes or a frame sealed with a valid
//! header around fuzzer-chosen command and body, so the stream reaches past the checksums into
//! every body decoder and across frame boundaries. The same stream decoded whole with
//! `decode_prefix` is the oracle: chunked feeding must yield the same frames and the same
//! error, and the reader never buffers more than a header plus the largest allowed body.
#![no_main]

use dsm_tcp_fallback::FrameReader;
use dsm_wire::{Frame, HEADER_LEN, Header, Limits, decode_prefix};
use libfuzzer_sys::fuzz_target;

const CLUSTER: u64 = 0xf0f0;

fuzz_target!(|data: &[u8]| {
    let Some((&cut_seed, rest)) = data.split_first() else {
        return;
    };
    let mut limits = Limits::new(CLUSTER);
    limits.max_body_len = 1 << 16;
    limits.max_pages_per_region = 1 << 12;
    let stream = build_stream(rest);

    let (expected, expected_err) = decode_whole(&stream, &limits);
    let mut reader = FrameReader::new(limits.clone());
    let mut frames = Vec::new();
    let mut err = None;
    let mut at = 0;
    let mut step = usize::from(cut_seed) + 1;
    while at < stream.len() {
        let end = (at + step).min(stream.len());
        if let Err(e) = reader.feed(&stream[at..end], &mut frames) {
            err = Some(e);
            break;
        }
        assert!(reader.buffered() <= HEADER_LEN + limits.max_body_len as usize);
        at = end;
        step = (step * 7 + 3) % 97 + 1;
    }
    assert_eq!(
        frames, expected,
        "chunked frames differ from whole-stream decode"
    );
    assert_eq!(
        err, expected_err,
        "chunked error differs from whole-stream decode"
    );
});

/// Segments: `[kind, len, cmd_lo, cmd_hi, body...]`; odd kind seals a frame around the body.
fn build_stream(mut input: &[u8]) -> Vec<u8> {
    let mut stream = Vec::new();
    while let [kind, len, lo, hi, tail @ ..] = input {
        // Bit 1 of `kind` stretches the body so page-sized messages get built too.
        let n = usize::from(*len) * if kind & 2 == 0 { 1 } else { 17 };
        let n = n.min(tail.len());
        let (body, next) = tail.split_at(n);
        if kind & 1 == 1 {
            let command = u16::from_le_bytes([*lo, *hi]);
            let sender = u32::from(*kind >> 4);
            stream.extend_from_slice(&Header::seal(command, CLUSTER, sender, body).to_bytes());
        }
        stream.extend_from_slice(body);
        input = next;
    }
    stream.extend_from_slice(input);
    stream
}

/// The oracle: frames decoded from the whole stream, and the error that stopped it, if any
/// (an incomplete last frame is no error).
fn decode_whole(stream: &[u8], limits: &Limits) -> (Vec<Frame>, Option<dsm_wire::Error>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        match decode_prefix(rest, limits) {
            Ok(Some((frame, used))) => {
                frames.push(frame);
                rest = &rest[used..];
            }
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}
