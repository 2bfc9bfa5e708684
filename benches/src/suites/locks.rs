//! `dsm-bench locks --json` (issue #5).

/// Runs the suite and returns its JSON report.
pub fn run() -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("suite `locks` is not written yet (issue #5)")
}
