//! The consuming side of every same-host ring, behind one lock: whoever holds it takes the
//! frames and runs them to completion. That is the node's shared-memory thread
//! (`receive.rs`), or a faulting thread that waits for its own page and serves itself
//! meanwhile ([`Links::serve_until`]): on a node pinned to one CPU the thread's wake-up and
//! its sleep after the install are two context switches on the fault's path, which the
//! faulting thread taking the grant itself does not pay.
//!
//! A peer that exited (its pidfd) or wrote a malformed frame is reported failed once its
//! ring is drained, so nothing it sent is lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use dsm_core::{EventSink, TransportEvent};
use dsm_shm::{Receiver, Waker};
use dsm_wire::{Limits, NodeId};

use super::Links;

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

impl Inbound {
    pub(super) fn new(peer: NodeId, receiver: Receiver) -> Self {
        Inbound {
            peer,
            receiver,
            partial: Vec::new(),
            failed: false,
        }
    }
}

/// Every ring's consumer state, and where its frames go.
pub(super) struct Inboxes {
    inbound: Vec<Inbound>,
    /// The piece being read (kept: no allocation per frame).
    piece: Vec<u8>,
    sink: Arc<dyn EventSink>,
    limits: Limits,
}

impl std::fmt::Debug for Inboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inboxes")
            .field("inbound", &self.inbound)
            .finish_non_exhaustive()
    }
}

/// What a sleep announcement found: frames that came meanwhile (taken and delivered), or
/// the rings now announced, to sleep on.
pub(super) enum Prepared {
    Arrived,
    Sleep {
        rings: Vec<usize>,
        words: Vec<Waker>,
    },
}

impl Inboxes {
    pub(super) fn new(inbound: Vec<Inbound>, sink: Arc<dyn EventSink>, limits: Limits) -> Self {
        Inboxes {
            inbound,
            piece: Vec::with_capacity(4096),
            sink,
            limits,
        }
    }

    /// Takes what every ring holds (up to a batch each); how many pieces.
    pub(super) fn take_frames(&mut self, links: &Links) -> usize {
        let mut taken = 0;
        let mut piece = std::mem::take(&mut self.piece);
        for i in 0..self.inbound.len() {
            for _ in 0..BATCH {
                let inbound = &mut self.inbound[i];
                if inbound.failed {
                    break;
                }
                match inbound.receiver.try_recv(&mut piece) {
                    Ok(true) => {
                        taken += 1;
                        self.on_piece(i, &piece, links);
                    }
                    Ok(false) => break,
                    Err(e) => self.fail(i, &e.to_string(), links),
                }
            }
        }
        self.piece = piece;
        taken
    }

    /// Delivers the messages this node sent itself (under the rings' lock, as every
    /// delivery: two threads that take them never reorder them).
    pub(super) fn deliver_local(&mut self, links: &Links) {
        for message in links.take_local() {
            self.sink.deliver(TransportEvent::Message {
                from: links.rank,
                message,
            });
        }
    }

