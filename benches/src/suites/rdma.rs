//! `dsm-bench rdma --json` (issue #7).

/// Runs the suite and returns its JSON report.
pub fn run() -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("suite `rdma` is not written yet (issue #7)")
}
