//! The round-trip floor: a plain `std::net` TCP connection between the same two node
//! processes the figures run in (ranks 0 and 1), opened beside the runtime's own. Rank 0 sends
//! a 64-byte request, rank 1 answers 4 KiB (one page); `TCP_NODELAY` on both ends. Both ends
//! wait the same way: either blocking reads, or busy-polling `recv(MSG_DONTWAIT)` (no thread
//! is put to sleep, so no cross-CPU wake-up is paid). Every wait is bounded by [`READ_LIMIT`].

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Bytes of a request (rank 0 → rank 1).
pub(super) const REQUEST_BYTES: usize = 64;
/// Bytes of a reply (rank 1 → rank 0): one page.
pub(super) const REPLY_BYTES: usize = 4096;
/// Longest a read may block or spin, and `accept` wait, before the floor fails.
const READ_LIMIT: Duration = Duration::from_secs(10);
/// Busy-polling reads check the clock once per this many empty polls.
const POLLS_PER_CLOCK_CHECK: u32 = 1024;

/// How both ends wait for the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Blocking `read`: the thread sleeps and is woken by the kernel.
    Blocking,
    /// `recv(MSG_DONTWAIT)` in a loop: the thread never sleeps.
    BusyPoll,
}

impl Wait {
    /// The first byte of a request: both ends must wait the same way, and a server that
    /// finds another mode in a request fails instead of measuring a mixed round trip.
    fn tag(self) -> u8 {
        match self {
            Wait::Blocking => b'B',
            Wait::BusyPoll => b'P',
        }
    }
}

/// One end of the floor connection.
#[derive(Debug)]
pub(super) struct FloorLink {
    stream: TcpStream,
    request: [u8; REQUEST_BYTES],
    reply: Box<[u8; REPLY_BYTES]>,
}

impl FloorLink {
    /// A listener on a free loopback port (rank 1's side; its port goes to rank 0).
    pub(super) fn listen() -> anyhow::Result<TcpListener> {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind the floor listener")
    }

    /// Accepts rank 0's connection, waiting at most [`READ_LIMIT`].
    pub(super) fn accept(listener: &TcpListener) -> anyhow::Result<FloorLink> {
        listener.set_nonblocking(true)?;
        let started = Instant::now();
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    return FloorLink::new(stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if started.elapsed() > READ_LIMIT {
                        bail!("floor: rank 0 did not connect within {READ_LIMIT:?}");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e).context("accept the floor connection"),
            }
        }
    }

    /// Connects to rank 1's floor listener on loopback port `port`.
    pub(super) fn connect(port: u16) -> anyhow::Result<FloorLink> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&address, READ_LIMIT)
            .with_context(|| format!("floor: connect to rank 1 at {address}"))?;
        FloorLink::new(stream)
    }

    fn new(stream: TcpStream) -> anyhow::Result<FloorLink> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_LIMIT))?;
        Ok(FloorLink {
            stream,
            request: [0x5a; REQUEST_BYTES],
            reply: Box::new([0xa5; REPLY_BYTES]),
        })
    }

    /// Rank 0: `warmup + samples` round trips, each end waiting as `wait` says; microseconds
    /// per round trip, warm-up dropped.
    pub(super) fn ping(
        &mut self,
        wait: Wait,
        warmup: usize,
        samples: usize,
    ) -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(samples);
        self.request[0] = wait.tag();
        for i in 0..warmup + samples {
            let started = Instant::now();
            self.stream.write_all(&self.request)?;
            receive(&mut self.stream, &mut self.reply[..], wait)
                .with_context(|| format!("floor ({wait:?}): reply {i} from rank 1"))?;
            if i >= warmup {
                times.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(times)
    }

    /// Rank 1: answers `count` requests, waiting as `wait` says.
    pub(super) fn serve(&mut self, wait: Wait, count: usize) -> anyhow::Result<()> {
        for i in 0..count {
            receive(&mut self.stream, &mut self.request, wait)
                .with_context(|| format!("floor ({wait:?}): request {i} from rank 0"))?;
            if self.request[0] != wait.tag() {
                bail!(
                    "floor: rank 0 waits as {:?} while rank 1 waits as {wait:?}",
                    char::from(self.request[0])
                );
            }
            self.stream.write_all(&self.reply[..])?;
        }
        Ok(())
    }
}

/// Fills `buffer` from `stream`, blocking or busy-polling.
fn receive(stream: &mut TcpStream, buffer: &mut [u8], wait: Wait) -> anyhow::Result<()> {
    match wait {
        Wait::Blocking => stream
            .read_exact(buffer)
            .with_context(|| format!("blocking read (limit {READ_LIMIT:?})")),
        Wait::BusyPoll => receive_polling(stream, buffer),
    }
}

/// `recv(MSG_DONTWAIT)` until `buffer` is full; spins at most [`READ_LIMIT`].
fn receive_polling(stream: &TcpStream, buffer: &mut [u8]) -> anyhow::Result<()> {
    let fd = stream.as_raw_fd();
    let started = Instant::now();
    let mut got = 0;
    let mut empty_polls = 0u32;
    while got < buffer.len() {
        let rest = &mut buffer[got..];
        // SAFETY: `rest` is writable memory of `rest.len()` bytes owned by the caller for the
        // call's duration; `fd` is the open socket of `stream`.
        let n = unsafe { libc::recv(fd, rest.as_mut_ptr().cast(), rest.len(), libc::MSG_DONTWAIT) };
        if let Ok(n @ 1..) = usize::try_from(n) {
            got += n;
            continue;
        }
        if n == 0 {
            bail!("the peer closed the connection");
        }
        let error = std::io::Error::last_os_error();
        if !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
            return Err(error).context("recv(MSG_DONTWAIT)");
        }
        empty_polls += 1;
        if empty_polls.is_multiple_of(POLLS_PER_CLOCK_CHECK) && started.elapsed() > READ_LIMIT {
            bail!("busy-polling: nothing for {READ_LIMIT:?}");
        }
        std::hint::spin_loop();
    }
    Ok(())
}
