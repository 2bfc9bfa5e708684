//! Helpers shared by the tests: listeners, a mesh of transports, an event collector, and
//! page-aligned home memory.

use std::alloc::Layout;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use dsm_core::{EventSink, HomeMemory, TransportEvent};
use dsm_tcp_fallback::{TcpConfig, TcpTransport};
use dsm_wire::PAGE_SIZE;

pub const CLUSTER: u64 = 0x7c9;

/// Forwards every event to a channel.
pub struct Collect(pub Sender<TransportEvent>);

impl EventSink for Collect {
    fn deliver(&self, event: TransportEvent) {
        let _ = self.0.send(event);
    }
}

/// `n` listeners on loopback ports chosen by the kernel, and their addresses.
pub fn listeners(n: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    (listeners, addrs)
}

/// Starts one transport per config concurrently (each `start` waits for the whole mesh).
pub fn start_all(
    configs: Vec<TcpConfig>,
    sinks: Vec<Arc<dyn EventSink>>,
) -> Vec<dsm_tcp_fallback::Result<TcpTransport>> {
    let handles: Vec<_> = configs
        .into_iter()
        .zip(sinks)
        .map(|(c, s)| std::thread::spawn(move || TcpTransport::start(c, s)))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A mesh of `n` transports whose events go to channels.
pub fn channel_mesh(
    n: usize,
    key: Option<[u8; 32]>,
) -> (Vec<TcpTransport>, Vec<Receiver<TransportEvent>>) {
    let (listeners, addrs) = listeners(n);
    let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
    let mut receivers = Vec::new();
    let configs = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let (tx, rx) = channel();
            sinks.push(Arc::new(Collect(tx)));
            receivers.push(rx);
            let mut c = TcpConfig::new(rank as u32, l, addrs.clone(), CLUSTER);
            c.key = key;
            c.connect_timeout = Duration::from_secs(20);
            c
        })
        .collect();
    let transports = start_all(configs, sinks)
        .into_iter()
        .map(|r| r.expect("mesh start"))
        .collect();
    (transports, receivers)
}

/// Waits for the first event matching `want`, failing the test after `timeout` with `what`.
pub fn wait_for<T>(
    rx: &Receiver<TransportEvent>,
    timeout: Duration,
    what: &str,
    mut want: impl FnMut(TransportEvent) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(event) => {
                if let Some(v) = want(event) {
                    return v;
                }
            }
            Err(e) => panic!("timed out after {timeout:?} waiting for {what}: {e}"),
        }
    }
}

/// Page-aligned zeroed memory for a home, freed on drop.
pub struct HomeBuffer {
    ptr: *mut u8,
    pages: u32,
}

// SAFETY: plain heap memory owned by this value.
unsafe impl Send for HomeBuffer {}
// SAFETY: the tests only read it through the transport, which copies whole pages.
unsafe impl Sync for HomeBuffer {}

impl HomeBuffer {
    pub fn new(pages: u32, fill: impl Fn(u32, usize) -> u8) -> Self {
        let layout = Self::layout(pages);
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        for p in 0..pages {
            for k in 0..PAGE_SIZE {
                // SAFETY: in bounds of the allocation.
                unsafe { *ptr.add(p as usize * PAGE_SIZE + k) = fill(p, k) };
            }
        }
        HomeBuffer { ptr, pages }
    }

    pub fn memory(&self) -> HomeMemory {
        // SAFETY: page-aligned, valid for `pages` pages until drop; the tests drop transports
        // (or withdraw) before the buffer.
        unsafe { HomeMemory::new(self.ptr, self.pages) }
    }

    fn layout(pages: u32) -> Layout {
        Layout::from_size_align(pages as usize * PAGE_SIZE, PAGE_SIZE).unwrap()
    }
}

impl Drop for HomeBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.pages)) };
    }
}

/// Byte `k` of page `page` of `home`'s read-only region in the tests.
pub fn pattern(home: u32, page: u32, k: usize) -> u8 {
    (home as usize * 131 + page as usize * 17 + k * 7 + (k >> 8)) as u8
}
