//! Batched generation with a KV cache: greedy or temperature/top-p sampling, n samples per
//! prompt, a token budget, stop tokens and a seed.
//!
//! Marker evaluation and Method B are generation-bound, so the batch is kept full: when rows
//! finish, they leave the batch and queued prompts are prefilled and merged into the running
//! cache (rows are left-padded to a common cache length; positions come from each row's mask, so
//! padding never shifts a real token). Columns that are padding in every row are trimmed. The
//! samples of one prompt share its prefill: a refill runs each distinct prompt once and copies
//! its cache row to every sample (n samples cost one prompt pass, not n).
//!
//! Extraction reads the residual stream while it decodes ([`generate_with_states`]): the
//! prefill gives each prompt's last-token state (Method A) and every decode step the state of
//! the response token it feeds, whose running sum gives the response mean (Method B). A causal
//! model's state at a position depends only on the tokens up to it, so these are the states a
//! separate forward pass over prompt + response computes (up to rounding), without that pass.
//!
//! Randomness: every sequence (prompt, sample) draws from its own ChaCha stream derived from the
//! seed, and a token is chosen by inverse-CDF with that stream's uniform number. A sequence's
//! samples therefore do not depend on the batch size, on which rows share its batch, or on any
//! other use of libtorch's global generator.
//!
//! Dry runs: random weights never emit an end token, so every completion would run to the token
//! budget. `SamplingParams::end_lengths` (off in real runs) ends each sequence after a length
//! drawn for it from a log-normal distribution (its own stream, seeded by the caller from the
//! experiment seed and the task), as if the model had emitted an end token there; the batch
//! then refills exactly as it does when real completions end.

use crate::model::{Adapter, ForwardOptions, KvCache, Logits, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// Keep only the k most likely tokens before top-p (transformers' order: temperature, top-k,
    /// top-p); 0 = off.
    pub top_k: usize,
    /// Samples per prompt.
    pub n: usize,
    pub seed: u64,
    /// Generation stops after any of these ids (EOS, the template's end-of-turn).
    pub stop_ids: Vec<i64>,
    /// Rows decoded together.
    pub max_batch: usize,
    /// Prompt tokens prefilled in one forward pass when rows are (re)filled.
    pub max_prefill_tokens: usize,
    /// Dry runs only: end each sequence at a drawn length (see the module doc).
    pub end_lengths: Option<EndLengths>,
}

/// Completion lengths for dry runs: log-normal with the given mean (in tokens) and shape
/// `sigma` (the standard deviation of the log; 0 = every sequence `mean` tokens long), rounded,
/// at least 1 and at most the token budget. Sequence (prompt p, sample s) draws from the
/// ChaCha stream (p, s) of `seed`, so its length depends on nothing else.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndLengths {
    pub mean: f64,
    pub sigma: f64,
    pub seed: u64,
}

impl EndLengths {
    /// The length of sequence (`prompt`, `sample`), within 1..=`max`.
    pub fn draw(&self, prompt: usize, sample: usize, max: usize) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(((prompt as u64) << 32) | sample as u64);
        // Box-Muller; u1 in (0, 1] keeps the log finite.
        let u1 = 1.0 - rng.gen::<f64>();
        let u2 = rng.gen::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let sigma = self.sigma.max(0.0);
        let mu = self.mean.max(1.0).ln() - sigma * sigma / 2.0;
        let len = (mu + sigma * z).exp().round();
        if len.is_finite() {
            (len as usize).clamp(1, max.max(1))
        } else {
            max.max(1)
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            n: 1,
            seed: 0,
            stop_ids: Vec::new(),
            max_batch: 64,
            max_prefill_tokens: 16_384,
            end_lengths: None,
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
    /// The row ends after this many tokens: the budget, or a dry run's drawn length.
    limit: usize,
    /// The row's pending input token has not been recorded yet.
    fresh: bool,
    /// Capturing states, the row reached its limit and stays one more step so its last token
    /// is fed (its state belongs to the response mean); the token sampled then is dropped.
    draining: Option<FinishReason>,
}

/// Residual-stream states captured while generating: per captured layer, [N, H] f32 on the CPU
/// with one row per prompt (in input order).
pub struct States {
    /// The layer's output at each prompt's last token (Method A).
    pub last_prompt: Vec<Tensor>,
    /// The mean of the layer's output over the response positions (Method B); zero where the
    /// response is empty.
    pub response_mean: Vec<Tensor>,
}

/// Generates `params.n` continuations of every prompt. Returns `[prompt][sample]`.
pub fn generate(
    model: &Model,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    adapter: Option<&dyn Adapter>,
) -> Vec<Vec<Generation>> {
    match run(model, prompts, params, adapter, None, &mut |_| {
        ControlFlow::Continue(())
    }) {
        Ok((generations, _)) => generations,
        // Only a progress callback stops generation, and this one never does.
        Err(stop) => unreachable!("generate's progress callback never stops: {stop}"),
    }
}

/// Generation was stopped by its progress callback before every sequence finished.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("generation stopped at the caller's request with {finished} of {total} sequences finished")]
pub struct Interrupted {
    pub finished: usize,
    pub total: usize,
}

/// As `generate`, calling `progress(finished_sequences)` once per step of the decoding loop:
/// returning `ControlFlow::Break` stops generation within that step (a worker whose
/// lease is gone frees the device at once), and nothing generated so far is returned.
pub fn generate_with_progress(
    model: &Model,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    adapter: Option<&dyn Adapter>,
    progress: &mut dyn FnMut(usize) -> ControlFlow<()>,
) -> Result<Vec<Vec<Generation>>, Interrupted> {
    run(model, prompts, params, adapter, None, progress).map(|(generations, _)| generations)
}

/// One continuation of every prompt (`params.n` must be 1) together with the residual stream
/// at `layers`: each prompt's last-token state and the mean over its response's positions
/// (see the module doc). Returns the generations in input order and the states. `progress` as
/// in `generate_with_progress` (a stop is `ExtractError::Interrupted`).
pub fn generate_with_states(
    model: &Model,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    layers: &[usize],
    progress: &mut dyn FnMut(usize) -> ControlFlow<()>,
) -> Result<(Vec<Generation>, States), crate::extract::ExtractError> {
    crate::extract::check_request(model, prompts, layers)?;
    let params = SamplingParams {
        n: 1,
        ..params.clone()
    };
    let (out, states) = run(model, prompts, &params, None, Some(layers), progress)
        .map_err(crate::extract::ExtractError::Interrupted)?;
    let states = states.expect("states are captured when layers are given");
    Ok((out.into_iter().map(|mut g| g.remove(0)).collect(), states))
}

/// The running batch: rows, their KV cache, attention mask and pending input tokens.
struct Batch {
    rows: Vec<Row>,
    cache: KvCache,
    mask: Tensor,
    pending: Tensor,
    /// Capturing: per row, the sum of the captured layers' states over the response tokens
    /// fed so far, [rows, layers, H] f32.
    sums: Option<Tensor>,
}

impl Batch {
    fn empty(device: Device, capture: Option<&Capture>) -> Batch {
        Batch {
            rows: Vec::new(),
            cache: KvCache::new(),
            mask: Tensor::zeros([0, 0], (Kind::Int64, device)),
            pending: Tensor::zeros([0, 1], (Kind::Int64, device)),
            sums: capture.map(|c| c.zeros(0, device)),
        }
    }

