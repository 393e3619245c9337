//! One decoder-only transformer for the Llama and Qwen2 families, driven by `ModelConfig`.
//!
//! The weights are immutable and shared (`Model` is `Send + Sync`); everything that belongs to
//! one batch (the KV cache, the attention mask and positions) is passed in and out, so one loaded
//! model serves generation, extraction and training at once. Positions come from the attention
//! mask, so left padding (generation) and right padding (training) both work. The residual stream
//! captured at layer L is the OUTPUT of decoder layer L, before any final norm, as a forward hook
//! on `model.layers[L]` sees it.

mod adapter;
mod config;
mod flash;
mod load;
pub mod random;
pub mod rope;
mod source;

pub use adapter::{add_stacked_one_by_one, Adapter, LayerAdapter, Proj};
pub use config::{Architecture, ModelConfig};
pub use flash::{packed_attention_kernel, padded_attention_requested};
pub use load::LoadError;
pub use random::{Preset, RandomModel, RandomNameError};
pub use rope::RopeScaling;
pub use source::ModelSource;

use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logits {
    /// [B, T, V]
    All,
    /// [B, 1, V]: the last column of the batch, which is every row's last real token only
    /// when rows are left-padded (as generation pads them).
    #[default]
    Last,
    /// None (extraction only needs hidden states).
    None,
}

/// What a forward pass should compute besides the residual stream.
#[derive(Default, Clone, Copy)]
pub struct ForwardOptions<'a> {
    /// Decoder layers whose output is returned (0-indexed).
    pub capture_layers: &'a [usize],
    pub logits: Logits,
    pub adapter: Option<&'a dyn Adapter>,
    /// Training mode (adapter dropout on).
    pub train: bool,
}

pub struct ForwardOutput {
    pub logits: Option<Tensor>,
    /// layer -> [B, T, H]
    pub hidden: BTreeMap<usize, Tensor>,
}

/// Keys and values of one layer: preallocated buffers [B, kv_heads, capacity, head_dim] of
/// which the first `len` positions are filled. Appending writes in place; a full buffer grows
/// by doubling. Growing a cache by concatenation every decode step makes the CUDA allocator
/// miss its cache on every step, which dominated decode time.
pub struct LayerKv {
    pub k: Tensor,
    pub v: Tensor,
    pub len: i64,
}

impl LayerKv {
    fn from_new(k: Tensor, v: Tensor, reserve: i64) -> LayerKv {
        let len = k.size()[2];
        let mut kv = LayerKv { k, v, len };
        if reserve > 0 {
            kv.grow_to(len + reserve);
        }
        kv
    }

    pub fn capacity(&self) -> i64 {
        self.k.size()[2]
    }

    fn grow_to(&mut self, capacity: i64) {
        let mut shape = self.k.size();
        shape[2] = capacity;
        let k = Tensor::zeros(shape.as_slice(), (self.k.kind(), self.k.device()));
        let v = Tensor::zeros(shape.as_slice(), (self.v.kind(), self.v.device()));
        k.narrow(2, 0, self.len).copy_(&self.k.narrow(2, 0, self.len));
        v.narrow(2, 0, self.len).copy_(&self.v.narrow(2, 0, self.len));
        self.k = k;
        self.v = v;
    }

    /// Appends [B, kv_heads, t, head_dim] and returns views of everything filled so far.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        if self.len + t > self.capacity() {
            self.grow_to((self.len + t).max(2 * self.capacity()));
        }
        self.k.narrow(2, self.len, t).copy_(k);
        self.v.narrow(2, self.len, t).copy_(v);
        self.len += t;
        (self.k.narrow(2, 0, self.len), self.v.narrow(2, 0, self.len))
    }

    /// The filled part, [B, kv_heads, len, head_dim].
    pub fn filled(&self) -> (Tensor, Tensor) {
        (self.k.narrow(2, 0, self.len), self.v.narrow(2, 0, self.len))
    }

    /// The filled part extended to a multiple of `multiple` positions with the buffer's unused
    /// (zero) positions behind it, [B, kv_heads, padded, head_dim], or None when the buffer has
    /// no such room. Every buffer is allocated zeroed and written only at `len` (`append`), so
    /// positions from `len` on hold zeros: finite keys and values that a -inf mask column turns
    /// into exact zero weights.
    pub fn aligned(&self, multiple: i64) -> Option<(Tensor, Tensor)> {
        let padded = (self.len + multiple - 1) / multiple * multiple;
        (padded <= self.capacity()).then(|| (self.k.narrow(2, 0, padded), self.v.narrow(2, 0, padded)))
    }
}

/// Key positions a decoding step's attention reads, rounded up to this multiple on CUDA.
/// cuBLAS picks its sm90 kernels only for leading dimensions that are multiples of 8 elements;
/// at an odd cache length, the score and value matmuls of a decoding step fell back to a
/// Turing-era CUTLASS kernel ("cutlass_75_wmma ... align1"): 0.1 ms each per layer at batch 512,
/// about a third of the step (kernel trace, bench/results/kernels_decode_512_h200.txt).
const DECODE_KEY_MULTIPLE: i64 = 8;

thread_local! {
    /// Tests: decoding's key padding forced on (the CUDA path's layout on the CPU) or off (the
    /// unaligned path on CUDA, to compare the two there).
    static DECODE_ALIGNMENT: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether a decoding step on `device` reads the cache padded to `DECODE_KEY_MULTIPLE`.
fn aligns_decode_keys(device: tch::Device) -> bool {
    DECODE_ALIGNMENT.with(|c| c.get()).unwrap_or(device.is_cuda())
}

/// Runs `f` with decoding's key padding switched on or off on every device (tests).
#[cfg(test)]
pub(crate) fn with_decode_alignment<R>(on: bool, f: impl FnOnce() -> R) -> R {
    DECODE_ALIGNMENT.with(|c| c.set(Some(on)));
    let out = f();
    DECODE_ALIGNMENT.with(|c| c.set(None));
    out
}

/// Per-layer keys and values of the positions seen so far.
#[derive(Default)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// Free positions to reserve behind a freshly filled layer (the generation budget), so
    /// decoding never reallocates.
    pub reserve: i64,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache::default()
    }
    /// A cache that keeps room for `reserve` more positions after its first fill, and for the
    /// padding of decoding's aligned key window (`LayerKv::aligned`) at the last of them.
    pub fn with_reserve(reserve: i64) -> KvCache {
        KvCache {
            layers: Vec::new(),
            reserve: reserve + DECODE_KEY_MULTIPLE - 1,
        }
    }
    pub fn seq_len(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.len)
    }
    /// Keeps only the given batch rows (finished rows leave the batch).
    pub fn select_rows(&mut self, rows: &Tensor) {
        for l in self.layers.iter_mut() {
            l.k = l.k.index_select(0, rows);
            l.v = l.v.index_select(0, rows);
        }
    }
    /// Drops the first `n` positions of every row (columns that are padding everywhere).
    pub fn drop_front(&mut self, n: i64) {
        for l in self.layers.iter_mut() {
            let cap = l.capacity();
            l.k = l.k.narrow(2, n, cap - n);
            l.v = l.v.narrow(2, n, cap - n);
            l.len -= n;
        }
    }
}

