//! `hops`: the per-hop breakdown of the 2-node run, read from the runtime's own trace.
//!
//! The nodes of the 2-node cluster run with `DSM_TRACE` pointing into a scratch directory
//! and record only during their traced pass (`Pass::Traced`); at `leave` each writes its
//! Chrome trace there. The parent reads both files and, with rank 0's clock stamps around
//! each timed read (`traced_fault_accesses`), gives the median (and p99) of every hop:
//! - remote read fault (rank 0 reads a page rank 1 homes): the access → fault raised
//!   (kernel fault and delivery to the resolver) → request handed to the transport →
//!   request received at the home → reply sent by the home → reply received → install
//!   issued → (thread resumed, signal delivery) → the access returns;
//! - lock hand-off (rank 0's lock waits): acquire called → request sent → request received
//!   by rank 1 → grant sent by rank 1 (at its release) → grant received → acquire returns;
//! - barrier, per rank: barrier called → arrival sent (after the release flush) → all
//!   arrived (the last dissemination round received) → barrier returns.
//!
//! Hops across the two processes subtract stamps of two processes' `CLOCK_MONOTONIC`, one
//! clock on one host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};

use super::figures::LOCK_ID;
use crate::stats::{round, summarize};

/// The trace path the 2-node cluster's nodes get (`DSM_TRACE`) in `dir`.
pub(super) fn trace_path(dir: &Path) -> PathBuf {
    dir.join("latency.json")
}

/// Rank `rank`'s file under `DSM_TRACE=trace_path(dir)` (the runtime's naming rule).
fn rank_file(dir: &Path, rank: u32) -> PathBuf {
    dir.join(format!("latency.rank{rank}.json"))
}

/// One event of a trace file with its hops (absolute ns, in order).
struct Span {
    args: Value,
    hops: Vec<(String, u64)>,
}

impl Span {
    fn at(&self, hop: &str) -> Option<u64> {
        self.hops.iter().find(|(h, _)| h == hop).map(|(_, ns)| *ns)
    }

    fn last(&self, hop: &str) -> Option<u64> {
        self.hops
            .iter()
            .rev()
            .find(|(h, _)| h == hop)
            .map(|(_, ns)| *ns)
    }

    fn number(&self, field: &str) -> Option<u64> {
        self.args[field].as_u64()
    }
}

