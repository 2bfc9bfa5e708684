//! Glue to a `dsm_core::Transport`: an [`Outbox`] that sends the engines' messages as
//! `Message::Sync` frames.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dsm_core::Transport;
use dsm_wire::{Message, NodeId, SyncMsg};

use crate::Outbox;

/// Messages kept while no transport is connected yet (replies to peers that started first).
const MAX_EARLY: usize = 1 << 16;

enum State {
    /// Not connected yet: messages wait here (bounded).
    Early(Vec<(NodeId, SyncMsg)>),
    Connected(Arc<dyn Transport>),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Early(kept) => write!(f, "Early({} kept)", kept.len()),
            State::Connected(transport) => write!(f, "Connected(node {})", transport.local()),
        }
    }
}

/// An [`Outbox`] over a transport, connected after construction: the table (inside the
/// transport's event sink) has to exist before the transport starts, so messages sent before
/// [`connect`](Self::connect) are kept and sent then. Clones share the same state.
///
/// A failed send (peer failed, transport closed) is counted and otherwise dropped: the
/// acquirer's timeout names the node it still waits for.
#[derive(Debug, Clone)]
pub struct TransportOutbox {
    state: Arc<Mutex<State>>,
    failed: Arc<AtomicU64>,
}

impl Default for TransportOutbox {
    fn default() -> Self {
        TransportOutbox {
            state: Arc::new(Mutex::new(State::Early(Vec::new()))),
            failed: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl TransportOutbox {
    /// An outbox not connected yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects the transport and sends what was kept, in order.
    pub fn connect(&self, transport: Arc<dyn Transport>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let previous = std::mem::replace(&mut *state, State::Connected(transport.clone()));
        if let State::Early(kept) = previous {
            for (to, message) in kept {
                self.send_now(transport.as_ref(), to, message);
            }
        }
    }

    /// Sends that failed or were dropped (early buffer full).
    pub fn failed_sends(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn send_now(&self, transport: &dyn Transport, to: NodeId, message: SyncMsg) {
        if transport.send(to, &Message::Sync(message)).is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Outbox for TransportOutbox {
    fn send(&self, to: NodeId, message: SyncMsg) {
        // The mutex is held while sending so that kept messages leave before later ones;
        // `Transport::send` only queues.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *state {
            State::Connected(transport) => {
                let transport = transport.clone();
                self.send_now(transport.as_ref(), to, message);
            }
            State::Early(kept) if kept.len() < MAX_EARLY => kept.push((to, message)),
            State::Early(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
