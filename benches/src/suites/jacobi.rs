//! `dsm-bench jacobi --json` (issue #6).

/// Runs the suite and returns its JSON report.
pub fn run() -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("suite `jacobi` is not written yet (issue #6)")
}