/// From this many rows (prefill, extraction, training) Gate and Up run as one batched matmul
/// into two contiguous halves (`LayerWeights::gate_up_t`); decoding steps, a few rows each, keep
/// the single matmul over [2 I] columns, which reads the weights in the fewest launches.
const STACKED_GATE_UP_ROWS: i64 = 1024;

pub(crate) struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        // One fused call (matmul + bias): decoding is bound by how many ops are launched.
        x.linear(&self.weight, self.bias.as_ref())
    }
}

pub(crate) struct LayerWeights {
    pub input_norm: Tensor,
    pub post_attention_norm: Tensor,
    /// Every projection; the weights of Q, K, V and of Gate, Up are views into `qkv` and
    /// `gate_up`, so they cost no extra memory.
    pub proj: BTreeMap<Proj, Linear>,
    /// [q_out + 2 kv_out, H]: one matmul instead of three (a decode step is bound by how many
    /// ops it launches, not by arithmetic).
    pub qkv: Linear,
    /// [2 I, H]
    pub gate_up: Linear,
    /// O's and Down's weights transposed ([in, out] views), for the residual add-matmul.
    pub o_t: Tensor,
    pub down_t: Tensor,
    /// Gate and Up as a batch of two [H, I] (a view of `gate_up`): one batched matmul gives
    /// them as two contiguous [N, I] halves, so the SwiGLU product and its backward run on
    /// contiguous memory (on column halves of [N, 2I] they were the slowest kernels of a
    /// training step, and the halves' backward zero-filled and summed two [N, 2I] buffers).
    pub gate_up_t: Tensor,
    /// [2, 1, I], when the projections have biases.
    pub gate_up_bias: Option<Tensor>,
}

impl LayerWeights {
    /// Fuses Q/K/V and Gate/Up. A fused group whose weights are all those of `previous` (same
    /// storage) is shared with it instead of being copied.
    pub(crate) fn new(
        input_norm: Tensor,
        post_attention_norm: Tensor,
        mut proj: BTreeMap<Proj, Linear>,
        previous: Option<&LayerWeights>,
    ) -> LayerWeights {
        let _guard = tch::no_grad_guard();
        let mut fuse = |group: &[Proj], previous_fused: Option<&Linear>| -> Linear {
            let unchanged = previous.is_some_and(|prev| {
                group
                    .iter()
                    .all(|p| prev.proj[p].weight.data_ptr() == proj[p].weight.data_ptr())
            });
            let fused = match previous_fused.filter(|_| unchanged) {
                Some(f) => Linear {
                    weight: f.weight.shallow_clone(),
                    bias: f.bias.as_ref().map(Tensor::shallow_clone),
                },
                None => {
                    let weights: Vec<&Tensor> = group.iter().map(|p| &proj[p].weight).collect();
                    let biases: Option<Vec<&Tensor>> = group.iter().map(|p| proj[p].bias.as_ref()).collect();
                    Linear {
                        weight: Tensor::cat(&weights, 0),
                        bias: biases.map(|b| Tensor::cat(&b, 0)),
                    }
                }
            };
            let mut start = 0;
            for p in group {
                let rows = proj[p].weight.size()[0];
                let lin = proj.get_mut(p).expect("every projection is present");
                lin.weight = fused.weight.narrow(0, start, rows);
                lin.bias = fused.bias.as_ref().map(|b| b.narrow(0, start, rows));
                start += rows;
            }
            fused
        };
        let qkv = fuse(&[Proj::Q, Proj::K, Proj::V], previous.map(|p| &p.qkv));
        let gate_up = fuse(&[Proj::Gate, Proj::Up], previous.map(|p| &p.gate_up));
        let o_t = proj[&Proj::O].weight.tr();
        let down_t = proj[&Proj::Down].weight.tr();
        let [two_i, hidden] = gate_up.weight.size()[..] else {
            unreachable!("a projection weight is 2-D")
        };
        let gate_up_t = gate_up.weight.view([2, two_i / 2, hidden]).transpose(1, 2);
        let gate_up_bias = gate_up.bias.as_ref().map(|b| b.view([2, 1, two_i / 2]));
        LayerWeights {
            input_norm,
            post_attention_norm,
            proj,
            qkv,
            gate_up,
            o_t,
            down_t,
            gate_up_t,
            gate_up_bias,
        }
    }
}

pub struct Model {
    config: ModelConfig,
    device: tch::Device,
    kind: Kind,
    embed: Tensor,
    layers: Vec<LayerWeights>,
    final_norm: Tensor,
    /// None = tied to the embeddings.
    lm_head: Option<Tensor>,
    /// [head_dim / 2] f32; for dynamic rope, the frequencies up to the trained length (longer
    /// forward passes compute their own).
    inv_freq: Tensor,
    /// The factor cos and sin are multiplied by (YaRN's attention temperature, else 1).
    attention_scaling: f64,
}

// SAFETY: tch tensors are reference-counted handles to libtorch storage; the model never mutates
// them after construction, and libtorch's read-only ops are thread-safe.
unsafe impl Sync for Model {}
unsafe impl Send for Model {}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    if kind != Kind::Float {
        // Half precision (GPU): libtorch's fused kernel, one launch instead of eight; it applies
        // the weight before rounding, which differs from HF only within bf16 precision.
        let h = *x.size().last().unwrap_or(&0);
        return x.rms_norm([h], Some(weight), eps);
    }
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = (xf * (var + eps).rsqrt()).to_kind(kind);
    weight * normed
}

/// Causal attention of q [B, heads, T, head_dim] over k, v [B, kv_heads, T, head_dim] (HF's
/// grouping: query head h reads kv head h / (heads / kv_heads)).
///
/// On CUDA it calls the memory-efficient kernel itself, the kv heads repeated (it has no
/// grouped-query mode): libtorch 2.11's `scaled_dot_product_attention` picks cuDNN's kernel on
/// an H200, which builds a graph for every new shape on the host, and padding-free training
/// has a new shape every step. Measured on a 7B EM step (bench/train_profile.sh with
/// PSPACE_TRAIN_PROFILE=ops, one H200, 2026-11-30): the attention kernels of a forward took
/// 173 ms through SDPA with `enable_gqa`, 78 ms through SDPA with the heads repeated, 12.9 ms
/// through the memory-efficient kernel. On a CPU, SDPA as before.
fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (heads, kv_heads) = (q.size()[1], k.size()[1]);
    if !q.device().is_cuda() {
        return Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            None::<Tensor>,
            0.0,
            true,
            None,
            heads != kv_heads,
        );
    }
    let repeat = |x: &Tensor| match x.size()[..] {
        [b, _, t, d] if heads != kv_heads => x
            .unsqueeze(2)
            .expand([b, kv_heads, heads / kv_heads, t, d], false)
            .reshape([b, heads, t, d]),
        _ => x.shallow_clone(),
    };
    // The log-sum-exp is what the backward needs; without a graph it is not computed.
    let for_backward = q.requires_grad() || k.requires_grad() || v.requires_grad();
    Tensor::internal_scaled_dot_product_efficient_attention(
        q,
        &repeat(k),
        &repeat(v),
        None::<Tensor>,
        for_backward,
        0.0,
        true,
        None,
    )
    .0
}

