//! The thread that takes same-host peers' frames out of their rings and hands them to the
//! node's sink, as the TCP thread does for sockets, with the same polling policy: it polls
//! only while a thread of the node waits for an answer (and at most `spin` after the last
//! frame), and otherwise sleeps on every ring's futex word at once (`futex_waitv`), so that
//! a frame is a wake-up and a wake-up preempts the application.
//!
//! It also writes what senders queued behind a full ring, and watches each peer's process:
//! a peer that exited (its pidfd) or wrote a malformed frame is reported failed once its
//! ring is drained, so nothing it sent is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dsm_core::{EventSink, Polling, TransportEvent};
use dsm_shm::Receiver;
use dsm_wire::{Limits, NodeId};

use super::Links;

/// Longest sleep between looks at the peers' processes and the stop flag.
const PEER_CHECK: Duration = Duration::from_millis(20);
/// Sleep while pieces wait behind a full ring (the peer frees room at its pace).
const BACKLOG_RETRY: Duration = Duration::from_micros(100);
/// Most frames taken from one ring before the others get a turn.
const BATCH: usize = 64;

/// One peer's ring, seen from here.
#[derive(Debug)]
pub(super) struct Inbound {
    pub(super) peer: NodeId,
    pub(super) receiver: Receiver,
    /// Bytes of a frame whose pieces are still coming.
    pub(super) partial: Vec<u8>,
    pub(super) failed: bool,
}

/// What ended a sleep.
enum Woken {
    Frame,
    Doorbell,
    Timeout,
}

/// The receiving thread's state.
pub(super) struct Service {
    pub(super) inbound: Vec<Inbound>,
    pub(super) links: Arc<Links>,
    pub(super) sink: Arc<dyn EventSink>,
    pub(super) limits: Limits,
    pub(super) spin: Duration,
    pub(super) polite_after: Duration,
    pub(super) stop: Arc<AtomicBool>,
}

impl Service {
    pub(super) fn run(mut self) {
        self.sink.on_thread_start();
        let mut polling = Polling::default();
        let mut piece = Vec::with_capacity(4096);
        let mut active_at = Instant::now();
        let mut sends = self.links.sends();
        while !self.stop.load(Ordering::Acquire) {
            let backlog = self.links.flush();
            // Messages sent since the last look: this node's own are delivered here, and the
            // answers to the others come here, so they count as activity.
            let sent = self.links.sends();
            let asked = sent != sends;
            if asked {
                sends = sent;
                self.deliver_local();
            }
            if self.take_frames(&mut piece) > 0 || asked {
                active_at = Instant::now();
                continue;
            }
            let idle = active_at.elapsed();
            let poll = idle < self.spin && self.sink.awaiting();
            polling.set(self.sink.as_ref(), poll && idle >= self.polite_after);
            if poll {
                std::thread::yield_now();
                continue;
            }
            let timeout = if backlog { BACKLOG_RETRY } else { PEER_CHECK };
            if !self.links.will_sleep(sends) {
                continue;
            }
            let woken = self.sleep(&mut piece, timeout);
            self.links.awake();
            match woken {
                Woken::Frame | Woken::Doorbell => active_at = Instant::now(),
                Woken::Timeout => self.check_peers(),
            }
        }
    }

    /// Delivers the messages this node sent itself.
    fn deliver_local(&mut self) {
        for message in self.links.take_local() {
            self.sink.deliver(TransportEvent::Message {
                from: self.links.rank,
                message,
            });
        }
    }

    /// Takes what every ring holds (up to a batch each); how many pieces.
    fn take_frames(&mut self, piece: &mut Vec<u8>) -> usize {
        let mut taken = 0;
        for i in 0..self.inbound.len() {
            for _ in 0..BATCH {
                let inbound = &mut self.inbound[i];
                if inbound.failed {
                    break;
                }
                match inbound.receiver.try_recv(piece) {
                    Ok(true) => {
                        taken += 1;
                        self.on_piece(i, piece);
                    }
                    Ok(false) => break,
                    Err(e) => self.fail(i, &e.to_string()),
                }
            }
        }
        taken
    }

