//! LoRA adapters as PEFT defines them: for every targeted projection of every decoder layer a
//! pair A [r, in], B [out, r] whose product, scaled by alpha/r (or alpha/sqrt(r) with rsLoRA),
//! is added to the frozen base weight. A starts Kaiming-uniform (a = sqrt(5)), B at zero, so a
//! fresh adapter leaves the model unchanged. Dropout acts on the adapter's input only.
//!
//! The trainable tensors are kept in f32 whatever the model computes in (they are the optimizer's
//! master copy); the forward casts them to the activations' kind so that the frozen, half
//! precision activations are never copied into f32. All of them live in one flat buffer, so the
//! optimizer updates the whole adapter with a handful of kernels (tch has no multi-tensor
//! `_foreach` ops). The autograd leaves are one view per decoder layer: a forward pass casts
//! and splits a layer's slice once, and the fused projection groups of the model (Q/K/V,
//! Gate/Up) take their adapters' updates in one batched matmul and one block-diagonal matmul,
//! with one dropout kernel for the group, instead of a dozen small kernels per projection: the
//! training step on a 7B model launches tens of thousands of them.

use crate::model::{add_stacked_one_by_one, Adapter, LayerAdapter, Model, Proj};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// The shape of an adapter: which projections it targets and how its update is scaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Proj>,
    /// Scale alpha/sqrt(r) instead of alpha/r.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// The factor applied to `x A^T B^T`.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("LoRA rank must be at least 1, found {found}")]
    BadRank { found: i64 },
    #[error("LoRA dropout must lie in [0, 1), found {found}")]
    BadDropout { found: f64 },
    #[error("LoRA targets no projection: expected at least one of q,k,v,o,gate,up,down")]
    NoTargets,
    #[error(
        "layer {layer} {proj}: expected lora_A [{rank}, {inputs}] and lora_B [{outputs}, {rank}], found A {found_a:?} and B {found_b:?}"
    )]
    Shape {
        layer: usize,
        proj: &'static str,
        rank: i64,
        inputs: i64,
        outputs: i64,
        found_a: Vec<i64>,
        found_b: Vec<i64>,
    },
    #[error("adapter names decoder layer {layer} but the model has {layers} layers")]
    NoSuchLayer { layer: usize, layers: usize },
}

/// One adapted projection: delta W = scaling * B A.
pub struct LoraPair {
    /// [r, in]
    pub a: Tensor,
    /// [out, r]
    pub b: Tensor,
}

/// How training-mode dropout draws its masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropoutMode {
    /// A fresh mask every call (libtorch's fused dropout).
    Fresh,
    /// Fresh masks, kept per (layer, projection) for a later `Replay`.
    Record,
    /// The masks kept by the last `Record` (activation recomputation must see the same masks as
    /// the first pass; reseeding the global generator would not be safe while other threads
    /// draw from it).
    Replay,
}

pub struct Lora {
    config: LoraConfig,
    scaling: f64,
    /// Per decoder layer, the adapted projections.
    layers: Vec<BTreeMap<Proj, LoraPair>>,
    /// Every A and B flattened: layer by layer, the layer's A matrices in `Proj` order, then its
    /// B matrices in `Proj` order. The pairs view it. The A matrices of projections that read
    /// the same input and are neighbours in `Proj` order (Q, K, V; Gate, Up) are thus one
    /// contiguous [k r, in] block: the model's fused groups take them without a copy.
    flat: Tensor,
    /// Per decoder layer, its slice of `flat`: the autograd leaves, where gradients gather.
    leaves: Vec<Tensor>,
    /// Per decoder layer, where its A and B matrices lie in its leaf.
    layouts: Vec<LayerLayout>,
    dropout_mode: std::sync::Mutex<DropoutMode>,
    /// (layer, first projection of the group) -> positions dropped, kept by
    /// `DropoutMode::Record`.
    dropout_masks: std::sync::Mutex<BTreeMap<(usize, Proj), Tensor>>,
}

// SAFETY: the tensors are reference-counted libtorch handles. During a forward pass they are only
// read; the optimizer updates them in place between passes, never concurrently with one.
unsafe impl Sync for Lora {}
unsafe impl Send for Lora {}

