//! Diffs of a view against its twin, and their application.
//!
//! A view starts and ends at any byte, so runs are exact byte ranges, not pages. Comparing
//! goes eight bytes at a time: equal stretches are skipped a word per step, and inside a changed
//! stretch a word whose eight bytes all differ is taken whole; only the words at the edges of a
//! run are looked at byte by byte.

use std::ops::Range;

use crate::{Error, Result};

/// Bytes changed in a view: `bytes` replace the view's bytes at `offset` (within the view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Offset within the view.
    pub offset: u64,
    /// The new bytes.
    pub bytes: Vec<u8>,
}

impl Run {
    /// One past the run's last byte within the view, `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.bytes.len() as u64)
    }
}

const WORD: usize = 8;
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The exact runs of bytes where `current` differs from `twin`: maximal, in order, separated by
/// at least one equal byte.
///
/// # Panics
/// If the two slices differ in length (a twin is a copy of its view: a caller bug).
pub fn diff(twin: &[u8], current: &[u8]) -> Vec<Run> {
    changed_ranges(twin, current)
        .into_iter()
        .map(|r| Run {
            offset: r.start as u64,
            bytes: current[r].to_vec(),
        })
        .collect()
}

/// Writes `runs` into `target` (a view's bytes). Every run is checked first: when any lies
/// outside `target`, nothing is written.
pub fn apply(target: &mut [u8], runs: &[Run]) -> Result<()> {
    let view_len = target.len() as u64;
    for run in runs {
        match run.end() {
            Some(end) if end <= view_len => {}
            _ => {
                return Err(Error::RunOutOfBounds {
                    offset: run.offset,
                    len: run.bytes.len() as u64,
                    view_len,
                });
            }
        }
    }
    for run in runs {
        // Checked above: offset + len <= target.len(), so both fit in usize.
        let start = usize::try_from(run.offset).expect("checked against a slice length");
        target[start..start + run.bytes.len()].copy_from_slice(&run.bytes);
    }
    Ok(())
}

/// The byte ranges where `current` differs from `twin`.
pub(crate) fn changed_ranges(twin: &[u8], current: &[u8]) -> Vec<Range<usize>> {
    assert_eq!(twin.len(), current.len(), "a twin has its view's length");
    let mut ranges = Vec::new();
    let mut at = 0;
    // Each pass advances `at` past one run (or to the end), so at most len passes.
    while at < twin.len() {
        let start = skip_equal(twin, current, at);
        if start == twin.len() {
            break;
        }
        let end = skip_changed(twin, current, start);
        ranges.push(start..end);
        at = end;
    }
    ranges
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0; WORD];
    w.copy_from_slice(&bytes[at..at + WORD]);
    u64::from_ne_bytes(w)
}

/// First index at or after `at` where the slices differ, or their length.
fn skip_equal(a: &[u8], b: &[u8], mut at: usize) -> usize {
    while at + WORD <= a.len() && word(a, at) == word(b, at) {
        at += WORD;
    }
    while at < a.len() && a[at] == b[at] {
        at += 1;
    }
    at
}

/// First index at or after `at` where the slices are equal, or their length.
fn skip_changed(a: &[u8], b: &[u8], mut at: usize) -> usize {
    // A zero byte in a ^ b is an equal byte; the classic has-zero-byte test finds one.
    while at + WORD <= a.len() {
        let x = word(a, at) ^ word(b, at);
        if x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS != 0 {
            break;
        }
        at += WORD;
    }
    while at < a.len() && a[at] != b[at] {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_exact() {
        let twin = [0u8; 40];
        let mut cur = twin;
        cur[3] = 1;
        cur[9..30].fill(7);
        cur[39] = 2;
        let runs = diff(&twin, &cur);
        let spans: Vec<_> = runs.iter().map(|r| (r.offset, r.bytes.len())).collect();
        assert_eq!(spans, [(3, 1), (9, 21), (39, 1)]);
    }

    #[test]
    fn out_of_bounds_run_changes_nothing() {
        let mut target = [0u8; 10];
        let runs = [
            Run {
                offset: 0,
                bytes: vec![1],
            },
            Run {
                offset: 9,
                bytes: vec![1, 2],
            },
        ];
        assert!(matches!(
            apply(&mut target, &runs),
            Err(Error::RunOutOfBounds { offset: 9, .. })
        ));
        assert_eq!(target, [0; 10]);
    }
}
