//! Pairing with the nodes on this host at join.
//!
//! Every node binds an abstract Unix socket named after its cluster and rank before boot-up
//! (abstract names live in the network namespace and vanish with the process: no file is
//! left anywhere). Once the TCP mesh is up, every peer has bound its own, so a node reads
//! `/proc/net/unix` once and sees which peers share its network namespace: a hint, not
//! proof. For each such pair the lower rank connects and offers a memfd holding both rings
//! (`dsm_shm::offer`: same uid by `SO_PEERCRED`, the cluster key by challenge–response), and
//! the higher rank accepts. The two then hand each other their arena (the memfd of their
//! master copies, `raw::masters`): offerer's first, so the accepter's arena also says "I
//! took yours". A last byte from the offerer confirms that it holds the channel and the
//! accepter's arena, and sends on the channel from now on. The accepter sends on it only once confirmed; when the
//! offerer gave up instead (the socket closed) the accepter drops its end, and when the
//! confirmation is merely late it keeps its end for receiving only: each direction then
//! uses one transport for good, which is what per-pair FIFO needs. A pair that fails at any
//! step uses the network.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dsm_shm::{Channel, Credentials, PairOptions};
use dsm_wire::NodeId;

use crate::raw::masters::Arena;

/// The byte by which the offerer confirms a channel it holds.
const CONFIRM: u8 = 0xc5;

/// Ring size per direction: 8192 cells of 64 bytes (512 KiB). A frame larger than what one
/// ring frame carries is sent in pieces (see `send`).
const RING_CELLS: u32 = 8192;

/// This node's socket, bound before boot-up so that peers find it once the mesh is up.
#[derive(Debug)]
pub(crate) struct Listener {
    socket: UnixListener,
    cluster: u64,
    rank: NodeId,
}

/// The abstract name of `rank`'s socket in cluster `cluster`.
fn name(cluster: u64, rank: NodeId) -> String {
    format!("dsm-{cluster:016x}-{rank}")
}

fn address(cluster: u64, rank: NodeId) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name(cluster, rank).as_bytes())
}

impl Listener {
    /// Binds `rank`'s socket of `cluster`.
    pub(crate) fn bind(cluster: u64, rank: NodeId) -> std::io::Result<Self> {
        let socket = UnixListener::bind_addr(&address(cluster, rank)?)?;
        Ok(Listener {
            socket,
            cluster,
            rank,
        })
    }
}

/// A channel with a same-host peer.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) peer: NodeId,
    pub(crate) channel: Channel,
    /// This node sends to `peer` on the channel (else by the network, receiving on both),
    /// and knows that `peer` holds this node's arena.
    pub(crate) send: bool,
    /// The peer's arena.
    pub(crate) masters: Arena,
}

/// The outcome of pairing: a channel per peer that has one, and why the others have none.
#[derive(Debug, Default)]
pub(crate) struct Paired {
    pub(crate) pairs: Vec<Pair>,
    /// Peers left to the network, with the reason.
    pub(crate) refused: Vec<(NodeId, String)>,
}

/// Pairs with every peer of `0..size` whose socket this network namespace shows, by
/// `deadline`. `key` is the cluster key (`None`: keyless cluster). The caller keeps
/// `listener` bound until every peer has looked for it (the end of join).
pub(crate) fn pair_up(
    listener: &Listener,
    arena: &Arena,
    size: u32,
    key: Option<[u8; 32]>,
    deadline: Instant,
) -> Paired {
    let (cluster, rank) = (listener.cluster, listener.rank);
    let visible = visible_peers(cluster, rank, size);
    let credentials = Credentials::new(rank, cluster, key);
    let options = options(deadline);
    let local = Local {
        credentials: &credentials,
        arena,
        options: &options,
    };
    let lower: BTreeSet<NodeId> = visible.iter().copied().filter(|&p| p < rank).collect();
    let (results, accepted) = mpsc::channel();
    let mut paired = Paired::default();
    std::thread::scope(|scope| {
        let acceptor = std::thread::Builder::new()
            .name(format!("dsm-shm-accept-{rank}"))
            .spawn_scoped(scope, || {
                accept_all(listener, &local, &lower, deadline, &results);
            });
        if let Err(e) = &acceptor {
            tracing::warn!(rank, error = %e, "could not start accepting same-host peers");
        }
        for peer in visible.iter().copied().filter(|&p| p > rank) {
            match offer_to(cluster, peer, &local) {
                Ok((channel, masters)) => paired.add(peer, channel, masters, true),
                Err(reason) => paired.refused.push((peer, reason)),
            }
        }
    });
    paired.add_accepted(accepted.try_iter(), &lower);
    paired
}

