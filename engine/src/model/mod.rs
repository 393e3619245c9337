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
mod load;

pub use adapter::{Adapter, Proj};
pub use config::{Architecture, ModelConfig};
pub use load::LoadError;

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
    /// A cache that keeps room for `reserve` more positions after its first fill.
    pub fn with_reserve(reserve: i64) -> KvCache {
        KvCache {
            layers: Vec::new(),
            reserve,
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
    pub proj: BTreeMap<Proj, Linear>,
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
    inv_freq: Tensor,
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

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(&[-x2, x1], 3)
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
        let hd = config.head_dim as i64;
        // As HF computes it, in f32: 1 / theta^(2i / d).
        let exponents =
            Tensor::arange_start_step(0, hd, 2, (Kind::Int64, device)).to_kind(Kind::Float) / hd as f64;
        let inv_freq = Tensor::pow_scalar(config.rope_theta as f32 as f64, &exponents).reciprocal();
        Model {
            config,
            device,
            kind,
            embed,
            layers,
            final_norm,
            lm_head,
            inv_freq,
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
    /// [out, in]; every untouched tensor is shared with `self`.
    pub fn with_merged_deltas(&self, f: impl Fn(usize, Proj) -> Option<Tensor>) -> Model {
        let _guard = tch::no_grad_guard();
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerWeights {
                input_norm: l.input_norm.shallow_clone(),
                post_attention_norm: l.post_attention_norm.shallow_clone(),
                proj: l
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
                    .collect(),
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

    /// Rotary cos/sin [B, 1, T, head_dim] for positions [B, T].
    fn rotary(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (
            emb.cos().to_kind(self.kind).unsqueeze(1),
            emb.sin().to_kind(self.kind).unsqueeze(1),
        )
    }

    /// Attention context prepared once per forward: rotary tables and the mask.
    pub fn attention_context(&self, attention_mask: &Tensor, new_tokens: i64) -> AttentionContext {
        let total = attention_mask.size()[1];
        let past = total - new_tokens;
        let mask_l = attention_mask.to_kind(Kind::Int64);
        let positions = (mask_l.cumsum(1, Kind::Int64) - 1)
            .clamp_min(0)
            .narrow(1, past, new_tokens);
        let (cos, sin) = self.rotary(&positions);
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
            cos,
            sin,
            mask,
            blocked: std::sync::OnceLock::new(),
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
        let project = |p: Proj, input: &Tensor| {
            let y = l.proj[&p].forward(input);
            match adapter.and_then(|a| a.delta(index, p, input, train)) {
                Some(d) => y + d,
                None => y,
            }
        };
        let h = rms_norm(x, &l.input_norm, cfg.rms_norm_eps);
        let q = project(Proj::Q, &h).view([b, t, nh, hd]).transpose(1, 2);
        let k = project(Proj::K, &h).view([b, t, nkv, hd]).transpose(1, 2);
        let v = project(Proj::V, &h).view([b, t, nkv, hd]).transpose(1, 2);
        let q = &q * &ctx.cos + rotate_half(&q) * &ctx.sin;
        let k = &k * &ctx.cos + rotate_half(&k) * &ctx.sin;
        let (k, v, new_cache) = match cache {
            Some(layer_kv) => {
                let (k, v) = layer_kv.append(&k, &v);
                (k, v, None)
            }
            None => (k.shallow_clone(), v.shallow_clone(), Some((k, v))),
        };
        let attn = match &ctx.mask {
            None => {
                Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, nkv != nh)
            }
            Some(_) if t <= 8 => {
                // Decoding: a few query rows against a long cache. Grouped-query attention as two
                // batched matmuls over [B, kv_heads, group * T, ...], no key copies, few launches.
                let group = nh / nkv;
                let qg = q.reshape([b, nkv, group * t, hd]);
                let blocked = ctx.blocked_for_groups(group);
                let scores = qg.matmul(&k.transpose(-2, -1)) * (1.0 / (hd as f64).sqrt());
                let probs = scores
                    .masked_fill(&blocked, f64::NEG_INFINITY)
                    .softmax(-1, Kind::Float)
                    .to_kind(q.kind());
                probs.matmul(&v).reshape([b, nh, t, hd])
            }
            Some(mask) => {
                // Grouped-query attention without copying keys: the `group` query heads that
                // share a kv head become extra query rows of that head, so the masked
                // (memory-efficient) kernel runs on [B, kv_heads, group * T, head_dim].
                let group = nh / nkv;
                let qg = q.reshape([b, nkv, group * t, hd]);
                let mask = if group > 1 {
                    mask.repeat([1, 1, group, 1])
                } else {
                    mask.shallow_clone()
                };
                let out =
                    Tensor::scaled_dot_product_attention(&qg, &k, &v, Some(&mask), 0.0, false, None, false);
                out.reshape([b, nh, t, hd])
            }
        };
        let attn = attn.transpose(1, 2).reshape([b, t, nh * hd]);
        let x = x + project(Proj::O, &attn);
        let h = rms_norm(&x, &l.post_attention_norm, cfg.rms_norm_eps);
        let gated = project(Proj::Gate, &h).silu() * project(Proj::Up, &h);
        let out = &x + project(Proj::Down, &gated);
        (out, new_cache)
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
    cos: Tensor,
    sin: Tensor,
    /// None: no padding and no cache, use the causal kernel.
    mask: Option<Tensor>,
    /// The complement of `mask` repeated for grouped query rows, made once per forward pass
    /// (every layer needs the same one).
    blocked: std::sync::OnceLock<(i64, Tensor)>,
}

impl AttentionContext {
    fn blocked_for_groups(&self, group: i64) -> Tensor {
        let (g, t) = self.blocked.get_or_init(|| {
            let mask = self.mask.as_ref().map(Tensor::logical_not).unwrap_or_default();
            let blocked = if group > 1 {
                mask.repeat([1, 1, group, 1])
            } else {
                mask
            };
            (group, blocked)
        });
        debug_assert_eq!(*g, group);
        t.shallow_clone()
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