    /// Appends a piece to the peer's stream and delivers every whole frame in it.
    fn on_piece(&mut self, i: usize, piece: &[u8]) {
        let inbound = &mut self.inbound[i];
        inbound.partial.extend_from_slice(piece);
        let mut used = 0;
        let mut failure = None;
        loop {
            match dsm_wire::decode_prefix(&inbound.partial[used..], &self.limits) {
                Ok(Some((frame, len))) => {
                    used += len;
                    if frame.sender != inbound.peer {
                        failure = Some(format!("a frame signed as node {}", frame.sender));
                        break;
                    }
                    self.sink.deliver(TransportEvent::Message {
                        from: inbound.peer,
                        message: frame.message,
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(format!("malformed frame: {e}"));
                    break;
                }
            }
        }
        inbound.partial.drain(..used);
        if let Some(reason) = failure {
            self.fail(i, &reason);
        }
    }

    /// Sleeps on every live ring until a producer wakes one, the doorbell rings, or
    /// `timeout`; says which (a frame that came is taken and delivered).
    fn sleep(&mut self, piece: &mut Vec<u8>, timeout: Duration) -> Woken {
        let mut prepared = Vec::with_capacity(self.inbound.len());
        let mut arrived = None;
        for (i, inbound) in self.inbound.iter_mut().enumerate() {
            if inbound.failed {
                continue;
            }
            match inbound.receiver.prepare_sleep(piece) {
                Ok(false) => prepared.push(i),
                Ok(true) => {
                    arrived = Some(Ok(i));
                    break;
                }
                Err(e) => {
                    arrived = Some(Err((i, e.to_string())));
                    break;
                }
            }
        }
        let mut rang = false;
        if arrived.is_none() {
            let receivers: Vec<&Receiver> = prepared
                .iter()
                .map(|&i| &self.inbound[i].receiver)
                .collect();
            rang = dsm_shm::sleep_any(&receivers, &self.links.doorbell, timeout);
        }
        for &i in &prepared {
            self.inbound[i].receiver.finish_sleep();
        }
        match arrived {
            Some(Ok(i)) => {
                self.on_piece(i, piece);
                Woken::Frame
            }
            Some(Err((i, reason))) => {
                self.fail(i, &reason);
                Woken::Timeout
            }
            // A producer's wake shows as a frame at the next look; a doorbell may not.
            None if rang => Woken::Doorbell,
            None => Woken::Timeout,
        }
    }

    /// Reports peers whose process exited, once their rings are drained.
    fn check_peers(&mut self) {
        for i in 0..self.inbound.len() {
            let inbound = &self.inbound[i];
            if inbound.failed || !matches!(inbound.receiver.peer().exited(), Ok(true)) {
                continue;
            }
            let mut piece = Vec::new();
            while matches!(self.inbound[i].receiver.try_recv(&mut piece), Ok(true)) {
                self.on_piece(i, &piece);
            }
            self.fail(i, "the process exited");
        }
    }

    /// The peer of ring `i` failed: say so once, stop reading its ring and sending to it.
    fn fail(&mut self, i: usize, reason: &str) {
        let inbound = &mut self.inbound[i];
        if inbound.failed {
            return;
        }
        inbound.failed = true;
        let node = inbound.peer;
        self.links.close(node, reason);
        self.sink.deliver(TransportEvent::PeerFailed {
            node,
            reason: format!("shared-memory channel: {reason}"),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    use dsm_shm::{Credentials, PairOptions};
    use dsm_wire::{Membership, Message};

    use super::*;

    const CLUSTER: u64 = 7;

    /// A sink that keeps what it is given (a stand-in for the node's sink).
    #[derive(Default)]
    struct Kept(Mutex<Vec<TransportEvent>>);

    impl EventSink for Kept {
        fn deliver(&self, event: TransportEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    /// A service reading peer 1's ring, and the sender that writes it.
    fn service() -> (Service, Arc<Kept>, dsm_shm::Sender) {
        let (a, b) = UnixStream::pair().unwrap();
        let options = PairOptions::default();
        let accepter = std::thread::spawn(move || {
            dsm_shm::accept(
                &b,
                &Credentials::new(0, CLUSTER, None),
                |r| r == 1,
                &options,
            )
        });
        let offered = dsm_shm::offer(&a, &Credentials::new(1, CLUSTER, None), 0, &options);
        let (sender, _) = offered.unwrap().split(Duration::ZERO);
        let (_, receiver) = accepter.join().unwrap().unwrap().split(Duration::ZERO);
        let kept = Arc::new(Kept::default());
        let links = Arc::new(Links::new(0, CLUSTER, Vec::new()));
        let service = Service {
            inbound: vec![Inbound {
                peer: 1,
                receiver,
                partial: Vec::new(),
                failed: false,
            }],
            links,
            sink: Arc::clone(&kept) as Arc<dyn EventSink>,
            limits: Limits::new(CLUSTER),
            spin: Duration::ZERO,
            polite_after: Duration::ZERO,
            stop: Arc::new(AtomicBool::new(false)),
        };
        (service, kept, sender)
    }

    fn beat(n: u64) -> Message {
        Message::Membership(Membership::Heartbeat { beat: n })
    }

    #[test]
    fn frames_cut_anywhere_are_delivered_whole_and_in_order() {
        let (mut service, kept, sender) = service();
        let bytes = [
            dsm_wire::encode(&beat(1), CLUSTER, 1),
            dsm_wire::encode(&beat(2), CLUSTER, 1),
        ]
        .concat();
        for piece in [&bytes[..5], &bytes[5..40], &bytes[40..]] {
            sender.try_send(piece).unwrap();
        }
        let mut piece = Vec::new();
        assert_eq!(service.take_frames(&mut piece), 3);
        let got = kept.0.lock().unwrap();
        let beats: Vec<_> = got
            .iter()
            .map(|e| match e {
                TransportEvent::Message { from: 1, message } => message.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(beats, [beat(1), beat(2)]);
    }

    #[test]
    fn garbage_or_a_forged_sender_fails_the_peer_once_and_stops_reading_it() {
        for bytes in [vec![0xffu8; 64], dsm_wire::encode(&beat(1), CLUSTER, 2)] {
            let (mut service, kept, sender) = service();
            sender.try_send(&bytes).unwrap();
            sender
                .try_send(&dsm_wire::encode(&beat(3), CLUSTER, 1))
                .unwrap();
            let mut piece = Vec::new();
            service.take_frames(&mut piece);
            service.take_frames(&mut piece);
            let got = kept.0.lock().unwrap();
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(
                matches!(&got[0], TransportEvent::PeerFailed { node: 1, .. }),
                "{got:?}"
            );
        }
    }
}
