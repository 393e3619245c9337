//! Paired sign-flip tests: under the null of no shift, each paired difference is as likely
//! to have either sign, so flipping signs draws from the null of the mean difference.
//!
//! Two-sided (the statistic is |mean|); the direction the plan asks for is checked by the
//! verdicts, not here. Exact (all 2^n sign vectors, p = k/2^n) when n is at most
//! `exact_max_n`, else Monte Carlo with p = (b+1)/(m+1).
//!
//! Edge cases as scipy's `permutation_test(..., permutation_type="samples")`: all differences
//! zero (constant data) gives p = 1 (every sign vector ties the observed mean); no differences
//! or a NaN difference gives p NaN (scipy reports p = 0 for NaN data, which is no answer).

use crate::stats::permutation::{at_least, exact_p, monte_carlo_p};
use rand::Rng;

/// The outcome of one sign-flip test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignFlip {
    pub p: f64,
    /// Whether every sign vector was enumerated.
    pub exact: bool,
    /// Null draws (2^n when exact).
    pub draws: usize,
}

/// Two-sided sign-flip test of the mean of `differences`.
pub fn sign_flip_test(differences: &[f64], draws: usize, exact_max_n: usize, rng: &mut impl Rng) -> SignFlip {
    let n = differences.len();
    if n == 0 || differences.iter().any(|d| d.is_nan()) {
        return SignFlip {
            p: f64::NAN,
            exact: true,
            draws: 0,
        };
    }
    let observed: f64 = differences.iter().sum::<f64>().abs();
    if n <= exact_max_n.min(24) {
        let total = 1usize << n;
        let exceed = (0..total)
            .filter(|&signs| {
                let sum: f64 = differences
                    .iter()
                    .enumerate()
                    .map(|(i, d)| if signs >> i & 1 == 1 { -d } else { *d })
                    .sum();
                at_least(sum.abs(), observed)
            })
            .count();
        return SignFlip {
            p: exact_p(exceed, total),
            exact: true,
            draws: total,
        };
    }
    let mut exceed = 0;
    for _ in 0..draws {
        let mut sum = 0.0;
        for chunk in differences.chunks(64) {
            let bits: u64 = rng.gen();
            for (i, d) in chunk.iter().enumerate() {
                sum += if bits >> i & 1 == 1 { -d } else { *d };
            }
        }
        if at_least(sum.abs(), observed) {
            exceed += 1;
        }
    }
    SignFlip {
        p: monte_carlo_p(exceed, draws),
        exact: false,
        draws,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::rng::seeded_rng;

    #[test]
    fn all_positive_differences_give_the_smallest_exact_p() {
        let d = vec![1.0, 2.0, 0.5, 3.0, 1.5];
        let t = sign_flip_test(&d, 100, 20, &mut seeded_rng(1, "t"));
        assert!(t.exact);
        // Only the identity and the all-flipped vector reach |sum| = 8.
        assert!((t.p - 2.0 / 32.0).abs() < 1e-12, "{t:?}");
    }

    #[test]
    fn monte_carlo_p_is_never_zero_and_small_for_a_clear_shift() {
        let d: Vec<f64> = (0..66).map(|i| 0.05 + 0.001 * i as f64).collect();
        let t = sign_flip_test(&d, 999, 20, &mut seeded_rng(1, "t"));
        assert!(!t.exact);
        assert!((t.p - 1.0 / 1000.0).abs() < 1e-12, "{t:?}");
    }

    /// scipy 1.17.1: permutation_test((zeros(8),), mean, permutation_type="samples",
    /// n_resamples=inf).pvalue = 1.0; with a NaN difference scipy gives statistic nan, p 0.0.
    #[test]
    fn constant_data_give_one_and_nan_or_empty_data_nan() {
        let t = sign_flip_test(&[0.0; 8], 100, 20, &mut seeded_rng(1, "t"));
        assert_eq!(t.p, 1.0);
        let t = sign_flip_test(&[0.0; 80], 100, 20, &mut seeded_rng(1, "t"));
        assert_eq!(t.p, 1.0);
        assert!(
            sign_flip_test(&[1.0, f64::NAN, 2.0], 100, 20, &mut seeded_rng(1, "t"))
                .p
                .is_nan()
        );
        assert!(sign_flip_test(&[], 100, 20, &mut seeded_rng(1, "t")).p.is_nan());
    }

    #[test]
    fn symmetric_noise_is_not_significant() {
        let d: Vec<f64> = (0..40).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let t = sign_flip_test(&d, 999, 20, &mut seeded_rng(1, "t"));
        assert!(t.p > 0.5, "{t:?}");
    }
}
