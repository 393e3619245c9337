//! Label-free principal-component bases by randomized subspace iteration (Halko, Martinsson &
//! Tropp 2011).
//!
//! M3 fits its LDA in such a basis: 12 classes need at most 11 discriminant directions, and
//! thousands of refits under the permutation null are only affordable in a few dozen
//! dimensions. `fold_bases` fits one basis per cross-validation fold on the rows that fold
//! trains on, of one checkpoint only: the held-out rows never shape the basis, and shifts
//! between checkpoints (a pooled basis would spend components on them) cannot crowd out the
//! directions that separate the personas within a checkpoint. The basis never sees a persona
//! label, so the joint-shuffle null (labels permuted, basis unchanged) stays valid.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::Rng;

/// One block of rows (a checkpoint's vectors) with the rows that take part.
pub struct RowBlock<'a> {
    pub rows: ArrayView2<'a, f32>,
    pub keep: &'a [bool],
}

/// The basis: the pooled mean and `components` orthonormal directions (hidden x components).
pub struct Basis {
    pub mean: Array1<f32>,
    pub directions: Array2<f32>,
}

impl Basis {
    /// Coordinates of the kept rows of `block` in the basis (other rows are zero).
    pub fn project(&self, block: &RowBlock) -> Array2<f32> {
        let mut out = block.rows.dot(&self.directions);
        let shift = self.mean.dot(&self.directions);
        for (mut row, &keep) in out.axis_iter_mut(Axis(0)).zip(block.keep) {
            if keep {
                row -= &shift;
            } else {
                row.fill(0.0);
            }
        }
        out
    }
}

fn orthonormalize_columns(m: &mut Array2<f32>) {
    let columns = m.ncols();
    let Some(data) = m.as_slice_mut() else {
        let mut standard = m.as_standard_layout().to_owned();
        orthonormalize_columns(&mut standard);
        m.assign(&standard);
        return;
    };
    // Modified Gram-Schmidt, walking the rows of the row-major matrix (no column copies).
    for j in 0..columns {
        for i in 0..j {
            let dot: f64 = data
                .chunks_exact(columns)
                .map(|r| f64::from(r[i]) * f64::from(r[j]))
                .sum();
            let dot = dot as f32;
            for r in data.chunks_exact_mut(columns) {
                let projection = r[i] * dot;
                r[j] -= projection;
            }
        }
        let norm: f64 = data
            .chunks_exact(columns)
            .map(|r| f64::from(r[j]).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
        for r in data.chunks_exact_mut(columns) {
            r[j] *= scale;
        }
    }
}

/// Centred product: sum over blocks of (X - mean) * right, rows not kept set to zero.
fn centred_times(blocks: &[RowBlock], mean: &Array1<f32>, right: &Array2<f32>) -> Vec<Array2<f32>> {
    let shift = mean.dot(right);
    blocks
        .iter()
        .map(|b| {
            let mut y = b.rows.dot(right);
            for (mut row, &keep) in y.axis_iter_mut(Axis(0)).zip(b.keep) {
                if keep {
                    row -= &shift;
                } else {
                    row.fill(0.0);
                }
            }
            y
        })
        .collect()
}

/// (X - mean)^T * left summed over blocks, `left` with zero rows where rows are not kept.
fn centred_transpose_times(blocks: &[RowBlock], mean: &Array1<f32>, left: &[Array2<f32>]) -> Array2<f32> {
    let hidden = mean.len();
    let width = left[0].ncols();
    let mut out = Array2::<f32>::zeros((hidden, width));
    let mut column_sums = Array1::<f32>::zeros(width);
    for (b, l) in blocks.iter().zip(left) {
        general_mat_mul(1.0, &b.rows.t(), l, 1.0, &mut out);
        column_sums += &l.sum_axis(Axis(0));
    }
    for (mut row, m) in out.axis_iter_mut(Axis(0)).zip(mean.iter()) {
        row.scaled_add(-*m, &column_sums);
    }
    out
}

fn stack_orthonormalize(parts: &mut [Array2<f32>]) {
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    let mut all = ndarray::concatenate(Axis(0), &views).unwrap_or_else(|_| Array2::zeros((0, 0)));
    orthonormalize_columns(&mut all);
    let mut start = 0;
    for p in parts.iter_mut() {
        let n = p.nrows();
        p.assign(&all.slice(s![start..start + n, ..]));
        start += n;
    }
}

/// Symmetric eigen-decomposition by cyclic Jacobi rotations (small matrices only); eigenvalues
/// descending, eigenvectors as columns.
fn symmetric_eigen(mut a: Array2<f64>) -> (Vec<f64>, Array2<f64>) {
    let n = a.nrows();
    let mut v = Array2::<f64>::eye(n);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[[i, j]].powi(2))
            .sum();
        let scale: f64 = (0..n)
            .map(|i| a[[i, i]].powi(2))
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[[p, q]].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * a[[p, q]]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[[k, p]], a[[k, q]]);
                    a[[k, p]] = c * akp - s * akq;
                    a[[k, q]] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[[p, k]], a[[q, k]]);
                    a[[p, k]] = c * apk - s * aqk;
                    a[[q, k]] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[[k, p]], v[[k, q]]);
                    v[[k, p]] = c * vkp - s * vkq;
                    v[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[[j, j]].total_cmp(&a[[i, i]]));
    let values = order.iter().map(|&i| a[[i, i]]).collect();
    let mut vectors = Array2::<f64>::zeros((n, n));
    for (new, &old) in order.iter().enumerate() {
        vectors.column_mut(new).assign(&v.column(old));
    }
    (values, vectors)
}