    /// Appends a piece to the peer's stream and delivers every whole frame in it.
    fn on_piece(&mut self, i: usize, piece: &[u8], links: &Links) {
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
            self.fail(i, &reason, links);
        }
    }

    /// Announces sleep on every live ring (see `dsm_shm::Receiver::prepare_sleep`), unless a
    /// frame came meanwhile: then it is delivered and the announcements are withdrawn.
    pub(super) fn prepare_sleep(&mut self, links: &Links) -> Prepared {
        let mut rings = Vec::with_capacity(self.inbound.len());
        let mut piece = std::mem::take(&mut self.piece);
        let mut arrived = false;
        for i in 0..self.inbound.len() {
            if self.inbound[i].failed {
                continue;
            }
            match self.inbound[i].receiver.prepare_sleep(&mut piece) {
                Ok(false) => rings.push(i),
                Ok(true) => {
                    self.on_piece(i, &piece, links);
                    arrived = true;
                    break;
                }
                Err(e) => {
                    self.fail(i, &e.to_string(), links);
                    arrived = true;
                    break;
                }
            }
        }
        self.piece = piece;
        if arrived {
            self.finish_sleep(&rings);
            return Prepared::Arrived;
        }
        let words = rings
            .iter()
            .map(|&i| self.inbound[i].receiver.waker())
            .collect();
        Prepared::Sleep { rings, words }
    }

    /// Withdraws the sleep announcements of `rings`.
    pub(super) fn finish_sleep(&mut self, rings: &[usize]) {
        for &i in rings {
            self.inbound[i].receiver.finish_sleep();
        }
    }

    /// Withdraws every live ring's announcement, whoever made it: producers stop waking the
    /// sleeping thread, because another thread polls the rings for now.
    fn withdraw_all(&mut self) {
        for inbound in self.inbound.iter_mut().filter(|i| !i.failed) {
            inbound.receiver.finish_sleep();
        }
    }

    /// Reports peers whose process exited, once their rings are drained.
    pub(super) fn check_peers(&mut self, links: &Links) {
        for i in 0..self.inbound.len() {
            let inbound = &self.inbound[i];
            if inbound.failed || !matches!(inbound.receiver.peer().exited(), Ok(true)) {
                continue;
            }
            let mut piece = Vec::new();
            while matches!(self.inbound[i].receiver.try_recv(&mut piece), Ok(true)) {
                self.on_piece(i, &piece, links);
            }
            self.fail(i, "the process exited", links);
        }
    }

    /// The peer of ring `i` failed: say so once, stop reading its ring and sending to it.
    fn fail(&mut self, i: usize, reason: &str, links: &Links) {
        let inbound = &mut self.inbound[i];
        if inbound.failed {
            return;
        }
        inbound.failed = true;
        let node = inbound.peer;
        links.close(node, reason);
        self.sink.deliver(TransportEvent::PeerFailed {
            node,
            reason: format!("shared-memory channel: {reason}"),
        });
    }
}

/// Rounds of re-announcing sleep a serving thread makes before it leaves the rings to the
/// shared-memory thread's own wake-up instead (frames kept coming meanwhile).
const REARM_ROUNDS: usize = 8;

impl Links {
    /// Takes what every ring holds and delivers it; how many pieces.
    pub(super) fn take_frames(&self) -> usize {
        self.inboxes().take_frames(self)
    }

    pub(super) fn inboxes(&self) -> std::sync::MutexGuard<'_, Inboxes> {
        self.inboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A thread that waits for an answer serves the rings itself until `done` or `until`:
    /// it takes whatever comes (running it to completion, as the shared-memory thread
    /// would), while that thread sleeps. True once `done`.
    ///
    /// While it serves, the rings' sleep announcements are withdrawn, so that a peer's frame
    /// does not wake the sleeping thread (which, real-time on this CPU, would preempt the
    /// server and then wait for its lock). Before returning it announces them again if that
    /// thread still sleeps, taking what came meanwhile; if frames keep coming, it rings the
    /// thread's doorbell instead. The caller holds a [`Serving`](super::Serving) guard from
    /// before its request left: if this gives up (false), the guard's drop wakes the thread. Used by SIGBUS handlers (see `crate::fault`): locks and
    /// allocation there are safe for the reasons given in that module.
    pub(crate) fn serve_until(&self, done: &dyn Fn() -> bool, until: Instant) -> bool {
        let mut withdrawn = false;
        // Sends counted when the node's own messages were last delivered (none yet: some
        // may be queued from before), so that the loop locks their queue only after a send.
        let mut delivered_at = None;
        let finished = loop {
            if done() {
                break true;
            }
            if Instant::now() >= until {
                break false;
            }
            if let Ok(mut inboxes) = self.inboxes.try_lock() {
                if !withdrawn {
                    inboxes.withdraw_all();
                    withdrawn = true;
                }
                let sends = self.sends();
                if delivered_at != Some(sends) {
                    delivered_at = Some(sends);
                    inboxes.deliver_local(self);
                }
                inboxes.take_frames(self);
            }
            std::hint::spin_loop();
        };
        if finished {
            // This thread's own messages to itself since its last look (its wake-ups of the
            // thread that would deliver them were held back).
            self.inboxes().deliver_local(self);
            super::serving::settled();
        }
        if withdrawn {
            self.rearm();
        }
        finished
    }

