//! A set-up pair seen from one process: a [`Sender`] any thread may clone and use, a
//! [`Receiver`] for one thread, and the [`Peer`] whose pidfd tells of its death.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::memory::{Direction, SharedMemory};
use crate::peer::Peer;
use crate::ring::{Consumer, Producer, RingArea};
use crate::{Error, Result};

/// Longest sleep of a blocked sender or receiver between checks of the peer's pidfd: the
/// backstop when nobody wakes it (see [`Receiver::waker`] for the prompt path).
const PEER_CHECK: Duration = Duration::from_millis(20);

/// Both directions of a pair, before [`split`](Channel::split).
#[derive(Debug)]
pub struct Channel {
    memory: Arc<SharedMemory>,
    outbound: Direction,
    peer: Arc<Peer>,
}

impl Channel {
    pub(crate) fn new(memory: SharedMemory, outbound: Direction, peer: Peer) -> Self {
        Channel {
            memory: Arc::new(memory),
            outbound,
            peer: Arc::new(peer),
        }
    }

    /// The peer process.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// The shared memory itself: for diagnostics, and for tests that play a hostile peer by
    /// scribbling on the rings.
    pub fn memory(&self) -> &SharedMemory {
        &self.memory
    }

    /// The sending and receiving halves. The receiver spins up to `spin` before it sleeps
    /// (zero when threads outnumber CPUs).
    pub fn split(self, spin: Duration) -> (Sender, Receiver) {
        let inbound = match self.outbound {
            Direction::FromOfferer => Direction::FromAccepter,
            Direction::FromAccepter => Direction::FromOfferer,
        };
        let sender = Sender {
            inner: Arc::new(SenderInner {
                memory: Arc::clone(&self.memory),
                direction: self.outbound,
                producer: Producer::new(),
                peer: Arc::clone(&self.peer),
            }),
        };
        let receiver = Receiver {
            memory: self.memory,
            direction: inbound,
            consumer: Consumer::new(),
            peer: self.peer,
            spin,
        };
        (sender, receiver)
    }
}

#[derive(Debug)]
struct SenderInner {
    memory: Arc<SharedMemory>,
    direction: Direction,
    producer: Producer,
    peer: Arc<Peer>,
}

/// The sending half: clone it into every thread that sends. Frames arrive in the order their
/// sends claimed ring space (each thread's in its own order).
#[derive(Debug, Clone)]
pub struct Sender {
    inner: Arc<SenderInner>,
}

impl Sender {
    fn area(&self) -> RingArea<'_> {
        self.inner.memory.ring(self.inner.direction)
    }

    /// Sends one frame now or fails [`Error::Full`] (nothing sent).
    pub fn try_send(&self, payload: &[u8]) -> Result<()> {
        self.inner.producer.try_send(&self.area(), payload)
    }

    /// As [`try_send`](Self::try_send), without waking a sleeping receiver: the frame is
    /// received at its next poll, in order (for a message nobody waits for).
    pub fn try_send_quietly(&self, payload: &[u8]) -> Result<()> {
        self.inner.producer.try_send_quietly(&self.area(), payload)
    }

    /// Sends one frame, waiting up to `timeout` for room (back-pressure): [`Error::Full`] if
    /// the ring stayed full, [`Error::PeerExited`] if the peer died meanwhile.
    pub fn send_timeout(&self, payload: &[u8], timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last_check = start;
        for round in 0u32.. {
            match self.try_send(payload) {
                Err(Error::Full) => {}
                done => return done,
            }
            if start.elapsed() >= timeout {
                return Err(Error::Full);
            }
            if last_check.elapsed() >= PEER_CHECK {
                self.inner.peer.check_alive()?;
                last_check = Instant::now();
            }
            back_off(round);
        }
        unreachable!("the loop returns by its deadline")
    }

    /// The peer process.
    pub fn peer(&self) -> &Peer {
        &self.inner.peer
    }
}

/// Waiting for room: spin a little, then yield, then sleep up to 100 µs (the consumer frees
/// room at its pace; a full ring is the slow path).
fn back_off(round: u32) {
    match round {
        0..64 => std::hint::spin_loop(),
        64..128 => std::thread::yield_now(),
        _ => std::thread::sleep(Duration::from_micros(u64::from(round.min(200) / 2))),
    }
}

/// The receiving half, for one thread.
#[derive(Debug)]
pub struct Receiver {
    memory: Arc<SharedMemory>,
    direction: Direction,
    consumer: Consumer,
    peer: Arc<Peer>,
    spin: Duration,
}

impl Receiver {
    /// Takes the next frame into `out` if one is there.
    pub fn try_recv(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        let area = self.memory.ring(self.direction);
        self.consumer.try_recv(&area, out)
    }

