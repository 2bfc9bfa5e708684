//! The keyed challenge–response of the set-up, and its messages.
//!
//! The construction is dsm-tcp-fallback's handshake (`handshake.rs` there), not new crypto:
//! each side MACs the other's fresh 32-byte nonce with a BLAKE3 keyed hash under a key derived
//! from the cluster key (`derive_key` with [`PROOF_CONTEXT`], a context of its own so a TCP
//! proof never passes for a shared-memory one), over a role label, the cluster id, both ranks
//! and the nonce. The offerer's proof also covers the ring size it announces. Without a
//! cluster key every MAC is zero and nothing is proven, as on TCP.
//!
//! Frames in the rings carry no tags: only processes holding the memfd reach them, and the
//! memfd goes only to a process of this user that proved the key.

use bytemuck::{Pod, Zeroable};

use crate::{Error, Result};

/// BLAKE3 `derive_key` context of the proof key.
pub const PROOF_CONTEXT: &str = "dsm 2025 shm handshake proof v1";
/// Bytes of a nonce and of a MAC.
pub const NONCE_LEN: usize = 32;

/// Identity and secret of the local end of a set-up.
#[derive(Clone)]
pub struct Credentials {
    rank: u32,
    cluster: u64,
    /// The proof key derived from the cluster key; `None` runs keyless.
    proof_key: Option<[u8; 32]>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("rank", &self.rank)
            .field("cluster", &self.cluster)
            .field("keyed", &self.proof_key.is_some())
            .finish()
    }
}

/// Which side computed a MAC: the proofs differ so one cannot be reflected as the other.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    Offerer,
    Accepter,
}

impl Credentials {
    /// Node `rank` of cluster `cluster`, proving `key` (`None`: no authentication).
    pub fn new(rank: u32, cluster: u64, key: Option<[u8; 32]>) -> Self {
        Credentials {
            rank,
            cluster,
            proof_key: key.map(|k| blake3::derive_key(PROOF_CONTEXT, &k)),
        }
    }

    /// This end's rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// The cluster id.
    pub fn cluster(&self) -> u64 {
        self.cluster
    }

    /// The MAC `role` sends over `nonce` (the other side's), for the offerer `offerer` and the
    /// accepter `accepter`, binding `cells`.
    pub(crate) fn mac(
        &self,
        role: Role,
        offerer: u32,
        accepter: u32,
        cells: u32,
        nonce: &[u8; NONCE_LEN],
    ) -> [u8; NONCE_LEN] {
        let Some(key) = &self.proof_key else {
            return [0; NONCE_LEN];
        };
        let mut hasher = blake3::Hasher::new_keyed(key);
        hasher.update(match role {
            Role::Offerer => b"dsm shm offerer proof ",
            Role::Accepter => b"dsm shm accepter proof",
        });
        hasher.update(&self.cluster.to_le_bytes());
        hasher.update(&offerer.to_le_bytes());
        hasher.update(&accepter.to_le_bytes());
        hasher.update(&cells.to_le_bytes());
        hasher.update(nonce);
        *hasher.finalize().as_bytes()
    }

    /// Compares a received MAC with the expected one in constant time.
    pub(crate) fn check(&self, got: &[u8; NONCE_LEN], expected: [u8; NONCE_LEN]) -> Result<()> {
        if self.proof_key.is_none() || blake3::Hash::from(*got) == blake3::Hash::from(expected) {
            Ok(())
        } else {
            Err(Error::WrongKey)
        }
    }
}

/// A fresh random nonce.
pub(crate) fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::io("getrandom", std::io::Error::other(e.to_string())))?;
    Ok(nonce)
}

/// What a [`Packet`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Offerer → accepter: rank, cluster, nonce.
    Hello = 1,
    /// Accepter → offerer: rank, cluster, nonce, MAC over the Hello's nonce.
    Challenge = 2,
    /// Offerer → accepter, with the memfd: cells, MAC over the Challenge's nonce.
    Offer = 3,
    /// Accepter → offerer: the memory is mapped and checked.
    Accepted = 4,
}