/// `allowed` [B, 1, Q, K] (bool: which keys each query sees) as [`masked_attention`] takes it
/// on its device: the boolean mask itself on a CPU; on CUDA an additive bias in `kind` (0 or
/// -inf) whose rows are laid out padded to a multiple of 16 elements, the alignment the
/// memory-efficient kernel requires (SDPA pads the same way). Made once per forward pass
/// (`AttentionContext::grouped_mask`), not per layer.
pub(crate) fn attention_mask_for(allowed: &Tensor, kind: Kind) -> Tensor {
    let [b, _, rows, keys] = allowed.size()[..] else {
        return allowed.shallow_clone();
    };
    if !allowed.device().is_cuda() {
        return allowed.shallow_clone();
    }
    let stride = (keys + 15) / 16 * 16;
    let mut bias = Tensor::zeros([b, 1, rows, stride], (kind, allowed.device())).narrow(3, 0, keys);
    let _ = bias.masked_fill_(&allowed.logical_not(), f64::NEG_INFINITY);
    bias
}

/// Attention of q [B, H, Q, head_dim] over k, v [B, H, K, head_dim] under `mask` from
/// [`attention_mask_for`]; every query row must allow at least one key.
///
/// On CUDA the memory-efficient kernel is called with the mask as an additive bias, for the
/// reason `causal_attention` gives: libtorch 2.11's SDPA picks cuDNN for masked attention too on
/// an H200 (`pspace doctor --device cuda`), and left-padded prompt batches have a new shape each
/// batch. On a CPU (a boolean mask), SDPA.
pub(crate) fn masked_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let size = q.size();
    match size[..] {
        [b, heads, rows, _] if mask.kind() != Kind::Bool => {
            let keys = k.size()[2];
            let for_backward = q.requires_grad() || k.requires_grad() || v.requires_grad();
            Tensor::internal_scaled_dot_product_efficient_attention(
                q,
                k,
                v,
                Some(mask.expand([b, heads, rows, keys], false)),
                for_backward,
                0.0,
                false,
                None,
            )
            .0
        }
        _ => Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, None, false),
    }
}

/// Rotary embedding as HF computes it, x cos + rotate_half(x) sin, of the whole fused Q/K/V
/// output x [B, T, heads + 2 kv_heads, head_dim] (contiguous): `Rotary` holds cos and sin for
/// every head, 1 and 0 for the value heads, which come out unchanged (exactly: v 1 + 0). The
/// sign of rotate_half is folded into the sin table, so (x2, x1) is x times a permutation
/// matrix: one matmul whose products are exact (one 1 per column). Three kernels on contiguous
/// tensors of one shape: on an H200 (kernel trace of a 7B step at 4,224 tokens) the former cat
/// of the halves and the multiplies broadcast over the heads of a strided Q/K view ran strided
/// kernels, about 0.2 ms per layer forward and as much backward.
fn apply_rotary(x: &Tensor, rotary: &Rotary) -> Tensor {
    let swapped = x.matmul(&rotary.swap_halves);
    (x * &rotary.cos).addcmul(&swapped, &rotary.sin_signed)
}

/// Rotary tables of one forward pass, for [`apply_rotary`].
pub(crate) struct Rotary {
    /// [B, T, heads + 2 kv_heads, head_dim]: cos for the query and key heads, 1 for the values.
    cos: Tensor,
    /// The same with sin, rotate_half's sign folded in (-sin on the first half); 0 for values.
    sin_signed: Tensor,
    /// [head_dim, head_dim]: x . swap_halves = (x2, x1).
    swap_halves: Tensor,
}

impl Model {
    pub(crate) fn from_parts(
        config: ModelConfig,
        device: tch::Device,
        kind: Kind,
        embed: Tensor,
        layers: Vec<LayerWeights>,
        final_norm: Tensor,
        lm_head: Option<Tensor>,
    ) -> Model {
        let (inv_freq, attention_scaling) = rope::frequencies(
            config.rope_theta,
            &config.rope_scaling,
            config.rope_freq_factors.as_deref(),
            config.head_dim,
            None,
            device,
        );
        Model {
            config,
            device,
            kind,
            embed,
            layers,
            final_norm,
            lm_head,
            inv_freq,
            attention_scaling,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn device(&self) -> tch::Device {
        self.device
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The base weight [out, in] of one projection.
    pub fn projection_weight(&self, layer: usize, proj: Proj) -> &Tensor {
        &self.layers[layer].proj[&proj].weight
    }

    /// A model whose projection weights are `W + f(layer, proj)` where f returns a delta
    /// [out, in]. Tensors are shared with `self` except in a fused group (Q/K/V, Gate/Up) with
    /// a delta, which is rebuilt whole.
    pub fn with_merged_deltas(&self, f: impl Fn(usize, Proj) -> Option<Tensor>) -> Model {
        let _guard = tch::no_grad_guard();
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let proj = l
                    .proj
                    .iter()
                    .map(|(&p, lin)| {
                        let weight = match f(i, p) {
                            Some(d) => &lin.weight + d.to_device(self.device).to_kind(self.kind),
                            None => lin.weight.shallow_clone(),
                        };
                        (
                            p,
                            Linear {
                                weight,
                                bias: lin.bias.as_ref().map(Tensor::shallow_clone),
                            },
                        )
                    })
                    .collect();
                LayerWeights::new(
                    l.input_norm.shallow_clone(),
                    l.post_attention_norm.shallow_clone(),
                    proj,
                    Some(l),
                )
            })
            .collect();
        Model::from_parts(
            self.config.clone(),
            self.device,
            self.kind,
            self.embed.shallow_clone(),
            layers,
            self.final_norm.shallow_clone(),
            self.lm_head.as_ref().map(Tensor::shallow_clone),
        )
    }

    /// Token embeddings [B, T, H] of the ids [B, T].
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        self.embed.embedding_like(input_ids)
    }