/// Where one layer's adapter matrices lie inside its leaf: [A_1 .. A_k | B_1 .. B_k].
struct LayerLayout {
    /// The adapted projections, in `Proj` order.
    projs: Vec<Proj>,
    /// [r, in] of each A and [out, r] of each B.
    a_shapes: Vec<[i64; 2]>,
    b_shapes: Vec<[i64; 2]>,
    /// Offset of each A inside the A region (which starts the leaf), and of each B inside the
    /// B region (which follows it).
    a_offsets: Vec<i64>,
    b_offsets: Vec<i64>,
    a_len: i64,
    b_len: i64,
}

impl LayerLayout {
    fn new(pairs: &BTreeMap<Proj, LoraPair>) -> LayerLayout {
        let shape = |t: &Tensor| -> [i64; 2] {
            let s = t.size();
            [s[0], s[1]]
        };
        let a_shapes: Vec<[i64; 2]> = pairs.values().map(|p| shape(&p.a)).collect();
        let b_shapes: Vec<[i64; 2]> = pairs.values().map(|p| shape(&p.b)).collect();
        let offsets = |shapes: &[[i64; 2]]| -> (Vec<i64>, i64) {
            let mut offsets = Vec::with_capacity(shapes.len());
            let mut len = 0;
            for [rows, cols] in shapes {
                offsets.push(len);
                len += rows * cols;
            }
            (offsets, len)
        };
        let (a_offsets, a_len) = offsets(&a_shapes);
        let (b_offsets, b_len) = offsets(&b_shapes);
        LayerLayout {
            projs: pairs.keys().copied().collect(),
            a_shapes,
            b_shapes,
            a_offsets,
            b_offsets,
            a_len,
            b_len,
        }
    }
}

fn validate(config: &LoraConfig) -> Result<(), LoraError> {
    if config.rank < 1 {
        return Err(LoraError::BadRank { found: config.rank });
    }
    if !(0.0..1.0).contains(&config.dropout) {
        return Err(LoraError::BadDropout {
            found: config.dropout,
        });
    }
    if config.targets.is_empty() {
        return Err(LoraError::NoTargets);
    }
    Ok(())
}

impl Lora {
    /// A fresh adapter for `model`: A ~ U(-1/sqrt(in), 1/sqrt(in)) (what
    /// `kaiming_uniform_(a=sqrt(5))` draws for a [r, in] weight), B = 0. The draws come from
    /// ChaCha8 seeded with `seed`, layer by layer and projection by projection in `Proj` order,
    /// so an adapter's start does not depend on libtorch's global generator.
    pub fn init(model: &Model, config: LoraConfig, seed: u64) -> Result<Lora, LoraError> {
        validate(&config)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let device = model.device();
        let mut targets = config.targets.clone();
        targets.sort();
        targets.dedup();
        let layers = (0..model.num_layers())
            .map(|layer| {
                targets
                    .iter()
                    .map(|&proj| {
                        let size = model.projection_weight(layer, proj).size();
                        let (outputs, inputs) = (size[0], size[1]);
                        let bound = 1.0 / (inputs as f64).sqrt();
                        let values: Vec<f32> = (0..config.rank * inputs)
                            .map(|_| rng.gen_range(-bound..bound) as f32)
                            .collect();
                        let a = Tensor::from_slice(&values)
                            .view([config.rank, inputs])
                            .to_device(device);
                        let b = Tensor::zeros([outputs, config.rank], (Kind::Float, device));
                        (proj, LoraPair { a, b })
                    })
                    .collect()
            })
            .collect();
        let mut config = config;
        config.targets = targets;
        Ok(Lora::assemble(config, layers))
    }

