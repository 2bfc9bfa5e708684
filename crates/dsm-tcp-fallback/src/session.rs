//! Frame authentication after the handshake: every frame is followed by a 16-byte tag,
//! a BLAKE3 keyed hash (truncated) over its header, its body and its sequence number on the
//! connection, under a key of that connection and direction.
//!
//! ```text
//! frame on the wire:  header (32) | body (body_len) | tag (16)
//! tag = BLAKE3-keyed(k_dir, header || body || seq as u64 LE)[..16]
//! ```
//!
//! The sequence number is not sent: both ends count the frames of each direction from 0, so
//! a frame injected, altered, dropped, replayed or reordered on the path fails the next tag
//! and the receiver closes the connection. The two directions use different keys, so a frame
//! cannot be reflected back to its sender either. Keys come from the handshake
//! (`SessionKeys::derive`): the cluster key and both fresh nonces, so no two connections
//! (nor two runs) share one.
//!
//! Confidentiality is not provided: bodies travel in clear.

use dsm_wire::NodeId;
use dsm_wire::msg::transport::NONCE_LEN;

/// Bytes of the tag after each frame.
pub const TAG_LEN: usize = 16;

/// What a connection is for. Bound into the handshake proofs and the session keys, so a
/// handshake with the coordinator cannot pass for one of the mesh or the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A connection of the transport mesh.
    Mesh,
    /// A joiner's connection to the coordinator during boot-up.
    Bootstrap,
}

impl Purpose {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Purpose::Mesh => 1,
            Purpose::Bootstrap => 2,
        }
    }
}

/// BLAKE3 `derive_key` context of the key sealing frames from the dialer to the acceptor.
const DIALER_TO_ACCEPTOR: &str = "dsm 2025 tcp session frames dialer to acceptor v1";
/// BLAKE3 `derive_key` context of the key sealing frames from the acceptor to the dialer.
const ACCEPTOR_TO_DIALER: &str = "dsm 2025 tcp session frames acceptor to dialer v1";

/// The two keys of one authenticated connection, seen from one end.
#[derive(Clone)]
pub struct SessionKeys {
    /// Seals the frames this end sends.
    pub send: FrameMac,
    /// Checks the frames this end receives.
    pub receive: FrameMac,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys").finish_non_exhaustive()
    }
}

/// Who ran the handshake and what both ends said: everything the session keys depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transcript<'a> {
    pub(crate) purpose: Purpose,
    pub(crate) cluster: u64,
    pub(crate) dialer: NodeId,
    pub(crate) acceptor: NodeId,
    pub(crate) dialer_nonce: &'a [u8; NONCE_LEN],
    pub(crate) acceptor_nonce: &'a [u8; NONCE_LEN],
}

impl SessionKeys {
    /// Derives both keys of a connection from the cluster key and its handshake, for the end
    /// that `dialed` (or accepted) it.
    pub(crate) fn derive(cluster_key: &[u8; 32], t: &Transcript<'_>, dialed: bool) -> Self {
        let mut material = Vec::with_capacity(32 + 1 + 8 + 4 + 4 + 2 * NONCE_LEN);
        material.extend_from_slice(cluster_key);
        material.push(t.purpose.byte());
        material.extend_from_slice(&t.cluster.to_le_bytes());
        material.extend_from_slice(&t.dialer.to_le_bytes());
        material.extend_from_slice(&t.acceptor.to_le_bytes());
        material.extend_from_slice(t.dialer_nonce);
        material.extend_from_slice(t.acceptor_nonce);
        let outbound = FrameMac::new(blake3::derive_key(DIALER_TO_ACCEPTOR, &material));
        let inbound = FrameMac::new(blake3::derive_key(ACCEPTOR_TO_DIALER, &material));
        if dialed {
            SessionKeys {
                send: outbound,
                receive: inbound,
            }
        } else {
            SessionKeys {
                send: inbound,
                receive: outbound,
            }
        }
    }
}

/// Tags the frames of one direction of a connection, counting them.
#[derive(Clone)]
pub struct FrameMac {
    key: [u8; 32],
    seq: u64,
}

impl std::fmt::Debug for FrameMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameMac")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl FrameMac {
    /// A MAC for a fresh direction (sequence 0) under `key`.
    pub fn new(key: [u8; 32]) -> Self {
        FrameMac { key, seq: 0 }
    }

    /// Sequence number of the next frame.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The tag of the next frame (`frame` = header and body); advances the sequence.
    pub fn tag(&mut self, frame: &[u8]) -> [u8; TAG_LEN] {
        let tag = self.compute(frame);
        self.seq += 1;
        tag
    }

    /// Checks the tag of the next frame, in constant time; advances the sequence only when
    /// it matches (a mismatch ends the connection anyway).
    pub fn verify(&mut self, frame: &[u8], tag: &[u8]) -> bool {
        let expected = self.compute(frame);
        let ok = tag.len() == TAG_LEN && constant_time_eq(&expected, tag);
        if ok {
            self.seq += 1;
        }
        ok
    }

    fn compute(&self, frame: &[u8]) -> [u8; TAG_LEN] {
        // The frame first, so a page body starts on a BLAKE3 chunk boundary and is hashed
        // with SIMD; the sequence number last (the frame's length is in its header, so the
        // split is unambiguous).
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(frame);
        hasher.update(&self.seq.to_le_bytes());
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hasher.finalize().as_bytes()[..TAG_LEN]);
        tag
    }
}

fn constant_time_eq(a: &[u8; TAG_LEN], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dialed: bool, nonce: u8) -> SessionKeys {
        let t = Transcript {
            purpose: Purpose::Mesh,
            cluster: 7,
            dialer: 2,
            acceptor: 0,
            dialer_nonce: &[nonce; NONCE_LEN],
            acceptor_nonce: &[9; NONCE_LEN],
        };
        SessionKeys::derive(&[0x42; 32], &t, dialed)
    }

    #[test]
    fn both_ends_agree_and_directions_differ() {
        let (mut d, mut a) = (keys(true, 1), keys(false, 1));
        let t1 = d.send.tag(b"frame one");
        assert!(a.receive.verify(b"frame one", &t1));
        let t2 = a.send.tag(b"frame one");
        assert_ne!(t1, t2, "the two directions share a key");
        assert!(d.receive.verify(b"frame one", &t2));
    }

    #[test]
    fn altered_replayed_reordered_and_foreign_frames_fail() {
        let (mut d, mut a) = (keys(true, 1), keys(false, 1));
        let t0 = d.send.tag(b"zero");
        let t1 = d.send.tag(b"one");
        assert!(!a.receive.clone().verify(b"zerO", &t0), "altered");
        assert!(!a.receive.clone().verify(b"one", &t1), "reordered");
        assert!(a.receive.verify(b"zero", &t0));
        assert!(!a.receive.clone().verify(b"zero", &t0), "replayed");
        assert!(a.receive.verify(b"one", &t1));
        let mut other = keys(false, 2);
        assert!(!other.receive.verify(b"zero", &t0), "another session");
        assert!(!a.receive.verify(b"two", &[0; 8]), "short tag");
    }
}
