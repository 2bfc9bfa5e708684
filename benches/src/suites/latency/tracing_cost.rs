//! What the runtime's tracing costs, measured so that the machine's drift cancels out: the
//! traced and untraced passes of the other figures run one after the other (seconds apart,
//! on a machine whose speed moves by tens of percent in that time), so here short blocks of
//! remote read faults and of barriers alternate between tracing off and on, in an order
//! that also alternates, and each side's samples are pooled.

use dsm::Region;
use serde_json::{Value, json};

use super::figures::{REMOTE_BLOCK_PAGES, REMOTE_STRIDE, time_reads};
use super::node::{Bench, phase};
use crate::stats::{round, summarize};

/// Untraced/traced pairs of blocks.
const ROUNDS: usize = 4;
/// Offset in [`REMOTE_STRIDE`] of the pages these reads take (the other figures take 0, a
/// quarter and a half stride), so every read is a first read.
const PAGE_OFFSET: usize = REMOTE_STRIDE * 3 / 4;
/// Barriers per block (after a few not timed).
const BARRIERS_PER_BLOCK: usize = 250;
const BARRIER_WARMUP: usize = 25;

/// Rank 0's pooled samples, by tracing off (`[0]`) and on (`[1]`).
#[derive(Default)]
pub(super) struct TracingCost {
    faults: [Vec<f64>; 2],
    barriers: [Vec<f64>; 2],
}

impl Bench<'_> {
    /// [`ROUNDS`] rounds of a block of remote read faults and a block of barriers with
    /// tracing off and a pair with it on (in alternating order). Every node sets its own
    /// tracing before the block's first barrier, so the blocks run with all nodes alike.
    pub(super) fn tracing_cost(&mut self, region: &Region<u64>) -> anyhow::Result<TracingCost> {
        phase("tracing_cost");
        let pages: Vec<usize> = (REMOTE_BLOCK_PAGES + PAGE_OFFSET..2 * REMOTE_BLOCK_PAGES)
            .step_by(REMOTE_STRIDE)
            .collect();
        let blocks = pages.chunks(pages.len().div_ceil(2 * ROUNDS));
        let mut cost = TracingCost::default();
        let order = (0..ROUNDS).flat_map(|round| match round % 2 {
            0 => [false, true],
            _ => [true, false],
        });
        for (traced, block) in order.zip(blocks) {
            self.node.set_tracing(traced);
            let side = usize::from(traced);
            cost.faults[side].extend(self.timed_reads(region, block)?);
            cost.barriers[side].extend(self.time_barriers(BARRIER_WARMUP, BARRIERS_PER_BLOCK)?);
        }
        self.node.set_tracing(false);
        Ok(cost)
    }

    /// Rank 1 writes `pages`; rank 0 reads them in a random order, timing each read.
    fn timed_reads(&mut self, region: &Region<u64>, pages: &[usize]) -> anyhow::Result<Vec<f64>> {
        self.write_pages_at_rank1(region, pages)?;
        let samples = match self.rank {
            0 => time_reads(region, pages.to_vec(), None)?,
            _ => Vec::new(),
        };
        self.node.barrier()?;
        Ok(samples)
    }
}

impl TracingCost {
    /// `tracing_cost_interleaved`: each figure's medians with tracing off and on and their
    /// ratio, which `ratio_*_traced_to_untraced_interleaved` repeat at the top level.
    pub(super) fn report(mut self, report: &mut Value) {
        let mut section = serde_json::Map::new();
        for (name, samples) in [("fault", &mut self.faults), ("barrier", &mut self.barriers)] {
            let samples_each = samples[0].len().min(samples[1].len());
            let [off, on] = samples;
            let (off, on) = (summarize(off), summarize(on));
            let ratio = round(on.median / off.median);
            section.insert(
                name.to_owned(),
                json!({
                    "untraced_median_us": round(off.median),
                    "traced_median_us": round(on.median),
                    "samples_each": samples_each,
                    "ratio_traced_to_untraced": ratio,
                }),
            );
            report[format!("ratio_{name}_traced_to_untraced_interleaved")] = json!(ratio);
        }
        section.insert("rounds".to_owned(), json!(ROUNDS));
        report["tracing_cost_interleaved"] = Value::Object(section);
    }
}