    /// An adapter from given tensors (loaded from a file), checked against the model's shapes.
    pub fn from_pairs(
        model: &Model,
        config: LoraConfig,
        pairs: BTreeMap<(usize, Proj), LoraPair>,
    ) -> Result<Lora, LoraError> {
        validate(&config)?;
        let device = model.device();
        let mut layers: Vec<BTreeMap<Proj, LoraPair>> =
            (0..model.num_layers()).map(|_| BTreeMap::new()).collect();
        for ((layer, proj), pair) in pairs {
            if layer >= model.num_layers() {
                return Err(LoraError::NoSuchLayer {
                    layer,
                    layers: model.num_layers(),
                });
            }
            let size = model.projection_weight(layer, proj).size();
            let (outputs, inputs) = (size[0], size[1]);
            let (found_a, found_b) = (pair.a.size(), pair.b.size());
            if found_a != [config.rank, inputs] || found_b != [outputs, config.rank] {
                return Err(LoraError::Shape {
                    layer,
                    proj: proj.peft_name(),
                    rank: config.rank,
                    inputs,
                    outputs,
                    found_a,
                    found_b,
                });
            }
            let place = |t: &Tensor| t.to_kind(Kind::Float).to_device(device).detach();
            layers[layer].insert(
                proj,
                LoraPair {
                    a: place(&pair.a),
                    b: place(&pair.b),
                },
            );
        }
        Ok(Lora::assemble(config, layers))
    }

    fn assemble(config: LoraConfig, layers: Vec<BTreeMap<Proj, LoraPair>>) -> Lora {
        let _guard = tch::no_grad_guard();
        let layouts: Vec<LayerLayout> = layers.iter().map(LayerLayout::new).collect();
        let pieces: Vec<Tensor> = layers
            .iter()
            .flat_map(|m| {
                let a = m.values().map(|p| p.a.reshape([-1]));
                let b: Vec<Tensor> = m.values().map(|p| p.b.reshape([-1])).collect();
                a.chain(b)
            })
            .collect();
        let flat = if pieces.is_empty() {
            Tensor::zeros([0], (Kind::Float, tch::Device::Cpu))
        } else {
            Tensor::cat(&pieces, 0)
        };
        let mut start = 0i64;
        let mut leaves = Vec::with_capacity(layers.len());
        let layers = layers
            .into_iter()
            .zip(&layouts)
            .map(|(m, layout)| {
                let leaf = flat.narrow(0, start, layout.a_len + layout.b_len).detach();
                let mut b_offset = layout.a_len;
                let pairs = m
                    .into_keys()
                    .enumerate()
                    .map(|(i, proj)| {
                        let [ra, ca] = layout.a_shapes[i];
                        let [rb, cb] = layout.b_shapes[i];
                        let a = leaf
                            .narrow(0, layout.a_offsets[i], ra * ca)
                            .view([ra, ca])
                            .detach();
                        let b = leaf.narrow(0, b_offset, rb * cb).view([rb, cb]).detach();
                        b_offset += rb * cb;
                        (proj, LoraPair { a, b })
                    })
                    .collect();
                start += layout.a_len + layout.b_len;
                leaves.push(leaf);
                pairs
            })
            .collect();
        Lora {
            scaling: config.scaling(),
            config,
            layers,
            flat,
            leaves,
            layouts,
            dropout_mode: std::sync::Mutex::new(DropoutMode::Fresh),
            dropout_masks: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Sets how dropout draws its masks; switching to `Record` forgets the kept masks.
    pub fn set_dropout_mode(&self, mode: DropoutMode) {
        if mode == DropoutMode::Record {
            self.forget_dropout_masks();
        }
        if let Ok(mut m) = self.dropout_mode.lock() {
            *m = mode;
        }
    }

    pub fn forget_dropout_masks(&self) {
        if let Ok(mut masks) = self.dropout_masks.lock() {
            masks.clear();
        }
    }

    /// Training-mode dropout of `x` [N, in] drawn independently for each of `copies`
    /// projections that read it (PEFT gives every adapted module its own dropout): [copies, N,
    /// in], or [N, in] for one copy. `x` may already be the rows stacked once per copy
    /// ([copies, N, in], contiguous), which is then used as it is. The group is named by its
    /// first projection.
    fn dropout(&self, layer: usize, group: Proj, x: &Tensor, copies: i64) -> Tensor {
        let p = self.config.dropout;
        // The copies are made contiguous first: libtorch's dropout kernels are vectorized only
        // for contiguous input (on the expanded view they took twice as long as copy + dropout).
        // `stack`, not `expand(..).contiguous()`: on an H200 (kernel trace of a 7B step) the
        // expanded copy ran a strided kernel at a third of the bandwidth, and its backward summed
        // the copies' gradients with a reduction kernel where stack's adds them (0.19 against
        // about 0.08 ms per layer for Q/K/V at 4,224 tokens).
        let input = if copies == 1 || x.dim() == 3 {
            x.shallow_clone()
        } else {
            Tensor::stack(&vec![x; copies as usize], 0)
        };
        let mode = self.dropout_mode.lock().map(|m| *m).unwrap_or(DropoutMode::Fresh);
        if mode == DropoutMode::Replay {
            let kept = self
                .dropout_masks
                .lock()
                .ok()
                .and_then(|m| m.get(&(layer, group)).map(Tensor::shallow_clone));
            if let Some(mask) = kept {
                return Tensor::native_dropout_backward(&input, &mask, 1.0 / (1.0 - p));
            }
        }
        let (dropped, mask) = input.native_dropout(p, true);
        if mode != DropoutMode::Fresh {
            if let Ok(mut m) = self.dropout_masks.lock() {
                m.insert((layer, group), mask);
            }
        }
        dropped
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// Every adapted (layer, projection) with its pair, in layer then `Proj` order.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, Proj, &LoraPair)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(layer, m)| m.iter().map(move |(&p, pair)| (layer, p, pair)))
    }

    /// The trainable tensors, A then B of every pair in `pairs()` order.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.pairs()
            .flat_map(|(_, _, pair)| [pair.a.shallow_clone(), pair.b.shallow_clone()])
            .collect()
    }

    /// All adapter weights as one flat f32 tensor sharing their storage (per layer, every A then
    /// every B): writing into it changes the adapter.
    pub fn flat(&self) -> Tensor {
        self.flat.shallow_clone()
    }

    /// The gradients of all adapter weights as one flat tensor in `flat()`'s layout (zeros where
    /// a layer has none).
    pub fn flat_grad(&self) -> Tensor {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self
            .leaves
            .iter()
            .map(|leaf| {
                let g = leaf.grad();
                if g.defined() {
                    g
                } else {
                    leaf.zeros_like()
                }
            })
            .collect();
        if grads.is_empty() {
            return Tensor::zeros([0], (Kind::Float, self.flat.device()));
        }
        Tensor::cat(&grads, 0)
    }

    /// Clears every gradient in place.
    pub fn zero_grad(&self) {
        for leaf in &self.leaves {
            let mut leaf = leaf.shallow_clone();
            leaf.zero_grad();
        }
    }

    /// Switches gradient tracking of the adapter on or off.
    pub fn set_trainable(&self, trainable: bool) {
        for leaf in &self.leaves {
            let _ = leaf.set_requires_grad(trainable);
        }
    }

    /// How many scalars the adapter holds.
    pub fn num_parameters(&self) -> i64 {
        self.parameters()
            .iter()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum()
    }

    /// scaling * B A, [out, in], in f32; None where the projection is not adapted.
    pub fn delta_weight(&self, layer: usize, proj: Proj) -> Option<Tensor> {
        let pair = self.layers.get(layer)?.get(&proj)?;
        let _guard = tch::no_grad_guard();
        Some(pair.b.matmul(&pair.a) * self.scaling)
    }

    /// The model with this adapter folded into its weights (what PEFT's `merge_and_unload`
    /// gives); unadapted weights stay shared with `model`.
    pub fn merged_into(&self, model: &Model) -> Model {
        model.with_merged_deltas(|layer, proj| self.delta_weight(layer, proj))
    }

    /// A copy of the current values in `flat()`'s layout, e.g. the last good state in training.
    pub fn snapshot(&self) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.flat.detach().copy()
    }

