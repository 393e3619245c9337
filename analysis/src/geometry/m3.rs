//! M3: held-out separability of the personas. A shrinkage LDA (`lda.rs`, scikit-learn's lsqr
//! estimator) over the persona labels of the per-question vectors, in the label-free PCA basis
//! of `pca.rs`, cross-validated by question (GroupKFold with fold = question index mod
//! folds, so a question's vectors are never both trained on and tested), accuracy = correct
//! held-out predictions / held-out rows.
//!
//! Null of the `reference` flavour (the plan's pre-registered test; the seed itself ran a
//! degenerate nearest-centroid classifier): the joint shuffle, i.e. within every question the
//! persona labels of its valid vectors are permuted, the same permutation for every
//! checkpoint, and every checkpoint's accuracy is recomputed; a cell's null statistic is the
//! same delta of these accuracies. Label permutations leave the rows untouched, so the
//! per-fold second moments are computed once and each refit only re-sums the rows by class;
//! the held-out scores of a batch of permutations are one matrix product per fold.

use super::lda::LdaError;
use crate::stats::rng::seeded_rng;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rayon::prelude::*;

/// Rows, folds and kept vectors shared by all checkpoints of a method and layer.
pub struct M3Setup {
    pub personas: usize,
    pub questions: usize,
    pub folds: usize,
    /// Row-major [persona][question]; the paired filter (valid in every checkpoint).
    pub keep: Vec<bool>,
    /// Per fold, the kept rows (persona * questions + question) it tests.
    test_rows: Vec<Vec<usize>>,
}

impl M3Setup {
    pub fn new(personas: usize, questions: usize, folds: usize, keep: Vec<bool>) -> M3Setup {
        let folds = folds.clamp(2, questions.max(2));
        let mut test_rows = vec![Vec::new(); folds];
        for p in 0..personas {
            for q in 0..questions {
                let row = p * questions + q;
                if keep[row] {
                    test_rows[q % folds].push(row);
                }
            }
        }
        M3Setup {
            personas,
            questions,
            folds,
            keep,
            test_rows,
        }
    }

    /// The observed labels: each row's persona (255 where not kept).
    pub fn observed_labels(&self) -> Vec<u8> {
        (0..self.personas * self.questions)
            .map(|row| {
                if self.keep[row] {
                    (row / self.questions) as u8
                } else {
                    u8::MAX
                }
            })
            .collect()
    }

    /// Labels permuted within every question among its kept rows.
    pub fn shuffled_labels(&self, rng: &mut impl rand::Rng) -> Vec<u8> {
        let mut labels = vec![u8::MAX; self.personas * self.questions];
        let mut members = Vec::with_capacity(self.personas);
        for q in 0..self.questions {
            members.clear();
            members.extend((0..self.personas).filter(|p| self.keep[p * self.questions + q]));
            let mut shuffled = members.clone();
            shuffled.shuffle(rng);
            for (p, l) in members.iter().zip(&shuffled) {
                labels[p * self.questions + q] = *l as u8;
            }
        }
        labels
    }
}

/// One checkpoint's projected rows and the label-free statistics of its folds.
pub struct M3Checkpoint {
    dimension: usize,
    /// [row][dimension] in the PCA basis (rows not kept are zero).
    rows: Array2<f32>,
    /// Per fold: the mean over its training rows of x x^T.
    train_moment: Vec<Array2<f64>>,
    /// Per fold, the test rows gathered for one matrix product.
    test_blocks: Vec<Array2<f32>>,
}

impl M3Checkpoint {
    pub fn new(setup: &M3Setup, rows: Array2<f32>) -> M3Checkpoint {
        let dimension = rows.ncols();
        let mut total = vec![0.0f64; dimension * dimension];
        let mut per_fold = vec![vec![0.0f64; dimension * dimension]; setup.folds];
        for (fold, rows_of_fold) in setup.test_rows.iter().enumerate() {
            for &row in rows_of_fold {
                let x = rows.row(row);
                let acc = &mut per_fold[fold];
                for i in 0..dimension {
                    let xi = f64::from(x[i]);
                    for j in 0..dimension {
                        acc[i * dimension + j] += xi * f64::from(x[j]);
                    }
                }
            }
            for (t, v) in total.iter_mut().zip(&per_fold[fold]) {
                *t += v;
            }
        }
        let kept: usize = setup.test_rows.iter().map(Vec::len).sum();
        let train_moment = per_fold
            .iter()
            .zip(&setup.test_rows)
            .map(|(test, rows_of_fold)| {
                let n = (kept - rows_of_fold.len()).max(1) as f64;
                Array2::from_shape_fn((dimension, dimension), |(i, j)| {
                    (total[i * dimension + j] - test[i * dimension + j]) / n
                })
            })
            .collect();
        let test_blocks = setup
            .test_rows
            .iter()
            .map(|rows_of_fold| {
                Array2::from_shape_fn((rows_of_fold.len(), dimension), |(i, j)| {
                    rows[[rows_of_fold[i], j]]
                })
            })
            .collect();
        M3Checkpoint {
            dimension,
            rows,
            train_moment,
            test_blocks,
        }
    }

