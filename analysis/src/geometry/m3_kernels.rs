//! The two inner loops of M3's joint-shuffle null, for a batch of labellings at once: the
//! shrinkage-LDA refit of eight labellings side by side (one f64 vector lane per labelling),
//! and the held-out scoring of 64 labellings with the argmax and the hit counts fused into it
//! (the scores never leave the registers).
//!
//! Both give the bits of the one-labelling code they replace: the refit does, lane by lane,
//! the operations of `m3::FitScratch::fit` in the same order (tested), and the scoring does
//! per score what the matrix product did (one fused multiply-add per dimension, in dimension
//! order, from zero: matrixmultiply's AVX2/FMA and AVX-512 kernels; a product and a sum where
//! the CPU has no FMA, as its AVX kernel), then the same sum with the intercept and the same
//! first-of-equal-maxima argmax as numpy.

use super::lda::LdaError;

/// Labellings refitted side by side (one 512-bit vector of f64).
pub(super) const LANES: usize = 8;
pub(super) type Lanes = [f64; LANES];
/// Labellings scored at once: the batch of the null.
pub(super) const WIDTH: usize = 64;

/// The shrinkage LDA refit of LANES labellings, working space kept between refits.
pub(super) struct FitLanes {
    d: usize,
    classes: usize,
    means: Vec<Lanes>,
    /// Shrunk covariance, then its lower Cholesky factor, row-major [d][d].
    factor: Vec<Lanes>,
    /// Coefficients, row-major [dimension][class].
    pub coef: Vec<Lanes>,
    pub intercept: Vec<Lanes>,
}

#[inline(always)]
fn lanes(f: impl Fn(usize) -> f64) -> Lanes {
    std::array::from_fn(f)
}

impl FitLanes {
    pub fn new(d: usize, classes: usize) -> FitLanes {
        FitLanes {
            d,
            classes,
            means: vec![[0.0; LANES]; classes * d],
            factor: vec![[0.0; LANES]; d * d],
            coef: vec![[0.0; LANES]; d * classes],
            intercept: vec![[0.0; LANES]; classes],
        }
    }

