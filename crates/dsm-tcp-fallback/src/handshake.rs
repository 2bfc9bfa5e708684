//! The connection handshake (see `dsm_wire::msg::transport` for the message flow), run with
//! blocking socket I/O and timeouts before a connection is handed to the io_uring thread.
//!
//! Cluster id and protocol version are checked by dsm-wire on every header; this module checks
//! ranks and, with a cluster key, that both sides can MAC the other's fresh nonce.

use std::io::{Read, Write};
use std::net::TcpStream;

use dsm_wire::msg::transport::{MAC_LEN, NONCE_LEN};
use dsm_wire::{HEADER_LEN, Header, Limits, Message, NodeId, Transport, decode, encode};

use crate::{Error, Result};

/// Largest handshake body (Challenge: rank + nonce + MAC); anything longer is rejected before
/// it is read.
const MAX_HANDSHAKE_BODY: u32 = 4 + 32 + 32;
const _: () = assert!(MAX_HANDSHAKE_BODY as usize == 4 + NONCE_LEN + MAC_LEN);

/// Identity and secret of the local end.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub(crate) rank: NodeId,
    pub(crate) cluster: u64,
    pub(crate) key: Option<[u8; 32]>,
}

/// Which side of a connection computes a MAC: the two proofs differ so one cannot be replayed
/// as the other.
#[derive(Clone, Copy)]
enum Proof {
    Acceptor,
    Dialer,
}

impl Local {
    fn mac(
        &self,
        proof: Proof,
        dialer: NodeId,
        acceptor: NodeId,
        nonce: &[u8; NONCE_LEN],
    ) -> [u8; MAC_LEN] {
        let Some(key) = &self.key else {
            return [0; MAC_LEN];
        };
        let mut hasher = blake3::Hasher::new_keyed(key);
        hasher.update(match proof {
            Proof::Acceptor => b"dsm tcp acceptor proof",
            Proof::Dialer => b"dsm tcp dialer proof  ",
        });
        hasher.update(&self.cluster.to_le_bytes());
        hasher.update(&dialer.to_le_bytes());
        hasher.update(&acceptor.to_le_bytes());
        hasher.update(nonce);
        *hasher.finalize().as_bytes()
    }

    fn check_mac(&self, got: &[u8; MAC_LEN], expected: [u8; MAC_LEN], who: &str) -> Result<()> {
        // Without a key both sides send zeros and nothing is proven: nothing to compare.
        // blake3::Hash compares in constant time.
        if self.key.is_none() || blake3::Hash::from(*got) == blake3::Hash::from(expected) {
            Ok(())
        } else {
            Err(handshake(who, "wrong cluster key (MAC mismatch)"))
        }
    }

    fn send(&self, stream: &mut TcpStream, msg: Transport, who: &str) -> Result<()> {
        let frame = encode(&Message::Transport(msg), self.cluster, self.rank);
        stream
            .write_all(&frame)
            .map_err(|e| handshake(who, &format!("send: {e}")))
    }
}

/// Dialer side: runs the handshake on a fresh connection to `peer`.
pub(crate) fn dial(local: &Local, stream: &mut TcpStream, peer: NodeId) -> Result<()> {
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
        Transport::Welcome { rank } if rank == peer => Ok(()),
        _ => Err(handshake(&who, "expected Welcome")),
    }
}

/// Acceptor side: runs the handshake on an accepted connection and returns the dialer's rank.
/// `expected(rank)` says whether that rank may connect now (a higher rank not yet connected).
pub(crate) fn accept(
    local: &Local,
    stream: &mut TcpStream,
    expected: impl Fn(NodeId) -> bool,
) -> Result<NodeId> {
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
    Ok(peer)
}

/// Reads exactly one handshake frame: the header first (checked, so the body length is
/// bounded), then the body. Reads never go past the frame, so nothing meant for the io_uring
/// thread is consumed here.
fn receive(local: &Local, stream: &mut TcpStream, peer: NodeId) -> Result<Transport> {
    let mut limits = Limits::new(local.cluster);
    limits.max_body_len = MAX_HANDSHAKE_BODY;
    let mut frame = [0u8; HEADER_LEN + MAX_HANDSHAKE_BODY as usize];
    let who = if peer == NodeId::MAX {
        "connecting socket".to_owned()
    } else {
        format!("node {peer}")
    };
    read_exact(stream, &mut frame[..HEADER_LEN], &who)?;
    let header = Header::parse(&frame, local.cluster, limits.max_body_len)
        .map_err(|source| Error::Wire { peer, source })?;
    let total = HEADER_LEN + header.body_len as usize;
    read_exact(stream, &mut frame[HEADER_LEN..total], &who)?;
    match decode(&frame[..total], &limits).map_err(|source| Error::Wire { peer, source })? {
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
    stream
        .read_exact(buf)
        .map_err(|e| handshake(who, &format!("receive: {e}")))
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
