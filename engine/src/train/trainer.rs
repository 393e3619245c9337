//! The SFT loop: micro-batches through the model with the LoRA adapter, the loss summed over
//! the label tokens of the whole optimizer step and divided by their number, global-norm
//! clipping, AdamW and the schedule. That loss is HF's Trainer's with gradient accumulation
//! (transformers 5.24: `get_batch_samples` counts `labels[..., 1:] != -100` over the step's
//! micro-batches and passes it as `num_items_in_batch` to the model's summed cross-entropy).
//!
//! Activation recomputation (tch has no `checkpoint()`): the forward runs layer by layer without
//! a graph, keeping only each layer's input; the loss is differentiated with respect to the last
//! hidden state; then each layer, from the last, is run again with a graph and differentiated by
//! `backward((out * grad_out).sum())`, which hands the gradient to its input. (The last layer
//! keeps its graph from the first pass: it is differentiated with the loss.) The adapter keeps
//! the dropout masks of the first pass and replays them in the recomputation, so both modes
//! compute the same thing.

use super::data::Example;
use super::log::StepLog;
use super::masks::IGNORE;
use super::optim::{clip_grad_norm, AdamW, AdamWConfig};
use super::profile::StepProfile;
use super::schedule::{Schedule, ScheduleKind};
use crate::lora::{DropoutMode, Lora};
use crate::model::{Adapter, Model, PackedSequences};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::time::Instant;
use tch::{Kind, Tensor};

/// The fewest leading tokens a packed row must have in common with an earlier row of its pass
/// to read them from it instead of packing its own (`Batch::packed`). A long system prompt
/// (the demo's source persona: about 440 tokens) is shared; a chat template's few fixed
/// tokens are not worth the gathers.
pub const MIN_SHARED_PREFIX: usize = 32;

/// On a GPU, padding-free passes are rounded up to a multiple of this many tokens
/// ([`Batch::packed_to_multiple`]), so their matrix shapes repeat and cuBLAS's per-shape kernel
/// choice is made once per shape. On a 7B EM step (one H200, bench/train_profile.sh, same call,
/// 2026-11-30) the forward took 177 ms against 184 ms unrounded. 128 costs at most 127 filler
/// tokens a pass (about 1.5 % of an EM step on average). On a CPU, no rounding.
pub const CUDA_PACK_MULTIPLE: usize = 128;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub learning_rate: f64,
    pub adamw: AdamWConfig,
    pub schedule: ScheduleKind,
    pub warmup_ratio: f64,
    /// None: no clipping (the norm is still reported).
    pub max_grad_norm: Option<f64>,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps; the schedule then spans these steps (as HF's
    /// `max_steps` does).
    pub max_steps: Option<usize>,
    pub seed: u64,
    /// Activation recomputation (saves memory, costs about one more forward).
    pub recompute: bool,
    /// Batches are padded to a multiple of this length.
    pub pad_multiple: usize,
    /// Padding-free steps (TRL's `padding_free`): when set, the rows of an optimizer step go
    /// through the model packed back to back, in their micro-batch order, as forward passes of
    /// at most this many tokens each (a longer row gets a pass of its own), with no padding.
    /// The step's loss is the same sum over its label tokens divided by their number, so the
    /// gradient is the padded run's up to floating-point order; only the dropout masks are
    /// drawn in a different layout. None: padded micro-batches, as HF's Trainer runs them.
    #[serde(default)]
    pub pack_tokens: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "step {step}: the loss ({loss}) or the gradient norm ({grad_norm}) is not finite; \
         training stopped and the adapter was reset to the weights step {kept} started from (the \
         last ones with a finite loss)"
    )]
    NonFinite {
        step: usize,
        loss: f64,
        grad_norm: f64,
        kept: usize,
    },
    #[error(
        "after step {step} the adapter's weights are not finite; reset to the weights step {step} started from"
    )]
    NonFiniteWeights { step: usize },
    /// `error` is said in the text and not returned as `source()` (said once in a chain).
    #[error("step {step}: libtorch failed: {error}")]
    Torch { step: usize, error: tch::TchError },
    #[error("step {step}: the batch has no label tokens")]
    NoLabelTokens { step: usize },
    #[error("no training examples (every row was dropped; see the data report)")]
    NoExamples,
    /// A setting the run cannot honour exactly (no epochs, more steps than the data gives).
    #[error("training settings: {0}")]
    Config(String),
    /// The caller's `on_step` asked to stop (a worker whose lease is gone).
    #[error("stopped after step {step} at the caller's request")]
    Interrupted { step: usize },
}

/// One micro-batch on the device: rows right-padded to one length ([B, T]), or packed without
/// padding ([1, N], `segments` saying which packed rows make up each row).
pub struct Batch {
    /// [B, T]
    pub input_ids: Tensor,
    /// [B, T], 1 = real token.
    pub attention_mask: Tensor,
    /// Packed rows: the sequences they form (None: padded rows).
    pub segments: Option<PackedSequences>,
    /// Flat indices into [B * T] of the positions whose next token is a label.
    label_positions: Tensor,
    /// The labels at those positions.
    label_targets: Tensor,
    pub label_tokens: i64,
    pub tokens: i64,
}

