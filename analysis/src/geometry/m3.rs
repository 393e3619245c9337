//! M3: held-out separability of the personas, as the plan describes it: a shrinkage LDA
//! (`lda.rs`, scikit-learn's lsqr estimator) over the persona labels of the per-question
//! vectors, cross-validated by question (GroupKFold with fold = question index mod folds, so a
//! question's vectors are never both trained on and tested); accuracy = correct held-out
//! predictions / held-out rows.
//!
//! The LDA works in principal components (thousands of refits under the null are only
//! affordable in a few dozen dimensions). The PCA is part of the fitted model: for every
//! checkpoint and every fold it is fitted on that checkpoint's training rows of that fold
//! (`pca::fold_bases`), never on held-out rows and never on other checkpoints' vectors (a
//! basis pooled over checkpoints spends components on the shifts between them). Test rows are
//! projected into their fold's basis.
//!
//! Null of the `reference` flavour (the plan's pre-registered test; the seed itself ran a
//! degenerate nearest-centroid classifier): the joint shuffle, i.e. within every question the
//! persona labels of its valid vectors are permuted, the same permutation for every
//! checkpoint, and every checkpoint's accuracy is recomputed; a cell's null statistic is the
//! same delta of these accuracies. The PCA never sees a label, so a permutation leaves every
//! basis and every fold's second moment unchanged: a refit only re-sums the training rows by
//! class and solves a small system (eight permutations side by side, `m3_kernels`), and the
//! held-out rows of a fold are scored for a batch of 64 permutations in one pass, the argmax
//! and the hit counts taken as the scores are made. The rows of each class are listed once per
//! batch and fold (they are the same for every checkpoint), so the class sums add them in row
//! order without a scatter through memory.

use super::lda::LdaError;
use super::m3_kernels;
use super::pca;
use super::timing;
use crate::stats::rng::seeded_rng;
use ndarray::{Array2, ArrayView2};
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
    /// Per fold, the kept rows it trains on.
    train_rows: Vec<Vec<usize>>,
    /// Per fold, ln(c / n) for every class size c of its n training rows.
    log_prior: Vec<Vec<f64>>,
}

impl M3Setup {
    pub fn new(personas: usize, questions: usize, folds: usize, keep: Vec<bool>) -> M3Setup {
        let folds = folds.clamp(2, questions.max(2));
        let mut test_rows = vec![Vec::new(); folds];
        let mut train_rows = vec![Vec::new(); folds];
        for p in 0..personas {
            for q in 0..questions {
                let row = p * questions + q;
                if keep[row] {
                    for (fold, (test, train)) in test_rows.iter_mut().zip(&mut train_rows).enumerate() {
                        if q % folds == fold {
                            test.push(row);
                        } else {
                            train.push(row);
                        }
                    }
                }
            }
        }
        let log_prior = train_rows
            .iter()
            .map(|rows| m3_kernels::log_priors(rows.len()))
            .collect();
        M3Setup {
            personas,
            questions,
            folds,
            keep,
            test_rows,
            train_rows,
            log_prior,
        }
    }

    /// Per fold, which rows it trains on (the PCA of that fold sees only these).
    pub fn train_masks(&self) -> Vec<Vec<bool>> {
        self.train_rows
            .iter()
            .map(|rows| {
                let mut mask = vec![false; self.keep.len()];
                rows.iter().for_each(|&r| mask[r] = true);
                mask
            })
            .collect()
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
        let mut shuffled = Vec::with_capacity(self.personas);
        for q in 0..self.questions {
            members.clear();
            members.extend((0..self.personas).filter(|p| self.keep[p * self.questions + q]));
            shuffled.clear();
            shuffled.extend_from_slice(&members);
            shuffled.shuffle(rng);
            for (p, l) in members.iter().zip(&shuffled) {
                labels[p * self.questions + q] = *l as u8;
            }
        }
        labels
    }
}

/// One fold of one checkpoint in that fold's own basis.
struct FoldRows {
    /// [training row][dimension], rows in `M3Setup::train_rows` order, then one zero row
    /// (where `GatheredLabels::order` pads a class).
    train: Array2<f32>,
    /// Mean of x x^T over the training rows, row-major [dimension][dimension] (label-free).
    moment: Vec<f64>,
    /// [test row][dimension], rows in `M3Setup::test_rows` order.
    test: Array2<f32>,
}

