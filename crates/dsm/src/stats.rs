//! Per-node counters and the fault-latency histogram: atomics only, so that any thread (the
//! fault path included) can record without a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a node's counters ([`Node::stats`](crate::Node::stats)).
///
/// `Display` gives the one-line summary the examples print; [`to_json`](Self::to_json) one
/// JSON object for tools. New counters may be added in any release (`#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Read faults taken on this node.
    pub read_faults: u64,
    /// Write faults taken on this node (missing page written, or write to a read-only copy).
    pub write_faults: u64,
    /// Pages fetched from a home (two-sided grants with data or one-sided reads).
    pub pages_fetched: u64,
    /// Of the pages installed here, those mapped from their same-host home's master copy
    /// itself rather than copied ([`ConfigBuilder::map_masters`](crate::ConfigBuilder::map_masters)).
    pub pages_mapped: u64,
    /// Bytes sent (frames on the transport).
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Invalidation requests this node sent (as a home, sequential mode).
    pub invalidations_sent: u64,
    /// Pages this node invalidated: on a home's request (sequential mode), dropped at a
    /// barrier (`copies_dropped`, sequential mode) or named by a write notice at an acquire
    /// (release mode).
    pub invalidations_received: u64,
    /// Sequential mode: read-only copies this node dropped at barriers, unasked, because
    /// other nodes' writes had taken them before
    /// ([`ConfigBuilder::barrier_drops`](crate::ConfigBuilder::barrier_drops)).
    pub copies_dropped: u64,
    /// Pages whose diffs were sent to their homes (release mode; each page of a batch counts).
    pub diffs_sent: u64,
    /// Release mode: pages whose diffs this node merged into a same-host home's master copy
    /// itself, in place (no message, no ack; not counted in `diffs_sent`).
    pub diffs_merged_in_place: u64,
    /// Release mode: pages the scans at releases and acquires found written
    /// ([`WriteTracking::Scan`](crate::WriteTracking::Scan); 0 with write faults).
    pub pages_found_written: u64,
    /// Release mode: pages whose changes were published: diffs sent home plus home pages
    /// merged into their master copy in place.
    pub pages_diffed: u64,
    /// Release mode: bytes of twins held now (one 4 KiB twin per tracked or written page).
    pub twin_bytes: u64,
    /// Locks acquired.
    pub lock_acquires: u64,
    /// Sequential mode: pages passed on at the release of a lock another node waited for,
    /// written under the lock: handed back to their homes, or pushed to that node from here
    /// ([`ConfigBuilder::lock_hand_back`](crate::ConfigBuilder::lock_hand_back)).
    pub pages_passed_on: u64,
    /// Barriers passed.
    pub barriers: u64,
    /// Median fault service time, nanoseconds (0 when no fault was timed): from the moment
    /// the runtime took the fault to the install or upgrade that resumes the thread, remote
    /// round trip included; the kernel's delivery and the thread's wake-up (measured by
    /// `dsm-bench uffd`) come on top. Thread delivery starts the clock when the coherence
    /// engine gets the fault on the reader thread; signal delivery starts it in the SIGBUS
    /// handler, so it also counts the hand-over to the driver thread (figures of the two
    /// deliveries are not directly comparable).
    pub fault_latency_p50_ns: u64,
    /// 99th-percentile fault service time, nanoseconds.
    pub fault_latency_p99_ns: u64,
    /// How release-mode regions find written pages on this node: what was asked
    /// (`DSM_WRITE_TRACKING`) and the kernel allowed.
    pub write_tracking: crate::WriteTracking,
    /// The priority the node's data-path threads run at: what
    /// [`ConfigBuilder::service_priority`](crate::ConfigBuilder::service_priority) asked
    /// for, or the closest the process was allowed.
    pub service_priority: crate::ServicePriority,
    /// Peers this node exchanges messages with through shared memory (same host, paired at
    /// join; see `DSM_TRANSPORT`); the others are reached by the network.
    pub shm_peers: u32,
}