/// "dsmshm" + version 1.
const PACKET_MAGIC: [u8; 8] = *b"dsmshm\x01\x00";

/// The one message of the set-up exchange, fixed size, little-endian.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub(crate) struct Packet {
    magic: [u8; 8],
    pub(crate) kind: u8,
    reserved: [u8; 3],
    pub(crate) rank: u32,
    pub(crate) cluster: u64,
    pub(crate) cells: u32,
    reserved2: u32,
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) mac: [u8; NONCE_LEN],
}

/// Bytes of a packet on the socket.
pub(crate) const PACKET_LEN: usize = 96;
const _: () = assert!(size_of::<Packet>() == PACKET_LEN);

impl Packet {
    /// A packet of `kind` from `local`, other fields zero.
    pub(crate) fn new(kind: Kind, local: &Credentials) -> Self {
        Packet {
            magic: PACKET_MAGIC,
            kind: kind as u8,
            rank: local.rank.to_le(),
            cluster: local.cluster.to_le(),
            ..Zeroable::zeroed()
        }
    }

    /// Decodes and checks a packet: magic, zero reserved bytes, the `kind` expected, the
    /// cluster of `local`.
    pub(crate) fn parse(bytes: &[u8; PACKET_LEN], kind: Kind, local: &Credentials) -> Result<Self> {
        let mut p: Packet = bytemuck::pod_read_unaligned(bytes);
        if p.magic != PACKET_MAGIC || p.reserved != [0; 3] || p.reserved2 != 0 {
            return Err(Error::Handshake("not a dsm-shm set-up message".into()));
        }
        if p.kind != kind as u8 {
            return Err(Error::Handshake(format!(
                "expected message {kind:?}, got kind {}",
                p.kind
            )));
        }
        (p.rank, p.cluster, p.cells) = (
            u32::from_le(p.rank),
            u64::from_le(p.cluster),
            u32::from_le(p.cells),
        );
        if p.cluster != local.cluster {
            return Err(Error::Handshake(format!(
                "peer is in cluster {:#x}, not {:#x}",
                p.cluster, local.cluster
            )));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn packets_round_trip_and_random_bytes_never_panic() {
        let local = Credentials::new(3, 0xabc, Some([1; 32]));
        let mut p = Packet::new(Kind::Offer, &local);
        p.cells = 4096u32.to_le();
        let bytes: [u8; PACKET_LEN] = bytemuck::cast(p);
        let back = Packet::parse(&bytes, Kind::Offer, &local).unwrap();
        assert_eq!((back.rank, back.cluster, back.cells), (3, 0xabc, 4096));
        assert!(Packet::parse(&bytes, Kind::Hello, &local).is_err());
        let seed: u64 = rand::random();
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..100_000 {
            let mut bytes = bytes;
            // Mostly valid packets with a few bytes changed, sometimes pure noise.
            if rng.random_range(0..8) == 0 {
                rng.fill(&mut bytes[..]);
            } else {
                for _ in 0..rng.random_range(1..4) {
                    bytes[rng.random_range(0..PACKET_LEN)] = rng.random();
                }
            }
            let _ = Packet::parse(&bytes, Kind::Offer, &local);
        }
    }

    #[test]
    fn macs_bind_role_ranks_cells_and_key() {
        let a = Credentials::new(0, 1, Some([1; 32]));
        let nonce = [9; NONCE_LEN];
        let base = a.mac(Role::Offerer, 0, 1, 64, &nonce);
        assert_ne!(base, a.mac(Role::Accepter, 0, 1, 64, &nonce));
        assert_ne!(base, a.mac(Role::Offerer, 1, 0, 64, &nonce));
        assert_ne!(base, a.mac(Role::Offerer, 0, 1, 128, &nonce));
        let other_key = Credentials::new(0, 1, Some([2; 32]));
        assert!(matches!(
            other_key.check(&base, other_key.mac(Role::Offerer, 0, 1, 64, &nonce)),
            Err(Error::WrongKey)
        ));
        assert!(a.check(&base, base).is_ok());
    }
}
