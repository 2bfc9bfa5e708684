//! Builds the full mesh: rank `r` dials every lower rank and accepts every higher one, each
//! connection authenticated by the handshake, all within one deadline.
//!
//! Dialling and accepting run on two scoped threads so two nodes dialling each other's
//! listeners never wait on each other, and each accepted socket's handshake runs on a thread
//! of its own with its own deadline, so idle or slow connections (a port scanner, a stranger)
//! cannot delay the peers. An accepted socket that fails its handshake (garbage, wrong
//! cluster, wrong key, a rank already connected) is logged and dropped; the node keeps
//! accepting until the deadline.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsm_wire::NodeId;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::handshake::{self, Credentials};
use crate::session::SessionKeys;
use crate::{Error, Result, TcpConfig};

/// Pause between connection attempts to a rank whose listener is not up yet.
const REDIAL_PAUSE: Duration = Duration::from_millis(20);

/// How often the accept loop looks whether the handshakes in progress completed the mesh.
const ACCEPT_SLICE: Duration = Duration::from_millis(20);

/// Handshakes in progress at once; connections beyond are dropped (each holds a thread for
/// at most the handshake timeout).
const MAX_HANDSHAKES: usize = 64;

/// Seconds after which unacknowledged data or unanswered keepalives declare a peer dead.
const DEAD_PEER_SECS: u32 = 10;

/// One connected, authenticated socket and the keys that tag its frames (`None` keyless).
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) stream: TcpStream,
    pub(crate) session: Option<SessionKeys>,
}

/// Connected, authenticated sockets indexed by rank (`None` at the local rank).
pub(crate) type Mesh = Vec<Option<Link>>;

/// What the dialling, accepting and handshake threads fill in.
#[derive(Debug)]
struct Progress {
    slots: Mutex<Mesh>,
    last_error: Mutex<LastError>,
    /// Handshakes of accepted sockets in progress.
    in_flight: AtomicUsize,
}

/// The error a failed mesh reports: the latest one, except that silence (a refused or timed
/// out connection) does not replace a peer's wrong answer. A node with the wrong key keeps
/// redialling until the deadline, and its last attempt, cut short by the deadline, must not
/// hide the "wrong cluster key" its earlier attempts got.
#[derive(Debug, Default)]
struct LastError {
    text: String,
    silence: bool,
}

impl Progress {
    fn note(&self, error: &Error) {
        let mut last = lock(&self.last_error);
        if error.is_silence() && !last.silence && !last.text.is_empty() {
            return;
        }
        *last = LastError {
            text: error.to_string(),
            silence: error.is_silence(),
        };
    }
}

/// Connects to every peer of `config` or fails naming the ranks missing at the deadline.
pub(crate) fn connect(config: &TcpConfig, local: &Credentials) -> Result<Mesh> {
    let started = Instant::now();
    let deadline = started + config.connect_timeout;
    let progress = Arc::new(Progress {
        slots: Mutex::new(empty_mesh(config.peers.len())),
        last_error: Mutex::new(LastError::default()),
        in_flight: AtomicUsize::new(0),
    });
    std::thread::scope(|scope| {
        scope.spawn(|| dial_lower(config, local, deadline, &progress));
        accept_higher(config, local, deadline, &progress);
    });
    // Handshakes still running (idle or slow sockets) end on their own deadline; they find
    // an empty mesh and their socket is dropped.
    let mesh = std::mem::replace(&mut *lock(&progress.slots), empty_mesh(config.peers.len()));
    let missing: Vec<NodeId> = (0..config.size())
        .filter(|&r| r != config.rank && mesh[r as usize].is_none())
        .collect();
    if missing.is_empty() {
        Ok(mesh)
    } else {
        Err(Error::MeshTimeout {
            missing,
            waited_ms: started.elapsed().as_millis(),
            last_error: std::mem::take(&mut lock(&progress.last_error).text),
        })
    }
}