    /// `m3::FitScratch::fit` of every lane: `moment` = mean of x x^T over the training rows
    /// (row-major d x d, the same for every labelling), `sums` the class sums ([class][d],
    /// a lane per labelling), `counts` the class sizes; `log_prior[c]` = ln(c / n) for the n
    /// of `log_prior.len() - 1` training rows (computed here where a lane has another n).
    #[inline(always)]
    pub fn fit(
        &mut self,
        moment: &[f64],
        sums: &[Lanes],
        counts: &[[usize; LANES]],
        log_prior: &[f64],
        shrinkage: f64,
    ) -> Result<(), LdaError> {
        if !(shrinkage > 0.0 && shrinkage <= 1.0) {
            return Err(LdaError::Shrinkage(shrinkage));
        }
        let (d, classes) = (self.d, self.classes);
        let n: [usize; LANES] = std::array::from_fn(|l| counts.iter().map(|c| c[l]).sum());
        if n.contains(&0) {
            return Err(LdaError::Empty);
        }
        let n_f64 = n.map(|n| n as f64);
        for ((mean, sum), count) in self
            .means
            .chunks_exact_mut(d)
            .zip(sums.chunks_exact(d))
            .zip(counts)
        {
            let scale = count.map(|c| if c > 0 { 1.0 / c as f64 } else { 0.0 });
            for (m, s) in mean.iter_mut().zip(sum) {
                *m = lanes(|l| s[l] * scale[l]);
            }
        }
        // S = moment - sum_k prior_k m_k m_k^T (a class without rows has prior 0 and mean 0,
        // so it subtracts exact zeros, as skipping it does), shrunk toward trace / d * I.
        let l = &mut self.factor;
        for (f, m) in l.iter_mut().zip(moment) {
            *f = [*m; LANES];
        }
        for (m, count) in self.means.chunks_exact(d).zip(counts) {
            let prior = lanes(|k| count[k] as f64 / n_f64[k]);
            for i in 0..d {
                let pm = lanes(|k| prior[k] * m[i][k]);
                for j in 0..=i {
                    let f = &mut l[i * d + j];
                    *f = lanes(|k| f[k] - pm[k] * m[j][k]);
                }
            }
        }
        // As `Iterator::sum` (which starts from -0.0).
        let mut trace = [-0.0f64; LANES];
        for i in 0..d {
            trace = lanes(|k| trace[k] + l[i * d + i][k]);
        }
        let target = lanes(|k| shrinkage * trace[k] / d as f64);
        for i in 0..d {
            for j in 0..=i {
                let f = &mut l[i * d + j];
                *f = lanes(|k| f[k] * (1.0 - shrinkage));
            }
            let f = &mut l[i * d + i];
            *f = lanes(|k| f[k] + target[k]);
        }
        // In-place lower Cholesky factor (only the lower triangle is read).
        for j in 0..d {
            let mut diagonal = l[j * d + j];
            for k in 0..j {
                let x = l[j * d + k];
                diagonal = lanes(|q| diagonal[q] - x[q] * x[q]);
            }
            if diagonal.iter().any(|v| *v <= 0.0 || !v.is_finite()) {
                return Err(LdaError::NotPositiveDefinite { dimension: d });
            }
            let l_jj = diagonal.map(f64::sqrt);
            l[j * d + j] = l_jj;
            for i in j + 1..d {
                let mut v = l[i * d + j];
                for k in 0..j {
                    let (a, b) = (l[i * d + k], l[j * d + k]);
                    v = lanes(|q| v[q] - a[q] * b[q]);
                }
                l[i * d + j] = lanes(|q| v[q] / l_jj[q]);
            }
        }
        // Solve L L^T W = M^T for all classes, W row-major [dimension][class].
        let (c, w) = (classes, &mut self.coef);
        for (idx, v) in w.iter_mut().enumerate() {
            *v = self.means[(idx % c) * d + idx / c];
        }
        for i in 0..d {
            let (done, rest) = w.split_at_mut(i * c);
            let row = &mut rest[..c];
            for (k, previous) in done.chunks_exact(c).enumerate() {
                let factor = l[i * d + k];
                for (x, y) in row.iter_mut().zip(previous) {
                    *x = lanes(|q| x[q] - factor[q] * y[q]);
                }
            }
            let pivot = l[i * d + i];
            row.iter_mut().for_each(|v| *v = lanes(|q| v[q] / pivot[q]));
        }
        for i in (0..d).rev() {
            let (head, tail) = w.split_at_mut((i + 1) * c);
            let row = &mut head[i * c..];
            for (k, later) in tail.chunks_exact(c).enumerate() {
                let factor = l[(i + 1 + k) * d + i];
                for (x, y) in row.iter_mut().zip(later) {
                    *x = lanes(|q| x[q] - factor[q] * y[q]);
                }
            }
            let pivot = l[i * d + i];
            row.iter_mut().for_each(|v| *v = lanes(|q| v[q] / pivot[q]));
        }
        let table_n = log_prior.len().saturating_sub(1);
        for (k, (intercept, count)) in self.intercept.iter_mut().zip(counts).enumerate() {
            let mut quadratic = [-0.0f64; LANES];
            for i in 0..d {
                let (m, wi) = (self.means[k * d + i], w[i * c + k]);
                quadratic = lanes(|q| quadratic[q] + m[q] * wi[q]);
            }
            *intercept = lanes(|q| {
                if count[q] == 0 {
                    f64::NEG_INFINITY
                } else {
                    let log_prior = if n[q] == table_n {
                        log_prior[count[q]]
                    } else {
                        (count[q] as f64 / n_f64[q]).ln()
                    };
                    -0.5 * quadratic[q] + log_prior
                }
            });
        }
        Ok(())
    }
}

/// ln(c / n) for every class size c of n training rows.
pub(super) fn log_priors(n: usize) -> Vec<f64> {
    (0..=n).map(|c| (c as f64 / n as f64).ln()).collect()
}

/// What the scoring of one fold reads and adds to.
pub(super) struct FoldScores<'a> {
    /// Test rows in the fold's basis, [row][d].
    pub test: &'a [f32],
    pub d: usize,
    pub classes: usize,
    /// [class][dimension][WIDTH]
    pub coef: &'a [f32],
    /// [class][WIDTH]
    pub intercepts: &'a [f32],
    /// Each test row's label under each labelling, [row][WIDTH] (255 in lanes past the batch).
    pub labels: &'a [u8],
    /// Each test row's question.
    pub questions: &'a [usize],
}