/// One checkpoint's rows, fold by fold, in the bases fitted on its own training rows.
pub struct M3Checkpoint {
    dimension: usize,
    folds: Vec<FoldRows>,
}

/// The per-fold PCA of M3.
#[derive(Debug, Clone, Copy)]
pub struct FoldPca {
    pub components: usize,
    pub power_iterations: usize,
}

impl M3Checkpoint {
    /// A checkpoint's vectors `rows` ([persona * questions + question][hidden]), each fold in
    /// the PCA basis of this checkpoint's training rows of that fold.
    pub fn new(
        setup: &M3Setup,
        rows: ArrayView2<f32>,
        pca: FoldPca,
        rng: &mut impl rand::Rng,
    ) -> M3Checkpoint {
        let bases = pca::fold_bases(
            rows,
            &setup.train_masks(),
            pca.components,
            pca.power_iterations,
            rng,
        );
        let per_fold = pca::project_folds(rows, &setup.keep, &bases);
        M3Checkpoint::from_projected(setup, &per_fold)
    }

    /// Rows already in a reduced basis, the same for every fold (no PCA).
    pub fn without_pca(setup: &M3Setup, rows: Array2<f32>) -> M3Checkpoint {
        M3Checkpoint::from_projected(setup, &vec![rows; setup.folds])
    }

    fn from_projected(setup: &M3Setup, per_fold: &[Array2<f32>]) -> M3Checkpoint {
        let dimension = per_fold[0].ncols();
        let gather = |rows: &Array2<f32>, which: &[usize]| {
            Array2::from_shape_fn((which.len(), dimension), |(i, j)| rows[[which[i], j]])
        };
        let folds = per_fold
            .iter()
            .enumerate()
            .map(|(fold, rows)| {
                let train = gather(rows, &setup.train_rows[fold]);
                let mut moment = vec![0.0f64; dimension * dimension];
                for x in train.rows() {
                    for i in 0..dimension {
                        let xi = f64::from(x[i]);
                        for j in 0..dimension {
                            moment[i * dimension + j] += xi * f64::from(x[j]);
                        }
                    }
                }
                let n = train.nrows().max(1) as f64;
                moment.iter_mut().for_each(|v| *v /= n);
                let mut train = train.into_raw_vec_and_offset().0;
                train.extend(std::iter::repeat_n(0.0, dimension));
                let train = Array2::from_shape_vec((setup.train_rows[fold].len() + 1, dimension), train)
                    .unwrap_or_else(|_| Array2::zeros((1, dimension)));
                FoldRows {
                    train,
                    moment,
                    test: gather(rows, &setup.test_rows[fold]),
                }
            })
            .collect();
        M3Checkpoint { dimension, folds }
    }

    /// Held-out correct predictions for each labelling in `batch` (at most
    /// `m3_kernels::WIDTH`): per labelling, the number correct per question. The hot loops
    /// are compiled for AVX-512, for AVX2/FMA and for the baseline CPU, and the best the CPU
    /// has is used (checked at run time); all give the same bits.
    pub fn correct_per_question(
        &self,
        setup: &M3Setup,
        batch: &[Vec<u8>],
        shrinkage: f64,
    ) -> Result<Vec<Vec<u32>>, LdaError> {
        self.correct_gathered(setup, batch, &GatheredLabels::of(setup, batch), shrinkage)
    }