fn empty_mesh(size: usize) -> Mesh {
    (0..size).map(|_| None).collect()
}

fn dial_lower(config: &TcpConfig, local: &Credentials, deadline: Instant, progress: &Progress) {
    for peer in 0..config.rank {
        while Instant::now() < deadline {
            match dial_one(config, local, peer, deadline) {
                Ok(link) => {
                    lock(&progress.slots)[peer as usize] = Some(link);
                    break;
                }
                Err(e) => {
                    tracing::debug!(rank = config.rank, peer, error = %e, "dial failed, retrying");
                    progress.note(&e);
                    std::thread::sleep(
                        REDIAL_PAUSE.min(deadline.saturating_duration_since(Instant::now())),
                    );
                }
            }
        }
    }
}

fn dial_one(
    config: &TcpConfig,
    local: &Credentials,
    peer: NodeId,
    deadline: Instant,
) -> Result<Link> {
    let addr: SocketAddr = config.peers[peer as usize];
    let budget = bounded(config.handshake_timeout, deadline);
    let mut stream =
        TcpStream::connect_timeout(&addr, budget).map_err(|e| Error::io("connect", e))?;
    prepare(&stream, budget)?;
    let session = handshake::dial(local, &mut stream, peer)?;
    finish(&stream)?;
    Ok(Link { stream, session })
}

fn accept_higher(
    config: &TcpConfig,
    local: &Credentials,
    deadline: Instant,
    progress: &Arc<Progress>,
) {
    let (rank, size) = (config.rank, config.size());
    let missing = || (rank + 1..size).any(|r| lock(&progress.slots)[r as usize].is_none());
    while missing() && Instant::now() < deadline {
        // Short slices: a handshake finishing on its own thread may complete the mesh.
        let slice = deadline.min(Instant::now() + ACCEPT_SLICE);
        let Some(stream) = accept_until(&config.listener, slice) else {
            continue;
        };
        if progress.in_flight.load(Ordering::Acquire) >= MAX_HANDSHAKES {
            tracing::warn!(
                rank,
                "dropped an incoming connection: {MAX_HANDSHAKES} handshakes in progress"
            );
            continue;
        }
        progress.in_flight.fetch_add(1, Ordering::AcqRel);
        let (local, progress) = (local.clone(), Arc::clone(progress));
        let budget = bounded(config.handshake_timeout, deadline);
        let spawned = std::thread::Builder::new()
            .name(format!("dsm-handshake-{rank}"))
            .spawn(move || {
                accept_one(&local, (rank, size), stream, budget, &progress);
                progress.in_flight.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!(rank, error = %e, "no thread for a handshake; connection dropped");
        }
    }
}

/// Runs the handshake of one accepted socket on its own thread, within `budget`, so an idle
/// or slow connection delays no other; an authenticated peer fills its slot (the first one
/// wins: a second connection claiming the same rank is dropped).
fn accept_one(
    local: &Credentials,
    (rank, size): (NodeId, u32),
    mut stream: TcpStream,
    budget: Duration,
    progress: &Progress,
) {
    let wanted = |r: NodeId| r > rank && r < size;
    let free = |r: NodeId| {
        lock(&progress.slots)
            .get(r as usize)
            .is_some_and(Option::is_none)
    };
    let result = prepare(&stream, budget)
        .and_then(|()| handshake::accept(local, &mut stream, |r| wanted(r) && free(r)))
        .and_then(|accepted| finish(&stream).map(|()| accepted));
    match result {
        Ok((peer, session)) => match lock(&progress.slots).get_mut(peer as usize) {
            Some(slot @ None) => *slot = Some(Link { stream, session }),
            _ => tracing::warn!(rank, peer, "dropped a second connection from a rank"),
        },
        Err(e) => {
            tracing::warn!(rank, error = %e, "rejected an incoming connection");
            progress.note(&e);
        }
    }
}

/// Waits for one connection until `deadline`; `None` at the deadline or on a listener error.
fn accept_until(listener: &TcpListener, deadline: Instant) -> Option<TcpStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => match listener.accept() {
                Ok((stream, _)) => return Some(stream),
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "poll on the listener failed");
                return None;
            }
        }
    }
}

