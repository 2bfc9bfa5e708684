//! Thread delivery: a reader thread waits on the uffd and hands each fault, through a bounded
//! lock-free queue, to worker threads that call the resolver (or, with no workers, calls it
//! itself). The faulting thread sleeps in the kernel until an install (or wake) for its page.
//!
//! Invariants kept here: the reader and the workers never touch registered memory (messages
//! are read into a stack buffer, the queue lives on the heap outside every region), and take
//! no lock an application thread could hold. No uffd events other than page faults are
//! enabled, so `MADV_DONTNEED`/`munmap` on the region never wait for these threads.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::error::{Error, Result};
use crate::fault::{Fault, FaultResolver, Resolution};
use crate::raw;
use crate::region::UffdRegion;

/// Faults queued between the reader and the workers. A faulting thread has at most one fault
/// outstanding, so this bounds the application threads, not the pages.
pub const QUEUE_CAPACITY: usize = 1024;
/// How long an idle thread sleeps before re-checking for shutdown.
const IDLE_TIMEOUT: Duration = Duration::from_millis(200);
/// Pops a worker tries before sleeping (cheap: the queue is in cache).
const SPIN_POPS: u32 = 64;

struct Shared {
    region: Arc<UffdRegion>,
    resolver: Arc<dyn FaultResolver>,
    queue: ArrayQueue<Fault>,
    stop: AtomicBool,
    /// Rung to stop the reader out of `poll`.
    stop_fd: OwnedFd,
    /// Bumped on every push; workers futex-wait on it.
    pushed: AtomicU32,
    sleepers: AtomicU32,
    /// No workers: the reader calls the resolver itself.
    inline: bool,
}

/// The running reader and workers; stopped and joined on drop.
pub(crate) struct Threads {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads")
            .field("threads", &self.handles.len())
            .finish()
    }
}

/// Starts one reader and `workers` workers; with none, the reader resolves each fault itself
/// (one thread hop less, but a slow resolver then delays reading the next faults).
pub(crate) fn start(
    region: Arc<UffdRegion>,
    resolver: Arc<dyn FaultResolver>,
    workers: usize,
) -> Result<Threads> {
    let stop_fd = raw::eventfd().map_err(|errno| Error::Setup {
        call: "eventfd",
        errno,
    })?;
    let shared = Arc::new(Shared {
        region,
        resolver,
        queue: ArrayQueue::new(QUEUE_CAPACITY),
        stop: AtomicBool::new(false),
        stop_fd,
        pushed: AtomicU32::new(0),
        sleepers: AtomicU32::new(0),
        inline: workers == 0,
    });
    let mut threads = Threads {
        shared: Arc::clone(&shared),
        handles: Vec::new(),
    };
    threads.spawn("dsm-uffd-reader", {
        let shared = Arc::clone(&shared);
        move || {
            shared.resolver.on_thread_start();
            read_loop(&shared)
        }
    })?;
    for _ in 0..workers {
        let shared = Arc::clone(&shared);
        threads.spawn("dsm-uffd-worker", move || {
            shared.resolver.on_thread_start();
            work_loop(&shared)
        })?;
    }
    Ok(threads)
}

impl Threads {
    fn spawn(&mut self, name: &str, body: impl FnOnce() + Send + 'static) -> Result<()> {
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map_err(|e| Error::Setup {
                call: "spawn fault-engine thread",
                errno: crate::Errno(e.raw_os_error().unwrap_or(libc::EAGAIN)),
            })?;
        self.handles.push(handle);
        Ok(())
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = raw::eventfd_ring(raw::fd_of(&self.shared.stop_fd));
        self.shared.pushed.fetch_add(1, Ordering::SeqCst);
        raw::futex_wake_all(&self.shared.pushed);
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Reads fault messages and queues them, until stopped.
fn read_loop(shared: &Shared) {
    let uffd = shared.region.uffd();
    let stop_fd = raw::fd_of(&shared.stop_fd);
    let mut messages = [raw::empty_message(); 32];
    while !shared.stop.load(Ordering::Acquire) {
        match raw::poll2(uffd, stop_fd, IDLE_TIMEOUT) {
            Ok((_, true)) => return,
            Ok((false, false)) => continue,
            Ok((true, false)) => {}
            Err(_) => {
                die(b"dsm-uffd: poll on the userfaultfd failed; faults can no longer be served\n")
            }
        }
        let count = match raw::read_messages(uffd, &mut messages) {
            Ok(count) => count,
            Err(_) => {
                die(b"dsm-uffd: read of the userfaultfd failed; faults can no longer be served\n")
            }
        };
        for message in &messages[..count] {
            match shared.region.decode_fault(message) {
                Some(fault) if shared.inline => settle(shared, fault),
                Some(fault) => enqueue(shared, fault),
                None => {}
            }
        }
    }
}

/// Queues `fault` and wakes a worker. A full queue means every worker is stuck in the
/// resolver: wait for room, checking for shutdown.
fn enqueue(shared: &Shared, mut fault: Fault) {
    while let Err(rejected) = shared.queue.push(fault) {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        fault = rejected;
        std::thread::sleep(Duration::from_micros(50));
    }
    shared.pushed.fetch_add(1, Ordering::SeqCst);
    if shared.sleepers.load(Ordering::SeqCst) > 0 {
        raw::futex_wake_all(&shared.pushed);
    }
}

/// Pops faults and resolves them, until stopped.
fn work_loop(shared: &Shared) {
    while !shared.stop.load(Ordering::Acquire) {
        let seen = shared.pushed.load(Ordering::SeqCst);
        if let Some(fault) = pop_spinning(shared) {
            settle(shared, fault);
            continue;
        }
        shared.sleepers.fetch_add(1, Ordering::SeqCst);
        // Returns at once if a push bumped `pushed` since `seen`.
        raw::futex_wait(&shared.pushed, seen, IDLE_TIMEOUT);
        shared.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

fn pop_spinning(shared: &Shared) -> Option<Fault> {
    for _ in 0..SPIN_POPS {
        if let Some(fault) = shared.queue.pop() {
            return Some(fault);
        }
        std::hint::spin_loop();
    }
    None
}

fn settle(shared: &Shared, fault: Fault) {
    match shared.resolver.resolve(fault, &shared.region) {
        Resolution::Resolved | Resolution::Pending => {}
        Resolution::Retry => {
            if shared.region.wake(fault.page).is_err() {
                die(b"dsm-uffd: UFFDIO_WAKE failed; a faulting thread would hang\n");
            }
        }
        Resolution::Fail => die(b"dsm-uffd: a fault could not be served (Resolution::Fail)\n"),
    }
}

/// A faulting thread that can never be resumed would hang silently: stop loudly instead.
#[cold]
fn die(message: &[u8]) -> ! {
    raw::write_stderr(message);
    raw::abort()
}