    /// One LDA per fold for the given labels: (coefficients [dimension][class], intercepts).
    fn fold_models(
        &self,
        setup: &M3Setup,
        labels: &[u8],
        shrinkage: f64,
    ) -> Result<Vec<FoldModel>, LdaError> {
        let (d, classes) = (self.dimension, setup.personas);
        let flat_rows = self.rows.as_slice().ok_or(LdaError::Empty)?;
        // f32 sums (a fold's class has at most a few hundred rows) vectorize twice as wide;
        // the fit itself runs in f64.
        let mut scratch = vec![0.0f32; classes * d];
        let mut test_sums = Vec::with_capacity(setup.folds);
        let mut test_counts = vec![vec![0usize; classes]; setup.folds];
        for (fold, rows_of_fold) in setup.test_rows.iter().enumerate() {
            scratch.fill(0.0);
            for &row in rows_of_fold {
                let label = labels[row] as usize;
                test_counts[fold][label] += 1;
                for (s, x) in scratch[label * d..(label + 1) * d]
                    .iter_mut()
                    .zip(&flat_rows[row * d..(row + 1) * d])
                {
                    *s += *x;
                }
            }
            test_sums.push(
                Array2::from_shape_vec((classes, d), scratch.iter().map(|v| f64::from(*v)).collect())
                    .map_err(|_| LdaError::Empty)?,
            );
        }
        let mut all_sums = Array2::<f64>::zeros((classes, d));
        let mut all_counts = vec![0usize; classes];
        for fold in 0..setup.folds {
            all_sums += &test_sums[fold];
            for (a, c) in all_counts.iter_mut().zip(&test_counts[fold]) {
                *a += c;
            }
        }
        (0..setup.folds)
            .map(|fold| {
                let sums = &all_sums - &test_sums[fold];
                let counts: Vec<usize> = all_counts
                    .iter()
                    .zip(&test_counts[fold])
                    .map(|(a, c)| a - c)
                    .collect();
                fast_fit(&self.train_moment[fold], &sums, &counts, shrinkage)
            })
            .collect()
    }

    /// Held-out correct predictions for each labelling in `batch`: per labelling, the number
    /// correct per question.
    pub fn correct_per_question(
        &self,
        setup: &M3Setup,
        batch: &[Vec<u8>],
        shrinkage: f64,
    ) -> Result<Vec<Vec<u32>>, LdaError> {
        let (d, classes) = (self.dimension, setup.personas);
        let models: Vec<Vec<FoldModel>> = batch
            .iter()
            .map(|labels| self.fold_models(setup, labels, shrinkage))
            .collect::<Result<_, _>>()?;
        let mut correct = vec![vec![0u32; setup.questions]; batch.len()];
        for fold in 0..setup.folds {
            let width = classes * batch.len();
            // Class-major within each dimension ([dimension][class][permutation]) so the
            // argmax below runs across permutations in SIMD lanes.
            let nb = batch.len();
            let mut flat = vec![0.0f32; d * width];
            let mut intercepts = vec![0.0f32; width];
            for (b, fold_models) in models.iter().enumerate() {
                let model = &fold_models[fold];
                for k in 0..classes {
                    intercepts[k * nb + b] = model.intercept[k] as f32;
                }
                for (i, coef_row) in model.coef.rows().into_iter().enumerate() {
                    for (k, v) in coef_row.iter().enumerate() {
                        flat[i * width + k * nb + b] = *v as f32;
                    }
                }
            }
            let mut scores = vec![0.0f32; width];
            let mut row_labels = vec![0u32; nb];
            let mut target = vec![0.0f32; nb];
            let mut hit = vec![0u32; nb];
            for (i, &row) in setup.test_rows[fold].iter().enumerate() {
                scores.copy_from_slice(&intercepts);
                accumulate_scores(
                    self.test_blocks[fold].row(i).as_slice().unwrap_or(&[]),
                    &flat,
                    &mut scores,
                );
                for (b, labels) in batch.iter().enumerate() {
                    row_labels[b] = u32::from(labels[row]);
                    target[b] = scores[labels[row] as usize * nb + b];
                }
                hit.fill(1);
                // argmax (first of equal maxima, numpy's rule) equals the label exactly when
                // the label's score beats every earlier class and ties no later one.
                for k in 0..classes {
                    let class_scores = &scores[k * nb..(k + 1) * nb];
                    let k = k as u32;
                    for (((h, &t), &v), &label) in
                        hit.iter_mut().zip(&target).zip(class_scores).zip(&row_labels)
                    {
                        let beaten = (k < label && t > v) | (k > label && t >= v) | (k == label);
                        *h &= u32::from(beaten);
                    }
                }
                let question = row % setup.questions;
                for (counts, &h) in correct.iter_mut().zip(&hit) {
                    counts[question] += h;
                }
            }
        }
        Ok(correct)
    }
}