impl Paired {
    fn add(&mut self, peer: NodeId, channel: Channel, masters: Arena, send: bool) {
        self.pairs.push(Pair {
            peer,
            channel,
            send,
            masters,
        });
    }

    /// The accepting side's outcomes; a visible lower rank with none is refused too.
    fn add_accepted(
        &mut self,
        outcomes: impl Iterator<Item = (Option<NodeId>, Accepted)>,
        lower: &BTreeSet<NodeId>,
    ) {
        let mut unnamed = Vec::new();
        for (peer, outcome) in outcomes {
            match (peer, outcome) {
                (Some(peer), Ok((channel, masters, send))) => {
                    self.add(peer, channel, masters, send);
                }
                (Some(peer), Err(reason)) => self.refused.push((peer, reason)),
                (None, outcome) => unnamed.push(outcome.err().unwrap_or_default()),
            }
        }
        self.blame_unnamed(lower, &unnamed);
    }

    /// Visible lower ranks that gave no outcome: they offered, but failed before naming
    /// themselves (`unnamed`, whose errors say why), or never came by the deadline.
    fn blame_unnamed(&mut self, lower: &BTreeSet<NodeId>, unnamed: &[String]) {
        let reason = if unnamed.is_empty() {
            "it did not offer a channel by the join's deadline".to_owned()
        } else {
            format!(
                "its set-up failed before it named itself: {}",
                unnamed.join("; ")
            )
        };
        for &peer in lower {
            let known = self.pairs.iter().any(|p| p.peer == peer)
                || self.refused.iter().any(|(p, _)| *p == peer);
            if !known {
                self.refused.push((peer, reason.clone()));
            }
        }
    }
}

/// Each set-up step may take up to a second, and never past the join's deadline.
fn options(deadline: Instant) -> PairOptions {
    let left = deadline.saturating_duration_since(Instant::now());
    PairOptions {
        geometry: dsm_shm::ring::Geometry::new(RING_CELLS).expect("a power of two in range"),
        timeout: left.clamp(Duration::from_millis(10), Duration::from_secs(1)),
    }
}

/// Ranks of `0..size` other than `rank` whose socket is bound in this network namespace.
fn visible_peers(cluster: u64, rank: NodeId, size: u32) -> Vec<NodeId> {
    let table = match std::fs::read_to_string("/proc/net/unix") {
        Ok(table) => table,
        Err(e) => {
            tracing::warn!(rank, error = %e, "cannot read /proc/net/unix: no same-host peers");
            return Vec::new();
        }
    };
    // Bound abstract sockets show as `@name` in the last column.
    let bound: BTreeSet<&str> = table
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .filter_map(|path| path.strip_prefix('@'))
        .collect();
    (0..size)
        .filter(|&peer| peer != rank && bound.contains(name(cluster, peer).as_str()))
        .collect()
}

/// What this node brings to a set-up.
struct Local<'a> {
    credentials: &'a Credentials,
    arena: &'a Arena,
    options: &'a PairOptions,
}