    /// Logits of hidden states [B, T, H] (the final norm is applied here).
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let h = rms_norm(hidden, &self.final_norm, self.config.rms_norm_eps);
        h.matmul(&self.lm_head.as_ref().unwrap_or(&self.embed).tr())
    }

    /// Rotary tables for positions [B, T] (see `apply_rotary`), scaled as transformers scales
    /// them (`attention_scaling`). Dynamic rope
    /// recomputes the frequencies from the largest position of the pass, as transformers'
    /// `dynamic_rope_update` does on a model that has not seen a longer pass before (its cached
    /// frequencies otherwise depend on the history of calls; here they depend on the pass only).
    fn rotary(&self, positions: &Tensor) -> Rotary {
        let dynamic;
        let inv_freq = if self.config.rope_scaling.is_dynamic() && positions.numel() > 0 {
            let seq_len = positions.max().int64_value(&[]) + 1;
            dynamic = rope::frequencies(
                self.config.rope_theta,
                &self.config.rope_scaling,
                self.config.rope_freq_factors.as_deref(),
                self.config.head_dim,
                Some(seq_len),
                self.device,
            )
            .0;
            &dynamic
        } else {
            &self.inv_freq
        };
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let half = self.config.head_dim as i64 / 2;
        let (mut cos, mut sin) = (emb.cos(), emb.sin());
        if self.attention_scaling != 1.0 {
            cos *= self.attention_scaling;
            sin *= self.attention_scaling;
        }
        let sin_signed = Tensor::cat(&[-sin.narrow(-1, 0, half), sin.narrow(-1, half, half)], -1);
        let (heads, kv_heads) = (
            self.config.num_attention_heads as i64,
            self.config.num_key_value_heads as i64,
        );
        // [B, T, heads + 2 kv_heads, head_dim]: the query and key heads' tables, then the
        // value heads' identity (cos 1, sin 0).
        let per_head = |table: &Tensor, value_heads: f64| {
            let size = table.size(); // [B, T, head_dim]
            let (b, t, d) = (size[0], size[1], size[2]);
            let rotated = table
                .to_kind(self.kind)
                .unsqueeze(2)
                .expand([b, t, heads + kv_heads, d], false);
            let values = Tensor::full([b, t, kv_heads, d], value_heads, (self.kind, table.device()));
            Tensor::cat(&[&rotated, &values], 2)
        };
        let hd = self.config.head_dim as i64;
        // Column j of the permutation picks (j + half) mod head_dim.
        let source = (Tensor::arange(hd, (Kind::Int64, self.device)) + half).remainder(hd);
        let swap_halves = Tensor::zeros([hd, hd], (self.kind, self.device)).index_put_(
            &[Some(source), Some(Tensor::arange(hd, (Kind::Int64, self.device)))],
            &Tensor::ones([hd], (self.kind, self.device)),
            false,
        );
        Rotary {
            cos: per_head(&cos, 1.0),
            sin_signed: per_head(&sin_signed, 0.0),
            swap_halves,
        }
    }

    /// Attention context prepared once per forward: rotary tables and the mask.
    pub fn attention_context(&self, attention_mask: &Tensor, new_tokens: i64) -> AttentionContext {
        let total = attention_mask.size()[1];
        let past = total - new_tokens;
        let mask_l = attention_mask.to_kind(Kind::Int64);
        let positions = (mask_l.cumsum(1, Kind::Int64) - 1)
            .clamp_min(0)
            .narrow(1, past, new_tokens);
        let rotary = self.rotary(&positions);
        // Without a cache, rows whose real tokens form a prefix (no padding, or right padding)
        // need nothing beyond the causal mask: a real query only sees earlier, real keys. Those
        // use the flash kernel's built-in causal mask.
        let prefix_only = past == 0
            && (new_tokens < 2
                || bool::try_from(
                    mask_l
                        .narrow(1, 1, new_tokens - 1)
                        .le_tensor(&mask_l.narrow(1, 0, new_tokens - 1))
                        .all(),
                )
                .unwrap_or(false));
        let mask = if prefix_only {
            None
        } else {
            let q_idx = Tensor::arange_start(past, total, (Kind::Int64, self.device)).view([new_tokens, 1]);
            let k_idx = Tensor::arange(total, (Kind::Int64, self.device)).view([1, total]);
            let causal = k_idx.le_tensor(&q_idx); // [T, total]
            let keys_real = attention_mask.to_kind(Kind::Bool).view([-1, 1, 1, total]);
            // A padding query has no real key before it; letting it see itself keeps the softmax
            // finite (its output is never used).
            let diagonal = k_idx.eq_tensor(&q_idx);
            let allowed = causal.logical_and(&keys_real).logical_or(&diagonal);
            Some(allowed)
        };
        AttentionContext {
            rotary,
            mask,
            segments: None,
            kind: self.kind,
            additive: std::sync::OnceLock::new(),
            grouped: std::sync::OnceLock::new(),
        }
    }

    /// Attention context of a packed (padding-free) pass: one row [1, N] holding the rows of
    /// `packed`'s sequences, each attending causally to its own tokens only and starting at
    /// position 0, so each gets exactly what it would get alone in a padded batch (TRL's
    /// `padding_free`). A sequence that shares a prefix with an earlier one reads that one's
    /// rows for it (see [`PackedSequences`]). The projections and MLPs run on the N packed rows;
    /// only attention lays the sequences out as a right-padded [S, L] batch (see [`Segments`]).
    pub fn packed_attention_context(&self, packed: &PackedSequences) -> AttentionContext {
        let n = packed.positions.len() as i64;
        let positions = Tensor::from_slice(&packed.positions)
            .view([1, n])
            .to_device(self.device);
        let rotary = self.rotary(&positions);
        AttentionContext {
            rotary,
            mask: None,
            segments: (packed.sequences.len() > 1).then(|| Segments::new(packed, self.device)),
            kind: self.kind,
            additive: std::sync::OnceLock::new(),
            grouped: std::sync::OnceLock::new(),
        }
    }

    /// Runs decoder layer `index` on hidden states [B, T, H].
    pub fn layer_forward(
        &self,
        index: usize,
        x: &Tensor,
        ctx: &AttentionContext,
        cache: Option<&mut LayerKv>,
        adapter: Option<&dyn Adapter>,
        train: bool,
    ) -> (Tensor, Option<(Tensor, Tensor)>) {
        let cfg = &self.config;
        let l = &self.layers[index];
        let (b, t) = (x.size()[0], x.size()[1]);
        let (nh, nkv, hd) = (
            cfg.num_attention_heads as i64,
            cfg.num_key_value_heads as i64,
            cfg.head_dim as i64,
        );
        crate::train::profile::op_start(self.device);
        let layer_adapter = adapter.and_then(|a| a.layer(index, x.kind(), train));
        crate::train::profile::op_lap("adapter weights cast", self.device);
        let width = |p: &Proj| l.proj[p].weight.size()[0];
        // A group's fused output with the adapter's update of its members added.
        let adapted = |group: &[Proj], input: &Tensor, base: Tensor| -> Tensor {
            match &layer_adapter {
                Some(a) => {
                    let widths: Vec<i64> = group.iter().map(width).collect();
                    a.add(group, &widths, input, base)
                }
                None => base,
            }
        };
        // The layer works on [B * T, H] rows (only attention needs the batch shape): the
        // projections are then plain matmuls, with no reshapes around each of them.
        let hidden_size = cfg.hidden_size as i64;
        let x = x.reshape([b * t, hidden_size]);
        let h = rms_norm(&x, &l.input_norm, cfg.rms_norm_eps);
        let qkv = adapted(&[Proj::Q, Proj::K, Proj::V], &h, l.qkv.forward(&h));
        crate::train::profile::op_lap("norm, qkv and its LoRA", self.device);
        // Rotary over all heads of the fused output, [B, T, nh + 2 nkv, hd] (the value heads
        // pass unchanged), then the heads by `split`, whose backward is one cat.
        let rotated = apply_rotary(&qkv.view([b, t, nh + 2 * nkv, hd]), &ctx.rotary);
        let q_k_v = rotated.split_with_sizes([nh, nkv, nkv], 2);
        let q = q_k_v[0].transpose(1, 2); // [B, nh, T, hd]
        let k = q_k_v[1].transpose(1, 2); // [B, nkv, T, hd]
        let v = q_k_v[2].transpose(1, 2);
        // Decoding on CUDA reads the cache padded to an aligned length (`DECODE_KEY_MULTIPLE`).
        let (k, v, new_cache, aligned) = match cache {
            Some(layer_kv) => {
                let (k, v) = layer_kv.append(&k, &v);
                let aligned = if t <= 8 && aligns_decode_keys(k.device()) {
                    layer_kv.aligned(DECODE_KEY_MULTIPLE)
                } else {
                    None
                };
                (k, v, None, aligned)
            }
            None => (k.shallow_clone(), v.shallow_clone(), Some((k, v)), None),
        };
        crate::train::profile::op_lap("rotary, split", self.device);
        let group = nh / nkv;
        let attn = match (&ctx.mask, &ctx.segments) {
            (None, Some(seg)) if flash::usable(&q) => {
                // Packed sequences through the variable-length kernel, in their packed rows
                // (module `flash`); the padded layout below if it fails.
                let rows = |x: &Tensor| x.squeeze_dim(0).transpose(0, 1);
                match seg.varlen_attention(&rows(&q), &rows(&k), &rows(&v), flash::varlen_causal) {
                    Some(out) => {
                        crate::train::profile::op_lap("attention: kernel", self.device);
                        out.unsqueeze(0).transpose(1, 2) // [1, nh, N, hd]
                    }
                    None => seg.padded_attention(&q, &k, &v, nh, nkv, hd, self.device),
                }
            }
            (None, Some(seg)) => seg.padded_attention(&q, &k, &v, nh, nkv, hd, self.device),
            (None, None) => causal_attention(&q, &k, &v),
            (Some(_), _) if t <= 8 => {
                // Decoding: a few query rows against a long cache. Grouped-query attention as
                // batched matmuls over [B * kv_heads, group * T, ...] (no key copies); the
                // scale and the additive mask ride in the first matmul.
                let (k, v) = aligned.unwrap_or((k, v));
                let len = k.size()[2];
                let qg = q.reshape([b * nkv, group * t, hd]);
                let scores = ctx.additive_mask(group, nkv, len).baddbmm(
                    &qg,
                    &k.reshape([b * nkv, len, hd]).transpose(1, 2),
                    1.0,
                    1.0 / (hd as f64).sqrt(),
                );
                scores
                    .softmax(-1, q.kind())
                    .bmm(&v.reshape([b * nkv, len, hd]))
                    .view([b, nh, t, hd])
            }
            (Some(_), _) => {
                // Grouped-query attention without copying keys: the `group` query heads that
                // share a kv head become extra query rows of that head, so the masked
                // (memory-efficient) kernel runs on [B, kv_heads, group * T, head_dim].
                let qg = q.reshape([b, nkv, group * t, hd]);
                masked_attention(&qg, &k, &v, &ctx.grouped_mask(group)).reshape([b, nh, t, hd])
            }
        };
        let attn = attn.transpose(1, 2).reshape([b * t, nh * hd]);
        crate::train::profile::op_lap("attention: back to packed rows", self.device);
        let x = adapted(&[Proj::O], &attn, x.addmm(&attn, &l.o_t));
        crate::train::profile::op_lap("o and its LoRA", self.device);

        let h = rms_norm(&x, &l.post_attention_norm, cfg.rms_norm_eps);
        let rows = b * t;
        let gated = if rows >= STACKED_GATE_UP_ROWS {
            // The rows once per member. Training an adapter: a contiguous copy, whose backward
            // adds the two gradients (an expanded view's sums them with a reduction kernel, three
            // times slower on an H200) and which LoRA's dropout draws on without a copy of its
            // own. Otherwise the free expanded view.
            let h_pair = if train && layer_adapter.is_some() {
                Tensor::stack(&[&h, &h], 0)
            } else {
                h.unsqueeze(0).expand([2, rows, hidden_size], false)
            };
            let gate_up = h_pair.bmm(&l.gate_up_t);
            let gate_up = match &l.gate_up_bias {
                Some(bias) => gate_up + bias,
                None => gate_up,
            };
            let gate_up = match &layer_adapter {
                Some(a) => a.add_stacked(&[Proj::Gate, Proj::Up], &h_pair, gate_up),
                None => gate_up,
            };
            let gate_and_up = gate_up.unbind(0);
            gate_and_up[0].silu() * &gate_and_up[1]
        } else {
            let gate_up = adapted(&[Proj::Gate, Proj::Up], &h, l.gate_up.forward(&h));
            let gate_and_up = gate_up.chunk(2, -1);
            gate_and_up[0].silu() * &gate_and_up[1]
        };
        crate::train::profile::op_lap("norm, gate/up and their LoRA, SiLU", self.device);
        let out = adapted(&[Proj::Down], &gated, x.addmm(&gated, &l.down_t));
        crate::train::profile::op_lap("down and its LoRA", self.device);
        (out.view([b, t, hidden_size]), new_cache)
    }

    /// One forward pass over `input_ids` [B, T]. `attention_mask` covers the cached positions
    /// plus the new ones ([B, T_past + T], 1 = real token). With a cache, the new keys and values
    /// are appended to it.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        opts: &ForwardOptions<'_>,
    ) -> ForwardOutput {
        let t = input_ids.size()[1];
        let ctx = self.attention_context(attention_mask, t);
        let mut x = self.embed(input_ids);
        let mut hidden = BTreeMap::new();
        let last_needed = match opts.logits {
            Logits::None => opts.capture_layers.iter().max().map_or(0, |&m| m + 1),
            _ => self.layers.len(),
        };
        for i in 0..last_needed {
            let layer_cache = cache.as_deref_mut().and_then(|c| c.layers.get_mut(i));
            let has_cache_entry = layer_cache.is_some();
            let (out, fresh) = self.layer_forward(i, &x, &ctx, layer_cache, opts.adapter, opts.train);
            if let (Some(c), false, Some((k, v))) = (cache.as_deref_mut(), has_cache_entry, fresh) {
                let reserve = c.reserve;
                c.layers.push(LayerKv::from_new(k, v, reserve));
            }
            x = out;
            if opts.capture_layers.contains(&i) {
                hidden.insert(i, x.shallow_clone());
            }
        }
        let logits = match opts.logits {
            Logits::None => None,
            Logits::All => Some(self.logits(&x)),
            Logits::Last => Some(self.logits(&x.narrow(1, t - 1, 1))),
        };
        ForwardOutput { logits, hidden }
    }
}

