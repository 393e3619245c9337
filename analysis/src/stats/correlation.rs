//! Rank correlation with an exact permutation test, as the pre-registration asks for H3 and
//! for the geometry's cross-condition "cos-monotone" pattern (n = 5 conditions: 5! = 120).

use super::permutation::{at_least, exact_p, factorial, for_each_permutation, monte_carlo_p};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// Largest n whose n! orderings are enumerated; above it the null is sampled.
pub const MAX_EXACT_N: usize = 9;

/// Ranks 1..n with ties given their average rank (scipy's `rankdata(method="average")`).
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let average = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = average;
        }
        start = end;
    }
    ranks
}

/// Pearson correlation; NaN when either side has no variance or fewer than 2 points.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mean_x = x[..n].iter().sum::<f64>() / n as f64;
    let mean_y = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let dx = x[i] - mean_x;
        let dy = y[i] - mean_y;
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rho: Pearson correlation of average ranks (scipy's `spearmanr`).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// A two-sided permutation test of Spearman's rho.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpearmanTest {
    pub rho: f64,
    /// Two-sided: the share of orderings of y against x with |rho| >= |observed rho|.
    pub p: f64,
    /// Whether p enumerates every ordering (n <= MAX_EXACT_N) or samples them.
    pub exact: bool,
    /// Orderings enumerated (n!) or sampled.
    pub orderings: usize,
}

/// Spearman's rho and its two-sided permutation p: exact over all n! orderings when
/// n <= MAX_EXACT_N, otherwise `monte_carlo_draws` orderings drawn from `rng`.
pub fn spearman_permutation_test(
    x: &[f64],
    y: &[f64],
    monte_carlo_draws: usize,
    rng: &mut ChaCha20Rng,
) -> SpearmanTest {
    let n = x.len().min(y.len());
    let rank_x = average_ranks(&x[..n]);
    let rank_y = average_ranks(&y[..n]);
    let rho = pearson(&rank_x, &rank_y);
    if rho.is_nan() {
        return SpearmanTest {
            rho,
            p: f64::NAN,
            exact: true,
            orderings: 0,
        };
    }
    let observed = rho.abs();
    let mut permuted = vec![0.0; n];
    match factorial(n).filter(|_| n <= MAX_EXACT_N) {
        Some(total) => {
            let mut exceed = 0;
            for_each_permutation(n, |order| {
                for (slot, &from) in permuted.iter_mut().zip(order) {
                    *slot = rank_y[from];
                }
                if at_least(pearson(&rank_x, &permuted).abs(), observed) {
                    exceed += 1;
                }
            });
            SpearmanTest {
                rho,
                p: exact_p(exceed, total),
                exact: true,
                orderings: total,
            }
        }
        None => {
            permuted.copy_from_slice(&rank_y);
            let mut exceed = 0;
            for _ in 0..monte_carlo_draws {
                permuted.shuffle(rng);
                if at_least(pearson(&rank_x, &permuted).abs(), observed) {
                    exceed += 1;
                }
            }
            SpearmanTest {
                rho,
                p: monte_carlo_p(exceed, monte_carlo_draws),
                exact: false,
                orderings: monte_carlo_draws,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::rng::seeded_rng;

    #[test]
    fn ties_get_average_ranks() {
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0, 5.0]), vec![2.5, 4.0, 2.5, 1.0]);
    }

    #[test]
    fn the_reference_h3_numbers() {
        // cos-to-assistant and mean bystander leakage (%) of the reference run, E0..E4.
        let cos = [1.0, 0.9457, 0.906, 0.8696, 0.7828];
        let leakage = [45.68, 48.57, 50.07, 53.71, 52.00];
        let test = spearman_permutation_test(&cos, &leakage, 0, &mut seeded_rng(0, "t"));
        assert!((test.rho + 0.9).abs() < 1e-12, "{test:?}");
        assert!((test.p - 10.0 / 120.0).abs() < 1e-12, "{test:?}");
        assert!(test.exact);
        assert_eq!(test.orderings, 120);
    }

    #[test]
    fn a_perfect_order_is_the_most_extreme() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let test = spearman_permutation_test(&x, &x, 0, &mut seeded_rng(0, "t"));
        assert_eq!(test.rho, 1.0);
        assert!((test.p - 2.0 / 720.0).abs() < 1e-12);
    }

    #[test]
    fn large_n_is_sampled_with_a_nonzero_p() {
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        let test = spearman_permutation_test(&x, &x, 999, &mut seeded_rng(1, "t"));
        assert!(!test.exact);
        assert_eq!(test.p, 1.0 / 1000.0);
    }
}
