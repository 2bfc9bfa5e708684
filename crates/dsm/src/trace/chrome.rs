//! Turns a node's records into Chrome trace JSON (the "JSON object format" Perfetto and
//! `chrome://tracing` open): one complete event (`"ph":"X"`) per fault, home service, lock
//! wait, lock grant and barrier, with its hops in `args.hops` (absolute monotonic ns and
//! µs since the event began) and, nested in it on the same track, one complete event per
//! hop-to-hop segment. `pid` is the rank; `tid` the kernel id of the thread the event began
//! on (the faulting thread or uffd reader, the thread that called acquire or barrier).
//! Requests served for other nodes (a home's page service, a lock's grant) go on two
//! tracks of their own (tids [`SERVED_TRACK`] and [`GRANTED_TRACK`]), because they start on
//! the transport thread and may end on another, and would not nest with its other events.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use dsm_wire::NodeId;
use serde_json::{Value, json};

use super::Hop;
use super::buffer::Record;

/// Track of the page requests a home served (`tid` in the file).
pub(crate) const SERVED_TRACK: u32 = 0x7fff_0001;
/// Track of the lock requests this node granted.
pub(crate) const GRANTED_TRACK: u32 = 0x7fff_0002;

/// What a node recorded, to be written.
#[derive(Debug)]
pub(super) struct Trace {
    pub(super) rank: NodeId,
    /// Faults end at "thread resumed" (SIGBUS delivery) rather than "install issued".
    pub(super) signal: bool,
    pub(super) records: Vec<Record>,
    pub(super) dropped: u64,
    pub(super) capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Fault { write: bool },
    Serve { write: bool },
    Lock,
    Grant,
    Barrier,
}

/// One event being assembled: its hops in time order.
#[derive(Debug)]
struct Span {
    kind: Kind,
    id: u64,
    tid: u32,
    /// The home (fault), the requester (serve, grant).
    peer: Option<u16>,
    hops: Vec<(Hop, u64, Option<u16>)>,
    complete: bool,
}

impl Span {
    fn has(&self, hop: Hop) -> bool {
        self.hops.iter().any(|(h, _, _)| *h == hop)
    }
}

/// Assembles records (sorted by time) into spans: each hop joins the oldest open span of
/// its kind and id that it fits; a hop with no such span is left out.
#[derive(Debug, Default)]
struct Builder {
    spans: Vec<Span>,
    open: HashMap<(u8, u64), Vec<usize>>,
}

fn class(kind: Kind) -> u8 {
    match kind {
        Kind::Fault { .. } => 0,
        Kind::Serve { .. } => 1,
        Kind::Lock => 2,
        Kind::Grant => 3,
        Kind::Barrier => 4,
    }
}

impl Builder {
    fn begin(&mut self, kind: Kind, r: &Record) {
        let index = self.spans.len();
        self.spans.push(Span {
            kind,
            id: r.id,
            tid: r.tid,
            peer: r.peer,
            hops: vec![(r.hop, r.ns, r.peer)],
            complete: false,
        });
        self.open
            .entry((class(kind), r.id))
            .or_default()
            .push(index);
    }

    /// The open spans of `class` and `id`, oldest first.
    fn open_of(&self, class: u8, id: u64) -> Vec<usize> {
        self.open.get(&(class, id)).cloned().unwrap_or_default()
    }

    /// Adds `r` to the first open span of `class`/`id` that `fits`; ends it when `end`.
    fn join(&mut self, class: u8, r: &Record, fits: impl Fn(&Span) -> bool, end: bool) {
        let Some(index) = self
            .open_of(class, r.id)
            .into_iter()
            .find(|&i| fits(&self.spans[i]))
        else {
            return;
        };
        let span = &mut self.spans[index];
        span.hops.push((r.hop, r.ns, r.peer));
        if end {
            span.complete = true;
            if let Some(open) = self.open.get_mut(&(class, r.id)) {
                open.retain(|&i| i != index);
            }
        }
    }