    /// Writes values taken by `snapshot` back in place.
    pub fn restore(&self, values: &Tensor) {
        let _guard = tch::no_grad_guard();
        self.flat.detach().copy_(values);
    }
}

impl Adapter for Lora {
    fn layer(&self, layer: usize, kind: Kind, train: bool) -> Option<Box<dyn LayerAdapter + '_>> {
        let layout = self.layouts.get(layer).filter(|l| !l.projs.is_empty())?;
        // One cast and one split per layer (their backward: one cat and one cast into the
        // layer's leaf gradient); the scale is applied to the B matrices here, once.
        let regions = self.leaves[layer]
            .to_kind(kind)
            .split_with_sizes([layout.a_len, layout.b_len], 0);
        let b_sizes: Vec<i64> = layout.b_shapes.iter().map(|[r, c]| r * c).collect();
        let b_region = &regions[1] * self.scaling;
        let b = b_region.split_with_sizes(b_sizes.as_slice(), 0);
        let scaled_b = b
            .iter()
            .zip(&layout.b_shapes)
            .map(|(piece, shape)| piece.view(*shape))
            .collect();
        Some(Box::new(LoraLayer {
            lora: self,
            layer,
            layout,
            dropout: train && self.config.dropout > 0.0,
            a_region: regions[0].shallow_clone(),
            b_region,
            scaled_b,
        }))
    }
}

