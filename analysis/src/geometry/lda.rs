//! Linear discriminant analysis with fixed shrinkage, the same estimator as scikit-learn's
//! `LinearDiscriminantAnalysis(solver="lsqr", shrinkage=alpha)`:
//!
//! - class means m_k and priors n_k / n from the training rows;
//! - pooled covariance S = sum_k prior_k * cov_k, each cov_k the biased (1/n_k) empirical
//!   covariance of class k, shrunk as (1 - alpha) S + alpha * (trace(S) / d) * I (sklearn shrinks
//!   every cov_k toward its own trace / d, which is the same thing after pooling);
//! - coefficients w_k = S^-1 m_k, intercepts -0.5 m_k . w_k + ln(prior_k), prediction the first
//!   class of largest score (numpy's argmax).
//!
//! The fit is written on sufficient statistics (class sums, class counts and the uncentred
//! second moment of the training rows) so that a permutation of the labels never touches the
//! rows again except to sum them: S = T / n - sum_k prior_k m_k m_k^T.

/// Why a fit failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LdaError {
    #[error("LDA: shrinkage must lie in (0, 1], found {0}")]
    Shrinkage(f64),
    #[error("LDA: the shrunk covariance is not positive definite (dimension {dimension}); the training rows are degenerate")]
    NotPositiveDefinite { dimension: usize },
    #[error("LDA: no training rows")]
    Empty,
}

/// A fitted classifier: scores x . coef_k + intercept_k.
#[derive(Debug, Clone, PartialEq)]
pub struct Lda {
    pub dimension: usize,
    pub classes: usize,
    /// Row-major [class][dimension]; classes absent from training have no coefficients and
    /// an intercept of -inf (never predicted, as scikit-learn never predicts unseen labels).
    pub coef: Vec<f64>,
    pub intercept: Vec<f64>,
}

/// Sufficient statistics of a set of labelled training rows.
#[derive(Debug, Clone)]
pub struct TrainingStats {
    pub dimension: usize,
    pub classes: usize,
    /// Row-major [class][dimension].
    pub class_sums: Vec<f64>,
    pub class_counts: Vec<usize>,
    /// Row-major [dimension][dimension]: sum over rows of x x^T.
    pub second_moment: Vec<f64>,
}

impl TrainingStats {
    /// Statistics of `rows` (row-major, `dimension` wide) labelled `labels`.
    pub fn of(rows: &[f64], dimension: usize, labels: &[usize], classes: usize) -> TrainingStats {
        let mut stats = TrainingStats {
            dimension,
            classes,
            class_sums: vec![0.0; classes * dimension],
            class_counts: vec![0; classes],
            second_moment: vec![0.0; dimension * dimension],
        };
        for (row, &label) in rows.chunks_exact(dimension).zip(labels) {
            stats.class_counts[label] += 1;
            for (s, x) in stats.class_sums[label * dimension..(label + 1) * dimension]
                .iter_mut()
                .zip(row)
            {
                *s += x;
            }
            for i in 0..dimension {
                for j in 0..dimension {
                    stats.second_moment[i * dimension + j] += row[i] * row[j];
                }
            }
        }
        stats
    }
}

/// Fits the shrinkage LDA from sufficient statistics.
pub fn fit(stats: &TrainingStats, shrinkage: f64) -> Result<Lda, LdaError> {
    if !(shrinkage > 0.0 && shrinkage <= 1.0) {
        return Err(LdaError::Shrinkage(shrinkage));
    }
    let d = stats.dimension;
    let n: usize = stats.class_counts.iter().sum();
    if n == 0 {
        return Err(LdaError::Empty);
    }
    let n_f = n as f64;
    let mut means = vec![0.0; stats.classes * d];
    for k in 0..stats.classes {
        let count = stats.class_counts[k];
        if count > 0 {
            for i in 0..d {
                means[k * d + i] = stats.class_sums[k * d + i] / count as f64;
            }
        }
    }
    let mut covariance: Vec<f64> = stats.second_moment.iter().map(|v| v / n_f).collect();
    for k in 0..stats.classes {
        let prior = stats.class_counts[k] as f64 / n_f;
        if prior == 0.0 {
            continue;
        }
        let m = &means[k * d..(k + 1) * d];
        for i in 0..d {
            let pm = prior * m[i];
            for j in 0..d {
                covariance[i * d + j] -= pm * m[j];
            }
        }
    }
    let trace: f64 = (0..d).map(|i| covariance[i * d + i]).sum();
    let target = shrinkage * trace / d as f64;
    for v in covariance.iter_mut() {
        *v *= 1.0 - shrinkage;
    }
    for i in 0..d {
        covariance[i * d + i] += target;
    }
    let factor = cholesky(&mut covariance, d).ok_or(LdaError::NotPositiveDefinite { dimension: d })?;
    let mut coef = vec![0.0; stats.classes * d];
    let mut intercept = vec![f64::NEG_INFINITY; stats.classes];
    for k in 0..stats.classes {
        if stats.class_counts[k] == 0 {
            continue;
        }
        let w = &mut coef[k * d..(k + 1) * d];
        w.copy_from_slice(&means[k * d..(k + 1) * d]);
        cholesky_solve(factor, d, w);
        let m = &means[k * d..(k + 1) * d];
        let quadratic: f64 = m.iter().zip(w.iter()).map(|(a, b)| a * b).sum();
        intercept[k] = -0.5 * quadratic + (stats.class_counts[k] as f64 / n_f).ln();
    }
    Ok(Lda {
        dimension: d,
        classes: stats.classes,
        coef,
        intercept,
    })
}

