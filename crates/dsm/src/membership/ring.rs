//! Ring monitoring (sans-IO): each node heartbeats its successor and watches its predecessor.
//!
//! A predecessor silent for longer than the failure timeout is declared failed; the caller
//! broadcasts `NodeFailed` and fails every wait on it. A failed or departed node leaves the
//! ring, which closes around it: its successor starts watching the next live node before it,
//! with a fresh timeout (no node is blamed for silence before it was watched).

use std::time::{Duration, Instant};

use dsm_wire::NodeId;

/// What the driver must do after a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RingAction {
    /// Send `Heartbeat { beat }` to `to`.
    Heartbeat { to: NodeId, beat: u64 },
    /// `rank` missed its heartbeats: broadcast `NodeFailed { rank }` and fail its waiters.
    Declare { rank: NodeId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    Failed,
    Left,
}

/// One node's view of the ring.
#[derive(Debug)]
pub(crate) struct Ring {
    rank: NodeId,
    states: Vec<State>,
    interval: Duration,
    timeout: Duration,
    beat: u64,
    next_beat: Instant,
    watched: Option<NodeId>,
    last_heard: Instant,
    /// When `tick` last ran: a longer gap means this node itself was not running (stopped,
    /// or starved of CPU), and its peers' heartbeats may be waiting unread.
    last_tick: Instant,
    /// False once this node is leaving: it still beats, but blames nobody.
    watching: bool,
}

impl Ring {
    /// A ring of `size` live nodes seen from `rank`, starting at `now`.
    pub(crate) fn new(
        rank: NodeId,
        size: u32,
        interval: Duration,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        let mut ring = Ring {
            rank,
            states: vec![State::Live; size as usize],
            interval,
            timeout,
            beat: 0,
            next_beat: now,
            watched: None,
            last_heard: now,
            last_tick: now,
            watching: true,
        };
        ring.rewatch(now);
        ring
    }

    /// The live node after us, if any.
    pub(crate) fn successor(&self) -> Option<NodeId> {
        self.live_from(self.rank, 1)
    }

    /// The live node before us, if any: the one we watch.
    pub(crate) fn predecessor(&self) -> Option<NodeId> {
        self.live_from(self.rank, self.states.len() - 1)
    }

    fn live_from(&self, start: NodeId, step: usize) -> Option<NodeId> {
        let n = self.states.len();
        (1..n)
            .map(|k| (start as usize + k * step) % n)
            .find(|&r| self.states[r] == State::Live)
            .map(|r| u32::try_from(r).expect("rank fits u32"))
    }

    fn rewatch(&mut self, now: Instant) {
        let watched = self.predecessor();
        if watched != self.watched {
            self.watched = watched;
            self.last_heard = now;
        }
    }

    /// Any sign of life from `from` (a heartbeat, or any message).
    pub(crate) fn heard(&mut self, from: NodeId, now: Instant) {
        if self.watched == Some(from) {
            self.last_heard = now;
        }
    }

    /// `rank` failed (declared by another node, or its connection broke). True when this is
    /// news.
    pub(crate) fn failed(&mut self, rank: NodeId, now: Instant) -> bool {
        self.set(rank, State::Failed, now)
    }

    /// `rank` left cleanly; it is no longer watched and its silence is not a failure.
    pub(crate) fn left(&mut self, rank: NodeId, now: Instant) {
        self.set(rank, State::Left, now);
    }

    fn set(&mut self, rank: NodeId, state: State, now: Instant) -> bool {
        let news = self
            .states
            .get(rank as usize)
            .is_some_and(|s| *s == State::Live && rank != self.rank);
        if news {
            self.states[rank as usize] = state;
            self.rewatch(now);
        }
        news
    }

    /// This node is leaving: from now on it judges nobody (its peers may stop at any time).
    pub(crate) fn stop_watching(&mut self) {
        self.watching = false;
    }

    /// Advances to `now`: heartbeats that are due and a failure to declare, if any. After a
    /// gap in this node's own ticks longer than two heartbeat intervals (it was stopped or
    /// starved), silence is measured afresh from `now`: what the watched node sent meanwhile
    /// has not been read yet, so it is not held against it.
    pub(crate) fn tick(&mut self, now: Instant, actions: &mut Vec<RingAction>) {
        if now.duration_since(self.last_tick) > 2 * self.interval {
            self.last_heard = now;
        }
        self.last_tick = now;
        if now >= self.next_beat {
            if let Some(to) = self.successor() {
                self.beat += 1;
                actions.push(RingAction::Heartbeat {
                    to,
                    beat: self.beat,
                });
            }
            self.next_beat = now + self.interval;
        }
        if let Some(watched) = self.watched.filter(|_| self.watching)
            && now.duration_since(self.last_heard) > self.timeout
        {
            self.failed(watched, now);
            actions.push(RingAction::Declare { rank: watched });
        }
    }