    /// Keeps the rows at `keep` (indices into the current rows) in the tensors.
    fn keep_rows(&mut self, keep: &[i64], device: Device) {
        let idx = Tensor::from_slice(keep).to_device(device);
        self.cache.select_rows(&idx);
        self.mask = self.mask.index_select(0, &idx);
        self.pending = self.pending.index_select(0, &idx);
        if let Some(sums) = &self.sums {
            self.sums = Some(sums.index_select(0, &idx));
        }
        trim_padding(&mut self.cache, &mut self.mask);
    }
}

/// What a capturing run collects: the layers, and per prompt its states once known.
struct Capture<'a> {
    layers: &'a [usize],
    hidden: i64,
    /// Per layer, [N, H] f32 CPU.
    last_prompt: Vec<Tensor>,
    response_mean: Vec<Tensor>,
}

impl Capture<'_> {
    fn zeros(&self, rows: i64, device: Device) -> Tensor {
        Tensor::zeros(
            [rows, self.layers.len() as i64, self.hidden],
            (Kind::Float, device),
        )
    }

    /// The captured layers' states of a forward pass at its last column, [B, layers, H] f32.
    fn last_column(&self, hidden: &std::collections::BTreeMap<usize, Tensor>) -> Tensor {
        let cols: Vec<Tensor> = self
            .layers
            .iter()
            .map(|l| hidden[l].select(1, -1).to_kind(Kind::Float))
            .collect();
        Tensor::stack(&cols, 1)
    }

    /// Writes rows of a [B, layers, H] tensor into the per-layer outputs at prompt indices.
    fn store(outputs: &mut [Tensor], states: &Tensor, prompts: &[i64]) {
        let states = states.to_device(Device::Cpu);
        let dest = Tensor::from_slice(prompts);
        for (li, out) in outputs.iter_mut().enumerate() {
            let _ = out.index_copy_(0, &dest, &states.select(1, li as i64));
        }
    }
}