impl Stats {
    /// Every counter as `(name, value)`, in declaration order: the JSON form's fields.
    pub fn fields(&self) -> [(&'static str, u64); 20] {
        [
            ("read_faults", self.read_faults),
            ("write_faults", self.write_faults),
            ("pages_fetched", self.pages_fetched),
            ("pages_mapped", self.pages_mapped),
            ("bytes_sent", self.bytes_sent),
            ("bytes_received", self.bytes_received),
            ("messages_sent", self.messages_sent),
            ("invalidations_sent", self.invalidations_sent),
            ("invalidations_received", self.invalidations_received),
            ("copies_dropped", self.copies_dropped),
            ("diffs_sent", self.diffs_sent),
            ("diffs_merged_in_place", self.diffs_merged_in_place),
            ("pages_found_written", self.pages_found_written),
            ("pages_diffed", self.pages_diffed),
            ("twin_bytes", self.twin_bytes),
            ("lock_acquires", self.lock_acquires),
            ("pages_passed_on", self.pages_passed_on),
            ("barriers", self.barriers),
            ("fault_latency_p50_ns", self.fault_latency_p50_ns),
            ("fault_latency_p99_ns", self.fault_latency_p99_ns),
        ]
    }

    /// One JSON object with every counter (`{"read_faults":12,...}`), the write tracking in
    /// use (`"write_tracking":"scan"`), the service threads' priority and the number of
    /// shared-memory peers, for tools.
    pub fn to_json(&self) -> String {
        let counters = json_object(&self.fields());
        let tracking = match self.write_tracking {
            crate::WriteTracking::Scan => "scan",
            crate::WriteTracking::Faults => "faults",
        };
        format!(
            "{},\"write_tracking\":\"{tracking}\",\"service_priority\":\"{}\",\"shm_peers\":{}}}",
            &counters[..counters.len() - 1],
            self.service_priority.env_value(),
            self.shm_peers
        )
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "faults {} read / {} write (p50 {:.1} us, p99 {:.1} us), {} pages fetched, \
             {} messages ({} B out, {} B in), invalidations {} sent / {} received \
             ({} copies dropped), {} diffs, \
             {} lock acquires ({} pages passed on), {} barriers",
            self.read_faults,
            self.write_faults,
            micros(self.fault_latency_p50_ns),
            micros(self.fault_latency_p99_ns),
            self.pages_fetched,
            self.messages_sent,
            self.bytes_sent,
            self.bytes_received,
            self.invalidations_sent,
            self.invalidations_received,
            self.copies_dropped,
            self.diffs_sent,
            self.lock_acquires,
            self.pages_passed_on,
            self.barriers,
        )
    }
}

/// Nanoseconds as fractional microseconds, for display only.
#[allow(clippy::cast_precision_loss)]
fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// `{"name":value,...}`: names are fixed identifiers (no escaping needed), values integers.
fn json_object(fields: &[(&str, u64)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("\"{name}\":{value}"))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A snapshot of one region's counters ([`Region::stats`](crate::Region::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegionStats {
    /// Read faults taken on this region on this node.
    pub read_faults: u64,
    /// Write faults taken on this region on this node.
    pub write_faults: u64,
    /// Pages of this region fetched from other nodes.
    pub pages_fetched: u64,
}

impl RegionStats {
    /// One JSON object with every counter, for tools.
    pub fn to_json(&self) -> String {
        json_object(&[
            ("read_faults", self.read_faults),
            ("write_faults", self.write_faults),
            ("pages_fetched", self.pages_fetched),
        ])
    }
}

impl std::fmt::Display for RegionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "faults {} read / {} write, {} pages fetched",
            self.read_faults, self.write_faults, self.pages_fetched
        )
    }
}

/// The live counters of one region (shared by its fault resolver and the coherence glue).
#[derive(Debug, Default)]
pub(crate) struct RegionCounters {
    pub(crate) read_faults: AtomicU64,
    pub(crate) write_faults: AtomicU64,
    pub(crate) pages_fetched: AtomicU64,
}

impl RegionCounters {
    pub(crate) fn snapshot(&self) -> RegionStats {
        RegionStats {
            read_faults: self.read_faults.load(Relaxed),
            write_faults: self.write_faults.load(Relaxed),
            pages_fetched: self.pages_fetched.load(Relaxed),
        }
    }
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) read_faults: AtomicU64,
    pub(crate) write_faults: AtomicU64,
    pub(crate) pages_fetched: AtomicU64,
    pub(crate) pages_mapped: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) invalidations_sent: AtomicU64,
    pub(crate) invalidations_received: AtomicU64,
    pub(crate) copies_dropped: AtomicU64,
    pub(crate) diffs_sent: AtomicU64,
    pub(crate) diffs_merged_in_place: AtomicU64,
    pub(crate) pages_found_written: AtomicU64,
    pub(crate) pages_diffed: AtomicU64,
    pub(crate) twin_bytes: AtomicU64,
    /// Set once at join: release regions find written pages by scanning.
    pub(crate) scan_writes: std::sync::atomic::AtomicBool,
    pub(crate) lock_acquires: AtomicU64,
    pub(crate) pages_passed_on: AtomicU64,
    pub(crate) barriers: AtomicU64,
    pub(crate) fault_latency: Histogram,
}

impl Counters {
    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }

    /// Adds the size of `message`'s frame (header + body, as it travels) to `bytes`.
    pub(crate) fn count(bytes: &AtomicU64, message: &dsm_wire::Message) {
        // Counted, not encoded: this runs for every message on the driver thread.
        bytes.fetch_add(message.encoded_len() as u64, Relaxed);
    }

    /// A snapshot.
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Relaxed);
        Stats {
            read_faults: get(&self.read_faults),
            write_faults: get(&self.write_faults),
            pages_fetched: get(&self.pages_fetched),
            pages_mapped: get(&self.pages_mapped),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            messages_sent: get(&self.messages_sent),
            invalidations_sent: get(&self.invalidations_sent),
            invalidations_received: get(&self.invalidations_received),
            copies_dropped: get(&self.copies_dropped),
            diffs_sent: get(&self.diffs_sent),
            diffs_merged_in_place: get(&self.diffs_merged_in_place),
            pages_found_written: get(&self.pages_found_written),
            pages_diffed: get(&self.pages_diffed),
            twin_bytes: get(&self.twin_bytes),
            lock_acquires: get(&self.lock_acquires),
            pages_passed_on: get(&self.pages_passed_on),
            barriers: get(&self.barriers),
            fault_latency_p50_ns: self.fault_latency.percentile(0.50),
            fault_latency_p99_ns: self.fault_latency.percentile(0.99),
            write_tracking: if self.scan_writes.load(Relaxed) {
                crate::WriteTracking::Scan
            } else {
                crate::WriteTracking::Faults
            },
            // Not a counter: `Node::stats` fills it in from the node's service threads.
            service_priority: crate::ServicePriority::Nice(0),
            shm_peers: 0,
        }
    }
}