/// A fitted fold: coefficients [dimension][class] and intercepts (-inf for classes absent
/// from training).
pub struct FoldModel {
    pub coef: Array2<f64>,
    pub intercept: Vec<f64>,
}

/// `lda::fit` on pre-reduced statistics: `moment` = mean of x x^T over the training rows,
/// class sums and counts. Same estimator (tested against `lda::fit`), written with matrix
/// products so a refit costs a few microseconds.
pub fn fast_fit(
    moment: &Array2<f64>,
    sums: &Array2<f64>,
    counts: &[usize],
    shrinkage: f64,
) -> Result<FoldModel, LdaError> {
    if !(shrinkage > 0.0 && shrinkage <= 1.0) {
        return Err(LdaError::Shrinkage(shrinkage));
    }
    let (classes, d) = sums.dim();
    let n: usize = counts.iter().sum();
    if n == 0 {
        return Err(LdaError::Empty);
    }
    let mut means = sums.clone();
    let mut weighted = sums.clone();
    for (k, &class_count) in counts.iter().enumerate() {
        let count = class_count as f64;
        let scale = if class_count > 0 { 1.0 / count } else { 0.0 };
        means.row_mut(k).mapv_inplace(|v| v * scale);
        // sqrt(prior) * mean, so weighted^T weighted = sum_k prior_k m_k m_k^T.
        let w = if class_count > 0 {
            (count / n as f64).sqrt() * scale
        } else {
            0.0
        };
        weighted.row_mut(k).mapv_inplace(|v| v * w);
    }
    let mut covariance = moment - &weighted.t().dot(&weighted);
    let trace: f64 = covariance.diag().sum();
    covariance.mapv_inplace(|v| v * (1.0 - shrinkage));
    let target = shrinkage * trace / d as f64;
    covariance.diag_mut().mapv_inplace(|v| v + target);
    let mut l = covariance.into_raw_vec_and_offset().0;
    for j in 0..d {
        let mut diagonal = l[j * d + j];
        for k in 0..j {
            diagonal -= l[j * d + k] * l[j * d + k];
        }
        if diagonal <= 0.0 || !diagonal.is_finite() {
            return Err(LdaError::NotPositiveDefinite { dimension: d });
        }
        let l_jj = diagonal.sqrt();
        l[j * d + j] = l_jj;
        for i in j + 1..d {
            let mut v = l[i * d + j];
            for k in 0..j {
                v -= l[i * d + k] * l[j * d + k];
            }
            l[i * d + j] = v / l_jj;
        }
    }
    // Solve L L^T W = M^T for all classes at once, row-major [dimension][class].
    let c = classes;
    let mut w: Vec<f64> = (0..d * c).map(|idx| means[[idx % c, idx / c]]).collect();
    for i in 0..d {
        for k in 0..i {
            let factor = l[i * d + k];
            let (done, rest) = w.split_at_mut(i * c);
            for (x, y) in rest[..c].iter_mut().zip(&done[k * c..(k + 1) * c]) {
                *x -= factor * y;
            }
        }
        let pivot = l[i * d + i];
        w[i * c..(i + 1) * c].iter_mut().for_each(|v| *v /= pivot);
    }
    for i in (0..d).rev() {
        for k in i + 1..d {
            let factor = l[k * d + i];
            let (head, tail) = w.split_at_mut(k * c);
            for (x, y) in head[i * c..(i + 1) * c].iter_mut().zip(&tail[..c]) {
                *x -= factor * y;
            }
        }
        let pivot = l[i * d + i];
        w[i * c..(i + 1) * c].iter_mut().for_each(|v| *v /= pivot);
    }
    let w = Array2::from_shape_vec((d, c), w).map_err(|_| LdaError::Empty)?;
    let intercept = (0..classes)
        .map(|k| {
            if counts[k] == 0 {
                f64::NEG_INFINITY
            } else {
                -0.5 * means.row(k).dot(&w.column(k)) + (counts[k] as f64 / n as f64).ln()
            }
        })
        .collect();
    Ok(FoldModel { coef: w, intercept })
}