/// Offers a channel to `peer`, trades arenas, and confirms.
fn offer_to(cluster: u64, peer: NodeId, local: &Local<'_>) -> Result<(Channel, Arena), String> {
    let address = address(cluster, peer).map_err(|e| e.to_string())?;
    let mut stream =
        UnixStream::connect_addr(&address).map_err(|e| format!("connect to its socket: {e}"))?;
    let timeout = local.options.timeout;
    let channel = dsm_shm::offer(&stream, local.credentials, peer, local.options)
        .map_err(|e| e.to_string())?;
    dsm_shm::pass_fd(&stream, local.arena.fd(), timeout).map_err(|e| e.to_string())?;
    let masters = take_arena(&stream, local.arena, timeout)?;
    stream
        .write_all(&[CONFIRM])
        .map_err(|e| format!("confirm the channel: {e}"))?;
    Ok((channel, masters))
}

/// Takes the peer's arena, checked to be like ours.
fn take_arena(stream: &UnixStream, ours: &Arena, timeout: Duration) -> Result<Arena, String> {
    let fd = dsm_shm::take_fd(stream, timeout).map_err(|e| e.to_string())?;
    Arena::of_peer(fd, ours.len()).map_err(|e| e.to_string())
}

/// The accepting side of one set-up: the channel, the offerer's arena (after handing ours),
/// and the confirmation.
fn accept_one(stream: &UnixStream, local: &Local<'_>, expected: impl Fn(u32) -> bool) -> Accepted {
    let timeout = local.options.timeout;
    let channel = dsm_shm::accept(stream, local.credentials, expected, local.options)
        .map_err(|e| e.to_string())?;
    let masters = take_arena(stream, local.arena, timeout)?;
    dsm_shm::pass_fd(stream, local.arena.fd(), timeout).map_err(|e| e.to_string())?;
    let send = confirmed(stream, timeout)?;
    Ok((channel, masters, send))
}

/// Accepts one connection per expected lower rank (each ends in a channel or a refusal), or
/// until `deadline`; reports each outcome with the rank the peer gave (`None`: it failed
/// before naming itself, e.g. another user, refused by `SO_PEERCRED` first).
fn accept_all(
    listener: &Listener,
    local: &Local<'_>,
    expected: &BTreeSet<NodeId>,
    deadline: Instant,
    results: &mpsc::Sender<(Option<NodeId>, Accepted)>,
) {
    let mut done = BTreeSet::new();
    // One connection per visible lower rank: each offers exactly once. A connection that
    // fails before naming its rank still uses up one turn, so a stranger can only make a
    // pair fall back to the network, never make this wait past the deadline.
    for _ in 0..expected.len() {
        let Some(stream) = accept_by(&listener.socket, deadline) else {
            return;
        };
        let rank = std::cell::Cell::new(None);
        let outcome = accept_one(&stream, local, |r| {
            rank.set(Some(r));
            expected.contains(&r) && !done.contains(&r)
        });
        if let Some(rank) = rank.get() {
            done.insert(rank);
        }
        let _ = results.send((rank.get(), outcome));
    }
}

/// The next connection, or `None` once `deadline` passed.
fn accept_by(socket: &UnixListener, deadline: Instant) -> Option<UnixStream> {
    if socket.set_nonblocking(true).is_err() {
        return None;
    }
    loop {
        match socket.accept() {
            Ok((stream, _)) => return stream.set_nonblocking(false).ok().map(|()| stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                // Set-up happens once, at join: a short nap is cheaper than a poller here.
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// What an accepted set-up gives: the channel, the peer's arena, and whether to send on the
/// channel (the offerer confirmed).
type Accepted = Result<(Channel, Arena, bool), String>;

/// Waits for the offerer's confirmation: `Ok(true)` confirmed; `Ok(false)` not within
/// `timeout`, so the offerer may or may not send on the channel (receive on it, send by the
/// network); `Err` the offerer closed the socket or sent garbage (it does not hold it).
fn confirmed(mut stream: &UnixStream, timeout: Duration) -> Result<bool, String> {
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    match stream.read_exact(&mut byte) {
        Ok(()) if byte[0] == CONFIRM => Ok(true),
        Ok(()) => Err(format!("confirmation byte {:#x}", byte[0])),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            tracing::warn!(
                "a same-host peer confirmed late: receiving from it on shared memory, sending by the network"
            );
            Ok(false)
        }
        Err(e) => Err(format!("no confirmation: {e}")),
    }
}