/// The generation loop of `generate_with_progress` and `generate_with_states`.
fn run(
    model: &Model,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    adapter: Option<&dyn Adapter>,
    layers: Option<&[usize]>,
    progress: &mut dyn FnMut(usize) -> ControlFlow<()>,
) -> Result<(Vec<Vec<Generation>>, Option<States>), Interrupted> {
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let mut capture = layers.map(|layers| {
        let hidden = model.config().hidden_size as i64;
        let per_layer = || {
            layers
                .iter()
                .map(|_| Tensor::zeros([prompts.len() as i64, hidden], (Kind::Float, Device::Cpu)))
                .collect::<Vec<_>>()
        };
        Capture {
            layers,
            hidden,
            last_prompt: per_layer(),
            response_mean: per_layer(),
        }
    });
    let mut results: Vec<Vec<Option<Generation>>> = prompts.iter().map(|_| vec![None; params.n]).collect();
    // Longest prompts first: they set the cache length, and short ones refill around them.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut queue: VecDeque<(usize, usize)> = order
        .iter()
        .flat_map(|&p| (0..params.n).map(move |s| (p, s)))
        .collect();
    if params.max_new_tokens == 0 {
        // Nothing to generate: every sequence is empty (the default below). The prompts'
        // states are still wanted when capturing.
        queue.clear();
        if let Some(c) = capture.as_mut() {
            last_prompt_states(model, prompts, params, c);
        }
    }
    let max_batch = params.max_batch.max(1);
    // Refilling costs a prefill and a copy of the whole cache, so free rows are collected until
    // an eighth of the batch is free (or the batch is empty) instead of refilling every step.
    let refill_at = (max_batch / 8).max(1);
    let wants_refill = |rows: usize, queue: &VecDeque<(usize, usize)>| {
        !queue.is_empty() && (rows == 0 || max_batch - rows >= refill_at)
    };
    let mut batch = Batch::empty(device, capture.as_ref());
    let mut finished = 0usize;
    let capture_layers: &[usize] = layers.unwrap_or(&[]);
    let opts = ForwardOptions {
        logits: Logits::Last,
        adapter,
        capture_layers,
        ..Default::default()
    };
    loop {
        if wants_refill(batch.rows.len(), &queue) {
            refill(
                model,
                prompts,
                params,
                &opts,
                &mut queue,
                &mut batch,
                max_batch,
                capture.as_mut(),
            );
        }
        if batch.rows.is_empty() {
            break;
        }
        // Record the pending tokens of fresh rows and retire finished rows (one host sync).
        // A failed copy must not become an empty list (every row would then end with no tokens,
        // as if it had generated nothing): it stops generation like any failed libtorch call
        // of this loop, with its cause.
        let chosen: Vec<i64> = match Vec::<i64>::try_from(batch.pending.view([-1]).to_device(Device::Cpu)) {
            Ok(v) => v,
            Err(e) => panic!("copying the sampled tokens to the host failed: {e}"),
        };
        let mut keep = Vec::with_capacity(batch.rows.len());
        let mut survivors = Vec::with_capacity(batch.rows.len());
        // Capturing: (batch row, prompt, response length) of the rows that finished.
        let mut done_rows: Vec<(i64, i64, usize)> = Vec::new();
        for (i, (mut row, tok)) in batch.rows.drain(..).zip(chosen).enumerate() {
            let mut finish = None;
            if row.fresh && row.draining.is_some() {
                // The last token has been fed; what was sampled after it is not part of the
                // sequence.
                finish = row.draining.take();
            } else if row.fresh {
                row.fresh = false;
                let stopped = params.stop_ids.contains(&tok);
                if !stopped {
                    row.tokens.push(tok);
                }
                if stopped || row.tokens.len() >= row.limit {
                    // A dry run's drawn end short of the budget stands for an end token.
                    let reason = if stopped || row.tokens.len() < params.max_new_tokens {
                        FinishReason::Stop
                    } else {
                        FinishReason::Length
                    };
                    if capture.is_some() && !stopped {
                        // The token that ends the row is still pending: feed it once more.
                        row.draining = Some(reason);
                    } else {
                        finish = Some(reason);
                    }
                }
            }
            match finish {
                Some(finish) => {
                    if capture.is_some() {
                        done_rows.push((i as i64, row.prompt as i64, row.tokens.len()));
                    }
                    results[row.prompt][row.sample] = Some(Generation {
                        tokens: std::mem::take(&mut row.tokens),
                        finish,
                    });
                    finished += 1;
                }
                None => {
                    keep.push(i as i64);
                    survivors.push(row);
                }
            }
        }
        if progress(finished).is_break() {
            return Err(Interrupted {
                finished,
                total: results.len() * params.n,
            });
        }
        if let (Some(c), Some(sums), false) = (capture.as_mut(), &batch.sums, done_rows.is_empty()) {
            let rows: Vec<i64> = done_rows.iter().map(|d| d.0).collect();
            let counts: Vec<f32> = done_rows.iter().map(|d| d.2.max(1) as f32).collect();
            let means = sums.index_select(0, &Tensor::from_slice(&rows).to_device(device))
                / Tensor::from_slice(&counts).to_device(device).view([-1, 1, 1]);
            let at: Vec<i64> = done_rows.iter().map(|d| d.1).collect();
            Capture::store(&mut c.response_mean, &means, &at);
        }
        if survivors.is_empty() {
            batch = Batch::empty(device, capture.as_ref());
            continue;
        }
        if keep.len() != batch.mask.size()[0] as usize {
            batch.keep_rows(&keep, device);
        }
        batch.rows = survivors;
        if wants_refill(batch.rows.len(), &queue) {
            continue;
        }
        // One decode step for every row.
        let rows = batch.mask.size()[0];
        batch.mask = Tensor::cat(&[&batch.mask, &Tensor::ones([rows, 1], (Kind::Int64, device))], 1);
        let out = model.forward(&batch.pending, &batch.mask, Some(&mut batch.cache), &opts);
        if let (Some(c), Some(sums)) = (capture.as_ref(), batch.sums.as_mut()) {
            // Every row's pending token is a response token (a stop token ends its row before
            // it is fed).
            *sums += c.last_column(&out.hidden);
        }
        let logits = out.logits.expect("logits requested").squeeze_dim(1);
        batch.pending = sample(&logits, params, &mut batch.rows).unsqueeze(1);
        batch.rows.iter_mut().for_each(|r| r.fresh = true);
    }
    let generations = results
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
        .collect();
    let states = capture.map(|c| States {
        last_prompt: c.last_prompt,
        response_mean: c.response_mean,
    });
    Ok((generations, states))
}

