//! Batched generation with a KV cache: greedy or temperature/top-p sampling, n samples per
//! prompt, a token budget, stop tokens and a seed.
//!
//! Marker evaluation and Method B are generation-bound, so the batch is kept full: when rows
//! finish, they leave the batch and queued prompts are prefilled and merged into the running
//! cache (rows are left-padded to a common cache length; positions come from each row's mask, so
//! padding never shifts a real token). Columns that are padding in every row are trimmed.
//!
//! Randomness: every sequence (prompt, sample) draws from its own ChaCha stream derived from the
//! seed, and a token is chosen by inverse-CDF with that stream's uniform number. A sequence's
//! samples therefore do not depend on the batch size, on which rows share its batch, or on any
//! other use of libtorch's global generator.

use crate::model::{Adapter, ForwardOptions, KvCache, Logits, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// Samples per prompt.
    pub n: usize,
    pub seed: u64,
    /// Generation stops after any of these ids (EOS, the template's end-of-turn).
    pub stop_ids: Vec<i64>,
    /// Rows decoded together.
    pub max_batch: usize,
    /// Prompt tokens prefilled in one forward pass when rows are (re)filled.
    pub max_prefill_tokens: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            n: 1,
            seed: 0,
            stop_ids: Vec::new(),
            max_batch: 64,
            max_prefill_tokens: 16_384,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// Generated ids, without the stop token.
    pub tokens: Vec<i64>,
    pub finish: FinishReason,
}

struct Row {
    prompt: usize,
    sample: usize,
    rng: ChaCha8Rng,
    tokens: Vec<i64>,
    /// The row's pending input token has not been recorded yet.
    fresh: bool,
}

/// Generates `params.n` continuations of every prompt. Returns `[prompt][sample]`.
pub fn generate(
    model: &Model,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    adapter: Option<&dyn Adapter>,
) -> Vec<Vec<Generation>> {
    generate_with_progress(model, prompts, params, adapter, &mut |_| {})
}

/// The running batch: rows, their KV cache, attention mask and pending input tokens.
struct Batch {
    rows: Vec<Row>,
    cache: KvCache,
    mask: Tensor,
    pending: Tensor,
}

impl Batch {
    fn empty(device: Device) -> Batch {
        Batch {
            rows: Vec::new(),
            cache: KvCache::new(),
            mask: Tensor::zeros([0, 0], (Kind::Int64, device)),
            pending: Tensor::zeros([0, 1], (Kind::Int64, device)),
        }
    }
}