    /// `correct_per_question` with the labels already gathered (they are the same for every
    /// checkpoint of a batch).
    fn correct_gathered(
        &self,
        setup: &M3Setup,
        batch: &[Vec<u8>],
        gathered: &GatheredLabels,
        shrinkage: f64,
    ) -> Result<Vec<Vec<u32>>, LdaError> {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(
                c: &M3Checkpoint,
                setup: &M3Setup,
                batch: &[Vec<u8>],
                gathered: &GatheredLabels,
                shrinkage: f64,
            ) -> Result<Vec<Vec<u32>>, LdaError> {
                // SAFETY: called only where AVX-512F was detected.
                unsafe { c.correct_impl::<m3_kernels::Avx512>(setup, batch, gathered, shrinkage) }
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(
                c: &M3Checkpoint,
                setup: &M3Setup,
                batch: &[Vec<u8>],
                gathered: &GatheredLabels,
                shrinkage: f64,
            ) -> Result<Vec<Vec<u32>>, LdaError> {
                // SAFETY: plain code, called only where AVX2 and FMA were detected.
                unsafe { c.correct_impl::<m3_kernels::Portable<true>>(setup, batch, gathered, shrinkage) }
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was just detected.
                return unsafe { avx512(self, setup, batch, gathered, shrinkage) };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected.
                return unsafe { avx2(self, setup, batch, gathered, shrinkage) };
            }
            // SAFETY: plain code needs no CPU feature.
            unsafe { self.correct_impl::<m3_kernels::Portable<false>>(setup, batch, gathered, shrinkage) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // SAFETY: plain code needs no CPU feature.
            unsafe { self.correct_impl::<m3_kernels::Portable<true>>(setup, batch, gathered, shrinkage) }
        }
    }

    /// Per fold: the class sums of each labelling, the refits eight labellings at a time,
    /// then one scoring pass over the held-out rows for the whole batch.
    ///
    /// # Safety
    /// The CPU has the instruction set `K` is compiled for.
    #[inline(always)]
    unsafe fn correct_impl<K: m3_kernels::Scoring>(
        &self,
        setup: &M3Setup,
        batch: &[Vec<u8>],
        gathered: &GatheredLabels,
        shrinkage: f64,
    ) -> Result<Vec<Vec<u32>>, LdaError> {
        use m3_kernels::{FitLanes, FoldScores, LANES, WIDTH};
        let (d, classes, nb) = (self.dimension, setup.personas, batch.len());
        if nb == 0 {
            return Ok(Vec::new());
        }
        assert!(
            nb <= WIDTH,
            "a batch holds at most {WIDTH} labellings, found {nb}"
        );
        let mut fit = FitLanes::new(d, classes);
        // Class sums in f32 (a fold's class has at most a few hundred rows), the fit in f64.
        let mut sums = vec![0.0f32; classes * d];
        let mut sums_lanes = vec![[0.0f64; LANES]; classes * d];
        let mut counts_lanes = vec![[0usize; LANES]; classes];
        // Coefficients of the whole batch, [class][dimension][labelling], so one pass scores
        // every labelling and the argmax runs across labellings.
        let mut coef = vec![0.0f32; d * classes * WIDTH];
        let mut intercepts = vec![0.0f32; classes * WIDTH];
        let mut hits = vec![0u32; setup.questions * WIDTH];
        for (fold, rows) in self.folds.iter().enumerate() {
            let train = rows.train.as_slice().ok_or(LdaError::Empty)?;
            let per_labelling = gathered.steps[fold] * classes;
            for group in (0..nb).step_by(LANES) {
                for lane in 0..LANES {
                    // Lanes past the batch refit its last labelling again (never scored).
                    let b = (group + lane).min(nb - 1);
                    let order = &gathered.order[fold][b * per_labelling..(b + 1) * per_labelling];
                    sums.fill(0.0);
                    class_sums(train, d, classes, order, &mut sums);
                    for (slot, v) in sums_lanes.iter_mut().zip(&sums) {
                        slot[lane] = f64::from(*v);
                    }
                    let counts = &gathered.counts[fold][b * classes..(b + 1) * classes];
                    for (slot, v) in counts_lanes.iter_mut().zip(counts) {
                        slot[lane] = *v;
                    }
                }
                fit.fit(
                    &rows.moment,
                    &sums_lanes,
                    &counts_lanes,
                    &setup.log_prior[fold],
                    shrinkage,
                )?;
                for lane in 0..LANES.min(nb - group) {
                    let b = group + lane;
                    for k in 0..classes {
                        intercepts[k * WIDTH + b] = fit.intercept[k][lane] as f32;
                        for i in 0..d {
                            coef[(k * d + i) * WIDTH + b] = fit.coef[i * classes + k][lane] as f32;
                        }
                    }
                }
            }
            let scores = FoldScores {
                test: rows.test.as_slice().ok_or(LdaError::Empty)?,
                d,
                classes,
                coef: &coef,
                intercepts: &intercepts,
                labels: &gathered.test[fold],
                questions: &gathered.test_questions[fold],
            };
            // SAFETY: forwarded from the caller.
            unsafe { K::score(&scores, &mut hits) };
        }
        Ok((0..nb)
            .map(|b| (0..setup.questions).map(|q| hits[q * WIDTH + b]).collect())
            .collect())
    }
}

/// The labels of a batch, gathered once and shared by its checkpoints. Per fold: the training
/// rows of each class in row order ([labelling][step][class], padded with the index of the
/// zero row after the training rows, `steps` per labelling) and the class sizes
/// ([labelling][class]); the test rows' labels ([test row][labelling], `m3_kernels::WIDTH`
/// wide, 255 past the batch) and each test row's question.
pub struct GatheredLabels {
    order: Vec<Vec<u32>>,
    steps: Vec<usize>,
    counts: Vec<Vec<usize>>,
    test: Vec<Vec<u8>>,
    test_questions: Vec<Vec<usize>>,
}

impl GatheredLabels {
    pub fn of(setup: &M3Setup, batch: &[Vec<u8>]) -> GatheredLabels {
        use m3_kernels::WIDTH;
        let classes = setup.personas;
        let mut order = Vec::with_capacity(setup.folds);
        let mut steps = Vec::with_capacity(setup.folds);
        let mut counts = Vec::with_capacity(setup.folds);
        for rows in &setup.train_rows {
            let mut sizes = vec![0usize; batch.len() * classes];
            for (labels, size) in batch.iter().zip(sizes.chunks_exact_mut(classes.max(1))) {
                for &r in rows {
                    size[usize::from(labels[r])] += 1;
                }
            }
            let fold_steps = sizes.iter().copied().max().unwrap_or(0);
            let zero_row = rows.len() as u32;
            let mut fold_order = vec![zero_row; batch.len() * fold_steps * classes];
            let mut next = vec![0usize; classes];
            for (b, labels) in batch.iter().enumerate() {
                next.fill(0);
                let block = &mut fold_order[b * fold_steps * classes..(b + 1) * fold_steps * classes];
                for (position, &r) in rows.iter().enumerate() {
                    let k = usize::from(labels[r]);
                    block[next[k] * classes + k] = position as u32;
                    next[k] += 1;
                }
            }
            order.push(fold_order);
            steps.push(fold_steps);
            counts.push(sizes);
        }
        let test = setup
            .test_rows
            .iter()
            .map(|rows| {
                let mut out = vec![u8::MAX; rows.len() * WIDTH];
                for (i, &r) in rows.iter().enumerate() {
                    for (b, labels) in batch.iter().enumerate().take(WIDTH) {
                        out[i * WIDTH + b] = labels[r];
                    }
                }
                out
            })
            .collect();
        let test_questions = setup
            .test_rows
            .iter()
            .map(|rows| rows.iter().map(|r| r % setup.questions).collect())
            .collect();
        GatheredLabels {
            order,
            steps,
            counts,
            test,
            test_questions,
        }
    }
}

/// Sums the training rows (row-major, `d` wide) of every class into `sums` ([class][d], zero
/// on entry), each class's rows in row order: `order` is [step][class], the step-th row of
/// each class, and a zero row past a class's last one (a sum that starts at +0 never becomes
/// -0, so adding +0 leaves its bits alone). The class sums stay in registers for the usual
/// widths (no store has to reach the next add of the same class through memory).
#[inline(always)]
fn class_sums(rows: &[f32], d: usize, classes: usize, order: &[u32], sums: &mut [f32]) {
    #[inline(always)]
    fn fixed<const D: usize, const C: usize>(rows: &[f32], order: &[u32], sums: &mut [f32]) {
        let mut acc = [[0.0f32; D]; C];
        for step in order.chunks_exact(C) {
            for (a, &r) in acc.iter_mut().zip(step) {
                let r = r as usize;
                if let Ok(x) = <&[f32; D]>::try_from(&rows[r * D..(r + 1) * D]) {
                    for l in 0..D {
                        a[l] += x[l];
                    }
                }
            }
        }
        for (s, a) in sums.chunks_exact_mut(D).zip(&acc) {
            s.copy_from_slice(a);
        }
    }
    match (d, classes) {
        (8, 12) => fixed::<8, 12>(rows, order, sums),
        (12, 12) => fixed::<12, 12>(rows, order, sums),
        (16, 12) => fixed::<16, 12>(rows, order, sums),
        (24, 12) => fixed::<24, 12>(rows, order, sums),
        (32, 12) => fixed::<32, 12>(rows, order, sums),
        _ => {
            for step in order.chunks_exact(classes.max(1)) {
                for (k, &r) in step.iter().enumerate() {
                    let r = r as usize;
                    for (s, v) in sums[k * d..(k + 1) * d].iter_mut().zip(&rows[r * d..(r + 1) * d]) {
                        *s += *v;
                    }
                }
            }
        }
    }
}

/// A fitted fold: coefficients [dimension][class] and intercepts (-inf for classes absent
/// from training).
pub struct FoldModel {
    pub coef: Array2<f64>,
    pub intercept: Vec<f64>,
}

/// The shrinkage LDA fit on pre-reduced statistics, with its working space kept between
/// refits (no allocation per refit). Same estimator as `lda::fit` (tested against it).
struct FitScratch {
    d: usize,
    classes: usize,
    means: Vec<f64>,
    /// Shrunk covariance, then its lower Cholesky factor, row-major [d][d].
    factor: Vec<f64>,
    /// Coefficients, row-major [dimension][class].
    coef: Vec<f64>,
    intercept: Vec<f64>,
}

impl FitScratch {
    fn new(d: usize, classes: usize) -> FitScratch {
        FitScratch {
            d,
            classes,
            means: vec![0.0; classes * d],
            factor: vec![0.0; d * d],
            coef: vec![0.0; d * classes],
            intercept: vec![0.0; classes],
        }
    }

