//! `dsm-bench rdma --json` (issue #7): a page over RDMA against the device's own floor, all
//! measured in the same run (run it where rxe0 is up; in the QEMU guest, one vCPU gives far
//! steadier figures than two on a shared host:
//! `DSM_RIG_SMP=1 scripts/soft-roce-setup.sh guest target/release/dsm-bench rdma --json`).
//!
//! Figures (µs, median and p99):
//! - `page_read`: `RdmaTransport::read_page` → one RDMA READ into a staging slot → the
//!   `PageRead` event reaches the caller (a thread blocked on a channel);
//! - `read_fault`: first read of a missing page of a userfaultfd region (thread delivery,
//!   resolved inline on the uffd reader thread) whose resolver starts `read_page` from the
//!   home; the transport thread installs the page
//!   (UFFDIO_COPY) and the thread resumes — the whole remote read fault;
//! - `local_fault`: the same region kind, resolver installing from local memory: the fault
//!   service without the network;
//! - `ib_read_lat`: perftest's `ib_read_lat -s 4096` on the same device in the same run
//!   (`t_typical` as median, its 99% percentile as p99).
//!
//! Ratios of medians: `ratio_page_read_to_ib_read_lat`, and
//! `ratio_read_fault_to_ib_read_lat_plus_local_fault` (the target: ≤ 1.3).
//! Soft-RoCE under an emulated CPU is slow: only the ratios mean anything.
//! `DSM_RDMA_SPIN_US` sets how long the transport thread polls before sleeping
//! (`transport_spin_us` in the report): on two emulated vCPUs spinning steals the CPU the
//! kernel's rxe needs, so compare runs with several values.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dsm_core::{EventSink, HomeMemory, Transport, TransportEvent};
use dsm_rdma::{RdmaConfig, RdmaConnector, RdmaTransport};
use dsm_uffd::{Delivery, Fault, FaultResolver, FaultServer, Resolution, UffdRegion};
use dsm_wire::{PAGE_SIZE, PageId};
use serde_json::{Value, json};

use crate::stats::{Summary, summarize};

/// Cluster id of the bench's transports.
const CLUSTER: u64 = 0xbe_7c4;
/// UffdRegion id the home exposes.
pub const REGION: u32 = 1;
/// Pages the home exposes (and the fault regions map).
pub const PAGES: u32 = 512;
/// Page reads timed.
const READS: usize = 2000;
/// Rounds over the fault regions (every page faulted once per round).
const ROUNDS: usize = 2;
/// Longest wait for any one completion.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A page-aligned page.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct AlignedPage([u8; PAGE_SIZE]);

/// A reader (node 0) connected to a home (node 1) exposing [`PAGES`] pages of region
/// [`REGION`], both in this process on the first RDMA device. Field order is drop order: the
/// transports go before the memory the home exposed.
pub struct RdmaPair {
    /// Node 0, which reads.
    pub reader: Arc<RdmaTransport>,
    home: RdmaTransport,
    _memory: Vec<AlignedPage>,
}

impl RdmaPair {
    /// Connects the pair; the reader's events go to `sink`. Page `i` holds bytes `i | 1`.
    pub fn open(sink: Arc<dyn EventSink>) -> anyhow::Result<RdmaPair> {
        let config = RdmaConfig::from_env(CLUSTER);
        let mut reader = RdmaConnector::open(0, 2, config.clone()).map_err(no_device_hint)?;
        let mut home = RdmaConnector::open(1, 2, config)?;
        let (reader_info, home_info) = (reader.conn_info(1)?, home.conn_info(0)?);
        reader.connect(1, &home_info)?;
        home.connect(0, &reader_info)?;
        let reader = Arc::new(reader.start(sink)?);
        let home = home.start(Arc::new(Discard))?;
        let mut memory: Vec<AlignedPage> = (0..PAGES)
            .map(|i| AlignedPage([i.to_le_bytes()[0] | 1; PAGE_SIZE]))
            .collect();
        // SAFETY: the Vec is page-aligned (`AlignedPage`), never reallocated, and dropped
        // after both transports (field order of `RdmaPair`).
        let exposed = unsafe { HomeMemory::new(memory.as_mut_ptr().cast(), PAGES) };
        home.expose(REGION, exposed)?;
        let pair = RdmaPair {
            reader,
            home,
            _memory: memory,
        };
        pair.wait_for_key()?;
        Ok(pair)
    }

    /// The home's region key travels by SEND: wait until the reader has it.
    fn wait_for_key(&self) -> anyhow::Result<()> {
        let past_end = PageId {
            region: REGION,
            page: PAGES,
        };
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.reader.read_page(1, past_end, 0) {
                Err(dsm_core::TransportError::OutOfRange { .. }) => return Ok(()),
                Err(dsm_core::TransportError::NotExposed { .. }) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                other => bail!("probing the home's region key gave {other:?}"),
            }
        }
        bail!("timed out after {TIMEOUT:?} waiting for the home's region key")
    }

    /// The home's transport (kept for its lifetime).
    pub fn home(&self) -> &RdmaTransport {
        &self.home
    }
}

