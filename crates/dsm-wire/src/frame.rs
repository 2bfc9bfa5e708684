//! Whole frames: header + body, encoded and decoded with every check in one place.

use crate::codec::{Reader, Writer};
use crate::header::{BodyCheck, HEADER_LEN, Header};
use crate::{Error, Limits, Message, NodeId, Result};

/// A decoded frame: who sent it and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Sender's rank as carried in the header.
    pub sender: NodeId,
    /// The message.
    pub message: Message,
}

/// Encodes `message` from `sender` as one frame (header and body) for `cluster`.
pub fn encode(message: &Message, cluster: u64, sender: NodeId) -> Vec<u8> {
    encode_for(message, cluster, sender, BodyCheck::Crc)
}

/// [`encode`] for a frame whose body `check` guards: without a body checksum when it will
/// travel sealed.
pub fn encode_for(message: &Message, cluster: u64, sender: NodeId, check: BodyCheck) -> Vec<u8> {
    // The body is written after a header-sized gap and the header over it: one buffer, and a
    // page in the body is copied once.
    let mut writer = Writer::with_capacity(HEADER_LEN + 64);
    writer.raw(&[0; HEADER_LEN]);
    message.encode_body(&mut writer);
    let mut frame = writer.finish();
    let body = &frame[HEADER_LEN..];
    let header = Header::seal_for(message.command(), cluster, sender, body, check);
    frame[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    frame
}

/// Decodes exactly one frame from `bytes` (no bytes may follow it).
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Frame> {
    let (frame, used) = decode_prefix(bytes, limits)?.ok_or(Error::Truncated {
        what: "frame",
        needed: frame_len_hint(bytes),
        available: bytes.len(),
    })?;
    if used != bytes.len() {
        return Err(Error::TrailingBytes {
            command: frame.message.command(),
            extra: bytes.len() - used,
        });
    }
    Ok(frame)
}

/// Decodes the frame at the start of a stream buffer.
///
/// `Ok(None)` means more bytes are needed (and nothing is wrong yet); `Ok(Some((frame, n)))`
/// consumed `n` bytes. A malformed header is reported as soon as its 32 bytes are in, before
/// waiting for a body whose length cannot be trusted.
pub fn decode_prefix(bytes: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>> {
    decode_prefix_for(bytes, limits, BodyCheck::Crc)
}

/// [`decode_prefix`] of a frame whose body `check` guards: with [`BodyCheck::Sealed`] (the
/// caller opened the frame's seal, which authenticated header and body) the body checksum is
/// not looked at; every other check is made.
pub fn decode_prefix_for(
    bytes: &[u8],
    limits: &Limits,
    check: BodyCheck,
) -> Result<Option<(Frame, usize)>> {
    if bytes.len() < HEADER_LEN {
        return Ok(None);
    }
    let header = Header::parse(bytes, limits.cluster, limits.max_body_len)?;
    let total = HEADER_LEN + header.body_len as usize;
    let Some(body) = bytes.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    if check == BodyCheck::Crc {
        header.check_body(body)?;
    }
    let mut reader = Reader::new(body, limits);
    let message = Message::decode_body(header.command, &mut reader)?;
    reader.finish(header.command)?;
    Ok(Some((
        Frame {
            sender: header.sender,
            message,
        },
        total,
    )))
}

fn frame_len_hint(bytes: &[u8]) -> usize {
    bytes.get(20..24).map_or(HEADER_LEN, |b| {
        HEADER_LEN + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    })
}
