//! [`Lane`]: the sending side of one connection, shared by every thread that sends to that
//! peer, so that a thread can put its own frame on the socket instead of waking the
//! transport thread for it, and frames still reach the peer in the order they were sent.
//!
//! A frame leaves in one of two ways:
//!
//! * **Now**, by the sending thread itself (`sendmsg`, non-blocking), when nothing sent to this
//!   peer before it is still waiting: no queued operation and no frame in the transport
//!   thread's buffers or in flight in its ring (`behind == 0`).
//! * **Queued** for the transport thread otherwise (the caller pushes it to the work queue).
//!
//! Why the order holds (the protocols rely on per-pair FIFO; the `loom_model` test below
//! checks it):
//!
//! * `behind` counts what the transport thread owes this peer: it grows, under `state`, when a
//!   sender queues an operation or the thread seals a frame of its own, and shrinks when a
//!   frame has gone to the kernel whole (or was dropped with its connection). A sender sends
//!   now only when it reads 0 under `state`: then every earlier frame is in the socket, and
//!   the thread cannot seal another one meanwhile (sealing takes `state`). A frame counted
//!   as queued is pushed after the lock is let go (a full queue waits for the thread, which
//!   needs the lock), so two calls at once may enter the queue in either order; a call that
//!   returned is ahead of every call made after it, in the queue or on the socket.
//! * Tags count frames (`FrameSeal`'s sequence), so a frame is sealed under `state` right
//!   before it goes: by the sender sending it now, or by the thread as it takes it.
//! * A frame sent now in part (a full socket buffer) leaves its rest in the lane (`stash`),
//!   counted in `behind`; the thread puts the rest in front of anything else it sends to that
//!   peer: at its next seal (in front of that frame) or at its next turn.
//! * A corked sender ([`crate::Cork`]) seals its frame and appends it to the stash instead of
//!   writing it, as if the socket had taken none of it, when the stash is all that is owed;
//!   when its cork ends it writes the whole stash at once ([`Lane::flush_stash`]). Until then
//!   the stash is the thread's like any other: it may take it first, in order.

use std::io;

use crate::primitive::{AtomicBool, Mutex, MutexGuard, Ordering};
use crate::session::FrameSeal;

/// What a sender does with its frame (see [`Lane::send`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// On the socket, whole.
    Now,
    /// Partly on the socket (or not at all), the rest left for the transport thread: wake it.
    Stashed,
    /// Not sent: the caller queues it for the transport thread (counted already).
    Queue,
    /// Appended to the stash for the caller's cork to write ([`Lane::flush_stash`]).
    Corked,
}