/// One basis per fold: the top `components` principal directions of the rows `train[fold]`
/// marks, centred on their own mean. The random test matrix and its product with every row
/// are shared by the folds (the product with a fold's rows is a subset of it). The folds run
/// in lockstep so that each product with the rows is one matrix product for all folds side by
/// side: the rows are packed once instead of once per fold, and each fold's columns get the
/// bits of their own product (the product's arithmetic per element does not depend on the
/// other columns).
pub fn fold_bases(
    rows: ArrayView2<f32>,
    train: &[Vec<bool>],
    components: usize,
    power_iterations: usize,
    rng: &mut impl Rng,
) -> Vec<Basis> {
    let hidden = rows.ncols();
    let width = (components + 8).min(hidden);
    let omega = Array2::from_shape_fn((hidden, width), |_| if rng.gen::<bool>() { 1.0f32 } else { -1.0 });
    let sketch = rows.dot(&omega);
    let means = fold_means(rows, train);
    let mut ys: Vec<Array2<f32>> = train
        .iter()
        .zip(&means)
        .map(|(keep, mean)| {
            let shift = mean.dot(&omega);
            let mut y = sketch.clone();
            mask_and_shift(&mut y, keep, &shift);
            orthonormalize_columns(&mut y);
            y
        })
        .collect();
    for _ in 0..power_iterations {
        let mut zs = transpose_times_folds(rows, &means, &ys);
        zs.iter_mut().for_each(orthonormalize_columns);
        ys = times_folds(rows, train, &means, &zs);
        ys.iter_mut().for_each(orthonormalize_columns);
    }
    let bts = transpose_times_folds(rows, &means, &ys);
    bts.into_iter()
        .zip(means)
        .map(|(bt, mean)| Basis {
            mean,
            directions: ordered_directions(&bt, components.min(width)),
        })
        .collect()
}