impl std::fmt::Debug for RdmaPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaPair")
            .field("reader", &self.reader)
            .field("home", &self.home)
            .finish()
    }
}

fn no_device_hint(error: dsm_rdma::Error) -> anyhow::Error {
    if error.is_no_device() {
        anyhow::anyhow!(
            "{error}; run the suite where rxe0 is up: \
             scripts/soft-roce-setup.sh run target/release/dsm-bench rdma --json"
        )
    } else {
        error.into()
    }
}

struct Discard;

impl EventSink for Discard {
    fn deliver(&self, _event: TransportEvent) {}
}

/// Hands events to a thread waiting on a channel.
#[derive(Debug)]
pub struct ChannelSink(Mutex<Sender<TransportEvent>>);

impl ChannelSink {
    /// A sink and its receiving end.
    pub fn pair() -> (Arc<dyn EventSink>, Receiver<TransportEvent>) {
        let (sender, receiver) = channel();
        (Arc::new(ChannelSink(Mutex::new(sender))), receiver)
    }
}

impl EventSink for ChannelSink {
    fn deliver(&self, event: TransportEvent) {
        let _ = self.0.lock().unwrap_or_else(|e| e.into_inner()).send(event);
    }
}

/// One remote page read, start to event: posts `read_page` and waits for its `PageRead`.
pub fn read_one(
    pair: &RdmaPair,
    events: &Receiver<TransportEvent>,
    page: u32,
) -> anyhow::Result<()> {
    pair.reader.read_page(
        1,
        PageId {
            region: REGION,
            page,
        },
        u64::from(page),
    )?;
    match events
        .recv_timeout(TIMEOUT)
        .context("waiting for a PageRead")?
    {
        TransportEvent::PageRead {
            result: Ok(data), ..
        } if data[0] == page.to_le_bytes()[0] | 1 => Ok(()),
        other => bail!("unexpected event for page {page}: {other:?}"),
    }
}

fn time_page_reads() -> anyhow::Result<Summary> {
    let (sink, events) = ChannelSink::pair();
    let pair = RdmaPair::open(sink)?;
    let mut samples = Vec::with_capacity(READS);
    for i in 0..READS {
        let page = u32::try_from(i % PAGES as usize)?;
        let start = Instant::now();
        read_one(&pair, &events, page)?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(summarize(&mut samples))
}

/// Installs pages the reader's transport delivers into the fault region.
struct InstallSink {
    region: Arc<UffdRegion>,
}

impl EventSink for InstallSink {
    fn deliver(&self, event: TransportEvent) {
        if let TransportEvent::PageRead {
            token,
            result: Ok(page),
        } = event
        {
            let index = u32::try_from(token).unwrap_or(u32::MAX);
            if let Err(error) = self.region.install_read_only(index, &page) {
                eprintln!("installing page {index} failed: {error}");
            }
        }
    }
}

/// Starts a READ of the faulting page from the home; the install comes from the transport.
struct RemoteResolver {
    transport: Arc<RdmaTransport>,
}

impl FaultResolver for RemoteResolver {
    fn resolve(&self, fault: Fault, _region: &UffdRegion) -> Resolution {
        let page = PageId {
            region: REGION,
            page: fault.page,
        };
        match self.transport.read_page(1, page, u64::from(fault.page)) {
            Ok(()) => Resolution::Pending,
            Err(_) => Resolution::Fail,
        }
    }
}

/// Installs from local memory: the fault service alone.
struct LocalResolver {
    pages: Vec<[u8; PAGE_SIZE]>,
}

impl FaultResolver for LocalResolver {
    fn resolve(&self, fault: Fault, region: &UffdRegion) -> Resolution {
        match region.install_read_only(fault.page, &self.pages[fault.page as usize]) {
            Ok(_) => Resolution::Resolved,
            Err(_) => Resolution::Fail,
        }
    }
}

/// Where the suite maps its fault regions (away from other suites' and tests' addresses).
fn fault_address(slot: usize) -> usize {
    0x7c00_0000_0000 + slot * 0x10_0000_0000
}

/// Times the first read of every page, `ROUNDS` times (pages dropped between rounds).
fn time_faults(region: &UffdRegion) -> anyhow::Result<Summary> {
    let mut samples = Vec::with_capacity(PAGES as usize * ROUNDS);
    for _ in 0..ROUNDS {
        for page in 0..PAGES {
            let address = region.base().wrapping_add(page as usize * PAGE_SIZE);
            let start = Instant::now();
            // SAFETY: inside the mapped region; the engine serves the fault.
            let byte = unsafe { address.read_volatile() };
            samples.push(start.elapsed().as_secs_f64() * 1e6);
            if byte != page.to_le_bytes()[0] | 1 {
                bail!("page {page} read {byte:#x}");
            }
        }
        region.invalidate(0, PAGES)?;
    }
    Ok(summarize(&mut samples))
}

fn time_remote_faults() -> anyhow::Result<Summary> {
    let region = Arc::new(UffdRegion::new(fault_address(0), PAGES, Delivery::Thread)?);
    let pair = RdmaPair::open(Arc::new(InstallSink {
        region: Arc::clone(&region),
    }))?;
    let resolver = RemoteResolver {
        transport: Arc::clone(&pair.reader),
    };
    // No worker threads: the uffd reader resolves inline (the resolver never blocks).
    let engine = FaultServer::start_with_workers(Arc::clone(&region), Arc::new(resolver), 0)?;
    let summary = time_faults(&region);
    drop(engine);
    drop(pair);
    summary
}

fn time_local_faults() -> anyhow::Result<Summary> {
    let region = Arc::new(UffdRegion::new(fault_address(1), PAGES, Delivery::Thread)?);
    let pages = (0..PAGES)
        .map(|i| [i.to_le_bytes()[0] | 1; PAGE_SIZE])
        .collect();
    let resolver = Arc::new(LocalResolver { pages });
    let engine = FaultServer::start_with_workers(Arc::clone(&region), resolver, 0)?;
    let summary = time_faults(&region);
    drop(engine);
    summary
}

/// perftest's figures for one run.
#[derive(Debug, Clone, Copy)]
pub struct Perftest {
    /// `t_typical[usec]`.
    pub typical: f64,
    /// `99% percentile[usec]`.
    pub p99: f64,
}

/// The `ib_read_lat` command line (server side; the client adds the server's address).
pub fn ib_read_lat_args(device: &str, gid_index: u8, iterations: usize) -> Vec<String> {
    let args = [
        "-d",
        device,
        "-x",
        &gid_index.to_string(),
        "-s",
        "4096",
        "-F",
        "-p",
        "18515",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["-n".into(), iterations.to_string()]);
    args
}

/// Runs `ib_read_lat -s 4096` (server and client on this machine) and parses its result line.
pub fn run_ib_read_lat(device: &str, gid_index: u8) -> anyhow::Result<Perftest> {
    let args = ib_read_lat_args(device, gid_index, READS);
    let mut server = Command::new("ib_read_lat")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ib_read_lat (apt-get install perftest)")?;
    let result = run_client(&args);
    stop(&mut server);
    result
}

fn run_client(args: &[String]) -> anyhow::Result<Perftest> {
    // The server needs a moment to listen: retry the client a bounded number of times.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let output = Command::new("ib_read_lat")
            .args(args)
            .arg("127.0.0.1")
            .output()?;
        if output.status.success() {
            return parse_ib_read_lat(&String::from_utf8_lossy(&output.stdout));
        }
    }
    bail!("the ib_read_lat client never completed against its server")
}