    /// After serving: announces sleep on every ring again if the shared-memory thread
    /// still sleeps (it announced before it slept, and a producer must wake it for the next
    /// frame); wakes it when frames keep coming.
    fn rearm(&self) {
        let mut inboxes = self.inboxes();
        for _ in 0..REARM_ROUNDS {
            if !self.asleep.load(Ordering::SeqCst) {
                return; // Awake: it announces for itself before it sleeps again.
            }
            if let Prepared::Sleep { .. } = inboxes.prepare_sleep(self) {
                return;
            }
        }
        drop(inboxes);
        self.doorbell.ring();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;
    use std::time::Duration;

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

    /// Links reading peer 1's ring, and the sender that writes it.
    fn links() -> (Links, Arc<Kept>, dsm_shm::Sender) {
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
        let sink = Arc::clone(&kept) as Arc<dyn EventSink>;
        let inboxes = Inboxes::new(vec![Inbound::new(1, receiver)], sink, Limits::new(CLUSTER));
        (Links::new(0, CLUSTER, Vec::new(), inboxes), kept, sender)
    }

    fn beat(n: u64) -> Message {
        Message::Membership(Membership::Heartbeat { beat: n })
    }

    fn beats(kept: &Kept) -> Vec<Message> {
        let got = kept.0.lock().unwrap();
        got.iter()
            .map(|e| match e {
                TransportEvent::Message { from: 1, message } => message.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn frames_cut_anywhere_are_delivered_whole_and_in_order() {
        let (links, kept, sender) = links();
        let bytes = [
            dsm_wire::encode(&beat(1), CLUSTER, 1),
            dsm_wire::encode(&beat(2), CLUSTER, 1),
        ]
        .concat();
        for piece in [&bytes[..5], &bytes[5..40], &bytes[40..]] {
            sender.try_send(piece).unwrap();
        }
        assert_eq!(links.take_frames(), 3);
        assert_eq!(beats(&kept), [beat(1), beat(2)]);
    }

    #[test]
    fn garbage_or_a_forged_sender_fails_the_peer_once_and_stops_reading_it() {
        for bytes in [vec![0xffu8; 64], dsm_wire::encode(&beat(1), CLUSTER, 2)] {
            let (links, kept, sender) = links();
            sender.try_send(&bytes).unwrap();
            sender
                .try_send(&dsm_wire::encode(&beat(3), CLUSTER, 1))
                .unwrap();
            links.take_frames();
            links.take_frames();
            let got = kept.0.lock().unwrap();
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(
                matches!(&got[0], TransportEvent::PeerFailed { node: 1, .. }),
                "{got:?}"
            );
        }
    }

    /// A thread serving itself takes frames as they come and stops at `done`; the rings are
    /// announced again for the sleeping thread afterwards, so that the next frame wakes it.
    #[test]
    fn a_serving_thread_takes_frames_and_leaves_the_rings_announced_for_the_sleeper() {
        let (links, kept, sender) = links();
        let prepared = links.inboxes().prepare_sleep(&links);
        assert!(matches!(prepared, Prepared::Sleep { .. }));
        links.asleep.store(true, Ordering::SeqCst);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            let frame = dsm_wire::encode(&beat(7), CLUSTER, 1);
            sender.try_send(&frame).unwrap();
            sender
        });
        let done = || !kept.0.lock().unwrap().is_empty();
        let until = Instant::now() + Duration::from_secs(10);
        assert!(links.serve_until(&done, until), "the frame was served");
        assert_eq!(beats(&kept), [beat(7)]);
        let sender = writer.join().unwrap();
        let word = || {
            links.inboxes().inbound[0]
                .receiver
                .futex_word()
                .load(Ordering::SeqCst)
        };
        assert_eq!(
            word(),
            dsm_shm::ring::SLEEPING,
            "announced again for the sleeper"
        );
        sender
            .try_send(&dsm_wire::encode(&beat(8), CLUSTER, 1))
            .unwrap();
        assert_eq!(
            word(),
            dsm_shm::ring::AWAKE,
            "the producer saw the sleeper and woke it"
        );
        assert_eq!(links.take_frames(), 1);
        assert_eq!(beats(&kept), [beat(7), beat(8)]);
    }
}
