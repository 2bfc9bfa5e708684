//! `dsm-bench uffd --json` (issue #3): fault service of the userfaultfd engine against the
//! kernel work it cannot avoid, all measured in the same run.
//!
//! Figures (ns, median and p99 over every page of a 32 MiB region, several rounds):
//! - `read_fault_*`: first read of a missing page → resolver copies it in (COPY_MODE_WP) →
//!   the thread resumes; `wp_fault_*`: first write to that page → WRITEPROTECT clear →
//!   resumes; for SIGBUS delivery (the default), thread delivery with one worker, and thread
//!   delivery with the reader resolving inline (`_thread_inline`, no worker);
//! - `read_fault_signal_around16_per_page`: the resolver installs the 16-page aligned run
//!   holding the fault with one COPY (fault-around), timed per 16 pages read, divided by 16;
//! - `*_zero_copy`: the same on a memfd region whose shadow stays allocated (as memory
//!   registered with a NIC would), unmapped between rounds with `invalidate_mapping`; the
//!   resolver writes the page into the shadow (standing in for the NIC's write, so this
//!   counts a 4 KiB copy the NIC would spare) and maps it with UFFDIO_CONTINUE;
//!   baselines `bare_continue_wp` and `bare_copy_wp_shmem` on such a region;
//! - `invalidate`: `MADV_DONTNEED` of one installed page;
//! - baselines: `bare_copy` (UFFDIO_COPY, mode 0, no thread waiting), `bare_copy_wp` (the
//!   same with MODE_WP, what the read-fault path does), `bare_write_protect_clear`,
//!   `memcpy_4k`, `first_touch_anon_read` (first read of plain anonymous memory),
//!   `signal_round_trip` (tgkill to self, empty SA_SIGINFO handler);
//! - ratios of medians: `ratio_read_fault_to_copy` (against `bare_copy_wp`),
//!   `ratio_read_fault_to_floor` (against first touch + signal + COPY_WP: the floor of
//!   in-thread resolution), `ratio_thread_to_signal_read_fault`,
//!   `ratio_thread_inline_to_signal_read_fault`, `ratio_around16_per_page_to_copy`,
//!   `ratio_zero_copy_to_copy_read_fault`, `ratio_continue_to_copy_shmem`,
//!   `ratio_async_write_to_wp_fault_thread` (issue #11: see `uffd/tracking.rs` for
//!   `async_write_first`, `scan_per_page` and `twin_copy`).

mod tracking;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use dsm_uffd::{
    Delivery, Fault, FaultKind, FaultResolver, FaultServer, Protection, Resolution, UffdRegion,
};
use dsm_wire::PAGE_SIZE;
use serde_json::{Value, json};

use crate::stats::{Summary, round, summarize};

/// Pages per measured region (32 MiB).
pub const PAGES: u32 = 8192;
/// Rounds over the region per figure (invalidate between rounds).
const ROUNDS: usize = 2;
/// Address slot of the tracked region (issue #11's figures).
const TRACKING_SLOT: usize = 12;
/// Pages installed per fault with fault-around.
pub const AROUND: u32 = 16;

/// Where the suite maps its regions (away from the tests' addresses).
pub fn bench_address(slot: usize) -> usize {
    0x7d00_0000_0000 + slot * 0x10_0000_0000
}

/// Serves faults from pages prepared before, installing `around` pages per read fault.
pub struct BenchSource {
    home: Box<[[u8; PAGE_SIZE]]>,
    around: u32,
    zero_copy: bool,
}

impl BenchSource {
    /// `pages` pages of non-zero data; `around` pages per read fault (1: none); with
    /// `zero_copy` (shared regions) pages are written to the shadow (standing in for the
    /// NIC's write) and mapped with UFFDIO_CONTINUE.
    pub fn new(pages: u32, around: u32, zero_copy: bool) -> BenchSource {
        let home = (0..pages)
            .map(|page| [page.to_le_bytes()[0] | 1; PAGE_SIZE])
            .collect::<Vec<_>>()
            .into_boxed_slice();
        BenchSource {
            home,
            around,
            zero_copy,
        }
    }

    fn read(&self, page: u32, region: &UffdRegion) -> dsm_uffd::Result<()> {
        if self.zero_copy {
            region.write_shadow(page, &self.home[page as usize])?;
            return region
                .install_continue(page, Protection::ReadOnly)
                .map(drop);
        }
        if self.around <= 1 {
            return region
                .install_read_only(page, &self.home[page as usize])
                .map(drop);
        }
        let first = page - page % self.around;
        let count = self.around.min(region.pages() - first);
        let run = self.home[first as usize..(first + count) as usize].as_flattened();
        region
            .install_run(first, run, Protection::ReadOnly)
            .map(drop)
    }
}

