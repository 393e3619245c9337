//! Multiple-comparison control: Benjamini-Hochberg FDR and Holm's step-down.
//!
//! Both take raw p-values in any order and return adjusted p-values in the same order, so a
//! family of cells keeps its layout; a cell is declared at level alpha when adjusted p < alpha
//! (the one comparison used everywhere in the analysis).
//!
//! A NaN p-value is a test without a result (e.g. an undefined statistic). Its adjusted value
//! is NaN, and it still counts in the family size m: the pre-registered family does not shrink
//! because a test had no result, so the other cells are adjusted as if the missing one had the
//! largest p. This is statsmodels' `multipletests(..., method="holm")` convention
//! (`holm([0.01, NaN]) = [0.02, NaN]`); statsmodels' `fdr_bh` turns every cell NaN and scipy's
//! `false_discovery_control` refuses NaN, so for BH the same convention is applied (the other
//! cells equal `multipletests` with the NaN replaced by 1.0). R's `p.adjust` instead drops NaN
//! from m (`[0.01, NA]`), which is less conservative. A p-value outside [0, 1] is an error.

/// A p-value that cannot be adjusted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "p-value at index {index} is {value}: expected a number in [0, 1], or NaN for a test without a result"
)]
pub struct PValueError {
    pub index: usize,
    pub value: f64,
}

fn check(p: &[f64]) -> Result<(), PValueError> {
    match p.iter().position(|v| !v.is_nan() && !(0.0..=1.0).contains(v)) {
        Some(index) => Err(PValueError {
            index,
            value: p[index],
        }),
        None => Ok(()),
    }
}

/// Indices of the defined p-values in ascending order of p; NaN ones are left out (they rank
/// above every defined one, so the defined ones keep ranks 1..k of m).
fn ascending(p: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    order
}

/// Benjamini-Hochberg adjusted p-values (the `fdr_bh` of statsmodels); NaN in, NaN out, m
/// counts every cell (module docs).
pub fn benjamini_hochberg(p: &[f64]) -> Result<Vec<f64>, PValueError> {
    check(p)?;
    let m = p.len() as f64;
    let mut adjusted = vec![f64::NAN; p.len()];
    let order = ascending(p);
    // A NaN cell ranks last with p treated as 1: its term m * 1 / m = 1 is the cap anyway.
    let mut running_min = 1.0f64;
    for (rank0, &i) in order.iter().enumerate().rev() {
        running_min = running_min.min(p[i] * m / (rank0 + 1) as f64);
        adjusted[i] = running_min.min(1.0);
    }
    Ok(adjusted)
}

/// Holm step-down adjusted p-values (the `holm` of statsmodels); NaN in, NaN out, m counts
/// every cell (module docs).
pub fn holm(p: &[f64]) -> Result<Vec<f64>, PValueError> {
    check(p)?;
    let m = p.len();
    let mut adjusted = vec![f64::NAN; m];
    let mut running_max = 0.0f64;
    for (rank0, &i) in ascending(p).iter().enumerate() {
        running_max = running_max.max(p[i] * (m - rank0) as f64);
        adjusted[i] = running_max.min(1.0);
    }
    Ok(adjusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(found: &[f64], expected: &[f64]) {
        assert_eq!(found.len(), expected.len());
        for (f, e) in found.iter().zip(expected) {
            assert!(
                (f.is_nan() && e.is_nan()) || (f - e).abs() < 1e-12,
                "{found:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn bh_matches_the_textbook_example() {
        close(
            &benjamini_hochberg(&[0.01, 0.04, 0.03, 0.005]).unwrap(),
            &[0.02, 0.04, 0.04, 0.02],
        );
    }

    #[test]
    fn holm_is_monotone_and_capped() {
        close(
            &holm(&[0.01, 0.04, 0.03, 0.005]).unwrap(),
            &[0.03, 0.06, 0.06, 0.02],
        );
        assert_eq!(holm(&[0.9, 0.8]).unwrap(), vec![1.0, 1.0]);
    }

    /// The field case (../shared/field-cases/README.md): a test without a result is never
    /// made significant, and it still counts in m.
    #[test]
    fn a_nan_p_value_stays_nan_and_counts_in_the_family() {
        let nan = f64::NAN;
        // statsmodels 0.15.0: multipletests([0.01, nan], method="holm")[1] = [0.02, nan]
        close(&holm(&[0.01, nan]).unwrap(), &[0.02, nan]);
        // multipletests([0.01, 0.04, nan, 0.03, 0.005], method="holm")[1]
        //   = [0.04, 0.09, nan, 0.09, 0.025]
        close(
            &holm(&[0.01, 0.04, nan, 0.03, 0.005]).unwrap(),
            &[0.04, 0.09, nan, 0.09, 0.025],
        );
        // statsmodels' fdr_bh returns all-NaN here; the others are
        // multipletests([0.01, 0.04, 1.0, 0.03, 0.005], method="fdr_bh")[1]
        //   = [0.025, 0.05, 1.0, 0.05, 0.025], the NaN cell NaN.
        close(
            &benjamini_hochberg(&[0.01, 0.04, nan, 0.03, 0.005]).unwrap(),
            &[0.025, 0.05, nan, 0.05, 0.025],
        );
        // multipletests([0.01, 1.0], method="fdr_bh")[1] = [0.02, 1.0]
        close(&benjamini_hochberg(&[0.01, nan]).unwrap(), &[0.02, nan]);
        close(&benjamini_hochberg(&[nan, nan]).unwrap(), &[nan, nan]);
        close(&holm(&[-nan]).unwrap(), &[nan]);
        assert!(benjamini_hochberg(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_p_value_outside_the_unit_interval_is_an_error() {
        // scipy.stats.false_discovery_control([0.5, 1.5]) raises ValueError.
        assert_eq!(
            benjamini_hochberg(&[0.5, 1.5]),
            Err(PValueError { index: 1, value: 1.5 })
        );
        assert!(holm(&[-0.1]).is_err());
        assert!(holm(&[f64::INFINITY]).is_err());
    }
}