/// One layer's adapter weights, cast for one forward pass.
struct LoraLayer<'a> {
    lora: &'a Lora,
    layer: usize,
    layout: &'a LayerLayout,
    dropout: bool,
    /// Every A of the layer, flat, in the activations' kind.
    a_region: Tensor,
    /// scaling * every B of the layer, flat, and as [out, r] views (`layout.projs` order).
    b_region: Tensor,
    scaled_b: Vec<Tensor>,
}

impl LoraLayer<'_> {
    /// Where `proj` is in `layout.projs`, if it is adapted.
    fn position(&self, proj: Proj) -> Option<usize> {
        self.layout.projs.iter().position(|&q| q == proj)
    }

    /// Positions in `layout.projs` of the group's adapted members. The model's groups are runs
    /// of neighbouring projections in `Proj` order (Q, K, V; Gate, Up; O; Down), so these are
    /// consecutive and the members' A matrices are one block of the A region.
    fn adapted(&self, group: &[Proj]) -> Vec<usize> {
        let adapted: Vec<usize> = group.iter().filter_map(|&p| self.position(p)).collect();
        debug_assert!(
            adapted.windows(2).all(|w| w[1] == w[0] + 1),
            "group {group:?} is not a run of neighbouring projections"
        );
        adapted
    }
}

