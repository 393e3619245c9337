//! The question-level bootstrap of M1 and M2 as one fused kernel: for every replicate, the
//! dot products of its persona centroids with each other and with the M2 axis, without ever
//! holding a replicate centroid in memory.
//!
//! Both statistics are cosines, so a centroid may be left unnormalised: replicate b's
//! centroid of persona p is taken as sum_q count[b][q] * x[p][q] over the questions p keeps
//! (masked rows packed as zeros), which is the weighted mean times a positive factor; the axis
//! (anchor minus base, same persona, same kept questions) scales by the same factor on both
//! sides, and its rows are differenced before the product (W (X_a - X_b) = W X_a - W X_b).
//! A replicate where a persona drew none of its kept questions gets a zero vector and so a
//! NaN cosine, as the normalised version's 0/0.
//!
//! This is a matrix product (replicates x questions times questions x hidden per persona,
//! 2,000 x 240 x 3584 at full size) whose output is consumed in cache: a micro-tile of 48
//! replicates x 8 hidden columns is computed for every persona, then every pair's products
//! over those 8 columns are added to the replicate's running sums (f32 over 128 columns, then
//! f64). The micro-kernel and the pair sums run on 16-lane AVX-512 vectors where the CPU has
//! them, else the same arithmetic compiled for AVX2/FMA or plain code; every path does the
//! same fused multiply-adds in the same order on each replicate, so they give identical bits.
//!
//! Why not the Gram route (dot products from the questions' Gram blocks X_p X_q^T): M1 needs
//! every persona pair, i.e. the whole (12 x 240)^2 Gram, whose product alone (about 37
//! GFLOP per checkpoint) costs as much as the direct route (41), before the replicate sums.

use ndarray::ArrayView2;

/// Replicates per micro-tile: V vectors of 16 f32 lanes, one lane per replicate.
const V: usize = 3;
const MR: usize = 16 * V;
/// Hidden columns per micro-tile.
const NR: usize = 8;
/// Floats in one micro-tile of replicate centroids, column-major ([column][replicate]).
const TILE: usize = NR * MR;
/// Column tiles whose products are summed in f32 before they are added into f64 (128
/// columns: each f32 lane sums at most 128 products).
const GROUP: usize = 16;

/// Rows of `blocks` blocks of `questions` rows each (a checkpoint's personas, or the one
/// block of axis differences), tile-major for the kernel: [tile][block][question][NR], with
/// masked rows and the columns past `hidden` zero.
struct PackedRows {
    blocks: usize,
    questions: usize,
    tiles: usize,
    data: Vec<f32>,
}

impl PackedRows {
    fn new(blocks: usize, questions: usize, hidden: usize) -> PackedRows {
        let tiles = hidden.div_ceil(NR);
        PackedRows {
            blocks,
            questions,
            tiles,
            data: vec![0.0; tiles * blocks * questions * NR],
        }
    }

    fn tile(&self, tile: usize, block: usize) -> &[f32] {
        let len = self.questions * NR;
        let start = (tile * self.blocks + block) * len;
        &self.data[start..start + len]
    }

    /// Writes one row (`value(j)` for every column j, zeros where `value` is None) as row
    /// `question` of `block`.
    fn set_row(
        &mut self,
        block: usize,
        question: usize,
        hidden: usize,
        value: Option<impl Fn(usize) -> f32>,
    ) {
        let len = self.questions * NR;
        for tile in 0..self.tiles {
            let start = (tile * self.blocks + block) * len + question * NR;
            let slots = &mut self.data[start..start + NR];
            match &value {
                Some(value) if (tile + 1) * NR <= hidden => {
                    for (j, slot) in slots.iter_mut().enumerate() {
                        *slot = value(tile * NR + j);
                    }
                }
                Some(value) => {
                    for (j, slot) in slots.iter_mut().enumerate() {
                        let column = tile * NR + j;
                        *slot = if column < hidden { value(column) } else { 0.0 };
                    }
                }
                None => slots.fill(0.0),
            }
        }
    }

    /// Packs every persona block of a checkpoint's rows ([persona * questions + question]
    /// [hidden]) into this buffer (of the same shape), so one allocation serves every
    /// checkpoint of a job.
    fn fill_personas(&mut self, rows: ArrayView2<f32>, keep: &[bool]) {
        let hidden = rows.ncols();
        for p in 0..self.blocks {
            for q in 0..self.questions {
                let row = p * self.questions + q;
                if keep[row] {
                    let x = rows.row(row);
                    match x.as_slice() {
                        Some(x) => self.set_row(p, q, hidden, Some(|j: usize| x[j])),
                        None => self.set_row(p, q, hidden, Some(|j: usize| x[j])),
                    }
                } else {
                    self.set_row(p, q, hidden, None::<fn(usize) -> f32>);
                }
            }
        }
    }

