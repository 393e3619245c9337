//! Multiple-comparison control: Benjamini-Hochberg FDR and Holm's step-down.
//!
//! Both take raw p-values in any order and return adjusted p-values in the same order, so a
//! family of cells keeps its layout; a cell is declared at level alpha when adjusted p <= alpha.

/// Benjamini-Hochberg adjusted p-values (the `fdr_bh` of statsmodels).
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let mut adjusted = vec![0.0; m];
    let mut running_min = 1.0f64;
    for (rank_from_top, &i) in order.iter().enumerate() {
        let rank = m - rank_from_top;
        running_min = running_min.min(p[i] * m as f64 / rank as f64);
        adjusted[i] = running_min.min(1.0);
    }
    adjusted
}

/// Holm step-down adjusted p-values (the `holm` of statsmodels).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running_max = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        running_max = running_max.max(p[i] * (m - rank) as f64);
        adjusted[i] = running_max.min(1.0);
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bh_matches_the_textbook_example() {
        let p = [0.01, 0.04, 0.03, 0.005];
        let adj = benjamini_hochberg(&p);
        let expected = [0.02, 0.04, 0.04, 0.02];
        for (a, e) in adj.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{adj:?}");
        }
    }

    #[test]
    fn holm_is_monotone_and_capped() {
        let p = [0.01, 0.04, 0.03, 0.005];
        let adj = holm(&p);
        let expected = [0.03, 0.06, 0.06, 0.02];
        for (a, e) in adj.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{adj:?}");
        }
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
    }
}
