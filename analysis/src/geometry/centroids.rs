//! M1 and M2 from persona centroids (mean over each persona's kept questions), and their
//! question-level bootstrap: a replicate redraws the questions with replacement (the same
//! draw for every checkpoint, so deltas stay paired) and recomputes every centroid as a
//! weighted mean (computed by `replicate_gram`, which needs only their dot products).
//!
//! M1 = mean off-diagonal cosine of the persona-centroid cosine matrix (one value per pair
//! i < j). M2 = mean over the personas other than the axis persona of |cos(centroid, axis)|,
//! axis = axis-persona centroid of the axis checkpoint (E0) minus that of base.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

/// One checkpoint's vectors of one layer: [persona * questions + question][hidden].
pub struct LayerRows<'a> {
    pub rows: ArrayView2<'a, f32>,
}

/// Persona centroids (f64 sums) over the kept questions.
pub fn centroids(rows: &LayerRows, personas: usize, questions: usize, keep: &[bool]) -> Array2<f64> {
    let hidden = rows.rows.ncols();
    let mut out = Array2::<f64>::zeros((personas, hidden));
    for p in 0..personas {
        let mut count = 0usize;
        let mut sum = out.row_mut(p);
        for q in 0..questions {
            let row = p * questions + q;
            if keep[row] {
                count += 1;
                sum.zip_mut_with(&rows.rows.row(row), |s, &x| *s += f64::from(x));
            }
        }
        if count > 0 {
            sum.mapv_inplace(|s| s / count as f64);
        } else {
            sum.fill(f64::NAN);
        }
    }
    out
}

fn cosine(a: ArrayView1<f64>, b: ArrayView1<f64>) -> f64 {
    let dot = a.dot(&b);
    let norms = a.dot(&a).sqrt() * b.dot(&b).sqrt();
    if norms > 0.0 {
        dot / norms
    } else {
        f64::NAN
    }
}

/// Cosine of every persona pair i < j, in row-major upper-triangle order.
pub fn pair_cosines(centroids: &Array2<f64>) -> Vec<f64> {
    let gram = centroids.dot(&centroids.t());
    pair_cosines_from_gram(&gram)
}

fn pair_cosines_from_gram(gram: &Array2<f64>) -> Vec<f64> {
    let n = gram.nrows();
    let mut out = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            out.push(gram[[i, j]] / (gram[[i, i]] * gram[[j, j]]).sqrt());
        }
    }
    out
}

/// |cos(centroid_p, axis)| for every persona except `axis_persona`, in persona order.
pub fn axis_abs_cosines(centroids: &Array2<f64>, axis: ArrayView1<f64>, axis_persona: usize) -> Vec<f64> {
    (0..centroids.nrows())
        .filter(|&p| p != axis_persona)
        .map(|p| cosine(centroids.row(p), axis).abs())
        .collect()
}

pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// How far a checkpoint moved the persona centroids: the mean over personas of
/// 1 - cos(after, before) of the same persona (0 = no persona's direction moved). Personas
/// without a centroid in either are left out; NaN when none is left.
pub fn mean_shift(after: &Array2<f64>, before: &Array2<f64>) -> f64 {
    let shifts: Vec<f64> = (0..after.nrows().min(before.nrows()))
        .map(|p| 1.0 - cosine(after.row(p), before.row(p)))
        .filter(|s| s.is_finite())
        .collect();
    if shifts.is_empty() {
        f64::NAN
    } else {
        mean(&shifts)
    }
}

/// Bootstrap replicates of M1 and M2 for every checkpoint.
pub struct BootstrapReplicates {
    /// [checkpoint][replicate]
    pub m1: Vec<Vec<f64>>,
    /// [checkpoint][replicate]; empty when there is no axis.
    pub m2: Vec<Vec<f64>>,
}

/// M1 and M2 replicates of every checkpoint; `axis` = (axis checkpoint, base checkpoint, axis
/// persona) indices, or None when M2 is not computed. The replicate centroids are never
/// formed: `replicate_gram` sums the products of every pair of them directly.
pub fn bootstrap(
    checkpoints: &[LayerRows],
    personas: usize,
    questions: usize,
    keep: &[bool],
    weights: &Array2<f32>,
    axis: Option<(usize, usize, usize)>,
) -> BootstrapReplicates {
    let views: Vec<ArrayView2<f32>> = checkpoints.iter().map(|c| c.rows).collect();
    let statistics =
        super::replicate_gram::replicate_statistics(&views, personas, questions, keep, weights.view(), axis);
    BootstrapReplicates {
        m1: statistics.m1,
        m2: statistics.m2,
    }
}

/// Question counts of `replicates` bootstrap draws of `questions` questions.
pub fn bootstrap_weights(replicates: usize, questions: usize, rng: &mut impl rand::Rng) -> Array2<f32> {
    let mut weights = Array2::<f32>::zeros((replicates, questions));
    for mut row in weights.axis_iter_mut(Axis(0)) {
        for _ in 0..questions {
            row[rng.gen_range(0..questions)] += 1.0;
        }
    }
    weights
}