    /// `moment` = mean of x x^T over the training rows (row-major d x d), `sums` the class
    /// sums (row-major classes x d), `counts` the class sizes.
    fn fit(
        &mut self,
        moment: &[f64],
        sums: &[f64],
        counts: &[usize],
        shrinkage: f64,
    ) -> Result<(), LdaError> {
        if !(shrinkage > 0.0 && shrinkage <= 1.0) {
            return Err(LdaError::Shrinkage(shrinkage));
        }
        let (d, classes) = (self.d, self.classes);
        let n: usize = counts.iter().sum();
        if n == 0 {
            return Err(LdaError::Empty);
        }
        for ((mean, sum), &count) in self
            .means
            .chunks_exact_mut(d)
            .zip(sums.chunks_exact(d))
            .zip(counts)
        {
            let scale = if count > 0 { 1.0 / count as f64 } else { 0.0 };
            for (m, s) in mean.iter_mut().zip(sum) {
                *m = s * scale;
            }
        }
        // S = moment - sum_k prior_k m_k m_k^T, shrunk toward trace / d * I.
        let l = &mut self.factor;
        l.copy_from_slice(moment);
        for (m, &count) in self.means.chunks_exact(d).zip(counts) {
            if count == 0 {
                continue;
            }
            let prior = count as f64 / n as f64;
            for i in 0..d {
                let pm = prior * m[i];
                for j in 0..=i {
                    l[i * d + j] -= pm * m[j];
                }
            }
        }
        let trace: f64 = (0..d).map(|i| l[i * d + i]).sum();
        let target = shrinkage * trace / d as f64;
        for i in 0..d {
            for j in 0..=i {
                l[i * d + j] *= 1.0 - shrinkage;
            }
            l[i * d + i] += target;
        }
        // In-place lower Cholesky factor (only the lower triangle is read).
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
        // Solve L L^T W = M^T for all classes at once, W row-major [dimension][class]: each
        // step updates a whole row of classes (independent lanes, no reduction chain).
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
                    *x -= factor * y;
                }
            }
            let pivot = l[i * d + i];
            row.iter_mut().for_each(|v| *v /= pivot);
        }
        for i in (0..d).rev() {
            let (head, tail) = w.split_at_mut((i + 1) * c);
            let row = &mut head[i * c..];
            for (k, later) in tail.chunks_exact(c).enumerate() {
                let factor = l[(i + 1 + k) * d + i];
                for (x, y) in row.iter_mut().zip(later) {
                    *x -= factor * y;
                }
            }
            let pivot = l[i * d + i];
            row.iter_mut().for_each(|v| *v /= pivot);
        }
        for (k, (intercept, &count)) in self.intercept.iter_mut().zip(counts).enumerate() {
            *intercept = if count == 0 {
                f64::NEG_INFINITY
            } else {
                let quadratic: f64 = (0..d).map(|i| self.means[k * d + i] * w[i * c + k]).sum();
                -0.5 * quadratic + (count as f64 / n as f64).ln()
            };
        }
        Ok(())
    }
}

