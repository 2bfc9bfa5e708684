//! Why a simulation run failed. Every variant names the step, so with the seed a failure
//! replays exactly.

use dsm_wire::NodeId;

use crate::net::NetError;

/// A failed simulation run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A checked property does not hold.
    #[error("step {step}: invariant broken: {detail}")]
    Invariant {
        /// Simulation step.
        step: u64,
        /// What was seen.
        detail: String,
    },
    /// An engine call returned an error on a message or event a correct protocol produces.
    #[error("step {step}: node {node}: engine error: {error}")]
    Engine {
        /// Simulation step.
        step: u64,
        /// The node.
        node: NodeId,
        /// The engine's error.
        error: dsm_core::Error,
    },
    /// The network refused a send (a message to a node outside the cluster).
    #[error("step {step}: node {node}: {error}")]
    Net {
        /// Simulation step.
        step: u64,
        /// The sender.
        node: NodeId,
        /// The refusal.
        error: NetError,
    },
    /// A fault or sync did not complete within the bound (deadlock or livelock).
    #[error("step {step}: {what} on node {node} waited more than {bound} steps")]
    Stuck {
        /// Simulation step.
        step: u64,
        /// The node.
        node: NodeId,
        /// What waited.
        what: String,
        /// The bound.
        bound: u64,
    },
    /// An environment variable that chooses the seeds or steps is not a number.
    #[error("{name}={value} is not a number")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
}

/// Result of a simulation.
pub type Result<T> = std::result::Result<T, Error>;