/// Socket options for the handshake: blocking with timeouts, no Nagle delay.
fn prepare(stream: &TcpStream, timeout: Duration) -> Result<()> {
    let timeout = Some(timeout.max(Duration::from_millis(1)));
    stream
        .set_nodelay(true)
        .map_err(|e| Error::io("setsockopt(TCP_NODELAY)", e))?;
    stream
        .set_read_timeout(timeout)
        .map_err(|e| Error::io("setsockopt(SO_RCVTIMEO)", e))?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| Error::io("setsockopt(SO_SNDTIMEO)", e))
}

/// After the handshake the io_uring thread owns the socket: no socket timeouts any more, but
/// keepalive probes and a user timeout, so a peer that vanishes without a FIN or RST (power
/// loss, partition) is still reported as failed, after about `DEAD_PEER_SECS`.
fn finish(stream: &TcpStream) -> Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let io = |call, e: nix::errno::Errno| Error::io(call, e.into());
    setsockopt(stream, sockopt::KeepAlive, &true).map_err(|e| io("setsockopt(SO_KEEPALIVE)", e))?;
    setsockopt(stream, sockopt::TcpKeepIdle, &2).map_err(|e| io("setsockopt(TCP_KEEPIDLE)", e))?;
    setsockopt(stream, sockopt::TcpKeepInterval, &1)
        .map_err(|e| io("setsockopt(TCP_KEEPINTVL)", e))?;
    setsockopt(stream, sockopt::TcpKeepCount, &3).map_err(|e| io("setsockopt(TCP_KEEPCNT)", e))?;
    setsockopt(stream, sockopt::TcpUserTimeout, &(DEAD_PEER_SECS * 1000))
        .map_err(|e| io("setsockopt(TCP_USER_TIMEOUT)", e))?;
    stream
        .set_read_timeout(None)
        .map_err(|e| Error::io("setsockopt(SO_RCVTIMEO)", e))?;
    stream
        .set_write_timeout(None)
        .map_err(|e| Error::io("setsockopt(SO_SNDTIMEO)", e))
}

fn bounded(limit: Duration, deadline: Instant) -> Duration {
    limit
        .min(deadline.saturating_duration_since(Instant::now()))
        .max(Duration::from_millis(1))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Progress {
        Progress {
            slots: Mutex::new(empty_mesh(2)),
            last_error: Mutex::new(LastError::default()),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn silent() -> Error {
        Error::HandshakeSilent {
            who: "node 0".into(),
        }
    }

    fn wrong_key() -> Error {
        Error::Handshake {
            who: "node 0".into(),
            reason: "wrong cluster key (MAC mismatch)".into(),
        }
    }

    fn reported(progress: &Progress) -> String {
        lock(&progress.last_error).text.clone()
    }

    #[test]
    fn silence_does_not_hide_a_wrong_answer_but_a_new_answer_replaces_it() {
        let progress = progress();
        progress.note(&silent());
        assert!(reported(&progress).contains("no answer"), "silence first");
        progress.note(&wrong_key());
        assert!(
            reported(&progress).contains("key"),
            "an answer replaces silence"
        );
        progress.note(&silent());
        let refused = Error::io("connect", std::io::ErrorKind::ConnectionRefused.into());
        progress.note(&refused);
        assert!(reported(&progress).contains("key"), "silence kept out");
        let other = Error::Handshake {
            who: "node 0".into(),
            reason: "answered as node 3".into(),
        };
        progress.note(&other);
        assert!(reported(&progress).contains("node 3"), "the latest answer");
    }
}
