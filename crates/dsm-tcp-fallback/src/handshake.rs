//! The connection handshake (see `dsm_wire::msg::transport` for the message flow), run with
//! blocking socket I/O and timeouts before a connection is handed to the io_uring thread. The
//! boot-up exchange with the coordinator (crate `dsm`) runs the same handshake, with
//! [`Purpose::Bootstrap`].
//!
//! Cluster id and protocol version are checked by dsm-wire on every header; this module checks
//! ranks and, with a cluster key, that both sides can MAC the other's fresh nonce. Each proof
//! is a BLAKE3 keyed hash under a key derived from the cluster key (context
//! [`PROOF_CONTEXT`]) over a role label, the purpose, the cluster id, both ranks and the
//! nonce. With a key, the handshake ends with the [`SessionKeys`] that tag every later frame
//! (see [`crate::session`]); a captured handshake replayed later fails, since the other
//! end's nonce is fresh.

use std::io::{Read, Write};
use std::net::TcpStream;

use dsm_wire::msg::transport::{MAC_LEN, NONCE_LEN};
use dsm_wire::{HEADER_LEN, Header, Limits, Message, NodeId, Transport, decode, encode};

use crate::session::{Purpose, SessionKeys, Transcript};
use crate::{Error, Result};

/// Largest handshake body (Challenge: rank + nonce + MAC); anything longer is rejected before
/// it is read.
const MAX_HANDSHAKE_BODY: u32 = 4 + 32 + 32;
const _: () = assert!(MAX_HANDSHAKE_BODY as usize == 4 + NONCE_LEN + MAC_LEN);

/// BLAKE3 `derive_key` context of the key the handshake proofs are computed with.
pub const PROOF_CONTEXT: &str = "dsm 2025 tcp handshake proof v1";

/// Identity and secret of the local end of a handshake.
#[derive(Clone)]
pub struct Credentials {
    rank: NodeId,
    cluster: u64,
    purpose: Purpose,
    /// The cluster key and the proof key derived from it; `None` runs keyless.
    keys: Option<([u8; 32], [u8; 32])>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("rank", &self.rank)
            .field("cluster", &self.cluster)
            .field("purpose", &self.purpose)
            .field("keyed", &self.keys.is_some())
            .finish()
    }
}

/// Which side of a connection computes a MAC: the two proofs differ so one cannot be replayed
/// as the other.
#[derive(Clone, Copy)]
enum Proof {
    Acceptor,
    Dialer,
}

impl Credentials {
    /// The local end `rank` of cluster `cluster`, for connections of `purpose`, proving
    /// `key` (`None`: no authentication at all, every MAC is zero).
    pub fn new(rank: NodeId, cluster: u64, key: Option<[u8; 32]>, purpose: Purpose) -> Self {
        Credentials {
            rank,
            cluster,
            purpose,
            keys: key.map(|k| (k, blake3::derive_key(PROOF_CONTEXT, &k))),
        }
    }

    /// This end's rank.
    pub fn rank(&self) -> NodeId {
        self.rank
    }

    /// The cluster id every frame carries.
    pub fn cluster(&self) -> u64 {
        self.cluster
    }

    fn mac(
        &self,
        proof: Proof,
        dialer: NodeId,
        acceptor: NodeId,
        nonce: &[u8; NONCE_LEN],
    ) -> [u8; MAC_LEN] {
        let Some((_, proof_key)) = &self.keys else {
            return [0; MAC_LEN];
        };
        let mut hasher = blake3::Hasher::new_keyed(proof_key);
        hasher.update(match proof {
            Proof::Acceptor => b"dsm tcp acceptor proof",
            Proof::Dialer => b"dsm tcp dialer proof  ",
        });
        hasher.update(&[self.purpose.byte()]);
        hasher.update(&self.cluster.to_le_bytes());
        hasher.update(&dialer.to_le_bytes());
        hasher.update(&acceptor.to_le_bytes());
        hasher.update(nonce);
        *hasher.finalize().as_bytes()
    }

    fn check_mac(&self, got: &[u8; MAC_LEN], expected: [u8; MAC_LEN], who: &str) -> Result<()> {
        // Without a key both sides send zeros and nothing is proven: nothing to compare.
        // blake3::Hash compares in constant time.
        if self.keys.is_none() || blake3::Hash::from(*got) == blake3::Hash::from(expected) {
            Ok(())
        } else {
            Err(handshake(who, "wrong cluster key (MAC mismatch)"))
        }
    }

    fn session(&self, t: &Transcript<'_>, dialed: bool) -> Option<SessionKeys> {
        self.keys
            .as_ref()
            .map(|(key, _)| SessionKeys::derive(key, t, dialed))
    }

    fn send(&self, stream: &mut TcpStream, msg: Transport, who: &str) -> Result<()> {
        let frame = encode(&Message::Transport(msg), self.cluster, self.rank);
        stream
            .write_all(&frame)
            .map_err(|e| handshake(who, &format!("send: {e}")))
    }
}

