//! Feeds the transport's stream reader (`FrameReader`) arbitrary byte streams cut into
//! arbitrary chunks, as multishot receives deliver them, untagged (a keyless connection) and
//! tagged (an authenticated one).
//!
//! The input is read as segments: each is either raw bytes or a frame sealed with a valid
//! header around fuzzer-chosen command and body, so the stream reaches past the checksums into
//! every body decoder and across frame boundaries. Untagged, the same stream decoded whole
//! with `decode_prefix` is the oracle: chunked feeding must yield the same frames and the same
//! error. Tagged (sealed frames followed by their tag, bit 2 of a segment's kind spoiling the
//! tag), the oracle is the same reader fed the whole stream at once, and every frame it yields
//! must be one that was sealed with a good tag, in order. Either way the reader never buffers
//! more than a header plus the largest allowed body (plus a tag).
#![no_main]

use dsm_tcp_fallback::{FrameSeal, FrameReader, ReadError, TAG_LEN};
use dsm_wire::{Frame, HEADER_LEN, Header, Limits, decode, decode_prefix};
use libfuzzer_sys::fuzz_target;

const CLUSTER: u64 = 0xf0f0;
const KEY: [u8; 32] = [0x3c; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&cut_seed, rest)) = data.split_first() else {
        return;
    };
    let mut limits = Limits::new(CLUSTER);
    limits.max_body_len = 1 << 16;
    limits.max_pages_per_region = 1 << 12;

    let (stream, _) = build_stream(rest, false);
    let (expected, expected_err) = decode_whole(&stream, &limits);
    let (frames, err) = feed_chunked(FrameReader::new(limits.clone()), &stream, cut_seed, &limits);
    assert_eq!(
        frames, expected,
        "chunked frames differ from whole-stream decode"
    );
    assert_eq!(
        err,
        expected_err.map(ReadError::Wire),
        "chunked error differs"
    );

    let (stream, sealed) = build_stream(rest, true);
    let tagged = || FrameReader::authenticated(limits.clone(), FrameSeal::new(KEY));
    let (whole, whole_err) = feed_chunked(tagged(), &stream, u8::MAX, &limits);
    let (frames, err) = feed_chunked(tagged(), &stream, cut_seed, &limits);
    assert_eq!(
        frames, whole,
        "chunked tagged frames differ from the whole stream's"
    );
    assert_eq!(err, whole_err, "chunked tagged error differs");
    let good: Vec<Frame> = sealed
        .iter()
        .map_while(|f| f.as_ref().and_then(|f| decode(f, &limits).ok()))
        .collect();
    assert!(
        frames.len() <= good.len() && frames[..] == good[..frames.len()],
        "a frame with a bad tag got through"
    );
});

/// Feeds `stream` to `reader` in chunks whose sizes follow from `cut_seed`.
fn feed_chunked(
    mut reader: FrameReader,
    stream: &[u8],
    cut_seed: u8,
    limits: &Limits,
) -> (Vec<Frame>, Option<ReadError>) {
    let mut frames = Vec::new();
    let mut stream = stream.to_vec(); // the reader opens frames in place
    let mut at = 0;
    let mut step = if cut_seed == u8::MAX {
        stream.len().max(1)
    } else {
        usize::from(cut_seed) + 1
    };
    while at < stream.len() {
        let end = (at + step).min(stream.len());
        if let Err(e) = reader.feed(&mut stream[at..end], &mut frames) {
            return (frames, Some(e));
        }
        assert!(reader.buffered() <= HEADER_LEN + limits.max_body_len as usize + TAG_LEN);
        at = end;
        step = (step * 7 + 3) % 97 + 1;
    }
    (frames, None)
}

/// Segments: `[kind, len, cmd_lo, cmd_hi, body...]`; odd kind seals a frame around the body.
/// With `tags`, a sealed frame is followed by its tag (spoiled when bit 2 of `kind` is set);
/// also returns each sealed frame in order, `None` for one whose tag was spoiled.
fn build_stream(mut input: &[u8], tags: bool) -> (Vec<u8>, Vec<Option<Vec<u8>>>) {
    let mut stream = Vec::new();
    let mut sealed = Vec::new();
    let mut seal = FrameSeal::new(KEY);
    while let [kind, len, lo, hi, tail @ ..] = input {
        // Bit 1 of `kind` stretches the body so page-sized messages get built too.
        let n = usize::from(*len) * if kind & 2 == 0 { 1 } else { 17 };
        let n = n.min(tail.len());
        let (body, next) = tail.split_at(n);
        if kind & 1 == 1 {
            let command = u16::from_le_bytes([*lo, *hi]);
            let sender = u32::from(*kind >> 4);
            let mut frame = Header::seal(command, CLUSTER, sender, body)
                .to_bytes()
                .to_vec();
            frame.extend_from_slice(body);
            if tags {
                let clear = frame.clone();
                let mut tag = seal.seal(&mut frame);
                let spoiled = kind & 4 != 0;
                if spoiled {
                    tag[0] ^= 1;
                }
                stream.extend_from_slice(&frame);
                stream.extend_from_slice(&tag);
                sealed.push((!spoiled).then_some(clear));
            } else {
                stream.extend_from_slice(&frame);
            }
        } else {
            stream.extend_from_slice(body);
        }
        input = next;
    }
    stream.extend_from_slice(input);
    (stream, sealed)
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