impl LayerAdapter for LoraLayer<'_> {
    fn add(&self, group: &[Proj], widths: &[i64], input: &Tensor, base: Tensor) -> Tensor {
        let layout = self.layout;
        let adapted = self.adapted(group);
        let Some(&first) = adapted.first() else {
            return base;
        };
        let [rank, in_dim] = layout.a_shapes[first];
        let copies = adapted.len() as i64;
        // The group's A matrices, [copies * r, in], one view.
        let a_all = self
            .a_region
            .narrow(0, layout.a_offsets[first], copies * rank * in_dim)
            .view([copies * rank, in_dim]);
        // z = [x A_1^T | x A_2^T | ...], [N, copies * r], each member with its own dropout.
        let z = if !self.dropout {
            input.matmul(&a_all.tr())
        } else if copies == 1 {
            self.lora
                .dropout(self.layer, group[0], input, 1)
                .matmul(&a_all.tr())
        } else {
            let n = input.size()[0];
            self.lora
                .dropout(self.layer, group[0], input, copies)
                .bmm(&a_all.view([copies, rank, in_dim]).transpose(1, 2))
                .transpose(0, 1)
                .reshape([n, copies * rank])
        };
        // The scaled B of every member on the block diagonal, [sum widths, copies * r]; a member
        // without an adapter is a block of zero columns, so its outputs stay as they are.
        let b_all = if group.len() == 1 {
            self.scaled_b[first].shallow_clone()
        } else {
            let blocks: Vec<Tensor> = group
                .iter()
                .zip(widths)
                .map(|(&p, &w)| match self.position(p) {
                    Some(i) => self.scaled_b[i].shallow_clone(),
                    None => Tensor::zeros([w, 0], (self.a_region.kind(), self.a_region.device())),
                })
                .collect();
            Tensor::block_diag(&blocks)
        };
        // In place: the out-of-place form copies `base` into a new tensor before the matmul adds
        // to it, a full pass over the group's output. `base` is a fresh projection output that no
        // backward needs (a matmul's backward reads its inputs), so it may be overwritten.
        let mut base = base;
        let _ = base.addmm_(&z, &b_all.tr());
        base
    }

    fn add_stacked(&self, group: &[Proj], input: &Tensor, base: Tensor) -> Tensor {
        let layout = self.layout;
        let adapted = self.adapted(group);
        if adapted.len() < group.len() {
            // Not every member adapted: member by member.
            return add_stacked_one_by_one(self, group, input, base);
        }
        let first = adapted[0];
        let copies = adapted.len() as i64;
        let [rank, in_dim] = layout.a_shapes[first];
        let [width, _] = layout.b_shapes[first];
        let a_all = self
            .a_region
            .narrow(0, layout.a_offsets[first], copies * rank * in_dim)
            .view([copies, rank, in_dim]);
        // z [copies, N, r]: member i's x A_i^T, with its own dropout.
        let z = if self.dropout {
            self.lora
                .dropout(self.layer, group[0], input, copies)
                .bmm(&a_all.transpose(1, 2))
        } else if input.dim() == 3 {
            input.bmm(&a_all.transpose(1, 2))
        } else {
            let n = input.size()[0];
            input
                .matmul(&a_all.view([copies * rank, in_dim]).tr())
                .view([n, copies, rank])
                .transpose(0, 1)
        };
        let b_all = self
            .b_region
            .narrow(0, layout.b_offsets[first], copies * width * rank)
            .view([copies, width, rank]);
        // In place, as in `add`: for Gate/Up the stacked output is [2, N, intermediate], the
        // largest activation of the layer.
        let mut base = base;
        let _ = base.baddbmm_(&z, &b_all.transpose(1, 2));
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ForwardOptions, Logits, ModelConfig};

    fn tiny() -> Model {
        Model::random(&ModelConfig::tiny_qwen2(), tch::Device::Cpu, Kind::Float, 3)
    }

    fn config(targets: Vec<Proj>, use_rslora: bool) -> LoraConfig {
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets,
            use_rslora,
        }
    }

    #[test]
    fn init_draws_a_within_the_kaiming_bound_and_zero_b() {
        let model = tiny();
        let lora = Lora::init(&model, config(vec![Proj::Down, Proj::Q], false), 7).unwrap();
        assert_eq!(lora.pairs().count(), 2 * model.num_layers());
        for (layer, proj, pair) in lora.pairs() {
            let inputs = model.projection_weight(layer, proj).size()[1];
            let bound = 1.0 / (inputs as f64).sqrt();
            let max = pair.a.abs().max().double_value(&[]);
            assert!(
                max < bound && max > 0.8 * bound,
                "{layer} {proj:?}: {max} vs {bound}"
            );
            assert_eq!(pair.b.abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
        let again = Lora::init(&model, config(vec![Proj::Q, Proj::Down], false), 7).unwrap();
        for (x, y) in lora.parameters().iter().zip(again.parameters()) {
            assert!(x.equal(&y), "same seed, same targets: same init");
        }
    }

    #[test]
    fn scaling_follows_rslora() {
        assert_eq!(config(vec![Proj::Q], false).scaling(), 2.0);
        assert_eq!(config(vec![Proj::Q], true).scaling(), 4.0);
    }

    #[test]
    fn adapter_forward_equals_merged_weights() {
        let model = tiny();
        let lora = Lora::init(&model, config(vec![Proj::V, Proj::Up, Proj::O], true), 1).unwrap();
        tch::manual_seed(5);
        for p in lora.parameters() {
            let _guard = tch::no_grad_guard();
            let mut p = p;
            p.copy_(&(Tensor::randn_like(&p) * 0.1));
        }
        let ids = Tensor::from_slice(&[5i64, 17, 300, 2, 99, 1000]).view([1, 6]);
        let mask = Tensor::ones([1, 6], (Kind::Int64, tch::Device::Cpu));
        let run = |m: &Model, adapter: Option<&dyn Adapter>| {
            let opts = ForwardOptions {
                logits: Logits::All,
                adapter,
                ..Default::default()
            };
            tch::no_grad(|| m.forward(&ids, &mask, None, &opts).logits.unwrap())
        };
        let with_hook = run(&model, Some(&lora));
        let merged = run(&lora.merged_into(&model), None);
        let base = run(&model, None);
        let diff = (&with_hook - &merged).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "hook vs merged: {diff}");
        let moved = (&with_hook - &base).abs().max().double_value(&[]);
        assert!(moved > 1e-3, "the adapter must change the logits: {moved}");
    }

    /// The adapter's update of one group, as the model asks for it.
    fn update(lora: &Lora, group: &[Proj], widths: &[i64], x: &Tensor, train: bool) -> Tensor {
        let base = Tensor::zeros([3, widths.iter().sum::<i64>()], (Kind::Float, tch::Device::Cpu));
        match lora.layer(0, Kind::Float, train) {
            Some(l) => l.add(group, widths, x, base),
            None => base,
        }
    }

    #[test]
    fn dropout_only_in_training() {
        let model = tiny();
        let mut cfg = config(vec![Proj::Q], false);
        cfg.dropout = 0.5;
        let lora = Lora::init(&model, cfg, 1).unwrap();
        {
            let _guard = tch::no_grad_guard();
            for mut p in lora.parameters() {
                let _ = p.fill_(0.1);
            }
        }
        let x = Tensor::ones([3, 64], (Kind::Float, tch::Device::Cpu));
        let eval = update(&lora, &[Proj::Q], &[64], &x, false);
        let train = update(&lora, &[Proj::Q], &[64], &x, true);
        assert!(!eval.allclose(&train, 1e-6, 1e-6, false));
        let untouched = update(&lora, &[Proj::K], &[16], &x, true);
        assert_eq!(untouched.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    /// A group of projections (Q, K, V fused) with some members adapted equals each member's
    /// update computed on its own, and dropout draws a separate mask per member.
    #[test]
    fn a_fused_group_equals_its_members_one_by_one() {
        let model = tiny();
        let widths: Vec<i64> = [Proj::Q, Proj::K, Proj::V]
            .iter()
            .map(|&p| model.projection_weight(0, p).size()[0])
            .collect();
        let hidden = model.projection_weight(0, Proj::Q).size()[1];
        let mut cfg = config(vec![Proj::Q, Proj::V], false);
        let lora = Lora::init(&model, cfg.clone(), 4).unwrap();
        {
            let _guard = tch::no_grad_guard();
            tch::manual_seed(9);
            for mut p in lora.parameters() {
                p.copy_(&(Tensor::randn_like(&p) * 0.1));
            }
        }
        let x = Tensor::randn([3, hidden], (Kind::Float, tch::Device::Cpu));
        let fused = update(&lora, &[Proj::Q, Proj::K, Proj::V], &widths, &x, false);
        let parts = fused.split_with_sizes(widths.as_slice(), -1);
        for (i, p) in [Proj::Q, Proj::K, Proj::V].into_iter().enumerate() {
            let alone = update(&lora, &[p], &widths[i..=i], &x, false);
            let diff = (&parts[i] - &alone).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{p:?}: {diff}");
            let expected = lora
                .delta_weight(0, p)
                .map_or(Tensor::zeros_like(&alone), |d| x.matmul(&d.tr()));
            let diff = (&alone - &expected).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{p:?} vs the merged delta: {diff}");
        }
        // With dropout 0.5 the two adapted members see different masks: their updates are not
        // what one shared mask would give.
        cfg.dropout = 0.5;
        let same_a = Lora::init(&model, config(vec![Proj::Q, Proj::V], false), 4).unwrap();
        let dropping = Lora::init(&model, cfg, 4).unwrap();
        {
            let _guard = tch::no_grad_guard();
            for (mut p, q) in dropping.parameters().into_iter().zip(same_a.parameters()) {
                p.copy_(&q);
            }
            // Q and V get identical adapters, so only the masks can make them differ.
            for (layer, proj, pair) in dropping.pairs() {
                if layer == 0 && proj == Proj::V {
                    let q = dropping
                        .pairs()
                        .find(|(l, p, _)| *l == 0 && *p == Proj::Q)
                        .unwrap()
                        .2;
                    pair.a.shallow_clone().copy_(&q.a.narrow(1, 0, hidden));
                    pair.b.shallow_clone().copy_(&Tensor::ones_like(&pair.b));
                    q.b.shallow_clone()
                        .narrow(0, 0, widths[2])
                        .copy_(&Tensor::ones_like(&pair.b));
                }
            }
        }
        let dropped = update(&dropping, &[Proj::Q, Proj::K, Proj::V], &widths, &x, true);
        let parts = dropped.split_with_sizes(widths.as_slice(), -1);
        let q_head = parts[0].narrow(-1, 0, widths[2]);
        assert!(
            !q_head.allclose(&parts[2], 1e-6, 1e-6, false),
            "Q and V must not share a dropout mask"
        );
    }

    /// Gate and Up computed as a batch: the batched update equals each member's own, with and
    /// without an unadapted member, and dropout draws one mask per member.
    #[test]
    fn a_stacked_group_equals_its_members_one_by_one() {
        let model = tiny();
        let inter = model.projection_weight(0, Proj::Gate).size()[0];
        let hidden = model.projection_weight(0, Proj::Gate).size()[1];
        let x = Tensor::randn([5, hidden], (Kind::Float, tch::Device::Cpu));
        let base = || Tensor::zeros([2, 5, inter], (Kind::Float, tch::Device::Cpu));
        for targets in [vec![Proj::Gate, Proj::Up], vec![Proj::Up]] {
            let lora = Lora::init(&model, config(targets.clone(), false), 2).unwrap();
            {
                let _guard = tch::no_grad_guard();
                tch::manual_seed(3);
                for mut p in lora.parameters() {
                    p.copy_(&(Tensor::randn_like(&p) * 0.1));
                }
            }
            let layer = lora.layer(0, Kind::Float, false).unwrap();
            let stacked = layer.add_stacked(&[Proj::Gate, Proj::Up], &x, base());
            for (i, p) in [Proj::Gate, Proj::Up].into_iter().enumerate() {
                let expected = lora
                    .delta_weight(0, p)
                    .map_or(Tensor::zeros([5, inter], (Kind::Float, tch::Device::Cpu)), |d| {
                        x.matmul(&d.tr())
                    });
                let diff = (stacked.get(i as i64) - expected).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{targets:?} {p:?}: {diff}");
            }
        }
        let mut cfg = config(vec![Proj::Gate, Proj::Up], false);
        cfg.dropout = 0.5;
        let lora = Lora::init(&model, cfg, 2).unwrap();
        {
            let _guard = tch::no_grad_guard();
            let _ = lora.flat().fill_(0.1);
        }
        let layer = lora.layer(0, Kind::Float, true).unwrap();
        let dropped = layer.add_stacked(&[Proj::Gate, Proj::Up], &x, base());
        assert!(
            !dropped.get(0).allclose(&dropped.get(1), 1e-6, 1e-6, false),
            "Gate and Up must not share a dropout mask"
        );
    }

    /// Training through the stacked Gate/Up path with only one of them adapted: the update is
    /// added in place to that member's part of the batched output, which must be a view autograd
    /// lets change (unbind's parts are not: this panicked), and the gradient reaches the adapter.
    #[test]
    fn a_stacked_group_with_one_adapted_member_trains() {
        let model = tiny();
        let inter = model.projection_weight(0, Proj::Gate).size()[0];
        let hidden = model.projection_weight(0, Proj::Gate).size()[1];
        let lora = Lora::init(&model, config(vec![Proj::Up], false), 2).unwrap();
        lora.set_trainable(true);
        {
            let _guard = tch::no_grad_guard();
            let _ = lora.flat().fill_(0.1);
        }
        let x = Tensor::randn([6, hidden], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let pair = Tensor::stack(&[&x, &x], 0);
        let w = Tensor::randn([2, hidden, inter], (Kind::Float, tch::Device::Cpu));
        let base = pair.bmm(&w);
        let layer = lora.layer(0, Kind::Float, true).unwrap();
        let out = layer.add_stacked(&[Proj::Gate, Proj::Up], &pair, base);
        out.sum(Kind::Float).backward();
        let grad = lora.flat_grad();
        assert!(
            grad.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "no gradient reached Up's adapter"
        );
        // Gate is not adapted: its part is the base output unchanged.
        let gate = pair.get(0).matmul(&w.get(0));
        assert!(out.get(0).allclose(&gate, 1e-5, 1e-5, false));
    }

    #[test]
    fn bad_configs_are_refused() {
        let model = tiny();
        assert!(matches!(
            Lora::init(&model, config(vec![], false), 0),
            Err(LoraError::NoTargets)
        ));
        let mut cfg = config(vec![Proj::Q], false);
        cfg.dropout = 1.0;
        assert!(matches!(
            Lora::init(&model, cfg, 0),
            Err(LoraError::BadDropout { .. })
        ));
    }
}
