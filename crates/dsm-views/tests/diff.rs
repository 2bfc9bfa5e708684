//! Diffs of random unaligned views: `apply(diff(a, b))` on `a` gives `b`, with exact runs.

use dsm_views::{Error, Run, apply, diff};
use rand::Rng;
use rand::rngs::StdRng;

use crate::common::rng;

/// Random edits: runs of random bytes (some equal to what was there, which splits runs),
/// single bytes, and whole-word stretches.
fn mutate(rng: &mut StdRng, bytes: &mut [u8]) {
    if bytes.is_empty() {
        return;
    }
    for _ in 0..rng.random_range(0..12) {
        let start = rng.random_range(0..bytes.len());
        let len = rng.random_range(1..=(bytes.len() - start).min(300));
        for b in &mut bytes[start..start + len] {
            if rng.random_bool(0.9) {
                *b = rng.random();
            }
        }
    }
}

fn check_exact(twin: &[u8], current: &[u8], runs: &[Run]) {
    let mut at = 0usize;
    for (i, run) in runs.iter().enumerate() {
        let start = run.offset as usize;
        assert!(!run.bytes.is_empty());
        assert!(
            start >= at && (i == 0 || start > at),
            "runs overlap or touch"
        );
        assert_eq!(twin[at..start], current[at..start], "a change between runs");
        for (k, &b) in run.bytes.iter().enumerate() {
            assert_eq!(b, current[start + k]);
            assert_ne!(b, twin[start + k], "an unchanged byte inside a run");
        }
        at = start + run.bytes.len();
    }
    assert_eq!(twin[at..], current[at..], "a change after the last run");
}

#[test]
fn apply_of_diff_gives_current_on_random_unaligned_views() {
    let mut rng = rng("diff::apply_of_diff_gives_current_on_random_unaligned_views");
    let file: Vec<u8> = (0..20_000).map(|_| rng.random()).collect();
    for _ in 0..2000 {
        // A view at an arbitrary byte offset and length of the file.
        let offset = rng.random_range(0..file.len());
        let len = rng.random_range(0..=(file.len() - offset).min(3000));
        let twin = &file[offset..offset + len];
        let mut current = twin.to_vec();
        mutate(&mut rng, &mut current);
        let runs = diff(twin, &current);
        check_exact(twin, &current, &runs);
        let mut copy = twin.to_vec();
        apply(&mut copy, &runs).unwrap();
        assert_eq!(copy, current);
    }
}

#[test]
fn long_changes_and_edges() {
    let twin = vec![0u8; 1001];
    assert!(diff(&twin, &twin).is_empty());
    let all = vec![1u8; 1001];
    let runs = diff(&twin, &all);
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].offset, runs[0].bytes.len()), (0, 1001));
    // Alternating bytes: every other byte a run of one.
    let alt: Vec<u8> = (0..1001).map(|i| (i % 2) as u8).collect();
    assert_eq!(diff(&twin, &alt).len(), 500);
    assert!(diff(&[], &[]).is_empty());
}

#[test]
fn apply_checks_every_run_first() {
    let mut target = vec![7u8; 100];
    let runs = vec![
        Run {
            offset: 0,
            bytes: vec![1; 10],
        },
        Run {
            offset: u64::MAX,
            bytes: vec![1],
        },
    ];
    assert!(matches!(
        apply(&mut target, &runs),
        Err(Error::RunOutOfBounds { .. })
    ));
    let runs = vec![
        Run {
            offset: 0,
            bytes: vec![1; 10],
        },
        Run {
            offset: 95,
            bytes: vec![1; 6],
        },
    ];
    assert!(matches!(
        apply(&mut target, &runs),
        Err(Error::RunOutOfBounds {
            offset: 95,
            len: 6,
            view_len: 100
        })
    ));
    assert_eq!(target, vec![7u8; 100], "a refused apply wrote something");
    let runs = vec![Run {
        offset: 100,
        bytes: vec![],
    }];
    apply(&mut target, &runs).unwrap();
}