/// As `generate`, calling `progress(finished_sequences)` as sequences complete.
pub fn generate_with_progress(
    model: &Model,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    adapter: Option<&dyn Adapter>,
    progress: &mut dyn FnMut(usize),
) -> Vec<Vec<Generation>> {
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let mut results: Vec<Vec<Option<Generation>>> = prompts.iter().map(|_| vec![None; params.n]).collect();
    // Longest prompts first: they set the cache length, and short ones refill around them.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut queue: VecDeque<(usize, usize)> = order
        .iter()
        .flat_map(|&p| (0..params.n).map(move |s| (p, s)))
        .collect();
    if params.max_new_tokens == 0 {
        // Nothing to generate: every sequence is empty (the default below).
        queue.clear();
    }
    let max_batch = params.max_batch.max(1);
    // Refilling costs a prefill and a copy of the whole cache, so free rows are collected until
    // an eighth of the batch is free (or the batch is empty) instead of refilling every step.
    let refill_at = (max_batch / 8).max(1);
    let wants_refill = |rows: usize, queue: &VecDeque<(usize, usize)>| {
        !queue.is_empty() && (rows == 0 || max_batch - rows >= refill_at)
    };
    let mut batch = Batch::empty(device);
    let mut finished = 0usize;
    let opts = ForwardOptions {
        logits: Logits::Last,
        adapter,
        ..Default::default()
    };
    loop {
        if wants_refill(batch.rows.len(), &queue) {
            refill(model, prompts, params, &opts, &mut queue, &mut batch, max_batch);
        }
        if batch.rows.is_empty() {
            break;
        }
        // Record the pending tokens of fresh rows and retire finished rows (one host sync).
        let chosen: Vec<i64> =
            Vec::<i64>::try_from(batch.pending.view([-1]).to_device(Device::Cpu)).unwrap_or_default();
        let mut keep = Vec::with_capacity(batch.rows.len());
        let mut survivors = Vec::with_capacity(batch.rows.len());
        for (i, (mut row, tok)) in batch.rows.drain(..).zip(chosen).enumerate() {
            let mut done = false;
            if row.fresh {
                row.fresh = false;
                let stopped = params.stop_ids.contains(&tok);
                if !stopped {
                    row.tokens.push(tok);
                }
                if stopped || row.tokens.len() >= params.max_new_tokens {
                    let finish = if stopped {
                        FinishReason::Stop
                    } else {
                        FinishReason::Length
                    };
                    results[row.prompt][row.sample] = Some(Generation {
                        tokens: std::mem::take(&mut row.tokens),
                        finish,
                    });
                    finished += 1;
                    progress(finished);
                    done = true;
                }
            }
            if !done {
                keep.push(i as i64);
                survivors.push(row);
            }
        }
        if survivors.is_empty() {
            batch = Batch::empty(device);
            continue;
        }
        if keep.len() != batch.mask.size()[0] as usize {
            let idx = Tensor::from_slice(&keep).to_device(device);
            batch.cache.select_rows(&idx);
            batch.mask = batch.mask.index_select(0, &idx);
            batch.pending = batch.pending.index_select(0, &idx);
            trim_padding(&mut batch.cache, &mut batch.mask);
        }
        batch.rows = survivors;
        if wants_refill(batch.rows.len(), &queue) {
            continue;
        }
        // One decode step for every row.
        let rows = batch.mask.size()[0];
        batch.mask = Tensor::cat(&[&batch.mask, &Tensor::ones([rows, 1], (Kind::Int64, device))], 1);
        let out = model.forward(&batch.pending, &batch.mask, Some(&mut batch.cache), &opts);
        let logits = out.logits.expect("logits requested").squeeze_dim(1);
        batch.pending = sample(&logits, params, &mut batch.rows).unsqueeze(1);
        batch.rows.iter_mut().for_each(|r| r.fresh = true);
    }
    results
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|g| {
                    g.unwrap_or(Generation {
                        tokens: vec![],
                        finish: FinishReason::Length,
                    })
                })
                .collect()
        })
        .collect()
}

/// Prefills queued prompts into the free rows; their first sampled token becomes pending.
fn refill(
    model: &Model,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    opts: &ForwardOptions<'_>,
    queue: &mut VecDeque<(usize, usize)>,
    batch: &mut Batch,
    max_batch: usize,
) {
    let mut new_rows = Vec::new();
    let mut budget = 0usize;
    while batch.rows.len() + new_rows.len() < max_batch {
        let Some(&(p, s)) = queue.front() else { break };
        let len = prompts[p].len().max(1);
        if !new_rows.is_empty() && budget + len > params.max_prefill_tokens {
            break;
        }
        budget += len;
        queue.pop_front();
        new_rows.push(Row {
            prompt: p,
            sample: s,
            rng: sequence_rng(params.seed, p, s),
            tokens: Vec::new(),
            fresh: true,
        });
    }
    let seqs: Vec<&[i64]> = new_rows.iter().map(|r| prompts[r.prompt].as_slice()).collect();
    let (ids, new_mask) = left_pad(&seqs, model.device());
    let mut new_cache = KvCache::with_reserve(params.max_new_tokens as i64 + 1);
    let out = model.forward(&ids, &new_mask, Some(&mut new_cache), opts);
    let first = sample(
        &out.logits.expect("logits requested").squeeze_dim(1),
        params,
        &mut new_rows,
    );
    merge(&mut batch.cache, &mut batch.mask, new_cache, &new_mask);
    batch.pending = Tensor::cat(&[&batch.pending, &first.unsqueeze(1)], 0);
    batch.rows.extend(new_rows);
}