/// Capturing with nothing to generate: the prompts' last-token states from prefills alone.
fn last_prompt_states(model: &Model, prompts: &[Vec<i64>], params: &SamplingParams, c: &mut Capture<'_>) {
    let opts = ForwardOptions {
        logits: Logits::None,
        capture_layers: c.layers,
        ..Default::default()
    };
    let lengths: Vec<usize> = prompts.iter().map(|p| p.len().max(1)).collect();
    for group in crate::extract::length_buckets(&lengths, params.max_prefill_tokens) {
        let seqs: Vec<&[i64]> = group.iter().map(|&p| prompts[p].as_slice()).collect();
        let (ids, mask) = left_pad(&seqs, model.device());
        let out = model.forward(&ids, &mask, None, &opts);
        let at: Vec<i64> = group.iter().map(|&p| p as i64).collect();
        let states = c.last_column(&out.hidden);
        Capture::store(&mut c.last_prompt, &states, &at);
    }
}

/// Prefills queued prompts into the free rows; their first sampled token becomes pending.
/// Samples of one prompt share one prefill (its cache row is copied to each of them).
#[allow(clippy::too_many_arguments)]
fn refill(
    model: &Model,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    opts: &ForwardOptions<'_>,
    queue: &mut VecDeque<(usize, usize)>,
    batch: &mut Batch,
    max_batch: usize,
    capture: Option<&mut Capture<'_>>,
) {
    let mut new_rows = Vec::new();
    // The distinct prompts to prefill, and for each new row the index of its prompt among them.
    let mut distinct: Vec<usize> = Vec::new();
    let mut source: Vec<i64> = Vec::new();
    let mut budget = 0usize;
    while batch.rows.len() + new_rows.len() < max_batch {
        let Some(&(p, s)) = queue.front() else { break };
        if distinct.last() != Some(&p) {
            let len = prompts[p].len().max(1);
            if !distinct.is_empty() && budget + len > params.max_prefill_tokens {
                break;
            }
            budget += len;
            distinct.push(p);
        }
        source.push(distinct.len() as i64 - 1);
        queue.pop_front();
        new_rows.push(Row {
            prompt: p,
            sample: s,
            rng: sequence_rng(params.seed, p, s),
            tokens: Vec::new(),
            limit: params
                .end_lengths
                .map_or(params.max_new_tokens, |e| e.draw(p, s, params.max_new_tokens)),
            fresh: true,
            draining: None,
        });
    }
    let device = model.device();
    // Prefill in parts of similar length: a prompt joins the current part while the part stays
    // within the token budget padded, and is at least half as long as the part's first (the
    // queue is longest first); a 500-token prompt padding 60-token ones would multiply the work.
    let mut parts: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, &p) in distinct.iter().enumerate() {
        let len = prompts[p].len().max(1);
        match parts.last_mut() {
            Some(part)
                if {
                    let first = prompts[distinct[part.start]].len().max(1);
                    2 * len >= first && (part.len() + 1) * first <= params.max_prefill_tokens
                } =>
            {
                part.end = i + 1
            }
            _ => parts.push(i..i + 1),
        }
    }
    let mut capture = capture;
    let mut prefilled = Vec::with_capacity(parts.len());
    let mut firsts = Vec::with_capacity(parts.len());
    for part in parts {
        // The new rows of this part's prompts (rows come in the order of their prompts).
        let rows: Vec<usize> = (0..new_rows.len())
            .filter(|&r| part.contains(&(source[r] as usize)))
            .collect();
        let seqs: Vec<&[i64]> = distinct[part.clone()]
            .iter()
            .map(|&p| prompts[p].as_slice())
            .collect();
        let Prefilled {
            mut cache,
            mut mask,
            mut logits,
            states,
            order,
        } = prefill(model, &seqs, opts, params.max_new_tokens as i64 + 1);
        if let (Some(c), Some(states)) = (capture.as_deref_mut(), states) {
            let at: Vec<i64> = order.iter().map(|&i| distinct[part.start + i] as i64).collect();
            Capture::store(&mut c.last_prompt, &states, &at);
        }
        // Prefilled row of each part prompt, then of each new row (samples share theirs).
        let mut row_of = vec![0i64; order.len()];
        for (r, &i) in order.iter().enumerate() {
            row_of[i] = r as i64;
        }
        let idx: Vec<i64> = rows
            .iter()
            .map(|&r| row_of[source[r] as usize - part.start])
            .collect();
        if idx.iter().enumerate().any(|(i, &r)| i as i64 != r) || idx.len() != order.len() {
            let idx = Tensor::from_slice(&idx).to_device(device);
            cache.select_rows(&idx);
            mask = mask.index_select(0, &idx);
            logits = logits.index_select(0, &idx);
        }
        let (a, b) = (rows[0], rows[rows.len() - 1] + 1);
        firsts.push(sample(&logits, params, &mut new_rows[a..b]).unsqueeze(1));
        prefilled.push((cache, mask));
    }
    if let Some(c) = capture {
        let fresh = c.zeros(new_rows.len() as i64, device);
        batch.sums = Some(match &batch.sums {
            Some(sums) if !batch.rows.is_empty() => Tensor::cat(&[sums, &fresh], 0),
            _ => fresh,
        });
    }
    merge(&mut batch.cache, &mut batch.mask, prefilled);
    let mut pending = vec![batch.pending.shallow_clone()];
    pending.extend(firsts);
    batch.pending = Tensor::cat(&pending, 0);
    batch.rows.extend(new_rows);
}

