//! The boot-up driver: the coordinator's side and the joiners' side of the exchange, over
//! plain std TCP (the transport mesh does not exist yet). See the module docs of
//! [`membership`](super) for the protocol.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use dsm_wire::{Endpoint, Limits, Membership, Message, NodeId};

use super::endpoint::{local_ip_towards, resolve, to_endpoint, to_socket_addr};
use super::framed::Framed;
use super::roster::Roster;
use crate::{Config, Error, Result};

/// What boot-up hands to the transport: this node's bound listener and every node's address.
#[derive(Debug)]
pub(crate) struct Booted {
    /// This node's listener (its address is `peers[rank]`).
    pub(crate) listener: TcpListener,
    /// Every node's listener address, indexed by rank.
    pub(crate) peers: Vec<SocketAddr>,
    /// When the whole join must be over (the mesh is built within the same budget).
    pub(crate) deadline: Instant,
}

/// How long an accepted connection may take to say `Join` (a silent intruder is dropped).
const JOIN_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts to reach a coordinator that is not listening yet, and between
/// accept polls.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Extra time a joiner waits for the coordinator's verdict after its own deadline (the
/// coordinator's clock started when it did, possibly later).
const VERDICT_SLACK: Duration = Duration::from_secs(5);

/// Runs boot-up for `config`, offering `offered` transports (a bit set of
/// `dsm_wire::msg::membership::transports`).
pub(crate) fn run(config: &Config, offered: u8) -> Result<Booted> {
    let started = Instant::now();
    let deadline = started + config.join_timeout;
    let coordinator = resolve(&config.coordinator)?;
    let ip = local_ip_towards(coordinator)?;
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .map_err(|e| Error::io(format!("bind node listener on {ip}"), e))?;
    let own = listener
        .local_addr()
        .map_err(|e| Error::io("node listener address", e))?;
    let limits = Limits::new(config.cluster_id());
    let nodes = match (config.rank, config.size) {
        (_, 1) => vec![to_endpoint(own, offered)],
        (0, _) => coordinate(
            config,
            coordinator,
            to_endpoint(own, offered),
            &limits,
            deadline,
        )?,
        _ => subscribe(
            config,
            coordinator,
            to_endpoint(own, offered),
            &limits,
            deadline,
        )?,
    };
    let peers = nodes.iter().map(to_socket_addr).collect();
    tracing::debug!(rank = config.rank, ?peers, "node list received");
    Ok(Booted {
        listener,
        peers,
        deadline: deadline.max(Instant::now() + Duration::from_secs(1)),
    })
}

/// Rank 0: collect every `Join`, then send the node list (or the missing ranks) to each.
fn coordinate(
    config: &Config,
    address: SocketAddr,
    own: Endpoint,
    limits: &Limits,
    deadline: Instant,
) -> Result<Vec<Endpoint>> {
    let listener = bind_coordinator(address)?;
    let mut roster = Roster::new(config.size, own);
    let mut joiners: Vec<(NodeId, Framed)> = Vec::new();
    while roster.complete().is_none() && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, from)) => {
                if let Some(joiner) = admit(stream, from, &mut roster, limits, deadline) {
                    joiners.push(joiner);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(RETRY_PAUSE),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("accept on coordinator {address}"), e)),
        }
    }
    let Some(nodes) = roster.complete() else {
        let missing = roster.missing();
        for (_, framed) in &mut joiners {
            for rank in &missing {
                // Best effort: a joiner that is gone will time out on its own.
                let _ = framed.send(&Message::Membership(Membership::NodeFailed { rank: *rank }));
            }
        }
        return Err(Error::JoinTimeout { missing });
    };
    let list = Message::Membership(Membership::NodeList {
        nodes: nodes.clone(),
    });
    for (rank, framed) in &mut joiners {
        // A joiner that died since its Join is found missing when the mesh is built.
        if let Err(e) = framed.send(&list) {
            tracing::warn!(rank = *rank, error = %e, "could not send the node list");
        }
    }
    Ok(nodes)
}

