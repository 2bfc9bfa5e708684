//! The `ratio_*` fields: a cluster's medians over its own floors, judged against its targets
//! (if it has any), and one cluster's medians over another's.

use anyhow::Context;
use serde_json::{Map, Value, json};

use crate::stats::round;

/// What a cluster's figures are judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Targets {
    /// Issue #10's: 2 pinned nodes over TCP.
    Tcp,
    /// Issue #14's: 2 pinned same-host nodes over shared memory.
    SameHost,
    /// None: a variant reported for comparison only.
    None,
}

/// A target on a ratio of medians.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtMost(f64),
    Below(f64),
}

impl Bound {
    fn value(self) -> f64 {
        match self {
            Bound::AtMost(bound) | Bound::Below(bound) => bound,
        }
    }

    fn holds(self, ratio: f64) -> bool {
        match self {
            Bound::AtMost(bound) => ratio <= bound,
            Bound::Below(bound) => ratio < bound,
        }
    }
}

/// Issue #10, over TCP: a remote read fault within 2× (round trip + local fault), a lock
/// hand-off within 4 round trips, a barrier within 3.
const TARGET_REMOTE_READ_FAULT_TO_FLOOR: Bound = Bound::AtMost(2.0);
const TARGET_LOCK_HANDOFF_TO_RTT: Bound = Bound::AtMost(4.0);
const TARGET_BARRIER_TO_RTT: Bound = Bound::AtMost(3.0);
/// Issue #14, over shared memory: a remote read fault within 3× the local SIGBUS fault, and
/// below one TCP round trip between the same processes.
const TARGET_REMOTE_READ_FAULT_TO_LOCAL_FLOOR: Bound = Bound::AtMost(3.0);
const TARGET_REMOTE_READ_FAULT_TO_RTT_FLOOR: Bound = Bound::Below(1.0);

/// Adds the `ratio_*` fields (medians over medians) and, for `targets`, theirs and whether
/// each is met.
pub(super) fn add_ratios(report: &mut Value, targets: Targets) -> anyhow::Result<()> {
    let median = |name: &str| {
        report[name]["median"]
            .as_f64()
            .with_context(|| format!("{name} missing from rank 0's result"))
    };
    let remote = median("remote_read_fault_us")?;
    let computing = median("remote_read_fault_home_computing_us")?;
    let scan = median("scan_per_page_us")?;
    let handoff = median("lock_handoff_us")?;
    let barrier = median("barrier_us")?;
    let local = median("local_sigbus_fault_us")?;
    let rtt = report["rtt_floor_us"]
        .as_f64()
        .context("rtt_floor_us missing")?;
    let judged = [
        (
            "remote_read_fault_to_floor",
            remote / (rtt + local),
            Targets::Tcp,
            TARGET_REMOTE_READ_FAULT_TO_FLOOR,
        ),
        (
            "lock_handoff_to_rtt",
            handoff / rtt,
            Targets::Tcp,
            TARGET_LOCK_HANDOFF_TO_RTT,
        ),
        (
            "barrier_to_rtt",
            barrier / rtt,
            Targets::Tcp,
            TARGET_BARRIER_TO_RTT,
        ),
        (
            "remote_read_fault_to_local_floor",
            remote / local,
            Targets::SameHost,
            TARGET_REMOTE_READ_FAULT_TO_LOCAL_FLOOR,
        ),
        (
            "remote_read_fault_to_rtt_floor",
            remote / rtt,
            Targets::SameHost,
            TARGET_REMOTE_READ_FAULT_TO_RTT_FLOOR,
        ),
    ];
    report["ratio_scan_per_page_to_floor"] = json!(round(scan / (rtt + local)));
    report["ratio_remote_read_fault_home_computing_to_local_floor"] =
        json!(round(computing / local));
    let mut met = Map::new();
    for (name, ratio, of, bound) in judged {
        report[format!("ratio_{name}")] = json!(round(ratio));
        if of == targets {
            report[format!("target_{name}")] = json!(bound.value());
            met.insert(name.to_owned(), json!(bound.holds(ratio)));
        }
    }
    if targets == Targets::None {
        report["targets"] = json!("none: nodes outnumber CPUs (reported for comparison only)");
    } else {
        report["meets_targets"] = Value::Object(met);
    }
    Ok(())
}

/// The 2-node figures again with every service thread at the application's priority
/// (`DSM_SERVICE_PRIORITY=0`): `ratio_*_realtime_to_nice0` in `n2` (docs/architecture.md,
/// "Scheduling").
pub(super) fn compare_priorities(two: &mut Value, nice0: &Value) -> anyhow::Result<()> {
    for figure in [
        "remote_read_fault_home_computing",
        "remote_read_fault",
        "barrier",
    ] {
        let ratio = ratio_of_medians(two, nice0, figure)?;
        two[format!("ratio_{figure}_realtime_to_nice0")] = json!(round(ratio));
    }
    Ok(())
}

/// `ratio_<name>_<figure>`: each figure's median in `numerator` over its median in
/// `denominator` (two clusters of one run), for the remote read fault (home waiting and
/// computing), the scan, the lock hand-off, the barrier and the release of one diff.
pub(super) fn compare(
    name: &str,
    numerator: &Value,
    denominator: &Value,
) -> anyhow::Result<Map<String, Value>> {
    [
        "remote_read_fault",
        "remote_read_fault_home_computing",
        "scan_per_page",
        "lock_handoff",
        "barrier",
        "release_one_diff",
    ]
    .into_iter()
    .map(|figure| {
        let ratio = ratio_of_medians(numerator, denominator, figure)?;
        Ok((format!("ratio_{name}_{figure}"), json!(round(ratio))))
    })
    .collect()
}

/// `<figure>_us`'s median in `numerator` over its median in `denominator`.
fn ratio_of_medians(numerator: &Value, denominator: &Value, figure: &str) -> anyhow::Result<f64> {
    let median = |report: &Value| {
        report[format!("{figure}_us")]["median"]
            .as_f64()
            .with_context(|| format!("{figure}_us missing"))
    };
    Ok(median(numerator)? / median(denominator)?)
}

/// What the runtime's tracing costs: `ratio_<figure>_traced_to_untraced`, the traced pass's
/// median over the first pass's, in the same run.
pub(super) fn add_tracing_overhead(report: &mut Value) -> anyhow::Result<()> {
    for (ratio, figure) in [
        ("fault", "remote_read_fault"),
        ("lock_handoff", "lock_handoff"),
        ("barrier", "barrier"),
    ] {
        let median = |name: String| {
            report[&name]["median"]
                .as_f64()
                .with_context(|| format!("{name} missing from rank 0's result"))
        };
        let traced = median(format!("{figure}_traced_us"))?;
        let untraced = median(format!("{figure}_us"))?;
        report[format!("ratio_{ratio}_traced_to_untraced")] = json!(round(traced / untraced));
    }
    Ok(())
}
