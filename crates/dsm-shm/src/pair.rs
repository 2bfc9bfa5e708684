//! Setting up a channel between two processes of one user over a connected Unix socket.
//!
//! ```text
//! offerer                                        accepter
//!   SO_PEERCRED: same uid? pidfd of the peer       SO_PEERCRED: same uid? pidfd of the peer
//!   Hello(rank, cluster, nonce_o)        ------>   rank expected here?
//!                                        <------   Challenge(rank, nonce_a, MAC_a(nonce_o))
//!   MAC_a right? create, seal, map memfd
//!   Offer(cells, MAC_o(nonce_a)) + memfd ------>   MAC_o right? seals, size, header: map
//!                                        <------   Accepted
//! ```
//!
//! The memfd leaves only after the accepter proved the cluster key, and is mapped only after
//! the offerer did. Any failure is an [`Error`]: the caller falls back to the network.
//! Who offers is the caller's choice (dsm: the lower rank, as the TCP mesh's dialer).

use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::auth::{Credentials, Kind, NONCE_LEN, PACKET_LEN, Packet, Role, nonce};
use crate::channel::Channel;
use crate::memory::{Direction, SharedMemory};
use crate::peer::Peer;
use crate::ring::Geometry;
use crate::{Error, Result, sys};

/// Limits of a set-up.
#[derive(Debug, Clone, Copy)]
pub struct PairOptions {
    /// Size of each ring (the offerer's choice; the accepter accepts up to its own).
    pub geometry: Geometry,
    /// How long each socket read or write of the set-up may take (the socket's own timeouts
    /// are restored afterwards).
    pub timeout: Duration,
}

impl Default for PairOptions {
    /// 4096 cells (256 KiB) per ring, 5 s per step.
    fn default() -> Self {
        PairOptions {
            geometry: Geometry::new(4096).expect("a power of two in range"),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Offerer side: sets up a channel with `peer_rank` at the other end of `stream`, creating the
/// memory with `options.geometry`.
pub fn offer(
    stream: &UnixStream,
    local: &Credentials,
    peer_rank: u32,
    options: &PairOptions,
) -> Result<Channel> {
    let _timeouts = Timeouts::set(stream, options.timeout)?;
    let mut peer = Peer::of(stream)?;
    let ours = nonce()?;
    let mut hello = Packet::new(Kind::Hello, local);
    hello.nonce = ours;
    send(stream, &hello, None)?;
    let challenge = receive(stream, Kind::Challenge, local)?.0;
    if challenge.rank != peer_rank {
        return Err(Error::Handshake(format!(
            "expected node {peer_rank}, answered as node {}",
            challenge.rank
        )));
    }
    let expected = local.mac(Role::Accepter, local.rank(), peer_rank, 0, &ours);
    local.check(&challenge.mac, expected)?;
    let memory = SharedMemory::create(options.geometry)?;
    let cells = options.geometry.cells();
    let mut offer = Packet::new(Kind::Offer, local);
    offer.cells = cells.to_le();
    offer.mac = local.mac(
        Role::Offerer,
        local.rank(),
        peer_rank,
        cells,
        &challenge.nonce,
    );
    send(stream, &offer, Some(memory.fd()))?;
    let accepted = receive(stream, Kind::Accepted, local)?.0;
    if accepted.rank != peer_rank {
        return Err(Error::Handshake("Accepted from another rank".into()));
    }
    peer.set_rank(peer_rank);
    Ok(Channel::new(memory, Direction::FromOfferer, peer))
}

/// Accepter side: sets up a channel with the offerer at the other end of `stream` if
/// `expected(rank)` admits its rank and its rings are no larger than `options.geometry`.
pub fn accept(
    stream: &UnixStream,
    local: &Credentials,
    expected: impl Fn(u32) -> bool,
    options: &PairOptions,
) -> Result<Channel> {
    let _timeouts = Timeouts::set(stream, options.timeout)?;
    let mut peer = Peer::of(stream)?;
    let hello = receive(stream, Kind::Hello, local)?.0;
    if !expected(hello.rank) {
        return Err(Error::Handshake(format!(
            "node {} not expected here",
            hello.rank
        )));
    }
    let ours = nonce()?;
    let mut challenge = Packet::new(Kind::Challenge, local);
    challenge.nonce = ours;
    challenge.mac = local.mac(Role::Accepter, hello.rank, local.rank(), 0, &hello.nonce);
    send(stream, &challenge, None)?;
    let (offer, fd) = receive(stream, Kind::Offer, local)?;
    if offer.rank != hello.rank {
        return Err(Error::Handshake("Offer from another rank".into()));
    }
    let proof = local.mac(Role::Offerer, hello.rank, local.rank(), offer.cells, &ours);
    local.check(&offer.mac, proof)?;
    let memory = open_offered(fd, offer.cells, options.geometry)?;
    send(stream, &Packet::new(Kind::Accepted, local), None)?;
    peer.set_rank(hello.rank);
    Ok(Channel::new(memory, Direction::FromAccepter, peer))
}

/// Hands `fd` to the peer at the other end of `stream` after a set-up ([`offer`] or
/// [`accept`] succeeded on it): e.g. memory of the caller's own that the peer should map.
/// The peer takes it with [`take_fd`]; `timeout` bounds the write.
pub fn pass_fd(
    stream: &UnixStream,
    fd: std::os::fd::BorrowedFd<'_>,
    timeout: Duration,
) -> Result<()> {
    let _timeouts = Timeouts::set(stream, timeout)?;
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&[FD_MARK])],
        &[ControlMessage::ScmRights(&[fd.as_raw_fd()])],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| Error::nix("sendmsg", e))?;
    if sent != 1 {
        return Err(Error::Handshake("descriptor not sent".into()));
    }
    Ok(())
}