fn bind_coordinator(address: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(address).map_err(|e| {
        Error::io(
            format!("rank 0 listens on the coordinator address {address} (DSM_COORDINATOR)"),
            e,
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("coordinator listener non-blocking", e))?;
    Ok(listener)
}

/// Reads one connection's `Join` and records it; anything else drops the connection.
fn admit(
    stream: TcpStream,
    from: SocketAddr,
    roster: &mut Roster,
    limits: &Limits,
    deadline: Instant,
) -> Option<(NodeId, Framed)> {
    stream.set_nonblocking(false).ok()?;
    let mut framed = Framed::new(stream, limits.clone(), 0);
    let read_by = deadline.min(Instant::now() + JOIN_READ_TIMEOUT);
    let frame = match framed.recv(read_by, "a Join") {
        Ok(Some(frame)) => frame,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(%from, error = %e, "dropped a connection to the coordinator");
            return None;
        }
    };
    let Message::Membership(Membership::Join {
        rank,
        size,
        endpoint,
    }) = frame.message
    else {
        tracing::warn!(%from, message = ?frame.message, "expected Join; dropped");
        return None;
    };
    if frame.sender != rank {
        tracing::warn!(%from, sender = frame.sender, rank, "Join from a sender of another rank");
        return None;
    }
    match roster.join(rank, size, endpoint) {
        Ok(()) => Some((rank, framed)),
        Err(reject) => {
            tracing::warn!(%from, %reject, "Join rejected");
            None
        }
    }
}

/// Ranks 1..size: reach the coordinator, say `Join`, wait for the node list.
fn subscribe(
    config: &Config,
    address: SocketAddr,
    own: Endpoint,
    limits: &Limits,
    deadline: Instant,
) -> Result<Vec<Endpoint>> {
    let stream = connect_until(address, deadline)?;
    let mut framed = Framed::new(stream, limits.clone(), config.rank);
    framed.send(&Message::Membership(Membership::Join {
        rank: config.rank,
        size: config.size,
        endpoint: own,
    }))?;
    let verdict_by = Instant::now().max(deadline) + VERDICT_SLACK;
    let mut missing = Vec::new();
    loop {
        let frame = match framed.recv(verdict_by, "the node list from rank 0") {
            Ok(Some(frame)) => frame,
            Ok(None) if !missing.is_empty() => return Err(Error::JoinTimeout { missing }),
            Ok(None) => {
                return Err(Error::Protocol(
                    "rank 0 closed the connection without a node list: it rejected our Join \
                     (another DSM_CLUSTER_KEY or DSM_SIZE, or this rank taken by another process)"
                        .into(),
                ));
            }
            Err(Error::Timeout { .. }) => return Err(Error::JoinTimeout { missing: vec![0] }),
            Err(e) => return Err(e),
        };
        match frame.message {
            Message::Membership(Membership::NodeList { nodes }) => {
                return check_list(nodes, config.size);
            }
            Message::Membership(Membership::NodeFailed { rank }) => missing.push(rank),
            other => {
                return Err(Error::Protocol(format!(
                    "expected the node list from rank 0, got {other:?}"
                )));
            }
        }
    }
}

fn check_list(nodes: Vec<Endpoint>, size: u32) -> Result<Vec<Endpoint>> {
    if nodes.len() == size as usize {
        Ok(nodes)
    } else {
        Err(Error::Protocol(format!(
            "node list of {} entries for a cluster of {size}",
            nodes.len()
        )))
    }
}

/// Connects to the coordinator, retrying while it is not up yet; past the deadline rank 0
/// is the missing one.
fn connect_until(address: SocketAddr, deadline: Instant) -> Result<TcpStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::JoinTimeout { missing: vec![0] });
        }
        match TcpStream::connect_timeout(&address, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                tracing::trace!(%address, error = %e, "coordinator not reachable yet");
                std::thread::sleep(RETRY_PAUSE.min(left));
            }
        }
    }
}

#[cfg(test)]
mod tests;
