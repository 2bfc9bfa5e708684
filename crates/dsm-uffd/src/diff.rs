//! Twins and diffs (release consistency): the runs of changed bytes between a page's twin and
//! its current contents, as [`dsm_wire::DiffRun`]s.
//!
//! Runs hold exactly the changed bytes, never unchanged ones in between: two nodes that wrote
//! different bytes of the same page (false sharing) merge correctly at the home only if
//! neither diff carries bytes the other wrote.

use dsm_wire::{DiffRun, PAGE_SIZE};

use crate::error::{Error, Result};

const WORD: usize = std::mem::size_of::<u64>();

/// The runs of bytes where `current` differs from `twin`, in increasing offset order.
pub fn compute(twin: &[u8; PAGE_SIZE], current: &[u8; PAGE_SIZE]) -> Vec<DiffRun> {
    let mut runs = Vec::new();
    let mut offset = 0;
    // Each step advances `offset` by at least one byte: at most PAGE_SIZE steps.
    while offset < PAGE_SIZE {
        offset = skip_equal(twin, current, offset);
        if offset == PAGE_SIZE {
            break;
        }
        let end = run_end(twin, current, offset);
        runs.push(DiffRun {
            // Offsets are below PAGE_SIZE (4096), which fits u16.
            offset: u16::try_from(offset).expect("page offsets fit u16"),
            bytes: current[offset..end].to_vec(),
        });
        offset = end;
    }
    runs
}

/// First offset at or after `from` where the pages differ (PAGE_SIZE if none); skips equal
/// 8-byte words at a time.
fn skip_equal(twin: &[u8; PAGE_SIZE], current: &[u8; PAGE_SIZE], mut from: usize) -> usize {
    while from < PAGE_SIZE && !from.is_multiple_of(WORD) && twin[from] == current[from] {
        from += 1;
    }
    while from + WORD <= PAGE_SIZE && twin[from..from + WORD] == current[from..from + WORD] {
        from += WORD;
    }
    while from < PAGE_SIZE && twin[from] == current[from] {
        from += 1;
    }
    from
}

/// First offset after `from` where the pages are equal again (PAGE_SIZE if none).
fn run_end(twin: &[u8; PAGE_SIZE], current: &[u8; PAGE_SIZE], mut from: usize) -> usize {
    while from < PAGE_SIZE && twin[from] != current[from] {
        from += 1;
    }
    from
}

/// Checks that every run lies within one page.
pub fn validate(runs: &[DiffRun]) -> Result<()> {
    for run in runs {
        if usize::from(run.offset) + run.bytes.len() > PAGE_SIZE {
            return Err(Error::DiffOutOfBounds {
                offset: run.offset,
                len: run.bytes.len(),
            });
        }
    }
    Ok(())
}

/// Writes `runs` into `page` (e.g. a home's master copy). Checks every run first: on
/// [`Error::DiffOutOfBounds`] nothing is written.
pub fn apply(page: &mut [u8; PAGE_SIZE], runs: &[DiffRun]) -> Result<()> {
    validate(runs)?;
    for run in runs {
        let start = usize::from(run.offset);
        page[start..start + run.bytes.len()].copy_from_slice(&run.bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Box<[u8; PAGE_SIZE]> {
        Box::new([fill; PAGE_SIZE])
    }

    #[test]
    fn equal_pages_have_no_runs() {
        assert!(compute(&page(7), &page(7)).is_empty());
    }

    #[test]
    fn runs_hold_exactly_the_changed_bytes() {
        let twin = page(0);
        let mut current = page(0);
        current[0] = 1;
        current[9] = 2;
        current[10] = 3;
        current[4095] = 4;
        let runs = compute(&twin, &current);
        let got: Vec<(u16, Vec<u8>)> = runs.into_iter().map(|r| (r.offset, r.bytes)).collect();
        assert_eq!(got, vec![(0, vec![1]), (9, vec![2, 3]), (4095, vec![4])]);
    }

    #[test]
    fn a_whole_changed_page_is_one_run() {
        let runs = compute(&page(0), &page(1));
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].offset, runs[0].bytes.len()), (0, PAGE_SIZE));
    }

    #[test]
    fn apply_reproduces_the_current_page() {
        let twin = page(3);
        let mut current = page(3);
        for i in (0..PAGE_SIZE).step_by(37) {
            current[i] = u8::try_from(i % 251).unwrap();
        }
        let runs = compute(&twin, &current);
        let mut home = page(3);
        apply(&mut home, &runs).unwrap();
        assert_eq!(home, current);
    }

    #[test]
    fn disjoint_diffs_of_two_writers_merge() {
        let twin = page(0);
        let (mut a, mut b) = (page(0), page(0));
        a[100] = 1;
        b[101] = 2;
        let mut home = page(0);
        apply(&mut home, &compute(&twin, &a)).unwrap();
        apply(&mut home, &compute(&twin, &b)).unwrap();
        assert_eq!((home[100], home[101]), (1, 2));
    }

    #[test]
    fn out_of_bounds_run_is_rejected_and_changes_nothing() {
        let mut home = page(0);
        let runs = vec![
            DiffRun {
                offset: 0,
                bytes: vec![9],
            },
            DiffRun {
                offset: 4095,
                bytes: vec![1, 2],
            },
        ];
        assert_eq!(
            apply(&mut home, &runs),
            Err(Error::DiffOutOfBounds {
                offset: 4095,
                len: 2
            })
        );
        assert_eq!(home, page(0));
    }
}