impl Batch {
    /// Right-pads `rows` (ids with their labels) to the longest row rounded up to `multiple`.
    pub fn new(rows: &[(&[i64], &[i64])], pad_id: i64, multiple: usize, device: tch::Device) -> Batch {
        let longest = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1).max(1);
        let multiple = multiple.max(1);
        let t = longest.div_ceil(multiple) * multiple;
        let b = rows.len();
        let mut ids = vec![pad_id; b * t];
        let mut mask = vec![0i64; b * t];
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        let mut tokens = 0i64;
        for (r, (row_ids, row_labels)) in rows.iter().enumerate() {
            ids[r * t..r * t + row_ids.len()].copy_from_slice(row_ids);
            mask[r * t..r * t + row_ids.len()].fill(1);
            tokens += row_ids.len() as i64;
            // Position j predicts label j + 1 (HF shifts labels by one).
            for (j, &label) in row_labels.iter().enumerate().skip(1) {
                if label != IGNORE {
                    positions.push((r * t + j - 1) as i64);
                    targets.push(label);
                }
            }
        }
        let (b, t) = (b as i64, t as i64);
        Batch {
            input_ids: Tensor::from_slice(&ids).view([b, t]).to_device(device),
            attention_mask: Tensor::from_slice(&mask).view([b, t]).to_device(device),
            label_tokens: positions.len() as i64,
            label_positions: Tensor::from_slice(&positions).to_device(device),
            label_targets: Tensor::from_slice(&targets).to_device(device),
            tokens,
            segments: None,
        }
    }

    /// Packs `rows` (ids with their labels) back to back into one row [1, N] with no padding;
    /// each row attends only to itself and starts at position 0 (see
    /// `Model::packed_attention_context`). A row whose first [`MIN_SHARED_PREFIX`] or more
    /// tokens are those of an earlier row of the pass (the same system prompt, and often the same
    /// question) packs only the rest and reads the earlier row's rows for the shared part, so
    /// the shared tokens' projections and MLPs run once. The loss and gradient are those of the
    /// rows laid out whole; only the LoRA dropout masks of a shared prefix are drawn once for
    /// the rows that share it (each row's expected gradient is unchanged). Empty rows are
    /// skipped.
    pub fn packed(rows: &[(&[i64], &[i64])], device: tch::Device) -> Batch {
        Batch::packed_to_multiple(rows, 1, device)
    }

    /// [`Batch::packed`] with the pass's length rounded up to a multiple of `multiple` by a
    /// filler sequence after the rows (token 0, no labels, attending only to itself), so the
    /// pass's matrix shapes come from a small set (see [`CUDA_PACK_MULTIPLE`]). The filler
    /// changes neither the loss nor the gradients; `tokens` counts the rows' tokens only.
    pub fn packed_to_multiple(rows: &[(&[i64], &[i64])], multiple: usize, device: tch::Device) -> Batch {
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        let mut label_rows = Vec::new();
        let mut sequences: Vec<Vec<i64>> = Vec::new();
        // Rows packed whole: (first packed row, ids); later rows may share their prefixes.
        let mut whole: Vec<(i64, &[i64])> = Vec::new();
        let mut tokens = 0i64;
        for (row_ids, row_labels) in rows.iter().filter(|(ids, _)| !ids.is_empty()) {
            tokens += row_ids.len() as i64;
            // A row keeps at least its last token to itself (it has to be computed with the
            // row's own context when it is the only difference).
            let (start, shared) = whole
                .iter()
                .map(|&(start, other)| {
                    let common = other
                        .iter()
                        .zip(row_ids.iter())
                        .take_while(|(a, b)| a == b)
                        .count();
                    (start, common.min(row_ids.len() - 1))
                })
                .max_by_key(|&(start, common)| (common, std::cmp::Reverse(start)))
                .filter(|&(_, common)| common >= MIN_SHARED_PREFIX)
                .unwrap_or((0, 0));
            let own = ids.len() as i64;
            let mut sequence: Vec<i64> = (start..start + shared as i64).collect();
            for (j, &id) in row_ids.iter().enumerate().skip(shared) {
                sequence.push(ids.len() as i64);
                ids.push(id);
                positions.push(j as i64);
            }
            if shared == 0 {
                whole.push((own, row_ids));
            }
            // Position j predicts label j + 1 (HF shifts labels by one), within the row.
            for (j, &label) in row_labels.iter().enumerate().skip(1).take(row_ids.len() - 1) {
                if label != IGNORE {
                    label_rows.push(sequence[j - 1]);
                    targets.push(label);
                }
            }
            sequences.push(sequence);
        }
        if ids.is_empty() {
            // A pass needs one token; it has no labels, so the step skips it.
            ids.push(0);
            positions.push(0);
            sequences.push(vec![0]);
            tokens = 1;
        } else {
            let multiple = multiple.max(1);
            let filler = ids.len().div_ceil(multiple) * multiple - ids.len();
            if filler > 0 {
                let start = ids.len() as i64;
                sequences.push((start..start + filler as i64).collect());
                ids.extend(std::iter::repeat_n(0, filler));
                positions.extend(0..filler as i64);
            }
        }
        let n = ids.len() as i64;
        Batch {
            input_ids: Tensor::from_slice(&ids).view([1, n]).to_device(device),
            attention_mask: Tensor::ones([1, n], (Kind::Int64, device)),
            label_tokens: label_rows.len() as i64,
            label_positions: Tensor::from_slice(&label_rows).to_device(device),
            label_targets: Tensor::from_slice(&targets).to_device(device),
            tokens,
            segments: Some(PackedSequences { sequences, positions }),
        }
    }

    /// The rows of one optimizer step (its micro-batches, in order) as padding-free passes of at
    /// most `max_tokens` tokens each (a longer row alone in its own pass).
    pub fn pack_step(rows: &[(&[i64], &[i64])], max_tokens: usize, device: tch::Device) -> Vec<Batch> {
        let multiple = if device.is_cuda() { CUDA_PACK_MULTIPLE } else { 1 };
        let pack = |rows: &[(&[i64], &[i64])]| Batch::packed_to_multiple(rows, multiple, device);
        let mut passes = Vec::new();
        let mut current: Vec<(&[i64], &[i64])> = Vec::new();
        let mut tokens = 0;
        for &row in rows {
            if !current.is_empty() && tokens + row.0.len() > max_tokens {
                passes.push(pack(&current));
                current.clear();
                tokens = 0;
            }
            tokens += row.0.len();
            current.push(row);
        }
        if !current.is_empty() {
            passes.push(pack(&current));
        }
        passes
    }

    /// The attention context of this batch's forward pass.
    pub fn attention_context(&self, model: &Model) -> crate::model::AttentionContext {
        match &self.segments {
            Some(packed) => model.packed_attention_context(packed),
            None => model.attention_context(&self.attention_mask, self.input_ids.size()[1]),
        }
    }

    pub fn from_examples(examples: &[&Example], pad_id: i64, multiple: usize, device: tch::Device) -> Batch {
        let rows: Vec<(&[i64], &[i64])> = examples
            .iter()
            .map(|e| (e.ids.as_slice(), e.labels.as_slice()))
            .collect();
        Batch::new(&rows, pad_id, multiple, device)
    }
}