/// Takes the descriptor the peer handed with [`pass_fd`], waiting up to `timeout`.
pub fn take_fd(stream: &UnixStream, timeout: Duration) -> Result<OwnedFd> {
    let _timeouts = Timeouts::set(stream, timeout)?;
    let mut byte = [0u8; 1];
    let (got, fd) = receive_first(stream, &mut byte)?;
    match (got, fd) {
        (1, Some(fd)) if byte[0] == FD_MARK => Ok(fd),
        (0, _) => Err(Error::Handshake("peer closed the socket".into())),
        _ => Err(Error::Handshake("expected a descriptor".into())),
    }
}

/// The byte a descriptor travels with ([`pass_fd`]).
const FD_MARK: u8 = 0xfd;

/// Maps the memory of an Offer after checking its announced size against our limit.
fn open_offered(fd: Option<OwnedFd>, cells: u32, limit: Geometry) -> Result<SharedMemory> {
    let fd = fd.ok_or_else(|| Error::Handshake("Offer without a memfd".into()))?;
    let geometry = Geometry::new(cells)?;
    if cells > limit.cells() {
        return Err(Error::BadMemory(format!(
            "rings of {cells} cells, more than the {} accepted",
            limit.cells()
        )));
    }
    SharedMemory::open(fd, geometry)
}

/// The caller's socket timeouts, put back when the set-up ends (whichever way): the set-up
/// bounds its own steps without changing the socket the caller keeps.
struct Timeouts<'a> {
    stream: &'a UnixStream,
    saved: (Option<Duration>, Option<Duration>),
}

impl<'a> Timeouts<'a> {
    fn set(stream: &'a UnixStream, timeout: Duration) -> Result<Self> {
        let io = |e| Error::io("setsockopt(SO_RCVTIMEO)", e);
        let saved = (
            stream.read_timeout().map_err(io)?,
            stream.write_timeout().map_err(io)?,
        );
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        Ok(Timeouts { stream, saved })
    }
}

impl Drop for Timeouts<'_> {
    fn drop(&mut self) {
        // Best effort: a socket that cannot take its old timeouts back is broken anyway.
        let _ = self.stream.set_read_timeout(self.saved.0);
        let _ = self.stream.set_write_timeout(self.saved.1);
    }
}

/// Sends one packet, with `fd` attached (SCM_RIGHTS) if given.
fn send(
    stream: &UnixStream,
    packet: &Packet,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<()> {
    let bytes = bytemuck::bytes_of(packet);
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = raw
        .as_ref()
        .map(|r| ControlMessage::ScmRights(r))
        .into_iter()
        .collect();
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(bytes)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| Error::nix("sendmsg", e))?;
    if sent != bytes.len() {
        // A Unix stream socket takes 96 bytes whole unless its buffer is nearly full, which
        // cannot happen in this lock-step exchange.
        return Err(Error::Handshake(format!(
            "sent {sent} of {} bytes",
            bytes.len()
        )));
    }
    Ok(())
}

