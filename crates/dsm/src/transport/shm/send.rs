//! Sending to same-host peers: each message is encoded as the TCP mesh encodes it and written
//! into the peer's ring as one or more pieces, without blocking.
//!
//! The ring is a byte stream per pair: a frame larger than one ring frame goes in pieces, and
//! the receiver reassembles frames from the pieces in order. A per-peer lock keeps the pieces
//! of one message together and, when the ring is full, queues the rest (and every later
//! message) for the receiving thread to flush: the sender never waits for the peer, and
//! nothing overtakes a queued piece.

use std::collections::VecDeque;
use std::sync::Mutex;

use dsm_core::TransportError;
use dsm_shm::Sender;
use dsm_wire::NodeId;

/// Largest piece written as one ring frame: a page grant (4 KiB and headers) is one piece.
const PIECE: usize = 64 << 10;

/// Most pieces queued for one peer whose ring stays full: 64 MiB at most. Past it the peer
/// is taken as failed (it has not read for a long time).
const MAX_BACKLOG: usize = 1024;

/// The sending side of one same-host pair.
#[derive(Debug)]
pub(super) struct Outbound {
    peer: NodeId,
    sender: Sender,
    queue: Mutex<Backlog>,
}

#[derive(Debug, Default)]
struct Backlog {
    pieces: VecDeque<Vec<u8>>,
    /// Set once the peer failed: later sends fail at once.
    failed: Option<String>,
}

impl Outbound {
    pub(super) fn new(peer: NodeId, sender: Sender) -> Self {
        Outbound {
            peer,
            sender,
            queue: Mutex::new(Backlog::default()),
        }
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `frame` (an encoded message) now, or queues what does not fit: `Ok(true)` when
    /// this started a backlog, which the shared-memory thread must then be told to flush.
    /// `quiet`: a sleeping peer is not woken for it (nobody waits for it; see
    /// `Sender::try_send_quietly`); a queued piece goes with the next flush, which wakes.
    pub(super) fn send(&self, frame: &[u8], quiet: bool) -> Result<bool, TransportError> {
        let mut backlog = self.backlog();
        if let Some(reason) = &backlog.failed {
            return Err(self.failed(reason));
        }
        let queued_before = !backlog.pieces.is_empty();
        for piece in frame.chunks(PIECE) {
            if backlog.pieces.is_empty() {
                let sent = match quiet {
                    true => self.sender.try_send_quietly(piece),
                    false => self.sender.try_send(piece),
                };
                match sent {
                    Ok(()) => continue,
                    Err(dsm_shm::Error::Full) => {}
                    Err(e) => return Err(self.fail(&mut backlog, e.to_string())),
                }
            }
            if backlog.pieces.len() >= MAX_BACKLOG {
                let reason = format!("its ring stayed full for {MAX_BACKLOG} queued pieces");
                return Err(self.fail(&mut backlog, reason));
            }
            backlog.pieces.push_back(piece.to_vec());
        }
        Ok(!queued_before && !backlog.pieces.is_empty())
    }

    /// Writes queued pieces while the ring has room; whether any are left.
    pub(super) fn flush(&self) -> bool {
        let mut backlog = self.backlog();
        while let Some(piece) = backlog.pieces.front() {
            match self.sender.try_send(piece) {
                Ok(()) => {
                    backlog.pieces.pop_front();
                }
                Err(dsm_shm::Error::Full) => return true,
                Err(e) => {
                    let _ = self.fail(&mut backlog, e.to_string());
                    return false;
                }
            }
        }
        false
    }

    /// The peer failed: drop what is queued, refuse what comes.
    pub(super) fn close(&self, reason: &str) {
        let mut backlog = self.backlog();
        let _ = self.fail(&mut backlog, reason.to_owned());
    }

    fn fail(&self, backlog: &mut Backlog, reason: String) -> TransportError {
        backlog.pieces.clear();
        let error = self.failed(&reason);
        backlog.failed.get_or_insert(reason);
        error
    }

    fn failed(&self, reason: &str) -> TransportError {
        TransportError::PeerFailed {
            node: self.peer,
            reason: format!("shared-memory channel: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use dsm_shm::{Credentials, PairOptions, Receiver, ring::Geometry};

    use super::*;

    /// Both halves of a channel with rings of `cells` cells, set up in this process.
    fn channel(cells: u32) -> (Sender, Receiver) {
        let (a, b) = UnixStream::pair().unwrap();
        let options = PairOptions {
            geometry: Geometry::new(cells).unwrap(),
            timeout: Duration::from_secs(5),
        };
        let accepter = std::thread::spawn(move || {
            dsm_shm::accept(&b, &Credentials::new(1, 7, None), |r| r == 0, &options)
        });
        let offered = dsm_shm::offer(&a, &Credentials::new(0, 7, None), 1, &options).unwrap();
        let (sender, _) = offered.split(Duration::ZERO);
        let (_, receiver) = accepter.join().unwrap().unwrap().split(Duration::ZERO);
        (sender, receiver)
    }

    fn drain(receiver: &mut Receiver) -> Vec<u8> {
        let (mut all, mut piece) = (Vec::new(), Vec::new());
        while receiver.try_recv(&mut piece).unwrap() {
            all.extend_from_slice(&piece);
        }
        all
    }

    #[test]
    fn a_full_ring_queues_in_order_and_the_flush_delivers_everything() {
        let (sender, mut receiver) = channel(64);
        let outbound = Outbound::new(1, sender);
        let frames: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000]).collect();
        let started: Vec<bool> = frames
            .iter()
            .map(|f| outbound.send(f, false).unwrap())
            .collect();
        assert_eq!(
            started.iter().filter(|&&s| s).count(),
            1,
            "one backlog started"
        );
        assert!(
            outbound.flush(),
            "4 KiB of ring cannot hold 20 KB: some wait"
        );
        let mut got = drain(&mut receiver);
        while outbound.flush() {
            got.extend(drain(&mut receiver));
        }
        got.extend(drain(&mut receiver));
        assert_eq!(got, frames.concat(), "every byte, in order");
    }

    #[test]
    fn a_frame_larger_than_a_ring_frame_goes_in_pieces() {
        let (sender, mut receiver) = channel(4096);
        let outbound = Outbound::new(1, sender);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        outbound.send(&big, false).unwrap();
        let mut got = drain(&mut receiver);
        while outbound.flush() {
            got.extend(drain(&mut receiver));
        }
        got.extend(drain(&mut receiver));
        assert_eq!(got, big);
    }

    #[test]
    fn after_a_failure_sends_fail_naming_the_peer() {
        let (sender, _receiver) = channel(64);
        let outbound = Outbound::new(3, sender);
        outbound.close("the process exited");
        let err = outbound.send(b"x", false).unwrap_err();
        assert!(
            matches!(&err, TransportError::PeerFailed { node: 3, reason } if reason.contains("exited")),
            "{err}"
        );
    }
}