/// Each fold's coordinates of the kept rows (others zero), as `Basis::project` of every fold,
/// from one product with the rows.
pub fn project_folds(rows: ArrayView2<f32>, keep: &[bool], bases: &[Basis]) -> Vec<Array2<f32>> {
    let directions: Vec<_> = bases.iter().map(|b| b.directions.view()).collect();
    let Ok(stacked) = ndarray::concatenate(Axis(1), &directions) else {
        return Vec::new();
    };
    let all = rows.dot(&stacked);
    let mut start = 0;
    bases
        .iter()
        .map(|basis| {
            let n = basis.directions.ncols();
            let mut out = all.slice(s![.., start..start + n]).to_owned();
            start += n;
            mask_and_shift(&mut out, keep, &basis.mean.dot(&basis.directions));
            out
        })
        .collect()
}

/// Subtracts `shift` from the kept rows and zeroes the others.
fn mask_and_shift(y: &mut Array2<f32>, keep: &[bool], shift: &Array1<f32>) {
    for (mut row, &k) in y.axis_iter_mut(Axis(0)).zip(keep) {
        if k {
            row -= shift;
        } else {
            row.fill(0.0);
        }
    }
}

/// `centred_transpose_times` of every fold (its own mean and its left matrix, zero on the rows
/// it does not train on) from one product with the rows.
fn transpose_times_folds(
    rows: ArrayView2<f32>,
    means: &[Array1<f32>],
    lefts: &[Array2<f32>],
) -> Vec<Array2<f32>> {
    let views: Vec<_> = lefts.iter().map(|l| l.view()).collect();
    let Ok(stacked) = ndarray::concatenate(Axis(1), &views) else {
        return Vec::new();
    };
    let mut all = Array2::<f32>::zeros((rows.ncols(), stacked.ncols()));
    general_mat_mul(1.0, &rows.t(), &stacked, 1.0, &mut all);
    let mut start = 0;
    lefts
        .iter()
        .zip(means)
        .map(|(left, mean)| {
            let n = left.ncols();
            let mut out = all.slice(s![.., start..start + n]).to_owned();
            start += n;
            let mut column_sums = Array1::<f32>::zeros(n);
            column_sums += &left.sum_axis(Axis(0));
            for (mut row, m) in out.axis_iter_mut(Axis(0)).zip(mean.iter()) {
                row.scaled_add(-*m, &column_sums);
            }
            out
        })
        .collect()
}

/// `centred_times` of every fold (its own mean, right matrix and training rows) from one
/// product with the rows.
fn times_folds(
    rows: ArrayView2<f32>,
    train: &[Vec<bool>],
    means: &[Array1<f32>],
    rights: &[Array2<f32>],
) -> Vec<Array2<f32>> {
    let views: Vec<_> = rights.iter().map(|r| r.view()).collect();
    let Ok(stacked) = ndarray::concatenate(Axis(1), &views) else {
        return Vec::new();
    };
    let all = rows.dot(&stacked);
    let mut start = 0;
    rights
        .iter()
        .zip(means)
        .zip(train)
        .map(|((right, mean), keep)| {
            let n = right.ncols();
            let mut y = all.slice(s![.., start..start + n]).to_owned();
            start += n;
            mask_and_shift(&mut y, keep, &mean.dot(right));
            y
        })
        .collect()
}

/// `mean_of` each fold's training rows, in one pass over the rows (each fold's sum adds its
/// rows in row order, as `mean_of` does).
fn fold_means(rows: ArrayView2<f32>, train: &[Vec<bool>]) -> Vec<Array1<f32>> {
    let hidden = rows.ncols();
    let mut sums = vec![Array1::<f64>::zeros(hidden); train.len()];
    let mut counts = vec![0usize; train.len()];
    for (r, row) in rows.axis_iter(Axis(0)).enumerate() {
        for ((sum, count), keep) in sums.iter_mut().zip(&mut counts).zip(train) {
            if keep[r] {
                *count += 1;
                sum.zip_mut_with(&row, |s, &x| *s += f64::from(x));
            }
        }
    }
    sums.into_iter()
        .zip(counts)
        .map(|(sum, count)| sum.mapv(|s| (s / count.max(1) as f64) as f32))
        .collect()
}