/// Prompts of one refill part that share at least this many leading tokens (a persona's
/// system prompt under several questions) are prefilled as one shared head plus their tails.
const MIN_SHARED_PREFIX: usize = 16;

/// A prefilled part: its cache and mask, last-position logits and (capturing) the captured
/// layers' states at the last prompt token, [rows, layers, H] f32. Row r holds the prompt
/// `order[r]` of the part.
struct Prefilled {
    cache: KvCache,
    mask: Tensor,
    logits: Tensor,
    states: Option<Tensor>,
    order: Vec<usize>,
}

/// Groups of prompts that share a long prefix: (members, shared length), members sorted. Each
/// member keeps at least one token of its own (its last token's logits are needed). Prompts of
/// no group are left out.
fn shared_prefix_groups(seqs: &[&[i64]]) -> Vec<(Vec<usize>, usize)> {
    let lcp = |a: &[i64], b: &[i64]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let mut sorted: Vec<usize> = (0..seqs.len()).collect();
    sorted.sort_by(|&a, &b| seqs[a].cmp(seqs[b]));
    let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
    let mut current: (Vec<usize>, usize) = (vec![sorted[0]], usize::MAX);
    for pair in sorted.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        let common = lcp(seqs[prev], seqs[next]);
        // A later member may shorten the shared head, but not below half of it: prompts of two
        // personas that only share "You are a" stay apart.
        let joins = common >= MIN_SHARED_PREFIX && (current.1 == usize::MAX || 2 * common >= current.1);
        if joins {
            current.0.push(next);
            current.1 = current.1.min(common);
        } else {
            groups.push(std::mem::replace(&mut current, (vec![next], usize::MAX)));
        }
    }
    groups.push(current);
    groups
        .into_iter()
        .filter(|(members, _)| members.len() > 1)
        .map(|(members, shared)| {
            let shortest = members.iter().map(|&m| seqs[m].len()).min().unwrap_or(1);
            let shared = shared.min(shortest - 1);
            (members, shared)
        })
        .filter(|(_, shared)| *shared >= MIN_SHARED_PREFIX)
        .collect()
}

