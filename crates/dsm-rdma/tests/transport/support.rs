//! Shared test plumbing: the device probe, a channel sink, connected pairs, home memory.

use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use dsm_core::{EventSink, HomeMemory, TransportEvent};
use dsm_rdma::{RdmaConfig, RdmaConnector, RdmaTransport};
use dsm_wire::PAGE_SIZE;

/// Cluster id of every test.
pub const CLUSTER: u64 = 0xd5_7e57;
/// How long a test waits for any one event (Soft-RoCE under TCG is slow).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// True when an RDMA device is present. Without one: a loud SKIP, or a panic when the
/// environment requires RDMA.
pub fn rdma_or_skip(test: &str) -> bool {
    match dsm_rdma::device_names() {
        Ok(_) => true,
        Err(error) if std::env::var("DSM_REQUIRE_RDMA").as_deref() == Ok("1") => {
            panic!("DSM_REQUIRE_RDMA=1 but {error}")
        }
        Err(error) => {
            // Straight to stderr: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: {error} — run it where Soft-RoCE is up: \
                 scripts/soft-roce-setup.sh run cargo test -p dsm-rdma"
            );
            false
        }
    }
}

/// Events of one transport, in arrival order.
pub struct Events {
    receiver: Receiver<TransportEvent>,
}

struct ChannelSink(Mutex<Sender<TransportEvent>>);

impl EventSink for ChannelSink {
    fn deliver(&self, event: TransportEvent) {
        let _ = self.0.lock().unwrap().send(event);
    }
}

impl Events {
    /// A sink and the receiving end of its events.
    pub fn new() -> (Arc<dyn EventSink>, Events) {
        let (sender, receiver) = channel();
        (
            Arc::new(ChannelSink(Mutex::new(sender))),
            Events { receiver },
        )
    }

    /// The next event; panics naming `what` after [`EVENT_TIMEOUT`].
    pub fn next(&self, what: &str) -> TransportEvent {
        self.receiver
            .recv_timeout(EVENT_TIMEOUT)
            .unwrap_or_else(|_| panic!("timed out after {EVENT_TIMEOUT:?} waiting for {what}"))
    }

    /// True when no event arrives within `wait`.
    pub fn quiet_for(&self, wait: Duration) -> bool {
        self.receiver.recv_timeout(wait).is_err()
    }
}

/// Two transports (nodes 0 and 1) in this process, connected through rxe.
pub struct Pair {
    pub nodes: [RdmaTransport; 2],
    pub events: [Events; 2],
}

/// Opens nodes 0 and 1 of a two-node cluster, swaps their connection data, starts both.
pub fn pair() -> Pair {
    let mut a = RdmaConnector::open(0, 2, RdmaConfig::from_env(CLUSTER)).expect("open node 0");
    let mut b = RdmaConnector::open(1, 2, RdmaConfig::from_env(CLUSTER)).expect("open node 1");
    let (info_a, info_b) = (a.conn_info(1).unwrap(), b.conn_info(0).unwrap());
    a.connect(1, &info_b).expect("connect 0 -> 1");
    b.connect(0, &info_a).expect("connect 1 -> 0");
    let (sink_a, events_a) = Events::new();
    let (sink_b, events_b) = Events::new();
    Pair {
        nodes: [a.start(sink_a).unwrap(), b.start(sink_b).unwrap()],
        events: [events_a, events_b],
    }
}

/// A page-aligned page.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
pub struct AlignedPage(pub [u8; PAGE_SIZE]);

/// Home memory owned by a test: `pages` pages, page `i` filled with `pattern(i)`.
pub struct Home {
    pages: Vec<AlignedPage>,
}

impl Home {
    pub fn new(pages: usize, pattern: impl Fn(usize) -> u8) -> Self {
        Home {
            pages: (0..pages)
                .map(|i| AlignedPage([pattern(i); PAGE_SIZE]))
                .collect(),
        }
    }

    /// The memory to expose. The test keeps `self` alive until the transport is dropped.
    pub fn memory(&mut self) -> HomeMemory {
        let pages = u32::try_from(self.pages.len()).unwrap();
        // SAFETY: the Vec's buffer is page-aligned (`AlignedPage`), holds `pages` pages, is
        // never reallocated, and every test drops its transports before its `Home`.
        unsafe { HomeMemory::new(self.pages.as_mut_ptr().cast(), pages) }
    }

    /// Page `index`, read through a volatile copy (the device may have written it).
    pub fn page(&self, index: usize) -> [u8; PAGE_SIZE] {
        // SAFETY: a valid, aligned page of `self`; volatile because RDMA writes bypass the
        // compiler's view of the memory.
        unsafe { std::ptr::read_volatile(&self.pages[index].0) }
    }

    /// Overwrites page `index` with `byte`.
    pub fn fill(&mut self, index: usize, byte: u8) {
        self.pages[index].0 = [byte; PAGE_SIZE];
    }
}
