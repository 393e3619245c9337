//! Tests with seeds as blocks, for the multi-seed summary (`crate::seeds`): every seed is a
//! complete replicate of the design (its own EM, benign and coupling trainings, generations
//! and extractions), so the seed is the unit of replication and each seed contributes one
//! block of observations.
//!
//! - `one_sample_t`: a within-seed effect (after minus before) tested against 0 across seeds;
//!   with two treatments this is the randomized-complete-block F test (F = t^2), seed-level
//!   shifts cancelling in each difference (scipy's `ttest_1samp`).
//! - `friedman`: k conditions within each seed, ranked within the seed (so a seed that leaks
//!   more everywhere does not count as a condition effect), chi-square approximation with the
//!   tie correction (scipy's `friedmanchisquare`).
//! - `page_trend`: the ordered alternative of Friedman's design, Page's L = sum_j j R_j with
//!   the conditions in a given order; p exact by convolving, seed by seed, the distribution of
//!   sum_j j r_pi(j) over the k! arrangements of that seed's ranks (conditional on its ties;
//!   without ties this is scipy's `page_trend_test(method="exact")`).
//!
//! NaN anywhere in a block makes the test NaN; too few blocks or treatments give NaN.

use super::correlation::average_ranks;
use super::distributions::{chi2_sf, student_t_sf};
use super::permutation::for_each_permutation;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A one-sample t test of mean 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TTest {
    #[serde(with = "crate::json_nan")]
    pub t: f64,
    pub df: usize,
    /// Two-sided.
    #[serde(with = "crate::json_nan")]
    pub p: f64,
}

/// One-sample t test of mean 0 (two-sided). Fewer than 2 values or a NaN give NaN; equal
/// values give t = +-inf and p = 0 unless they are 0 (then NaN), as scipy.
pub fn one_sample_t(values: &[f64]) -> TTest {
    let n = values.len();
    let nan = TTest {
        t: f64::NAN,
        df: n.saturating_sub(1),
        p: f64::NAN,
    };
    if n < 2 || values.iter().any(|v| v.is_nan()) {
        return nan;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = mean / (variance / n as f64).sqrt();
    if t.is_nan() {
        return nan;
    }
    TTest {
        t,
        df: n - 1,
        p: (2.0 * student_t_sf(t.abs(), (n - 1) as f64)).min(1.0),
    }
}

/// Friedman's test of k treatments in n blocks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Friedman {
    #[serde(with = "crate::json_nan")]
    pub statistic: f64,
    pub df: usize,
    #[serde(with = "crate::json_nan")]
    pub p: f64,
}

/// Friedman's chi-square of `blocks` (one row per block, one value per treatment).
pub fn friedman(blocks: &[Vec<f64>]) -> Friedman {
    let k = blocks.first().map_or(0, Vec::len);
    let n = blocks.len();
    let nan = Friedman {
        statistic: f64::NAN,
        df: k.saturating_sub(1),
        p: f64::NAN,
    };
    if n < 2
        || k < 3
        || blocks
            .iter()
            .any(|b| b.len() != k || b.iter().any(|v| v.is_nan()))
    {
        return nan;
    }
    let mut rank_sums = vec![0.0; k];
    let mut ties = 0.0;
    for block in blocks {
        let ranks = average_ranks(block);
        rank_sums.iter_mut().zip(&ranks).for_each(|(s, r)| *s += r);
        let mut counts: BTreeMap<u64, f64> = BTreeMap::new();
        for r in &ranks {
            *counts.entry((r * 2.0) as u64).or_default() += 1.0;
        }
        ties += counts.values().map(|t| t * t * t - t).sum::<f64>();
    }
    let (n, kf) = (n as f64, k as f64);
    let mut statistic =
        12.0 / (n * kf * (kf + 1.0)) * rank_sums.iter().map(|r| r * r).sum::<f64>() - 3.0 * n * (kf + 1.0);
    statistic /= 1.0 - ties / (n * kf * (kf * kf - 1.0));
    Friedman {
        statistic,
        df: k - 1,
        p: chi2_sf(statistic, kf - 1.0),
    }
}

/// Page's trend test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PageTrend {
    /// L = sum_j j R_j, treatments in the given order (j from 1).
    #[serde(with = "crate::json_nan")]
    pub l: f64,
    /// P(L >= observed): the values increase along the order.
    #[serde(with = "crate::json_nan")]
    pub p_increasing: f64,
    /// P(L <= observed): they decrease along it.
    #[serde(with = "crate::json_nan")]
    pub p_decreasing: f64,
    /// min(1, 2 min(p_increasing, p_decreasing)).
    #[serde(with = "crate::json_nan")]
    pub p_two_sided: f64,
}

/// Largest number of treatments whose k! arrangements are enumerated per block.
pub const PAGE_MAX_TREATMENTS: usize = 8;

