//! The control mesh: one std TCP connection per pair of nodes, implementing
//! [`dsm_core::Transport`] for control messages.
//!
//! This is the runtime's stand-in until the io_uring transport (`dsm-tcp-fallback`) is wired
//! in: it carries every control message (membership, locks, barriers, coherence requests)
//! but no one-sided page access (`read_page`/`write_page`/`expose` fail `Io`). Rank `r`
//! dials every lower rank and accepts every higher one; the first frame each side sends is
//! `Joined { rank }`, which is also the boot-up's join announcement.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsm_core::{EventSink, HomeMemory, Transport, TransportError, TransportEvent};
use dsm_wire::{Limits, Membership, Message, NodeId, Page, PageId, decode_prefix, encode};

use crate::membership::framed::Framed;
use crate::{Error, Result};

/// Pause between dials of a peer whose listener refused, and between accept polls.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Longest a send may block on a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connected peers; see the module docs.
pub(crate) struct Mesh {
    rank: NodeId,
    cluster: u64,
    writers: Vec<Option<Mutex<TcpStream>>>,
    sink: Arc<dyn EventSink>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("rank", &self.rank)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Connects to every peer by `deadline` (else `JoinTimeout` naming the missing ranks) and
    /// starts one reader thread per peer delivering to `sink`.
    pub(crate) fn start(
        rank: NodeId,
        listener: TcpListener,
        peers: &[SocketAddr],
        limits: &Limits,
        deadline: Instant,
        sink: Arc<dyn EventSink>,
    ) -> Result<Mesh> {
        let streams = connect(rank, &listener, peers, limits, deadline)?;
        let mut writers = Vec::with_capacity(peers.len());
        for (peer, stream) in (0u32..).zip(streams) {
            let Some((stream, leftover)) = stream else {
                writers.push(None);
                continue;
            };
            let reader = stream
                .try_clone()
                .map_err(|e| Error::io("clone socket", e))?;
            let (sink, limits) = (Arc::clone(&sink), limits.clone());
            std::thread::Builder::new()
                .name(format!("dsm-mesh-{peer}"))
                .spawn(move || read_loop(peer, reader, leftover, &limits, sink.as_ref()))
                .map_err(|e| Error::io("spawn mesh reader", e))?;
            writers.push(Some(Mutex::new(stream)));
        }
        Ok(Mesh {
            rank,
            cluster: limits.cluster,
            writers,
            sink,
        })
    }

    /// Closes every connection (peers see end of file); reader threads end.
    pub(crate) fn shutdown(&self) {
        for writer in self.writers.iter().flatten() {
            let stream = writer.lock().unwrap_or_else(|p| p.into_inner());
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A connected peer's socket and the bytes already read from it.
type Connection = (TcpStream, Vec<u8>);

fn connect(
    rank: NodeId,
    listener: &TcpListener,
    peers: &[SocketAddr],
    limits: &Limits,
    deadline: Instant,
) -> Result<Vec<Option<Connection>>> {
    let mut streams: Vec<Option<Connection>> = peers.iter().map(|_| None).collect();
    for peer in 0..rank {
        let stream = dial(peers[peer as usize], deadline)?;
        let mut framed = Framed::new(
            stream.try_clone().map_err(|e| Error::io("clone", e))?,
            limits.clone(),
            rank,
        );
        framed.send(&Message::Membership(Membership::Joined { rank }))?;
        streams[peer as usize] = Some((stream, Vec::new()));
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("listener non-blocking", e))?;
    while streams.iter().skip(rank as usize + 1).any(Option::is_none) {
        if Instant::now() >= deadline {
            let missing = (rank + 1..u32::try_from(peers.len()).unwrap_or(u32::MAX))
                .filter(|r| streams[*r as usize].is_none())
                .collect();
            return Err(Error::JoinTimeout { missing });
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Some((peer, stream, leftover)) = greet(stream, rank, limits, deadline) {
                    if streams[peer as usize].is_none() {
                        streams[peer as usize] = Some((stream, leftover));
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(RETRY_PAUSE),
            Err(e) => return Err(Error::io("accept mesh connection", e)),
        }
    }
    for (stream, _) in streams.iter().flatten() {
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(None)
            .map_err(|e| Error::io("clear read timeout", e))?;
        // A peer that stops reading must not hang a sender forever: the write fails and the
        // peer is reported failed.
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|e| Error::io("set write timeout", e))?;
    }
    Ok(streams)
}

fn dial(address: SocketAddr, deadline: Instant) -> Result<TcpStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout {
                what: format!("mesh connection to {address}"),
                waited_ms: 0,
            });
        }
        match TcpStream::connect_timeout(&address, left) {
            Ok(s) => return Ok(s),
            Err(_) => std::thread::sleep(RETRY_PAUSE.min(left)),
        }
    }
}

