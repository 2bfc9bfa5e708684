//! Order statistics shared by the suites: these machines are noisy, so suites report medians,
//! p99s and ratios of medians, never single times.

/// Median and p99 of a set of samples, in the samples' unit.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// 50th percentile.
    pub median: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Summarises `samples` (sorted in place). Panics on an empty slice: a suite that measured
/// nothing is a bug.
pub fn summarize(samples: &mut [f64]) -> Summary {
    assert!(!samples.is_empty(), "no samples to summarise");
    samples.sort_by(f64::total_cmp);
    Summary {
        median: percentile(samples, 0.50),
        p99: percentile(samples, 0.99),
    }
}

/// `x` to two decimals: the precision a report shows, on machines this noisy.
pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * (sorted.len() - 1) as f64).round();
    // The rank lies in 0..len by construction.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    sorted[rank as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99_of_a_known_set() {
        let mut samples: Vec<f64> = (1..=101).rev().map(f64::from).collect();
        let s = summarize(&mut samples);
        assert_eq!(s.median, 51.0);
        assert_eq!(s.p99, 100.0);
    }
}