/// Rotary tables and the attention mask of one forward pass, shared by all layers.
pub struct AttentionContext {
    rotary: Rotary,
    /// [B, 1, T, total], true = may attend. None: no padding and no cache, use the causal kernel.
    mask: Option<Tensor>,
    /// Packed sequences (B = 1, no cache): how attention lays them out.
    segments: Option<Segments>,
    kind: Kind,
    /// `mask` as 0 / -inf in the model's kind, laid out [B * kv_heads, group * T, total] for
    /// grouped decoding; made once per forward pass (every layer needs the same one).
    additive: std::sync::OnceLock<Tensor>,
    /// `mask` repeated over a kv head's query group and made [`masked_attention`]'s input, [B, 1,
    /// group * T, total]; once per forward pass.
    grouped: std::sync::OnceLock<Tensor>,
}

/// The sequences of a packed pass: for each, the packed rows (indices into the pass's [N]
/// rows) that hold its tokens, in order, and for each packed row its position. Sequences
/// laid back to back each list their own rows; a sequence that starts with the same tokens as
/// an earlier one (rows of one optimizer step under one long system prompt) lists that one's
/// rows for the shared prefix and its own rows after it, so the prefix's projections and MLPs
/// run once. Every sequence's first listed row must come before its own rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedSequences {
    pub sequences: Vec<Vec<i64>>,
    pub positions: Vec<i64>,
}

