//! Reassembles frames from a byte stream delivered in arbitrary chunks (one multishot-recv
//! buffer at a time), and opens each frame (checks its tag and decrypts its body) when the
//! connection is authenticated (see [`crate::session`]).
//!
//! Frames that lie wholly inside a chunk are opened and decoded in place (the chunk is the
//! reader's to overwrite); only a frame cut by a chunk boundary is copied, once, into the
//! reader's own buffer. A header is checked as soon as its 32 bytes are in, so the buffer
//! never grows beyond a header plus a body the limits allow (plus a tag). A tag is checked
//! before the body is decoded: nothing of a forged frame reaches a decoder but its
//! checksummed header.

use dsm_wire::{BodyCheck, Frame, HEADER_LEN, Header, Limits, decode_prefix_for};

use crate::session::{FrameSeal, TAG_LEN};

/// Why a stream cannot be read on: the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The frame is malformed (bad magic, checksum, cluster, length, command…).
    #[error(transparent)]
    Wire(#[from] dsm_wire::Error),
    /// The frame's tag is wrong: it was injected, altered, replayed or reordered on the path,
    /// or comes from someone without the session key.
    #[error(
        "frame #{seq} (command {command:#06x}) failed authentication: injected, altered, \
         replayed or reordered"
    )]
    Forged {
        /// Its position on the connection (frames counted from 0 after the handshake).
        seq: u64,
        /// The command its header claims.
        command: u16,
    },
}

/// Stream-to-frame reassembly for one connection.
#[derive(Debug)]
pub struct FrameReader {
    limits: Limits,
    partial: Vec<u8>,
    /// Opens each frame; `None` on a keyless connection (no tags on the wire).
    seal: Option<FrameSeal>,
}

impl FrameReader {
    /// A reader of untagged frames (a keyless connection) enforcing `limits` on every frame.
    pub fn new(limits: Limits) -> Self {
        FrameReader {
            limits,
            partial: Vec::new(),
            seal: None,
        }
    }

    /// A reader of an authenticated connection: each frame is sealed, and `seal` must open
    /// it.
    pub fn authenticated(limits: Limits, seal: FrameSeal) -> Self {
        FrameReader {
            limits,
            partial: Vec::new(),
            seal: Some(seal),
        }
    }

