//! How a node's TCP transport is set up: who it is, whom it connects to, and the cluster key.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use dsm_wire::{Limits, NodeId};

use crate::{Error, Result};

/// Name of the environment variable holding the cluster key.
pub const CLUSTER_KEY_ENV: &str = "DSM_CLUSTER_KEY";

/// BLAKE3 `derive_key` context turning a passphrase into a cluster key.
pub const PASSPHRASE_CONTEXT: &str = "dsm cluster key v1";

/// Everything [`TcpTransport::start`](crate::TcpTransport::start) needs.
///
/// Rank `r` dials every rank below it and accepts every rank above it, so `peers[i]` needs to
/// be right only for `i < rank` (the highest rank dials everyone and is dialled by no one).
#[derive(Debug)]
pub struct TcpConfig {
    /// This node's rank, `0..peers.len()`.
    pub rank: NodeId,
    /// This node's listener, already bound (bind port 0 and publish `local_addr` first).
    pub listener: TcpListener,
    /// Every node's listener address, indexed by rank (own entry ignored).
    pub peers: Vec<SocketAddr>,
    /// Cluster id: carried in every frame header; frames of another cluster are rejected.
    pub cluster: u64,
    /// Cluster key: when set, every connection proves it with a challenge–response MAC and
    /// every frame after the handshake carries a tag under a key of that connection (see
    /// [`crate::session`]). `None` authenticates nothing: anyone who can reach the listener
    /// can join the mesh.
    pub key: Option<[u8; 32]>,
    /// How long `start` waits for the whole mesh before failing with the missing ranks.
    pub connect_timeout: Duration,
    /// How long one handshake may take (a silent or slow intruder is dropped after this).
    pub handshake_timeout: Duration,
    /// Bounds on incoming frames.
    pub limits: Limits,
    /// How long the transport thread keeps polling its ring after its last activity (a frame
    /// sent or received, work queued) before it sleeps in the kernel. A thread woken from
    /// another CPU costs tens of microseconds on virtual machines; one already polling picks
    /// a frame up at once. Bounded, only while the sink says a thread awaits an answer
    /// ([`EventSink::awaiting`](dsm_core::EventSink::awaiting)), and it yields the CPU
    /// between polls, so threads sharing its CPU still run. Zero (the default here) never
    /// polls.
    pub spin: Duration,
    /// How long the transport thread polls after its last activity before it tells its sink
    /// it is polling ([`EventSink::polling`](dsm_core::EventSink::polling), which may lower
    /// the thread's priority for the rest of the poll). Most answers come sooner (a page
    /// 30–40 µs after its request on loopback), and a change of priority costs a system
    /// call; zero tells the sink at once (right where CPUs are oversubscribed, when a poll at
    /// a high priority keeps another node's thread off its CPU). Default 50 µs.
    pub polite_after: Duration,
    /// Whether a sending thread may put its frame on the socket itself when nothing sent to
    /// that peer before it still waits (see the crate docs); else every frame goes through
    /// the transport thread. Default on. Off where nodes outnumber CPUs: there the loopback
    /// delivery of a direct send wakes the receiving node's real-time transport thread on
    /// the sender's CPU, which preempts the sender before it has woken its own transport
    /// thread to poll for the answer (4 nodes on 2 CPUs: a barrier took 89-100 us instead of
    /// 66-72).
    pub send_from_caller: bool,
}

impl TcpConfig {
    /// A configuration with defaults: the key of [`CLUSTER_KEY_ENV`] if set (else none), 30 s
    /// to connect, 2 s per handshake, and `Limits::new(cluster)`.
    pub fn new(rank: NodeId, listener: TcpListener, peers: Vec<SocketAddr>, cluster: u64) -> Self {
        TcpConfig {
            rank,
            listener,
            peers,
            cluster,
            key: cluster_key_from_env(),
            connect_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(2),
            limits: Limits::new(cluster),
            spin: Duration::ZERO,
            polite_after: Duration::from_micros(50),
            send_from_caller: true,
        }
    }

    /// Number of nodes in the cluster.
    pub fn size(&self) -> u32 {
        u32::try_from(self.peers.len()).unwrap_or(u32::MAX)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.rank >= self.size() {
            return Err(Error::Config(format!(
                "rank {} outside a cluster of {} peers",
                self.rank,
                self.peers.len()
            )));
        }
        if self.limits.cluster != self.cluster {
            return Err(Error::Config("limits are for another cluster id".into()));
        }
        Ok(())
    }
}

/// Reads the cluster key from [`CLUSTER_KEY_ENV`]: 64 hex digits are taken as the key itself,
/// anything else as a passphrase the key is derived from (BLAKE3 `derive_key`, context
/// [`PASSPHRASE_CONTEXT`]). `None` when the variable is unset or empty.
///
/// A passphrase is only as strong as it is long: anyone who records one handshake can test
/// guesses offline. Use 64 random hex digits (what `dsm-run` and the per-user key file of
/// crate `dsm` generate).
pub fn cluster_key_from_env() -> Option<[u8; 32]> {
    let value = std::env::var(CLUSTER_KEY_ENV).ok()?;
    (!value.is_empty()).then(|| cluster_key_from_str(&value))
}

/// Turns a configured key string into key bytes (see [`cluster_key_from_env`]).
pub fn cluster_key_from_str(value: &str) -> [u8; 32] {
    parse_hex_key(value).unwrap_or_else(|| blake3::derive_key(PASSPHRASE_CONTEXT, value.as_bytes()))
}

fn parse_hex_key(value: &str) -> Option<[u8; 32]> {
    if value.len() != 64 || !value.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&value[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_are_taken_verbatim_and_passphrases_derived() {
        let hex = "00ff".repeat(16);
        assert_eq!(cluster_key_from_str(&hex)[..2], [0x00, 0xff]);
        let derived = cluster_key_from_str("correct horse");
        assert_eq!(derived, cluster_key_from_str("correct horse"));
        assert_ne!(derived, cluster_key_from_str("correct horsf"));
        assert_ne!(cluster_key_from_str(&"zz".repeat(32)), [0; 32]);
    }
}
