//! Diffs of arbitrary byte strings: `apply(diff(twin, current))` on the twin gives `current`,
//! and `apply` of arbitrary runs never panics (they come from the wire).
#![no_main]

use dsm_views::{Run, apply, diff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (twin, current) = data.split_at(data.len() / 2);
    let current = &current[..twin.len()];
    let runs = diff(twin, current);
    let mut copy = twin.to_vec();
    apply(&mut copy, &runs).expect("a diff's runs lie inside its view");
    assert_eq!(copy, current);

    // Arbitrary runs: offsets and lengths from the input, bounds checked by `apply`.
    let mut target = twin.to_vec();
    let runs: Vec<Run> = current
        .chunks(9)
        .map(|c| Run {
            offset: u64::from(c[0]) * 3,
            bytes: c[1..].to_vec(),
        })
        .collect();
    let before = target.clone();
    if apply(&mut target, &runs).is_err() {
        assert_eq!(target, before, "a refused apply wrote something");
    }
});