/// Scores the test rows of one fold under every labelling and adds each labelling's correct
/// predictions to `hits` ([question][WIDTH]).
pub(super) trait Scoring {
    /// # Safety
    /// The CPU has the instruction set the implementation is compiled for.
    unsafe fn score(fold: &FoldScores, hits: &mut [u32]);
}

fn check(fold: &FoldScores, hits: &[u32]) -> usize {
    let rows = fold.test.len() / fold.d.max(1);
    assert!(
        fold.coef.len() >= fold.d * fold.classes * WIDTH
            && fold.intercepts.len() >= fold.classes * WIDTH
            && fold.labels.len() >= rows * WIDTH
            && fold.questions.len() >= rows
            && fold.questions[..rows]
                .iter()
                .all(|q| (q + 1) * WIDTH <= hits.len())
    );
    rows
}

/// Plain code (compiled for AVX2/FMA, or for the baseline CPU); `FUSED` as in
/// `replicate_gram::Portable`.
pub(super) struct Portable<const FUSED: bool>;

impl<const FUSED: bool> Scoring for Portable<FUSED> {
    #[inline(always)]
    unsafe fn score(fold: &FoldScores, hits: &mut [u32]) {
        let rows = check(fold, hits);
        let (d, classes) = (fold.d, fold.classes);
        for (i, x) in fold.test.chunks_exact(d.max(1)).take(rows).enumerate() {
            let mut best = [0.0f32; WIDTH];
            let mut arg = [0u32; WIDTH];
            for k in 0..classes {
                let mut acc = [0.0f32; WIDTH];
                for (j, &x_j) in x.iter().enumerate() {
                    let c = &fold.coef[(k * d + j) * WIDTH..(k * d + j + 1) * WIDTH];
                    for (a, &c_l) in acc.iter_mut().zip(c) {
                        *a = if FUSED {
                            x_j.mul_add(c_l, *a)
                        } else {
                            x_j * c_l + *a
                        };
                    }
                }
                let intercepts = &fold.intercepts[k * WIDTH..(k + 1) * WIDTH];
                for (((b, a), s), i) in best.iter_mut().zip(arg.iter_mut()).zip(&acc).zip(intercepts) {
                    let v = s + i;
                    let better = k == 0 || v > *b;
                    *b = if better { v } else { *b };
                    *a = if better { k as u32 } else { *a };
                }
            }
            let labels = &fold.labels[i * WIDTH..(i + 1) * WIDTH];
            let q = fold.questions[i];
            for ((h, &label), &a) in hits[q * WIDTH..(q + 1) * WIDTH].iter_mut().zip(labels).zip(&arg) {
                *h += u32::from(u32::from(label) == a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Scoring for Avx512 {
    #[inline(always)]
    unsafe fn score(fold: &FoldScores, hits: &mut [u32]) {
        use std::arch::x86_64::*;
        const V: usize = WIDTH / 16;
        let rows = check(fold, hits);
        let (d, classes) = (fold.d, fold.classes);
        let (coef, intercepts) = (fold.coef.as_ptr(), fold.intercepts.as_ptr());
        // Two test rows at a time share every coefficient load.
        let mut i = 0;
        while i < rows {
            let pair = (rows - i).min(2);
            let x0 = &fold.test[i * d..(i + 1) * d];
            let x1 = &fold.test[(i + pair - 1) * d..(i + pair) * d];
            let mut best = [[_mm512_setzero_ps(); V]; 2];
            let mut arg = [[_mm512_setzero_si512(); V]; 2];
            for k in 0..classes {
                let mut acc = [[_mm512_setzero_ps(); V]; 2];
                for (j, (&x0_j, &x1_j)) in x0.iter().zip(x1).enumerate() {
                    let (b0, b1) = (_mm512_set1_ps(x0_j), _mm512_set1_ps(x1_j));
                    let [acc0, acc1] = &mut acc;
                    for (v, (a0, a1)) in acc0.iter_mut().zip(acc1.iter_mut()).enumerate() {
                        // SAFETY: (k * d + j) * WIDTH + 16 v + 16 <= classes * d * WIDTH,
                        // checked in `check`.
                        let c = unsafe { _mm512_loadu_ps(coef.add((k * d + j) * WIDTH + 16 * v)) };
                        *a0 = _mm512_fmadd_ps(b0, c, *a0);
                        *a1 = _mm512_fmadd_ps(b1, c, *a1);
                    }
                }
                let label = _mm512_set1_epi32(k as i32);
                for v in 0..V {
                    // SAFETY: k * WIDTH + 16 v + 16 <= classes * WIDTH, checked in `check`.
                    let ic = unsafe { _mm512_loadu_ps(intercepts.add(k * WIDTH + 16 * v)) };
                    for r in 0..2 {
                        let value = _mm512_add_ps(acc[r][v], ic);
                        if k == 0 {
                            best[r][v] = value;
                        } else {
                            let better = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(value, best[r][v]);
                            best[r][v] = _mm512_mask_blend_ps(better, best[r][v], value);
                            arg[r][v] = _mm512_mask_blend_epi32(better, arg[r][v], label);
                        }
                    }
                }
            }
            for (r, arg_r) in arg.iter().enumerate().take(pair) {
                let row = i + r;
                let q = fold.questions[row];
                let labels = &fold.labels[row * WIDTH..(row + 1) * WIDTH];
                let counts = &mut hits[q * WIDTH..(q + 1) * WIDTH];
                for (v, a) in arg_r.iter().enumerate() {
                    // SAFETY: 16 bytes of labels and 16 counts at 16 v < WIDTH (slices above).
                    unsafe {
                        let l = _mm512_cvtepu8_epi32(_mm_loadu_si128(labels.as_ptr().add(16 * v).cast()));
                        let hit = _mm512_cmpeq_epi32_mask(l, *a);
                        let at = counts.as_mut_ptr().add(16 * v).cast::<__m512i>();
                        let c = _mm512_loadu_si512(at);
                        _mm512_storeu_si512(at, _mm512_mask_add_epi32(c, hit, c, _mm512_set1_epi32(1)));
                    }
                }
            }
            i += pair;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::rng::seeded_rng;
    use rand::Rng;

    /// Random training statistics of a d-dimensional problem (moment from real rows, so the
    /// shrunk covariance is positive definite).
    fn statistics(d: usize, classes: usize, lane: usize) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
        let mut rng = seeded_rng(lane as u64, "fit-lanes");
        let n = 30 * classes;
        let rows: Vec<f64> = (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let labels: Vec<usize> = (0..n).map(|_| rng.gen_range(0..classes)).collect();
        let mut moment = vec![0.0; d * d];
        let mut sums = vec![0.0; classes * d];
        let mut counts = vec![0; classes];
        for (x, &label) in rows.chunks_exact(d).zip(&labels) {
            counts[label] += 1;
            for i in 0..d {
                sums[label * d + i] += x[i];
                for j in 0..d {
                    moment[i * d + j] += x[i] * x[j] / n as f64;
                }
            }
        }
        (moment, sums, counts)
    }

    /// Each lane's fit has the bits of the one-labelling fit, including a class without rows.
    #[test]
    fn eight_fits_side_by_side_equal_eight_single_fits() {
        let (d, classes) = (6, 5);
        let (moment, _, _) = statistics(d, classes, 0);
        let mut sums = vec![[0.0; LANES]; classes * d];
        let mut counts = vec![[0usize; LANES]; classes];
        let mut singles = Vec::new();
        for lane in 0..LANES {
            let (_, mut s, mut c) = statistics(d, classes, lane + 1);
            if lane == 3 {
                // a class absent from training: the rows go to class 0.
                c[0] += c[2];
                c[2] = 0;
                for i in 0..d {
                    s[i] += s[2 * d + i];
                    s[2 * d + i] = 0.0;
                }
            }
            let n: usize = c.iter().sum();
            let moment_a = ndarray::Array2::from_shape_vec((d, d), moment.clone()).unwrap();
            let sums_a = ndarray::Array2::from_shape_vec((classes, d), s.clone()).unwrap();
            singles.push(super::super::m3::fast_fit(&moment_a, &sums_a, &c, 0.2).unwrap());
            for (slot, v) in sums.iter_mut().zip(&s) {
                slot[lane] = *v;
            }
            for (slot, v) in counts.iter_mut().zip(&c) {
                slot[lane] = *v;
            }
            assert_eq!(n, 30 * classes);
        }
        let mut fit = FitLanes::new(d, classes);
        fit.fit(&moment, &sums, &counts, &log_priors(30 * classes), 0.2)
            .unwrap();
        for (lane, single) in singles.iter().enumerate() {
            for k in 0..classes {
                assert_eq!(
                    fit.intercept[k][lane].to_bits(),
                    single.intercept[k].to_bits(),
                    "lane {lane} class {k}"
                );
                for i in 0..d {
                    assert_eq!(
                        fit.coef[i * classes + k][lane].to_bits(),
                        single.coef[[i, k]].to_bits()
                    );
                }
            }
        }
        assert_eq!(fit.intercept[2][3], f64::NEG_INFINITY);
        assert_eq!(
            fit.fit(&moment, &sums, &counts, &[], 0.0),
            Err(LdaError::Shrinkage(0.0))
        );
    }

    /// The fused scoring against the matrix product it replaces (ndarray's, i.e.
    /// matrixmultiply's) followed by the argmax: the same predictions and hit counts, on
    /// scores built to tie exactly (first maximum wins) and with a class never predicted.
    #[test]
    fn fused_scoring_equals_product_then_argmax() {
        let (d, classes, rows, questions) = (5, 4, 7, 3);
        let mut rng = seeded_rng(2, "scoring");
        let test: Vec<f32> = (0..rows * d).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let mut coef: Vec<f32> = (0..d * classes * WIDTH)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let mut intercepts: Vec<f32> = (0..classes * WIDTH)
            .map(|_| rng.gen_range(-0.5f32..0.5))
            .collect();
        for j in 0..d {
            // lane 5: classes 1 and 2 tie exactly.
            coef[(2 * d + j) * WIDTH + 5] = coef[(d + j) * WIDTH + 5];
        }
        intercepts[2 * WIDTH + 5] = intercepts[WIDTH + 5];
        intercepts[3 * WIDTH + 9] = f32::NEG_INFINITY;
        let labels: Vec<u8> = (0..rows * WIDTH)
            .map(|_| rng.gen_range(0..classes as u8))
            .collect();
        let row_questions: Vec<usize> = (0..rows).map(|r| r % questions).collect();
        let fold = FoldScores {
            test: &test,
            d,
            classes,
            coef: &coef,
            intercepts: &intercepts,
            labels: &labels,
            questions: &row_questions,
        };
        let x = ndarray::ArrayView2::from_shape((rows, d), &test[..]).unwrap();
        // The product's right side, [dimension][class][lane].
        let w = ndarray::Array2::from_shape_fn((d, classes * WIDTH), |(j, col)| {
            coef[((col / WIDTH) * d + j) * WIDTH + col % WIDTH]
        });
        let scores = x.dot(&w);
        let mut expected = vec![0u32; questions * WIDTH];
        for r in 0..rows {
            for lane in 0..WIDTH {
                let mut best = (0, scores[[r, lane]] + intercepts[lane]);
                for k in 1..classes {
                    let v = scores[[r, k * WIDTH + lane]] + intercepts[k * WIDTH + lane];
                    if v > best.1 {
                        best = (k, v);
                    }
                }
                assert!(lane != 9 || best.0 != 3);
                expected[row_questions[r] * WIDTH + lane] +=
                    u32::from(labels[r * WIDTH + lane] as usize == best.0);
            }
        }
        let mut hits = vec![0u32; questions * WIDTH];
        // SAFETY: plain code.
        unsafe { Portable::<true>::score(&fold, &mut hits) };
        assert_eq!(hits, expected);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(fold: &FoldScores, hits: &mut [u32]) {
                // SAFETY: called only where AVX-512F was detected.
                unsafe { Avx512::score(fold, hits) }
            }
            let mut hits = vec![0u32; questions * WIDTH];
            // SAFETY: the feature was just detected.
            unsafe { avx512(&fold, &mut hits) };
            assert_eq!(hits, expected);
        }
    }
}
