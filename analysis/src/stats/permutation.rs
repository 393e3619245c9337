//! Resampling building blocks: p-values from counts, ties-tolerant comparison, and exact
//! enumeration of every ordering of a small set.
//!
//! Exact p-values are k/N over the whole null; Monte Carlo p-values are (b+1)/(m+1), the
//! observed arrangement counted as one draw, so a Monte Carlo p is never 0.

/// Relative slack when asking "is this null statistic at least as extreme as the observed
/// one": statistics that are equal in exact arithmetic (the identity permutation, tied ranks)
/// must count as ties even when floating-point summation order differs.
const TIE_TOLERANCE: f64 = 1e-9;

/// Whether a null statistic is at least as large as the observed one, ties included.
pub fn at_least(null_statistic: f64, observed: f64) -> bool {
    null_statistic >= observed - TIE_TOLERANCE * observed.abs().max(1.0)
}

/// Monte Carlo p-value from `exceed` of `draws` null statistics at least as extreme as the
/// observed one: (b+1)/(m+1).
pub fn monte_carlo_p(exceed: usize, draws: usize) -> f64 {
    (exceed as f64 + 1.0) / (draws as f64 + 1.0)
}

/// Exact p-value: `exceed` of all `total` equally likely arrangements (the observed one among
/// them) are at least as extreme.
pub fn exact_p(exceed: usize, total: usize) -> f64 {
    exceed as f64 / total as f64
}

/// n! for the small n whose orderings are enumerated (None when it would overflow).
pub fn factorial(n: usize) -> Option<usize> {
    (1..=n).try_fold(1usize, |acc, k| acc.checked_mul(k))
}

/// Calls `visit` once with every ordering of `0..n` (Heap's algorithm, n! calls, the identity
/// first). Only meant for small n: the caller decides what "small" is.
pub fn for_each_permutation(n: usize, mut visit: impl FnMut(&[usize])) {
    let mut order: Vec<usize> = (0..n).collect();
    let mut counters = vec![0usize; n];
    visit(&order);
    let mut i = 0;
    while i < n {
        if counters[i] < i {
            if i % 2 == 0 {
                order.swap(0, i);
            } else {
                order.swap(counters[i], i);
            }
            visit(&order);
            counters[i] += 1;
            i = 0;
        } else {
            counters[i] = 0;
            i += 1;
        }
    }
}

/// Percentile interval (linear interpolation between order statistics, numpy's default) of a
/// set of bootstrap replicates. None (no interval) when there is no replicate or any replicate
/// is NaN: `numpy.percentile` propagates NaN, and dropping the undefined replicates would
/// report an interval of the ones that happened to be defined.
pub fn percentile_interval(replicates: &[f64], level: f64) -> Option<[f64; 2]> {
    if replicates.is_empty() || replicates.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut sorted = replicates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    Some([quantile(&sorted, tail), quantile(&sorted, 1.0 - tail)])
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let weight = position - below as f64;
    sorted[below] * (1.0 - weight) + sorted[above] * weight
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_ordering_is_visited_once() {
        for n in 0..=6 {
            let mut seen = BTreeSet::new();
            for_each_permutation(n, |p| {
                assert!(seen.insert(p.to_vec()), "{p:?} visited twice");
            });
            assert_eq!(seen.len(), factorial(n).unwrap(), "n = {n}");
        }
    }

    #[test]
    fn monte_carlo_p_is_never_zero() {
        assert_eq!(monte_carlo_p(0, 9999), 1.0 / 10000.0);
        assert_eq!(monte_carlo_p(9999, 9999), 1.0);
        assert_eq!(exact_p(3, 11), 3.0 / 11.0);
    }

    #[test]
    fn ties_count_as_extreme() {
        assert!(at_least(0.1 + 0.2, 0.3));
        assert!(!at_least(0.29, 0.3));
    }

    #[test]
    fn percentiles_match_numpy() {
        // numpy.percentile([1, 2, 3, 4, 10], [2.5, 97.5]) = [1.1, 9.4]
        let ci = percentile_interval(&[4.0, 1.0, 10.0, 3.0, 2.0], 0.95).unwrap();
        assert!(
            (ci[0] - 1.1).abs() < 1e-12 && (ci[1] - 9.4).abs() < 1e-12,
            "{ci:?}"
        );
        assert_eq!(percentile_interval(&[f64::NAN], 0.95), None);
        // numpy.percentile([1, 2, nan, 4], [2.5, 97.5]) = [nan, nan]
        assert_eq!(percentile_interval(&[1.0, 2.0, f64::NAN, 4.0], 0.95), None);
        assert_eq!(percentile_interval(&[], 0.95), None);
    }
}