    fn add(&mut self, r: &Record, signal: bool) {
        match r.hop {
            Hop::FaultRaisedRead => self.begin(Kind::Fault { write: false }, r),
            Hop::FaultRaisedWrite => self.begin(Kind::Fault { write: true }, r),
            Hop::FaultRequestSent => {
                let index = self
                    .open_of(0, r.id)
                    .into_iter()
                    .find(|&i| !self.spans[i].has(Hop::FaultRequestSent));
                if let Some(index) = index {
                    self.spans[index].peer = r.peer;
                }
                self.join(0, r, |s| !s.has(Hop::FaultRequestSent), false);
            }
            Hop::FaultTaken | Hop::FaultReplyReceived => self.join(0, r, |s| !s.has(r.hop), false),
            Hop::FaultInstalled => {
                // Every thread waiting on the page is woken by the one install.
                for _ in self.open_of(0, r.id) {
                    self.join(0, r, |s| !s.has(Hop::FaultInstalled), !signal);
                }
            }
            Hop::FaultResumed => {
                let tid = r.tid;
                self.join(0, r, |s| s.tid == tid, true);
            }
            // Thread delivery: ends a fault that got no install (under signal delivery its
            // thread's resumption ends it).
            Hop::FaultDone if !signal => {
                self.join(0, r, |s| !s.has(Hop::FaultInstalled), true);
            }
            Hop::FaultDone => {}
            Hop::HomeReadReceived => self.begin(Kind::Serve { write: false }, r),
            Hop::HomeWriteReceived => self.begin(Kind::Serve { write: true }, r),
            Hop::HomeReplySent => self.join(1, r, |s| s.peer == r.peer, true),
            Hop::LockCalled => self.begin(Kind::Lock, r),
            Hop::LockRequestSent | Hop::LockGrantReceived => self.join(2, r, |_| true, false),
            Hop::LockAcquired => self.join(2, r, |s| s.tid == r.tid, true),
            Hop::LockRequestReceived => self.begin(Kind::Grant, r),
            Hop::LockGrantSent => self.join(3, r, |s| s.peer == r.peer, true),
            Hop::BarrierEnter => self.begin(Kind::Barrier, r),
            Hop::BarrierArriveSent | Hop::BarrierRoundReceived | Hop::BarrierComplete => {
                self.join(4, r, |_| true, false);
            }
            Hop::BarrierReturn => self.join(4, r, |_| true, true),
        }
    }
}

/// Microseconds (the trace format's unit) from nanoseconds, keeping the nanoseconds.
fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

impl Span {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Fault { write: false } => "read fault",
            Kind::Fault { write: true } => "write fault",
            Kind::Serve { write: false } => "serve read request",
            Kind::Serve { write: true } => "serve write request",
            Kind::Lock => "lock wait",
            Kind::Grant => "lock grant",
            Kind::Barrier => "barrier",
        }
    }

    fn category(&self) -> &'static str {
        match self.kind {
            Kind::Fault { .. } => "fault",
            Kind::Serve { .. } => "fault.home",
            Kind::Lock => "lock",
            Kind::Grant => "lock.grant",
            Kind::Barrier => "barrier",
        }
    }

    fn track(&self) -> u32 {
        match self.kind {
            Kind::Serve { .. } => SERVED_TRACK,
            Kind::Grant => GRANTED_TRACK,
            _ => self.tid,
        }
    }

    /// What the event is about, and the hops.
    fn args(&self) -> Value {
        let start = self.hops[0].1;
        let hops: Vec<Value> = self
            .hops
            .iter()
            .map(|&(hop, ns, peer)| {
                let mut hop = json!({
                    "hop": hop.name(),
                    "ns": ns,
                    "us": us(ns - start),
                });
                if let Some(peer) = peer {
                    hop["peer"] = json!(peer);
                }
                hop
            })
            .collect();
        let mut args = match self.kind {
            Kind::Fault { .. } | Kind::Serve { .. } => json!({
                "region": self.id >> 32,
                "page": self.id & 0xffff_ffff,
            }),
            Kind::Lock | Kind::Grant => json!({ "lock": self.id }),
            Kind::Barrier => json!({ "epoch": self.id }),
        };
        match (self.kind, self.peer) {
            (Kind::Fault { .. }, Some(home)) => args["home"] = json!(home),
            (Kind::Serve { .. } | Kind::Grant, Some(from)) => args["from"] = json!(from),
            _ => {}
        }
        args["tid"] = json!(self.tid);
        args["complete"] = json!(self.complete);
        args["hops"] = Value::Array(hops);
        args
    }

    /// The span's complete event, then one per hop-to-hop segment (nested in it).
    fn events(&self, rank: NodeId) -> Vec<Value> {
        let (start, end) = (self.hops[0].1, self.hops[self.hops.len() - 1].1);
        let (cat, tid) = (self.category(), self.track());
        let mut events = vec![json!({
            "name": self.name(),
            "cat": cat,
            "ph": "X",
            "ts": us(start),
            "dur": us(end - start),
            "pid": rank,
            "tid": tid,
            "args": self.args(),
        })];
        for pair in self.hops.windows(2) {
            let ((from, a, _), (to, b, _)) = (pair[0], pair[1]);
            events.push(json!({
                "name": format!("{} → {}", from.name(), to.name()),
                "cat": cat,
                "ph": "X",
                "ts": us(a),
                "dur": us(b - a),
                "pid": rank,
                "tid": tid,
            }));
        }
        events
    }
}