pub struct Trainer<'a> {
    model: &'a Model,
    lora: &'a Lora,
    config: TrainConfig,
    schedule: Schedule,
    optimizer: AdamW,
    last_good: Tensor,
    /// The 1-based step whose starting weights `last_good` holds.
    last_good_step: usize,
    /// Optimizer steps taken.
    step: usize,
    dropout: bool,
    /// Phase times when `PSPACE_TRAIN_PROFILE` is set (benchmarking only).
    profile: StepProfile,
}

impl<'a> Trainer<'a> {
    pub fn new(model: &'a Model, lora: &'a Lora, config: TrainConfig, total_steps: usize) -> Trainer<'a> {
        lora.set_trainable(true);
        let schedule = Schedule::new(
            config.schedule,
            config.learning_rate,
            config.warmup_ratio,
            total_steps,
        );
        let optimizer = AdamW::new(vec![lora.flat()], config.adamw);
        Trainer {
            model,
            lora,
            schedule,
            optimizer,
            last_good: lora.snapshot(),
            last_good_step: 1,
            step: 0,
            dropout: lora.config().dropout > 0.0,
            profile: StepProfile::from_env(model.device()),
            config,
        }
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// The phase table when `PSPACE_TRAIN_PROFILE` is set (see [`StepProfile`]).
    pub fn profile_table(&self) -> Option<String> {
        self.profile.enabled().then(|| self.profile.table())
    }

    /// Sum of the cross-entropy over the batch's label tokens, from the last hidden state.
    fn loss_sum(&self, hidden: &Tensor, batch: &Batch) -> Tensor {
        let h = hidden.size()[2];
        let selected = hidden
            .reshape([-1, h])
            .index_select(0, &batch.label_positions)
            .unsqueeze(0);
        // log-softmax reads the half-precision logits and computes and writes f32 in one kernel
        // (and its backward hands back half precision): no separate f32 copy of [N, vocab].
        let logits = self.model.logits(&selected).squeeze_dim(0);
        logits.log_softmax(-1, Kind::Float).g_nll_loss(
            &batch.label_targets,
            None::<Tensor>,
            tch::Reduction::Sum,
            IGNORE,
        )
    }

    /// Forward and backward of one micro-batch, the loss scaled by `scale`; returns the
    /// unscaled loss sum, still on the device (reading it would wait for the GPU; the step reads
    /// all of them once its last micro-batch is queued).
    fn micro_step(&mut self, batch: &Batch, scale: f64) -> Result<Tensor, tch::TchError> {
        let model = self.model;
        let adapter: &dyn Adapter = self.lora;
        self.profile.start();
        let ctx = batch.attention_context(model);
        let embedded = tch::no_grad(|| model.embed(&batch.input_ids));
        let layers = model.num_layers();
        if !self.config.recompute {
            let mut x = embedded;
            for i in 0..layers {
                x = model.layer_forward(i, &x, &ctx, None, Some(adapter), true).0;
            }
            self.profile.end("forward");
            let loss = self.loss_sum(&x, batch);
            self.profile.end("loss");
            (&loss * scale).f_backward()?;
            self.profile.end("backward");
            return Ok(loss.detach());
        }
        let mut inputs = Vec::with_capacity(layers);
        if self.dropout {
            self.lora.set_dropout_mode(DropoutMode::Record);
        }
        // The last layer runs with its graph in the first pass already: recomputing it would
        // only rebuild what is still there.
        let below_top = tch::no_grad(|| {
            let mut x = embedded;
            for i in 0..layers - 1 {
                inputs.push(x.shallow_clone());
                x = model.layer_forward(i, &x, &ctx, None, Some(adapter), true).0;
            }
            x
        });
        self.profile.end("forward without graph (recompute)");
        let top_input = below_top.detach().set_requires_grad(layers > 1);
        let top = model
            .layer_forward(layers - 1, &top_input, &ctx, None, Some(adapter), true)
            .0;
        let loss = self.loss_sum(&top, batch);
        (&loss * scale).f_backward()?;
        self.profile.end("top layer, loss and its backward");
        let loss_value = loss.detach();
        drop(top);
        if layers == 1 {
            return Ok(loss_value);
        }
        let mut grad_out = top_input.grad();
        drop(top_input);
        if self.dropout {
            self.lora.set_dropout_mode(DropoutMode::Replay);
        }
        for i in (0..layers - 1).rev() {
            let Some(input) = inputs.pop() else { break };
            // The embeddings are frozen: the first layer's input needs no gradient.
            let input = input.detach().set_requires_grad(i > 0);
            let out = model.layer_forward(i, &input, &ctx, None, Some(adapter), true).0;
            (out * &grad_out).sum(Kind::Float).f_backward()?;
            if i > 0 {
                grad_out = input.grad();
            }
        }
        self.profile.end("recomputed layers and their backward");
        if self.dropout {
            self.lora.set_dropout_mode(DropoutMode::Fresh);
        }
        Ok(loss_value)
    }