/// Mean of the kept rows of all blocks.
fn mean_of(blocks: &[RowBlock]) -> Array1<f32> {
    let hidden = blocks[0].rows.ncols();
    let mut sum = Array1::<f64>::zeros(hidden);
    let mut count = 0usize;
    for b in blocks {
        for (row, &keep) in b.rows.axis_iter(Axis(0)).zip(b.keep) {
            if keep {
                count += 1;
                sum.zip_mut_with(&row, |s, &x| *s += f64::from(x));
            }
        }
    }
    sum.mapv(|s| (s / count.max(1) as f64) as f32)
}

/// Power iterations from the orthonormal range sketch `y`, then the Rayleigh-Ritz rotation
/// that orders the directions by variance.
fn finish_basis(
    blocks: &[RowBlock],
    mean: Array1<f32>,
    mut y: Vec<Array2<f32>>,
    components: usize,
    power_iterations: usize,
) -> Basis {
    let width = y[0].ncols();
    for _ in 0..power_iterations {
        let mut z = centred_transpose_times(blocks, &mean, &y);
        orthonormalize_columns(&mut z);
        y = centred_times(blocks, &mean, &z);
        stack_orthonormalize(&mut y);
    }
    let bt = centred_transpose_times(blocks, &mean, &y);
    Basis {
        mean,
        directions: ordered_directions(&bt, components.min(width)),
    }
}

/// B^T = (X - mean)^T Y spans the top right singular vectors; rotated by the eigenvectors of
/// B B^T, its first `keep` columns (orthonormalised) are the directions ordered by variance.
fn ordered_directions(bt: &Array2<f32>, keep: usize) -> Array2<f32> {
    let gram = bt.t().mapv(f64::from).dot(&bt.mapv(f64::from));
    let (_, vectors) = symmetric_eigen(gram);
    let rotation = vectors.slice(s![.., ..keep]).mapv(|v| v as f32);
    let mut directions = bt.dot(&rotation);
    orthonormalize_columns(&mut directions);
    directions
}

