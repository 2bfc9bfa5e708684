//! The boot-up driver: the coordinator's side and the joiners' side of the exchange, over
//! plain std TCP (the transport mesh does not exist yet). See the module docs of
//! [`membership`](super) for the protocol.
//!
//! Every connection to the coordinator first runs the transport's handshake
//! (dsm-tcp-fallback's `handshake`, with `Purpose::Bootstrap`): with a cluster key a joiner
//! proves it over a fresh nonce of the coordinator, so a stranger or a replayed capture gets
//! nothing, not even the node list, and every frame after it is tagged. The coordinator runs
//! each connection's handshake and `Join` on a thread of its own with its own deadline
//! ([`JOIN_READ_TIMEOUT`]), so idle or slow connections delay no one.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use dsm_tcp_fallback::Purpose;
use dsm_tcp_fallback::handshake::{self, Credentials};
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

/// How long an accepted connection may take to pass the handshake and say `Join` (a silent
/// intruder is dropped).
const JOIN_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts to reach a coordinator that is not listening yet, and between
/// accept polls.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Extra time a joiner waits for the coordinator's verdict after its own deadline (the
/// coordinator's clock started when it did, possibly later).
const VERDICT_SLACK: Duration = Duration::from_secs(5);
/// Connections the coordinator admits at once (each on its own thread, for at most
/// [`JOIN_READ_TIMEOUT`]); more are closed at once, with a warning.
const MAX_ADMISSIONS: usize = 256;
/// Stack of an admission thread: a handshake and one small frame.
const ADMISSION_STACK: usize = 256 << 10;

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
    let credentials = Credentials::new(
        config.rank,
        limits.cluster,
        config.key(),
        Purpose::Bootstrap,
    );
    let gate = Gate {
        credentials,
        limits,
        size: config.size,
        deadline,
    };
    let nodes = match (config.rank, config.size) {
        (_, 1) => vec![to_endpoint(own, offered)],
        (0, _) => coordinate(coordinator, to_endpoint(own, offered), &gate)?,
        _ => subscribe(config, coordinator, to_endpoint(own, offered), &gate)?,
    };
    let peers = nodes.iter().map(to_socket_addr).collect();
    tracing::debug!(rank = config.rank, ?peers, "node list received");
    Ok(Booted {
        listener,
        peers,
        deadline: deadline.max(Instant::now() + Duration::from_secs(1)),
    })
}

/// What every side of the boot-up shares: who we are, what frames look like, the deadline.
#[derive(Debug, Clone)]
struct Gate {
    credentials: Credentials,
    limits: Limits,
    size: u32,
    deadline: Instant,
}

/// A joiner that passed the handshake and said `Join` (not yet checked against the roster).
#[derive(Debug)]
struct Admitted {
    from: SocketAddr,
    rank: NodeId,
    size: u32,
    endpoint: Endpoint,
    framed: Framed,
}