    /// One optimizer step over `micro_batches`. On a non-finite loss or gradient the adapter
    /// is put back to its state before this step and the error says so.
    pub fn step(&mut self, micro_batches: &[Batch], epoch: usize) -> Result<StepLog, TrainError> {
        let started = Instant::now();
        let step_no = self.step + 1;
        let label_tokens: i64 = micro_batches.iter().map(|b| b.label_tokens).sum();
        if label_tokens == 0 {
            return Err(TrainError::NoLabelTokens { step: step_no });
        }
        let scale = 1.0 / label_tokens as f64;
        let mut losses = Vec::with_capacity(micro_batches.len());
        for batch in micro_batches {
            if batch.label_tokens == 0 {
                continue;
            }
            let loss = self
                .micro_step(batch, scale)
                .map_err(|error| TrainError::Torch { step: step_no, error })?;
            losses.push(loss);
        }
        self.lora.forget_dropout_masks();
        self.profile.start();
        let loss_sum: f64 = losses.iter().map(|l: &Tensor| l.double_value(&[])).sum();
        let loss = loss_sum / label_tokens as f64;
        let grad = self.lora.flat_grad();
        self.lora.zero_grad();
        let grad_norm = clip_grad_norm(std::slice::from_ref(&grad), self.config.max_grad_norm);
        self.profile.end("gradient norm and clipping");
        if !loss.is_finite() || !grad_norm.is_finite() {
            self.lora.restore(&self.last_good);
            return Err(TrainError::NonFinite {
                step: step_no,
                loss,
                grad_norm,
                kept: self.last_good_step,
            });
        }
        tch::no_grad(|| self.last_good.copy_(&self.lora.flat()));
        self.last_good_step = step_no;
        let lr = self.schedule.lr(self.step);
        self.optimizer.step(lr, &[grad]);
        self.profile.end("keep last good weights, AdamW");
        self.profile.step_done();
        self.step += 1;
        let tokens: i64 = micro_batches.iter().map(|b| b.tokens).sum();
        let seconds = started.elapsed().as_secs_f64();
        Ok(StepLog {
            step: step_no,
            epoch,
            loss,
            lr,
            grad_norm,
            label_tokens,
            tokens,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
            seconds,
        })
    }

    /// Whether every adapter weight is finite; if not, the weights go back to the last good
    /// state (the one whose loss was last computed finite).
    pub fn check_weights(&mut self) -> Result<(), TrainError> {
        let finite = tch::no_grad(|| bool::try_from(self.lora.flat().isfinite().all()).unwrap_or(false));
        if finite {
            Ok(())
        } else {
            self.lora.restore(&self.last_good);
            Err(TrainError::NonFiniteWeights { step: self.step })
        }
    }
}

/// What `train` did.
pub struct TrainOutcome {
    pub steps: Vec<StepLog>,
    pub total_steps: usize,
    /// Set when training stopped early; the adapter then holds its last good state.
    pub error: Option<TrainError>,
}

