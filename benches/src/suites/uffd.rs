//! `dsm-bench uffd --json` (issue #3).

/// Runs the suite and returns its JSON report.
pub fn run() -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("suite `uffd` is not written yet (issue #3)")
}