impl PackedSequences {
    /// Sequences of `lengths` rows laid back to back, none sharing a row. Lengths must be
    /// positive.
    pub fn back_to_back(lengths: &[i64]) -> PackedSequences {
        let mut sequences = Vec::with_capacity(lengths.len());
        let mut start = 0;
        for &len in lengths {
            sequences.push((start..start + len).collect());
            start += len;
        }
        PackedSequences {
            sequences,
            positions: lengths.iter().flat_map(|&n| 0..n).collect(),
        }
    }
}

/// How a packed pass's sequences map onto a right-padded batch for attention: S sequences, each
/// padded to `width` (the longest, rounded up to 8), and the moves between the two layouts.
/// The real rows are copied into a zero-filled batch (`to_padded`), so a padding slot reads no
/// packed row: a gather that filled the padding slots from one row sent every padding slot's
/// (zero) gradient into that row by atomic adds in the backward, thousands onto the same
/// addresses per pass, which made the padding-free backward slower than a padded one. A row
/// that several sequences read (a shared prefix) is copied into each of them; its output is
/// taken from the first, and the backward adds up the gradients its keys and values get from
/// all of them.
pub struct Segments {
    count: i64,
    width: i64,
    /// [M]: the padded slots that hold a real row (M = N plus the rows of shared prefixes).
    slots: Tensor,
    /// [M]: the packed row each of `slots` holds; None when that is row i for slot i (no
    /// shared prefix: the sequences' rows in packed order).
    slot_rows: Option<Tensor>,
    /// [N]: for each packed row, the padded slot its output comes from.
    packed_from_padded: Tensor,
    /// int32 [S + 1]: where each sequence starts among the M slots listed sequence after
    /// sequence (the variable-length kernel's layout), and M at the end.
    cu_seqlens: Tensor,
    /// The longest sequence, in rows.
    longest: i64,
    /// [N]: for each packed row, the first of the M listed slots that holds it; None when slot i
    /// holds row i (`slot_rows` is None).
    packed_from_listed: Option<Tensor>,
}

impl Segments {
    fn new(packed: &PackedSequences, device: tch::Device) -> Segments {
        let longest = packed
            .sequences
            .iter()
            .map(|s| s.len() as i64)
            .max()
            .unwrap_or(1)
            .max(1);
        let width = (longest + 7) / 8 * 8;
        let count = packed.sequences.len() as i64;
        let mut slots = Vec::with_capacity(packed.positions.len());
        let mut slot_rows = Vec::with_capacity(packed.positions.len());
        let mut from_padded: Vec<Option<i64>> = vec![None; packed.positions.len()];
        let mut from_listed: Vec<Option<i64>> = vec![None; packed.positions.len()];
        let mut cu_seqlens = Vec::with_capacity(packed.sequences.len() + 1);
        cu_seqlens.push(0i32);
        for (s, rows) in packed.sequences.iter().enumerate() {
            for (j, &row) in rows.iter().enumerate() {
                let slot = s as i64 * width + j as i64;
                from_listed[row as usize].get_or_insert(slot_rows.len() as i64);
                slots.push(slot);
                slot_rows.push(row);
                from_padded[row as usize].get_or_insert(slot);
            }
            cu_seqlens.push(slot_rows.len() as i32);
        }
        let in_order = slot_rows.iter().enumerate().all(|(i, &row)| row == i as i64);
        let first =
            |from: Vec<Option<i64>>| -> Vec<i64> { from.into_iter().map(|s| s.unwrap_or(0)).collect() };
        Segments {
            count,
            width,
            slots: Tensor::from_slice(&slots).to_device(device),
            slot_rows: (!in_order).then(|| Tensor::from_slice(&slot_rows).to_device(device)),
            packed_from_padded: Tensor::from_slice(&first(from_padded)).to_device(device),
            cu_seqlens: Tensor::from_slice(&cu_seqlens).to_device(device),
            longest,
            packed_from_listed: (!in_order)
                .then(|| Tensor::from_slice(&first(from_listed)).to_device(device)),
        }
    }