/// scores += x^T W for W row-major [x.len()][scores.len()]: the held-out scoring of a whole
/// batch of refits, fused with the caller's argmax so no score matrix is written out. Uses
/// AVX2/FMA where the CPU has them (checked at run time; the build targets baseline x86-64).
fn accumulate_scores(x: &[f32], weights: &[f32], scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the features this function is compiled for were just detected.
            unsafe { accumulate_scores_fma(x, weights, scores) };
            return;
        }
    }
    for (xi, w_row) in x.iter().zip(weights.chunks_exact(scores.len())) {
        for (s, w) in scores.iter_mut().zip(w_row) {
            *s += xi * w;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_scores_fma(x: &[f32], weights: &[f32], scores: &mut [f32]) {
    for (xi, w_row) in x.iter().zip(weights.chunks_exact(scores.len())) {
        for (s, w) in scores.iter_mut().zip(w_row) {
            *s = xi.mul_add(*w, *s);
        }
    }
}

/// M3 of one method and layer.
pub struct M3Result {
    /// Per checkpoint: held-out correct predictions per question (observed labels).
    pub correct_per_question: Vec<Vec<u32>>,
    /// Kept vectors per question (the same for every checkpoint).
    pub valid_per_question: Vec<u32>,
    /// Per checkpoint, accuracy (fraction).
    pub accuracy: Vec<f64>,
    /// [permutation][checkpoint] accuracy under the joint shuffle.
    pub null_accuracy: Vec<Vec<f64>>,
}

/// Observed accuracies and the joint-shuffle null of every checkpoint.
pub fn run(
    setup: &M3Setup,
    checkpoints: &[M3Checkpoint],
    shrinkage: f64,
    permutations: usize,
    seed: u64,
    stream: &str,
) -> Result<M3Result, LdaError> {
    let valid_per_question: Vec<u32> = (0..setup.questions)
        .map(|q| {
            (0..setup.personas)
                .filter(|p| setup.keep[p * setup.questions + q])
                .count() as u32
        })
        .collect();
    let total: u32 = valid_per_question.iter().sum();
    let observed = vec![setup.observed_labels()];
    let correct_per_question: Vec<Vec<u32>> = checkpoints
        .iter()
        .map(|c| {
            c.correct_per_question(setup, &observed, shrinkage)
                .map(|mut v| v.remove(0))
        })
        .collect::<Result<_, _>>()?;
    let accuracy = correct_per_question
        .iter()
        .map(|c| c.iter().sum::<u32>() as f64 / f64::from(total.max(1)))
        .collect();
    const BATCH: usize = 64;
    let batches: Vec<usize> = (0..permutations.div_ceil(BATCH)).collect();
    let null_batches: Vec<Vec<Vec<f64>>> = batches
        .par_iter()
        .map(|&b| {
            let first = b * BATCH;
            let last = (first + BATCH).min(permutations);
            let labels: Vec<Vec<u8>> = (first..last)
                .map(|i| setup.shuffled_labels(&mut seeded_rng(seed, &format!("{stream}/{i}"))))
                .collect();
            let mut per_permutation = vec![Vec::with_capacity(checkpoints.len()); labels.len()];
            for c in checkpoints {
                let correct = c.correct_per_question(setup, &labels, shrinkage)?;
                for (slot, per_question) in per_permutation.iter_mut().zip(correct) {
                    slot.push(per_question.iter().sum::<u32>() as f64 / f64::from(total.max(1)));
                }
            }
            Ok(per_permutation)
        })
        .collect::<Result<_, LdaError>>()?;
    Ok(M3Result {
        correct_per_question,
        valid_per_question,
        accuracy,
        null_accuracy: null_batches.into_iter().flatten().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::lda;
    use super::*;
    use rand::Rng;

    fn toy(personas: usize, questions: usize, d: usize, spread: f32, seed: u64) -> Array2<f32> {
        let mut rng = seeded_rng(seed, "m3-toy");
        let centres: Vec<f32> = (0..personas * d)
            .map(|_| rng.gen_range(-1.0..1.0) * spread)
            .collect();
        Array2::from_shape_fn((personas * questions, d), |(row, j)| {
            centres[(row / questions) * d + j] + rng.gen_range(-1.0f32..1.0)
        })
    }

    #[test]
    fn the_fast_path_equals_the_plain_cross_validated_lda() {
        let (p, q, d) = (12, 40, 6);
        let rows = toy(p, q, d, 0.8, 1);
        let mut keep = vec![true; p * q];
        keep[5] = false;
        keep[q + 7] = false;
        let setup = M3Setup::new(p, q, 5, keep.clone());
        let checkpoint = M3Checkpoint::new(&setup, rows.clone());
        let labels = setup.observed_labels();
        let fast: u32 = checkpoint.correct_per_question(&setup, &[labels], 0.3).unwrap()[0]
            .iter()
            .sum();
        let kept: Vec<usize> = (0..p * q).filter(|&r| keep[r]).collect();
        let plain_rows: Vec<f64> = kept
            .iter()
            .flat_map(|&r| rows.row(r).iter().map(|v| f64::from(*v)).collect::<Vec<_>>())
            .collect();
        let plain_labels: Vec<usize> = kept.iter().map(|r| r / q).collect();
        let plain_folds: Vec<usize> = kept.iter().map(|r| (r % q) % 5).collect();
        let (plain, n) =
            lda::cross_validated_accuracy(&plain_rows, d, &plain_labels, p, &plain_folds, 0.3).unwrap();
        assert_eq!(n, p * q - 2);
        assert!(
            (fast as i64 - plain as i64).abs() <= 1,
            "fast {fast} vs plain {plain}"
        );
        assert!(
            plain > n / 4,
            "the toy data should be partly separable: {plain}/{n}"
        );
    }

    #[test]
    fn the_fast_fit_equals_the_plain_fit() {
        let (p, q, d) = (5, 30, 4);
        let rows = toy(p, q, d, 1.0, 3);
        let plain_rows: Vec<f64> = rows.iter().map(|v| f64::from(*v)).collect();
        let labels: Vec<usize> = (0..p * q).map(|r| r / q).collect();
        let mut stats = lda::TrainingStats::of(&plain_rows, d, &labels, p);
        stats.class_counts[2] = 0; // an unseen class is never predicted
        for v in &mut stats.class_sums[2 * d..3 * d] {
            *v = 0.0;
        }
        let plain = lda::fit(&stats, 0.25).unwrap();
        let n: usize = stats.class_counts.iter().sum();
        let moment = Array2::from_shape_fn((d, d), |(i, j)| stats.second_moment[i * d + j] / n as f64);
        let sums = Array2::from_shape_vec((p, d), stats.class_sums.clone()).unwrap();
        let fast = fast_fit(&moment, &sums, &stats.class_counts, 0.25).unwrap();
        for k in 0..p {
            assert_eq!(
                fast.intercept[k] == f64::NEG_INFINITY,
                plain.intercept[k] == f64::NEG_INFINITY
            );
            if plain.intercept[k].is_finite() {
                assert!((fast.intercept[k] - plain.intercept[k]).abs() < 1e-9);
                for i in 0..d {
                    assert!((fast.coef[[i, k]] - plain.coef[k * d + i]).abs() < 1e-9);
                }
            }
        }
    }

    #[test]
    fn separable_data_is_near_perfect_and_shuffled_data_near_chance() {
        let (p, q, d) = (12, 60, 16);
        let separable = toy(p, q, d, 6.0, 2);
        let setup = M3Setup::new(p, q, 5, vec![true; p * q]);
        let checkpoints = vec![M3Checkpoint::new(&setup, separable)];
        let result = run(&setup, &checkpoints, 0.2, 40, 7, "test").unwrap();
        assert!(result.accuracy[0] > 0.97, "separable: {}", result.accuracy[0]);
        let null_mean: f64 = result.null_accuracy.iter().map(|a| a[0]).sum::<f64>() / 40.0;
        assert!((null_mean - 1.0 / 12.0).abs() < 0.03, "shuffled: {null_mean}");
    }

    #[test]
    fn shuffling_keeps_each_question_a_permutation_of_its_kept_personas() {
        let mut keep = vec![true; 4 * 3];
        keep[3 + 1] = false; // persona 1, question 1
        let setup = M3Setup::new(4, 3, 2, keep);
        let labels = setup.shuffled_labels(&mut seeded_rng(1, "x"));
        for q in 0..3 {
            let mut seen: Vec<u8> = (0..4)
                .map(|p| labels[p * 3 + q])
                .filter(|&l| l != u8::MAX)
                .collect();
            seen.sort();
            let expected: Vec<u8> = if q == 1 { vec![0, 2, 3] } else { vec![0, 1, 2, 3] };
            assert_eq!(seen, expected);
        }
    }
}
