//! Frames over a blocking std `TcpStream`, for the boot-up exchange with the coordinator.
//! After the handshake every frame is sealed under the connection's session (the same
//! format as the transport mesh, dsm-tcp-fallback's `session`).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use dsm_tcp_fallback::{FrameReader, FrameSeal, ReadError, SessionKeys};
use dsm_wire::{BodyCheck, Frame, Limits, Message, NodeId, encode_for};

use crate::{Error, Result};

/// Frames decoded from one read, at most: a read is 4 KiB, a frame at least a header.
const READ_CHUNK: usize = 4096;

/// A stream that sends and receives whole dsm frames.
#[derive(Debug)]
pub(crate) struct Framed {
    stream: TcpStream,
    reader: FrameReader,
    /// Frames read but not yet asked for (bounded: one read's worth).
    frames: VecDeque<Frame>,
    /// Seals the frames sent; `None` on a keyless connection.
    seal: Option<FrameSeal>,
    cluster: u64,
    local: NodeId,
}

impl Framed {
    /// Wraps a connected stream of cluster `limits.cluster`, sending as `local`; `session`
    /// tags and checks every frame (`None`: keyless, no tags).
    pub(crate) fn new(
        stream: TcpStream,
        limits: Limits,
        local: NodeId,
        session: Option<SessionKeys>,
    ) -> Self {
        // Small control frames: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let cluster = limits.cluster;
        let (reader, seal) = match session {
            Some(keys) => (
                FrameReader::authenticated(limits, keys.receive),
                Some(keys.send),
            ),
            None => (FrameReader::new(limits), None),
        };
        Framed {
            stream,
            reader,
            frames: VecDeque::new(),
            seal,
            cluster,
            local,
        }
    }

    /// Sends one frame.
    pub(crate) fn send(&mut self, message: &Message) -> Result<()> {
        let check = BodyCheck::sealed_if(self.seal.is_some());
        let mut frame = encode_for(message, self.cluster, self.local, check);
        if let Some(seal) = &mut self.seal {
            seal.seal_at(&mut frame, 0);
        }
        self.stream
            .write_all(&frame)
            .map_err(|e| Error::io(format!("send {:?}", message.command()), e))
    }

    /// Receives one frame, waiting until `deadline`; the timeout error names `what`.
    /// `Ok(None)` means the peer closed the connection cleanly between frames.
    pub(crate) fn recv(&mut self, deadline: Instant, what: &str) -> Result<Option<Frame>> {
        let started = Instant::now();
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Ok(Some(frame));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timeout(what, started));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| Error::io("set_read_timeout", e))?;
            match self.stream.read(&mut chunk) {
                Ok(0) if self.reader.buffered() == 0 => return Ok(None),
                Ok(0) => {
                    return Err(Error::Protocol(format!(
                        "connection closed mid-frame ({what})"
                    )));
                }
                Ok(n) => self.feed(&mut chunk[..n])?,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(timeout(what, started));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(format!("recv ({what})"), e)),
            }
        }
    }

    fn feed(&mut self, bytes: &mut [u8]) -> Result<()> {
        let mut frames = Vec::new();
        let fed = self.reader.feed(bytes, &mut frames);
        self.frames.extend(frames);
        match fed {
            Ok(()) => Ok(()),
            Err(ReadError::Wire(e)) => Err(Error::Wire(e)),
            Err(forged) => Err(Error::Protocol(forged.to_string())),
        }
    }
}

fn timeout(what: &str, started: Instant) -> Error {
    Error::Timeout {
        what: what.to_owned(),
        waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Duration;

    use dsm_wire::Membership;

    use super::*;
    use dsm_wire::encode;

    fn pair() -> (Framed, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (Framed::new(a, Limits::new(7), 1, None), b)
    }

    #[test]
    fn frames_survive_byte_by_byte_delivery() {
        let (mut framed, mut raw) = pair();
        let msg = Message::Membership(Membership::Heartbeat { beat: 42 });
        let bytes = encode(&msg, 7, 3);
        let writer = std::thread::spawn(move || {
            for b in bytes {
                raw.write_all(&[b]).unwrap();
            }
            raw
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let frame = framed.recv(deadline, "beat").unwrap().unwrap();
        assert_eq!((frame.sender, frame.message), (3, msg));
        drop(writer.join().unwrap());
        assert!(framed.recv(deadline, "eof").unwrap().is_none());
    }

    #[test]
    fn garbage_and_silence_are_typed_errors() {
        let (mut framed, mut raw) = pair();
        let deadline = Instant::now() + Duration::from_millis(100);
        let err = framed.recv(deadline, "the node list").unwrap_err();
        assert!(err.to_string().contains("the node list"), "{err}");
        raw.write_all(&[0xab; 40]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(framed.recv(deadline, "x"), Err(Error::Wire(_))));
        let other_cluster = encode(
            &Message::Membership(Membership::Heartbeat { beat: 1 }),
            8,
            0,
        );
        let (mut framed, mut raw) = pair();
        raw.write_all(&other_cluster).unwrap();
        assert!(matches!(framed.recv(deadline, "x"), Err(Error::Wire(_))));
    }
}
