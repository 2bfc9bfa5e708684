//! The monitor thread: heartbeats to the ring successor and the verdict on the predecessor,
//! on a thread of their own that takes no lock but the ring's (never the engine's, never one
//! an allocation or a file merge holds), so that a node busy with slow work is not declared
//! failed for it. Heartbeats are heard on the transport thread (`Sink`); a verdict goes to
//! the driver, which tells every node and fails the waits on the failed one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dsm_wire::{Membership, Message, NodeId};

use super::Core;
use super::driver::{Event, send_counted};
use crate::membership::ring::RingAction;

/// Longest the monitor sleeps between looks at the stop flag.
const MAX_NAP: Duration = Duration::from_millis(50);

/// Starts the monitor of node `rank`; it returns when `stop` is set.
pub(crate) fn spawn(
    rank: NodeId,
    core: Arc<Core>,
    events: SyncSender<Event>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("dsm-monitor-{rank}"))
        .spawn(move || {
            core.priority
                .apply_to_current_thread(crate::sched::Role::Background);
            run(&core, &events, &stop)
        })
}

fn run(core: &Core, events: &SyncSender<Event>, stop: &AtomicBool) {
    let mut actions = Vec::new();
    // Verdicts the driver's full queue did not take yet: retried, never dropped.
    let mut verdicts: Vec<NodeId> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let deadline = {
            let mut ring = core.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.tick(now, &mut actions);
            ring.next_deadline()
        };
        for action in actions.drain(..) {
            match action {
                RingAction::Heartbeat { to, beat } => {
                    let beat = Message::Membership(Membership::Heartbeat { beat });
                    send_counted(core.transport.as_ref(), &core.shared.counters, to, &beat);
                }
                RingAction::Declare { rank } => verdicts.push(rank),
            }
        }
        verdicts.retain(|&rank| match events.try_send(Event::Declare { rank }) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => false,
            Err(TrySendError::Full(_)) => true,
        });
        let nap = deadline
            .saturating_duration_since(Instant::now())
            .min(MAX_NAP);
        std::thread::sleep(nap.max(Duration::from_millis(1)));
    }
}