    /// Takes the next frame, waiting up to `timeout`: `Ok(false)` if none came,
    /// [`Error::PeerExited`] if the peer died with nothing left to read.
    pub fn recv_timeout(&mut self, out: &mut Vec<u8>, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut spin = self.spin;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let area = self.memory.ring(self.direction);
            let slice = Some(left.min(PEER_CHECK));
            if self.consumer.recv_timeout(&area, out, spin, slice)? {
                return Ok(true);
            }
            spin = Duration::ZERO;
            self.peer.check_alive()?;
            if left.is_zero() {
                return Ok(false);
            }
        }
    }

    /// Announces sleep and re-checks the ring, for an event loop that waits on
    /// [`futex_word`](Self::futex_word) itself (io_uring `FUTEX_WAIT`, shared, 32-bit, expected
    /// [`SLEEPING`](crate::ring::SLEEPING)) beside its sockets and the peer's pidfd. `Ok(true)`:
    /// a frame is in `out`, do not sleep. `Ok(false)`: wait, then call
    /// [`finish_sleep`](Self::finish_sleep). See [`Consumer::prepare_sleep`].
    pub fn prepare_sleep(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        let area = self.memory.ring(self.direction);
        self.consumer.prepare_sleep(&area, out)
    }

    /// Ends a sleep begun with [`prepare_sleep`](Self::prepare_sleep).
    pub fn finish_sleep(&mut self) {
        let area = self.memory.ring(self.direction);
        self.consumer.finish_sleep(&area);
    }

    /// The futex word producers wake when this receiver announced sleep.
    pub fn futex_word(&self) -> &std::sync::atomic::AtomicU32 {
        self.memory.ring(self.direction).state_word()
    }

    /// A handle that wakes this receiver from its sleep, e.g. when the runtime sees the peer's
    /// pidfd readable: the receiver then checks the peer and returns [`Error::PeerExited`].
    pub fn waker(&self) -> Waker {
        Waker {
            memory: Arc::clone(&self.memory),
            direction: self.direction,
        }
    }

    /// The peer process.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

/// Sleeps until a producer wakes any of `rings`, the `doorbell` rings, or `timeout`: one
/// thread serving several rings. Call it only after [`Receiver::prepare_sleep`] returned
/// `Ok(false)` for every one of them, and [`Receiver::finish_sleep`] on each afterwards. At
/// most 127 receivers are watched (the kernel takes 128 words); a caller with more must poll
/// the rest. Returns whether the doorbell rang.
///
/// The rings are named by their [`Waker`]s, so that the caller need not hold its receivers
/// while it sleeps: another thread may take frames from them meanwhile (one at a time, as
/// for any receiver), e.g. a thread that waits for one answer and serves itself.
pub fn sleep_any(rings: &[Waker], doorbell: &Doorbell, timeout: Duration) -> bool {
    let mut words: Vec<(&std::sync::atomic::AtomicU32, u32)> = rings
        .iter()
        .take(crate::sys::FUTEX_WAITV_MAX - 1)
        .map(|r| (r.word(), crate::ring::SLEEPING))
        .collect();
    words.push((&doorbell.word, 0));
    crate::sys::futex_wait_any(&words, timeout);
    doorbell.word.swap(0, std::sync::atomic::Ordering::AcqRel) != 0
}

/// A word of this process that a thread in [`sleep_any`] also waits on, so that its own
/// process can wake it (to stop, or to write what senders queued).
#[derive(Debug, Default)]
pub struct Doorbell {
    word: std::sync::atomic::AtomicU32,
}

impl Doorbell {
    /// A quiet doorbell.
    pub fn new() -> Self {
        Doorbell::default()
    }

    /// Wakes the thread sleeping in [`sleep_any`] with this doorbell, or makes its next
    /// sleep return at once.
    pub fn ring(&self) {
        self.word.store(1, std::sync::atomic::Ordering::Release);
        crate::sys::futex_wake(&self.word);
    }
}

/// Wakes a [`Receiver`] (see [`Receiver::waker`]).
#[derive(Debug, Clone)]
pub struct Waker {
    memory: Arc<SharedMemory>,
    direction: Direction,
}

impl Waker {
    /// The ring's futex word (see [`Receiver::futex_word`]).
    pub fn word(&self) -> &std::sync::atomic::AtomicU32 {
        self.memory.ring(self.direction).state_word()
    }

    /// Wakes the receiver if it sleeps; it re-checks its ring and its peer.
    pub fn wake(&self) {
        Consumer::wake(&self.memory.ring(self.direction));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doorbell_wakes_a_sleeper_and_says_so() {
        let doorbell = Arc::new(Doorbell::new());
        let sleeper = {
            let doorbell = Arc::clone(&doorbell);
            std::thread::spawn(move || {
                let start = Instant::now();
                let rang = sleep_any(&[], &doorbell, Duration::from_secs(10));
                (rang, start.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        doorbell.ring();
        let (rang, slept) = sleeper.join().unwrap();
        assert!(rang, "the doorbell rang");
        assert!(
            slept < Duration::from_secs(5),
            "woken, not timed out: {slept:?}"
        );
        // Rung before the sleep: the sleep returns at once.
        doorbell.ring();
        assert!(sleep_any(&[], &doorbell, Duration::from_secs(10)));
        assert!(
            !sleep_any(&[], &doorbell, Duration::from_millis(1)),
            "quiet again"
        );
    }
}