/// `lda::fit` on pre-reduced statistics: `moment` = mean of x x^T over the training rows,
/// class sums and counts (the refit of the permutation null, as a tested entry point).
pub fn fast_fit(
    moment: &Array2<f64>,
    sums: &Array2<f64>,
    counts: &[usize],
    shrinkage: f64,
) -> Result<FoldModel, LdaError> {
    let (classes, d) = sums.dim();
    let mut scratch = FitScratch::new(d, classes);
    let moment: Vec<f64> = moment.iter().copied().collect();
    let sums: Vec<f64> = sums.iter().copied().collect();
    scratch.fit(&moment, &sums, counts, shrinkage)?;
    Ok(FoldModel {
        coef: Array2::from_shape_vec((d, classes), scratch.coef).map_err(|_| LdaError::Empty)?,
        intercept: scratch.intercept,
    })
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
    /// CPU seconds of the observed fits and of the null (summed over its threads).
    pub observed_cpu_seconds: Option<f64>,
    pub null_cpu_seconds: Option<f64>,
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
    let clock = timing::thread_cpu_seconds();
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
    let observed_cpu_seconds = timing::since(clock);
    const BATCH: usize = m3_kernels::WIDTH;
    let batches: Vec<usize> = (0..permutations.div_ceil(BATCH)).collect();
    let null_batches: Vec<(Vec<Vec<f64>>, Option<f64>)> = batches
        .par_iter()
        .map(|&b| {
            let clock = timing::thread_cpu_seconds();
            let first = b * BATCH;
            let last = (first + BATCH).min(permutations);
            let labels: Vec<Vec<u8>> = (first..last)
                .map(|i| setup.shuffled_labels(&mut seeded_rng(seed, &format!("{stream}/{i}"))))
                .collect();
            let mut per_permutation = vec![Vec::with_capacity(checkpoints.len()); labels.len()];
            let gathered = GatheredLabels::of(setup, &labels);
            for c in checkpoints {
                let correct = c.correct_gathered(setup, &labels, &gathered, shrinkage)?;
                for (slot, per_question) in per_permutation.iter_mut().zip(correct) {
                    slot.push(per_question.iter().sum::<u32>() as f64 / f64::from(total.max(1)));
                }
            }
            Ok((per_permutation, timing::since(clock)))
        })
        .collect::<Result<_, LdaError>>()?;
    let null_cpu_seconds = null_batches
        .iter()
        .map(|(_, seconds)| *seconds)
        .sum::<Option<f64>>();
    Ok(M3Result {
        correct_per_question,
        valid_per_question,
        accuracy,
        null_accuracy: null_batches.into_iter().flat_map(|(p, _)| p).collect(),
        observed_cpu_seconds,
        null_cpu_seconds,
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
        let checkpoint = M3Checkpoint::without_pca(&setup, rows.clone());
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

    /// Class sums from the per-class row lists against adding every training row to its
    /// label's sum in row order: the same bits, for every labelling, fold and width (the
    /// register path at 12 classes x 16 and the general one), with rows left out.
    #[test]
    fn class_sums_from_row_lists_equal_the_label_scatter() {
        for (p, d) in [(12, 16), (5, 3)] {
            let q = 23;
            let mut keep = vec![true; p * q];
            keep[q + 4] = false;
            keep[3 * q + 9] = false;
            let setup = M3Setup::new(p, q, 5, keep);
            let rows = toy(p, q, d, 1.0, 4);
            let checkpoint = M3Checkpoint::without_pca(&setup, rows);
            let batch: Vec<Vec<u8>> = (0..3)
                .map(|i| setup.shuffled_labels(&mut seeded_rng(2, &format!("lists/{i}"))))
                .collect();
            let gathered = GatheredLabels::of(&setup, &batch);
            for (fold, rows) in checkpoint.folds.iter().enumerate() {
                let train = rows.train.as_slice().unwrap();
                let per_labelling = gathered.steps[fold] * p;
                for (b, labels) in batch.iter().enumerate() {
                    let mut scatter = vec![0.0f32; p * d];
                    let mut counts = vec![0usize; p];
                    for (position, &r) in setup.train_rows[fold].iter().enumerate() {
                        let k = usize::from(labels[r]);
                        counts[k] += 1;
                        for j in 0..d {
                            scatter[k * d + j] += train[position * d + j];
                        }
                    }
                    let mut sums = vec![0.0f32; p * d];
                    let order = &gathered.order[fold][b * per_labelling..(b + 1) * per_labelling];
                    class_sums(train, d, p, order, &mut sums);
                    assert!(sums.iter().zip(&scatter).all(|(a, b)| a.to_bits() == b.to_bits()));
                    assert_eq!(&gathered.counts[fold][b * p..(b + 1) * p], &counts[..]);
                }
            }
        }
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
        let checkpoints = vec![M3Checkpoint::without_pca(&setup, separable)];
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