/// The kernel's name of thread `tid` of this process, while it lives.
fn thread_name(tid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
    Some(comm.trim_end().to_owned())
}

impl Trace {
    /// Assembles the spans (records sorted by time).
    fn spans(&mut self) -> Vec<Span> {
        self.records.sort_by_key(|r| r.ns);
        let mut builder = Builder::default();
        for record in &self.records {
            builder.add(record, self.signal);
        }
        builder.spans
    }

    /// Writes the trace to `file` (created or truncated).
    pub(super) fn write(mut self, file: &Path) -> std::io::Result<()> {
        let spans = self.spans();
        let mut out = BufWriter::new(File::create(file)?);
        out.write_all(b"{\"traceEvents\":[\n")?;
        let mut first = true;
        let mut emit = |out: &mut BufWriter<File>, event: &Value| -> std::io::Result<()> {
            if !first {
                out.write_all(b",\n")?;
            }
            first = false;
            serde_json::to_writer(&mut *out, event).map_err(std::io::Error::from)
        };
        for event in self.metadata(&spans) {
            emit(&mut out, &event)?;
        }
        for span in &spans {
            for event in span.events(self.rank) {
                emit(&mut out, &event)?;
            }
        }
        out.write_all(b"\n],\"displayTimeUnit\":\"ns\",\"otherData\":")?;
        let other = json!({
            "dsm_rank": self.rank,
            "clock": "CLOCK_MONOTONIC (ts in microseconds; args.hops[].ns in nanoseconds)",
            "fault_delivery": if self.signal { "signal" } else { "thread" },
            "records": self.records.len(),
            "records_dropped": self.dropped,
            "capacity": self.capacity,
        });
        serde_json::to_writer(&mut out, &other).map_err(std::io::Error::from)?;
        out.write_all(b"}\n")?;
        out.flush()
    }

