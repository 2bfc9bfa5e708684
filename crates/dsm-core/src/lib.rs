//! dsm-core: the protocol engines of dsm, with no I/O.
//!
//! Engines take events (a fault, a message, a sync event, a tick) and return actions (send a
//! message, fetch a page, install it, invalidate, wake a thread). Transports and the fault
//! handler are thin drivers around them; the simulator (dsm-sim) drives them deterministically.

pub mod transport;

pub use transport::{EventSink, HomeMemory, Transport, TransportError, TransportEvent};