    /// When the next tick is due (the next heartbeat or the watched node's deadline).
    pub(crate) fn next_deadline(&self) -> Instant {
        let watch = self
            .watched
            .map(|_| self.last_heard + self.timeout + Duration::from_millis(1));
        watch.map_or(self.next_beat, |w| w.min(self.next_beat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_millis(100);
    const TIMEOUT: Duration = Duration::from_millis(500);

    fn ticks(ring: &mut Ring, now: Instant) -> Vec<RingAction> {
        let mut actions = Vec::new();
        ring.tick(now, &mut actions);
        actions
    }

    #[test]
    fn heartbeats_go_to_the_successor_at_the_interval() {
        let t0 = Instant::now();
        let mut ring = Ring::new(3, 4, BEAT, TIMEOUT, t0);
        assert_eq!((ring.successor(), ring.predecessor()), (Some(0), Some(2)));
        assert_eq!(
            ticks(&mut ring, t0),
            vec![RingAction::Heartbeat { to: 0, beat: 1 }]
        );
        assert_eq!(ticks(&mut ring, t0 + BEAT / 2), vec![]);
        assert_eq!(
            ticks(&mut ring, t0 + BEAT),
            vec![RingAction::Heartbeat { to: 0, beat: 2 }]
        );
    }

    #[test]
    fn a_silent_predecessor_is_declared_once_and_the_ring_closes() {
        let t0 = Instant::now();
        let mut ring = Ring::new(2, 4, BEAT, TIMEOUT, t0);
        ring.heard(1, t0 + BEAT);
        // Ticking on time (the driver wakes at every beat): no verdict within the timeout.
        let mut now = t0;
        while now < t0 + BEAT + TIMEOUT {
            now += BEAT / 2;
            if now <= t0 + BEAT + TIMEOUT {
                assert!(!ticks(&mut ring, now).contains(&RingAction::Declare { rank: 1 }));
            }
        }
        let actions = ticks(&mut ring, t0 + 2 * BEAT + TIMEOUT);
        assert!(
            actions.contains(&RingAction::Declare { rank: 1 }),
            "{actions:?}"
        );
        // Now watching rank 0, with a fresh timeout.
        assert_eq!(ring.predecessor(), Some(0));
        let actions = ticks(&mut ring, t0 + 3 * BEAT + TIMEOUT);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, RingAction::Declare { .. }))
        );
        assert!(!ring.failed(1, now), "declared twice");
    }

    #[test]
    fn a_failed_successor_is_skipped_and_a_departed_node_is_not_blamed() {
        let t0 = Instant::now();
        let mut ring = Ring::new(0, 3, BEAT, TIMEOUT, t0);
        assert!(ring.failed(1, t0));
        assert_eq!(ring.successor(), Some(2));
        ring.left(2, t0);
        assert_eq!((ring.successor(), ring.predecessor()), (None, None));
        let actions = ticks(&mut ring, t0 + 10 * TIMEOUT);
        assert_eq!(actions, vec![]);
    }

    #[test]
    fn a_node_that_was_stopped_does_not_blame_its_predecessor_on_resuming() {
        let t0 = Instant::now();
        let mut ring = Ring::new(1, 3, BEAT, TIMEOUT, t0);
        assert!(
            ticks(&mut ring, t0)
                .iter()
                .all(|a| !matches!(a, RingAction::Declare { .. }))
        );
        // Stopped for 3 s: the first tick after it judges nobody...
        let resumed = t0 + Duration::from_secs(3);
        let actions = ticks(&mut ring, resumed);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, RingAction::Declare { .. })),
            "{actions:?}"
        );
        // ...and the predecessor is heard from in time.
        ring.heard(0, resumed + BEAT);
        let later = resumed + BEAT + TIMEOUT / 2;
        assert!(
            !ticks(&mut ring, later)
                .iter()
                .any(|a| matches!(a, RingAction::Declare { .. }))
        );
        // A real silence (ticking on time, nothing heard) is still declared.
        let mut now = later;
        let mut declared = false;
        for _ in 0..20 {
            now += BEAT;
            declared |= ticks(&mut ring, now).contains(&RingAction::Declare { rank: 0 });
        }
        assert!(declared);
    }

    #[test]
    fn a_leaving_node_keeps_beating_and_blames_nobody() {
        let t0 = Instant::now();
        let mut ring = Ring::new(1, 3, BEAT, TIMEOUT, t0);
        ring.stop_watching();
        let mut now = t0;
        let mut beats = 0;
        for _ in 0..20 {
            now += BEAT;
            let actions = ticks(&mut ring, now);
            assert!(
                !actions
                    .iter()
                    .any(|a| matches!(a, RingAction::Declare { .. }))
            );
            beats += actions.len();
        }
        assert!(beats >= 10, "{beats} heartbeats");
    }

    #[test]
    fn next_deadline_is_the_earlier_of_beat_and_watch() {
        let t0 = Instant::now();
        let mut ring = Ring::new(0, 2, BEAT, TIMEOUT, t0);
        ticks(&mut ring, t0);
        assert_eq!(ring.next_deadline(), t0 + BEAT);
        let single = Ring::new(0, 1, BEAT, TIMEOUT, t0);
        assert_eq!(single.next_deadline(), t0);
    }
}