    /// The one block of axis differences: persona `persona`'s rows of `after` minus `before`.
    fn axis(
        after: ArrayView2<f32>,
        before: ArrayView2<f32>,
        persona: usize,
        questions: usize,
        keep: &[bool],
    ) -> PackedRows {
        let hidden = after.ncols();
        let mut packed = PackedRows::new(1, questions, hidden);
        for q in 0..questions {
            let row = persona * questions + q;
            if keep[row] {
                let (a, b) = (after.row(row), before.row(row));
                packed.set_row(0, q, hidden, Some(|j: usize| a[j] - b[j]));
            }
        }
        packed
    }
}

/// Question counts of the replicates, per block of MR replicates: [block][question][MR], the
/// replicates past the last one zero.
struct PackedWeights {
    blocks: usize,
    questions: usize,
    data: Vec<f32>,
}

impl PackedWeights {
    fn new(weights: ArrayView2<f32>) -> PackedWeights {
        let (replicates, questions) = weights.dim();
        let blocks = replicates.div_ceil(MR);
        let mut data = vec![0.0; blocks * questions * MR];
        for (b, row) in weights.rows().into_iter().enumerate() {
            let (block, lane) = (b / MR, b % MR);
            for (q, w) in row.iter().enumerate() {
                data[(block * questions + q) * MR + lane] = *w;
            }
        }
        PackedWeights {
            blocks,
            questions,
            data,
        }
    }

    fn block(&self, block: usize) -> &[f32] {
        let len = self.questions * MR;
        &self.data[block * len..(block + 1) * len]
    }
}

/// The two operations the bootstrap is made of, per instruction set.
trait Kernel {
    /// `out` ([NR][MR]) = the replicates' weighted sums of one tile of rows: `weights`
    /// [question][MR] times `rows` [question][NR], one fused multiply-add per question in
    /// question order.
    ///
    /// # Safety
    /// The CPU has the instruction set the implementation is compiled for.
    unsafe fn tile(questions: usize, weights: &[f32], rows: &[f32], out: &mut [f32]);

    /// For each pair (u, v) of slots of `tiles` ([slot][NR][MR]): `partial[pair][r]` += the
    /// product over the NR columns of slot u's and slot v's replicate r, one fused
    /// multiply-add per column in column order.
    ///
    /// # Safety
    /// As `tile`.
    unsafe fn pairs(pairs: &[(usize, usize)], tiles: &[f32], partial: &mut [f32]);
}

/// Plain code (compiled for AVX2/FMA, or for the baseline CPU); `FUSED` = multiply-adds
/// rounded once (`mul_add`), else a product and a sum (CPUs without FMA, where `mul_add`
/// is a slow library call).
struct Portable<const FUSED: bool>;

impl<const FUSED: bool> Portable<FUSED> {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        if FUSED {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }
}

impl<const FUSED: bool> Kernel for Portable<FUSED> {
    #[inline(always)]
    unsafe fn tile(questions: usize, weights: &[f32], rows: &[f32], out: &mut [f32]) {
        let mut acc = [[0.0f32; MR]; NR];
        for (w, x) in weights
            .chunks_exact(MR)
            .zip(rows.chunks_exact(NR))
            .take(questions)
        {
            for (acc_j, &x_j) in acc.iter_mut().zip(x) {
                for (a, &w_r) in acc_j.iter_mut().zip(w) {
                    *a = Self::madd(w_r, x_j, *a);
                }
            }
        }
        for (o, a) in out.chunks_exact_mut(MR).zip(&acc) {
            o.copy_from_slice(a);
        }
    }