impl Lda {
    /// The predicted class of one row.
    pub fn predict_one(&self, row: &[f64]) -> usize {
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for k in 0..self.classes {
            if self.intercept[k] == f64::NEG_INFINITY {
                continue;
            }
            let w = &self.coef[k * self.dimension..(k + 1) * self.dimension];
            let score: f64 = self.intercept[k] + w.iter().zip(row).map(|(a, b)| a * b).sum::<f64>();
            if score > best_score {
                best_score = score;
                best = k;
            }
        }
        best
    }

    /// Predicted classes of row-major `rows`.
    pub fn predict(&self, rows: &[f64]) -> Vec<usize> {
        rows.chunks_exact(self.dimension)
            .map(|r| self.predict_one(r))
            .collect()
    }
}

/// In-place lower Cholesky factor of a symmetric matrix; None if not positive definite.
fn cholesky(a: &mut [f64], d: usize) -> Option<&[f64]> {
    for j in 0..d {
        let mut diagonal = a[j * d + j];
        for k in 0..j {
            diagonal -= a[j * d + k] * a[j * d + k];
        }
        if diagonal <= 0.0 || !diagonal.is_finite() {
            return None;
        }
        let l_jj = diagonal.sqrt();
        a[j * d + j] = l_jj;
        for i in j + 1..d {
            let mut v = a[i * d + j];
            for k in 0..j {
                v -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = v / l_jj;
        }
    }
    Some(a)
}

/// Solves L L^T x = b in place, L the lower factor from `cholesky`.
fn cholesky_solve(l: &[f64], d: usize, b: &mut [f64]) {
    for i in 0..d {
        let mut v = b[i];
        for k in 0..i {
            v -= l[i * d + k] * b[k];
        }
        b[i] = v / l[i * d + i];
    }
    for i in (0..d).rev() {
        let mut v = b[i];
        for k in i + 1..d {
            v -= l[k * d + i] * b[k];
        }
        b[i] = v / l[i * d + i];
    }
}

/// Held-out accuracy with the given fold of every row (rows of fold f are predicted by a fit
/// on all other rows). Returns (correct, total).
pub fn cross_validated_accuracy(
    rows: &[f64],
    dimension: usize,
    labels: &[usize],
    classes: usize,
    folds: &[usize],
    shrinkage: f64,
) -> Result<(usize, usize), LdaError> {
    let fold_count = folds.iter().max().map_or(0, |f| f + 1);
    let mut correct = 0;
    for fold in 0..fold_count {
        let (mut train_rows, mut train_labels) = (Vec::new(), Vec::new());
        for (i, row) in rows.chunks_exact(dimension).enumerate() {
            if folds[i] != fold {
                train_rows.extend_from_slice(row);
                train_labels.push(labels[i]);
            }
        }
        let model = fit(
            &TrainingStats::of(&train_rows, dimension, &train_labels, classes),
            shrinkage,
        )?;
        for (i, row) in rows.chunks_exact(dimension).enumerate() {
            if folds[i] == fold && model.predict_one(row) == labels[i] {
                correct += 1;
            }
        }
    }
    Ok((correct, labels.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    /// Known answers from scikit-learn (scripts/fixtures/make_lda_fixtures.py): the same
    /// toy data, shrinkage and folds give the same coefficients, predictions and accuracy.
    #[test]
    fn matches_scikit_learn_on_the_committed_fixtures() {
        let path = fixture_dir().join("lda_sklearn.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = cases["cases"].as_array().unwrap();
        assert!(cases.len() >= 3);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let dimension = case["dimension"].as_u64().unwrap() as usize;
            let classes = case["classes"].as_u64().unwrap() as usize;
            let shrinkage = case["shrinkage"].as_f64().unwrap();
            let rows: Vec<f64> = case["x"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect();
            let labels: Vec<usize> = case["y"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let folds: Vec<usize> = case["folds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            // Full fit: coefficients and predictions.
            let model = fit(&TrainingStats::of(&rows, dimension, &labels, classes), shrinkage).unwrap();
            let expected_coef: Vec<f64> = case["coef"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect();
            for (a, b) in model.coef.iter().zip(&expected_coef) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{name}: coef {a} vs sklearn {b}"
                );
            }
            let expected_intercept: Vec<f64> = case["intercept"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (a, b) in model.intercept.iter().zip(&expected_intercept) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{name}: intercept {a} vs sklearn {b}"
                );
            }
            let predicted = model.predict(&rows);
            let expected_predicted: Vec<usize> = case["predict"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(predicted, expected_predicted, "{name}: predictions");
            let (correct, total) =
                cross_validated_accuracy(&rows, dimension, &labels, classes, &folds, shrinkage).unwrap();
            let expected = case["cv_accuracy"].as_f64().unwrap();
            assert!(
                (correct as f64 / total as f64 - expected).abs() < 1e-12,
                "{name}: held-out accuracy {correct}/{total} vs sklearn {expected}"
            );
        }
    }

    #[test]
    fn shrinkage_outside_the_unit_interval_is_refused() {
        let stats = TrainingStats::of(&[0.0, 1.0], 1, &[0, 1], 2);
        assert_eq!(fit(&stats, 0.0), Err(LdaError::Shrinkage(0.0)));
        assert_eq!(fit(&stats, 1.5), Err(LdaError::Shrinkage(1.5)));
    }
}