/// Rank 0: collect every `Join`, then send the node list (or the missing ranks) to each.
fn coordinate(address: SocketAddr, own: Endpoint, gate: &Gate) -> Result<Vec<Endpoint>> {
    let listener = bind_coordinator(address)?;
    let mut roster = Roster::new(gate.size, own);
    let mut joiners: Vec<(NodeId, Framed)> = Vec::new();
    let (admitted_tx, admitted) = channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    while roster.complete().is_none() && Instant::now() < gate.deadline {
        accept_pending(&listener, address, |stream, from| {
            spawn_admission(gate, &in_flight, &admitted_tx, stream, from);
        })?;
        if let Ok(joiner) = admitted.recv_timeout(RETRY_PAUSE) {
            record(&mut roster, joiner, &mut joiners);
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

/// Hands every connection waiting on the listener to `admit` (at most [`MAX_ADMISSIONS`]
/// per call, so the roster is looked at in between).
fn accept_pending(
    listener: &TcpListener,
    address: SocketAddr,
    mut admit: impl FnMut(TcpStream, SocketAddr),
) -> Result<()> {
    for _ in 0..MAX_ADMISSIONS {
        match listener.accept() {
            Ok((stream, from)) => admit(stream, from),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("accept on coordinator {address}"), e)),
        }
    }
    Ok(())
}

/// Runs one connection's handshake and `Join` on a thread of its own; what it admits is sent
/// to `admitted`.
fn spawn_admission(
    gate: &Gate,
    in_flight: &Arc<AtomicUsize>,
    admitted: &Sender<Admitted>,
    stream: TcpStream,
    from: SocketAddr,
) {
    if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_ADMISSIONS {
        in_flight.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(
            %from,
            "rejected a connection to the coordinator: {MAX_ADMISSIONS} others are in their handshake"
        );
        return;
    }
    let (gate, in_flight, admitted) = (gate.clone(), Arc::clone(in_flight), admitted.clone());
    let counter = Arc::clone(&in_flight);
    let spawned = std::thread::Builder::new()
        .name("dsm-admit".into())
        .stack_size(ADMISSION_STACK)
        .spawn(move || {
            let joiner = admit(&gate, stream, from);
            in_flight.fetch_sub(1, Ordering::AcqRel);
            if let Some(joiner) = joiner {
                // The coordinator may be done (complete, or past its deadline): then the
                // connection just closes.
                let _ = admitted.send(joiner);
            }
        });
    if let Err(e) = spawned {
        counter.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(%from, error = %e, "rejected a connection to the coordinator: no thread");
    }
}

/// Authenticates one connection and reads its `Join`; anything else drops the connection,
/// with one line saying who and why.
fn admit(gate: &Gate, stream: TcpStream, from: SocketAddr) -> Option<Admitted> {
    let by = gate.deadline.min(Instant::now() + JOIN_READ_TIMEOUT);
    match handshake_and_join(gate, stream, from, by) {
        Ok(joiner) => Some(joiner),
        Err(e) => {
            tracing::warn!(%from, error = %e, "rejected a connection to the coordinator");
            None
        }
    }
}

fn handshake_and_join(
    gate: &Gate,
    mut stream: TcpStream,
    from: SocketAddr,
    by: Instant,
) -> Result<Admitted> {
    stream
        .set_nonblocking(false)
        .map_err(|e| Error::io("set_nonblocking", e))?;
    set_timeouts(&stream, by)?;
    let size = gate.size;
    let (rank, session) =
        handshake::accept(&gate.credentials, &mut stream, |r| (1..size).contains(&r))
            .map_err(|e| Error::Protocol(e.to_string()))?;
    let mut framed = Framed::new(stream, gate.limits.clone(), 0, session);
    let frame = framed
        .recv(by, "a Join")?
        .ok_or_else(|| Error::Protocol(format!("node {rank} closed before its Join")))?;
    let Message::Membership(Membership::Join {
        rank: claimed,
        size,
        endpoint,
    }) = frame.message
    else {
        return Err(Error::Protocol(format!(
            "node {rank} sent {:?} instead of Join",
            frame.message.command()
        )));
    };
    if frame.sender != rank || claimed != rank {
        return Err(Error::Protocol(format!(
            "node {rank} sent a Join for rank {claimed} (sender {})",
            frame.sender
        )));
    }
    Ok(Admitted {
        from,
        rank,
        size,
        endpoint,
        framed,
    })
}

/// Enters an admitted joiner in the roster, or drops it saying why.
fn record(roster: &mut Roster, joiner: Admitted, joiners: &mut Vec<(NodeId, Framed)>) {
    match roster.join(joiner.rank, joiner.size, joiner.endpoint) {
        Ok(()) => joiners.push((joiner.rank, joiner.framed)),
        Err(reject) => {
            tracing::warn!(from = %joiner.from, %reject, "rejected a Join to the coordinator");
        }
    }
}

/// Blocking reads and writes on `stream` give up at `by`.
fn set_timeouts(stream: &TcpStream, by: Instant) -> Result<()> {
    let left = Some(
        by.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    );
    stream
        .set_read_timeout(left)
        .and_then(|()| stream.set_write_timeout(left))
        .map_err(|e| Error::io("socket timeouts", e))
}

/// Ranks 1..size: reach the coordinator, prove the key, say `Join`, wait for the node list.
fn subscribe(
    config: &Config,
    address: SocketAddr,
    own: Endpoint,
    gate: &Gate,
) -> Result<Vec<Endpoint>> {
    let mut stream = connect_until(address, gate.deadline)?;
    let verdict_by = Instant::now().max(gate.deadline) + VERDICT_SLACK;
    set_timeouts(&stream, verdict_by)?;
    let session = handshake::dial(&gate.credentials, &mut stream, 0).map_err(|e| {
        Error::Protocol(format!(
            "rank 0 rejected our Join ({e}): another DSM_CLUSTER_KEY or DSM_COORDINATOR, \
             another per-user key file (hosts without a shared home: copy \
             ~/.config/dsm/cluster.key, or set DSM_CLUSTER_KEY), or DSM_INSECURE=1 on one \
             side only"
        ))
    })?;
    let mut framed = Framed::new(stream, gate.limits.clone(), config.rank, session);
    framed.send(&Message::Membership(Membership::Join {
        rank: config.rank,
        size: config.size,
        endpoint: own,
    }))?;
    let mut missing = Vec::new();
    loop {
        let frame = match framed.recv(verdict_by, "the node list from rank 0") {
            Ok(Some(frame)) => frame,
            Ok(None) if !missing.is_empty() => return Err(Error::JoinTimeout { missing }),
            Ok(None) => {
                return Err(Error::Protocol(
                    "rank 0 closed the connection without a node list: it rejected our Join \
                     (another DSM_SIZE, or this rank taken by another process)"
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