    #[inline(always)]
    unsafe fn pairs(pairs: &[(usize, usize)], tiles: &[f32], partial: &mut [f32]) {
        for (&(u, v), sums) in pairs.iter().zip(partial.chunks_exact_mut(MR)) {
            let (tu, tv) = (&tiles[u * TILE..(u + 1) * TILE], &tiles[v * TILE..(v + 1) * TILE]);
            for (cu, cv) in tu.chunks_exact(MR).zip(tv.chunks_exact(MR)) {
                for ((s, &a), &b) in sums.iter_mut().zip(cu).zip(cv) {
                    *s = Self::madd(a, b, *s);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512 {
    #[inline(always)]
    unsafe fn tile(questions: usize, weights: &[f32], rows: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        assert!(weights.len() >= questions * MR && rows.len() >= questions * NR && out.len() >= TILE);
        let mut acc = [[_mm512_setzero_ps(); V]; NR];
        let (w, x) = (weights.as_ptr(), rows.as_ptr());
        for k in 0..questions {
            let mut w_k = [_mm512_setzero_ps(); V];
            for (v, w_v) in w_k.iter_mut().enumerate() {
                // SAFETY: k < questions, and the lengths were checked above.
                *w_v = unsafe { _mm512_loadu_ps(w.add(k * MR + 16 * v)) };
            }
            for (j, acc_j) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let x_j = _mm512_set1_ps(unsafe { *x.add(k * NR + j) });
                for (a, w_v) in acc_j.iter_mut().zip(&w_k) {
                    *a = _mm512_fmadd_ps(*w_v, x_j, *a);
                }
            }
        }
        for (j, acc_j) in acc.iter().enumerate() {
            for (v, a) in acc_j.iter().enumerate() {
                // SAFETY: j * MR + 16 * v + 16 <= TILE <= out.len().
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(j * MR + 16 * v), *a) };
            }
        }
    }

    #[inline(always)]
    unsafe fn pairs(pairs: &[(usize, usize)], tiles: &[f32], partial: &mut [f32]) {
        use std::arch::x86_64::*;
        assert!(partial.len() >= pairs.len() * MR);
        for (&(u, v), sums) in pairs.iter().zip(partial.chunks_exact_mut(MR)) {
            let (tu, tv) = (&tiles[u * TILE..(u + 1) * TILE], &tiles[v * TILE..(v + 1) * TILE]);
            let (pu, pv, ps) = (tu.as_ptr(), tv.as_ptr(), sums.as_mut_ptr());
            // SAFETY: tu and tv hold TILE floats and sums MR (slices checked by indexing).
            unsafe {
                let mut s = [_mm512_setzero_ps(); V];
                for (l, s_l) in s.iter_mut().enumerate() {
                    *s_l = _mm512_loadu_ps(ps.add(16 * l));
                }
                for j in 0..NR {
                    for (l, s_l) in s.iter_mut().enumerate() {
                        let at = j * MR + 16 * l;
                        *s_l =
                            _mm512_fmadd_ps(_mm512_loadu_ps(pu.add(at)), _mm512_loadu_ps(pv.add(at)), *s_l);
                    }
                }
                for (l, s_l) in s.iter().enumerate() {
                    _mm512_storeu_ps(ps.add(16 * l), *s_l);
                }
            }
        }
    }
}

/// Slot pairs (u <= v) of `slots` slots, row-major, and the index of each pair.
fn slot_pairs(slots: usize) -> (Vec<(usize, usize)>, Vec<usize>) {
    let mut pairs = Vec::with_capacity(slots * (slots + 1) / 2);
    let mut index = vec![0; slots * slots];
    for u in 0..slots {
        for v in u..slots {
            index[u * slots + v] = pairs.len();
            index[v * slots + u] = pairs.len();
            pairs.push((u, v));
        }
    }
    (pairs, index)
}

/// Replicate tiles of the axis block for every replicate block and column tile:
/// [block][tile][NR][MR].
#[inline(always)]
unsafe fn axis_tiles<K: Kernel>(weights: &PackedWeights, axis: &PackedRows) -> Vec<f32> {
    let mut out = vec![0.0; weights.blocks * axis.tiles * TILE];
    for (i, tile) in out.chunks_exact_mut(TILE).enumerate() {
        let (block, t) = (i / axis.tiles.max(1), i % axis.tiles.max(1));
        // SAFETY: forwarded from the caller.
        unsafe { K::tile(weights.questions, weights.block(block), axis.tile(t, 0), tile) };
    }
    out
}

/// Every replicate's pair sums of one checkpoint, [replicate block * MR + lane][pair], f64.
/// Slots are the checkpoint's personas, then the axis when `axis` ([block][tile][NR][MR])
/// is given. Column groups are the outer loop: a group's packed rows (GROUP tiles of every
/// persona, 1.5 MB at full size) stay in cache while every replicate block passes over them,
/// so the rows come from memory once per checkpoint instead of once per replicate block.
#[inline(always)]
unsafe fn checkpoint_sums<K: Kernel>(
    weights: &PackedWeights,
    rows: &PackedRows,
    axis: Option<&[f32]>,
    pairs: &[(usize, usize)],
) -> Vec<f64> {
    let personas = rows.blocks;
    let slots = personas + usize::from(axis.is_some());
    let n_pairs = pairs.len();
    let block_len = n_pairs * MR;
    // [block][pair][lane]
    let mut total = vec![0.0f64; weights.blocks * block_len];
    let mut tiles = vec![0.0f32; slots * TILE];
    let mut partial = vec![0.0f32; block_len];
    for group in (0..rows.tiles).step_by(GROUP) {
        let group_tiles = group..(group + GROUP).min(rows.tiles);
        for (block, total) in total.chunks_exact_mut(block_len.max(1)).enumerate() {
            let w = weights.block(block);
            partial.fill(0.0);
            for t in group_tiles.clone() {
                for p in 0..personas {
                    // SAFETY: forwarded from the caller.
                    unsafe {
                        K::tile(
                            rows.questions,
                            w,
                            rows.tile(t, p),
                            &mut tiles[p * TILE..(p + 1) * TILE],
                        )
                    };
                }
                if let Some(axis) = axis {
                    let at = (block * rows.tiles + t) * TILE;
                    tiles[personas * TILE..].copy_from_slice(&axis[at..at + TILE]);
                }
                // SAFETY: forwarded from the caller.
                unsafe { K::pairs(pairs, &tiles, &mut partial) };
            }
            for (s, p) in total.iter_mut().zip(&partial) {
                *s += f64::from(*p);
            }
        }
    }
    // [block][pair][lane] -> [replicate][pair]
    let mut out = vec![0.0f64; weights.blocks * MR * n_pairs];
    for (block, sums) in total.chunks_exact(block_len.max(1)).enumerate() {
        for (pair, lanes) in sums.chunks_exact(MR).enumerate() {
            for (lane, v) in lanes.iter().enumerate() {
                out[(block * MR + lane) * n_pairs + pair] = *v;
            }
        }
    }
    out
}

/// M1 and M2 of every replicate of every checkpoint.
pub struct ReplicateStatistics {
    /// [checkpoint][replicate]
    pub m1: Vec<Vec<f64>>,
    /// [checkpoint][replicate]; empty without an axis.
    pub m2: Vec<Vec<f64>>,
}

/// The whole computation for one instruction set.
#[inline(always)]
unsafe fn run<K: Kernel>(
    checkpoints: &[ArrayView2<f32>],
    personas: usize,
    questions: usize,
    keep: &[bool],
    weights: ArrayView2<f32>,
    axis: Option<(usize, usize, usize)>,
) -> ReplicateStatistics {
    let replicates = weights.nrows();
    let packed_weights = PackedWeights::new(weights);
    let axis_rows = axis.map(|(after, before, persona)| {
        let rows = PackedRows::axis(checkpoints[after], checkpoints[before], persona, questions, keep);
        // SAFETY: forwarded from the caller.
        (unsafe { axis_tiles::<K>(&packed_weights, &rows) }, persona)
    });
    let slots = personas + usize::from(axis.is_some());
    let (pairs, index) = slot_pairs(slots);
    let n_pairs = pairs.len();
    let mut m1 = Vec::with_capacity(checkpoints.len());
    let mut m2 = Vec::new();
    let mut packed = PackedRows::new(personas, questions, checkpoints.first().map_or(0, |c| c.ncols()));
    for rows in checkpoints {
        packed.fill_personas(*rows, keep);
        // SAFETY: forwarded from the caller.
        let sums = unsafe {
            checkpoint_sums::<K>(
                &packed_weights,
                &packed,
                axis_rows.as_ref().map(|(a, _)| &a[..]),
                &pairs,
            )
        };
        let mut m1_c = Vec::with_capacity(replicates);
        let mut m2_c = Vec::with_capacity(replicates);
        for g in sums.chunks_exact(n_pairs.max(1)).take(replicates) {
            let at = |u: usize, v: usize| g[index[u * slots + v]];
            let mut sum = 0.0;
            let mut count = 0usize;
            for i in 0..personas {
                for j in i + 1..personas {
                    sum += at(i, j) / (at(i, i) * at(j, j)).sqrt();
                    count += 1;
                }
            }
            m1_c.push(sum / count as f64);
            if let Some((_, axis_persona)) = axis_rows {
                let a = personas;
                let norm = at(a, a).sqrt();
                let mut sum = 0.0;
                let mut count = 0usize;
                for p in (0..personas).filter(|&p| p != axis_persona) {
                    let norms = at(p, p).sqrt() * norm;
                    sum += if norms > 0.0 {
                        (at(p, a) / norms).abs()
                    } else {
                        f64::NAN
                    };
                    count += 1;
                }
                m2_c.push(sum / count as f64);
            }
        }
        m1.push(m1_c);
        if axis.is_some() {
            m2.push(m2_c);
        }
    }
    ReplicateStatistics { m1, m2 }
}

/// M1 and M2 of every bootstrap replicate (`weights`: question counts, [replicate][question])
/// of every checkpoint (`checkpoints`: [persona * questions + question][hidden] each; rows
/// `keep` does not mark are never read). `axis` = (anchor checkpoint, base checkpoint, axis
/// persona), or None when M2 is not computed.
pub fn replicate_statistics(
    checkpoints: &[ArrayView2<f32>],
    personas: usize,
    questions: usize,
    keep: &[bool],
    weights: ArrayView2<f32>,
    axis: Option<(usize, usize, usize)>,
) -> ReplicateStatistics {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(
            checkpoints: &[ArrayView2<f32>],
            personas: usize,
            questions: usize,
            keep: &[bool],
            weights: ArrayView2<f32>,
            axis: Option<(usize, usize, usize)>,
        ) -> ReplicateStatistics {
            // SAFETY: this function is only called where AVX-512F was detected.
            unsafe { run::<Avx512>(checkpoints, personas, questions, keep, weights, axis) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(
            checkpoints: &[ArrayView2<f32>],
            personas: usize,
            questions: usize,
            keep: &[bool],
            weights: ArrayView2<f32>,
            axis: Option<(usize, usize, usize)>,
        ) -> ReplicateStatistics {
            // SAFETY: plain code; this function is only called where AVX2 and FMA were detected.
            unsafe { run::<Portable<true>>(checkpoints, personas, questions, keep, weights, axis) }
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            return unsafe { avx512(checkpoints, personas, questions, keep, weights, axis) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { avx2(checkpoints, personas, questions, keep, weights, axis) };
        }
        // SAFETY: plain code needs no CPU feature.
        unsafe { run::<Portable<false>>(checkpoints, personas, questions, keep, weights, axis) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: plain code needs no CPU feature.
        unsafe { run::<Portable<true>>(checkpoints, personas, questions, keep, weights, axis) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::rng::seeded_rng;
    use ndarray::Array2;
    use rand::Rng;

    struct Case {
        personas: usize,
        questions: usize,
        values: Vec<Array2<f32>>,
        keep: Vec<bool>,
        weights: Array2<f32>,
    }

    /// Random rows (masked rows hold NaN: they must never be read), random question counts,
    /// and a replicate where persona 1 draws only questions it lacks.
    fn case(hidden: usize, replicates: usize) -> Case {
        let (personas, questions) = (4, 9);
        let mut rng = seeded_rng(5, "replicate-gram");
        let keep: Vec<bool> = (0..personas * questions).map(|r| r % 5 != 2).collect();
        let values = (0..3)
            .map(|_| {
                Array2::from_shape_fn((personas * questions, hidden), |(r, _)| {
                    if keep[r] {
                        rng.gen_range(-1.0f32..1.0) + 0.5
                    } else {
                        f32::NAN
                    }
                })
            })
            .collect();
        let mut weights = super::super::centroids::bootstrap_weights(replicates, questions, &mut rng);
        let lacking: Vec<usize> = (0..questions).filter(|&q| !keep[questions + q]).collect();
        let mut row = weights.row_mut(replicates / 2);
        row.fill(0.0);
        row[lacking[0]] = questions as f32;
        Case {
            personas,
            questions,
            values,
            keep,
            weights,
        }
    }

    fn views(c: &Case) -> Vec<ArrayView2<'_, f32>> {
        c.values.iter().map(|v| v.view()).collect()
    }

    /// M1 and M2 from the weighted-mean centroids in f64, as the plan defines them.
    fn direct(c: &Case, axis: (usize, usize, usize)) -> ReplicateStatistics {
        let (p, q) = (c.personas, c.questions);
        let hidden = c.values[0].ncols();
        let centroid = |checkpoint: usize, persona: usize, w: &[f32]| -> Vec<f64> {
            let mut sum = vec![0.0f64; hidden];
            let mut total = 0.0f64;
            for (question, &weight) in w.iter().enumerate() {
                let row = persona * q + question;
                if c.keep[row] && weight > 0.0 {
                    total += f64::from(weight);
                    for (s, x) in sum.iter_mut().zip(c.values[checkpoint].row(row)) {
                        *s += f64::from(weight) * f64::from(*x);
                    }
                }
            }
            sum.iter().map(|s| s / total).collect()
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let cos = |a: &[f64], b: &[f64]| dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt());
        let (mut m1, mut m2) = (Vec::new(), Vec::new());
        for checkpoint in 0..c.values.len() {
            let (mut m1_c, mut m2_c) = (Vec::new(), Vec::new());
            for w in c.weights.rows() {
                let w = w.to_vec();
                let set: Vec<Vec<f64>> = (0..p).map(|persona| centroid(checkpoint, persona, &w)).collect();
                let pairs: Vec<f64> = (0..p)
                    .flat_map(|i| (i + 1..p).map(move |j| (i, j)))
                    .map(|(i, j)| cos(&set[i], &set[j]))
                    .collect();
                m1_c.push(pairs.iter().sum::<f64>() / pairs.len() as f64);
                let (after, before, persona) = axis;
                let a: Vec<f64> = centroid(after, persona, &w)
                    .iter()
                    .zip(centroid(before, persona, &w))
                    .map(|(x, y)| x - y)
                    .collect();
                let others: Vec<f64> = (0..p)
                    .filter(|&i| i != persona)
                    .map(|i| cos(&set[i], &a).abs())
                    .collect();
                m2_c.push(others.iter().sum::<f64>() / others.len() as f64);
            }
            m1.push(m1_c);
            m2.push(m2_c);
        }
        ReplicateStatistics { m1, m2 }
    }

    /// The unnormalised, fused, tiled sums against weighted-mean centroids in f64: several
    /// column groups (f32 sums flushed into f64), a last partial tile, a last partial
    /// replicate block and two replicate blocks per pass; a persona that drew none of its
    /// questions gives NaN, as 0/0 does in the direct computation.
    #[test]
    fn fused_pair_sums_equal_the_cosines_of_the_weighted_centroids() {
        let hidden = GROUP * NR * 2 + 5;
        let replicates = 2 * MR + 7;
        let c = case(hidden, replicates);
        let axis = (2, 0, 1);
        let fast = replicate_statistics(
            &views(&c),
            c.personas,
            c.questions,
            &c.keep,
            c.weights.view(),
            Some(axis),
        );
        let slow = direct(&c, axis);
        for checkpoint in 0..3 {
            for r in 0..replicates {
                let (f1, s1) = (fast.m1[checkpoint][r], slow.m1[checkpoint][r]);
                let (f2, s2) = (fast.m2[checkpoint][r], slow.m2[checkpoint][r]);
                if r == replicates / 2 {
                    assert!(f1.is_nan() && s1.is_nan() && f2.is_nan() && s2.is_nan());
                    continue;
                }
                assert!((f1 - s1).abs() < 1e-6, "M1 c{checkpoint} r{r}: {f1} vs {s1}");
                assert!((f2 - s2).abs() < 1e-6, "M2 c{checkpoint} r{r}: {f2} vs {s2}");
            }
        }
        let without_axis = replicate_statistics(
            &views(&c),
            c.personas,
            c.questions,
            &c.keep,
            c.weights.view(),
            None,
        );
        assert!(without_axis.m2.is_empty());
        for (a, b) in without_axis.m1.iter().zip(&fast.m1) {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    /// Every instruction set the CPU offers gives the same bits (the same fused multiply-adds
    /// in the same order per replicate).
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let c = case(GROUP * NR + 13, MR + 11);
        let axis = Some((1, 0, 2));
        let v = views(&c);
        let args = (
            &v[..],
            c.personas,
            c.questions,
            &c.keep[..],
            c.weights.view(),
            axis,
        );
        // SAFETY: plain code needs no CPU feature (mul_add is exact wherever it runs).
        let portable = unsafe { run::<Portable<true>>(args.0, args.1, args.2, args.3, args.4, args.5) };
        let dispatched = replicate_statistics(args.0, args.1, args.2, args.3, args.4, args.5);
        let same = |a: &[Vec<f64>], b: &[Vec<f64>]| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .all(|(x, y)| x.to_bits() == y.to_bits())
        };
        assert!(same(&portable.m1, &dispatched.m1) && same(&portable.m2, &dispatched.m2));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            let avx512 = unsafe { run::<Avx512>(args.0, args.1, args.2, args.3, args.4, args.5) };
            assert!(same(&portable.m1, &avx512.m1) && same(&portable.m2, &avx512.m2));
        }
    }
}