/// Prefills one part of prompts of similar length, with room for `reserve` generated tokens.
/// Prompts that share a long prefix run it once: the heads go through one batched pass, each
/// head's cache row is copied to its prompts, and their tails run on top of it (their padding
/// sits between head and tail; positions come from the mask, so it moves no real token).
fn prefill(model: &Model, seqs: &[&[i64]], opts: &ForwardOptions<'_>, reserve: i64) -> Prefilled {
    let device = model.device();
    let capture = !opts.capture_layers.is_empty();
    let last_states = |hidden: &std::collections::BTreeMap<usize, Tensor>| -> Option<Tensor> {
        capture.then(|| {
            let cols: Vec<Tensor> = opts
                .capture_layers
                .iter()
                .map(|l| hidden[l].select(1, -1).to_kind(Kind::Float))
                .collect();
            Tensor::stack(&cols, 1)
        })
    };
    let groups = shared_prefix_groups(seqs);
    let grouped: std::collections::BTreeSet<usize> =
        groups.iter().flat_map(|g| g.0.iter().copied()).collect();
    let single: Vec<usize> = (0..seqs.len()).filter(|i| !grouped.contains(i)).collect();
    let mut pieces: Vec<Prefilled> = Vec::new();
    if !single.is_empty() {
        let part: Vec<&[i64]> = single.iter().map(|&i| seqs[i]).collect();
        let (ids, mask) = left_pad(&part, device);
        let mut cache = KvCache::with_reserve(reserve);
        let out = model.forward(&ids, &mask, Some(&mut cache), opts);
        pieces.push(Prefilled {
            cache,
            mask,
            logits: out.logits.expect("logits requested").squeeze_dim(1),
            states: last_states(&out.hidden),
            order: single,
        });
    }
    if !groups.is_empty() {
        let heads: Vec<&[i64]> = groups.iter().map(|(m, shared)| &seqs[m[0]][..*shared]).collect();
        let members: Vec<usize> = groups.iter().flat_map(|g| g.0.iter().copied()).collect();
        let tails: Vec<&[i64]> = groups
            .iter()
            .flat_map(|(m, shared)| m.iter().map(move |&i| &seqs[i][*shared..]))
            .collect();
        let longest_tail = tails.iter().map(|t| t.len()).max().unwrap_or(0) as i64;
        let (ids, head_mask) = left_pad(&heads, device);
        let mut cache = KvCache::with_reserve(longest_tail + reserve);
        // Logits::Last (one row per head, unused): Logits::None would stop after the last
        // captured layer, and the cache needs every layer.
        let head_opts = ForwardOptions {
            logits: Logits::Last,
            capture_layers: &[],
            ..*opts
        };
        let _ = model.forward(&ids, &head_mask, Some(&mut cache), &head_opts);
        let copies: Vec<i64> = groups
            .iter()
            .enumerate()
            .flat_map(|(g, (m, _))| std::iter::repeat_n(g as i64, m.len()))
            .collect();
        let copies = Tensor::from_slice(&copies).to_device(device);
        cache.select_rows(&copies);
        let (tail_ids, tail_mask) = left_pad(&tails, device);
        let mask = Tensor::cat(&[&head_mask.index_select(0, &copies), &tail_mask], 1);
        let out = model.forward(&tail_ids, &mask, Some(&mut cache), opts);
        pieces.push(Prefilled {
            cache,
            mask,
            logits: out.logits.expect("logits requested").squeeze_dim(1),
            states: last_states(&out.hidden),
            order: members,
        });
    }
    if pieces.len() == 1 {
        return pieces.remove(0);
    }
    let order: Vec<usize> = pieces.iter().flat_map(|p| p.order.iter().copied()).collect();
    let logits = Tensor::cat(
        &pieces
            .iter()
            .map(|p| p.logits.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let states = capture.then(|| {
        Tensor::cat(
            &pieces
                .iter()
                .filter_map(|p| p.states.as_ref().map(Tensor::shallow_clone))
                .collect::<Vec<_>>(),
            0,
        )
    });
    let (mut cache, mut mask) = (KvCache::new(), Tensor::zeros([0, 0], (Kind::Int64, device)));
    merge(
        &mut cache,
        &mut mask,
        pieces.into_iter().map(|p| (p.cache, p.mask)).collect(),
    );
    Prefilled {
        cache,
        mask,
        logits,
        states,
        order,
    }
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

/// Stacks the running batch's rows and the newly prefilled parts (cache and mask each) into one
/// cache, left-padding every part to the longest, with room for the generation budget behind
/// it. One buffer per layer is allocated and each part copied into place once.
fn merge(cache: &mut KvCache, mask: &mut Tensor, parts: Vec<(KvCache, Tensor)>) {
    let mut pieces: Vec<(KvCache, Tensor)> = Vec::with_capacity(parts.len() + 1);
    if !cache.layers.is_empty() && mask.size()[0] > 0 {
        pieces.push((std::mem::take(cache), mask.shallow_clone()));
    }
    pieces.extend(parts);
    if pieces.len() == 1 {
        let (c, m) = pieces.remove(0);
        *cache = c;
        *mask = m;
        return;
    }
    let total = pieces.iter().map(|(_, m)| m.size()[1]).max().unwrap_or(0);
    let rows: i64 = pieces.iter().map(|(_, m)| m.size()[0]).sum();
    let reserve = pieces.iter().map(|(c, _)| c.reserve).max().unwrap_or(0);
    let device = pieces[0].1.device();
    let merged_mask = Tensor::zeros([rows, total], (Kind::Int64, device));
    let mut at = 0;
    for (_, m) in &pieces {
        let (n, len) = (m.size()[0], m.size()[1]);
        merged_mask.narrow(0, at, n).narrow(1, total - len, len).copy_(m);
        at += n;
    }
    let layers = pieces[0].0.layers.len();
    let mut merged = Vec::with_capacity(layers);
    for layer in 0..layers {
        let mut shape = pieces[0].0.layers[layer].k.size();
        shape[0] = rows;
        shape[2] = total + reserve;
        let first = &pieces[0].0.layers[layer].k;
        let kb = Tensor::zeros(shape.as_slice(), (first.kind(), first.device()));
        let vb = Tensor::zeros(shape.as_slice(), (first.kind(), first.device()));
        let mut at = 0;
        for (c, _) in &pieces {
            let (k, v) = c.layers[layer].filled();
            let (n, len) = (k.size()[0], k.size()[2]);
            kb.narrow(0, at, n).narrow(2, total - len, len).copy_(&k);
            vb.narrow(0, at, n).narrow(2, total - len, len).copy_(&v);
            at += n;
        }
        merged.push(crate::model::LayerKv {
            k: kb,
            v: vb,
            len: total,
        });
    }
    *cache = KvCache {
        layers: merged,
        reserve,
    };
    *mask = merged_mask;
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
    let top_k = i64::try_from(params.top_k).unwrap_or(i64::MAX);
    let cut_k = top_k > 0 && top_k < vocab;
    let (probs, order) = if params.top_p < 1.0 || cut_k {
        let (sorted, order) = scaled.sort(-1, true);
        let sorted = if cut_k {
            let beyond_k = Tensor::arange(vocab, (Kind::Int64, logits.device())).ge(top_k);
            sorted.masked_fill(&beyond_k, f64::NEG_INFINITY)
        } else {
            sorted
        };
        let p = sorted.softmax(-1, Kind::Float);
        if params.top_p < 1.0 {
            // Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            let drop = (p.cumsum(-1, Kind::Float) - &p).gt(params.top_p);
            (p.masked_fill(&drop, 0.0), Some(order))
        } else {
            (p, Some(order))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RandomModel;

    #[test]
    fn drawn_lengths_have_the_asked_mean_and_tail_and_are_deterministic() {
        // The marker eval's reference: about 50 tokens on average, the longest of 3,360 about 250.
        let e = EndLengths {
            mean: 50.0,
            sigma: 0.5,
            seed: 7,
        };
        let lens: Vec<usize> = (0..336)
            .flat_map(|p| (0..10).map(move |s| e.draw(p, s, 512)))
            .collect();
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        let max = *lens.iter().max().unwrap();
        assert!((mean - 50.0).abs() < 2.0, "mean {mean}");
        assert!((150..=400).contains(&max), "longest {max}");
        assert!(lens.iter().all(|&l| l >= 1));
        assert_eq!(e.draw(3, 4, 512), e.draw(3, 4, 512));
        assert_ne!(
            (0..20).map(|p| e.draw(p, 0, 512)).collect::<Vec<_>>(),
            (0..20)
                .map(|p| EndLengths { seed: 8, ..e }.draw(p, 0, 512))
                .collect::<Vec<_>>()
        );
        // The budget caps, sigma 0 is a fixed length.
        assert!((0..100).all(|p| e.draw(p, 0, 30) <= 30));
        let fixed = EndLengths { sigma: 0.0, ..e };
        assert!((0..50).all(|p| fixed.draw(p, 1, 512) == 50));
    }

    #[test]
    fn prompts_group_by_a_long_shared_prefix_only() {
        // Two "system prompts" that share their first 6 tokens, each under two questions, a
        // prompt of its own, and a prompt that is all head.
        let sys_a: Vec<i64> = (1..=6).chain(100..120).collect();
        let sys_b: Vec<i64> = (1..=6).chain(200..230).collect();
        let with = |head: &[i64], q: &[i64]| [head, q].concat();
        let seqs: Vec<Vec<i64>> = vec![
            with(&sys_a, &[7, 8]),
            with(&sys_b, &[9]),
            with(&sys_a, &[5]),
            vec![1, 2, 3],
            with(&sys_b, &[9, 9, 9]),
            sys_a.clone(),
        ];
        let refs: Vec<&[i64]> = seqs.iter().map(Vec::as_slice).collect();
        let groups = shared_prefix_groups(&refs);
        // sys_a's three prompts share all of sys_a but one token (the shortest prompt, sys_a
        // itself, keeps its last token); sys_b's two share sys_b.
        assert_eq!(
            groups,
            vec![(vec![5, 2, 0], sys_a.len() - 1), (vec![1, 4], sys_b.len())]
        );
    }

    /// The tiny random Qwen2 (`random:tiny@4`) in f32 on `device`.
    fn tiny_random(device: Device) -> Model {
        RandomModel::parse("random:tiny@4")
            .unwrap()
            .unwrap()
            .build(device, Kind::Float)
            .unwrap()
    }

    /// Greedy generation with captured states on the tiny random model in f32, once with
    /// decoding's key padding off and once on: `prompts` prompts of different lengths, rows
    /// ending at drawn lengths around `mean` and leaving a batch of `max_batch` (refills).
    fn greedy_without_and_with_alignment(
        device: Device,
        prompts: i64,
        max_new_tokens: usize,
        max_batch: usize,
        mean: f64,
    ) -> ((Vec<Generation>, States), (Vec<Generation>, States)) {
        let model = tiny_random(device);
        let prompts: Vec<Vec<i64>> = (0..prompts)
            .map(|i| (0..(2 + 3 * i)).map(|t| 11 + 7 * t + i).collect())
            .collect();
        let params = SamplingParams {
            max_new_tokens,
            temperature: 0.0,
            max_batch,
            end_lengths: Some(EndLengths {
                mean,
                sigma: 0.5,
                seed: 2,
            }),
            ..Default::default()
        };
        let layers = [0usize, 1];
        let run = |on: bool| {
            crate::model::with_decode_alignment(on, || {
                generate_with_states(&model, &prompts, &params, &layers, &mut |_| {
                    ControlFlow::Continue(())
                })
                .unwrap()
            })
        };
        (run(false), run(true))
    }

    /// Decoding reads the cache padded to an aligned key count on CUDA (zero keys and values
    /// behind -inf mask columns); here on the CPU, against the unpadded path: the same greedy
    /// tokens and the same captured states, over prompts of different lengths (left padding),
    /// rows leaving the batch and refills (`max_batch` < prompts).
    #[test]
    fn decoding_over_an_aligned_key_window_changes_nothing() {
        let (plain, aligned) = greedy_without_and_with_alignment(Device::Cpu, 7, 13, 3, 7.0);
        assert_eq!(plain.0, aligned.0);
        assert!(plain.0.iter().any(|g| g.tokens.len() > 4), "decoding steps ran");
        for (a, b) in plain.1.response_mean.iter().zip(&aligned.1.response_mean) {
            assert!(a.allclose(b, 1e-5, 1e-6, false), "{}", (a - b).abs().max());
            assert!(a.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
    }

    /// A progress callback that says stop ends generation within a step, and no output comes
    /// back (only how far it got): a lost lease must free the device without waiting for the
    /// last sequence.
    #[test]
    fn progress_can_stop_generation_within_a_step() {
        let model = tiny_random(Device::Cpu);
        let prompts: Vec<Vec<i64>> = (0..6).map(|i| vec![11 + i, 12, 13]).collect();
        let params = SamplingParams {
            max_new_tokens: 64,
            temperature: 0.0,
            n: 2,
            max_batch: 4,
            ..Default::default()
        };
        let mut calls = 0;
        let stopped = generate_with_progress(&model, &prompts, &params, None, &mut |_| {
            calls += 1;
            if calls == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(
            stopped,
            Err(Interrupted {
                finished: 0,
                total: 12
            })
        );
        assert_eq!(calls, 3, "no call after the stop");
        let mut steps = 0;
        let whole = generate_with_progress(&model, &prompts, &params, None, &mut |_| {
            steps += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(steps > 64, "once per decoding step: {steps}");
        assert_eq!(whole, generate(&model, &prompts, &params, None));
    }

    /// On CUDA, where decoding pads the keys by default: the same greedy tokens and captured
    /// states with the padding switched off (f32 on the tiny fixture with its real tokenizer
    /// ids, prompts of different lengths, rows leaving and refills). Run alone on the GPU
    /// machine by bench/gpu_parity.sh (libtorch settles whether CUDA exists at its first call).
    #[test]
    fn aligned_decoding_matches_unaligned_decoding_on_cuda() {
        let cuda = match crate::device::Device::Cuda(0).activate() {
            Ok(cuda) => cuda,
            Err(e) => {
                eprintln!("aligned decoding not checked on CUDA: {e}");
                return;
            }
        };
        let (plain, aligned) = greedy_without_and_with_alignment(cuda, 9, 21, 4, 11.0);
        assert_eq!(plain.0, aligned.0);
        for (a, b) in plain.1.response_mean.iter().zip(&aligned.1.response_mean) {
            assert!(a.allclose(b, 1e-4, 1e-5, false), "{}", (a - b).abs().max());
        }
        eprintln!("aligned decoding checked on {cuda:?}");
    }

    /// A cache buffer holds zeros from its filled length on, whatever happened to it: the
    /// aligned window's padding must be finite zeros for the -inf mask to cancel it.
    #[test]
    fn a_cache_buffer_is_zero_past_its_filled_length() {
        let model = tiny_random(Device::Cpu);
        let ids = Tensor::from_slice(&[3i64, 4, 5, 6, 7, 8, 9, 10]).view([2, 4]);
        let mut mask = Tensor::ones([2, 4], (Kind::Int64, Device::Cpu));
        let mut cache = crate::model::KvCache::with_reserve(3);
        let opts = crate::model::ForwardOptions::default();
        let _ = model.forward(&ids, &mask, Some(&mut cache), &opts);
        for step in 0..6 {
            mask = Tensor::cat(&[&mask, &Tensor::ones([2, 1], (Kind::Int64, Device::Cpu))], 1);
            let next = Tensor::from_slice(&[20 + step, 30 + step]).view([2, 1]);
            let _ = model.forward(&next, &mask, Some(&mut cache), &opts);
            if step == 2 {
                cache.select_rows(&Tensor::from_slice(&[1i64, 0]));
            }
            if step == 4 {
                cache.drop_front(1);
                mask = mask.narrow(1, 1, mask.size()[1] - 1);
            }
            for l in &cache.layers {
                let tail = l.capacity() - l.len;
                assert_eq!(
                    l.k.narrow(2, l.len, tail)
                        .abs()
                        .sum(Kind::Float)
                        .double_value(&[]),
                    0.0
                );
                assert_eq!(
                    l.v.narrow(2, l.len, tail)
                        .abs()
                        .sum(Kind::Float)
                        .double_value(&[]),
                    0.0
                );
            }
        }
        assert!(
            cache.layers[0].capacity() > cache.layers[0].len,
            "the buffer grew with room"
        );
    }

    #[test]
    fn a_dry_run_ends_every_sequence_at_its_drawn_length() {
        let model = RandomModel::parse("random:tiny@1")
            .unwrap()
            .unwrap()
            .build(Device::Cpu, Kind::Float)
            .unwrap();
        let prompts: Vec<Vec<i64>> = (0..6)
            .map(|i| (0..(3 + i)).map(|t| 10 + t + i).collect())
            .collect();
        let end = EndLengths {
            mean: 12.0,
            sigma: 0.6,
            seed: 3,
        };
        let params = SamplingParams {
            max_new_tokens: 24,
            n: 2,
            seed: 5,
            max_batch: 4,
            end_lengths: Some(end),
            ..Default::default()
        };
        let out = generate(&model, &prompts, &params, None);
        for (p, samples) in out.iter().enumerate() {
            for (s, g) in samples.iter().enumerate() {
                let want = end.draw(p, s, 24);
                assert_eq!(g.tokens.len(), want, "prompt {p} sample {s}");
                let finish = if want < 24 {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                };
                assert_eq!(g.finish, finish);
            }
        }
        // Without the option every sequence runs to the budget (no stop ids given).
        let full = generate(
            &model,
            &prompts,
            &SamplingParams {
                end_lengths: None,
                ..params
            },
            None,
        );
        assert!(full.iter().flatten().all(|g| g.tokens.len() == 24));
        // The drawn end only truncates: the tokens are the same sampled ones.
        for (a, b) in out.iter().flatten().zip(full.iter().flatten()) {
            assert_eq!(a.tokens[..], b.tokens[..a.tokens.len()]);
        }
    }
}
