//! Rank correlation with an exact permutation test, as the pre-registration asks for H3 and
//! for the geometry's cross-condition "cos-monotone" pattern (n = 5 conditions: 5! = 120).
//!
//! Undefined inputs follow scipy: a NaN anywhere makes the ranks, rho and the p-value NaN
//! (`rankdata` / `spearmanr` with `nan_policy="propagate"`); a side without variance (constant
//! input) or fewer than 2 points gives NaN (`spearmanr` warns and returns NaN); sides of
//! different lengths are an error (scipy raises). A NaN rho is never given a p-value.

use super::permutation::{at_least, exact_p, factorial, for_each_permutation, monte_carlo_p};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// Largest n whose n! orderings are enumerated; above it the null is sampled.
pub const MAX_EXACT_N: usize = 9;

/// Two samples that cannot be correlated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("correlation of samples of different lengths: x has {x} values, y has {y}")]
pub struct LengthMismatch {
    pub x: usize,
    pub y: usize,
}

fn same_length(x: &[f64], y: &[f64]) -> Result<(), LengthMismatch> {
    if x.len() == y.len() {
        Ok(())
    } else {
        Err(LengthMismatch {
            x: x.len(),
            y: y.len(),
        })
    }
}

/// Ranks 1..n with ties given their average rank (scipy's `rankdata(method="average")`); all
/// NaN when any value is NaN (scipy's default `nan_policy="propagate"`).
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    if values.iter().any(|v| v.is_nan()) {
        return vec![f64::NAN; n];
    }
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

/// Pearson correlation; NaN when either side has no variance, fewer than 2 points or a NaN.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64, LengthMismatch> {
    same_length(x, y)?;
    Ok(pearson_unchecked(x, y))
}

fn pearson_unchecked(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
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
    if sxx == 0.0 || syy == 0.0 || !(sxx * syy).is_finite() {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rho: Pearson correlation of average ranks (scipy's `spearmanr`); NaN for NaN
/// or constant input.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64, LengthMismatch> {
    same_length(x, y)?;
    Ok(pearson_unchecked(&average_ranks(x), &average_ranks(y)))
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
/// n <= MAX_EXACT_N, otherwise `monte_carlo_draws` orderings drawn from `rng`. An undefined
/// rho (NaN or constant input) has p NaN and no orderings (scipy's `permutation_test` returns
/// p = 0 there, which is no answer).
pub fn spearman_permutation_test(
    x: &[f64],
    y: &[f64],
    monte_carlo_draws: usize,
    rng: &mut ChaCha20Rng,
) -> Result<SpearmanTest, LengthMismatch> {
    same_length(x, y)?;
    let n = x.len();
    let rank_x = average_ranks(x);
    let rank_y = average_ranks(y);
    let rho = pearson_unchecked(&rank_x, &rank_y);
    if rho.is_nan() {
        return Ok(SpearmanTest {
            rho,
            p: f64::NAN,
            exact: true,
            orderings: 0,
        });
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
                if at_least(pearson_unchecked(&rank_x, &permuted).abs(), observed) {
                    exceed += 1;
                }
            });
            Ok(SpearmanTest {
                rho,
                p: exact_p(exceed, total),
                exact: true,
                orderings: total,
            })
        }
        None => {
            permuted.copy_from_slice(&rank_y);
            let mut exceed = 0;
            for _ in 0..monte_carlo_draws {
                permuted.shuffle(rng);
                if at_least(pearson_unchecked(&rank_x, &permuted).abs(), observed) {
                    exceed += 1;
                }
            }
            Ok(SpearmanTest {
                rho,
                p: monte_carlo_p(exceed, monte_carlo_draws),
                exact: false,
                orderings: monte_carlo_draws,
            })
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
        let test = spearman_permutation_test(&cos, &leakage, 0, &mut seeded_rng(0, "t")).unwrap();
        assert!((test.rho + 0.9).abs() < 1e-12, "{test:?}");
        assert!((test.p - 10.0 / 120.0).abs() < 1e-12, "{test:?}");
        assert!(test.exact);
        assert_eq!(test.orderings, 120);
    }

    #[test]
    fn a_perfect_order_is_the_most_extreme() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let test = spearman_permutation_test(&x, &x, 0, &mut seeded_rng(0, "t")).unwrap();
        assert_eq!(test.rho, 1.0);
        assert!((test.p - 2.0 / 720.0).abs() < 1e-12);
    }

    #[test]
    fn large_n_is_sampled_with_a_nonzero_p() {
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        let test = spearman_permutation_test(&x, &x, 999, &mut seeded_rng(1, "t")).unwrap();
        assert!(!test.exact);
        assert_eq!(test.p, 1.0 / 1000.0);
    }

    /// scipy 1.17.1: spearmanr([1, 2, 3, 4, 5], [5, 5, 5, 5, 5]) = (nan, nan);
    /// spearmanr([1, 2, nan, 4, 5], [1, 3, 2, 5, 4]) = (nan, nan);
    /// rankdata([1, 2, nan, 4]) = [nan, nan, nan, nan]; pearsonr([1, 2, 3, 4], [2, 2, 2, 2])
    /// = (nan, nan); spearmanr([1, 2, 3], [1, 2]) raises ValueError.
    #[test]
    fn nan_and_constant_input_give_nan_and_unequal_lengths_an_error() {
        let nan = f64::NAN;
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!(spearman(&x, &[5.0; 5]).unwrap().is_nan());
        assert!(spearman(&[1.0, 2.0, nan, 4.0, 5.0], &[1.0, 3.0, 2.0, 5.0, 4.0])
            .unwrap()
            .is_nan());
        assert!(average_ranks(&[1.0, 2.0, nan, 4.0]).iter().all(|r| r.is_nan()));
        assert!(pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0; 4]).unwrap().is_nan());
        assert_eq!(
            spearman(&[1.0, 2.0, 3.0], &[1.0, 2.0]),
            Err(LengthMismatch { x: 3, y: 2 })
        );
        let mut rng = seeded_rng(0, "t");
        for y in [[3.0; 5], [1.0, nan, 3.0, 4.0, 5.0]] {
            let test = spearman_permutation_test(&x, &y, 10, &mut rng).unwrap();
            assert!(test.rho.is_nan() && test.p.is_nan(), "{test:?}");
            assert_eq!(test.orderings, 0);
        }
        assert!(spearman_permutation_test(&x, &x[..4], 10, &mut rng).is_err());
        assert!(spearman(&[1.0], &[2.0]).unwrap().is_nan());
    }
}