    /// Feeds the next bytes of the stream, pushing every frame they complete onto `frames`.
    ///
    /// The chunk's bytes are overwritten (bodies are decrypted in place).
    /// On error the frames before the bad one have been pushed; the stream cannot be resynced
    /// (frames carry no sync marker), so the caller closes the connection.
    pub fn feed(&mut self, mut chunk: &mut [u8], frames: &mut Vec<Frame>) -> Result<(), ReadError> {
        if !self.partial.is_empty() {
            chunk = self.complete_partial(chunk, frames)?;
            if !self.partial.is_empty() {
                return Ok(());
            }
        }
        while !chunk.is_empty() {
            match self.whole_len(chunk)? {
                Some(total) if total <= chunk.len() => {
                    let (whole, rest) = chunk.split_at_mut(total);
                    self.open(whole, frames)?;
                    chunk = rest;
                }
                _ => {
                    // Bounded: a cut header is < 32 bytes; a cut body was announced by a header
                    // `whole_len` already checked against `max_body_len`.
                    self.partial.extend_from_slice(chunk);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Bytes held back waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Bytes of the frame starting at `bytes` (tag included), once its header is in.
    fn whole_len(&self, bytes: &[u8]) -> Result<Option<usize>, ReadError> {
        if bytes.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = Header::parse(bytes, self.limits.cluster, self.limits.max_body_len)?;
        Ok(Some(HEADER_LEN + header.body_len as usize + self.tag_len()))
    }

    /// What guards the bodies of this connection's frames: its seal, or their checksums (the
    /// same for the frames this end sends, sealed exactly when the frames it reads are).
    pub fn body_check(&self) -> BodyCheck {
        BodyCheck::sealed_if(self.seal.is_some())
    }

    fn tag_len(&self) -> usize {
        if self.seal.is_some() { TAG_LEN } else { 0 }
    }

    /// Opens one whole frame (`whole` = header, body, tag), then decodes it.
    fn open(&mut self, whole: &mut [u8], frames: &mut Vec<Frame>) -> Result<(), ReadError> {
        let (frame, tag) = whole.split_at_mut(whole.len() - self.tag_len());
        if let Some(seal) = &mut self.seal {
            let seq = seal.seq();
            if !seal.open(frame, tag) {
                let command = u16::from_le_bytes([frame[6], frame[7]]);
                return Err(ReadError::Forged { seq, command });
            }
        }
        // An opened seal authenticated the body: its checksum would only repeat that.
        if let Some((decoded, _)) = decode_prefix_for(frame, &self.limits, self.body_check())? {
            frames.push(decoded);
        }
        Ok(())
    }

    /// Moves bytes from `chunk` into the partial frame until it is whole, checks and decodes
    /// it, and returns the rest of the chunk.
    fn complete_partial<'c>(
        &mut self,
        mut chunk: &'c mut [u8],
        frames: &mut Vec<Frame>,
    ) -> Result<&'c mut [u8], ReadError> {
        if self.partial.len() < HEADER_LEN {
            chunk = self.take(chunk, HEADER_LEN);
            if self.partial.len() < HEADER_LEN {
                return Ok(chunk);
            }
        }
        let total = self
            .whole_len(&self.partial)?
            .expect("a whole header is buffered");
        chunk = self.take(chunk, total);
        if self.partial.len() < total {
            return Ok(chunk);
        }
        let mut whole = std::mem::take(&mut self.partial);
        let opened = self.open(&mut whole, frames);
        self.partial = whole;
        self.partial.clear();
        opened.map(|()| chunk)
    }

    /// Appends bytes of `chunk` until the partial frame holds `want` bytes.
    fn take<'c>(&mut self, chunk: &'c mut [u8], want: usize) -> &'c mut [u8] {
        let n = want.saturating_sub(self.partial.len()).min(chunk.len());
        let (taken, rest) = chunk.split_at_mut(n);
        self.partial.extend_from_slice(taken);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsm_wire::{Coherence, Message, PageId, ViewMsg, encode};

    use crate::session::{FrameSeal, TAG_LEN};

    const CLUSTER: u64 = 9;

    fn stream() -> (Vec<Message>, Vec<u8>) {
        let msgs: Vec<Message> = (0..20u8)
            .map(|i| {
                if i % 3 == 0 {
                    Message::View(ViewMsg::Merge {
                        req: u64::from(i),
                        view: 1,
                        offset: 0,
                        data: vec![i; usize::from(i) * 700],
                    })
                } else {
                    Message::Coherence(Coherence::ReadRequest {
                        req: u64::from(i),
                        page: PageId { region: 1, page: 2 },
                        maps_master: false,
                    })
                }
            })
            .collect();
        let bytes = msgs.iter().flat_map(|m| encode(m, CLUSTER, 4)).collect();
        (msgs, bytes)
    }

    #[test]
    fn any_chunking_yields_the_same_frames() {
        let (msgs, bytes) = stream();
        for chunk in [1, 7, 31, 32, 33, 100, 4096, bytes.len()] {
            let mut reader = FrameReader::new(Limits::new(CLUSTER));
            let mut frames = Vec::new();
            let mut bytes = bytes.clone();
            for piece in bytes.chunks_mut(chunk) {
                reader.feed(piece, &mut frames).unwrap();
            }
            let got: Vec<Message> = frames.into_iter().map(|f| f.message).collect();
            assert_eq!(got, msgs, "chunk size {chunk}");
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn a_bad_header_is_reported_before_its_body_arrives() {
        let (_, mut bytes) = stream();
        bytes[0] ^= 0xff; // magic of the first frame
        let mut reader = FrameReader::new(Limits::new(CLUSTER));
        let mut frames = Vec::new();
        reader.feed(&mut bytes[..20], &mut frames).unwrap();
        assert!(matches!(
            reader.feed(&mut bytes[20..40], &mut frames),
            Err(ReadError::Wire(dsm_wire::Error::BadMagic(_)))
        ));
        assert!(frames.is_empty());
        assert!(reader.buffered() <= HEADER_LEN);
    }

    /// The frames of `stream()`, each sealed and followed by its tag under a fresh key, and
    /// the key.
    fn tagged() -> (Vec<Message>, Vec<Vec<u8>>, [u8; 32]) {
        let (msgs, _) = stream();
        let key = [7u8; 32];
        let mut seal = FrameSeal::new(key);
        let frames = msgs
            .iter()
            .map(|m| {
                let mut f = encode(m, CLUSTER, 4);
                seal.seal_at(&mut f, 0);
                f
            })
            .collect();
        (msgs, frames, key)
    }

    fn read_all(key: [u8; 32], bytes: &[u8], chunk: usize) -> (Vec<Message>, Option<ReadError>) {
        let mut reader = FrameReader::authenticated(Limits::new(CLUSTER), FrameSeal::new(key));
        let mut frames = Vec::new();
        let mut error = None;
        let mut bytes = bytes.to_vec();
        for piece in bytes.chunks_mut(chunk) {
            if let Err(e) = reader.feed(piece, &mut frames) {
                error = Some(e);
                break;
            }
        }
        (frames.into_iter().map(|f| f.message).collect(), error)
    }

    #[test]
    fn sealed_bodies_do_not_travel_in_clear() {
        let (msgs, frames, _) = tagged();
        for (m, sealed) in msgs.iter().zip(&frames) {
            let clear = encode(m, CLUSTER, 4);
            assert_eq!(
                sealed[..HEADER_LEN],
                clear[..HEADER_LEN],
                "headers are in clear"
            );
            assert_ne!(
                sealed[HEADER_LEN..clear.len()],
                clear[HEADER_LEN..],
                "a body in clear"
            );
        }
    }

    #[test]
    fn tagged_frames_read_in_any_chunking() {
        let (msgs, frames, key) = tagged();
        let bytes = frames.concat();
        for chunk in [1, 15, 16, 17, 32, 48, 100, 4096, bytes.len()] {
            assert_eq!(
                read_all(key, &bytes, chunk),
                (msgs.clone(), None),
                "{chunk}"
            );
        }
    }

    #[test]
    fn altered_replayed_reordered_or_untagged_frames_stop_the_stream() {
        let (msgs, frames, key) = tagged();
        let forged = |seq| {
            Some(ReadError::Forged {
                seq,
                command: 0x0201,
            })
        };
        // A body byte altered in frame 1 (checksums recomputed would not help either: the
        // tag covers the header).
        let mut altered = frames.clone();
        let n = altered[1].len();
        altered[1][n - TAG_LEN - 1] ^= 1;
        let (got, err) = read_all(key, &altered.concat(), 4096);
        assert_eq!(got, msgs[..1]);
        assert!(matches!(
            err,
            Some(ReadError::Wire(_)) | Some(ReadError::Forged { .. })
        ));
        // Frame 1 sent twice (a replay), and frames 1 and 2 swapped.
        let replayed = [&frames[..2], &frames[1..2]].concat().concat();
        assert_eq!(read_all(key, &replayed, 7), (msgs[..2].to_vec(), forged(2)));
        let swapped = [&frames[..1], &frames[2..3], &frames[1..2]]
            .concat()
            .concat();
        assert_eq!(
            read_all(key, &swapped, 4096),
            (msgs[..1].to_vec(), forged(1))
        );
        // A frame with a valid header and checksums but no key: injected.
        let injected = [
            frames[0].clone(),
            encode(&msgs[1], CLUSTER, 4),
            vec![0; TAG_LEN],
        ];
        assert_eq!(
            read_all(key, &injected.concat(), 33),
            (msgs[..1].to_vec(), forged(1))
        );
        // Another key altogether.
        let (got, err) = read_all([8; 32], &frames.concat(), 4096);
        assert!(got.is_empty());
        assert!(matches!(err, Some(ReadError::Forged { seq: 0, .. })));
    }
}