fn stop(server: &mut Child) {
    for _ in 0..100 {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Parses perftest's result row: bytes, iterations, t_min, t_max, t_typical, t_avg, t_stdev,
/// 99%, 99.9%.
pub fn parse_ib_read_lat(output: &str) -> anyhow::Result<Perftest> {
    for line in output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 9 && fields[0] == "4096" {
            return Ok(Perftest {
                typical: fields[4].parse()?,
                p99: fields[7].parse()?,
            });
        }
    }
    bail!("no 4096-byte result row in ib_read_lat's output:\n{output}")
}

fn figure(summary: Summary) -> Value {
    json!({ "median": summary.median, "p99": summary.p99 })
}

/// The GID index the transports use: `DSM_RDMA_GID_INDEX`, else 1 (Soft-RoCE's IPv4 GID).
fn gid_index() -> u8 {
    std::env::var("DSM_RDMA_GID_INDEX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Runs the suite and returns its JSON report.
pub fn run() -> anyhow::Result<Value> {
    let device = dsm_rdma::device_names().map_err(no_device_hint)?.remove(0);
    let page_read = time_page_reads()?;
    let perftest = run_ib_read_lat(&device, gid_index())?;
    let remote_fault = time_remote_faults()?;
    let local_fault = time_local_faults()?;
    Ok(json!({
        "suite": "rdma",
        "unit": "us",
        "device": device,
        "transport_spin_us": RdmaConfig::from_env(CLUSTER).spin.as_micros(),
        "page_reads": READS,
        "faults": PAGES as usize * ROUNDS,
        "page_read": figure(page_read),
        "read_fault": figure(remote_fault),
        "local_fault": figure(local_fault),
        "ib_read_lat": { "median": perftest.typical, "p99": perftest.p99,
                         "command": format!("ib_read_lat {}", ib_read_lat_args(&device, gid_index(), READS).join(" ")) },
        "ratio_page_read_to_ib_read_lat": page_read.median / perftest.typical,
        "ratio_read_fault_to_ib_read_lat_plus_local_fault":
            remote_fault.median / (perftest.typical + local_fault.median),
        "target_ratio_read_fault": 1.3,
        "note": "Soft-RoCE under an emulated CPU: only the ratios mean anything",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perftest_result_row_is_parsed() {
        let output = "\
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
 4096       2000          180.12         950.33       251.40             260.01        30.20             410.50                  900.10   
";
        let parsed = parse_ib_read_lat(output).unwrap();
        assert_eq!((parsed.typical, parsed.p99), (251.40, 410.50));
        assert!(parse_ib_read_lat("nothing here").is_err());
    }
}