impl std::fmt::Debug for BenchSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchSource")
            .field("pages", &self.home.len())
            .field("around", &self.around)
            .finish()
    }
}

impl FaultResolver for BenchSource {
    fn resolve(&self, fault: Fault, region: &UffdRegion) -> Resolution {
        let done = match fault.kind {
            FaultKind::Read => self.read(fault.page, region),
            FaultKind::Write => region
                .install_read_write(fault.page, &self.home[fault.page as usize])
                .map(drop),
            FaultKind::WriteProtect => region.upgrade(fault.page),
        };
        if done.is_ok() {
            Resolution::Resolved
        } else {
            Resolution::Fail
        }
    }
}

/// How a measured region is made and served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Fault delivery.
    pub delivery: Delivery,
    /// Worker threads for thread delivery (0: the reader resolves).
    pub workers: usize,
    /// Pages installed per read fault.
    pub around: u32,
    /// A memfd region served zero-copy (shadow write + UFFDIO_CONTINUE).
    pub shared: bool,
}

impl ServeOptions {
    /// SIGBUS delivery, one page per fault, anonymous memory.
    pub fn signal() -> ServeOptions {
        ServeOptions {
            delivery: Delivery::Signal,
            workers: 0,
            around: 1,
            shared: false,
        }
    }

    /// Thread delivery with `workers` workers.
    pub fn thread(workers: usize) -> ServeOptions {
        ServeOptions {
            delivery: Delivery::Thread,
            workers,
            ..ServeOptions::signal()
        }
    }
}

/// A served region and its engine.
#[derive(Debug)]
pub struct Served {
    /// The region (kept alive by the engine too).
    pub region: Arc<UffdRegion>,
    _engine: FaultServer,
}

impl Served {
    /// Maps `PAGES` pages at `address` and serves them as `options` say.
    pub fn new(address: usize, options: ServeOptions) -> anyhow::Result<Served> {
        let region = if options.shared {
            UffdRegion::new_shared(address, PAGES, options.delivery)?
        } else {
            UffdRegion::new(address, PAGES, options.delivery)?
        };
        let region = Arc::new(region);
        let source = Arc::new(BenchSource::new(PAGES, options.around, options.shared));
        let engine = FaultServer::start_with_workers(Arc::clone(&region), source, options.workers)?;
        if options.shared {
            // The pages a NIC writes into stay allocated (registered memory): populate the
            // shadow once, untimed; callers re-arm with `invalidate_mapping`, which keeps it.
            for index in 0..PAGES {
                region.write_shadow(index, &[1; PAGE_SIZE])?;
            }
        }
        Ok(Served {
            region,
            _engine: engine,
        })
    }

    /// Reads one byte of page `index`, faulting it in if missing.
    pub fn read(&self, index: u32) -> u8 {
        let address = self.region.page_address(index).expect("page in range");
        // SAFETY: a page of the live, served region; a missing page is faulted in.
        unsafe { (address as *const u8).read_volatile() }
    }

    /// Writes one byte of page `index`, faulting if missing or write-protected.
    pub fn write(&self, index: u32) {
        let address = self.region.page_address(index).expect("page in range");
        // SAFETY: as in `read`.
        unsafe { (address as *mut u8).write_volatile(1) }
    }
}

/// Nanoseconds `f` took.
pub fn time_ns(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_nanos() as f64
}

/// Read and write (WP) fault service of `PAGES` pages, `ROUNDS` times, on a region at
/// `bench_address(slot)` served as `options` say: nanoseconds per fault. Also the local
/// floor of the `latency` suite, measured inside its node processes.
pub(crate) fn fault_service(
    options: ServeOptions,
    slot: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let served = Served::new(bench_address(slot), options)?;
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for index in 0..PAGES {
            reads.push(time_ns(|| {
                black_box(served.read(index));
            }));
        }
        for index in 0..PAGES {
            writes.push(time_ns(|| served.write(index)));
        }
        served.region.invalidate_mapping(0, PAGES)?;
    }
    Ok((reads, writes))
}

fn fault_around(slot: usize) -> anyhow::Result<Vec<f64>> {
    let options = ServeOptions {
        around: AROUND,
        ..ServeOptions::signal()
    };
    let served = Served::new(bench_address(slot), options)?;
    let mut per_page = Vec::new();
    for _ in 0..ROUNDS {
        for first in (0..PAGES).step_by(AROUND as usize) {
            let ns = time_ns(|| {
                for index in first..first + AROUND {
                    black_box(served.read(index));
                }
            });
            per_page.push(ns / f64::from(AROUND));
        }
        served.region.invalidate(0, PAGES)?;
    }
    Ok(per_page)
}