    /// Causal attention of each sequence over its own rows, q [1, heads, N, head_dim] and k, v
    /// [1, kv_heads, N, head_dim], output [1, heads, N, head_dim]: laid out as a right-padded
    /// [S, heads, width, head_dim] batch for the causal kernel (a real query only sees its own,
    /// earlier keys), and the real rows gathered back. A constant number of kernels, whatever S
    /// is.
    #[allow(clippy::too_many_arguments)]
    fn padded_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: i64,
        kv_heads: i64,
        head_dim: i64,
        device: tch::Device,
    ) -> Tensor {
        let to_padded =
            |x: &Tensor, heads: i64| self.to_padded(&x.squeeze_dim(0).transpose(0, 1), heads, head_dim);
        let (qp, kp, vp) = (
            to_padded(q, heads),
            to_padded(k, kv_heads),
            to_padded(v, kv_heads),
        );
        crate::train::profile::op_lap("attention: to padded", device);
        let out = causal_attention(&qp, &kp, &vp);
        crate::train::profile::op_lap("attention: kernel", device);
        out.transpose(1, 2)
            .reshape([self.count * self.width, heads, head_dim])
            .index_select(0, &self.packed_from_padded)
            .unsqueeze(0)
            .transpose(1, 2)
    }

    /// Causal attention of each sequence over its own rows, q [N, heads, head_dim] and k, v [N,
    /// kv_heads, head_dim] in packed row order, output [N, heads, head_dim]; `kernel` is the
    /// variable-length kernel's contract ([`flash::varlen_causal`]: the listed slots, the
    /// cumulative lengths, the longest). None when the kernel failed.
    fn varlen_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        kernel: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor, i64) -> Option<Tensor>,
    ) -> Option<Tensor> {
        let listed = |x: &Tensor| match &self.slot_rows {
            Some(rows) => x.index_select(0, rows),
            None => x.shallow_clone(),
        };
        let out = kernel(&listed(q), &listed(k), &listed(v), &self.cu_seqlens, self.longest)?;
        Some(match &self.packed_from_listed {
            Some(from) => out.index_select(0, from),
            None => out,
        })
    }

    /// Packed rows `x` [N, heads, head_dim] as the right-padded batch [S, heads, width,
    /// head_dim], padding slots zero.
    fn to_padded(&self, x: &Tensor, heads: i64, head_dim: i64) -> Tensor {
        let source = match &self.slot_rows {
            Some(rows) => x.index_select(0, rows),
            None => x.shallow_clone(),
        };
        Tensor::zeros([self.count * self.width, heads, head_dim], (x.kind(), x.device()))
            .index_copy(0, &self.slots, &source)
            .view([self.count, self.width, heads, head_dim])
            .transpose(1, 2)
    }
}

impl AttentionContext {
    fn grouped_mask(&self, group: i64) -> Tensor {
        self.grouped
            .get_or_init(|| {
                let allowed = self.mask.as_ref().map(Tensor::shallow_clone).unwrap_or_default();
                let allowed = if group > 1 {
                    allowed.repeat([1, 1, group, 1])
                } else {
                    allowed
                };
                attention_mask_for(&allowed, self.kind)
            })
            .shallow_clone()
    }

    /// The additive mask over `keys` key positions: the mask's own, then (when `keys` is
    /// larger) -inf columns for the aligned cache's zero positions (`LayerKv::aligned`).
    fn additive_mask(&self, group: i64, kv_heads: i64, keys: i64) -> Tensor {
        let make = || {
            let allowed = self.mask.as_ref().map(Tensor::shallow_clone).unwrap_or_default();
            let size = allowed.size(); // [B, 1, T, total]
            let (b, t, total) = (size[0], size[2], size[3]);
            let additive = Tensor::full([b, 1, t, keys], f64::NEG_INFINITY, (self.kind, allowed.device()));
            let _ = additive.narrow(3, 0, total).masked_fill_(&allowed, 0.0);
            additive
                .view([b, 1, 1, t, keys])
                .expand([b, kv_heads, group, t, keys], false)
                .reshape([b * kv_heads, group * t, keys])
        };
        let mask = self.additive.get_or_init(make);
        // Every layer of a pass reads the same key count; another count gets its own mask.
        if mask.size().last() == Some(&keys) {
            mask.shallow_clone()
        } else {
            make()
        }
    }
}

trait EmbeddingLike {
    fn embedding_like(&self, ids: &Tensor) -> Tensor;
}

impl EmbeddingLike for Tensor {
    fn embedding_like(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(self, ids, -1, false, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// softmax(q k^T / sqrt(d), masked) v written out in f64 on the CPU.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, allowed: &Tensor) -> Tensor {
        let [q, k, v] = [q, k, v].map(|x| x.to_device(tch::Device::Cpu).to_kind(Kind::Double));
        let allowed = allowed.to_device(tch::Device::Cpu);
        let d = q.size()[3] as f64;
        let scores = q.matmul(&k.transpose(2, 3)) / d.sqrt();
        let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        scores.softmax(-1, Kind::Double).matmul(&v)
    }

    /// q [2, 4, 21, 8] over 37 keys (not a multiple of 16): the second row left-padded by 5
    /// keys, causal after a 16-key cache, a padding query seeing only itself.
    fn inputs() -> (Tensor, Tensor, Tensor, Tensor) {
        tch::manual_seed(3);
        let q = Tensor::randn([2, 4, 21, 8], (Kind::Float, tch::Device::Cpu));
        let k = Tensor::randn([2, 4, 37, 8], (Kind::Float, tch::Device::Cpu));
        let v = Tensor::randn([2, 4, 37, 8], (Kind::Float, tch::Device::Cpu));
        let q_pos = Tensor::arange_start(16, 37, (Kind::Int64, tch::Device::Cpu)).view([1, 1, 21, 1]);
        let k_pos = Tensor::arange(37, (Kind::Int64, tch::Device::Cpu)).view([1, 1, 1, 37]);
        let causal = k_pos.le_tensor(&q_pos);
        let real = Tensor::from_slice(&[0i64, 5])
            .view([2, 1, 1, 1])
            .le_tensor(&k_pos);
        let allowed = causal.logical_and(&real).logical_or(&k_pos.eq_tensor(&q_pos));
        (q, k, v, allowed)
    }

    fn check(device: tch::Device, kind: Kind, tolerance: f64) {
        let (q, k, v, allowed) = inputs();
        let on = |x: &Tensor| x.to_device(device).to_kind(kind);
        let mask = attention_mask_for(&allowed.to_device(device), kind);
        let masked = masked_attention(&on(&q), &on(&k), &on(&v), &mask);
        let expected = reference(&q, &k, &v, &allowed);
        let worst = (masked.to_device(tch::Device::Cpu).to_kind(Kind::Double) - &expected)
            .abs()
            .max()
            .double_value(&[]);
        assert!(worst < tolerance, "{device:?} masked: worst difference {worst}");
        // Causal over 4 query heads and 2 kv heads (grouped: query head h reads kv head h / 2).
        let (kc, vc) = (
            k.narrow(2, 16, 21).narrow(1, 0, 2),
            v.narrow(2, 16, 21).narrow(1, 0, 2),
        );
        let got = causal_attention(&on(&q), &on(&kc), &on(&vc));
        let repeat = |x: &Tensor| x.repeat_interleave_self_int(2, 1, None);
        let square = Tensor::ones([21, 21], (Kind::Bool, tch::Device::Cpu))
            .tril(0)
            .view([1, 1, 21, 21]);
        let expected = reference(&q, &repeat(&kc), &repeat(&vc), &square);
        let worst = (got.to_device(tch::Device::Cpu).to_kind(Kind::Double) - expected)
            .abs()
            .max()
            .double_value(&[]);
        assert!(worst < tolerance, "{device:?} causal: worst difference {worst}");
    }

    /// The attention kernels against the formula: on the CPU always; on CUDA too where this
    /// machine has it (`bench/gpu_parity.sh` runs this test on the GPU machine), where pspace
    /// calls the memory-efficient kernel itself with its own bias layout.
    #[test]
    fn masked_and_causal_attention_match_the_written_out_formula() {
        // CUDA first: libtorch settles whether CUDA exists at its first call that asks (the
        // CPU check's manual_seed does), so the backend must be loaded before it. Run alone
        // (bench/gpu_parity.sh does): another test's first call in this process has the same
        // effect.
        let cuda = crate::device::Device::Cuda(0).activate();
        check(tch::Device::Cpu, Kind::Float, 1e-5);
        match cuda {
            Ok(cuda) => {
                check(cuda, Kind::Float, 1e-3);
                check(cuda, Kind::BFloat16, 3e-2);
                eprintln!("checked on {cuda:?}");
            }
            Err(e) => eprintln!("the CUDA kernels not checked: {e}"),
        }
    }

    /// Three sequences over 17 packed rows: the second shares the first's 3-row prefix (it lists
    /// rows 0..3, then its own), so 20 slots are listed for 17 rows.
    fn shared_prefix() -> PackedSequences {
        PackedSequences {
            sequences: vec![
                (0..6).collect(),
                [0, 1, 2, 6, 7, 8, 9].to_vec(),
                (10..17).collect(),
            ],
            positions: [(0..6).collect::<Vec<i64>>(), (3..7).collect(), (0..7).collect()].concat(),
        }
    }

    /// The variable-length contract written out: SDPA over each sequence's slots in turn.
    fn per_sequence(q: &Tensor, k: &Tensor, v: &Tensor, cu: &Tensor, _longest: i64) -> Option<Tensor> {
        let cu = Vec::<i32>::try_from(cu.to_device(tch::Device::Cpu)).ok()?;
        let batch = |x: &Tensor, a: i64, n: i64| x.narrow(0, a, n).transpose(0, 1).unsqueeze(0);
        let outs: Vec<Tensor> = cu
            .windows(2)
            .map(|w| {
                let (a, n) = (w[0] as i64, (w[1] - w[0]) as i64);
                Tensor::scaled_dot_product_attention(
                    &batch(q, a, n),
                    &batch(k, a, n),
                    &batch(v, a, n),
                    None::<Tensor>,
                    0.0,
                    true,
                    None,
                    true,
                )
                .squeeze_dim(0)
                .transpose(0, 1)
            })
            .collect();
        Some(Tensor::cat(&outs, 0))
    }

    /// q [1, 4, 17, 8], k and v [1, 2, 17, 8] (grouped) on `device` in `kind`: fixed values
    /// (not from the process-wide generator, which tests running in parallel share).
    fn packed_qkv(device: tch::Device, kind: Kind) -> [Tensor; 3] {
        [(4, 0.7), (2, 1.3), (2, 2.9)].map(|(heads, phase)| {
            ((Tensor::arange(heads * 17 * 8, (Kind::Float, tch::Device::Cpu)) * 0.37 + phase).sin() * 2.0)
                .view([1, heads, 17, 8])
                .to_kind(kind)
                .to_device(device)
        })
    }

    /// [`flash::varlen_causal`]'s signature.
    type VarlenKernel = dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor, i64) -> Option<Tensor>;

