//! A node crash, as both simulations model it: the node stops at a step, and each survivor
//! learns of it at its own random step within a bound after the crash (a failure detector's
//! verdicts reach nodes at different times).

use dsm_wire::NodeId;

use crate::rng::Rng;

/// A node crash in a simulated run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    /// The node that crashes.
    pub node: NodeId,
    /// Step at which it crashes (a run that ends before has no crash).
    pub at_step: u64,
    /// Each survivor is told within this many steps after the crash.
    pub notice_within: u64,
    /// What it sent before the crash still arrives (else what it had in flight is lost).
    pub keep_sent: bool,
}

/// The survivors still to be told of a crash, by the step they are due.
#[derive(Debug, Default)]
pub(crate) struct FailureNotices {
    due: Vec<(u64, NodeId)>,
}

impl FailureNotices {
    /// Schedules every node of `0..nodes` but the crashed one to be told within
    /// `crash.notice_within` steps after `now` (one draw of `rng` per survivor, in rank order).
    pub(crate) fn schedule(&mut self, crash: &Crash, nodes: NodeId, now: u64, rng: &mut Rng) {
        for survivor in (0..nodes).filter(|&n| n != crash.node) {
            let due = now + rng.range(1, crash.notice_within);
            self.due.push((due, survivor));
        }
        self.due.sort_unstable();
    }

    /// The next survivor to tell at step `now`: its notice is due, or nothing else can happen
    /// (`idle`), which moves the next notice forward.
    pub(crate) fn take_due(&mut self, now: u64, idle: bool) -> Option<NodeId> {
        let (due, survivor) = *self.due.first()?;
        (idle || due <= now).then(|| {
            self.due.remove(0);
            survivor
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_survivor_is_told_once_in_due_order_and_idleness_brings_notices_forward() {
        let crash = Crash {
            node: 1,
            at_step: 10,
            notice_within: 50,
            keep_sent: false,
        };
        let mut notices = FailureNotices::default();
        notices.schedule(&crash, 4, 10, &mut Rng::new(7));
        assert_eq!(
            notices.take_due(10, false),
            None,
            "none is due at the crash"
        );
        let mut told = Vec::new();
        let mut last_due = 0;
        while let Some(&(due, _)) = notices.due.first() {
            assert!((11..=60).contains(&due) && due >= last_due);
            last_due = due;
            told.push(notices.take_due(due, false).expect("due"));
        }
        told.sort_unstable();
        assert_eq!(told, vec![0, 2, 3]);
        notices.schedule(&crash, 3, 100, &mut Rng::new(7));
        assert!(
            notices.take_due(100, true).is_some(),
            "an idle world is told at once"
        );
    }
}