/// UFFDIO_COPY (and WRITEPROTECT clear, and DONTNEED) with nobody waiting: an unserved
/// region, installs made by this thread.
fn kernel_baselines(slot: usize) -> anyhow::Result<[Vec<f64>; 4]> {
    let region = UffdRegion::new(bench_address(slot), PAGES, Delivery::Thread)?;
    let data = [7u8; PAGE_SIZE];
    let [mut copy, mut copy_wp, mut clear, mut invalidate] = [(); 4].map(|()| Vec::new());
    for round in 0..ROUNDS * 2 {
        let wp = round % 2 == 1;
        for index in 0..PAGES {
            let ns = time_ns(|| {
                let result = if wp {
                    region.install_read_only(index, &data)
                } else {
                    region.install_read_write(index, &data)
                };
                result.expect("UFFDIO_COPY");
            });
            if wp { &mut copy_wp } else { &mut copy }.push(ns);
        }
        for index in (0..PAGES).filter(|_| wp) {
            clear.push(time_ns(|| region.upgrade(index).expect("WRITEPROTECT")));
        }
        for index in 0..PAGES {
            invalidate.push(time_ns(|| region.invalidate(index, 1).expect("DONTNEED")));
        }
    }
    Ok([copy, copy_wp, clear, invalidate])
}

/// On a shared (memfd) region with nobody waiting: UFFDIO_CONTINUE(MODE_WP) of pages
/// written to the shadow before (untimed), against UFFDIO_COPY(MODE_WP) into the same
/// region.
fn continue_baselines(slot: usize) -> anyhow::Result<[Vec<f64>; 2]> {
    let region = UffdRegion::new_shared(bench_address(slot), PAGES, Delivery::Thread)?;
    let data = [7u8; PAGE_SIZE];
    let (mut continue_, mut copy) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for index in 0..PAGES {
            region.write_shadow(index, &data)?;
            continue_.push(time_ns(|| {
                region
                    .install_continue(index, Protection::ReadOnly)
                    .expect("UFFDIO_CONTINUE");
            }));
        }
        region.invalidate(0, PAGES)?;
        for index in 0..PAGES {
            copy.push(time_ns(|| {
                region.install_read_only(index, &data).expect("UFFDIO_COPY");
            }));
        }
        region.invalidate(0, PAGES)?;
    }
    Ok([continue_, copy])
}

/// First read of each page of fresh anonymous memory (maps the zero page).
fn first_touch() -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let len = PAGES as usize * PAGE_SIZE;
        // SAFETY: a fresh private anonymous mapping, unmapped below, touched only here.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        anyhow::ensure!(
            base != libc::MAP_FAILED,
            "mmap for the first-touch baseline failed"
        );
        let base = base.cast::<u8>();
        for index in 0..PAGES as usize {
            let page = base.wrapping_add(index * PAGE_SIZE);
            samples.push(time_ns(|| {
                // SAFETY: a page of the mapping above, still mapped.
                black_box(unsafe { page.read_volatile() });
            }));
        }
        // SAFETY: the mapping made above; nothing refers to it any more.
        unsafe { libc::munmap(base.cast(), len) };
    }
    Ok(samples)
}

fn memcpy_4k() -> Vec<f64> {
    const BATCH: usize = 64;
    let source = vec![3u8; PAGE_SIZE * BATCH];
    let mut target = vec![0u8; PAGE_SIZE * BATCH];
    (0..4096)
        .map(|_| {
            let ns = time_ns(|| {
                for (t, s) in target
                    .chunks_exact_mut(PAGE_SIZE)
                    .zip(source.chunks_exact(PAGE_SIZE))
                {
                    t.copy_from_slice(black_box(s));
                }
            });
            black_box(&target);
            ns / BATCH as f64
        })
        .collect()
}

extern "C" fn empty_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// tgkill to this thread with an empty SA_SIGINFO handler: the kernel's signal delivery and
/// return, the part of SIGBUS delivery a fault adds.
fn signal_round_trip() -> anyhow::Result<Vec<f64>> {
    // SAFETY: zeroed is a valid sigaction; the handler is a valid extern "C" fn for the
    // process lifetime; SIGUSR2 is not used elsewhere in this benchmark process.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = empty_handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut())
    };
    anyhow::ensure!(installed == 0, "sigaction(SIGUSR2) failed");
    // SAFETY: getpid/gettid have no preconditions.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    Ok((0..PAGES as usize * ROUNDS)
        .map(|_| {
            time_ns(|| {
                // SAFETY: signals this thread; the handler above returns at once.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR2) };
            })
        })
        .collect())
}

pub(crate) fn figure(
    name: &str,
    samples: &mut [f64],
    report: &mut serde_json::Map<String, Value>,
) -> Summary {
    let summary = summarize(samples);
    report.insert(format!("{name}_ns_median"), json!(round(summary.median)));
    report.insert(format!("{name}_ns_p99"), json!(round(summary.p99)));
    summary
}