/// Left-padded ids and mask for a prefill batch.
fn left_pad(seqs: &[&[i64]], device: Device) -> (Tensor, Tensor) {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; seqs.len() * t];
    let mut mask = vec![0i64; seqs.len() * t];
    for (r, s) in seqs.iter().enumerate() {
        let start = r * t + (t - s.len());
        ids[start..start + s.len()].copy_from_slice(s);
        mask[start..start + s.len()].iter_mut().for_each(|m| *m = 1);
    }
    let shape = [seqs.len() as i64, t as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// Appends the rows of `new` (cache and mask) below the running batch, left-padding whichever
/// is shorter so both have the same cache length, with room for the generation budget.
fn merge(cache: &mut KvCache, mask: &mut Tensor, new: KvCache, new_mask: &Tensor) {
    if cache.layers.is_empty() || mask.size()[0] == 0 {
        *cache = new;
        *mask = new_mask.shallow_clone();
        return;
    }
    let (old_len, new_len) = (mask.size()[1], new_mask.size()[1]);
    let total = old_len.max(new_len);
    let reserve = new.reserve.max(cache.reserve);
    let pad_left = |t: &Tensor, dim: usize, by: i64| -> Tensor {
        if by == 0 {
            return t.shallow_clone();
        }
        let mut shape = t.size();
        shape[dim] = by;
        Tensor::cat(
            &[&Tensor::zeros(shape.as_slice(), (t.kind(), t.device())), t],
            dim as i64,
        )
    };
    for (old, fresh) in cache.layers.iter_mut().zip(new.layers) {
        let (k, v) = old.filled();
        let (nk, nv) = fresh.filled();
        let k = Tensor::cat(
            &[
                pad_left(&k, 2, total - old_len),
                pad_left(&nk, 2, total - new_len),
            ],
            0,
        );
        let v = Tensor::cat(
            &[
                pad_left(&v, 2, total - old_len),
                pad_left(&nv, 2, total - new_len),
            ],
            0,
        );
        *old = kv_with_room(k, v, reserve);
    }
    *mask = Tensor::cat(
        &[
            pad_left(mask, 1, total - old_len),
            pad_left(new_mask, 1, total - new_len),
        ],
        0,
    );
}

/// A layer cache holding `k`, `v` with room for `reserve` more positions.
fn kv_with_room(k: Tensor, v: Tensor, reserve: i64) -> crate::model::LayerKv {
    let len = k.size()[2];
    let mut shape = k.size();
    shape[2] = len + reserve;
    let kb = Tensor::zeros(shape.as_slice(), (k.kind(), k.device()));
    let vb = Tensor::zeros(shape.as_slice(), (v.kind(), v.device()));
    kb.narrow(2, 0, len).copy_(&k);
    vb.narrow(2, 0, len).copy_(&v);
    crate::model::LayerKv { k: kb, v: vb, len }
}

/// Drops leading cache columns that are padding in every row.
fn trim_padding(cache: &mut KvCache, mask: &mut Tensor) {
    if mask.size()[0] == 0 {
        return;
    }
    let any_real = mask.sum_dim_intlist(0, false, Kind::Int64).gt(0);
    let first_real = any_real.to_kind(Kind::Int64).argmax(0, false).int64_value(&[]);
    if first_real > 0 {
        let keep = mask.size()[1] - first_real;
        *mask = mask.narrow(1, first_real, keep);
        cache.drop_front(first_real);
    }
}

/// The random stream of sample `sample` of prompt `prompt`.
fn sequence_rng(seed: u64, prompt: usize, sample: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((prompt as u64) << 32) | sample as u64);
    rng
}

/// Next token per row from last-position logits [B, V]: argmax when greedy, else inverse-CDF
/// sampling with one uniform number per row from the row's own stream (one small upload, no
/// device generator).
fn sample(logits: &Tensor, params: &SamplingParams, rows: &mut [Row]) -> Tensor {
    if params.temperature <= 0.0 {
        return logits.argmax(-1, false);
    }
    let vocab = logits.size()[1];
    let scaled = logits.to_kind(Kind::Float) / params.temperature;
    let (probs, order) = if params.top_p < 1.0 {
        let (sorted, order) = scaled.sort(-1, true);
        let p = sorted.softmax(-1, Kind::Float);
        // Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        let drop = (p.cumsum(-1, Kind::Float) - &p).gt(params.top_p);
        (p.masked_fill(&drop, 0.0), Some(order))
    } else {
        (scaled.softmax(-1, Kind::Float), None)
    };
    let cdf = probs.cumsum(-1, Kind::Float);
    let uniforms: Vec<f32> = rows.iter_mut().map(|r| r.rng.gen::<f32>()).collect();
    let targets = Tensor::from_slice(&uniforms)
        .to_device(logits.device())
        .unsqueeze(1)
        * cdf.narrow(1, vocab - 1, 1);
    // The first index whose cumulative mass exceeds the target; zero-probability tokens never
    // win because their cdf step is empty.
    let chosen = targets
        .searchsorted(&cdf, false, true, "right", None::<Tensor>)
        .clamp_max(vocab - 1);
    match order {
        Some(order) => order.gather(1, &chosen, false).squeeze_dim(1),
        None => chosen.squeeze_dim(1),
    }
}