/// Page's L of `blocks` (treatments in the order of the hypothesis), exact p by convolution
/// over blocks (module docs); NaN for fewer than 2 blocks or 3 treatments, more than
/// PAGE_MAX_TREATMENTS treatments, or a NaN.
pub fn page_trend(blocks: &[Vec<f64>]) -> PageTrend {
    let k = blocks.first().map_or(0, Vec::len);
    let nan = PageTrend {
        l: f64::NAN,
        p_increasing: f64::NAN,
        p_decreasing: f64::NAN,
        p_two_sided: f64::NAN,
    };
    if blocks.len() < 2
        || !(3..=PAGE_MAX_TREATMENTS).contains(&k)
        || blocks
            .iter()
            .any(|b| b.len() != k || b.iter().any(|v| v.is_nan()))
    {
        return nan;
    }
    // Average ranks are multiples of 1/2: work with twice the rank, in integers.
    let mut observed: i64 = 0;
    let mut distribution: BTreeMap<i64, f64> = BTreeMap::from([(0, 1.0)]);
    for block in blocks {
        let doubled: Vec<i64> = average_ranks(block)
            .iter()
            .map(|r| (r * 2.0).round() as i64)
            .collect();
        observed += doubled
            .iter()
            .enumerate()
            .map(|(j, r)| (j as i64 + 1) * r)
            .sum::<i64>();
        let mut block_values: BTreeMap<i64, f64> = BTreeMap::new();
        for_each_permutation(k, |order| {
            let value: i64 = order
                .iter()
                .enumerate()
                .map(|(j, &from)| (j as i64 + 1) * doubled[from])
                .sum();
            *block_values.entry(value).or_default() += 1.0;
        });
        let total: f64 = block_values.values().sum();
        let mut next: BTreeMap<i64, f64> = BTreeMap::new();
        for (a, pa) in &distribution {
            for (b, pb) in &block_values {
                *next.entry(a + b).or_default() += pa * pb / total;
            }
        }
        distribution = next;
    }
    let p_increasing: f64 = distribution.range(observed..).map(|(_, p)| p).sum();
    let p_decreasing: f64 = distribution.range(..=observed).map(|(_, p)| p).sum();
    PageTrend {
        l: observed as f64 / 2.0,
        p_increasing: p_increasing.min(1.0),
        p_decreasing: p_decreasing.min(1.0),
        p_two_sided: (2.0 * p_increasing.min(p_decreasing)).min(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(found: f64, expected: f64, what: &str) {
        assert!(
            (found - expected).abs() <= 1e-10 * expected.abs().max(1e-12),
            "{what}: {found} vs scipy {expected}"
        );
    }

    /// Mean bystander leakage of three seeds (rows) and five conditions (columns, E0..E4).
    fn leakage() -> Vec<Vec<f64>> {
        vec![
            vec![45.7, 48.6, 50.1, 53.7, 52.0],
            vec![44.1, 47.0, 51.2, 52.5, 53.3],
            vec![46.0, 46.5, 49.9, 54.1, 51.0],
        ]
    }

    /// scipy 1.17.1: ttest_1samp([0.012, 0.034, -0.005, 0.021], 0) = (1.8924498565688148,
    /// 0.15477977867655393); ttest_1samp([1.5, 2.5], 0) = (4.0, 0.15595826075473865).
    #[test]
    fn the_t_test_matches_scipy() {
        let t = one_sample_t(&[0.012, 0.034, -0.005, 0.021]);
        close(t.t, 1.8924498565688148, "t");
        close(t.p, 0.15477977867655393, "p");
        assert_eq!(t.df, 3);
        let t = one_sample_t(&[1.5, 2.5]);
        close(t.t, 4.0, "t");
        close(t.p, 0.15595826075473865, "p");
        assert!(one_sample_t(&[0.3]).p.is_nan());
        assert!(one_sample_t(&[0.3, f64::NAN]).p.is_nan());
        assert!(one_sample_t(&[0.0, 0.0]).p.is_nan());
        // scipy: ttest_1samp([0.5, 0.5, 0.5], 0) = (inf, 0.0)
        assert_eq!(one_sample_t(&[0.5, 0.5, 0.5]).p, 0.0);
    }

    /// scipy 1.17.1: friedmanchisquare(*leakage().T) = (11.466666666666669,
    /// 0.02179089585829388); with ties, friedmanchisquare(*[[1,1,2,3,3],[2,2,2,1,3],
    /// [1,2,3,4,5]].T) = (7.259259259259257, 0.12280558813346028).
    #[test]
    fn friedman_matches_scipy() {
        let f = friedman(&leakage());
        close(f.statistic, 11.466666666666669, "statistic");
        close(f.p, 0.02179089585829388, "p");
        assert_eq!(f.df, 4);
        let tied = vec![
            vec![1.0, 1.0, 2.0, 3.0, 3.0],
            vec![2.0, 2.0, 2.0, 1.0, 3.0],
            vec![1.0, 2.0, 3.0, 4.0, 5.0],
        ];
        let f = friedman(&tied);
        close(f.statistic, 7.259259259259257, "statistic with ties");
        close(f.p, 0.12280558813346028, "p with ties");
        assert!(friedman(&leakage()[..1]).p.is_nan());
    }

    /// scipy 1.17.1: page_trend_test(leakage(), method="exact") = (163.0,
    /// 4.0509259259259265e-05); reversed columns (107.0, 0.9999924768518519).
    #[test]
    fn page_matches_scipy_exact() {
        let p = page_trend(&leakage());
        assert_eq!(p.l, 163.0);
        close(p.p_increasing, 4.0509259259259265e-05, "p increasing");
        close(p.p_two_sided, 2.0 * 4.0509259259259265e-05, "p two-sided");
        let reversed: Vec<Vec<f64>> = leakage()
            .into_iter()
            .map(|mut b| {
                b.reverse();
                b
            })
            .collect();
        let p = page_trend(&reversed);
        assert_eq!(p.l, 107.0);
        close(p.p_increasing, 0.9999924768518519, "p increasing, reversed");
        close(p.p_decreasing, 4.0509259259259265e-05, "p decreasing, reversed");
        assert!(page_trend(&leakage()[..1]).p_two_sided.is_nan());
    }
}