/// The top `components` principal directions of the kept rows of all blocks.
pub fn principal_basis(
    blocks: &[RowBlock],
    components: usize,
    power_iterations: usize,
    rng: &mut impl Rng,
) -> Basis {
    let hidden = blocks[0].rows.ncols();
    let mean = mean_of(blocks);
    let width = (components + 8).min(hidden);
    let omega = Array2::from_shape_fn((hidden, width), |_| if rng.gen::<bool>() { 1.0f32 } else { -1.0 });
    let mut y = centred_times(blocks, &mean, &omega);
    stack_orthonormalize(&mut y);
    finish_basis(blocks, mean, y, components, power_iterations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::rng::seeded_rng;

    /// The folds in lockstep (one product for all folds, fold means in one pass) against each
    /// fold fitted on its own as before: the same bits, and the batched projection equals
    /// `Basis::project`. Sizes put fold columns across the product's 16-wide tiles.
    #[test]
    fn folds_in_lockstep_give_the_bits_of_one_fold_at_a_time() {
        let (n, hidden, components, folds) = (150, 70, 5, 4);
        let mut values = seeded_rng(8, "lockstep");
        let rows = Array2::from_shape_fn((n, hidden), |(r, j)| {
            values.gen_range(-1.0f32..1.0) + if j == r % 7 { 3.0 } else { 0.0 }
        });
        let keep: Vec<bool> = (0..n).map(|r| r % 11 != 4).collect();
        let train: Vec<Vec<bool>> = (0..folds)
            .map(|f| (0..n).map(|r| keep[r] && r % folds != f).collect())
            .collect();
        let lockstep = fold_bases(rows.view(), &train, components, 2, &mut seeded_rng(4, "omega"));
        // One fold at a time, as the code before the lockstep did.
        let mut rng = seeded_rng(4, "omega");
        let width = (components + 8).min(hidden);
        let omega = Array2::from_shape_fn((hidden, width), |_| if rng.gen::<bool>() { 1.0f32 } else { -1.0 });
        let sketch = rows.dot(&omega);
        for (fold, mask) in train.iter().enumerate() {
            let block = [RowBlock {
                rows: rows.view(),
                keep: mask,
            }];
            let mean = mean_of(&block);
            let shift = mean.dot(&omega);
            let mut y = sketch.clone();
            mask_and_shift(&mut y, mask, &shift);
            let mut y = vec![y];
            stack_orthonormalize(&mut y);
            let alone = finish_basis(&block, mean, y, components, 2);
            let same =
                |a: &Array2<f32>, b: &Array2<f32>| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(alone
                .mean
                .iter()
                .zip(&lockstep[fold].mean)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(same(&alone.directions, &lockstep[fold].directions), "fold {fold}");
            let projected = project_folds(rows.view(), &keep, &lockstep);
            let one = lockstep[fold].project(&RowBlock {
                rows: rows.view(),
                keep: &keep,
            });
            assert!(same(&projected[fold], &one), "projection of fold {fold}");
        }
    }

    #[test]
    fn recovers_a_planted_low_rank_subspace() {
        let mut rng = seeded_rng(3, "pca-test");
        let (n, hidden) = (300, 64);
        let planted = Array2::from_shape_fn((3, hidden), |(i, j)| if j == i * 7 { 1.0f32 } else { 0.0 });
        let rows = Array2::from_shape_fn((n, hidden), |(r, j)| {
            let a = ((r * 37 % 101) as f32 - 50.0) / 5.0;
            let b = ((r * 53 % 97) as f32 - 48.0) / 8.0;
            let c = ((r * 71 % 89) as f32 - 44.0) / 12.0;
            a * planted[[0, j]]
                + b * planted[[1, j]]
                + c * planted[[2, j]]
                + 0.001 * ((r + j) % 3) as f32
                + 5.0
        });
        let keep = vec![true; n];
        let basis = principal_basis(
            &[RowBlock {
                rows: rows.view(),
                keep: &keep,
            }],
            3,
            2,
            &mut rng,
        );
        // Each planted direction lies in the recovered span.
        for i in 0..3 {
            let captured: f32 = (0..3).map(|c| basis.directions[[i * 7, c]].powi(2)).sum();
            assert!(captured > 0.99, "direction {i}: {captured}");
        }
        let gram = basis.directions.t().dot(&basis.directions);
        for i in 0..3 {
            for j in 0..3 {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((gram[[i, j]] - expected).abs() < 1e-4);
            }
        }
    }

    /// A fold's basis follows only the rows it trains on: rows held out (here, rows with a
    /// huge spread along direction 5) do not pull a component toward them.
    #[test]
    fn a_fold_basis_sees_only_its_training_rows() {
        let (n, hidden) = (200, 32);
        let rows = Array2::from_shape_fn((n, hidden), |(r, j)| {
            let wave = ((r * 37 % 101) as f32 - 50.0) / 10.0;
            match j {
                0 => wave,
                5 if r % 2 == 1 => 100.0 * wave,
                1 => 0.1 * ((r * 7 + 3) % 11) as f32,
                _ => 0.0,
            }
        });
        let even: Vec<bool> = (0..n).map(|r| r % 2 == 0).collect();
        let all = vec![true; n];
        let bases = fold_bases(rows.view(), &[even, all], 1, 1, &mut seeded_rng(1, "fold"));
        // Training on the even rows: direction 0, with nothing of direction 5.
        assert!(bases[0].directions[[0, 0]].abs() > 0.99);
        assert!(bases[0].directions[[5, 0]].abs() < 1e-3);
        // Training on every row: direction 5 dominates.
        assert!(bases[1].directions[[5, 0]].abs() > 0.99);
    }
}
