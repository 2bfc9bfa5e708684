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

use dsm_core::{EventSink, Polling};

use super::Links;
use super::inbox::Prepared;

/// Longest sleep between looks at the peers' processes and the stop flag.
const PEER_CHECK: Duration = Duration::from_millis(20);
/// Sleep while pieces wait behind a full ring (the peer frees room at its pace).
const BACKLOG_RETRY: Duration = Duration::from_micros(100);

/// What ended a sleep.
enum Woken {
    Frame,
    Doorbell,
    Timeout,
}

/// The receiving thread's state (the rings themselves are the links' inboxes).
pub(super) struct Service {
    pub(super) links: Arc<Links>,
    pub(super) sink: Arc<dyn EventSink>,
    pub(super) spin: Duration,
    pub(super) polite_after: Duration,
    pub(super) stop: Arc<AtomicBool>,
}

impl Service {
    pub(super) fn run(self) {
        self.sink.on_thread_start();
        let mut polling = Polling::default();
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
            if self.links.take_frames() > 0 || asked {
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
            let woken = self.sleep(timeout);
            self.links.awake();
            match woken {
                Woken::Frame | Woken::Doorbell => active_at = Instant::now(),
                Woken::Timeout => self.links.inboxes().check_peers(&self.links),
            }
        }
    }

    /// Delivers the messages this node sent itself.
    fn deliver_local(&self) {
        self.links.inboxes().deliver_local(&self.links);
    }

    /// Sleeps on every live ring until a producer wakes one, the doorbell rings, or
    /// `timeout`; says which (a frame that came is taken and delivered). The rings' lock is
    /// not held while it sleeps: a thread that waits for its own answer may serve them
    /// meanwhile (`Links::serve_until`).
    fn sleep(&self, timeout: Duration) -> Woken {
        let (rings, words) = match self.links.inboxes().prepare_sleep(&self.links) {
            Prepared::Arrived => return Woken::Frame,
            Prepared::Sleep { rings, words } => (rings, words),
        };
        let rang = dsm_shm::sleep_any(&words, &self.links.doorbell, timeout);
        self.links.inboxes().finish_sleep(&rings);
        // A producer's wake shows as a frame at the next look; a doorbell may not.
        if rang {
            Woken::Doorbell
        } else {
            Woken::Timeout
        }
    }
}
