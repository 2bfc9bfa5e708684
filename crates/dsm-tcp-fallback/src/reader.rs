//! Reassembles frames from a byte stream delivered in arbitrary chunks (one multishot-recv
//! buffer at a time).
//!
//! Frames that lie wholly inside a chunk are decoded in place; only a frame cut by a chunk
//! boundary is copied, once, into the reader's own buffer. A header is checked as soon as its
//! 32 bytes are in, so the buffer never grows beyond a header plus a body the limits allow.

use dsm_wire::{Frame, HEADER_LEN, Header, Limits, decode_prefix};

/// Stream-to-frame reassembly for one connection.
#[derive(Debug)]
pub struct FrameReader {
    limits: Limits,
    partial: Vec<u8>,
}

impl FrameReader {
    /// A reader enforcing `limits` on every frame.
    pub fn new(limits: Limits) -> Self {
        FrameReader {
            limits,
            partial: Vec::new(),
        }
    }

    /// Feeds the next bytes of the stream, pushing every frame they complete onto `frames`.
    ///
    /// On error the frames before the bad one have been pushed; the stream cannot be resynced
    /// (frames carry no sync marker), so the caller closes the connection.
    pub fn feed(&mut self, mut chunk: &[u8], frames: &mut Vec<Frame>) -> dsm_wire::Result<()> {
        if !self.partial.is_empty() {
            chunk = self.complete_partial(chunk, frames)?;
            if !self.partial.is_empty() {
                return Ok(());
            }
        }
        while !chunk.is_empty() {
            match decode_prefix(chunk, &self.limits)? {
                Some((frame, used)) => {
                    frames.push(frame);
                    chunk = &chunk[used..];
                }
                None => {
                    // Bounded: a cut header is < 32 bytes; a cut body was announced by a header
                    // `decode_prefix` already checked against `max_body_len`.
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

    /// Moves bytes from `chunk` into the partial frame until it is whole, decodes it, and
    /// returns the rest of the chunk.
    fn complete_partial<'c>(
        &mut self,
        mut chunk: &'c [u8],
        frames: &mut Vec<Frame>,
    ) -> dsm_wire::Result<&'c [u8]> {
        if self.partial.len() < HEADER_LEN {
            chunk = self.take(chunk, HEADER_LEN);
            if self.partial.len() < HEADER_LEN {
                return Ok(chunk);
            }
        }
        let header = Header::parse(&self.partial, self.limits.cluster, self.limits.max_body_len)?;
        let total = HEADER_LEN + header.body_len as usize;
        chunk = self.take(chunk, total);
        if self.partial.len() < total {
            return Ok(chunk);
        }
        if let Some((frame, _)) = decode_prefix(&self.partial, &self.limits)? {
            frames.push(frame);
        }
        self.partial.clear();
        Ok(chunk)
    }

    /// Appends bytes of `chunk` until the partial frame holds `want` bytes.
    fn take<'c>(&mut self, chunk: &'c [u8], want: usize) -> &'c [u8] {
        let n = want.saturating_sub(self.partial.len()).min(chunk.len());
        self.partial.extend_from_slice(&chunk[..n]);
        &chunk[n..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsm_wire::{Coherence, Message, PageId, ViewMsg, encode};

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
            for piece in bytes.chunks(chunk) {
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
        reader.feed(&bytes[..20], &mut frames).unwrap();
        assert!(matches!(
            reader.feed(&bytes[20..40], &mut frames),
            Err(dsm_wire::Error::BadMagic(_))
        ));
        assert!(frames.is_empty());
        assert!(reader.buffered() <= HEADER_LEN);
    }
}