/// The axis between two centroid sets: `after[persona] - before[persona]`.
pub fn axis(after: &Array2<f64>, before: &Array2<f64>, persona: usize) -> Array1<f64> {
    &after.row(persona) - &before.row(persona)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::rng::seeded_rng;

    #[test]
    fn identical_centroids_have_cosine_one_and_orthogonal_ones_zero() {
        let c = Array2::from_shape_vec((3, 2), vec![1.0, 0.0, 2.0, 0.0, 0.0, 3.0]).unwrap();
        let pairs = pair_cosines(&c);
        assert_eq!(pairs.len(), 3);
        assert!((pairs[0] - 1.0).abs() < 1e-12 && pairs[1].abs() < 1e-12 && pairs[2].abs() < 1e-12);
    }

    #[test]
    fn masked_questions_do_not_enter_a_centroid() {
        let values: Vec<f32> = vec![1.0, 1.0, 100.0, 100.0, 3.0, 3.0, 5.0, 5.0];
        let rows = LayerRows {
            rows: ArrayView2::from_shape((4, 2), &values).unwrap(),
        };
        let c = centroids(&rows, 2, 2, &[true, false, true, true]);
        assert_eq!(c.row(0).to_vec(), vec![1.0, 1.0]);
        assert_eq!(c.row(1).to_vec(), vec![4.0, 4.0]);
    }

    #[test]
    fn unit_weights_reproduce_the_observed_statistics() {
        let (p, q, h) = (4, 5, 3);
        let values: Vec<f32> = (0..p * q * h).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let rows = LayerRows {
            rows: ArrayView2::from_shape((p * q, h), &values).unwrap(),
        };
        let keep = vec![true; p * q];
        let observed = mean(&pair_cosines(&centroids(&rows, p, q, &keep)));
        let ones = Array2::<f32>::ones((1, q));
        let reps = bootstrap(&[rows], p, q, &keep, &ones, None);
        assert!(
            (reps.m1[0][0] - observed).abs() < 1e-5,
            "{} vs {observed}",
            reps.m1[0][0]
        );
        let w = bootstrap_weights(10, q, &mut seeded_rng(1, "w"));
        assert!(w.rows().into_iter().all(|r| r.sum() == q as f32));
    }

    /// The fused replicate kernel (`replicate_gram`) against the textbook bootstrap: draw the
    /// question indices with the same stream, average each persona's kept resampled vectors
    /// in f64, take cosines.
    #[test]
    fn counts_matrix_bootstrap_equals_resampling_the_questions() {
        use rand::Rng;
        let (p, q, h, checkpoints, replicates) = (5, 11, 7, 3, 4 * 48 + 37);
        let mut rng = seeded_rng(9, "values");
        let values: Vec<Vec<f32>> = (0..checkpoints)
            .map(|_| (0..p * q * h).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
            .collect();
        let keep: Vec<bool> = (0..p * q).map(|r| r % 7 != 3).collect();
        let rows: Vec<LayerRows> = values
            .iter()
            .map(|v| LayerRows {
                rows: ArrayView2::from_shape((p * q, h), v).unwrap(),
            })
            .collect();
        let (axis_checkpoint, axis_persona) = (2, 1);
        let weights = bootstrap_weights(replicates, q, &mut seeded_rng(3, "boot"));
        let fast = bootstrap(
            &rows,
            p,
            q,
            &keep,
            &weights,
            Some((axis_checkpoint, 0, axis_persona)),
        );
        let mut draws = seeded_rng(3, "boot");
        for b in 0..replicates {
            let drawn: Vec<usize> = (0..q).map(|_| draws.gen_range(0..q)).collect();
            let centroid = |c: usize, persona: usize| -> Array1<f64> {
                let kept: Vec<usize> = drawn.iter().copied().filter(|&i| keep[persona * q + i]).collect();
                let mut sum = Array1::<f64>::zeros(h);
                for &i in &kept {
                    sum += &rows[c].rows.row(persona * q + i).mapv(f64::from);
                }
                sum / kept.len() as f64
            };
            let axis = &centroid(axis_checkpoint, axis_persona) - &centroid(0, axis_persona);
            for c in 0..checkpoints {
                let set = Array2::from_shape_fn((p, h), |(i, j)| centroid(c, i)[j]);
                let m1 = mean(&pair_cosines(&set));
                let m2 = mean(&axis_abs_cosines(&set, axis.view(), axis_persona));
                assert!(
                    (fast.m1[c][b] - m1).abs() < 1e-5,
                    "M1 c{c} b{b}: {} vs {m1}",
                    fast.m1[c][b]
                );
                assert!(
                    (fast.m2[c][b] - m2).abs() < 1e-5,
                    "M2 c{c} b{b}: {} vs {m2}",
                    fast.m2[c][b]
                );
            }
        }
    }
}