/// The complete events of category `cat` in `file` (hop-to-hop segments left out).
fn spans(trace: &Value, cat: &str) -> Vec<Span> {
    let events = trace["traceEvents"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    events
        .iter()
        .filter(|e| e["cat"] == cat && e["args"]["complete"] == true)
        .map(|e| Span {
            args: e["args"].clone(),
            hops: e["args"]["hops"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .filter_map(|h| Some((h["hop"].as_str()?.to_owned(), h["ns"].as_u64()?)))
                .collect(),
        })
        .collect()
}

fn load(file: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("the trace {} (DSM_TRACE)", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

/// Per-hop samples, in the order hops first appear.
#[derive(Default)]
struct Hops {
    names: Vec<String>,
    samples: HashMap<String, Vec<f64>>,
    totals: Vec<f64>,
}

/// Microseconds from `a` to `b` (ns stamps of one clock).
fn micros(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / 1e3
}

impl Hops {
    /// One sample: the stamps in path order, named `from → to`, and the whole.
    fn add(&mut self, path: &[(&str, u64)]) {
        for pair in path.windows(2) {
            let name = format!("{} -> {}", pair[0].0, pair[1].0);
            if !self.samples.contains_key(&name) {
                self.names.push(name.clone());
            }
            let sample = micros(pair[0].1, pair[1].1);
            self.samples.entry(name).or_default().push(sample);
        }
        if let (Some(first), Some(last)) = (path.first(), path.last()) {
            self.totals.push(micros(first.1, last.1));
        }
    }

    fn report(mut self, whole: &str) -> Value {
        if self.totals.is_empty() {
            return json!({ "samples": 0 });
        }
        let mut sum = 0.0;
        let mut hops = Vec::new();
        for name in &self.names {
            let samples = self.samples.get_mut(name).expect("named when added");
            let summary = summarize(samples);
            sum += summary.median;
            hops.push(json!({
                "hop": name,
                "median_us": round(summary.median),
                "p99_us": round(summary.p99),
                "samples": samples.len(),
            }));
        }
        let samples = self.totals.len();
        let total = summarize(&mut self.totals);
        let mut report = json!({
            "samples": samples,
            "hops": hops,
            "sum_of_hop_medians_us": round(sum),
        });
        report[format!("{whole}_median_us")] = json!(round(total.median));
        report
    }
}

/// The breakdown, from the files in `dir` and rank 0's `report` (whose
/// `traced_fault_accesses` it takes out).
pub(super) fn breakdown(dir: &Path, report: &mut Value) -> anyhow::Result<Value> {
    let accesses = report
        .as_object_mut()
        .and_then(|r| r.remove("traced_fault_accesses"))
        .context("rank 0 reported no traced_fault_accesses")?;
    let (zero, one) = (load(&rank_file(dir, 0))?, load(&rank_file(dir, 1))?);
    let mut barriers = serde_json::Map::new();
    for (rank, trace) in [(0, &zero), (1, &one)] {
        barriers.insert(format!("barrier_rank{rank}"), barrier(trace));
    }
    Ok(json!({
        "source": "the runtime's trace (DSM_TRACE) of the traced pass at 2 nodes; \
                   cross-node hops subtract CLOCK_MONOTONIC stamps of the two processes \
                   (one host)",
        "trace_files": [rank_file(dir, 0), rank_file(dir, 1)],
        "dropped_records": [
            zero["otherData"]["records_dropped"].clone(),
            one["otherData"]["records_dropped"].clone(),
        ],
        "remote_read_fault": remote_read_fault(&accesses, &zero, &one),
        "lock_handoff": lock_handoff(&zero, &one),
        "barrier_rank0": barriers.remove("barrier_rank0"),
        "barrier_rank1": barriers.remove("barrier_rank1"),
    }))
}

/// Rank 0's reads of pages rank 1 homes, hop by hop.
fn remote_read_fault(accesses: &Value, zero: &Value, one: &Value) -> Value {
    let faults: HashMap<u64, Span> = spans(zero, "fault")
        .into_iter()
        .filter(|s| s.at("request sent").is_some())
        .filter_map(|s| Some((s.number("page")?, s)))
        .collect();
    let mut served: HashMap<u64, Span> = HashMap::new();
    for span in spans(one, "fault.home")
        .into_iter()
        .filter(|s| s.number("from") == Some(0))
    {
        if let Some(page) = span.number("page") {
            served.entry(page).or_insert(span);
        }
    }
    let mut hops = Hops::default();
    for access in accesses.as_array().map_or(&[][..], Vec::as_slice) {
        let stamp = |i: usize| access[i].as_u64();
        let (Some(page), Some(start), Some(end)) = (stamp(0), stamp(1), stamp(2)) else {
            continue;
        };
        let (Some(fault), Some(home)) = (faults.get(&page), served.get(&page)) else {
            continue;
        };
        let stamps = [
            ("access", Some(start)),
            ("fault raised", fault.at("fault raised")),
            ("request sent", fault.at("request sent")),
            ("received at home", home.at("request received")),
            ("reply sent by home", home.at("reply sent")),
            ("reply received", fault.at("reply received")),
            ("install issued", fault.at("install issued")),
        ];
        let Some(mut path) = stamps
            .iter()
            .map(|(name, ns)| ns.map(|ns| (*name, ns)))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        if let Some(taken) = fault.at("engine took it") {
            path.insert(2, ("engine took it", taken)); // signal delivery: the handler (or the driver) ran the engine
        }
        if let Some(resumed) = fault.at("thread resumed") {
            path.push(("thread resumed", resumed));
        }
        path.push(("access returns", end));
        hops.add(&path);
    }
    hops.report("access")
}

/// Rank 0's waits for the hand-off lock, with rank 1's side (its grant) matched by time:
/// the first request rank 1 received after rank 0 sent.
fn lock_handoff(zero: &Value, one: &Value) -> Value {
    let lock = u64::from(LOCK_ID);
    let mut grants: Vec<(u64, u64)> = spans(one, "lock.grant")
        .into_iter()
        .filter(|s| s.number("lock") == Some(lock) && s.number("from") == Some(0))
        .filter_map(|s| Some((s.at("request received")?, s.at("grant sent")?)))
        .collect();
    grants.sort_unstable();
    let mut hops = Hops::default();
    for wait in spans(zero, "lock") {
        if wait.number("lock") != Some(lock) {
            continue;
        }
        let (Some(called), Some(sent), Some(granted), Some(returned)) = (
            wait.at("acquire called"),
            wait.at("request sent"),
            wait.last("grant received"),
            wait.at("acquire returned"),
        ) else {
            continue;
        };
        let next = grants.partition_point(|(received, _)| *received < sent);
        let Some(&(received, grant_sent)) = grants.get(next) else {
            continue;
        };
        if grant_sent > granted {
            continue; // not this wait's grant
        }
        hops.add(&[
            ("acquire called", called),
            ("request sent", sent),
            ("received by holder", received),
            ("grant sent by holder", grant_sent),
            ("grant received", granted),
            ("acquire returns", returned),
        ]);
    }
    hops.report("lock_wait")
}

/// One rank's barriers, hop by hop.
fn barrier(trace: &Value) -> Value {
    let mut hops = Hops::default();
    for span in spans(trace, "barrier") {
        let path = [
            "barrier called",
            "arrival sent",
            "all arrived",
            "barrier returned",
        ]
        .map(|hop| span.at(hop).map(|ns| (hop, ns)));
        if let Some(path) = path.into_iter().collect::<Option<Vec<_>>>() {
            hops.add(&path);
        }
    }
    hops.report("barrier")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete event of category `cat` with `args` and `hops` (`[name, ns]`).
    fn event(cat: &str, mut args: Value, hops: &[(&str, u64)]) -> Value {
        args["complete"] = json!(true);
        args["hops"] = hops
            .iter()
            .map(|(hop, ns)| json!({"hop": hop, "ns": ns}))
            .collect();
        json!({"cat": cat, "ph": "X", "args": args})
    }

    fn trace(events: Vec<Value>) -> Value {
        json!({ "traceEvents": events })
    }

    #[test]
    fn a_fault_is_split_across_both_ranks_files_by_page() {
        let zero = trace(vec![event(
            "fault",
            json!({"page": 40, "region": 2}),
            &[
                ("fault raised", 1_000),
                ("request sent", 2_000),
                ("reply received", 9_000),
                ("install issued", 10_000),
            ],
        )]);
        let one = trace(vec![event(
            "fault.home",
            json!({"page": 40, "region": 2, "from": 0}),
            &[("request received", 4_000), ("reply sent", 6_000)],
        )]);
        let accesses = json!([[40, 0, 14_000], [41, 0, 1]]);
        let report = remote_read_fault(&accesses, &zero, &one);
        assert_eq!(report["samples"], 1, "page 41 has no trace: left out");
        let medians: Vec<(String, f64)> = report["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["hop"].as_str().unwrap().to_owned(),
                    h["median_us"].as_f64().unwrap(),
                )
            })
            .collect();
        let expected = [
            ("access -> fault raised", 1.0),
            ("fault raised -> request sent", 1.0),
            ("request sent -> received at home", 2.0),
            ("received at home -> reply sent by home", 2.0),
            ("reply sent by home -> reply received", 3.0),
            ("reply received -> install issued", 1.0),
            ("install issued -> access returns", 4.0),
        ];
        let expected: Vec<(String, f64)> = expected
            .iter()
            .map(|(h, m)| ((*h).to_owned(), *m))
            .collect();
        assert_eq!(medians, expected);
        assert_eq!(report["access_median_us"], 14.0);
        assert_eq!(report["sum_of_hop_medians_us"], 14.0);
    }

    #[test]
    fn a_lock_wait_takes_the_first_grant_received_after_its_request() {
        let lock = u64::from(LOCK_ID);
        let zero = trace(vec![event(
            "lock",
            json!({"lock": lock}),
            &[
                ("acquire called", 0),
                ("request sent", 1_000),
                ("grant received", 20_000),
                ("acquire returned", 21_000),
            ],
        )]);
        let grant = |received, sent| {
            event(
                "lock.grant",
                json!({"lock": lock, "from": 0}),
                &[("request received", received), ("grant sent", sent)],
            )
        };
        // An earlier request's grant, this one's, and a later one.
        let one = trace(vec![
            grant(500, 800),
            grant(3_000, 15_000),
            grant(30_000, 31_000),
        ]);
        let report = lock_handoff(&zero, &one);
        assert_eq!(report["samples"], 1);
        let hops = report["hops"].as_array().unwrap();
        assert_eq!(hops[1]["hop"], "request sent -> received by holder");
        assert_eq!(hops[1]["median_us"], 2.0);
        assert_eq!(hops[2]["median_us"], 12.0);
        assert_eq!(report["lock_wait_median_us"], 21.0);
    }
}
