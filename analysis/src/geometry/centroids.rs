//! M1 and M2 from persona centroids (mean over each persona's kept questions), and their
//! question-level bootstrap: a replicate redraws the questions with replacement (the same
//! draw for every checkpoint, so deltas stay paired) and recomputes every centroid as a
//! weighted mean, one matrix product per persona and checkpoint.
//!
//! M1 = mean off-diagonal cosine of the persona-centroid cosine matrix (one value per pair
//! i < j). M2 = mean over the personas other than the axis persona of |cos(centroid, axis)|,
//! axis = axis-persona centroid of the axis checkpoint (E0) minus that of base.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, Axis};

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

/// Bootstrap replicates of M1 and M2 for every checkpoint.
pub struct BootstrapReplicates {
    /// [checkpoint][replicate]
    pub m1: Vec<Vec<f64>>,
    /// [checkpoint][replicate]; empty when there is no axis.
    pub m2: Vec<Vec<f64>>,
}

/// Replicate centroids of one checkpoint: [replicate][persona][hidden], from question counts
/// `weights` [replicate][question].
fn replicate_centroids(
    rows: &LayerRows,
    personas: usize,
    questions: usize,
    keep: &[bool],
    weights: &Array2<f32>,
    only: Option<usize>,
) -> Array3<f32> {
    let hidden = rows.rows.ncols();
    let replicates = weights.nrows();
    let mut out = Array3::<f32>::zeros((replicates, personas, hidden));
    for p in 0..personas {
        if only.is_some_and(|o| o != p) {
            continue;
        }
        let mut w = weights.clone();
        for q in 0..questions {
            if !keep[p * questions + q] {
                w.column_mut(q).fill(0.0);
            }
        }
        for mut row in w.axis_iter_mut(Axis(0)) {
            let total: f32 = row.sum();
            let scale = if total > 0.0 { 1.0 / total } else { f32::NAN };
            row.mapv_inplace(|v| v * scale);
        }
        let persona_rows = rows.rows.slice(s![p * questions..(p + 1) * questions, ..]);
        let mut target = out.slice_mut(s![.., p, ..]);
        general_mat_mul(1.0, &w, &persona_rows, 0.0, &mut target);
    }
    out
}

/// M1 and M2 replicates of every checkpoint; `axis` = (axis checkpoint, base checkpoint, axis
/// persona) indices, or None when M2 is not computed.
pub fn bootstrap(
    checkpoints: &[LayerRows],
    personas: usize,
    questions: usize,
    keep: &[bool],
    weights: &Array2<f32>,
    axis: Option<(usize, usize, usize)>,
) -> BootstrapReplicates {
    let replicates = weights.nrows();
    let axis_rows: Option<(Array2<f64>, usize)> = axis.map(|(axis_checkpoint, base, persona)| {
        let after = replicate_centroids(
            &checkpoints[axis_checkpoint],
            personas,
            questions,
            keep,
            weights,
            Some(persona),
        );
        let before = replicate_centroids(
            &checkpoints[base],
            personas,
            questions,
            keep,
            weights,
            Some(persona),
        );
        let difference = &after.index_axis(Axis(1), persona) - &before.index_axis(Axis(1), persona);
        (difference.mapv(f64::from), persona)
    });
    let mut m1 = Vec::with_capacity(checkpoints.len());
    let mut m2 = Vec::new();
    for rows in checkpoints {
        let all = replicate_centroids(rows, personas, questions, keep, weights, None);
        let mut m1_c = Vec::with_capacity(replicates);
        let mut m2_c = Vec::with_capacity(replicates);
        for b in 0..replicates {
            let centroids = all.index_axis(Axis(0), b).mapv(f64::from);
            let gram = centroids.dot(&centroids.t());
            m1_c.push(mean(&pair_cosines_from_gram(&gram)));
            if let Some((axis_vectors, persona)) = &axis_rows {
                m2_c.push(mean(&axis_abs_cosines(&centroids, axis_vectors.row(b), *persona)));
            }
        }
        m1.push(m1_c);
        if axis_rows.is_some() {
            m2.push(m2_c);
        }
    }
    BootstrapReplicates { m1, m2 }
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
}
