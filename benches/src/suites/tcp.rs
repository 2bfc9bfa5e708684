//! `dsm-bench tcp --json` (issue #4): the io_uring TCP transport against a plain `std::net`
//! blocking client/server, between two processes on loopback, measured in the same run.
//!
//! * Round trip of a 4 KiB page: `read_page` from an application thread that waits for the
//!   completion (what a fault handler sees), and — for the transport's own share — a closed
//!   loop that issues the next read from inside the event sink, on the transport thread.
//!   Baseline: a blocking client writing a request of the same size (48 bytes) and reading a
//!   reply of the same size (4145 bytes) from a blocking server thread.
//! * Streaming: pages read with `WINDOW` requests outstanding, against the same pipelined
//!   pattern over std sockets.
//!
//! The home side runs in a child process (this executable again, with `HOME_ENV` set): it
//! exposes `PAGES` pages through its transport and serves the std baseline on another socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use dsm_core::{EventSink, HomeMemory, Transport, TransportEvent};
use dsm_tcp_fallback::{TcpConfig, TcpTransport};
use dsm_wire::{PAGE_SIZE, PageId};
use serde_json::json;

use crate::stats::summarize;

/// Set in the child: the parent's transport listener address.
pub const HOME_ENV: &str = "DSM_BENCH_TCP_HOME";
/// Pages the home exposes.
pub const PAGES: u32 = 256;
/// Requests outstanding while streaming.
pub const WINDOW: u64 = 64;
/// Bytes of a page read request frame and of its reply frame in the transport; the std
/// baseline moves exactly as many.
const REQUEST_LEN: usize = 32 + 16;
const REPLY_LEN: usize = 32 + 17 + PAGE_SIZE;
const CLUSTER: u64 = 0xbe_4c;
const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the suite (or, in the child, the home side, never returning).
pub fn run() -> anyhow::Result<serde_json::Value> {
    exit_if_child();
    let mut pair = Pair::start()?;
    let rounds = 5;
    let (mut rtt, mut rtt_sink, mut rtt_std) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tput, mut tput_std) = (Vec::new(), Vec::new());
    let stream_pages = 16_384;
    pair.warm_up()?;
    for _ in 0..rounds {
        for _ in 0..1000 {
            rtt_std.push(micros(pair.rtt_std()?));
            rtt.push(micros(pair.rtt_transport()?));
        }
        rtt_sink.extend(pair.rtt_in_sink(1000)?);
        tput_std.push(mib_per_s(
            stream_pages,
            pair.stream_std(stream_pages, WINDOW)?,
        ));
        tput.push(mib_per_s(
            stream_pages,
            pair.stream_transport(stream_pages, WINDOW)?,
        ));
    }
    let over_1ms = |v: &[f64]| v.iter().filter(|&&x| x > 1000.0).count() as f64 / v.len() as f64;
    let tails = json!({
        "rtt_share_over_1ms": over_1ms(&rtt),
        "rtt_in_sink_share_over_1ms": over_1ms(&rtt_sink),
        "std_rtt_share_over_1ms": over_1ms(&rtt_std),
        "rtt_us_mean": mean(&rtt),
        "rtt_in_sink_us_mean": mean(&rtt_sink),
        "std_rtt_us_mean": mean(&rtt_std),
    });
    let (rtt, rtt_sink, rtt_std) = (
        summarize(&mut rtt),
        summarize(&mut rtt_sink),
        summarize(&mut rtt_std),
    );
    let (tput, tput_std) = (summarize(&mut tput), summarize(&mut tput_std));
    Ok(json!({
        "suite": "tcp",
        "page_bytes": PAGE_SIZE,
        "rtt_us_median": rtt.median,
        "rtt_us_p99": rtt.p99,
        "rtt_in_sink_us_median": rtt_sink.median,
        "rtt_in_sink_us_p99": rtt_sink.p99,
        "std_rtt_us_median": rtt_std.median,
        "std_rtt_us_p99": rtt_std.p99,
        "ratio_rtt_to_std": rtt.median / rtt_std.median,
        "ratio_rtt_in_sink_to_std": rtt_sink.median / rtt_std.median,
        "stream_window": WINDOW,
        "stream_pages_per_round": stream_pages,
        "throughput_mib_s_median": tput.median,
        "std_throughput_mib_s_median": tput_std.median,
        "ratio_throughput_to_std": tput.median / tput_std.median,
        "rounds": rounds,
        "tails": tails,
        "notes": "rtt: application thread issues read_page and parks until the sink wakes it; \
                  rtt_in_sink: next read issued from the sink on the transport thread; \
                  std: blocking client/server, same request and reply sizes; medians over all rounds",
    }))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mib_per_s(pages: u64, d: Duration) -> f64 {
    (pages * PAGE_SIZE as u64) as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Both ends of the benchmark: this process's transport (rank 0) and std client, and the
/// child process holding the home (rank 1) and the std server.
#[derive(Debug)]
pub struct Pair {
    transport: Arc<TcpTransport>,
    sink: Arc<BenchSink>,
    std_client: TcpStream,
    child: Child,
    token: u64,
}

impl Pair {
    /// Spawns the child home and connects both ways.
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let own = listener.local_addr()?;
        let mut child = Command::new(std::env::current_exe()?)
            .args(std::env::args().skip(1))
            .env(HOME_ENV, own.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning the home process")?;
        let sink = Arc::new(BenchSink::default());
        // Rank 1 (the child) dials rank 0; its own address is never used.
        let peers = vec![own, "127.0.0.1:9".parse()?];
        let mut config = TcpConfig::new(0, listener, peers, CLUSTER);
        config.connect_timeout = TIMEOUT;
        let transport = Arc::new(TcpTransport::start(
            config,
            sink.clone() as Arc<dyn EventSink>,
        )?);
        sink.transport.set(Arc::downgrade(&transport)).ok();
        // The child prints its std server's address once its home memory is exposed.
        let mut line = String::new();
        let stdout = child.stdout.take().context("child stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        let std_addr: SocketAddr = line
            .trim()
            .parse()
            .with_context(|| format!("child said {line:?}"))?;
        let std_client = TcpStream::connect(std_addr)?;
        std_client.set_nodelay(true)?;
        Ok(Pair {
            transport,
            sink,
            std_client,
            child,
            token: 0,
        })
    }

    fn warm_up(&mut self) -> anyhow::Result<()> {
        for _ in 0..200 {
            self.rtt_std()?;
            self.rtt_transport()?;
        }
        Ok(())
    }

    fn next_page(&mut self) -> (PageId, u64) {
        self.token += 1;
        let page = u32::try_from(self.token % u64::from(PAGES)).unwrap_or(0);
        (PageId { region: 0, page }, self.token)
    }

    /// One page read from this thread, parked until the completion.
    pub fn rtt_transport(&mut self) -> anyhow::Result<Duration> {
        let (page, token) = self.next_page();
        self.sink.waiter.set(std::thread::current()).ok();
        let target = self.sink.completed.load(Ordering::Acquire) + 1;
        let start = Instant::now();
        self.transport.read_page(1, page, token)?;
        self.sink.wait_for(target)?;
        Ok(start.elapsed())
    }

    /// `n` round trips issued back to back from the sink on the transport thread.
    pub fn rtt_in_sink(&mut self, n: u64) -> anyhow::Result<Vec<f64>> {
        self.sink.waiter.set(std::thread::current()).ok();
        let target = self.sink.completed.load(Ordering::Acquire) + n;
        self.sink.chain_left.store(n - 1, Ordering::Release);
        *lock(&self.sink.chain_last) = Some(Instant::now());
        let (page, token) = self.next_page();
        self.transport.read_page(1, page, token)?;
        self.sink.wait_for(target)?;
        Ok(std::mem::take(&mut *lock(&self.sink.chain_samples)))
    }

    /// One request/reply over the std sockets.
    pub fn rtt_std(&mut self) -> anyhow::Result<Duration> {
        let request = [7u8; REQUEST_LEN];
        let mut reply = [0u8; REPLY_LEN];
        let start = Instant::now();
        self.std_client.write_all(&request)?;
        self.std_client.read_exact(&mut reply)?;
        Ok(start.elapsed())
    }

    /// Reads `pages` pages through the transport, `window` outstanding, refilled by halves.
    pub fn stream_transport(&mut self, pages: u64, window: u64) -> anyhow::Result<Duration> {
        self.sink.waiter.set(std::thread::current()).ok();
        let base = self.sink.completed.load(Ordering::Acquire);
        let start = Instant::now();
        let mut issued = 0;
        while issued < pages {
            let outstanding = issued - (self.sink.completed.load(Ordering::Acquire) - base);
            if outstanding > window / 2 {
                self.sink.wait_for(base + issued - window / 2)?;
                continue;
            }
            let room = (window - outstanding).min(pages - issued);
            for _ in 0..room {
                let (page, token) = self.next_page();
                self.transport.read_page(1, page, token)?;
            }
            issued += room;
        }
        self.sink.wait_for(base + pages)?;
        Ok(start.elapsed())
    }

    /// The same pipelined stream over std sockets: `window` requests ahead, one more per reply.
    pub fn stream_std(&mut self, pages: u64, window: u64) -> anyhow::Result<Duration> {
        let request = [7u8; REQUEST_LEN];
        let mut reply = [0u8; REPLY_LEN];
        let start = Instant::now();
        let ahead = window.min(pages);
        for _ in 0..ahead {
            self.std_client.write_all(&request)?;
        }
        for i in 0..pages {
            self.std_client.read_exact(&mut reply)?;
            if i + ahead < pages {
                self.std_client.write_all(&request)?;
            }
        }
        Ok(start.elapsed())
    }

    /// Page reads that failed so far (a correct run has none).
    pub fn errors(&self) -> u64 {
        self.sink.errors.load(Ordering::Acquire)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.transport.shutdown();
        drop(self.child.stdin.take()); // the child exits when its stdin closes
        let _ = self.child.wait();
    }
}

/// Counts completions and wakes the measuring thread; can chain the next read itself.
#[derive(Debug, Default)]
struct BenchSink {
    completed: AtomicU64,
    errors: AtomicU64,
    waiter: OnceLock<Thread>,
    transport: OnceLock<Weak<TcpTransport>>,
    chain_left: AtomicU64,
    chain_last: Mutex<Option<Instant>>,
    chain_samples: Mutex<Vec<f64>>,
    first_error: Mutex<Option<String>>,
}

impl BenchSink {
    fn wait_for(&self, target: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        while self.completed.load(Ordering::Acquire) < target {
            ensure!(
                Instant::now() < deadline,
                "timed out waiting for page read {target}"
            );
            std::thread::park_timeout(Duration::from_millis(100));
        }
        ensure!(
            self.errors.load(Ordering::Acquire) == 0,
            "page reads failed"
        );
        Ok(())
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::AcqRel);
        lock(&self.first_error).get_or_insert(what);
    }

    fn chain(&self, token: u64) {
        if self.chain_left.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = Instant::now();
        if let Some(last) = lock(&self.chain_last).replace(now) {
            lock(&self.chain_samples).push(micros(now - last));
        }
        self.chain_left.fetch_sub(1, Ordering::AcqRel);
        let next = token + 1;
        let page = PageId {
            region: 0,
            page: u32::try_from(next % u64::from(PAGES)).unwrap_or(0),
        };
        if let Some(t) = self.transport.get().and_then(Weak::upgrade) {
            let _ = t.read_page(1, page, next);
        }
    }
}

impl EventSink for BenchSink {
    fn deliver(&self, event: TransportEvent) {
        match event {
            TransportEvent::PageRead { token, result } => {
                match result {
                    // Spot checks only: this runs inside the timed round trip, and the
                    // transport's tests check whole pages.
                    Ok(page) if SPOT_CHECKS.iter().all(|&k| page[k] == page_byte(token, k)) => {
                        self.chain(token)
                    }
                    other => self.error(format!("read {token}: {:?}", other.map(|p| p[0]))),
                }
                self.completed.fetch_add(1, Ordering::AcqRel);
                if let Some(t) = self.waiter.get() {
                    t.unpark();
                }
            }
            TransportEvent::PeerFailed { node, reason } => {
                self.error(format!("node {node} failed: {reason}"));
            }
            _ => {}
        }
    }
}

/// Bytes of each page the bench checks.
const SPOT_CHECKS: [usize; 3] = [0, PAGE_SIZE / 2 + 1, PAGE_SIZE - 1];

/// Byte `k` of the home page a read with `token` returns.
fn page_byte(token: u64, k: usize) -> u8 {
    let page = usize::try_from(token % u64::from(PAGES)).unwrap_or(0);
    pattern(page, k)
}

/// Byte `k` of home page `page`.
fn pattern(page: usize, k: usize) -> u8 {
    page.wrapping_mul(31).wrapping_add(k).to_le_bytes()[0]
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// In the child (`HOME_ENV` set): serves the home and the std baseline until stdin closes,
/// then exits the process.
pub fn exit_if_child() {
    let Ok(parent) = std::env::var(HOME_ENV) else {
        return;
    };
    let code = match home(&parent) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tcp bench home: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn home(parent: &str) -> anyhow::Result<()> {
    let std_listener = TcpListener::bind("127.0.0.1:0")?;
    let std_addr = std_listener.local_addr()?;
    std::thread::spawn(move || serve_std(&std_listener));
    let memory = HomePages::new();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let own = listener.local_addr()?;
    let mut config = TcpConfig::new(1, listener, vec![parent.parse()?, own], CLUSTER);
    config.connect_timeout = TIMEOUT;
    struct Ignore;
    impl EventSink for Ignore {
        fn deliver(&self, _: TransportEvent) {}
    }
    let transport = TcpTransport::start(config, Arc::new(Ignore))?;
    transport.expose(0, memory.memory())?;
    // Ready: the parent reads pages only after this line.
    println!("{std_addr}");
    std::io::stdout().flush()?;
    let mut buf = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut buf);
    transport.shutdown()?;
    drop(transport);
    drop(memory);
    Ok(())
}

/// The std baseline server: for each request, one reply of a page-sized frame.
fn serve_std(listener: &TcpListener) {
    let Ok((mut stream, _)) = listener.accept() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut request = [0u8; REQUEST_LEN];
    let mut reply = vec![0u8; REPLY_LEN];
    let mut page = 0usize;
    while stream.read_exact(&mut request).is_ok() {
        // Like the home's transport thread: copy the page into the reply, then send.
        for (k, b) in reply[REPLY_LEN - PAGE_SIZE..].iter_mut().enumerate() {
            *b = pattern(page, k);
        }
        page = (page + 1) % PAGES as usize;
        if stream.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Page-aligned home memory filled with `page_byte`.
struct HomePages {
    base: *mut u8,
}

impl HomePages {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(PAGES as usize * PAGE_SIZE, PAGE_SIZE).expect("layout")
    }

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        assert!(!base.is_null(), "out of memory");
        // SAFETY: `base` is valid for the whole layout, initialised (zeroed) and unaliased.
        let bytes = unsafe { std::slice::from_raw_parts_mut(base, PAGES as usize * PAGE_SIZE) };
        for (i, page) in bytes.chunks_mut(PAGE_SIZE).enumerate() {
            for (k, b) in page.iter_mut().enumerate() {
                *b = pattern(i, k);
            }
        }
        HomePages { base }
    }

    fn memory(&self) -> HomeMemory {
        // SAFETY: page-aligned (layout), valid for PAGES pages while `self` lives; the child
        // shuts the transport down before dropping the pages.
        unsafe { HomeMemory::new(self.base, PAGES) }
    }
}

impl Drop for HomePages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.base, Self::layout()) };
    }
}

const _: () = assert!(REPLY_LEN == 4145);