/// Dialer side: runs the handshake on a fresh connection to `peer`. Returns the session keys
/// of the connection (`None` without a cluster key).
pub fn dial(
    local: &Credentials,
    stream: &mut TcpStream,
    peer: NodeId,
) -> Result<Option<SessionKeys>> {
    let who = format!("node {peer}");
    let nonce = fresh_nonce()?;
    local.send(
        stream,
        Transport::Hello {
            rank: local.rank,
            nonce,
        },
        &who,
    )?;
    let Transport::Challenge {
        rank,
        nonce: theirs,
        mac,
    } = receive(local, stream, peer)?
    else {
        return Err(handshake(&who, "expected Challenge"));
    };
    if rank != peer {
        return Err(handshake(&who, &format!("answered as node {rank}")));
    }
    local.check_mac(
        &mac,
        local.mac(Proof::Acceptor, local.rank, peer, &nonce),
        &who,
    )?;
    let mac = local.mac(Proof::Dialer, local.rank, peer, &theirs);
    local.send(stream, Transport::Response { mac }, &who)?;
    match receive(local, stream, peer)? {
        Transport::Welcome { rank } if rank == peer => {}
        _ => return Err(handshake(&who, "expected Welcome")),
    }
    let transcript = Transcript {
        purpose: local.purpose,
        cluster: local.cluster,
        dialer: local.rank,
        acceptor: peer,
        dialer_nonce: &nonce,
        acceptor_nonce: &theirs,
    };
    Ok(local.session(&transcript, true))
}

/// Acceptor side: runs the handshake on an accepted connection and returns the dialer's rank
/// and the session keys (`None` without a cluster key). `expected(rank)` says whether that
/// rank may connect now (for the mesh: a higher rank not yet connected).
pub fn accept(
    local: &Credentials,
    stream: &mut TcpStream,
    expected: impl Fn(NodeId) -> bool,
) -> Result<(NodeId, Option<SessionKeys>)> {
    let who = stream
        .peer_addr()
        .map_or_else(|_| "unknown address".to_owned(), |a| a.to_string());
    let Transport::Hello {
        rank: peer,
        nonce: theirs,
    } = receive(local, stream, NodeId::MAX)?
    else {
        return Err(handshake(&who, "expected Hello"));
    };
    if !expected(peer) {
        return Err(handshake(
            &who,
            &format!("claims rank {peer}, not expected here"),
        ));
    }
    let who = format!("node {peer} at {who}");
    let nonce = fresh_nonce()?;
    let mac = local.mac(Proof::Acceptor, peer, local.rank, &theirs);
    local.send(
        stream,
        Transport::Challenge {
            rank: local.rank,
            nonce,
            mac,
        },
        &who,
    )?;
    let Transport::Response { mac } = receive(local, stream, peer)? else {
        return Err(handshake(&who, "expected Response"));
    };
    local.check_mac(
        &mac,
        local.mac(Proof::Dialer, peer, local.rank, &nonce),
        &who,
    )?;
    local.send(stream, Transport::Welcome { rank: local.rank }, &who)?;
    let transcript = Transcript {
        purpose: local.purpose,
        cluster: local.cluster,
        dialer: peer,
        acceptor: local.rank,
        dialer_nonce: &theirs,
        acceptor_nonce: &nonce,
    };
    Ok((peer, local.session(&transcript, false)))
}

/// Reads exactly one handshake frame: the header first (checked, so the body length is
/// bounded), then the body. Reads never go past the frame, so nothing meant for the io_uring
/// thread is consumed here.
fn receive(local: &Credentials, stream: &mut TcpStream, peer: NodeId) -> Result<Transport> {
    let who = stream
        .peer_addr()
        .map_or_else(|_| "unknown address".to_owned(), |a| a.to_string());
    let who = if peer == NodeId::MAX {
        format!("connecting socket {who}")
    } else {
        format!("node {peer} at {who}")
    };
    // Before the Hello names a rank, a bad frame is the socket's, not a node's.
    let wire = |source: dsm_wire::Error| {
        if peer == NodeId::MAX {
            handshake(&who, &source.to_string())
        } else {
            Error::Wire { peer, source }
        }
    };
    let mut limits = Limits::new(local.cluster);
    limits.max_body_len = MAX_HANDSHAKE_BODY;
    let mut frame = [0u8; HEADER_LEN + MAX_HANDSHAKE_BODY as usize];
    read_exact(stream, &mut frame[..HEADER_LEN], &who)?;
    let header = Header::parse(&frame, local.cluster, limits.max_body_len).map_err(wire)?;
    let total = HEADER_LEN + header.body_len as usize;
    read_exact(stream, &mut frame[HEADER_LEN..total], &who)?;
    match decode(&frame[..total], &limits).map_err(wire)? {
        f if peer != NodeId::MAX && f.sender != peer => {
            Err(handshake(&who, &format!("frame from rank {}", f.sender)))
        }
        dsm_wire::Frame {
            message: Message::Transport(t),
            ..
        } => Ok(t),
        _ => Err(handshake(
            &who,
            "a non-handshake message during the handshake",
        )),
    }
}

fn read_exact(stream: &mut TcpStream, buf: &mut [u8], who: &str) -> Result<()> {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    stream.read_exact(buf).map_err(|e| match e.kind() {
        // The socket's receive timeout (`SO_RCVTIMEO`) ran out.
        WouldBlock | TimedOut => Error::HandshakeSilent {
            who: who.to_owned(),
        },
        _ => handshake(who, &format!("receive: {e}")),
    })
}

fn fresh_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::io("getrandom", std::io::Error::other(e.to_string())))?;
    Ok(nonce)
}

fn handshake(who: &str, reason: &str) -> Error {
    Error::Handshake {
        who: who.to_owned(),
        reason: reason.to_owned(),
    }
}