/// Runs the suite and returns its JSON report.
pub fn run() -> anyhow::Result<serde_json::Value> {
    let mut report = serde_json::Map::new();
    report.insert("pages_per_round".into(), json!(PAGES));
    report.insert("rounds".into(), json!(ROUNDS));
    report.insert(
        "features".into(),
        json!(format!("{:?}", dsm_uffd::Features::probe()?)),
    );
    let faults = fault_figures(&mut report)?;
    let (async_write, _scan) = tracking::figures(TRACKING_SLOT, &mut report)?;
    let baselines = baseline_figures(&mut report)?;
    let floor = baselines.touch + baselines.signal + baselines.copy_wp;
    report.insert("floor_ns".into(), json!(round(floor)));
    let ratios = [
        ("ratio_read_fault_to_copy", faults.read / baselines.copy_wp),
        ("ratio_read_fault_to_floor", faults.read / floor),
        (
            "ratio_thread_to_signal_read_fault",
            faults.read_thread / faults.read,
        ),
        (
            "ratio_thread_inline_to_signal_read_fault",
            faults.read_inline / faults.read,
        ),
        (
            "ratio_zero_copy_to_copy_read_fault",
            faults.read_zero_copy / faults.read,
        ),
        (
            "ratio_continue_to_copy_shmem",
            faults.continue_ / faults.copy_shmem,
        ),
        (
            "ratio_around16_per_page_to_copy",
            faults.around / baselines.copy_wp,
        ),
        (
            "ratio_async_write_to_wp_fault_thread",
            async_write / faults.wp_thread,
        ),
    ];
    for (name, ratio) in ratios {
        report.insert(name.into(), json!(round(ratio)));
    }
    Ok(Value::Object(report))
}

/// Medians (ns) of the fault-service figures the ratios compare.
struct FaultMedians {
    read: f64,
    wp_thread: f64,
    read_thread: f64,
    read_inline: f64,
    read_zero_copy: f64,
    around: f64,
    continue_: f64,
    copy_shmem: f64,
}

/// Measures fault service in every delivery, fault-around and zero-copy (with its CONTINUE
/// baselines), and adds their figures to `report`.
fn fault_figures(report: &mut serde_json::Map<String, Value>) -> anyhow::Result<FaultMedians> {
    let (mut read_signal, mut wp_signal) = fault_service(ServeOptions::signal(), 0)?;
    let (mut read_thread, mut wp_thread) = fault_service(ServeOptions::thread(1), 1)?;
    let (mut read_inline, mut wp_inline) = fault_service(ServeOptions::thread(0), 8)?;
    let zero_copy = ServeOptions {
        shared: true,
        ..ServeOptions::signal()
    };
    let (mut read_zero_copy, mut wp_zero_copy) = fault_service(zero_copy, 9)?;
    let [mut continue_, mut copy_shmem] = continue_baselines(10)?;
    let mut around = fault_around(2)?;

    figure("wp_fault_signal", &mut wp_signal, report);
    let wp_thread = figure("wp_fault_thread", &mut wp_thread, report).median;
    figure("wp_fault_thread_inline", &mut wp_inline, report);
    figure("wp_fault_signal_zero_copy", &mut wp_zero_copy, report);
    Ok(FaultMedians {
        read: figure("read_fault_signal", &mut read_signal, report).median,
        wp_thread,
        read_thread: figure("read_fault_thread", &mut read_thread, report).median,
        read_inline: figure("read_fault_thread_inline", &mut read_inline, report).median,
        read_zero_copy: figure("read_fault_signal_zero_copy", &mut read_zero_copy, report).median,
        around: figure("read_fault_signal_around16_per_page", &mut around, report).median,
        continue_: figure("bare_continue_wp", &mut continue_, report).median,
        copy_shmem: figure("bare_copy_wp_shmem", &mut copy_shmem, report).median,
    })
}

/// Medians (ns) of the kernel baselines the ratios compare.
struct BaselineMedians {
    copy_wp: f64,
    touch: f64,
    signal: f64,
}

/// Measures the kernel work a fault cannot avoid, and adds its figures to `report`.
fn baseline_figures(
    report: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<BaselineMedians> {
    let [mut copy, mut copy_wp, mut clear, mut invalidate] = kernel_baselines(3)?;
    let mut touch = first_touch()?;
    let mut memcpy = memcpy_4k();
    let mut signal = signal_round_trip()?;

    figure("invalidate", &mut invalidate, report);
    figure("bare_copy", &mut copy, report);
    figure("bare_write_protect_clear", &mut clear, report);
    figure("memcpy_4k", &mut memcpy, report);
    Ok(BaselineMedians {
        copy_wp: figure("bare_copy_wp", &mut copy_wp, report).median,
        touch: figure("first_touch_anon_read", &mut touch, report).median,
        signal: figure("signal_round_trip", &mut signal, report).median,
    })
}