/// The sending side of one connection. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    state: Mutex<State>,
    /// Whether `state.stash` holds something, so that the transport thread's every turn
    /// need not take the lock to find out (set and cleared under it).
    stashed: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The socket, while the connection is open (the transport thread owns it; it clears this
    /// under the lock before it closes the socket).
    fd: Option<std::os::fd::RawFd>,
    /// Tags the frames of this direction; `None` on a keyless connection.
    seal: Option<FrameSeal>,
    /// Operations queued for this peer and frames of the transport thread not yet handed to
    /// the kernel whole.
    behind: usize,
    /// The rest of a frame sent in part, to go before anything else.
    stash: Option<Vec<u8>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("fd", &self.fd)
            .field("behind", &self.behind)
            .field("stash", &self.stash.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl Lane {
    /// The connection is up: frames may go straight to `fd`, sealed by `seal`.
    pub(crate) fn open(&self, fd: std::os::fd::RawFd, seal: Option<FrameSeal>) {
        let mut state = self.lock();
        state.fd = Some(fd);
        state.seal = seal;
    }

    /// The connection failed: nothing goes to the socket from here on, and what was owed is
    /// written off. Called by the transport thread before it closes the socket.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.fd = None;
        state.stash = None;
        self.stashed.store(false, Ordering::Release);
        state.behind = 0;
    }

    /// A sender's call: sends `frame` now through `write` (which returns the bytes the kernel
    /// took of the parts given, or an error) when nothing is owed to this peer, else counts
    /// it as queued. `queue` then pushes the frame to the transport thread; if it fails, the
    /// count is taken back.
    pub(crate) fn send<W, Q, E>(&self, mut frame: Vec<u8>, write: W, queue: Q) -> Result<Sent, E>
    where
        W: FnOnce(std::os::fd::RawFd, &[&[u8]]) -> io::Result<usize>,
        Q: FnOnce(Vec<u8>) -> Result<(), E>,
    {
        let mut state = self.lock();
        if let (Some(fd), 0) = (state.fd, state.behind) {
            let sent = state.send_now(fd, &mut frame, write);
            self.stashed.store(state.stash.is_some(), Ordering::Release);
            return Ok(sent);
        }
        drop(state);
        self.queue(|| queue(frame))?;
        Ok(Sent::Queue)
    }

    /// A corked sender's call: seals `frame` and appends it to the stash when nothing but
    /// the stash is owed to this peer ([`Sent::Corked`]); otherwise queues it as
    /// [`send`](Self::send) does.
    pub(crate) fn send_corked<Q, E>(&self, frame: Vec<u8>, queue: Q) -> Result<Sent, E>
    where
        Q: FnOnce(Vec<u8>) -> Result<(), E>,
    {
        let mut state = self.lock();
        let only_the_stash = match state.stash {
            Some(_) => state.behind == 1,
            None => state.behind == 0,
        };
        if state.fd.is_some() && only_the_stash {
            let mut stash = state.stash.take().unwrap_or_default();
            stash.extend_from_slice(&frame);
            let start = stash.len() - frame.len();
            state.tag_into(&mut stash, start);
            if state.behind == 0 {
                state.behind = 1;
            }
            state.stash = Some(stash);
            self.stashed.store(true, Ordering::Release);
            return Ok(Sent::Corked);
        }
        drop(state);
        self.queue(|| queue(frame))?;
        Ok(Sent::Queue)
    }

    /// A cork ends: writes the stash through `write` if it is still here and all that is
    /// owed. [`Sent::Now`] when it went whole (or nothing was left to write),
    /// [`Sent::Stashed`] when the socket took part of it: wake the transport thread.
    pub(crate) fn flush_stash<W>(&self, write: W) -> Sent
    where
        W: FnOnce(std::os::fd::RawFd, &[&[u8]]) -> io::Result<usize>,
    {
        let mut state = self.lock();
        let fd = match (state.fd, state.behind, &state.stash) {
            (Some(fd), 1, Some(_)) => fd,
            // Taken by the transport thread (it sends it), or other work it owes came after.
            (_, _, stash) => {
                return match stash {
                    Some(_) => Sent::Stashed,
                    None => Sent::Now,
                };
            }
        };
        let stash = state.stash.take().expect("matched above");
        let taken = write(fd, &[&stash]).unwrap_or(0).min(stash.len());
        if taken == stash.len() {
            state.behind = 0;
            self.stashed.store(false, Ordering::Release);
            return Sent::Now;
        }
        state.stash = Some(stash[taken..].to_vec());
        Sent::Stashed
    }

    /// Counts one operation queued for this peer (a page read or write) as
    /// [`send`](Self::send) counts a frame; `queue` pushes it.
    pub(crate) fn queue<Q, E>(&self, queue: Q) -> Result<(), E>
    where
        Q: FnOnce() -> Result<(), E>,
    {
        self.lock().behind += 1;
        // The queue may be full: the transport thread makes room, taking `state`.
        queue().inspect_err(|_| self.done(1))
    }

    /// Transport thread: seals the frame at `out[start..]` (one it counted when queued, or
    /// not), putting a stashed rest in front of it. Returns the units of `behind` that `out`
    /// now holds for it: the frame, and the stash if there was one.
    pub(crate) fn seal(&self, out: &mut Vec<u8>, start: usize, counted: bool) -> usize {
        let mut state = self.lock();
        if !counted {
            state.behind += 1;
        }
        match state.stash.take() {
            Some(stash) => {
                self.stashed.store(false, Ordering::Release);
                out.splice(start..start, stash.iter().copied());
                state.tag_into(out, start + stash.len());
                2
            }
            None => {
                state.tag_into(out, start);
                1
            }
        }
    }

    /// Transport thread: appends a stashed rest to `out` (empty then: nothing was sealed
    /// since the stash, or it would hold it). True if there was one.
    /// Looks without the lock first: a stash set after the look comes with a wake-up of
    /// the thread (`Sent::Stashed`), so the next turn finds it.
    pub(crate) fn take_stash(&self, out: &mut Vec<u8>) -> bool {
        if !self.stashed.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.lock();
        self.stashed.store(false, Ordering::Release);
        match state.stash.take() {
            Some(stash) => {
                out.extend_from_slice(&stash);
                true
            }
            None => false,
        }
    }

    /// Transport thread: `units` counted in `behind` went to the kernel whole (or were
    /// dropped).
    pub(crate) fn done(&self, units: usize) {
        let mut state = self.lock();
        state.behind = state.behind.saturating_sub(units);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Seals and writes `frame`; what the socket did not take is stashed.
    fn send_now<W>(&mut self, fd: std::os::fd::RawFd, frame: &mut [u8], write: W) -> Sent
    where
        W: FnOnce(std::os::fd::RawFd, &[&[u8]]) -> io::Result<usize>,
    {
        let tag = self.seal.as_mut().map(|seal| seal.seal(frame));
        let frame: &[u8] = frame;
        let tag: &[u8] = tag.as_ref().map_or(&[], |t| &t[..]);
        let total = frame.len() + tag.len();
        // An error leaves the whole frame to the transport thread, whose own send meets the
        // error and fails the peer, as for any other frame.
        let taken = write(fd, &[frame, tag]).unwrap_or(0).min(total);
        if taken == total {
            return Sent::Now;
        }
        let mut rest = Vec::with_capacity(total - taken);
        if taken < frame.len() {
            rest.extend_from_slice(&frame[taken..]);
            rest.extend_from_slice(tag);
        } else {
            rest.extend_from_slice(&tag[taken - frame.len()..]);
        }
        self.stash = Some(rest);
        self.behind += 1;
        Sent::Stashed
    }

    fn tag_into(&mut self, out: &mut Vec<u8>, start: usize) {
        if let Some(seal) = &mut self.seal {
            seal.seal_at(out, start);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::session::TAG_LEN;

    fn keys() -> (FrameSeal, FrameSeal) {
        (FrameSeal::new([7; 32]), FrameSeal::new([7; 32]))
    }

    /// Splits `wire` into frames of the given lengths, each followed by its tag, opening
    /// every frame in order as the receiving end would.
    fn check_wire(wire: &[u8], lens: &[usize], mut receive: FrameSeal) -> Vec<Vec<u8>> {
        let mut at = 0;
        let mut frames = Vec::new();
        for &len in lens {
            let (mut frame, tag) = (
                wire[at..at + len].to_vec(),
                &wire[at + len..at + len + TAG_LEN],
            );
            assert!(
                receive.open(&mut frame, tag),
                "frame {} fails its tag",
                frames.len()
            );
            frames.push(frame);
            at += len + TAG_LEN;
        }
        assert_eq!(at, wire.len(), "bytes left over");
        frames
    }

    #[test]
    fn a_frame_sent_in_part_leaves_its_rest_in_front_of_the_next_one() {
        let (send, receive) = keys();
        let lane = Lane::default();
        lane.open(3, Some(send));
        let mut wire = Vec::new();
        let no_queue = |_: Vec<u8>| -> Result<(), ()> { panic!("nothing owed: sent now") };
        // The socket takes 5 bytes of the first frame: the rest is stashed and counted.
        let first = vec![1u8; 40];
        let partial = |_fd, parts: &[&[u8]]| {
            wire.extend_from_slice(&parts[0][..5]);
            Ok(5)
        };
        assert_eq!(
            lane.send(first.clone(), partial, no_queue),
            Ok(Sent::Stashed)
        );
        // The next sender must queue behind it.
        let second = vec![2u8; 30];
        let mut queued = None;
        let write = |_fd, _: &[&[u8]]| -> io::Result<usize> { panic!("must not write") };
        let queue = |frame| -> Result<(), ()> {
            queued = Some(frame);
            Ok(())
        };
        assert_eq!(lane.send(second.clone(), write, queue), Ok(Sent::Queue));
        // The transport thread seals the queued frame: the stash goes in front of it.
        let mut out = queued.unwrap();
        assert_eq!(lane.seal(&mut out, 0, true), 2);
        wire.extend_from_slice(&out);
        assert_eq!(check_wire(&wire, &[40, 30], receive), [first, second]);
        // Both units go to the kernel: the lane is clear, and the next frame goes now.
        lane.done(2);
        let mut now = Vec::new();
        let all = |_fd, parts: &[&[u8]]| {
            now.extend(parts.iter().flat_map(|p| p.iter().copied()));
            Ok(now.len())
        };
        assert_eq!(lane.send(vec![3; 8], all, no_queue), Ok(Sent::Now));
        assert_eq!(now.len(), 8 + TAG_LEN);
    }

    #[test]
    fn corked_frames_leave_together_in_one_write_and_behind_owed_work_they_queue() {
        let (send, receive) = keys();
        let lane = Lane::default();
        lane.open(3, Some(send));
        let no_queue = |_: Vec<u8>| -> Result<(), ()> { panic!("only the stash is owed") };
        assert_eq!(lane.send_corked(vec![1u8; 20], no_queue), Ok(Sent::Corked));
        assert_eq!(
            lane.send_corked(vec![2u8; 4096], no_queue),
            Ok(Sent::Corked)
        );
        let mut writes = Vec::new();
        let write = |_fd, parts: &[&[u8]]| {
            writes.push(parts.concat());
            Ok(writes[0].len())
        };
        assert_eq!(lane.flush_stash(write), Sent::Now);
        assert_eq!(writes.len(), 1, "one write for both");
        let frames = check_wire(&writes[0], &[20, 4096], receive);
        assert_eq!(frames, [vec![1u8; 20], vec![2u8; 4096]]);
        // Nothing owed now: a plain send goes at once.
        let mut now = 0;
        let all = |_fd, parts: &[&[u8]]| {
            now = parts.iter().map(|p| p.len()).sum();
            Ok(now)
        };
        assert_eq!(lane.send(vec![3; 8], all, no_queue), Ok(Sent::Now));
        // The thread owes something (a queued operation): a corked frame queues behind it,
        // and the cork's end has nothing of its own to write.
        lane.queue(|| Ok::<(), ()>(())).unwrap();
        let mut queued = None;
        let queue = |frame| -> Result<(), ()> {
            queued = Some(frame);
            Ok(())
        };
        assert_eq!(lane.send_corked(vec![4u8; 8], queue), Ok(Sent::Queue));
        assert_eq!(queued, Some(vec![4u8; 8]));
        let never = |_fd, _: &[&[u8]]| -> io::Result<usize> { panic!("nothing stashed") };
        assert_eq!(lane.flush_stash(never), Sent::Now);
    }

    #[test]
    fn a_stash_alone_goes_at_the_next_turn_and_errors_leave_the_whole_frame() {
        let (send, receive) = keys();
        let lane = Lane::default();
        lane.open(3, Some(send));
        let refused = |_fd, _: &[&[u8]]| Err(io::Error::from(io::ErrorKind::WouldBlock));
        let no_queue = |_: Vec<u8>| -> Result<(), ()> { panic!("nothing owed") };
        assert_eq!(
            lane.send(vec![9u8; 12], refused, no_queue),
            Ok(Sent::Stashed)
        );
        let mut out = Vec::new();
        assert!(lane.take_stash(&mut out));
        assert!(!lane.take_stash(&mut out), "taken once");
        assert_eq!(check_wire(&out, &[12], receive), [vec![9u8; 12]]);
    }

    #[test]
    fn own_frames_are_counted_and_a_closed_lane_queues_everything() {
        let lane = Lane::default();
        lane.open(3, None);
        let mut out = vec![0u8; 10];
        assert_eq!(
            lane.seal(&mut out, 0, false),
            1,
            "a frame of the thread's own"
        );
        assert_eq!(out.len(), 10, "no tag on a keyless connection");
        let write = |_fd, _: &[&[u8]]| -> io::Result<usize> { panic!("owed: must queue") };
        assert_eq!(
            lane.send(vec![1], write, |_| Ok::<_, ()>(())),
            Ok(Sent::Queue)
        );
        lane.close();
        assert_eq!(
            lane.send(vec![1], write, |_| Ok::<_, ()>(())),
            Ok(Sent::Queue)
        );
        // A queue that refuses takes its count back.
        assert_eq!(lane.send(vec![1], write, |_| Err(())), Err(()));
    }
}

/// The order argument of the module docs, model-checked: two senders and the transport
/// thread, a socket that takes only part of a frame now and then, every interleaving.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use crate::session::TAG_LEN;
    use loom::sync::Arc;
    use loom::sync::Mutex as LoomMutex;

    /// The socket: bytes in the order the kernel took them.
    type Wire = Arc<LoomMutex<Vec<u8>>>;

    /// Frames queued for the transport thread.
    type Queue = Arc<LoomMutex<Vec<Vec<u8>>>>;

    fn frame(sender: u8, seq: u8) -> Vec<u8> {
        vec![sender, seq, sender ^ seq]
    }

    /// Runs `body` over the interleavings of its threads with a keyed lane, an empty socket
    /// and an empty queue. Bounded preemptions keep the search to seconds; the interleavings
    /// that matter (a sender between its check and its write, the thread between seal and
    /// done) need one or two.
    fn explore(body: impl Fn(Arc<Lane>, Wire, Queue) + Send + Sync + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(move || {
            let lane = Arc::new(Lane::default());
            lane.open(3, Some(FrameSeal::new([5; 32])));
            body(lane, Arc::default(), Arc::default());
        });
    }

    #[test]
    fn frames_reach_the_socket_whole_in_each_senders_order_with_tags_in_sequence() {
        explore(|lane, wire, queue| {
            let senders: Vec<_> = (0..2u8)
                .map(|sender| {
                    let (lane, wire, queue) = (lane.clone(), wire.clone(), queue.clone());
                    loom::thread::spawn(move || {
                        for seq in 0..2u8 {
                            // Sender 0's socket takes 2 bytes of a frame: its rest is stashed.
                            let write = |_fd, parts: &[&[u8]]| {
                                let mut wire = wire.lock().unwrap();
                                let all: Vec<u8> = parts.concat();
                                let take = if sender == 0 { 2 } else { all.len() };
                                wire.extend_from_slice(&all[..take]);
                                Ok(take)
                            };
                            let push = |f| -> Result<(), ()> {
                                queue.lock().unwrap().push(f);
                                Ok(())
                            };
                            lane.send(frame(sender, seq), write, push).unwrap();
                        }
                    })
                })
                .collect();
            // The transport thread: takes queued frames, seals them (with any stash in
            // front), writes them whole, and counts them done; also takes a lone stash.
            let worker = {
                let (lane, wire, queue) = (lane.clone(), wire.clone(), queue.clone());
                loom::thread::spawn(move || {
                    for _ in 0..2 {
                        turn(&lane, &wire, &queue);
                    }
                })
            };
            for s in senders {
                s.join().unwrap();
            }
            worker.join().unwrap();
            // Whatever the model left queued or stashed goes last, as the next turns would.
            let mut out = Vec::new();
            for f in std::mem::take(&mut *queue.lock().unwrap()) {
                let start = out.len();
                out.extend_from_slice(&f);
                lane.seal(&mut out, start, true);
            }
            lane.take_stash(&mut out);
            let mut wire = wire.lock().unwrap().clone();
            wire.extend_from_slice(&out);
            check(&wire);
        });
    }

    /// Every frame whole, tags in sequence, each sender's two frames in its order.
    fn check(wire: &[u8]) {
        let mut receive = FrameSeal::new([5; 32]);
        let mut next = [0u8; 2];
        let mut at = 0;
        while at < wire.len() {
            let mut f = wire[at..at + 3].to_vec();
            let tag = &wire[at + 3..at + 3 + TAG_LEN];
            assert!(
                receive.open(&mut f, tag),
                "a frame torn or out of tag order"
            );
            let (sender, seq) = (f[0], f[1]);
            assert_eq!(f[2], sender ^ seq, "a frame torn");
            assert_eq!(seq, next[sender as usize], "sender {sender} out of order");
            next[sender as usize] += 1;
            at += 3 + TAG_LEN;
        }
        assert_eq!(next, [2, 2], "a frame lost");
    }

    /// The transport thread's turn: seals queued frames (a stash in front), takes a lone
    /// stash, writes all, counts it done.
    fn turn(lane: &Lane, wire: &Wire, queue: &Queue) {
        let taken: Vec<Vec<u8>> = std::mem::take(&mut *queue.lock().unwrap());
        let mut out = Vec::new();
        let mut units = 0;
        for f in taken {
            let start = out.len();
            out.extend_from_slice(&f);
            units += lane.seal(&mut out, start, true);
        }
        if lane.take_stash(&mut out) {
            units += 1;
        }
        wire.lock().unwrap().extend_from_slice(&out);
        lane.done(units);
    }

    #[test]
    fn a_corked_senders_frames_keep_their_place_among_the_others() {
        explore(|lane, wire, queue| {
            let push = |queue: &Queue| {
                let queue = queue.clone();
                move |f| -> Result<(), ()> {
                    queue.lock().unwrap().push(f);
                    Ok(())
                }
            };
            // Sender 0 is corked: both frames gather, then its cork writes them, the socket
            // taking all but 2 bytes (the rest stays for the thread).
            let corked = {
                let (lane, wire, queue) = (lane.clone(), wire.clone(), queue.clone());
                loom::thread::spawn(move || {
                    for seq in 0..2u8 {
                        lane.send_corked(frame(0, seq), push(&queue)).unwrap();
                    }
                    let write = |_fd, parts: &[&[u8]]| {
                        let all: Vec<u8> = parts.concat();
                        let take = all.len() - 2;
                        wire.lock().unwrap().extend_from_slice(&all[..take]);
                        Ok(take)
                    };
                    lane.flush_stash(write);
                })
            };
            // Sender 1 is not corked; its socket takes 2 bytes of a frame (a stash of its
            // own, which the thread may take while sender 0 queues behind it).
            let plain = {
                let (lane, wire, queue) = (lane.clone(), wire.clone(), queue.clone());
                loom::thread::spawn(move || {
                    for seq in 0..2u8 {
                        let write = |_fd, parts: &[&[u8]]| {
                            let all: Vec<u8> = parts.concat();
                            wire.lock().unwrap().extend_from_slice(&all[..2]);
                            Ok(2)
                        };
                        lane.send(frame(1, seq), write, push(&queue)).unwrap();
                    }
                })
            };
            let worker = {
                let (lane, wire, queue) = (lane.clone(), wire.clone(), queue.clone());
                loom::thread::spawn(move || turn(&lane, &wire, &queue))
            };
            corked.join().unwrap();
            plain.join().unwrap();
            worker.join().unwrap();
            // The next turns take whatever is left, in order.
            turn(&lane, &wire, &queue);
            turn(&lane, &wire, &queue);
            check(&wire.lock().unwrap());
        });
    }
}
