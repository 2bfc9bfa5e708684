//! The process at the other end: its identity from the Unix socket (`SO_PEERCRED`) and a pidfd
//! that becomes readable the moment it exits, crash or not.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};

use crate::{Error, Result, sys};

/// The peer process of a channel.
#[derive(Debug)]
pub struct Peer {
    pid: i32,
    uid: u32,
    rank: u32,
    pidfd: OwnedFd,
}

impl Peer {
    /// Identifies the process at the other end of `stream`: refuses another user
    /// ([`Error::ForeignUser`]) and opens its pidfd (`SO_PEERPIDFD`, race-free; `pidfd_open`
    /// of the `SO_PEERCRED` pid on kernels before 6.5).
    pub(crate) fn of(stream: &UnixStream) -> Result<Self> {
        let cred = getsockopt(stream, sockopt::PeerCredentials)
            .map_err(|e| Error::nix("getsockopt(SO_PEERCRED)", e))?;
        let ours = nix::unistd::geteuid().as_raw();
        if cred.uid() != ours {
            return Err(Error::ForeignUser {
                pid: cred.pid(),
                uid: cred.uid(),
                ours,
            });
        }
        let pidfd = match sys::peer_pidfd(stream.as_fd()) {
            Ok(fd) => fd,
            Err(_) => sys::pidfd_open(cred.pid()).map_err(|e| Error::io("pidfd_open", e))?,
        };
        Ok(Peer {
            pid: cred.pid(),
            uid: cred.uid(),
            rank: u32::MAX,
            pidfd,
        })
    }

    pub(crate) fn set_rank(&mut self, rank: u32) {
        self.rank = rank;
    }

    /// The peer's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The peer's user id (this process's).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The peer's rank, as it proved in the set-up.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// The peer's pidfd: readable (`POLLIN`) once the peer exited. For the runtime to poll
    /// beside its other descriptors (an io_uring `POLL_ADD`).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Whether the peer has exited (a non-blocking poll of the pidfd).
    pub fn exited(&self) -> Result<bool> {
        self.wait_exit(Duration::ZERO)
    }

    /// Waits up to `timeout` for the peer to exit; true if it did.
    pub fn wait_exit(&self, timeout: Duration) -> Result<bool> {
        sys::readable(&self.pidfd, timeout).map_err(|e| Error::io("poll(pidfd)", e))
    }

    /// `Err(PeerExited)` if the peer has exited.
    pub(crate) fn check_alive(&self) -> Result<()> {
        if self.exited()? {
            Err(Error::PeerExited { pid: self.pid })
        } else {
            Ok(())
        }
    }
}
