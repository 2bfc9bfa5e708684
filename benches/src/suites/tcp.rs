//! `dsm-bench tcp --json` (issue #4).

/// Runs the suite and returns its JSON report.
pub fn run() -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("suite `tcp` is not written yet (issue #4)")
}