/// Sub-buckets per power of two: values are kept to within 1/8 (12.5 %).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB;

/// A log-linear histogram of nanosecond durations.
#[derive(Debug)]
pub(crate) struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    /// Records one duration.
    pub(crate) fn record(&self, ns: u64) {
        self.counts[bucket(ns)].fetch_add(1, Relaxed);
    }

    /// The `q` quantile (upper edge of its bucket), 0 when empty.
    pub(crate) fn percentile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        // ceil(q * total) as an integer rank in 1..=total, computed without float casts.
        let permille = (q * 1000.0).round().clamp(0.0, 1000.0);
        // Clamped to 0..=1000 just above: the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let permille = permille as u64;
        let rank = (total * permille).div_ceil(1000).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_edge(i);
            }
        }
        upper_edge(BUCKETS - 1)
    }
}

fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return usize::try_from(ns).expect("small");
    }
    let log = 63 - ns.leading_zeros();
    let sub = (ns >> (log - SUB_BITS)) & (SUB as u64 - 1);
    let index = (log - SUB_BITS + 1) as usize * SUB + usize::try_from(sub).expect("small");
    index.min(BUCKETS - 1)
}

fn upper_edge(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let log = u32::try_from(index / SUB).expect("small") + SUB_BITS - 1;
    let sub = (index % SUB) as u64;
    let base = 1u64 << log;
    base + (sub + 1) * (base >> SUB_BITS) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line_and_as_json_with_every_counter() {
        let stats = Stats {
            read_faults: 3,
            pages_fetched: 2,
            fault_latency_p50_ns: 1500,
            ..Stats::default()
        };
        let line = stats.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("faults 3 read / 0 write (p50 1.5 us"),
            "{line}"
        );
        assert!(line.contains("2 pages fetched"), "{line}");
        let json = stats.to_json();
        assert!(json.starts_with("{\"read_faults\":3,"), "{json}");
        assert!(json.contains("\"fault_latency_p50_ns\":1500"), "{json}");
        assert_eq!(
            json.matches(':').count(),
            stats.fields().len() + 3,
            "{json}"
        );
        assert!(json.contains("\"shm_peers\":0"), "{json}");
        assert!(json.contains("\"write_tracking\":\"faults\""), "{json}");
        assert!(json.contains("\"service_priority\":\"realtime\""), "{json}");
        assert!(json.ends_with('}'));
    }

    #[test]
    fn percentiles_are_within_an_eighth() {
        let h = Histogram::default();
        for ns in 1..=1000u64 {
            h.record(ns * 1000);
        }
        let p50 = h.percentile(0.5) as f64;
        let p99 = h.percentile(0.99) as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.125, "{p50}");
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.125, "{p99}");
        assert_eq!(Histogram::default().percentile(0.5), 0);
    }

    #[test]
    fn buckets_are_monotonic_and_edges_contain_their_values() {
        let mut last = 0;
        for ns in [0u64, 1, 7, 8, 9, 15, 16, 100, 4095, 4096, 1 << 40, u64::MAX] {
            let b = bucket(ns);
            assert!(b >= last);
            assert!(upper_edge(b) >= ns.min(upper_edge(BUCKETS - 1)), "{ns}");
            last = b;
        }
    }

    #[test]
    fn a_message_counts_as_its_whole_frame() {
        let bytes = AtomicU64::new(0);
        let message = dsm_wire::Message::Coherence(dsm_wire::Coherence::WriteBack {
            req: 1,
            page: dsm_wire::PageId { region: 0, page: 3 },
            data: Box::new([7; dsm_wire::PAGE_SIZE]),
        });
        Counters::count(&bytes, &message);
        Counters::count(&bytes, &message);
        let frame = dsm_wire::encode(&message, 0, 1).len() as u64;
        assert_eq!(bytes.load(Relaxed), 2 * frame);
    }

    #[test]
    fn snapshot_reads_every_counter() {
        let c = Counters::default();
        Counters::bump(&c.barriers);
        Counters::bump(&c.read_faults);
        c.fault_latency.record(20_000);
        let s = c.snapshot();
        assert_eq!((s.barriers, s.read_faults, s.write_faults), (1, 1, 0));
        assert!(s.fault_latency_p50_ns >= 20_000 && s.fault_latency_p99_ns < 23_000);
    }
}