    /// The attention of [`packed_qkv`]'s inputs and its gradients (fresh leaves each call).
    fn attention_and_gradients(
        seg: &Segments,
        device: tch::Device,
        kind: Kind,
        varlen: Option<&VarlenKernel>,
    ) -> Vec<Tensor> {
        let qkv = packed_qkv(device, kind).map(|x| x.set_requires_grad(true));
        let [q, k, v] = &qkv;
        let out = match varlen {
            Some(kernel) => {
                let rows = |x: &Tensor| x.squeeze_dim(0).transpose(0, 1);
                seg.varlen_attention(&rows(q), &rows(k), &rows(v), kernel)
                    .expect("kernel ran")
                    .unsqueeze(0)
                    .transpose(1, 2)
            }
            None => seg.padded_attention(q, k, v, 4, 2, 8, q.device()),
        };
        // A weighting that differs per row and head, so every gradient entry matters.
        let weight = Tensor::arange(out.numel() as i64, (out.kind(), out.device()))
            .view(out.size().as_slice())
            .sin();
        (&out * weight).sum(Kind::Float).backward();
        let mut all = vec![out.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu)];
        all.extend(
            qkv.iter()
                .map(|x| x.grad().to_kind(Kind::Float).to_device(tch::Device::Cpu)),
        );
        all
    }

    fn assert_close(got: &[Tensor], expected: &[Tensor], tolerance: f64, what: &str) {
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            let worst = (g - e).abs().max().double_value(&[]);
            let scale = 1.0 + e.abs().max().double_value(&[]);
            assert!(
                worst < tolerance * scale,
                "{what}: tensor {i} (output, dq, dk, dv) differs by {worst} (largest value {})",
                scale - 1.0
            );
        }
    }

    /// The variable-length layout (listed slots, cumulative lengths, outputs back to packed rows,
    /// shared prefixes included) gives the padded layout's attention and gradients, with the
    /// contract's kernel written out on the CPU.
    #[test]
    fn varlen_layout_gives_the_padded_layout_s_attention_and_gradients() {
        for packed in [shared_prefix(), PackedSequences::back_to_back(&[6, 4, 7])] {
            let seg = Segments::new(&packed, tch::Device::Cpu);
            let padded = attention_and_gradients(&seg, tch::Device::Cpu, Kind::Float, None);
            let varlen = attention_and_gradients(&seg, tch::Device::Cpu, Kind::Float, Some(&per_sequence));
            let what = format!("cpu, written-out varlen kernel, {:?}", packed.sequences);
            assert_close(&varlen, &padded, 1e-5, &what);
        }
    }

    /// FlashAttention-2's variable-length kernel against the padded memory-efficient kernel, bf16
    /// on CUDA where this machine has it (`bench/gpu_parity.sh` runs this test alone on the GPU
    /// machine: see the note on CUDA in the test above); on a CPU-only machine there is nothing
    /// to run.
    #[test]
    fn flash_varlen_attention_matches_the_padded_kernel_on_cuda() {
        let cuda = match crate::device::Device::Cuda(0).activate() {
            Ok(cuda) => cuda,
            Err(e) => {
                eprintln!("FlashAttention-2 not checked: {e}");
                return;
            }
        };
        for packed in [shared_prefix(), PackedSequences::back_to_back(&[6, 4, 7])] {
            let seg = Segments::new(&packed, cuda);
            let probe = Tensor::zeros([1, 4, 8], (Kind::BFloat16, cuda));
            assert!(
                flash::usable(&probe),
                "the kernel was switched off (PSPACE_ATTENTION)"
            );
            let padded = attention_and_gradients(&seg, cuda, Kind::BFloat16, None);
            let flash = attention_and_gradients(&seg, cuda, Kind::BFloat16, Some(&flash::varlen_causal));
            assert_close(&flash, &padded, 3e-2, "cuda bf16, FlashAttention-2 varlen");
        }
        eprintln!("FlashAttention-2 varlen checked on {cuda:?}");
    }
}