/// Trains `lora` on `examples` for the configured epochs (or `max_steps`). `on_step` sees each
/// step's record as it finishes (progress bars, logs) and may stop the training by returning
/// `ControlFlow::Break`: the outcome's error is then `TrainError::Interrupted` and the adapter
/// holds the state of the last step that ran.
pub fn train(
    model: &Model,
    lora: &Lora,
    examples: &[Example],
    pad_id: i64,
    config: &TrainConfig,
    on_step: &mut dyn FnMut(&StepLog, usize) -> ControlFlow<()>,
) -> TrainOutcome {
    if examples.is_empty() {
        return TrainOutcome {
            steps: Vec::new(),
            total_steps: 0,
            error: Some(TrainError::NoExamples),
        };
    }
    let refuse = |message: String| TrainOutcome {
        steps: Vec::new(),
        total_steps: 0,
        error: Some(TrainError::Config(message)),
    };
    // Each of these used to be bent into something that runs (0 epochs into 1, a max_steps
    // beyond the data into the data's steps): the run then did something other than asked.
    for (name, value) in [
        ("epochs", config.epochs),
        ("micro_batch", config.micro_batch),
        ("grad_accum", config.grad_accum),
    ] {
        if value == 0 {
            return refuse(format!("{name} must be at least 1, found 0"));
        }
    }
    let plan = super::data::plan_steps(
        examples.len(),
        config.epochs,
        config.micro_batch,
        config.grad_accum,
        config.seed,
    );
    let steps_per_epoch = plan.len() / config.epochs;
    let total_steps = match config.max_steps {
        None => plan.len(),
        Some(0) => return refuse("max_steps must be at least 1, found 0".into()),
        Some(m) if m > plan.len() => {
            return refuse(format!(
                "max_steps is {m} but {} examples give {} optimizer steps in {} epoch(s) ({} examples \
                 per micro-batch, {} accumulation steps): raise the epochs or lower max_steps",
                examples.len(),
                plan.len(),
                config.epochs,
                config.micro_batch,
                config.grad_accum
            ))
        }
        Some(m) => m,
    };
    // libtorch's dropout kernels draw from its global generator (tch exposes no per-call
    // generator): seeding it from the run's seed makes the masks, and so the trained adapter,
    // the same on every run. Nothing else may draw from it while a run trains (the runner trains
    // one task at a time per process).
    if lora.config().dropout > 0.0 {
        tch::manual_seed(config.seed as i64);
    }
    let mut trainer = Trainer::new(model, lora, config.clone(), total_steps);
    let mut logs = Vec::with_capacity(total_steps);
    let mut error = None;
    for (k, step) in plan.iter().take(total_steps).enumerate() {
        let batches: Vec<Batch> = match config.pack_tokens {
            Some(max_tokens) => {
                let rows: Vec<(&[i64], &[i64])> = step
                    .iter()
                    .flatten()
                    .map(|&i| (examples[i].ids.as_slice(), examples[i].labels.as_slice()))
                    .collect();
                Batch::pack_step(&rows, max_tokens, model.device())
            }
            None => step
                .iter()
                .map(|micro| {
                    let rows: Vec<&Example> = micro.iter().map(|&i| &examples[i]).collect();
                    Batch::from_examples(&rows, pad_id, config.pad_multiple, model.device())
                })
                .collect(),
        };
        match trainer.step(&batches, k / steps_per_epoch.max(1) + 1) {
            Ok(log) => {
                let step = log.step;
                let asked = on_step(&log, total_steps);
                logs.push(log);
                if asked.is_break() {
                    error = Some(TrainError::Interrupted { step });
                    break;
                }
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    if error.is_none() {
        error = trainer.check_weights().err();
    }
    if let Some(table) = trainer.profile_table() {
        eprint!("{table}");
    }
    lora.set_trainable(false);
    TrainOutcome {
        steps: logs,
        total_steps,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraConfig;
    use crate::model::{ModelConfig, Proj};

    fn tiny() -> Model {
        Model::random(&ModelConfig::tiny_qwen2(), tch::Device::Cpu, Kind::Float, 11)
    }

    fn examples(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| {
                let len = 5 + (i * 7) % 13;
                let ids: Vec<i64> = (0..len).map(|j| ((i * 31 + j * 17) % 1000) as i64 + 1).collect();
                let labels = ids
                    .iter()
                    .enumerate()
                    .map(|(j, &id)| if j < 3 { IGNORE } else { id })
                    .collect();
                Example {
                    line: i + 1,
                    ids,
                    labels,
                }
            })
            .collect()
    }

    fn config(recompute: bool) -> TrainConfig {
        TrainConfig {
            learning_rate: 1e-2,
            adamw: AdamWConfig::default(),
            schedule: ScheduleKind::Linear,
            warmup_ratio: 0.1,
            max_grad_norm: Some(1.0),
            micro_batch: 2,
            grad_accum: 2,
            epochs: 2,
            max_steps: None,
            seed: 42,
            recompute,
            pad_multiple: 8,
            pack_tokens: None,
        }
    }

    /// A LoRA without dropout whose A and B are random (B starts at zero, so its gradients
    /// would be too), seeded.
    fn lora_with_random_weights(model: &Model, seed: i64) -> Lora {
        let l = lora(model, 0.0);
        let _guard = tch::no_grad_guard();
        tch::manual_seed(seed);
        for mut p in l.parameters() {
            p.copy_(&(Tensor::randn_like(&p) * 0.05));
        }
        l
    }

    fn lora(model: &Model, dropout: f64) -> Lora {
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout,
            targets: Proj::ALL.to_vec(),
            use_rslora: false,
        };
        Lora::init(model, cfg, 1).unwrap()
    }

    #[test]
    fn batches_pad_to_a_multiple_of_eight_and_shift_labels() {
        let ex = examples(2);
        let batch = Batch::from_examples(&[&ex[0], &ex[1]], 0, 8, tch::Device::Cpu);
        assert_eq!(batch.input_ids.size(), [2, 16]);
        assert_eq!(batch.tokens, (ex[0].ids.len() + ex[1].ids.len()) as i64);
        assert_eq!(
            batch.label_tokens,
            (ex[0].ids.len() - 3 + ex[1].ids.len() - 3) as i64
        );
        // The first label (position 3) is predicted from position 2.
        assert_eq!(batch.label_positions.int64_value(&[0]), 2);
    }

    #[test]
    fn loss_falls_and_recomputation_changes_nothing() {
        let model = tiny();
        let ex = examples(12);
        let mut runs = Vec::new();
        for recompute in [false, true] {
            let l = lora(&model, 0.0);
            let out = train(&model, &l, &ex, 0, &config(recompute), &mut |_, _| {
                ControlFlow::Continue(())
            });
            assert!(out.error.is_none(), "{:?}", out.error);
            assert_eq!(out.total_steps, 6);
            runs.push((out.steps, l.snapshot()));
        }
        let (plain, recomputed) = (&runs[0], &runs[1]);
        for (a, b) in plain.0.iter().zip(&recomputed.0) {
            assert!(
                (a.loss - b.loss).abs() < 1e-5 * a.loss,
                "{} vs {}",
                a.loss,
                b.loss
            );
            assert_eq!(a.lr, b.lr);
        }
        assert!(plain.1.allclose(&recomputed.1, 1e-4, 1e-6, false));
        assert_eq!(plain.0[0].lr, 0.0, "warmup starts at zero");
        let first = plain.0[1].loss;
        let last = plain.0[5].loss;
        assert!(last < first, "loss should fall: {first} -> {last}");
    }

    /// The recomputed pass replays the first pass's dropout masks: the plain path with those
    /// masks gives the same loss and gradients, fresh masks a different loss.
    fn check_dropout_replay(batch_of: impl Fn(&[Example]) -> Batch) {
        let _generator = crate::train::GLOBAL_GENERATOR.lock();
        let model = tiny();
        let ex = examples(3);
        let l = lora(&model, 0.5);
        {
            let _guard = tch::no_grad_guard();
            for mut p in l.parameters() {
                p.copy_(&(Tensor::randn_like(&p) * 0.1));
            }
        }
        let batch = batch_of(&ex);
        let mut trainer = Trainer::new(&model, &l, config(true), 4);
        let loss_recomputed = trainer.micro_step(&batch, 1.0).unwrap().double_value(&[]);
        let grads_recomputed = l.flat_grad();
        l.zero_grad();
        l.set_dropout_mode(DropoutMode::Replay);
        let mut plain = Trainer::new(&model, &l, config(false), 4);
        let loss_plain = plain.micro_step(&batch, 1.0).unwrap().double_value(&[]);
        assert!((loss_plain - loss_recomputed).abs() < 1e-4 * loss_plain.abs());
        assert!(
            l.flat_grad().allclose(&grads_recomputed, 1e-4, 1e-6, false),
            "gradients differ"
        );
        assert!(grads_recomputed.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // And fresh masks would have changed the loss (the test can fail).
        l.set_dropout_mode(DropoutMode::Fresh);
        let loss_fresh = plain.micro_step(&batch, 1.0).unwrap().double_value(&[]);
        assert!((loss_fresh - loss_plain).abs() > 1e-6);
    }

    #[test]
    fn recomputation_replays_the_dropout_masks_of_the_first_pass() {
        check_dropout_replay(|ex| Batch::from_examples(&[&ex[0], &ex[1], &ex[2]], 0, 8, tch::Device::Cpu));
    }

    #[test]
    fn recomputation_replays_the_dropout_masks_of_a_packed_pass() {
        check_dropout_replay(|ex| {
            let rows: Vec<(&[i64], &[i64])> = ex
                .iter()
                .map(|e| (e.ids.as_slice(), e.labels.as_slice()))
                .collect();
            Batch::packed(&rows, tch::Device::Cpu)
        });
    }

    #[test]
    fn packed_rows_keep_their_labels_and_split_at_the_token_budget() {
        let ex = examples(3); // 5, 12 and 6 tokens
        let rows: Vec<(&[i64], &[i64])> = ex
            .iter()
            .map(|e| (e.ids.as_slice(), e.labels.as_slice()))
            .collect();
        let one = Batch::packed(&rows, tch::Device::Cpu);
        assert_eq!(one.input_ids.size(), [1, 23]);
        assert_eq!(one.segments, Some(PackedSequences::back_to_back(&[5, 12, 6])));
        assert_eq!(one.tokens, 23);
        assert_eq!(one.label_tokens, 2 + 9 + 3);
        // The second row's first label (its position 3) is predicted from packed position 5 + 2;
        // no label crosses from one row into the next.
        let positions = Vec::<i64>::try_from(&one.label_positions).unwrap();
        assert_eq!(positions[2], 7);
        assert!(!positions.contains(&4) && !positions.contains(&16));
        let passes = Batch::pack_step(&rows, 17, tch::Device::Cpu);
        let shapes: Vec<Vec<i64>> = passes.iter().map(|b| b.input_ids.size()).collect();
        assert_eq!(shapes, [vec![1, 17], vec![1, 6]]);
        // A row longer than the budget gets a pass of its own.
        let passes = Batch::pack_step(&rows, 4, tch::Device::Cpu);
        assert_eq!(passes.len(), 3);
    }

    /// A pass rounded up with a filler sequence (as on a GPU) has the loss and gradients of the
    /// unrounded pass, and counts only the rows' tokens.
    #[test]
    fn a_rounded_pass_has_the_loss_and_gradients_of_the_rows_alone() {
        let model = tiny();
        let l = lora_with_random_weights(&model, 7);
        let ex = examples(3); // 5, 12 and 6 tokens
        let rows: Vec<(&[i64], &[i64])> = ex
            .iter()
            .map(|e| (e.ids.as_slice(), e.labels.as_slice()))
            .collect();
        let exact = Batch::packed(&rows, tch::Device::Cpu);
        let rounded = Batch::packed_to_multiple(&rows, 16, tch::Device::Cpu);
        assert_eq!(exact.input_ids.size(), [1, 23]);
        assert_eq!(rounded.input_ids.size(), [1, 32]);
        assert_eq!(
            (rounded.tokens, rounded.label_tokens),
            (exact.tokens, exact.label_tokens)
        );
        let mut trainer = Trainer::new(&model, &l, config(false), 1);
        let loss_exact = trainer.micro_step(&exact, 1.0).unwrap().double_value(&[]);
        let grad_exact = l.flat_grad();
        l.zero_grad();
        let loss_rounded = trainer.micro_step(&rounded, 1.0).unwrap().double_value(&[]);
        let grad_rounded = l.flat_grad();
        assert!(
            (loss_exact - loss_rounded).abs() < 1e-5 * loss_exact.abs(),
            "{loss_exact} vs {loss_rounded}"
        );
        assert!(
            grad_exact.allclose(&grad_rounded, 1e-4, 1e-6, false),
            "gradients differ"
        );
        // Already a multiple: no filler.
        assert_eq!(
            Batch::packed_to_multiple(&rows, 23, tch::Device::Cpu)
                .input_ids
                .size(),
            [1, 23]
        );
    }

    /// Rows that start with the same long prefix (one system prompt) pack it once and read it
    /// from the first row; the loss and the adapter's gradients are those of the rows laid out
    /// whole, labels inside the shared prefix included.
    #[test]
    fn rows_sharing_a_prefix_pack_it_once_with_the_same_loss_and_gradients() {
        let model = tiny();
        let l = lora_with_random_weights(&model, 5);
        let prefix: Vec<i64> = (0..40).map(|j| (j * 37 % 900) as i64 + 3).collect();
        let with = |tail: &[i64]| [prefix.as_slice(), tail].concat();
        let rows: Vec<Vec<i64>> = vec![
            with(&[11, 12, 13, 14, 15, 16, 17, 18, 19, 20]),
            (0..20).map(|j| (j * 53 % 700) as i64 + 5).collect(),
            with(&[11, 12, 13, 44, 45, 46, 47, 48]),
            with(&[61, 62, 63, 64, 65, 66]),
            // Shares only a short start: packed whole.
            [&prefix[..8], &[70, 71, 72, 73][..]].concat(),
        ];
        // Labels everywhere on the first row (inside the shared prefix too), at the end elsewhere.
        let labels: Vec<Vec<i64>> = rows
            .iter()
            .enumerate()
            .map(|(r, ids)| {
                ids.iter()
                    .enumerate()
                    .map(|(j, &id)| if r == 0 || j + 4 >= ids.len() { id } else { IGNORE })
                    .collect()
            })
            .collect();
        let pairs: Vec<(&[i64], &[i64])> = rows
            .iter()
            .zip(&labels)
            .map(|(i, l)| (i.as_slice(), l.as_slice()))
            .collect();
        let shared = Batch::packed(&pairs, tch::Device::Cpu);
        // Rows 3 and 4 (1-based) read the first row's 40 prefix tokens (the third also its
        // next three); the fifth shares too few to be worth it.
        assert_eq!(shared.input_ids.size(), [1, 50 + 20 + 5 + 6 + 12]);
        assert_eq!(shared.tokens, 50 + 20 + 48 + 46 + 12);
        let padded = Batch::new(&pairs, 0, 8, tch::Device::Cpu);
        assert_eq!(shared.label_tokens, padded.label_tokens);
        let mut trainer = Trainer::new(&model, &l, config(false), 1);
        let loss_padded = trainer.micro_step(&padded, 1.0).unwrap().double_value(&[]);
        let grad_padded = l.flat_grad();
        l.zero_grad();
        let loss_shared = trainer.micro_step(&shared, 1.0).unwrap().double_value(&[]);
        let grad_shared = l.flat_grad();
        assert!(
            (loss_padded - loss_shared).abs() < 1e-4 * loss_padded.abs(),
            "{loss_padded} vs {loss_shared}"
        );
        assert!(
            grad_padded.allclose(&grad_shared, 1e-4, 1e-6, false),
            "gradients differ"
        );
        assert!(grad_shared.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    /// Padding-free training is padded training: the same losses and adapter, with and without
    /// recomputation, and with dropout the recomputation replays the packed pass's masks.
    #[test]
    fn padding_free_training_gives_the_padded_runs_losses_and_adapter() {
        let model = tiny();
        let ex = examples(12);
        let run = |pack_tokens: Option<usize>, recompute: bool| {
            let l = lora(&model, 0.0);
            let mut cfg = config(recompute);
            cfg.pack_tokens = pack_tokens;
            let out = train(&model, &l, &ex, 0, &cfg, &mut |_, _| ControlFlow::Continue(()));
            assert!(out.error.is_none(), "{:?}", out.error);
            (out.steps, l.snapshot())
        };
        let (padded, padded_adapter) = run(None, false);
        for (pack_tokens, recompute) in [(Some(10_000), false), (Some(20), false), (Some(20), true)] {
            let (packed, adapter) = run(pack_tokens, recompute);
            for (a, b) in padded.iter().zip(&packed) {
                assert!(
                    (a.loss - b.loss).abs() < 1e-5 * a.loss,
                    "{pack_tokens:?}: {} vs {}",
                    a.loss,
                    b.loss
                );
                assert_eq!((a.tokens, a.label_tokens), (b.tokens, b.label_tokens));
            }
            assert!(
                padded_adapter.allclose(&adapter, 1e-4, 1e-6, false),
                "{pack_tokens:?} recompute {recompute}: adapters differ"
            );
        }
    }

    /// From 1024 rows the model computes Gate/Up as a batch of two (`STACKED_GATE_UP_ROWS`):
    /// a 4 x 300 batch takes that path, each row alone the single-matmul one. The loss sums and
    /// the adapter's gradients must agree.
    #[test]
    fn stacked_and_single_gate_up_give_the_same_loss_and_gradients() {
        let model = tiny();
        let l = lora_with_random_weights(&model, 21);
        let rows: Vec<Vec<i64>> = (0..4)
            .map(|r| {
                (0..300)
                    .map(|j| ((r * 977 + j * 131) % 1000) as i64 + 1)
                    .collect()
            })
            .collect();
        let batch_of = |rows: &[Vec<i64>]| {
            let pairs: Vec<(&[i64], &[i64])> = rows.iter().map(|r| (r.as_slice(), r.as_slice())).collect();
            Batch::new(&pairs, 0, 8, tch::Device::Cpu)
        };
        let mut trainer = Trainer::new(&model, &l, config(false), 1);
        let together = trainer
            .micro_step(&batch_of(&rows), 1.0)
            .unwrap()
            .double_value(&[]);
        let grad_together = l.flat_grad();
        l.zero_grad();
        let mut apart = 0.0;
        for row in &rows {
            apart += trainer
                .micro_step(&batch_of(std::slice::from_ref(row)), 1.0)
                .unwrap()
                .double_value(&[]);
        }
        let grad_apart = l.flat_grad();
        assert!(
            (together - apart).abs() < 1e-5 * apart.abs(),
            "{together} vs {apart}"
        );
        let scale = grad_apart.abs().max().double_value(&[]);
        let diff = (&grad_together - &grad_apart).abs().max().double_value(&[]);
        assert!(
            scale > 0.0 && diff < 1e-4 * scale,
            "gradients differ by {diff} (scale {scale})"
        );
    }

    /// The GPU computes in bf16: the f32 adapter is cast into the bf16 forward and its
    /// gradients come back in f32; both modes still agree and the loss falls.
    #[test]
    fn bf16_model_trains_the_f32_adapter() {
        let model = Model::random(&ModelConfig::tiny_qwen2(), tch::Device::Cpu, Kind::BFloat16, 11);
        let ex = examples(8);
        let mut results = Vec::new();
        for recompute in [false, true] {
            let l = lora(&model, 0.0);
            let before = l.snapshot();
            let mut cfg = config(recompute);
            cfg.warmup_ratio = 0.0;
            let out = train(&model, &l, &ex, 0, &cfg, &mut |_, _| ControlFlow::Continue(()));
            assert!(out.error.is_none(), "{:?}", out.error);
            assert_eq!(l.flat().kind(), Kind::Float);
            assert!(!l.snapshot().equal(&before), "the adapter must move");
            results.push(out.steps.iter().map(|s| s.loss).collect::<Vec<_>>());
        }
        for (a, b) in results[0].iter().zip(&results[1]) {
            assert!((a - b).abs() < 1e-2 * a.abs(), "bf16 plain {a} vs recomputed {b}");
        }
        assert!(results[0].last() < results[0].first(), "{:?}", results[0]);
    }

    #[test]
    fn on_step_can_stop_the_training_after_a_step() {
        let model = tiny();
        let ex = examples(8);
        let l = lora(&model, 0.0);
        let cfg = config(false);
        let out = train(&model, &l, &ex, 0, &cfg, &mut |s, _| {
            if s.step >= 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(
            out.total_steps > 2,
            "the test needs a longer run: {}",
            out.total_steps
        );
        assert_eq!(out.steps.len(), 2);
        assert!(
            matches!(out.error, Some(TrainError::Interrupted { step: 2 })),
            "{:?}",
            out.error
        );
    }

    #[test]
    fn non_finite_loss_stops_and_keeps_the_last_good_adapter() {
        let model = tiny();
        let ex = examples(8);
        let l = lora(&model, 0.0);
        let mut cfg = config(false);
        cfg.warmup_ratio = 0.0;
        cfg.max_grad_norm = None;
        cfg.adamw.eps = 0.0;
        cfg.learning_rate = 1e38;
        let mut seen = Vec::new();
        let out = train(&model, &l, &ex, 0, &cfg, &mut |s, _| {
            seen.push(s.step);
            ControlFlow::Continue(())
        });
        let err = out.error.expect("an absurd learning rate must blow up");
        let message = err.to_string();
        assert!(
            message.contains("not finite") || message.contains("non-finite"),
            "{message}"
        );
        for p in l.parameters() {
            assert!(
                bool::try_from(p.isfinite().all()).unwrap(),
                "the kept adapter is finite"
            );
        }
        assert_eq!(seen.len(), out.steps.len());
    }

    /// Zero epochs used to run one, and a `max_steps` beyond the data ran the data's steps:
    /// each is an error now, and an exact `max_steps` runs exactly that many steps.
    #[test]
    fn settings_the_run_cannot_honour_are_refused_not_bent() {
        let model = tiny();
        let ex = examples(8);
        let l = lora(&model, 0.0);
        // 8 examples, micro-batch 2, accumulation 2: 2 steps per epoch, 4 in 2 epochs.
        let refused = |cfg: &TrainConfig| -> String {
            let out = train(&model, &l, &ex, 0, cfg, &mut |_, _| ControlFlow::Continue(()));
            assert!(out.steps.is_empty());
            match out.error {
                Some(TrainError::Config(m)) => m,
                other => panic!("expected a settings error, found {other:?}"),
            }
        };
        let mut cfg = config(false);
        cfg.epochs = 0;
        assert_eq!(refused(&cfg), "epochs must be at least 1, found 0");
        let mut cfg = config(false);
        cfg.max_steps = Some(5);
        assert_eq!(
            refused(&cfg),
            "max_steps is 5 but 8 examples give 4 optimizer steps in 2 epoch(s) (2 examples per \
             micro-batch, 2 accumulation steps): raise the epochs or lower max_steps"
        );
        let mut cfg = config(false);
        cfg.max_steps = Some(0);
        assert_eq!(refused(&cfg), "max_steps must be at least 1, found 0");
        let mut cfg = config(false);
        cfg.max_steps = Some(4);
        let out = train(&model, &l, &ex, 0, &cfg, &mut |_, _| ControlFlow::Continue(()));
        assert!(out.error.is_none(), "{:?}", out.error);
        assert_eq!((out.steps.len(), out.total_steps), (4, 4));
    }
}