    /// The process's name (`dsm rank R`) and each track's.
    fn metadata(&self, spans: &[Span]) -> Vec<Value> {
        let rank = self.rank;
        let meta = |tid: u32, name: String| {
            json!({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid,
                   "args": {"name": name}})
        };
        let mut events = vec![json!({
            "name": "process_name", "ph": "M", "pid": rank,
            "args": {"name": format!("dsm rank {rank}")},
        })];
        let tids: BTreeSet<u32> = spans.iter().map(Span::track).collect();
        for tid in tids {
            let name = match tid {
                SERVED_TRACK => "page requests served (home)".to_owned(),
                GRANTED_TRACK => "lock requests granted".to_owned(),
                tid => thread_name(tid).unwrap_or_else(|| format!("thread {tid}")),
            };
            events.push(meta(tid, name));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ns: u64, hop: Hop, id: u64, peer: Option<u16>, tid: u32) -> Record {
        Record {
            ns,
            hop,
            id,
            peer,
            tid,
        }
    }

    const PAGE: u64 = 3 << 32 | 40;

    #[test]
    fn a_remote_fault_is_one_span_with_its_hops_in_order() {
        let mut trace = Trace {
            rank: 0,
            signal: false,
            records: vec![
                record(500, Hop::FaultInstalled, PAGE, None, 9),
                record(100, Hop::FaultRaisedRead, PAGE, None, 7),
                record(150, Hop::FaultRequestSent, PAGE, Some(1), 7),
                record(400, Hop::FaultReplyReceived, PAGE, Some(1), 9),
                // A prefetched page's install opens nothing.
                record(510, Hop::FaultInstalled, PAGE + 1, None, 9),
            ],
            dropped: 0,
            capacity: 8,
        };
        let spans = trace.spans();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert!(span.complete);
        assert_eq!(span.peer, Some(1));
        let hops: Vec<_> = span.hops.iter().map(|(h, ns, _)| (*h, *ns)).collect();
        assert_eq!(
            hops,
            [
                (Hop::FaultRaisedRead, 100),
                (Hop::FaultRequestSent, 150),
                (Hop::FaultReplyReceived, 400),
                (Hop::FaultInstalled, 500)
            ]
        );
        let events = span.events(0);
        assert_eq!(events.len(), 4, "the span and three segments");
        assert_eq!(events[0]["args"]["page"], 40);
        assert_eq!(events[0]["args"]["region"], 3);
        assert_eq!(events[0]["args"]["home"], 1);
        assert_eq!(events[0]["dur"], 0.4);
        assert_eq!(events[1]["name"], "fault raised → request sent");
    }

    #[test]
    fn a_fault_woken_without_an_install_ends_there_and_takes_no_later_hop() {
        let mut trace = Trace {
            rank: 0,
            signal: false,
            records: vec![
                record(100, Hop::FaultRaisedRead, PAGE, None, 7),
                record(150, Hop::FaultDone, PAGE, None, 7),
                record(300, Hop::FaultRaisedRead, PAGE, None, 7),
                record(350, Hop::FaultRequestSent, PAGE, Some(1), 7),
                record(500, Hop::FaultInstalled, PAGE, None, 9),
                // The second fault's own wake comes after its install: nothing left to end.
                record(510, Hop::FaultDone, PAGE, None, 9),
            ],
            dropped: 0,
            capacity: 8,
        };
        let spans = trace.spans();
        assert_eq!(spans.len(), 2);
        assert!(spans[0].complete && spans[1].complete);
        assert_eq!(spans[0].hops.len(), 2, "{:?}", spans[0]);
        assert_eq!(spans[1].hops.len(), 3, "{:?}", spans[1]);
        assert_eq!(spans[1].peer, Some(1));
    }

    #[test]
    fn under_signal_delivery_a_fault_ends_when_its_thread_resumes() {
        let mut trace = Trace {
            rank: 1,
            signal: true,
            records: vec![
                record(100, Hop::FaultRaisedWrite, PAGE, None, 7),
                record(200, Hop::FaultInstalled, PAGE, None, 8),
                record(260, Hop::FaultResumed, PAGE, None, 7),
            ],
            dropped: 0,
            capacity: 8,
        };
        let spans = trace.spans();
        assert_eq!(spans.len(), 1);
        assert!(spans[0].complete);
        assert_eq!(spans[0].hops.len(), 3);
        assert_eq!(spans[0].name(), "write fault");
    }

    #[test]
    fn locks_barriers_and_served_requests_pair_up() {
        let mut trace = Trace {
            rank: 0,
            signal: false,
            records: vec![
                record(1, Hop::LockCalled, 5, None, 7),
                record(2, Hop::LockRequestSent, 5, Some(1), 7),
                record(3, Hop::HomeReadReceived, PAGE, Some(1), 9),
                record(4, Hop::HomeReplySent, PAGE, Some(1), 9),
                record(5, Hop::LockGrantReceived, 5, Some(1), 9),
                record(6, Hop::LockAcquired, 5, None, 7),
                // An arrival before this node's own barrier call is not part of its wait.
                record(7, Hop::BarrierRoundReceived, 2, Some(1), 9),
                record(8, Hop::BarrierEnter, 2, None, 7),
                record(9, Hop::BarrierArriveSent, 2, Some(0), 7),
                record(10, Hop::BarrierComplete, 2, Some(0), 9),
                record(11, Hop::BarrierReturn, 2, None, 7),
                record(12, Hop::LockRequestReceived, 5, Some(1), 9),
            ],
            dropped: 0,
            capacity: 16,
        };
        let spans = trace.spans();
        let kinds: Vec<_> = spans
            .iter()
            .map(|s| (s.name(), s.hops.len(), s.complete))
            .collect();
        assert_eq!(
            kinds,
            [
                ("lock wait", 4, true),
                ("serve read request", 2, true),
                ("barrier", 4, true),
                ("lock grant", 1, false),
            ]
        );
        assert_eq!(spans[1].track(), SERVED_TRACK);
    }

    #[test]
    fn the_file_is_json_with_events_and_what_was_dropped() {
        let dir = std::env::temp_dir().join(format!("dsm-trace-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.json");
        let trace = Trace {
            rank: 2,
            signal: false,
            records: vec![
                record(10, Hop::BarrierEnter, 1, None, 7),
                record(30, Hop::BarrierReturn, 1, None, 7),
            ],
            dropped: 5,
            capacity: 2,
        };
        trace.write(&file).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["otherData"]["records_dropped"], 5);
        let events = value["traceEvents"].as_array().unwrap();
        let barrier = events.iter().find(|e| e["name"] == "barrier").unwrap();
        assert_eq!(barrier["pid"], 2);
        assert_eq!(barrier["ph"], "X");
        assert!(events.iter().any(|e| e["name"] == "process_name"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