/// Receives one packet of `kind` and any descriptor attached to it (closed if unwanted).
fn receive(
    stream: &UnixStream,
    kind: Kind,
    local: &Credentials,
) -> Result<(Packet, Option<OwnedFd>)> {
    let mut bytes = [0u8; PACKET_LEN];
    let (got, fd) = receive_first(stream, &mut bytes)?;
    if got == 0 {
        return Err(Error::Handshake("peer closed the socket".into()));
    }
    (&*stream)
        .read_exact(&mut bytes[got..])
        .map_err(|e| Error::Handshake(format!("receive: {e}")))?;
    let packet = Packet::parse(&bytes, kind, local)?;
    debug_assert_eq!(packet.nonce.len(), NONCE_LEN);
    Ok((packet, fd))
}

/// The first `recvmsg` of a packet: some bytes and the descriptors sent with them (always
/// taken into ownership, so a hostile peer's extra descriptors are closed, not leaked).
fn receive_first(stream: &UnixStream, bytes: &mut [u8]) -> Result<(usize, Option<OwnedFd>)> {
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut iov = [IoSliceMut::new(bytes)];
    let msg = recvmsg::<()>(
        stream.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| match e {
        nix::errno::Errno::EAGAIN => Error::Handshake("timed out waiting for the peer".into()),
        e => Error::nix("recvmsg", e),
    })?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(|e| Error::nix("recvmsg(cmsgs)", e))? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for r in raw {
                fds.push(sys::owned(r).map_err(|e| Error::io("recvmsg(SCM_RIGHTS)", e))?);
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > 1 {
        return Err(Error::Handshake("more descriptors than one memfd".into()));
    }
    Ok((msg.bytes, fds.pop()))
}

#[cfg(test)]
mod tests {
    //! A hostile offerer, played with the set-up's own messages (keyless, so its MACs are
    //! the zeros a keyless accepter expects): whatever it offers, the accepter refuses to map.

    use std::os::fd::AsFd;
    use std::thread;

    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};

    use super::*;

    /// Runs a keyless accepter against an offerer that sends `memfd` (or none) for rings of
    /// `cells` cells; returns the accepter's result.
    fn offer_raw(cells: u32, memfd: Option<OwnedFd>) -> Result<Channel> {
        let (a, b) = UnixStream::pair().unwrap();
        let accepter = thread::spawn(move || {
            let local = Credentials::new(1, 7, None);
            accept(&b, &local, |rank| rank == 0, &PairOptions::default())
        });
        let local = Credentials::new(0, 7, None);
        send(&a, &Packet::new(Kind::Hello, &local), None).unwrap();
        receive(&a, Kind::Challenge, &local).unwrap();
        let mut offer = Packet::new(Kind::Offer, &local);
        offer.cells = cells.to_le();
        send(&a, &offer, memfd.as_ref().map(AsFd::as_fd)).unwrap();
        let got = accepter.join().unwrap();
        drop(a);
        got
    }

    fn memfd(len: usize, seals: SealFlag) -> OwnedFd {
        let fd = memfd_create(
            c"hostile",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .unwrap();
        nix::unistd::ftruncate(&fd, i64::try_from(len).unwrap()).unwrap();
        if !seals.is_empty() {
            fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
        }
        fd
    }

    #[test]
    fn an_unsealed_memfd_is_refused() {
        let len = SharedMemory::bytes_for(Geometry::new(64).unwrap());
        let got = offer_raw(64, Some(memfd(len, SealFlag::F_SEAL_GROW)));
        assert!(
            matches!(got, Err(Error::BadMemory(ref m)) if m.contains("seals")),
            "{got:?}"
        );
    }

    #[test]
    fn a_memfd_of_another_size_is_refused() {
        let len = SharedMemory::bytes_for(Geometry::new(64).unwrap());
        let sealed = SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK;
        let got = offer_raw(64, Some(memfd(len - 4096, sealed)));
        assert!(
            matches!(got, Err(Error::BadMemory(ref m)) if m.contains("bytes")),
            "{got:?}"
        );
    }

    #[test]
    fn a_memfd_without_the_header_is_refused() {
        let len = SharedMemory::bytes_for(Geometry::new(64).unwrap());
        let sealed = SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK;
        let got = offer_raw(64, Some(memfd(len, sealed)));
        assert!(
            matches!(got, Err(Error::BadMemory(ref m)) if m.contains("header")),
            "{got:?}"
        );
    }

    #[test]
    fn an_offer_without_memory_or_with_a_bad_size_is_refused() {
        let got = offer_raw(64, None);
        assert!(matches!(got, Err(Error::Handshake(_))), "{got:?}");
        let got = offer_raw(3, Some(memfd(4096, SealFlag::empty())));
        assert!(matches!(got, Err(Error::Config(_))), "{got:?}");
    }
}
