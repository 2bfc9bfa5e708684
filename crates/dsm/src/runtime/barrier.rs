//! The runtime's barrier: [`dsm_locks::BarrierEngine`]'s dissemination barrier (sans-IO, the
//! type `dsm-sim`'s lock simulation drives), ⌈log₂ N⌉ rounds with no coordinator. Each node
//! arrives with its write notices and the kind of collective call it came from; every node
//! leaves with every node's notices, or is refused the epoch when the nodes came from
//! different calls. Its messages are handled on whichever thread receives them (the
//! transport thread, or an application thread serving its rings while it waits), and what
//! they send leaves after the engine's lock is released.
//!
//! The engine counts barriers from 0; the runtime's epochs (its waits, the trace) from 1.
//! A failed node ends every wait in `NodeFailed` (`Shared::wait`); the barrier is not
//! repaired, and later collective calls are refused (`Node::collective`).

use dsm_locks::Action;
use dsm_wire::{Message, NodeId, PageId, SyncMsg};

use super::Core;
use crate::{Error, Result};

impl Core {
    /// This node reaches runtime epoch `epoch` from a collective call of `kind` with
    /// `notices`; the rounds' messages leave from this thread. True when it sent nothing and
    /// the barrier is not complete (rank 0 of a central barrier, waiting for arrivals).
    pub(crate) fn barrier_arrive(
        &self,
        epoch: u64,
        kind: u32,
        notices: Vec<PageId>,
    ) -> Result<bool> {
        let mut out = Vec::new();
        {
            let mut barrier = self.barrier.lock().unwrap_or_else(|p| p.into_inner());
            if barrier.epoch() + 1 != epoch {
                return Err(Error::Protocol(format!(
                    "barrier {epoch} called while the barrier engine is at {}",
                    barrier.epoch() + 1
                )));
            }
            barrier.arrive(kind, notices, &mut out)?;
        }
        crate::trace::barrier_arrive(&self.shared, epoch);
        let silent = out.is_empty();
        self.perform_barrier(out);
        Ok(silent)
    }

    /// A barrier message from `from`. One the protocol does not allow changes nothing and is
    /// dropped with a warning (the barrier then ends in its timeout, naming the node awaited).
    pub(crate) fn on_barrier(&self, from: NodeId, message: SyncMsg) {
        let mut out = Vec::new();
        let handled = self
            .barrier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_message(from, &message, &mut out);
        if let Err(e) = handled {
            tracing::warn!(from, error = %e, "barrier message refused; dropped");
        }
        self.perform_barrier(out);
    }

    fn perform_barrier(&self, out: Vec<Action>) {
        for action in out {
            match action {
                Action::Send { to, message } => {
                    super::driver::send_counted(
                        self.transport.as_ref(),
                        &self.shared.counters,
                        to,
                        &Message::Sync(message),
                    );
                }
                Action::BarrierDone { epoch, notices } => {
                    let epoch = epoch + 1;
                    crate::trace::barrier_released(&self.shared, epoch);
                    self.shared.update(|s| {
                        s.barrier_released = s.barrier_released.max(epoch);
                        super::keep_answer(&mut s.barrier_notices, epoch, notices);
                    });
                }
                Action::BarrierRefused { epoch } => {
                    let epoch = epoch + 1;
                    tracing::warn!(
                        epoch,
                        "nodes reached one barrier from different collective calls: refused \
                         everywhere"
                    );
                    self.shared.update(|s| {
                        s.barrier_aborted.insert(epoch);
                        while s.barrier_aborted.len() > super::MAX_UNCLAIMED {
                            s.barrier_aborted.pop_first();
                        }
                    });
                }
                Action::Granted { .. } | Action::RemoteWaiting { .. } => {
                    tracing::error!(?action, "the barrier engine produced a lock action");
                }
            }
        }
    }
}