/// Reads an accepted connection's `Joined`; returns the higher rank it announces, the
/// stream, and the bytes already read past that frame (the peer may have sent more).
fn greet(
    stream: TcpStream,
    rank: NodeId,
    limits: &Limits,
    deadline: Instant,
) -> Option<(NodeId, TcpStream, Vec<u8>)> {
    stream.set_nonblocking(false).ok()?;
    let mut framed = Framed::new(stream, limits.clone(), rank);
    let by = deadline.min(Instant::now() + Duration::from_secs(2));
    match framed.recv(by, "Joined").ok()?? {
        dsm_wire::Frame {
            sender,
            message: Message::Membership(Membership::Joined { rank: joined }),
        } if sender == joined && joined > rank => {
            let (stream, leftover) = framed.into_parts();
            Some((joined, stream, leftover))
        }
        other => {
            tracing::warn!(?other, "mesh connection without a valid Joined; dropped");
            None
        }
    }
}

fn read_loop(
    peer: NodeId,
    mut stream: TcpStream,
    mut buffer: Vec<u8>,
    limits: &Limits,
    sink: &dyn EventSink,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    let reason = loop {
        match decode_prefix(&buffer, limits) {
            Ok(Some((frame, used))) => {
                buffer.drain(..used);
                if frame.sender != peer {
                    break format!(
                        "frame claims sender {} on the connection of {peer}",
                        frame.sender
                    );
                }
                sink.deliver(TransportEvent::Message {
                    from: peer,
                    message: frame.message,
                });
                continue;
            }
            Ok(None) => {}
            Err(e) => break format!("malformed frame: {e}"),
        }
        match stream.read(&mut chunk) {
            Ok(0) => break "connection closed".to_owned(),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break format!("recv: {e}"),
        }
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    sink.deliver(TransportEvent::PeerFailed { node: peer, reason });
}

fn no_pages(call: &'static str) -> TransportError {
    TransportError::Io {
        call,
        detail: "the control mesh carries no page data".into(),
    }
}

impl Transport for Mesh {
    fn local(&self) -> NodeId {
        self.rank
    }

    fn send(&self, to: NodeId, message: &Message) -> std::result::Result<(), TransportError> {
        if to == self.rank {
            self.sink.deliver(TransportEvent::Message {
                from: to,
                message: message.clone(),
            });
            return Ok(());
        }
        let writer = self
            .writers
            .get(to as usize)
            .and_then(Option::as_ref)
            .ok_or(TransportError::UnknownPeer(to))?;
        let frame = encode(message, self.cluster, self.rank);
        let mut stream = writer.lock().unwrap_or_else(|p| p.into_inner());
        stream
            .write_all(&frame)
            .map_err(|e| TransportError::PeerFailed {
                node: to,
                reason: e.to_string(),
            })
    }

    fn expose(&self, _region: u32, _memory: HomeMemory) -> std::result::Result<(), TransportError> {
        Err(no_pages("expose"))
    }

    fn withdraw(&self, _region: u32) -> std::result::Result<(), TransportError> {
        Err(no_pages("withdraw"))
    }

    fn read_page(
        &self,
        _home: NodeId,
        _page: PageId,
        _token: u64,
    ) -> std::result::Result<(), TransportError> {
        Err(no_pages("read_page"))
    }

    fn write_page(
        &self,
        _home: NodeId,
        _page: PageId,
        _data: Page,
        _token: u64,
    ) -> std::result::Result<(), TransportError> {
        Err(no_pages("write_page"))
    }

    fn one_sided(&self) -> bool {
        false
    }
}
